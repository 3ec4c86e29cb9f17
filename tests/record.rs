//! `cargo xtask record` against fake machines: directories laid out like
//! `/dev/cpu` (N/msr, each MSR at its address) and `/sys` (the CPUs'
//! topology), whose registers a thread changes while the recorder samples
//! them. No guest: recording is a host program.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kevent_bench::msr_trace::{self, Msr, TraceCpu, MAX_ROWS};
use kevent_bench::record::{record, FakeMachine, RecordError, Recorder};
use kevent_bench::Topology;

/// 2 packages of 2 cores, with the sparse core ids real machines have.
fn two_by_two() -> Vec<TraceCpu> {
    (0..4).map(|cpu| TraceCpu { cpu, package: cpu / 2, core: (cpu % 2) * 4 }).collect()
}

fn fake(dir: &Path) -> FakeMachine {
    let machine = FakeMachine::create(dir, &two_by_two(), 95).unwrap();
    for cpu in 0..4 {
        machine.set(cpu, Msr::ThermStatus, 0x8032_0000).unwrap();
        machine.set(cpu, Msr::PackageThermStatus, 0x0032_0000).unwrap();
    }
    machine
}

#[test]
fn a_recording_has_the_topology_tjmax_and_every_change_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let machine = fake(dir.path());
    let mut recorder = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).unwrap();
    let changed = AtomicBool::new(false);
    let mut out = Vec::new();
    let recorded = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            // CPU 2's PROCHOT, with the resolution field (bits 30:27) a real
            // CPU reads back: outside the bench's model, so not recorded.
            machine.set(2, Msr::ThermStatus, 0x8003_0003 | (1 << 27)).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // Package 1's register, written where the recorder reads it: the
            // package's first CPU.
            machine.set(2, Msr::PackageThermStatus, 0x0000_0031).unwrap();
            changed.store(true, Ordering::SeqCst);
        });
        record(&mut recorder, &mut out, Duration::from_millis(2), Duration::from_millis(1000), MAX_ROWS, &[], &|| false)
            .unwrap()
    });
    assert!(changed.load(Ordering::SeqCst));
    assert!(recorded.samples >= 2, "{recorded:?}");
    assert!(!recorded.stopped);

    let trace = msr_trace::parse_bytes(Path::new("recorded.csv"), &out).unwrap();
    assert_eq!(trace.topology, Topology::new(2, 2).unwrap());
    assert_eq!(trace.cpus, two_by_two(), "core ids as sysfs said");
    assert_eq!(trace.tjmax, Some(95));
    let rows: Vec<(u32, u32, Msr, u64)> = trace.rows.iter().map(|r| (r.cpu, r.package, r.msr, r.value)).collect();
    assert_eq!(
        rows,
        [
            // The first sample: every register, core ones in CPU order, then
            // each package through its first CPU.
            (0, 0, Msr::ThermStatus, 0x8032_0000),
            (1, 0, Msr::ThermStatus, 0x8032_0000),
            (2, 1, Msr::ThermStatus, 0x8032_0000),
            (3, 1, Msr::ThermStatus, 0x8032_0000),
            (0, 0, Msr::PackageThermStatus, 0x0032_0000),
            (2, 1, Msr::PackageThermStatus, 0x0032_0000),
            // Then only what changed.
            (2, 1, Msr::ThermStatus, 0x8003_0003),
            (2, 1, Msr::PackageThermStatus, 0x0000_0031),
        ]
    );
    let times: Vec<u64> = trace.rows.iter().map(|r| r.time_us).collect();
    assert!(times[..6].iter().all(|t| *t == times[0]), "one sample, one time: {times:?}");
    // Seen after the first sample, in the order they were made (how long
    // after is the host's scheduling).
    assert!(times[0] < times[6] && times[6] < times[7], "{times:?}");
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("# 0x19c (IA32_THERM_STATUS): bits 0x8000000 were set and are not recorded"),
        "the unmodelled bits are named in the trace:\n{text}"
    );
    // What the replay makes of it: the reset images are not injected.
    let injected: Vec<(u32, Msr, u64)> = trace.injections().iter().map(|i| (i.cpu, i.msr, i.value)).collect();
    assert_eq!(injected, [(2, Msr::ThermStatus, 0x8003_0003), (2, Msr::PackageThermStatus, 0x0000_0031)]);
}

#[test]
fn a_recording_stopped_early_is_a_whole_trace() {
    let dir = tempfile::tempdir().unwrap();
    let machine = fake(dir.path());
    let mut recorder = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).unwrap();
    let mut out = Vec::new();
    let asked = std::cell::Cell::new(0);
    let stop = || {
        asked.set(asked.get() + 1);
        asked.get() > 3
    };
    let recorded =
        record(&mut recorder, &mut out, Duration::from_millis(1), Duration::from_secs(60), MAX_ROWS, &[], &stop)
            .unwrap();
    assert!(recorded.stopped);
    // Asked before each sample and while waiting for it: a few samples at
    // most, not the minute asked for.
    assert!((1..=3).contains(&recorded.samples), "{recorded:?}");
    assert!(recorded.elapsed < Duration::from_secs(1), "{recorded:?}");
    let trace = msr_trace::parse_bytes(Path::new("stopped.csv"), &out).unwrap();
    assert_eq!(trace.rows.len(), 6, "the first sample's rows, nothing after");
}

#[test]
fn a_machine_without_the_msr_module_is_named_with_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let machine = fake(dir.path());
    std::fs::remove_dir_all(machine.msr_dir.join("1")).unwrap();
    let e = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).err().expect("refused");
    assert!(matches!(e, RecordError::NoMsrDevice { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("/dev/cpu/1/msr does not exist: the msr module is not loaded (as root: modprobe msr)"),
        "{message}"
    );
}

#[test]
fn a_cpu_without_the_package_register_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let machine = fake(dir.path());
    // A fake msr file that ends before 0x1b1: a CPU without package
    // thermal management, whose msr driver answers EIO.
    std::fs::OpenOptions::new().write(true).open(machine.msr_dir.join("2/msr")).unwrap().set_len(0x1b0).unwrap();
    let mut recorder = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).unwrap();
    let e = recorder.sample().unwrap_err();
    assert!(matches!(e, RecordError::NoSuchRegister { cpu: 2, msr: Msr::PackageThermStatus, .. }), "{e:?}");
    assert!(e.to_string().starts_with("CPU 2: reading 0x1b1 (IA32_PACKAGE_THERM_STATUS) failed"), "{e}");
}

#[test]
fn a_topology_sysfs_does_not_describe_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let machine = fake(dir.path());
    let id = machine.sysfs_root.join("devices/system/cpu/cpu3/topology/physical_package_id");
    std::fs::write(&id, "one\n").unwrap();
    let e = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).err().expect("refused");
    assert_eq!(e.to_string(), format!("{}: \"one\" is not a number", id.display()));
    std::fs::remove_file(&id).unwrap();
    let e = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).err().expect("refused");
    assert!(e.to_string().starts_with(&format!("{}: cannot read it", id.display())), "{e}");
}

#[test]
fn the_starter_trace_is_a_replayable_throttling_episode() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/traces/throttling.csv");
    let trace = msr_trace::load(&path).unwrap();
    assert_eq!(trace.topology, Topology::new(2, 2).unwrap());
    let injected = trace.injections();
    let package_1: Vec<u64> =
        injected.iter().filter(|i| i.msr == Msr::PackageThermStatus && i.cpu / 2 == 1).map(|i| i.value).collect();
    // Threshold #1, PROCHOT, critical, and back, each with its log bit.
    assert_eq!(package_1, [0x1400c0, 0x300c3, 0xf3, 0xa00e2, 0x1e00a2]);
    assert!(injected.iter().all(|i| i.msr == Msr::ThermStatus || i.cpu / 2 == 1), "package 0's register is quiet");
    assert!(injected.iter().any(|i| i.msr == Msr::ThermStatus && i.cpu == 1), "package 0 warms");
}

#[test]
fn a_machine_with_more_cpus_than_a_guest_is_recorded_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let twelve: Vec<TraceCpu> = (0..12).map(|cpu| TraceCpu { cpu, package: 0, core: cpu }).collect();
    let machine = FakeMachine::create(dir.path(), &twelve, 100).unwrap();
    // All of them: a trace the guest cannot have, refused before a sample.
    let e = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).err().expect("refused");
    assert!(e.to_string().contains("more than the 8 CPUs the bench kernel runs"), "{e}");
    assert!(e.to_string().ends_with("could not be replayed, so nothing is recorded"), "{e}");
    // Four of them: one package of four cores.
    let mut four = Recorder::open(&machine.msr_dir, &machine.sysfs_root, Some(&[0, 1, 2, 3])).unwrap();
    assert_eq!(four.topology(), Topology::new(1, 4).unwrap(), "known before the first sample");
    let mut out = Vec::new();
    record(&mut four, &mut out, Duration::from_millis(1), Duration::ZERO, MAX_ROWS, &[], &|| false).unwrap();
    let trace = msr_trace::parse_bytes(Path::new("four.csv"), &out).unwrap();
    assert_eq!(trace.topology, Topology::new(1, 4).unwrap());
    let e = Recorder::open(&machine.msr_dir, &machine.sysfs_root, Some(&[0, 12])).err().expect("refused");
    assert!(e.to_string().contains("CPU 12 is not online"), "{e}");
}

#[test]
fn a_recording_ends_before_the_sample_that_would_overfill_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let machine = fake(dir.path());
    let mut recorder = Recorder::open(&machine.msr_dir, &machine.sysfs_root, None).unwrap();
    // Each time the recorder asks whether to stop (at least once before
    // each sample), CPU 0's readout changes: every sample after the first
    // (all six registers) brings one row.
    let asked = std::cell::Cell::new(0u64);
    let change = || {
        asked.set(asked.get() + 1);
        machine.set(0, Msr::ThermStatus, 0x8000_0000 | (asked.get() % 100 + 1) << 16).unwrap();
        false
    };
    let mut out = Vec::new();
    let recorded =
        record(&mut recorder, &mut out, Duration::from_millis(1), Duration::from_secs(60), 9, &[], &change).unwrap();
    assert!(recorded.full && !recorded.stopped, "{recorded:?}");
    assert_eq!((recorded.samples, recorded.rows), (4, 9), "6 rows, then 1 per sample up to 9: {recorded:?}");
    let trace = msr_trace::parse_bytes(Path::new("full.csv"), &out).unwrap();
    assert_eq!(trace.rows.len(), 9);
}

#[test]
fn cpus_whose_packages_differ_in_size_are_refused_before_a_sample() {
    let dir = tempfile::tempdir().unwrap();
    let machine = fake(dir.path());
    let e = Recorder::open(&machine.msr_dir, &machine.sysfs_root, Some(&[0, 1, 2])).err().expect("refused");
    assert!(matches!(e, RecordError::NotAGuest { .. }), "{e:?}");
    assert!(e.to_string().starts_with("package 1 has 1 CPU(s) and package 0 2"), "{e}");
}
