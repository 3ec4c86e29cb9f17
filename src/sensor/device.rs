//! The host's model of the sensor device: the shared region, the rings'
//! producer side, and the eventfds of both ends.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

use super::abi::{self, Entry, Header};
use super::ivshmem::{self, EventFd, Setup};
use crate::topology::Topology;

/// The ivshmem peer id QEMU's device gets; the host is [`abi::HOST_PEER`].
const GUEST_PEER: u16 = 1;

/// Which register an injection changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// IA32_THERM_STATUS of the CPU.
    Core,
    /// IA32_PACKAGE_THERM_STATUS of the CPU's package.
    Package,
}

impl Register {
    /// The SDM's name of the MSR.
    pub fn name(self) -> &'static str {
        match self {
            Register::Core => "IA32_THERM_STATUS",
            Register::Package => "IA32_PACKAGE_THERM_STATUS",
        }
    }

    fn abi(self) -> u32 {
        match self {
            Register::Core => abi::REG_THERM_STATUS,
            Register::Package => abi::REG_PKG_THERM_STATUS,
        }
    }
}

/// How the guest fires a published entry's image: `repeat` times, the first
/// when its handler takes the entry, the others `interval_ns` apart on the
/// guest's own clock, so that their spacing owes nothing to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Firings; the guest accepts 1 to [`abi::MAX_REPEAT`].
    pub repeat: u32,
    /// Guest nanoseconds between firings, at most [`abi::MAX_INTERVAL_NS`];
    /// 0 fires them all at once.
    pub interval_ns: u32,
}

impl Timing {
    /// One firing: a plain injection.
    pub const ONCE: Timing = Timing { repeat: 1, interval_ns: 0 };

    /// The guest fires it: 1 to [`abi::MAX_REPEAT`] firings, at most
    /// [`abi::MAX_INTERVAL_NS`] apart. It refuses any other with EINVAL.
    pub fn is_valid(self) -> bool {
        (1..=abi::MAX_REPEAT).contains(&self.repeat) && self.interval_ns <= abi::MAX_INTERVAL_NS
    }

    /// What the entry counts against [`abi::MAX_IN_FLIGHT`]: its firings.
    /// A refused entry fires nothing, but its acknowledgement queues behind
    /// the others like one firing's.
    pub fn firings(self) -> usize {
        if self.is_valid() {
            self.repeat as usize
        } else {
            1
        }
    }
}

impl Default for Timing {
    fn default() -> Timing {
        Timing::ONCE
    }
}

/// No room for an entry on a CPU's ring: the guest has not consumed the
/// ring's entries, or not acknowledged enough firings over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull {
    /// The CPU whose ring had no room.
    pub cpu: u32,
}

/// An injection published on a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The ring's CPU, whose vector raises the interrupt.
    pub cpu: u32,
    /// The entry's sequence number, which the guest acknowledges (`acked_seq`).
    pub seq: u64,
}

/// What the guest has done with one CPU's ring, for progress and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStatus {
    /// Entries published by the host.
    pub head: u32,
    /// Entries the guest's handler has taken.
    pub tail: u32,
    /// Highest sequence number whose messages are all out.
    pub acked_seq: u64,
    /// Runs of the guest's handler for this CPU's vector.
    pub interrupts: u64,
    /// Entries the guest refused (bad seq, CPU, timing or image) since its driver bound.
    pub rejected: u64,
    /// Sequence number of the last refused entry, 0 if none.
    pub rejected_seq: u64,
    /// Positive errno of the last refusal: EINVAL (seq, timing, image) or EXDEV
    /// (handled on another CPU); 0 if none.
    pub rejected_errno: u32,
    /// Messages of this CPU's interrupts the guest could not send.
    pub events_dropped: u64,
}

/// The emulated device: shared memory, rings and both ends' eventfds.
pub struct SensorDevice {
    region: MmapRegion<()>,
    shared_memory: File,
    topology: Topology,
    cpus: u32,
    /// The host's vectors: QEMU signals [`abi::ACK_VECTOR`] when the guest rings.
    host_vectors: Vec<EventFd>,
    /// Writing to vector i raises the guest's MSI-X vector i.
    guest_vectors: Vec<EventFd>,
    heads: Vec<u32>,
    /// Per CPU, the published entries not yet acknowledged, oldest first:
    /// seq and firings.
    in_flight: Vec<VecDeque<(u64, usize)>>,
    next_seq: u64,
    /// QEMU's end of the setup socket, kept open while the device lives.
    connection: Option<UnixStream>,
}

impl std::fmt::Debug for SensorDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorDevice").field("cpus", &self.cpus).field("next_seq", &self.next_seq).finish()
    }
}

fn map_error(e: vm_memory::mmap::MmapRegionError) -> io::Error {
    io::Error::other(format!("map the shared region: {e}"))
}

fn access_error(e: vm_memory::VolatileMemoryError) -> io::Error {
    io::Error::other(format!("shared region access: {e}"))
}

impl SensorDevice {
    /// A device for the CPUs of `topology`: the region initialised with
    /// its header, no vector connected yet.
    pub fn new(topology: Topology) -> io::Result<SensorDevice> {
        let cpus = topology.cpus();
        if topology.check().is_err() || cpus > abi::MAX_CPUS || topology.packages > abi::MAX_PACKAGES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{topology}: the sensor device serves 1 to {} CPUs in at most {} packages",
                    abi::MAX_CPUS,
                    abi::MAX_PACKAGES
                ),
            ));
        }
        let shared_memory = ivshmem::shared_memory("kevent-sensor", abi::REGION_SIZE)?;
        let region = MmapRegion::from_file(FileOffset::new(shared_memory.try_clone()?, 0), abi::REGION_SIZE)
            .map_err(map_error)?;
        let host_vectors = (0..cpus).map(|_| EventFd::new()).collect::<io::Result<Vec<_>>>()?;
        let guest_vectors = (0..cpus).map(|_| EventFd::new()).collect::<io::Result<Vec<_>>>()?;
        let device = SensorDevice {
            region,
            shared_memory,
            topology,
            cpus,
            host_vectors,
            guest_vectors,
            heads: vec![0; cpus as usize],
            in_flight: vec![VecDeque::new(); cpus as usize],
            next_seq: 1,
            connection: None,
        };
        let header = Header {
            magic: abi::MAGIC,
            version: abi::VERSION,
            nr_cpus: cpus,
            ring_entries: abi::RING_ENTRIES,
            nr_packages: topology.packages,
            cores_per_package: topology.cores,
            ..Header::default()
        };
        device.memory().write_obj(header, abi::HEADER_OFFSET).map_err(access_error)?;
        Ok(device)
    }

    fn memory(&self) -> VolatileSlice<'_, ()> {
        self.region.as_volatile_slice()
    }

    /// CPUs the device serves: its rings and vectors, 1 to [`abi::MAX_CPUS`].
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// Whether the guest has `cpu` online, as its driver last said (CPU
    /// hotplug): a package's change interrupts the cores that are up.
    pub fn is_online(&self, cpu: u32) -> bool {
        cpu < self.cpus && self.load_u32(abi::ONLINE_OFFSET) & (1 << cpu) != 0
    }

    /// Hands QEMU the shared memory and every vector over `stream`
    /// (QEMU's connection to the server socket) and keeps it open.
    pub fn serve(&mut self, stream: UnixStream) -> io::Result<()> {
        let setup = Setup {
            shared_memory: self.shared_memory.as_fd(),
            host_vectors: self.host_vectors.iter().map(AsFd::as_fd).collect(),
            guest_vectors: self.guest_vectors.iter().map(AsFd::as_fd).collect(),
        };
        ivshmem::handshake(&stream, abi::HOST_PEER, GUEST_PEER, &setup)?;
        self.connection = Some(stream);
        Ok(())
    }

    /// A descriptor that becomes readable when the guest acknowledges.
    pub fn ack_events(&self) -> io::Result<EventFd> {
        self.host_vectors[usize::from(abi::ACK_VECTOR)].try_clone()
    }

    /// The guest driver has installed a handler on every vector.
    pub fn is_ready(&self) -> bool {
        self.load_u32(abi::READY_OFFSET) == 1
    }

    /// CPUs whose rings the guest serves (0 before it is ready).
    pub fn guest_cpus(&self) -> u32 {
        self.load_u32(abi::GUEST_CPUS_OFFSET)
    }

    fn load_u32(&self, offset: usize) -> u32 {
        self.memory().load(offset, Ordering::Acquire).expect("offsets are inside the region")
    }

    fn load_u64(&self, offset: usize) -> u64 {
        self.memory().load(offset, Ordering::Acquire).expect("offsets are inside the region")
    }

    fn check_cpu(&self, cpu: u32) {
        assert!(cpu < self.cpus, "CPU {cpu} of a {}-CPU sensor device", self.cpus);
    }

    /// The live image of a register of `cpu` (its package's, for the
    /// package register), as the host last set it.
    pub fn register(&self, cpu: u32, register: Register) -> u64 {
        self.check_cpu(cpu);
        self.load_u64(self.register_offset(cpu, register))
    }

    fn register_offset(&self, cpu: u32, register: Register) -> usize {
        match register {
            Register::Core => abi::core_register_offset(cpu),
            Register::Package => abi::package_register_offset(self.topology.package_of(cpu)),
        }
    }

    /// Firings of unacknowledged entries over all CPUs, forgetting the
    /// entries acknowledged since the last call.
    fn firings_in_flight(&mut self) -> usize {
        let mut in_flight = 0;
        for c in 0..self.cpus {
            let acked = self.load_u64(abi::cpu_offset(c) + abi::cpu::ACKED_SEQ);
            let pending = &mut self.in_flight[c as usize];
            while pending.front().is_some_and(|(seq, _)| *seq <= acked) {
                pending.pop_front();
            }
            in_flight += pending.iter().map(|(_, firings)| firings).sum::<usize>();
        }
        in_flight
    }

    /// Slots of `cpu`'s ring the guest has taken the entries of.
    fn free_slots(&self, cpu: u32) -> u32 {
        let untaken = self.heads[cpu as usize].wrapping_sub(self.load_u32(abi::cpu_offset(cpu) + abi::cpu::TAIL));
        abi::RING_ENTRIES.saturating_sub(untaken)
    }

    /// Entries of one firing that can still be published on `cpu`'s ring.
    /// A slot is free once the guest has taken its entry, but the host
    /// also keeps no more than [`abi::MAX_IN_FLIGHT`] firings unacknowledged
    /// over all CPUs: the guest's handler fires faster than its workqueue
    /// sends the uevents, and that queue is bounded.
    pub fn space(&mut self, cpu: u32) -> u32 {
        let firings = abi::MAX_IN_FLIGHT.saturating_sub(self.firings_in_flight());
        self.free_slots(cpu).min(firings as u32)
    }

    /// Whether an entry fired with `timing` can be published on `cpu`'s
    /// ring now (see [`Self::space`]). Every timing fits once the guest has
    /// acknowledged everything.
    pub fn has_room(&mut self, cpu: u32, timing: Timing) -> bool {
        self.free_slots(cpu) > 0 && self.firings_in_flight() + timing.firings() <= abi::MAX_IN_FLIGHT
    }

    /// The oldest entry of `cpu` not yet acknowledged, as of the last
    /// [`Self::space`] or [`Self::has_room`].
    pub fn oldest_unacked(&self, cpu: u32) -> Option<u64> {
        self.in_flight[cpu as usize].front().map(|(seq, _)| *seq)
    }

    /// The hardware changes state: the new image becomes the live register
    /// and is latched in the next entry of `cpu`'s ring with its `timing`,
    /// which is then published. The interrupt is not raised yet: see
    /// [`Self::ring`]. A timing the guest refuses is published all the same
    /// (for tests of the guest's checks).
    pub fn publish(&mut self, cpu: u32, register: Register, value: u64, timing: Timing) -> Result<Published, RingFull> {
        self.check_cpu(cpu);
        if !self.has_room(cpu, timing) {
            return Err(RingFull { cpu });
        }
        let seq = self.next_seq;
        let index = self.heads[cpu as usize];
        let Timing { repeat, interval_ns } = timing;
        let entry = Entry { seq, cpu, reg: register.abi(), value, repeat, interval_ns };
        let memory = self.memory();
        memory.store(value, self.register_offset(cpu, register), Ordering::Relaxed).expect("in the region");
        memory.write_obj(entry, abi::entry_offset(cpu, index)).expect("in the region");
        // The guest loads head with Acquire before it reads the entry.
        let head = index.wrapping_add(1);
        memory.store(head, abi::cpu_offset(cpu) + abi::cpu::HEAD, Ordering::Release).expect("in the region");
        self.heads[cpu as usize] = head;
        self.in_flight[cpu as usize].push_back((seq, timing.firings()));
        self.next_seq += 1;
        Ok(Published { cpu, seq })
    }

    /// Raises `cpu`'s MSI-X vector. QEMU drops a ring that arrives before
    /// the guest has enabled MSI-X: wait for [`Self::is_ready`] first.
    pub fn ring(&self, cpu: u32) -> io::Result<()> {
        self.check_cpu(cpu);
        self.guest_vectors[cpu as usize].notify()
    }

    /// `cpu`'s ring as the guest last published it, with the host's own head.
    /// Panics if the device has no such CPU.
    pub fn status(&self, cpu: u32) -> CpuStatus {
        self.check_cpu(cpu);
        let base = abi::cpu_offset(cpu);
        CpuStatus {
            head: self.heads[cpu as usize],
            tail: self.load_u32(base + abi::cpu::TAIL),
            acked_seq: self.load_u64(base + abi::cpu::ACKED_SEQ),
            interrupts: self.load_u64(base + abi::cpu::INTERRUPTS),
            rejected: self.load_u64(base + abi::cpu::REJECTED),
            rejected_seq: self.load_u64(base + abi::cpu::REJECTED_SEQ),
            rejected_errno: self.load_u32(base + abi::cpu::REJECTED_ERRNO),
            events_dropped: self.load_u64(base + abi::cpu::EVENTS_DROPPED),
        }
    }

    /// Every message of `published` has been broadcast by the guest.
    pub fn is_acked(&self, published: Published) -> bool {
        self.status(published.cpu).acked_seq >= published.seq
    }

    /// The errno the guest refused `published` with, once acknowledged.
    /// The guest keeps only its newest refusal per CPU: a caller that
    /// publishes several entries before it waits learns of earlier
    /// refusals only through [`CpuStatus`]'s `rejected` count.
    pub fn rejection(&self, published: Published) -> Option<u32> {
        let status = self.status(published.cpu);
        (status.rejected_seq == published.seq).then_some(status.rejected_errno)
    }

    /// Raw access for tests of the guest's defences against a broken host.
    pub fn store_u32_for_test(&self, offset: usize, value: u32) {
        self.memory().store(value, offset, Ordering::Release).expect("in the region");
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    use super::*;
    use crate::sensor::ivshmem::recv_message;

    /// What QEMU and the guest driver do with the device, in a few lines:
    /// receive the setup, map BAR2, and serve the rings.
    struct StandInGuest {
        region: MmapRegion<()>,
        host_vectors: Vec<EventFd>,
        guest_vectors: Vec<EventFd>,
    }

    /// Reserved bits of IA32_THERM_STATUS, which the driver refuses.
    const CORE_RESERVED: u64 = !0x807f_0fff;

    impl StandInGuest {
        fn connect(device: &mut SensorDevice) -> (StandInGuest, Vec<i64>) {
            let (server, client) = UnixStream::pair().unwrap();
            device.serve(server).unwrap();
            let mut values = Vec::new();
            let mut fds: Vec<Option<OwnedFd>> = Vec::new();
            for _ in 0..3 + 2 * device.cpus() {
                let (value, fd) = recv_message(&client).unwrap();
                values.push(value);
                fds.push(fd);
            }
            let mut fds = fds.into_iter();
            assert!(fds.next().unwrap().is_none() && fds.next().unwrap().is_none(), "version and id carry no fd");
            let shm = File::from(fds.next().unwrap().expect("the shared memory comes with -1"));
            let size = shm.metadata().unwrap().len() as usize;
            let region = MmapRegion::from_file(FileOffset::new(shm, 0), size).unwrap();
            let mut vectors: Vec<EventFd> = fds.map(|fd| EventFd::from_owned(fd.expect("vectors carry fds"))).collect();
            let guest_vectors = vectors.split_off(device.cpus() as usize);
            (StandInGuest { region, host_vectors: vectors, guest_vectors }, values)
        }

        fn memory(&self) -> VolatileSlice<'_, ()> {
            self.region.as_volatile_slice()
        }

        fn set_ready(&self, cpus: u32) {
            self.memory().store(cpus, abi::GUEST_CPUS_OFFSET, Ordering::Relaxed).unwrap();
            self.memory().store(1u32, abi::READY_OFFSET, Ordering::Release).unwrap();
        }

        /// One run of the driver's handler for `cpu`'s vector.
        fn handle(&self, cpu: u32) -> Vec<Entry> {
            let memory = self.memory();
            let base = abi::cpu_offset(cpu);
            let head: u32 = memory.load(base + abi::cpu::HEAD, Ordering::Acquire).unwrap();
            let mut tail: u32 = memory.load(base + abi::cpu::TAIL, Ordering::Relaxed).unwrap();
            let mut taken = Vec::new();
            while tail != head {
                let entry: Entry = memory.read_obj(abi::entry_offset(cpu, tail)).unwrap();
                if entry.value & CORE_RESERVED != 0 {
                    let rejected: u64 = memory.load(base + abi::cpu::REJECTED, Ordering::Relaxed).unwrap();
                    memory.store(rejected + 1, base + abi::cpu::REJECTED, Ordering::Relaxed).unwrap();
                    memory.store(entry.seq, base + abi::cpu::REJECTED_SEQ, Ordering::Relaxed).unwrap();
                    memory.store(libc::EINVAL as u32, base + abi::cpu::REJECTED_ERRNO, Ordering::Relaxed).unwrap();
                }
                tail = tail.wrapping_add(1);
                memory.store(tail, base + abi::cpu::TAIL, Ordering::Release).unwrap();
                memory.store(entry.seq, base + abi::cpu::ACKED_SEQ, Ordering::Release).unwrap();
                taken.push(entry);
            }
            self.host_vectors[usize::from(abi::ACK_VECTOR)].notify().unwrap();
            taken
        }
    }

    const SHORT: Duration = Duration::from_millis(200);

    #[test]
    fn the_handshake_is_the_ivshmem_protocol_in_order() {
        let mut device = SensorDevice::new(Topology::flat(2)).unwrap();
        let (guest, values) = StandInGuest::connect(&mut device);
        // Version 0, the client's id 1, -1 with the memory, the host peer's
        // two vectors, then the client's own two.
        assert_eq!(values, [0, 1, -1, 0, 0, 1, 1]);
        assert_eq!(guest.region.size(), abi::REGION_SIZE);
        let header: Header = guest.memory().read_obj(abi::HEADER_OFFSET).unwrap();
        assert_eq!(
            (header.magic, header.version, header.nr_cpus, header.ring_entries, header.ready),
            (abi::MAGIC, abi::VERSION, 2, abi::RING_ENTRIES, 0)
        );
        // The descriptors are the device's own eventfds, in vector order.
        device.ring(1).unwrap();
        assert!(!guest.guest_vectors[0].poll(Duration::ZERO).unwrap());
        assert!(guest.guest_vectors[1].poll(SHORT).unwrap());
        assert_eq!(guest.guest_vectors[1].drain().unwrap(), 1);
        let acks = device.ack_events().unwrap();
        guest.host_vectors[0].notify().unwrap();
        assert!(acks.poll(SHORT).unwrap());
    }

    #[test]
    fn the_package_register_is_one_per_package_and_the_guest_says_which_cpus_are_online() {
        let mut device = SensorDevice::new(Topology::new(2, 2).unwrap()).unwrap();
        let (guest, _) = StandInGuest::connect(&mut device);
        let header: Header = guest.memory().read_obj(abi::HEADER_OFFSET).unwrap();
        assert_eq!((header.nr_cpus, header.nr_packages, header.cores_per_package), (4, 2, 2));
        device.publish(3, Register::Package, 0x0005_0001, Timing::ONCE).unwrap();
        // CPUs 2 and 3 share package 1's register; package 0's is untouched.
        assert_eq!(device.register(2, Register::Package), 0x0005_0001);
        assert_eq!(device.register(0, Register::Package), 0);
        let package_1: u64 = guest.memory().read_obj(abi::package_register_offset(1)).unwrap();
        assert_eq!(package_1, 0x0005_0001);
        assert_eq!(device.register(3, Register::Core), 0, "a package image is not the core's");
        assert!(!device.is_online(0), "nothing is online before the guest says so");
        guest.memory().store(0b1011u32, abi::ONLINE_OFFSET, Ordering::Release).unwrap();
        let online: Vec<bool> = (0..5).map(|cpu| device.is_online(cpu)).collect();
        assert_eq!(online, [true, true, false, true, false], "CPU 4 is not the device's");
        assert!(SensorDevice::new(Topology { packages: 3, cores: 3 }).is_err());
    }

    #[test]
    fn an_injection_is_latched_published_rung_and_acknowledged() {
        let mut device = SensorDevice::new(Topology::flat(2)).unwrap();
        let (guest, _) = StandInGuest::connect(&mut device);
        assert!(!device.is_ready());
        guest.set_ready(2);
        assert!(device.is_ready());
        assert_eq!(device.guest_cpus(), 2);

        let first = device.publish(1, Register::Core, 0x8005_0001, Timing::ONCE).unwrap();
        let second = device.publish(1, Register::Package, 0x0032_0400, Timing::ONCE).unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(device.register(1, Register::Core), 0x8005_0001);
        assert_eq!(device.register(1, Register::Package), 0x0032_0400);
        assert_eq!(device.register(0, Register::Core), 0, "CPU 0 untouched");
        assert!(!device.is_acked(first));
        device.ring(1).unwrap();

        assert!(guest.guest_vectors[1].poll(SHORT).unwrap());
        let taken = guest.handle(1);
        assert_eq!(
            taken,
            [
                Entry { seq: 1, cpu: 1, reg: abi::REG_THERM_STATUS, value: 0x8005_0001, repeat: 1, interval_ns: 0 },
                Entry { seq: 2, cpu: 1, reg: abi::REG_PKG_THERM_STATUS, value: 0x0032_0400, repeat: 1, interval_ns: 0 },
            ],
            "each entry keeps its own image: two injections before one interrupt are not merged"
        );
        assert!(device.ack_events().unwrap().poll(SHORT).unwrap());
        assert!(device.is_acked(first) && device.is_acked(second));
        assert_eq!(device.rejection(second), None);
        let status = device.status(1);
        assert_eq!((status.head, status.tail, status.acked_seq), (2, 2, 2));
    }

    #[test]
    fn a_full_ring_refuses_until_the_guest_consumes() {
        let mut device = SensorDevice::new(Topology::flat(1)).unwrap();
        let (guest, _) = StandInGuest::connect(&mut device);
        for _ in 0..abi::RING_ENTRIES {
            device.publish(0, Register::Core, 0x8000_0000, Timing::ONCE).unwrap();
        }
        assert_eq!(device.space(0), 0);
        assert_eq!(device.publish(0, Register::Core, 0x8000_0001, Timing::ONCE), Err(RingFull { cpu: 0 }));
        assert_eq!(guest.handle(0).len(), abi::RING_ENTRIES as usize);
        assert_eq!(device.space(0), abi::RING_ENTRIES);
        // Free-running indices wrap onto the ring's first slot.
        let next = device.publish(0, Register::Core, 0x8000_0001, Timing::ONCE).unwrap();
        assert_eq!(next.seq, u64::from(abi::RING_ENTRIES) + 1);
        assert_eq!(guest.handle(0)[0].value, 0x8000_0001);
    }

    #[test]
    fn no_more_than_max_in_flight_entries_wait_for_their_acknowledgement() {
        let cpus = abi::MAX_CPUS;
        let mut device = SensorDevice::new(Topology::flat(cpus)).unwrap();
        let (guest, _) = StandInGuest::connect(&mut device);
        let mut published = Vec::new();
        for k in 0..abi::MAX_IN_FLIGHT {
            published.push(device.publish(k as u32 % cpus, Register::Core, 0x8000_0000, Timing::ONCE).unwrap());
        }
        // The guest takes every entry but has acknowledged none yet: every
        // ring has room, but the device as a whole has none.
        let per_cpu = (abi::MAX_IN_FLIGHT / cpus as usize) as u32;
        assert!(per_cpu < abi::RING_ENTRIES);
        for cpu in 0..cpus {
            guest.memory().store(per_cpu, abi::cpu_offset(cpu) + abi::cpu::TAIL, Ordering::Release).unwrap();
        }
        assert!((0..cpus).all(|cpu| device.space(cpu) == 0), "the limit is over all CPUs");
        assert_eq!(device.oldest_unacked(1), Some(2));
        // CPU 0's fifth entry: five acknowledged free five places, for any CPU.
        let fifth = published[4 * cpus as usize].seq;
        guest.memory().store(fifth, abi::cpu_offset(0) + abi::cpu::ACKED_SEQ, Ordering::Release).unwrap();
        assert_eq!((device.space(0), device.space(cpus - 1)), (5, 5));
        assert_eq!(device.oldest_unacked(0), Some(fifth + u64::from(cpus)));
    }

    #[test]
    fn a_timed_entry_counts_its_firings_not_itself_against_max_in_flight() {
        let mut device = SensorDevice::new(Topology::flat(2)).unwrap();
        let (guest, _) = StandInGuest::connect(&mut device);
        let storm = Timing { repeat: 1000, interval_ns: 380_000 };
        let timed = device.publish(1, Register::Core, 0x8000_0001, storm).unwrap();
        let entry: Entry = guest.memory().read_obj(abi::entry_offset(1, 0)).unwrap();
        assert_eq!(
            entry,
            Entry {
                seq: 1,
                cpu: 1,
                reg: abi::REG_THERM_STATUS,
                value: 0x8000_0001,
                repeat: 1000,
                interval_ns: 380_000
            }
        );
        // One slot of CPU 1's ring, but 1000 of the 1024 firings, on any CPU.
        assert_eq!((device.space(0), device.space(1)), (24, 24));
        assert!(device.has_room(0, Timing { repeat: 24, interval_ns: 0 }));
        assert!(!device.has_room(0, Timing { repeat: 25, interval_ns: 0 }));
        // The guest takes the entry when it fires the first time, and
        // acknowledges it after the last: the firings stay counted.
        guest.memory().store(1u32, abi::cpu_offset(1) + abi::cpu::TAIL, Ordering::Release).unwrap();
        assert_eq!(device.space(1), 24);
        // A timing the guest refuses fires nothing: it counts as one.
        let refused = device.publish(0, Register::Core, 0x8000_0001, Timing { repeat: 0, interval_ns: 0 }).unwrap();
        assert_eq!(device.space(0), 23);
        guest.memory().store(timed.seq, abi::cpu_offset(1) + abi::cpu::ACKED_SEQ, Ordering::Release).unwrap();
        assert_eq!(device.space(1), abi::RING_ENTRIES, "all of CPU 1's slots, 1023 firings");
        assert_eq!(device.space(0), abi::RING_ENTRIES - 1, "the refused entry is not taken yet");
        // The longest entry fits, but only with nothing else in flight.
        let longest = Timing { repeat: abi::MAX_REPEAT, interval_ns: abi::MAX_INTERVAL_NS };
        assert!(!device.has_room(1, longest));
        guest.memory().store(refused.seq, abi::cpu_offset(0) + abi::cpu::ACKED_SEQ, Ordering::Release).unwrap();
        assert!(device.has_room(1, longest));
    }

    #[test]
    fn the_guest_fires_one_to_max_repeat_firings_at_most_max_interval_apart() {
        let timing = |repeat, interval_ns| Timing { repeat, interval_ns };
        assert_eq!(Timing::default(), timing(1, 0));
        assert!(timing(1, 0).is_valid() && timing(abi::MAX_REPEAT, abi::MAX_INTERVAL_NS).is_valid());
        assert!(!timing(0, 0).is_valid());
        assert!(!timing(abi::MAX_REPEAT + 1, 0).is_valid());
        assert!(!timing(2, abi::MAX_INTERVAL_NS + 1).is_valid());
        assert_eq!((timing(500, 380_000).firings(), timing(0, 0).firings(), timing(2000, 0).firings()), (500, 1, 1));
    }

    #[test]
    fn a_refused_entry_is_reported_with_its_errno() {
        let mut device = SensorDevice::new(Topology::flat(1)).unwrap();
        let (guest, _) = StandInGuest::connect(&mut device);
        let good = device.publish(0, Register::Core, 0x8000_0001, Timing::ONCE).unwrap();
        let bad = device.publish(0, Register::Core, 0x4000_0000, Timing::ONCE).unwrap();
        guest.handle(0);
        assert!(device.is_acked(bad));
        assert_eq!(device.rejection(good), None);
        assert_eq!(device.rejection(bad), Some(libc::EINVAL as u32));
        assert_eq!(device.status(0).rejected, 1);
    }

    #[test]
    fn a_device_serves_one_to_eight_cpus() {
        assert!(SensorDevice::new(Topology::flat(0)).is_err());
        assert!(SensorDevice::new(Topology::flat(abi::MAX_CPUS + 1)).is_err());
        assert!(SensorDevice::new(Topology::flat(abi::MAX_CPUS)).is_ok());
    }
}
