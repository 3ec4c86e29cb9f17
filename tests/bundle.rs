//! Reproducer bundles through the real commands: `cargo xtask run
//! --bundle` on a real guest, `cargo xtask replay` of that bundle (a match),
//! of the bundle with one event changed (a mismatch, exit code 40, with the
//! diff), and of broken bundles (refused before anything is built or
//! booted, exit code 1, nothing left behind).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use kevent_bench::bundle::{self, member, Bundle};
use kevent_bench::exit_code;

/// `cargo xtask ARGS` in this checkout, on the kernel the tests were built
/// for (the build flags of its rebuild command).
fn xtask(args: &[&str]) -> Output {
    let artifacts = common::artifacts();
    let build_flags: Vec<String> = artifacts
        .rebuild
        .strip_prefix("cargo xtask build")
        .expect("a rebuild command")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(env!("CARGO_MANIFEST_DIR")).arg("xtask").args(args);
    // The profile is spelled out: the rebuild command leaves out the default one.
    command
        .args(["--kernel-profile", &artifacts.profile])
        .args(build_flags.iter().skip_while(|w| *w != "--kernel-src").take(2).collect::<Vec<_>>());
    command.env_remove("KEVENT_BENCH_KERNEL_PROFILE");
    command.output().expect("run cargo xtask")
}

fn text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The bundle with its members changed by `change`, the manifest's list
/// and fingerprints made to agree: a well-formed bundle of another run.
fn rewritten(bundle: &Bundle, change: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let names: Vec<String> = bundle.manifest.members.iter().map(|m| m.name.clone()).collect();
    let members: Vec<(&str, Vec<u8>)> =
        names.iter().map(|name| (name.as_str(), change(name, bundle.member(name).unwrap().to_vec()))).collect();
    let mut manifest = bundle.manifest.clone();
    bundle::to_bytes("changed", &mut manifest, &members).unwrap()
}

#[test]
fn a_bundle_written_by_run_replays_as_a_match_and_a_changed_one_as_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prochot.tar.xz");
    let path_arg = path.to_str().unwrap();
    let run = xtask(&["run", "scenarios/prochot-high-then-normal.toml", "--bundle", path_arg]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(String::from_utf8_lossy(&run.stderr).contains(&format!("bundle: {path_arg} (")), "{}", text(&run));

    let bundle = Bundle::read(&path).unwrap();
    let m = &bundle.manifest;
    assert_eq!((m.scenario.name.as_str(), m.format_version), ("prochot-high-then-normal", bundle::FORMAT_VERSION));
    assert!(m.outcome.completed && m.outcome.exit_code == 0, "{:?}", m.outcome);
    assert_eq!((m.outcome.kmessages, m.outcome.uevents), (2, 2));
    assert_eq!(m.kernel.release, common::artifacts().kernel_release);
    assert!(m.qemu.version.starts_with("QEMU emulator version "), "{}", m.qemu.version);
    assert!(m.guest.modules.contains_key("kevent_thermal.ko") && m.guest.sources.contains_key("kmod/kmessage.c"));
    assert!(bundle.text(member::CONSOLE).unwrap().contains("Linux version"));
    assert!(bundle.text(member::KERNEL_CONFIG).unwrap().contains("CONFIG_PVH=y"));
    let recorded = bundle.recorded().unwrap();
    assert_eq!(recorded.steps.iter().map(|s| s.datagrams.len()).collect::<Vec<_>>(), [2, 2]);
    assert!(std::fs::metadata(&path).unwrap().len() < 100_000, "a bundle fits a mail to a vger list");

    let replay = xtask(&["replay", path_arg]);
    assert!(replay.status.success(), "{}", text(&replay));
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(said.contains("snapshot: the same as the bundle's"), "{}", text(&replay));
    assert!(said.contains("MATCH: this run reproduces the bundle's"), "{}", text(&replay));

    // The bundle of a run in which the module said "hot" instead of "high".
    let changed = rewritten(&bundle, |name, bytes| {
        if name != member::EVENTS {
            return bytes;
        }
        String::from_utf8(bytes)
            .unwrap()
            .replace("Signal: high", "Signal: hot")
            .replace("\"signal\":\"high\"", "\"signal\":\"hot\"")
            .into_bytes()
    });
    let changed_path = dir.path().join("changed.tar.xz");
    std::fs::write(&changed_path, changed).unwrap();
    let replay = xtask(&["replay", changed_path.to_str().unwrap()]);
    assert_eq!(replay.status.code(), Some(exit_code::REPLAY_MISMATCH), "{}", text(&replay));
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(said.contains("snapshot: differs from the bundle's:"), "{}", text(&replay));
    assert!(
        said.contains("-            \"signal\": \"hot\",\n+            \"signal\": \"high\","),
        "{}",
        text(&replay)
    );
    assert!(said.contains("first event that differs: step 1, event 1 of 2"), "{}", text(&replay));
    assert!(said.trim_end().ends_with("MISMATCH"), "{}", text(&replay));
    assert!(String::from_utf8_lossy(&replay.stderr).contains("did not reproduce the bundle"), "{}", text(&replay));
}

#[test]
fn a_traced_run_with_dynamic_debug_bundles_both_and_replays_with_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traced.tar.xz");
    let path_arg = path.to_str().unwrap();
    let scenario = "scenarios/prochot-high-then-normal.toml";
    let debugging = ["--dyndbg", "module kevent_thermal +p", "--append", "loglevel=8", "--bundle", path_arg];
    if common::artifacts().profile == "default" {
        // Trace events are the debug profile's: refused here before anything is built.
        let refused = xtask(&["run", scenario, "--trace"]);
        assert_eq!(refused.status.code(), Some(exit_code::BENCH_ERROR), "{}", text(&refused));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("the default kernel profile has no trace events"), "{stderr}");
        assert!(!stderr.contains("console log:"), "nothing booted: {stderr}");
        let run = xtask(&[&["run", scenario][..], &debugging].concat());
        assert!(run.status.success(), "{}", text(&run));
        let bundle = Bundle::read(&path).unwrap();
        assert_eq!(bundle.manifest.run.trace, None);
        assert_eq!(bundle.manifest.run.append, ["loglevel=8", "kevent_thermal.dyndbg=\"+p\""]);
        assert_eq!(bundle.manifest.run.dyndbg, ["module kevent_thermal +p"]);
        assert!(bundle.text(member::CONSOLE).unwrap().contains("CPU1's thermal interrupt"), "the probe's dev_dbg");
        return;
    }
    let run = xtask(&[&["run", scenario, "--trace=kevent_thermal:*,kmessage:*"][..], &debugging].concat());
    assert!(run.status.success(), "{}", text(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("trace: kevent_thermal:*,kmessage:*, into the run directory's trace.txt"), "{stderr}");
    assert!(stderr.contains(" of 6 event(s) in "), "the module's five and kmessage's one: {stderr}");

    let bundle = Bundle::read(&path).unwrap();
    let run_info = &bundle.manifest.run;
    assert_eq!(run_info.trace.as_deref(), Some("kevent_thermal:*,kmessage:*"));
    assert_eq!(run_info.append, ["loglevel=8", "kevent_thermal.dyndbg=\"+p\""]);
    assert_eq!(run_info.dyndbg, ["module kevent_thermal +p"]);
    let trace = bundle.text(member::TRACE).unwrap();
    assert!(trace.contains("tracing_mark_write: kevent-bench step 2: "), "{trace}");
    assert!(trace.contains("thermal_interrupt: cpu=1 interrupt=2 "), "{trace}");
    assert!(!trace.contains("irq_handler_entry"), "only the events asked for: {trace}");
    let console = bundle.text(member::CONSOLE).unwrap();
    assert!(console.contains("kevent_thermal.dyndbg=\"+p\""), "the kernel command line");
    assert!(console.contains("CPU1's thermal interrupt"), "the probe's dev_dbg");

    let replay = xtask(&["replay", path_arg]);
    assert!(replay.status.success(), "{}", text(&replay));
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(stderr.contains(" of 6 event(s) in ") && stderr.contains("/trace.txt"), "{stderr}");
}

#[test]
fn broken_bundles_are_refused_before_anything_is_built_or_booted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("whole.tar.xz");
    let run = xtask(&["run", "scenarios/prochot-high-then-normal.toml", "--bundle", path.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run));
    let bytes = std::fs::read(&path).unwrap();
    let bundle = Bundle::read(&path).unwrap();

    let truncated = dir.path().join("truncated.tar.xz");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let newer = dir.path().join("newer.tar.xz");
    let mut manifest = bundle.manifest.clone();
    manifest.format_version = bundle::FORMAT_VERSION + 1;
    let names: Vec<String> = manifest.members.iter().map(|m| m.name.clone()).collect();
    let members: Vec<(&str, Vec<u8>)> =
        names.iter().map(|name| (name.as_str(), bundle.member(name).unwrap().to_vec())).collect();
    std::fs::write(&newer, bundle::to_bytes("newer", &mut manifest, &members).unwrap()).unwrap();
    let bad_scenario = dir.path().join("bad-scenario.tar.xz");
    std::fs::write(
        &bad_scenario,
        rewritten(
            &bundle,
            |name, bytes| if name == member::SCENARIO { b"[[step]]\nsleep_ms = -1\n".to_vec() } else { bytes },
        ),
    )
    .unwrap();

    let expected: [(&Path, String); 3] = [
        (&truncated, format!("{}: the bundle is truncated or corrupt: the xz stream of ", truncated.display())),
        (
            &newer,
            format!(
                "{}: bundle format version {} is newer than this kevent-bench reads (up to {})",
                newer.display(),
                bundle::FORMAT_VERSION + 1,
                bundle::FORMAT_VERSION
            ),
        ),
        (&bad_scenario, format!("{}: scenario.toml: ", bad_scenario.display())),
    ];
    for (path, message) in expected {
        let replay = xtask(&["replay", path.to_str().unwrap()]);
        assert_eq!(replay.status.code(), Some(exit_code::BENCH_ERROR), "{}", text(&replay));
        let stderr = String::from_utf8_lossy(&replay.stderr);
        assert!(stderr.contains(&message), "{message:?} not in {}", text(&replay));
        // Each of these is said as it starts: building, the accelerator's
        // probe, the guest's run directory.
        for started in ["built ", "accelerator:", "console log:"] {
            assert!(!stderr.contains(started), "something was started ({started:?}): {stderr}");
        }
    }
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left.len(), 4, "only the four bundles: {left:?}");
}
