//! `run --bundle FILE`: what a run was, what it ran on and what it
//! produced, gathered into one reproducer bundle (kevent_bench::bundle,
//! docs/bundle.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use kevent_bench::bundle::{self, member, Manifest};
use kevent_bench::scenario::Scenario;
use kevent_bench::{qemu, AccelDecision, Artifacts, MachineConfig};

use crate::flags::BuildFlags;
use crate::run::Execution;

/// A local source diff larger than this is left out of a bundle (and said so):
/// a bundle is meant for a mail.
const MAX_SOURCE_DIFF: usize = 64 << 10;

/// Where a bundle will be written, tried before the run starts.
pub struct Target {
    path: PathBuf,
}

impl Target {
    /// Refuses a destination that cannot be written, before anything is
    /// built or booted; leaves nothing there.
    pub fn prepare(path: &Path) -> anyhow::Result<Target> {
        if path.is_dir() {
            anyhow::bail!("--bundle {}: a directory; name the bundle's file", path.display());
        }
        bundle::temporary_beside(path).with_context(|| format!("--bundle {}: cannot write there", path.display()))?;
        Ok(Target { path: path.to_owned() })
    }

    /// Writes the bundle of `run` (as [`describe`] described it), whole or
    /// not at all, and says where.
    pub fn write(&self, run: &RunRecord, description: Description) -> anyhow::Result<()> {
        let (mut manifest, members) = contents(run, description)?;
        let top = top_directory(&self.path, &run.scenario.name);
        let bytes = bundle::to_bytes(&top, &mut manifest, &members)
            .with_context(|| format!("pack the bundle {}", self.path.display()))?;
        bundle::write_file(&self.path, &bytes)?;
        let parts: Vec<String> = manifest.members.iter().map(|m| format!("{} {}", m.name, m.bytes)).collect();
        eprintln!("bundle: {} ({} bytes; unpacked: {})", self.path.display(), bytes.len(), parts.join(", "));
        Ok(())
    }
}

/// The archive's one directory: the bundle's file name without its
/// archive suffixes.
fn top_directory(path: &Path, scenario: &str) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = [".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(&name);
    let plain: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' }).collect();
    if plain.is_empty() || plain.starts_with('.') {
        format!("{scenario}-bundle")
    } else {
        plain
    }
}

/// Everything about one run that goes into its bundle.
pub struct RunRecord<'a> {
    /// The scenario as run (overrides applied).
    pub scenario: &'a Scenario,
    /// Where it was read from.
    pub scenario_file: &'a Path,
    /// Its bytes as read.
    pub scenario_text: Vec<u8>,
    /// The command line's choices over the scenario's.
    pub overrides: bundle::Overrides,
    /// Kernel command-line words the run added (`--append`, `--dyndbg`).
    pub append: Vec<String>,
    /// `--include` arguments.
    pub includes: &'a [String],
    pub build: &'a BuildFlags,
    pub artifacts: &'a Artifacts,
    pub config: &'a MachineConfig,
    pub decision: &'a AccelDecision,
    pub execution: &'a Execution,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// A bundle member: its name and bytes.
pub type Member = (&'static str, Vec<u8>);

/// A run as its bundle's manifest says it, and its kernel's `.config`:
/// made once, for a replay's comparison and its bundle alike.
pub struct Description {
    /// The manifest, members not yet listed.
    pub manifest: Manifest,
    /// The `.config` of the run's kernel.
    pub kernel_config: Vec<u8>,
}

/// Describes `run`: its kernel's `.config` read, its manifest made.
pub fn describe(run: &RunRecord) -> anyhow::Result<Description> {
    let kernel_config = read(&run.artifacts.vmlinux.parent().unwrap_or(Path::new("/")).join(".config"))?;
    let manifest = manifest(run, &kernel_config)?;
    Ok(Description { manifest, kernel_config })
}

/// The manifest (members not yet listed) and the members of `run`'s bundle.
fn contents(run: &RunRecord, description: Description) -> anyhow::Result<(Manifest, Vec<Member>)> {
    let Description { manifest, kernel_config } = description;
    let mut events = String::new();
    for line in &run.execution.lines {
        events.push_str(&line.to_string());
        events.push('\n');
    }
    let background = match &run.execution.outcome {
        Ok(transcript) => transcript.background.clone(),
        Err(_) => Vec::new(),
    };
    let snapshot = kevent_bench::snapshot::project(run.scenario, &run.execution.steps, &background);
    let mut members = vec![
        (member::SCENARIO, run.scenario_text.clone()),
        (member::SNAPSHOT, bundle::snapshot_text(&snapshot).into_bytes()),
        (member::EVENTS, events.into_bytes()),
        (member::CONSOLE, read(&run.config.run_dir.join("console.log"))?),
        (member::KERNEL_CONFIG, kernel_config),
    ];
    // The run directory's trace, where the run traced (`run --trace`).
    let trace = run.config.run_dir.join("trace.txt");
    if trace.exists() {
        members.push((member::TRACE, read(&trace)?));
    }
    if let Some(diff) = source_diff(&crate::project::Project::locate()?.root, &manifest.source) {
        members.push((member::SOURCE_DIFF, diff));
    }
    Ok((manifest, members))
}

/// The manifest of `run`, whose kernel's `.config` is `kernel_config`:
/// everything but the member list.
fn manifest(run: &RunRecord, kernel_config: &[u8]) -> anyhow::Result<Manifest> {
    let project = crate::project::Project::locate()?;
    let artifacts = run.artifacts;
    let config = run.config;
    let execution = run.execution;
    let scenario = run.scenario;
    let qemu_args: Vec<String> = qemu::command_line(
        &config.guest_spec(),
        config.accel,
        Path::new("$SOCKETS/agent.sock"),
        config.sensor.then_some(Path::new("$SOCKETS/sensor.sock")),
    )
    .iter()
    .map(|a| a.to_string_lossy().into_owned())
    .collect();
    let kernel_command_line =
        qemu_args.iter().position(|a| a == "-append").and_then(|i| qemu_args.get(i + 1)).cloned().unwrap_or_default();
    let (snapshot_steps, totals) = {
        let background = execution.outcome.as_ref().map(|t| t.background.clone()).unwrap_or_default();
        let snapshot = kevent_bench::snapshot::project(scenario, &execution.steps, &background);
        (snapshot.steps.len(), snapshot.totals)
    };
    let (timing_flags, failure) = match &execution.outcome {
        Ok(transcript) => (transcript.timing_flags.iter().map(ToString::to_string).collect(), None),
        Err(failure) => (Vec::new(), Some(failure)),
    };
    let modules = artifacts
        .modules
        .iter()
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((name, bundle::fingerprint(&read(path)?)))
        })
        .collect::<anyhow::Result<_>>()?;
    let includes = run
        .includes
        .iter()
        .map(|argument| {
            let host = argument.split_once(':').map_or(argument.as_str(), |(host, _)| host);
            Ok(bundle::IncludeInfo {
                argument: argument.clone(),
                fingerprint: bundle::fingerprint(&read(Path::new(host))?),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut command = vec!["cargo xtask".to_owned()];
    command.extend(std::env::args().skip(1));
    Ok(Manifest {
        format: bundle::FORMAT.into(),
        format_version: bundle::FORMAT_VERSION,
        bench_version: env!("CARGO_PKG_VERSION").into(),
        created: bundle::now_rfc3339(),
        scenario: bundle::ScenarioInfo {
            name: scenario.name.clone(),
            file: run.scenario_file.display().to_string(),
            description: scenario.description.trim().to_owned(),
        },
        run: bundle::RunInfo {
            command,
            overrides: run.overrides.clone(),
            append: run.append.clone(),
            dyndbg: run.config.dyndbg.iter().map(|q| q.text.clone()).collect(),
            trace: scenario.trace.as_ref().map(|request| request.flag_text()),
            includes,
        },
        machine: bundle::MachineInfo {
            cpus: scenario.machine.cpus(),
            topology: scenario
                .machine
                .topology
                .shares_packages()
                .then(|| format!("{}x{}", scenario.machine.topology.packages, scenario.machine.topology.cores)),
            memory_mib: scenario.machine.memory_mib,
            clock: scenario.machine.clock.to_string(),
            injector: scenario.injector.to_string(),
            accel: run.decision.accel.to_string(),
            accel_reason: run.decision.reason.clone(),
        },
        outcome: bundle::OutcomeInfo {
            completed: failure.is_none(),
            exit_code: failure.map_or(0, |f| f.exit_code()),
            failed_step: execution.failed_step(),
            message: failure.map(|f| f.report()),
            steps: snapshot_steps,
            kmessages: totals.kmessages,
            uevents: totals.uevents,
            timing_flags,
            host_elapsed_ms: u64::try_from(execution.elapsed.as_millis()).unwrap_or(u64::MAX),
        },
        kernel: bundle::KernelInfo {
            release: artifacts.kernel_release.clone(),
            profile: artifacts.profile.clone(),
            tree: artifacts.kernel_tree.display().to_string(),
            user_tree: run.build.kernel_src.is_some(),
            config_fingerprint: bundle::fingerprint(kernel_config),
            command_line: kernel_command_line,
        },
        guest: bundle::GuestInfo {
            agent: bundle::fingerprint(&read(&crate::agent::binary(&project))?),
            initramfs: bundle::fingerprint(&read(&config.guest.initramfs)?),
            modules,
            sources: artifacts.sources.iter().map(|(p, f)| (p.to_owned(), f.to_owned())).collect(),
        },
        qemu: bundle::QemuInfo {
            binary: config.qemu.binary.display().to_string(),
            origin: config.qemu.origin.to_string(),
            version: qemu::version(&config.qemu.binary).unwrap_or_else(|e| format!("unknown ({e})")),
            command_line: qemu_args,
        },
        source: source_info(&project.root),
        host: bundle::HostInfo {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tsc_khz: qemu::host_tsc_khz(),
        },
        members: Vec::new(),
    })
}

fn git(root: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// The checkout's commit and its local changes.
fn source_info(root: &Path) -> bundle::SourceInfo {
    let Some(head) = git(root, &["rev-parse", "HEAD"]) else {
        return bundle::SourceInfo {
            commit: None,
            dirty: Vec::new(),
            note: Some("not a git checkout (or git is missing): no commit to record".into()),
        };
    };
    let status = git(root, &["status", "--porcelain", "--untracked-files=normal"]).unwrap_or_default();
    bundle::SourceInfo {
        commit: Some(String::from_utf8_lossy(&head).trim().to_owned()),
        dirty: String::from_utf8_lossy(&status).lines().map(str::to_owned).collect(),
        note: None,
    }
}

/// `git diff HEAD` of a checkout with local changes, if it is small enough.
fn source_diff(root: &Path, source: &bundle::SourceInfo) -> Option<Vec<u8>> {
    if source.commit.is_none() || source.dirty.is_empty() {
        return None;
    }
    let diff = git(root, &["diff", "HEAD", "--no-color"])?;
    if diff.is_empty() {
        return None;
    }
    if diff.len() > MAX_SOURCE_DIFF {
        eprintln!(
            "warning: the checkout's local changes ({} bytes of diff) are too large for a bundle: only their list \
             (manifest source.dirty) goes in",
            diff.len()
        );
        return None;
    }
    Some(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_directory_is_the_file_name_without_its_suffixes() {
        assert_eq!(top_directory(Path::new("/tmp/oops-3.tar.xz"), "s"), "oops-3");
        assert_eq!(top_directory(Path::new("b.tgz"), "s"), "b");
        assert_eq!(top_directory(Path::new("my bundle"), "s"), "my_bundle");
        assert_eq!(top_directory(Path::new(".tar.xz"), "prochot"), "prochot-bundle");
    }

    #[test]
    fn a_destination_that_cannot_be_written_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let err = Target::prepare(&dir.path().join("no/such/dir/b.tar.xz")).err().unwrap();
        assert!(format!("{err:#}").contains("cannot write there"), "{err:#}");
        let err = Target::prepare(dir.path()).err().unwrap();
        assert!(err.to_string().contains("a directory; name the bundle's file"), "{err}");
        Target::prepare(&dir.path().join("b.tar.xz")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the trial file is gone");
    }
}
