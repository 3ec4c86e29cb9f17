//! The guest kernel: tinyconfig plus the fragments in `kernel-config/`, built
//! out of tree, validated, and cached.
//!
//! The cache key is the source's identity, the fragments' text and the
//! compiler's version. Debian's tarball never changes under a key, so an
//! up-to-date build is reused without running make at all; a user's own
//! tree (`--kernel-src`) may change at any time, so make runs over it every
//! time and decides for itself. What is built against a kernel is keyed by
//! what its build produced ([`identity`]), not by this key.
//!
//! The unpacked source and each build are entries of the shared cache, each
//! made by one process at a time under its lock ([`crate::cache`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context};

use crate::cache::{self, EntryLock, Outcome};
use crate::flags::BuildFlags;
use crate::fsutil::{write_if_changed, Fingerprint};
use crate::process::{output, run_logged, storage_failure};
use crate::project::Project;

/// In an unpacked source entry: written inside the private directory before
/// it is renamed into place, so an entry without it is not a whole tree.
const UNPACKED_STAMP: &str = "kevent-bench.unpacked";

pub struct Kernel {
    pub profile: &'static str,
    /// The source tree (for its scripts: checkpatch).
    pub tree: PathBuf,
    pub build_dir: PathBuf,
    pub vmlinux: PathBuf,
    /// A tree the user named: it may change under the same build directory.
    pub user_tree: bool,
    /// `uname -r` of the guest.
    pub release: String,
    /// What everything built against this kernel is keyed by ([`identity`]).
    pub identity: String,
    /// Whether an existing build was used as is.
    pub reused: bool,
    /// Held shared until the build is over: no one rebuilds this kernel
    /// while modules are built against it.
    _lock: EntryLock,
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
    let vmlinux = build_dir.join("vmlinux");
    let built_stamp = build_dir.join("kevent-bench.built");
    let user_tree = matches!(source, Source::User { .. });
    let ready = || {
        !user_tree
            && fs::read_to_string(&built_stamp).is_ok_and(|k| k == key)
            && vmlinux.exists()
            && build_dir.join("Module.symvers").exists()
    };
    let lock = EntryLock::open(&build_dir).with_context(|| in_cache(project))?;
    let (lock, outcome) = cache::ensure(lock, ready, || {
        fs::create_dir_all(&build_dir).with_context(|| format!("create {}", build_dir.display()))?;
        // The stamp goes first and comes back last: a make that fails or is
        // interrupted leaves a build no later run trusts.
        remove_if_present(&built_stamp)?;
        configure(source.tree(), &build_dir, &fragment, &key)?;
        eprintln!("building the {profile} kernel in {} (log: make.log)", build_dir.display());
        // Plain `make`, not `make vmlinux`: external modules need
        // Module.symvers and scripts/module.lds, which only the full build makes.
        run_logged(
            make(source.tree(), &build_dir).arg(format!("-j{}", jobs())),
            "kernel build",
            &build_dir.join("make.log"),
        )?;
        fs::write(&built_stamp, &key).with_context(|| format!("write {}", built_stamp.display()))
    })?;
    let release_file = build_dir.join("include/config/kernel.release");
    let release = fs::read_to_string(&release_file)
        .with_context(|| format!("the kernel build left no {}", release_file.display()))?
        .trim()
        .to_owned();
    let identity = identity(&build_dir)?;
    Ok(Kernel {
        profile,
        tree: source.tree().to_owned(),
        user_tree,
        build_dir,
        vmlinux,
        release,
        identity,
        reused: matches!(outcome, Outcome::Reused { .. }),
        _lock: lock,
    })
}

/// What a module built against this kernel depends on: the build's place
/// (a user's tree is keyed by its path, and Kbuild records its headers by
/// path), its release (vermagic), its final .config and the exported symbols.
pub fn identity(build_dir: &Path) -> anyhow::Result<String> {
    let mut identity = Fingerprint::new();
    identity.add(build_dir.as_os_str().as_encoded_bytes());
    for name in ["include/config/kernel.release", ".config", "Module.symvers"] {
        let path = build_dir.join(name);
        let data = fs::read(&path).with_context(|| format!("read {} of the kernel build", path.display()))?;
        identity.add(name.as_bytes()).add(&data);
    }
    Ok(identity.hex())
}

/// The cache is the first place a build writes to; where it cannot, say
/// which directory that is and how to choose another.
fn in_cache(project: &Project) -> String {
    format!("the kernel cache {} (KEVENT_BENCH_CACHE chooses another)", project.cache.display())
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
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
    let meta = fs::metadata(&tarball).with_context(|| format!("stat {}", tarball.display()))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default().as_secs();
    let identity = format!("{} {} {mtime}", tarball.display(), meta.len());
    let stem = tarball.file_name().and_then(|n| n.to_str()).unwrap_or("linux").trim_end_matches(".tar.xz").to_owned();
    let dir = project.cache.join("src").join(format!("{stem}-{}", Fingerprint::new().add(identity.as_bytes()).hex()));
    let lock = EntryLock::open(&dir).with_context(|| in_cache(project))?;
    ensure_unpacked(&tarball, &dir, lock)?;
    Ok(Source::Debian { tree: dir.join(&stem), identity })
}

/// `dir` holds the whole of `tarball`, unpacked by this process or another.
fn ensure_unpacked(tarball: &Path, dir: &Path, lock: EntryLock) -> anyhow::Result<Outcome> {
    // The unpacked tree never changes once whole: no lock is kept on it.
    let (_, outcome) = cache::ensure(lock, || dir.join(UNPACKED_STAMP).exists(), || unpack(tarball, dir))?;
    Ok(outcome)
}

/// Unpacks `tarball` into `dir`, whole or not at all: into a private
/// directory beside it, renamed into place once complete, so that an
/// interrupted or failed unpack never leaves a tree a later run would trust.
/// The caller holds the entry's lock.
fn unpack(tarball: &Path, dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().context("the source entry has no parent directory")?;
    let name = dir.file_name().and_then(|n| n.to_str()).context("the source entry has no name")?;
    let private_prefix = format!(".{name}.unpacking-");
    remove_leftovers(parent, &private_prefix)?;
    if dir.exists() {
        // Not whole (no stamp): an older bench renamed before stamping.
        fs::remove_dir_all(dir).with_context(|| format!("remove the incomplete {}", dir.display()))?;
    }
    eprintln!("unpacking {} into {} (once)", tarball.display(), dir.display());
    let private = tempfile::Builder::new()
        .prefix(&private_prefix)
        .tempdir_in(parent)
        .with_context(|| format!("create a directory in {}", parent.display()))?;
    let tar = Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(private.path())
        .stdin(Stdio::null())
        .output()
        .context("run tar")?;
    if !tar.status.success() {
        // A full disk makes tar report every file it could not write: one
        // line on screen, all of them in the log, written once the partial
        // tree is gone and the space is free again.
        let messages = String::from_utf8_lossy(&tar.stderr);
        let partial = private.path().to_owned();
        let removed = match private.close() {
            Ok(()) => "the partial tree is removed".to_owned(),
            Err(e) => format!("the partial tree {} could not be removed: {e}", partial.display()),
        };
        let log = parent.join(format!("{name}.unpack.log"));
        let kept = match fs::write(&log, &tar.stderr) {
            Ok(()) => format!("tar's messages are in {}", log.display()),
            Err(e) => format!("tar's messages could not be kept in {}: {e}", log.display()),
        };
        let (first, meaning) = match storage_failure(&messages) {
            Some((line, meaning)) => (line, format!(" ({meaning})")),
            None => (messages.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message"), String::new()),
        };
        bail!(
            "unpacking {} into {} failed ({}): {first}{meaning}; {removed}; {kept}",
            tarball.display(),
            dir.display(),
            tar.status,
        );
    }
    let stamp = private.path().join(UNPACKED_STAMP);
    fs::write(&stamp, "").with_context(|| format!("write {}", stamp.display()))?;
    let private = private.keep();
    fs::rename(&private, dir).map_err(|e| {
        let _ = fs::remove_dir_all(&private);
        anyhow::Error::new(e).context(format!("rename {} to {}", private.display(), dir.display()))
    })
}

/// Private directories of unpacks that were killed. Only the holder of the
/// entry's lock creates them, so under the lock any one found is left over.
fn remove_leftovers(parent: &Path, private_prefix: &str) -> anyhow::Result<()> {
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", parent.display())),
    };
    for entry in entries {
        let path = entry.with_context(|| format!("read {}", parent.display()))?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(private_prefix)) {
            eprintln!("removing {}, left by an interrupted unpack", path.display());
            fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
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
    let config_file = build_dir.join(".config");
    let config = fs::read_to_string(&config_file).with_context(|| format!("read {}", config_file.display()))?;
    let mismatches = check_config(&wanted, &config);
    if !mismatches.is_empty() {
        let list: Vec<String> = mismatches.iter().map(|m| format!("  {m}")).collect();
        bail!(
            "not every option of the kernel-config fragments is in the final .config \
             (unmet dependencies, or a name that does not exist):\n{}",
            list.join("\n")
        );
    }
    fs::write(&stamp, key).with_context(|| format!("write {}", stamp.display()))
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

    /// A kernel build directory with the three files its identity is made of.
    fn fake_build(dir: &Path) {
        fs::create_dir_all(dir.join("include/config")).unwrap();
        fs::write(dir.join("include/config/kernel.release"), "6.12.117\n").unwrap();
        fs::write(dir.join(".config"), "CONFIG_PVH=y\n").unwrap();
        fs::write(dir.join("Module.symvers"), "0x00000000\tsystem_state\tvmlinux\tEXPORT_SYMBOL\t\n").unwrap();
    }

    #[test]
    fn modules_are_built_in_a_directory_of_the_kernel_build_they_are_built_against() {
        let tmp = tempfile::tempdir().unwrap();
        let project = Project { root: tmp.path().into(), cache: tmp.path().join("cache"), out: tmp.path().join("out") };
        let build = tmp.path().join("cache/build/default-1");
        fake_build(&build);
        let guest_dir = || project.guest_dir("default", "6.12.117", &identity(&build).unwrap());
        let first = guest_dir();
        assert_eq!(guest_dir(), first, "the same build, the same directory");
        let prefix = tmp.path().join("out/guest/default-6.12.117-");
        assert!(first.to_str().unwrap().starts_with(prefix.to_str().unwrap()), "{}", first.display());

        fs::write(build.join(".config"), "CONFIG_PVH=y\nCONFIG_BUG=y\n").unwrap();
        let other_config = guest_dir();
        assert_ne!(other_config, first);
        fs::write(build.join(".config"), "CONFIG_PVH=y\n").unwrap();
        assert_eq!(guest_dir(), first, "back to the first .config, back to its modules");

        fs::write(build.join("Module.symvers"), "0x00000000\treset_devices\tvmlinux\tEXPORT_SYMBOL\t\n").unwrap();
        let other_symbols = guest_dir();
        assert_ne!(other_symbols, first);
        assert_ne!(other_symbols, other_config);

        let elsewhere = tmp.path().join("cache/build/default-2");
        fake_build(&elsewhere);
        fs::copy(build.join("Module.symvers"), elsewhere.join("Module.symvers")).unwrap();
        assert_ne!(identity(&elsewhere).unwrap(), identity(&build).unwrap(), "no two kernel builds share one");

        fs::remove_file(build.join("Module.symvers")).unwrap();
        let err = identity(&build).unwrap_err().to_string();
        assert_eq!(err, format!("read {} of the kernel build", build.join("Module.symvers").display()));
    }

    /// A tarball of `files` (name, size) under `top/`, of random bytes so
    /// that xz cannot shrink it and a cut in the middle cuts a file.
    fn tarball(dir: &Path, top: &str, files: &[(&str, usize)]) -> PathBuf {
        let content = dir.join("content");
        fs::create_dir_all(content.join(top)).unwrap();
        let mut random = fs::File::open("/dev/urandom").unwrap();
        for (name, size) in files {
            let mut data = vec![0; *size];
            std::io::Read::read_exact(&mut random, &mut data).unwrap();
            fs::write(content.join(top).join(name), data).unwrap();
        }
        let tarball = dir.join(format!("{top}.tar.xz"));
        let status = Command::new("tar")
            .arg("-cJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&content)
            .arg(top)
            .env("XZ_OPT", "-0")
            .status()
            .unwrap();
        assert!(status.success());
        tarball
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_tarball_is_unpacked_once_whole_and_then_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let tarball = tarball(tmp.path(), "linux-x", &[("Makefile", 100), ("Kconfig", 100)]);
        let entry = tmp.path().join("src/linux-x-1234");
        let unpack = || ensure_unpacked(&tarball, &entry, EntryLock::open(&entry).unwrap()).unwrap();
        assert_eq!(unpack(), Outcome::Built);
        assert_eq!(names(&entry), ["kevent-bench.unpacked", "linux-x"]);
        assert_eq!(names(&entry.join("linux-x")), ["Kconfig", "Makefile"]);
        assert_eq!(names(&tmp.path().join("src")), ["linux-x-1234", "linux-x-1234.lock"]);
        fs::remove_file(&tarball).unwrap();
        assert_eq!(unpack(), Outcome::Reused { waited: false }, "tar is not run again");
    }

    #[test]
    fn a_failed_unpack_leaves_no_partial_tree_and_says_so_in_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let whole = tarball(tmp.path(), "linux-x", &[("a", 256 << 10), ("b", 256 << 10), ("c", 256 << 10)]);
        let cut = tmp.path().join("cut.tar.xz");
        let data = fs::read(&whole).unwrap();
        fs::write(&cut, &data[..data.len() / 2]).unwrap();
        let src = tmp.path().join("src");
        let entry = src.join("linux-x-1234");
        // What a killed unpack leaves: removed by the next one, under the lock.
        fs::create_dir_all(src.join(".linux-x-1234.unpacking-killed/linux-x")).unwrap();

        let err = ensure_unpacked(&cut, &entry, EntryLock::open(&entry).unwrap()).unwrap_err().to_string();
        let log = src.join("linux-x-1234.unpack.log");
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(&format!("unpacking {} into {} failed (exit status: 2): ", cut.display(), entry.display())),
            "{err}"
        );
        assert!(
            err.ends_with(&format!("; the partial tree is removed; tar's messages are in {}", log.display())),
            "{err}"
        );
        let messages = fs::read_to_string(&log).unwrap();
        let first = messages.lines().next().unwrap();
        assert!(err.contains(first), "the first of tar's lines is on screen: {first:?} in {err}");
        assert_eq!(names(&src), ["linux-x-1234.lock", "linux-x-1234.unpack.log"], "no partial tree, no leftover");

        assert_eq!(ensure_unpacked(&whole, &entry, EntryLock::open(&entry).unwrap()).unwrap(), Outcome::Built);
        assert_eq!(names(&entry.join("linux-x")), ["a", "b", "c"]);
    }

    #[test]
    fn two_unpacks_at_once_unpack_once() {
        let tmp = tempfile::tempdir().unwrap();
        let tarball = tarball(tmp.path(), "linux-x", &[("a", 2 << 20)]);
        let entry = tmp.path().join("src/linux-x-1234");
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let unpack = || ensure_unpacked(&tarball, &entry, EntryLock::open(&entry).unwrap()).unwrap();
            let threads = [s.spawn(unpack), s.spawn(unpack)];
            threads.map(|t| t.join().unwrap()).into()
        });
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Built).count(), 1, "{outcomes:?}");
        assert_eq!(names(&entry.join("linux-x")), ["a"]);
        assert_eq!(names(&tmp.path().join("src")), ["linux-x-1234", "linux-x-1234.lock"]);
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
