//! Kernel traces of a run (`run --trace`, a scenario's `trace` key): the
//! guest's tracefs events switched on before the first step, a marker
//! written to `trace_marker` before each step, and the trace buffer drained
//! into `trace.txt` in the run directory after each step, so that the
//! buffer only ever holds one step and a run that fails keeps the trace of
//! the steps before.
//!
//! The guest's `available_events` is the truth: a pattern that matches
//! none of them is refused, with the names closest to it, before any step
//! runs. The trace clock is `mono`, the guest's CLOCK_MONOTONIC, the clock
//! of the datagrams' `monotonic_ns`, so trace lines and events line up.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kevent_wire::{Command, Outcome, MAX_READ_BYTES, READ_CHUNK_BYTES, TRACEFS};

use crate::failure::Failure;
use crate::glob::glob;
use crate::machine::Machine;

/// The trace's file in the run directory.
pub const TRACE_FILE: &str = "trace.txt";

/// What `--trace` alone (and `trace = true`) traces: the modules' own
/// events, then what the kernel does around them (interrupts, the vectors
/// they arrive on, the workqueues the uevents are sent from). Kernel
/// groups a guest kernel lacks are skipped, and the run says so.
pub const DEFAULT_EVENTS: [&str; 5] = ["kevent_thermal:*", "kmessage:*", "irq:*", "irq_vectors:*", "workqueue:*"];

/// Ring buffer per CPU, in KiB, unless a quarter of the guest's memory is
/// less: it holds one step's events, as the buffer is drained after each.
pub const BUFFER_KB_PER_CPU: u32 = 4096;

/// The most `trace.txt` grows to; tracing stops there, and the file says so.
pub const MAX_TRACE_BYTES: u64 = 64 << 20;

/// tracefs's clock for the timestamps: CLOCK_MONOTONIC.
pub const TRACE_CLOCK: &str = "mono";

/// Longest marker written before a step (its label is cut to fit).
const MAX_MARKER_BYTES: usize = 200;

/// Where a run's trace is written.
pub fn trace_file(run_dir: &Path) -> PathBuf {
    run_dir.join(TRACE_FILE)
}

/// Which events to trace, as the user named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `SYSTEM:EVENT` patterns (`*` and `?` match as in the shell), in order.
    pub events: Vec<String>,
    /// The documented default set, [`DEFAULT_EVENTS`].
    pub default_set: bool,
    /// Where the request was made, for errors: `--trace`, or the scenario
    /// file and line.
    pub origin: String,
}

impl Request {
    /// [`DEFAULT_EVENTS`].
    pub fn default_set(origin: impl Into<String>) -> Request {
        Request {
            events: DEFAULT_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
            default_set: true,
            origin: origin.into(),
        }
    }

    /// The patterns of `events`, each checked for its form.
    pub fn new(events: Vec<String>, origin: impl Into<String>) -> Result<Request, String> {
        if events.is_empty() {
            return Err("no event named: give SYSTEM:EVENT patterns, or ask for the default set".into());
        }
        for event in &events {
            check_pattern(event)?;
        }
        Ok(Request { events, default_set: false, origin: origin.into() })
    }

    /// A comma-separated list, as `--trace=irq:*,kevent_thermal:*` gives it.
    pub fn parse_list(list: &str, origin: impl Into<String>) -> Result<Request, String> {
        Request::new(list.split(',').map(|e| e.trim().to_owned()).collect(), origin)
    }

    /// `--trace`'s value: empty for the default set, else a list.
    pub fn parse_flag(text: &str, origin: impl Into<String>) -> Result<Request, String> {
        if text.is_empty() {
            Ok(Request::default_set(origin))
        } else {
            Request::parse_list(text, origin)
        }
    }

    /// The request as [`Request::parse_flag`] reads it back: the default set
    /// stays the default set (whose groups a kernel may lack).
    pub fn flag_text(&self) -> String {
        if self.default_set {
            String::new()
        } else {
            self.events.join(",")
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.events.join(","))?;
        if self.default_set {
            f.write_str(" (the default set)")?;
        }
        Ok(())
    }
}

/// `SYSTEM:EVENT`, each part letters, digits, `_`, or the globs `*` and `?`.
fn check_pattern(pattern: &str) -> Result<(), String> {
    let part = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_*?".contains(&b));
    match pattern.split_once(':') {
        Some((system, event)) if part(system) && part(event) => Ok(()),
        _ => Err(format!(
            "{pattern:?} is not a trace event: expected SYSTEM:EVENT (letters, digits, _, and the globs * and ?), \
             e.g. irq:irq_handler_entry or workqueue:*"
        )),
    }
}

/// What a request comes to in one guest kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// tracefs `enable` files to write `1` to, relative to `events/`.
    pub enable: Vec<String>,
    /// How many events they switch on.
    pub events: usize,
    /// Patterns of the default set this kernel has no event for.
    pub skipped: Vec<String>,
}

/// Resolves `request` against `available` (tracefs `available_events`,
/// one `system:event` a line). A pattern that matches nothing is refused
/// with the closest names, unless it is of the default set.
pub fn plan(request: &Request, available: &str) -> Result<Plan, Failure> {
    let available: Vec<(&str, &str)> = available.lines().filter_map(|l| l.trim().split_once(':')).collect();
    let mut enable = Vec::new();
    let mut switched = BTreeSet::new();
    let mut skipped = Vec::new();
    for pattern in &request.events {
        let (system, event) = pattern.split_once(':').expect("checked by Request::new");
        let matched: Vec<&(&str, &str)> = available
            .iter()
            .filter(|(s, e)| glob(system.as_bytes(), s.as_bytes()) && glob(event.as_bytes(), e.as_bytes()))
            .collect();
        if matched.is_empty() {
            if request.default_set {
                skipped.push(pattern.clone());
                continue;
            }
            return Err(Failure::Refused {
                input: format!("{} {pattern}", request.origin),
                reason: format!(
                    "the guest kernel has no such trace event ({TRACEFS}/available_events lists {} events){}",
                    available.len(),
                    close_matches(pattern, &available)
                ),
            });
        }
        let whole_system = event == "*" && !system.contains(['*', '?']);
        for (s, e) in matched {
            switched.insert((*s, *e));
            if !whole_system {
                enable.push(format!("{s}/{e}/enable"));
            }
        }
        if whole_system {
            enable.push(format!("{system}/enable"));
        }
    }
    let mut seen = BTreeSet::new();
    enable.retain(|path| seen.insert(path.clone()));
    Ok(Plan { enable, events: switched.len(), skipped })
}

/// `; close matches: a, b` (events, or whole systems), or the systems the
/// guest has when nothing is close.
fn close_matches(pattern: &str, available: &[(&str, &str)]) -> String {
    let systems: BTreeSet<&str> = available.iter().map(|(s, _)| *s).collect();
    let mut candidates: Vec<String> = available.iter().map(|(s, e)| format!("{s}:{e}")).collect();
    candidates.extend(systems.iter().map(|s| format!("{s}:*")));
    let mut close: Vec<(usize, String)> = candidates
        .into_iter()
        .map(|c| (crate::scenario::edit_distance(pattern, &c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 4))
        .collect();
    close.sort();
    close.truncate(5);
    if close.is_empty() {
        let systems: Vec<&str> = systems.into_iter().collect();
        return format!("; its event systems are {}", systems.join(", "));
    }
    let names: Vec<String> = close.into_iter().map(|(_, c)| c).collect();
    format!("; close matches: {}", names.join(", "))
}

/// Events lost on one CPU, from tracefs `per_cpu/cpuN/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLoss {
    /// The CPU.
    pub cpu: u32,
    /// Overwritten before they were read (`overrun` and `commit overrun`).
    pub overrun: u64,
    /// Refused by a full buffer (`dropped events`).
    pub dropped: u64,
}

/// A trace written to the run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `trace.txt` in the run directory.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Trace lines in it (the bench's own `#` lines not counted).
    pub lines: u64,
    /// How many events the request switched on.
    pub events: usize,
    /// The guest's trace buffer per CPU, in KiB.
    pub buffer_kb: u32,
    /// CPUs that lost events.
    pub lost: Vec<CpuLoss>,
    /// The step at whose end the trace reached [`MAX_TRACE_BYTES`] and
    /// tracing stopped, if it did.
    pub stopped_at_step: Option<usize>,
}

impl Summary {
    /// Events lost on all CPUs.
    pub fn lost_events(&self) -> u64 {
        self.lost.iter().map(|l| l.overrun + l.dropped).sum()
    }

    /// What the run prints on stderr: where the trace is, and what it lacks.
    pub fn report(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "trace: {} lines ({} KiB) of {} event(s) in {}",
            self.lines,
            self.bytes.div_ceil(1024),
            self.events,
            self.path.display()
        )];
        if !self.lost.is_empty() {
            let per_cpu: Vec<String> =
                self.lost.iter().map(|l| format!("CPU {}: {}", l.cpu, l.overrun + l.dropped)).collect();
            lines.push(format!(
                "warning: the trace lost {} event(s) ({}): a step made more than the {} KiB per-CPU buffer holds; \
                 trace fewer events, or split the step",
                self.lost_events(),
                per_cpu.join(", "),
                self.buffer_kb
            ));
        }
        if let Some(step) = self.stopped_at_step {
            lines.push(format!(
                "warning: the trace reached its bound of {} MiB at step {step} and tracing stopped there",
                MAX_TRACE_BYTES >> 20
            ));
        }
        lines
    }
}

/// A trace in progress in one guest.
pub struct Session {
    file: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
    lines: u64,
    events: usize,
    cpus: u32,
    buffer_kb: u32,
    bound: Duration,
    stopped_at_step: Option<usize>,
}

impl Session {
    /// Switches `request`'s events on in `machine`'s guest and opens
    /// `trace.txt` in `run_dir`; `title` heads the file. Refuses the
    /// request, before any step, if the guest kernel cannot honour it.
    pub fn start(
        machine: &mut Machine,
        request: &Request,
        run_dir: &Path,
        title: &str,
        memory_mib: u32,
        bound: Duration,
    ) -> Result<Session, Failure> {
        let available = match read_all(machine, &tracefs("available_events"), bound)? {
            Ok(text) => text,
            Err((errno, message)) if errno == libc::ENOENT => {
                return Err(Failure::Refused {
                    input: format!("{} {request}", request.origin),
                    reason: format!(
                        "the guest kernel has no tracefs ({message}): it was built without CONFIG_TRACING; the \
                         bench's debug profile has it (--kernel-profile debug, kernel-config/debug.config)"
                    ),
                })
            }
            Err((_, message)) => return Err(Failure::Host { message: format!("tracefs: {message}") }),
        };
        let plan = plan(request, &available)?;
        for pattern in &plan.skipped {
            eprintln!("trace: this guest kernel has no {pattern} events; the default set goes on without them");
        }
        let cpus = machine.hello.cpus_online.max(1);
        let buffer_kb = BUFFER_KB_PER_CPU.min(memory_mib.saturating_mul(1024) / 4 / cpus).max(64);
        let setup = [
            ("tracing_on", "0".to_owned()),
            ("trace_clock", TRACE_CLOCK.to_owned()),
            ("buffer_size_kb", buffer_kb.to_string()),
            ("events/enable", "0".to_owned()),
            // Opened with O_TRUNC, the trace file empties the buffer.
            ("trace", String::new()),
        ];
        for (file, value) in &setup {
            write(machine, file, value.as_bytes(), bound)?;
        }
        for path in &plan.enable {
            write(machine, &format!("events/{path}"), b"1", bound)?;
        }
        let header = match read_all(machine, &tracefs("trace"), bound)? {
            Ok(text) => text,
            Err((_, message)) => return Err(Failure::Host { message: format!("tracefs: {message}") }),
        };
        write(machine, "tracing_on", b"1", bound)?;

        std::fs::create_dir_all(run_dir).map_err(|e| Failure::io("create the run directory", e))?;
        let path = trace_file(run_dir);
        let file = File::create(&path).map_err(|e| Failure::io(format!("create {}", path.display()), e))?;
        let mut session = Session {
            file: BufWriter::new(file),
            path,
            bytes: 0,
            lines: 0,
            events: plan.events,
            cpus,
            buffer_kb,
            bound,
            stopped_at_step: None,
        };
        let mut head = vec![
            format!("# kevent-bench trace: {title}"),
            format!("# events: {} ({} switched on in {}/events)", request.events.join(", "), plan.events, TRACEFS),
        ];
        if !plan.skipped.is_empty() {
            head.push(format!("# not in this kernel: {}", plan.skipped.join(", ")));
        }
        head.push(format!(
            "# clock: {TRACE_CLOCK} (the guest's CLOCK_MONOTONIC in seconds, as the events' guest_monotonic_ns); \
             buffer: {buffer_kb} KiB per CPU, drained after each step"
        ));
        head.push("# each step begins with a tracing_mark_write line \"kevent-bench step N: LABEL\"".to_owned());
        // The kernel's own column heads, from the emptied `trace` file.
        head.extend(header.lines().filter(|l| l.starts_with('#') && !l.starts_with("# tracer")).map(str::to_owned));
        session.note(&head.join("\n"))?;
        Ok(session)
    }

    /// Writes the marker of step `step` (1-based) into the trace.
    pub fn mark_step(&mut self, machine: &mut Machine, step: usize, label: &str) -> Result<(), Failure> {
        if self.stopped_at_step.is_some() {
            return Ok(());
        }
        let mut marker = format!("kevent-bench step {step}: {label}");
        if marker.len() > MAX_MARKER_BYTES {
            let mut end = MAX_MARKER_BYTES - 3;
            while !marker.is_char_boundary(end) {
                end -= 1;
            }
            marker.truncate(end);
            marker.push_str("...");
        }
        write(machine, "trace_marker", marker.as_bytes(), self.bound)
    }

    /// Moves what the guest's buffer holds into `trace.txt` (`trace_pipe`
    /// consumes it); at [`MAX_TRACE_BYTES`], stops tracing instead.
    pub fn drain(&mut self, machine: &mut Machine, step: usize) -> Result<(), Failure> {
        if self.stopped_at_step.is_some() {
            return Ok(());
        }
        loop {
            let chunk = match machine.ask(
                Command::ReadChunk { path: tracefs("trace_pipe"), offset: 0, max: MAX_READ_BYTES as u32 },
                self.bound,
            )? {
                Outcome::Data(data) => data,
                Outcome::Error { message, .. } => return Err(Failure::Host { message: format!("tracefs: {message}") }),
                other => return Err(Failure::protocol(format!("ReadChunk answered {other:?}"))),
            };
            self.append(&chunk)?;
            if self.bytes >= MAX_TRACE_BYTES {
                write(machine, "tracing_on", b"0", self.bound)?;
                self.stopped_at_step = Some(step);
                return self.note(&format!(
                    "# kevent-bench: the trace reached its bound of {} MiB at the end of step {step}: tracing stopped",
                    MAX_TRACE_BYTES >> 20
                ));
            }
            // A shorter reply ended at the buffer's end, not at its bound.
            if chunk.len() + READ_CHUNK_BYTES <= MAX_READ_BYTES {
                return Ok(());
            }
        }
    }

    /// Stops tracing, drains the rest, and reads from tracefs what was
    /// lost on each CPU. `steps` is the number of steps run.
    pub fn finish(mut self, machine: &mut Machine, steps: usize) -> Result<Summary, Failure> {
        if self.stopped_at_step.is_none() {
            write(machine, "tracing_on", b"0", self.bound)?;
            self.drain(machine, steps)?;
        }
        let mut lost = Vec::new();
        for cpu in 0..self.cpus {
            let stats = match read_all(machine, &tracefs(&format!("per_cpu/cpu{cpu}/stats")), self.bound)? {
                Ok(text) => text,
                Err((_, message)) => return Err(Failure::Host { message: format!("tracefs: {message}") }),
            };
            let loss = cpu_loss(cpu, &stats);
            if loss.overrun + loss.dropped > 0 {
                lost.push(loss);
            }
        }
        let mut tail = Vec::new();
        for l in &lost {
            tail.push(format!(
                "# kevent-bench: CPU {} lost {} event(s) ({} overwritten, {} dropped): more than its {} KiB buffer \
                 in one step",
                l.cpu,
                l.overrun + l.dropped,
                l.overrun,
                l.dropped,
                self.buffer_kb
            ));
        }
        if lost.is_empty() {
            tail.push("# kevent-bench: no event lost".to_owned());
        }
        self.note(&tail.join("\n"))?;
        self.file.flush().map_err(|e| Failure::io(format!("write {}", self.path.display()), e))?;
        Ok(Summary {
            path: self.path,
            bytes: self.bytes,
            lines: self.lines,
            events: self.events,
            buffer_kb: self.buffer_kb,
            lost,
            stopped_at_step: self.stopped_at_step,
        })
    }

    /// [`Session::finish`], every request bounded by `bound`: for a run
    /// that failed, whose guest may no longer answer.
    pub fn finish_within(mut self, machine: &mut Machine, steps: usize, bound: Duration) -> Result<Summary, Failure> {
        self.bound = bound;
        let path = self.path.clone();
        let result = self.finish(machine, steps);
        if result.is_err() {
            // What was drained before stays; say where it ends.
            if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(&path) {
                let _ = writeln!(
                    file,
                    "# kevent-bench: the run failed in step {steps}; the guest's buffer could not be read"
                );
            }
        }
        result
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Failure> {
        self.file.write_all(data).map_err(|e| Failure::io(format!("write {}", self.path.display()), e))?;
        self.bytes += data.len() as u64;
        self.lines += data.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(())
    }

    /// The bench's own lines, which the line count leaves out.
    fn note(&mut self, text: &str) -> Result<(), Failure> {
        let lines = self.lines;
        self.append(format!("{text}\n").as_bytes())?;
        self.lines = lines;
        Ok(())
    }
}

/// A CPU's losses from its tracefs `stats` (`overrun: N` lines and so on).
fn cpu_loss(cpu: u32, stats: &str) -> CpuLoss {
    let value = |key: &str| {
        stats
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    CpuLoss { cpu, overrun: value("overrun") + value("commit overrun"), dropped: value("dropped events") }
}

fn tracefs(file: &str) -> String {
    format!("{TRACEFS}/{file}")
}

/// One write of `data` to a tracefs file.
fn write(machine: &mut Machine, file: &str, data: &[u8], bound: Duration) -> Result<(), Failure> {
    let path = tracefs(file);
    match machine.ask(Command::WriteFile { path: path.clone(), data: data.to_vec() }, bound)? {
        Outcome::Done => Ok(()),
        Outcome::Error { message, .. } => Err(Failure::Host { message: format!("tracefs: {message}") }),
        other => Err(Failure::protocol(format!("writing {path} answered {other:?}"))),
    }
}

/// A whole file of the guest, chunk by chunk: Err(errno, message) if the
/// guest could not read it.
pub fn read_all(machine: &mut Machine, path: &str, bound: Duration) -> Result<Result<String, (i32, String)>, Failure> {
    let mut data = Vec::new();
    loop {
        let command =
            Command::ReadChunk { path: path.to_owned(), offset: data.len() as u64, max: MAX_READ_BYTES as u32 };
        match machine.ask(command, bound)? {
            Outcome::Data(chunk) if chunk.is_empty() => break,
            Outcome::Data(chunk) => data.extend_from_slice(&chunk),
            Outcome::Error { errno, message } => return Ok(Err((errno, message))),
            other => return Err(Failure::protocol(format!("ReadChunk answered {other:?}"))),
        }
    }
    Ok(Ok(String::from_utf8_lossy(&data).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVAILABLE: &str = "irq:irq_handler_entry\nirq:irq_handler_exit\nirq:softirq_entry\n\
                             workqueue:workqueue_queue_work\nworkqueue:workqueue_execute_start\n\
                             kevent_thermal:thermal_interrupt\nkevent_thermal:thermal_rate_limit\n\
                             kmessage:kmessage_send\n";

    fn request(events: &[&str]) -> Request {
        Request::new(events.iter().map(|e| (*e).to_owned()).collect(), "--trace").unwrap()
    }

    #[test]
    fn patterns_are_system_colon_event_with_globs() {
        assert!(Request::parse_list("irq:*,kevent_thermal:thermal_?nterrupt", "--trace").is_ok());
        let default = Request::default_set("--trace");
        assert!(Request::parse_flag(&default.flag_text(), "bundle").unwrap().default_set);
        let listed = Request::parse_flag("irq:*", "bundle").unwrap();
        assert_eq!((listed.default_set, listed.flag_text()), (false, "irq:*".to_owned()));
        for bad in ["irq", "irq:", ":x", "irq:a b", "irq/x:y", ""] {
            let err = Request::parse_list(bad, "--trace").unwrap_err();
            assert!(err.contains("expected SYSTEM:EVENT"), "{bad}: {err}");
        }
        assert!(Request::new(Vec::new(), "x").unwrap_err().contains("no event named"));
    }

    #[test]
    fn a_whole_system_is_switched_on_by_its_own_file_and_globs_event_by_event() {
        let plan =
            plan(&request(&["irq:*", "*:thermal_*", "kmessage:kmessage_send", "irq:irq_handler_entry"]), AVAILABLE)
                .unwrap();
        assert_eq!(
            plan.enable,
            [
                "irq/enable",
                "kevent_thermal/thermal_interrupt/enable",
                "kevent_thermal/thermal_rate_limit/enable",
                "kmessage/kmessage_send/enable",
                "irq/irq_handler_entry/enable",
            ]
        );
        assert_eq!(plan.events, 6, "irq's three, the module's two, kmessage's one");
        assert!(plan.skipped.is_empty());
    }

    #[test]
    fn an_unknown_event_is_refused_with_the_closest_names() {
        let err = plan(&request(&["irq:*", "irq:irq_handler_entyr"]), AVAILABLE).unwrap_err();
        assert!(matches!(err, Failure::Refused { .. }));
        assert_eq!(
            err.to_string(),
            "--trace irq:irq_handler_entyr: the guest kernel has no such trace event \
             (/sys/kernel/tracing/available_events lists 8 events); close matches: irq:irq_handler_entry, \
             irq:irq_handler_exit"
        );
        let err = plan(&request(&["kevent_thermal:*", "nothing:like_it"]), AVAILABLE).unwrap_err().to_string();
        assert!(err.ends_with("; its event systems are irq, kevent_thermal, kmessage, workqueue"), "{err}");
        let err = plan(&request(&["workqueu:*"]), AVAILABLE).unwrap_err().to_string();
        assert!(err.contains("close matches: workqueue:*"), "{err}");
    }

    #[test]
    fn the_default_set_goes_on_without_the_groups_a_kernel_lacks() {
        let plan = plan(&Request::default_set("--trace"), AVAILABLE).unwrap();
        assert_eq!(plan.skipped, ["irq_vectors:*"]);
        assert_eq!(plan.enable, ["kevent_thermal/enable", "kmessage/enable", "irq/enable", "workqueue/enable"]);
    }

    #[test]
    fn losses_are_read_from_the_cpus_stats() {
        let stats = "entries: 12\noverrun: 3\ncommit overrun: 1\nbytes: 800\noldest event ts:  5.000\n\
                     now ts:  6.000\ndropped events: 2\nread events: 40\n";
        assert_eq!(cpu_loss(1, stats), CpuLoss { cpu: 1, overrun: 4, dropped: 2 });
        assert_eq!(cpu_loss(0, "entries: 0\n"), CpuLoss { cpu: 0, overrun: 0, dropped: 0 });
    }

    #[test]
    fn a_summary_says_where_the_trace_is_and_what_it_lost() {
        let mut summary = Summary {
            path: "/r/trace.txt".into(),
            bytes: 2048,
            lines: 30,
            events: 40,
            buffer_kb: 1024,
            lost: Vec::new(),
            stopped_at_step: None,
        };
        assert_eq!(summary.report(), ["trace: 30 lines (2 KiB) of 40 event(s) in /r/trace.txt"]);
        summary.lost = vec![CpuLoss { cpu: 1, overrun: 5, dropped: 0 }];
        summary.stopped_at_step = Some(3);
        let report = summary.report();
        assert!(report[1].starts_with("warning: the trace lost 5 event(s) (CPU 1: 5)"), "{report:?}");
        assert_eq!(report[2], "warning: the trace reached its bound of 64 MiB at step 3 and tracing stopped there");
    }
}
