//! Reproducer bundles: one file that says everything about one run of a
//! scenario, for a kernel developer to attach to a mail and for
//! `cargo xtask replay` to run again. docs/bundle.md is the format's contract.
//!
//! A bundle is an xz-compressed tar archive (`tar xJf` opens it) of plain
//! files under one directory: `manifest.json` first (format version, bench
//! version, the run's command line and outcome, the kernel, modules, agent,
//! QEMU, source commit and host it ran with, and the size and fingerprint of
//! every other member), then the scenario as given, the snapshot, the run's
//! `--json --raw` lines (every datagram's bytes), the console log, the
//! kernel's `.config`, and the trace and the local source diff where the run
//! had them. Reading accepts gzip and plain tar as well, so a bundle
//! repacked with standard tools still reads.
//!
//! Reading checks everything before a caller acts on it: the compression
//! stream and the tar structure whole, the format version, each member's
//! size and fingerprint against the manifest, no member missing or unknown.
//! A bundle is read into memory only (bounded); nothing is written anywhere.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kevent_wire::{Datagram, DbusMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{self, Normaliser};
use crate::fingerprint::Fingerprint;
use crate::scenario::{self, Scenario};
use crate::snapshot::{self, Snapshot};
use crate::transcript::{ProgramRun, StepOutcome, StepRecord};

/// What `manifest.json` says it is.
pub const FORMAT: &str = "kevent-bench reproducer bundle";
/// The version of the layout and of every member's format; a reader refuses
/// a bundle with a higher one. Fields added to the manifest do not change it
/// (readers ignore fields they do not know); a field removed or changed
/// does, and so does a line type added to `events.jsonl`, which older
/// readers refuse: version 2 added `trace` lines, version 3 `bus_backlog`.
pub const FORMAT_VERSION: u32 = 3;
/// A bundle is meant for a mail; anything this large is not one.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;
/// Unpacked, every member together.
pub const MAX_UNPACKED_BYTES: u64 = 256 << 20;

/// The members, by name; the manifest lists every other one.
pub mod member {
    /// The manifest: what the run was, what it ran on, every other member.
    pub const MANIFEST: &str = "manifest.json";
    /// The scenario file, byte for byte as given.
    pub const SCENARIO: &str = "scenario.toml";
    /// The run's snapshot (`crate::snapshot`), as pretty JSON.
    pub const SNAPSHOT: &str = "snapshot.json";
    /// `cargo xtask run --json --raw` lines (docs/json.md): every datagram's bytes.
    pub const EVENTS: &str = "events.jsonl";
    /// The guest's serial console.
    pub const CONSOLE: &str = "console.log";
    /// The guest kernel's `.config`.
    pub const KERNEL_CONFIG: &str = "kernel.config";
    /// The guest's trace buffer, where the run traced (`trace.txt` of the run directory).
    pub const TRACE: &str = "trace.txt";
    /// `git diff HEAD` of the guest's sources, where the checkout had local changes.
    pub const SOURCE_DIFF: &str = "source.diff";

    /// Members every bundle has.
    pub const REQUIRED: &[&str] = &[SCENARIO, SNAPSHOT, EVENTS, CONSOLE, KERNEL_CONFIG];
    /// Members a bundle may have.
    pub const OPTIONAL: &[&str] = &[TRACE, SOURCE_DIFF];
}

/// `manifest.json`. Everything a replay compares, and what a person reads
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The kevent-bench version that wrote it.
    pub bench_version: String,
    /// When it was written, UTC, RFC 3339.
    pub created: String,
    /// The scenario.
    pub scenario: ScenarioInfo,
    /// How it was run.
    pub run: RunInfo,
    /// The machine it ran on, as the run resolved it.
    pub machine: MachineInfo,
    /// How the run ended.
    pub outcome: OutcomeInfo,
    /// The guest kernel.
    pub kernel: KernelInfo,
    /// The guest's modules and agent.
    pub guest: GuestInfo,
    /// The QEMU that ran it.
    pub qemu: QemuInfo,
    /// The bench's checkout.
    pub source: SourceInfo,
    /// The host.
    pub host: HostInfo,
    /// Every other member: name, size, fingerprint.
    pub members: Vec<MemberInfo>,
}

/// The scenario a bundle ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    /// Its name (the file's stem).
    pub name: String,
    /// The path it was run from.
    pub file: String,
    /// Its description.
    pub description: String,
}

/// How the run was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The command line, word by word.
    pub command: Vec<String>,
    /// Choices the command line made over the scenario's own.
    pub overrides: Overrides,
    /// Kernel command-line words added to the run (`--append`, `--dyndbg`).
    pub append: Vec<String>,
    /// The `--dyndbg` queries as given: the last words of `append` are
    /// theirs. Absent from bundles written before it was recorded.
    #[serde(default)]
    pub dyndbg: Vec<String>,
    /// The trace events the run enabled (`--trace`), if it traced.
    pub trace: Option<String>,
    /// Files added to the initramfs (`--include`), each with its fingerprint.
    pub includes: Vec<IncludeInfo>,
}

/// `--cpus`, `--topology`, `--memory`, `--clock`, `--injector` as the run was given them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// `--cpus`.
    pub cpus: Option<u32>,
    /// `--topology`, as `PxC`; absent from bundles written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
    /// `--memory`.
    pub memory_mib: Option<u32>,
    /// `--clock`: `real` or `virtual`.
    pub clock: Option<String>,
    /// `--injector`: `device` or `debugfs`.
    pub injector: Option<String>,
}

/// A field of [`Overrides`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideField {
    /// `cpus`.
    Cpus,
    /// `topology`.
    Topology,
    /// `memory_mib`.
    MemoryMib,
    /// `clock`.
    Clock,
    /// `injector`.
    Injector,
}

impl OverrideField {
    /// Every field, in [`Overrides`]' order.
    #[cfg(test)]
    pub const ALL: [OverrideField; 5] = [
        OverrideField::Cpus,
        OverrideField::Topology,
        OverrideField::MemoryMib,
        OverrideField::Clock,
        OverrideField::Injector,
    ];

    /// Its name in the manifest's `overrides`.
    pub fn name(self) -> &'static str {
        match self {
            OverrideField::Cpus => "cpus",
            OverrideField::Topology => "topology",
            OverrideField::MemoryMib => "memory_mib",
            OverrideField::Clock => "clock",
            OverrideField::Injector => "injector",
        }
    }
}

/// An override applied: what it set, and what the scenario had said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The field it came from.
    pub field: OverrideField,
    /// What it set, as the run says it (`4 CPUs`, `2 packages × 2 cores`,
    /// `512 MiB`, `virtual clock`, `debugfs`).
    pub now: String,
    /// What the scenario itself said, the same way.
    pub scenario_said: String,
}

/// An override that cannot apply to the scenario: its field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideError {
    /// The field it came from.
    pub field: OverrideField,
    /// Its value and why it cannot apply.
    pub why: String,
}

impl Overrides {
    /// Applies every override to `scenario`, in the order of the fields:
    /// the one home of what an override means, for `run`'s flags and a
    /// bundle's record of them alike. The injector is not checked against
    /// the scenario's steps here (`Scenario::check_injector`, once all are in).
    pub fn apply(&self, scenario: &mut Scenario) -> Result<Vec<Applied>, OverrideError> {
        let mut applied = Vec::new();
        let said = scenario.machine;
        if let Some(cpus) = self.cpus {
            scenario
                .set_cpus(cpus)
                .map_err(|why| OverrideError { field: OverrideField::Cpus, why: format!("{cpus}: {why}") })?;
            applied.push(Applied {
                field: OverrideField::Cpus,
                now: format!("{cpus} CPUs"),
                scenario_said: said.topology.to_string(),
            });
        }
        if let Some(text) = &self.topology {
            let error = |why: String| OverrideError { field: OverrideField::Topology, why: format!("{text}: {why}") };
            let topology = crate::Topology::parse(text).map_err(error)?;
            scenario.set_topology(topology).map_err(error)?;
            applied.push(Applied {
                field: OverrideField::Topology,
                now: topology.to_string(),
                scenario_said: said.topology.to_string(),
            });
        }
        if let Some(memory) = self.memory_mib {
            scenario
                .set_memory_mib(memory)
                .map_err(|why| OverrideError { field: OverrideField::MemoryMib, why: format!("{memory}: {why}") })?;
            applied.push(Applied {
                field: OverrideField::MemoryMib,
                now: format!("{memory} MiB"),
                scenario_said: format!("{} MiB", said.memory_mib),
            });
        }
        if let Some(clock) = &self.clock {
            scenario.machine.clock = crate::Clock::from_name(clock).ok_or_else(|| OverrideError {
                field: OverrideField::Clock,
                why: format!("{clock:?} is no clock (real, virtual)"),
            })?;
            applied.push(Applied {
                field: OverrideField::Clock,
                now: format!("{} clock", scenario.machine.clock),
                scenario_said: format!("{} clock", said.clock),
            });
        }
        if let Some(injector) = &self.injector {
            let was = scenario.injector;
            scenario.injector = crate::inject::Injector::from_name(injector).ok_or_else(|| OverrideError {
                field: OverrideField::Injector,
                why: format!("{injector:?} is no injector (device, debugfs)"),
            })?;
            applied.push(Applied {
                field: OverrideField::Injector,
                now: scenario.injector.to_string(),
                scenario_said: was.to_string(),
            });
        }
        Ok(applied)
    }
}

/// One `--include HOST[:GUEST]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncludeInfo {
    /// The argument as given.
    pub argument: String,
    /// The host file's fingerprint when the run read it.
    pub fingerprint: String,
}

/// The guest machine as it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Virtual CPUs.
    pub cpus: u32,
    /// `PxC` where packages share cores; absent for a socket per CPU, and
    /// from bundles written before packages could share cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// `real` or `virtual`.
    pub clock: String,
    /// `device` or `debugfs`.
    pub injector: String,
    /// `tcg` or `kvm`.
    pub accel: String,
    /// Why that accelerator.
    pub accel_reason: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeInfo {
    /// Every step ran and the guest shut down cleanly.
    pub completed: bool,
    /// The bench's exit code for the run (README "Exit codes").
    pub exit_code: i32,
    /// The 1-based step that failed, if a step did.
    pub failed_step: Option<usize>,
    /// The failure, as the bench reported it.
    pub message: Option<String>,
    /// Steps completed.
    pub steps: usize,
    /// kmessages over the completed steps.
    pub kmessages: usize,
    /// uevents over the completed steps.
    pub uevents: usize,
    /// Rate-limit decisions the run flagged as close to the window's edge.
    pub timing_flags: Vec<String>,
    /// Host wall time of the run, ms.
    pub host_elapsed_ms: u64,
}

/// The guest kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Its release (`uname -r`).
    pub release: String,
    /// The bench's kernel profile (`default`, `debug`).
    pub profile: String,
    /// The source tree it was built from.
    pub tree: String,
    /// Whether that tree was the user's (`--kernel-src`) rather than Debian's linux-source.
    pub user_tree: bool,
    /// The fingerprint of its `.config` (the `kernel.config` member).
    pub config_fingerprint: String,
    /// The kernel command line the guest booted with.
    pub command_line: String,
}

/// The guest's user space and modules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// Fingerprint of the agent binary (`/init`).
    pub agent: String,
    /// Fingerprint of the initramfs the guest booted (agent, modules, module list).
    pub initramfs: String,
    /// Fingerprint of each module's `.ko`, by module file name.
    pub modules: BTreeMap<String, String>,
    /// Every source the guest was built from, with its fingerprint (`crate::sources`).
    pub sources: BTreeMap<String, String>,
}

/// The QEMU that ran the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuInfo {
    /// Its binary.
    pub binary: String,
    /// Where it came from (variable, PATH, private).
    pub origin: String,
    /// The first line of `-version`.
    pub version: String,
    /// Its arguments, the run's private socket directory written `$SOCKETS`.
    pub command_line: Vec<String>,
}

/// The bench's own checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `git rev-parse HEAD`, if the checkout is a git one.
    pub commit: Option<String>,
    /// `git status --porcelain` lines: local changes, if any.
    pub dirty: Vec<String>,
    /// Why there is no commit, or what was left out.
    pub note: Option<String>,
}

/// The host the run was on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `uname -r` of the host.
    pub kernel: String,
    /// Processors available to the bench.
    pub cpus: usize,
    /// The host's TSC rate, which a TCG guest on the real clock runs at.
    pub tsc_khz: Option<u64>,
}

/// One member of the archive, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its name, under the bundle's directory.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its [`Fingerprint`].
    pub fingerprint: String,
}

/// Why a bundle could not be read or written. Each names the file, and the
/// member and place where there is one.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file itself could not be read.
    #[error("{}: cannot read the bundle", path.display())]
    Read {
        /// The bundle.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// Not a bundle at all.
    #[error("{}: not a kevent-bench bundle: {why}", path.display())]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
    /// The file ends early or its bytes are damaged.
    #[error("{}: the bundle is truncated or corrupt: {what}", path.display())]
    Corrupt {
        /// The bundle.
        path: PathBuf,
        /// What was wrong, and where.
        what: String,
    },
    /// Written by a bench that knows a format this one does not.
    #[error(
        "{}: bundle format version {found} is newer than this kevent-bench reads (up to {FORMAT_VERSION}); it was \
         written by kevent-bench {writer}: update this checkout to replay it",
        path.display()
    )]
    Newer {
        /// The bundle.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// The bench version that wrote it.
        writer: String,
    },
    /// A member's contents are not what the format says.
    #[error("{}: {member}: {why}", path.display())]
    Member {
        /// The bundle.
        path: PathBuf,
        /// The member.
        member: String,
        /// What is wrong, and where in it.
        why: String,
    },
    /// The bundle could not be written.
    #[error("write the bundle {}", path.display())]
    Write {
        /// Where it was going.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
}

/// The fingerprint of `bytes`, as the manifest records it.
pub fn fingerprint(bytes: &[u8]) -> String {
    Fingerprint::new().add(bytes).hex()
}

/// The bundle's bytes: `manifest` (its member list filled in here) and the
/// members, in the order given, under the directory `top`. xz at level 9:
/// a bundle is written once and mailed.
pub fn to_bytes(top: &str, manifest: &mut Manifest, members: &[(&str, Vec<u8>)]) -> io::Result<Vec<u8>> {
    manifest.members = members
        .iter()
        .map(|(name, bytes)| MemberInfo {
            name: (*name).to_owned(),
            bytes: bytes.len() as u64,
            fingerprint: fingerprint(bytes),
        })
        .collect();
    let mut manifest_bytes = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    manifest_bytes.push(b'\n');
    let mtime = created_seconds(&manifest.created).unwrap_or(0);
    let mut archive = tar::Builder::new(xz2::write::XzEncoder::new(Vec::new(), 9));
    archive.mode(tar::HeaderMode::Deterministic);
    let directory = {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(mtime);
        header.set_size(0);
        header
    };
    archive.append_data(&mut directory.clone(), format!("{top}/"), io::empty())?;
    for (name, bytes) in
        std::iter::once((member::MANIFEST, &manifest_bytes)).chain(members.iter().map(|(n, b)| (*n, b)))
    {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_size(bytes.len() as u64);
        archive.append_data(&mut header, format!("{top}/{name}"), bytes.as_slice())?;
    }
    archive.into_inner()?.finish()
}

/// Writes `bytes` to `path` through a temporary file beside it: the path
/// holds the whole bundle or what it held before, never a part.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let write = || -> io::Result<()> {
        let mut file = temporary_beside(path)?;
        file.write_all(bytes)?;
        // A file to mail and share: readable as any other output (the
        // temporary file was private).
        use std::os::unix::fs::PermissionsExt;
        file.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|source| BundleError::Write { path: path.to_owned(), source })
}

/// A temporary file in `path`'s directory, removed when dropped: creating
/// one first proves the bundle can be written there, before a run starts.
pub fn temporary_beside(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::other("the path names no file"))?;
    tempfile::Builder::new().prefix(&format!(".{}.", name.to_string_lossy())).suffix(".partial").tempfile_in(dir)
}

/// A bundle read back and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    members: BTreeMap<String, Vec<u8>>,
}

/// Only the fields that say which format a manifest is in: read first, so a
/// newer format is refused as such rather than as a manifest that does not parse.
#[derive(Deserialize)]
struct FormatHeader {
    format: Option<String>,
    format_version: Option<u32>,
    bench_version: Option<String>,
}

impl Bundle {
    /// Reads and checks the bundle at `path`.
    pub fn read(path: &Path) -> Result<Bundle, BundleError> {
        let read = || -> io::Result<Vec<u8>> {
            let file = std::fs::File::open(path)?;
            let mut bytes = Vec::new();
            file.take(MAX_BUNDLE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        let bytes = read().map_err(|source| BundleError::Read { path: path.to_owned(), source })?;
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::NotABundle {
                path: path.to_owned(),
                why: format!("larger than {} MiB, which no bundle is", MAX_BUNDLE_BYTES >> 20),
            });
        }
        Bundle::from_bytes(path, &bytes)
    }

    /// Checks the bundle in `bytes`, the contents of `path`.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Bundle, BundleError> {
        let corrupt = |what: String| BundleError::Corrupt { path: path.to_owned(), what };
        let tar_bytes = unpack(bytes).map_err(|e| match e {
            Unpack::Unknown(why) => BundleError::NotABundle { path: path.to_owned(), why },
            Unpack::Broken(what) => corrupt(what),
        })?;
        let members = tar_members(&tar_bytes).map_err(|e| match e {
            Unpack::Unknown(why) => BundleError::NotABundle { path: path.to_owned(), why },
            Unpack::Broken(what) => corrupt(what),
        })?;
        let member_error =
            |member: &str, why: String| BundleError::Member { path: path.to_owned(), member: member.to_owned(), why };
        let manifest_bytes = members.get(member::MANIFEST).ok_or_else(|| BundleError::NotABundle {
            path: path.to_owned(),
            why: format!("a tar archive without {}", member::MANIFEST),
        })?;
        let header: FormatHeader = serde_json::from_slice(manifest_bytes)
            .map_err(|e| member_error(member::MANIFEST, json_error(&e, "not a JSON object")))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(BundleError::NotABundle {
                path: path.to_owned(),
                why: format!(
                    "{} says format {:?}, not {FORMAT:?}",
                    member::MANIFEST,
                    header.format.unwrap_or_default()
                ),
            });
        }
        let found = header.format_version.ok_or_else(|| member_error(member::MANIFEST, "no format_version".into()))?;
        if found > FORMAT_VERSION {
            return Err(BundleError::Newer {
                path: path.to_owned(),
                found,
                writer: header.bench_version.unwrap_or_else(|| "(unknown)".into()),
            });
        }
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| member_error(member::MANIFEST, json_error(&e, "does not match the format")))?;
        let mut listed = BTreeMap::new();
        for info in &manifest.members {
            let Some(bytes) = members.get(&info.name) else {
                return Err(corrupt(format!(
                    "{} lists {}, which the archive does not have",
                    member::MANIFEST,
                    info.name
                )));
            };
            if bytes.len() as u64 != info.bytes || fingerprint(bytes) != info.fingerprint {
                return Err(corrupt(format!(
                    "{}: {} bytes with fingerprint {}, where {} says {} bytes with fingerprint {}",
                    info.name,
                    bytes.len(),
                    fingerprint(bytes),
                    member::MANIFEST,
                    info.bytes,
                    info.fingerprint
                )));
            }
            if listed.insert(info.name.clone(), bytes.clone()).is_some() {
                return Err(member_error(member::MANIFEST, format!("lists {} twice", info.name)));
            }
        }
        for name in members.keys() {
            if name != member::MANIFEST && !listed.contains_key(name) {
                return Err(corrupt(format!("{name} is in the archive but not in {}", member::MANIFEST)));
            }
        }
        for name in listed.keys() {
            if !member::REQUIRED.contains(&name.as_str()) && !member::OPTIONAL.contains(&name.as_str()) {
                return Err(member_error(name, "not a member of this bundle format".into()));
            }
        }
        for name in member::REQUIRED {
            if !listed.contains_key(*name) {
                return Err(corrupt(format!("no {name}, which every bundle has")));
            }
        }
        Ok(Bundle { path: path.to_owned(), manifest, members: listed })
    }

    /// A member's bytes, if the bundle has it.
    pub fn member(&self, name: &str) -> Option<&[u8]> {
        self.members.get(name).map(Vec::as_slice)
    }

    /// A member as text.
    pub fn text(&self, name: &str) -> Result<&str, BundleError> {
        let bytes = self.member(name).ok_or_else(|| self.member_error(name, "missing".into()))?;
        std::str::from_utf8(bytes)
            .map_err(|e| self.member_error(name, format!("byte {} is not UTF-8", e.valid_up_to())))
    }

    fn member_error(&self, member: &str, why: String) -> BundleError {
        BundleError::Member { path: self.path.clone(), member: member.to_owned(), why }
    }

    /// The run's `--dyndbg` queries, and the `--append` words before
    /// theirs in `run.append`: a replay gives the queries again, checked
    /// against the guest's call sites as `run --dyndbg` does.
    pub fn dyndbg(&self) -> Result<(Vec<crate::dyndbg::Query>, &[String]), BundleError> {
        let invalid = |why: String| self.member_error(member::MANIFEST, why);
        let run = &self.manifest.run;
        let queries = run
            .dyndbg
            .iter()
            .map(|text| crate::dyndbg::Query::parse(text).map_err(|e| invalid(format!("run.dyndbg: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let appended = crate::dyndbg::split_appended(&run.append, &queries).ok_or_else(|| {
            invalid(format!(
                "run.append {:?} does not end with the kernel words of run.dyndbg {:?}",
                run.append, run.dyndbg
            ))
        })?;
        Ok((queries, appended))
    }

    /// The scenario as the bundle's run ran it: its text, parsed as
    /// `<bundle>/<name>.toml` (so errors point into the bundle), with the
    /// run's command-line overrides applied.
    pub fn scenario(&self) -> Result<Scenario, BundleError> {
        let text = self.text(member::SCENARIO)?;
        let name = &self.manifest.scenario.name;
        let invalid = |why: String| self.member_error(member::SCENARIO, why);
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(self.member_error(member::MANIFEST, format!("scenario name {name:?} is not a file stem")));
        }
        let path = self.path.join(format!("{name}.toml"));
        let mut scenario = scenario::parse(&path, text).map_err(|e| invalid(e.to_string()))?;
        self.manifest
            .run
            .overrides
            .apply(&mut scenario)
            .map_err(|e| self.member_error(member::MANIFEST, format!("overrides.{}: {}", e.field.name(), e.why)))?;
        scenario.check_injector().map_err(|e| invalid(e.to_string()))?;
        Ok(scenario)
    }

    /// The run recorded in `events.jsonl`, step by step, checked to end as
    /// the manifest's `outcome` says the run ended.
    pub fn recorded(&self) -> Result<Recorded, BundleError> {
        let recorded =
            Recorded::parse(self.text(member::EVENTS)?).map_err(|why| self.member_error(member::EVENTS, why))?;
        // Recorded::parse has refused a file with neither a summary nor a
        // failure line: without a failure, the run completed.
        let outcome = &self.manifest.outcome;
        let agrees = match &recorded.failure {
            None => outcome.completed,
            Some((step, _, code)) => !outcome.completed && *code == outcome.exit_code && *step == outcome.failed_step,
        };
        if !agrees || recorded.steps.len() != outcome.steps {
            let ended = match &recorded.failure {
                None => "a summary line".to_owned(),
                Some((step, _, code)) => format!(
                    "a failure line (step {}, exit code {code})",
                    step.map_or_else(|| "none".to_owned(), |s| s.to_string())
                ),
            };
            return Err(self.member_error(
                member::EVENTS,
                format!(
                    "it ends with {ended} after {} step(s), and manifest.json's outcome says completed {}, exit code \
                     {}, failed step {}, {} step(s)",
                    recorded.steps.len(),
                    outcome.completed,
                    outcome.exit_code,
                    outcome.failed_step.map_or_else(|| "none".to_owned(), |s| s.to_string()),
                    outcome.steps
                ),
            ));
        }
        Ok(recorded)
    }
}

fn json_error(e: &serde_json::Error, what: &str) -> String {
    format!("line {} column {}: {what}: {e}", e.line(), e.column())
}

enum Unpack {
    /// Not a format a bundle is in.
    Unknown(String),
    /// The format, damaged or cut short.
    Broken(String),
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b";

/// The tar archive inside: xz, gzip, or plain.
fn unpack(bytes: &[u8]) -> Result<Vec<u8>, Unpack> {
    let (name, mut reader): (&str, Box<dyn Read + '_>) = if bytes.starts_with(XZ_MAGIC) {
        ("xz", Box::new(xz2::read::XzDecoder::new(bytes)))
    } else if bytes.starts_with(GZIP_MAGIC) {
        ("gzip", Box::new(flate2::read::GzDecoder::new(bytes)))
    } else if is_tar(bytes) {
        return Ok(bytes.to_vec());
    } else if bytes.is_empty() {
        return Err(Unpack::Unknown("the file is empty".into()));
    } else if XZ_MAGIC.starts_with(bytes) {
        return Err(Unpack::Broken(format!("the file ends after {} bytes of the xz magic", bytes.len())));
    } else {
        return Err(Unpack::Unknown("neither xz, gzip nor tar".into()));
    };
    let mut out = Vec::new();
    match (&mut reader).take(MAX_UNPACKED_BYTES + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > MAX_UNPACKED_BYTES => {
            Err(Unpack::Unknown(format!("unpacks to more than {} MiB, which no bundle does", MAX_UNPACKED_BYTES >> 20)))
        }
        Ok(_) => {
            // xz2 reports a stream cut short as a clean end: the decoder
            // must have seen the stream's footer.
            if name == "xz" && !xz_complete(bytes) {
                return Err(Unpack::Broken(format!(
                    "the xz stream of {} bytes ends before its footer (after {} unpacked bytes)",
                    bytes.len(),
                    out.len()
                )));
            }
            Ok(out)
        }
        Err(e) => Err(Unpack::Broken(format!(
            "the {name} stream of {} bytes breaks off after {} unpacked bytes: {e}",
            bytes.len(),
            out.len()
        ))),
    }
}

/// An xz file ends with a stream footer: its magic `YZ` in the last two
/// bytes (then only stream padding, zeros in multiples of four).
fn xz_complete(bytes: &[u8]) -> bool {
    let mut end = bytes.len();
    while end >= 4 && bytes[end - 4..end] == [0; 4] {
        end -= 4;
    }
    end >= 12 && &bytes[end - 2..end] == b"YZ"
}

fn is_tar(bytes: &[u8]) -> bool {
    bytes.len() >= 512 && &bytes[257..262] == b"ustar"
}

/// Every regular file of the archive by its name under the one top
/// directory; anything else in it is an error.
fn tar_members(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, Unpack> {
    if !is_tar(bytes) {
        return Err(Unpack::Unknown("the compressed data is not a tar archive".into()));
    }
    let mut archive = tar::Archive::new(bytes);
    let mut members = BTreeMap::new();
    let mut top: Option<String> = None;
    let broken = |after: &Option<String>, e: io::Error| {
        Unpack::Broken(match after {
            Some(name) => format!("the tar archive breaks off after {name}: {e}"),
            None => format!("the tar archive breaks off at its start: {e}"),
        })
    };
    let mut last: Option<String> = None;
    let entries = archive.entries().map_err(|e| broken(&last, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| broken(&last, e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let (dir, rest) = name.split_once('/').unwrap_or((name.as_str(), ""));
        match &top {
            None => top = Some(dir.to_owned()),
            Some(t) if t != dir => {
                return Err(Unpack::Unknown(format!("{name} is outside the bundle's directory {t}/")));
            }
            Some(_) => {}
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory if rest.is_empty() => {}
            tar::EntryType::Regular if !rest.is_empty() && !rest.contains('/') => {
                let size = entry.header().size().map_err(|e| broken(&last, e))?;
                let mut data = Vec::with_capacity(size.min(MAX_UNPACKED_BYTES) as usize);
                entry.read_to_end(&mut data).map_err(|e| broken(&last, e))?;
                if data.len() as u64 != size {
                    return Err(Unpack::Broken(format!("{name}: {} of its {size} bytes", data.len())));
                }
                if members.insert(rest.to_owned(), data).is_some() {
                    return Err(Unpack::Broken(format!("{name} is in the archive twice")));
                }
            }
            other => return Err(Unpack::Unknown(format!("{name}: a {other:?} entry, not a plain file of the bundle"))),
        }
        last = Some(name);
    }
    if members.is_empty() {
        return Err(Unpack::Broken("the tar archive has no files".into()));
    }
    Ok(members)
}

/// A run as `events.jsonl` recorded it.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The steps the run completed, with their datagrams.
    pub steps: Vec<StepRecord>,
    /// Programs run in the background.
    pub background: Vec<ProgramRun>,
    /// The `failure` line, if the run failed: step, message, exit code.
    pub failure: Option<(Option<usize>, String, i32)>,
    /// Whether the run ended with its `summary` line.
    pub completed: bool,
}

impl Recorded {
    /// Reads `run --json --raw` lines; Err names the line and what is wrong.
    pub fn parse(text: &str) -> Result<Recorded, String> {
        let mut recorded = Recorded::default();
        let mut pending: BTreeMap<usize, Vec<Datagram>> = BTreeMap::new();
        let mut pending_dbus: BTreeMap<usize, Vec<DbusMessage>> = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let at = |why: String| format!("line {}: {why}", number + 1);
            let value: Value = serde_json::from_str(line).map_err(|e| at(format!("column {}: {e}", e.column())))?;
            let field = |name: &str| value.get(name).ok_or_else(|| at(format!("no {name:?}")));
            let text = |name: &str| {
                field(name)?.as_str().map(str::to_owned).ok_or_else(|| at(format!("{name:?} is not text")))
            };
            let number_of = |name: &str| field(name)?.as_u64().ok_or_else(|| at(format!("{name:?} is not a number")));
            let int_of = |name: &str| {
                field(name)?
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| at(format!("{name:?} is not an integer")))
            };
            if recorded.completed || recorded.failure.is_some() {
                return Err(at("a line after the run's last".into()));
            }
            match text("type")?.as_str() {
                // Nothing in them is replayed: a traced replay traces again.
                "start" | "bus_backlog" | "timing_flag" | "trace" => {}
                "event" => {
                    let step = number_of("step")? as usize;
                    let bytes = events::unescape(&text("bytes")?).map_err(|e| at(format!("\"bytes\": {e}")))?;
                    let datagram = Datagram {
                        protocol: number_of("protocol")? as u32,
                        groups: number_of("groups")? as u32,
                        portid: number_of("portid")? as u32,
                        monotonic_ns: number_of("guest_monotonic_ns")?,
                        bytes,
                    };
                    pending.entry(step).or_default().push(datagram);
                }
                // A message of the guest's bus (docs/dbus.md), as marshalled.
                "dbus" => {
                    let step = number_of("step")? as usize;
                    let bytes = events::unescape(&text("bytes")?).map_err(|e| at(format!("\"bytes\": {e}")))?;
                    let message = DbusMessage { monotonic_ns: number_of("guest_monotonic_ns")?, bytes };
                    pending_dbus.entry(step).or_default().push(message);
                }
                "step" => {
                    let step = number_of("step")? as usize;
                    if step != recorded.steps.len() + 1 {
                        return Err(at(format!("step {step} where step {} was next", recorded.steps.len() + 1)));
                    }
                    let mut record = StepRecord::new(step - 1, text("label")?, number_of("repeat")? as u32);
                    record.failures = number_of("failures")? as u32;
                    record.elapsed = Duration::from_nanos(number_of("host_elapsed_ns")?);
                    record.outcome = outcome(field("result")?).map_err(|why| at(format!("\"result\": {why}")))?;
                    record.datagrams = pending.remove(&step).unwrap_or_default();
                    if record.datagrams.len() as u64 != number_of("datagrams")? {
                        return Err(at(format!("step {step} says {} datagrams", number_of("datagrams")?)));
                    }
                    record.dbus = pending_dbus.remove(&step).unwrap_or_default();
                    // Runs without the D-Bus side, and bundles older than it, say nothing.
                    let said = value.get("dbus_messages").and_then(Value::as_u64).unwrap_or(0);
                    if record.dbus.len() as u64 != said {
                        return Err(at(format!("step {step} says {said} D-Bus messages")));
                    }
                    recorded.steps.push(record);
                }
                "background" => recorded.background.push(program(&value).map_err(at)?),
                "summary" => recorded.completed = true,
                "failure" => {
                    let step = match field("step")? {
                        Value::Null => None,
                        v => Some(v.as_u64().ok_or_else(|| at("\"step\" is not a number".into()))? as usize),
                    };
                    recorded.failure = Some((step, text("message")?, int_of("exit_code")?));
                }
                other => return Err(at(format!("unknown type {other:?}"))),
            }
        }
        if !recorded.completed && recorded.failure.is_none() {
            return Err("ends with neither a summary nor a failure line: cut short".into());
        }
        // Datagrams of a step the run did not finish (it failed there) are
        // kept in the file but belong to no completed step.
        if let Some((&step, _)) = pending.iter().find(|(&step, _)| step <= recorded.steps.len()) {
            return Err(format!("events of step {step} come after that step's line"));
        }
        if let Some((&step, _)) = pending_dbus.iter().find(|(&step, _)| step <= recorded.steps.len()) {
            return Err(format!("D-Bus messages of step {step} come after that step's line"));
        }
        Ok(recorded)
    }
}

fn outcome(result: &Value) -> Result<StepOutcome, String> {
    let kind = result.get("kind").and_then(Value::as_str).ok_or("no \"kind\"")?;
    let text = |name: &str| result.get(name).and_then(Value::as_str).map(str::to_owned).ok_or(format!("no {name:?}"));
    Ok(match kind {
        "done" => StepOutcome::Done,
        "read" => StepOutcome::Read(text("text")?.into_bytes()),
        "failed" => StepOutcome::Failed {
            errno: result
                .get("errno")
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or("no \"errno\"")?,
            message: text("message")?,
        },
        "exec" => StepOutcome::Ran(program(result)?),
        other => return Err(format!("unknown kind {other:?}")),
    })
}

fn program(value: &Value) -> Result<ProgramRun, String> {
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned).ok_or(format!("no {name:?}"));
    let int = |name: &str| {
        value.get(name).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok()).ok_or(format!("no {name:?}"))
    };
    Ok(ProgramRun {
        program: text("program")?,
        exit_code: int("exit_code")?,
        signal: int("signal")?,
        stdout: text("stdout")?.into_bytes(),
        stderr: text("stderr")?.into_bytes(),
    })
}

/// The snapshot as a bundle stores it and a replay compares it.
pub fn snapshot_text(snapshot: &Snapshot) -> String {
    let mut text = serde_json::to_string_pretty(snapshot).expect("a snapshot serialises");
    text.push('\n');
    text
}

/// A whole run, or the part of it that ran, in the terms a replay compares.
#[derive(Debug, Clone)]
pub struct RunView<'a> {
    /// The scenario as run.
    pub scenario: &'a Scenario,
    /// The steps completed.
    pub steps: &'a [StepRecord],
    /// Background programs (none unless the run completed).
    pub background: &'a [ProgramRun],
    /// Whether the run completed.
    pub completed: bool,
    /// The exit code the run came to.
    pub exit_code: i32,
    /// The step it failed at, if it did.
    pub failed_step: Option<usize>,
}

impl RunView<'_> {
    /// The snapshot of what ran.
    pub fn snapshot(&self) -> Snapshot {
        snapshot::project(self.scenario, self.steps, self.background)
    }

    fn ending(&self) -> String {
        match (self.completed, self.failed_step) {
            (true, _) => "completed every step".into(),
            (false, Some(step)) => format!("failed at step {step} with exit code {}", self.exit_code),
            (false, None) => format!("failed before its first step with exit code {}", self.exit_code),
        }
    }
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// The snapshots and the endings are the same.
    pub matches: bool,
    /// How each run ended, where that differs: (bundle, this run).
    pub endings: Option<(String, String)>,
    /// A unified diff of the snapshots (bundle, this run), if they differ.
    pub snapshot_diff: Option<String>,
    /// The first event (normalised, each channel in its order) that differs,
    /// where events are compared beyond the snapshot (steps it counts).
    pub first_event_difference: Option<String>,
}

/// Compares a bundle's run with this one's.
pub fn compare(bundled: &RunView, now: &RunView) -> Comparison {
    let (old_text, new_text) = (snapshot_text(&bundled.snapshot()), snapshot_text(&now.snapshot()));
    let snapshot_diff = (old_text != new_text).then(|| unified_diff(&old_text, &new_text, "bundle", "this run"));
    let same_ending = bundled.completed == now.completed
        && bundled.exit_code == now.exit_code
        && bundled.failed_step == now.failed_step;
    let endings = (!same_ending).then(|| (bundled.ending(), now.ending()));
    Comparison {
        matches: snapshot_diff.is_none() && same_ending,
        endings,
        snapshot_diff,
        first_event_difference: first_event_difference(bundled.steps, now.steps),
    }
}

/// A unified diff of two texts, three lines of context.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    similar::TextDiff::from_lines(old, new).unified_diff().context_radius(3).header(old_name, new_name).to_string()
}

/// Each step's events decoded and normalised, kmessages then uevents, as
/// the snapshot orders them but for every step, counted ones included.
fn normalised_events(steps: &[StepRecord]) -> Vec<Vec<events::Event>> {
    let mut normaliser = Normaliser::default();
    steps
        .iter()
        .map(|record| {
            crate::snapshot::channel_order(&record.datagrams)
                .into_iter()
                .map(|d| {
                    let mut event = events::decode(d);
                    normaliser.normalise(&mut event);
                    event
                })
                .collect()
        })
        .collect()
}

fn first_event_difference(old: &[StepRecord], new: &[StepRecord]) -> Option<String> {
    let (old_events, new_events) = (normalised_events(old), normalised_events(new));
    for (index, (a, b)) in old_events.iter().zip(&new_events).enumerate() {
        let step = index + 1;
        if let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) {
            return Some(format!(
                "step {step}, event {} of {}: the bundle has {}; this run has {}",
                at + 1,
                a.len(),
                serde_json::to_string(&a[at]).unwrap_or_default(),
                serde_json::to_string(&b[at]).unwrap_or_default()
            ));
        }
        if a.len() != b.len() {
            return Some(format!("step {step}: the bundle has {} events, this run {}", a.len(), b.len()));
        }
    }
    None
}

/// What differs between the environment a bundle's run had and this one's,
/// one line each; empty if nothing a replay can see does.
pub fn environment_differences(bundled: &Manifest, now: &Manifest, configs: (&str, &str)) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |what: &str, old: &str, new: &str| {
        if old != new {
            out.push(format!("{what}: {old} in the bundle, {new} here"));
        }
    };
    differ("kernel release", &bundled.kernel.release, &now.kernel.release);
    differ("kernel profile", &bundled.kernel.profile, &now.kernel.profile);
    // The TSC rate is the host's, measured: compared below, within its error.
    let without_tsc =
        |line: &str| line.split_whitespace().filter(|w| !w.starts_with("tsc_early_khz=")).collect::<Vec<_>>().join(" ");
    differ("kernel command line", &without_tsc(&bundled.kernel.command_line), &without_tsc(&now.kernel.command_line));
    differ("QEMU", &bundled.qemu.version, &now.qemu.version);
    differ("accelerator", &bundled.machine.accel, &now.machine.accel);
    differ("guest clock", &bundled.machine.clock, &now.machine.clock);
    differ("injector", &bundled.machine.injector, &now.machine.injector);
    let tsc = |h: &HostInfo| h.tsc_khz.map_or("unknown".to_owned(), |khz| format!("{khz} kHz"));
    let same_rate = match (bundled.host.tsc_khz, now.host.tsc_khz) {
        // Measured over 20 ms: a few kHz either way is the same clock.
        (Some(a), Some(b)) => a.abs_diff(b) * 1000 <= a.max(b),
        (a, b) => a == b,
    };
    if bundled.machine.clock == "real" && bundled.machine.accel == "tcg" && !same_rate {
        differ("host TSC (the guest's clock rate)", &tsc(&bundled.host), &tsc(&now.host));
    }
    differ("host kernel", &bundled.host.kernel, &now.host.kernel);
    let config_changes = config_differences(configs.0, configs.1);
    if !config_changes.is_empty() {
        out.push(format!("kernel .config: {}", list(&config_changes)));
    }
    let mut old_sources = crate::sources::Sources::default();
    bundled.guest.sources.iter().for_each(|(p, f)| old_sources.insert(p.clone(), f.clone()));
    let mut new_sources = crate::sources::Sources::default();
    now.guest.sources.iter().for_each(|(p, f)| new_sources.insert(p.clone(), f.clone()));
    let changes = old_sources.changes(&new_sources);
    // Every change is named: a source no group claims is listed as such,
    // never dropped.
    let mut unclaimed = changes.clone();
    for (what, prefixes) in [
        ("module sources", &["kmod/"][..]),
        ("agent sources", &["initramfs/", "wire/", "Cargo.toml", "Cargo.lock"][..]),
        ("kdbusd sources", &["kdbusd/"][..]),
        ("kernel-config fragments", &["kernel-config/"][..]),
    ] {
        let (these, rest): (Vec<String>, Vec<String>) =
            unclaimed.into_iter().partition(|c| prefixes.iter().any(|p| c.starts_with(p)));
        unclaimed = rest;
        if !these.is_empty() {
            out.push(format!("{what}: {}", list(&these)));
        }
    }
    if !unclaimed.is_empty() {
        out.push(format!("other guest sources: {}", list(&unclaimed)));
    }
    let binaries_differ = bundled.guest.modules != now.guest.modules || bundled.guest.agent != now.guest.agent;
    if binaries_differ && changes.is_empty() {
        out.push(
            "module or agent binaries: built from the same sources, but not byte-identical (another compiler, \
             another build path)"
                .into(),
        );
    }
    match (&bundled.source.commit, &now.source.commit) {
        (Some(a), Some(b)) if a != b => out.push(format!("bench commit: {a} in the bundle, {b} here")),
        _ => {}
    }
    out
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = items[..items.len().min(SHOWN)].join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// Options whose value differs between two `.config` texts, as
/// `CONFIG_X: old -> new` (`n` for `is not set` or absent).
pub fn config_differences(old: &str, new: &str) -> Vec<String> {
    let options = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| {
                if let Some(rest) = line.strip_prefix("# ") {
                    let name = rest.strip_suffix(" is not set")?;
                    return name.starts_with("CONFIG_").then(|| (name.to_owned(), "n".to_owned()));
                }
                let (name, value) = line.split_once('=')?;
                name.starts_with("CONFIG_").then(|| (name.to_owned(), value.to_owned()))
            })
            .collect()
    };
    let (a, b) = (options(old), options(new));
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let value = |map: &BTreeMap<String, String>, name: &str| map.get(name).cloned().unwrap_or_else(|| "n".into());
    names
        .into_iter()
        .filter(|name| value(&a, name) != value(&b, name))
        .map(|name| format!("{name}: {} -> {}", value(&a, name), value(&b, name)))
        .collect()
}

/// Now, UTC, RFC 3339 to the second.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The inverse of [`rfc3339`], for the archive's member times.
fn created_seconds(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, m, s) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

#[cfg(test)]
mod tests;
