//! The guest kernel: tinyconfig plus the fragments in `kernel-config/`, built
//! out of tree, validated, and cached.
//!
//! The cache key is the source's identity, the fragments' text and the
//! compiler's version. Debian's tarball never changes under a key, so an
//! up-to-date build is reused without running make at all; a user's own
//! tree (`--kernel-src`) may change at any time, so make runs over it every
//! time and decides for itself.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context};

use crate::flags::BuildFlags;
use crate::fsutil::{write_if_changed, Fingerprint};
use crate::process::{output, run_logged};
use crate::project::Project;

pub struct Kernel {
    pub profile: &'static str,
    /// The source tree (for its scripts: checkpatch).
    pub tree: PathBuf,
    pub build_dir: PathBuf,
    pub vmlinux: PathBuf,
    /// `uname -r` of the guest.
    pub release: String,
    /// The cache key; everything built against this kernel is keyed on it too.
    pub key: String,
    /// Whether an existing build was used as is.
    pub reused: bool,
}

enum Source {
    /// Debian's tarball, unpacked once into the cache.
    Debian { tree: PathBuf, identity: String },
    /// A tree the user named; it may change between runs.
    User { tree: PathBuf },
}

impl Source {
    fn tree(&self) -> &Path {
        match self {
            Source::Debian { tree, .. } | Source::User { tree } => tree,
        }
    }
}

pub fn build(project: &Project, flags: &BuildFlags) -> anyhow::Result<Kernel> {
    let source = locate_source(project, flags.kernel_src.as_deref())?;
    let fragment = read_fragments(&project.kernel_config_dir(), flags.profile.fragments())?;
    let compiler = output(Command::new("gcc").arg("--version"), "gcc --version")?;
    let mut key = Fingerprint::new();
    match &source {
        Source::Debian { identity, .. } => key.add(identity.as_bytes()),
        Source::User { tree } => key.add(tree.as_os_str().as_encoded_bytes()),
    };
    key.add(fragment.as_bytes()).add(compiler.lines().next().unwrap_or("").as_bytes()).add(b"x86_64");
    let key = key.hex();
    let profile = flags.profile.name();
    let build_dir = project.cache.join("build").join(format!("{profile}-{key}"));
    fs::create_dir_all(&build_dir).with_context(|| format!("create {}", build_dir.display()))?;
    let vmlinux = build_dir.join("vmlinux");

    let built_stamp = build_dir.join("kevent-bench.built");
    let up_to_date = matches!(source, Source::Debian { .. })
        && fs::read_to_string(&built_stamp).is_ok_and(|k| k == key)
        && vmlinux.exists()
        && build_dir.join("Module.symvers").exists();
    if !up_to_date {
        configure(source.tree(), &build_dir, &fragment, &key)?;
        eprintln!("building the {profile} kernel in {} (log: make.log)", build_dir.display());
        // Plain `make`, not `make vmlinux`: external modules need
        // Module.symvers and scripts/module.lds, which only the full build makes.
        run_logged(
            make(source.tree(), &build_dir).arg(format!("-j{}", jobs())),
            "kernel build",
            &build_dir.join("make.log"),
        )?;
        fs::write(&built_stamp, &key)?;
    }
    let release = fs::read_to_string(build_dir.join("include/config/kernel.release"))
        .context("the kernel build left no include/config/kernel.release")?
        .trim()
        .to_owned();
    Ok(Kernel { profile, tree: source.tree().to_owned(), build_dir, vmlinux, release, key, reused: up_to_date })
}

fn make(tree: &Path, build_dir: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C").arg(tree).arg(format!("O={}", build_dir.display())).arg("ARCH=x86_64");
    cmd
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() + 1)
}

fn locate_source(project: &Project, kernel_src: Option<&Path>) -> anyhow::Result<Source> {
    if let Some(tree) = kernel_src {
        let tree = tree.canonicalize().with_context(|| format!("--kernel-src {}", tree.display()))?;
        if !tree.join("Makefile").is_file() || !tree.join("Kconfig").is_file() {
            bail!("--kernel-src {}: not a kernel source tree (no Makefile and Kconfig at its top)", tree.display());
        }
        return Ok(Source::User { tree });
    }
    let tarball = crate::prereq::debian_source_tarball().context("Debian's kernel source tarball is not installed")?;
    let meta = fs::metadata(&tarball)?;
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let identity = format!("{} {} {mtime}", tarball.display(), meta.len());
    let stem = tarball.file_name().and_then(|n| n.to_str()).unwrap_or("linux").trim_end_matches(".tar.xz").to_owned();
    let dir = project.cache.join("src").join(format!("{stem}-{}", Fingerprint::new().add(identity.as_bytes()).hex()));
    let tree = dir.join(&stem);
    if !dir.join("kevent-bench.unpacked").exists() {
        unpack(&tarball, &dir)?;
    }
    Ok(Source::Debian { tree, identity })
}

fn unpack(tarball: &Path, dir: &Path) -> anyhow::Result<()> {
    eprintln!("unpacking {} into {} (once)", tarball.display(), dir.display());
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    let status = Command::new("tar").arg("-xf").arg(tarball).arg("-C").arg(&partial).status().context("run tar")?;
    if !status.success() {
        bail!("unpacking {} failed ({status})", tarball.display());
    }
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir)?;
    fs::write(dir.join("kevent-bench.unpacked"), "")?;
    Ok(())
}

/// The fragments, concatenated in merge order.
fn read_fragments(dir: &Path, names: &[&str]) -> anyhow::Result<String> {
    let mut text = String::new();
    for name in names {
        let path = dir.join(name);
        let fragment = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        parse_fragment(&fragment).with_context(|| format!("in {}", path.display()))?;
        text.push_str(&fragment);
        text.push('\n');
    }
    Ok(text)
}

/// tinyconfig, the fragment on top, olddefconfig; then every option of the
/// fragment must hold its value, or dependencies silently dropped it.
fn configure(tree: &Path, build_dir: &Path, fragment: &str, key: &str) -> anyhow::Result<()> {
    let stamp = build_dir.join("kevent-bench.configured");
    if fs::read_to_string(&stamp).is_ok_and(|k| k == key) {
        return Ok(());
    }
    let log = build_dir.join("config.log");
    let _ = fs::remove_file(&log);
    run_logged(make(tree, build_dir).arg("tinyconfig"), "make tinyconfig", &log)?;
    let wanted = parse_fragment(fragment)?;
    let merged = build_dir.join("kevent-bench.fragment");
    write_if_changed(&merged, render_fragment(&wanted).as_bytes())?;
    run_logged(
        Command::new(tree.join("scripts/kconfig/merge_config.sh"))
            .current_dir(build_dir)
            .args(["-m", "-O"])
            .arg(build_dir)
            .arg(build_dir.join(".config"))
            .arg(&merged),
        "merge the config fragment",
        &log,
    )?;
    run_logged(make(tree, build_dir).arg("olddefconfig"), "make olddefconfig", &log)?;
    let config = fs::read_to_string(build_dir.join(".config"))?;
    let mismatches = check_config(&wanted, &config);
    if !mismatches.is_empty() {
        let list: Vec<String> = mismatches.iter().map(|m| format!("  {m}")).collect();
        bail!(
            "not every option of the kernel-config fragments is in the final .config \
             (unmet dependencies, or a name that does not exist):\n{}",
            list.join("\n")
        );
    }
    fs::write(&stamp, key)?;
    Ok(())
}

/// Options of a fragment, by name; a later fragment overrides an earlier one.
fn parse_fragment(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            options.insert(name.to_owned(), "n".to_owned());
            continue;
        }
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            bail!("line {}: expected CONFIG_NAME=value, found {line:?}", number + 1);
        };
        if !name.starts_with("CONFIG_") || value.is_empty() {
            bail!("line {}: expected CONFIG_NAME=value, found {line:?}", number + 1);
        }
        options.insert(name.to_owned(), value.to_owned());
    }
    Ok(options)
}

/// Cuts a `#` comment, unless the `#` is inside a quoted string value.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The fragment as Kconfig reads it: no trailing comments.
fn render_fragment(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(name, value)| if value == "n" { format!("# {name} is not set\n") } else { format!("{name}={value}\n") })
        .collect()
}

/// Every option whose final value differs from the requested one.
fn check_config(wanted: &BTreeMap<String, String>, config: &str) -> Vec<String> {
    let final_values = parse_fragment(config).unwrap_or_default();
    wanted
        .iter()
        .filter_map(|(name, value)| {
            let got = final_values.get(name).map_or("n", String::as_str);
            (got != value).then(|| {
                let got = if final_values.contains_key(name) { got.to_owned() } else { "n (absent)".to_owned() };
                format!("{name}: requested {value}, got {got}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str = "\
# Boot and console
CONFIG_PVH=y                 # PVH direct boot
CONFIG_NR_CPUS=8             # tinyconfig caps it at 2
CONFIG_INPUT=n               # no PS/2 probing
# CONFIG_VT is not set
CONFIG_CMDLINE=\"a#b\"         # quoted hash stays
";

    #[test]
    fn fragments_parse_with_comments_and_both_ways_of_saying_no() {
        let options = parse_fragment(FRAGMENT).unwrap();
        assert_eq!(options["CONFIG_PVH"], "y");
        assert_eq!(options["CONFIG_NR_CPUS"], "8");
        assert_eq!(options["CONFIG_INPUT"], "n");
        assert_eq!(options["CONFIG_VT"], "n");
        assert_eq!(options["CONFIG_CMDLINE"], "\"a#b\"");
        assert_eq!(options.len(), 5);
    }

    #[test]
    fn a_malformed_fragment_line_is_named() {
        let err = parse_fragment("CONFIG_OK=y\nPVH=y\n").unwrap_err().to_string();
        assert_eq!(err, "line 2: expected CONFIG_NAME=value, found \"PVH=y\"");
    }

    #[test]
    fn every_option_that_did_not_stick_is_reported_by_name() {
        let wanted = parse_fragment(FRAGMENT).unwrap();
        let config = "\
CONFIG_NR_CPUS=2
# CONFIG_INPUT is not set
CONFIG_VT=y
CONFIG_CMDLINE=\"a#b\"
";
        let mismatches = check_config(&wanted, config);
        assert_eq!(
            mismatches,
            [
                "CONFIG_NR_CPUS: requested 8, got 2",
                "CONFIG_PVH: requested y, got n (absent)",
                "CONFIG_VT: requested n, got y",
            ]
        );
    }

    #[test]
    fn an_absent_option_satisfies_a_request_for_no() {
        let wanted = parse_fragment("CONFIG_INPUT=n\n").unwrap();
        assert!(check_config(&wanted, "CONFIG_PVH=y\n").is_empty());
    }

    #[test]
    fn the_rendered_fragment_has_no_comments() {
        let rendered = render_fragment(&parse_fragment(FRAGMENT).unwrap());
        assert!(rendered.contains("CONFIG_PVH=y\n"));
        assert!(rendered.contains("# CONFIG_INPUT is not set\n"));
        assert!(!rendered.contains("PVH direct"));
    }

    #[test]
    fn the_shipped_fragments_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config");
        for name in crate::flags::KernelProfile::Debug.fragments() {
            let text = fs::read_to_string(dir.join(name)).unwrap();
            let options = parse_fragment(&text).unwrap();
            assert!(!options.is_empty(), "{name}");
        }
    }
}
