//! Scenarios: `scenarios/*.toml`, parsed strictly.
//!
//! Every error names the file, line and column and what was expected;
//! unknown keys are errors, so a typo never silently does nothing. Every
//! value is bounded ([`limits`]) and every computation on one is checked,
//! so no input can make the parser panic or a run go on without end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use crate::inject::Injector;
use crate::msr_trace::{self as trace, Trace};
use crate::qemu::Clock;
use crate::thermal;
use crate::topology::Topology;

/// What a scenario may ask for: each bound keeps a run finite and inside
/// the bounds the host puts on the guest (README, "Scenario limits").
pub mod limits {
    /// The bench kernel's NR_CPUS and the sensor device's rings.
    pub const MAX_CPUS: u32 = crate::topology::MAX_CPUS;
    /// Least guest memory, MiB: what the bench guest needs to boot.
    pub const MIN_MEMORY_MIB: u32 = 64;
    /// Most guest memory, MiB (16 GiB).
    pub const MAX_MEMORY_MIB: u32 = 16384;
    /// Repetitions of one step.
    pub const MAX_REPEAT: u32 = 10_000;
    /// Repetitions of all steps together: the run's length and the host's
    /// memory for its transcript stay bounded.
    pub const MAX_TOTAL_REPETITIONS: u64 = 100_000;
    /// One sleep; the host's bound on an agent command is 60 s.
    pub const MAX_SLEEP_MS: u64 = 30_000;
    /// Firings of one device-timed step: one ring entry, whose uevents must
    /// fit in the guest's queue (sensor::abi::MAX_REPEAT).
    pub const MAX_TIMED_REPEAT: u32 = crate::sensor::abi::MAX_REPEAT;
    /// Between two firings of a device-timed step.
    pub const MAX_INTERVAL_US: u64 = 1_000_000;
    /// All firings of a device-timed step, on the guest's clock.
    pub const MAX_TIMED_STEP_US: u64 = 30_000_000;
    /// Bytes of one `write` step's value.
    pub const MAX_WRITE_BYTES: usize = 64 << 10;
    /// Bytes of an `exec` step's program and arguments together.
    pub const MAX_EXEC_BYTES: usize = 64 << 10;
    /// Bytes of a path (`read`, `write`, `exec`'s program): the kernel's
    /// PATH_MAX.
    pub const MAX_PATH_BYTES: usize = 4096;
    /// Guest sleep of all steps together, repetitions included: a run on
    /// the real clock takes at least this long.
    pub const MAX_TOTAL_SLEEP_MS: u64 = 300_000;
    /// Programs started in the background, all steps together: the agent
    /// runs at most this many at once and reports them in one frame.
    pub const MAX_BACKGROUND: u32 = kevent_wire::MAX_BACKGROUND_PROGRAMS as u32;
}

/// Where in the scenario file something was written (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, counted in characters (not bytes).
    pub column: usize,
}

/// The guest a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineSpec {
    /// Its CPUs: `cpus` alone is that many packages of one core; default 2 CPUs.
    pub topology: Topology,
    /// Guest RAM in MiB, [`limits::MIN_MEMORY_MIB`] to [`limits::MAX_MEMORY_MIB`]; default 256.
    pub memory_mib: u32,
    /// What guest time follows (`[machine] clock`); default real.
    pub clock: Clock,
    /// The guest runs the D-Bus side (`[machine] dbus`: dbus-daemon,
    /// kdbusd, the agent's monitor; docs/dbus.md); default false.
    pub dbus: bool,
}

impl Default for MachineSpec {
    fn default() -> Self {
        MachineSpec { topology: Topology::flat(2), memory_mib: 256, clock: Clock::default(), dbus: false }
    }
}

impl MachineSpec {
    /// Every CPU of the machine.
    pub fn cpus(&self) -> u32 {
        self.topology.cpus()
    }
}

impl fmt::Display for MachineSpec {
    /// "2 CPUs, 256 MiB, real clock", with the packages where they share
    /// cores: "4 CPUs in 2 packages × 2 cores, ...".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} CPUs", self.cpus())?;
        if self.topology.shares_packages() {
            write!(f, " in {}", self.topology)?;
        }
        write!(f, ", {} MiB, {} clock", self.memory_mib, self.clock)?;
        if self.dbus {
            write!(f, ", D-Bus")?;
        }
        Ok(())
    }
}

/// One module parameter, as the scenario gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Module name as written (`-` and `_` both accepted, as the kernel does).
    pub module: String,
    /// Parameter name as written.
    pub key: String,
    /// The value as one kernel command-line word: integers in decimal,
    /// booleans as `1`/`0`, strings as given.
    pub value: String,
    /// Where the key was written.
    pub at: Location,
}

/// A parsed scenario file: a guest, module parameters and the steps to run on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The file's stem; names its snapshot and its tests.
    pub name: String,
    /// The file it was parsed from, for error messages.
    pub path: PathBuf,
    /// The file's `description`, shown in the snapshot.
    pub description: String,
    /// `[machine]`, defaults filled in.
    pub machine: MachineSpec,
    /// The scenario's injector; a command-line choice replaces it.
    pub injector: Injector,
    /// Module parameters, in file order.
    pub params: Vec<Param>,
    /// kevent_thermal's TjMax as `params` sets it (validated there), the
    /// scale of every readout the scenario computes; kept beside `params`
    /// by the parser and [`Scenario::of_replay`], the only writers.
    tjmax: u32,
    /// The `[[step]]`s in file order; never empty.
    pub steps: Vec<Step>,
    /// The traces of `replay` steps, by path, once [`load`] (or
    /// [`Scenario::load_traces`]) has read them: [`parse`] reads no file.
    pub traces: BTreeMap<PathBuf, Trace>,
    /// Kernel trace events to record into the run's `trace.txt`; a
    /// command-line `--trace` replaces it.
    pub trace: Option<crate::trace::Request>,
}

/// One `[[step]]`: an action, how often, and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does, exactly one per step.
    pub action: Action,
    /// How many times to do it; events of a repeated step are counted.
    pub repeat: u32,
    /// Injections the sensor device fires itself, `repeat` times this far
    /// apart on the guest's clock (zero: back to back), without the host
    /// or the agent in between.
    pub device_interval: Option<Duration>,
    /// Where the step's table starts, for errors that name the step.
    pub at: Location,
}

/// What one step does in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A simulated thermal interrupt.
    Inject {
        /// Target CPU, below the machine's CPU count.
        cpu: u32,
        /// IA32_PACKAGE_THERM_STATUS of the CPU's package instead of the core register.
        package: bool,
        /// The register image: status bits, the readout, and for the core
        /// register the reading-valid bit (see [`crate::thermal`]).
        value: u64,
        /// How the file described it (bits and °C, or the raw image), for
        /// the snapshot and messages.
        label: String,
    },
    /// The agent sleeps, on the guest's clock.
    Sleep {
        /// Milliseconds, up to [`limits::MAX_SLEEP_MS`].
        ms: u64,
    },
    /// The agent reads a guest file (sysfs, debugfs, ...); its contents go in the snapshot.
    Read {
        /// Guest path, at most [`limits::MAX_PATH_BYTES`].
        path: String,
    },
    /// The agent writes to a guest file in one write(2).
    Write {
        /// Guest path, at most [`limits::MAX_PATH_BYTES`].
        path: String,
        /// Exactly the bytes written, possibly none.
        value: String,
    },
    /// The agent runs a guest program.
    Exec {
        /// Guest path of the program.
        program: String,
        /// Its arguments, after argv\[0\].
        args: Vec<String>,
        /// Started and left running; its result is reported when the scenario ends.
        background: bool,
    },
    /// Replay a recorded trace (docs/trace-format.md), host-timed at its
    /// recorded intervals divided by `speed`. `path` is relative to the
    /// scenario's directory, as written; `trace` is where it is.
    Replay {
        /// The trace's path as the scenario wrote it.
        path: String,
        /// Where the trace is: relative to the scenario's directory.
        trace: PathBuf,
        /// How much faster than recorded.
        speed: SpeedMilli,
    },
    /// The agent stops kdbusd (and waits until its name is gone from the
    /// bus) or starts it again (and waits until it owns its name); needs
    /// `[machine] dbus` (docs/dbus.md).
    Kdbusd {
        /// Start rather than stop.
        start: bool,
    },
}

/// A replay speed, in thousandths (so that a step stays `Eq`): 1000 is as
/// recorded, 2000 twice as fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeedMilli(pub u32);

impl SpeedMilli {
    /// As recorded.
    pub const RECORDED: SpeedMilli = SpeedMilli(1000);

    /// The speed `speed` (times faster than recorded), if it is in
    /// [`trace::SPEED_RANGE`] and a whole number of thousandths: a finer one
    /// would be replayed rounded, so it is refused rather than changed.
    pub fn from_speed(speed: f64) -> Option<SpeedMilli> {
        let milli = (speed * 1000.0).round();
        let whole = (speed * 1000.0 - milli).abs() < 1e-6;
        (trace::SPEED_RANGE.contains(&speed) && whole && milli >= 1.0).then_some(SpeedMilli(milli as u32))
    }

    /// Times faster than recorded.
    pub fn speed(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Inject { cpu, package, value, label } => {
                let register = if *package { "package" } else { "core" };
                write!(f, "inject cpu {cpu} {register} {value:#x} ({label})")
            }
            Action::Sleep { ms } => write!(f, "sleep {ms} ms"),
            Action::Read { path } => write!(f, "read {path}"),
            Action::Write { path, value } => write!(f, "write {value:?} to {path}"),
            Action::Exec { program, args, background } => {
                write!(f, "exec {program}")?;
                for a in args {
                    write!(f, " {a}")?;
                }
                if *background {
                    write!(f, " (background)")?;
                }
                Ok(())
            }
            Action::Replay { path, speed, .. } if *speed == SpeedMilli::RECORDED => write!(f, "replay {path}"),
            Action::Replay { path, speed, .. } => write!(f, "replay {path} at speed {}", speed.speed()),
            Action::Kdbusd { start } => write!(f, "{} kdbusd", if *start { "start" } else { "stop" }),
        }
    }
}

/// A scenario file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}:{}: {message}", path.display(), at.line, at.column)]
pub struct ScenarioError {
    /// The scenario file.
    pub path: PathBuf,
    /// Where in it the problem is.
    pub at: Location,
    /// What is wrong and what was expected, without the location.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: String,
    injector: Option<Spanned<String>>,
    #[serde(default)]
    machine: RawMachine,
    #[serde(default)]
    params: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
    trace: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    cpus: Option<Spanned<i64>>,
    packages: Option<Spanned<i64>>,
    cores: Option<Spanned<i64>>,
    memory_mib: Option<Spanned<i64>>,
    clock: Option<Spanned<String>>,
    dbus: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    inject: Option<Spanned<RawInject>>,
    sleep_ms: Option<Spanned<i64>>,
    read: Option<Spanned<String>>,
    write: Option<Spanned<RawWrite>>,
    exec: Option<Spanned<RawExec>>,
    replay: Option<Spanned<String>>,
    speed: Option<Spanned<f64>>,
    repeat: Option<Spanned<i64>>,
    interval_us: Option<Spanned<i64>>,
    kdbusd: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    cpu: Spanned<i64>,
    #[serde(default)]
    package: bool,
    #[serde(default)]
    bits: Vec<Spanned<String>>,
    temperature: Option<Spanned<i64>>,
    raw: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrite {
    path: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    background: bool,
}

/// The scenario files (`*.toml`) of a directory, sorted by name.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and parses the scenario file at `path`, then reads and checks
/// the traces its `replay` steps name; an unreadable file is an error at 1:1.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let bytes = std::fs::read(path).map_err(|e| ScenarioError {
        path: path.to_owned(),
        at: Location { line: 1, column: 1 },
        message: format!("cannot read: {e}"),
    })?;
    let mut scenario = parse_bytes(path, &bytes)?;
    scenario.load_traces()?;
    Ok(scenario)
}

/// The scenario in `bytes`, the contents of `path`: [`load`] without the
/// file system, for callers that hold the bytes (and the fuzz targets).
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Scenario, ScenarioError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(path, text),
        Err(e) => {
            // Located at the first byte that is not UTF-8.
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid up to here");
            Err(ScenarioError {
                path: path.to_owned(),
                at: position(valid, valid.len()),
                message: format!("byte {:#04x} is not UTF-8: a scenario is UTF-8 text", bytes[e.valid_up_to()]),
            })
        }
    }
}

/// Line and column (1-based, in characters) of a byte offset.
fn position(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    Location { line, column: before[line_start..].chars().count() + 1 }
}

/// Turns spans into located errors for one file.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, span: &Range<usize>) -> Location {
        position(self.text, span.start)
    }

    fn error(&self, span: &Range<usize>, message: impl Into<String>) -> ScenarioError {
        ScenarioError { path: self.path.to_owned(), at: self.at(span), message: message.into() }
    }

    /// An integer of the file as `T`, within `range`, or an error naming
    /// `what` and the range.
    fn bounded<T>(
        &self,
        value: &Spanned<i64>,
        what: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ScenarioError>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display + Copy,
    {
        let raw = *value.get_ref();
        T::try_from(raw).ok().filter(|v| range.contains(v)).ok_or_else(|| {
            self.error(&value.span(), format!("{what} = {raw}: expected {} to {}", range.start(), range.end()))
        })
    }
}

/// Parses and checks scenario `text`; `path` names it in errors and gives
/// the scenario its name. Module parameters are checked against the built
/// modules separately ([`Scenario::check_params`]).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let loc = Locator { path, text };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(text.len()..text.len());
        let message = e.message().trim_end();
        let message = if message.is_empty() { "not valid TOML here" } else { message };
        loc.error(&span, message)
    })?;

    let defaults = MachineSpec::default();
    let topology = machine_topology(&raw.machine, &loc)?.unwrap_or(defaults.topology);
    let cpus = topology.cpus();
    let memory_mib = match &raw.machine.memory_mib {
        Some(m) => loc.bounded(m, "memory_mib", limits::MIN_MEMORY_MIB..=limits::MAX_MEMORY_MIB)?,
        None => defaults.memory_mib,
    };
    let clock = match raw.machine.clock {
        Some(name) => Clock::from_name(name.get_ref()).ok_or_else(|| {
            loc.error(&name.span(), format!("clock = {:?}: expected {}", name.get_ref(), Clock::NAMES))
        })?,
        None => defaults.clock,
    };
    let dbus = raw.machine.dbus.unwrap_or(defaults.dbus);
    let machine = MachineSpec { topology, memory_mib, clock, dbus };

    let (params, tjmax) = parse_params(raw.params, &loc)?;

    let injector = match raw.injector {
        None => Injector::default(),
        Some(name) => Injector::from_name(name.get_ref()).ok_or_else(|| {
            loc.error(&name.span(), format!("injector = {:?}: expected {}", name.get_ref(), Injector::NAMES))
        })?,
    };

    if raw.step.is_empty() {
        return Err(loc.error(&(0..0), "no [[step]]: a scenario needs at least one step"));
    }
    let mut steps = Vec::new();
    let mut total_repetitions = 0u64;
    let mut background = 0u32;
    let mut total_sleep_ms = 0u64;
    for step in raw.step {
        let span = step.span();
        let step = step.into_inner();
        let repeat = match &step.repeat {
            Some(r) => loc.bounded(r, "repeat", 1..=limits::MAX_REPEAT)?,
            None => 1,
        };
        total_repetitions += u64::from(repeat);
        if total_repetitions > limits::MAX_TOTAL_REPETITIONS {
            let at = step.repeat.as_ref().map_or(span.clone(), Spanned::span);
            return Err(loc.error(
                &at,
                format!(
                    "the steps so far repeat {total_repetitions} times in all: a scenario runs at most {} step \
                     repetitions",
                    limits::MAX_TOTAL_REPETITIONS
                ),
            ));
        }
        let mut actions = Vec::new();
        if let Some(inject) = step.inject {
            actions.push(inject_action(inject.into_inner(), cpus, tjmax, &loc)?);
        }
        if let Some(ms) = &step.sleep_ms {
            let ms: u64 = loc.bounded(ms, "sleep_ms", 0..=limits::MAX_SLEEP_MS)?;
            total_sleep_ms += ms * u64::from(repeat);
            if total_sleep_ms > limits::MAX_TOTAL_SLEEP_MS {
                return Err(loc.error(
                    &span,
                    format!(
                        "the steps so far sleep {} s in all: a scenario sleeps at most {} s",
                        total_sleep_ms / 1000,
                        limits::MAX_TOTAL_SLEEP_MS / 1000
                    ),
                ));
            }
            actions.push(Action::Sleep { ms });
        }
        if let Some(path) = step.read {
            let span = path.span();
            actions.push(Action::Read { path: bounded_path(path.into_inner(), "read", &span, &loc)? });
        }
        if let Some(w) = step.write {
            let span = w.span();
            let w = w.into_inner();
            let w = RawWrite { path: bounded_path(w.path, "write: the path", &span, &loc)?, value: w.value };
            if w.value.len() > limits::MAX_WRITE_BYTES {
                return Err(loc.error(
                    &span,
                    format!("write: the value is {} bytes, at most {}", w.value.len(), limits::MAX_WRITE_BYTES),
                ));
            }
            actions.push(Action::Write { path: w.path, value: w.value });
        }
        if let Some(e) = step.exec {
            let span = e.span();
            let e = e.into_inner();
            let e = RawExec { program: bounded_path(e.program, "exec: the program", &span, &loc)?, ..e };
            let bytes = e.program.len() + e.args.iter().map(String::len).sum::<usize>();
            if bytes > limits::MAX_EXEC_BYTES {
                return Err(loc.error(
                    &span,
                    format!("exec: program and arguments are {bytes} bytes, at most {}", limits::MAX_EXEC_BYTES),
                ));
            }
            if e.background {
                background += repeat;
                if background > limits::MAX_BACKGROUND {
                    return Err(loc.error(
                        &span,
                        format!(
                            "this would be background program {background}: at most {} run in the background",
                            limits::MAX_BACKGROUND
                        ),
                    ));
                }
            }
            actions.push(Action::Exec { program: e.program, args: e.args, background: e.background });
        }
        if let Some(replay) = step.replay {
            let span = replay.span();
            let written = bounded_path(replay.into_inner(), "replay: the trace", &span, &loc)?;
            let speed = match &step.speed {
                None => SpeedMilli::RECORDED,
                Some(speed) => SpeedMilli::from_speed(*speed.get_ref()).ok_or_else(|| {
                    loc.error(
                        &speed.span(),
                        format!(
                            "speed = {}: expected {} to {} (times faster than recorded), in thousandths",
                            speed.get_ref(),
                            trace::SPEED_RANGE.start(),
                            trace::SPEED_RANGE.end()
                        ),
                    )
                })?,
            };
            if let Some(r) = &step.repeat {
                return Err(loc.error(&r.span(), "repeat: a replay step plays its trace once"));
            }
            let trace = path.parent().unwrap_or(Path::new("")).join(&written);
            actions.push(Action::Replay { path: written, trace, speed });
        } else if let Some(speed) = &step.speed {
            return Err(loc.error(&speed.span(), "speed paces a replay: this step replays no trace"));
        } else if let Some(k) = step.kdbusd {
            let start = match k.get_ref().as_str() {
                "stop" => false,
                "start" => true,
                other => {
                    return Err(loc.error(&k.span(), format!("kdbusd = {other:?}: expected \"stop\" or \"start\"")))
                }
            };
            if !machine.dbus {
                return Err(
                    loc.error(&k.span(), "kdbusd: the guest has no D-Bus side (add `dbus = true` under [machine])")
                );
            }
            actions.push(Action::Kdbusd { start });
        }
        if actions.len() != 1 {
            return Err(loc.error(
                &span,
                format!(
                    "a step has exactly one of inject, sleep_ms, read, write, exec, replay, kdbusd; this one has {}",
                    actions.len()
                ),
            ));
        }
        let action = actions.remove(0);
        let device_interval = match &step.interval_us {
            None => None,
            Some(interval) => Some(device_interval(interval, &action, repeat, injector, topology, &loc)?),
        };
        steps.push(Step { action, repeat, device_interval, at: loc.at(&span) });
    }
    let trace = match raw.trace {
        None => None,
        Some(value) => parse_trace(value, &loc)?,
    };
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Scenario {
        name,
        path: path.to_owned(),
        description: raw.description,
        machine,
        injector,
        params,
        tjmax,
        steps,
        trace,
        traces: BTreeMap::new(),
    })
}

/// `trace = true` (the default set), `false`, or a list of `SYSTEM:EVENT`
/// patterns.
fn parse_trace(value: Spanned<toml::Value>, loc: &Locator<'_>) -> Result<Option<crate::trace::Request>, ScenarioError> {
    let span = value.span();
    let at = loc.at(&span);
    let origin = format!("{}:{}:{}: trace", loc.path.display(), at.line, at.column);
    match value.into_inner() {
        toml::Value::Boolean(false) => Ok(None),
        toml::Value::Boolean(true) => Ok(Some(crate::trace::Request::default_set(origin))),
        toml::Value::Array(items) => {
            let mut events = Vec::new();
            for item in items {
                match item {
                    toml::Value::String(event) => events.push(event),
                    other => {
                        return Err(
                            loc.error(&span, format!("trace: expected event names, found a {}", other.type_str()))
                        )
                    }
                }
            }
            crate::trace::Request::new(events, origin).map(Some).map_err(|e| loc.error(&span, format!("trace: {e}")))
        }
        other => Err(loc.error(
            &span,
            format!(
                "trace = {other}: expected true (the default set), false, or a list of SYSTEM:EVENT patterns such as \
                 [\"irq:*\", \"kevent_thermal:*\"]"
            ),
        )),
    }
}

/// `[machine]`'s CPUs: `cpus` (each its own package), or `packages` and
/// `cores` (each 1 unless given), or all three if they agree. None if the
/// scenario says nothing.
fn machine_topology(raw: &RawMachine, loc: &Locator<'_>) -> Result<Option<Topology>, ScenarioError> {
    let cpus = match &raw.cpus {
        Some(c) => Some(loc.bounded(c, "cpus", 1..=limits::MAX_CPUS)?),
        None => None,
    };
    let packages = match &raw.packages {
        Some(p) => Some(loc.bounded(p, "packages", 1..=crate::topology::MAX_PACKAGES)?),
        None => None,
    };
    let cores = match &raw.cores {
        Some(c) => Some(loc.bounded(c, "cores", 1..=limits::MAX_CPUS)?),
        None => None,
    };
    if packages.is_none() && cores.is_none() {
        return Ok(cpus.map(Topology::flat));
    }
    let at = raw.packages.as_ref().or(raw.cores.as_ref()).map(Spanned::span).expect("one of them is given");
    let topology = Topology::new(packages.unwrap_or(1), cores.unwrap_or(1)).map_err(|why| loc.error(&at, why))?;
    if let (Some(cpus), Some(c)) = (cpus, &raw.cpus) {
        if cpus != topology.cpus() {
            return Err(loc.error(
                &c.span(),
                format!("cpus = {cpus}, but {topology} are {} CPUs: give one or the other", topology.cpus()),
            ));
        }
    }
    Ok(Some(topology))
}

/// A path no longer than the guest's PATH_MAX, or an error at `span`.
fn bounded_path(path: String, what: &str, span: &Range<usize>, loc: &Locator<'_>) -> Result<String, ScenarioError> {
    if path.len() > limits::MAX_PATH_BYTES {
        return Err(loc.error(
            span,
            format!("{what} is {} bytes long: a path is at most {}", path.len(), limits::MAX_PATH_BYTES),
        ));
    }
    Ok(path)
}

/// `interval_us` of a step: the sensor device fires the step's injection
/// `repeat` times at that interval on the guest's clock.
fn device_interval(
    interval: &Spanned<i64>,
    action: &Action,
    repeat: u32,
    injector: Injector,
    topology: Topology,
    loc: &Locator<'_>,
) -> Result<Duration, ScenarioError> {
    let span = interval.span();
    if !matches!(action, Action::Inject { .. }) {
        return Err(loc.error(&span, "interval_us times injections: this step does not inject"));
    }
    if matches!(action, Action::Inject { package: true, .. }) && topology.shares_packages() {
        return Err(loc.error(&span, timed_package_refusal(topology)));
    }
    if injector != Injector::Device {
        return Err(loc.error(
            &span,
            "interval_us: the sensor device times these injections; this scenario has injector = \"debugfs\"",
        ));
    }
    let interval_us: u64 = loc.bounded(interval, "interval_us", 0..=limits::MAX_INTERVAL_US)?;
    if repeat > limits::MAX_TIMED_REPEAT {
        return Err(loc.error(
            &span,
            format!(
                "interval_us with repeat = {repeat}: the device fires at most {} injections of one step",
                limits::MAX_TIMED_REPEAT
            ),
        ));
    }
    // interval × (repeat − 1): the first firing is at once.
    let span_us = interval_us * u64::from(repeat - 1);
    if span_us > limits::MAX_TIMED_STEP_US {
        return Err(loc.error(
            &span,
            format!(
                "interval_us = {interval_us} with repeat = {repeat} spans {} ms: at most {} s",
                span_us / 1000,
                limits::MAX_TIMED_STEP_US / 1_000_000
            ),
        ));
    }
    Ok(Duration::from_micros(interval_us))
}

/// Why a package injection cannot be device-timed on `topology`.
fn timed_package_refusal(topology: Topology) -> String {
    format!(
        "interval_us: a package injection interrupts every core of the package, one after the other, and the \
         device times the entries of one CPU; on {topology} inject the core register, or time the steps yourself"
    )
}

/// Characters a module name or parameter name may have: the kernel's own
/// (letters, digits, `_`, and `-` which it reads as `_` in module names).
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `value` stays one word of the kernel command line: no space,
/// quote, control character or non-ASCII byte, any of which would split
/// it, escape it or be mangled on the way to the module.
fn is_command_line_word(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
}

/// `[params]`: module → parameter → value; also the TjMax the readout of
/// temperatures is computed against.
type RawParams = BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<toml::Value>>>;

fn parse_params(raw: RawParams, loc: &Locator<'_>) -> Result<(Vec<Param>, u32), ScenarioError> {
    let mut params = Vec::new();
    let mut tjmax = thermal::DEFAULT_TJMAX;
    for (module, values) in raw {
        if !is_name(module.get_ref()) {
            return Err(loc.error(
                &module.span(),
                format!("params: module name {:?} is not a module name (letters, digits, _ and -)", module.get_ref()),
            ));
        }
        for (key, value) in values {
            let (module, key_name) = (module.get_ref(), key.get_ref());
            if !is_name(key_name) {
                return Err(loc.error(
                    &key.span(),
                    format!("params.{module}: {key_name:?} is not a parameter name (letters, digits, _ and -)"),
                ));
            }
            let span = value.span();
            let text = match value.into_inner() {
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => if b { "1" } else { "0" }.to_owned(),
                toml::Value::String(s) if !s.is_empty() && is_command_line_word(&s) => s,
                toml::Value::String(s) => {
                    return Err(loc.error(
                        &span,
                        format!(
                            "params.{module}.{key_name} = {s:?}: a value goes on the kernel command line as one word: \
                             printable ASCII without spaces or quotes, not empty"
                        ),
                    ))
                }
                other => {
                    return Err(loc.error(
                        &span,
                        format!(
                            "params.{module}.{key_name}: expected an integer, a boolean or a string, found a {}",
                            other.type_str()
                        ),
                    ))
                }
            };
            // Temperatures become readouts through TjMax: a TjMax the module
            // would refuse must not silently turn into the default. The
            // module is found under any name the agent loads it by (`-` is
            // `_`), and the value is plain decimal: the kernel reads `0144`
            // as octal, where `parse` would read 144.
            if module.replace('-', "_") == "kevent_thermal" && key_name == "tjmax" {
                tjmax = text
                    .parse()
                    .ok()
                    .filter(|t| thermal::TJMAX_RANGE.contains(t) && t.to_string() == text)
                    .ok_or_else(|| {
                        loc.error(
                            &span,
                            format!(
                                "params.{module}.tjmax = {text}: expected {} to {} (°C, in decimal)",
                                thermal::TJMAX_RANGE.start(),
                                thermal::TJMAX_RANGE.end()
                            ),
                        )
                    })?;
            }
            params.push(Param { module: module.clone(), key: key_name.clone(), value: text, at: loc.at(&key.span()) });
        }
    }
    Ok((params, tjmax))
}

fn inject_action(inject: RawInject, cpus: u32, tjmax: u32, loc: &Locator<'_>) -> Result<Action, ScenarioError> {
    // A checked topology has at least one CPU.
    debug_assert!(cpus >= 1);
    let cpu = loc.bounded(&inject.cpu, "cpu", 0..=cpus - 1).map_err(|mut e| {
        e.message = format!("cpu = {}: the machine has CPUs 0 to {}", inject.cpu.get_ref(), cpus - 1);
        e
    })?;
    if let Some(raw) = inject.raw {
        let span = raw.span();
        if !inject.bits.is_empty() || inject.temperature.is_some() {
            return Err(loc.error(&span, "raw replaces bits and temperature: give one or the other"));
        }
        let text = raw.into_inner();
        let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(&text);
        let value = Some(digits)
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| u64::from_str_radix(d, 16).ok())
            .ok_or_else(|| loc.error(&span, format!("raw = {text:?}: expected a hexadecimal register image")))?;
        return Ok(Action::Inject { cpu, package: inject.package, value, label: format!("raw {text}") });
    }
    let mut value = 0u64;
    let mut names = Vec::new();
    for bit in inject.bits {
        let name = bit.get_ref();
        let Some(n) = thermal::bit_named(name) else {
            return Err(loc.error(
                &bit.span(),
                format!("unknown bit {name:?}: expected one of {}", thermal::bit_names().join(", ")),
            ));
        };
        value |= 1 << n;
        names.push(name.clone());
    }
    // With no temperature given, the reading is the reset one.
    let (celsius, readout) = match inject.temperature {
        Some(t) => {
            let celsius = *t.get_ref();
            let readout = thermal::readout_of(tjmax, celsius).ok_or_else(|| {
                let (coolest, hottest) = thermal::temperature_range(tjmax);
                loc.error(
                    &t.span(),
                    format!(
                        "temperature = {celsius}: the readout holds 0 to {} degrees below TjMax ({tjmax} °C), so \
                         {coolest} to {hottest}",
                        thermal::READOUT_MAX
                    ),
                )
            })?;
            (celsius, readout)
        }
        None => (i64::from(tjmax) - thermal::RESET_READOUT as i64, thermal::RESET_READOUT),
    };
    value |= readout << thermal::READOUT_SHIFT;
    if !inject.package {
        value |= thermal::VALID;
    }
    let bits = if names.is_empty() { "no status".to_owned() } else { names.join(" ") };
    Ok(Action::Inject { cpu, package: inject.package, value, label: format!("{bits}, {celsius} °C") })
}

impl Scenario {
    /// Device-timed steps need the device injector; a command-line choice
    /// of debugfs can contradict the file.
    pub fn check_injector(&self) -> Result<(), ScenarioError> {
        match self.device_timed_step() {
            Some(step) if self.injector != Injector::Device => Err(self.error_at(
                step.at,
                format!(
                    "this step is timed by the sensor device (interval_us), which needs the device injector, not {}",
                    self.injector
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The first step the sensor device times, if any.
    pub fn device_timed_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.device_interval.is_some())
    }

    /// Runs the scenario with `memory_mib` of guest RAM instead of its own.
    pub fn set_memory_mib(&mut self, memory_mib: u32) -> Result<(), String> {
        if !(limits::MIN_MEMORY_MIB..=limits::MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(format!("out of range ({} to {} MiB)", limits::MIN_MEMORY_MIB, limits::MAX_MEMORY_MIB));
        }
        self.machine.memory_mib = memory_mib;
        Ok(())
    }

    /// Runs the scenario on `cpus` CPUs, each its own package, instead of
    /// its own machine: see [`Self::set_topology`].
    pub fn set_cpus(&mut self, cpus: u32) -> Result<(), String> {
        if !(1..=limits::MAX_CPUS).contains(&cpus) {
            return Err(format!("{cpus} CPUs: the bench kernel runs 1 to {}", limits::MAX_CPUS));
        }
        self.set_topology(Topology::flat(cpus))
    }

    /// Runs the scenario on `topology` instead of its own: refused, at the
    /// step, if a step injects at a CPU the machine would not have, times
    /// a package injection the device cannot time there, or replays a
    /// trace recorded on another machine. Nothing changes on a refusal.
    pub fn set_topology(&mut self, topology: Topology) -> Result<(), String> {
        topology.check()?;
        let cpus = topology.cpus();
        for step in &self.steps {
            let why = match &step.action {
                Action::Inject { cpu, .. } if *cpu >= cpus => {
                    format!("this step injects at CPU {cpu}, which a {cpus}-CPU machine does not have")
                }
                Action::Inject { package: true, .. }
                    if step.device_interval.is_some() && topology.shares_packages() =>
                {
                    timed_package_refusal(topology)
                }
                Action::Replay { trace, .. } => match self.traces.get(trace) {
                    Some(t) if t.topology != topology => {
                        format!("this step replays a trace recorded on {}, not {topology}", t.topology)
                    }
                    _ => continue,
                },
                _ => continue,
            };
            return Err(self.error_at(step.at, why).to_string());
        }
        self.machine.topology = topology;
        Ok(())
    }

    /// Reads and checks the trace of every `replay` step: its machine must
    /// be the scenario's, its TjMax the module's, its length bounded.
    /// Errors name the step, and the trace's line where the trace is wrong.
    pub fn load_traces(&mut self) -> Result<(), ScenarioError> {
        for step in &self.steps {
            let Action::Replay { trace: path, speed, .. } = &step.action else { continue };
            if self.traces.contains_key(path) {
                continue;
            }
            let trace = trace::load(path).map_err(|e| self.error_at(step.at, format!("replay: {e}")))?;
            self.check_trace(step, &trace, *speed)?;
            self.traces.insert(path.clone(), trace);
        }
        Ok(())
    }

    fn check_trace(&self, step: &Step, trace: &Trace, speed: SpeedMilli) -> Result<(), ScenarioError> {
        if trace.topology != self.machine.topology {
            return Err(self.error_at(
                step.at,
                format!(
                    "replay: {} was recorded on {}; the scenario's machine is {} (set [machine] packages = {} and \
                     cores = {})",
                    trace.path.display(),
                    trace.topology,
                    self.machine.topology,
                    trace.topology.packages,
                    trace.topology.cores
                ),
            ));
        }
        let tjmax = self.tjmax;
        if let Some(recorded) = trace.tjmax.filter(|t| *t != tjmax) {
            return Err(self.error_at(
                step.at,
                format!(
                    "replay: {} was recorded with TjMax {recorded} °C and the module has {tjmax} °C: its readouts \
                     would be other temperatures (set kevent_thermal.tjmax = {recorded})",
                    trace.path.display()
                ),
            ));
        }
        trace.check_speed(speed.speed()).map_err(|why| self.error_at(step.at, format!("replay: {why}")))
    }

    /// A scenario of one step that replays `trace` at `speed` on the
    /// machine it was recorded on (`run --replay`), named after the trace.
    pub fn of_replay(trace: Trace, speed: f64) -> Result<Scenario, String> {
        let speed_milli = SpeedMilli::from_speed(speed).ok_or_else(|| {
            format!(
                "--speed {speed}: expected {} to {}, in thousandths",
                trace::SPEED_RANGE.start(),
                trace::SPEED_RANGE.end()
            )
        })?;
        trace.check_speed(speed)?;
        let path = trace.path.clone();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut params = Vec::new();
        if let Some(tjmax) = trace.tjmax {
            params.push(Param {
                module: "kevent_thermal".into(),
                key: "tjmax".into(),
                value: tjmax.to_string(),
                at: Location::default(),
            });
        }
        let step = Step {
            action: Action::Replay { path: path.display().to_string(), trace: path.clone(), speed: speed_milli },
            repeat: 1,
            device_interval: None,
            at: Location { line: 1, column: 1 },
        };
        Ok(Scenario {
            name,
            path: path.clone(),
            description: format!("replay of {}, recorded on {}", path.display(), trace.topology),
            machine: MachineSpec { topology: trace.topology, ..MachineSpec::default() },
            injector: Injector::default(),
            params,
            tjmax: trace.tjmax.unwrap_or(thermal::DEFAULT_TJMAX),
            steps: vec![step],
            trace: None,
            traces: BTreeMap::from([(path, trace)]),
        })
    }

    /// Checks every module parameter against what the built modules accept
    /// (`known`: module → its parameters, from their `.modinfo`).
    pub fn check_params(&self, known: &BTreeMap<String, BTreeSet<String>>) -> Result<(), ScenarioError> {
        let normalise = |s: &str| s.replace('-', "_");
        for param in &self.params {
            let module = normalise(&param.module);
            let Some(parameters) = known.get(&module) else {
                let modules: Vec<&str> = known.keys().map(String::as_str).collect();
                let hint = suggestion(&module, modules.iter().copied());
                return Err(self.error_at(
                    param.at,
                    format!(
                        "params: no module {:?} is loaded{hint}; the bench loads {}",
                        param.module,
                        modules.join(", ")
                    ),
                ));
            };
            if !parameters.iter().any(|p| normalise(p) == normalise(&param.key)) {
                let hint = suggestion(&param.key, parameters.iter().map(String::as_str));
                let list: Vec<&str> = parameters.iter().map(String::as_str).collect();
                return Err(self.error_at(
                    param.at,
                    format!(
                        "params.{}: {} has no parameter {:?}{hint}; its parameters are {}",
                        param.module,
                        module,
                        param.key,
                        list.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Module parameters by module, for the snapshot.
    pub fn params_by_module(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut by_module: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for p in &self.params {
            by_module.entry(p.module.clone()).or_default().insert(p.key.clone(), p.value.clone());
        }
        by_module
    }

    fn error_at(&self, at: Location, message: String) -> ScenarioError {
        ScenarioError { path: self.path.clone(), at, message }
    }

    /// The bench guest with this scenario's machine and module parameters,
    /// and the module told which rate-limit decisions the clock leaves
    /// uncertain (the run reports them).
    pub fn guest(&self, artifacts: &crate::Artifacts) -> crate::GuestSpec {
        let mut args = kernel_args(self);
        let (across, within) = self.machine.clock.rate_limit_edges_ms();
        args.push(kevent_wire::module_param_arg("kevent_thermal", "rate_limit_edge_ms", &across.to_string()));
        args.push(kevent_wire::module_param_arg("kevent_thermal", "rate_limit_burst_edge_ms", &within.to_string()));
        let mut guest = artifacts.guest_of(self.machine.topology, self.machine.memory_mib, args);
        guest.clock = self.machine.clock;
        if self.machine.dbus {
            guest = artifacts.with_dbus(guest);
        }
        guest
    }
}

/// `, did you mean "x"?` when one of `candidates` is a likely intent.
fn suggestion<'a>(wrong: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|c| (edit_distance(wrong, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| format!(", did you mean {c:?}?"))
        .unwrap_or_default()
}

/// Levenshtein distance, by characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// The kernel command-line words that give the modules their parameters.
pub fn kernel_args(scenario: &Scenario) -> Vec<String> {
    scenario.params.iter().map(|p| kevent_wire::module_param_arg(&p.module, &p.key, &p.value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_speed_is_taken_in_whole_thousandths_or_refused() {
        assert_eq!(SpeedMilli::from_speed(0.25), Some(SpeedMilli(250)));
        assert_eq!(SpeedMilli::from_speed(1000.0), Some(SpeedMilli(1_000_000)));
        assert_eq!(SpeedMilli::from_speed(0.013), Some(SpeedMilli(13)));
        assert_eq!(SpeedMilli::from_speed(0.0125), None, "would replay at 0.013");
        assert_eq!(SpeedMilli::from_speed(0.005), None, "below the range");
    }

    fn parse_str(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("scenarios/t.toml"), text)
    }

    fn err(text: &str) -> ScenarioError {
        parse_str(text).unwrap_err()
    }

    const ONE_STEP: &str = "[[step]]\nsleep_ms = 1\n";

    #[test]
    fn a_scenario_parses_into_register_images() {
        let s = parse_str(
            r#"
description = "PROCHOT high then normal"
[machine]
cpus = 4
[params]
kevent_thermal.rate_limit_ms = 0
[[step]]
inject = { cpu = 1, bits = ["prochot", "prochot_log"], temperature = 95 }
[[step]]
inject = { cpu = 3, package = true, bits = ["power_limit"] }
repeat = 3
[[step]]
inject = { cpu = 0, raw = "0x80000001" }
[[step]]
sleep_ms = 5
"#,
        )
        .unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(
            s.machine,
            MachineSpec { topology: Topology::flat(4), memory_mib: 256, clock: Clock::Real, dbus: false }
        );
        assert_eq!(kernel_args(&s), ["kevent_bench.param=kevent_thermal.rate_limit_ms=0"]);
        // 95 °C is 5 below TjMax 100; the core register has the valid bit.
        assert_eq!(
            s.steps[0].action,
            Action::Inject { cpu: 1, package: false, value: 0x8005_0003, label: "prochot prochot_log, 95 °C".into() }
        );
        assert_eq!(s.steps[0].at, Location { line: 7, column: 1 });
        // No valid bit in the package register; the reset reading is 50 below.
        assert_eq!(
            s.steps[1].action,
            Action::Inject { cpu: 3, package: true, value: 0x0032_0400, label: "power_limit, 50 °C".into() }
        );
        assert_eq!(s.steps[1].repeat, 3);
        assert!(matches!(s.steps[2].action, Action::Inject { value: 0x8000_0001, .. }));
        assert_eq!(s.steps[3].action, Action::Sleep { ms: 5 });
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = err("description = \"x\"\n[[step]]\ninject = { cpu = 1, bits = [\"prochot\", \"hot\"] }\n");
        // `"hot"` starts after `inject = { cpu = 1, bits = ["prochot", ` (39 characters).
        assert_eq!((e.at.line, e.at.column), (3, 40), "{e}");
        assert!(e.to_string().starts_with("scenarios/t.toml:3:40: unknown bit \"hot\": expected one of prochot,"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = err("description = \"x\"\n[[step]]\nsleep_ms = 1\nrepet = 2\n");
        assert_eq!(e.at.line, 4, "{e}");
        assert!(e.message.contains("unknown field `repet`"), "{e}");
        let e = err("descripton = \"x\"\n");
        assert!(e.message.contains("unknown field `descripton`"), "{e}");
    }

    #[test]
    fn malformed_toml_is_located_and_explained() {
        let e = err("description = \"x\"\n[[step]\n");
        assert_eq!(e.at.line, 2, "{e}");
        // A file cut off after `key =` still gets a message.
        let e = err("description = \"x\"\n[[step]]\nsleep_ms =");
        assert_eq!(e.at.line, 3, "{e}");
        assert!(!e.message.trim().is_empty(), "{e}");
    }

    #[test]
    fn a_byte_that_is_not_utf8_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, b"description = \"x\"\n[[step]]\nread = \"/pr\xffoc\"\n").unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!((e.at.line, e.at.column), (3, 12), "{e}");
        assert!(e.message.contains("0xff is not UTF-8"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range() {
        let e = err("description = \"x\"\n[[step]]\ninject = { cpu = 2 }\n");
        assert_eq!(e.message, "cpu = 2: the machine has CPUs 0 to 1");
        assert_eq!((e.at.line, e.at.column), (3, 18));
        let e = err("description = \"x\"\n[[step]]\ninject = { cpu = -1 }\n");
        assert_eq!(e.message, "cpu = -1: the machine has CPUs 0 to 1");
        let e = err("description = \"x\"\n[[step]]\ninject = { cpu = 0, temperature = 101 }\n");
        assert!(e.message.contains("so -27 to 100"), "{e}");
        let e = err(&format!("description = \"x\"\n[machine]\ncpus = 9\n{ONE_STEP}"));
        assert_eq!((e.at.line, e.message.as_str()), (3, "cpus = 9: expected 1 to 8"));
        let e = err(&format!("description = \"x\"\n[machine]\nmemory_mib = 32\n{ONE_STEP}"));
        assert_eq!(e.message, "memory_mib = 32: expected 64 to 16384");
    }

    #[test]
    fn extreme_numbers_are_errors_not_overflows() {
        for (text, expected) in [
            ("inject = { cpu = 0, temperature = -9223372036854775808 }", "temperature = -9223372036854775808"),
            ("inject = { cpu = 0, temperature = 9223372036854775807 }", "temperature = 9223372036854775807"),
            ("sleep_ms = 18446744073710", "sleep_ms = 18446744073710: expected 0 to 30000"),
            ("sleep_ms = 61000", "sleep_ms = 61000: expected 0 to 30000"),
            ("sleep_ms = -1", "sleep_ms = -1: expected 0 to 30000"),
            ("sleep_ms = 1\nrepeat = 1000000000", "repeat = 1000000000: expected 1 to 10000"),
            ("inject = { cpu = 9223372036854775807 }", "cpu = 9223372036854775807"),
        ] {
            let e = err(&format!("description = \"x\"\n[[step]]\n{text}\n"));
            assert!(e.message.starts_with(expected), "{text}: {e}");
        }
    }

    #[test]
    fn paths_total_sleep_and_raw_images_are_bounded() {
        let long = "/x".repeat(2049);
        let e = err(&format!("description = \"x\"\n[[step]]\nread = \"{long}\"\n"));
        assert!(e.message.starts_with("read is 4098 bytes long: a path is at most 4096"), "{e}");
        let e = err(&format!("description = \"x\"\n[[step]]\nwrite = {{ path = \"{long}\", value = \"1\" }}\n"));
        assert!(e.message.contains("write: the path is 4098 bytes long"), "{e}");
        let e = err("description = \"x\"\n[[step]]\nsleep_ms = 30000\nrepeat = 11\n");
        assert!(e.message.contains("sleep 330 s in all: a scenario sleeps at most 300 s"), "{e}");
        for raw in ["+ff", "", "0x", "-1", "0x1_0"] {
            let e = err(&format!("description = \"x\"\n[[step]]\ninject = {{ cpu = 0, raw = \"{raw}\" }}\n"));
            assert!(e.message.contains("expected a hexadecimal register image"), "{raw:?}: {e}");
        }
    }

    #[test]
    fn background_programs_are_bounded() {
        let step = "[[step]]\nexec = { program = \"/bin/x\", background = true }\n";
        parse_str(&format!("description = \"x\"\n{}", step.repeat(8))).unwrap();
        let e = err(&format!("description = \"x\"\n{}", step.repeat(9)));
        // The ninth step's exec (each step is two lines after the first).
        assert_eq!((e.at.line, e.at.column), (19, 8), "{e}");
        assert!(e.message.contains("background program 9: at most 8"), "{e}");
        let e = err("description = \"x\"\n[[step]]\nexec = { program = \"/bin/x\", background = true }\nrepeat = 9\n");
        assert!(e.message.contains("background program 9"), "{e}");
    }

    #[test]
    fn the_repetitions_of_a_scenario_are_bounded_in_all() {
        let mut text = String::from("description = \"x\"\n");
        for _ in 0..10 {
            text.push_str("[[step]]\nsleep_ms = 0\nrepeat = 10000\n");
        }
        parse_str(&text).unwrap();
        text.push_str("[[step]]\nsleep_ms = 0\nrepeat = 2\n");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.at.line, 34, "{e}");
        assert!(e.message.contains("100002 times in all"), "{e}");
    }

    #[test]
    fn tjmax_sets_the_readout_scale_and_a_bad_one_is_refused() {
        let s = parse_str(
            "description = \"x\"\n[params]\nkevent_thermal.tjmax = 90\n[[step]]\ninject = { cpu = 0, temperature = 85 }\n",
        )
        .unwrap();
        // 85 °C is 5 below a TjMax of 90.
        let expected = thermal::VALID | (5 << thermal::READOUT_SHIFT);
        assert!(matches!(s.steps[0].action, Action::Inject { value, .. } if value == expected));
        for bad in ["\"hot\"", "0", "256", "-3"] {
            let e = err(&format!("description = \"x\"\n[params]\nkevent_thermal.tjmax = {bad}\n{ONE_STEP}"));
            assert_eq!((e.at.line, e.at.column), (3, 24), "{bad}: {e}");
            assert!(e.message.contains("expected 1 to 255"), "{bad}: {e}");
        }
    }

    /// Found by the fuzz target scenario_mutants: the agent loads
    /// kevent-thermal's parameters into kevent_thermal, and the kernel reads
    /// a leading 0 as octal, so either made the module's TjMax differ from
    /// the one the readouts were computed with.
    #[test]
    fn tjmax_is_the_modules_whatever_the_spelling() {
        let readout = |params: &str| {
            let s = parse_str(&format!(
                "description = \"x\"\n[params]\n{params}\n[[step]]\ninject = {{ cpu = 0, temperature = 85 }}\n"
            ))?;
            let Action::Inject { value, .. } = s.steps[0].action else { panic!() };
            Ok::<_, ScenarioError>((value & thermal::READOUT_MASK) >> thermal::READOUT_SHIFT)
        };
        assert_eq!(readout("kevent-thermal.tjmax = 90").unwrap(), 5);
        assert_eq!(readout("kevent_thermal.tjmax = \"90\"").unwrap(), 5);
        for bad in ["\"0144\"", "\"+90\"", "\"0x5a\""] {
            let e = readout(&format!("kevent_thermal.tjmax = {bad}")).unwrap_err();
            assert!(e.message.contains("expected 1 to 255 (°C, in decimal)"), "{bad}: {e}");
        }
    }

    #[test]
    fn parameters_that_would_split_or_escape_the_command_line_are_refused() {
        for (line, expected) in [
            ("kevent_thermal.\"rate limit\" = 0", "\"rate limit\" is not a parameter name"),
            ("\"kevent thermal\".rate_limit_ms = 0", "\"kevent thermal\" is not a module name"),
            ("kevent_thermal.x = \"a b\"", "as one word"),
            ("kevent_thermal.x = \"rdinit=/x \"", "as one word"),
            ("kevent_thermal.x = \"a\\\"b\"", "as one word"),
            ("kevent_thermal.x = \"\"", "not empty"),
            ("kevent_thermal.x = \"\\u00e9\"", "as one word"),
            ("kevent_thermal.x = 1.5", "found a float"),
            ("kevent_thermal.x = [1]", "found a array"),
        ] {
            let e = err(&format!("description = \"x\"\n[params]\n{line}\n{ONE_STEP}"));
            assert_eq!(e.at.line, 3, "{line}: {e}");
            assert!(e.message.contains(expected), "{line}: {e}");
        }
    }

    #[test]
    fn parameters_are_checked_against_the_modules_with_a_suggestion() {
        let known: BTreeMap<String, BTreeSet<String>> = [
            ("kmessage".to_owned(), BTreeSet::from(["unit".to_owned()])),
            ("kevent_thermal".to_owned(), BTreeSet::from(["rate_limit_ms".to_owned(), "tjmax".to_owned()])),
        ]
        .into();
        let check = |line: &str| {
            parse_str(&format!("description = \"x\"\n[params]\n{line}\n{ONE_STEP}")).unwrap().check_params(&known)
        };
        check("kevent_thermal.rate_limit_ms = 0").unwrap();
        check("kevent-thermal.tjmax = 90").unwrap();
        // The kernel reads - and _ alike in parameter names too.
        check("kevent_thermal.rate-limit-ms = 0").unwrap();
        let e = check("kevent_thermal.rate_limt_ms = 0").unwrap_err();
        assert_eq!((e.at.line, e.at.column), (3, 16), "{e}");
        assert!(e.message.contains("no parameter \"rate_limt_ms\", did you mean \"rate_limit_ms\"?"), "{e}");
        let e = check("kevent_thermel.rate_limit_ms = 0").unwrap_err();
        assert!(e.message.contains("no module \"kevent_thermel\" is loaded, did you mean \"kevent_thermal\"?"), "{e}");
        let e = check("kevent_thermal.zzz = 0").unwrap_err();
        assert!(e.message.ends_with("no parameter \"zzz\"; its parameters are rate_limit_ms, tjmax"), "{e}");
    }

    #[test]
    fn a_step_has_exactly_one_action() {
        let e = err("description = \"x\"\n[[step]]\nsleep_ms = 1\nread = \"/proc/uptime\"\n");
        assert!(e.message.contains("this one has 2"), "{e}");
        let e = err("description = \"x\"\n[[step]]\nrepeat = 2\n");
        assert!(e.message.contains("this one has 0"), "{e}");
        let e = err("description = \"x\"\n");
        assert!(e.message.contains("at least one step"), "{e}");
    }

    #[test]
    fn the_injector_is_the_device_unless_the_scenario_says_debugfs() {
        let s = parse_str(&format!("description = \"x\"\n{ONE_STEP}")).unwrap();
        assert_eq!(s.injector, Injector::Device);
        let s = parse_str(&format!("description = \"x\"\ninjector = \"debugfs\"\n{ONE_STEP}")).unwrap();
        assert_eq!(s.injector, Injector::Debugfs);
        let e = err(&format!("description = \"x\"\ninjector = \"msr\"\n{ONE_STEP}"));
        assert_eq!((e.at.line, e.at.column), (2, 12), "{e}");
        assert_eq!(e.message, "injector = \"msr\": expected \"device\" or \"debugfs\"");
        // The names the error offers are the names that parse.
        let offered: Vec<String> = Injector::ALL.iter().map(|i| format!("{:?}", i.name())).collect();
        assert_eq!(offered.join(" or "), Injector::NAMES);
    }

    #[test]
    fn the_clock_is_real_unless_the_scenario_asks_for_the_virtual_one() {
        let s = parse_str(&format!("description = \"x\"\n[machine]\nclock = \"virtual\"\n{ONE_STEP}")).unwrap();
        assert_eq!(s.machine.clock, Clock::Virtual);
        let e = err(&format!("description = \"x\"\n[machine]\nclock = \"wall\"\n{ONE_STEP}"));
        assert_eq!(e.message, "clock = \"wall\": expected \"real\" or \"virtual\"");
    }

    #[test]
    fn kdbusd_steps_stop_and_start_it_on_a_dbus_guest_only() {
        let s = parse_str(
            "description = \"x\"\n[machine]\ndbus = true\n[[step]]\nkdbusd = \"stop\"\n[[step]]\nkdbusd = \"start\"\n",
        )
        .unwrap();
        assert_eq!(s.steps[0].action, Action::Kdbusd { start: false });
        assert_eq!(s.steps[1].action.to_string(), "start kdbusd");
        let e = err("description = \"x\"\n[[step]]\nkdbusd = \"stop\"\n");
        assert_eq!(
            (e.at.line, e.message.as_str()),
            (3, "kdbusd: the guest has no D-Bus side (add `dbus = true` under [machine])")
        );
        let e = err("description = \"x\"\n[machine]\ndbus = true\n[[step]]\nkdbusd = \"restart\"\n");
        assert_eq!(e.message, "kdbusd = \"restart\": expected \"stop\" or \"start\"");
    }

    #[test]
    fn the_dbus_side_is_off_unless_the_scenario_asks_and_takes_only_a_boolean() {
        assert!(!parse_str(&format!("description = \"x\"\n{ONE_STEP}")).unwrap().machine.dbus);
        let s = parse_str(&format!("description = \"x\"\n[machine]\ndbus = true\n{ONE_STEP}")).unwrap();
        assert!(s.machine.dbus);
        let e = err(&format!("description = \"x\"\n[machine]\ndbus = 1\n{ONE_STEP}"));
        assert_eq!((e.at.line, e.message.as_str()), (3, "invalid type: integer `1`, expected a boolean"));
    }

    #[test]
    fn device_timed_steps_inject_through_the_device_within_bounds() {
        let s = parse_str(
            "description = \"x\"\n[[step]]\ninject = { cpu = 0, bits = [\"prochot\"] }\nrepeat = 50\ninterval_us = 250\n",
        )
        .unwrap();
        assert_eq!(s.steps[0].device_interval, Some(Duration::from_micros(250)));
        assert_eq!(s.steps[0].repeat, 50);
        let e = err("description = \"x\"\n[[step]]\nsleep_ms = 1\ninterval_us = 0\n");
        assert!(e.message.contains("this step does not inject"), "{e}");
        assert_eq!(e.at.line, 4);
        let e = err("description = \"x\"\n[[step]]\ninject = { cpu = 0 }\nrepeat = 100\ninterval_us = 500000\n");
        assert_eq!(e.message, "interval_us = 500000 with repeat = 100 spans 49500 ms: at most 30 s");
        let e = err("description = \"x\"\n[[step]]\ninject = { cpu = 0 }\nrepeat = 2000\ninterval_us = 0\n");
        assert!(e.message.contains("at most 1024 injections of one step"), "{e}");
        let e = err("description = \"x\"\ninjector = \"debugfs\"\n[[step]]\ninject = { cpu = 0 }\ninterval_us = 0\n");
        assert!(e.message.contains("injector = \"debugfs\""), "{e}");
        // A command-line choice of debugfs contradicts a device-timed file.
        let mut s = s;
        s.check_injector().unwrap();
        s.injector = Injector::Debugfs;
        let e = s.check_injector().unwrap_err();
        assert_eq!(e.at.line, 2);
        assert!(e.message.contains("needs the device injector, not debugfs"), "{e}");
    }

    #[test]
    fn a_command_line_cpu_count_is_refused_at_the_step_it_would_break() {
        let mut s = parse_str("description = \"x\"\n[[step]]\ninject = { cpu = 1 }\n").unwrap();
        let e = s.set_cpus(1).unwrap_err();
        assert_eq!(e, "scenarios/t.toml:2:1: this step injects at CPU 1, which a 1-CPU machine does not have");
        assert_eq!(s.machine.cpus(), 2, "unchanged after a refusal");
        s.set_cpus(4).unwrap();
        assert_eq!(s.machine.cpus(), 4);
        assert!(s.set_cpus(9).unwrap_err().contains("1 to 8"));
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("rate_limt_ms", "rate_limit_ms"), 1);
        assert_eq!(edit_distance("kevent_thermel", "kevent_thermal"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("tjmax", "unit"), 5);
    }

    #[test]
    fn the_starter_scenarios_parse() {
        let starters = files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")).unwrap();
        for path in &starters {
            load(path).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(starters.len() >= 11, "{} starter scenarios", starters.len());
    }

    #[test]
    fn packages_and_cores_make_the_machine_and_agree_with_cpus() {
        let s = parse_str(&format!("description = \"x\"\n[machine]\npackages = 2\ncores = 2\n{ONE_STEP}")).unwrap();
        assert_eq!(s.machine.topology, Topology::new(2, 2).unwrap());
        assert_eq!(s.machine.to_string(), "4 CPUs in 2 packages × 2 cores, 256 MiB, real clock");
        let s = parse_str(&format!("description = \"x\"\n[machine]\ncores = 3\n{ONE_STEP}")).unwrap();
        assert_eq!(s.machine.topology, Topology::new(1, 3).unwrap(), "packages default to 1");
        let s = parse_str(&format!("description = \"x\"\n[machine]\ncpus = 4\npackages = 2\ncores = 2\n{ONE_STEP}"));
        assert_eq!(s.unwrap().machine.cpus(), 4, "all three, agreeing");
        let e = err(&format!("description = \"x\"\n[machine]\ncpus = 3\npackages = 2\ncores = 2\n{ONE_STEP}"));
        assert_eq!((e.at.line, e.at.column), (3, 8), "{e}");
        assert!(e.message.contains("cpus = 3, but 2 packages × 2 cores are 4 CPUs: give one or the other"), "{e}");
        let e = err(&format!("description = \"x\"\n[machine]\npackages = 3\ncores = 3\n{ONE_STEP}"));
        assert_eq!(e.at.line, 3, "{e}");
        assert!(e.message.contains("would be more than the 8 CPUs"), "{e}");
        let e = err(&format!("description = \"x\"\n[machine]\npackages = 0\n{ONE_STEP}"));
        assert_eq!(e.at.line, 3, "{e}");
        let e = err("description = \"x\"\n[machine]\npackages = 2\ncores = 2\n[[step]]\ninject = { cpu = 4 }\n");
        assert!(e.message.contains("the machine has CPUs 0 to 3"), "{e}");
    }

    #[test]
    fn a_timed_package_injection_is_refused_where_packages_share_cores() {
        let timed =
            "[[step]]\ninject = { cpu = 1, package = true, bits = [\"prochot\"] }\nrepeat = 3\ninterval_us = 10\n";
        let e = err(&format!("description = \"x\"\n[machine]\npackages = 2\ncores = 2\n{timed}"));
        assert_eq!(e.at.line, 8, "{e}");
        assert!(e.message.contains("the device times the entries of one CPU"), "{e}");
        let mut s = parse_str(&format!("description = \"x\"\n{timed}")).unwrap();
        let e = s.set_topology(Topology::new(1, 2).unwrap()).unwrap_err();
        assert!(e.contains("scenarios/t.toml:2:1: interval_us: a package injection interrupts every core"), "{e}");
        assert_eq!(s.machine.topology, Topology::flat(2), "unchanged after a refusal");
    }

    const TRACE_2X2: &str = "# kevent-bench thermal trace 1\n# cpu 0 package 0 core 0\n# cpu 1 package 0 core 1\n\
                             # cpu 2 package 1 core 0\n# cpu 3 package 1 core 1\n# tjmax 100\n\
                             time_us,cpu,package,register,value\n0,0,0,0x19c,0x80320000\n100,2,1,0x1b1,0x50001\n";

    /// A scenario file and a trace beside it, in a fresh directory.
    fn with_trace(scenario: &str, trace: &str) -> (tempfile::TempDir, Result<Scenario, ScenarioError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("traces")).unwrap();
        std::fs::write(dir.path().join("traces/t.csv"), trace).unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, scenario).unwrap();
        let loaded = load(&path);
        (dir, loaded)
    }

    #[test]
    fn a_replay_step_reads_its_trace_beside_the_scenario_and_checks_its_machine() {
        let machine = "description = \"x\"\n[machine]\npackages = 2\ncores = 2\n";
        let (_dir, s) = with_trace(&format!("{machine}[[step]]\nreplay = \"traces/t.csv\"\nspeed = 2.5\n"), TRACE_2X2);
        let s = s.unwrap();
        let Action::Replay { path, trace, speed } = &s.steps[0].action else { panic!("{:?}", s.steps[0]) };
        assert_eq!((path.as_str(), *speed), ("traces/t.csv", SpeedMilli(2500)));
        assert_eq!(s.traces[trace].injections().len(), 1, "the reset image is not injected");
        assert_eq!(s.steps[0].action.to_string(), "replay traces/t.csv at speed 2.5");

        // The trace's machine must be the scenario's.
        let (_dir, e) = with_trace("description = \"x\"\n[[step]]\nreplay = \"traces/t.csv\"\n", TRACE_2X2);
        let e = e.unwrap_err();
        assert_eq!(e.at.line, 2, "{e}");
        assert!(e.message.contains("was recorded on 2 packages × 2 cores; the scenario's machine is 2 packages × 1 core (set [machine] packages = 2 and cores = 2)"), "{e}");
        // And its TjMax the module's.
        let tjmax = format!("{machine}[params]\nkevent_thermal.tjmax = 90\n[[step]]\nreplay = \"traces/t.csv\"\n");
        let (_dir, e) = with_trace(&tjmax, TRACE_2X2);
        assert!(e.unwrap_err().message.contains("recorded with TjMax 100 °C and the module has 90 °C"));
        // A bad row is refused with the trace's own file and line.
        let bad = TRACE_2X2.replace("100,2,1,0x1b1,0x50001", "100,2,1,0x1b1,0x80050001");
        let (dir, e) = with_trace(&format!("{machine}[[step]]\nreplay = \"traces/t.csv\"\n"), &bad);
        let e = e.unwrap_err().to_string();
        let expected = format!("s.toml:5:1: replay: {}:9: 0x1b1", dir.path().join("traces/t.csv").display());
        assert!(e.contains(&expected), "{e}\nexpected {expected}");
        // A missing trace is named.
        let (_dir, e) = with_trace(&format!("{machine}[[step]]\nreplay = \"traces/none.csv\"\n"), TRACE_2X2);
        assert!(e.unwrap_err().message.contains("cannot read the trace"));
        // Once loaded, the machine cannot be changed under the trace.
        let (_dir, s) = with_trace(&format!("{machine}[[step]]\nreplay = \"traces/t.csv\"\n"), TRACE_2X2);
        let mut s = s.unwrap();
        assert!(s.set_cpus(4).unwrap_err().contains("this step replays a trace recorded on 2 packages × 2 cores"));
    }

    #[test]
    fn a_replay_step_takes_speed_and_nothing_that_repeats_it() {
        let e = err("description = \"x\"\n[[step]]\nreplay = \"t.csv\"\nspeed = 0\n");
        assert!(e.message.contains("speed = 0: expected 0.01 to 1000"), "{e}");
        let e = err("description = \"x\"\n[[step]]\nreplay = \"t.csv\"\nrepeat = 2\n");
        assert!(e.message.contains("a replay step plays its trace once"), "{e}");
        let e = err("description = \"x\"\n[[step]]\nsleep_ms = 1\nspeed = 2\n");
        assert!(e.message.contains("speed paces a replay"), "{e}");
        let e = err("description = \"x\"\n[[step]]\nsleep_ms = 1\nreplay = \"t.csv\"\n");
        assert!(e.message.contains("exactly one of inject, sleep_ms, read, write, exec, replay"), "{e}");
    }
}
