//! What every guest-booting test needs: the built guest and a config.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kevent_bench::{Accel, Artifacts, GuestSpec, MachineConfig};

/// The guest `cargo xtask build` made (`cargo xtask test` says which).
pub fn artifacts() -> Artifacts {
    Artifacts::from_env().unwrap_or_else(|e| panic!("{e:#}\nthe guest tests need `cargo xtask test`"))
}

/// A per-test directory under the runs directory, emptied first.
pub fn run_dir(artifacts: &Artifacts, test: &str) -> PathBuf {
    let dir = artifacts.runs_dir.join("tests").join(format!("{test}-{}", artifacts.profile));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn config(test: &str, guest: GuestSpec) -> MachineConfig {
    MachineConfig::new(guest, Accel::from_env(), run_dir(&artifacts(), test))
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
