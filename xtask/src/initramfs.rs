//! The two initramfs archives, in the directory of the kernel their modules
//! were built against, and the profile's artifacts file that points at them.

use std::fs;
use std::path::Path;

use anyhow::Context;
use kevent_bench::cpio::Archive;
use kevent_bench::sources::Sources;
pub use kevent_bench::Artifacts;
use kevent_wire::{MODULE_DIR, MODULE_LIST_PATH};

use crate::agent::AgentBinaries;
use crate::flags::BuildFlags;
use crate::fsutil::write_if_changed;
use crate::kernel::Kernel;
use crate::kmod::Module;
use crate::project::Project;

/// Writes the archives into `guest_dir` (locked by the caller), then the
/// profile's artifacts file, recording `sources` as what all of it was built from.
pub fn assemble(
    project: &Project,
    flags: &BuildFlags,
    guest_dir: &Path,
    kernel: &Kernel,
    modules: &[Module],
    agent: &AgentBinaries,
    sources: Sources,
) -> anyhow::Result<Artifacts> {
    let initramfs = guest_dir.join("initramfs.cpio");
    write_if_changed(&initramfs, &agent_archive(&agent.agent, modules)?.to_bytes())?;
    let floor_initramfs = guest_dir.join("floor.cpio");
    write_if_changed(&floor_initramfs, &floor_archive(&agent.floor_init)?.to_bytes())?;
    let artifacts = Artifacts {
        profile: kernel.profile.to_owned(),
        kernel_release: kernel.release.clone(),
        kernel_tree: kernel.tree.clone(),
        vmlinux: kernel.vmlinux.clone(),
        initramfs,
        floor_initramfs,
        cache_dir: project.cache.clone(),
        runs_dir: project.out.join("runs"),
        modules: modules.iter().map(|m| m.path.clone()).collect(),
        fragments: flags.profile.fragments().iter().map(|f| (*f).to_owned()).collect(),
        sources,
        rebuild: flags.rebuild_command(kernel.user_tree.then_some(kernel.tree.as_path())),
    };
    write_if_changed(&project.artifacts_file(kernel.profile), artifacts.to_text().as_bytes())?;
    Ok(artifacts)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// `/dev/console` must exist before /init runs: the kernel opens it for
/// init's stdin, stdout and stderr, and devtmpfs is not mounted yet.
fn base_archive(init: &Path) -> anyhow::Result<Archive> {
    let mut archive = Archive::new();
    archive.char_device("/dev/console", 0o600, 5, 1).file("/init", 0o755, read(init)?);
    Ok(archive)
}

pub fn agent_archive(agent: &Path, modules: &[Module]) -> anyhow::Result<Archive> {
    let mut archive = base_archive(agent)?;
    let mut list = String::new();
    for module in modules {
        let file_name = format!("{}.ko", module.name);
        archive.file(&format!("{MODULE_DIR}/{file_name}"), 0o644, read(&module.path)?);
        list.push_str(&file_name);
        list.push('\n');
    }
    archive.file(MODULE_LIST_PATH, 0o644, list.into_bytes());
    Ok(archive)
}

fn floor_archive(floor_init: &Path) -> anyhow::Result<Archive> {
    base_archive(floor_init)
}
