//! The bench's private QEMU: Debian's own qemu-system-x86 7.2 and the
//! packages it runs with, extracted by `dpkg-deb -x` into the cache instead
//! of installed. It is for hosts where installing qemu-system-x86 would
//! remove a package: bookworm-backports' qemu-utils 10 `Breaks:
//! qemu-system-common (<< 1:8.0+dfsg-5~)`. Only shared libraries the binary
//! lacks are installed, with `apt-get --no-remove`.
//!
//! QEMU finds its data, firmware and modules relative to its own binary
//! (`-L help` lists `<prefix>/usr/bin/../share/qemu` first), so the prefix
//! keeps Debian's layout and the host runs it with no `-L`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use kevent_bench::qemu;

use crate::apt;
use crate::prereq::{Host, Missing, Remedy, Requirement};

/// What is extracted: the binary; its modules (TCG is one,
/// accel-tcg-x86_64.so) in qemu-system-common; option ROMs in
/// qemu-system-data; the BIOS in seabios; network ROMs in ipxe-qemu. These
/// are exactly qemu-system-x86's Depends that are not shared libraries,
/// which [`libraries`] checks against each release.
pub const PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "ipxe-qemu"];

/// What the bench's boots load from QEMU's search path: the pc machine's
/// BIOS, the vAPIC option ROM, and the PVH (vmlinux) and bzImage loaders.
const FIRMWARE: &[&str] = &["bios-256k.bin", "kvmvapic.bin", "linuxboot_dma.bin", "pvh.bin"];

/// The project is built around QEMU 7.2's measured behaviour.
const VERSION_PREFIX: &str = "QEMU emulator version 7.2.";

/// The private QEMU's binary, extracted and checked now if it is not yet.
pub fn ensure(host: Host, cache: &Path) -> anyhow::Result<PathBuf> {
    let private_dir = cache.join(qemu::PRIVATE_DIR);
    if let Some(binary) = qemu::private_qemu(&private_dir) {
        return Ok(binary);
    }
    let versions = apt::candidates(PACKAGES)?;
    for package in PACKAGES {
        if !versions.contains_key(*package) {
            bail!("apt-cache policy {package}: no installable version (the private QEMU needs Debian bookworm's main archive in the apt sources)");
        }
    }
    let key = without_epoch(&versions["qemu-system-x86"]).to_owned();
    let prefix = private_dir.join(&key);
    // A fresh machine has no cache yet.
    fs::create_dir_all(&private_dir).with_context(|| format!("create {}", private_dir.display()))?;
    if !prefix.exists() {
        extract(host, &private_dir, &key, &versions)?;
    }
    let binary = qemu::private_binary(&prefix);
    // `current` last: the host library takes a prefix only once it names it.
    let mut current = tempfile::NamedTempFile::new_in(&private_dir)
        .with_context(|| format!("create a file in {}", private_dir.display()))?;
    current.write_all(format!("{key}\n").as_bytes()).with_context(|| format!("write {}", current.path().display()))?;
    current
        .persist(private_dir.join(qemu::PRIVATE_CURRENT))
        .with_context(|| format!("rename into {}", qemu::PRIVATE_CURRENT))?;
    Ok(binary)
}

/// Debian's version without its epoch, for a directory name.
fn without_epoch(version: &str) -> &str {
    version.split_once(':').map_or(version, |(_, rest)| rest)
}

/// Downloads, unpacks and checks in a staging directory, then renames it
/// into place: a prefix that exists is complete.
fn extract(host: Host, private_dir: &Path, key: &str, versions: &BTreeMap<String, String>) -> anyhow::Result<()> {
    // Removed when dropped, whatever happens; its root is renamed out first.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{key}."))
        .tempdir_in(private_dir)
        .with_context(|| format!("create a staging directory in {}", private_dir.display()))?;
    let (debs, root) = (staging.path().join("debs"), staging.path().join("root"));
    for dir in [&debs, &root] {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let result = (|| {
        let specs: Vec<String> = PACKAGES.iter().map(|p| format!("{p}={}", versions[*p])).collect();
        eprintln!("private QEMU: downloading {}", specs.join(" "));
        if let Err(e) = apt::download(&specs, &debs, host.is_root) {
            if !host.is_root {
                return Err(e);
            }
            // The lists may predate the archive's current point release.
            apt::update()?;
            apt::download(&specs, &debs, host.is_root)?;
        }
        let mut libraries = Vec::new();
        for package in PACKAGES {
            let deb = find_deb(&debs, package)?;
            let control = control(&deb)?;
            let depends = [control.get("Pre-Depends"), control.get("Depends")].into_iter().flatten();
            let groups = parse_depends(&depends.cloned().collect::<Vec<_>>().join(", "));
            let needed = libraries_of(package, &groups, versions)?;
            // Only the binary's own libraries: qemu-system-common's are for
            // helper programs and display or audio modules the bench never loads.
            if *package == "qemu-system-x86" {
                libraries = needed;
            }
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root), "dpkg-deb -x")?;
        }
        install_missing_libraries(host, &libraries)?;
        let binary = qemu::private_binary(&root);
        let version = verify(&binary, &root)?;
        let manifest: String = PACKAGES.iter().map(|p| format!("{p} {}\n", versions[*p])).collect();
        fs::write(root.join("kevent-bench-packages"), manifest)?;
        let prefix = private_dir.join(key);
        if let Err(e) = fs::rename(&root, &prefix) {
            // Another run got there first: its prefix is as good as ours.
            if !prefix.exists() {
                return Err(e).with_context(|| format!("rename {} to {}", root.display(), prefix.display()));
            }
        }
        eprintln!("private QEMU: {version} in {}", prefix.display());
        Ok(())
    })();
    drop(staging);
    result
}

fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")))
        .with_context(|| format!("apt-get download left no {package}_*.deb in {}", dir.display()))
}

/// The control fields of a .deb.
fn control(deb: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let out = Command::new("dpkg-deb").arg("-f").arg(deb).output().context("run dpkg-deb -f")?;
    if !out.status.success() {
        bail!("dpkg-deb -f {} failed ({})", deb.display(), out.status);
    }
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with(' ') {
            if let Some(value) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                let value: &mut String = value;
                value.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.to_owned(), v.trim().to_owned());
            last = Some(k.to_owned());
        }
    }
    Ok(fields)
}

/// One entry of a Depends field: alternatives, each a package and an
/// optional `(operator, version)`.
type Group = Vec<(String, Option<(String, String)>)>;

fn parse_depends(field: &str) -> Vec<Group> {
    field
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .split('|')
                .map(|alternative| {
                    let alternative = alternative.trim();
                    let (name, constraint) = match alternative.split_once('(') {
                        Some((name, rest)) => {
                            let rest = rest.trim_end_matches(')').trim();
                            let (op, version) = rest.split_once(' ').unwrap_or((rest, ""));
                            (name.trim(), Some((op.to_owned(), version.trim().to_owned())))
                        }
                        None => (alternative, None),
                    };
                    // `foo:any` is foo.
                    (name.split(':').next().unwrap_or(name).to_owned(), constraint)
                })
                .collect()
        })
        .collect()
}

/// The shared libraries among `package`'s dependencies, one group each;
/// every other dependency must be one of [`PACKAGES`], at a version the
/// extracted one satisfies.
fn libraries_of(
    package: &str,
    groups: &[Group],
    versions: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut libraries = Vec::new();
    for group in groups {
        if let Some((name, constraint)) = group.iter().find(|(name, _)| PACKAGES.contains(&name.as_str())) {
            if let Some((op, version)) = constraint {
                let ours = &versions[name];
                if !version_satisfies(ours, op, version)? {
                    bail!(
                        "{package} {} needs {name} ({op} {version}), but apt's candidate is {ours}",
                        versions[package]
                    );
                }
            }
        } else if group.iter().all(|(name, _)| is_library(name)) {
            libraries.push(group.iter().map(|(name, _)| name.clone()).collect());
        } else {
            let names: Vec<&str> = group.iter().map(|(name, _)| name.as_str()).collect();
            bail!(
                "{package} {} depends on {}, which is neither a shared library nor extracted: \
                 add it to PACKAGES in xtask/src/private_qemu.rs",
                versions[package],
                names.join(" | ")
            );
        }
    }
    Ok(libraries)
}

/// Debian names a shared library's package after its soname: libc6,
/// libglib2.0-0, zlib1g. Anything else is a package the prefix would lack.
fn is_library(package: &str) -> bool {
    package.contains("lib")
}

fn version_satisfies(ours: &str, op: &str, version: &str) -> anyhow::Result<bool> {
    let op = match op {
        "<<" => "lt",
        "<=" => "le",
        "=" => "eq",
        ">=" => "ge",
        ">>" => "gt",
        other => bail!("unknown version relation {other:?} in a Depends field"),
    };
    let status = Command::new("dpkg").args(["--compare-versions", ours, op, version]).status()?;
    Ok(status.success())
}

/// The first alternative of each group of which none is installed.
fn missing_libraries(groups: &[Vec<String>], installed: &[String]) -> Vec<String> {
    groups
        .iter()
        .filter(|group| !group.iter().any(|name| installed.contains(name)))
        .filter_map(|group| group.first().cloned())
        .collect()
}

fn install_missing_libraries(host: Host, groups: &[Vec<String>]) -> anyhow::Result<()> {
    let names: Vec<&str> = groups.iter().flatten().map(String::as_str).collect();
    let missing = missing_libraries(groups, &apt::installed(&names)?);
    if missing.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    let requirement = |name: &str| Requirement::library(name);
    let refuse = |why: String, no_remove: bool| Missing {
        missing: missing.iter().map(|n| requirement(n)).collect(),
        why_not_installed: why,
        remedies: vec![Remedy::install(&missing, no_remove, !host.is_root)],
    };
    if let Some(why) = host.why_not_install() {
        return Err(refuse(why, true).into());
    }
    let plan = apt::simulate(&missing)?;
    if let Some(why) = plan.refusal() {
        return Err(refuse(format!("not installing the private QEMU's libraries: {why}"), !plan.takes_away()).into());
    }
    eprintln!("private QEMU: installing the shared libraries it lacks: {}", missing.join(" "));
    apt::install(&missing)
}

/// Runs the extracted QEMU the way the bench will; returns its version line.
fn verify(binary: &Path, prefix: &Path) -> anyhow::Result<String> {
    let modules = prefix.join("usr/lib/x86_64-linux-gnu/qemu");
    for file in [binary.to_owned(), modules.join("accel-tcg-x86_64.so")] {
        let ldd = output(Command::new("ldd").arg(&file), "ldd")?;
        if let Some(line) = ldd.lines().find(|l| l.contains("not found")) {
            bail!("{}: a shared library is missing: {}", file.display(), line.trim());
        }
    }
    let version = qemu::version(binary).map_err(anyhow::Error::msg)?;
    if !version.starts_with(VERSION_PREFIX) {
        bail!("{}: {version:?}, expected {VERSION_PREFIX}x (the bench is built around QEMU 7.2)", binary.display());
    }
    let search = output(Command::new(binary).args(["-L", "help"]), "qemu -L help")?;
    let prefix = prefix.canonicalize()?;
    for name in FIRMWARE {
        let found = search.lines().map(Path::new).map(|dir| dir.join(name)).find(|file| file.exists());
        let inside = found.as_ref().and_then(|f| f.canonicalize().ok()).is_some_and(|f| f.starts_with(&prefix));
        if !inside {
            bail!(
                "{}: QEMU finds {name} {}, not in its own prefix; its search path:\n{search}",
                binary.display(),
                found.map_or("nowhere".to_owned(), |f| format!("at {}", f.display()))
            );
        }
    }
    start_and_quit(binary)?;
    Ok(version)
}

/// Starts the pc machine under TCG, paused, and quits over QMP: it loads
/// the TCG module and the BIOS, and fails if either is missing.
fn start_and_quit(binary: &Path) -> anyhow::Result<()> {
    let mut child = qemu::command(binary)
        .args(["-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", binary.display()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // QEMU may already have exited; its status says why.
    let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    drop(stdin);
    let exited = kevent_bench::wait::until(Duration::from_secs(30), Duration::from_millis(20), || {
        child.try_wait().map_or(Some(()), |status| status.map(|_| ()))
    });
    if exited.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} could not start the pc machine under TCG ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    output(cmd, what).map(|_| ())
}

fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qemu-system-x86 1:7.2+dfsg-7+deb12u18+b3's Depends, as shipped.
    const DEPENDS: &str = "libaio1 (>= 0.3.93), libbpf1 (>= 1:0.0.8), libc6 (>= 2.34), libcapstone4 (>= 4), \
        libfdt1 (>= 1.6.1), libfuse3-3 (>= 3.2.3), libgcc-s1 (>= 3.4), libglib2.0-0 (>= 2.67.3), \
        libgmp10 (>= 2:6.2.1+dfsg1), libgnutls30 (>= 3.7.5), libhogweed6, libibverbs1 (>= 28), \
        libjpeg62-turbo (>= 1.3.1), libnettle8, libnuma1 (>= 2.0.11), libpixman-1-0 (>= 0.19.6), \
        libpmem1 (>= 1.4), libpng16-16 (>= 1.6.2-1), librdmacm1 (>= 1.0.15), libsasl2-2 (>= 2.1.28+dfsg), \
        libseccomp2 (>= 2.1.0), libslirp0 (>= 4.7.0), libudev1 (>= 183), liburing2 (>= 2.3), \
        libvdeplug2 (>= 4.0.1), libzstd1 (>= 1.5.2), zlib1g (>= 1:1.2.0), \
        qemu-system-common (= 1:7.2+dfsg-7+deb12u18+b3), qemu-system-data (>> 1:7.2+dfsg~), seabios, ipxe-qemu";

    fn bookworm() -> BTreeMap<String, String> {
        [
            ("qemu-system-x86", "1:7.2+dfsg-7+deb12u18+b3"),
            ("qemu-system-common", "1:7.2+dfsg-7+deb12u18+b3"),
            ("qemu-system-data", "1:7.2+dfsg-7+deb12u18"),
            ("seabios", "1.16.2-1"),
            ("ipxe-qemu", "1.0.0+git-20190125.36a4c85-5.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn the_extracted_packages_are_exactly_the_non_library_dependencies() {
        let groups = parse_depends(DEPENDS);
        assert_eq!(groups.len(), 31);
        assert_eq!(
            groups[27],
            [("qemu-system-common".to_owned(), Some(("=".into(), "1:7.2+dfsg-7+deb12u18+b3".into())))]
        );
        let libraries = libraries_of("qemu-system-x86", &groups, &bookworm()).unwrap();
        assert_eq!(libraries.len(), 27);
        assert!(libraries.contains(&vec!["zlib1g".to_owned()]) && libraries.contains(&vec!["libfdt1".to_owned()]));
    }

    #[test]
    fn a_new_dependency_or_a_mismatched_version_names_the_fix() {
        let groups = parse_depends("libc6 (>= 2.34), qemu-system-modules-spice (= 1:7.2)");
        let err = libraries_of("qemu-system-x86", &groups, &bookworm()).unwrap_err().to_string();
        assert!(err.contains("depends on qemu-system-modules-spice"), "{err}");
        assert!(err.contains("PACKAGES in xtask/src/private_qemu.rs"), "{err}");
        let groups = parse_depends("qemu-system-common (= 1:7.2+dfsg-7+deb12u19)");
        let err = libraries_of("qemu-system-x86", &groups, &bookworm()).unwrap_err().to_string();
        assert_eq!(
            err,
            "qemu-system-x86 1:7.2+dfsg-7+deb12u18+b3 needs qemu-system-common (= 1:7.2+dfsg-7+deb12u19), \
             but apt's candidate is 1:7.2+dfsg-7+deb12u18+b3"
        );
    }

    #[test]
    fn alternatives_and_architecture_qualifiers_are_read() {
        let groups = parse_depends("libfoo1 | libfoo-compat1 (>= 2), perl:any");
        assert_eq!(groups[0][1], ("libfoo-compat1".to_owned(), Some((">=".into(), "2".into()))));
        assert_eq!(groups[1], [("perl".to_owned(), None)]);
    }

    #[test]
    fn a_library_group_is_missing_only_if_no_alternative_is_installed() {
        let groups = vec![vec!["libfdt1".to_owned()], vec!["liba".to_owned(), "libb".to_owned()], vec!["libc6".into()]];
        assert_eq!(missing_libraries(&groups, &["libc6".into(), "libb".into()]), ["libfdt1"]);
    }

    #[test]
    fn the_directory_is_the_version_without_its_epoch() {
        assert_eq!(without_epoch("1:7.2+dfsg-7+deb12u18+b3"), "7.2+dfsg-7+deb12u18+b3");
        assert_eq!(without_epoch("1.16.2-1"), "1.16.2-1");
    }
}
