//! The shared region's layout: the host's mirror of
//! `kmod/include/kevent_sensor.h`. A test reads that header and compares
//! every constant, so the two cannot drift apart.

use vm_memory::ByteValued;

/// PCI vendor id of the device (KS_PCI_VENDOR): Red Hat's, QEMU's ivshmem.
pub const PCI_VENDOR: u16 = 0x1af4;
/// PCI device id (KS_PCI_DEVICE): ivshmem, which the guest driver binds.
pub const PCI_DEVICE: u16 = 0x1110;

/// "EKVTHRM1" read as a little-endian u64.
pub const MAGIC: u64 = 0x314d_5248_5456_4b45;
/// Layout version (KS_VERSION); 2 added timed entries (`repeat`, `interval_ns`).
pub const VERSION: u32 = 2;
/// Most CPUs, and so rings and MSI-X vectors, the region has room for (KS_MAX_CPUS).
pub const MAX_CPUS: u32 = 8;
/// Slots of each CPU's ring (KS_RING_ENTRIES), a power of two so free-running indices wrap onto it.
pub const RING_ENTRIES: u32 = 256;
/// BAR2's size: QEMU takes it from the file, and PCI wants a power of two.
pub const REGION_SIZE: usize = 0x20000;
/// Most firings of one entry.
pub const MAX_REPEAT: u32 = 1024;
/// Longest guest time between two firings of one entry: 1 s.
pub const MAX_INTERVAL_NS: u32 = 1_000_000_000;

/// The host's ivshmem peer id (KS_HOST_PEER): the guest rings this peer to acknowledge.
pub const HOST_PEER: u16 = 0;
/// The host's vector the guest rings when it publishes `acked_seq` (KS_ACK_VECTOR).
pub const ACK_VECTOR: u16 = 0;

/// [`Entry::reg`] for the CPU's IA32_THERM_STATUS (KS_REG_THERM_STATUS).
pub const REG_THERM_STATUS: u32 = 0;
/// [`Entry::reg`] for IA32_PACKAGE_THERM_STATUS of the CPU's package (KS_REG_PKG_THERM_STATUS).
pub const REG_PKG_THERM_STATUS: u32 = 1;

/// Where [`Header`] starts in the region (KS_HEADER_OFFSET).
pub const HEADER_OFFSET: usize = 0;
/// Where the live register images start (KS_REGS_OFFSET): [`MAX_CPUS`] core
/// images, then [`MAX_CPUS`] package images, u64 each; see [`register_offset`].
pub const REGS_OFFSET: usize = 64;
/// Where CPU 0's block starts (KS_CPUS_OFFSET); see [`cpu_offset`].
pub const CPUS_OFFSET: usize = 256;
/// Bytes of one CPU's block (KS_CPU_SIZE): two 64-byte lines of counters
/// (see [`cpu`]), then the ring.
pub const CPU_SIZE: usize = 128 + 32 * RING_ENTRIES as usize;

/// The region's first 64 bytes, `struct ks_header`: identification, which
/// the host writes once, and the guest's readiness.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Host: [`MAGIC`].
    pub magic: u64,
    /// Host: [`VERSION`].
    pub version: u32,
    /// Host: rings and MSI-X vectors it provides, 1 to [`MAX_CPUS`].
    pub nr_cpus: u32,
    /// Host: [`RING_ENTRIES`].
    pub ring_entries: u32,
    /// Guest: 1 once every vector has its handler.
    pub ready: u32,
    /// Guest: rings it serves.
    pub guest_cpus: u32,
    /// Zero; pads the header to 64 bytes.
    pub reserved: [u32; 9],
}

/// One injection, as the host publishes it: the guest fires `value`
/// `repeat` times, the first at once, then `interval_ns` apart on its own
/// clock.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number, nonzero, increasing along the ring; `acked_seq` reports it back.
    pub seq: u64,
    /// Target CPU, the ring's own.
    pub cpu: u32,
    /// [`REG_THERM_STATUS`] or [`REG_PKG_THERM_STATUS`].
    pub reg: u32,
    /// Register image; the guest refuses reserved bits (kt_regs_hw_check()).
    pub value: u64,
    /// Firings of the image, 1 to [`MAX_REPEAT`].
    pub repeat: u32,
    /// Guest time between firings, at most [`MAX_INTERVAL_NS`].
    pub interval_ns: u32,
}

/// Offsets in [`Entry`] (KS_ENTRY_*), checked against the struct by a test.
pub mod entry {
    /// [`Entry::seq`](super::Entry::seq), u64.
    pub const SEQ: usize = 0;
    /// [`Entry::cpu`](super::Entry::cpu), u32.
    pub const CPU: usize = 8;
    /// [`Entry::reg`](super::Entry::reg), u32.
    pub const REG: usize = 12;
    /// [`Entry::value`](super::Entry::value), u64.
    pub const VALUE: usize = 16;
    /// [`Entry::repeat`](super::Entry::repeat), u32.
    pub const REPEAT: usize = 24;
    /// [`Entry::interval_ns`](super::Entry::interval_ns), u32.
    pub const INTERVAL_NS: usize = 28;
    /// Bytes of one entry, and the ring's stride.
    pub const SIZE: usize = 32;
}

// SAFETY: both are #[repr(C)] with only integer fields and no padding (the
// size tests below check it), so every byte pattern is a valid value.
unsafe impl ByteValued for Header {}
// SAFETY: as above.
unsafe impl ByteValued for Entry {}

/// [`Header::ready`] (KS_HEADER_READY), loaded on its own with Acquire.
pub const READY_OFFSET: usize = HEADER_OFFSET + 20;
/// [`Header::guest_cpus`] (KS_HEADER_GUEST_CPUS).
pub const GUEST_CPUS_OFFSET: usize = HEADER_OFFSET + 24;
/// No more firings than this wait for their entries' acknowledgement, over
/// all CPUs: each can queue up to 12 uevents in the guest, whose queue
/// holds 16384 (KT_UEVENT_MAX_PENDING) before it drops.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Where CPU `cpu`'s IA32_THERM_STATUS (or its package's) image lives.
pub fn register_offset(cpu: u32, reg: u32) -> usize {
    let base = if reg == REG_PKG_THERM_STATUS { REGS_OFFSET + 8 * MAX_CPUS as usize } else { REGS_OFFSET };
    base + 8 * cpu as usize
}

/// The words of one CPU's block, by who writes them.
pub mod cpu {
    /// Host: entries published, free-running u32.
    pub const HEAD: usize = 0;
    /// Guest: entries consumed, free-running u32.
    pub const TAIL: usize = 64;
    /// Guest: positive errno of the last rejected entry, u32.
    pub const REJECTED_ERRNO: usize = 68;
    /// Guest: every message of every entry up to this seq is out, u64.
    pub const ACKED_SEQ: usize = 72;
    /// Guest: handler runs, u64.
    pub const INTERRUPTS: usize = 80;
    /// Guest: entries refused, u64.
    pub const REJECTED: usize = 88;
    /// Guest: seq of the last rejected entry, u64.
    pub const REJECTED_SEQ: usize = 96;
    /// Guest: messages the module could not send, published with the ack, u64.
    pub const EVENTS_DROPPED: usize = 104;
    /// Host: the ring's entries, slot = index % [`RING_ENTRIES`](super::RING_ENTRIES).
    pub const RING: usize = 128;
}

/// Where CPU `cpu`'s block (its counters, then its ring) starts.
pub fn cpu_offset(cpu: u32) -> usize {
    CPUS_OFFSET + CPU_SIZE * cpu as usize
}

/// Where the entry of CPU `cpu`'s free-running ring index `index` lives.
pub fn entry_offset(cpu: u32, index: u32) -> usize {
    cpu_offset(cpu) + cpu::RING + std::mem::size_of::<Entry>() * (index % RING_ENTRIES) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;

    /// `#define NAME value` lines of a file of kmod/, values as written.
    fn c_defines_of(file: &str) -> BTreeMap<String, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kmod").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines()
            .filter_map(|line| line.strip_prefix("#define "))
            .filter_map(|rest| {
                let mut words = rest.split_whitespace();
                let name = words.next()?.to_owned();
                // The value runs up to a comment.
                let value: String = words.take_while(|w| !w.starts_with("/*")).collect::<Vec<_>>().join(" ");
                Some((name, value))
            })
            .collect()
    }

    fn c_defines() -> BTreeMap<String, String> {
        c_defines_of("include/kevent_sensor.h")
    }

    fn c_integer(defines: &BTreeMap<String, String>, name: &str) -> u64 {
        let value = defines.get(name).unwrap_or_else(|| panic!("kevent_sensor.h has no {name}"));
        let value = value.trim_end_matches("ULL");
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => value.parse(),
        }
        .unwrap_or_else(|e| panic!("{name} = {value}: {e}"))
    }

    #[test]
    fn every_constant_matches_the_c_header() {
        let c = c_defines();
        let expect = [
            ("KS_PCI_VENDOR", u64::from(PCI_VENDOR)),
            ("KS_PCI_DEVICE", u64::from(PCI_DEVICE)),
            ("KS_MAGIC", MAGIC),
            ("KS_VERSION", u64::from(VERSION)),
            ("KS_MAX_CPUS", u64::from(MAX_CPUS)),
            ("KS_RING_ENTRIES", u64::from(RING_ENTRIES)),
            ("KS_REGION_SIZE", REGION_SIZE as u64),
            ("KS_MAX_REPEAT", u64::from(MAX_REPEAT)),
            ("KS_MAX_INTERVAL_NS", u64::from(MAX_INTERVAL_NS)),
            ("KS_HOST_PEER", u64::from(HOST_PEER)),
            ("KS_ACK_VECTOR", u64::from(ACK_VECTOR)),
            ("KS_REG_THERM_STATUS", u64::from(REG_THERM_STATUS)),
            ("KS_REG_PKG_THERM_STATUS", u64::from(REG_PKG_THERM_STATUS)),
            ("KS_HEADER_OFFSET", HEADER_OFFSET as u64),
            ("KS_REGS_OFFSET", REGS_OFFSET as u64),
            ("KS_CPUS_OFFSET", CPUS_OFFSET as u64),
            ("KS_HEADER_READY", READY_OFFSET as u64),
            ("KS_HEADER_GUEST_CPUS", GUEST_CPUS_OFFSET as u64),
            ("KS_CPU_HEAD", cpu::HEAD as u64),
            ("KS_CPU_TAIL", cpu::TAIL as u64),
            ("KS_CPU_REJECTED_ERRNO", cpu::REJECTED_ERRNO as u64),
            ("KS_CPU_ACKED_SEQ", cpu::ACKED_SEQ as u64),
            ("KS_CPU_INTERRUPTS", cpu::INTERRUPTS as u64),
            ("KS_CPU_REJECTED", cpu::REJECTED as u64),
            ("KS_CPU_REJECTED_SEQ", cpu::REJECTED_SEQ as u64),
            ("KS_CPU_EVENTS_DROPPED", cpu::EVENTS_DROPPED as u64),
            ("KS_CPU_RING", cpu::RING as u64),
            ("KS_ENTRY_SEQ", entry::SEQ as u64),
            ("KS_ENTRY_CPU", entry::CPU as u64),
            ("KS_ENTRY_REG", entry::REG as u64),
            ("KS_ENTRY_VALUE", entry::VALUE as u64),
            ("KS_ENTRY_REPEAT", entry::REPEAT as u64),
            ("KS_ENTRY_INTERVAL_NS", entry::INTERVAL_NS as u64),
            ("KS_ENTRY_SIZE", entry::SIZE as u64),
        ];
        // The driver static_asserts every offset against these defines.
        for (name, value) in expect {
            assert_eq!(c_integer(&c, name), value, "{name}");
        }
        assert_eq!(c["KS_CPU_SIZE"], "(128 + 32 * KS_RING_ENTRIES)");
        // A define added to the header must be mirrored here too.
        let mut checked: Vec<&str> = expect.iter().map(|(name, _)| *name).collect();
        // KS_DOORBELL is a register of the guest's BAR0, which the host never maps.
        checked.extend(["KS_CPU_SIZE", "KS_DOORBELL", "_KEVENT_SENSOR_H"]);
        let unchecked: Vec<&String> = c.keys().filter(|name| !checked.contains(&name.as_str())).collect();
        assert!(unchecked.is_empty(), "kevent_sensor.h defines {unchecked:?}, which abi.rs does not mirror");
        assert_eq!(&MAGIC.to_le_bytes(), b"EKVTHRM1");
    }

    #[test]
    fn the_in_flight_limit_cannot_overflow_the_guests_uevent_queue() {
        // One interrupt (one firing) reports at most the 12 kinds of event (kt_events[]).
        let queue = c_integer(&c_defines_of("kthermal_irq.c"), "KT_UEVENT_MAX_PENDING");
        assert!(12 * MAX_IN_FLIGHT as u64 <= queue, "{MAX_IN_FLIGHT} firings of 12 uevents exceed {queue}");
        // The longest entry still fits, alone.
        assert!(MAX_REPEAT as usize <= MAX_IN_FLIGHT);
    }

    #[test]
    fn structs_have_the_c_sizes_and_no_padding() {
        assert_eq!(std::mem::size_of::<Header>(), 64);
        assert_eq!(std::mem::size_of::<Entry>(), entry::SIZE);
        assert_eq!(std::mem::offset_of!(Entry, seq), entry::SEQ);
        assert_eq!(std::mem::offset_of!(Entry, cpu), entry::CPU);
        assert_eq!(std::mem::offset_of!(Entry, reg), entry::REG);
        assert_eq!(std::mem::offset_of!(Entry, value), entry::VALUE);
        assert_eq!(std::mem::offset_of!(Entry, repeat), entry::REPEAT);
        assert_eq!(std::mem::offset_of!(Entry, interval_ns), entry::INTERVAL_NS);
        assert_eq!(std::mem::offset_of!(Header, ready), READY_OFFSET);
        assert_eq!(std::mem::offset_of!(Header, guest_cpus), GUEST_CPUS_OFFSET);
        assert_eq!(CPU_SIZE, cpu::RING + std::mem::size_of::<Entry>() * RING_ENTRIES as usize);
        assert!(cpu_offset(MAX_CPUS) <= REGION_SIZE, "the rings fit in BAR2");
        assert!(REGION_SIZE.is_power_of_two());
    }

    #[test]
    fn offsets_follow_the_c_layout() {
        assert_eq!(register_offset(0, REG_THERM_STATUS), 64);
        assert_eq!(register_offset(7, REG_THERM_STATUS), 64 + 56);
        assert_eq!(register_offset(0, REG_PKG_THERM_STATUS), 128);
        assert_eq!(cpu_offset(1), 256 + CPU_SIZE);
        assert_eq!(entry_offset(1, 0), 256 + CPU_SIZE + 128);
        // Free-running indices wrap onto the ring.
        assert_eq!(entry_offset(0, RING_ENTRIES + 3), entry_offset(0, 3));
    }
}
