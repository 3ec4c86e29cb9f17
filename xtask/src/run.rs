//! `cargo xtask run SCENARIO.toml`: the main job. Boots, runs the scenario,
//! prints every event as it arrives, then a summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use kevent_bench::cpio::Archive;
use kevent_bench::dbus;
use kevent_bench::events;
use kevent_bench::json_lines;
use kevent_bench::runner;
use kevent_bench::scenario::Injector;
use kevent_bench::transcript::{errno_name, StepOutcome, StepRecord};
use kevent_bench::{scenario, Failure, MachineConfig};

use crate::flags::RunFlags;
use crate::initramfs;

pub fn run(flags: &RunFlags) -> anyhow::Result<()> {
    // A malformed scenario is reported before anything is built.
    let mut scenario = scenario::load(&flags.scenario)?;
    apply_overrides(&mut scenario, flags)?;
    let dbus_socket = flags.dbus_socket.as_deref().map(|path| dbus_socket_path(&scenario, path)).transpose()?;
    let artifacts = crate::build::run(&flags.build.resolve())?;
    scenario.check_params(&artifacts.module_parameters()?)?;
    let decision = crate::boot::decide_accel(&artifacts, flags.accel, scenario.machine.clock)?;
    let run_dir = crate::boot::run_dir(&artifacts, &format!("run-{}", scenario.name));
    let mut guest = scenario.guest(&artifacts);
    if !flags.includes.is_empty() {
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
    eprintln!("scenario {}: {}", scenario.name, scenario.description.trim().replace('\n', " "));
    eprintln!("injector: {}", scenario.injector);
    eprintln!("console log: {}", run_dir.join("console.log").display());
    let started = Instant::now();
    let mut normaliser = events::Normaliser::default();
    let print = |line: serde_json::Value| println!("{line}");
    if flags.json {
        print(json_lines::start(&scenario));
    }
    let mut print_step = |record: &StepRecord, finished: bool| {
        let mut out = std::io::stdout().lock();
        if flags.json {
            for datagram in &record.datagrams {
                let _ = writeln!(out, "{}", json_lines::event(record.index + 1, datagram, &mut normaliser, flags.raw));
            }
            for message in &record.dbus {
                let _ = writeln!(out, "{}", json_lines::dbus(record.index + 1, message, flags.raw));
            }
            if finished {
                let _ = writeln!(out, "{}", json_lines::step(record));
            }
            return;
        }
        let _ = writeln!(out, "── step {}: {}", record.index + 1, record.label);
        for datagram in &record.datagrams {
            let _ = writeln!(out, "{}", events::render_live(datagram, &events::decode(datagram)));
            if flags.raw {
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
    let transcript = match runner::run(&scenario, &config, &mut |record| print_step(record, true)) {
        Ok(transcript) => transcript,
        Err(failure) => {
            let mut failed_step = None;
            if let Failure::AtStep { step, label, captured, captured_dbus, .. } = &failure {
                // Nothing captured is lost: the failed step's events so far.
                let mut partial = StepRecord::new(step - 1, format!("{label} (failed)"), 1);
                partial.datagrams = captured.clone();
                partial.dbus = captured_dbus.clone();
                print_step(&partial, false);
                failed_step = Some(*step);
            }
            if flags.json {
                print(json_lines::failure(failed_step, &failure.report(), failure.exit_code()));
            }
            return Err(failure.into());
        }
    };
    for r in &transcript.background {
        if flags.json {
            print(json_lines::background(r));
        } else {
            println!("── background {}: exit code {} (signal {})", r.program, r.exit_code, r.signal);
            println!("stdout:\n{}", String::from_utf8_lossy(&r.stdout));
            println!("stderr:\n{}", String::from_utf8_lossy(&r.stderr));
        }
    }
    for flag in &transcript.timing_flags {
        if flags.json {
            print(json_lines::timing_flag(flag));
        }
        eprintln!("warning: {flag}");
    }
    if transcript.timing_flags_lost > 0 {
        eprintln!(
            "warning: {} more rate-limit decision(s) near the window's edge were not kept by the module; some \
             outcome may differ on another run",
            transcript.timing_flags_lost
        );
    }
    let totals = transcript.snapshot().totals;
    let elapsed = started.elapsed();
    if flags.json {
        print(json_lines::summary(&transcript, &totals, elapsed, &decision.accel.to_string()));
    }
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
    Ok(())
}

/// The command line's choices replace the scenario's own, each said out
/// loud; one that cannot apply (a CPU a step injects at would be gone) is
/// refused before anything is built.
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

fn apply_overrides(scenario: &mut scenario::Scenario, flags: &RunFlags) -> anyhow::Result<()> {
    let said = scenario.machine;
    if let Some(cpus) = flags.cpus {
        scenario.set_cpus(cpus).map_err(|e| anyhow::anyhow!("--cpus {cpus}: {e}"))?;
        eprintln!("machine: {cpus} CPUs (--cpus; the scenario says {})", said.cpus);
    }
    if let Some(memory) = flags.memory_mib {
        scenario.machine.memory_mib = memory;
        eprintln!("machine: {memory} MiB (--memory; the scenario says {})", said.memory_mib);
    }
    if let Some(clock) = flags.clock {
        scenario.machine.clock = clock.into();
        eprintln!("machine: {} clock (--clock; the scenario says {})", scenario.machine.clock, said.clock);
    }
    if let Some(injector) = flags.injector {
        eprintln!("injector: {} (--injector; the scenario says {})", Injector::from(injector), scenario.injector);
        scenario.injector = injector.into();
    }
    scenario.check_injector()?;
    Ok(())
}

/// The run's initramfs: the bench's, with the user's files appended as a
/// second archive (the kernel unpacks concatenated archives in order).
fn initramfs_with(base: &Path, includes: &[String], run_dir: &Path) -> anyhow::Result<PathBuf> {
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
            initramfs::add_elf(&mut archive, &host, &guest).with_context(|| format!("--include {include}"))?;
        } else {
            archive.file(&guest, 0o644, data);
        }
    }
    std::fs::create_dir_all(run_dir)?;
    let path = run_dir.join("initramfs.cpio");
    archive.append_to(base, &path).with_context(|| format!("append the included files to {}", base.display()))?;
    Ok(path)
}
