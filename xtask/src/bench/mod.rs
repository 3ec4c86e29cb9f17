//! `cargo xtask bench`: speed and determinism, each printed as a table
//! with its floor or target beside it, measured in the same run. Never a
//! timed test: these machines are noisy, so only ratios within one run mean
//! anything.

mod boot;
mod dbus;
mod determinism;
mod inject;
mod scenarios;

use crate::flags::{BenchFlags, BenchTarget};

pub fn run(flags: &BenchFlags) -> anyhow::Result<()> {
    match &flags.target {
        BenchTarget::Boot(runs) => boot::run(runs),
        BenchTarget::Scenarios(suite) => scenarios::run(suite),
        BenchTarget::Inject(runs) => inject::run(runs),
        BenchTarget::Dbus(runs) => dbus::run(runs),
        BenchTarget::Determinism(determinism) => determinism::run(determinism),
    }
}
