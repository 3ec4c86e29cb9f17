//! `cargo xtask bench boot`: boot times beside the floor of the same run.
//!
//! The floor is the same kernel and QEMU command line with an init that
//! restarts the machine at once; floor and bench boots alternate, so both
//! see the same host load.

use std::time::Duration;

use kevent_bench::{run_to_exit, GuestSpec, Machine, MachineConfig, Timeouts};

use anyhow::bail;
use kevent_bench::{runner, scenario};

use crate::flags::{BenchFlags, BenchRuns, BenchSuite, BenchTarget};

/// Median boot-to-greeting over the floor's median: the target.
const TARGET_RATIO: f64 = 1.15;

pub fn run(flags: &BenchFlags) -> anyhow::Result<()> {
    match &flags.target {
        BenchTarget::Boot(runs) => boot(runs),
        BenchTarget::Scenarios(suite) => scenarios(suite),
        BenchTarget::Inject(runs) => crate::bench_inject::run(runs),
        BenchTarget::Determinism(determinism) => crate::bench_determinism::run(determinism),
    }
}

fn boot(flags: &BenchRuns) -> anyhow::Result<()> {
    let artifacts = crate::build::run(&flags.build.resolve())?;
    let guest = flags.guest.spec(&artifacts, Vec::new());
    let decision = crate::boot::decide_accel(&artifacts, flags.guest.accel, guest.clock)?;
    let floor_guest = GuestSpec { initramfs: artifacts.floor_initramfs.clone(), ..guest.clone() };
    let timeouts = Timeouts::default();
    let (mut floor, mut greeting, mut exit) = (Vec::new(), Vec::new(), Vec::new());
    // Run 0 of each is untimed: page cache and QEMU's own start-up.
    for run in 0..=flags.runs {
        floor.push(run_to_exit(&floor_guest, decision.accel, timeouts.kernel_boot)?);
        let config = MachineConfig::new(guest.clone(), decision.accel, crate::boot::run_dir(&artifacts, "bench"))?;
        let machine = Machine::boot(&config)?;
        let greeted = machine.timings.greeted;
        let report = machine.shutdown(timeouts.shutdown)?;
        let _ = std::fs::remove_dir_all(&config.run_dir);
        if run == 0 {
            floor.clear();
            continue;
        }
        greeting.push(greeted);
        exit.push(report.total);
    }
    println!(
        "boot benchmark: {} runs, {} vCPU(s), {}, {} clock, {} kernel {}",
        flags.runs, guest.cpus, decision.accel, guest.clock, artifacts.profile, artifacts.kernel_release
    );
    println!("{:<34}{:>9}{:>9}{:>9}", "host wall time (ms)", "min", "median", "max");
    let row = |name: &str, samples: &mut Vec<Duration>| {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:<34}{:>9.0}{:>9.0}{:>9.0}",
            ms(samples[0]),
            ms(median(samples)),
            ms(*samples.last().expect("at least one run"))
        );
    };
    row("floor: trivial init, spawn → exit", &mut floor);
    row("agent: spawn → greeting", &mut greeting);
    row("agent: spawn → exit (after shutdown)", &mut exit);
    let ratio = median(&greeting).as_secs_f64() / median(&floor).as_secs_f64();
    let verdict = if ratio <= TARGET_RATIO { "within" } else { "OVER" };
    println!("median greeting / median floor = {ratio:.3} ({verdict} the {TARGET_RATIO} target)");
    Ok(())
}

/// The `p`th percentile of sorted samples, nearest rank rounded up.
pub(crate) fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

/// The starter suite, warm: each scenario alone (boot to exit), then the
/// whole suite with one runner per host core, beside the boot floor.
fn scenarios(flags: &BenchSuite) -> anyhow::Result<()> {
    let artifacts = crate::build::run(&flags.build.resolve())?;
    let decision = crate::boot::decide_accel(&artifacts, flags.accel, kevent_bench::Clock::Real)?;
    let project = crate::project::Project::locate()?;
    let files = scenario::files(&project.root.join("scenarios"))?;
    let suite = files.iter().map(|f| scenario::load(f)).collect::<Result<Vec<_>, _>>()?;
    if suite.is_empty() {
        bail!("no scenarios in {}", project.root.join("scenarios").display());
    }
    let run_one = |s: &scenario::Scenario| -> anyhow::Result<(Duration, kevent_bench::transcript::Transcript)> {
        let run_dir = crate::boot::run_dir(&artifacts, &format!("bench-{}", s.name));
        let config = MachineConfig::new(s.guest(&artifacts), decision.accel, run_dir)?;
        let started = std::time::Instant::now();
        let transcript = runner::run(s, &config, &mut |_| {})?;
        let _ = std::fs::remove_dir_all(&config.run_dir);
        Ok((started.elapsed(), transcript))
    };
    // Warm-up: page cache, QEMU's own start-up.
    run_one(&suite[0])?;
    let floor_guest = artifacts.floor_guest(2, 256);
    let mut floor = (0..3)
        .map(|_| run_to_exit(&floor_guest, decision.accel, Timeouts::default().kernel_boot))
        .collect::<Result<Vec<_>, _>>()?;
    floor.sort();

    println!(
        "scenario benchmark: {} scenarios, {}, {} kernel {}",
        suite.len(),
        decision.accel,
        artifacts.profile,
        artifacts.kernel_release
    );
    println!("{:<34}{:>10}  notes", "scenario (alone)", "wall ms");
    let mut alone = Vec::new();
    for s in &suite {
        let (wall, transcript) = run_one(s)?;
        let mut notes = String::new();
        for step in transcript.steps.iter().filter(|st| st.repeat >= 100) {
            let expected_per = step.datagrams.len() as f64 / f64::from(step.repeat);
            notes = format!(
                "{} injections in {:.0} ms: {:.0}/s, {} datagrams ({expected_per:.1} per injection), 0 lost",
                step.repeat,
                step.elapsed.as_secs_f64() * 1e3,
                f64::from(step.repeat) / step.elapsed.as_secs_f64(),
                step.datagrams.len()
            );
        }
        println!("{:<34}{:>10.0}  {notes}", s.name, wall.as_secs_f64() * 1e3);
        alone.push(wall);
    }
    alone.sort();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(s) = suite.get(i) else { break };
                if let Err(e) = run_one(s) {
                    failures.lock().unwrap().push(format!("{}: {e:#}", s.name));
                }
            });
        }
    });
    let parallel = started.elapsed();
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        bail!("scenarios failed during the parallel run:\n{}", failures.join("\n"));
    }
    let total: Duration = alone.iter().sum();
    println!();
    println!("{:<44}{:>10}", "", "ms");
    println!("{:<44}{:>10.0}", "boot floor (trivial init, spawn → exit), median", median(&floor).as_secs_f64() * 1e3);
    println!("{:<44}{:>10.0}", "per scenario, median (alone)", median(&alone).as_secs_f64() * 1e3);
    println!("{:<44}{:>10.0}", "per scenario, max (alone)", alone.last().expect("non-empty").as_secs_f64() * 1e3);
    println!("{:<44}{:>10.0}", "suite, one after another", total.as_secs_f64() * 1e3);
    println!("{:<44}{:>10.0}", format!("suite, {workers} in parallel"), parallel.as_secs_f64() * 1e3);
    println!("{:<44}{:>10.0}", "suite wall per scenario, parallel", parallel.as_secs_f64() * 1e3 / suite.len() as f64);
    Ok(())
}
