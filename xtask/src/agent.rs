//! The guest agent, the floor init, kdbusd and its tap: static glibc
//! binaries, built by one cargo invocation.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::process::run_logged;
use crate::project::Project;

/// The target is always named: without `--target`, `+crt-static` would also
/// apply to build scripts and proc-macros, which cannot be static.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const PROFILE: &str = "agent";

pub struct AgentBinaries {
    pub agent: PathBuf,
    pub floor_init: PathBuf,
    pub kdbusd: PathBuf,
    pub dbus_tap: PathBuf,
}

pub fn build(project: &Project) -> anyhow::Result<AgentBinaries> {
    // Its own target directory: different RUSTFLAGS would otherwise make every
    // host build and every agent build invalidate the other.
    let target_dir = project.out.join("agent-target");
    std::fs::create_dir_all(&project.out).with_context(|| format!("create {}", project.out.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_logged(
        Command::new(cargo)
            .current_dir(&project.root)
            .args(["build", "--quiet", "--package", "kevent-agent", "--package", "kdbusd", "--bins"])
            .args(["--profile", PROFILE, "--target", TARGET])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static"),
        "agent build",
        &project.out.join("agent-build.log"),
    )?;
    let bin_dir = bin_dir(project);
    Ok(AgentBinaries {
        agent: bin_dir.join("kevent-agent"),
        floor_init: bin_dir.join("floor-init"),
        kdbusd: bin_dir.join("kdbusd"),
        dbus_tap: bin_dir.join("kevent-dbus-tap"),
    })
}

/// The agent binary the last build of this checkout made.
pub fn binary(project: &Project) -> PathBuf {
    bin_dir(project).join("kevent-agent")
}

fn bin_dir(project: &Project) -> PathBuf {
    project.out.join("agent-target").join(TARGET).join(PROFILE)
}
