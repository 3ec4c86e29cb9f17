/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kevent_thermal: internal interfaces between its source files
 *
 * The module is split so that any source of "the hardware changed state,
 * then raised the thermal interrupt on CPU i" can drive it:
 *
 *   kthermal_regs.c    the simulated register file (the "hardware"):
 *                      per-CPU IA32_THERM_STATUS and IA32_TEMPERATURE_TARGET,
 *                      per-package IA32_PACKAGE_THERM_STATUS, with hardware
 *                      updates (kt_regs_hw_set()) and rdmsr/wrmsr-like
 *                      software access (kt_regs_read(), kt_regs_sw_write()).
 *   kthermal_irq.c     the thermal interrupt handler of the running CPU
 *                      (kt_thermal_interrupt(), hard IRQ only), its per-CPU
 *                      state and counters, the deferred uevents.
 *   kthermal_inject.c  debugfs-driven injection: apply a state on the target
 *                      CPU, raise the interrupt there through an irq_work,
 *                      wait for the fence.
 *   kthermal_pci.c     the driver of the sensor device the host emulates:
 *                      ivshmem-doorbell (include/kevent_sensor.h), MSI-X
 *                      vector i pinned to CPU i as its thermal interrupt.
 *   kthermal_ring.c    the consumer of that device's rings of register
 *                      images, one per CPU: entry checks, firings (timed
 *                      entries from a per-vector hrtimer), acks.
 *   kthermal_debugfs.c every debugfs file, device/ included.
 *   kthermal_sysfs.c   the per-CPU counter attributes, and one device per
 *                      package (class kevent_thermal) with the package's
 *                      counters: the package's events are its own.
 *
 * Both interrupt sources do the same, in hard IRQ on the target CPU:
 *
 *	kt_regs_hw_set(smp_processor_id(), reg, image);
 *	kt_thermal_interrupt(done, token, burst);
 *
 * A package register is shared by the cores of its package, and so is its
 * interrupt: a package change interrupts every online CPU of the package,
 * one after the other in ascending order, each handled before the next is
 * raised (debugfs: kt_inject(); the device: one entry per CPU, published
 * by the host in that order).
 *
 * and learn from done(cpu, token), called from the ordered workqueue in the
 * order the interrupts were handled, that every message the interrupt
 * caused has been broadcast: the injection's fence, the device's ack.
 * burst is nonzero only for the firings of one timed device entry: the
 * rate-limit edge records tell the host which decisions fell between two
 * firings that the guest's clock alone spaced.
 */
#ifndef _KTHERMAL_H
#define _KTHERMAL_H

#include <linux/atomic.h>
#include <linux/bits.h>
#include <linux/irqreturn.h>
#include <linux/percpu.h>
#include <linux/types.h>

/*
 * Bits of IA32_THERM_STATUS and IA32_PACKAGE_THERM_STATUS (Intel SDM vol. 4).
 * Status bits are read-only; the log bit above each status bit is R/WC0.
 */
#define KT_STATUS_PROCHOT	BIT_ULL(0)	/* thermal status (PROCHOT) */
#define KT_STATUS_EXT_PROCHOT	BIT_ULL(2)	/* PROCHOT# or FORCEPR# event */
#define KT_STATUS_CRITICAL	BIT_ULL(4)	/* critical temperature */
#define KT_STATUS_THRESHOLD1	BIT_ULL(6)	/* thermal threshold #1 */
#define KT_STATUS_THRESHOLD2	BIT_ULL(8)	/* thermal threshold #2 */
#define KT_STATUS_POWER_LIMIT	BIT_ULL(10)	/* power limitation */
#define KT_STATUS_MASK		(KT_STATUS_PROCHOT | KT_STATUS_EXT_PROCHOT | \
				 KT_STATUS_CRITICAL | KT_STATUS_THRESHOLD1 | \
				 KT_STATUS_THRESHOLD2 | KT_STATUS_POWER_LIMIT)
#define KT_LOG_MASK		(KT_STATUS_MASK << 1)
#define KT_READOUT_SHIFT	16
#define KT_READOUT_MASK		GENMASK_ULL(22, 16)	/* degrees below TjMax */
#define KT_VALID		BIT_ULL(31)		/* readout valid (core) */

/* Writable-by-hardware bits; everything else is reserved. */
#define KT_CORE_MASK	(KT_STATUS_MASK | KT_LOG_MASK | KT_READOUT_MASK | KT_VALID)
#define KT_PKG_MASK	(KT_STATUS_MASK | KT_LOG_MASK | KT_READOUT_MASK)

#define KT_TJMAX_SHIFT	16			/* IA32_TEMPERATURE_TARGET */

/* Reset images: no status, no log, 50 degrees below TjMax. */
#define KT_RESET_READOUT	50ULL
#define KT_CORE_RESET	(KT_VALID | (KT_RESET_READOUT << KT_READOUT_SHIFT))
#define KT_PKG_RESET	(KT_RESET_READOUT << KT_READOUT_SHIFT)

enum kt_reg {
	KT_REG_THERM_STATUS,		/* 0x19c, per CPU */
	KT_REG_PKG_THERM_STATUS,	/* 0x1b1, per package */
	KT_REG_TEMPERATURE_TARGET,	/* 0x1a2, per CPU, read-only */
	KT_REG_NR,
};

/* Event kinds, in delivery order within one interrupt. */
enum kt_event {
	KT_EV_PROCHOT,
	KT_EV_EXT_PROCHOT,
	KT_EV_CRITICAL,
	KT_EV_THRESHOLD1,
	KT_EV_THRESHOLD2,
	KT_EV_POWER_LIMIT,
	KT_EV_PKG_PROCHOT,
	KT_EV_PKG_EXT_PROCHOT,
	KT_EV_PKG_CRITICAL,
	KT_EV_PKG_THRESHOLD1,
	KT_EV_PKG_THRESHOLD2,
	KT_EV_PKG_POWER_LIMIT,
	KT_EV_NR,
};

#define KT_EV_PKG_FIRST	KT_EV_PKG_PROCHOT
#define KT_EV_PKG_NR	(KT_EV_NR - KT_EV_PKG_FIRST)

/**
 * struct kt_event_desc - one row of the event table
 * @object: kmessage object ("From:" line)
 * @bit: status bit in its register
 * @package: the bit is in IA32_PACKAGE_THERM_STATUS
 */
struct kt_event_desc {
	const char *object;
	u64 bit;
	bool package;
};

extern const struct kt_event_desc kt_events[KT_EV_NR];

/* Per-CPU counters, shown in /sys/devices/system/cpu/cpuN/kevent_thermal/. */
#define KT_SYSFS_GROUP	"kevent_thermal"
/* Package devices: /sys/class/kevent_thermal/packageP. */
#define KT_PKG_CLASS	"kevent_thermal"

enum kt_counter {
	KT_CNT_INTERRUPTS,
	KT_CNT_RATE_LIMITED,
	KT_CNT_KMESSAGE_FAILED,
	KT_CNT_UEVENT_ALLOC_FAILED,
	KT_CNT_UEVENT_QUEUE_FULL,
	KT_CNT_UEVENT_FAILED,
	KT_CNT_EVENT_BASE,		/* then "high", "normal" per core event */
	KT_CNT_NR = KT_CNT_EVENT_BASE + 2 * KT_EV_PKG_FIRST,
};

#define KT_CNT_EVENT(ev, high)	(KT_CNT_EVENT_BASE + 2 * (ev) + ((high) ? 0 : 1))

/* Counters of a package device: "high", "normal" per package event. */
#define KT_PKG_CNT(ev, high)	(2 * ((ev) - KT_EV_PKG_FIRST) + ((high) ? 0 : 1))
#define KT_PKG_CNT_NR		(2 * KT_EV_PKG_NR)

/**
 * struct kt_cpu_state - handler state of one CPU
 * @cnt: counters (any context may increment)
 * @last_handled_ns: time of the last handled (not rate-limited) interrupt
 * @last_burst: burst id of the last handled interrupt, 0 for none
 * @handled: an interrupt has been handled on this CPU
 * @seen_core: core status bits at the last handled interrupt
 *
 * Everything but @cnt is touched only by the handler on its own CPU.
 */
struct kt_cpu_state {
	atomic_long_t cnt[KT_CNT_NR];
	u64 last_handled_ns;
	u64 last_burst;
	bool handled;
	u64 seen_core;
};

DECLARE_PER_CPU(struct kt_cpu_state, kt_cpu_state);

/* Module parameters (kthermal_main.c). */
extern unsigned int kt_rate_limit_ms;
extern unsigned int kt_rate_limit_edge_ms;
extern unsigned int kt_rate_limit_burst_edge_ms;
extern unsigned int kt_tjmax;

/* kthermal_regs.c */
int kt_regs_init(void);
void kt_regs_exit(void);
u64 kt_regs_read(unsigned int cpu, enum kt_reg reg);
u64 kt_regs_pkg_sample(unsigned int cpu, u64 *prev);
int kt_regs_hw_check(enum kt_reg reg, u64 val);
int kt_regs_hw_set(unsigned int cpu, enum kt_reg reg, u64 val);
int kt_regs_sw_write(unsigned int cpu, enum kt_reg reg, u64 val);

/* kthermal_irq.c */

/*
 * Completion of one interrupt: @cpu handled it (or refused it, see
 * kt_thermal_defer_done()), @token is the caller's.
 */
typedef void (*kt_done_fn)(unsigned int cpu, u64 token);

int kt_irq_init(void);
void kt_irq_exit(void);
u64 kt_thermal_interrupt(kt_done_fn done, u64 token, u64 burst);
void kt_thermal_defer_done(kt_done_fn done, unsigned int cpu, u64 token);
void kt_irq_flush(void);
long kt_uevents_pending(void);
long kt_messages_lost(unsigned int cpu);
u64 kt_done_direct(void);

/* Rate-limit edge records kept, the newest ones. */
#define KT_EDGE_RECORDS		64

/**
 * struct kt_edge - a rate-limit decision close to the window's edge
 * @interrupt: the CPU's "interrupts" counter for this interrupt
 * @margin_ns: time since the last handled interrupt minus the window;
 *	       negative: rate-limited
 * @cpu: the CPU that took the interrupt
 * @within_burst: this and the last handled interrupt on @cpu were firings
 *		  of the same timed device entry
 */
struct kt_edge {
	long interrupt;
	s64 margin_ns;
	unsigned int cpu;
	bool within_burst;
};

u64 kt_rate_limit_edges(struct kt_edge *copy);

/* kthermal_inject.c */
void kt_inject_init(void);
void kt_inject_exit(void);
int kt_inject(unsigned int cpu, enum kt_reg reg, u64 val);
u64 kt_injections(void);
u64 kt_fence_timeouts(void);

/* kthermal_pci.c */
int kt_pci_init(void);
void kt_pci_exit(void);

/* kthermal_ring.c */

/* Per-vector counters, in the order of device/stats. */
enum kt_vec_stat {
	KT_VS_INTERRUPTS,
	KT_VS_ENTRIES,
	KT_VS_FIRINGS,
	KT_VS_BARE,
	KT_VS_REJECTED,
	KT_VS_BAD_SEQ,
	KT_VS_MISDELIVERED,
	KT_VS_BAD_ENTRY,
	KT_VS_RING_CORRUPT,
	KT_VS_NR,
};

struct device;
struct ks_region;
struct kt_rings;
struct kt_vec;

struct kt_rings *kt_ring_create(struct device *dev, void __iomem *doorbell,
				struct ks_region *region, unsigned int n);
struct kt_vec *kt_ring_vec(struct kt_rings *r, unsigned int cpu);
irqreturn_t kt_ring_irq(int irq, void *data);
void kt_ring_stop(struct kt_rings *r);
void kt_ring_destroy(struct kt_rings *r);
unsigned int kt_ring_nr(const struct kt_rings *r);
u64 kt_ring_stat(const struct kt_rings *r, unsigned int cpu,
		 enum kt_vec_stat idx);
void kt_ring_acks(struct kt_rings *r, u64 *acks, u64 *acks_held);
bool kt_ring_hold_acks(const struct kt_rings *r);
void kt_ring_set_hold_acks(struct kt_rings *r, bool hold);
bool kt_ring_bare(const struct kt_rings *r);
void kt_ring_set_bare(struct kt_rings *r, bool bare);

/* kthermal_debugfs.c */
void kt_debugfs_init(void);
void kt_debugfs_exit(void);
void kt_debugfs_device_init(struct kt_rings *r);
void kt_debugfs_device_exit(void);

/* kthermal_sysfs.c */
int kt_sysfs_init(void);
void kt_sysfs_exit(void);
const char *kt_counter_name(enum kt_counter idx);
const char *kt_pkg_counter_name(enum kt_event ev, bool high);
long kt_pkg_count(unsigned int cpu, enum kt_event ev, bool high);
struct device *kt_pkg_device(unsigned int cpu);

#endif /* _KTHERMAL_H */
