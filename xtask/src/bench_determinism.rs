//! `cargo xtask bench determinism`: each scenario run N times with every
//! host core busy, and how many different snapshots came out. The promise
//! is one per scenario: the same scenario gives the same transcript on any
//! machine, under any load.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use kevent_bench::{runner, scenario, Accel, MachineConfig};

use crate::flags::BenchDeterminism;

pub fn run(flags: &BenchDeterminism) -> anyhow::Result<()> {
    let artifacts = crate::build::run(&flags.build.resolve())?;
    let project = crate::project::Project::locate()?;
    let files = if flags.scenarios.is_empty() {
        scenario::files(&project.root.join("scenarios"))?
    } else {
        flags.scenarios.clone()
    };
    let suite = files.iter().map(|f| scenario::load(f)).collect::<Result<Vec<_>, _>>()?;
    if suite.is_empty() {
        bail!("no scenarios to run");
    }
    let modules = artifacts.module_parameters()?;
    for s in &suite {
        s.check_params(&modules)?;
    }
    let _hog = (!flags.no_load).then(CpuHog::start);
    let load =
        if flags.no_load { "an idle host".to_owned() } else { format!("{} busy host thread(s)", CpuHog::threads()) };
    println!("determinism benchmark: {} runs of each scenario on {load}, {} kernel", flags.runs, artifacts.profile);
    println!("{:<32}{:>9}{:>7}{:>10}{:>10}  differing steps", "scenario", "clock", "runs", "distinct", "s/run");
    let mut unstable = Vec::new();
    for s in &suite {
        // The virtual clock is TCG's; the real one is measured on TCG too,
        // which is what CI and this machine kind run.
        let mut snapshots: BTreeMap<String, u32> = BTreeMap::new();
        let mut first: Option<Vec<String>> = None;
        let mut differing = std::collections::BTreeSet::new();
        let started = Instant::now();
        for run in 0..flags.runs {
            let run_dir = crate::boot::run_dir(&artifacts, &format!("determinism-{}", s.name));
            let config = MachineConfig::new(s.guest(&artifacts), Accel::Tcg, run_dir)?;
            let transcript =
                runner::run(s, &config, &mut |_| {}).map_err(|f| anyhow::anyhow!("{} run {}: {f}", s.name, run + 1))?;
            let _ = std::fs::remove_dir_all(&config.run_dir);
            let snapshot = transcript.snapshot();
            let steps: Vec<String> =
                snapshot.steps.iter().map(|step| serde_json::to_string(step).expect("serialisable")).collect();
            match &first {
                None => first = Some(steps),
                Some(reference) => differing
                    .extend(reference.iter().zip(&steps).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i + 1)),
            }
            *snapshots.entry(serde_json::to_string(&snapshot).expect("serialisable")).or_default() += 1;
        }
        let per_run = started.elapsed().as_secs_f64() / f64::from(flags.runs);
        let steps: Vec<String> = differing.iter().map(usize::to_string).collect();
        println!(
            "{:<32}{:>9}{:>7}{:>10}{:>10.1}  {}",
            s.name,
            s.machine.clock,
            flags.runs,
            snapshots.len(),
            per_run,
            if steps.is_empty() { "-".to_owned() } else { steps.join(", ") }
        );
        if snapshots.len() > 1 {
            unstable.push(s.name.clone());
        }
    }
    if !unstable.is_empty() {
        bail!("more than one snapshot from: {}", unstable.join(", "));
    }
    Ok(())
}

/// One spinning thread per host core, until dropped: the "both host CPUs
/// busy" of the determinism promise, bounded by the benchmark's lifetime.
struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHog {
    fn threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    fn start() -> CpuHog {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..Self::threads())
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let (mut x, mut rounds) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl CpuHog {
    /// Stops every thread and returns how many rounds of work each did.
    fn stop(&mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap_or(0)).collect()
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hog_spins_on_every_core_until_stopped() {
        let started = Instant::now();
        let mut hog = CpuHog::start();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let rounds = hog.stop();
        assert_eq!(rounds.len(), CpuHog::threads());
        assert!(rounds.iter().all(|r| *r > 0), "every thread did work: {rounds:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "stopping is prompt");
        assert!(hog.stop().is_empty(), "nothing is left running");
    }
}
