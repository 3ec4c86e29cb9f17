//! `cargo xtask bench inject`: how fast an injection becomes events on the
//! host, through the emulated sensor device and through debugfs, in one
//! guest so that both see the same machine and the same host load.
//!
//! Latency runs from the host starting an injection (publishing the entry
//! and ringing the vector, or sending the agent its request) to the
//! injection's kmessage and uevent reaching the host. The sustained rate
//! is a burst of injections alternating between CPUs, from the first one
//! started to the last event on the host, every event counted.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use kevent_bench::inject::{Injected, Injection, Injector};
use kevent_bench::sensor::Register;
use kevent_bench::{Machine, MachineConfig};

use crate::flags::BenchRuns;
use kevent_bench::stats::percentile;

/// PROCHOT on and off: each injection is a "high" or "normal", so each
/// produces exactly one kmessage and one uevent.
const PROCHOT_ON: u64 = 0x8000_0001;
const PROCHOT_OFF: u64 = 0x8000_0000;
/// Untimed injections per path first: TCG translates each handler's code
/// on its first runs, hundreds of microseconds each.
const WARM_UP: usize = 200;
/// Injections of the sustained-rate burst.
const BURST: usize = 5000;
/// The bar: the device path sustains twice the debugfs path.
const TARGET_RATE_RATIO: f64 = 2.0;

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

/// The k-th injection: CPUs in turn, each toggling its PROCHOT.
fn injection(k: usize, cpus: u32) -> (u32, u64) {
    let cpu = k as u32 % cpus;
    let value = if (k / cpus as usize).is_multiple_of(2) { PROCHOT_ON } else { PROCHOT_OFF };
    (cpu, value)
}

/// One injection through `via`, which the guest must take.
fn inject(machine: &mut Machine, via: Injector, k: usize, cpus: u32, bound: Duration) -> anyhow::Result<Injected> {
    let (cpu, value) = injection(k, cpus);
    let injected = machine.inject(via, Injection { cpu, register: Register::Core, value }, bound)?;
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

    for injector in [Injector::Device, Injector::Debugfs] {
        latency(&mut machine, injector, cpus, WARM_UP, bound)?;
    }
    let mut device = latency(&mut machine, Injector::Device, cpus, samples, bound)?;
    let mut debugfs = latency(&mut machine, Injector::Debugfs, cpus, samples, bound)?;
    let device_rate = rate(&mut machine, Injector::Device, cpus, bound)?;
    let debugfs_rate = rate(&mut machine, Injector::Debugfs, cpus, bound)?;
    machine.shutdown(config.timeouts.shutdown)?;
    let _ = std::fs::remove_dir_all(&run_dir);

    println!(
        "injection benchmark: {cpus} vCPU(s), {}, {} kernel {}; {samples} timed injections per path after {WARM_UP} untimed",
        decision.accel, artifacts.profile, artifacts.kernel_release
    );
    println!("latency, host starts the injection → its events reach the host (µs):");
    println!("{:<52}{:>9}{:>9}{:>9}{:>9}", "", "min", "p50", "p99", "max");
    let row = |name: &str, samples: &mut Vec<Duration>| {
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{name:<52}{:>9.0}{:>9.0}{:>9.0}{:>9.0}",
            us(samples[0]),
            us(percentile(samples, 50)),
            us(percentile(samples, 99)),
            us(samples[samples.len() - 1])
        );
    };
    row("device: ring → guest acknowledges", &mut device.acked);
    row("device: ring → kmessage on the host", &mut device.first_event);
    row("device: ring → kmessage and uevent on the host", &mut device.all_events);
    row("debugfs: request → kmessage on the host", &mut debugfs.first_event);
    row("debugfs: request → kmessage and uevent on the host", &mut debugfs.all_events);
    println!("reference (prototype, this machine kind): bare ring → acknowledge p50 40–58 µs");
    println!();
    println!("sustained rate, {BURST} injections alternating over {cpus} CPU(s), every event counted:");
    println!("{:<52}{:>12}{:>12}{:>8}", "", "inject/s", "datagrams", "lost");
    for (name, rate) in [("device: host-timed back to back", &device_rate), ("debugfs: fenced requests", &debugfs_rate)]
    {
        println!(
            "{name:<52}{:>12.0}{:>12}{:>8}",
            rate.per_second(),
            rate.datagrams,
            (2 * rate.injections).saturating_sub(rate.datagrams)
        );
    }
    let ratio = device_rate.per_second() / debugfs_rate.per_second();
    println!("device / debugfs = {ratio:.2} (target ≥ {TARGET_RATE_RATIO}); in-guest debugfs loop reference: 6–7 k/s");
    if ratio < TARGET_RATE_RATIO {
        eprintln!("the device path is below its target on this run");
    }
    Ok(())
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

/// [`BURST`] injections as fast as the path takes them: the device path
/// fires without waiting between them (its ring and in-flight limit pace
/// it), the debugfs path waits for each request's reply, as it must.
fn rate(machine: &mut Machine, injector: Injector, cpus: u32, bound: Duration) -> anyhow::Result<Rate> {
    let started = Instant::now();
    let mut arrived = Vec::new();
    let mut datagrams = 0;
    match injector {
        Injector::Device => {
            let mut last = vec![None; cpus as usize];
            for k in 0..BURST {
                let (cpu, value) = injection(k, cpus);
                last[cpu as usize] = Some(machine.fire(cpu, Register::Core, value)?);
            }
            // Acknowledged means sent or dropped in the guest (a drop fails
            // the wait); the fence brings in whatever was sent.
            for published in last.into_iter().flatten() {
                ensure!(machine.wait_acked(published)?.is_none(), "the guest refused injection {}", published.seq);
            }
            let exchange = machine.fence(bound)?;
            datagrams = exchange.datagrams.len();
            arrived = exchange.arrived;
        }
        Injector::Debugfs => {
            for k in 0..BURST {
                let injected = inject(machine, injector, k, cpus, bound)?;
                datagrams += injected.datagrams.len();
                arrived.extend(injected.arrived.last());
            }
        }
    }
    let elapsed = arrived.last().map_or(started.elapsed(), |at| *at - started);
    Ok(Rate { injections: BURST, datagrams, elapsed })
}
