//! `cargo xtask`: builds the guest (kernel, events modules, agent, initramfs)
//! and runs everything that needs it. The host bench (`kevent-bench`) builds
//! nothing itself; this crate is where building lives.

mod agent;
mod apt;
mod bench;
mod boot;
mod cache;
mod check;
mod flags;
mod fsutil;
mod initramfs;
mod kernel;
mod kmod;
mod prereq;
mod private_qemu;
mod process;
mod project;
mod qemu;
mod replay;
mod reproducer;
mod run;
mod test;

use std::process::ExitCode;

use kevent_bench::exit_code;

const _: () = assert!(exit_code::USAGE == 2, "clap reports a bad command line with exit code 2");

fn main() -> ExitCode {
    // clap exits 2 (exit_code::USAGE) on a bad command line, 0 for --help.
    let command = <flags::Cli as clap::Parser>::parse().command;
    if let Err(e) = kevent_bench::process::exit_on_signals() {
        eprintln!("warning: cannot handle SIGINT and SIGTERM ({e}): an interrupted run may leave its guest behind");
    }
    let result = match command {
        flags::Command::Build(build) => build::run(&build.resolve()).map(|_| ()),
        flags::Command::Check(check) => check::run(&check),
        flags::Command::Boot(boot) => boot::run(&boot),
        flags::Command::Run(run) => run::run(&run),
        flags::Command::Replay(replay) => replay::run(&replay),
        flags::Command::Test(test) => test::run(&test),
        flags::Command::Bench(bench) => bench::run(&bench),
        flags::Command::Qemu(qemu) => qemu::run(&qemu),
    };
    if let Some(signal) = kevent_bench::process::interrupted() {
        // Whatever the command was doing ended because its children were
        // stopped; its own error would only describe that.
        eprintln!("interrupted by {signal}: every guest and build it started was stopped");
        return ExitCode::from(kevent_bench::process::exit_code_of(signal) as u8);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code_of(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(code as u8)
        }
    }
}

/// The documented exit code for an error: a guest failure keeps its own,
/// a missing prerequisite has one, anything else is a bench error.
fn exit_code_of(e: &anyhow::Error) -> i32 {
    if let Some(failure) = e.downcast_ref::<kevent_bench::Failure>() {
        return failure.exit_code();
    }
    if e.downcast_ref::<prereq::Missing>().is_some() {
        return exit_code::MISSING_PREREQUISITE;
    }
    // Like a boot's QemuStart: the binary to run is missing.
    if e.downcast_ref::<kevent_bench::qemu::QemuNotFound>().is_some() {
        return exit_code::QEMU_START;
    }
    if let Some(test::TestsFailed(code)) = e.downcast_ref::<test::TestsFailed>() {
        return *code;
    }
    if e.downcast_ref::<replay::Mismatch>().is_some() {
        return exit_code::REPLAY_MISMATCH;
    }
    exit_code::BENCH_ERROR
}

mod build {
    use anyhow::Context;
    use kevent_bench::sources::Sources;

    use crate::cache::EntryLock;
    use crate::{agent, flags, initramfs, kernel, kmod, prereq, project};

    /// Everything a guest needs, built or found up to date.
    pub fn run(flags: &flags::BuildFlags) -> anyhow::Result<initramfs::Artifacts> {
        let started = std::time::Instant::now();
        prereq::ensure(&prereq::for_build(flags.kernel_src.as_deref()))?;
        let project = project::Project::locate()?;
        // Read before anything is built: a source that changes during the
        // build leaves a record the tests refuse, never the reverse.
        let fragments: Vec<String> = flags.profile.fragments().iter().map(|f| (*f).to_owned()).collect();
        let sources = Sources::scan(&project.root, &fragments).context("record the guest's sources")?;
        let kernel = kernel::build(&project, flags)?;
        let agent = agent::build(&project)?;
        let guest_dir = project.guest_dir(kernel.profile, &kernel.release, &kernel.identity);
        // Held to the end: another build of this checkout against the same
        // kernel waits, then finds the modules and archives up to date.
        let mut guest_lock = EntryLock::open(&guest_dir)?;
        guest_lock.exclusive()?;
        let modules = kmod::build(&project, &kernel, &guest_dir.join("kmod"))?;
        let artifacts = initramfs::assemble(&project, flags, &guest_dir, &kernel, &modules, &agent, sources)?;
        eprintln!(
            "built {} kernel {} ({}), {} module(s), agent; in {:.1} s",
            kernel.profile,
            kernel.release,
            if kernel.reused { "cached" } else { "rebuilt" },
            modules.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(artifacts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qemu_variable_naming_nothing_exits_as_a_missing_qemu_not_a_missing_package() {
        let named = kevent_bench::qemu::QemuNotFound::Variable { value: "/nonexistent".into(), why: "gone".into() };
        assert_eq!(exit_code_of(&anyhow::Error::from(named)), exit_code::QEMU_START);
        let missing = prereq::Missing { missing: Vec::new(), why_not_installed: String::new(), remedies: Vec::new() };
        assert_eq!(exit_code_of(&anyhow::Error::from(missing)), exit_code::MISSING_PREREQUISITE);
    }
}
