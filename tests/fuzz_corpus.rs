//! The fuzz targets' checks (`tests/fuzzing/`), replayed on a fixed corpus
//! in every test run: the starter scenarios, a few thousand seeded mutants
//! per target, and every input saved under `fuzz/inputs/` (the fuzzers'
//! seeds and the reproducers of the bugs they found). README, "Fuzzing".

mod fuzzing;

use kevent_bench::scenario::Action;

use fuzzing::{Choices, Rng};

/// Enough mutants to reach every edit of every starter many times, few
/// enough for a debug build to replay in a couple of seconds.
const MUTANTS: u64 = 3000;

#[test]
fn the_starter_scenarios_pass_the_checks_and_load_as_they_parse() {
    let dir = tempfile::tempdir().unwrap();
    // The traces replay steps name, beside the scenarios as in scenarios/.
    let traces = fuzzing::repo_root().join("scenarios/traces");
    std::fs::create_dir(dir.path().join("traces")).unwrap();
    for entry in std::fs::read_dir(&traces).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join("traces").join(entry.file_name())).unwrap();
    }
    for (i, text) in fuzzing::starters().iter().enumerate() {
        assert!(fuzzing::check_scenario(text), "a starter is refused");
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut loaded = kevent_bench::scenario::load(&path).unwrap();
        let replays = loaded.steps.iter().filter(|s| matches!(s.action, Action::Replay { .. })).count();
        assert_eq!(loaded.traces.len(), replays, "load reads the trace of every replay step");
        // Beyond the traces, loading is parsing.
        loaded.traces.clear();
        assert_eq!(kevent_bench::scenario::parse_bytes(&path, text).unwrap(), loaded);
    }
}

#[test]
fn a_file_that_is_not_utf8_loads_as_its_bytes_parse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let bytes = b"description = \"\xc3\xa9\"\n[[step]]\nread = \"\xe2\x82\"\n";
    std::fs::write(&path, bytes).unwrap();
    let e = kevent_bench::scenario::load(&path).unwrap_err();
    assert_eq!(kevent_bench::scenario::parse_bytes(&path, bytes).unwrap_err(), e);
    assert_eq!((e.at.line, e.at.column), (3, 9), "{e}");
    assert!(!fuzzing::check_scenario(bytes));
}

#[test]
fn seeded_scenario_mutants_pass_the_checks() {
    let starters = fuzzing::starters();
    let (mut parsed, mut refused) = (0, 0);
    for seed in 0..MUTANTS {
        let mutant = fuzzing::mutant(&starters, &mut Rng(seed));
        match std::panic::catch_unwind(|| fuzzing::check_scenario(&mutant)) {
            Ok(true) => parsed += 1,
            Ok(false) => refused += 1,
            Err(panic) => {
                eprintln!("seed {seed}, mutant:\n{}", String::from_utf8_lossy(&mutant));
                std::panic::resume_unwind(panic);
            }
        }
    }
    // Mutants that all parse, or all fail, would check half of the promises.
    assert!(parsed > MUTANTS / 10 && refused > MUTANTS / 10, "{parsed} parsed, {refused} refused");
}

/// Deeper than the fuzzers' 4 KiB inputs reach: the TOML parser's
/// recursion limit, not the stack, ends it.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 20_000;
    for text in [
        format!("description = \"x\"\n[params]\nm.{} = 1\n[[step]]\nsleep_ms = 1\n", vec!["k"; depth].join(".")),
        format!("[{}]\n", vec!["k"; depth].join(".")),
        format!("description = {}{}\n", "[".repeat(depth), "]".repeat(depth)),
        format!("description = {}{}\n", "{b=".repeat(depth), "}".repeat(depth)),
    ] {
        assert!(!fuzzing::check_scenario(text.as_bytes()));
    }
}

#[test]
fn seeded_frame_mutants_decode_strictly_and_round_trip() {
    let frames = fuzzing::sample_frames();
    for frame in &frames {
        fuzzing::run("wire_message", &frame[4..]);
        fuzzing::run("wire_stream", &[[0].as_slice(), frame].concat());
    }
    for seed in 0..MUTANTS {
        let mut c = Rng(seed);
        let mut stream: Vec<u8> = Vec::new();
        for _ in 0..=c.below(3) {
            let frame: &Vec<u8> = c.pick(&frames);
            stream.extend_from_slice(frame);
        }
        fuzzing::mutate_bytes(&mut stream, &mut c);
        let sizes = c.below(256) as u8;
        fuzzing::run("wire_stream", &[[sizes].as_slice(), &stream].concat());
        if stream.len() > 4 {
            fuzzing::run("wire_message", &stream[4..]);
        }
    }
}

#[test]
fn seeded_datagram_mutants_decode_or_are_kept_as_malformed() {
    for seed in 0..MUTANTS {
        let mut c = Rng(seed);
        let &(protocol, payload) = c.pick(fuzzing::DATAGRAMS);
        let mut bytes = payload.to_vec();
        fuzzing::mutate_bytes(&mut bytes, &mut c);
        let groups = *c.pick(&[0, 1, 4, 1 << 4, 1 << 5, 3, u32::MAX]);
        fuzzing::check_datagram(protocol, groups, &bytes);
        fuzzing::check_mapping(protocol, groups, &bytes);
    }
}

/// Marshalled messages (a kdbusd signal as the monitor forwards it), cut,
/// flipped and spliced: read or refused with an offset, never a panic.
#[test]
fn seeded_dbus_message_mutants_are_read_or_refused() {
    let seed = fuzzing::sample_dbus_message();
    assert!(kdbusd::message::parse(&seed).is_ok());
    for s in 0..MUTANTS {
        let mut c = Rng(s);
        let mut bytes = seed.clone();
        fuzzing::mutate_bytes(&mut bytes, &mut c);
        fuzzing::check_dbus_message(&bytes);
    }
}

#[test]
fn seeded_module_mutants_are_read_or_refused() {
    let object = fuzzing::elf(fuzzing::MODINFO);
    fuzzing::check_modinfo(&object);
    for seed in 0..MUTANTS {
        let mut c = Rng(seed);
        let mut mutant = object.clone();
        if c.below(2) == 0 {
            fuzzing::mutate_elf(&mut mutant, &mut c);
        } else {
            fuzzing::mutate_bytes(&mut mutant, &mut c);
        }
        fuzzing::check_modinfo(&mutant);
    }
}

/// `fuzz/inputs/TARGET/`: seeds and reproducers, each through its target.
#[test]
fn every_saved_fuzz_input_passes_its_target() {
    let inputs = fuzzing::repo_root().join("fuzz/inputs");
    for target in fuzzing::TARGETS {
        let dir = inputs.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no inputs", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let result = std::panic::catch_unwind(|| fuzzing::run(target, &data));
            if let Err(panic) = result {
                eprintln!("{target}: {} fails", file.display());
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Writes the fuzzers' seeds (`seed-*`) into `fuzz/inputs/`; run by hand
/// after a format change: `cargo test --test fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let inputs = fuzzing::repo_root().join("fuzz/inputs");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = inputs.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };
    // The starters themselves are the text target's seeds (README).
    write("scenario_text", "minimal.toml", b"description = \"x\"\n[[step]]\nsleep_ms = 1\n");
    for (i, &(protocol, payload)) in fuzzing::DATAGRAMS.iter().enumerate() {
        let selector = if protocol == kevent_bench::events::NETLINK_KOBJECT_UEVENT { 0 } else { 1 };
        write("kdbusd_mapping", &format!("{i}"), &[[selector, 4, 0, 0, 0].as_slice(), payload].concat());
    }
    write("dbus_message", "signal", &fuzzing::sample_dbus_message());
    // All zeros: the first starter, with one edit.
    write("scenario_mutants", "zeros", &[0; 16]);
    for (i, frame) in fuzzing::sample_frames().iter().enumerate() {
        write("wire_message", &format!("{i:02}"), &frame[4..]);
    }
    let all: Vec<u8> = fuzzing::sample_frames().concat();
    write("wire_stream", "all-at-once", &[[0].as_slice(), &all].concat());
    write("wire_stream", "in-pieces", &[[0x31].as_slice(), &all].concat());
    for (i, (protocol, payload)) in fuzzing::DATAGRAMS.iter().enumerate() {
        let selector = if *protocol == 15 { 0u8 } else { 1 };
        write("events_decode", &format!("{i}"), &[[selector, 4, 0, 0, 0].as_slice(), payload].concat());
    }
    write("modinfo_object", "kevent_thermal", &fuzzing::elf(fuzzing::MODINFO));
}

/// The starter trace, edited the way the scenario mutants are: every
/// mutant is read whole or refused at a line inside it, never a panic, and
/// what is read keeps the promises a replay relies on.
#[test]
fn seeded_trace_mutants_are_read_or_refused_at_a_line() {
    use kevent_bench::msr_trace::{self, Msr};
    let path = fuzzing::repo_root().join("scenarios/traces/throttling.csv");
    let starter = std::fs::read(&path).unwrap();
    let (mut read, mut refused) = (0, 0);
    for seed in 0..MUTANTS {
        let mut rng = Rng(seed);
        let mut mutant = starter.clone();
        for _ in 0..=rng.below(3) {
            fuzzing::mutate_once(&mut mutant, &mut rng);
        }
        let outcome = std::panic::catch_unwind(|| msr_trace::parse_bytes(&path, &mutant));
        let Ok(outcome) = outcome else {
            eprintln!("seed {seed}, mutant:\n{}", String::from_utf8_lossy(&mutant));
            panic!("the trace parser panicked");
        };
        match outcome {
            Ok(trace) => {
                read += 1;
                let cpus = trace.topology.cpus();
                assert!(cpus <= 8 && cpus as usize == trace.cpus.len(), "seed {seed}: {:?}", trace.topology);
                assert!(trace.rows.windows(2).all(|w| w[0].time_us <= w[1].time_us), "seed {seed}");
                for row in &trace.rows {
                    assert_eq!(row.value & !row.msr.modelled_bits(), 0, "seed {seed}: {row:?}");
                }
                for injection in trace.injections() {
                    assert!(injection.cpu < cpus, "seed {seed}: {injection:?}");
                    if injection.msr == Msr::PackageThermStatus {
                        assert!(trace.topology.package_of(injection.cpu) < trace.topology.packages);
                    }
                }
            }
            Err(e) => {
                refused += 1;
                let lines = mutant.iter().filter(|b| **b == b'\n').count() + 1;
                assert!((1..=lines).contains(&e.line), "seed {seed}: line {} of {lines}: {e}", e.line);
                assert!(!e.message.trim().is_empty(), "seed {seed}");
            }
        }
    }
    assert!(read > MUTANTS / 20 && refused > MUTANTS / 10, "{read} read, {refused} refused");
}
