//! `cargo xtask qemu`: which QEMU the bench runs, and the private one on
//! demand. The path goes to stdout alone, so that
//! `KEVENT_BENCH_QEMU=$(cargo xtask qemu --private)` runs a command on it.

use kevent_bench::qemu;

use crate::flags::QemuFlags;
use crate::prereq::{self, Host, Requirement};

pub fn run(flags: &QemuFlags) -> anyhow::Result<()> {
    let binary = if flags.private {
        let cache = kevent_bench::cache::dir().map_err(anyhow::Error::msg)?;
        let binary = crate::private_qemu::ensure(Host::detect(), &cache)?;
        eprintln!("{}", qemu::Qemu { binary: binary.clone(), origin: qemu::Origin::Private });
        binary
    } else {
        prereq::ensure(&[Requirement::qemu()])?;
        let qemu = qemu::resolve()?;
        eprintln!("{qemu}");
        qemu.binary
    };
    eprintln!("{}", qemu::version(&binary).map_err(anyhow::Error::msg)?);
    println!("{}", binary.display());
    Ok(())
}
