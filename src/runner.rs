//! Running a scenario: boot, steps in order, shutdown; and the snapshot of
//! what happened, events grouped under the step that caused them.

use std::collections::BTreeMap;
use std::time::Duration;

use kevent_wire::{Command, Datagram, ExecResult, Hello, Outcome};
use serde::Serialize;

use crate::events::{self, Event, Normaliser};
use crate::failure::{Failure, StepFailure};
use crate::machine::{Machine, MachineConfig};
use crate::scenario::{Action, Injector, Scenario, Step};
use crate::sensor::{Register, Timing};

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub index: usize,
    pub label: String,
    pub repeat: u32,
    /// The outcome of the step (the first failure, for a repeated step).
    pub outcome: Outcome,
    /// How many repetitions failed.
    pub failures: u32,
    pub datagrams: Vec<Datagram>,
    /// Host wall time of the step, all repetitions.
    pub elapsed: Duration,
}

/// A whole run of a scenario.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub scenario: Scenario,
    pub hello: Hello,
    pub steps: Vec<StepRecord>,
    /// Programs run in the background, reported when the scenario ended.
    pub background: Vec<ExecResult>,
    /// Rate-limit decisions the guest's clock leaves uncertain: the
    /// snapshot could differ on another run.
    pub timing_flags: Vec<TimingFlag>,
    /// More such decisions, overwritten in the module's ring before they
    /// were read: uncertain too, but no longer placed.
    pub timing_flags_lost: u64,
}

/// A rate-limit decision close enough to its window's edge that host load
/// (real clock) or the guest's clock jumping while it waited for the host
/// (virtual clock) could have changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingFlag {
    /// 1-based.
    pub step: usize,
    pub cpu: u32,
    pub margin_ns: i64,
    pub within_burst: bool,
}

impl std::fmt::Display for TimingFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = if self.margin_ns < 0 { "rate-limited" } else { "handled" };
        let margin = self.margin_ns.unsigned_abs() as f64 / 1e6;
        let between =
            if self.within_burst { "between firings of one timed entry" } else { "since an earlier step's interrupt" };
        write!(
            f,
            "step {}: an interrupt on CPU {} was {outcome} {margin:.3} ms from the rate limit's edge ({between}); \
             its outcome may differ on another run",
            self.step, self.cpu
        )
    }
}

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

/// Reads the module's records of decisions near the window's edge, and
/// how many it could not keep.
fn timing_flags(
    machine: &mut Machine,
    ledger: &InterruptLedger,
    bound: Duration,
) -> Result<(Vec<TimingFlag>, u64), Failure> {
    let text = match machine.request(Command::ReadFile { path: RATE_LIMIT_EDGES.into() }, bound)?.outcome {
        Outcome::Data(data) => String::from_utf8_lossy(&data).into_owned(),
        other => return Err(Failure::Protocol { message: format!("read {RATE_LIMIT_EDGES}: {other:?}") }),
    };
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
                flags.push(TimingFlag {
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

fn command_of(action: &Action) -> Command {
    match action {
        Action::Inject { cpu, package, value, .. } => Command::Inject { package: *package, cpu: *cpu, value: *value },
        Action::Sleep { ms } => Command::Sleep { ns: ms * 1_000_000 },
        Action::Read { path } => Command::ReadFile { path: path.clone() },
        Action::Write { path, value } => Command::WriteFile { path: path.clone(), data: value.as_bytes().to_vec() },
        Action::Exec { program, args, background } => {
            Command::Exec { program: program.clone(), args: args.clone(), background: *background }
        }
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
    let mut steps = Vec::new();
    let mut any_background = false;
    let mut ledger = InterruptLedger::default();
    for (index, step) in scenario.steps.iter().enumerate() {
        any_background |= matches!(step.action, Action::Exec { background: true, .. });
        let mut record = StepRecord {
            index,
            label: step_label(step),
            repeat: step.repeat,
            outcome: Outcome::Done,
            failures: 0,
            datagrams: Vec::new(),
            elapsed: Duration::ZERO,
        };
        let started = std::time::Instant::now();
        if let Err(failure) = run_step(&mut machine, scenario.injector, step, bound, &mut record) {
            // What the step had received is the most useful part of a failure.
            record.datagrams.extend(machine.take_captured());
            return Err(Failure::AtStep(Box::new(StepFailure {
                step: index + 1,
                label: record.label,
                captured: record.datagrams,
                failure,
            })));
        }
        record.elapsed = started.elapsed();
        if let Action::Inject { cpu, .. } = step.action {
            // Every repetition or firing the guest took was one interrupt.
            ledger.add(index + 1, cpu, u64::from(record.repeat - record.failures));
        }
        observe(&record);
        steps.push(record);
    }
    let background = if any_background {
        match machine.request(Command::FinishBackground, bound)?.outcome {
            Outcome::Background(results) => results,
            other => return Err(Failure::Protocol { message: format!("FinishBackground answered {other:?}") }),
        }
    } else {
        Vec::new()
    };
    let (timing_flags, timing_flags_lost) = timing_flags(&mut machine, &ledger, bound)?;
    let hello = machine.hello.clone();
    machine.shutdown(config.timeouts.shutdown)?;
    Ok(Transcript { scenario: scenario.clone(), hello, steps, background, timing_flags, timing_flags_lost })
}

/// One step, all its repetitions; a kernel report on the console by its
/// end fails it.
fn run_step(
    machine: &mut Machine,
    injector: Injector,
    step: &Step,
    bound: Duration,
    record: &mut StepRecord,
) -> Result<(), Failure> {
    let injection = Injection::of(&step.action);
    match injection {
        Some(injection) if injector == Injector::Device => {
            match step.device_interval {
                Some(interval) => fire_timed(machine, injection, step.repeat, interval, record)?,
                None => {
                    for _ in 0..step.repeat {
                        let published = machine.fire(injection.cpu, injection.register, injection.value)?;
                        let refused = machine.wait_acked(published)?;
                        record.note(refused.map_or(Outcome::Done, |errno| injection.refused(errno)));
                    }
                }
            }
            // Acknowledged means broadcast; the fence brings it to the host.
            record.datagrams.extend(machine.fence(bound)?.datagrams);
        }
        _ => {
            let command = command_of(&step.action);
            for _ in 0..step.repeat {
                let exchange = machine.request(command.clone(), bound)?;
                record.datagrams.extend(exchange.datagrams);
                // A failed debugfs injection reads like a refused device entry.
                let outcome = match (injection, exchange.outcome) {
                    (Some(injection), Outcome::Error { errno, .. }) => injection.refused(errno as u32),
                    (_, outcome) => outcome,
                };
                record.note(outcome);
            }
        }
    }
    match machine.crash() {
        Some(crash) => Err(crash),
        None => Ok(()),
    }
}

/// One injection on the sensor device.
#[derive(Debug, Clone, Copy)]
struct Injection {
    cpu: u32,
    register: Register,
    value: u64,
}

impl Injection {
    fn of(action: &Action) -> Option<Injection> {
        match *action {
            Action::Inject { cpu, package, value, .. } => {
                let register = if package { Register::Package } else { Register::Core };
                Some(Injection { cpu, register, value })
            }
            _ => None,
        }
    }

    /// The outcome of an injection the module did not take, in the same
    /// words whichever injector carried it, so snapshots do not tell them apart.
    fn refused(&self, errno: u32) -> Outcome {
        let register = match self.register {
            Register::Core => "IA32_THERM_STATUS",
            Register::Package => "IA32_PACKAGE_THERM_STATUS",
        };
        Outcome::Error {
            errno: errno as i32,
            message: format!("kevent_thermal did not take {register} image {:#x} for CPU {}", self.value, self.cpu),
        }
    }
}

impl StepRecord {
    /// Counts a repetition's outcome: the first failure is kept, else the last outcome.
    fn note(&mut self, outcome: Outcome) {
        let failed = matches!(outcome, Outcome::Error { .. });
        if failed {
            self.failures += 1;
        }
        if self.failures == 0 || (failed && self.failures == 1) {
            self.outcome = outcome;
        }
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

/// One entry the sensor device fires `repeat` times, `interval` apart on
/// the guest's clock: the guest paces the firings itself, so where they
/// fall in guest time does not depend on the host. The guest takes or
/// refuses the entry whole.
fn fire_timed(
    machine: &mut Machine,
    injection: Injection,
    repeat: u32,
    interval: Duration,
    record: &mut StepRecord,
) -> Result<(), Failure> {
    let Injection { cpu, register, value } = injection;
    let interval_ns = u32::try_from(interval.as_nanos()).expect("the scenario bounds interval_us to 1 s");
    let published = machine.fire_timed(cpu, register, value, Timing { repeat, interval_ns })?;
    let refused = machine.wait_acked_after(published, interval * (repeat - 1))?;
    match refused {
        Some(errno) => {
            record.outcome = injection.refused(errno);
            record.failures = repeat;
        }
        None => record.outcome = Outcome::Done,
    }
    Ok(())
}

/// Steps repeated this many times or more are snapshotted as counts.
pub const COUNT_THRESHOLD: u32 = 10;

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub scenario: String,
    pub machine: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, BTreeMap<String, String>>,
    pub steps: Vec<SnapshotStep>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub background: Vec<SnapshotExec>,
    pub totals: Totals,
}

#[derive(Debug, Serialize)]
pub struct SnapshotStep {
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<SnapshotExec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// For repeated steps: how many events of each kind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub event_counts: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotExec {
    pub program: String,
    pub exit_code: i32,
    pub signal: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub kmessages: usize,
    pub uevents: usize,
    pub malformed: usize,
}

fn snapshot_exec(r: &ExecResult) -> SnapshotExec {
    SnapshotExec {
        program: r.program.clone(),
        exit_code: r.exit_code,
        signal: r.signal,
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
    }
}

/// The result line of a step, where there is one to show.
fn result_of(record: &StepRecord) -> (Option<String>, Option<SnapshotExec>) {
    let failures = if record.repeat > 1 && record.failures > 0 {
        format!(" ({} of {} failed)", record.failures, record.repeat)
    } else {
        String::new()
    };
    match &record.outcome {
        Outcome::Done => (None, None),
        Outcome::Data(data) => (Some(String::from_utf8_lossy(data).trim_end().to_owned()), None),
        Outcome::Error { errno, message } => {
            let name = errno_name(*errno);
            (Some(format!("error {name}{failures}: {message}")), None)
        }
        Outcome::Exec(r) => (None, Some(snapshot_exec(r))),
        Outcome::Background(_) => (None, None),
    }
}

/// The symbolic name of an errno (`EINVAL`), or its number if it has none.
pub fn errno_name(errno: i32) -> String {
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("errno {errno}"),
        known => format!("{known:?}"),
    }
}

impl Transcript {
    /// The deterministic form of the run, for review and comparison.
    pub fn snapshot(&self) -> Snapshot {
        let mut normaliser = Normaliser::default();
        let mut totals = Totals::default();
        let steps = self
            .steps
            .iter()
            .map(|record| {
                // Each channel in its own order, kmessages first: the two
                // sockets are independent, and which one the agent reads
                // first when both have data is scheduling, not the kernel's
                // contract (docs/events.md, "Ordering across the two channels").
                let mut datagrams: Vec<&Datagram> = record.datagrams.iter().collect();
                datagrams.sort_by_key(|d| d.protocol == events::NETLINK_KOBJECT_UEVENT);
                let mut decoded: Vec<Event> = datagrams.into_iter().map(events::decode).collect();
                for event in &mut decoded {
                    normaliser.normalise(event);
                    match event {
                        Event::Kmessage { .. } => totals.kmessages += 1,
                        Event::Uevent { .. } => totals.uevents += 1,
                        Event::Malformed { .. } => totals.malformed += 1,
                    }
                }
                let (result, exec) = result_of(record);
                let mut step = SnapshotStep {
                    step: record.label.clone(),
                    repeat: (record.repeat > 1).then_some(record.repeat),
                    result,
                    exec,
                    events: Vec::new(),
                    event_counts: BTreeMap::new(),
                };
                if record.repeat >= COUNT_THRESHOLD {
                    for event in &decoded {
                        *step.event_counts.entry(events::kind_of(event)).or_default() += 1;
                    }
                } else {
                    step.events = decoded;
                }
                step
            })
            .collect();
        let s = &self.scenario;
        Snapshot {
            scenario: s.name.clone(),
            machine: format!("{} CPUs, {} MiB, {} clock", s.machine.cpus, s.machine.memory_mib, s.machine.clock),
            params: s.params_by_module(),
            steps,
            background: self.background.iter().map(snapshot_exec).collect(),
            totals,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn errnos_have_their_names() {
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(libc::EXDEV), "EXDEV");
        assert_eq!(errno_name(libc::EFBIG), "EFBIG");
        assert_eq!(errno_name(100_000), "errno 100000");
    }

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
                TimingFlag { step: 2, cpu: 1, margin_ns: -199_000_000, within_burst: true },
                TimingFlag { step: 4, cpu: 0, margin_ns: 4_000_000, within_burst: false },
            ]
        );
        assert!(flags[1].to_string().starts_with("step 4: an interrupt on CPU 0 was handled 4.000 ms from"));
        assert!(parse_edges("cpu x interrupt 1 margin_ns 0 within_burst 0\n", &ledger).is_err());
        assert!(parse_edges("something else\n", &ledger).is_err());
    }

    use std::path::Path;

    use super::*;

    fn datagram(protocol: u32, bytes: &[u8]) -> Datagram {
        Datagram { protocol, groups: 0, portid: 0, monotonic_ns: 0, bytes: bytes.to_vec() }
    }

    #[test]
    fn a_snapshot_keeps_each_channels_order_but_not_the_interleaving_of_the_two() {
        let scenario = crate::scenario::parse(
            Path::new("scenarios/t.toml"),
            "description = \"x\"\n[[step]]\ninject = { cpu = 1, bits = [\"prochot\"] }\n",
        )
        .unwrap();
        let kmessage = |signal: &str| datagram(31, format!("From: /t\nSignal: {signal}\nCpu: 1\n\0").as_bytes());
        let uevent = |seq: u32| datagram(15, format!("change@/d\0ACTION=change\0SEQNUM={seq}\0").as_bytes());
        // The agent happened to read the uevent socket first.
        let arrived = vec![uevent(7), uevent(8), kmessage("high"), kmessage("normal")];
        let record = StepRecord {
            index: 0,
            label: "inject".into(),
            repeat: 1,
            outcome: Outcome::Done,
            failures: 0,
            datagrams: arrived,
            elapsed: Duration::ZERO,
        };
        let hello = Hello {
            protocol_version: kevent_wire::PROTOCOL_VERSION,
            kernel_release: "6.12".into(),
            cpus_online: 2,
            clocksource: "tsc".into(),
            agent_started_ns: 0,
            greeted_ns: 0,
            modules: Vec::new(),
        };
        let transcript = Transcript {
            scenario,
            hello,
            steps: vec![record],
            background: Vec::new(),
            timing_flags: Vec::new(),
            timing_flags_lost: 0,
        };
        let events = &transcript.snapshot().steps[0].events;
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Kmessage { signal, .. } => format!("kmessage {signal}"),
                Event::Uevent { env, .. } => format!("uevent {}", env.last().unwrap()),
                Event::Malformed { .. } => "malformed".into(),
            })
            .collect();
        assert_eq!(kinds, ["kmessage high", "kmessage normal", "uevent SEQNUM=+0", "uevent SEQNUM=+1"]);
    }
}
