//! The trivial init of the boot benchmark's floor: it restarts the machine
//! as soon as it runs, and QEMU (`-no-reboot`) exits.

fn main() {
    // SAFETY: reboot(2) takes no pointers; it does not return on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    eprintln!("floor-init: reboot failed: {}", std::io::Error::last_os_error());
}
