//! The sources a guest is built from, and what changed in them since.
//!
//! `cargo xtask build` records every such file with its fingerprint in the
//! artifacts file, and every guest test checks them again
//! ([`crate::Artifacts::from_env`]), so that no test, whichever way cargo
//! was started, runs an old module or agent against new sources.
//!
//! What counts, relative to the workspace root:
//! - `kmod/`, at any depth: `Kbuild`, `Makefile`, `*.c` and `*.h`, except
//!   `*.mod.c`, which Kbuild writes;
//! - `initramfs/`, `wire/` and `kdbusd/` (the agent, its protocol crate,
//!   kdbusd and its tap): `Cargo.toml`, `build.rs` and every `*.rs` under
//!   `src/`; and the guest's bus configuration, `kdbusd/dbus/system.conf`;
//! - the workspace's `Cargo.toml` (the agent's build profile) and
//!   `Cargo.lock` (its dependencies' versions);
//! - the profile's fragments in `kernel-config/`.
//!
//! A name starting with `.` (editor swap and lock files, `.git`) or ending in
//! `~` never counts, at any depth, nor does anything that is not a regular
//! file (an editor's lock link that points nowhere). The build tool's own
//! code (`xtask/`, `src/`) does not count: a change there changes how the
//! guest is built, and `cargo xtask test` builds before it tests.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::fingerprint::Fingerprint;

/// Crates whose sources make the agent, beside the workspace manifest.
const AGENT_CRATES: &[&str] = &["initramfs", "wire", "kdbusd"];
const WORKSPACE_FILES: &[&str] = &["Cargo.toml", "Cargo.lock", "kdbusd/dbus/system.conf"];

/// Source files by path relative to the workspace root (`/`-separated), each
/// with the fingerprint of its contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<String, String>);

impl Sources {
    /// Reads every source of the guest under `root`, with the kernel-config
    /// fragments of the profile (file names in `kernel-config/`).
    pub fn scan(root: &Path, fragments: &[String]) -> anyhow::Result<Sources> {
        let mut files = Vec::new();
        for rel in kmod_files(&root.join("kmod"))? {
            files.push(Path::new("kmod").join(rel));
        }
        for krate in AGENT_CRATES {
            let dir = Path::new(krate);
            files.extend(["Cargo.toml", "build.rs"].map(|name| dir.join(name)));
            for rel in walk(&root.join(krate).join("src"), &|name| name.ends_with(".rs"))? {
                files.push(dir.join("src").join(rel));
            }
        }
        files.extend(WORKSPACE_FILES.iter().map(PathBuf::from));
        files.extend(fragments.iter().map(|name| Path::new("kernel-config").join(name)));
        let mut sources = Sources::default();
        for rel in files {
            let path = root.join(&rel);
            let data = match fs::read(&path) {
                Ok(data) => data,
                // Optional files (build.rs) and files the check expects but
                // that are gone: both are simply absent from the record.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
            };
            let name = rel.to_str().with_context(|| format!("{}: a source name must be UTF-8", path.display()))?;
            if name.contains('\n') {
                bail!("{}: a source name cannot hold a line break (the record is one line per file)", path.display());
            }
            sources.insert(name.to_owned(), Fingerprint::new().add(&data).hex());
        }
        Ok(sources)
    }

    /// Records one file; `fingerprint` is as [`Sources::scan`] makes it.
    pub fn insert(&mut self, path: String, fingerprint: String) {
        self.0.insert(path, fingerprint);
    }

    /// `(path, fingerprint)`, sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(p, f)| (p.as_str(), f.as_str()))
    }

    /// No file recorded: an artifacts file without `source=` lines, which is refused.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What differs in `now` from this record, one `path changed|added|removed` each.
    pub fn changes(&self, now: &Sources) -> Vec<String> {
        let mut changes = Vec::new();
        for (path, fingerprint) in &self.0 {
            match now.0.get(path) {
                None => changes.push(format!("{path} removed")),
                Some(f) if f != fingerprint => changes.push(format!("{path} changed")),
                Some(_) => {}
            }
        }
        changes.extend(now.0.keys().filter(|p| !self.0.contains_key(*p)).map(|p| format!("{p} added")));
        changes
    }
}

/// The module sources under `kmod_dir`, relative to it, sorted: exactly what
/// the module build mirrors and [`Sources::scan`] records.
pub fn kmod_files(kmod_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    walk(kmod_dir, &is_kmod_source)
}

fn is_kmod_source(name: &str) -> bool {
    name == "Kbuild"
        || name == "Makefile"
        || ((name.ends_with(".c") || name.ends_with(".h")) && !name.ends_with(".mod.c"))
}

/// Whether a name is one the tools or editors make, never a source.
fn is_ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~')
}

/// Regular files under `dir` whose name `wanted`
/// accepts, relative to `dir`, sorted; none if `dir` does not exist.
fn walk(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk_into(dir, Path::new(""), wanted, &mut files)?;
    files.sort();
    Ok(files)
}

fn walk_into(root: &Path, rel: &Path, wanted: &dyn Fn(&str) -> bool, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound && rel.as_os_str().is_empty() => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}: a name in a source directory must be UTF-8", entry.path().display());
        };
        if is_ignored(name) {
            continue;
        }
        // Links to directories are not followed (no loops); links to files
        // are, as Kbuild and cargo follow them.
        let is_dir = entry.file_type().with_context(|| format!("stat {}", entry.path().display()))?.is_dir();
        if is_dir {
            walk_into(root, &rel.join(name), wanted, files)?;
        } else if wanted(name) && fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            files.push(rel.join(name));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A workspace with one file of each kind that counts.
    pub fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in [
            ("kmod/Kbuild", "obj-m += a.o\n"),
            ("kmod/Makefile", "all:\n"),
            ("kmod/a.c", "int a;\n"),
            ("kmod/include/b.h", "#define B 1\n"),
            ("initramfs/Cargo.toml", "[package]\n"),
            ("initramfs/src/main.rs", "fn main() {}\n"),
            ("initramfs/src/bin/floor-init.rs", "fn main() {}\n"),
            ("wire/Cargo.toml", "[package]\n"),
            ("wire/src/lib.rs", "\n"),
            ("Cargo.toml", "[workspace]\n"),
            ("Cargo.lock", "version = 4\n"),
            ("kernel-config/bench.config", "CONFIG_PVH=y\n"),
            ("kernel-config/debug.config", "CONFIG_LOCKDEP=y\n"),
        ] {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    fn bench() -> Vec<String> {
        vec!["bench.config".to_owned()]
    }

    #[test]
    fn every_kind_of_source_is_recorded() {
        let ws = workspace();
        let sources = Sources::scan(ws.path(), &bench()).unwrap();
        let paths: Vec<&str> = sources.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "Cargo.lock",
                "Cargo.toml",
                "initramfs/Cargo.toml",
                "initramfs/src/bin/floor-init.rs",
                "initramfs/src/main.rs",
                "kernel-config/bench.config",
                "kmod/Kbuild",
                "kmod/Makefile",
                "kmod/a.c",
                "kmod/include/b.h",
                "wire/Cargo.toml",
                "wire/src/lib.rs",
            ]
        );
    }

    #[test]
    fn changed_added_and_removed_sources_are_named() {
        let ws = workspace();
        let built = Sources::scan(ws.path(), &bench()).unwrap();
        fs::write(ws.path().join("kmod/a.c"), "int a = 1;\n").unwrap();
        fs::write(ws.path().join("kmod/include/c.h"), "\n").unwrap();
        fs::write(ws.path().join("initramfs/build.rs"), "fn main() {}\n").unwrap();
        fs::remove_file(ws.path().join("wire/src/lib.rs")).unwrap();
        let now = Sources::scan(ws.path(), &bench()).unwrap();
        assert_eq!(
            built.changes(&now),
            ["kmod/a.c changed", "wire/src/lib.rs removed", "initramfs/build.rs added", "kmod/include/c.h added"]
        );
    }

    #[test]
    fn editor_files_build_outputs_and_other_profiles_do_not_count() {
        let ws = workspace();
        let built = Sources::scan(ws.path(), &bench()).unwrap();
        for (path, text) in [
            ("kmod/.a.c.swp", "vim"),
            ("kmod/a.c~", "backup"),
            ("kmod/#a.c#", "emacs autosave"),
            ("kmod/a.mod.c", "Kbuild output"),
            ("kmod/a.o", "object"),
            ("kmod/.git/x.c", "a hidden directory"),
            ("kmod/notes.txt", "not read by Kbuild"),
            ("initramfs/target/x.rs", "not under src/"),
            ("target/kevent-bench/kmod/a.c", "an output"),
            ("initramfs/src/.main.rs.swp", "vim"),
            ("kernel-config/debug.config", "CONFIG_LOCKDEP=n\n"),
        ] {
            let path = ws.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        // Emacs marks a file being edited with a link that points nowhere.
        std::os::unix::fs::symlink("user@host.1234:1", ws.path().join("kmod/.#a.c")).unwrap();
        std::os::unix::fs::symlink("/nowhere", ws.path().join("kmod/dangling.c")).unwrap();
        let now = Sources::scan(ws.path(), &bench()).unwrap();
        assert_eq!(built.changes(&now), Vec::<String>::new());
    }

    #[test]
    fn the_workspace_sources_are_found_where_the_build_reads_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let sources = Sources::scan(root, &bench()).unwrap();
        for path in
            ["kmod/Kbuild", "kmod/include/kevent_sensor.h", "initramfs/src/main.rs", "wire/src/lib.rs", "Cargo.lock"]
        {
            assert!(sources.iter().any(|(p, _)| p == path), "{path} is not recorded");
        }
        assert!(sources.iter().all(|(p, _)| !p.starts_with("target/") && !p.starts_with("src/")));
    }
}
