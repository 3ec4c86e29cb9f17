//! The guest's clock: on the virtual clock the guest's time follows the
//! instructions it runs, not the host's wall clock, so a guest sleep costs
//! no wall time; and the module's view of time agrees with the agent's.

mod common;

use kevent_bench::transcript::StepOutcome;
use kevent_bench::{runner, scenario};

fn uptime(outcome: &StepOutcome) -> f64 {
    let StepOutcome::Read(data) = outcome else { panic!("{outcome:?}") };
    String::from_utf8_lossy(data).split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn on_the_virtual_clock_a_five_second_guest_sleep_costs_little_wall_time() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "virtual-sleep");
    let scenario = scenario::parse(
        &dir.join("virtual-sleep.toml"),
        r#"
description = "a guest sleep on the virtual clock"
[machine]
clock = "virtual"
[[step]]
read = "/proc/uptime"
[[step]]
sleep_ms = 5000
[[step]]
read = "/proc/uptime"
"#,
    )
    .unwrap();
    let config = common::config("virtual-sleep", scenario.guest(&artifacts));
    let transcript = runner::run(&scenario, &config, &mut |_| {}).unwrap_or_else(|f| panic!("{}", f.report()));
    let (before, after) = (uptime(&transcript.steps[0].outcome), uptime(&transcript.steps[2].outcome));
    assert!(after - before >= 5.0, "the guest slept 5 s of its own time: uptime {before} then {after}");
    // The idle guest's clock jumps to its timer: no wall time passes for
    // it. Half the sleep leaves room for a slow, loaded host.
    let slept = transcript.steps[1].elapsed;
    assert!(slept.as_secs_f64() < 2.5, "the 5 s guest sleep took {slept:?} of wall time");
}
