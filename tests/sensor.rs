//! The emulated sensor device in a real guest: MSI-X vector i runs on CPU
//! i, every entry of a coalesced burst is reported, the guest outlives a
//! dying host emulator, and the host's waits on the guest are bounded.

mod common;

use std::time::{Duration, Instant};

use common::{boot, kmessages, read, shut_down, uevents, BOUND};
use kevent_bench::events::{self, Event};
use kevent_bench::sensor::{abi, Register, SensorDevice};
use kevent_bench::{exit_code, Failure, Machine, MachineConfig};
use kevent_wire::{Command, Datagram, Outcome};

const PROCHOT_95C: u64 = 0x8005_0001;
const NORMAL_70C: u64 = 0x801e_0000;
const DEVICE_DEBUGFS: &str = "/sys/kernel/debug/kevent_thermal/device";

fn config(test: &str) -> MachineConfig {
    common::config_with_params(test, &[("kevent_thermal", "rate_limit_ms", "0")])
}

fn write(machine: &mut Machine, path: &str, data: &str) {
    assert_eq!(common::write(machine, path, data), Outcome::Done, "write {data:?} to {path}");
}

/// The value of one `name value` line of the driver's stats file.
fn device_stat(machine: &mut Machine, name: &str) -> u64 {
    let stats = read(machine, &format!("{DEVICE_DEBUGFS}/stats"));
    let value = stats.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name} in the stats:\n{stats}"))
}

/// The per-CPU counts of the `/proc/interrupts` line named `name`.
fn interrupt_counts(table: &str, name: &str, cpus: usize) -> Vec<u64> {
    let line = table
        .lines()
        .find(|line| line.split_whitespace().last() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/interrupts:\n{table}"));
    line.split_whitespace().skip(1).take(cpus).map(|n| n.parse().unwrap()).collect()
}

fn inject(machine: &mut Machine, cpu: u32, value: u64) {
    let published = machine.fire(cpu, Register::Core, value).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(machine.wait_acked(published).unwrap_or_else(|f| panic!("{f}")), None);
}

/// The first auxiliary line ("Cpu: N") of each kmessage, in order.
fn kmessage_cpus(datagrams: &[Datagram]) -> Vec<String> {
    kmessages(datagrams)
        .into_iter()
        .map(|d| match events::decode(d) {
            Event::Kmessage { aux, .. } => aux.first().cloned().unwrap_or_default(),
            other => panic!("not a kmessage: {other:?}"),
        })
        .collect()
}

/// The PCI address of the sensor device, from the kernel's device list
/// (`/proc/bus/pci/devices`: bus and devfn in hex, then vendor and device).
fn sensor_pci_address(machine: &mut Machine) -> String {
    let devices = read(machine, "/proc/bus/pci/devices");
    let ids = format!("{:04x}{:04x}", abi::PCI_VENDOR, abi::PCI_DEVICE);
    let line = devices
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(ids.as_str()))
        .unwrap_or_else(|| panic!("no {ids} in /proc/bus/pci/devices:\n{devices}"));
    assert_eq!(line.split_whitespace().last(), Some("kevent_thermal"), "bound to our driver: {line}");
    let bus_devfn = u16::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
    let (bus, devfn) = (bus_devfn >> 8, bus_devfn & 0xff);
    format!("0000:{bus:02x}:{:02x}.{}", devfn >> 3, devfn & 7)
}

fn sensor(machine: &Machine) -> &SensorDevice {
    machine.sensor().expect("the guest has the sensor device")
}

#[test]
fn each_injection_runs_on_the_vector_of_its_target_cpu() {
    let mut m = boot(&config("sensor-vectors"));
    let before = read(&mut m, "/proc/interrupts");
    for _ in 0..3 {
        inject(&mut m, 0, PROCHOT_95C);
    }
    for _ in 0..5 {
        inject(&mut m, 1, PROCHOT_95C);
    }
    // Every request hands out the datagrams received so far: fence first.
    let datagrams = m.fence(BOUND).unwrap().datagrams;
    let after = read(&mut m, "/proc/interrupts");
    let delta = |name: &str| -> Vec<u64> {
        let (b, a) = (interrupt_counts(&before, name, 2), interrupt_counts(&after, name, 2));
        a.iter().zip(&b).map(|(a, b)| a - b).collect()
    };
    // One interrupt per fenced injection, on the target CPU's own vector,
    // and that vector runs on that CPU only.
    assert_eq!(delta("kevent_thermal-cpu0"), [3, 0], "{after}");
    assert_eq!(delta("kevent_thermal-cpu1"), [0, 5], "{after}");
    assert_eq!(sensor(&m).status(0).interrupts, 3);
    assert_eq!(sensor(&m).status(1).interrupts, 5);
    let cpus = kmessage_cpus(&datagrams);
    assert_eq!(cpus, [vec!["Cpu: 0"; 3], vec!["Cpu: 1"; 5]].concat());
    shut_down(m);
}

#[test]
fn a_burst_faster_than_the_guest_is_reported_entry_by_entry() {
    let mut m = boot(&config("sensor-burst"));
    let mut last = None;
    for k in 0..300 {
        let value = if k % 2 == 0 { PROCHOT_95C } else { NORMAL_70C };
        last = Some(m.fire(1, Register::Core, value).unwrap_or_else(|f| panic!("{f}")));
    }
    assert_eq!(m.wait_acked(last.unwrap()).unwrap(), None);
    let status = sensor(&m).status(1);
    assert_eq!((status.head, status.tail, status.acked_seq), (300, 300, 300));
    // However many interrupts it took (MSIs coalesce), the handler took
    // each entry once.
    let datagrams = m.fence(BOUND).unwrap().datagrams;
    assert_eq!(device_stat(&mut m, "cpu1_entries"), 300);
    assert_eq!(device_stat(&mut m, "cpu1_interrupts"), status.interrupts);
    assert_eq!(uevents(&datagrams).len(), 300);
    // High and normal alternate, in the order fired.
    let signals: Vec<String> = kmessages(&datagrams)
        .into_iter()
        .map(|d| match events::decode(d) {
            Event::Kmessage { signal, .. } => signal,
            other => panic!("not a kmessage: {other:?}"),
        })
        .collect();
    let fired: Vec<&str> = (0..300).map(|k| if k % 2 == 0 { "high" } else { "normal" }).collect();
    assert_eq!(signals, fired);
    shut_down(m);
}

#[test]
fn the_guest_outlives_a_host_emulator_that_scribbles_and_dies_mid_burst() {
    let mut m = boot(&config("sensor-host-dies"));
    inject(&mut m, 0, PROCHOT_95C);
    for _ in 0..100 {
        m.fire(1, Register::Core, PROCHOT_95C).unwrap_or_else(|f| panic!("{f}"));
    }
    // A dying emulator leaves garbage behind: a head index far past the
    // guest's tail, rung once more, then every host descriptor closes.
    let device = sensor(&m);
    let head = abi::cpu_offset(0) + abi::cpu::HEAD;
    device.store_u32_for_test(head, 0x8000_0000);
    device.ring(0).unwrap();
    m.disconnect_sensor();

    // The guest runs on: its agent answers, debugfs injection still works,
    // and the driver counted the corrupt ring instead of walking it.
    let mut exchange = m.request(Command::Inject { package: false, cpu: 0, value: NORMAL_70C }, BOUND).unwrap();
    assert_eq!(exchange.outcome, Outcome::Done);
    exchange.datagrams.extend(m.fence(BOUND).unwrap().datagrams);
    let cpus = kmessage_cpus(&exchange.datagrams);
    // The first device injection and the debugfs one; the burst on CPU 1
    // may still be finishing.
    assert_eq!(cpus.iter().filter(|c| *c == "Cpu: 0").count(), 2, "{cpus:?}");
    // The scribbled ring's interrupt runs on its own time: look until it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    while device_stat(&mut m, "cpu0_ring_corrupt") != 1 {
        assert!(Instant::now() < deadline, "the driver never saw the corrupt ring");
        std::thread::sleep(Duration::from_millis(20));
    }
    // No kernel report, and a clean power-off.
    shut_down(m);
}

#[test]
fn an_image_the_hardware_cannot_produce_is_refused_and_changes_nothing() {
    let mut m = boot(&config("sensor-refused"));
    // Bit 30 is reserved in IA32_THERM_STATUS.
    let published = m.fire(1, Register::Core, 0xc000_0001).unwrap();
    assert_eq!(m.wait_acked(published).unwrap(), Some(libc::EINVAL as u32));
    assert_eq!(sensor(&m).status(1).rejected, 1);
    let therm_status = read(&mut m, "/sys/kernel/debug/kevent_thermal/cpu1/therm_status");
    assert_eq!(therm_status, "0x80320000\n", "the reset image, untouched");
    inject(&mut m, 1, PROCHOT_95C);
    let cpus = kmessage_cpus(&m.fence(BOUND).unwrap().datagrams);
    assert_eq!(cpus, ["Cpu: 1"], "only the good injection is reported");
    assert_eq!(device_stat(&mut m, "cpu1_bad_entry"), 1);
    shut_down(m);
}

#[test]
fn a_guest_that_never_acknowledges_ends_the_wait_with_its_own_exit_code() {
    let mut config = config("sensor-no-ack");
    config.timeouts.sensor_ack = Duration::from_secs(2);
    let mut m = boot(&config);
    inject(&mut m, 1, PROCHOT_95C);
    write(&mut m, &format!("{DEVICE_DEBUGFS}/hold_acks"), "1");
    let published = m.fire(1, Register::Core, NORMAL_70C).unwrap();
    let started = Instant::now();
    let failure = m.wait_acked(published).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by sensor_ack");
    assert_eq!(failure.exit_code(), exit_code::SENSOR_NO_ACK, "{failure}");
    let message = failure.to_string();
    assert!(message.starts_with("the guest did not acknowledge injection 2 on CPU 1 within 2.0 s"), "{message}");
    // The handler did run and take the entry: only the acknowledgement is missing.
    assert!(message.contains("it took every published entry, acknowledged up to seq 1"), "{message}");
}

#[test]
fn an_unbound_driver_is_reported_as_not_ready() {
    let mut config = config("sensor-unbound");
    config.timeouts.sensor_ready = Duration::from_secs(2);
    let mut m = boot(&config);
    inject(&mut m, 0, PROCHOT_95C);
    let address = sensor_pci_address(&mut m);
    write(&mut m, "/sys/bus/pci/drivers/kevent_thermal/unbind", &address);
    assert!(!sensor(&m).is_ready());
    let failure = m.fire(0, Register::Core, NORMAL_70C).unwrap_err();
    assert!(matches!(failure, Failure::SensorNotReady { .. }), "{failure}");
    assert_eq!(failure.exit_code(), exit_code::SENSOR_NOT_READY);
}
