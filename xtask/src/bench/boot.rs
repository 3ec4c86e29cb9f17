//! `cargo xtask bench boot`: boot times beside the floor of the same run.
//!
//! The floor is the same kernel and QEMU command line with an init that
//! restarts the machine at once; floor and bench boots alternate, so both
//! see the same host load. A topology whose packages share cores (ACPI) is
//! measured beside the same CPUs one per socket (acpi=off), and every
//! guest beside the same with the D-Bus side, in one run.

use std::time::Duration;

use kevent_bench::{run_to_exit, GuestSpec, Machine, MachineConfig, Timeouts, Topology};

use crate::flags::BenchRuns;
use kevent_bench::stats::median;

/// Median boot-to-greeting over the floor's median: the target.
const TARGET_RATIO: f64 = 1.15;

/// One guest's samples: the floor (trivial init) and the agent's boots.
#[derive(Default)]
struct Samples {
    floor: Vec<Duration>,
    greeting: Vec<Duration>,
    exit: Vec<Duration>,
}

fn boot_once(
    guest: &GuestSpec,
    floor_guest: &GuestSpec,
    accel: kevent_bench::Accel,
    run_dir: std::path::PathBuf,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let timeouts = Timeouts::default();
    samples.floor.push(run_to_exit(floor_guest, accel, timeouts.kernel_boot)?);
    let config = MachineConfig::new(guest.clone(), accel, run_dir)?;
    let machine = Machine::boot(&config)?;
    let greeted = machine.timings.greeted;
    let report = machine.shutdown(timeouts.shutdown)?;
    let _ = std::fs::remove_dir_all(&config.run_dir);
    samples.greeting.push(greeted);
    samples.exit.push(report.total);
    Ok(())
}

fn describe(topology: Topology, dbus: bool) -> String {
    let acpi = if topology.shares_packages() { "ACPI" } else { "acpi=off" };
    let dbus = if dbus { ", D-Bus side" } else { "" };
    format!("{topology}, {acpi}{dbus}")
}

/// A guest whose packages share cores is measured, in the same run, beside
/// the same CPUs one per socket: what ACPI costs the boot.
pub fn run(flags: &BenchRuns) -> anyhow::Result<()> {
    let artifacts = crate::build::run(&flags.build.resolve())?;
    let guest = flags.guest.spec(&artifacts, Vec::new());
    let decision = crate::boot::decide_accel(&artifacts, flags.guest.accel, guest.clock)?;
    let floor_of = |guest: &GuestSpec| GuestSpec {
        initramfs: artifacts.floor_initramfs.clone(),
        kernel_args: guest.kernel_args.iter().filter(|a| *a != kevent_wire::DBUS_ARG).cloned().collect(),
        ..guest.clone()
    };
    // The requested guest; before it, the same CPUs one per socket where its
    // packages share cores (what ACPI costs); after it, the same guest with
    // the D-Bus side (`[machine] dbus = true`: what that costs a scenario).
    let mut guests = vec![(guest.clone(), false)];
    if guest.topology.shares_packages() {
        guests.insert(0, (GuestSpec { topology: Topology::flat(guest.topology.cpus()), ..guest.clone() }, false));
    }
    guests.push((artifacts.with_dbus(guest.clone()), true));
    let mut samples: Vec<Samples> = guests.iter().map(|_| Samples::default()).collect();
    // Run 0 of each is untimed: page cache and QEMU's own start-up. The
    // guests alternate, so that all see the same host load.
    for run in 0..=flags.runs {
        for ((guest, _), samples) in guests.iter().zip(&mut samples) {
            boot_once(guest, &floor_of(guest), decision.accel, crate::boot::run_dir(&artifacts, "bench"), samples)?;
            if run == 0 {
                *samples = Samples::default();
            }
        }
    }
    println!(
        "boot benchmark: {} runs, {} vCPU(s), {}, {} clock, {} kernel {}",
        flags.runs,
        guest.topology.cpus(),
        decision.accel,
        guest.clock,
        artifacts.profile,
        artifacts.kernel_release
    );
    println!("{:<76}{:>9}{:>9}{:>9}", "host wall time (ms)", "min", "median", "max");
    let row = |name: &str, samples: &mut Vec<Duration>| {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:<76}{:>9.0}{:>9.0}{:>9.0}",
            ms(samples[0]),
            ms(median(samples)),
            ms(*samples.last().expect("at least one run"))
        );
    };
    for ((guest, dbus), samples) in guests.iter().zip(&mut samples) {
        let machine = describe(guest.topology, *dbus);
        row(&format!("floor ({machine}): trivial init, spawn → exit"), &mut samples.floor);
        row(&format!("agent ({machine}): spawn → greeting"), &mut samples.greeting);
        row(&format!("agent ({machine}): spawn → exit"), &mut samples.exit);
    }
    for ((guest, dbus), samples) in guests.iter().zip(&samples) {
        let ratio = median(&samples.greeting).as_secs_f64() / median(&samples.floor).as_secs_f64();
        // Not held to the target: a scenario pays for the D-Bus side only with `dbus = true`.
        let verdict = match (*dbus, ratio <= TARGET_RATIO) {
            (true, _) => "opt-in, no target".to_owned(),
            (false, true) => format!("within the {TARGET_RATIO} target"),
            (false, false) => format!("OVER the {TARGET_RATIO} target"),
        };
        println!("{}: median greeting / median floor = {ratio:.3} ({verdict})", describe(guest.topology, *dbus));
    }
    let plain = &samples[samples.len() - 2];
    if let [flat, shared, _] = &samples[..] {
        let floor = median(&shared.floor).as_secs_f64() / median(&flat.floor).as_secs_f64();
        let greeting = median(&shared.greeting).as_secs_f64() / median(&flat.greeting).as_secs_f64();
        println!(
            "{} over {}: floor {floor:.3}, greeting {greeting:.3} (medians: what ACPI costs the boot)",
            describe(guests[1].0.topology, false),
            describe(guests[0].0.topology, false)
        );
    }
    let dbus = samples.last().expect("the D-Bus guest");
    let cost = median(&dbus.greeting).as_secs_f64() / median(&plain.greeting).as_secs_f64();
    println!(
        "D-Bus side: median greeting / the same guest's without it = {cost:.3} (what `dbus = true` costs the boot)"
    );
    Ok(())
}
