//! The initramfs archives, in the directory of the kernel their modules
//! were built against, and the profile's artifacts file that points at them:
//! the agent's, the floor's, and the agent's with the D-Bus side appended
//! (Debian's dbus-daemon and its shared libraries, the bench's bus
//! configuration, kdbusd and its tap), which only runs with `dbus = true`
//! boot, so that the others unpack nothing of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use kevent_bench::cpio::Archive;
use kevent_bench::sources::Sources;
pub use kevent_bench::Artifacts;
use kevent_wire::{DBUS_CONFIG_PATH, DBUS_DAEMON_PATH, DBUS_TAP_PATH, KDBUSD_PATH, MODULE_DIR, MODULE_LIST_PATH};

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
    let agent_bytes = agent_archive(&agent.agent, modules)?.to_bytes();
    write_if_changed(&initramfs, &agent_bytes)?;
    // The kernel unpacks concatenated archives in order; QEMU takes one file.
    let dbus_initramfs = guest_dir.join("initramfs-dbus.cpio");
    let mut with_dbus = agent_bytes;
    with_dbus.extend(dbus_archive(project, agent)?.to_bytes());
    write_if_changed(&dbus_initramfs, &with_dbus)?;
    let floor_initramfs = guest_dir.join("floor.cpio");
    write_if_changed(&floor_initramfs, &floor_archive(&agent.floor_init)?.to_bytes())?;
    let artifacts = Artifacts {
        profile: kernel.profile.to_owned(),
        kernel_release: kernel.release.clone(),
        kernel_tree: kernel.tree.clone(),
        vmlinux: kernel.vmlinux.clone(),
        initramfs,
        dbus_initramfs,
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

/// The bench's configuration of the guest's system bus, in the source tree.
pub const DBUS_CONFIG_SOURCE: &str = "kdbusd/dbus/system.conf";
/// The guest's machine id (dbus-daemon reads it for `GetMachineId`): fixed,
/// so that every guest is the same machine.
const MACHINE_ID: &str = "6b6576656e742d62656e63682d677374\n";

/// What the D-Bus side adds to the agent's archive.
fn dbus_archive(project: &crate::project::Project, agent: &AgentBinaries) -> anyhow::Result<Archive> {
    let mut archive = Archive::new();
    let daemon = Path::new(DBUS_DAEMON_PATH);
    read(daemon)
        .and_then(|bytes| add_elf(&mut archive, daemon, bytes, DBUS_DAEMON_PATH))
        .context("the guest's bus (install Debian's dbus-daemon: `cargo xtask build` does as root)")?;
    archive.file(KDBUSD_PATH, 0o755, read(&agent.kdbusd)?);
    archive.file(DBUS_TAP_PATH, 0o755, read(&agent.dbus_tap)?);
    archive.file(DBUS_CONFIG_PATH, 0o644, read(&project.root.join(DBUS_CONFIG_SOURCE))?);
    archive.file("/etc/machine-id", 0o444, MACHINE_ID.as_bytes().to_vec());
    // For programs that look root up by name or number (dbus-daemon's
    // policy code does, to name a connection's user).
    archive.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
    archive.file("/etc/group", 0o644, b"root:x:0:\n".to_vec());
    archive.dir("/run/dbus");
    Ok(archive)
}

/// Adds the ELF at `host`, whose bytes are `data`, as `guest`, with the
/// shared libraries and loader it needs, at their host paths.
pub fn add_elf(archive: &mut Archive, host: &Path, data: Vec<u8>, guest: &str) -> anyhow::Result<()> {
    if !is_elf(&data) {
        bail!("{} is not an ELF file", host.display());
    }
    for library in shared_libraries(host)? {
        archive.file(&library.to_string_lossy(), 0o755, read(&library)?);
    }
    archive.file(guest, 0o755, data);
    Ok(())
}

pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// The shared libraries (and loader) an ELF needs, as `ldd` resolves them
/// on the host; none for a static binary.
pub fn shared_libraries(elf: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(elf).output().context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", elf.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: a shared library is missing on the host: {}", elf.display(), line.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}
