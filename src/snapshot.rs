//! The snapshot: the deterministic projection of a transcript that
//! reviewers read and insta compares. Events sit under the step that
//! caused them; values that differ between runs for reasons that are not
//! the kernel's (SEQNUM, the CPU model) are normalised.

use std::collections::BTreeMap;

use kevent_wire::Datagram;
use serde::Serialize;

use crate::dbus::{self, DbusEntry};
use crate::events::{self, Event, Normaliser};
use crate::scenario::Scenario;
use crate::transcript::{errno_name, ProgramRun, StepOutcome, StepRecord, Transcript};

/// Steps repeated this many times or more are snapshotted as counts.
pub const COUNT_THRESHOLD: u32 = 10;

/// A run as reviewers read it: what the scenario asked for and what
/// every step caused.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The scenario's name (its file's stem).
    pub scenario: String,
    /// CPUs, memory and clock of the guest.
    pub machine: String,
    /// Module parameters, by module.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, BTreeMap<String, String>>,
    /// Every step, in order.
    pub steps: Vec<SnapshotStep>,
    /// Programs the scenario ran in the background.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub background: Vec<SnapshotExec>,
    /// Events of each channel over the whole run.
    pub totals: Totals,
}

/// One step and what it caused.
#[derive(Debug, Serialize)]
pub struct SnapshotStep {
    /// The step in words.
    pub step: String,
    /// How many times it ran, if more than once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    /// A replay step: how many register changes it injected. Its events
    /// are listed whatever their number: the episode is their order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injections: Option<u32>,
    /// What a read returned, or why the step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// An exec step's program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<SnapshotExec>,
    /// The events, normalised, kmessages first (steps repeated fewer than
    /// [`COUNT_THRESHOLD`] times).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// For repeated steps: how many events of each kind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub event_counts: BTreeMap<String, usize>,
    /// The guest's bus during the step (`[machine] dbus`), after the
    /// netlink events: kdbusd's signals checked against the datagrams
    /// they carry (docs/dbus.md), kmessages' first (steps repeated fewer
    /// than [`COUNT_THRESHOLD`] times; counts are in `event_counts`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dbus: Vec<DbusEntry>,
}

/// A program's end and its output, as text.
#[derive(Debug, Serialize)]
pub struct SnapshotExec {
    /// The program as the scenario named it.
    pub program: String,
    /// Its exit code, or -1 if a signal killed it.
    pub exit_code: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// Standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard error (invalid UTF-8 replaced).
    pub stderr: String,
}

/// How many events of each kind a run caused.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    /// Datagrams on the kmessage unit.
    pub kmessages: usize,
    /// Datagrams on NETLINK_KOBJECT_UEVENT.
    pub uevents: usize,
    /// Datagrams that did not decode (kept with their bytes).
    pub malformed: usize,
    /// Messages of the guest's bus, with the D-Bus side only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbus_messages: Option<usize>,
    /// Of those, kdbusd's signals that carry one of the run's datagrams
    /// and are exactly its mapping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbus_mapped: Option<usize>,
}

fn snapshot_exec(r: &ProgramRun) -> SnapshotExec {
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
        StepOutcome::Done => (None, None),
        StepOutcome::Read(data) => (Some(String::from_utf8_lossy(data).trim_end().to_owned()), None),
        StepOutcome::Failed { errno, message } => {
            let name = errno_name(*errno);
            (Some(format!("error {name}{failures}: {message}")), None)
        }
        StepOutcome::Ran(r) => (None, Some(snapshot_exec(r))),
    }
}

impl Transcript {
    /// The deterministic form of the run, for review and comparison.
    pub fn snapshot(&self) -> Snapshot {
        project(&self.scenario, &self.steps, &self.background)
    }
}

/// A step's datagrams as snapshots show them: each channel in its own
/// order, kmessages first. The two sockets are independent, and which one
/// the agent reads first when both have data is scheduling, not the
/// kernel's contract (docs/events.md, "Ordering across the two channels").
pub fn channel_order(datagrams: &[Datagram]) -> Vec<&Datagram> {
    let mut ordered: Vec<&Datagram> = datagrams.iter().collect();
    ordered.sort_by_key(|d| d.protocol == events::NETLINK_KOBJECT_UEVENT);
    ordered
}

/// The snapshot of `steps` and `background` of a run of `scenario`: a whole
/// run's, or the steps a failed run completed, or a run read back from a
/// reproducer bundle (`crate::bundle`).
pub fn project(scenario: &Scenario, steps: &[StepRecord], background: &[ProgramRun]) -> Snapshot {
    let mut normaliser = Normaliser::default();
    let mut totals = Totals::default();
    if scenario.machine.dbus {
        totals.dbus_messages = Some(0);
        totals.dbus_mapped = Some(0);
    }
    let steps = steps
        .iter()
        .map(|record| {
            let datagrams = channel_order(&record.datagrams);
            let bus = dbus::entries(&record.dbus, &datagrams);
            if let (Some(messages), Some(mapped)) = (&mut totals.dbus_messages, &mut totals.dbus_mapped) {
                *messages += bus.len();
                *mapped += bus.iter().filter(|e| e.is_mapped()).count();
            }
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
            let injections = record.replay.as_ref().map(|t| t.due.len() as u32);
            let replay = injections.is_some();
            let mut step = SnapshotStep {
                step: record.label.clone(),
                repeat: (record.repeat > 1 && !replay).then_some(record.repeat),
                injections,
                result,
                exec,
                events: Vec::new(),
                event_counts: BTreeMap::new(),
                dbus: Vec::new(),
            };
            if record.repeat >= COUNT_THRESHOLD && !replay {
                for event in &decoded {
                    *step.event_counts.entry(events::kind_of(event)).or_default() += 1;
                }
                for entry in &bus {
                    // A wrong or stray message is shown whole, never only counted.
                    if entry.wrong.is_some() {
                        step.dbus.push(entry.clone());
                    } else {
                        *step.event_counts.entry(entry.kind()).or_default() += 1;
                    }
                }
            } else {
                step.events = decoded;
                step.dbus = bus;
            }
            step
        })
        .collect();
    let s = scenario;
    Snapshot {
        scenario: s.name.clone(),
        machine: s.machine.to_string(),
        params: s.params_by_module(),
        steps,
        background: background.iter().map(snapshot_exec).collect(),
        totals,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kevent_wire::Hello;

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
        let record = StepRecord { datagrams: arrived, ..StepRecord::new(0, "inject".into(), 1) };
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
            bus_backlog: Ok(Vec::new()),
            trace: None,
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
