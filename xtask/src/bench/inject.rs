//! `cargo xtask bench inject`: how fast an injection becomes events on the
//! host, through the emulated sensor device and through debugfs, beside
//! the floor measured in the same guest: the same device with a handler
//! that acknowledges each entry at once (`device/bare`), so the same MSI-X
//! delivery, ring and ack words, and nothing of the module's own work.
//!
//! Latency runs from the host starting an injection (publishing the entry
//! and ringing the vector, or sending the agent its request) to the
//! injection's kmessage and uevent reaching the host. The sustained rate
//! is a burst of injections alternating between CPUs, from the first one
//! started to the last event on the host, every event counted. Every
//! figure is printed with its ratio to the floor: absolute times differ
//! about 1.8× between machines of one kind, ratios within one run do not.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use kevent_bench::inject::{Injected, Injection, Injector};
use kevent_bench::{Machine, MachineConfig};
use kevent_wire::{Command, Outcome};

use super::{latency_columns, toggling_prochot};
use crate::flags::BenchRuns;
use kevent_bench::stats::percentile;

/// Untimed injections per path first: TCG translates each handler's code
/// on its first runs, hundreds of microseconds each.
const WARM_UP: usize = 200;
/// Injections of the sustained-rate burst.
const BURST: usize = 5000;
/// The bar: the device path sustains twice the debugfs path.
const TARGET_RATE_RATIO: f64 = 2.0;

/// The module's debugfs switch of the bare handler.
const BARE: &str = "/sys/kernel/debug/kevent_thermal/device/bare";

#[derive(Default)]
struct Latencies {
    first_event: Vec<Duration>,
    all_events: Vec<Duration>,
    /// Device only: ring to the guest's acknowledgement.
    acked: Vec<Duration>,
}

struct Rate {
    injections: usize,
    datagrams: usize,
    elapsed: Duration,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.injections as f64 / self.elapsed.as_secs_f64()
    }
}

/// One injection through `via`, which the guest must take.
fn inject(machine: &mut Machine, via: Injector, k: usize, cpus: u32, bound: Duration) -> anyhow::Result<Injected> {
    let injected = machine.inject(via, toggling_prochot(k, cpus), bound)?;
    if let Some(refusal) = &injected.refused {
        bail!("{via} injection {k}: {}", refusal.message);
    }
    Ok(injected)
}

pub fn run(flags: &BenchRuns) -> anyhow::Result<()> {
    let artifacts = crate::build::run(&flags.build.resolve())?;
    let cpus = flags.guest.topology().cpus();
    let no_rate_limit = kevent_wire::module_param_arg("kevent_thermal", "rate_limit_ms", "0");
    let guest = flags.guest.spec(&artifacts, vec![no_rate_limit]);
    let decision = crate::boot::decide_accel(&artifacts, flags.guest.accel, guest.clock)?;
    let run_dir = crate::boot::run_dir(&artifacts, "bench-inject");
    let config = MachineConfig::new(guest, decision.accel, run_dir.clone())?;
    let bound = config.timeouts.command;
    let mut machine = Machine::boot(&config)?;
    let samples = flags.runs as usize * 100;

    set_bare(&mut machine, true, bound)?;
    bare_latency(&mut machine, cpus, WARM_UP)?;
    let mut floor = bare_latency(&mut machine, cpus, samples)?;
    let floor_rate = device_burst(&mut machine, cpus, bound)?;
    set_bare(&mut machine, false, bound)?;
    for injector in [Injector::Device, Injector::Debugfs] {
        latency(&mut machine, injector, cpus, WARM_UP, bound)?;
    }
    let mut device = latency(&mut machine, Injector::Device, cpus, samples, bound)?;
    let mut debugfs = latency(&mut machine, Injector::Debugfs, cpus, samples, bound)?;
    let device_rate = device_burst(&mut machine, cpus, bound)?;
    let debugfs_rate = debugfs_burst(&mut machine, cpus, bound)?;
    machine.shutdown(config.timeouts.shutdown)?;
    let _ = std::fs::remove_dir_all(&run_dir);

    println!(
        "injection benchmark: {cpus} vCPU(s), {}, {} kernel {}; {samples} timed injections per path after {WARM_UP} untimed",
        decision.accel, artifacts.profile, artifacts.kernel_release
    );
    println!("latency, host starts the injection → (µs); × floor is p50 over the floor's p50:");
    println!("{:<52}{:>9}{:>9}{:>9}{:>9}{:>10}", "", "min", "p50", "p99", "max", "× floor");
    floor.sort();
    let floor_p50 = percentile(&floor, 50);
    let row = |name: &str, samples: &mut Vec<Duration>| {
        let columns = latency_columns(samples);
        let over_floor = percentile(samples, 50).as_secs_f64() / floor_p50.as_secs_f64();
        println!("{name:<52}{columns}{over_floor:>10.2}");
    };
    row("floor: ring → bare handler acknowledges", &mut floor);
    row("device: ring → guest acknowledges", &mut device.acked);
    row("device: ring → kmessage on the host", &mut device.first_event);
    row("device: ring → kmessage and uevent on the host", &mut device.all_events);
    row("debugfs: request → kmessage on the host", &mut debugfs.first_event);
    row("debugfs: request → kmessage and uevent on the host", &mut debugfs.all_events);
    println!();
    println!("sustained rate, {BURST} injections alternating over {cpus} CPU(s), every event counted:");
    println!("{:<52}{:>12}{:>12}{:>8}{:>10}", "", "inject/s", "datagrams", "lost", "÷ floor");
    println!(
        "{:<52}{:>12.0}{:>12}{:>8}{:>10.2}",
        "floor: bare handler, back to back",
        floor_rate.per_second(),
        "-",
        "-",
        1.0
    );
    for (name, rate) in [("device: host-timed back to back", &device_rate), ("debugfs: fenced requests", &debugfs_rate)]
    {
        println!(
            "{name:<52}{:>12.0}{:>12}{:>8}{:>10.2}",
            rate.per_second(),
            rate.datagrams,
            (2 * rate.injections).saturating_sub(rate.datagrams),
            rate.per_second() / floor_rate.per_second()
        );
    }
    println!(
        "(the bare handler acknowledges at once, so each ring is its own interrupt; on the full path rings that \
         arrive while the guest works coalesce: its rate can pass the floor's)"
    );
    let ratio = device_rate.per_second() / debugfs_rate.per_second();
    println!("device / debugfs = {ratio:.2} (target ≥ {TARGET_RATE_RATIO})");
    if ratio < TARGET_RATE_RATIO {
        eprintln!("the device path is below its target on this run");
    }
    Ok(())
}

fn set_bare(machine: &mut Machine, on: bool, bound: Duration) -> anyhow::Result<()> {
    let data = if on { b"1\n".to_vec() } else { b"0\n".to_vec() };
    let outcome = machine.request(Command::WriteFile { path: BARE.into(), data }, bound)?.outcome;
    ensure!(outcome == Outcome::Done, "write {BARE}: {outcome:?}");
    Ok(())
}

/// Ring to acknowledgement with the bare handler: no events come of it.
fn bare_latency(machine: &mut Machine, cpus: u32, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let mut acked = Vec::with_capacity(samples);
    for k in 0..samples {
        let Injection { cpu, register, value } = toggling_prochot(k, cpus);
        let started = Instant::now();
        let published = machine.fire(cpu, register, value)?;
        ensure!(machine.wait_acked(published)?.is_none(), "the guest refused bare entry {}", published.seq);
        acked.push(started.elapsed());
    }
    let stray = machine.take_captured().datagrams;
    ensure!(stray.is_empty(), "the bare handler caused {} datagram(s)", stray.len());
    Ok(acked)
}

/// One injection at a time, each waited for until both its events are on the host.
fn latency(
    machine: &mut Machine,
    injector: Injector,
    cpus: u32,
    samples: usize,
    bound: Duration,
) -> anyhow::Result<Latencies> {
    let mut out = Latencies::default();
    for k in 0..samples {
        let started = Instant::now();
        let injected = inject(machine, injector, k, cpus, bound)?;
        let mut arrived = injected.arrived;
        if let Some(acknowledged) = injected.acknowledged {
            out.acked.push(acknowledged - started);
        }
        if arrived.len() < 2 {
            arrived.extend(machine.wait_datagrams(2 - arrived.len(), bound)?.arrived);
        }
        ensure!(arrived.len() == 2, "injection {k}: {} datagrams, expected 2", arrived.len());
        out.first_event.push(arrived[0] - started);
        out.all_events.push(arrived[1] - started);
    }
    Ok(out)
}

/// [`BURST`] device entries fired without waiting between them (the ring
/// and the in-flight limit pace them), from the first ring to the last
/// event on the host, or to the last acknowledgement for the bare handler.
fn device_burst(machine: &mut Machine, cpus: u32, bound: Duration) -> anyhow::Result<Rate> {
    let refused = |machine: &Machine| -> u64 {
        let device = machine.sensor().expect("the bench guest has the sensor device");
        (0..cpus).map(|cpu| device.status(cpu).rejected).sum()
    };
    let refused_before = refused(machine);
    let started = Instant::now();
    let mut last = vec![None; cpus as usize];
    for k in 0..BURST {
        let Injection { cpu, register, value } = toggling_prochot(k, cpus);
        last[cpu as usize] = Some(machine.fire(cpu, register, value)?);
    }
    // Acknowledged means sent or dropped in the guest (a drop fails the
    // wait); the fence brings in whatever was sent.
    for published in last.into_iter().flatten() {
        ensure!(machine.wait_acked(published)?.is_none(), "the guest refused injection {}", published.seq);
    }
    let acked = started.elapsed();
    // Only the newest refusal per CPU is named; the count covers them all.
    ensure!(refused(machine) == refused_before, "the guest refused entries of the burst");
    let exchange = machine.fence(bound)?;
    let elapsed = exchange.arrived.last().map_or(acked, |at| *at - started);
    Ok(Rate { injections: BURST, datagrams: exchange.datagrams.len(), elapsed })
}

/// [`BURST`] debugfs injections, each request waited for, as it must be.
fn debugfs_burst(machine: &mut Machine, cpus: u32, bound: Duration) -> anyhow::Result<Rate> {
    let started = Instant::now();
    let mut datagrams = 0;
    let mut last_arrival = None;
    for k in 0..BURST {
        let injected = inject(machine, Injector::Debugfs, k, cpus, bound)?;
        datagrams += injected.datagrams.len();
        last_arrival = injected.arrived.last().copied().or(last_arrival);
    }
    let elapsed = last_arrival.map_or(started.elapsed(), |at| at - started);
    Ok(Rate { injections: BURST, datagrams, elapsed })
}
