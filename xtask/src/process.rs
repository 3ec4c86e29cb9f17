//! Running build tools with their output kept, and shown when they fail.
//! Every tool runs as a guarded process group (`kevent_bench::process`):
//! killing `cargo xtask` takes make and its compilers down with it.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use kevent_bench::process;

/// Runs `cmd` with stdout and stderr appended to `log`; on failure the error
/// carries the log's last lines, so the cause is on screen.
pub fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> anyhow::Result<()> {
    let file =
        File::options().create(true).append(true).open(log).with_context(|| format!("open {}", log.display()))?;
    let status = process::spawn(cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file))
        .and_then(|mut child| child.wait())
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!("{what} failed ({status}); last lines of {}:\n{tail}", log.display());
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; stderr is passed through.
pub fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = process::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()))
        .and_then(process::Child::wait_with_output)
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
