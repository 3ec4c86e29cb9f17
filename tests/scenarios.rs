//! Two tests per `scenarios/*.toml`: boot, run, snapshot (insta, YAML, in
//! `scenarios/snapshots/`), once injecting through the emulated sensor
//! device and once through debugfs, both against the one accepted snapshot:
//! the two injectors must be indistinguishable in what the guest reports.
//! A custom harness (libtest-mimic) so that `cargo nextest run` lists,
//! filters and partitions scenarios like tests.
//!
//! Also tests of the harness itself: no snapshot without a scenario, and a
//! changed byte in any accepted snapshot fails the comparison.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

mod common;

use kevent_bench::scenario::Injector;
use kevent_bench::{bundle, ktap, runner, scenario};
use libtest_mimic::{Arguments, Failed, Trial};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scenarios_dir() -> PathBuf {
    root().join("scenarios")
}

fn snapshots_dir() -> PathBuf {
    scenarios_dir().join("snapshots")
}

fn scenario_files() -> Vec<PathBuf> {
    scenario::files(&scenarios_dir()).expect("read scenarios/")
}

/// A suite of three scenarios in a scratch directory, read back through the
/// kernel's KTAP parser (tools/testing/kunit, `kunit.py parse`): a starter
/// that passes with both injectors, a device-timed starter whose debugfs case
/// is skipped, and a copy of the first whose accepted snapshot was changed by
/// one value, which fails with both: the parser's counts must be those of
/// the cases run, and the failures must carry the snapshot diff.
fn ktap_reads_back_with_the_kernels_parser() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    let (scenarios, snapshots) = (dir.path().join("scenarios"), dir.path().join("snapshots"));
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::create_dir_all(&scenarios).unwrap();
    for name in ["prochot-high-then-normal", "device-timed-burst"] {
        std::fs::copy(scenarios_dir().join(format!("{name}.toml")), scenarios.join(format!("{name}.toml"))).unwrap();
        std::fs::copy(snapshots_dir().join(format!("{name}.snap")), snapshots.join(format!("{name}.snap"))).unwrap();
    }
    std::fs::copy(scenarios_dir().join("prochot-high-then-normal.toml"), scenarios.join("tampered.toml")).unwrap();
    let accepted = std::fs::read_to_string(snapshots_dir().join("prochot-high-then-normal.snap")).unwrap();
    let tampered = accepted.replace("scenario: prochot-high-then-normal", "scenario: tampered").replacen(
        "signal: high",
        "signal: higher",
        1,
    );
    assert_ne!(tampered, accepted);
    std::fs::write(snapshots.join("tampered.snap"), tampered).unwrap();

    let mut out = Vec::new();
    let reported = run_ktap(cases(&scenarios), &snapshots, 2, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let outcomes: Vec<(&str, &ktap::Outcome)> = reported.iter().map(|r| (r.name.as_str(), &r.outcome)).collect();
    let skip = ktap::Outcome::Skip(
        "steps timed by the sensor device (interval_us) exist only with the device injector, not debugfs".into(),
    );
    assert_eq!(
        outcomes,
        [
            ("scenario::device-timed-burst::device", &ktap::Outcome::Pass),
            ("scenario::device-timed-burst::debugfs", &skip),
            ("scenario::prochot-high-then-normal::device", &ktap::Outcome::Pass),
            ("scenario::prochot-high-then-normal::debugfs", &ktap::Outcome::Pass),
            ("scenario::tampered::device", &ktap::Outcome::Fail),
            ("scenario::tampered::debugfs", &ktap::Outcome::Fail),
        ],
        "{text}"
    );
    assert!(text.starts_with("KTAP version 1\n# kevent-bench "), "{text}");
    for diff_line in ["  # -          signal: higher", "  # +          signal: high"] {
        assert!(text.contains(diff_line), "no {diff_line:?} in\n{text}");
    }

    let kunit = common::artifacts().kernel_tree.join("tools/testing/kunit/kunit.py");
    let json = dir.path().join("results.json");
    let mut parser = Command::new("python3")
        .arg(&kunit)
        .arg("parse")
        .arg(format!("--json={}", json.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run python3 {}: {e}", kunit.display()))?;
    parser.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let parsed = parser.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&parsed.stdout);
    let summary =
        said.lines().find_map(|l| l.split_once("Testing complete. ").map(|(_, s)| s.to_owned())).ok_or_else(|| {
            format!("kunit.py parse printed no summary:\n{said}{}", String::from_utf8_lossy(&parsed.stderr))
        })?;
    assert_eq!(summary, "Ran 6 tests: passed: 3, failed: 2, skipped: 1", "{said}");
    assert_eq!(parsed.status.code(), Some(1), "kunit.py parse exits 1 when a test failed:\n{said}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut statuses = Vec::new();
    for group in results["sub_groups"].as_array().unwrap() {
        for case in group["test_cases"].as_array().unwrap() {
            statuses.push(format!(
                "{}::{} {}",
                group["name"].as_str().unwrap(),
                case["name"].as_str().unwrap(),
                case["status"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(
        statuses,
        [
            "device-timed-burst::device PASS",
            "device-timed-burst::debugfs SKIP",
            "prochot-high-then-normal::device PASS",
            "prochot-high-then-normal::debugfs PASS",
            "tampered::device FAIL",
            "tampered::debugfs FAIL",
        ],
        "{text}"
    );
    Ok(())
}

fn insta_settings(snapshot_dir: &Path) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(snapshot_dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

/// Why a scenario's test failed: the message, and the snapshot diff when
/// the snapshot was what differed.
#[derive(Debug)]
struct CaseFailure {
    message: String,
    diff: Option<String>,
}

impl From<String> for CaseFailure {
    fn from(message: String) -> Self {
        CaseFailure { message, diff: None }
    }
}

/// insta's own comparison, remembering both texts it compared: the KTAP
/// output shows the diff as diagnostic lines.
struct Recording(Arc<Mutex<Option<(String, String)>>>);

impl insta::Comparator for Recording {
    fn matches(&self, reference: &insta::Snapshot, test: &insta::Snapshot) -> bool {
        if let (Some(accepted), Some(new)) = (reference.as_text(), test.as_text()) {
            *self.0.lock().unwrap() = Some((accepted.to_string(), new.to_string()));
        }
        insta::DefaultComparator.matches(reference, test)
    }

    fn dyn_clone(&self) -> Box<dyn insta::Comparator> {
        Box::new(Recording(Arc::clone(&self.0)))
    }
}

/// Runs one scenario in a real guest with `injector` and compares its
/// snapshot with the accepted one in `snapshots`.
fn check_scenario(path: &Path, snapshots: &Path, injector: Injector) -> Result<(), CaseFailure> {
    let mut scenario = scenario::load(path).map_err(|e| e.to_string())?;
    scenario.injector = injector;
    let test = format!("scenario-{}-{injector}", scenario.name);
    let config = common::config(&test, scenario.guest(&common::artifacts()));
    let transcript = runner::run(&scenario, &config, &mut |_| {}).map_err(|f| f.report())?;
    // A run only warns when the guest's bus could not be asked whom it
    // held messages for; a starter scenario must be able to ask.
    if let Err(why) = &transcript.bus_backlog {
        return Err(format!("{}: the end-of-run question to the guest's bus failed: {why}", path.display()).into());
    }
    // An outcome another run could change is not one to accept.
    if !transcript.timing_flags.is_empty() || transcript.timing_flags_lost > 0 {
        let flags: Vec<String> = transcript.timing_flags.iter().map(|f| format!("  {f}")).collect();
        return Err(format!(
            "{}: on the {} clock, outcomes another run could change (rate-limit decisions near the window's edge, \
             {} more not kept, or a replay paced too unevenly) leave no stable snapshot:\n{}\nmove the steps away \
             from the edge, time them with the sensor device on the virtual clock, or slow the replay down",
            path.display(),
            scenario.machine.clock,
            transcript.timing_flags_lost,
            flags.join("\n")
        )
        .into());
    }
    let snapshot = transcript.snapshot();
    let mut settings = insta_settings(snapshots);
    settings.set_description(scenario.description.trim());
    settings.set_input_file(path);
    let compared = Arc::new(Mutex::new(None));
    settings.set_comparator(Box::new(Recording(Arc::clone(&compared))));
    let name = scenario.name.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(name, snapshot))
    }));
    result.map_err(|_| {
        let diff = compared
            .lock()
            .unwrap()
            .take()
            .map(|(accepted, new)| bundle::unified_diff(&accepted, &new, "accepted", "this run"));
        CaseFailure {
            message: format!(
                "the {injector} injector's snapshot of {} differs from the accepted one, which both injectors must \
                 match (review with `cargo insta review`)",
                path.display()
            ),
            diff,
        }
    })
}

/// One scenario run with one injector, or the reason it does not apply.
#[derive(Debug, Clone)]
struct Case {
    scenario: String,
    path: PathBuf,
    injector: Injector,
    skip: Option<String>,
}

impl Case {
    fn name(&self) -> String {
        format!("scenario::{}::{}", self.scenario, self.injector)
    }
}

/// Every scenario of `dir` with each injector, in file order.
fn cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    for path in scenario::files(dir).expect("read the scenarios directory") {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        // Steps the sensor device times exist only on the device path.
        let device_timed = scenario::load(&path).is_ok_and(|s| s.device_timed_step().is_some());
        for injector in Injector::ALL {
            let skip = (device_timed && injector != Injector::Device).then(|| {
                format!("steps timed by the sensor device (interval_us) exist only with the device injector, not {injector}")
            });
            cases.push(Case { scenario: name.clone(), path: path.clone(), injector, skip });
        }
    }
    cases
}

/// What KTAP mode reports of one case.
#[derive(Debug)]
struct Reported {
    name: String,
    outcome: ktap::Outcome,
}

/// Runs `cases` (`threads` at a time) and writes their results as KTAP to
/// `out` as they come, one top-level test per scenario with a subtest per
/// injector; a failed case's message and snapshot diff are diagnostic lines
/// before its result.
fn run_ktap(cases: Vec<Case>, snapshots: &Path, threads: usize, out: &mut dyn Write) -> std::io::Result<Vec<Reported>> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        match groups.last_mut() {
            Some((scenario, members)) if *scenario == case.scenario => members.push(index),
            _ => groups.push((case.scenario.clone(), vec![index])),
        }
    }
    let results: Vec<Mutex<Option<Result<(), CaseFailure>>>> = cases.iter().map(|_| Mutex::new(None)).collect();
    let done = Condvar::new();
    let next = AtomicUsize::new(0);
    let to_run: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].skip.is_none()).collect();
    let mut ktap = ktap::Writer::new(out);
    let artifacts = common::artifacts();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while let Some(&index) = to_run.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let case = &cases[index];
                    let result = std::panic::catch_unwind(|| check_scenario(&case.path, snapshots, case.injector))
                        .unwrap_or_else(|_| Err("the test panicked".to_owned().into()));
                    *results[index].lock().unwrap() = Some(result);
                    done.notify_all();
                }
            });
        }
        let about = format!(
            "kevent-bench {} scenario suite: Linux {} ({} kernel), one test per scenario, one subtest per injector",
            env!("CARGO_PKG_VERSION"),
            artifacts.kernel_release,
            artifacts.profile
        );
        ktap.start(&about, groups.len())?;
        let mut reported = Vec::new();
        for (number, (scenario, members)) in groups.iter().enumerate() {
            ktap.start_subtests(0, scenario, members.len())?;
            let mut outcomes = Vec::new();
            for (sub, &index) in members.iter().enumerate() {
                let case = &cases[index];
                let outcome = match &case.skip {
                    Some(reason) => ktap::Outcome::Skip(reason.clone()),
                    None => {
                        let mut slot = results[index].lock().unwrap();
                        while slot.is_none() {
                            slot = done.wait(slot).unwrap();
                        }
                        match slot.take().unwrap() {
                            Ok(()) => ktap::Outcome::Pass,
                            Err(failure) => {
                                ktap.diagnostic(1, &format!("{}: {}", case.injector, failure.message))?;
                                if let Some(diff) = &failure.diff {
                                    ktap.diagnostic(1, diff)?;
                                }
                                ktap::Outcome::Fail
                            }
                        }
                    }
                };
                ktap.result(1, sub + 1, &case.injector.to_string(), &outcome)?;
                reported.push(Reported { name: case.name(), outcome: outcome.clone() });
                outcomes.push(outcome);
            }
            ktap.result(0, number + 1, scenario, &ktap::Outcome::of_children(&outcomes))?;
        }
        Ok(reported)
    })
}

fn accepted_snapshots() -> Vec<PathBuf> {
    let mut snaps: Vec<PathBuf> =
        std::fs::read_dir(snapshots_dir()).map(|dir| dir.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    snaps.retain(|p| p.extension().is_some_and(|e| e == "snap"));
    snaps.sort();
    snaps
}

/// Every accepted snapshot belongs to a scenario; every scenario has one.
fn no_orphans() -> Result<(), Failed> {
    let scenarios: Vec<String> =
        scenario_files().iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    let snapshots: Vec<String> =
        accepted_snapshots().iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    let orphans: Vec<&String> = snapshots.iter().filter(|s| !scenarios.contains(s)).collect();
    let missing: Vec<&String> = scenarios.iter().filter(|s| !snapshots.contains(s)).collect();
    if orphans.is_empty() && missing.is_empty() {
        return Ok(());
    }
    Err(format!("snapshots without a scenario: {orphans:?}; scenarios without an accepted snapshot: {missing:?}")
        .into())
}

/// The body of an accepted snapshot: everything after its header.
fn snapshot_body(text: &str) -> &str {
    let after_open = text.strip_prefix("---\n").expect("a snapshot starts with its header");
    let end = after_open.find("\n---\n").expect("a snapshot header ends with ---");
    &after_open[end + 5..]
}

/// For every accepted snapshot: its own body matches, and the body with
/// one byte changed, at positions spread over the whole body, does not.
fn a_changed_byte_fails() -> Result<(), Failed> {
    let snapshots = accepted_snapshots();
    if snapshots.is_empty() {
        return Err("no accepted snapshots to check".into());
    }
    for snap in snapshots {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path();
        std::fs::copy(&snap, scratch.join(snap.file_name().unwrap())).unwrap();
        let name = snap.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&snap).unwrap();
        let body = snapshot_body(&text).to_owned();
        let settings = insta_settings(scratch);
        let compare = |candidate: String| {
            let name = name.clone();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                settings.bind(|| insta::assert_snapshot!(name, candidate))
            }))
            .is_ok()
        };
        if !compare(body.trim_end().to_owned()) {
            return Err(format!("{}: its own body does not match it", snap.display()).into());
        }
        let positions: Vec<usize> = body.char_indices().filter(|(_, c)| c.is_ascii_graphic()).map(|(i, _)| i).collect();
        let step = (positions.len() / 25).max(1);
        for &at in positions.iter().step_by(step) {
            let mut bytes = body.clone().into_bytes();
            bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
            let changed = String::from_utf8(bytes).unwrap();
            if compare(changed.trim_end().to_owned()) {
                return Err(format!("{}: changing byte {at} of the body went unnoticed", snap.display()).into());
            }
        }
    }
    Ok(())
}

/// `--ktap` (the harness's own flag, taken out before libtest's are read):
/// the scenario cases as KTAP on stdout, instead of libtest's report.
fn main() {
    let mut words: Vec<String> = std::env::args().collect();
    let ktap_mode = words.iter().any(|w| w == "--ktap");
    words.retain(|w| w != "--ktap");
    let args = Arguments::from_iter(words);
    if ktap_mode {
        // Every libtest flag the KTAP run would not honour is refused, not
        // dropped: `--list` would otherwise run the whole guest suite.
        if args.list || args.format.is_some() {
            eprintln!("--ktap: --list and --format are libtest's reports; KTAP mode prints only KTAP");
            std::process::exit(2);
        }
        let selected: Vec<Case> = cases(&scenarios_dir())
            .into_iter()
            .filter(|case| !args.is_filtered_out(&Trial::test(case.name(), || Ok(()))))
            .collect();
        let threads = args.test_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let reported =
            run_ktap(selected, &snapshots_dir(), threads, &mut std::io::stdout().lock()).expect("write KTAP to stdout");
        let failed = reported.iter().filter(|r| r.outcome == ktap::Outcome::Fail).count();
        std::process::exit(if failed == 0 { 0 } else { 1 });
    }
    let mut trials = Vec::new();
    for case in cases(&scenarios_dir()) {
        if case.skip.is_some() {
            continue;
        }
        let name = case.name();
        trials.push(Trial::test(name, move || {
            check_scenario(&case.path, &snapshots_dir(), case.injector).map_err(|f| Failed::from(f.message))
        }));
    }
    trials.push(Trial::test("harness::no_orphaned_or_missing_snapshots", no_orphans));
    trials.push(Trial::test("harness::a_changed_byte_in_any_snapshot_fails", a_changed_byte_fails));
    trials.push(Trial::test(
        "harness::ktap_reads_back_with_the_kernels_own_parser",
        ktap_reads_back_with_the_kernels_parser,
    ));
    libtest_mimic::run(&args, trials).exit();
}
