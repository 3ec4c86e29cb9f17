//! Where things are: the source tree, the cache of kernel builds, the outputs.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct Project {
    /// The workspace root.
    pub root: PathBuf,
    /// Kernel sources and build trees, shared by every checkout on the host.
    pub cache: PathBuf,
    /// Per-checkout outputs: modules, initramfs, run logs.
    pub out: PathBuf,
}

impl Project {
    pub fn locate() -> anyhow::Result<Project> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent directory")?.to_owned();
        let cache = match std::env::var_os("KEVENT_BENCH_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => default_cache_dir()?,
        };
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        Ok(Project { out: target.join("kevent-bench"), root, cache })
    }

    pub fn kernel_config_dir(&self) -> PathBuf {
        self.root.join("kernel-config")
    }

    pub fn kmod_dir(&self) -> PathBuf {
        self.root.join("kmod")
    }

    /// The latest build of a kernel profile, as the tests read it.
    pub fn artifacts_file(&self, profile: &str) -> PathBuf {
        self.out.join(profile).join("artifacts")
    }

    /// What this checkout builds against one kernel (modules, archives),
    /// in a directory no other kernel shares.
    pub fn guest_dir(&self, profile: &str, release: &str, kernel_identity: &str) -> PathBuf {
        let release: String =
            release.chars().map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' }).collect();
        self.out.join("guest").join(format!("{profile}-{release}-{kernel_identity}"))
    }
}

fn default_cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("kevent-bench"));
    }
    let home = std::env::var_os("HOME").context("neither KEVENT_BENCH_CACHE, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("kevent-bench"))
}
