//! `cargo xtask run SCENARIO.toml`: the main job. Boots, runs the scenario,
//! prints every event as it arrives, then a summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kevent_bench::bundle::OverrideField;
use kevent_bench::cpio::Archive;
use kevent_bench::dbus;
use kevent_bench::dyndbg::Query;
use kevent_bench::events;
use kevent_bench::gdb::{self, Endpoint, GdbStub};
use kevent_bench::json_lines;
use kevent_bench::runner;
use kevent_bench::scenario::Injector;
use kevent_bench::trace;
use kevent_bench::transcript::{errno_name, StepOutcome, StepRecord};
use kevent_bench::{bundle, scenario, AccelDecision, Failure, MachineConfig};

use crate::flags::{BuildFlags, KernelProfile, RunFlags};
use crate::initramfs;
use crate::reproducer;

pub fn run(flags: &RunFlags) -> anyhow::Result<()> {
    // A malformed scenario or trace is reported before anything is built.
    let mut scenario = match (&flags.scenario, &flags.replay) {
        (Some(path), _) => scenario::load(path)?,
        (None, Some(trace)) => {
            let trace = kevent_bench::msr_trace::load(trace)?;
            eprintln!(
                "replay: {} recorded on {}, {} rows, {:.3} s; {} injection(s) where a value changed",
                trace.path.display(),
                trace.topology,
                trace.rows.len(),
                trace.duration().as_secs_f64(),
                trace.injections().len()
            );
            if trace.renumbered() {
                let pairs: Vec<String> = trace
                    .cpus
                    .iter()
                    .map(|c| {
                        format!("{} (package {}, core {}) → {}", c.cpu, c.package, c.core, trace.guest_cpus[&c.cpu])
                    })
                    .collect();
                eprintln!("replay: the guest numbers the recorded CPUs package by package: {}", pairs.join(", "));
            }
            scenario::Scenario::of_replay(trace, flags.speed).map_err(anyhow::Error::msg)?
        }
        (None, None) => unreachable!("clap requires a scenario or --replay"),
    };
    apply_overrides(&mut scenario, flags)?;
    if flags.bundle.is_some() && !scenario.traces.is_empty() {
        bail!("--bundle: a reproducer bundle carries the scenario file, not the traces its replay steps read");
    }
    check_appended(&flags.append)?;
    let dyndbg =
        flags.dyndbg.iter().map(|q| Query::parse(q)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    let gdb = gdb_stub(flags)?;
    // So is a bundle that could not be written: its directory is tried now.
    let bundle_target = flags.bundle.as_deref().map(reproducer::Target::prepare).transpose()?;
    let dbus_socket = flags.dbus_socket.as_deref().map(|path| dbus_socket_path(&scenario, path)).transpose()?;
    let build = kernel_for_trace(flags.build.resolve(), &scenario)?;
    let artifacts = crate::build::run(&build)?;
    scenario.check_params(&artifacts.module_parameters()?)?;
    let decision = crate::boot::decide_accel(&artifacts, flags.accel, scenario.machine.clock)?;
    let run_dir = crate::boot::run_dir(&artifacts, &format!("run-{}", scenario.name));
    let mut guest = scenario.guest(&artifacts);
    guest.kernel_args.extend(flags.append.iter().cloned());
    if !flags.includes.is_empty() {
        // The scenario's archive: the D-Bus guest's, if it asks for one.
        guest.initramfs = initramfs_with(&guest.initramfs, &flags.includes, &run_dir)?;
    }
    guest.dbus_socket = dbus_socket.clone();
    if let Some(path) = &dbus_socket {
        eprintln!("the guest's system bus: unix:path={} (once the guest has booted)", path.display());
    }
    // QEMU leaves its listening socket behind: it is removed however the run ends.
    let _socket_guard = dbus_socket.map(RemoveOnDrop);
    let mut config = MachineConfig::new(guest, decision.accel, run_dir.clone())?;
    config.stream_console = flags.console;
    config.dyndbg = dyndbg;
    if let Some(stub) = gdb {
        announce_gdb(&stub, &artifacts);
        config.gdb = Some(stub);
    }
    eprintln!("scenario {}: {}", scenario.name, scenario.description.trim().replace('\n', " "));
    eprintln!("injector: {}", scenario.injector);
    eprintln!("console log: {}", run_dir.join("console.log").display());
    if let Some(request) = &scenario.trace {
        eprintln!("trace: {request}, into the run directory's {} (asked by {})", trace::TRACE_FILE, request.origin);
    }
    let execution = execute(&scenario, &config, &decision, Output { json: flags.json, raw: flags.raw });
    if let (Some(target), Some(scenario_file)) = (bundle_target, &flags.scenario) {
        if kevent_bench::process::interrupted().is_none() {
            let scenario_text =
                std::fs::read(scenario_file).with_context(|| format!("read {}", scenario_file.display()))?;
            let run = reproducer::RunRecord {
                scenario: &scenario,
                scenario_file,
                scenario_text,
                overrides: overrides_of(flags),
                append: appended(flags, &config),
                includes: &flags.includes,
                build: &build,
                artifacts: &artifacts,
                config: &config,
                decision: &decision,
                execution: &execution,
            };
            target.write(&run, reproducer::describe(&run)?)?;
        }
    }
    execution.outcome.map(|_| ()).map_err(anyhow::Error::from)
}

/// A replay whose median injection starts later than this after its
/// recorded time is said to have fallen behind.
const REPLAY_BEHIND: Duration = Duration::from_millis(10);

/// How a run prints.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Each datagram's bytes as well.
    pub raw: bool,
}

/// A scenario run as it happened, whether it completed or not.
pub struct Execution {
    /// Every step completed, as the runner reported it.
    pub steps: Vec<StepRecord>,
    /// The run as `run --json --raw` prints it, every line.
    pub lines: Vec<serde_json::Value>,
    /// The transcript, or how the run failed.
    pub outcome: Result<kevent_bench::transcript::Transcript, Failure>,
    /// Host wall time.
    pub elapsed: Duration,
}

impl Execution {
    /// The 1-based step the run failed at, if it failed in one.
    pub fn failed_step(&self) -> Option<usize> {
        match &self.outcome {
            Err(Failure::AtStep { step, .. }) => Some(*step),
            _ => None,
        }
    }
}

/// Boots, runs every step of `scenario`, prints each event live and a
/// summary, and keeps every line `run --json --raw` would print.
pub fn execute(
    scenario: &scenario::Scenario,
    config: &MachineConfig,
    decision: &AccelDecision,
    output: Output,
) -> Execution {
    let started = Instant::now();
    let mut normaliser = events::Normaliser::default();
    let mut lines = Vec::new();
    let keep = |line: serde_json::Value, lines: &mut Vec<serde_json::Value>| {
        if output.json {
            println!("{}", json_lines::shown(&line, output.raw));
        }
        lines.push(line);
    };
    keep(json_lines::start(scenario), &mut lines);
    let mut steps = Vec::new();
    let mut print_step = |record: &StepRecord, finished: bool, lines: &mut Vec<serde_json::Value>| {
        for datagram in &record.datagrams {
            keep(json_lines::event(record.index + 1, datagram, &mut normaliser), lines);
        }
        for message in &record.dbus {
            keep(json_lines::dbus(record.index + 1, message), lines);
        }
        if finished {
            keep(json_lines::step(record), lines);
            if let Some(timing) = &record.replay {
                keep(json_lines::replay(record.index + 1, timing), lines);
            }
        }
        if let (Some(timing), false) = (&record.replay, output.json) {
            eprintln!("replay: {timing}");
            if timing.late_percentile(50).is_some_and(|late| late > REPLAY_BEHIND) {
                eprintln!(
                    "warning: the replay fell behind the trace: the {} injector took longer per injection than the \
                     trace's spacing{}; a --speed below 1 (or the device injector) keeps closer to it",
                    scenario.injector,
                    if timing.speed > 1.0 { " at this speed" } else { "" }
                );
            }
        }
        if output.json {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "── step {}: {}", record.index + 1, record.label);
        for datagram in &record.datagrams {
            let _ = writeln!(out, "{}", events::render_live(datagram, &events::decode(datagram)));
            if output.raw {
                let _ = writeln!(out, "RAW {} bytes: {}\n", datagram.bytes.len(), events::escape(&datagram.bytes));
            }
        }
        let datagrams: Vec<_> = record.datagrams.iter().collect();
        for entry in dbus::entries(&record.dbus, &datagrams) {
            let _ = writeln!(out, "dbus {} {}", entry.message, entry.path.as_deref().unwrap_or(""));
            if let Some(carries) = &entry.carries {
                let _ = writeln!(out, "     carries {carries}");
            }
            for arg in &entry.args {
                let _ = writeln!(out, "     {arg}");
            }
            if let Some(wrong) = &entry.wrong {
                let _ = writeln!(out, "     WRONG: {wrong}");
            }
        }
        match &record.outcome {
            StepOutcome::Read(data) => {
                let _ = writeln!(out, "{}\n", String::from_utf8_lossy(data).trim_end());
            }
            StepOutcome::Failed { errno, message } => {
                let _ = writeln!(out, "error {}: {message}\n", errno_name(*errno));
            }
            StepOutcome::Ran(r) => {
                let _ = writeln!(out, "exit code {} (signal {})", r.exit_code, r.signal);
                let _ = writeln!(out, "stdout:\n{}", String::from_utf8_lossy(&r.stdout));
                let _ = writeln!(out, "stderr:\n{}", String::from_utf8_lossy(&r.stderr));
            }
            StepOutcome::Done => {}
        }
    };
    let result = runner::run(scenario, config, &mut |record| {
        print_step(record, true, &mut lines);
        steps.push(record.clone());
    });
    let transcript = match result {
        Ok(transcript) => transcript,
        Err(failure) => {
            let mut failed_step = None;
            if let Failure::AtStep { step, label, captured, captured_dbus, .. } = &failure {
                // Nothing captured is lost: the failed step's events so far.
                let mut partial = StepRecord::new(step - 1, format!("{label} (failed)"), 1);
                partial.datagrams = captured.clone();
                partial.dbus = captured_dbus.clone();
                print_step(&partial, false, &mut lines);
                failed_step = Some(*step);
            }
            let trace_file = trace::trace_file(&config.run_dir);
            if let (Some(_), Ok(metadata)) = (&scenario.trace, std::fs::metadata(&trace_file)) {
                keep(json_lines::partial_trace(&trace_file, metadata.len()), &mut lines);
                eprintln!("trace: up to the failure in {}", trace_file.display());
            }
            keep(json_lines::failure(failed_step, &failure.report(), failure.exit_code()), &mut lines);
            return Execution { steps, lines, outcome: Err(failure), elapsed: started.elapsed() };
        }
    };
    for r in &transcript.background {
        keep(json_lines::background(r), &mut lines);
        if !output.json {
            println!("── background {}: exit code {} (signal {})", r.program, r.exit_code, r.signal);
            println!("stdout:\n{}", String::from_utf8_lossy(&r.stdout));
            println!("stderr:\n{}", String::from_utf8_lossy(&r.stderr));
        }
    }
    match &transcript.bus_backlog {
        Ok(backlogs) => {
            for backlog in backlogs {
                keep(json_lines::bus_backlog(backlog), &mut lines);
                eprintln!("warning: {backlog}");
            }
        }
        Err(why) => {
            let line = json_lines::bus_backlog_unknown(why);
            eprintln!("warning: {}", line["message"].as_str().unwrap_or(why));
            keep(line, &mut lines);
        }
    }
    for flag in &transcript.timing_flags {
        keep(json_lines::timing_flag(flag), &mut lines);
        eprintln!("warning: {flag}");
    }
    if transcript.timing_flags_lost > 0 {
        eprintln!(
            "warning: {} more rate-limit decision(s) near the window's edge were not kept by the module; some \
             outcome may differ on another run",
            transcript.timing_flags_lost
        );
    }
    if let Some(summary) = &transcript.trace {
        keep(json_lines::trace(summary), &mut lines);
        for line in summary.report() {
            eprintln!("{line}");
        }
    }
    let totals = transcript.snapshot().totals;
    let elapsed = started.elapsed();
    keep(json_lines::summary(&transcript, &totals, elapsed, &decision.accel.to_string()), &mut lines);
    eprintln!(
        "{}: {} step(s), {} kmessage(s), {} uevent(s), none lost; {:.2} s on {} ({})",
        scenario.name,
        transcript.steps.len(),
        totals.kmessages,
        totals.uevents,
        elapsed.as_secs_f64(),
        decision.accel,
        transcript.hello.kernel_release
    );
    Execution { steps, lines, outcome: Ok(transcript), elapsed }
}

/// Refuses an `--append` word the guest would drop without a word: a
/// parameter of an events module, which the kernel leaves to modprobe and
/// the agent takes only from the scenario's `[params]` (`MODULE.dyndbg`
/// it does take, as modprobe would).
fn check_appended(words: &[String]) -> anyhow::Result<()> {
    for word in words {
        let key = word.split_once('=').map_or(word.as_str(), |(key, _)| key);
        // Through --dyndbg a query is checked against the guest's call
        // sites; as a plain word it would be taken unchecked.
        if key == "dyndbg" || key.ends_with(".dyndbg") {
            anyhow::bail!(
                "--append {word}: give dynamic debug queries with --dyndbg QUERY (e.g. --dyndbg 'module kevent_thermal \
                 +p'), which checks that each selects a call site in the guest"
            );
        }
        if let Some((module, param)) = key.split_once('.') {
            if kevent_bench::dyndbg::EVENT_MODULES.contains(&module.replace('-', "_").as_str()) {
                anyhow::bail!(
                    "--append {word}: the agent loads {module} with the scenario's parameters, not the command \
                     line's; set it in the scenario's [params] ({module}.{param} = ...)"
                );
            }
        }
    }
    Ok(())
}

/// `--gdb` and `--gdb-wait`, the endpoint checked before anything is built.
fn gdb_stub(flags: &RunFlags) -> anyhow::Result<Option<GdbStub>> {
    if flags.gdb.is_none() && !flags.gdb_wait {
        return Ok(None);
    }
    let endpoint = match flags.gdb.as_deref() {
        None | Some("") => Endpoint::Tcp(gdb::DEFAULT_PORT),
        Some(text) => Endpoint::parse(text).map_err(|e| anyhow::anyhow!("--gdb={e}"))?,
    };
    endpoint.check_free()?;
    Ok(Some(GdbStub { endpoint, wait: flags.gdb_wait }))
}

/// Prints the gdb command that attaches with this kernel's symbols, and
/// what this kernel lacks for it.
fn announce_gdb(stub: &GdbStub, artifacts: &kevent_bench::Artifacts) {
    let modules_dir = artifacts.modules.first().and_then(|m| m.parent()).unwrap_or(Path::new("."));
    let symbols = gdb::Symbols::of(&artifacts.vmlinux, modules_dir);
    eprintln!("gdb: {}", kevent_bench::process::shell_line(&gdb::command(&stub.endpoint, &symbols)));
    if !symbols.dwarf || !symbols.scripts {
        eprintln!(
            "warning: the {} kernel has {}: backtraces name functions, but without types, lines or the modules' \
             symbols; --kernel-profile debug has DWARF and lx-symbols",
            artifacts.profile,
            if symbols.dwarf { "no gdb scripts (CONFIG_GDB_SCRIPTS)" } else { "no DWARF (CONFIG_DEBUG_INFO)" }
        );
    }
    if stub.wait {
        eprintln!("gdb: the guest waits before its first instruction until gdb continues it (`continue`)");
    }
    eprintln!("gdb: the run's waits are suspended while gdb holds the guest");
}

/// The kernel a traced run needs: trace events are in the debug profile
/// only (they would slow the default guest's boot), so a run that traces
/// without choosing a profile gets the debug one, said out loud, and one
/// that chose the default profile is refused before anything is built.
fn kernel_for_trace(mut build: BuildFlags, scenario: &scenario::Scenario) -> anyhow::Result<BuildFlags> {
    let Some(request) = &scenario.trace else { return Ok(build) };
    if build.profile != KernelProfile::Default {
        return Ok(build);
    }
    if build.profile_chosen {
        anyhow::bail!(
            "{} {request}: the default kernel profile has no trace events (CONFIG_TRACING would slow every default \
             boot); --kernel-profile debug has them",
            request.origin
        );
    }
    eprintln!(
        "kernel: the debug profile ({} asks for trace events, which the default profile has not)",
        request.origin
    );
    build.profile = KernelProfile::Debug;
    Ok(build)
}

/// The kernel command-line words the run added, as a bundle records
/// them: `--append`'s, then `--dyndbg`'s.
fn appended(flags: &RunFlags, config: &MachineConfig) -> Vec<String> {
    let mut words = flags.append.clone();
    words.extend(kevent_bench::dyndbg::kernel_args(&config.dyndbg, &config.guest.kernel_args));
    words
}

/// The command line's choices over the scenario's, as a bundle records them.
fn overrides_of(flags: &RunFlags) -> bundle::Overrides {
    bundle::Overrides {
        cpus: flags.cpus,
        topology: flags.topology.map(|t| format!("{}x{}", t.packages, t.cores)),
        memory_mib: flags.memory_mib,
        clock: flags.clock.map(|c| kevent_bench::Clock::from(c).to_string()),
        injector: flags.injector.map(|i| Injector::from(i).to_string()),
    }
}

/// `--dbus-socket PATH`, absolute (QEMU resolves it in its own working
/// directory), refused for a scenario without the D-Bus side or a path
/// that is taken.
fn dbus_socket_path(scenario: &scenario::Scenario, path: &Path) -> anyhow::Result<PathBuf> {
    if !scenario.machine.dbus {
        bail!(
            "--dbus-socket {}: scenario {} has no D-Bus side to expose (add `dbus = true` under [machine])",
            path.display(),
            scenario.name
        );
    }
    if path.symlink_metadata().is_ok() {
        bail!("--dbus-socket {}: the path exists; the guest's bus needs a new socket there", path.display());
    }
    let absolute = std::path::absolute(path).with_context(|| format!("--dbus-socket {}", path.display()))?;
    let parent = absolute.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        bail!("--dbus-socket {}: {} is not a directory", path.display(), parent.display());
    }
    Ok(absolute)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The command line's choices replace the scenario's own, each said out
/// loud; one that cannot apply (a CPU a step injects at would be gone) is
/// refused before anything is built.
fn apply_overrides(scenario: &mut scenario::Scenario, flags: &RunFlags) -> anyhow::Result<()> {
    let flag = |field: OverrideField| match field {
        OverrideField::Cpus => "--cpus",
        OverrideField::Topology => "--topology",
        OverrideField::MemoryMib => "--memory",
        OverrideField::Clock => "--clock",
        OverrideField::Injector => "--injector",
    };
    let applied = overrides_of(flags).apply(scenario).map_err(|e| anyhow::anyhow!("{} {}", flag(e.field), e.why))?;
    for a in applied {
        let what = if a.field == OverrideField::Injector { "injector" } else { "machine" };
        eprintln!("{what}: {} ({}; the scenario says {})", a.now, flag(a.field), a.scenario_said);
    }
    if let Some(events) = &flags.trace {
        let request =
            trace::Request::parse_flag(events, "--trace").map_err(|e| anyhow::anyhow!("--trace={events}: {e}"))?;
        if let Some(said) = &scenario.trace {
            eprintln!("trace: {request} (--trace; the scenario says {said})");
        }
        scenario.trace = Some(request);
    }
    scenario.check_injector()?;
    Ok(())
}

/// The run's initramfs: the bench's, with the user's files appended as a
/// second archive (the kernel unpacks concatenated archives in order).
pub fn initramfs_with(base: &Path, includes: &[String], run_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut archive = Archive::new();
    for include in includes {
        let (host, guest) = match include.split_once(':') {
            Some((host, guest)) => (PathBuf::from(host), guest.to_owned()),
            None => {
                let host = PathBuf::from(include);
                let name = host.file_name().with_context(|| format!("--include {include}: no file name"))?;
                let guest = format!("/bin/{}", name.to_string_lossy());
                (host, guest)
            }
        };
        let data = std::fs::read(&host).with_context(|| format!("--include {include}: read {}", host.display()))?;
        if initramfs::is_elf(&data) {
            initramfs::add_elf(&mut archive, &host, data, &guest).with_context(|| format!("--include {include}"))?;
        } else {
            archive.file(&guest, 0o644, data);
        }
    }
    std::fs::create_dir_all(run_dir)?;
    let path = run_dir.join("initramfs.cpio");
    archive.append_to(base, &path).with_context(|| format!("append the included files to {}", base.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::check_appended;

    fn refusal(word: &str) -> Option<String> {
        check_appended(&[word.to_owned()]).err().map(|e| e.to_string())
    }

    #[test]
    fn appended_words_that_would_go_unchecked_or_unused_are_refused() {
        assert_eq!(refusal("loglevel=8"), None);
        assert_eq!(refusal("initcall_debug"), None);
        assert_eq!(refusal("printk.time=1"), None, "a built-in's parameter reaches the kernel");
        let param = refusal("kevent-thermal.rate_limit_ms=0").expect("an events module's parameter");
        assert!(param.contains("[params] (kevent-thermal.rate_limit_ms = ...)"), "{param}");
        for query in ["dyndbg=+p", "kevent_thermal.dyndbg=\"+p\"", "kmessage.dyndbg"] {
            let why = refusal(query).unwrap_or_else(|| panic!("{query} was taken"));
            assert!(why.contains("--dyndbg QUERY"), "{why}");
        }
    }
}
