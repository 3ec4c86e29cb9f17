//! `cargo xtask bench`: speed and determinism, each printed as a table
//! with its floor or target beside it, measured in the same run. Never a
//! timed test: these machines are noisy, so only ratios within one run mean
//! anything.

mod boot;
mod dbus;
mod determinism;
mod inject;
mod scenarios;

use kevent_bench::inject::Injection;
use kevent_bench::sensor::Register;
use kevent_bench::thermal;

use crate::flags::{BenchFlags, BenchTarget};

/// `samples` sorted, then their min, p50, p99 and max in µs, in the
/// latency tables' columns (9 wide each).
fn latency_columns(samples: &mut [std::time::Duration]) -> String {
    use kevent_bench::stats::percentile;
    samples.sort();
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    format!(
        "{:>9.0}{:>9.0}{:>9.0}{:>9.0}",
        us(samples[0]),
        us(percentile(samples, 50)),
        us(percentile(samples, 99)),
        us(samples[samples.len() - 1])
    )
}

/// The k-th injection of the injection benchmarks: CPUs in turn, each
/// toggling its PROCHOT, so that every injection is a "high" or a "normal":
/// exactly one kmessage and one uevent.
fn toggling_prochot(k: usize, cpus: u32) -> Injection {
    let cpu = k as u32 % cpus;
    let on = (k / cpus as usize).is_multiple_of(2);
    let value = if on { thermal::VALID | thermal::PROCHOT } else { thermal::VALID };
    Injection { cpu, register: Register::Core, value }
}

pub fn run(flags: &BenchFlags) -> anyhow::Result<()> {
    match &flags.target {
        BenchTarget::Boot(runs) => boot::run(runs),
        BenchTarget::Scenarios(suite) => scenarios::run(suite),
        BenchTarget::Inject(runs) => inject::run(runs),
        BenchTarget::Dbus(runs) => dbus::run(runs),
        BenchTarget::Determinism(determinism) => determinism::run(determinism),
    }
}
