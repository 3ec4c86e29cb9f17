//! apt-get, run so that it never takes a package away from the user: every
//! install is simulated first and refused if apt would remove or downgrade
//! anything, and the real one runs with `--no-remove` as well.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// What apt-get would do for an install, read from its simulation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The simulation exited 0: with `--no-remove`, nothing is taken away.
    pub succeeded: bool,
    /// Packages apt would remove, with the installed version when apt names it.
    pub removed: Vec<(String, Option<String>)>,
    pub downgraded: Vec<String>,
    /// Why, in the resolver's words: `qemu-utils:amd64 Breaks qemu-system-common:amd64 (< 1:8.0+dfsg-5~)`.
    pub conflicts: Vec<String>,
    /// apt's `E:` lines.
    pub errors: Vec<String>,
}

const REMOVED: &str = "The following packages will be REMOVED:";
const DOWNGRADED: &str = "The following packages will be DOWNGRADED:";

impl Plan {
    /// Reads `apt-get -s -o Debug::pkgProblemResolver=true install ...` run
    /// under `LC_ALL=C`: the summary blocks and `Remv` lines on stdout, the
    /// resolver's reasoning and the errors on stderr.
    pub fn parse(stdout: &str, stderr: &str, succeeded: bool) -> Plan {
        let mut plan = Plan { succeeded, ..Plan::default() };
        let mut versions = BTreeMap::new();
        let mut block: Option<&str> = None;
        for line in stdout.lines().chain(stderr.lines()) {
            if let Some(names) = line.strip_prefix("  ").filter(|_| block.is_some()) {
                // A `*` marks a purge.
                let names = names.split_whitespace().map(|n| n.trim_end_matches('*').to_owned());
                match block {
                    Some(REMOVED) => plan.removed.extend(names.map(|n| (n, None))),
                    _ => plan.downgraded.extend(names),
                }
                continue;
            }
            block = [REMOVED, DOWNGRADED].into_iter().find(|header| line == *header);
            if let Some(rest) = line.strip_prefix("Remv ") {
                // `Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]`, when apt may remove.
                let mut words = rest.split_whitespace();
                if let Some(name) = words.next() {
                    let version = words.next().map(|v| v.trim_matches(['[', ']']).to_owned());
                    if !plan.removed.iter().any(|(n, _)| n == name) {
                        plan.removed.push((name.to_owned(), None));
                    }
                    versions.extend(version.map(|v| (name.to_owned(), v)));
                }
            } else if let Some(rest) = line.strip_prefix("Investigating (") {
                // `Investigating (0) qemu-utils:amd64 < 1:10.0.2+ds-2+deb13u1~bpo12+1 @ii K Ib >`
                let mut words = rest.split_whitespace().skip(1);
                if let (Some(name), Some("<"), Some(version)) = (words.next(), words.next(), words.next()) {
                    let name = name.split(':').next().unwrap_or(name);
                    versions.entry(name.to_owned()).or_insert_with(|| version.to_owned());
                }
            } else if let Some(conflict) = line.strip_prefix("Broken ").and_then(conflict) {
                if !plan.conflicts.contains(&conflict) {
                    plan.conflicts.push(conflict);
                }
            } else if let Some(error) = line.strip_prefix("E: ") {
                plan.errors.push(error.to_owned());
            }
        }
        for (name, version) in &mut plan.removed {
            *version = versions.get(name.as_str()).cloned();
        }
        plan
    }

    /// Whether apt would remove or downgrade something.
    pub fn takes_away(&self) -> bool {
        !self.removed.is_empty() || !self.downgraded.is_empty()
    }

    /// Why the install is refused, in apt's terms; None if it is not.
    pub fn refusal(&self) -> Option<String> {
        if self.takes_away() {
            let mut parts = Vec::new();
            if !self.removed.is_empty() {
                let removed: Vec<String> = self
                    .removed
                    .iter()
                    .map(|(name, version)| match version {
                        Some(v) => format!("{name} {v}"),
                        None => name.clone(),
                    })
                    .collect();
                parts.push(format!("remove {}", removed.join(", ")));
            }
            if !self.downgraded.is_empty() {
                parts.push(format!("downgrade {}", self.downgraded.join(", ")));
            }
            let mut text = format!("apt-get would {}", parts.join(" and "));
            if !self.conflicts.is_empty() {
                text.push_str(&format!(" ({})", self.conflicts.join("; ")));
            }
            return Some(text);
        }
        if !self.succeeded {
            let errors = if self.errors.is_empty() { "no reason given".to_owned() } else { self.errors.join("; ") };
            return Some(format!("apt-get cannot install them: {errors}"));
        }
        None
    }
}

/// `qemu-utils:amd64 Breaks on qemu-system-common:amd64 < none -> 1:7.2+dfsg-7+deb12u18+b3 @un puN > (< 1:8.0+dfsg-5~)`
/// without the resolver's state of the target.
fn conflict(line: &str) -> Option<String> {
    let (who, rest) = line.split_once(" on ")?;
    let target = rest.split_whitespace().next()?;
    let constraint = rest.rsplit_once("> ").map(|(_, c)| c.trim()).filter(|c| c.starts_with('('));
    Some(match constraint {
        Some(c) => format!("{who} {target} {c}"),
        None => format!("{who} {target}"),
    })
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    // English output is what `Plan::parse` reads; no question is ever asked.
    cmd.env("LC_ALL", "C").env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Asks apt what installing `packages` would do, changing nothing.
pub fn simulate(packages: &[&str]) -> anyhow::Result<Plan> {
    let out = apt_get()
        .args(["-s", "-o", "Debug::pkgProblemResolver=true", "install", "-y", "--no-install-recommends", "--no-remove"])
        .args(packages)
        .output()
        .context("run apt-get -s (simulate)")?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(Plan::parse(&stdout, &stderr, out.status.success()))
}

/// Installs `packages`; `--no-remove` makes apt fail rather than remove
/// anything, should the archive have changed since the simulation.
pub fn install(packages: &[&str]) -> anyhow::Result<()> {
    let status = apt_get()
        .args(["install", "-y", "-qq", "--no-install-recommends", "--no-remove"])
        .args(packages)
        .status()
        .context("run apt-get install")?;
    if !status.success() {
        bail!("`apt-get install --no-remove {}` failed ({status})", packages.join(" "));
    }
    Ok(())
}

pub fn update() -> anyhow::Result<()> {
    let status = apt_get().args(["update", "-qq"]).status().context("run apt-get update")?;
    if !status.success() {
        bail!("`apt-get update` failed ({status})");
    }
    Ok(())
}

/// The command a user runs; `--no-remove` unless they are to accept a removal.
pub fn command(packages: &[&str], sudo: bool, no_remove: bool) -> String {
    let sudo = if sudo { "sudo " } else { "" };
    let no_remove = if no_remove { " --no-remove" } else { "" };
    format!("{sudo}apt-get install -y --no-install-recommends{no_remove} {}", packages.join(" "))
}

/// Downloads `name=version` packages into `dir` without installing them.
pub fn download(specs: &[String], dir: &Path, as_root: bool) -> anyhow::Result<()> {
    let mut cmd = apt_get();
    cmd.current_dir(dir).args(["download", "-qq"]);
    if as_root {
        // apt drops to the `_apt` user to download, who cannot write to
        // root's cache: root downloads itself instead of warning about it.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    let status = cmd.args(specs).status().context("run apt-get download")?;
    if !status.success() {
        bail!("`apt-get download {}` in {} failed ({status})", specs.join(" "), dir.display());
    }
    Ok(())
}

/// The candidate version of each package, from `apt-cache policy`.
pub fn candidates(packages: &[&str]) -> anyhow::Result<BTreeMap<String, String>> {
    let out = Command::new("apt-cache")
        .env("LC_ALL", "C")
        .arg("policy")
        .args(packages)
        .output()
        .context("run apt-cache policy")?;
    if !out.status.success() {
        bail!("`apt-cache policy {}` failed ({})", packages.join(" "), out.status);
    }
    Ok(parse_candidates(&String::from_utf8_lossy(&out.stdout)))
}

/// `name:` at the start of a line, then `  Candidate: VERSION` (`(none)`
/// when nothing is installable: left out).
fn parse_candidates(text: &str) -> BTreeMap<String, String> {
    let mut candidates = BTreeMap::new();
    let mut package = None;
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
            package = Some(name.to_owned());
        } else if let (Some(name), Some(version)) = (&package, line.trim().strip_prefix("Candidate: ")) {
            if version != "(none)" {
                candidates.insert(name.clone(), version.to_owned());
            }
        }
    }
    candidates
}

/// Which of `packages` dpkg has installed (any architecture).
pub fn installed(packages: &[&str]) -> anyhow::Result<Vec<String>> {
    // dpkg-query exits 1 when one of them is unknown, and still lists the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\\n"])
        .args(packages)
        .output()
        .context("run dpkg-query")?;
    Ok(parse_installed(&String::from_utf8_lossy(&out.stdout)))
}

/// `libfdt1 ii ` per line; the second letter of the status is the state.
fn parse_installed(text: &str) -> Vec<String> {
    let mut installed: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once(' ')?;
            (status.as_bytes().get(1) == Some(&b'i')).then(|| name.to_owned())
        })
        .collect();
    installed.dedup();
    installed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output of `LC_ALL=C apt-get -s -o Debug::pkgProblemResolver=true install -y
    /// --no-install-recommends --no-remove ...` on Debian bookworm (apt 2.6),
    /// with `-o Dir::State::status` pointing at a copy of this machine's dpkg
    /// status as it was before the bench removed qemu-utils: the status of the
    /// qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1 .deb (its control file as
    /// shipped) in place of the QEMU 7.2 packages. See testdata/apt/README.md.
    fn fixture(name: &str, succeeded: bool) -> Plan {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/apt");
        let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap();
        Plan::parse(&read("stdout"), &read("stderr"), succeeded)
    }

    #[test]
    fn qemu_7_2_beside_backports_qemu_utils_is_refused_with_apts_reason() {
        let plan = fixture("qemu-breaks", false);
        assert_eq!(plan.removed, [("qemu-utils".to_owned(), Some("1:10.0.2+ds-2+deb13u1~bpo12+1".to_owned()))]);
        assert!(plan.downgraded.is_empty());
        assert_eq!(plan.conflicts, ["qemu-utils:amd64 Breaks qemu-system-common:amd64 (< 1:8.0+dfsg-5~)"]);
        assert_eq!(plan.errors, ["Packages need to be removed but remove is disabled."]);
        assert!(plan.takes_away());
        assert_eq!(
            plan.refusal().unwrap(),
            "apt-get would remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1 \
             (qemu-utils:amd64 Breaks qemu-system-common:amd64 (< 1:8.0+dfsg-5~))"
        );
    }

    #[test]
    fn libraries_that_take_nothing_away_are_a_clean_plan() {
        let plan = fixture("libs-clean", true);
        assert_eq!(plan, Plan { succeeded: true, ..Plan::default() });
        assert_eq!(plan.refusal(), None);
    }

    #[test]
    fn a_downgrade_is_refused() {
        // Provoked with a newer libslirp0 in the status and `libslirp0=4.7.0-1`.
        let plan = fixture("downgrade", false);
        assert_eq!(plan.downgraded, ["libslirp0"]);
        assert_eq!(plan.refusal().unwrap(), "apt-get would downgrade libslirp0");
    }

    #[test]
    fn an_unknown_package_is_apts_error() {
        let plan = fixture("unknown", false);
        assert!(!plan.takes_away());
        assert_eq!(plan.refusal().unwrap(), "apt-get cannot install them: Unable to locate package no-such-package-kb");
    }

    #[test]
    fn remv_lines_name_the_version_when_removal_is_allowed() {
        let stdout = "The following packages will be REMOVED:\n  qemu-utils* foo\nRemv qemu-utils [1:10.0.2]\n";
        let plan = Plan::parse(stdout, "", true);
        assert_eq!(plan.removed, [("qemu-utils".to_owned(), Some("1:10.0.2".to_owned())), ("foo".to_owned(), None)]);
        assert_eq!(plan.refusal().unwrap(), "apt-get would remove qemu-utils 1:10.0.2, foo");
    }

    #[test]
    fn candidates_are_read_per_package_and_none_is_left_out() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/apt/policy.stdout"))
            .unwrap()
            + "qemu-utils:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";
        let candidates = parse_candidates(&text);
        assert_eq!(candidates["qemu-system-x86"], "1:7.2+dfsg-7+deb12u18+b3");
        assert_eq!(candidates["qemu-system-data"], "1:7.2+dfsg-7+deb12u18");
        assert_eq!(candidates["seabios"], "1.16.2-1");
        assert_eq!(candidates["ipxe-qemu"], "1.0.0+git-20190125.36a4c85-5.1");
        assert_eq!(candidates.len(), 5, "{candidates:?}");
    }

    #[test]
    fn installed_means_the_state_letter_is_i() {
        let text = "libc6 ii \nlibfdt1 un \nqemu-utils rc \nlibglib2.0-0 ii \nlibglib2.0-0 ii \n";
        assert_eq!(parse_installed(text), ["libc6", "libglib2.0-0"]);
    }

    #[test]
    fn printed_commands_keep_no_remove_unless_a_removal_is_accepted() {
        assert_eq!(
            command(&["flex", "bc"], true, true),
            "sudo apt-get install -y --no-install-recommends --no-remove flex bc"
        );
        assert_eq!(
            command(&["qemu-system-x86"], false, false),
            "apt-get install -y --no-install-recommends qemu-system-x86"
        );
    }
}
