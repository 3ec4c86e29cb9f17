//! The command line of `cargo xtask`: every command takes exactly the flags
//! it honours, and anything else is refused with the reason.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kevent_bench::scenario::{limits, Injector};
use kevent_bench::{msr_trace as trace, AccelChoice, Clock, Topology};

const ENVIRONMENT: &str = "\
Environment:
  KEVENT_BENCH_CACHE          kernel sources and builds, the private QEMU
                              (default $XDG_CACHE_HOME/kevent-bench or ~/.cache/kevent-bench)
  KEVENT_BENCH_QEMU           QEMU binary (default qemu-system-x86_64 on PATH, else the private QEMU);
                              KEVENT_BENCH_QEMU=$(cargo xtask qemu --private) runs the private one
  KEVENT_BENCH_KERNEL_SRC     as --kernel-src
  KEVENT_BENCH_KERNEL_PROFILE as --kernel-profile

Exit codes are listed in README.md.";

/// Builds a minimal kernel, its events modules and a static agent, boots them
/// under QEMU, injects thermal interrupts and checks the netlink events.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, after_help = ENVIRONMENT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, boot, run a scenario's steps (or replay a recorded trace), print every event live, then a summary
    Run(RunFlags),
    /// Run a reproducer bundle (written by `run --bundle`) again here and compare its events with the bundle's
    #[command(
        long_about = "Run a reproducer bundle again on this machine and compare its events with the bundle's.\n\n\
        BUNDLE is a file written by `cargo xtask run SCENARIO --bundle BUNDLE` (docs/bundle.md): the scenario, the \
        kernel, modules, agent, QEMU and commit it ran with, its console and events. The bundle is checked whole \
        before anything is built; the scenario is then built for and run on this machine, its snapshot compared \
        with the bundle's, and every difference in the environment (kernel release and .config, module and agent \
        sources, QEMU, accelerator, clock) is named. Exit 0 if the run reproduces the bundle's (a failure included), \
        40 if it completed with other events or where the bundle's failed."
    )]
    Replay(ReplayFlags),
    /// Parse and check scenarios without booting: keys, values, limits, module parameters
    Check(CheckFlags),
    /// Build the kernel, the events modules, the agent and the initramfs
    Build(BuildArgs),
    /// Build, boot once, wait for the agent's greeting, print a timing breakdown, shut down
    Boot(BootFlags),
    /// Build, then run every test; without --kernel-profile, the guest tests run again on the debug kernel
    Test(TestFlags),
    /// Benchmarks, printed as tables with the floor measured in the same run
    Bench(BenchFlags),
    /// Print the QEMU binary the bench runs, installing or extracting one if there is none
    Qemu(QemuFlags),
    /// On a real machine: record IA32_THERM_STATUS and IA32_PACKAGE_THERM_STATUS of every CPU into a trace; builds and boots nothing
    Record(RecordFlags),
}

#[derive(Debug, Clone, Args)]
pub struct RecordFlags {
    /// The trace file to write (docs/trace-format.md)
    #[arg(long, value_name = "TRACE.csv")]
    pub out: PathBuf,
    /// Microseconds between two samples of every register
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub interval_us: u64,
    /// Seconds to record (Ctrl-C ends it early, the trace whole up to there)
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Only these online CPUs (a cpulist such as 0-3): a guest has at most 8, as many in each package
    #[arg(long, value_name = "LIST", value_parser = cpulist_parser)]
    pub cpus: Option<Vec<u32>>,
    /// Where the per-CPU MSR devices are (N/msr under it), for tests and fake recordings
    #[arg(long, value_name = "DIR", default_value = "/dev/cpu")]
    pub msr_dir: PathBuf,
    /// Where sysfs is mounted (devices/system/cpu/cpuN/topology under it), for tests and fake recordings
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs_root: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct QemuFlags {
    /// The bench's private copy of Debian's QEMU 7.2, extracted into the cache if it is not yet, whatever else is installed
    #[arg(long)]
    pub private: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelProfile {
    /// tinyconfig and kernel-config/bench.config
    Default,
    /// also kernel-config/debug.config: lockdep, atomic-sleep checks
    Debug,
}

impl KernelProfile {
    pub fn name(self) -> &'static str {
        match self {
            KernelProfile::Default => "default",
            KernelProfile::Debug => "debug",
        }
    }

    /// Config fragments, in merge order, relative to `kernel-config/`.
    pub fn fragments(self) -> &'static [&'static str] {
        match self {
            KernelProfile::Default => &["bench.config"],
            KernelProfile::Debug => &["bench.config", "debug.config"],
        }
    }
}

/// How the kernel is built, as given on the command line.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Build this kernel source tree instead of Debian's linux-source-6.12
    #[arg(long, value_name = "DIR", env = "KEVENT_BENCH_KERNEL_SRC")]
    kernel_src: Option<PathBuf>,
    /// Kernel configuration profile, each in its own cache entry
    #[arg(long, value_enum, value_name = "PROFILE", env = "KEVENT_BENCH_KERNEL_PROFILE")]
    kernel_profile: Option<KernelProfile>,
}

/// How the kernel is built, resolved.
#[derive(Debug, Clone)]
pub struct BuildFlags {
    pub kernel_src: Option<PathBuf>,
    pub profile: KernelProfile,
    /// Whether the profile was chosen (flag or environment) or defaulted.
    pub profile_chosen: bool,
}

impl BuildArgs {
    pub fn resolve(&self) -> BuildFlags {
        BuildFlags {
            kernel_src: self.kernel_src.clone(),
            profile: self.kernel_profile.unwrap_or(KernelProfile::Default),
            profile_chosen: self.kernel_profile.is_some(),
        }
    }
}

impl BuildFlags {
    /// The command that builds the same guest again, whatever the
    /// environment is then: the flags are spelled out. `kernel_tree` is the
    /// user's tree as the build resolved it, if there is one.
    pub fn rebuild_command(&self, kernel_tree: Option<&std::path::Path>) -> String {
        let mut command = "cargo xtask build".to_owned();
        if let Some(tree) = kernel_tree {
            command.push_str(" --kernel-src ");
            command.push_str(&kevent_bench::process::shell_word(&tree.to_string_lossy()));
        }
        if self.profile != KernelProfile::Default {
            command.push_str(" --kernel-profile ");
            command.push_str(self.profile.name());
        }
        command
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AccelArg {
    /// KVM only if a probe guest really boots under it, else TCG
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelArg> for AccelChoice {
    fn from(a: AccelArg) -> AccelChoice {
        match a {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClockArg {
    /// Guest time is the host's wall time
    Real,
    /// Guest time counts the guest's instructions (QEMU -icount), whatever the host's load; TCG only
    Virtual,
}

impl From<ClockArg> for Clock {
    fn from(c: ClockArg) -> Clock {
        match c {
            ClockArg::Real => Clock::Real,
            ClockArg::Virtual => Clock::Virtual,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InjectorArg {
    /// The host's emulated sensor raises the CPU's MSI-X vector
    Device,
    /// The guest agent writes the module's debugfs trigger
    Debugfs,
}

impl From<InjectorArg> for Injector {
    fn from(i: InjectorArg) -> Injector {
        match i {
            InjectorArg::Device => Injector::Device,
            InjectorArg::Debugfs => Injector::Debugfs,
        }
    }
}

fn cpus_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(limits::MAX_CPUS))
}

fn cpulist_parser(text: &str) -> Result<Vec<u32>, String> {
    kevent_bench::record::parse_cpulist(text)
        .filter(|cpus| !cpus.is_empty())
        .ok_or_else(|| format!("{text:?} is not a CPU list such as 0-3 or 0,2,4"))
}

fn topology_parser(text: &str) -> Result<Topology, String> {
    Topology::parse(text)
}

fn speed_parser(text: &str) -> Result<f64, String> {
    let speed: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if trace::SPEED_RANGE.contains(&speed) {
        Ok(speed)
    } else {
        Err(format!("{speed} is not in {}..={}", trace::SPEED_RANGE.start(), trace::SPEED_RANGE.end()))
    }
}

fn memory_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(i64::from(limits::MIN_MEMORY_MIB)..=i64::from(limits::MAX_MEMORY_MIB))
}

/// The guest machine of commands that have no scenario to define it.
#[derive(Debug, Clone, Args)]
pub struct GuestFlags {
    /// Accelerator
    #[arg(long, value_enum, default_value_t)]
    pub accel: AccelArg,
    /// Virtual CPUs, each its own socket
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = cpus_parser(), conflicts_with = "topology")]
    pub cpus: u32,
    /// PACKAGESxCORES, e.g. 2x2: packages whose cores share them (the guest boots with ACPI)
    #[arg(long, value_name = "PxC", value_parser = topology_parser)]
    pub topology: Option<Topology>,
    /// Guest memory in MiB
    #[arg(long = "memory", value_name = "MIB", default_value_t = 256, value_parser = memory_parser())]
    pub memory_mib: u32,
    /// What the guest's clock follows
    #[arg(long, value_enum, default_value = "real")]
    pub clock: ClockArg,
}

#[derive(Debug, Clone, Args)]
pub struct RunFlags {
    /// The scenario file
    #[arg(value_name = "SCENARIO.toml", required_unless_present = "replay", conflicts_with = "replay")]
    pub scenario: Option<PathBuf>,
    /// Replay a thermal trace that `cargo xtask record` made (docs/trace-format.md; not a reproducer bundle) into a guest of the recorded topology, instead of a scenario
    #[arg(long, value_name = "TRACE.csv", conflicts_with = "bundle")]
    pub replay: Option<PathBuf>,
    /// With --replay: times faster than recorded
    #[arg(long, value_name = "X", default_value = "1", value_parser = speed_parser, requires = "replay")]
    pub speed: f64,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Accelerator
    #[arg(long, value_enum, default_value_t)]
    pub accel: AccelArg,
    /// Virtual CPUs, each its own package, replacing the scenario's [machine]
    #[arg(long, value_name = "N", value_parser = cpus_parser(), conflicts_with = "topology")]
    pub cpus: Option<u32>,
    /// PACKAGESxCORES, e.g. 2x2, replacing the scenario's [machine]
    #[arg(long, value_name = "PxC", value_parser = topology_parser)]
    pub topology: Option<Topology>,
    /// Guest memory in MiB, replacing the scenario's [machine] memory_mib
    #[arg(long = "memory", value_name = "MIB", value_parser = memory_parser())]
    pub memory_mib: Option<u32>,
    /// The guest's clock, replacing the scenario's [machine] clock
    #[arg(long, value_enum)]
    pub clock: Option<ClockArg>,
    /// How injections reach the guest, replacing the scenario's injector
    #[arg(long, value_enum)]
    pub injector: Option<InjectorArg>,
    /// One JSON object per line: each event, each step's result, each background program's result
    #[arg(long)]
    pub json: bool,
    /// Show each datagram's bytes as well
    #[arg(long)]
    pub raw: bool,
    /// Add a file to the initramfs (default GUEST: /bin/NAME); an ELF brings its shared libraries
    #[arg(long = "include", value_name = "HOST[:GUEST]")]
    pub includes: Vec<String>,
    /// Stream the serial console to stderr
    #[arg(long)]
    pub console: bool,
    /// Add a kernel command-line argument (repeatable)
    #[arg(long, value_name = "ARG")]
    pub append: Vec<String>,
    /// Dynamic debug query for the kernel or the events modules, e.g. 'module kevent_thermal +p' (repeatable)
    #[arg(long, value_name = "QUERY")]
    pub dyndbg: Vec<String>,
    /// Record kernel trace events into trace.txt in the run directory: alone, the default set; =EVENTS, comma-separated SYSTEM:EVENT patterns (replaces the scenario's trace key)
    #[arg(long, value_name = "EVENTS", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub trace: Option<String>,
    /// QEMU's gdbstub: alone on port 1234 of localhost; =PORT or =unix:PATH elsewhere. Waits are suspended while gdb holds the guest
    #[arg(long, value_name = "PORT|unix:PATH", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub gdb: Option<String>,
    /// With the gdbstub (--gdb implied), hold the guest before its first instruction until gdb continues it
    #[arg(long)]
    pub gdb_wait: bool,
    /// Write a reproducer bundle of the run to FILE (xz tar: scenario, kernel, modules, QEMU, console, events; docs/bundle.md), whether the run succeeds or fails
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Expose the guest's system bus on the host as a UNIX socket at PATH while the scenario runs (needs [machine] dbus = true)
    #[arg(long, value_name = "PATH")]
    pub dbus_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayFlags {
    /// The reproducer bundle, as `run --bundle` wrote it
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Accelerator
    #[arg(long, value_enum, default_value_t)]
    pub accel: AccelArg,
    /// Stream the serial console to stderr
    #[arg(long)]
    pub console: bool,
    /// Write this run's own reproducer bundle to FILE
    #[arg(long = "bundle", value_name = "FILE")]
    pub bundle_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckFlags {
    /// Scenario files
    #[arg(value_name = "SCENARIO.toml", required = true)]
    pub scenarios: Vec<PathBuf>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BootFlags {
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub guest: GuestFlags,
    /// Stream the serial console to stderr
    #[arg(long)]
    pub console: bool,
    /// Add a kernel command-line argument (repeatable)
    #[arg(long, value_name = "ARG")]
    pub append: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TestFlags {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Accelerator
    #[arg(long, value_enum, default_value_t)]
    pub accel: AccelArg,
    /// Run only the scenario suite, on one kernel profile, and print its results as KTAP version 1 on stdout
    #[arg(long)]
    pub ktap: bool,
    /// Passed to the test runner (cargo-nextest, else cargo test), e.g. `-- --partition count:1/2` or `-- scenario::burst`
    #[arg(last = true, value_name = "ARGS")]
    pub runner_args: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchFlags {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchTarget {
    /// Boot N times; boot times beside the floor: the same kernel with an init that exits at once
    Boot(BenchRuns),
    /// The starter suite warm: time per scenario, the suite one after another and in parallel, the boot floor
    Scenarios(BenchSuite),
    /// In one guest: injection-to-host latency and sustained rate, sensor device beside debugfs and beside the floor (the device with a handler that acknowledges at once)
    Inject(BenchRuns),
    /// In one D-Bus guest: injection-to-signal latency and the sustained rate with zero loss, beside the netlink figures of the same injections
    Dbus(BenchRuns),
    /// Each scenario N times with every host core busy: how many different snapshots came out
    Determinism(BenchDeterminism),
}

#[derive(Debug, Clone, Args)]
pub struct BenchDeterminism {
    /// Scenario files (default: every starter scenario)
    #[arg(value_name = "SCENARIO.toml")]
    pub scenarios: Vec<PathBuf>,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Runs of each scenario
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub runs: u32,
    /// Leave the host's cores idle instead of keeping them busy
    #[arg(long)]
    pub no_load: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchRuns {
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub guest: GuestFlags,
    /// Boots (boot) or hundreds of timed injections (inject) per configuration
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: u32,
}

#[derive(Debug, Clone, Args)]
pub struct BenchSuite {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Accelerator
    #[arg(long, value_enum, default_value_t)]
    pub accel: AccelArg,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(words: &str) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["cargo xtask"].into_iter().chain(words.split_whitespace())).map(|cli| cli.command)
    }

    fn error(words: &str) -> String {
        parse(words).unwrap_err().to_string()
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn boot_flags_are_read_in_both_spellings() {
        let Command::Boot(b) = parse("boot --accel tcg --cpus=4 --console --append quiet --clock virtual").unwrap()
        else {
            panic!("not a boot command")
        };
        assert_eq!((b.guest.accel, b.guest.cpus, b.guest.memory_mib), (AccelArg::Tcg, 4, 256));
        assert_eq!(b.guest.clock, ClockArg::Virtual);
        assert!(b.console);
        assert_eq!(b.append, ["quiet"]);
    }

    #[test]
    fn bad_values_say_why() {
        assert!(error("boot --cpus four").contains("invalid value 'four' for '--cpus <N>'"));
        assert!(error("boot --cpus 9").contains("9 is not in 1..=8"));
        assert!(error("boot --memory 32").contains("32 is not in 64..=16384"));
        assert!(error("boot --accel hvf").contains("possible values: auto, kvm, tcg"));
        assert!(error("run s.toml --injector msr").contains("possible values: device, debugfs"));
    }

    #[test]
    fn typos_are_named_as_what_they_are_with_a_suggestion() {
        let e = error("biuld");
        assert!(
            e.contains("unrecognized subcommand 'biuld'") && e.contains("similar subcommand exists: 'build'"),
            "{e}"
        );
        let e = error("build --kernel-profil debug");
        assert!(e.contains("unexpected argument '--kernel-profil'") && e.contains("--kernel-profile"), "{e}");
    }

    #[test]
    fn flags_a_command_does_not_honour_are_refused() {
        for words in [
            "build --console",
            "test --cpus 4",
            "test --memory 512",
            "bench scenarios --runs 3",
            "boot --injector debugfs",
            "check s.toml --cpus 2",
        ] {
            let e = error(words);
            assert!(e.contains("unexpected argument"), "{words}: {e}");
        }
    }

    #[test]
    fn run_overrides_the_scenarios_machine_only_when_asked() {
        let Command::Run(r) = parse("run scenarios/a.toml").unwrap() else { panic!() };
        assert_eq!((r.cpus, r.memory_mib, r.clock, r.injector), (None, None, None, None));
        let Command::Run(r) =
            parse("run scenarios/a.toml --cpus 4 --memory=512 --clock virtual --injector debugfs").unwrap()
        else {
            panic!()
        };
        assert_eq!((r.cpus, r.memory_mib), (Some(4), Some(512)));
        assert_eq!((r.clock, r.injector), (Some(ClockArg::Virtual), Some(InjectorArg::Debugfs)));
    }

    #[test]
    fn run_takes_kernel_arguments_dynamic_debug_and_traces() {
        let Command::Run(r) = parse("run a.toml --append quiet --append loglevel=8").unwrap() else { panic!() };
        assert_eq!(r.append, ["quiet", "loglevel=8"]);
        assert_eq!((r.dyndbg.len(), r.trace.as_deref()), (0, None));
        let Command::Run(r) =
            Cli::try_parse_from(["x", "run", "--dyndbg", "module kevent_thermal +p", "--trace", "a.toml"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!(r.dyndbg, ["module kevent_thermal +p"]);
        assert_eq!(r.trace.as_deref(), Some(""), "--trace alone: the default set, not the scenario's path");
        assert_eq!(r.scenario, Some(PathBuf::from("a.toml")));
        let Command::Run(r) = parse("run a.toml --trace=irq:*,kmessage:*").unwrap() else { panic!() };
        assert_eq!(r.trace.as_deref(), Some("irq:*,kmessage:*"));
        let Command::Run(r) = parse("run --gdb a.toml --gdb-wait").unwrap() else { panic!() };
        assert_eq!((r.gdb.as_deref(), r.gdb_wait), (Some(""), true));
        let Command::Run(r) = parse("run a.toml --gdb=unix:/tmp/g.sock").unwrap() else { panic!() };
        assert_eq!((r.gdb.as_deref(), r.gdb_wait), (Some("unix:/tmp/g.sock"), false));
    }

    #[test]
    fn the_rebuild_command_spells_out_the_profile_and_the_tree() {
        let mut b = BuildFlags { kernel_src: None, profile: KernelProfile::Default, profile_chosen: false };
        assert_eq!(b.rebuild_command(None), "cargo xtask build");
        b.profile = KernelProfile::Debug;
        assert_eq!(b.rebuild_command(None), "cargo xtask build --kernel-profile debug");
        let tree = std::path::Path::new("/home/me/linux");
        assert_eq!(
            b.rebuild_command(Some(tree)),
            "cargo xtask build --kernel-src /home/me/linux --kernel-profile debug"
        );
        let tree = std::path::Path::new("/home/me/it's linux");
        assert_eq!(
            b.rebuild_command(Some(tree)),
            r"cargo xtask build --kernel-src '/home/me/it'\''s linux' --kernel-profile debug"
        );
    }

    #[test]
    fn test_passes_everything_after_the_separator_to_the_runner() {
        let Command::Test(t) = parse("test --kernel-profile debug -- --partition count:1/2 boot").unwrap() else {
            panic!("not a test command")
        };
        assert_eq!(t.build.resolve().profile, KernelProfile::Debug);
        assert!(t.build.resolve().profile_chosen);
        assert_eq!(t.runner_args, ["--partition", "count:1/2", "boot"]);
        let Command::Bench(b) = parse("bench inject --runs 3").unwrap() else { panic!() };
        assert!(matches!(b.target, BenchTarget::Inject(BenchRuns { runs: 3, .. })));
    }

    /// README's command table lists, for each command, exactly the flags
    /// the command line takes.
    #[test]
    fn the_readme_command_table_agrees_with_the_command_line() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let cli = Cli::command();
        let mut commands: Vec<(String, &clap::Command)> = Vec::new();
        for sub in cli.get_subcommands() {
            if sub.has_subcommands() {
                commands.extend(sub.get_subcommands().map(|s| (format!("{} {}", sub.get_name(), s.get_name()), s)));
            } else {
                commands.push((sub.get_name().to_owned(), sub));
            }
        }
        for (name, command) in commands {
            let prefix = format!("| `cargo xtask {name}");
            let row = readme
                .lines()
                .find(|l| l.starts_with(&prefix) && l[prefix.len()..].starts_with([' ', '`']))
                .unwrap_or_else(|| panic!("README's command table has no row for `cargo xtask {name}`"));
            let usage = row.split('`').nth(1).unwrap();
            let mut in_readme: Vec<&str> = usage
                .split(|c: char| c.is_whitespace() || "[]|=".contains(c))
                .filter(|w| w.starts_with("--") && *w != "--")
                .collect();
            in_readme.sort_unstable();
            in_readme.dedup();
            let mut defined: Vec<String> =
                command.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
            defined.retain(|f| f != "--help" && f != "--version");
            defined.sort_unstable();
            assert_eq!(in_readme, defined, "README row of `cargo xtask {name}`: {row}");
        }
    }
}
