//! The built guest, as `cargo xtask build` describes it for the host and the
//! tests: one `key=value` file per kernel profile, pointing at the outputs
//! built for that profile's kernel, with a record of the sources they were
//! built from.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::qemu::{Clock, GuestSpec};
use crate::sources::Sources;
use crate::topology::Topology;

/// Environment variable naming the artifacts file to use.
pub const ARTIFACTS_ENV: &str = "KEVENT_BENCH_ARTIFACTS";

/// One kernel profile's built guest: where its parts are and what they were
/// built from. The artifacts file is [`Self::to_text`] of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// The kernel profile (`default` or `debug`, `--kernel-profile`).
    pub profile: String,
    /// The kernel's `include/config/kernel.release`; the agent's greeting must report it.
    pub kernel_release: String,
    /// The kernel source tree, for its scripts (checkpatch).
    pub kernel_tree: PathBuf,
    /// The uncompressed kernel every guest boots (PVH).
    pub vmlinux: PathBuf,
    /// Agent, modules and module list.
    pub initramfs: PathBuf,
    /// The same with the D-Bus side appended: dbus-daemon and its
    /// libraries, the bench's bus configuration, kdbusd and its tap.
    pub dbus_initramfs: PathBuf,
    /// The floor: only an init that restarts the machine at once.
    pub floor_initramfs: PathBuf,
    /// Host directory of the kernel cache, for the accelerator probe verdict.
    pub cache_dir: PathBuf,
    /// Where runs keep their console logs.
    pub runs_dir: PathBuf,
    /// Built modules in load order.
    pub modules: Vec<PathBuf>,
    /// The profile's kernel-config fragments, in merge order.
    pub fragments: Vec<String>,
    /// Every source the guest was built from ([`crate::sources`]).
    pub sources: Sources,
    /// The command that builds these artifacts again.
    pub rebuild: String,
}

impl Artifacts {
    /// The artifacts file: one `key=value` per line, `modules` joined by `:`,
    /// `fragments` by `,`, then one `source=FINGERPRINT PATH` per source.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| writeln!(out, "{k}={v}").expect("writing to a String");
        line("profile", &self.profile);
        line("kernel_release", &self.kernel_release);
        line("kernel_tree", &self.kernel_tree.to_string_lossy());
        line("vmlinux", &self.vmlinux.to_string_lossy());
        line("initramfs", &self.initramfs.to_string_lossy());
        line("dbus_initramfs", &self.dbus_initramfs.to_string_lossy());
        line("floor_initramfs", &self.floor_initramfs.to_string_lossy());
        line("cache_dir", &self.cache_dir.to_string_lossy());
        line("runs_dir", &self.runs_dir.to_string_lossy());
        let modules: Vec<_> = self.modules.iter().map(|m| m.to_string_lossy().into_owned()).collect();
        line("modules", &modules.join(":"));
        line("fragments", &self.fragments.join(","));
        line("rebuild", &self.rebuild);
        for (path, fingerprint) in self.sources.iter() {
            line("source", &format!("{fingerprint} {path}"));
        }
        out
    }

    /// Reads [`Self::to_text`]'s format back; a missing, repeated or unknown
    /// key, or no `source` line, is an error.
    pub fn parse(text: &str) -> anyhow::Result<Artifacts> {
        let mut fields = BTreeMap::new();
        let mut sources = Sources::default();
        for (n, line) in text.lines().enumerate() {
            let Some((k, v)) = line.split_once('=') else { bail!("line {}: expected key=value", n + 1) };
            if k == "source" {
                let Some((fingerprint, path)) = v.split_once(' ') else {
                    bail!("line {}: expected source=FINGERPRINT PATH", n + 1);
                };
                sources.insert(path.to_owned(), fingerprint.to_owned());
            } else if fields.insert(k, v).is_some() {
                bail!("line {}: `{k}` a second time", n + 1);
            }
        }
        if sources.is_empty() {
            bail!("no `source` lines: the record of what the guest was built from");
        }
        let mut take = |k: &str| fields.remove(k).map(str::to_owned).with_context(|| format!("missing `{k}`"));
        let artifacts = Artifacts {
            profile: take("profile")?,
            kernel_release: take("kernel_release")?,
            kernel_tree: take("kernel_tree")?.into(),
            vmlinux: take("vmlinux")?.into(),
            initramfs: take("initramfs")?.into(),
            dbus_initramfs: take("dbus_initramfs")?.into(),
            floor_initramfs: take("floor_initramfs")?.into(),
            cache_dir: take("cache_dir")?.into(),
            runs_dir: take("runs_dir")?.into(),
            modules: take("modules")?.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
            fragments: take("fragments")?.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            rebuild: take("rebuild")?,
            sources,
        };
        if let Some(key) = fields.keys().next() {
            bail!("unknown key `{key}`");
        }
        Ok(artifacts)
    }

    /// The artifacts file at `path`, as it is: whether its guest is up to
    /// date is [`Artifacts::check_sources`]'s business.
    pub fn load(path: &Path) -> anyhow::Result<Artifacts> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read {} (run `cargo xtask build` first)", path.display()))?;
        Artifacts::parse(&text).with_context(|| format!("in {} (`cargo xtask build` writes it anew)", path.display()))
    }

    /// The artifacts named by `KEVENT_BENCH_ARTIFACTS`, else those of the
    /// default profile in this checkout's target directory, refused if their
    /// guest was built from other sources than this checkout's: however the
    /// tests were started (`cargo test`, `cargo insta test`), they never run
    /// an old module or agent.
    pub fn from_env() -> anyhow::Result<Artifacts> {
        let path = path_from_env();
        let artifacts = Artifacts::load(&path)?;
        artifacts.check_sources(Path::new(env!("CARGO_MANIFEST_DIR"))).with_context(|| path.display().to_string())?;
        Ok(artifacts)
    }

    /// Refuses these artifacts if the sources under `root` differ from those
    /// they were built from, naming what changed and the command that rebuilds.
    pub fn check_sources(&self, root: &Path) -> anyhow::Result<()> {
        let now = Sources::scan(root, &self.fragments)?;
        let changes = self.sources.changes(&now);
        if changes.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 5;
        let mut list = changes[..changes.len().min(SHOWN)].join(", ");
        if changes.len() > SHOWN {
            write!(list, " and {} more", changes.len() - SHOWN).expect("writing to a String");
        }
        bail!(
            "the guest was built from other sources than those in {} ({list}): `{}` rebuilds it \
             (`cargo xtask test` builds, then runs every test)",
            root.display(),
            self.rebuild
        )
    }

    /// Each built module's name and the parameters it accepts, from the
    /// `.ko` files themselves.
    pub fn module_parameters(&self) -> anyhow::Result<BTreeMap<String, std::collections::BTreeSet<String>>> {
        self.modules
            .iter()
            .map(|path| crate::modinfo::read(path).map(|m| (m.name, m.parameters)).map_err(anyhow::Error::from))
            .collect()
    }

    /// A guest with the agent, ready for [`crate::Machine::boot`]: `cpus`
    /// CPUs, each its own package.
    pub fn guest(&self, cpus: u32, memory_mib: u32, kernel_args: Vec<String>) -> GuestSpec {
        self.guest_of(Topology::flat(cpus), memory_mib, kernel_args)
    }

    /// [`Self::guest`] with the CPUs of `topology`.
    pub fn guest_of(&self, topology: Topology, memory_mib: u32, kernel_args: Vec<String>) -> GuestSpec {
        GuestSpec {
            kernel: self.vmlinux.clone(),
            initramfs: self.initramfs.clone(),
            topology,
            memory_mib,
            clock: Clock::default(),
            kernel_args,
            dbus_socket: None,
        }
    }

    /// `guest` with the D-Bus side: its archive, and the agent told to
    /// start it.
    pub fn with_dbus(&self, guest: GuestSpec) -> GuestSpec {
        let mut kernel_args = guest.kernel_args;
        kernel_args.push(kevent_wire::DBUS_ARG.to_owned());
        GuestSpec { initramfs: self.dbus_initramfs.clone(), kernel_args, ..guest }
    }

    /// The same kernel with the floor init.
    pub fn floor_guest(&self, cpus: u32, memory_mib: u32) -> GuestSpec {
        GuestSpec { initramfs: self.floor_initramfs.clone(), ..self.guest(cpus, memory_mib, Vec::new()) }
    }
}

/// The artifacts file `KEVENT_BENCH_ARTIFACTS` names, else [`default_path`].
pub fn path_from_env() -> PathBuf {
    match std::env::var_os(ARTIFACTS_ENV) {
        Some(p) => PathBuf::from(p),
        None => default_path(),
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
    use std::fs;

    use super::*;
    use crate::sources::tests::workspace;

    fn artifacts(sources: Sources) -> Artifacts {
        Artifacts {
            profile: "debug".into(),
            kernel_release: "6.12.57".into(),
            kernel_tree: "/c/src/linux".into(),
            vmlinux: "/c/vmlinux".into(),
            initramfs: "/o/initramfs.cpio".into(),
            dbus_initramfs: "/o/initramfs-dbus.cpio".into(),
            floor_initramfs: "/o/floor.cpio".into(),
            cache_dir: "/c".into(),
            runs_dir: "/o/runs".into(),
            modules: vec!["/o/kmessage.ko".into(), "/o/kevent_thermal.ko".into()],
            fragments: vec!["bench.config".into(), "debug.config".into()],
            sources,
            rebuild: "cargo xtask build --kernel-profile debug".into(),
        }
    }

    #[test]
    fn artifacts_round_trip_and_bad_files_are_refused_with_the_key() {
        let mut sources = Sources::default();
        sources.insert("kmod/a b.c".into(), "0123456789abcdef".into());
        sources.insert("Cargo.lock".into(), "fedcba9876543210".into());
        let a = artifacts(sources);
        assert_eq!(Artifacts::parse(&a.to_text()).unwrap(), a);
        let err = |text: String| Artifacts::parse(&text).unwrap_err().to_string();
        assert_eq!(err(a.to_text().replace("vmlinux=/c/vmlinux\n", "")), "missing `vmlinux`");
        assert_eq!(err(a.to_text() + "vmlinux=/d\n"), "line 15: `vmlinux` a second time");
        assert_eq!(err(a.to_text() + "colour=blue\n"), "unknown key `colour`");
        let without_sources: String =
            a.to_text().lines().filter(|l| !l.starts_with("source=")).map(|l| l.to_owned() + "\n").collect();
        assert!(err(without_sources).starts_with("no `source` lines"));
    }

    #[test]
    fn a_guest_built_from_other_sources_is_refused_with_what_changed_and_the_command() {
        let ws = workspace();
        let a = artifacts(Sources::scan(ws.path(), &["bench.config".into(), "debug.config".into()]).unwrap());
        a.check_sources(ws.path()).unwrap();
        fs::write(ws.path().join("kmod/.a.c.swp"), "editor").unwrap();
        a.check_sources(ws.path()).unwrap();
        fs::write(ws.path().join("kmod/a.c"), "int a = 2;\n").unwrap();
        fs::write(ws.path().join("kernel-config/debug.config"), "CONFIG_KASAN=y\n").unwrap();
        let err = a.check_sources(ws.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "the guest was built from other sources than those in {} (kernel-config/debug.config changed, \
                 kmod/a.c changed): `cargo xtask build --kernel-profile debug` rebuilds it \
                 (`cargo xtask test` builds, then runs every test)",
                ws.path().display()
            )
        );
    }

    #[test]
    fn many_changes_are_counted_beyond_the_first_five() {
        let ws = workspace();
        let a = artifacts(Sources::scan(ws.path(), &["bench.config".into(), "debug.config".into()]).unwrap());
        for i in 0..7 {
            fs::write(ws.path().join(format!("kmod/new{i}.c")), "").unwrap();
        }
        let err = a.check_sources(ws.path()).unwrap_err().to_string();
        assert!(err.contains("kmod/new4.c added and 2 more)"), "{err}");
    }
}
