//! `run --json`: one JSON object per line, each with a `type`, for
//! programs that read a run as it happens. docs/json.md is the contract.
//!
//! Values are the guest's own; where the snapshot would normalise one
//! (SEQNUM, MODALIAS), the line carries the raw value and the normalised
//! one beside it under `normalised`, so a consumer can compare runs the
//! way the snapshot does or see exactly what the kernel sent.

use std::time::Duration;

use kevent_wire::Datagram;
use serde_json::{json, Map, Value};

use crate::events::{self, Event, Normaliser};
use crate::msr_replay::ReplayTiming;
use crate::scenario::Scenario;
use crate::snapshot::Totals;
use crate::trace;
use crate::transcript::{errno_name, ProgramRun, StepOutcome, StepRecord, TimingFlag, Transcript};

/// The first line: what is about to run.
pub fn start(scenario: &Scenario) -> Value {
    let machine = &scenario.machine;
    json!({
        "type": "start",
        "scenario": scenario.name,
        "description": scenario.description.trim(),
        "injector": scenario.injector.name(),
        "machine": {
            "cpus": machine.cpus(),
            "packages": machine.topology.packages,
            "cores": machine.topology.cores,
            "memory_mib": machine.memory_mib,
            "clock": machine.clock.to_string(),
        },
        "params": scenario.params_by_module(),
    })
}

/// One datagram a step caused, decoded, with its bytes, escaped (which
/// [`shown`] leaves out unless asked).
pub fn event(step: usize, datagram: &Datagram, normaliser: &mut Normaliser) -> Value {
    let decoded = events::decode(datagram);
    let mut normalised = decoded.clone();
    normaliser.normalise(&mut normalised);
    let mut line = json!({
        "type": "event",
        "step": step,
        "protocol": datagram.protocol,
        "groups": datagram.groups,
        "portid": datagram.portid,
        "guest_monotonic_ns": datagram.monotonic_ns,
    });
    let fields = line.as_object_mut().expect("an object");
    match &decoded {
        Event::Kmessage { group, from, signal, aux } => {
            fields.insert("channel".into(), "kmessage".into());
            fields.insert("kmessage".into(), json!({ "group": group, "from": from, "signal": signal, "aux": aux }));
        }
        Event::Uevent { action, devpath, env } => {
            fields.insert("channel".into(), "uevent".into());
            fields.insert("uevent".into(), json!({ "action": action, "devpath": devpath, "env": environment(env) }));
            if let Event::Uevent { env: normal, .. } = &normalised {
                let changed: Map<String, Value> = env
                    .iter()
                    .zip(normal)
                    .filter(|(raw, normal)| raw != normal)
                    .map(|(_, normal)| {
                        let (key, value) = split_entry(normal);
                        (key.to_owned(), value.map_or(Value::Null, Value::from))
                    })
                    .collect();
                if !changed.is_empty() {
                    fields.insert("normalised".into(), Value::Object(changed));
                }
            }
        }
        Event::Malformed { protocol: _, why, bytes } => {
            fields.insert("channel".into(), "malformed".into());
            fields.insert("malformed".into(), json!({ "why": why, "bytes": bytes }));
        }
    }
    fields.insert("bytes".into(), events::escape(&datagram.bytes).into());
    line
}

/// `KEY=value` pairs as an object, in the kernel's order. An entry with no
/// `=` has a null value; a key sent more than once has an array of its
/// values, so nothing the kernel sent is lost.
fn environment(env: &[String]) -> Value {
    let mut object = Map::new();
    for entry in env {
        let (key, value) = split_entry(entry);
        let value = value.map_or(Value::Null, Value::from);
        match object.get_mut(key) {
            None => {
                object.insert(key.to_owned(), value);
            }
            Some(existing) => {
                // Values are strings or null, so an array is an earlier repeat.
                let earlier = match existing.take() {
                    Value::Array(values) => values,
                    single => vec![single],
                };
                *existing = Value::Array(earlier.into_iter().chain([value]).collect());
            }
        }
    }
    Value::Object(object)
}

fn split_entry(entry: &str) -> (&str, Option<&str>) {
    match entry.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (entry, None),
    }
}

/// One message of the guest's bus a step caused (`[machine] dbus`), read
/// as the D-Bus specification says, with its bytes, escaped (which
/// [`shown`] leaves out unless asked).
pub fn dbus(step: usize, message: &kevent_wire::DbusMessage) -> Value {
    let mut line = match kdbusd::message::parse(&message.bytes) {
        Ok(m) => json!({
            "type": "dbus",
            "step": step,
            "guest_monotonic_ns": message.monotonic_ns,
            "kind": m.kind.to_string(),
            "serial": m.serial,
            "path": m.path,
            "interface": m.interface,
            "member": m.member,
            "error_name": m.error_name,
            "reply_serial": m.reply_serial,
            "sender": m.sender,
            "destination": m.destination,
            "signature": m.signature,
            "args": m.body.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Err(e) => json!({
            "type": "dbus",
            "step": step,
            "guest_monotonic_ns": message.monotonic_ns,
            "kind": "unreadable",
            "why": e.to_string(),
        }),
    };
    line["bytes"] = events::escape(&message.bytes).into();
    line
}

/// The line types whose `bytes` are the raw bytes of a datagram or a bus
/// message; elsewhere (`trace`, `bus_backlog`) `bytes` is a size.
const RAW_BYTES: [&str; 2] = ["event", "dbus"];

/// A line as `run --json` prints it: raw bytes only with `--raw`. The
/// bundle's `events.jsonl` keeps every line whole.
pub fn shown(line: &Value, raw: bool) -> Value {
    let mut shown = line.clone();
    let has_raw_bytes = line.get("type").and_then(Value::as_str).is_some_and(|t| RAW_BYTES.contains(&t));
    if has_raw_bytes && !raw {
        if let Some(fields) = shown.as_object_mut() {
            fields.remove("bytes");
        }
    }
    shown
}

/// A step's result, after its events.
pub fn step(record: &StepRecord) -> Value {
    json!({
        "type": "step",
        "step": record.index + 1,
        "label": record.label,
        "repeat": record.repeat,
        "failures": record.failures,
        "host_elapsed_ns": u64::try_from(record.elapsed.as_nanos()).unwrap_or(u64::MAX),
        "datagrams": record.datagrams.len(),
        "dbus_messages": record.dbus.len(),
        "result": outcome(&record.outcome),
    })
}

fn outcome(outcome: &StepOutcome) -> Value {
    match outcome {
        StepOutcome::Done => json!({ "kind": "done" }),
        StepOutcome::Read(bytes) => {
            json!({ "kind": "read", "text": String::from_utf8_lossy(bytes), "bytes": bytes.len() })
        }
        StepOutcome::Failed { errno, message } => {
            json!({ "kind": "failed", "errno": errno, "errno_name": errno_name(*errno), "message": message })
        }
        StepOutcome::Ran(run) => {
            let mut fields = program(run);
            fields["kind"] = "exec".into();
            fields
        }
    }
}

fn program(run: &ProgramRun) -> Value {
    json!({
        "program": run.program,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "stdout": String::from_utf8_lossy(&run.stdout),
        "stderr": String::from_utf8_lossy(&run.stderr),
    })
}

/// A program run in the background, reported when the scenario ended.
pub fn background(run: &ProgramRun) -> Value {
    let mut line = program(run);
    line["type"] = "background".into();
    line
}

/// An outcome that may differ on another run.
pub fn timing_flag(flag: &TimingFlag) -> Value {
    let mut line = match *flag {
        TimingFlag::Edge { step, cpu, margin_ns, within_burst } => json!({
            "type": "timing_flag",
            "kind": "edge",
            "step": step,
            "cpu": cpu,
            "margin_ns": margin_ns,
            "within_burst": within_burst,
        }),
        TimingFlag::LateReplay { step, spread_ns, watched_ns } => json!({
            "type": "timing_flag",
            "kind": "late_replay",
            "step": step,
            "spread_ns": spread_ns,
            "watched_ns": watched_ns,
        }),
    };
    line["message"] = flag.to_string().into();
    line
}

/// After a replay step's `step` line: how late its injections started
/// after their recorded times (divided by the speed), in host time.
pub fn replay(step: usize, timing: &ReplayTiming) -> Value {
    let ns = |d: Option<Duration>| d.map_or(0, |d| d.as_nanos() as u64);
    json!({
        "type": "replay",
        "step": step,
        "speed": timing.speed,
        "injections": timing.due.len(),
        "late_p50_ns": ns(timing.late_percentile(50)),
        "late_p99_ns": ns(timing.late_percentile(99)),
        "late_max_ns": ns(timing.late_percentile(100)),
        // Each injection's, in the trace's order.
        "late_ns": timing
            .due
            .iter()
            .zip(&timing.started)
            .map(|(due, started)| started.saturating_sub(*due).as_nanos() as u64)
            .collect::<Vec<u64>>(),
        "message": timing.to_string(),
    })
}

/// A connection the guest's bus still held messages for as the run ended.
pub fn bus_backlog(backlog: &crate::dbus::Backlog) -> Value {
    json!({
        "type": "bus_backlog",
        "name": backlog.name,
        "pid": backlog.pid,
        "command": backlog.command,
        "messages": backlog.messages,
        "bytes": backlog.bytes,
        "peak_bytes": backlog.peak_bytes,
        "error": null,
        "message": backlog.to_string(),
    })
}

/// The `bus_backlog` line of a run whose bus could not be asked: `error`
/// says why, the figures are null.
pub fn bus_backlog_unknown(why: &str) -> Value {
    json!({
        "type": "bus_backlog",
        "name": null,
        "pid": null,
        "command": null,
        "messages": null,
        "bytes": null,
        "peak_bytes": null,
        "error": why,
        "message": format!("could not ask the guest's bus which subscribers kept up as the run ended: {why}"),
    })
}

/// The last line of a run that ended well.
pub fn summary(transcript: &Transcript, totals: &Totals, elapsed: Duration, accel: &str) -> Value {
    json!({
        "type": "summary",
        "scenario": transcript.scenario.name,
        "steps": transcript.steps.len(),
        "kmessages": totals.kmessages,
        "uevents": totals.uevents,
        "malformed": totals.malformed,
        "dbus_messages": totals.dbus_messages,
        "dbus_mapped": totals.dbus_mapped,
        "timing_flags": transcript.timing_flags.len(),
        "timing_flags_lost": transcript.timing_flags_lost,
        "kernel_release": transcript.hello.kernel_release,
        "accel": accel,
        "host_elapsed_ns": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
    })
}

/// A traced run's `trace.txt`: where it is and what it lacks.
pub fn trace(summary: &trace::Summary) -> Value {
    let lost: Vec<Value> =
        summary.lost.iter().map(|l| json!({ "cpu": l.cpu, "overrun": l.overrun, "dropped": l.dropped })).collect();
    json!({
        "type": "trace",
        "path": summary.path.display().to_string(),
        "bytes": summary.bytes,
        "complete": true,
        "lines": summary.lines,
        "events": summary.events,
        "buffer_kb": summary.buffer_kb,
        "lost": lost,
        "lost_events": summary.lost_events(),
        "stopped_at_step": summary.stopped_at_step,
    })
}

/// A failed run's `trace.txt`, which goes up to the failure: where it is
/// and its size; what [`trace`] says besides is null.
pub fn partial_trace(path: &std::path::Path, bytes: u64) -> Value {
    json!({
        "type": "trace",
        "path": path.display().to_string(),
        "bytes": bytes,
        "complete": false,
        "lines": null,
        "events": null,
        "buffer_kb": null,
        "lost": null,
        "lost_events": null,
        "stopped_at_step": null,
    })
}

/// The run failed: what and where; the exit code the bench exits with.
pub fn failure(step: Option<usize>, message: &str, exit_code: i32) -> Value {
    json!({ "type": "failure", "step": step, "message": message, "exit_code": exit_code })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(protocol: u32, bytes: &[u8]) -> Datagram {
        Datagram { protocol, groups: 1 << 2, portid: 0, monotonic_ns: 42, bytes: bytes.to_vec() }
    }

    #[test]
    fn a_uevent_has_its_environment_as_an_object_and_its_normalised_values_beside_the_raw_ones() {
        let mut normaliser = Normaliser::default();
        let bytes = b"change@/devices/system/cpu/cpu1\0ACTION=change\0MODALIAS=cpu:type:x86,ven0002\n\0SEQNUM=812\0";
        let first = event(3, &datagram(15, bytes), &mut normaliser);
        assert_eq!(first["type"], "event");
        assert_eq!(first["step"], 3);
        assert_eq!(first["channel"], "uevent");
        assert_eq!(first["uevent"]["env"]["SEQNUM"], "812");
        assert_eq!(first["uevent"]["env"]["MODALIAS"], "cpu:type:x86,ven0002\n");
        assert_eq!(first["normalised"]["SEQNUM"], "+0");
        assert_eq!(first["normalised"]["MODALIAS"], "cpu:type:x86,[CPU model and features]\\n");
        assert!(first["normalised"].get("ACTION").is_none(), "only what was normalised is listed");
        let keys: Vec<&String> = first["uevent"]["env"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ACTION", "MODALIAS", "SEQNUM"], "the kernel's order is kept");
        let later = String::from_utf8_lossy(bytes).replace("SEQNUM=812", "SEQNUM=815");
        let second = event(3, &datagram(15, later.as_bytes()), &mut normaliser);
        assert_eq!(second["normalised"]["SEQNUM"], "+3");
        assert_eq!(second["bytes"], events::escape(later.as_bytes()));
    }

    #[test]
    fn repeated_keys_and_bare_entries_are_kept() {
        let env: Vec<String> = ["A=1", "B", "A=2", "A=3"].map(String::from).to_vec();
        assert_eq!(environment(&env), json!({ "A": ["1", "2", "3"], "B": null }));
    }

    #[test]
    fn only_raw_bytes_wait_for_raw_and_sizes_are_always_shown() {
        let event = json!({"type": "event", "step": 1, "bytes": "a\\x00"});
        assert_eq!(shown(&event, false), json!({"type": "event", "step": 1}));
        assert_eq!(shown(&event, true), event);
        let message = json!({"type": "dbus", "bytes": "l\\x01"});
        assert_eq!(shown(&message, false), json!({"type": "dbus"}));
        for sized in [json!({"type": "trace", "bytes": 76515}), json!({"type": "bus_backlog", "bytes": 2062968})] {
            assert_eq!(shown(&sized, false), sized);
        }
    }

    #[test]
    fn a_bus_message_is_read_into_its_header_and_arguments() {
        use kdbusd::message::{marshal_signal, Value};
        let body = [Value::Str("Cpu: 1\n".into()), Value::Bytes(vec![0, 1])];
        let bytes = marshal_signal(5, "/org/kernel/x", "org.kernel.Power", "high", &body).unwrap();
        let message = kevent_wire::DbusMessage { monotonic_ns: 9, bytes };
        let line = shown(&dbus(2, &message), false);
        assert_eq!(
            line,
            json!({
                "type": "dbus", "step": 2, "guest_monotonic_ns": 9, "kind": "signal", "serial": 5,
                "path": "/org/kernel/x", "interface": "org.kernel.Power", "member": "high",
                "error_name": null, "reply_serial": null, "sender": null, "destination": null,
                "signature": "say", "args": ["\"Cpu: 1\\n\"", "2 bytes b\"\\x00\\x01\""],
            })
        );
        assert!(dbus(2, &message)["bytes"].as_str().unwrap().starts_with("l\\x04"));
        let junk = kevent_wire::DbusMessage { monotonic_ns: 0, bytes: b"x".to_vec() };
        assert_eq!(dbus(1, &junk)["kind"], "unreadable");
    }

    #[test]
    fn kmessages_and_malformed_datagrams_say_which_they_are() {
        let mut normaliser = Normaliser::default();
        let kmessage = event(1, &datagram(31, b"From: /t\nSignal: high\nCpu: 1\n\0"), &mut normaliser);
        assert_eq!(kmessage["channel"], "kmessage");
        assert_eq!(
            kmessage["kmessage"],
            json!({ "group": "power", "from": "/t", "signal": "high", "aux": ["Cpu: 1"] })
        );
        assert!(kmessage.get("normalised").is_none());
        let broken = event(1, &datagram(31, b"junk"), &mut normaliser);
        assert_eq!(broken["channel"], "malformed");
        assert_eq!(broken["malformed"]["bytes"], "junk");
    }

    #[test]
    fn every_step_result_is_typed() {
        let mut record = StepRecord::new(1, "read /proc/uptime".into(), 1);
        record.outcome = StepOutcome::Read(b"12.5 3.0\n".to_vec());
        record.elapsed = Duration::from_micros(1500);
        let line = step(&record);
        assert_eq!(line["type"], "step");
        assert_eq!(line["step"], 2);
        assert_eq!(line["host_elapsed_ns"], 1_500_000);
        assert_eq!(line["result"], json!({ "kind": "read", "text": "12.5 3.0\n", "bytes": 9 }));
        record.outcome = StepOutcome::Failed { errno: 22, message: "write x".into() };
        assert_eq!(step(&record)["result"]["errno_name"], "EINVAL");
        let run =
            ProgramRun { program: "/bin/true".into(), exit_code: 0, signal: 0, stdout: b"hi".to_vec(), stderr: vec![] };
        record.outcome = StepOutcome::Ran(run.clone());
        assert_eq!(step(&record)["result"]["kind"], "exec");
        assert_eq!(step(&record)["result"]["stdout"], "hi");
        assert_eq!(background(&run)["type"], "background");
    }

    #[test]
    fn a_replay_line_has_the_lateness_of_its_injections() {
        let ms = Duration::from_millis;
        let timing =
            ReplayTiming { speed: 2.0, due: vec![ms(0), ms(10), ms(20)], started: vec![ms(1), ms(10), ms(25)] };
        let line = replay(3, &timing);
        assert_eq!(line["type"], "replay");
        assert_eq!(line["step"], 3);
        assert_eq!(line["speed"], 2.0);
        assert_eq!(line["injections"], 3);
        assert_eq!(line["late_p50_ns"], 1_000_000);
        assert_eq!(line["late_p99_ns"], 5_000_000);
        assert_eq!(line["late_max_ns"], 5_000_000);
        assert_eq!(line["late_ns"], json!([1_000_000, 0, 5_000_000]));
        assert!(line["message"].as_str().unwrap().starts_with("3 injection(s) at speed 2"), "{line}");
    }

    #[test]
    fn the_start_line_has_the_machines_packages() {
        let mut scenario =
            crate::scenario::parse(std::path::Path::new("t.toml"), "description = \"t\"\n[[step]]\nsleep_ms = 1\n")
                .unwrap();
        scenario.set_topology(crate::Topology::new(2, 2).unwrap()).unwrap();
        let line = start(&scenario);
        assert_eq!(line["machine"]["cpus"], 4);
        assert_eq!(line["machine"]["packages"], 2);
        assert_eq!(line["machine"]["cores"], 2);
    }

    #[test]
    fn a_bus_backlog_line_names_the_connection_and_what_the_bus_holds_for_it() {
        let backlog = crate::dbus::Backlog {
            name: ":1.3".into(),
            pid: None,
            command: "?".into(),
            messages: 1924,
            bytes: 2062968,
            peak_bytes: 2062970,
        };
        let line = bus_backlog(&backlog);
        assert_eq!(line["type"], "bus_backlog");
        assert_eq!(line["name"], ":1.3");
        assert_eq!(line["pid"], Value::Null, "unknown, not 0");
        assert_eq!(line["command"], "?");
        assert_eq!((line["messages"].as_u64(), line["bytes"].as_u64()), (Some(1924), Some(2062968)));
        assert_eq!(line["peak_bytes"], 2062970);
        assert_eq!(line["message"], backlog.to_string());
        assert_eq!(line["error"], Value::Null);

        let unknown = bus_backlog_unknown("kevent-dbus-tap backlog exited with code 1 (signal 0): no bus");
        assert_eq!(unknown["type"], "bus_backlog");
        assert_eq!(unknown["error"], "kevent-dbus-tap backlog exited with code 1 (signal 0): no bus");
        for field in ["name", "pid", "command", "messages", "bytes", "peak_bytes"] {
            assert_eq!(unknown[field], Value::Null, "{field}");
        }
        assert!(unknown["message"].as_str().unwrap().ends_with(": no bus"), "{unknown}");
        let keys = |line: &Value| line.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&unknown), keys(&line), "one line type, one set of fields");
    }

    #[test]
    fn a_trace_line_says_where_the_trace_is_and_what_it_lost_or_that_it_stops_at_the_failure() {
        let summary = trace::Summary {
            path: "/r/trace.txt".into(),
            bytes: 2048,
            lines: 30,
            events: 40,
            buffer_kb: 1408,
            lost: vec![trace::CpuLoss { cpu: 1, overrun: 5, dropped: 2 }],
            stopped_at_step: Some(3),
        };
        let line = trace(&summary);
        assert_eq!(line["type"], "trace");
        assert_eq!(line["path"], "/r/trace.txt");
        assert_eq!((line["bytes"].as_u64(), line["complete"].as_bool()), (Some(2048), Some(true)));
        assert_eq!((line["lines"].as_u64(), line["events"].as_u64()), (Some(30), Some(40)));
        assert_eq!(line["buffer_kb"], 1408);
        assert_eq!(line["lost"], json!([{ "cpu": 1, "overrun": 5, "dropped": 2 }]));
        assert_eq!((line["lost_events"].as_u64(), line["stopped_at_step"].as_u64()), (Some(7), Some(3)));
        let failed = partial_trace(std::path::Path::new("/r/trace.txt"), 512);
        assert_eq!((failed["complete"].as_bool(), failed["bytes"].as_u64()), (Some(false), Some(512)));
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&failed), keys(&line), "a consumer finds the same fields in either");
        for field in ["lines", "events", "buffer_kb", "lost", "lost_events", "stopped_at_step"] {
            assert!(failed[field].is_null(), "{field}: {failed}");
        }
    }
}
