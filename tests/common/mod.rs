//! What every guest-booting test needs: the built guest and a config.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kevent_bench::{Accel, Artifacts, GuestSpec, MachineConfig};

/// The guest `cargo xtask build` made (`cargo xtask test` says which),
/// refused if it was built from other sources than this checkout's; the
/// error names the command that rebuilds it.
pub fn artifacts() -> Artifacts {
    Artifacts::from_env().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A per-test directory under the runs directory, emptied first.
pub fn run_dir(artifacts: &Artifacts, test: &str) -> PathBuf {
    let dir = artifacts.runs_dir.join("tests").join(format!("{test}-{}", artifacts.profile));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn config(test: &str, guest: GuestSpec) -> MachineConfig {
    MachineConfig::new(guest, Accel::from_env(), run_dir(&artifacts(), test))
        .unwrap_or_else(|f| panic!("{}", f.report()))
}

/// Compiles `tests/guest/<name>.c` into a static binary for the guest.
pub fn static_guest_program(name: &str, out_dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest").join(format!("{name}.c"));
    std::fs::create_dir_all(out_dir).unwrap();
    let binary = out_dir.join(name);
    let status = Command::new("cc")
        .args(["-static", "-Os", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed for {}", source.display());
    binary
}

/// An archive holding the tests' guest `programs` (each `tests/guest/NAME.c`,
/// built static into `dir`) as `/bin/NAME`, for [`initramfs_with`].
pub fn guest_programs(programs: &[&str], dir: &Path) -> kevent_bench::cpio::Archive {
    let mut extra = kevent_bench::cpio::Archive::new();
    for program in programs {
        let binary = static_guest_program(program, dir);
        extra.file(&format!("/bin/{program}"), 0o755, std::fs::read(binary).unwrap());
    }
    extra
}

/// The bench's initramfs `base` with `extra` appended, written as
/// `dir/initramfs.cpio`.
pub fn initramfs_with(extra: &kevent_bench::cpio::Archive, base: &Path, dir: &Path) -> PathBuf {
    let initramfs = dir.join("initramfs.cpio");
    extra.append_to(base, &initramfs).unwrap();
    initramfs
}

/// `base` (the bench's plain or D-Bus archive) with the tests' guest
/// `programs` appended, in a run directory of its own for `test`: the
/// directory, and the archive's path in it.
pub fn initramfs_with_programs(test: &str, programs: &[&str], base: &Path) -> (PathBuf, PathBuf) {
    let dir = run_dir(&artifacts(), &format!("{test}-initramfs"));
    let initramfs = initramfs_with(&guest_programs(programs, &dir), base, &dir);
    (dir, initramfs)
}

/// Bound of each agent request in the tests.
pub const BOUND: std::time::Duration = std::time::Duration::from_secs(60);
/// The kmessage unit the events module registers by default.
pub const NETLINK_KMESSAGE: u32 = 31;

/// A 2-CPU guest whose modules get `params` (`MODULE.KEY=VALUE` each).
pub fn config_with_params(test: &str, params: &[(&str, &str, &str)]) -> MachineConfig {
    let args = params.iter().map(|(module, key, value)| kevent_wire::module_param_arg(module, key, value)).collect();
    config(test, artifacts().guest(2, 256, args))
}

pub fn boot(config: &MachineConfig) -> kevent_bench::Machine {
    kevent_bench::Machine::boot(config).unwrap_or_else(|f| panic!("{}", f.report()))
}

pub fn shut_down(machine: kevent_bench::Machine) {
    machine.shutdown(std::time::Duration::from_secs(15)).unwrap_or_else(|f| panic!("{}", f.report()));
}

pub fn read(machine: &mut kevent_bench::Machine, path: &str) -> String {
    match machine.request(kevent_wire::Command::ReadFile { path: path.into() }, BOUND).unwrap().outcome {
        kevent_wire::Outcome::Data(data) => String::from_utf8(data).unwrap(),
        other => panic!("read {path}: {other:?}"),
    }
}

pub fn write(machine: &mut kevent_bench::Machine, path: &str, data: &str) -> kevent_wire::Outcome {
    let command = kevent_wire::Command::WriteFile { path: path.into(), data: data.into() };
    machine.request(command, BOUND).unwrap().outcome
}

pub fn kmessages(datagrams: &[kevent_wire::Datagram]) -> Vec<&kevent_wire::Datagram> {
    datagrams.iter().filter(|d| d.protocol == NETLINK_KMESSAGE).collect()
}

pub fn uevents(datagrams: &[kevent_wire::Datagram]) -> Vec<&kevent_wire::Datagram> {
    datagrams.iter().filter(|d| d.protocol == kevent_bench::events::NETLINK_KOBJECT_UEVENT).collect()
}
