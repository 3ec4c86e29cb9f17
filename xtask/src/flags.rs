//! Command-line flags of `cargo xtask`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use kevent_bench::scenario::Injector;
use kevent_bench::AccelChoice;

pub const USAGE: &str = "\
usage: cargo xtask <command> [flags]

commands:
  run SCENARIO.toml     build, boot, run the scenario, print every event live, then a summary
  build                 build the kernel, the events modules, the agent and the initramfs
  boot                  build, boot the guest, wait for the agent's greeting, print timings, shut down
  test [-- ARGS]        build, then run every test (ARGS go to the test runner); without
                        --kernel-profile, the guest tests run again on the debug kernel
  bench boot            boot N times; print boot times beside the trivial-init floor
  bench scenarios       run the starter suite warm: wall time, time per scenario, injection rate
  bench inject          injection-to-host latency and sustained rate, sensor device beside debugfs

build flags (every command):
  --kernel-src DIR      build this kernel tree instead of Debian's linux-source-6.12
                        (environment: KEVENT_BENCH_KERNEL_SRC)
  --kernel-profile P    default | debug (lockdep, atomic-sleep checks; its own cache entry)
                        (environment: KEVENT_BENCH_KERNEL_PROFILE)

guest flags (boot, test, bench):
  --accel A             auto | kvm | tcg (default auto: KVM only if a probe guest boots under it)
  --cpus N              virtual CPUs, each in its own socket (default 2)
  --memory MIB          guest memory in MiB (default 256)

boot and run flags:
  --console             stream the serial console to stderr

boot flags:
  --append ARG          add a kernel command-line argument (repeatable)

run flags:
  --injector I          device | debugfs: how injections reach the guest, replacing the
                        scenario's own choice (default: the scenario's, else device)
  --json                one JSON object per event instead of the udevadm-style text
  --raw                 show each datagram's bytes as well
  --include HOST[:GUEST]
                        add a file to the initramfs (default GUEST = /bin/NAME); an ELF
                        brings the shared libraries it needs (repeatable)

bench flags:
  --runs N              boots per configuration (default 10)

environment:
  KEVENT_BENCH_CACHE    kernel sources and builds (default $XDG_CACHE_HOME/kevent-bench or ~/.cache/kevent-bench)
  KEVENT_BENCH_QEMU     QEMU binary (default qemu-system-x86_64 on PATH)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelProfile {
    Default,
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

    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "default" => Ok(KernelProfile::Default),
            "debug" => Ok(KernelProfile::Debug),
            other => bail!("unknown kernel profile {other:?}: expected default or debug"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuildFlags {
    pub kernel_src: Option<PathBuf>,
    pub profile: KernelProfile,
    /// Whether the profile was chosen (flag or environment) or defaulted.
    pub profile_chosen: bool,
}

impl BuildFlags {
    /// The command that builds the same guest again, whatever the
    /// environment is then: the flags are spelled out. `kernel_tree` is the
    /// user's tree as the build resolved it, if there is one.
    pub fn rebuild_command(&self, kernel_tree: Option<&std::path::Path>) -> String {
        let mut command = "cargo xtask build".to_owned();
        if let Some(tree) = kernel_tree {
            command.push_str(" --kernel-src ");
            command.push_str(&shell_word(&tree.to_string_lossy()));
        }
        if self.profile != KernelProfile::Default {
            command.push_str(" --kernel-profile ");
            command.push_str(self.profile.name());
        }
        command
    }
}

/// `word` as a shell reads it back: quoted only if it must be.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[derive(Debug, Clone)]
pub struct GuestFlags {
    pub accel: AccelChoice,
    pub cpus: u32,
    pub memory_mib: u32,
}

#[derive(Debug, Clone)]
pub struct BootFlags {
    pub build: BuildFlags,
    pub guest: GuestFlags,
    pub console: bool,
    pub append: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RunFlags {
    pub build: BuildFlags,
    pub guest: GuestFlags,
    pub scenario: PathBuf,
    pub console: bool,
    pub json: bool,
    pub raw: bool,
    pub includes: Vec<String>,
    pub injector: Option<Injector>,
}

#[derive(Debug, Clone)]
pub struct TestFlags {
    pub build: BuildFlags,
    pub guest: GuestFlags,
    pub runner_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTarget {
    Boot,
    Scenarios,
    Inject,
}

#[derive(Debug, Clone)]
pub struct BenchFlags {
    pub build: BuildFlags,
    pub guest: GuestFlags,
    pub target: BenchTarget,
    pub runs: usize,
}

#[derive(Debug)]
pub enum Command {
    Help,
    Build(BuildFlags),
    Boot(BootFlags),
    Run(RunFlags),
    Test(TestFlags),
    Bench(BenchFlags),
}

struct Args {
    rest: std::vec::IntoIter<String>,
}

impl Args {
    fn value(&mut self, flag: &str) -> anyhow::Result<String> {
        self.rest.next().ok_or_else(|| anyhow!("{flag} needs a value"))
    }

    fn number<T: std::str::FromStr>(&mut self, flag: &str) -> anyhow::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let v = self.value(flag)?;
        v.parse().with_context(|| format!("{flag} {v:?}"))
    }
}

pub fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Command> {
    let mut args = Args { rest: args.collect::<Vec<_>>().into_iter() };
    let Some(command) = args.rest.next() else { return Ok(Command::Help) };
    let profile_env = std::env::var("KEVENT_BENCH_KERNEL_PROFILE").ok();
    let mut build = BuildFlags {
        kernel_src: std::env::var_os("KEVENT_BENCH_KERNEL_SRC").map(PathBuf::from),
        profile: match &profile_env {
            Some(p) => KernelProfile::parse(p).context("KEVENT_BENCH_KERNEL_PROFILE")?,
            None => KernelProfile::Default,
        },
        profile_chosen: profile_env.is_some(),
    };
    let mut guest = GuestFlags { accel: AccelChoice::Auto, cpus: 2, memory_mib: 256 };
    let (mut console, mut append, mut runs, mut runner_args) = (false, Vec::new(), 10usize, Vec::new());
    let mut bench_target = None;
    let (mut scenario, mut json, mut raw, mut includes) = (None, false, false, Vec::new());
    let mut injector = None;

    let takes_guest = matches!(command.as_str(), "boot" | "test" | "bench" | "run");
    while let Some(arg) = args.rest.next() {
        match arg.as_str() {
            "--kernel-src" => build.kernel_src = Some(args.value(&arg)?.into()),
            "--kernel-profile" => {
                build.profile = KernelProfile::parse(&args.value(&arg)?)?;
                build.profile_chosen = true;
            }
            "--accel" if takes_guest => guest.accel = args.value(&arg)?.parse().map_err(|e: String| anyhow!(e))?,
            "--cpus" if takes_guest => guest.cpus = args.number(&arg)?,
            "--memory" if takes_guest => guest.memory_mib = args.number(&arg)?,
            "--console" if command == "boot" || command == "run" => console = true,
            "--json" if command == "run" => json = true,
            "--raw" if command == "run" => raw = true,
            "--include" if command == "run" => includes.push(args.value(&arg)?),
            "--injector" if command == "run" => {
                let name = args.value(&arg)?;
                injector = Some(
                    Injector::from_name(&name)
                        .ok_or_else(|| anyhow!("--injector {name:?}: expected {}", Injector::NAMES))?,
                );
            }
            "--append" if command == "boot" => append.push(args.value(&arg)?),
            "--runs" if command == "bench" => runs = args.number(&arg)?,
            "--" if command == "test" => runner_args.extend(args.rest.by_ref()),
            "-h" | "--help" => return Ok(Command::Help),
            target if command == "bench" && bench_target.is_none() && !target.starts_with('-') => {
                bench_target = Some(target.to_owned())
            }
            path if command == "run" && scenario.is_none() && !path.starts_with('-') => scenario = Some(path.into()),
            other => bail!("unknown argument {other:?} for `{command}`"),
        }
    }
    if !(1..=8).contains(&guest.cpus) {
        bail!("--cpus {}: the bench kernel supports 1 to 8 CPUs", guest.cpus);
    }
    if guest.memory_mib < 64 {
        bail!("--memory {}: the guest needs at least 64 MiB", guest.memory_mib);
    }
    Ok(match command.as_str() {
        "help" | "-h" | "--help" => Command::Help,
        "build" => Command::Build(build),
        "boot" => Command::Boot(BootFlags { build, guest, console, append }),
        "run" => {
            let scenario =
                scenario.ok_or_else(|| anyhow!("`run` needs a scenario: cargo xtask run scenarios/NAME.toml"))?;
            Command::Run(RunFlags { build, guest, scenario, console, json, raw, includes, injector })
        }
        "test" => Command::Test(TestFlags { build, guest, runner_args }),
        "bench" => {
            let target = match bench_target.as_deref() {
                Some("boot") => BenchTarget::Boot,
                Some("scenarios") => BenchTarget::Scenarios,
                Some("inject") => BenchTarget::Inject,
                Some(other) => bail!("unknown benchmark {other:?}: expected `boot`, `scenarios` or `inject`"),
                None => bail!("`bench` needs a benchmark: `cargo xtask bench boot`, `scenarios` or `inject`"),
            };
            Command::Bench(BenchFlags { build, guest, target, runs: runs.max(1) })
        }
        other => bail!("unknown command {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &str) -> anyhow::Result<Command> {
        parse(words.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn boot_flags_are_read() {
        let Command::Boot(b) = parse_words("boot --accel tcg --cpus 4 --console --append quiet").unwrap() else {
            panic!("not a boot command")
        };
        assert_eq!(b.guest.accel, AccelChoice::Tcg);
        assert_eq!(b.guest.cpus, 4);
        assert!(b.console);
        assert_eq!(b.append, ["quiet"]);
    }

    #[test]
    fn flags_of_other_commands_are_refused_by_name() {
        let err = parse_words("build --console").unwrap_err().to_string();
        assert_eq!(err, "unknown argument \"--console\" for `build`");
        let err = parse_words("boot --cpus 9").unwrap_err().to_string();
        assert!(err.contains("1 to 8 CPUs"), "{err}");
        let err = parse_words("boot --accel hvf").unwrap_err().to_string();
        assert!(err.contains("expected auto, kvm or tcg"), "{err}");
        let err = parse_words("bench").unwrap_err().to_string();
        assert!(err.contains("cargo xtask bench boot"), "{err}");
        let err = parse_words("bench everything").unwrap_err().to_string();
        assert!(err.contains("expected `boot`, `scenarios` or `inject`"), "{err}");
        let err = parse_words("run s.toml --injector msr").unwrap_err().to_string();
        assert_eq!(err, "--injector \"msr\": expected \"device\" or \"debugfs\"");
        let err = parse_words("boot --injector debugfs").unwrap_err().to_string();
        assert_eq!(err, "unknown argument \"--injector\" for `boot`");
    }

    #[test]
    fn run_takes_an_injector_that_replaces_the_scenarios() {
        let Command::Run(r) = parse_words("run scenarios/a.toml --injector debugfs").unwrap() else { panic!() };
        assert_eq!(r.injector, Some(Injector::Debugfs));
        let Command::Run(r) = parse_words("run scenarios/a.toml").unwrap() else { panic!() };
        assert_eq!(r.injector, None);
        let Command::Bench(b) = parse_words("bench inject --runs 3").unwrap() else { panic!() };
        assert_eq!((b.target, b.runs), (BenchTarget::Inject, 3));
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
        let Command::Test(t) = parse_words("test --kernel-profile debug -- --partition count:1/2 boot").unwrap() else {
            panic!("not a test command")
        };
        assert_eq!(t.build.profile, KernelProfile::Debug);
        assert_eq!(t.runner_args, ["--partition", "count:1/2", "boot"]);
    }
}
