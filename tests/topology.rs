//! Packages of cores in a real guest: the topology the guest's kernel sees
//! in sysfs is the one asked for (ACPI's MADT brings up every core of a
//! package), the module makes one package device per package with that
//! package's CPUs, and the sensor device's driver publishes which CPUs are
//! online, CPU hotplug included.

mod common;

use common::{read, shut_down, write, BOUND};
use kevent_bench::inject::{Injection, Injector};
use kevent_bench::sensor::Register;
use kevent_bench::{Machine, Topology};
use kevent_wire::Outcome;

fn boot(test: &str, topology: Topology) -> Machine {
    let guest = common::artifacts().guest_of(topology, 256, Vec::new());
    common::boot(&common::config(test, guest))
}

fn number(machine: &mut Machine, path: &str) -> u32 {
    let text = read(machine, path);
    text.trim().parse().unwrap_or_else(|_| panic!("{path}: {text:?} is not a number"))
}

/// What the guest's sysfs says of each CPU: (package, core).
fn sysfs_topology(machine: &mut Machine, cpus: u32) -> Vec<(u32, u32)> {
    (0..cpus)
        .map(|cpu| {
            let dir = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
            (number(machine, &format!("{dir}/physical_package_id")), number(machine, &format!("{dir}/core_id")))
        })
        .collect()
}

fn check_topology(test: &str, topology: Topology) {
    let mut m = boot(test, topology);
    let cpus = topology.cpus();
    assert_eq!(read(&mut m, "/sys/devices/system/cpu/online").trim(), format!("0-{}", cpus - 1), "{topology}");
    let expected: Vec<(u32, u32)> = (0..cpus).map(|c| (topology.package_of(c), topology.core_of(c))).collect();
    assert_eq!(sysfs_topology(&mut m, cpus), expected, "{topology}: (physical_package_id, core_id) per CPU");
    for package in 0..topology.packages {
        let first = topology.cpus_of(package).start;
        let last = topology.cpus_of(package).end - 1;
        let list = if first == last { first.to_string() } else { format!("{first}-{last}") };
        let siblings = read(&mut m, &format!("/sys/devices/system/cpu/cpu{first}/topology/core_siblings_list"));
        assert_eq!(siblings.trim(), list, "{topology}: the kernel's package {package}");
        let device = read(&mut m, &format!("/sys/class/kevent_thermal/package{package}/cpus"));
        assert_eq!(device.trim(), list, "{topology}: the module's package {package}");
    }
    // The sensor device's driver says which CPUs are online.
    let device = m.sensor().expect("a sensor device");
    assert!(device.is_ready(), "the driver bound");
    assert!((0..cpus).all(|c| device.is_online(c)), "{topology}: every CPU online in the device's header");
    shut_down(m);
}

#[test]
fn two_packages_of_two_cores_are_what_the_guest_sees() {
    check_topology("topology-2x2", Topology::new(2, 2).unwrap());
}

#[test]
fn one_package_of_three_cores_is_what_the_guest_sees() {
    check_topology("topology-1x3", Topology::new(1, 3).unwrap());
}

#[test]
fn a_socket_per_cpu_boots_without_acpi_and_keeps_its_topology() {
    check_topology("topology-3x1", Topology::flat(3));
}

#[test]
fn an_offline_core_leaves_the_devices_online_mask_and_comes_back() {
    let topology = Topology::new(2, 2).unwrap();
    let mut m = boot("topology-hotplug", topology);
    assert_eq!(write(&mut m, "/sys/devices/system/cpu/cpu3/online", "0"), Outcome::Done);
    let online: Vec<bool> = (0..4).map(|c| m.sensor().unwrap().is_online(c)).collect();
    assert_eq!(online, [true, true, true, false]);
    assert_eq!(m.package_cpus_online(2), [2], "package 1's change interrupts CPU 2 alone");
    assert_eq!(m.package_cpus_online(0), [0, 1]);
    let prochot = Injection { cpu: 3, register: Register::Core, value: 0x8005_0001 };
    let refused = m.inject(Injector::Device, prochot, BOUND).unwrap();
    assert_eq!(refused.refused.map(|r| r.errno), Some(libc::EINVAL), "nothing is published to an offline CPU");
    assert_eq!(write(&mut m, "/sys/devices/system/cpu/cpu3/online", "1"), Outcome::Done);
    assert!(m.sensor().unwrap().is_online(3));
    assert_eq!(m.package_cpus_online(3), [2, 3]);
    // Back online, CPU 3 has its vector again, on itself: the first entry
    // after it is not handled elsewhere.
    for register in [Register::Core, Register::Package] {
        // The package register has no valid bit.
        let value = if register == Register::Core { prochot.value } else { 0x0005_0001 };
        let injected = m.inject(Injector::Device, Injection { register, value, ..prochot }, BOUND).unwrap();
        assert_eq!(injected.refused, None, "{register:?}");
        let expected: &[u32] = if register == Register::Core { &[3] } else { &[2, 3] };
        assert_eq!(injected.interrupted, expected, "{register:?}");
    }
    shut_down(m);
}

#[test]
fn packages_that_share_cores_without_acpi_are_refused_with_the_reason() {
    // acpi=off after the bench's own arguments: the MP table's one CPU per
    // socket is all the kernel finds.
    let guest = common::artifacts().guest_of(Topology::new(2, 2).unwrap(), 256, vec!["acpi=off".into()]);
    let config = common::config("topology-no-acpi", guest);
    let failure = Machine::boot(&config).err().expect("a guest with half its CPUs is refused");
    let message = failure.to_string();
    assert!(message.contains("the guest brought up 2 of the 4 CPUs of 2 packages × 2 cores"), "{message}");
    assert!(message.contains("need the kernel's ACPI"), "{message}");
    assert_eq!(failure.exit_code(), 1, "a bench error");
}
