//! Running build tools with their output kept, and shown when they fail.
//! Every tool runs as a guarded process group (`kevent_bench::process`):
//! killing `cargo xtask` takes make and its compilers down with it.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use kevent_bench::process;

/// Runs `cmd` with stdout and stderr appended to `log`; on failure the error
/// carries the log's last lines, so the cause is on screen, or only the line
/// that says the disk is full or read-only: then every later line says the
/// same.
pub fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> anyhow::Result<()> {
    let file =
        File::options().create(true).append(true).open(log).with_context(|| format!("open {}", log.display()))?;
    let stderr = file.try_clone().with_context(|| format!("open {}", log.display()))?;
    let status = process::spawn(cmd.stdin(Stdio::null()).stdout(file).stderr(stderr))
        .and_then(|mut child| child.wait())
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((line, meaning)) = storage_failure(&text) {
            bail!("{what} failed ({status}): {meaning}: {line} (all of its output is in {})", log.display());
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!("{what} failed ({status}); last lines of {}:\n{tail}", log.display());
    }
    Ok(())
}

/// The first line of a tool's output that says it could not write at all,
/// with what that means. The tools name the file themselves.
pub fn storage_failure(output: &str) -> Option<(&str, &'static str)> {
    const CAUSES: &[(&str, &str)] = &[
        ("No space left on device", "the disk is full"),
        ("Disk quota exceeded", "the disk quota is exhausted"),
        ("Read-only file system", "the file system is read-only"),
    ];
    output.lines().find_map(|line| {
        CAUSES.iter().find(|(message, _)| line.contains(message)).map(|(_, meaning)| (line.trim(), *meaning))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_could_not_write_is_reported_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("make.log");
        let script = "echo CC a.o; for i in 1 2 3; do echo \"a$i.o: No space left on device\" >&2; done; exit 2";
        let err = run_logged(Command::new("sh").args(["-c", script]), "kernel build", &log).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "kernel build failed (exit status: 2): the disk is full: a1.o: No space left on device \
                 (all of its output is in {})",
                log.display()
            )
        );
    }

    #[test]
    fn any_other_failure_shows_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("make.log");
        let err = run_logged(Command::new("sh").args(["-c", "echo one; echo two >&2; exit 1"]), "build", &log)
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("build failed (exit status: 1); last lines of {}:\none\ntwo", log.display()));
    }
}
