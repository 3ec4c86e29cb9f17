//! `cargo xtask bench determinism`: each scenario run N times with every
//! host core busy, and how many different snapshots came out. The promise
//! is one per scenario: the same scenario gives the same transcript on any
//! machine, under any load.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use kevent_bench::load::CpuHog;
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
            let transcript = runner::run(s, &config, &mut |_| {})
                .map_err(|f| anyhow::anyhow!("{} run {}: {}", s.name, run + 1, f.report()))?;
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
            s.machine.clock.to_string(),
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
