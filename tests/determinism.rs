//! The promise the bench exists for: the same scenario gives the same
//! snapshot under any host load. The scenarios whose outcome hangs on
//! guest time (rate limits, a storm, a window passing) run several times
//! with every host core kept busy, and must agree with each other and
//! flag no decision near a window's edge. The accepted snapshots they
//! must also equal are checked by the scenario tests.
//!
//! `cargo xtask bench determinism` does the same for every starter with
//! more runs; this test is the bounded part CI runs (nextest runs it alone:
//! .config/nextest.toml).

mod common;

use std::path::Path;

use kevent_bench::load::CpuHog;
use kevent_bench::{runner, scenario};

const RUNS: usize = 3;
const TIMING_SCENARIOS: &[&str] =
    &["rate-limit-storm", "rate-limit-swallows-normal", "interleaved-cpus", "device-timed-burst", "package-rate-limit"];

#[test]
fn timing_dependent_scenarios_give_one_snapshot_with_every_host_core_busy() {
    let artifacts = common::artifacts();
    let _hog = CpuHog::start();
    for name in TIMING_SCENARIOS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.toml"));
        let scenario = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut snapshots = Vec::new();
        for run in 0..RUNS {
            let config = common::config(&format!("determinism-{name}-{run}"), scenario.guest(&artifacts));
            let transcript = runner::run(&scenario, &config, &mut |_| {})
                .unwrap_or_else(|f| panic!("{name} run {run}: {}", f.report()));
            assert!(
                transcript.timing_flags.is_empty() && transcript.timing_flags_lost == 0,
                "{name} run {run} under load: {:?}",
                transcript.timing_flags.iter().map(ToString::to_string).collect::<Vec<_>>()
            );
            snapshots.push(serde_json::to_string_pretty(&transcript.snapshot()).unwrap());
        }
        for (run, snapshot) in snapshots.iter().enumerate().skip(1) {
            assert_eq!(&snapshots[0], snapshot, "{name}: run {run} under load differs from run 0");
        }
    }
}
