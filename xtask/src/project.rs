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
        let cache = kevent_bench::cache::dir().map_err(anyhow::Error::msg)?;
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
