//! Scenarios: `scenarios/*.toml`, parsed strictly.
//!
//! Every error names the file, line and column and what was expected;
//! unknown keys are errors, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// IA32_THERM_STATUS / IA32_PACKAGE_THERM_STATUS bits by name (Intel SDM);
/// each status bit's log bit is the next one up.
pub const BITS: &[(&str, u32)] = &[
    ("prochot", 0),
    ("prochot_log", 1),
    ("external_prochot", 2),
    ("external_prochot_log", 3),
    ("critical", 4),
    ("critical_log", 5),
    ("threshold1", 6),
    ("threshold1_log", 7),
    ("threshold2", 8),
    ("threshold2_log", 9),
    ("power_limit", 10),
    ("power_limit_log", 11),
];
/// Digital readout, degrees below TjMax, bits 22:16.
pub const READOUT_SHIFT: u32 = 16;
pub const READOUT_MAX: u64 = 0x7f;
/// Reading valid (core register only; reserved in the package register).
pub const VALID: u64 = 1 << 31;
pub const DEFAULT_TJMAX: u32 = 100;
/// Host-timed steps: the longest interval, and the longest step, which
/// stays inside the host's bound on a step.
pub const MAX_INTERVAL_US: u64 = 1_000_000;
pub const MAX_HOST_TIMED_US: u64 = 30_000_000;

/// How injections reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Injector {
    /// The host's emulated sensor raises the CPU's MSI-X vector.
    #[default]
    Device,
    /// The guest agent writes the module's debugfs trigger.
    Debugfs,
}

impl Injector {
    pub const ALL: [Injector; 2] = [Injector::Device, Injector::Debugfs];
    pub const NAMES: &'static str = "\"device\" or \"debugfs\"";

    pub fn name(self) -> &'static str {
        match self {
            Injector::Device => "device",
            Injector::Debugfs => "debugfs",
        }
    }

    pub fn from_name(name: &str) -> Option<Injector> {
        Injector::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl fmt::Display for Injector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The scenario's injector; a command-line choice replaces it.
    pub injector: Injector,
    /// Module parameters: module → (parameter → value), as given.
    pub params: BTreeMap<String, BTreeMap<String, String>>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    /// How many times to do it; events of a repeated step are counted.
    pub repeat: u32,
    /// Injections fired by the host's clock at this interval (zero: back
    /// to back), without waiting for the guest between them.
    pub host_timed: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Inject { cpu: u32, package: bool, value: u64, label: String },
    Sleep { ms: u64 },
    Read { path: String },
    Write { path: String, value: String },
    Exec { program: String, args: Vec<String>, background: bool },
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
        }
    }
}

/// A scenario file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.path.display(), self.line, self.column, self.message)
    }
}

impl std::error::Error for ScenarioError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: String,
    injector: Option<Spanned<String>>,
    #[serde(default)]
    machine: RawMachine,
    #[serde(default)]
    params: BTreeMap<String, BTreeMap<String, Spanned<toml::Value>>>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    cpus: Option<Spanned<u32>>,
    memory_mib: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    inject: Option<RawInject>,
    sleep_ms: Option<u64>,
    read: Option<String>,
    write: Option<RawWrite>,
    exec: Option<RawExec>,
    repeat: Option<Spanned<u32>>,
    interval_us: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    cpu: Spanned<u32>,
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

pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        path: path.to_owned(),
        line: 1,
        column: 1,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let error = |span: Range<usize>, message: String| {
        let (line, column) = position(text, span.start);
        ScenarioError { path: path.to_owned(), line, column, message }
    };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        error(span, e.message().trim_end().to_owned())
    })?;

    let cpus = raw.machine.cpus.map_or(Ok(2), |c| {
        let span = c.span();
        let cpus = c.into_inner();
        if (1..=8).contains(&cpus) {
            Ok(cpus)
        } else {
            Err(error(span, format!("cpus = {cpus}: expected 1 to 8 (the bench kernel's NR_CPUS)")))
        }
    })?;
    let memory_mib = raw.machine.memory_mib.map_or(Ok(256), |m| {
        let span = m.span();
        let mib = m.into_inner();
        if mib >= 64 {
            Ok(mib)
        } else {
            Err(error(span, format!("memory_mib = {mib}: expected at least 64")))
        }
    })?;

    let mut params = BTreeMap::new();
    let mut tjmax = DEFAULT_TJMAX;
    for (module, values) in raw.params {
        let mut converted = BTreeMap::new();
        for (key, value) in values {
            let span = value.span();
            let text = match value.into_inner() {
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => if b { "1" } else { "0" }.to_owned(),
                toml::Value::String(s) if !s.contains(char::is_whitespace) => s,
                other => {
                    return Err(error(
                        span,
                        format!("params.{module}.{key}: expected an integer, a boolean or a string without spaces, found {other}"),
                    ))
                }
            };
            // Temperatures become readouts through TjMax: a TjMax the module
            // would refuse must not silently turn into the default.
            if module == "kevent_thermal" && key == "tjmax" {
                tjmax = text.parse().ok().filter(|t| (1..=255).contains(t)).ok_or_else(|| {
                    error(span, format!("params.kevent_thermal.tjmax = {text}: expected 1 to 255 (°C)"))
                })?;
            }
            converted.insert(key, text);
        }
        params.insert(module, converted);
    }

    let injector = match raw.injector {
        None => Injector::default(),
        Some(name) => {
            let span = name.span();
            let name = name.into_inner();
            Injector::from_name(&name)
                .ok_or_else(|| error(span, format!("injector = {name:?}: expected {}", Injector::NAMES)))?
        }
    };

    if raw.step.is_empty() {
        return Err(error(0..0, "no [[step]]: a scenario needs at least one step".into()));
    }
    let mut steps = Vec::new();
    for step in raw.step {
        let span = step.span();
        let step = step.into_inner();
        let repeat = match step.repeat {
            Some(r) if *r.get_ref() == 0 => return Err(error(r.span(), "repeat = 0: expected at least 1".into())),
            Some(r) => r.into_inner(),
            None => 1,
        };
        let mut actions = Vec::new();
        if let Some(inject) = step.inject {
            actions.push(inject_action(inject, cpus, tjmax, &error)?);
        }
        if let Some(ms) = step.sleep_ms {
            actions.push(Action::Sleep { ms });
        }
        if let Some(path) = step.read {
            actions.push(Action::Read { path });
        }
        if let Some(w) = step.write {
            actions.push(Action::Write { path: w.path, value: w.value });
        }
        if let Some(e) = step.exec {
            actions.push(Action::Exec { program: e.program, args: e.args, background: e.background });
        }
        if actions.len() != 1 {
            return Err(error(
                span,
                format!(
                    "a step has exactly one of inject, sleep_ms, read, write, exec; this one has {}",
                    actions.len()
                ),
            ));
        }
        let action = actions.remove(0);
        let host_timed = match step.interval_us {
            None => None,
            Some(interval) => {
                let span = interval.span();
                if !matches!(action, Action::Inject { .. }) {
                    return Err(error(span, "interval_us times injections: this step does not inject".into()));
                }
                let interval_us = *interval.get_ref();
                if interval_us > MAX_INTERVAL_US || interval_us.saturating_mul(u64::from(repeat)) > MAX_HOST_TIMED_US {
                    return Err(error(
                        span,
                        format!(
                            "interval_us = {interval_us} with repeat = {repeat}: at most {MAX_INTERVAL_US} µs apart and \
                             {} s in all",
                            MAX_HOST_TIMED_US / 1_000_000
                        ),
                    ));
                }
                if injector != Injector::Device {
                    return Err(error(
                        span,
                        "interval_us: host-timed injections come from the emulated sensor; this scenario has injector = \"debugfs\"".into(),
                    ));
                }
                Some(std::time::Duration::from_micros(interval.into_inner()))
            }
        };
        steps.push(Step { action, repeat, host_timed });
    }
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Scenario {
        name,
        path: path.to_owned(),
        description: raw.description,
        cpus,
        memory_mib,
        injector,
        params,
        steps,
    })
}

fn inject_action(
    inject: RawInject,
    cpus: u32,
    tjmax: u32,
    error: &impl Fn(Range<usize>, String) -> ScenarioError,
) -> Result<Action, ScenarioError> {
    let cpu_span = inject.cpu.span();
    let cpu = inject.cpu.into_inner();
    if cpu >= cpus {
        return Err(error(cpu_span, format!("cpu = {cpu}: the machine has CPUs 0 to {}", cpus - 1)));
    }
    if let Some(raw) = inject.raw {
        let span = raw.span();
        if !inject.bits.is_empty() || inject.temperature.is_some() {
            return Err(error(span, "raw replaces bits and temperature: give one or the other".into()));
        }
        let text = raw.into_inner();
        let value = u64::from_str_radix(text.trim_start_matches("0x").trim_start_matches("0X"), 16)
            .map_err(|_| error(span, format!("raw = {text:?}: expected a hexadecimal register image")))?;
        return Ok(Action::Inject { cpu, package: inject.package, value, label: format!("raw {text}") });
    }
    let mut value = 0u64;
    let mut names = Vec::new();
    for bit in inject.bits {
        let span = bit.span();
        let name = bit.into_inner();
        let Some(&(_, n)) = BITS.iter().find(|(known, _)| *known == name) else {
            let known: Vec<&str> = BITS.iter().map(|(k, _)| *k).collect();
            return Err(error(span, format!("unknown bit {name:?}: expected one of {}", known.join(", "))));
        };
        value |= 1 << n;
        names.push(name);
    }
    let temperature = match inject.temperature {
        Some(t) => {
            let span = t.span();
            let celsius = t.into_inner();
            let below = i64::from(tjmax) - celsius;
            if !(0..=READOUT_MAX as i64).contains(&below) {
                return Err(error(
                    span,
                    format!(
                        "temperature = {celsius}: the readout holds 0 to {READOUT_MAX} degrees below TjMax ({tjmax} °C), so {} to {tjmax}",
                        i64::from(tjmax) - READOUT_MAX as i64
                    ),
                ));
            }
            Some((celsius, below as u64))
        }
        None => None,
    };
    // With no temperature given, the reading is the reset one: 50 below TjMax.
    let (celsius, below) = temperature.unwrap_or((i64::from(tjmax) - 50, 50));
    value |= below << READOUT_SHIFT;
    if !inject.package {
        value |= VALID;
    }
    let bits = if names.is_empty() { "no status".to_owned() } else { names.join(" ") };
    Ok(Action::Inject { cpu, package: inject.package, value, label: format!("{bits}, {celsius} °C") })
}

impl Scenario {
    /// Host-timed steps need the device injector; a command-line choice of
    /// debugfs can contradict the file.
    pub fn check_injector(&self) -> Result<(), String> {
        match self.host_timed_step() {
            Some(index) if self.injector != Injector::Device => Err(format!(
                "{}: step {} is host-timed (interval_us), which needs the device injector, not {}",
                self.path.display(),
                index + 1,
                self.injector
            )),
            _ => Ok(()),
        }
    }

    /// The index of the first host-timed step, if any.
    pub fn host_timed_step(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.host_timed.is_some())
    }

    /// The bench guest with this scenario's machine and module parameters.
    pub fn guest(&self, artifacts: &crate::Artifacts) -> crate::GuestSpec {
        artifacts.guest(self.cpus, self.memory_mib, kernel_args(self))
    }
}

/// The kernel command-line words that give the modules their parameters.
pub fn kernel_args(scenario: &Scenario) -> Vec<String> {
    scenario
        .params
        .iter()
        .flat_map(|(module, values)| values.iter().map(move |(k, v)| kevent_wire::module_param_arg(module, k, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("scenarios/t.toml"), text)
    }

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
        assert_eq!(s.cpus, 4);
        assert_eq!(kernel_args(&s), ["kevent_bench.param=kevent_thermal.rate_limit_ms=0"]);
        // 95 °C is 5 below TjMax 100; the core register has the valid bit.
        assert_eq!(
            s.steps[0].action,
            Action::Inject { cpu: 1, package: false, value: 0x8005_0003, label: "prochot prochot_log, 95 °C".into() }
        );
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
        let err = parse_str("description = \"x\"\n[[step]]\ninject = { cpu = 1, bits = [\"prochot\", \"hot\"] }\n")
            .unwrap_err();
        // `"hot"` starts after `inject = { cpu = 1, bits = ["prochot", ` (39 characters).
        assert_eq!((err.line, err.column), (3, 40), "{err}");
        assert!(err.to_string().starts_with("scenarios/t.toml:3:40: unknown bit \"hot\": expected one of prochot,"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse_str("description = \"x\"\n[[step]]\nsleep_ms = 1\nrepet = 2\n").unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("unknown field `repet`"), "{err}");
        let err = parse_str("descripton = \"x\"\n").unwrap_err();
        assert!(err.message.contains("unknown field `descripton`"), "{err}");
    }

    #[test]
    fn malformed_toml_is_located() {
        let err = parse_str("description = \"x\"\n[[step]\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range() {
        let err = parse_str("description = \"x\"\n[[step]]\ninject = { cpu = 2 }\n").unwrap_err();
        assert_eq!(err.message, "cpu = 2: the machine has CPUs 0 to 1");
        assert_eq!((err.line, err.column), (3, 18));
        let err = parse_str("description = \"x\"\n[[step]]\ninject = { cpu = 0, temperature = 101 }\n").unwrap_err();
        assert!(err.message.contains("so -27 to 100"), "{err}");
        let err = parse_str("description = \"x\"\n[machine]\ncpus = 9\n[[step]]\nsleep_ms = 1\n").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn tjmax_sets_the_readout_scale_and_a_bad_one_is_refused() {
        let s = parse_str(
            "description = \"x\"\n[params]\nkevent_thermal.tjmax = 90\n[[step]]\ninject = { cpu = 0, temperature = 85 }\n",
        )
        .unwrap();
        // 85 °C is 5 below a TjMax of 90.
        assert!(matches!(s.steps[0].action, Action::Inject { value, .. } if value == VALID | (5 << READOUT_SHIFT)));
        for bad in ["\"hot\"", "0", "256", "-3"] {
            let text = format!("description = \"x\"\n[params]\nkevent_thermal.tjmax = {bad}\n[[step]]\nsleep_ms = 1\n");
            let err = parse_str(&text).unwrap_err();
            assert_eq!((err.line, err.column), (3, 24), "{bad}: {err}");
            assert!(err.message.contains("expected 1 to 255"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_step_has_exactly_one_action() {
        let err = parse_str("description = \"x\"\n[[step]]\nsleep_ms = 1\nread = \"/proc/uptime\"\n").unwrap_err();
        assert!(err.message.contains("this one has 2"), "{err}");
        let err = parse_str("description = \"x\"\n[[step]]\nrepeat = 2\n").unwrap_err();
        assert!(err.message.contains("this one has 0"), "{err}");
        let err = parse_str("description = \"x\"\n").unwrap_err();
        assert!(err.message.contains("at least one step"), "{err}");
    }

    #[test]
    fn the_injector_is_the_device_unless_the_scenario_says_debugfs() {
        let s = parse_str("description = \"x\"\n[[step]]\nsleep_ms = 1\n").unwrap();
        assert_eq!(s.injector, Injector::Device);
        let s = parse_str("description = \"x\"\ninjector = \"debugfs\"\n[[step]]\nsleep_ms = 1\n").unwrap();
        assert_eq!(s.injector, Injector::Debugfs);
        let err = parse_str("description = \"x\"\ninjector = \"msr\"\n[[step]]\nsleep_ms = 1\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 12), "{err}");
        assert_eq!(err.message, "injector = \"msr\": expected \"device\" or \"debugfs\"");
        // The names the error offers are the names that parse.
        let offered: Vec<String> = Injector::ALL.iter().map(|i| format!("{:?}", i.name())).collect();
        assert_eq!(offered.join(" or "), Injector::NAMES);
    }

    #[test]
    fn host_timed_steps_inject_through_the_device() {
        let s = parse_str(
            "description = \"x\"\n[[step]]\ninject = { cpu = 0, bits = [\"prochot\"] }\nrepeat = 50\ninterval_us = 250\n",
        )
        .unwrap();
        assert_eq!(s.steps[0].host_timed, Some(std::time::Duration::from_micros(250)));
        assert_eq!(s.steps[0].repeat, 50);
        let err = parse_str("description = \"x\"\n[[step]]\nsleep_ms = 1\ninterval_us = 0\n").unwrap_err();
        assert!(err.message.contains("this step does not inject"), "{err}");
        assert_eq!(err.line, 4);
        let err =
            parse_str("description = \"x\"\n[[step]]\ninject = { cpu = 0 }\nrepeat = 100\ninterval_us = 500000\n")
                .unwrap_err();
        assert_eq!(err.message, "interval_us = 500000 with repeat = 100: at most 1000000 µs apart and 30 s in all");
        let err =
            parse_str("description = \"x\"\ninjector = \"debugfs\"\n[[step]]\ninject = { cpu = 0 }\ninterval_us = 0\n")
                .unwrap_err();
        assert!(err.message.contains("injector = \"debugfs\""), "{err}");
        // A command-line choice of debugfs contradicts a host-timed file.
        let mut s = s;
        assert_eq!(s.check_injector(), Ok(()));
        s.injector = Injector::Debugfs;
        assert_eq!(
            s.check_injector().unwrap_err(),
            "scenarios/t.toml: step 1 is host-timed (interval_us), which needs the device injector, not debugfs"
        );
    }

    #[test]
    fn the_starter_scenarios_parse() {
        let starters = files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")).unwrap();
        for path in &starters {
            load(path).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(starters.len() >= 11, "{} starter scenarios", starters.len());
    }
}
