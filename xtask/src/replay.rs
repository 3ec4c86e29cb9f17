//! `cargo xtask replay BUNDLE`: a reproducer bundle's scenario, run again on
//! this machine, its events compared with the bundle's, and every
//! difference in the environment named.
//!
//! Not to be confused with replaying recorded hardware traces: a bundle is
//! a whole run of the bench, written by `run --bundle`.

use std::fmt;

use anyhow::Context;
use kevent_bench::bundle::{self, member, Bundle, RunView};
use kevent_bench::MachineConfig;

use crate::flags::{BuildFlags, KernelProfile, ReplayFlags};
use crate::reproducer;
use crate::run::{self, Output};

/// The run did not reproduce the bundle's (exit code 40).
#[derive(Debug)]
pub struct Mismatch {
    pub bundle: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "this run did not reproduce the bundle {} (the differences are above)", self.bundle)
    }
}

impl std::error::Error for Mismatch {}

pub fn run(flags: &ReplayFlags) -> anyhow::Result<()> {
    // Everything the bundle says is checked before anything is built.
    let bundle = Bundle::read(&flags.bundle)?;
    let manifest = &bundle.manifest;
    let mut scenario = bundle.scenario()?;
    let recorded = bundle.recorded()?;
    if let Some(events) = &manifest.run.trace {
        // The run traced (its scenario's key, or run --trace): so does this one.
        let origin = format!("{}: run.trace", flags.bundle.display());
        let request = kevent_bench::trace::Request::parse_flag(events, origin.as_str())
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        scenario.trace = Some(request);
    }
    let (dyndbg, appended) = bundle.dyndbg()?;
    let includes = check_includes(&bundle)?;
    let target = flags.bundle_out.as_deref().map(reproducer::Target::prepare).transpose()?;
    describe(&bundle, &recorded);
    let projection =
        bundle::snapshot_text(&kevent_bench::snapshot::project(&scenario, &recorded.steps, &recorded.background));
    if bundle.text(member::SNAPSHOT)? != projection {
        eprintln!(
            "note: the bundle's snapshot.json differs from this bench's reading of its events (written by kevent-bench \
             {}): the comparison below uses this bench's reading of both runs",
            manifest.bench_version
        );
    }

    let build = build_flags(flags, manifest)?;
    let artifacts = crate::build::run(&build)?;
    scenario.check_params(&artifacts.module_parameters()?)?;
    let decision = crate::boot::decide_accel(&artifacts, flags.accel, scenario.machine.clock)?;
    let run_dir = crate::boot::run_dir(&artifacts, &format!("replay-{}", scenario.name));
    let mut guest = scenario.guest(&artifacts);
    guest.kernel_args.extend(appended.iter().cloned());
    if !includes.is_empty() {
        guest.initramfs = run::initramfs_with(&guest.initramfs, &includes, &run_dir)?;
    }
    let mut config = MachineConfig::new(guest, decision.accel, run_dir.clone())?;
    config.stream_console = flags.console;
    // Given as queries again, so that one that selects nothing here is
    // refused as `run --dyndbg` refuses it.
    config.dyndbg = dyndbg;
    eprintln!("console log: {}", run_dir.join("console.log").display());
    let execution = run::execute(&scenario, &config, &decision, Output { json: false, raw: false });
    if kevent_bench::process::interrupted().is_some() {
        return execution.outcome.map(|_| ()).map_err(anyhow::Error::from);
    }

    let scenario_text = bundle.member(member::SCENARIO).unwrap_or_default().to_vec();
    let record = reproducer::RunRecord {
        scenario: &scenario,
        scenario_file: &flags.bundle.join(format!("{}.toml", scenario.name)),
        scenario_text,
        overrides: manifest.run.overrides.clone(),
        append: manifest.run.append.clone(),
        includes: &includes,
        build: &build,
        artifacts: &artifacts,
        config: &config,
        decision: &decision,
        execution: &execution,
    };
    let here = reproducer::describe(&record)?;
    let differences = bundle::environment_differences(
        manifest,
        &here.manifest,
        (bundle.text(member::KERNEL_CONFIG)?, &String::from_utf8_lossy(&here.kernel_config)),
    );

    let bundled = RunView {
        scenario: &scenario,
        steps: &recorded.steps,
        background: &recorded.background,
        completed: manifest.outcome.completed,
        exit_code: manifest.outcome.exit_code,
        failed_step: manifest.outcome.failed_step,
    };
    let background = execution.outcome.as_ref().map(|t| t.background.clone()).unwrap_or_default();
    let now = RunView {
        scenario: &scenario,
        steps: &execution.steps,
        background: &background,
        completed: execution.outcome.is_ok(),
        exit_code: execution.outcome.as_ref().err().map_or(0, |f| f.exit_code()),
        failed_step: execution.failed_step(),
    };
    let comparison = bundle::compare(&bundled, &now);
    let same_failure = match (comparison.matches, &execution.outcome) {
        (true, Err(failure)) => Some(failure.report()),
        _ => None,
    };
    report(&comparison, &differences, same_failure.as_deref());
    if let Some(target) = target {
        target.write(&record, here)?;
    }
    match (comparison.matches, execution.outcome) {
        (true, _) => Ok(()),
        // A failure of this run says more than "it differs": its own code.
        (false, Err(failure)) => Err(failure.into()),
        (false, Ok(_)) => Err(Mismatch { bundle: flags.bundle.display().to_string() }.into()),
    }
}

/// The bundle's kernel profile unless one was chosen here; Debian's source
/// unless a tree was given, said out loud where the bundle's was another.
fn build_flags(flags: &ReplayFlags, manifest: &bundle::Manifest) -> anyhow::Result<BuildFlags> {
    let mut build = flags.build.resolve();
    let profile = match manifest.kernel.profile.as_str() {
        "default" => KernelProfile::Default,
        "debug" => KernelProfile::Debug,
        other => anyhow::bail!(
            "{}: manifest.json: kernel profile {other:?} is not one this kevent-bench builds (default, debug)",
            flags.bundle.display()
        ),
    };
    if build.profile_chosen && build.profile != profile {
        eprintln!(
            "kernel profile: {} (--kernel-profile; the bundle ran on {})",
            build.profile.name(),
            manifest.kernel.profile
        );
    } else {
        build.profile = profile;
    }
    if manifest.kernel.user_tree && build.kernel_src.is_none() {
        eprintln!(
            "kernel source: Debian's linux-source (the bundle's kernel was built from {}; give --kernel-src to use a \
             tree)",
            manifest.kernel.tree
        );
    }
    Ok(build)
}

/// The bundle's `--include` files, which must be here as they were.
fn check_includes(bundle: &Bundle) -> anyhow::Result<Vec<String>> {
    let mut includes = Vec::new();
    for include in &bundle.manifest.run.includes {
        let host = include.argument.split_once(':').map_or(include.argument.as_str(), |(host, _)| host);
        let bytes = std::fs::read(host).with_context(|| {
            format!(
                "{}: its run added {host} to the guest (--include {}), which this machine does not have",
                bundle.path.display(),
                include.argument
            )
        })?;
        if bundle::fingerprint(&bytes) != include.fingerprint {
            anyhow::bail!(
                "{}: its run added {host} to the guest (--include {}); the file here is another one (fingerprint {}, \
                 the bundle's {})",
                bundle.path.display(),
                include.argument,
                bundle::fingerprint(&bytes),
                include.fingerprint
            );
        }
        includes.push(include.argument.clone());
    }
    Ok(includes)
}

fn describe(bundle: &Bundle, recorded: &bundle::Recorded) {
    let m = &bundle.manifest;
    let commit = match &m.source.commit {
        Some(commit) if m.source.dirty.is_empty() => format!("commit {commit}"),
        Some(commit) => format!("commit {commit} with {} local change(s)", m.source.dirty.len()),
        None => "no recorded commit".into(),
    };
    let ending = if m.outcome.completed {
        format!(
            "completed {} step(s): {} kmessage(s), {} uevent(s)",
            recorded.steps.len(),
            m.outcome.kmessages,
            m.outcome.uevents
        )
    } else {
        format!("failed (exit code {}): {}", m.outcome.exit_code, m.outcome.message.as_deref().unwrap_or("?"))
    };
    eprintln!(
        "bundle {}: scenario {}, run {} by kevent-bench {} ({commit}) on Linux {} ({} kernel), QEMU {}, {} clock, {}; \
         it {ending}",
        bundle.path.display(),
        m.scenario.name,
        m.created,
        m.bench_version,
        m.kernel.release,
        m.kernel.profile,
        m.qemu.version.trim_start_matches("QEMU emulator version "),
        m.machine.clock,
        m.machine.accel
    );
}

fn report(comparison: &bundle::Comparison, differences: &[String], same_failure: Option<&str>) {
    println!("── replay");
    if differences.is_empty() {
        println!("environment: the same kernel, .config, module and agent sources, QEMU, accelerator and clock");
    } else {
        println!("environment differences:");
        for line in differences {
            println!("  {line}");
        }
    }
    if let Some((bundled, now)) = &comparison.endings {
        println!("the bundle's run {bundled}; this run {now}");
    }
    match &comparison.snapshot_diff {
        None => println!("snapshot: the same as the bundle's"),
        Some(diff) => {
            println!("snapshot: differs from the bundle's:");
            print!("{diff}");
        }
    }
    if let Some(first) = &comparison.first_event_difference {
        println!("first event that differs: {first}");
    }
    if let Some(failure) = same_failure {
        println!("both runs failed the same way; this one: {failure}");
    }
    println!("{}", if comparison.matches { "MATCH: this run reproduces the bundle's" } else { "MISMATCH" });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(bundle: &std::path::Path) -> ReplayFlags {
        let crate::flags::Command::Replay(flags) =
            <crate::flags::Cli as clap::Parser>::parse_from(["cargo xtask", "replay", &bundle.to_string_lossy()])
                .command
        else {
            panic!("not a replay command")
        };
        flags
    }

    /// Bad bundles are refused before anything is built: if the check came
    /// after the build, these would build a kernel (minutes) first.
    #[test]
    fn a_bad_bundle_is_refused_before_anything_is_built_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let truncated = dir.path().join("cut.tar.xz");
        std::fs::write(&truncated, b"\xfd7zXZ\0\0\x04\xe6\xd6\xb4\x46\x02\x00\x21\x01").unwrap();
        let err = run(&flags(&truncated)).unwrap_err();
        assert!(format!("{err:#}").contains("cut.tar.xz: the bundle is truncated or corrupt: "), "{err:#}");
        assert_eq!(crate::exit_code_of(&err), kevent_bench::exit_code::BENCH_ERROR);
        let missing = dir.path().join("none.tar.xz");
        let err = run(&flags(&missing)).unwrap_err();
        assert!(format!("{err:#}").contains("none.tar.xz: cannot read the bundle: No such file"), "{err:#}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["cut.tar.xz"]);
    }

    #[test]
    fn a_mismatch_exits_40() {
        let err = anyhow::Error::from(Mismatch { bundle: "b.tar.xz".into() });
        assert_eq!(crate::exit_code_of(&err), 40);
    }
}
