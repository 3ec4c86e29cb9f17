//! Safe wrappers around the few system calls PID 1 needs that std lacks.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} contains NUL")))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// mount(2) with no data; an already mounted target is not an error.
pub fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let (source, target_c, fstype) = (cstring(source)?, cstring(target)?, cstring(fstype)?);
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call;
    // data may be NULL.
    let ret = unsafe { libc::mount(source.as_ptr(), target_c.as_ptr(), fstype.as_ptr(), flags, std::ptr::null()) };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other,
    }
}

/// Loads a kernel module from an open file with the given parameter string.
pub fn finit_module(module: &File, params: &str) -> io::Result<()> {
    let params = cstring(params)?;
    // SAFETY: the fd is open for the duration of the call and params is a
    // NUL-terminated string; flags 0 asks for the default checks.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, module.as_raw_fd(), params.as_ptr(), 0) };
    check(ret as libc::c_int)
}

/// Ends the machine. QEMU runs with `-no-reboot`, so a restart makes it exit;
/// the guest has no ACPI, where a power-off would only halt the CPUs.
pub fn restart_machine() -> ! {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // Only reached if reboot failed (it cannot for PID 1 as root); leaving
    // PID 1 panics the kernel, and panic=-1 restarts the machine all the same.
    std::process::exit(1)
}

/// CLOCK_BOOTTIME in nanoseconds: guest time since the kernel started.
pub fn boottime_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    let ret = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(ret, 0, "clock_gettime of a clock every kernel has");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::from("unknown");
    }
    // SAFETY: uname NUL-terminates every field it fills.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// Whether a path exists, without following a dangling link into an error.
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// A pipe: (read end, write end), both close-on-exec and non-blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two c_ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 returned two new descriptors that nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
pub fn readable(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// Blocks until at least one of `fds` has an event; fills in each `revents`.
pub fn poll(fds: &mut [libc::pollfd]) -> io::Result<()> {
    loop {
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
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
