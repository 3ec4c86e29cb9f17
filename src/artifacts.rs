//! The built guest, as `cargo xtask build` describes it for the host and the
//! tests: one `key=value` file per kernel profile.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::qemu::{Clock, GuestSpec};

/// Environment variable naming the artifacts file to use.
pub const ARTIFACTS_ENV: &str = "KEVENT_BENCH_ARTIFACTS";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    pub profile: String,
    pub kernel_release: String,
    /// The kernel source tree, for its scripts (checkpatch).
    pub kernel_tree: PathBuf,
    pub vmlinux: PathBuf,
    /// Agent, modules and module list.
    pub initramfs: PathBuf,
    /// The floor: only an init that restarts the machine at once.
    pub floor_initramfs: PathBuf,
    /// Host directory of the kernel cache, for the accelerator probe verdict.
    pub cache_dir: PathBuf,
    /// Where runs keep their console logs.
    pub runs_dir: PathBuf,
    /// Built modules in load order.
    pub modules: Vec<PathBuf>,
}

impl Artifacts {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| writeln!(out, "{k}={v}").expect("writing to a String");
        line("profile", &self.profile);
        line("kernel_release", &self.kernel_release);
        line("kernel_tree", &self.kernel_tree.to_string_lossy());
        line("vmlinux", &self.vmlinux.to_string_lossy());
        line("initramfs", &self.initramfs.to_string_lossy());
        line("floor_initramfs", &self.floor_initramfs.to_string_lossy());
        line("cache_dir", &self.cache_dir.to_string_lossy());
        line("runs_dir", &self.runs_dir.to_string_lossy());
        let modules: Vec<_> = self.modules.iter().map(|m| m.to_string_lossy().into_owned()).collect();
        line("modules", &modules.join(":"));
        out
    }

    pub fn parse(text: &str) -> anyhow::Result<Artifacts> {
        let mut fields = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let Some((k, v)) = line.split_once('=') else { bail!("line {}: expected key=value", n + 1) };
            fields.insert(k, v);
        }
        let mut take = |k: &str| fields.remove(k).map(str::to_owned).with_context(|| format!("missing `{k}`"));
        let artifacts = Artifacts {
            profile: take("profile")?,
            kernel_release: take("kernel_release")?,
            kernel_tree: take("kernel_tree")?.into(),
            vmlinux: take("vmlinux")?.into(),
            initramfs: take("initramfs")?.into(),
            floor_initramfs: take("floor_initramfs")?.into(),
            cache_dir: take("cache_dir")?.into(),
            runs_dir: take("runs_dir")?.into(),
            modules: take("modules")?.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
        };
        Ok(artifacts)
    }

    pub fn load(path: &Path) -> anyhow::Result<Artifacts> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read {} (run `cargo xtask build` first)", path.display()))?;
        Artifacts::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The artifacts named by `KEVENT_BENCH_ARTIFACTS`, else those of the
    /// default profile in this checkout's target directory.
    pub fn from_env() -> anyhow::Result<Artifacts> {
        let path = match std::env::var_os(ARTIFACTS_ENV) {
            Some(p) => PathBuf::from(p),
            None => default_path(),
        };
        Artifacts::load(&path)
    }

    /// Each built module's name and the parameters it accepts, from the
    /// `.ko` files themselves.
    pub fn module_parameters(&self) -> anyhow::Result<BTreeMap<String, std::collections::BTreeSet<String>>> {
        self.modules
            .iter()
            .map(|path| crate::modinfo::read(path).map(|m| (m.name, m.parameters)).map_err(anyhow::Error::from))
            .collect()
    }

    /// A guest with the agent, ready for [`crate::Machine::boot`].
    pub fn guest(&self, cpus: u32, memory_mib: u32, kernel_args: Vec<String>) -> GuestSpec {
        GuestSpec {
            kernel: self.vmlinux.clone(),
            initramfs: self.initramfs.clone(),
            cpus,
            memory_mib,
            clock: Clock::default(),
            kernel_args,
        }
    }

    /// The same kernel with the floor init.
    pub fn floor_guest(&self, cpus: u32, memory_mib: u32) -> GuestSpec {
        GuestSpec { initramfs: self.floor_initramfs.clone(), ..self.guest(cpus, memory_mib, Vec::new()) }
    }
}

/// `<workspace>/target/kevent-bench/default/artifacts`.
pub fn default_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("kevent-bench").join("default").join("artifacts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_round_trip_and_missing_keys_are_named() {
        let a = Artifacts {
            profile: "debug".into(),
            kernel_release: "6.12.57".into(),
            kernel_tree: "/c/src/linux".into(),
            vmlinux: "/c/vmlinux".into(),
            initramfs: "/o/initramfs.cpio".into(),
            floor_initramfs: "/o/floor.cpio".into(),
            cache_dir: "/c".into(),
            runs_dir: "/o/runs".into(),
            modules: vec!["/o/kmessage.ko".into(), "/o/kevent_thermal.ko".into()],
        };
        assert_eq!(Artifacts::parse(&a.to_text()).unwrap(), a);
        let text = a.to_text().replace("vmlinux=/c/vmlinux\n", "");
        assert_eq!(Artifacts::parse(&text).unwrap_err().to_string(), "missing `vmlinux`");
    }
}
