//! `cargo xtask bench scenarios`: the starter suite, warm, beside the boot
//! floor of the same run.

use std::time::Duration;

use anyhow::bail;
use kevent_bench::{run_to_exit, runner, scenario, MachineConfig, Timeouts};

use crate::flags::BenchSuite;
use kevent_bench::stats::median;

/// The starter suite, warm: each scenario alone (boot to exit), then the
/// whole suite with one runner per host core, beside the boot floor.
pub fn run(flags: &BenchSuite) -> anyhow::Result<()> {
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
