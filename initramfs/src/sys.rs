//! The few system calls PID 1 needs that std lacks, as the agent uses them.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::kmod::ModuleInitFlags;
use nix::mount::MsFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::utsname::uname;
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{pipe2, sysconf, SysconfVar};

/// mount(2) with no data; an already mounted target is not an error.
pub fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    match nix::mount::mount(Some(source), target, Some(fstype), flags, None::<&str>) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Loads a kernel module from an open file with the given parameter string.
pub fn finit_module(module: &File, params: &str) -> io::Result<()> {
    let params = CString::new(params)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{params:?} contains NUL")))?;
    // No flags: the kernel's default checks (version magic, modversions) apply.
    Ok(nix::kmod::finit_module(module, &params, ModuleInitFlags::empty())?)
}

/// Ends the machine. QEMU runs with `-no-reboot`, so a restart makes it exit;
/// the guest has no ACPI, where a power-off would only halt the CPUs.
pub fn restart_machine() -> ! {
    nix::unistd::sync();
    // Returns only if reboot failed (it cannot for PID 1 as root); leaving
    // PID 1 panics the kernel, and panic=-1 restarts the machine all the same.
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    std::process::exit(1)
}

/// CLOCK_BOOTTIME in nanoseconds: guest time since the kernel started.
pub fn boottime_ns() -> u64 {
    clock_ns(ClockId::CLOCK_BOOTTIME)
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    clock_ns(ClockId::CLOCK_MONOTONIC)
}

fn clock_ns(clock: ClockId) -> u64 {
    // Both clocks exist in every kernel this agent can run on: a failure is
    // a bug, and the panic hook reports it.
    let ts = clock_gettime(clock).expect("clock_gettime of a clock every kernel has");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The kernel release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    match uname() {
        Ok(uts) => uts.release().to_string_lossy().into_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Whether a path exists, without following a dangling link into an error.
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// A pipe: (read end, write end), both close-on-exec and non-blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?)
}

/// Wakes whoever polls the read end of `pipe` (non-blocking) with one byte.
/// A full pipe holds a wake-up already: nothing is lost.
pub fn wake(mut pipe: &File) -> io::Result<()> {
    match pipe.write_all(&[1]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

/// Empties a non-blocking pipe of its wake-ups.
pub fn drain_pipe(mut pipe: &File) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// A pollfd asking whether `fd` is readable.
pub fn readable(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::new(fd, PollFlags::POLLIN)
}

/// Whether poll reported any event on `fd`.
pub fn ready(fd: &PollFd<'_>) -> bool {
    fd.revents().is_some_and(|events| !events.is_empty())
}

/// Blocks until at least one of `fds` has an event; fills in each `revents`.
pub fn poll(fds: &mut [PollFd<'_>]) -> io::Result<()> {
    loop {
        match nix::poll::poll(fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits at most `bound` for an event on one of `fds`; false if none came.
pub fn poll_timeout(fds: &mut [PollFd<'_>], bound: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis().min(u128::from(u16::MAX))).unwrap_or(u16::MAX);
        match nix::poll::poll(fds, PollTimeout::from(ms)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Processors online, as the kernel counts them; 0 if it cannot say.
pub fn cpus_online() -> u32 {
    match sysconf(SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) => u32::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// The agent's one look-sleep loop: calls `ready` until it gives a value,
/// every `tick`, for at most `bound` (at least once, and once more at the
/// bound); `None` if it never did.
pub fn wait_until<T>(bound: Duration, tick: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_beyond_a_full_pipe_are_not_errors_and_drain_empties_it() {
        let (read_end, write_end) = pipe().unwrap();
        let (read_end, write_end) = (File::from(read_end), File::from(write_end));
        // A pipe holds 64 KiB by default: the later wake-ups find it full.
        for _ in 0..(128 << 10) {
            wake(&write_end).unwrap();
        }
        drain_pipe(&read_end).unwrap();
        let err = (&read_end).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
