//! Prerequisites: found, installed with apt-get (as root on Debian/Ubuntu),
//! or named with the exact command that installs them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kevent_bench::accel::which;
use kevent_bench::qemu::{self, QemuNotFound};

/// Where the Debian kernel source tarball lands.
pub const DEBIAN_SOURCE_DIR: &str = "/usr/src";
pub const DEBIAN_SOURCE_PACKAGE: &str = "linux-source-6.12";

/// One thing the build or a run needs, and the Debian package that provides it.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub what: &'static str,
    pub package: &'static str,
    probe: Probe,
}

#[derive(Debug, Clone)]
enum Probe {
    Program(PathBuf),
    AnyFile(&'static [&'static str]),
    DebianKernelSource,
    /// [`qemu::resolve`]: the variable, PATH, or the private QEMU.
    Qemu,
}

impl Requirement {
    fn program(what: &'static str, program: impl Into<PathBuf>, package: &'static str) -> Self {
        Requirement { what, package, probe: Probe::Program(program.into()) }
    }

    fn file(what: &'static str, paths: &'static [&'static str], package: &'static str) -> Self {
        Requirement { what, package, probe: Probe::AnyFile(paths) }
    }

    fn present(&self) -> bool {
        match &self.probe {
            Probe::Program(p) => which(p).is_some(),
            Probe::AnyFile(paths) => paths.iter().any(|p| Path::new(p).exists()),
            Probe::DebianKernelSource => debian_source_tarball().is_some(),
            Probe::Qemu => qemu::resolve().is_ok(),
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
        Requirement { what: "QEMU (qemu-system-x86_64)", package: "qemu-system-x86", probe: Probe::Qemu },
        Requirement::program("gcc", "gcc", "gcc"),
        Requirement::program("make", "make", "make"),
        Requirement::program("flex", "flex", "flex"),
        Requirement::program("bison", "bison", "bison"),
        Requirement::program("bc", "bc", "bc"),
        Requirement::program("perl (kernel build scripts, checkpatch)", "perl", "perl"),
        Requirement::program("xz (kernel source tarball)", "xz", "xz-utils"),
        Requirement::file("libelf headers", &["/usr/include/libelf.h", "/usr/include/gelf.h"], "libelf-dev"),
        Requirement::file("libssl headers", &["/usr/include/openssl/ssl.h"], "libssl-dev"),
        Requirement::file(
            "static glibc (the agent is linked with +crt-static)",
            &["/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib64/libc.a", "/usr/lib/libc.a"],
            "libc6-dev",
        ),
    ];
    if kernel_src.is_none() {
        reqs.push(Requirement {
            what: "kernel source (Debian's linux-source-6.12 tarball)",
            package: DEBIAN_SOURCE_PACKAGE,
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
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "missing prerequisites:")?;
        for r in &self.missing {
            writeln!(f, "  - {} (Debian package {})", r.what, r.package)?;
        }
        writeln!(f, "{}", self.why_not_installed)?;
        write!(f, "install them with:\n  {}", install_command(&self.missing, false))
    }
}

impl std::error::Error for Missing {}

fn packages(missing: &[Requirement]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = missing.iter().map(|r| r.package).collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// The exact command a user runs; as root, without sudo.
pub fn install_command(missing: &[Requirement], as_root: bool) -> String {
    let sudo = if as_root { "" } else { "sudo " };
    format!("{sudo}apt-get install -y --no-install-recommends {}", packages(missing).join(" "))
}

/// Checks every requirement; installs the missing ones where it may.
pub fn ensure(requirements: &[Requirement]) -> anyhow::Result<()> {
    if requirements.iter().any(|r| matches!(r.probe, Probe::Qemu)) {
        // The user chose that binary: a wrong value is theirs to fix, and
        // installing a package would not be what they asked for.
        if let Err(e @ QemuNotFound::Variable { .. }) = qemu::resolve() {
            return Err(e.into());
        }
    }
    let missing: Vec<Requirement> = requirements.iter().filter(|r| !r.present()).cloned().collect();
    if missing.is_empty() {
        return Ok(());
    }
    let host = Host::detect();
    if let Some(why_not) = host.why_not_install() {
        return Err(Missing { missing, why_not_installed: why_not }.into());
    }
    eprintln!("installing missing prerequisites with apt-get: {}", packages(&missing).join(" "));
    let apt = |args: &[&str]| Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status();
    let update = apt(&["update", "-qq"]);
    let mut install_args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install_args.extend(packages(&missing));
    let installed = update.and_then(|_| apt(&install_args));
    let still_missing: Vec<Requirement> = missing.into_iter().filter(|r| !r.present()).collect();
    if still_missing.is_empty() {
        return Ok(());
    }
    let why = match installed {
        Ok(status) if !status.success() => format!("apt-get install failed ({status})"),
        Err(e) => format!("apt-get could not run: {e}"),
        Ok(_) => "apt-get reported success but they are still missing".to_owned(),
    };
    Err(Missing { missing: still_missing, why_not_installed: why }.into())
}

/// What the host allows: installing needs root and apt-get.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub is_root: bool,
    pub has_apt: bool,
}

impl Host {
    fn detect() -> Host {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
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
        let err = Missing { missing, why_not_installed: host.why_not_install().unwrap() };
        let text = err.to_string();
        assert!(text.contains("  - QEMU (Debian package qemu-system-x86)"), "{text}");
        assert!(text.contains("not running as root"), "{text}");
        assert!(
            text.ends_with("sudo apt-get install -y --no-install-recommends flex qemu-system-x86"),
            "packages sorted and deduplicated: {text}"
        );
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
