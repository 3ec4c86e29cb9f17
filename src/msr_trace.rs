//! Thermal traces: register values recorded on a real machine over time
//! (`cargo xtask record`), replayed into a guest of the same topology
//! (`run --replay`, or a scenario's `replay` step). The format is
//! docs/trace-format.md; [`parse`] refuses anything else with the line and
//! the reason, before anything boots.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sensor::Register;
use crate::thermal;
use crate::topology::Topology;

/// The first line of every trace.
pub const MAGIC_LINE: &str = "# kevent-bench thermal trace";
/// The format this code reads and writes; the first line ends with it.
pub const VERSION: u32 = 1;
/// The column header line.
pub const COLUMNS: &str = "time_us,cpu,package,register,value";
/// Rows of one trace: the run's length and the host's memory stay bounded.
pub const MAX_ROWS: usize = 100_000;
/// A trace's last row: one day.
pub const MAX_TIME_US: u64 = 86_400_000_000;
/// The longest a replay may take on the host, after `--speed`.
pub const MAX_REPLAY: Duration = Duration::from_secs(600);
/// `--speed`: how much faster than recorded a trace is replayed.
pub const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.01..=1000.0;

/// The two registers a trace records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Msr {
    /// IA32_THERM_STATUS, 0x19c, one per CPU.
    ThermStatus,
    /// IA32_PACKAGE_THERM_STATUS, 0x1b1, one per package.
    PackageThermStatus,
}

impl Msr {
    /// Both, in the order a sample reads them.
    pub const ALL: [Msr; 2] = [Msr::ThermStatus, Msr::PackageThermStatus];

    /// The MSR's address.
    pub fn address(self) -> u32 {
        match self {
            Msr::ThermStatus => 0x19c,
            Msr::PackageThermStatus => 0x1b1,
        }
    }

    /// The SDM's name.
    pub fn name(self) -> &'static str {
        Register::from(self).name()
    }

    /// The bits the bench's register model has (`crate::thermal`): every
    /// other bit is reserved to it.
    pub fn modelled_bits(self) -> u64 {
        match self {
            Msr::ThermStatus => thermal::CORE_MASK,
            Msr::PackageThermStatus => thermal::PACKAGE_MASK,
        }
    }

    /// The image of a register nobody has changed, as the guest's module
    /// starts with it.
    pub fn reset_image(self) -> u64 {
        let readout = thermal::RESET_READOUT << thermal::READOUT_SHIFT;
        match self {
            Msr::ThermStatus => thermal::VALID | readout,
            Msr::PackageThermStatus => readout,
        }
    }

    fn from_address(text: &str) -> Option<Msr> {
        let address = u32::try_from(hex(text)?).ok()?;
        Msr::ALL.into_iter().find(|m| m.address() == address)
    }
}

impl From<Msr> for Register {
    /// The register of the emulated sensor that a recorded MSR is.
    fn from(msr: Msr) -> Register {
        match msr {
            Msr::ThermStatus => Register::Core,
            Msr::PackageThermStatus => Register::Package,
        }
    }
}

impl fmt::Display for Msr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} ({})", self.address(), self.name())
    }
}

/// One CPU of the recorded machine, as its sysfs topology said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCpu {
    /// The CPU's number on the recorded machine.
    pub cpu: u32,
    /// `physical_package_id`.
    pub package: u32,
    /// `core_id`, as the machine numbers its cores (often not 0..n).
    pub core: u32,
}

/// One recorded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Microseconds since the recording began.
    pub time_us: u64,
    /// The CPU whose MSR was read (for the package register, a CPU of the
    /// package).
    pub cpu: u32,
    /// `physical_package_id` of the CPU.
    pub package: u32,
    /// Which register.
    pub msr: Msr,
    /// The register's value, restricted to [`Msr::modelled_bits`].
    pub value: u64,
    /// Line in the trace file (1-based), for errors about it.
    pub line: usize,
}

/// A trace, checked: its machine is one the guest can have and every row
/// is a value the bench's hardware model can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The file it was read from.
    pub path: PathBuf,
    /// The recorded CPUs, in the order the trace lists them.
    pub cpus: Vec<TraceCpu>,
    /// The recorded machine's topology, which the guest will have.
    pub topology: Topology,
    /// The guest CPU of each recorded one (by recorded number): packages
    /// in the order of their ids, a package's CPUs in the order of their
    /// core ids (then numbers), as the guest numbers them package by
    /// package. The identity on a machine numbered that way.
    pub guest_cpus: BTreeMap<u32, u32>,
    /// IA32_TEMPERATURE_TARGET's TjMax on the recorded machine, if known.
    pub tjmax: Option<u32>,
    /// Every row, in the file's order (times never decrease).
    pub rows: Vec<Row>,
}

/// A trace that cannot be replayed: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct TraceError {
    /// The trace file.
    pub path: PathBuf,
    /// 1-based line the error is about.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// The trace in the file at `path`.
pub fn load(path: &Path) -> Result<Trace, TraceError> {
    let bytes = std::fs::read(path).map_err(|e| TraceError {
        path: path.to_owned(),
        line: 1,
        message: format!("cannot read the trace: {e}"),
    })?;
    parse_bytes(path, &bytes)
}

/// The trace in `bytes`, the contents of `path`.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Trace, TraceError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(path, text),
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
            Err(TraceError { path: path.to_owned(), line, message: "not UTF-8 text: a trace is CSV".into() })
        }
    }
}

struct Lines<'a> {
    path: &'a Path,
}

impl Lines<'_> {
    fn error(&self, line: usize, message: impl Into<String>) -> TraceError {
        TraceError { path: self.path.to_owned(), line, message: message.into() }
    }
}

/// A hexadecimal number with its `0x`.
fn hex(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// A decimal number as the trace writes it: digits only.
fn decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `# cpu N package P core C`
fn cpu_line(words: &[&str]) -> Option<TraceCpu> {
    match words {
        ["cpu", cpu, "package", package, "core", core] => {
            Some(TraceCpu { cpu: decimal(cpu)?, package: decimal(package)?, core: decimal(core)? })
        }
        _ => None,
    }
}

/// The trace in `text`, the contents of `path`: checked whole, or refused at the first wrong line.
pub fn parse(path: &Path, text: &str) -> Result<Trace, TraceError> {
    let lines = Lines { path };
    if !text.is_empty() && !text.ends_with('\n') {
        let line = text.matches('\n').count() + 1;
        return Err(
            lines.error(line, "the last line has no newline: the trace was cut off (a recording that did not finish?)")
        );
    }
    let mut numbered = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let expected_first = format!("{MAGIC_LINE} {VERSION}");
    match numbered.next() {
        Some((_, first)) if first == expected_first => {}
        Some((_, first)) if first.starts_with(MAGIC_LINE) => {
            return Err(
                lines.error(1, format!("{first:?}: this bench reads version {VERSION} traces (docs/trace-format.md)"))
            )
        }
        _ => {
            return Err(lines.error(1, format!("not a thermal trace: the first line must be {expected_first:?}")));
        }
    }

    let mut cpus: Vec<(TraceCpu, usize)> = Vec::new();
    let mut tjmax = None;
    let mut columns_at = None;
    let mut rows = Vec::new();
    for (n, line) in numbered {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.first() {
                Some(&"cpu") if columns_at.is_none() => {
                    let cpu = cpu_line(&words)
                        .ok_or_else(|| lines.error(n, format!("{line:?}: expected \"# cpu N package P core C\"")))?;
                    if let Some((_, first)) = cpus.iter().find(|(c, _)| c.cpu == cpu.cpu) {
                        return Err(
                            lines.error(n, format!("CPU {} is described twice (first on line {first})", cpu.cpu))
                        );
                    }
                    cpus.push((cpu, n));
                }
                Some(&"tjmax") if columns_at.is_none() => {
                    let value = match words.as_slice() {
                        ["tjmax", t] => decimal::<u32>(t).filter(|t| thermal::TJMAX_RANGE.contains(t)),
                        _ => None,
                    };
                    tjmax = Some(value.ok_or_else(|| {
                        lines.error(n, format!("{line:?}: expected \"# tjmax T\", T in °C from 1 to 255"))
                    })?);
                }
                Some(&("cpu" | "tjmax")) => {
                    return Err(lines.error(n, "the machine is described before the column header, not among the rows"))
                }
                // Anything else after a `#` is a comment.
                _ => {}
            }
            continue;
        }
        if columns_at.is_none() {
            if line != COLUMNS {
                return Err(lines.error(n, format!("expected the column header {COLUMNS:?}, found {line:?}")));
            }
            columns_at = Some(n);
            continue;
        }
        rows.push(parse_row(&lines, n, line)?);
        if rows.len() > MAX_ROWS {
            return Err(lines.error(n, format!("more than {MAX_ROWS} rows: record a shorter episode")));
        }
    }
    let Some(columns_at) = columns_at else {
        return Err(lines.error(text.lines().count().max(1), format!("no column header {COLUMNS:?}: no rows")));
    };
    let (topology, guest_cpus) = topology_of(&lines, &cpus, columns_at)?;
    let cpus: Vec<TraceCpu> = cpus.into_iter().map(|(c, _)| c).collect();
    check_rows(&lines, &cpus, &rows)?;
    Ok(Trace { path: path.to_owned(), cpus, topology, guest_cpus, tjmax, rows })
}

fn parse_row(lines: &Lines<'_>, n: usize, line: &str) -> Result<Row, TraceError> {
    let fields: Vec<&str> = line.split(',').collect();
    let [time, cpu, package, register, value] = fields.as_slice() else {
        return Err(lines.error(n, format!("{} fields, expected 5: {COLUMNS}", fields.len())));
    };
    let time_us = decimal(time)
        .filter(|t| *t <= MAX_TIME_US)
        .ok_or_else(|| lines.error(n, format!("time_us {time:?}: expected microseconds, 0 to {MAX_TIME_US}")))?;
    let cpu = decimal(cpu).ok_or_else(|| lines.error(n, format!("cpu {cpu:?}: expected a CPU number")))?;
    let package =
        decimal(package).ok_or_else(|| lines.error(n, format!("package {package:?}: expected a package number")))?;
    let msr = Msr::from_address(register).ok_or_else(|| {
        lines.error(
            n,
            format!("unknown register {register:?}: a trace has {} and {}", Msr::ThermStatus, Msr::PackageThermStatus),
        )
    })?;
    let value = hex(value)
        .ok_or_else(|| lines.error(n, format!("value {value:?}: expected a hexadecimal register image (0x...)")))?;
    let reserved = value & !msr.modelled_bits();
    if reserved != 0 {
        return Err(lines.error(
            n,
            format!(
                "{msr} value {value:#x} sets bits {reserved:#x}, which the hardware model refuses (it has {:#x}): \
                 the same image injected would be refused",
                msr.modelled_bits()
            ),
        ));
    }
    Ok(Row { time_us, cpu, package, msr, value, line: n })
}

/// The guest's topology for the recorded CPUs and the guest CPU of each,
/// or why the guest cannot have them.
fn topology_of(
    lines: &Lines<'_>,
    cpus: &[(TraceCpu, usize)],
    columns_at: usize,
) -> Result<(Topology, BTreeMap<u32, u32>), TraceError> {
    if cpus.is_empty() {
        return Err(lines.error(columns_at, "no \"# cpu N package P core C\" line before the column header"));
    }
    let cpus: Vec<TraceCpu> = cpus.iter().map(|(c, _)| *c).collect();
    guest_topology(&cpus).map_err(|why| lines.error(columns_at, why))
}

/// The guest's topology for recorded `cpus` (at least one) and the guest
/// CPU of each, or why no guest can have them: what the reader of a trace
/// checks, and what a recording checks before it starts.
pub fn guest_topology(cpus: &[TraceCpu]) -> Result<(Topology, BTreeMap<u32, u32>), String> {
    let mut per_package: BTreeMap<u32, Vec<TraceCpu>> = BTreeMap::new();
    for c in cpus {
        per_package.entry(c.package).or_default().push(*c);
    }
    let packages = u32::try_from(per_package.len()).unwrap_or(u32::MAX);
    let Some((first, first_cpus)) = per_package.iter().next() else { return Err("no CPU".into()) };
    let cores = u32::try_from(first_cpus.len()).unwrap_or(u32::MAX);
    if let Some((package, its)) = per_package.iter().find(|(_, its)| its.len() != first_cpus.len()) {
        return Err(format!(
            "package {package} has {} CPU(s) and package {first} {cores}: the guest's packages all have the same \
             number of cores (record the same number of CPUs of each package: --cpus)",
            its.len()
        ));
    }
    let topology = Topology::new(packages, cores)
        .map_err(|why| format!("the recorded machine cannot be a guest: {why} (record fewer: --cpus)"))?;
    let mut guest_cpus = BTreeMap::new();
    for (rank, its) in per_package.values_mut().enumerate() {
        its.sort_by_key(|c| (c.core, c.cpu));
        for (index, c) in its.iter().enumerate() {
            guest_cpus.insert(c.cpu, rank as u32 * cores + index as u32);
        }
    }
    Ok((topology, guest_cpus))
}

fn check_rows(lines: &Lines<'_>, cpus: &[TraceCpu], rows: &[Row]) -> Result<(), TraceError> {
    let mut last_time = 0;
    for row in rows {
        let Some(cpu) = cpus.iter().find(|c| c.cpu == row.cpu) else {
            let described: Vec<u32> = cpus.iter().map(|c| c.cpu).collect();
            return Err(lines
                .error(row.line, format!("CPU {} is not one of the recorded machine's CPUs {described:?}", row.cpu)));
        };
        if cpu.package != row.package {
            return Err(lines.error(
                row.line,
                format!("CPU {} is in package {}, this row says package {}", row.cpu, cpu.package, row.package),
            ));
        }
        if row.time_us < last_time {
            return Err(
                lines.error(row.line, format!("time goes backwards: {} µs after a row at {last_time} µs", row.time_us))
            );
        }
        last_time = row.time_us;
    }
    Ok(())
}

/// One injection of a replay: a register whose value changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// When, from the replay's start, at speed 1.
    pub at: Duration,
    /// The guest CPU it is injected at (the package register: one of its
    /// package's), [`Trace::guest_cpus`] of the recorded one.
    pub cpu: u32,
    /// Which register.
    pub msr: Msr,
    /// Its new value.
    pub value: u64,
    /// The row it comes from.
    pub line: usize,
}

impl Trace {
    /// The injections a replay makes: each row whose value differs from
    /// the register's previous one (at first, the guest's reset image), in
    /// the trace's order.
    pub fn injections(&self) -> Vec<Injection> {
        let mut current: BTreeMap<(Msr, u32), u64> = BTreeMap::new();
        let mut out = Vec::new();
        for row in &self.rows {
            let key = match row.msr {
                Msr::ThermStatus => (row.msr, row.cpu),
                Msr::PackageThermStatus => (row.msr, row.package),
            };
            let previous = current.insert(key, row.value).unwrap_or(row.msr.reset_image());
            if previous != row.value {
                out.push(Injection {
                    at: Duration::from_micros(row.time_us),
                    cpu: self.guest_cpus[&row.cpu],
                    msr: row.msr,
                    value: row.value,
                    line: row.line,
                });
            }
        }
        out
    }

    /// Whether the guest numbers the recorded CPUs otherwise than the
    /// recorded machine did.
    pub fn renumbered(&self) -> bool {
        self.guest_cpus.iter().any(|(recorded, guest)| recorded != guest)
    }

    /// From the first row to the last.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.rows.last().map_or(0, |r| r.time_us))
    }

    /// Whether a replay at `speed` stays within [`MAX_REPLAY`], or why not.
    pub fn check_speed(&self, speed: f64) -> Result<(), String> {
        if !SPEED_RANGE.contains(&speed) {
            return Err(format!(
                "speed {speed}: expected {} to {} (times faster than recorded)",
                SPEED_RANGE.start(),
                SPEED_RANGE.end()
            ));
        }
        let scaled = self.duration().as_secs_f64() / speed;
        if scaled > MAX_REPLAY.as_secs_f64() {
            return Err(format!(
                "{}: {:.1} s recorded at speed {speed} is {scaled:.0} s of replay, at most {} s; replay it faster \
                 (--speed)",
                self.path.display(),
                self.duration().as_secs_f64(),
                MAX_REPLAY.as_secs()
            ));
        }
        Ok(())
    }
}

/// Writes a trace, a sample at a time: the header first, then rows. Every
/// line is written whole, so a recording cut short is still a trace up
/// to its last whole line.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Writes the header: the format line, the CPUs, TjMax if known, any
    /// `notes` as comments, the column header.
    pub fn new(mut out: W, cpus: &[TraceCpu], tjmax: Option<u32>, notes: &[String]) -> io::Result<Writer<W>> {
        writeln!(out, "{MAGIC_LINE} {VERSION}")?;
        for note in notes {
            writeln!(out, "# {note}")?;
        }
        for c in cpus {
            writeln!(out, "# cpu {} package {} core {}", c.cpu, c.package, c.core)?;
        }
        if let Some(t) = tjmax {
            writeln!(out, "# tjmax {t}")?;
        }
        writeln!(out, "{COLUMNS}")?;
        Ok(Writer { out })
    }

    /// One row.
    pub fn row(&mut self, time_us: u64, cpu: u32, package: u32, msr: Msr, value: u64) -> io::Result<()> {
        writeln!(self.out, "{time_us},{cpu},{package},{:#x},{value:#x}", msr.address())
    }

    /// A comment line among the rows.
    pub fn comment(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "# {text}")
    }

    /// Flushes what was written to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "# kevent-bench thermal trace 1\n\
                          # recorded by a test\n\
                          # cpu 0 package 0 core 0\n\
                          # cpu 1 package 0 core 4\n\
                          # cpu 2 package 1 core 0\n\
                          # cpu 3 package 1 core 4\n\
                          # tjmax 95\n\
                          time_us,cpu,package,register,value\n";

    fn parse_str(text: &str) -> Result<Trace, TraceError> {
        parse(Path::new("t.csv"), text)
    }

    fn err(rows: &str) -> TraceError {
        parse_str(&format!("{HEADER}{rows}")).unwrap_err()
    }

    #[test]
    fn a_trace_parses_into_its_machine_and_rows() {
        let t = parse_str(&format!(
            "{HEADER}0,0,0,0x19c,0x80320000\n0,0,0,0x1b1,0x320000\n1500,1,0,0x19C,0x80050001\n# a comment\n2500,2,1,0x1b1,0x50001\n"
        ))
        .unwrap();
        assert_eq!(t.topology, Topology { packages: 2, cores: 2 });
        assert_eq!(t.tjmax, Some(95));
        assert_eq!(t.cpus[1], TraceCpu { cpu: 1, package: 0, core: 4 });
        assert_eq!(t.rows.len(), 4);
        assert_eq!(
            t.rows[2],
            Row { time_us: 1500, cpu: 1, package: 0, msr: Msr::ThermStatus, value: 0x8005_0001, line: 11 }
        );
        assert_eq!(t.duration(), Duration::from_micros(2500));
    }

    #[test]
    fn a_replay_injects_only_values_that_changed_from_the_reset_image_on() {
        let t = parse_str(&format!(
            "{HEADER}0,0,0,0x19c,0x80320000\n0,1,0,0x1b1,0x320000\n10,0,0,0x19c,0x80050001\n\
             20,0,0,0x19c,0x80050001\n30,1,0,0x19c,0x80050001\n40,1,0,0x1b1,0x50001\n50,0,0,0x1b1,0x50001\n\
             60,3,1,0x1b1,0x50001\n"
        ))
        .unwrap();
        let made: Vec<(u64, u32, Msr, usize)> =
            t.injections().iter().map(|i| (i.at.as_micros() as u64, i.cpu, i.msr, i.line)).collect();
        // The reset images are skipped; CPU 1's core register is its own; the
        // package register is the package's, whichever CPU read it.
        assert_eq!(
            made,
            [
                (10, 0, Msr::ThermStatus, 11),
                (30, 1, Msr::ThermStatus, 13),
                (40, 1, Msr::PackageThermStatus, 14),
                (60, 3, Msr::PackageThermStatus, 16)
            ]
        );
    }

    #[test]
    fn bad_rows_are_refused_with_their_line_and_reason() {
        let cases = [
            ("0,0,0,0x1a2,0x640000\n", 9, "unknown register \"0x1a2\""),
            ("0,0,0,msr,0x0\n", 9, "unknown register \"msr\""),
            ("5,0,0,0x19c,0x80320000\n4,0,0,0x19c,0x80320000\n", 10, "time goes backwards: 4 µs after a row at 5 µs"),
            ("0,0,0,0x19c,0x88320000\n", 9, "sets bits 0x8000000, which the hardware model refuses"),
            ("0,0,0,0x1b1,0x80000000\n", 9, "0x1b1 (IA32_PACKAGE_THERM_STATUS) value 0x80000000 sets bits 0x80000000"),
            ("0,4,1,0x19c,0x80320000\n", 9, "CPU 4 is not one of the recorded machine's CPUs [0, 1, 2, 3]"),
            ("0,2,0,0x19c,0x80320000\n", 9, "CPU 2 is in package 1, this row says package 0"),
            ("0,0,0,0x19c\n", 9, "4 fields, expected 5"),
            ("0,0,0,0x19c,80320000\n", 9, "expected a hexadecimal register image"),
            ("-1,0,0,0x19c,0x0\n", 9, "time_us \"-1\""),
            ("0,0,0,0x19c,0x80320000\n# cpu 4 package 2 core 0\n", 10, "before the column header"),
        ];
        for (rows, line, expected) in cases {
            let e = err(rows);
            assert_eq!(e.line, line, "{rows:?}: {e}");
            assert!(e.message.contains(expected), "{rows:?}: {e}");
            assert!(e.to_string().starts_with(&format!("t.csv:{line}: ")), "{e}");
        }
    }

    #[test]
    fn a_cut_off_last_line_is_refused_even_when_it_would_parse() {
        let e = err("0,0,0,0x19c,0x80320000\n10,1,0,0x19c,0x8032");
        assert_eq!(e.line, 10);
        assert!(e.message.contains("the last line has no newline: the trace was cut off"), "{e}");
        let e = err("0,0,0,0x19c,0x80320000");
        assert_eq!(e.line, 9, "{e}");
    }

    #[test]
    fn a_machine_the_guest_cannot_have_is_refused_with_the_reason() {
        let machine = |cpus: &str| parse_str(&format!("# kevent-bench thermal trace 1\n{cpus}{COLUMNS}\n"));
        let e = machine("# cpu 0 package 0 core 0\n# cpu 1 package 0 core 1\n# cpu 2 package 1 core 0\n").unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("package 1 has 1 CPU(s) and package 0 2"), "{e}");
        assert!(e.message.contains("--cpus"), "{e}");
        let nine: String = (0..9).map(|c| format!("# cpu {c} package 0 core {c}\n")).collect();
        let e = machine(&nine).unwrap_err();
        assert!(e.message.contains("more than the 8 CPUs"), "{e}");
        let e = machine("# cpu 0 package 0 core 0\n# cpu 0 package 0 core 1\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "CPU 0 is described twice (first on line 2)"));
        let e = machine("").unwrap_err();
        assert!(e.message.contains("no \"# cpu N package P core C\" line"), "{e}");
    }

    #[test]
    fn a_machine_numbered_otherwise_is_renumbered_package_by_package() {
        // Two sockets whose CPUs alternate, as many two-socket machines
        // number them, with sparse package and core ids.
        let t = parse_str(
            "# kevent-bench thermal trace 1\n# cpu 0 package 0 core 0\n# cpu 1 package 3 core 0\n\
             # cpu 2 package 0 core 8\n# cpu 3 package 3 core 8\ntime_us,cpu,package,register,value\n\
             10,1,3,0x1b1,0x50001\n20,2,0,0x19c,0x80050001\n",
        )
        .unwrap();
        assert_eq!(t.topology, Topology::new(2, 2).unwrap());
        assert_eq!(t.guest_cpus, BTreeMap::from([(0, 0), (2, 1), (1, 2), (3, 3)]));
        assert!(t.renumbered());
        let at: Vec<(u32, Msr)> = t.injections().iter().map(|i| (i.cpu, i.msr)).collect();
        assert_eq!(at, [(2, Msr::PackageThermStatus), (1, Msr::ThermStatus)], "guest CPUs, guest packages");
        // A single CPU recorded from a bigger machine is the guest's CPU 0.
        let t =
            parse_str("# kevent-bench thermal trace 1\n# cpu 5 package 0 core 2\ntime_us,cpu,package,register,value\n")
                .unwrap();
        assert_eq!((t.topology, t.guest_cpus[&5], t.renumbered()), (Topology::flat(1), 0, true));
        assert!(!parse_str(HEADER).unwrap().renumbered(), "core ids 0 and 4, in CPU order");
    }

    #[test]
    fn other_formats_and_versions_are_named() {
        let e = parse_str("time_us,cpu\n").unwrap_err();
        assert!(e.message.starts_with("not a thermal trace"), "{e}");
        let e = parse_str("# kevent-bench thermal trace 2\n").unwrap_err();
        assert!(e.message.contains("this bench reads version 1 traces"), "{e}");
        let e = parse_str("# kevent-bench thermal trace 1\n# cpu 0 package 0 core 0\ntime,cpu\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(parse_bytes(Path::new("t.csv"), b"# kevent-bench thermal trace 1\n\xff\n").is_err());
    }

    #[test]
    fn what_the_writer_writes_the_parser_reads_back() {
        let cpus = [TraceCpu { cpu: 0, package: 0, core: 0 }, TraceCpu { cpu: 1, package: 0, core: 1 }];
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, &cpus, Some(100), &["recorded on a test".into()]).unwrap();
        w.row(0, 0, 0, Msr::ThermStatus, 0x8032_0000).unwrap();
        w.row(250, 0, 0, Msr::PackageThermStatus, 0x0005_0001).unwrap();
        w.comment("the end").unwrap();
        w.flush().unwrap();
        let t = parse_bytes(Path::new("w.csv"), &out).unwrap();
        assert_eq!(
            (t.topology, t.tjmax, t.cpus.as_slice()),
            (Topology { packages: 1, cores: 2 }, Some(100), &cpus[..])
        );
        assert_eq!(t.rows[1].value, 0x0005_0001);
        assert_eq!(t.rows[1].msr, Msr::PackageThermStatus);
    }

    #[test]
    fn a_replay_is_bounded_in_speed_and_length() {
        let t = parse_str(&format!("{HEADER}0,0,0,0x19c,0x80320000\n1200000000,0,0,0x19c,0x80050001\n")).unwrap();
        assert!(t.check_speed(0.0).unwrap_err().contains("expected 0.01 to 1000"));
        assert!(t.check_speed(1.0).unwrap_err().contains("1200 s of replay, at most 600 s"));
        t.check_speed(2.0).unwrap();
    }
}
