//! `cargo xtask boot`: one boot to the agent's greeting, with timings.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kevent_bench::{accel, qemu, Accel, AccelDecision, Artifacts, Clock, GuestSpec, Machine, MachineConfig, Topology};

use crate::flags::{AccelArg, BootFlags, GuestFlags};

pub fn run(flags: &BootFlags) -> anyhow::Result<()> {
    let artifacts = crate::build::run(&flags.build.resolve())?;
    let guest = flags.guest.spec(&artifacts, flags.append.clone());
    let decision = decide_accel(&artifacts, flags.guest.accel, guest.clock)?;
    let mut config = MachineConfig::new(guest, decision.accel, run_dir(&artifacts, "boot"))?;
    config.stream_console = flags.console;
    let qemu_version = qemu::version(&config.qemu.binary).map_err(anyhow::Error::msg)?;
    eprintln!("console log: {}", config.run_dir.join("console.log").display());
    let machine = Machine::boot(&config)?;
    let (hello, timings) = (machine.hello.clone(), machine.timings);
    let report = machine.shutdown(config.timeouts.shutdown)?;

    let guest_ms = |ns: u64| ns as f64 / 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "guest         Linux {} on {} CPU(s) online of {}, clocksource {}",
        hello.kernel_release, hello.cpus_online, config.guest.topology, hello.clocksource
    );
    println!("accelerator   {} ({})", decision.accel, decision.reason);
    println!("qemu          {}", config.qemu);
    println!("              {qemu_version}");
    for module in &hello.modules {
        let params = if module.params.is_empty() { String::new() } else { format!(" {}", module.params) };
        println!("module        {}{params} loaded in {:.1} ms", module.name, guest_ms(module.load_ns));
    }
    println!();
    println!("{:<16}{:>10}  ends when", "stage", "host ms");
    println!("{:<16}{:>10.0}  QEMU connects to the agent channel", "QEMU start", ms(timings.qemu_started));
    println!(
        "{:<16}{:>10.0}  /init starts (guest clock: {:.0} ms)",
        "kernel boot",
        ms(timings.kernel_booted - timings.qemu_started),
        guest_ms(hello.agent_started_ns)
    );
    println!(
        "{:<16}{:>10.0}  the agent greets (guest clock: {:.0} ms)",
        "agent setup",
        ms(timings.greeted - timings.kernel_booted),
        guest_ms(hello.greeted_ns - hello.agent_started_ns)
    );
    println!("{:<16}{:>10.0}  QEMU exits", "shutdown", ms(report.shutdown));
    println!("{:<16}{:>10.0}  spawn to greeting {:.0} ms", "total", ms(report.total), ms(timings.greeted));
    Ok(())
}

/// Resolves `--accel` for a guest on `clock` and says what was picked and
/// why: the virtual clock counts TCG's instructions, so it is TCG's alone.
pub fn decide_accel(artifacts: &Artifacts, choice: AccelArg, clock: Clock) -> anyhow::Result<AccelDecision> {
    let decision = match (clock, choice) {
        (Clock::Virtual, AccelArg::Kvm) => {
            anyhow::bail!(
                "--accel kvm: the virtual clock (QEMU -icount) exists only under TCG; use --clock real or --accel tcg"
            )
        }
        (Clock::Virtual, _) => AccelDecision { accel: Accel::Tcg, reason: "the virtual clock runs under TCG".into() },
        (Clock::Real, choice) => accel::decide(choice.into(), &artifacts.floor_guest(1, 256), &artifacts.cache_dir),
    };
    eprintln!("accelerator: {} ({})", decision.accel, decision.reason);
    Ok(decision)
}

impl GuestFlags {
    /// `--topology`, else `--cpus` CPUs each its own package.
    pub fn topology(&self) -> Topology {
        self.topology.unwrap_or(Topology::flat(self.cpus))
    }

    /// The bench guest these flags describe.
    pub fn spec(&self, artifacts: &Artifacts, kernel_args: Vec<String>) -> GuestSpec {
        let mut guest = artifacts.guest_of(self.topology(), self.memory_mib, kernel_args);
        guest.clock = self.clock.into();
        guest
    }
}

/// A fresh directory for one run's console log.
pub fn run_dir(artifacts: &Artifacts, what: &str) -> PathBuf {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    artifacts.runs_dir.join(format!("{what}-{}-{:03}-{}", now.as_secs(), now.subsec_millis(), std::process::id()))
}
