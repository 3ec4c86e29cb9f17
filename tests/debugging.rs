//! Looking inside a run on the real guest: dynamic debug switched on from
//! the kernel command line, kernel traces with a marker per step, and what
//! the guest cannot honour refused before any step runs.

mod common;

use kevent_bench::dyndbg::Query;
use kevent_bench::runner;
use kevent_bench::scenario::{self, Scenario};
use kevent_bench::Failure;

fn scenario(dir: &std::path::Path, name: &str, text: &str) -> Scenario {
    scenario::parse(&dir.join(format!("{name}.toml")), text).unwrap_or_else(|e| panic!("{e}"))
}

/// Two interrupts on CPU 1 inside the rate-limit window: the first is
/// handled, the second limited.
const TWO_INTERRUPTS: &str = r#"
description = "handled, then rate-limited"
[params]
kevent_thermal.rate_limit_ms = 60000
[[step]]
inject = { cpu = 1, bits = ["prochot"] }
[[step]]
inject = { cpu = 1, bits = ["prochot", "critical"] }
"#;

#[test]
fn dynamic_debug_prints_the_modules_pr_debug_and_a_query_that_selects_nothing_is_refused() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "dyndbg-scenario");
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!("injector = \"debugfs\"\n{TWO_INTERRUPTS}");
    let scenario = scenario(&dir, "dyndbg", &text);

    let mut config = common::config("dyndbg", scenario.guest(&artifacts));
    config.dyndbg = vec![Query::parse("module kevent_thermal +p").unwrap()];
    runner::run(&scenario, &config, &mut |_| {}).unwrap_or_else(|f| panic!("{}", f.report()));
    let console = std::fs::read_to_string(config.run_dir.join("console.log")).unwrap();
    let debug: Vec<&str> = console.lines().filter(|l| l.contains("kevent_thermal: ")).collect();
    assert!(
        debug.iter().any(|l| l.contains("kevent_thermal: injection 1: register ") && l.contains(" of CPU1 is 0x")),
        "the debugfs injection's pr_debug: {debug:#?}"
    );
    assert!(
        debug.iter().any(|l| l.contains("CPU1: interrupt 2 rate-limited") && l.contains("inside the 60000 ms window")),
        "the handler's pr_debug at the second interrupt: {debug:#?}"
    );

    // Without the query, the same run at the same console level prints
    // none of them: the query, not the level, switched them on.
    let mut plain = common::config("dyndbg-off", scenario.guest(&artifacts));
    plain.guest.kernel_args.push(kevent_bench::dyndbg::CONSOLE_LEVEL.to_owned());
    runner::run(&scenario, &plain, &mut |_| {}).unwrap_or_else(|f| panic!("{}", f.report()));
    let console = std::fs::read_to_string(plain.run_dir.join("console.log")).unwrap();
    assert!(!console.contains("rate-limited"), "{console}");

    let mut config = common::config("dyndbg-refused", scenario.guest(&artifacts));
    config.dyndbg = vec![Query::parse("module kevent_thermal func kt_no_such_function +p").unwrap()];
    let mut steps = 0;
    let err = runner::run(&scenario, &config, &mut |_| steps += 1).unwrap_err();
    assert!(matches!(err, Failure::Refused { .. }), "{}", err.report());
    assert!(
        err.to_string().starts_with(
            "--dyndbg \"module kevent_thermal func kt_no_such_function +p\": selects no pr_debug call site"
        ),
        "{err}"
    );
    assert_eq!(steps, 0, "refused before the first step");

    // The kernel takes a class no module declares without a word, and a
    // query with a class clause selects only sites of that class.
    let mut config = common::config("dyndbg-class", scenario.guest(&artifacts));
    config.dyndbg = vec![Query::parse("module kevent_thermal class DRM_UT_KMS +p").unwrap()];
    let err = runner::run(&scenario, &config, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Failure::Refused { .. }), "{}", err.report());
    assert!(err.to_string().ends_with("; no site has a class)"), "{err}");
}

/// Whether the guest kernel has trace events: the debug profile's.
fn kernel_traces(artifacts: &kevent_bench::Artifacts) -> bool {
    let config = std::fs::read_to_string(artifacts.vmlinux.with_file_name(".config")).unwrap();
    config.lines().any(|l| l == "CONFIG_EVENT_TRACING=y")
}

/// The lines of `trace` from step `n`'s marker to the next marker (or the end).
fn step_lines(trace: &str, n: usize) -> Vec<&str> {
    let marker = format!("tracing_mark_write: kevent-bench step {n}: ");
    let lines: Vec<&str> = trace.lines().collect();
    let start = lines.iter().position(|l| l.contains(&marker)).unwrap_or_else(|| panic!("no marker {marker:?}"));
    lines[start + 1..].iter().take_while(|l| !l.contains("tracing_mark_write: kevent-bench step")).copied().collect()
}

fn position(lines: &[&str], what: &str) -> usize {
    lines.iter().position(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what:?} in {lines:#?}"))
}

#[test]
fn a_trace_holds_each_steps_marker_and_the_path_of_its_interrupt_to_the_broadcast() {
    let artifacts = common::artifacts();
    if !kernel_traces(&artifacts) {
        eprintln!("SKIPPED: the {} kernel has no trace events; the debug profile runs this test", artifacts.profile);
        return;
    }
    let dir = common::run_dir(&artifacts, "trace-scenario");
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = scenario(&dir, "traced", &format!("trace = true\n{TWO_INTERRUPTS}"));
    let config = common::config("trace", scenario.guest(&artifacts));
    let transcript = runner::run(&scenario, &config, &mut |_| {}).unwrap_or_else(|f| panic!("{}", f.report()));
    let summary = transcript.trace.expect("a trace summary");
    assert_eq!(summary.path, config.run_dir.join("trace.txt"));
    assert!(summary.lost.is_empty() && summary.stopped_at_step.is_none(), "{summary:?}");
    let trace = std::fs::read_to_string(&summary.path).unwrap();
    assert!(trace.starts_with("# kevent-bench trace: traced: handled, then rate-limited\n"), "{trace}");
    assert!(trace.ends_with("# kevent-bench: no event lost\n"), "{trace}");
    assert_eq!(summary.lines, trace.lines().filter(|l| !l.starts_with('#')).count() as u64);

    // Step 1, in the order the bench exists to check: the device's vector,
    // the handler in hard IRQ, the kmessage it sends, the uevent it queues,
    // the ordered workqueue sending it, the completion the host waits for.
    let step = step_lines(&trace, 1);
    let vector = position(&step, "name=kevent_thermal-cpu1");
    assert!(step[vector].contains("irq_handler_entry: irq="), "{}", step[vector]);
    let handler = position(&step, "thermal_interrupt: cpu=1 interrupt=1 therm_status=0x");
    let kmessage = position(&step, "object=/org/kernel/devices/system/cpu/temperature signal=high len=");
    assert!(step[kmessage].contains("kmessage_send: type="), "{}", step[kmessage]);
    let queued = position(&step, "thermal_uevent_queue: cpu=1 object=/org/kernel/devices/system/cpu/temperature");
    // The module's work item, not whatever else the kernel ran meanwhile
    // (a crng_reseed once came first).
    let work = position(&step, ": function kt_uevent_workfn");
    assert!(step[work].contains("workqueue_execute_start:"), "{}", step[work]);
    let sent = position(&step, "thermal_uevent_send: cpu=1");
    let done = position(&step, "thermal_done: cpu=1");
    assert!(vector < handler && handler < kmessage && kmessage < queued, "{step:#?}");
    assert!(queued < work && work < sent && sent < done, "{step:#?}");
    assert!(step[kmessage].ends_with(" sent"), "{}", step[kmessage]);
    assert!(step[queued].ends_with(" queued"), "{}", step[queued]);
    assert!(!step.iter().any(|l| l.contains("thermal_rate_limit")), "the first interrupt has no window yet");

    // Step 2: the rate-limit decision, and nothing sent.
    let step = step_lines(&trace, 2);
    let decision = position(&step, "thermal_rate_limit: cpu=1 interrupt=2 window_ms=60000 margin_ns=-");
    assert!(step[decision].ends_with(" limited"), "{}", step[decision]);
    assert!(!step.iter().any(|l| l.contains("kmessage_send") || l.contains("thermal_uevent_queue")), "{step:#?}");
}

#[test]
fn an_unknown_trace_event_is_refused_with_its_closest_names_before_any_step() {
    let artifacts = common::artifacts();
    if !kernel_traces(&artifacts) {
        eprintln!("SKIPPED: the {} kernel has no trace events; the debug profile runs this test", artifacts.profile);
        return;
    }
    let dir = common::run_dir(&artifacts, "trace-refused-scenario");
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!("trace = [\"kevent_thermal:*\", \"irq:irq_handler_entyr\"]\n{TWO_INTERRUPTS}");
    let scenario = scenario(&dir, "refused", &text);
    let config = common::config("trace-refused", scenario.guest(&artifacts));
    let mut steps = 0;
    let err = runner::run(&scenario, &config, &mut |_| steps += 1).unwrap_err();
    assert!(matches!(err, Failure::Refused { .. }), "{}", err.report());
    let message = err.to_string();
    assert!(
        message.contains("refused.toml:1:9: trace irq:irq_handler_entyr: the guest kernel has no such trace event"),
        "{message}"
    );
    assert!(message.contains("close matches: irq:irq_handler_entry"), "{message}");
    assert_eq!(steps, 0);
    assert!(!config.run_dir.join("trace.txt").exists(), "nothing left behind");
}

#[test]
fn a_trace_on_a_kernel_without_trace_events_is_refused_before_any_step() {
    let artifacts = common::artifacts();
    if kernel_traces(&artifacts) {
        eprintln!("SKIPPED: the {} kernel has trace events; the default profile runs this test", artifacts.profile);
        return;
    }
    let dir = common::run_dir(&artifacts, "trace-none-scenario");
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = scenario(&dir, "untraced", &format!("trace = true\n{TWO_INTERRUPTS}"));
    let config = common::config("trace-none", scenario.guest(&artifacts));
    let mut steps = 0;
    let err = runner::run(&scenario, &config, &mut |_| steps += 1).unwrap_err();
    assert!(matches!(err, Failure::Refused { .. }), "{}", err.report());
    let message = err.to_string();
    assert!(message.contains("untraced.toml:1:9: trace kevent_thermal:*"), "{message}");
    assert!(message.contains("the guest kernel has no tracefs"), "{message}");
    assert!(message.contains("--kernel-profile debug"), "{message}");
    assert_eq!(steps, 0);
    assert!(!config.run_dir.join("trace.txt").exists(), "nothing left behind");
}
