//! Running a scenario: boot, steps in order, shutdown; and the snapshot of
//! what happened, events grouped under the step that caused them.

use std::collections::BTreeMap;
use std::time::Duration;

use kevent_wire::{Command, Datagram, ExecResult, Hello, Outcome};
use serde::Serialize;

use crate::events::{self, Event, Normaliser};
use crate::failure::Failure;
use crate::machine::{Machine, MachineConfig};
use crate::scenario::{Action, Scenario};

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
    let mut machine = Machine::boot(config)?;
    let bound = config.timeouts.command;
    let mut steps = Vec::new();
    let mut any_background = false;
    for (index, step) in scenario.steps.iter().enumerate() {
        any_background |= matches!(step.action, Action::Exec { background: true, .. });
        let command = command_of(&step.action);
        let started = std::time::Instant::now();
        let mut record = StepRecord {
            index,
            label: step.action.to_string(),
            repeat: step.repeat,
            outcome: Outcome::Done,
            failures: 0,
            datagrams: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for _ in 0..step.repeat {
            let exchange = machine.request(command.clone(), bound)?;
            record.datagrams.extend(exchange.datagrams);
            let failed = matches!(exchange.outcome, Outcome::Error { .. });
            if failed {
                record.failures += 1;
            }
            // Keep the first failure; without one, the last outcome.
            if record.failures == 0 || (failed && record.failures == 1) {
                record.outcome = exchange.outcome;
            }
        }
        record.elapsed = started.elapsed();
        if let Some(crash) = machine.crash() {
            return Err(crash);
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
    let hello = machine.hello.clone();
    machine.shutdown(config.timeouts.shutdown)?;
    Ok(Transcript { scenario: scenario.clone(), hello, steps, background })
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

/// Symbolic names of the errnos a scenario can meet.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EIO => "EIO".into(),
        libc::ENXIO => "ENXIO".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::EACCES => "EACCES".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        other => format!("errno {other}"),
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
                let mut decoded: Vec<Event> = record.datagrams.iter().map(events::decode).collect();
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
            machine: format!("{} CPUs, {} MiB", s.cpus, s.memory_mib),
            params: s.params.clone(),
            steps,
            background: self.background.iter().map(snapshot_exec).collect(),
            totals,
        }
    }
}
