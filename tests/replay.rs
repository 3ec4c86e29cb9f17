//! Replaying the starter trace into a real guest (`run --replay`): each
//! changed register is injected no earlier than its recorded time divided
//! by the speed, the lateness of every injection is measured, and the guest
//! has the trace's topology. Speed is a benchmark's business: nothing here
//! bounds how late an injection may be.

use std::path::Path;
use std::time::Duration;

mod common;

use kevent_bench::inject::Injector;
use kevent_bench::msr_trace;
use kevent_bench::scenario::Scenario;
use kevent_bench::{runner, Topology};

fn starter_trace() -> msr_trace::Trace {
    msr_trace::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/traces/throttling.csv")).unwrap()
}

fn replay(injector: Injector, speed: f64) {
    let trace = starter_trace();
    let injections = trace.injections();
    let mut scenario = Scenario::of_replay(trace.clone(), speed).unwrap();
    scenario.injector = injector;
    assert_eq!(scenario.machine.topology, Topology::new(2, 2).unwrap(), "the guest gets the trace's machine");
    let test = format!("replay-{injector}-{speed}");
    let config = common::config(&test, scenario.guest(&common::artifacts()));
    let transcript = runner::run(&scenario, &config, &mut |_| {}).unwrap_or_else(|f| panic!("{}", f.report()));
    let [step] = &transcript.steps[..] else { panic!("one replay step: {:?}", transcript.steps) };
    let timing = step.replay.as_ref().expect("a replay step records its timing");
    let expected: Vec<Duration> = injections.iter().map(|i| i.at.div_f64(speed)).collect();
    assert_eq!(timing.due, expected, "each injection is due at its recorded time divided by the speed");
    assert_eq!(timing.started.len(), injections.len());
    for (i, (due, started)) in timing.due.iter().zip(&timing.started).enumerate() {
        assert!(started >= due, "injection {i} started at {started:?}, before it was due at {due:?}");
    }
    assert!(timing.started.windows(2).all(|w| w[0] <= w[1]), "in the trace's order");
    assert!(step.elapsed >= *expected.last().unwrap(), "the step lasts at least the scaled trace");
    assert_eq!(timing.lateness().len(), injections.len());
    assert!(timing.late_percentile(50).unwrap() <= timing.late_percentile(99).unwrap());
    let kmessages = step.datagrams.iter().filter(|d| d.protocol != 15).count();
    assert!(kmessages >= 1, "the first injection is handled whatever the rate limit: {kmessages}");
    eprintln!("{injector} at speed {speed}: {timing}");
}

#[test]
fn the_starter_trace_replays_on_time_through_the_device() {
    replay(Injector::Device, 1.0);
}

#[test]
fn the_starter_trace_replays_four_times_faster_through_debugfs() {
    replay(Injector::Debugfs, 4.0);
}
