//! What the fuzz targets (`fuzz/`) and the corpus replay (`tests/fuzz_corpus.rs`)
//! share: the checks each input must pass, and the mutator that turns a
//! starter scenario into a hostile one. A check panics when the code under
//! test breaks a promise; returning means the input was handled.
//!
//! The fuzz crate includes this file by path, so it uses nothing but the
//! bench's public API and std.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kevent_bench::events::{self, Event};
use kevent_bench::modinfo;
use kevent_bench::scenario::{self, limits, Action, Injector, Location, Scenario, ScenarioError};
use kevent_wire::{
    read_frame, AgentStage, Datagram, GuestMessage, HostMessage, WireError, MAX_FRAME_LEN, MODULE_PARAM_KEY,
};

/// The file every fuzzed scenario claims to be.
pub const SCENARIO_PATH: &str = "fuzz/input.toml";

/// The repository's root, wherever the including crate lives.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if here.join("scenarios").is_dir() {
        here.to_owned()
    } else {
        here.parent().expect("fuzz/ is inside the repository").to_owned()
    }
}

/// The starter scenarios' texts, sorted by file name.
pub fn starters() -> Vec<Vec<u8>> {
    let files = scenario::files(&repo_root().join("scenarios")).expect("read scenarios/");
    assert!(!files.is_empty(), "no starter scenarios");
    files.iter().map(|f| std::fs::read(f).expect("read a starter scenario")).collect()
}

/// The fuzz targets, each a name of `fuzz/fuzz_targets/` and a folder of
/// `fuzz/inputs/`.
pub const TARGETS: &[&str] = &[
    "scenario_text",
    "scenario_mutants",
    "wire_message",
    "wire_stream",
    "events_decode",
    "modinfo_object",
    "kdbusd_mapping",
    "dbus_message",
];

/// Runs fuzz target `target` on one input: how each target reads its
/// bytes is defined here alone, so a reproducer means the same thing to
/// the fuzzer and to the corpus replay.
pub fn run(target: &str, data: &[u8]) {
    match target {
        // Any bytes as a scenario file.
        "scenario_text" => {
            check_scenario(data);
        }
        // The bytes choose a starter scenario and the edits made to it.
        "scenario_mutants" => {
            check_scenario(&mutant(starters_once(), &mut ByteChoices(data)));
        }
        // A kind byte, then the body.
        "wire_message" => {
            if let Some((&kind, body)) = data.split_first() {
                check_message(kind, body);
            }
        }
        // One byte of read sizes (two nibbles; 0: interrupted, or all at
        // once if both are), then the stream.
        "wire_stream" => {
            if let Some((&sizes, stream)) = data.split_first() {
                let chunks =
                    if sizes == 0 { Vec::new() } else { vec![usize::from(sizes & 15), usize::from(sizes >> 4)] };
                check_stream(stream, chunks);
            }
        }
        // A byte choosing the protocol (uevent, kmessage, or that byte),
        // four bytes of group mask, then the datagram.
        "events_decode" => {
            if let Some((protocol, groups, bytes)) = datagram_input(data) {
                check_datagram(protocol, groups, bytes);
            }
        }
        "modinfo_object" => check_modinfo(data),
        // As events_decode: what kdbusd's sockets deliver, through its mapping.
        "kdbusd_mapping" => {
            if let Some((protocol, groups, bytes)) = datagram_input(data) {
                check_mapping(protocol, groups, bytes);
            }
        }
        // Any bytes as a message the guest's monitor forwarded.
        "dbus_message" => check_dbus_message(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// A datagram as the datagram targets read one: a byte choosing the
/// protocol (uevent, kmessage, or that byte), four bytes of group mask,
/// then the payload; None if the input is too short for the prefix.
fn datagram_input(data: &[u8]) -> Option<(u32, u32, &[u8])> {
    let (prefix, bytes) = data.split_first_chunk::<5>()?;
    let protocol = match prefix[0] % 3 {
        0 => events::NETLINK_KOBJECT_UEVENT,
        1 => 31,
        _ => u32::from(prefix[0]),
    };
    let groups = u32::from_le_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    Some((protocol, groups, bytes))
}

fn starters_once() -> &'static [Vec<u8>] {
    static STARTERS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    STARTERS.get_or_init(starters)
}

// ---------------------------------------------------------------------------
// Scenarios

/// Parses `bytes` as a scenario file and checks the result: an error is
/// located inside the text and says something; a scenario keeps every
/// limit, and what the host later does with it cannot panic. Whether it
/// parsed.
pub fn check_scenario(bytes: &[u8]) -> bool {
    match scenario::parse_bytes(Path::new(SCENARIO_PATH), bytes) {
        Ok(s) => {
            check_parsed(&s, bytes);
            true
        }
        Err(e) => {
            check_error(&e, bytes);
            false
        }
    }
}

/// `at` names a character of `bytes` (or the position just past a line's
/// end), read as UTF-8 up to the first bad byte.
fn check_location(at: Location, bytes: &[u8], what: &str) {
    assert!(at.line >= 1 && at.column >= 1, "{what}: {at:?} is not 1-based");
    // A bad byte becomes one U+FFFD: everything before it keeps its place.
    let text = String::from_utf8_lossy(bytes);
    let line = text.split('\n').nth(at.line - 1).unwrap_or_else(|| panic!("{what}: line {} is past the end", at.line));
    let columns = line.chars().count() + 1;
    assert!(at.column <= columns, "{what}: column {} of a line of {} characters", at.column, columns - 1);
}

fn check_error(e: &ScenarioError, bytes: &[u8]) {
    assert!(!e.message.trim().is_empty(), "an error with no message at {:?}", e.at);
    check_location(e.at, bytes, &e.message);
    let shown = e.to_string();
    let prefix = format!("{SCENARIO_PATH}:{}:{}: ", e.at.line, e.at.column);
    assert!(shown.starts_with(&prefix), "{shown:?} does not start with {prefix:?}");
}

/// The modules and parameters the bench loads, as `.modinfo` gives them.
fn known_params() -> BTreeMap<String, BTreeSet<String>> {
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    BTreeMap::from([
        ("kmessage".to_owned(), set(&["unit"])),
        ("kevent_thermal".to_owned(), set(&["rate_limit_ms", "tjmax", "rate_limit_edge_ms"])),
    ])
}

fn check_parsed(s: &Scenario, bytes: &[u8]) {
    let m = &s.machine;
    assert!((1..=limits::MAX_CPUS).contains(&m.cpus()), "cpus = {}", m.cpus());
    assert!((limits::MIN_MEMORY_MIB..=limits::MAX_MEMORY_MIB).contains(&m.memory_mib), "memory {}", m.memory_mib);
    assert!(!s.steps.is_empty(), "a scenario without steps");

    let mut total = 0u64;
    let mut background = 0u32;
    for (i, step) in s.steps.iter().enumerate() {
        let what = format!("step {i} ({})", step.action);
        check_location(step.at, bytes, &what);
        assert!((1..=limits::MAX_REPEAT).contains(&step.repeat), "{what}: repeat {}", step.repeat);
        total += u64::from(step.repeat);
        match &step.action {
            Action::Inject { cpu, label, .. } => {
                assert!(*cpu < m.cpus(), "{what}: CPU {cpu} of {}", m.cpus());
                assert!(!label.is_empty(), "{what}: no label");
            }
            Action::Sleep { ms } => assert!(*ms <= limits::MAX_SLEEP_MS, "{what}"),
            Action::Read { .. } => {}
            Action::Write { value, .. } => assert!(value.len() <= limits::MAX_WRITE_BYTES, "{what}"),
            Action::Exec { program, args, background: bg } => {
                let len = program.len() + args.iter().map(String::len).sum::<usize>();
                assert!(len <= limits::MAX_EXEC_BYTES, "{what}: {len} bytes");
                if *bg {
                    background += step.repeat;
                }
            }
            Action::Replay { path, speed, .. } => {
                assert!(path.len() <= limits::MAX_PATH_BYTES, "{what}: {} bytes", path.len());
                assert_eq!(step.repeat, 1, "{what}: a replay plays once");
                assert!(speed.0 >= 1, "{what}: speed {speed:?}");
            }
            Action::Kdbusd { .. } => assert!(m.dbus, "{what}: kdbusd without the D-Bus side"),
        }
        if let Some(interval) = step.device_interval {
            assert!(matches!(step.action, Action::Inject { .. }), "{what}: timed but not an injection");
            assert_eq!(s.injector, Injector::Device, "{what}: timed without the device");
            assert!(step.repeat <= limits::MAX_TIMED_REPEAT, "{what}: timed repeat {}", step.repeat);
            let us = u64::try_from(interval.as_micros()).expect("bounded");
            assert!(us <= limits::MAX_INTERVAL_US, "{what}: interval {us} µs");
            assert!(us * u64::from(step.repeat - 1) <= limits::MAX_TIMED_STEP_US, "{what}: spans too long");
            // The runner hands the device the interval as u32 nanoseconds.
            assert!(u32::try_from(interval.as_nanos()).is_ok(), "{what}: interval {interval:?}");
        }
    }
    assert!(total <= limits::MAX_TOTAL_REPETITIONS, "{total} repetitions in all");
    assert!(background <= limits::MAX_BACKGROUND, "{background} background programs");
    s.check_injector().expect("a parsed scenario's own injector suits its steps");

    let args = scenario::kernel_args(s);
    assert_eq!(args.len(), s.params.len());
    for (word, p) in args.iter().zip(&s.params) {
        check_location(p.at, bytes, word);
        assert!(word.starts_with(MODULE_PARAM_KEY), "{word:?}");
        assert!(
            word.bytes().all(|b| b.is_ascii_graphic() && b != b'"'),
            "{word:?} is not one word of the kernel command line"
        );
        let rest = &word[MODULE_PARAM_KEY.len()..];
        // The agent splits MODULE.KEY=VALUE at the first `.` and `=`.
        let (module, rest) = rest.split_once('.').expect("MODULE.KEY=VALUE");
        let (key, value) = rest.split_once('=').expect("KEY=VALUE");
        assert_eq!((module, key, value), (p.module.as_str(), p.key.as_str(), p.value.as_str()), "{word:?}");
    }

    check_tjmax(s);

    let _ = s.params_by_module();
    if let Err(e) = s.check_params(&known_params()) {
        check_error(&e, bytes);
    }
    let highest_cpu = s.steps.iter().filter_map(|st| match st.action {
        Action::Inject { cpu, .. } => Some(cpu),
        _ => None,
    });
    let needed = highest_cpu.max().map_or(1, |c| c + 1);
    for cpus in [0, 1, 2, 3, 4, 7, 8, 9, 64, u32::MAX] {
        let mut copy = s.clone();
        match copy.set_cpus(cpus) {
            Ok(()) => {
                assert!((needed..=limits::MAX_CPUS).contains(&cpus), "set_cpus({cpus}) accepted");
                assert_eq!(copy.machine.cpus(), cpus);
            }
            Err(message) => {
                assert!(!(needed..=limits::MAX_CPUS).contains(&cpus), "set_cpus({cpus}) refused: {message}");
                assert!(!message.trim().is_empty());
                assert_eq!(&copy, s, "set_cpus({cpus}) changed the scenario it refused");
            }
        }
    }
}

/// How the kernel reads an unsigned module parameter (kstrtouint, base 0):
/// `0x` hexadecimal, a leading `0` octal, else decimal; `+` allowed.
fn kernel_uint(text: &str) -> Option<u32> {
    let text = text.strip_prefix('+').unwrap_or(text);
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if hex.starts_with(|c: char| c.is_ascii_hexdigit()) => (hex, 16),
        _ if text.starts_with('0') => (text, 8),
        _ => (text, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// The host turns temperatures into readouts through the TjMax the module
/// will have: the last `tjmax` the kernel gives kevent_thermal, however
/// the scenario spells its name, as the kernel reads it.
fn check_tjmax(s: &Scenario) {
    let normalise = |s: &str| s.replace('-', "_");
    let mut module = Some(100);
    for p in &s.params {
        if normalise(&p.module) == "kevent_thermal" && normalise(&p.key) == "tjmax" {
            module = kernel_uint(&p.value);
        }
    }
    // A TjMax the module refuses fails its load: the run stops, loudly.
    let Some(module) = module.filter(|t| (1..=255).contains(t)) else { return };
    for step in &s.steps {
        let Action::Inject { value, label, .. } = &step.action else { continue };
        let Some(celsius) = label.rsplit_once(", ").and_then(|(_, t)| t.strip_suffix(" °C")) else { continue };
        let readout = (value >> 16) & 0x7f;
        let host = celsius.parse::<i64>().expect("a temperature") + readout as i64;
        assert_eq!(host, i64::from(module), "step {label:?}: readouts through TjMax {host}, the module has {module}");
    }
}

/// Where the mutator takes its decisions: a seeded generator (the corpus
/// replay) or the fuzzer's bytes (the fuzz target, which then steers them).
pub trait Choices {
    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize;

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// splitmix64: deterministic, no dependency.
pub struct Rng(pub u64);

impl Choices for Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}

/// Decisions read from bytes; zeros once they run out.
pub struct ByteChoices<'a>(pub &'a [u8]);

impl Choices for ByteChoices<'_> {
    fn below(&mut self, n: usize) -> usize {
        let width = if n <= 0x100 { 1 } else { 4 };
        let (head, rest) = self.0.split_at(width.min(self.0.len()));
        self.0 = rest;
        let mut raw = [0u8; 4];
        raw[..head.len()].copy_from_slice(head);
        u32::from_le_bytes(raw) as usize % n
    }
}

/// Numbers at and around every bound the parser has, and past what its
/// integer types hold.
const EXTREMES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "-0",
    "+1",
    "7",
    "8",
    "9",
    "63",
    "64",
    "127",
    "128",
    "255",
    "256",
    "1023",
    "1024",
    "1025",
    "10000",
    "10001",
    "16384",
    "16385",
    "30000",
    "30001",
    "99999",
    "100000",
    "100001",
    "1000000",
    "1000001",
    "30000000",
    "65535",
    "4294967295",
    "4294967296",
    "18446744073710",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "0x7fffffffffffffff",
    "0xffffffff",
    "0o777",
    "0b101",
    "1_000",
    "1e308",
    "-1e308",
    "1e309",
    "inf",
    "-inf",
    "nan",
    "1.5",
    "-0.0",
    "\"12\"",
    "true",
    "[]",
    "{}",
    "1979-05-27T07:32:00Z",
];

/// Strings that a path, value, name or bit could be.
const STRINGS: &[&str] = &[
    "\"\"",
    "\" \"",
    "\"a b\"",
    "\"\\\"\"",
    "\"\\u0000\"",
    "\"\\n\"",
    "\"é\"",
    "\"0x\"",
    "\"0x80000000\"",
    "\"0xffffffffffffffff\"",
    "\"0x10000000000000000\"",
    "\"+ff\"",
    "\"-1\"",
    "\"0144\"",
    "\"0x5a\"",
    "\"prochot\"",
    "\"prochot_log\"",
    "\"hot\"",
    "\"debugfs\"",
    "\"device\"",
    "\"virtual\"",
    "\"real\"",
    "\"/proc/uptime\"",
    "'''\nx'''",
];

/// Lines and tables a mutant may gain.
const SNIPPETS: &[&str] = &[
    "[[step]]\n",
    "[machine]\n",
    "[params]\n",
    "[step]\n",
    "[[machine]]\n",
    "description = \"x\"\n",
    "injector = \"debugfs\"\n",
    "injector = \"device\"\n",
    "cpus = 8\n",
    "cpus = 1\n",
    "memory_mib = 64\n",
    "clock = \"virtual\"\n",
    "repeat = 10000\n",
    "repeat = 1024\n",
    "interval_us = 0\n",
    "interval_us = 1000000\n",
    "sleep_ms = 30000\n",
    "read = \"/proc/uptime\"\n",
    "write = { path = \"/x\", value = \"1\" }\n",
    "exec = { program = \"/bin/x\", args = [\"a\", \"\"], background = true }\n",
    "inject = { cpu = 7, package = true, bits = [\"power_limit_log\"], temperature = -27 }\n",
    "inject = { cpu = 0, raw = \"0xffffffffffffffff\" }\n",
    "kevent_thermal.tjmax = 1\n",
    "kevent_thermal.tjmax = 255\n",
    "kevent-thermal.tjmax = 90\n",
    "kevent_thermal.tjmax = \"0144\"\n",
    "kevent_thermal.rate_limit_ms = true\n",
    "kmessage.unit = \"31\"\n",
    "\"\" = 1\n",
    "a.b.c.d = 1\n",
    "[params.kevent_thermal]\n",
    "[[step.inject]]\n",
    "#\n",
    "\r\n",
    "\n",
];

fn is_number_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-')
}

/// Spans (start, end) of `bytes` where `starts(b)` begins a token that
/// `continues` extends.
fn tokens(bytes: &[u8], starts: impl Fn(&[u8], usize) -> bool, continues: impl Fn(u8) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if starts(bytes, i) {
            let start = i;
            i += 1;
            while i < bytes.len() && continues(bytes[i]) {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Numbers: a digit (or sign before one) not inside a word.
fn number_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let starts = |b: &[u8], i: usize| {
        let after_word = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let digit = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
        !after_word && (digit(i) || (matches!(b[i], b'-' | b'+') && digit(i + 1)))
    };
    tokens(bytes, starts, is_number_byte)
}

/// Bare keys: a letter after a line start, `{ ` or `, `.
fn key_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let starts = |b: &[u8], i: usize| {
        b[i].is_ascii_alphabetic() && (i == 0 || matches!(b[i - 1], b'\n' | b' ' | b'{' | b'.' | b'['))
    };
    tokens(bytes, starts, |c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Basic strings, quotes included.
fn string_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut open = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (b, open) {
            (b'"', None) => open = Some(i),
            (b'"', Some(start)) if bytes[i - 1] != b'\\' => {
                out.push((start, i + 1));
                open = None;
            }
            (b'\n', Some(_)) => open = None,
            _ => {}
        }
    }
    out
}

fn line_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < bytes.len() {
        out.push((start, bytes.len()));
    }
    out
}

fn replace(bytes: &mut Vec<u8>, (start, end): (usize, usize), with: &[u8]) {
    bytes.splice(start..end, with.iter().copied());
}

/// One structured edit of a scenario's bytes: what a hurried or hostile
/// author could write.
pub fn mutate_once(bytes: &mut Vec<u8>, c: &mut impl Choices) {
    match c.below(12) {
        0..=2 => {
            let spans = number_spans(bytes);
            if !spans.is_empty() {
                replace(bytes, *c.pick(&spans), c.pick(EXTREMES).as_bytes());
            }
        }
        3 => {
            let spans = string_spans(bytes);
            if !spans.is_empty() {
                replace(bytes, *c.pick(&spans), c.pick(STRINGS).as_bytes());
            }
        }
        4 | 5 => {
            // A misspelt key: one character dropped, doubled, changed or
            // swapped with the next.
            let spans = key_spans(bytes);
            if !spans.is_empty() {
                let (start, end) = *c.pick(&spans);
                let at = start + c.below(end - start);
                match c.below(4) {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, bytes[at]),
                    2 => bytes[at] = b"_-abeiorstx"[c.below(11)],
                    _ if at + 1 < end => bytes.swap(at, at + 1),
                    _ => bytes[at] = bytes[at].to_ascii_uppercase(),
                }
            }
        }
        6 => {
            // A line duplicated (a duplicate key) or moved.
            let lines = line_spans(bytes);
            if !lines.is_empty() {
                let (start, end) = *c.pick(&lines);
                let mut line = bytes[start..end].to_vec();
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let (to, _) = *c.pick(&lines);
                if c.below(2) == 0 {
                    bytes.drain(start..end);
                    let to = to.min(bytes.len());
                    replace(bytes, (to, to), &line);
                } else {
                    replace(bytes, (to, to), &line);
                }
            }
        }
        7 => {
            let lines = line_spans(bytes);
            if !lines.is_empty() {
                replace(bytes, *c.pick(&lines), b"");
            }
        }
        8 => {
            let at = c.below(bytes.len() + 1);
            bytes.truncate(at);
        }
        9 => {
            if !bytes.is_empty() {
                let at = c.below(bytes.len());
                bytes[at] ^= 1 << c.below(8);
            }
        }
        10 => {
            let lines = line_spans(bytes);
            let at = if lines.is_empty() { 0 } else { c.pick(&lines).0 };
            replace(bytes, (at, at), c.pick(SNIPPETS).as_bytes());
        }
        _ => {
            // A long string, to meet the byte limits; seldom, as it makes
            // the parse a hundred times slower.
            let spans = string_spans(bytes);
            if !spans.is_empty() && c.below(8) == 0 {
                let len = *c.pick(&[limits::MAX_WRITE_BYTES - 2, limits::MAX_WRITE_BYTES + 1, 70_000]);
                let long = format!("\"{}\"", "a".repeat(len));
                replace(bytes, *c.pick(&spans), long.as_bytes());
            }
        }
    }
}

/// A starter scenario with one to three edits.
pub fn mutant(starters: &[Vec<u8>], c: &mut impl Choices) -> Vec<u8> {
    let mut bytes = c.pick(starters).clone();
    for _ in 0..=c.below(3) {
        mutate_once(&mut bytes, c);
    }
    bytes
}

// ---------------------------------------------------------------------------
// The wire protocol

/// A frame's body decoded both ways; whatever decodes re-encodes to the
/// very same frame, and decodes again to the same message.
pub fn check_message(kind: u8, body: &[u8]) {
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.extend_from_slice(&u32::try_from(body.len() + 1).expect("small body").to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(body);
    match GuestMessage::decode(kind, body) {
        Ok(m) => {
            assert_eq!(m.encode(), frame, "{m:?} re-encodes differently");
            let (k, b) = read_frame(&mut &frame[..]).expect("a frame").expect("not the end");
            assert_eq!(GuestMessage::decode(k, &b).expect("decodes again"), m);
        }
        Err(e) => check_wire_error(&e),
    }
    match HostMessage::decode(kind, body) {
        Ok(m) => {
            assert_eq!(m.encode(), frame, "{m:?} re-encodes differently");
            let (k, b) = read_frame(&mut &frame[..]).expect("a frame").expect("not the end");
            assert_eq!(HostMessage::decode(k, &b).expect("decodes again"), m);
        }
        Err(e) => check_wire_error(&e),
    }
}

fn check_wire_error(e: &WireError) {
    assert!(!e.to_string().trim().is_empty(), "{e:?} says nothing");
}

/// A reader that hands out `data` in pieces of the sizes `chunks` gives
/// (cycling), and is interrupted before every piece of size zero, as a
/// pipe or socket may be.
pub struct Chunked<'a> {
    data: &'a [u8],
    chunks: Vec<usize>,
    next: usize,
    pub consumed: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], mut chunks: Vec<usize>) -> Self {
        // Interrupted on every read, a reader would never deliver.
        if !chunks.iter().any(|&c| c > 0) {
            chunks.push(usize::MAX);
        }
        Chunked { data, chunks, next: 0, consumed: 0 }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = if self.chunks.is_empty() { usize::MAX } else { self.chunks[self.next % self.chunks.len()] };
        self.next += 1;
        if size == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = size.min(buf.len()).min(self.data.len() - self.consumed);
        buf[..n].copy_from_slice(&self.data[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}

/// Frames read off a byte stream until it ends or breaks: each frame takes
/// exactly its announced bytes, the end is only ever between frames, and
/// every frame's message is checked as [`check_message`] does.
pub fn check_stream(stream: &[u8], chunks: Vec<usize>) {
    let mut r = Chunked::new(stream, chunks);
    loop {
        let before = r.consumed;
        match read_frame(&mut r) {
            Ok(None) => {
                assert_eq!(before, stream.len(), "a clean end with bytes left");
                return;
            }
            Ok(Some((kind, body))) => {
                let len = u32::from_le_bytes(stream[before..before + 4].try_into().unwrap()) as usize;
                assert!((1..=MAX_FRAME_LEN).contains(&len));
                assert_eq!(body.len() + 1, len);
                assert_eq!(r.consumed, before + 4 + len, "a frame read more or less than it announced");
                assert_eq!(kind, stream[before + 4]);
                assert_eq!(body, stream[before + 5..r.consumed]);
                check_message(kind, &body);
            }
            Err(e) => {
                match e {
                    WireError::TruncatedFrame { expected, got } => {
                        assert!(got < expected);
                        assert_eq!(r.consumed, stream.len(), "truncated before the stream ended");
                    }
                    WireError::BadFrameLength(len) => assert!(len == 0 || len > MAX_FRAME_LEN),
                    ref other => panic!("read_frame failed with {other:?}, which only decoding can"),
                }
                check_wire_error(&e);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Captured datagrams

/// The inverse of [`events::escape`]: escaping must lose nothing.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next().expect("a lone backslash") {
            b'n' => out.push(b'\n'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = [bytes.next().unwrap(), bytes.next().unwrap()];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
            }
            other => panic!("unknown escape \\{}", other as char),
        }
    }
    out
}

/// Every datagram decodes to an event of its channel, or to Malformed
/// with a reason and all of its bytes; rendering and normalising it work.
pub fn check_datagram(protocol: u32, groups: u32, bytes: &[u8]) {
    let d = Datagram { protocol, groups, portid: 0, monotonic_ns: u64::from(groups) << 20, bytes: bytes.to_vec() };
    let mut event = events::decode(&d);
    match &event {
        Event::Uevent { action, devpath, env } => {
            assert_eq!(protocol, events::NETLINK_KOBJECT_UEVENT);
            let nul = |s: &String| s.contains('\0');
            assert!(!nul(action) && !nul(devpath) && !env.iter().any(nul), "a NUL inside a decoded uevent");
        }
        Event::Kmessage { from, signal, .. } => {
            assert_ne!(protocol, events::NETLINK_KOBJECT_UEVENT);
            assert!(!from.contains('\n') && !signal.contains('\n'));
        }
        Event::Malformed { protocol: p, why, bytes: shown } => {
            assert_eq!(*p, protocol);
            assert!(!why.is_empty());
            assert!(shown.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{shown:?} is not printable");
            assert_eq!(unescape(shown), bytes, "escaping lost bytes");
        }
    }
    let _ = events::kind_of(&event);
    let _ = events::render_live(&d, &event);
    let mut n = events::Normaliser::default();
    n.normalise(&mut event);
    n.normalise(&mut event);
}

/// kdbusd's mapping (docs/dbus.md) of any datagram: a valid object path,
/// one of the documented interfaces, a valid member, and the datagram
/// itself as the body's last argument; a valid `From:` object is kept as
/// it is; a Malformed signal says why.
pub fn check_mapping(protocol: u32, groups: u32, bytes: &[u8]) {
    use kdbusd::mapping::{self, Body, Source};
    let source = if protocol == events::NETLINK_KOBJECT_UEVENT {
        Source::Uevent
    } else {
        Source::Kmessage { unit: protocol, groups }
    };
    let signal = mapping::map(source, bytes);
    assert!(mapping::is_object_path(signal.path.as_bytes()), "{:?} is no object path", signal.path);
    assert!(mapping::is_member(signal.member.as_bytes()), "{:?} is no member", signal.member);
    let interfaces: Vec<&str> = mapping::KMESSAGE_INTERFACES.iter().map(|(_, i)| *i).collect();
    assert!(
        interfaces.contains(&signal.interface)
            || signal.interface == mapping::UEVENT_INTERFACE
            || signal.interface == mapping::INTERFACE,
        "{}",
        signal.interface
    );
    assert_eq!(signal.body.datagram(), bytes, "the datagram is not carried whole");
    match &signal.body {
        Body::Malformed { why, .. } => assert!(!why.is_empty()),
        Body::Kmessage { .. } => {
            let from = bytes.strip_prefix(b"From: ").and_then(|r| r.split(|&b| b == b'\n').next()).unwrap();
            if mapping::is_object_path(from) {
                assert_eq!(signal.path.as_bytes(), from);
            }
        }
        Body::Uevent { .. } => assert!(signal.path.starts_with(mapping::UEVENT_PATH_PREFIX)),
    }
    // Every escaped element unescapes; a uevent's path is all escaped.
    for element in signal.path.split('/').skip(1).filter(|e| !e.is_empty()) {
        if matches!(signal.body, Body::Uevent { .. }) {
            assert!(mapping::unescape_label(element).is_some(), "{element:?}");
        }
    }
    // Marshalled as kdbusd sends it, the signal reads back with the same
    // names, and its last argument is the datagram, byte for byte
    // (docs/dbus.md): what the host matches a forwarded signal by.
    let body = kevent_bench::dbus::body_values(&signal.body);
    let marshalled = kdbusd::message::marshal_signal(1, &signal.path, signal.interface, &signal.member, &body)
        .expect("every body kdbusd makes marshals");
    let read = kdbusd::message::parse(&marshalled).expect("a marshalled signal reads");
    assert_eq!(
        (read.path.as_deref(), read.interface.as_deref(), read.member.as_deref()),
        (Some(signal.path.as_str()), Some(signal.interface), Some(signal.member.as_str()))
    );
    assert_eq!(read.body.last(), Some(&kdbusd::message::Value::Bytes(bytes.to_vec())), "the datagram is last");
}

/// kdbusd's signal of the seed's kmessage, marshalled.
pub fn sample_dbus_message() -> Vec<u8> {
    let (protocol, datagram) = DATAGRAMS[0];
    let signal = kdbusd::mapping::map(kdbusd::mapping::Source::Kmessage { unit: protocol, groups: 4 }, datagram);
    let body = kevent_bench::dbus::body_values(&signal.body);
    kdbusd::message::marshal_signal(1, &signal.path, signal.interface, &signal.member, &body).expect("kdbusd's types")
}

/// The host's reader of D-Bus messages: an error with an offset inside the
/// bytes, or a message whose every value renders.
pub fn check_dbus_message(bytes: &[u8]) {
    match kdbusd::message::parse(bytes) {
        Ok(message) => {
            for value in &message.body {
                let _ = value.to_string();
            }
        }
        Err(e) => {
            assert!(e.offset <= bytes.len(), "{e}");
            assert!(!e.why.is_empty());
        }
    }
    let message = kevent_wire::DbusMessage { monotonic_ns: 0, bytes: bytes.to_vec() };
    let _ = kevent_bench::dbus::entries(&[message], &[]);
}

// ---------------------------------------------------------------------------
// Kernel modules' .modinfo

/// A minimal ELF64 LE object: null section, .shstrtab, .modinfo.
pub fn elf(modinfo: &[u8]) -> Vec<u8> {
    let names = b"\0.shstrtab\0.modinfo\0";
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    let names_at = out.len();
    out.extend_from_slice(names);
    let modinfo_at = out.len();
    out.extend_from_slice(modinfo);
    let table = out.len();
    out[0x28..0x30].copy_from_slice(&(table as u64).to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
    for (name, offset, size) in [(0u32, 0usize, 0usize), (1, names_at, names.len()), (11, modinfo_at, modinfo.len())] {
        let mut header = [0u8; 64];
        header[..4].copy_from_slice(&name.to_le_bytes());
        header[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        out.extend_from_slice(&header);
    }
    out
}

pub const MODINFO: &[u8] = b"license=GPL\0parm=rate_limit_ms:per-CPU\0parmtype=rate_limit_ms:uint\0\
parmtype=tjmax:uint\0name=kevent-thermal\0vermagic=6.12.117 SMP mod_unload \0";

/// Any bytes read as a module: an error that names the file, or a module
/// whose name is as the kernel spells it.
pub fn check_modinfo(bytes: &[u8]) {
    match modinfo::from_object(Path::new("fuzz/module.ko"), bytes) {
        Ok(info) => assert!(!info.name.contains('-'), "{:?} keeps a dash", info.name),
        Err(e) => assert!(e.to_string().starts_with("fuzz/module.ko: "), "{e}"),
    }
}

/// Header fields an ELF mutant may get a hostile value in: section table
/// offset, entry size, count, names index, then each section header's
/// name, offset and size.
pub fn mutate_elf(object: &mut [u8], c: &mut impl Choices) {
    const VALUES: &[u64] = &[0, 1, 63, 64, 65, 0xffff, 0xffff_ffff, u64::MAX, u64::MAX - 23, u64::MAX - 63, 1 << 63];
    let mut fields: Vec<(usize, usize)> = vec![(0x28, 8), (0x3a, 2), (0x3c, 2), (0x3e, 2)];
    let table = 64 + 20 + MODINFO.len();
    for s in 0..3 {
        let at = table + 64 * s;
        fields.extend([(at, 4), (at + 24, 8), (at + 32, 8)]);
    }
    for _ in 0..=c.below(3) {
        let (at, width) = *c.pick(&fields);
        if at + width > object.len() {
            continue;
        }
        let value = if c.below(3) == 0 { c.below(usize::MAX) as u64 } else { *c.pick(VALUES) };
        object[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

/// One message of every kind and variant, each direction.
pub fn sample_frames() -> Vec<Vec<u8>> {
    use kevent_wire::{Command, ExecResult, Hello, ModuleLoad, Outcome, PROTOCOL_VERSION};
    let exec = ExecResult { program: "/bin/x".into(), exit_code: -1, signal: 9, stdout: b"o".to_vec(), stderr: vec![] };
    let guest = [
        GuestMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            kernel_release: "6.12.57".into(),
            cpus_online: 2,
            clocksource: "tsc".into(),
            agent_started_ns: 1,
            greeted_ns: 2,
            modules: vec![ModuleLoad { name: "kmessage".into(), params: "unit=31".into(), load_ns: 3 }],
        }),
        GuestMessage::Fatal { stage: AgentStage::Port, errno: 2, message: "no port".into() },
        GuestMessage::Datagram(Datagram {
            protocol: 31,
            groups: 4,
            portid: 0,
            monotonic_ns: 5,
            bytes: b"From: x\nSignal: high\n\0".to_vec(),
        }),
        GuestMessage::Overrun { protocol: 15, occurrences: 2 },
        GuestMessage::Reply { id: 1, outcome: Outcome::Done },
        GuestMessage::Reply { id: 2, outcome: Outcome::Data(vec![1, 2]) },
        GuestMessage::Reply { id: 3, outcome: Outcome::Exec(exec.clone()) },
        GuestMessage::Reply { id: 4, outcome: Outcome::Background(vec![exec.clone(), exec]) },
        GuestMessage::Reply { id: 5, outcome: Outcome::Error { errno: 22, message: "Invalid argument".into() } },
    ];
    let host = [
        HostMessage::Shutdown,
        HostMessage::Request { id: 1, command: Command::Inject { package: true, cpu: 3, value: 0x8832_0001 } },
        HostMessage::Request { id: 2, command: Command::ReadFile { path: "/sys/x".into() } },
        HostMessage::Request { id: 3, command: Command::WriteFile { path: "/d".into(), data: b"0x0".to_vec() } },
        HostMessage::Request { id: 4, command: Command::Sleep { ns: 5_000_000 } },
        HostMessage::Request {
            id: 5,
            command: Command::Exec { program: "/bin/x".into(), args: vec!["a".into(), "".into()], background: true },
        },
        HostMessage::Request { id: 6, command: Command::FinishBackground },
        HostMessage::Request { id: 7, command: Command::Fence },
        HostMessage::Request { id: 8, command: Command::ReadChunk { path: "/t".into(), offset: 9, max: 4096 } },
    ];
    guest.iter().map(GuestMessage::encode).chain(host.iter().map(HostMessage::encode)).collect()
}

/// A kmessage and a uevent as the guest captures them.
pub const DATAGRAMS: &[(u32, &[u8])] = &[
    (31, b"From: /org/kernel/devices/system/cpu/temperature\nSignal: high\nCpu: 1\n\0"),
    (
        15,
        b"change@/devices/system/cpu/cpu1\0ACTION=change\0DEVPATH=/devices/system/cpu/cpu1\0SUBSYSTEM=cpu\0\
KEVENT_SIGNAL=high\0MODALIAS=cpu:type:x86,ven0002fam000Fmod006B:feature:,0000\n\0SEQNUM=812\0",
    ),
];

/// Byte-level edits for binary inputs: a bit flipped, a cut, a byte
/// dropped or repeated, a little-endian word overwritten with an extreme.
pub fn mutate_bytes(bytes: &mut Vec<u8>, c: &mut impl Choices) {
    for _ in 0..=c.below(4) {
        if bytes.is_empty() {
            bytes.push(c.below(256) as u8);
            continue;
        }
        let at = c.below(bytes.len());
        match c.below(5) {
            0 => bytes[at] ^= 1 << c.below(8),
            1 => bytes.truncate(at),
            2 => {
                bytes.remove(at);
            }
            3 => bytes.insert(at, bytes[at]),
            _ => {
                let word = *c.pick(&[0u32, 1, 0x7f, 0x80, 0xff, 0xffff, MAX_FRAME_LEN as u32, u32::MAX]);
                for (i, b) in word.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = b;
                    }
                }
            }
        }
    }
}
