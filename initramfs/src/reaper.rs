//! PID 1's other duty: reaping orphans. A process whose parent dies becomes
//! the agent's child, and stays a zombie until the agent waits for it: a
//! scenario's program that starts a daemon leaves one behind at every exit.
//!
//! The agent's own children are waited for by whoever started them (std's
//! `Child::wait`, by pid), so the reaper must never take one's status. They
//! are registered from their spawn to their wait, and the reaper decides
//! and waits under the same lock: a child cannot exit unregistered in
//! between.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// How often the reaper looks for zombies.
const INTERVAL: Duration = Duration::from_secs(1);

/// The agent's own children not yet waited for.
static OWN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn own() -> MutexGuard<'static, BTreeSet<u32>> {
    OWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spawns `command` as one of the agent's own children, which the reaper
/// leaves to its owner: call [`waited`] once it has been waited for.
pub fn spawn(command: &mut Command) -> io::Result<Child> {
    let mut own = own();
    let child = command.spawn()?;
    own.insert(child.id());
    Ok(child)
}

/// Says that `child`, spawned by [`spawn`], has been waited for: its pid may
/// now be any process's.
pub fn waited(child: &Child) {
    own().remove(&child.id());
}

/// Starts the reaper thread.
pub fn start() -> io::Result<()> {
    thread::Builder::new().name("reaper".into()).spawn(|| loop {
        thread::sleep(INTERVAL);
        reap_orphans();
    })?;
    Ok(())
}

/// Waits for every zombie child of the agent that is not one of its own.
/// The scan of `/proc` takes no lock (spawns go on meanwhile); a candidate
/// is checked against the registry again under the lock, and waited for
/// while it is held.
fn reap_orphans() {
    let Ok(entries) = fs::read_dir("/proc") else { return };
    let zombies: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
        .filter(|pid| zombie_child_of_init(&fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()))
        .collect();
    if zombies.is_empty() {
        return;
    }
    let own = own();
    for pid in zombies.into_iter().filter(|pid| !own.contains(pid)) {
        if let Ok(pid) = i32::try_from(pid) {
            // Only ever a zombie: WNOHANG cannot block.
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Whether a `/proc/PID/stat` line is a zombie whose parent is PID 1: its
/// state and parent follow the command's closing parenthesis (the command
/// itself may hold anything, parentheses and spaces included).
fn zombie_child_of_init(stat: &str) -> bool {
    let Some((_, rest)) = stat.rsplit_once(") ") else { return false };
    let mut fields = rest.split_whitespace();
    fields.next() == Some("Z") && fields.next() == Some("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_zombie_whose_parent_is_init_is_an_orphan_to_reap() {
        assert!(zombie_child_of_init("42 (daemon) Z 1 42 42 0 -1"));
        assert!(zombie_child_of_init("42 (a) Z (b) Z 1 42 42 0 -1"), "a command with \") Z\" in it");
        assert!(!zombie_child_of_init("42 (daemon) S 1 42 42 0 -1"), "alive");
        assert!(!zombie_child_of_init("42 (daemon) Z 7 42 42 0 -1"), "another's child");
        assert!(!zombie_child_of_init(""));
    }
}
