//! `cargo xtask check SCENARIO...`: everything `run` checks before it boots,
//! without booting: the file, its values and limits, and its module
//! parameters against the modules the build made.

use anyhow::bail;
use kevent_bench::scenario;

use crate::flags::CheckFlags;

pub fn run(flags: &CheckFlags) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut parsed = Vec::new();
    for path in &flags.scenarios {
        match scenario::load(path).and_then(|s| s.check_injector().map(|()| s)) {
            Ok(s) => parsed.push(s),
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if !parsed.is_empty() {
        // Module parameters are known from the built modules only.
        let artifacts = crate::build::run(&flags.build.resolve())?;
        let modules = artifacts.module_parameters()?;
        for s in parsed {
            match s.check_params(&modules) {
                Ok(()) => println!("ok: {} ({} step(s))", s.path.display(), s.steps.len()),
                Err(e) => {
                    eprintln!("error: {e}");
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} scenario(s) cannot run", flags.scenarios.len());
    }
    Ok(())
}
