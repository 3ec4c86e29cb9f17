//! Running a scenario: boot, steps in order, shutdown, and the rate-limit
//! decisions the guest's clock leaves uncertain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kevent_wire::{Command, Outcome};

use crate::failure::Failure;
use crate::inject::{Injection, Injector};
use crate::machine::{Machine, MachineConfig};
use crate::msr_replay;
use crate::scenario::{Action, Scenario, Step};
use crate::sensor::{Register, Timing};
use crate::trace;
use crate::transcript::{StepOutcome, StepRecord, TimingFlag, Transcript};

/// The interrupts each step raised on each CPU, in the numbering of the
/// module's per-CPU `interrupts` counter, to place its records.
#[derive(Debug, Default)]
struct InterruptLedger {
    /// Per CPU: (step, last interrupt number of the step).
    ends: BTreeMap<u32, Vec<(usize, u64)>>,
    counted: BTreeMap<u32, u64>,
}

impl InterruptLedger {
    fn add(&mut self, step: usize, cpu: u32, interrupts: u64) {
        if interrupts == 0 {
            return;
        }
        let total = self.counted.entry(cpu).or_default();
        *total += interrupts;
        self.ends.entry(cpu).or_default().push((step, *total));
    }

    /// The step that raised `interrupt` on `cpu`; 0 for one no step raised
    /// (which the module's numbering rules out).
    fn step_of(&self, cpu: u32, interrupt: u64) -> usize {
        self.ends.get(&cpu).and_then(|ends| ends.iter().find(|(_, end)| interrupt <= *end)).map_or(0, |(step, _)| *step)
    }
}

const RATE_LIMIT_EDGES: &str = "/sys/kernel/debug/kevent_thermal/rate_limit_edges";
const RATE_LIMIT_MS: &str = "/sys/module/kevent_thermal/parameters/rate_limit_ms";

/// A file of the module's, read between steps: through `Machine::ask`
/// (as `trace::read_all` reads), so that events a background program
/// causes meanwhile stay for the next step instead of being taken here.
fn read_text(machine: &mut Machine, path: &str, bound: Duration) -> Result<String, Failure> {
    trace::read_all(machine, path, bound)?.map_err(|(errno, message)| Failure::Host {
        message: format!("read {path} in the guest: {message} ({})", crate::transcript::errno_name(errno)),
    })
}

/// Whether the module's rate limit is on now: with it off there is no
/// decision a late injection could move.
fn rate_limit_on(machine: &mut Machine, bound: Duration) -> Result<bool, Failure> {
    Ok(read_text(machine, RATE_LIMIT_MS, bound)?.trim() != "0")
}

/// Reads the module's records of decisions near the window's edge, and
/// how many it could not keep.
fn timing_flags(
    machine: &mut Machine,
    ledger: &InterruptLedger,
    bound: Duration,
) -> Result<(Vec<TimingFlag>, u64), Failure> {
    let text = read_text(machine, RATE_LIMIT_EDGES, bound)?;
    parse_edges(&text, ledger).map_err(|why| Failure::Host { message: format!("{RATE_LIMIT_EDGES}: {why}") })
}

fn parse_edges(text: &str, ledger: &InterruptLedger) -> Result<(Vec<TimingFlag>, u64), String> {
    let mut flags = Vec::new();
    let mut lost = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["cpu", cpu, "interrupt", interrupt, "margin_ns", margin, "within_burst", burst] => {
                let number = |s: &str| s.parse::<i64>().map_err(|_| format!("not a number in {line:?}"));
                let (cpu, interrupt) = (number(cpu)? as u32, number(interrupt)? as u64);
                flags.push(TimingFlag::Edge {
                    step: ledger.step_of(cpu, interrupt),
                    cpu,
                    margin_ns: number(margin)?,
                    within_burst: *burst == "1",
                });
            }
            ["overflow", dropped] => lost = dropped.parse().map_err(|_| format!("not a number in {line:?}"))?,
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    Ok((flags, lost))
}

/// The agent's request for a step that is not an injection.
fn command_of(action: &Action) -> Command {
    match action {
        Action::Inject { .. } => unreachable!("injections go through Machine::inject"),
        Action::Sleep { ms } => Command::Sleep { ns: ms * 1_000_000 },
        Action::Read { path } => Command::ReadFile { path: path.clone() },
        Action::Write { path, value } => Command::WriteFile { path: path.clone(), data: value.as_bytes().to_vec() },
        Action::Exec { program, args, background } => {
            Command::Exec { program: program.clone(), args: args.clone(), background: *background }
        }
        Action::Replay { .. } => unreachable!("replays go through msr_replay::replay"),
        Action::Kdbusd { start } => Command::Kdbusd { start: *start },
    }
}

/// Boots `config`'s guest, runs every step, shuts down. `observe` sees each
/// step as soon as it is done (for live output). A kernel report on the
/// console fails the run at the step where it appeared.
pub fn run(
    scenario: &Scenario,
    config: &MachineConfig,
    observe: &mut dyn FnMut(&StepRecord),
) -> Result<Transcript, Failure> {
    if scenario.injector == Injector::Device && !config.sensor {
        return Err(Failure::Host { message: "the device injector needs a guest with the emulated sensor".into() });
    }
    scenario.check_injector().map_err(|e| Failure::Host { message: e.to_string() })?;
    let mut machine = Machine::boot(config)?;
    let bound = config.timeouts.command;
    if !config.dyndbg.is_empty() {
        check_dyndbg(&mut machine, &config.dyndbg, bound)?;
    }
    let mut trace = match &scenario.trace {
        Some(request) => {
            let title = format!("{}: {}", scenario.name, scenario.description.trim().replace('\n', " "));
            let memory = config.guest.memory_mib;
            Some(trace::Session::start(&mut machine, request, &config.run_dir, &title, memory, bound)?)
        }
        None => None,
    };
    let mut steps = Vec::new();
    let mut any_background = false;
    let mut ledger = InterruptLedger::default();
    let watched = Duration::from_millis(config.guest.clock.rate_limit_edges_ms().0.into());
    let mut late_replays = Vec::new();
    for (index, step) in scenario.steps.iter().enumerate() {
        any_background |= matches!(step.action, Action::Exec { background: true, .. });
        let mut record = StepRecord::new(index, step_label(step), step.repeat);
        let started = Instant::now();
        let mut result = match trace.as_mut() {
            Some(session) => session.mark_step(&mut machine, index + 1, &record.label),
            None => Ok(()),
        };
        let mut interrupts = Interrupts::new();
        if result.is_ok() {
            result = run_step(&mut machine, scenario, step, bound, &mut record).map(|raised| interrupts = raised);
        }
        if let (Ok(()), Some(session)) = (&result, trace.as_mut()) {
            result = session.drain(&mut machine, index + 1);
        }
        if let Err(failure) = result {
            // What the step had received is the most useful part of a failure.
            let captured = machine.take_captured();
            record.datagrams.extend(captured.datagrams);
            record.dbus.extend(captured.dbus);
            if let Some(session) = trace.take() {
                // The failed step's trace too, if the guest still answers.
                let _ = session.finish_within(&mut machine, index + 1, SALVAGE_BOUND);
            }
            return Err(Failure::AtStep {
                step: index + 1,
                label: record.label,
                captured: record.datagrams,
                captured_dbus: record.dbus,
                failure: Box::new(failure),
            });
        }
        record.elapsed = started.elapsed();
        // Read as the step ends (a later step may turn the rate limit off),
        // and only for a replay late enough to be flagged.
        if let Some(flag) = record.replay.as_ref().and_then(|timing| TimingFlag::of_replay(index + 1, timing, watched))
        {
            if rate_limit_on(&mut machine, bound)? {
                late_replays.push(flag);
            }
        }
        for (cpu, count) in interrupts {
            ledger.add(index + 1, cpu, count);
        }
        observe(&record);
        steps.push(record);
    }
    let background = if any_background {
        match machine.request(Command::FinishBackground, bound)?.outcome {
            Outcome::Background(results) => results.into_iter().map(Into::into).collect(),
            other => return Err(Failure::protocol(format!("FinishBackground answered {other:?}"))),
        }
    } else {
        Vec::new()
    };
    let (mut timing_flags, timing_flags_lost) = timing_flags(&mut machine, &ledger, bound)?;
    timing_flags.extend(late_replays);
    timing_flags.sort_by_key(TimingFlag::step);
    let trace = match trace {
        Some(session) => Some(session.finish(&mut machine, steps.len())?),
        None => None,
    };
    // After the trace has stopped: the question is not the last step's.
    let bus_backlog = if scenario.machine.dbus { bus_backlog(&mut machine, bound)? } else { Ok(Vec::new()) };
    let hello = machine.hello.clone();
    machine.shutdown(config.timeouts.shutdown)?;
    Ok(Transcript {
        scenario: scenario.clone(),
        hello,
        steps,
        background,
        timing_flags,
        timing_flags_lost,
        trace,
        bus_backlog,
    })
}

/// Asks dbus-daemon, through `kevent-dbus-tap backlog` in the guest, which
/// connections it holds messages for that their sockets have not taken:
/// a scenario's subscriber that does not keep up loses nothing the bench
/// sees, and would otherwise go unsaid. The bus traffic of the question
/// belongs to no step. A question the tap could not answer is the run's
/// warning, not its failure (`Err`, why); a guest that no longer answers
/// the agent's request is the run's failure.
fn bus_backlog(machine: &mut Machine, bound: Duration) -> Result<Result<Vec<crate::dbus::Backlog>, String>, Failure> {
    let asked =
        Command::Exec { program: kevent_wire::DBUS_TAP_PATH.into(), args: vec!["backlog".into()], background: false };
    Ok(match machine.request(asked, bound)?.outcome {
        Outcome::Exec(result) if result.exit_code == 0 && result.signal == 0 => {
            crate::dbus::Backlog::parse_all(&String::from_utf8_lossy(&result.stdout))
                .map_err(|why| format!("kevent-dbus-tap backlog printed {why}"))
        }
        Outcome::Exec(result) => Err(format!(
            "kevent-dbus-tap backlog exited with code {} (signal {}): {}",
            result.exit_code,
            result.signal,
            String::from_utf8_lossy(&result.stderr).trim()
        )),
        Outcome::Error { errno, message } => Err(format!(
            "the agent could not run kevent-dbus-tap backlog: {message} ({})",
            crate::transcript::errno_name(errno)
        )),
        other => return Err(Failure::protocol(format!("an exec answered {other:?}"))),
    })
}

/// How long a failed run waits for the guest to hand over the rest of its
/// trace: the guest may be gone, and the failure is what matters.
const SALVAGE_BOUND: Duration = Duration::from_secs(5);

/// Refuses a dynamic debug query that selected nothing in the guest.
fn check_dyndbg(machine: &mut Machine, queries: &[crate::dyndbg::Query], bound: Duration) -> Result<(), Failure> {
    match trace::read_all(machine, crate::dyndbg::CONTROL, bound)? {
        Ok(control) => crate::dyndbg::check(queries, &control).map(|_| ()),
        Err((errno, message)) if errno == libc::ENOENT => Err(Failure::Refused {
            input: format!("--dyndbg {:?}", queries[0].text),
            reason: format!(
                "the guest kernel has no dynamic debug ({message}): it was built without CONFIG_DYNAMIC_DEBUG"
            ),
        }),
        // The file is there and could not be read: that is the guest's
        // failure, not the query's.
        Err((errno, message)) => Err(Failure::Host {
            message: format!(
                "--dyndbg: read {} in the guest: {message} ({})",
                crate::dyndbg::CONTROL,
                crate::transcript::errno_name(errno)
            ),
        }),
    }
}

/// Interrupts a step raised, per CPU.
type Interrupts = BTreeMap<u32, u64>;

/// One step, all its repetitions; a kernel report on the console by its
/// end fails it. Returns the interrupts it raised on each CPU.
fn run_step(
    machine: &mut Machine,
    scenario: &Scenario,
    step: &Step,
    bound: Duration,
    record: &mut StepRecord,
) -> Result<Interrupts, Failure> {
    let injector = scenario.injector;
    let mut interrupts = Interrupts::new();
    if let Action::Replay { trace, speed, .. } = &step.action {
        let trace = scenario.traces.get(trace).ok_or_else(|| Failure::Host {
            message: format!("{}: the trace was not read before the run (scenario::load reads it)", trace.display()),
        })?;
        let replayed = msr_replay::replay(machine, injector, trace, speed.speed(), bound, record)?;
        record.replay = Some(replayed.timing);
        interrupts = replayed.interrupts;
        if injector == Injector::Device {
            let fenced = machine.fence(bound)?;
            record.datagrams.extend(fenced.datagrams);
            record.dbus.extend(fenced.dbus);
        }
    } else if let Some(injection) = injection_of(&step.action) {
        match step.device_interval {
            Some(interval) => {
                let interval_ns = u32::try_from(interval.as_nanos()).expect("the scenario bounds interval_us to 1 s");
                let injected = machine.inject_timed(injection, Timing { repeat: step.repeat, interval_ns })?;
                // The guest takes or refuses a timed entry whole.
                match injected.refused {
                    Some(refusal) => {
                        record.outcome = refusal.into();
                        record.failures = step.repeat;
                    }
                    None => {
                        record.outcome = StepOutcome::Done;
                        // Every firing the guest took was one interrupt.
                        interrupts.insert(injection.cpu, u64::from(step.repeat));
                    }
                }
            }
            None => {
                for _ in 0..step.repeat {
                    let injected = machine.inject(injector, injection, bound)?;
                    for cpu in injected.interrupted {
                        *interrupts.entry(cpu).or_default() += 1;
                    }
                    record.datagrams.extend(injected.datagrams);
                    record.dbus.extend(injected.dbus);
                    record.note(injected.refused.map_or(StepOutcome::Done, StepOutcome::from));
                }
            }
        }
        if injector == Injector::Device {
            // Acknowledged means broadcast; the fence brings it to the host.
            let fenced = machine.fence(bound)?;
            record.datagrams.extend(fenced.datagrams);
            record.dbus.extend(fenced.dbus);
        }
    } else {
        let command = command_of(&step.action);
        for _ in 0..step.repeat {
            let exchange = machine.request(command.clone(), bound)?;
            record.datagrams.extend(exchange.datagrams);
            record.dbus.extend(exchange.dbus);
            record.note(StepOutcome::from_reply(exchange.outcome)?);
        }
    }
    match machine.crash() {
        Some(crash) => Err(crash),
        None => Ok(interrupts),
    }
}

fn injection_of(action: &Action) -> Option<Injection> {
    match *action {
        Action::Inject { cpu, package, value, .. } => {
            let register = if package { Register::Package } else { Register::Core };
            Some(Injection { cpu, register, value })
        }
        _ => None,
    }
}

fn step_label(step: &Step) -> String {
    match step.device_interval {
        None => step.action.to_string(),
        Some(interval) if interval.is_zero() => format!("{}, fired by the device back to back", step.action),
        Some(interval) => {
            format!("{}, fired by the device every {} µs of guest time", step.action, interval.as_micros())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_records_are_placed_at_the_step_that_raised_their_interrupt() {
        let mut ledger = InterruptLedger::default();
        ledger.add(1, 0, 1);
        ledger.add(2, 1, 500);
        ledger.add(4, 0, 3);
        ledger.add(5, 0, 0);
        let text = "cpu 1 interrupt 2 margin_ns -199000000 within_burst 1\n\
                    cpu 0 interrupt 3 margin_ns 4000000 within_burst 0\n\
                    overflow 7\n";
        let (flags, lost) = parse_edges(text, &ledger).unwrap();
        assert_eq!(lost, 7);
        assert_eq!(
            flags,
            [
                TimingFlag::Edge { step: 2, cpu: 1, margin_ns: -199_000_000, within_burst: true },
                TimingFlag::Edge { step: 4, cpu: 0, margin_ns: 4_000_000, within_burst: false },
            ]
        );
        assert!(flags[1].to_string().starts_with("step 4: an interrupt on CPU 0 was handled 4.000 ms from"));
        assert!(parse_edges("cpu x interrupt 1 margin_ns 0 within_burst 0\n", &ledger).is_err());
        assert!(parse_edges("something else\n", &ledger).is_err());
    }
}
