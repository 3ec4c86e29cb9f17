//! `cargo xtask test`: builds what the tests need, then runs every test of
//! the workspace (unit, integration, guest boots) with cargo-nextest if it is
//! installed, else with `cargo test`.

use std::fmt;
use std::process::Command;

use anyhow::Context;
use kevent_bench::process::which;

use crate::flags::{BuildFlags, KernelProfile, TestFlags};
use crate::prereq::Host;

/// The test runner failed; carries its exit code.
#[derive(Debug)]
pub struct TestsFailed(pub i32);

impl fmt::Display for TestsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tests failed (runner exit code {})", self.0)
    }
}

impl std::error::Error for TestsFailed {}

/// The test binaries that boot guests: they run again on the debug kernel.
const GUEST_TESTS: &[&str] = &[
    "boot",
    "bundle",
    "clock",
    "dbus",
    "debugging",
    "events",
    "exec",
    "gdb",
    "replay",
    "sensor",
    "scenarios",
    "topology",
];

/// Guest tests that do not run again: `determinism` keeps every host core
/// busy for minutes, and its question (does load change a snapshot) is the
/// default kernel's.
#[cfg(test)]
const DEFAULT_KERNEL_ONLY: &[&str] = &["determinism"];

/// Every test on the chosen kernel profile; without a choice, every test on
/// the default kernel, then the guest tests on the debug kernel (lockdep,
/// sleeping-in-atomic checks), where any report on the console fails them.
pub fn run(flags: &TestFlags) -> anyhow::Result<()> {
    let build = flags.build.resolve();
    if flags.ktap {
        return run_ktap(flags, &build);
    }
    if build.profile_chosen {
        return run_profile(flags, &build, None);
    }
    run_profile(flags, &build, None)?;
    let debug = BuildFlags { profile: KernelProfile::Debug, ..build };
    eprintln!("running the guest tests again on the debug kernel");
    run_profile(flags, &debug, Some(GUEST_TESTS))
}

/// Runs the workspace's tests, or only the test binaries named in `only`.
fn run_profile(flags: &TestFlags, build: &BuildFlags, only: Option<&[&str]>) -> anyhow::Result<()> {
    let artifacts = crate::build::run(build)?;
    let decision = crate::boot::decide_accel(&artifacts, flags.accel, kevent_bench::Clock::Real)?;
    let project = crate::project::Project::locate()?;
    provide_private_qemu(&project)?;
    let artifacts_file = project.artifacts_file(&artifacts.profile);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&project.root);
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        if let Some(only) = only {
            let filter: Vec<String> = only.iter().map(|name| format!("binary({name})")).collect();
            cmd.args(["-E", &filter.join(" | ")]);
        }
    } else {
        eprintln!("cargo-nextest not found: running the tests with `cargo test`");
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
        for name in only.unwrap_or_default() {
            cmd.args(["--test", name]);
        }
    }
    cmd.args(&flags.runner_args)
        .env(kevent_bench::artifacts::ARTIFACTS_ENV, &artifacts_file)
        .env(kevent_bench::accel::ACCEL_ENV, decision.accel.to_string());
    let status =
        kevent_bench::process::spawn(&mut cmd).and_then(|mut runner| runner.wait()).context("run the test runner")?;
    if !status.success() {
        return Err(TestsFailed(status.code().unwrap_or(1)).into());
    }
    Ok(())
}

/// The scenario suite alone, as KTAP version 1 on stdout: the scenarios
/// harness prints it itself (`tests/scenarios.rs`, `--ktap`), so it runs
/// under `cargo test`, which hands its stdout through; nextest would
/// capture each test's output apart. ARGS filter the scenarios as they do
/// the harness's tests.
fn run_ktap(flags: &TestFlags, build: &BuildFlags) -> anyhow::Result<()> {
    let artifacts = crate::build::run(build)?;
    let decision = crate::boot::decide_accel(&artifacts, flags.accel, kevent_bench::Clock::Real)?;
    let project = crate::project::Project::locate()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&project.root)
        .args(["test", "--quiet", "--test", "scenarios", "--", "--ktap"])
        .args(&flags.runner_args)
        .env(kevent_bench::artifacts::ARTIFACTS_ENV, project.artifacts_file(&artifacts.profile))
        .env(kevent_bench::accel::ACCEL_ENV, decision.accel.to_string());
    let status = kevent_bench::process::spawn(&mut cmd)
        .and_then(|mut runner| runner.wait())
        .context("run the scenarios harness")?;
    if !status.success() {
        return Err(TestsFailed(status.code().unwrap_or(1)).into());
    }
    Ok(())
}

/// The private QEMU has a guest test of its own, which CI must run: where
/// the system's QEMU is in use the private one is extracted for it alone.
fn provide_private_qemu(project: &crate::project::Project) -> anyhow::Result<()> {
    let host = Host::detect();
    if !host.has_apt {
        eprintln!("no apt-get on this host: no private QEMU, so its guest test is skipped");
        return Ok(());
    }
    crate::private_qemu::ensure(host, &project.cache).context("the private QEMU, for its guest test")?;
    Ok(())
}

fn has_nextest() -> bool {
    which(std::path::Path::new("cargo-nextest")).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test binary that boots a guest and is missing from the list would
    /// never run on the debug kernel (gdb and traces need it).
    #[test]
    fn every_guest_test_binary_runs_again_on_the_debug_kernel() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests");
        let mut booting = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if text.contains("common::artifacts()") || text.contains("common::config") {
                    booting.push(path.file_stem().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        booting.sort();
        let mut listed: Vec<String> = GUEST_TESTS.iter().chain(DEFAULT_KERNEL_ONLY).map(|s| (*s).to_owned()).collect();
        listed.sort();
        assert_eq!(booting, listed);
    }
}
