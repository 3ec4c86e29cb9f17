//! Two tests per `scenarios/*.toml`: boot, run, snapshot (insta, YAML, in
//! `scenarios/snapshots/`), once injecting through the emulated sensor
//! device and once through debugfs, both against the one accepted snapshot:
//! the two injectors must be indistinguishable in what the guest reports.
//! A custom harness (libtest-mimic) so that `cargo nextest run` lists,
//! filters and partitions scenarios like tests.
//!
//! Also tests of the harness itself: no snapshot without a scenario, and a
//! changed byte in any accepted snapshot fails the comparison.

use std::path::{Path, PathBuf};

mod common;

use kevent_bench::scenario::Injector;
use kevent_bench::{runner, scenario};
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

fn insta_settings(snapshot_dir: &Path) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(snapshot_dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

/// Runs one scenario in a real guest with `injector` and compares its snapshot.
fn check_scenario(path: &Path, injector: Injector) -> Result<(), Failed> {
    let mut scenario = scenario::load(path).map_err(|e| e.to_string())?;
    scenario.injector = injector;
    let test = format!("scenario-{}-{injector}", scenario.name);
    let config = common::config(&test, scenario.guest(&common::artifacts()));
    let transcript = runner::run(&scenario, &config, &mut |_| {}).map_err(|f| f.report())?;
    // An outcome another run could change is not one to accept.
    if !transcript.timing_flags.is_empty() || transcript.timing_flags_lost > 0 {
        let flags: Vec<String> = transcript.timing_flags.iter().map(|f| format!("  {f}")).collect();
        return Err(format!(
            "{}: on the {} clock, rate-limit decisions fell too close to the window's edge for a stable snapshot \
             ({} more not kept):\n{}\nmove the steps away from the edge, or time them with the sensor device on the \
             virtual clock",
            path.display(),
            scenario.machine.clock,
            transcript.timing_flags_lost,
            flags.join("\n")
        )
        .into());
    }
    let snapshot = transcript.snapshot();
    let mut settings = insta_settings(&snapshots_dir());
    settings.set_description(scenario.description.trim());
    settings.set_input_file(path);
    let name = scenario.name.clone();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(name, snapshot))
    }))
    .map_err(|_| {
        format!(
            "the {injector} injector's snapshot of {} differs from the accepted one, which both injectors must match \
             (review with `cargo insta review`)",
            path.display()
        )
        .into()
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

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for path in scenario_files() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        // Steps the sensor device times exist only on the device path.
        let device_timed = scenario::load(&path).is_ok_and(|s| s.device_timed_step().is_some());
        let injectors: &[Injector] = if device_timed { &[Injector::Device] } else { &Injector::ALL };
        for &injector in injectors {
            let path = path.clone();
            trials.push(Trial::test(format!("scenario::{name}::{injector}"), move || check_scenario(&path, injector)));
        }
    }
    trials.push(Trial::test("harness::no_orphaned_or_missing_snapshots", no_orphans));
    trials.push(Trial::test("harness::a_changed_byte_in_any_snapshot_fails", a_changed_byte_fails));
    libtest_mimic::run(&args, trials).exit();
}
