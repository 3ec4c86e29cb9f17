//! The events modules: `kmod/` built with Kbuild against the guest kernel,
//! in a directory of their own for each kernel (keyed by its identity), so
//! that switching kernels neither rebuilds nor mixes builds.
//!
//! Kbuild writes objects next to the sources of an external module, so the
//! sources are mirrored into the output directory first (unchanged files keep
//! their timestamps, so make stays incremental) and `kmod/` stays clean.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use kevent_bench::sources::kmod_files;

use crate::fsutil::{write_if_changed, Fingerprint};
use crate::kernel::Kernel;
use crate::process::run_logged;
use crate::project::Project;

/// A built module, in load order.
pub struct Module {
    pub name: String,
    pub path: PathBuf,
}

/// Builds into `build_dir`, which belongs to this kernel alone and is locked
/// by the caller.
pub fn build(project: &Project, kernel: &Kernel, build_dir: &Path) -> anyhow::Result<Vec<Module>> {
    let sources = source_files(&project.kmod_dir())?;
    if !sources.iter().any(|(rel, _)| rel == Path::new("Kbuild")) {
        bail!("{} has no Kbuild file", project.kmod_dir().display());
    }
    let mut key = Fingerprint::new();
    key.add(kernel.identity.as_bytes());
    for (rel, data) in &sources {
        key.add(rel.as_os_str().as_encoded_bytes()).add(data);
    }
    let key = key.hex();
    let stamp = build_dir.join(".kevent-bench.built");
    // A user's tree may change a header without changing the identity (this
    // kernel has no MODVERSIONS): make runs over the modules too and decides.
    if !kernel.user_tree && fs::read_to_string(&stamp).is_ok_and(|k| k == key) {
        if let Ok(modules) = modules_in_order(build_dir) {
            return Ok(modules);
        }
    }
    // Gone before anything changes: a build that fails, even only on its
    // warnings, must not leave the stamp of the sources built before it.
    match fs::remove_file(&stamp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove {}", stamp.display()));
        }
        _ => {}
    }
    mirror(&sources, build_dir)?;
    let log = build_dir.join("make.log");
    let _ = fs::remove_file(&log);
    run_logged(make(kernel, build_dir).arg("modules"), "events module build", &log)?;
    // W=1 warnings do not fail make; they fail the bench build.
    let text = fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("warning:")).collect();
    if !warnings.is_empty() {
        // The objects are up to date for make: without a clean, the next
        // build would compile nothing, print no warning and pass.
        let cleaned = match run_logged(make(kernel, build_dir).arg("clean"), "events module clean", &log) {
            Ok(()) => String::new(),
            Err(e) => format!("\n(and the objects could not be removed, so the next build may not show them: {e:#})"),
        };
        bail!("the events module build (W=1) has warnings:\n{}{cleaned}", warnings.join("\n"));
    }
    let modules = modules_in_order(build_dir)?;
    fs::write(&stamp, &key).with_context(|| format!("write {}", stamp.display()))?;
    Ok(modules)
}

fn make(kernel: &Kernel, build_dir: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C").arg(&kernel.build_dir).arg(format!("M={}", build_dir.display())).args(["ARCH=x86_64", "W=1"]);
    cmd
}

/// Every source file under `kmod/` (relative path, contents), sorted: those
/// the guest tests check against the artifacts' record, no more, no less.
fn source_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    kmod_files(dir)?
        .into_iter()
        .map(|rel| {
            let path = dir.join(&rel);
            let data = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            Ok((rel, data))
        })
        .collect()
}

fn mirror(sources: &[(PathBuf, Vec<u8>)], build_dir: &Path) -> anyhow::Result<()> {
    for (rel, data) in sources {
        write_if_changed(&build_dir.join(rel), data)?;
    }
    // A source removed from kmod/ must not linger in the build.
    for rel in kmod_files(build_dir)? {
        if !sources.iter().any(|(s, _)| *s == rel) {
            let path = build_dir.join(&rel);
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// The built modules in Kbuild's `obj-m` order, which is their load order.
fn modules_in_order(build_dir: &Path) -> anyhow::Result<Vec<Module>> {
    let order = fs::read_to_string(build_dir.join("modules.order")).context("Kbuild wrote no modules.order")?;
    order
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let path = build_dir.join(Path::new(line.trim()).with_extension("ko"));
            let name = path.file_stem().and_then(|s| s.to_str()).context("module without a name")?.to_owned();
            if !path.is_file() {
                bail!("{} is listed in modules.order but was not built", path.display());
            }
            Ok(Module { name, path })
        })
        .collect()
}
