//! Safe wrappers around the few system calls PID 1 needs that std lacks.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
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
