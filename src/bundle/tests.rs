use std::time::Duration;

use super::*;
use crate::json_lines;

const SCENARIO: &str = "description = \"t\"\n[[step]]\ninject = { cpu = 1, bits = [\"prochot\"] }\n\
                        [[step]]\nread = \"/sys/x\"\n";

fn scenario() -> Scenario {
    scenario::parse(Path::new("scenarios/t.toml"), SCENARIO).unwrap()
}

fn datagram(protocol: u32, bytes: &[u8], at: u64) -> Datagram {
    Datagram { protocol, groups: 1, portid: 0, monotonic_ns: at, bytes: bytes.to_vec() }
}

/// Two steps: an injection with a kmessage and a uevent, a read.
fn steps(seqnum: u32, signal: &str) -> Vec<StepRecord> {
    let mut inject = StepRecord::new(0, "inject cpu 1".into(), 1);
    inject.datagrams = vec![
        datagram(15, format!("change@/d\0ACTION=change\0SEQNUM={seqnum}\0").as_bytes(), 7),
        datagram(31, format!("From: /t\nSignal: {signal}\nCpu: 1\n\0").as_bytes(), 5),
    ];
    inject.elapsed = Duration::from_micros(120);
    let mut read = StepRecord::new(1, "read /sys/x".into(), 1);
    read.outcome = StepOutcome::Read(b"1\n".to_vec());
    vec![inject, read]
}

/// The `run --json --raw` lines of a run with `steps`, ended by `last`.
fn events_jsonl(scenario: &Scenario, steps: &[StepRecord], last: Value) -> String {
    let mut normaliser = Normaliser::default();
    let mut lines = vec![json_lines::start(scenario)];
    for record in steps {
        lines.extend(record.datagrams.iter().map(|d| json_lines::event(record.index + 1, d, &mut normaliser)));
        lines.extend(record.dbus.iter().map(|m| json_lines::dbus(record.index + 1, m)));
        lines.push(json_lines::step(record));
    }
    lines.push(last);
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn summary() -> Value {
    serde_json::json!({ "type": "summary", "scenario": "t" })
}

fn manifest() -> Manifest {
    Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        bench_version: "0.1.0".into(),
        created: "2026-12-02T09:00:00Z".into(),
        scenario: ScenarioInfo { name: "t".into(), file: "scenarios/t.toml".into(), description: "t".into() },
        run: RunInfo::default(),
        machine: MachineInfo {
            cpus: 2,
            topology: None,
            memory_mib: 256,
            clock: "real".into(),
            injector: "device".into(),
            accel: "tcg".into(),
            accel_reason: "asked".into(),
        },
        outcome: OutcomeInfo {
            completed: true,
            exit_code: 0,
            failed_step: None,
            message: None,
            steps: 2,
            kmessages: 1,
            uevents: 1,
            timing_flags: Vec::new(),
            host_elapsed_ms: 900,
        },
        kernel: KernelInfo {
            release: "6.12.117".into(),
            profile: "default".into(),
            tree: "/c/src/linux".into(),
            user_tree: false,
            config_fingerprint: fingerprint(b"CONFIG_PVH=y\n"),
            command_line: "console=ttyS0".into(),
        },
        guest: GuestInfo {
            agent: "a".into(),
            initramfs: "i".into(),
            modules: BTreeMap::from([("kmessage.ko".into(), "m".into())]),
            sources: BTreeMap::from([("kmod/a.c".into(), "1".into()), ("wire/src/lib.rs".into(), "2".into())]),
        },
        qemu: QemuInfo {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            origin: "PATH".into(),
            version: "QEMU emulator version 7.2.22".into(),
            command_line: vec!["-nodefaults".into()],
        },
        source: SourceInfo { commit: Some("b09d976".into()), dirty: Vec::new(), note: None },
        host: HostInfo { kernel: "6.1.0".into(), cpus: 2, tsc_khz: Some(2_000_000) },
        members: Vec::new(),
    }
}

fn members() -> Vec<(&'static str, Vec<u8>)> {
    let s = scenario();
    let steps = steps(812, "high");
    vec![
        (member::SCENARIO, SCENARIO.as_bytes().to_vec()),
        (member::SNAPSHOT, snapshot_text(&snapshot::project(&s, &steps, &[])).into_bytes()),
        (member::EVENTS, events_jsonl(&s, &steps, summary()).into_bytes()),
        (member::CONSOLE, b"[    0.000000] Linux version 6.12.117\n".repeat(50)),
        (member::KERNEL_CONFIG, b"CONFIG_PVH=y\n".to_vec()),
    ]
}

fn bundle_bytes(manifest: &mut Manifest) -> Vec<u8> {
    to_bytes("t-bundle", manifest, &members()).unwrap()
}

fn read(bytes: &[u8]) -> Result<Bundle, BundleError> {
    Bundle::from_bytes(Path::new("/tmp/t.bundle"), bytes)
}

#[test]
fn a_bundle_reads_back_whole_with_its_members_listed_and_fingerprinted() {
    let mut manifest = manifest();
    let bytes = bundle_bytes(&mut manifest);
    assert!(bytes.starts_with(XZ_MAGIC));
    let bundle = read(&bytes).unwrap();
    assert_eq!(bundle.manifest, manifest);
    let names: Vec<&str> = manifest.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["scenario.toml", "snapshot.json", "events.jsonl", "console.log", "kernel.config"]);
    for (name, data) in members() {
        assert_eq!(bundle.member(name), Some(data.as_slice()), "{name}");
    }
    assert_eq!(bundle.text(member::SCENARIO).unwrap(), SCENARIO);
    let scenario = bundle.scenario().unwrap();
    assert_eq!(scenario.name, "t");
    assert_eq!(scenario.path, Path::new("/tmp/t.bundle/t.toml"), "errors in it point into the bundle");
}

#[test]
fn the_archive_is_plain_tar_under_one_directory_with_the_manifest_first() {
    let bytes = bundle_bytes(&mut manifest());
    let tar = unpack(&bytes).ok().unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let names: Vec<String> =
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names[..3], ["t-bundle/", "t-bundle/manifest.json", "t-bundle/scenario.toml"]);
}

#[test]
fn a_bundle_repacked_with_gzip_or_not_compressed_still_reads() {
    let bytes = bundle_bytes(&mut manifest());
    let tar = unpack(&bytes).ok().unwrap();
    read(&tar).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar).unwrap();
    read(&gzip.finish().unwrap()).unwrap();
}

#[test]
fn a_newer_format_is_refused_as_newer_naming_both_versions_and_the_writer() {
    let mut manifest = manifest();
    manifest.format_version = FORMAT_VERSION + 1;
    manifest.bench_version = "0.9.0".into();
    let err = read(&bundle_bytes(&mut manifest)).unwrap_err();
    assert!(matches!(err, BundleError::Newer { found, .. } if found == FORMAT_VERSION + 1));
    assert_eq!(
        err.to_string(),
        format!(
            "/tmp/t.bundle: bundle format version {} is newer than this kevent-bench reads (up to {FORMAT_VERSION}); \
             it was written by kevent-bench 0.9.0: update this checkout to replay it",
            FORMAT_VERSION + 1
        )
    );
}

#[test]
fn a_bundle_cut_short_anywhere_is_refused_as_truncated() {
    let bytes = bundle_bytes(&mut manifest());
    let mut cuts: Vec<usize> = (1..bytes.len()).step_by((bytes.len() / 97).max(1)).collect();
    cuts.extend([1, 5, 6, 12, bytes.len() - 1, bytes.len() - 12]);
    for cut in cuts {
        let err = read(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, BundleError::Corrupt { .. }),
            "cut after {cut} of {} bytes: {err} is not a truncation",
            bytes.len()
        );
        assert!(err.to_string().starts_with("/tmp/t.bundle: the bundle is truncated or corrupt: "), "{err}");
    }
    let err = read(&bytes[..bytes.len() / 2]).unwrap_err().to_string();
    assert!(err.contains("xz stream of") && err.contains(&format!("{} bytes", bytes.len() / 2)), "{err}");
}

#[test]
fn a_tar_cut_short_names_the_last_whole_member_or_the_member_it_cuts() {
    let tar = unpack(&bundle_bytes(&mut manifest())).ok().unwrap();
    // The members and where each starts, read off the headers: name in
    // bytes 0..100, size in octal in 124..136.
    let mut members = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let name = String::from_utf8_lossy(&tar[at..at + 100]).trim_end_matches('\0').to_owned();
        let size = String::from_utf8_lossy(&tar[at + 124..at + 136]).trim_matches(['\0', ' ']).to_owned();
        members.push((name, at));
        at += 512 + usize::from_str_radix(&size, 8).unwrap().next_multiple_of(512);
    }
    assert!(members.len() >= 4, "a directory and three files at least: {members:?}");
    // Into the header of the third file: the directory and two files are whole.
    let err = read(&tar[..members[3].1 + 100]).unwrap_err().to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
    let last = &members[2].0;
    assert!(err.contains(&format!("the tar archive breaks off after {last}")), "{last}: {err}");
    // Into its data: the file is named, with how much of it is there.
    let err = read(&tar[..members[3].1 + 512 + 100]).unwrap_err().to_string();
    let third = &members[3].0;
    assert!(err.contains(&format!("{third}: 100 of its ")), "{third}: {err}");
}

#[test]
fn a_damaged_byte_is_found_by_the_compression_or_the_fingerprints() {
    let bytes = bundle_bytes(&mut manifest());
    for at in [40, bytes.len() / 3, bytes.len() / 2, bytes.len() - 30] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        let err = read(&damaged).unwrap_err();
        assert!(matches!(err, BundleError::Corrupt { .. }), "byte {at}: {err}");
    }
    // A member changed and the archive repacked around it, manifest unchanged.
    let tar = unpack(&bytes).ok().unwrap();
    let text = String::from_utf8_lossy(&tar).into_owned();
    let at = text.find("Linux version 6.12.117").unwrap();
    let mut tampered = tar.clone();
    tampered[at + 14] = b'7';
    let err = read(&tampered).unwrap_err().to_string();
    assert!(err.contains("console.log: ") && err.contains(" bytes with fingerprint "), "{err}");
}

#[test]
fn things_that_are_not_bundles_say_what_they_are() {
    let not = |bytes: &[u8]| match read(bytes).unwrap_err() {
        BundleError::NotABundle { why, .. } => why,
        other => panic!("{other}"),
    };
    assert_eq!(not(b""), "the file is empty");
    assert_eq!(not(b"description = \"a scenario\"\n"), "neither xz, gzip nor tar");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(b"hello").unwrap();
    assert_eq!(not(&gzip.finish().unwrap()), "the compressed data is not a tar archive");
    let mut other = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(3);
    header.set_mode(0o644);
    other.append_data(&mut header, "x/notes.txt", &b"hi\n"[..]).unwrap();
    assert_eq!(not(&other.into_inner().unwrap()), "a tar archive without manifest.json");
}

#[test]
fn a_manifest_that_does_not_parse_says_where() {
    let mut m = manifest();
    m.members = Vec::new();
    let mut archive = tar::Builder::new(Vec::new());
    let data = b"{\"format\": \"kevent-bench reproducer bundle\",\n \"format_version\": 1,\n \"bench_version\": 3}";
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    archive.append_data(&mut header, "b/manifest.json", &data[..]).unwrap();
    let err = read(&archive.into_inner().unwrap()).unwrap_err().to_string();
    assert!(err.starts_with("/tmp/t.bundle: manifest.json: line 3 column "), "{err}");
}

#[test]
fn the_recorded_run_reads_back_as_it_was_run() {
    let s = scenario();
    let original = steps(812, "high");
    let recorded = Recorded::parse(&events_jsonl(&s, &original, summary())).unwrap();
    assert!(recorded.completed && recorded.failure.is_none());
    assert_eq!(recorded.steps.len(), 2);
    for (a, b) in recorded.steps.iter().zip(&original) {
        assert_eq!(
            (a.index, &a.label, a.repeat, &a.outcome, &a.datagrams),
            (b.index, &b.label, b.repeat, &b.outcome, &b.datagrams)
        );
        assert_eq!(a.elapsed, b.elapsed);
    }
    // The D-Bus channel reads back byte for byte.
    let mut with_bus = original.clone();
    let signal = kdbusd::message::marshal_signal(3, "/org/kernel/x", "org.kernel.Power", "high", &[]).unwrap();
    with_bus[0].dbus.push(kevent_wire::DbusMessage { monotonic_ns: 77, bytes: signal });
    let recorded = Recorded::parse(&events_jsonl(&s, &with_bus, summary())).unwrap();
    assert_eq!(recorded.steps[0].dbus, with_bus[0].dbus);
    assert!(recorded.steps[1].dbus.is_empty());
    let failure = json_lines::failure(Some(3), "step 3 (read /x): kernel oops", 11);
    let partial = events_jsonl(&s, &original, failure);
    let recorded = Recorded::parse(&partial).unwrap();
    assert_eq!(recorded.failure, Some((Some(3), "step 3 (read /x): kernel oops".into(), 11)));
    assert!(!recorded.completed);
}

#[test]
fn a_recording_cut_short_or_out_of_order_is_refused_with_its_line() {
    let s = scenario();
    let text = events_jsonl(&s, &steps(1, "high"), summary());
    let lines: Vec<&str> = text.lines().collect();
    let without_last = lines[..lines.len() - 1].join("\n");
    assert_eq!(
        Recorded::parse(&without_last).unwrap_err(),
        "ends with neither a summary nor a failure line: cut short"
    );
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    assert!(Recorded::parse(&swapped.join("\n")).unwrap_err().starts_with("line 4: "));
    let broken = text.replacen("\"bytes\":\"change@", "\"bytes\":\"\\\\q", 1);
    let err = Recorded::parse(&broken).unwrap_err();
    assert!(err.starts_with("line 2: \"bytes\": character 0: unknown escape"), "{err}");
}

fn view<'a>(scenario: &'a Scenario, steps: &'a [StepRecord]) -> RunView<'a> {
    RunView { scenario, steps, background: &[], completed: true, exit_code: 0, failed_step: None }
}

#[test]
fn the_same_events_match_whatever_their_seqnums_and_times() {
    let s = scenario();
    let (a, mut b) = (steps(812, "high"), steps(4000, "high"));
    b[0].datagrams.iter_mut().for_each(|d| d.monotonic_ns += 1_000_000);
    b[0].datagrams.reverse();
    let comparison = compare(&view(&s, &a), &view(&s, &b));
    assert_eq!(
        comparison,
        Comparison { matches: true, endings: None, snapshot_diff: None, first_event_difference: None }
    );
}

#[test]
fn a_different_event_is_a_mismatch_with_a_diff_and_the_first_difference() {
    let s = scenario();
    let (a, b) = (steps(812, "high"), steps(812, "normal"));
    let comparison = compare(&view(&s, &a), &view(&s, &b));
    assert!(!comparison.matches);
    let diff = comparison.snapshot_diff.unwrap();
    assert!(diff.starts_with("--- bundle\n+++ this run\n"), "{diff}");
    assert!(diff.contains("-            \"signal\": \"high\",\n+            \"signal\": \"normal\","), "{diff}");
    let first = comparison.first_event_difference.unwrap();
    assert!(first.starts_with("step 1, event 1 of 2: the bundle has {\"kmessage\":"), "{first}");
}

#[test]
fn a_failure_reproduced_matches_and_a_fixed_one_does_not() {
    let s = scenario();
    let a = steps(812, "high");
    let failed = RunView { completed: false, exit_code: 11, failed_step: Some(2), ..view(&s, &a[..1]) };
    assert!(compare(&failed, &failed.clone()).matches);
    let comparison = compare(&failed, &view(&s, &a));
    assert!(!comparison.matches);
    assert_eq!(comparison.endings, Some(("failed at step 2 with exit code 11".into(), "completed every step".into())));
}

#[test]
fn environment_differences_name_each_thing_that_changed() {
    let old = manifest();
    assert!(environment_differences(&old, &old, ("", "")).is_empty());
    let mut remeasured = manifest();
    remeasured.host.tsc_khz = Some(2_001_000);
    remeasured.kernel.command_line = "console=ttyS0 tsc_early_khz=2001000".into();
    assert!(environment_differences(&old, &remeasured, ("", "")).is_empty(), "a TSC measured 0.05 % apart is the same");
    let mut new = manifest();
    new.kernel.release = "6.12.118".into();
    new.qemu.version = "QEMU emulator version 8.2.0".into();
    new.host.tsc_khz = Some(3_000_000);
    new.guest.sources.insert("kmod/a.c".into(), "changed".into());
    new.guest.sources.insert("kdbusd/src/main.rs".into(), "3".into());
    new.guest.sources.insert("tests/guest/new.c".into(), "4".into());
    new.source.commit = Some("abc1234".into());
    let lines = environment_differences(&old, &new, ("CONFIG_A=y\n# CONFIG_B is not set\n", "CONFIG_B=y\n"));
    assert_eq!(
        lines,
        [
            "kernel release: 6.12.117 in the bundle, 6.12.118 here",
            "QEMU: QEMU emulator version 7.2.22 in the bundle, QEMU emulator version 8.2.0 here",
            "host TSC (the guest's clock rate): 2000000 kHz in the bundle, 3000000 kHz here",
            "kernel .config: CONFIG_A: y -> n, CONFIG_B: n -> y",
            "module sources: kmod/a.c changed",
            "kdbusd sources: kdbusd/src/main.rs added",
            "other guest sources: tests/guest/new.c added",
            "bench commit: b09d976 in the bundle, abc1234 here",
        ]
    );
}

#[test]
fn times_are_rfc3339_utc_both_ways() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_796_201_999), "2026-12-02T08:59:59Z");
    for secs in [0, 951_782_400, 1_796_201_999, 4_102_444_800] {
        assert_eq!(created_seconds(&rfc3339(secs)), Some(secs));
    }
    assert_eq!(created_seconds("yesterday"), None);
}

#[test]
fn events_that_end_otherwise_than_the_manifest_says_are_refused() {
    let bundle = read(&bundle_bytes(&mut manifest())).unwrap();
    assert_eq!(bundle.recorded().unwrap().steps.len(), 2, "a completed run of two steps, as its manifest says");
    let mut failed = manifest();
    failed.outcome = OutcomeInfo {
        completed: false,
        exit_code: 37,
        failed_step: Some(3),
        message: Some("the guest's D-Bus side failed".into()),
        ..failed.outcome
    };
    let err = read(&bundle_bytes(&mut failed)).unwrap().recorded().unwrap_err().to_string();
    assert!(
        err.contains(
            "events.jsonl: it ends with a summary line after 2 step(s), and manifest.json's outcome says completed \
             false, exit code 37, failed step 3, 2 step(s)"
        ),
        "{err}"
    );
}

#[test]
fn overrides_apply_in_order_and_say_what_they_replaced_or_why_they_cannot() {
    let mut s = scenario();
    let overrides = Overrides {
        cpus: None,
        topology: Some("2x2".into()),
        memory_mib: Some(512),
        clock: Some("virtual".into()),
        injector: Some("debugfs".into()),
    };
    let applied = overrides.apply(&mut s).unwrap();
    let said: Vec<(&str, &str, &str)> =
        applied.iter().map(|a| (a.field.name(), a.now.as_str(), a.scenario_said.as_str())).collect();
    assert_eq!(
        said,
        [
            ("topology", "2 packages × 2 cores", "2 packages × 1 core"),
            ("memory_mib", "512 MiB", "256 MiB"),
            ("clock", "virtual clock", "real clock"),
            ("injector", "debugfs", "device"),
        ]
    );
    assert_eq!((s.machine.topology, s.machine.memory_mib), (crate::Topology::new(2, 2).unwrap(), 512));
    // Step 1 injects at CPU 1: one CPU would lose it.
    let err = Overrides { cpus: Some(1), ..Overrides::default() }.apply(&mut scenario()).unwrap_err();
    assert_eq!(err.field, OverrideField::Cpus);
    assert!(err.why.starts_with("1: "), "{err:?}");
    let err = Overrides { clock: Some("fast".into()), ..Overrides::default() }.apply(&mut scenario()).unwrap_err();
    assert_eq!((err.field, err.why.as_str()), (OverrideField::Clock, "\"fast\" is no clock (real, virtual)"));
}

#[test]
fn each_override_field_is_named_as_the_manifest_spells_it() {
    let all = Overrides {
        cpus: Some(2),
        topology: Some("2x1".into()),
        memory_mib: Some(256),
        clock: Some("real".into()),
        injector: Some("device".into()),
    };
    let manifest = serde_json::to_value(&all).unwrap();
    let mut keys: Vec<&str> = manifest.as_object().unwrap().keys().map(String::as_str).collect();
    let mut names: Vec<&str> = OverrideField::ALL.iter().map(|f| f.name()).collect();
    keys.sort_unstable();
    names.sort_unstable();
    assert_eq!(keys, names);
}

#[test]
fn a_runs_dyndbg_queries_come_back_as_queries_and_a_bad_record_refuses_the_bundle() {
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut manifest = manifest();
    manifest.run.append = words(&["initcall_debug", "kmessage.dyndbg=\"+p\"", "loglevel=8"]);
    manifest.run.dyndbg = words(&["module kmessage +p"]);
    let bundle = read(&bundle_bytes(&mut manifest)).unwrap();
    let (queries, appended) = bundle.dyndbg().unwrap();
    assert_eq!(queries.iter().map(|q| q.text.as_str()).collect::<Vec<_>>(), ["module kmessage +p"]);
    assert_eq!(appended, ["initcall_debug"]);

    // A version 1 manifest, as a version 1 bench wrote it, has no
    // run.dyndbg: it reads, and its run gives every added word again.
    let mut v1 = serde_json::to_value(&manifest).unwrap();
    v1["format_version"] = 1.into();
    assert!(v1["run"].as_object_mut().unwrap().remove("dyndbg").is_some());
    let mut old: Manifest = serde_json::from_value(v1).expect("a version 1 manifest reads");
    assert!(old.run.dyndbg.is_empty());
    let bundle = read(&bundle_bytes(&mut old)).unwrap();
    assert_eq!(bundle.dyndbg().unwrap(), (Vec::new(), old.run.append.as_slice()));

    for (dyndbg, why) in [
        ("module kmessage", "run.dyndbg: --dyndbg \"module kmessage\": "),
        ("module kevent_thermal +p", "does not end with the kernel words of run.dyndbg"),
    ] {
        let mut bad = manifest.clone();
        bad.run.dyndbg = words(&[dyndbg]);
        let err = read(&bundle_bytes(&mut bad)).unwrap().dyndbg().unwrap_err();
        assert!(err.to_string().contains("manifest.json") && err.to_string().contains(why), "{dyndbg}: {err}");
    }
}

#[test]
fn a_traced_runs_events_read_back() {
    let s = scenario();
    let steps = steps(812, "high");
    let mut text = events_jsonl(&s, &steps, summary());
    let trace_line = json_lines::partial_trace(Path::new("/r/trace.txt"), 512);
    text.insert_str(text.rfind("{\"").unwrap(), &format!("{trace_line}\n"));
    let recorded = Recorded::parse(&text).unwrap();
    assert!(recorded.completed);
    assert_eq!(recorded.steps.len(), 2);
}

#[test]
fn a_d_bus_runs_backlog_lines_read_back_and_say_nothing_of_the_steps() {
    let s = scenario();
    let steps = steps(812, "high");
    let mut text = events_jsonl(&s, &steps, summary());
    let held = crate::dbus::Backlog {
        name: ":1.3".into(),
        pid: Some(51),
        command: "kevent-dbus-tap".into(),
        messages: 1924,
        bytes: 2062968,
        peak_bytes: 2062968,
    };
    let lines = [json_lines::bus_backlog(&held), json_lines::bus_backlog_unknown("no bus")];
    text.insert_str(text.rfind("{\"").unwrap(), &lines.map(|l| format!("{l}\n")).concat());
    let recorded = Recorded::parse(&text).unwrap();
    assert!(recorded.completed);
    let labels = |r: &Recorded| r.steps.iter().map(|s| (s.label.clone(), s.datagrams.len())).collect::<Vec<_>>();
    assert_eq!(labels(&recorded), labels(&Recorded::parse(&events_jsonl(&s, &steps, summary())).unwrap()));
}
