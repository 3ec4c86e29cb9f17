/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kevent_sensor: the emulated thermal sensor device shared with the host
 *
 * The host (kevent-bench, src/sensor/) emulates the sensor hardware behind
 * an ivshmem-doorbell PCI device (1af4:1110): BAR2 is this layout, BAR0
 * holds the doorbell, MSI-X vector i is CPU i's thermal interrupt.  The
 * host's mirror of this file is src/sensor/abi.rs; a test keeps them equal.
 *
 * x86 only: every field is little-endian, naturally aligned, written by one
 * side only.  Publication: the writer fills the data, then stores the index
 * or sequence number that makes it visible with release semantics; the
 * reader loads that word with acquire semantics before reading the data.
 *
 * One injection, host then guest:
 *   1. host: write the register image to ks_regs (the live hardware state)
 *      and to the next entry of CPU i's ring, then store head + 1;
 *   2. host: ring MSI-X vector i;
 *   3. guest, hard IRQ on CPU i: for each entry between tail and head, give
 *      the entry's image to the register file, run the thermal interrupt
 *      handler, store tail + 1;
 *   4. guest: once every message of the entry has been broadcast, store its
 *      seq in acked_seq and ring the host's doorbell (peer KS_HOST_PEER,
 *      vector KS_ACK_VECTOR).
 * Each entry latches the image of its own interrupt, so interrupts raised
 * faster than the guest handles them (their MSIs coalesce) are each
 * reported, as every injection must be.
 *
 * Timed entries (version 2): an entry fires its image repeat times, on the
 * guest's clock.  The handler fires firing 0 as soon as it takes the entry,
 * at guest time t0 (CLOCK_MONOTONIC, as the thermal interrupt handler of
 * firing 0 reads it for its rate limit), and firing k at
 * t0 + k * interval_ns, from a timer of the vector's CPU that runs in hard
 * IRQ there; each firing is what a single entry gets: the image goes to
 * the register file and the thermal interrupt handler runs.  Interval 0
 * fires them all at once.  A late timer fires the overdue firings in order,
 * none skipped or merged.  The guest's pacing does not depend on when the
 * host's writes arrive, so a virtual clock (QEMU -icount) makes it exact.
 *   - The entry is acknowledged (acked_seq) once every message of its last
 *     firing, and so of all before it, has been broadcast.
 *   - Later entries of the ring wait until it has fired them all.
 *   - tail moves past it as soon as it is taken: the slot is free.
 *   - Refused (EINVAL) if repeat is 0 or above KS_MAX_REPEAT, or
 *     interval_ns is above KS_MAX_INTERVAL_NS.
 *   - One run of the handler fires or takes at most KS_RING_ENTRIES
 *     (firings, and entries refused); the timer goes on with the rest
 *     soon after, so hard-IRQ time stays bounded.
 * A host keeps at most 1024 firings unacknowledged over all CPUs: each can
 * queue up to 12 uevents, and the guest queues 16384 before it drops.
 *
 * Topology (version 3): the host's CPUs are nr_packages packages of
 * cores_per_package cores, numbered package by package (CPU i is core
 * i % cores_per_package of package i / cores_per_package), as QEMU's
 * -smp sockets=,cores= numbers them; the guest refuses a device whose
 * topology is not its own.  The package register is one per package, and
 * a change of it interrupts every core of the package: the host publishes
 * one entry per CPU of the package that the guest has online (@online),
 * all with the same image, in ascending CPU order, each after the previous
 * one is acknowledged.  The first entry handled changes the register; the
 * others find it in that state already.
 */
#ifndef _KEVENT_SENSOR_H
#define _KEVENT_SENSOR_H

#include <linux/types.h>

#define KS_PCI_VENDOR		0x1af4	/* ivshmem */
#define KS_PCI_DEVICE		0x1110

#define KS_MAGIC		0x314d524854564b45ULL	/* "EKVTHRM1" */
#define KS_VERSION		3
#define KS_MAX_CPUS		8
#define KS_MAX_PACKAGES		8
#define KS_RING_ENTRIES		256	/* power of two */
#define KS_REGION_SIZE		0x20000	/* BAR2, power of two */
#define KS_MAX_REPEAT		1024	/* ks_entry.repeat */
#define KS_MAX_INTERVAL_NS	1000000000	/* ks_entry.interval_ns, 1 s */

/* Doorbell of BAR0: (peer << 16) | vector. */
#define KS_DOORBELL		12
#define KS_HOST_PEER		0
#define KS_ACK_VECTOR		0

/* ks_entry.reg */
#define KS_REG_THERM_STATUS	0	/* IA32_THERM_STATUS of the CPU */
#define KS_REG_PKG_THERM_STATUS	1	/* IA32_PACKAGE_THERM_STATUS of its package */

/**
 * struct ks_header - offset 0
 * @magic: KS_MAGIC (host)
 * @version: KS_VERSION (host)
 * @nr_cpus: rings and MSI-X vectors the host provides (host)
 * @ring_entries: KS_RING_ENTRIES (host)
 * @ready: 1 once every vector has its handler, 0 after remove (guest)
 * @guest_cpus: rings the guest serves (guest)
 * @nr_packages: packages, at most KS_MAX_PACKAGES (host)
 * @cores_per_package: CPUs of each package; nr_cpus is
 *	nr_packages * cores_per_package (host)
 * @online: bit i set while CPU i is online, kept by the guest across CPU
 *	hotplug (guest)
 * @reserved: zero
 */
struct ks_header {
	u64 magic;
	u32 version;
	u32 nr_cpus;
	u32 ring_entries;
	u32 ready;
	u32 guest_cpus;
	u32 nr_packages;
	u32 cores_per_package;
	u32 online;
	u32 reserved[6];
};

#define KS_HEADER_READY		20
#define KS_HEADER_GUEST_CPUS	24
#define KS_HEADER_NR_PACKAGES	28
#define KS_HEADER_CORES		32
#define KS_HEADER_ONLINE	36

/**
 * struct ks_regs - the live hardware state, offset 64 (host)
 * @therm_status: IA32_THERM_STATUS of each CPU
 * @pkg_therm_status: IA32_PACKAGE_THERM_STATUS of each package
 */
struct ks_regs {
	u64 therm_status[KS_MAX_CPUS];
	u64 pkg_therm_status[KS_MAX_PACKAGES];
};

/**
 * struct ks_entry - one injection
 * @seq: sequence number, nonzero, increasing along the ring
 * @cpu: target CPU, the ring's own
 * @reg: KS_REG_THERM_STATUS or KS_REG_PKG_THERM_STATUS
 * @value: register image, with the bits kt_regs_hw_check() allows
 * @repeat: firings of the image, 1 to KS_MAX_REPEAT
 * @interval_ns: guest time between firings, at most KS_MAX_INTERVAL_NS
 */
struct ks_entry {
	u64 seq;
	u32 cpu;
	u32 reg;
	u64 value;
	u32 repeat;
	u32 interval_ns;
};

/* Offsets in struct ks_entry. */
#define KS_ENTRY_SEQ		0
#define KS_ENTRY_CPU		8
#define KS_ENTRY_REG		12
#define KS_ENTRY_VALUE		16
#define KS_ENTRY_REPEAT		24
#define KS_ENTRY_INTERVAL_NS	28
#define KS_ENTRY_SIZE		32

/**
 * struct ks_cpu - one CPU's ring and acknowledgements
 * @head: entries published, free-running (host)
 * @host_reserved: zero (host)
 * @tail: entries consumed, free-running (guest)
 * @rejected_errno: positive errno of the last rejected entry (guest)
 * @acked_seq: every message of every entry up to this seq is out (guest)
 * @interrupts: handler runs for this vector (guest)
 * @rejected: entries refused (guest)
 * @rejected_seq: seq of the last rejected entry (guest)
 * @events_dropped: messages of this CPU's interrupts the module could not
 *	send since it was loaded (uevent queue full, no memory), as of
 *	@acked_seq; published with it (guest)
 * @guest_reserved: zero (guest)
 * @ring: the entries, slot = index % KS_RING_ENTRIES (host)
 *
 * Host and guest words sit on separate 64-byte lines.
 */
struct ks_cpu {
	u32 head;
	u32 host_reserved[15];
	u32 tail;
	u32 rejected_errno;
	u64 acked_seq;
	u64 interrupts;
	u64 rejected;
	u64 rejected_seq;
	u64 events_dropped;
	u64 guest_reserved[2];
	struct ks_entry ring[KS_RING_ENTRIES];
};

/* Offsets in struct ks_cpu. */
#define KS_CPU_HEAD		0
#define KS_CPU_TAIL		64
#define KS_CPU_REJECTED_ERRNO	68
#define KS_CPU_ACKED_SEQ	72
#define KS_CPU_INTERRUPTS	80
#define KS_CPU_REJECTED		88
#define KS_CPU_REJECTED_SEQ	96
#define KS_CPU_EVENTS_DROPPED	104
#define KS_CPU_RING		128

#define KS_HEADER_OFFSET	0
#define KS_REGS_OFFSET		64
#define KS_CPUS_OFFSET		256
#define KS_CPU_SIZE		(128 + 32 * KS_RING_ENTRIES)

/**
 * struct ks_region - BAR2
 * @header: identification and readiness
 * @regs: the live register images
 * @reserved: zero
 * @cpus: per-CPU rings
 */
struct ks_region {
	struct ks_header header;
	struct ks_regs regs;
	u8 reserved[KS_CPUS_OFFSET - KS_REGS_OFFSET - sizeof(struct ks_regs)];
	struct ks_cpu cpus[KS_MAX_CPUS];
};

#endif /* _KEVENT_SENSOR_H */
