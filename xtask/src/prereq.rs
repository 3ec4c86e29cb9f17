//! Prerequisites: found, installed with apt-get (as root on Debian/Ubuntu)
//! when that takes nothing away, or named with the exact command that
//! installs them. apt-get never removes or downgrades a package here: an
//! install that would is refused and printed instead. QEMU has one more
//! way, for hosts where installing it would remove something: Debian's
//! packages extracted into the cache (`private_qemu`).

use std::fmt;
use std::path::{Path, PathBuf};

use kevent_bench::process::which;
use kevent_bench::qemu::{self, QemuNotFound};

use crate::{apt, private_qemu};

/// Where the Debian kernel source tarball lands.
pub const DEBIAN_SOURCE_DIR: &str = "/usr/src";
pub const DEBIAN_SOURCE_PACKAGE: &str = "linux-source-6.12";
/// The Debian package the bench's QEMU comes from.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// One thing the build or a run needs, and the Debian package that provides it.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub what: String,
    pub package: String,
    probe: Probe,
}

#[derive(Debug, Clone)]
enum Probe {
    Program(PathBuf),
    AnyFile(&'static [&'static str]),
    DebianKernelSource,
    /// [`qemu::resolve`]: the variable, PATH, or the private QEMU.
    Qemu,
    /// The package itself, as dpkg knows it.
    Package,
}

impl Requirement {
    fn program(what: &str, program: impl Into<PathBuf>, package: &str) -> Self {
        Requirement { what: what.into(), package: package.into(), probe: Probe::Program(program.into()) }
    }

    fn file(what: &str, paths: &'static [&'static str], package: &str) -> Self {
        Requirement { what: what.into(), package: package.into(), probe: Probe::AnyFile(paths) }
    }

    pub fn qemu() -> Self {
        Requirement { what: "QEMU (qemu-system-x86_64)".into(), package: QEMU_PACKAGE.into(), probe: Probe::Qemu }
    }

    /// A shared library the private QEMU runs with.
    pub fn library(package: &str) -> Self {
        Requirement {
            what: format!("{package} (a shared library of the private QEMU)"),
            package: package.into(),
            probe: Probe::Package,
        }
    }

    fn is_qemu(&self) -> bool {
        matches!(self.probe, Probe::Qemu)
    }

    fn present(&self) -> bool {
        match &self.probe {
            Probe::Program(p) => which(p).is_some(),
            Probe::AnyFile(paths) => paths.iter().any(|p| Path::new(p).exists()),
            Probe::DebianKernelSource => debian_source_tarball().is_some(),
            Probe::Qemu => qemu::resolve().is_ok(),
            Probe::Package => apt::installed(&[&self.package]).is_ok_and(|i| !i.is_empty()),
        }
    }
}

/// The Debian source tarball, if installed.
pub fn debian_source_tarball() -> Option<PathBuf> {
    let entries = std::fs::read_dir(DEBIAN_SOURCE_DIR).ok()?;
    let mut tarballs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(DEBIAN_SOURCE_PACKAGE) && name.ends_with(".tar.xz")
        })
        .collect();
    tarballs.sort();
    tarballs.pop()
}

/// What building the guest needs (and running it: QEMU).
pub fn for_build(kernel_src: Option<&Path>) -> Vec<Requirement> {
    let mut reqs = vec![
        Requirement::qemu(),
        Requirement::program("gcc", "gcc", "gcc"),
        Requirement::program("make", "make", "make"),
        Requirement::program("flex", "flex", "flex"),
        Requirement::program("bison", "bison", "bison"),
        Requirement::program("bc", "bc", "bc"),
        Requirement::program("perl (kernel build scripts, checkpatch)", "perl", "perl"),
        Requirement::program("xz (kernel source tarball)", "xz", "xz-utils"),
        Requirement::program("gdb (run --gdb, and its test)", "gdb", "gdb"),
        Requirement::file("libelf headers", &["/usr/include/libelf.h", "/usr/include/gelf.h"], "libelf-dev"),
        Requirement::file("libssl headers", &["/usr/include/openssl/ssl.h"], "libssl-dev"),
        // Packed into the D-Bus guest's initramfs from this path
        // (kevent_wire::DBUS_DAEMON_PATH), with its shared libraries.
        Requirement::file("dbus-daemon (the guest's system bus)", &["/usr/bin/dbus-daemon"], "dbus-daemon"),
        // A D-Bus client nobody here wrote, run by the tests on the guest's
        // bus through `--dbus-socket`.
        Requirement::program("dbus-monitor (the tests' client of the guest's bus)", "dbus-monitor", "dbus-bin"),
        Requirement::file(
            "static glibc (the agent is linked with +crt-static)",
            &["/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib64/libc.a", "/usr/lib/libc.a"],
            "libc6-dev",
        ),
    ];
    if kernel_src.is_none() {
        reqs.push(Requirement {
            what: "kernel source (Debian's linux-source-6.12 tarball)".into(),
            package: DEBIAN_SOURCE_PACKAGE.into(),
            probe: Probe::DebianKernelSource,
        });
    }
    reqs
}

/// Prerequisites are missing and were not installed.
#[derive(Debug)]
pub struct Missing {
    pub missing: Vec<Requirement>,
    pub why_not_installed: String,
    /// What the user can run instead, the usual way first.
    pub remedies: Vec<Remedy>,
}

/// One command that provides what is missing, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remedy {
    pub what: String,
    pub command: String,
}

impl Remedy {
    /// apt-get install, with `--no-remove` unless apt would take something
    /// away, which the user then accepts by running it.
    pub fn install(packages: &[&str], no_remove: bool, sudo: bool) -> Remedy {
        let what = if no_remove {
            format!("install {} with", packages.join(" "))
        } else {
            format!("to install {} anyway, accepting that, run", packages.join(" "))
        };
        Remedy { what, command: apt::command(packages, sudo, no_remove) }
    }

    pub fn private_qemu() -> Remedy {
        Remedy {
            what: format!(
                "or, installing nothing system-wide, extract Debian's {QEMU_PACKAGE} 7.2 into the bench's cache with"
            ),
            command: "cargo xtask qemu --private".into(),
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "missing prerequisites:")?;
        for r in &self.missing {
            writeln!(f, "  - {} (Debian package {})", r.what, r.package)?;
        }
        write!(f, "{}", self.why_not_installed)?;
        for remedy in &self.remedies {
            write!(f, "\n{}:\n  {}", remedy.what, remedy.command)?;
        }
        Ok(())
    }
}

impl std::error::Error for Missing {}

impl Missing {
    fn merge(problems: Vec<Missing>) -> Option<Missing> {
        problems.into_iter().reduce(|mut all, next| {
            all.missing.extend(next.missing);
            all.why_not_installed = format!("{}\n{}", all.why_not_installed, next.why_not_installed);
            all.remedies.extend(next.remedies);
            all
        })
    }
}

fn packages(missing: &[Requirement]) -> Vec<&str> {
    let mut packages: Vec<&str> = missing.iter().map(|r| r.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// Checks every requirement; installs the missing ones where it may.
pub fn ensure(requirements: &[Requirement]) -> anyhow::Result<()> {
    if requirements.iter().any(Requirement::is_qemu) {
        // The user chose that binary: a wrong value is theirs to fix, and
        // installing a package would not be what they asked for.
        if let Err(e @ QemuNotFound::Variable { .. }) = qemu::resolve() {
            return Err(e.into());
        }
    }
    let (qemu, others): (Vec<Requirement>, Vec<Requirement>) =
        requirements.iter().filter(|r| !r.present()).cloned().partition(Requirement::is_qemu);
    let mut installer = Installer { host: Host::detect(), updated: false };
    let mut problems = Vec::new();
    if !others.is_empty() {
        problems.extend(installer.provide(others).err());
    }
    if let Some(qemu) = qemu.into_iter().next() {
        problems.extend(installer.provide_qemu(qemu).err());
    }
    match Missing::merge(problems) {
        Some(missing) => Err(missing.into()),
        None => Ok(()),
    }
}

struct Installer {
    host: Host,
    updated: bool,
}

impl Installer {
    fn update_once(&mut self) {
        if !std::mem::replace(&mut self.updated, true) {
            // Stale lists still serve a simulation and most installs.
            if let Err(e) = apt::update() {
                eprintln!("warning: {e:#}");
            }
        }
    }

    /// Installs `missing` if apt-get takes nothing away doing it.
    fn provide(&mut self, missing: Vec<Requirement>) -> Result<(), Missing> {
        let packages = packages(&missing);
        let sudo = !self.host.is_root;
        let refuse = |why: String, plan: Option<&apt::Plan>| {
            let no_remove = !plan.is_some_and(apt::Plan::takes_away);
            Missing {
                missing: missing.clone(),
                why_not_installed: why,
                remedies: vec![Remedy::install(&packages, no_remove, sudo)],
            }
        };
        if let Some(why) = self.host.why_not_install() {
            // Simulated all the same where apt exists: the printed command
            // then says whether it would take something away.
            let plan = self.host.has_apt.then(|| apt::simulate(&packages).ok()).flatten();
            let why = match plan.as_ref().and_then(apt::Plan::refusal) {
                Some(refusal) => format!("{why}; and {refusal}"),
                None => why,
            };
            return Err(refuse(why, plan.as_ref()));
        }
        self.update_once();
        let plan = apt::simulate(&packages).map_err(|e| refuse(format!("not installing them: {e:#}"), None))?;
        if let Some(refusal) = plan.refusal() {
            return Err(refuse(format!("not installing them: {refusal}"), Some(&plan)));
        }
        eprintln!("installing missing prerequisites with apt-get: {}", packages.join(" "));
        let installed = apt::install(&packages);
        let still_missing: Vec<Requirement> = missing.iter().filter(|r| !r.present()).cloned().collect();
        if still_missing.is_empty() {
            return Ok(());
        }
        let why = match installed {
            Err(e) => format!("{e:#}"),
            Ok(()) => "apt-get reported success but they are still missing".to_owned(),
        };
        Err(Missing { missing: still_missing, ..refuse(why, None) })
    }

    /// Debian's qemu-system-x86 if apt-get installs it without taking
    /// anything away; else, as root, the private QEMU; else both commands.
    fn provide_qemu(&mut self, requirement: Requirement) -> Result<(), Missing> {
        let host = self.host;
        let plan = if host.has_apt {
            if host.is_root {
                self.update_once();
            }
            Some(apt::simulate(&[QEMU_PACKAGE]).map_err(|e| format!("{e:#}")))
        } else {
            None
        };
        let refuse = |why: String, remedies: Vec<Remedy>| Missing {
            missing: vec![requirement.clone()],
            why_not_installed: why,
            remedies,
        };
        let system = Remedy::install(&[QEMU_PACKAGE], true, !host.is_root);
        match qemu_way(host, plan.as_ref().map(|p| p.as_ref().map_err(String::as_str))) {
            QemuWay::Refuse { why, remedies } => Err(refuse(why, remedies)),
            QemuWay::Install => {
                eprintln!("installing QEMU with apt-get: {QEMU_PACKAGE}");
                let installed = apt::install(&[QEMU_PACKAGE]);
                match (installed, qemu::resolve()) {
                    (_, Ok(_)) => Ok(()),
                    (Err(e), Err(_)) => Err(refuse(format!("{e:#}"), vec![system, Remedy::private_qemu()])),
                    (Ok(()), Err(e)) => Err(refuse(format!("installed {QEMU_PACKAGE}, yet {e}"), vec![system])),
                }
            }
            QemuWay::Private { refusal, system } => {
                let made = kevent_bench::cache::dir()
                    .map_err(anyhow::Error::msg)
                    .and_then(|cache| private_qemu::ensure(host, &cache));
                let binary = match made {
                    Ok(binary) => binary,
                    Err(e) => {
                        let why = format!("not installing {QEMU_PACKAGE}: {refusal}");
                        return Err(match e.downcast::<Missing>() {
                            Ok(mut libraries) => {
                                libraries.why_not_installed = format!("{why}\n{}", libraries.why_not_installed);
                                libraries.remedies.push(system);
                                libraries
                            }
                            Err(e) => {
                                refuse(format!("{why}\nand the private QEMU could not be made: {e:#}"), vec![system])
                            }
                        });
                    }
                };
                eprintln!(
                    "QEMU: Debian's {QEMU_PACKAGE} was not installed: {refusal}; the bench runs Debian's QEMU 7.2 \
                     extracted, not installed, at {}",
                    binary.display()
                );
                Ok(())
            }
        }
    }
}

/// How the bench gets its QEMU when there is none.
#[derive(Debug, PartialEq, Eq)]
enum QemuWay {
    Install,
    /// apt-get would take something away (`refusal` says what and why);
    /// `system` is the command that installs it all the same.
    Private {
        refusal: String,
        system: Remedy,
    },
    Refuse {
        why: String,
        remedies: Vec<Remedy>,
    },
}

/// `plan` is apt's simulation of installing qemu-system-x86, None without apt.
fn qemu_way(host: Host, plan: Option<Result<&apt::Plan, &str>>) -> QemuWay {
    let sudo = !host.is_root;
    let Some(plan) = plan else {
        let why = host.why_not_install().unwrap_or_default();
        return QemuWay::Refuse { why, remedies: vec![Remedy::install(&[QEMU_PACKAGE], true, sudo)] };
    };
    let takes_away = plan.is_ok_and(apt::Plan::takes_away);
    let refusal = match plan {
        Ok(plan) => plan.refusal(),
        Err(e) => Some(e.to_owned()),
    };
    let system = Remedy::install(&[QEMU_PACKAGE], !takes_away, sudo);
    match (host.why_not_install(), refusal) {
        (Some(why), refusal) => {
            let why = match refusal {
                Some(refusal) => format!("{why}; and {refusal}"),
                None => why,
            };
            QemuWay::Refuse { why, remedies: vec![system, Remedy::private_qemu()] }
        }
        (None, None) => QemuWay::Install,
        (None, Some(refusal)) if takes_away => QemuWay::Private { refusal, system },
        // apt cannot install it at all; the private QEMU comes from apt too.
        (None, Some(refusal)) => {
            QemuWay::Refuse { why: format!("not installing {QEMU_PACKAGE}: {refusal}"), remedies: vec![system] }
        }
    }
}

/// What the host allows: installing needs root and apt-get.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub is_root: bool,
    pub has_apt: bool,
}

impl Host {
    pub fn detect() -> Host {
        let is_root = nix::unistd::geteuid().is_root();
        Host { is_root, has_apt: which(Path::new("apt-get")).is_some() }
    }

    pub fn why_not_install(self) -> Option<String> {
        match (self.is_root, self.has_apt) {
            (true, true) => None,
            (false, _) => Some("not installing them: not running as root".to_owned()),
            (true, false) => Some("not installing them: this host has no apt-get (not Debian or Ubuntu)".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absent(what: &'static str, package: &'static str) -> Requirement {
        Requirement::program(what, "/nonexistent/kevent-bench-tool", package)
    }

    #[test]
    fn a_missing_tool_is_reported_with_the_command_that_installs_it() {
        let missing = vec![absent("flex", "flex"), absent("QEMU", "qemu-system-x86"), absent("bison", "flex")];
        assert!(missing.iter().all(|r| !r.present()));
        let host = Host { is_root: false, has_apt: true };
        let remedies = vec![Remedy::install(&packages(&missing), true, true)];
        let err = Missing { missing, why_not_installed: host.why_not_install().unwrap(), remedies };
        let text = err.to_string();
        assert!(text.contains("  - QEMU (Debian package qemu-system-x86)"), "{text}");
        assert!(text.contains("not running as root"), "{text}");
        assert!(
            text.ends_with("sudo apt-get install -y --no-install-recommends --no-remove flex qemu-system-x86"),
            "packages sorted and deduplicated, and nothing removed: {text}"
        );
    }

    fn plan(fixture: &str, succeeded: bool) -> apt::Plan {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/apt");
        let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{fixture}.{ext}"))).unwrap();
        apt::Plan::parse(&read("stdout"), &read("stderr"), succeeded)
    }

    const ROOT: Host = Host { is_root: true, has_apt: true };
    const USER: Host = Host { is_root: false, has_apt: true };
    const BREAKS: &str = "apt-get would remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1 \
                          (qemu-utils:amd64 Breaks qemu-system-common:amd64 (< 1:8.0+dfsg-5~))";

    #[test]
    fn root_gets_the_private_qemu_where_the_package_would_remove_one() {
        let breaks = plan("qemu-breaks", false);
        let QemuWay::Private { refusal, system } = qemu_way(ROOT, Some(Ok(&breaks))) else { panic!() };
        assert_eq!(refusal, BREAKS);
        assert_eq!(system.command, "apt-get install -y --no-install-recommends qemu-system-x86");
        assert_eq!(system.what, "to install qemu-system-x86 anyway, accepting that, run");
    }

    #[test]
    fn a_user_is_told_both_ways_and_what_the_package_would_remove() {
        let breaks = plan("qemu-breaks", false);
        let QemuWay::Refuse { why, remedies } = qemu_way(USER, Some(Ok(&breaks))) else { panic!() };
        assert_eq!(why, format!("not installing them: not running as root; and {BREAKS}"));
        let commands: Vec<&str> = remedies.iter().map(|r| r.command.as_str()).collect();
        assert_eq!(
            commands,
            ["sudo apt-get install -y --no-install-recommends qemu-system-x86", "cargo xtask qemu --private"]
        );

        let clean = apt::Plan { succeeded: true, ..apt::Plan::default() };
        let QemuWay::Refuse { why, remedies } = qemu_way(USER, Some(Ok(&clean))) else { panic!() };
        assert_eq!(why, "not installing them: not running as root");
        assert_eq!(remedies[0].command, "sudo apt-get install -y --no-install-recommends --no-remove qemu-system-x86");
        assert_eq!(remedies[1], Remedy::private_qemu());
    }

    #[test]
    fn root_installs_the_package_only_when_apt_takes_nothing_away() {
        let clean = apt::Plan { succeeded: true, ..apt::Plan::default() };
        assert_eq!(qemu_way(ROOT, Some(Ok(&clean))), QemuWay::Install);
        let unknown = plan("unknown", false);
        let QemuWay::Refuse { why, remedies } = qemu_way(ROOT, Some(Ok(&unknown))) else { panic!() };
        assert_eq!(
            why,
            "not installing qemu-system-x86: apt-get cannot install them: Unable to locate package no-such-package-kb"
        );
        assert_eq!(remedies.len(), 1, "the private QEMU comes from apt too: {remedies:?}");
        let no_apt = Host { is_root: true, has_apt: false };
        let QemuWay::Refuse { why, .. } = qemu_way(no_apt, None) else { panic!() };
        assert!(why.contains("no apt-get"), "{why}");
    }

    #[test]
    fn only_root_with_apt_installs() {
        assert!(Host { is_root: true, has_apt: true }.why_not_install().is_none());
        assert!(Host { is_root: true, has_apt: false }.why_not_install().unwrap().contains("no apt-get"));
        assert!(Host { is_root: false, has_apt: false }.why_not_install().unwrap().contains("not running as root"));
    }

    #[test]
    fn present_tools_are_found() {
        assert!(Requirement::program("sh", "sh", "dash").present());
        assert!(Requirement::file("root", &["/nonexistent", "/"], "base-files").present());
    }
}
