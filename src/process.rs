//! Every child process the bench starts (QEMU, make, cargo, the test
//! runner) follows one rule: it runs in a process group of its own, and
//! that whole group dies with the bench, however the bench ends.
//!
//! - A dropped [`Child`] takes its group down (a QEMU wrapper script that
//!   does not `exec` leaves QEMU in the same group).
//! - On SIGINT or SIGTERM ([`exit_on_signals`]) every group is terminated,
//!   the waits that were watching them end, destructors run (socket
//!   directories are removed), and the bench exits 130 or 143.
//! - On SIGKILL nothing of the bench runs any more: a guard process, forked
//!   at the first spawn, holds the read end of a pipe only the bench writes
//!   to. When the bench dies the pipe reaches end of file and the guard
//!   terminates every group still registered, then exits.
//!
//! Groups are used rather than direct children because make and the test
//! runner have children of their own, and a QEMU wrapper may not exec.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a group gets between SIGTERM and SIGKILL: make and the test
/// runner pass SIGTERM on to their own children.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);
/// Most groups the guard keeps track of at once; a bench runs a handful.
const GUARD_SLOTS: usize = 256;

/// A running child in its own process group.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    group: i32,
}

/// Starts `command` as the leader of a new process group, registered with
/// the guard. `command` may carry its own `pre_exec` hooks.
pub fn spawn(command: &mut Command) -> io::Result<Child> {
    let child = command.process_group(0).spawn()?;
    let group = child.id() as i32;
    registry().add(group);
    Ok(Child { child, group })
}

impl Child {
    /// The child's pid, which is also its process group id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The standard-stream handles and the rest of `std::process::Child`.
    pub fn inner(&mut self) -> &mut std::process::Child {
        &mut self.child
    }

    /// The leader's exit status if it has exited, without blocking; the rest
    /// of the group dies when this is dropped.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Blocks until the leader exits, without a bound: for children that end
    /// on their own (builds, the test runner); guests use [`Self::wait_timeout`].
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Waits at most `bound` for the child to exit.
    pub fn wait_timeout(&mut self, bound: Duration) -> io::Result<Option<ExitStatus>> {
        crate::wait::until(bound, Duration::from_millis(5), || self.child.try_wait().transpose()).transpose()
    }

    /// Kills the whole group at once and reaps the child.
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.group), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Runs the child to completion like [`Command::output`] would, but as
    /// a guarded group: its stdout and stderr must have been piped.
    pub fn wait_with_output(mut self) -> io::Result<std::process::Output> {
        let stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
        let collect = |pipe: Option<std::process::ChildStderr>| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = io::Read::read_to_end(&mut pipe, &mut out);
                }
                out
            })
        };
        let err = collect(stderr);
        let mut out = Vec::new();
        if let Some(mut pipe) = stdout {
            io::Read::read_to_end(&mut pipe, &mut out)?;
        }
        let status = self.child.wait()?;
        let stderr = err.join().unwrap_or_default();
        Ok(std::process::Output { status, stdout: out, stderr })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // The leader may have exited and left members behind (a wrapper's
        // QEMU); ESRCH means the group is gone already.
        let _ = killpg(Pid::from_raw(self.group), Signal::SIGKILL);
        let _ = self.child.try_wait();
        registry().remove(self.group);
    }
}

/// The groups alive, and the pipe to the guard that outlives the bench.
struct Registry {
    groups: Mutex<Vec<i32>>,
    /// Write end of the guard's pipe; None if the guard could not start,
    /// in which case only dropping and signals protect the groups.
    guard: Mutex<Option<File>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry { groups: Mutex::new(Vec::new()), guard: Mutex::new(start_guard().ok()) })
}

impl Registry {
    fn add(&self, group: i32) {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).push(group);
        self.tell_guard(b'+', group);
    }

    fn remove(&self, group: i32) {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).retain(|g| *g != group);
        self.tell_guard(b'-', group);
    }

    fn tell_guard(&self, op: u8, group: i32) {
        let mut guard = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pipe) = guard.as_mut() {
            let mut message = [0u8; 5];
            message[0] = op;
            message[1..].copy_from_slice(&group.to_le_bytes());
            // Five bytes are below PIPE_BUF: written whole or not at all.
            if pipe.write_all(&message).is_err() {
                *guard = None;
            }
        }
    }

    fn groups(&self) -> Vec<i32> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Terminates every registered group: SIGTERM, then SIGKILL to what is
/// left after a grace period. Returns once all of them are gone.
pub fn terminate_all() {
    let groups = registry().groups();
    for &group in &groups {
        let _ = killpg(Pid::from_raw(group), Signal::SIGTERM);
    }
    let alive = |group: &i32| killpg(Pid::from_raw(*group), None) != Err(Errno::ESRCH);
    crate::wait::until(TERMINATE_GRACE, Duration::from_millis(10), || (!groups.iter().any(alive)).then_some(()));
    for group in groups.iter().filter(|g| alive(g)) {
        let _ = killpg(Pid::from_raw(*group), Signal::SIGKILL);
    }
}

static INTERRUPTED_BY: AtomicI32 = AtomicI32::new(0);

/// The signal that interrupted the bench, if one did.
pub fn interrupted() -> Option<Signal> {
    match INTERRUPTED_BY.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

/// The conventional exit code of a process ended by `signal`.
pub fn exit_code_of(signal: Signal) -> i32 {
    128 + signal as i32
}

/// From here on, SIGINT and SIGTERM end the bench cleanly: every child group
/// is terminated (so every wait on a guest or a build ends), the caller
/// sees [`interrupted`] and returns, and its destructors run. If it has
/// not exited 10 s later, or a second signal comes, the process exits at
/// once with 128 + the signal.
pub fn exit_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for raw in signals.forever() {
            if INTERRUPTED_BY.compare_exchange(0, raw, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                std::process::exit(128 + raw);
            }
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(10));
                std::process::exit(128 + raw);
            });
            terminate_all();
        }
    })?;
    Ok(())
}

/// Forks the guard: a process that waits for the bench to go away and
/// then terminates the groups the bench still had.
fn start_guard() -> io::Result<File> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child runs only `guard_main`, which calls nothing but
    // async-signal-safe system calls on stack memory and never returns, as
    // a child forked from a multithreaded process must.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => guard_main(&read_end),
        nix::unistd::ForkResult::Parent { .. } => {
            drop(read_end);
            Ok(File::from(write_end))
        }
    }
}

/// The guard's whole life. Between fork and exit it may only make
/// async-signal-safe calls: no allocation, no locks, no std I/O.
fn guard_main(pipe: &OwnedFd) -> ! {
    let pipe = pipe.as_raw_fd();
    let mut groups = [0i32; GUARD_SLOTS];
    // SAFETY: plain system calls on integers and on `groups`, `message`
    // and `pause`, which live on this stack for the whole function.
    unsafe {
        // Out of the bench's session and deaf to the terminal's signals:
        // Ctrl-C reaches the bench, which cleans up itself; the guard is
        // for when it cannot.
        libc::setsid();
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Only the pipe stays open: the guard must hold no socket, pipe or
        // terminal of the bench's, or it would keep them alive.
        libc::dup2(pipe, 0);
        libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32);
        let mut message = [0u8; 5];
        let mut filled = 0usize;
        loop {
            let n = libc::read(0, message.as_mut_ptr().add(filled).cast(), message.len() - filled);
            if n == 0 {
                break;
            }
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            filled += n as usize;
            if filled < message.len() {
                continue;
            }
            filled = 0;
            let group = i32::from_le_bytes([message[1], message[2], message[3], message[4]]);
            let wanted = if message[0] == b'+' { 0 } else { group };
            let replacement = if message[0] == b'+' { group } else { 0 };
            if let Some(slot) = groups.iter_mut().find(|g| **g == wanted) {
                *slot = replacement;
            }
        }
        for &group in groups.iter().filter(|g| **g > 0) {
            libc::kill(-group, libc::SIGTERM);
        }
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 20_000_000 };
        for _ in 0..(TERMINATE_GRACE.as_millis() / 20) {
            if groups.iter().all(|&g| g <= 0 || libc::kill(-g, 0) != 0) {
                break;
            }
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        for &group in groups.iter().filter(|g| **g > 0) {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// A path as it is, a bare name on `path`; Err says why not.
pub fn find_executable(program: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, String> {
    let program = Path::new(program);
    if program.components().count() > 1 {
        return executable(program).map(|()| program.to_owned());
    }
    let path = path.ok_or("PATH is not set")?;
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate).is_ok())
        .ok_or_else(|| format!("no executable {} on PATH", program.display()))
}

/// Err says why `path` is not an executable regular file.
pub(crate) fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;

    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    Ok(())
}

/// A bare program name resolved on PATH, or a path that names an
/// executable file.
pub fn which(program: &Path) -> Option<PathBuf> {
    find_executable(program.as_os_str(), std::env::var_os("PATH").as_deref()).ok()
}

/// `words` as one line a shell reads back into them: commands the bench
/// prints for a person to paste (gdb's, a rebuild's).
pub fn shell_line(words: &[String]) -> String {
    words.iter().map(|w| shell_word(w)).collect::<Vec<_>>().join(" ")
}

/// `word` as a shell reads it back: quoted only if it must be.
pub fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // A zombie has exited: only its entry waits to be reaped.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    }

    /// The pid of the grandchild a shell wrapper started and printed.
    fn grandchild_of(child: &mut Child) -> i32 {
        let mut line = String::new();
        let stdout = child.inner().stdout.as_mut().expect("piped");
        io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line).unwrap();
        line.trim().parse().unwrap()
    }

    /// The pid a bench subprocess printed as `grandchild N` on stdout,
    /// among the test harness's own lines.
    fn grandchild_printed_by(bench: &mut std::process::Child) -> i32 {
        let reader = io::BufReader::new(bench.stdout.take().unwrap());
        for line in io::BufRead::lines(reader) {
            if let Some(pid) = line.unwrap().trim().strip_prefix("grandchild ") {
                return pid.parse().unwrap();
            }
        }
        panic!("the bench printed no grandchild")
    }

    fn wait_gone(pid: i32) -> bool {
        crate::wait::until(Duration::from_secs(10), Duration::from_millis(10), || (!alive(pid)).then_some(())).is_some()
    }

    #[test]
    fn dropping_a_child_kills_what_its_wrapper_started() {
        // A wrapper that does not exec: `sleep` is its child, not it.
        let mut child = spawn(
            Command::new("sh")
                .args(["-c", "sleep 600 & echo $!; wait"])
                .stderr(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped()),
        )
        .unwrap();
        let grandchild = grandchild_of(&mut child);
        assert!(alive(grandchild));
        drop(child);
        assert!(wait_gone(grandchild), "the wrapper's child {grandchild} outlived the drop");
    }

    #[test]
    fn the_guard_kills_the_groups_of_a_bench_killed_outright() {
        // A bench process of its own (this test binary, re-run as one test)
        // starts a wrapper, prints the wrapper's child, and is SIGKILLed.
        if std::env::var_os("KEVENT_PROCESS_TEST_BENCH").is_some() {
            let mut child = spawn(
                Command::new("sh")
                    .args(["-c", "sleep 600 & echo $!; wait"])
                    .stderr(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped()),
            )
            .unwrap();
            println!("grandchild {}", grandchild_of(&mut child));
            std::mem::forget(child);
            std::thread::sleep(Duration::from_secs(600));
            return;
        }
        let mut bench = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "process::tests::the_guard_kills_the_groups_of_a_bench_killed_outright", "--nocapture"])
            .env("KEVENT_PROCESS_TEST_BENCH", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let grandchild = grandchild_printed_by(&mut bench);
        assert!(alive(grandchild));
        bench.kill().unwrap();
        bench.wait().unwrap();
        assert!(wait_gone(grandchild), "{grandchild} outlived the bench killed with SIGKILL");
    }

    #[test]
    fn sigterm_ends_every_group_and_the_bench_exits_143() {
        if std::env::var_os("KEVENT_PROCESS_TEST_SIGNALLED").is_some() {
            exit_on_signals().unwrap();
            let mut child = spawn(
                Command::new("sh")
                    .args(["-c", "sleep 600 & echo $!; wait"])
                    .stderr(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped()),
            )
            .unwrap();
            println!("grandchild {}", grandchild_of(&mut child));
            // What a bench does: wait on its child until the signal ends it.
            let _ = child.wait();
            let signal = interrupted().expect("ended by a signal");
            drop(child);
            std::process::exit(exit_code_of(signal));
        }
        let mut bench = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "process::tests::sigterm_ends_every_group_and_the_bench_exits_143", "--nocapture"])
            .env("KEVENT_PROCESS_TEST_SIGNALLED", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let grandchild = grandchild_printed_by(&mut bench);
        assert!(alive(grandchild));
        nix::sys::signal::kill(Pid::from_raw(bench.id() as i32), Signal::SIGTERM).unwrap();
        let status = bench.wait().unwrap();
        assert_eq!(status.code(), Some(143), "{status}");
        assert!(wait_gone(grandchild), "{grandchild} outlived the SIGTERM");
    }
}
