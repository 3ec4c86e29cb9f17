//! The trivial init of the boot benchmark's floor: it restarts the machine
//! as soon as it runs, and QEMU (`-no-reboot`) exits.

use nix::sys::reboot::{reboot, RebootMode};

fn main() {
    // reboot(2) returns only on failure.
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    eprintln!("floor-init: reboot failed: {e}");
}
