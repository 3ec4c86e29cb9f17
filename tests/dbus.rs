//! The guest's D-Bus side (docs/dbus.md): Debian's dbus-daemon, kdbusd
//! and the agent's monitor, really started in the guest; every event of a
//! step reaches the host as a signal before the step's reply, and a dead
//! program of the side fails the run with its own exit code and its last
//! words.

mod common;

use std::path::PathBuf;

use kevent_bench::dbus;
use kevent_bench::runner;
use kevent_bench::scenario;
use kevent_bench::transcript::{StepOutcome, StepRecord};
use kevent_bench::{exit_code, Failure};
use kevent_wire::Datagram;

/// The D-Bus guest's archive with the tests' programs appended.
fn initramfs_with(test: &str, programs: &[&str]) -> (PathBuf, PathBuf) {
    common::initramfs_with_programs(test, programs, &common::artifacts().dbus_initramfs)
}

fn entries(record: &StepRecord) -> Vec<dbus::DbusEntry> {
    dbus::entries(&record.dbus, &kevent_bench::snapshot::channel_order(&record.datagrams))
}

#[test]
fn every_event_of_a_step_is_a_signal_on_the_guests_bus_before_its_reply() {
    let (dir, initramfs) = initramfs_with("dbus-signals", &["kmsg-send"]);
    let scenario = scenario::parse(
        &dir.join("dbus-signals.toml"),
        r#"
description = "kdbusd relays the seed's event, and names the module never sends"
[machine]
dbus = true
[params]
kevent_thermal.rate_limit_ms = 0
[[step]]
inject = { cpu = 1, bits = ["prochot"] }
[[step]]
exec = { program = "/bin/kmsg-send", args = ["4", "From: /org/kernel/block/sda-1\nSignal: media-change\nDev: 8:1\n"] }
[[step]]
exec = { program = "/bin/kmsg-send", args = ["0", "Signal: no from line\n"] }
[[step]]
exec = { program = "/bin/kmsg-send", args = ["0", "From: /org/kernel/t\nSignal: general\n"] }
[[step]]
exec = { program = "/bin/kmsg-send", args = ["1", "From: /org/kernel/t\nSignal: storage\n"] }
[[step]]
exec = { program = "/bin/kmsg-send", args = ["2", "From: /org/kernel/t\nSignal: power\n"] }
[[step]]
exec = { program = "/bin/kmsg-send", args = ["3", "From: /org/kernel/t\nSignal: fs\n"] }
[[step]]
exec = { program = "/bin/kmsg-send", args = ["4", "From: /org/kernel/t\nSignal: hotplug\n"] }
"#,
    )
    .unwrap();
    let mut guest = scenario.guest(&common::artifacts());
    guest.initramfs = initramfs;
    let transcript = runner::run(&scenario, &common::config("dbus-signals", guest), &mut |_| {})
        .unwrap_or_else(|f| panic!("{}", f.report()));

    assert_eq!(transcript.bus_backlog, Ok(vec![]), "every connection on the bus kept up");

    // The seed's event: two datagrams, two signals, each exactly the
    // mapping of the datagram it carries, before the step's reply.
    let inject = &transcript.steps[0];
    assert_eq!(inject.datagrams.len(), 2, "{:?}", inject.datagrams);
    let got: Vec<String> = entries(inject)
        .into_iter()
        .map(|e| format!("{} {:?} {:?} {:?}", e.message, e.path, e.carries, e.wrong))
        .collect();
    assert_eq!(
        got,
        [
            "signal org.kernel.Power.high Some(\"/org/kernel/devices/system/cpu/temperature\") Some(\"kmessage 1\") None",
            "signal org.kernel.Uevent.change Some(\"/org/kernel/devices/system/cpu/cpu1\") Some(\"uevent 1\") None",
        ]
    );

    // An object path and a signal word D-Bus does not allow are escaped,
    // not dropped; the datagram is in the signal whole.
    let sent = &transcript.steps[1];
    assert!(matches!(&sent.outcome, StepOutcome::Ran(r) if r.exit_code == 0), "{:?}", sent.outcome);
    let [entry] = &entries(sent)[..] else { panic!("{:?}", entries(sent)) };
    assert_eq!(entry.message, "signal org.kernel.Hotplug.media_2dchange");
    assert_eq!(entry.path.as_deref(), Some("/org/kernel/block/sda_2d1"));
    assert_eq!((entry.carries.as_deref(), entry.wrong.as_deref()), (Some("kmessage 1"), None));
    assert_eq!(entry.args, ["aux \"Dev: 8:1\\n\"", "fields {\"Dev\": \"8:1\"}"]);

    // A datagram that is no kmessage is a Malformed signal from kdbusd
    // itself, with why and the bytes.
    let malformed = &transcript.steps[2];
    let [entry] = &entries(malformed)[..] else { panic!("{:?}", entries(malformed)) };
    assert_eq!(entry.message, "signal org.kernel.Events.Malformed");
    assert_eq!(entry.path.as_deref(), Some("/org/kernel/Events"));
    assert_eq!((entry.carries.as_deref(), entry.wrong.as_deref()), (Some("kmessage 1"), None));
    assert_eq!(entry.args[0], "why \"does not start with \\\"From: \\\"\"");

    // Each of the five kmessage types has its interface.
    let interfaces: Vec<String> = transcript.steps[3..8]
        .iter()
        .map(|step| {
            let [entry] = &entries(step)[..] else { panic!("{:?}", entries(step)) };
            assert_eq!((entry.carries.as_deref(), entry.wrong.as_deref()), (Some("kmessage 1"), None));
            entry.message.clone()
        })
        .collect();
    assert_eq!(
        interfaces,
        [
            "signal org.kernel.General.general",
            "signal org.kernel.Storage.storage",
            "signal org.kernel.Power.power",
            "signal org.kernel.Fs.fs",
            "signal org.kernel.Hotplug.hotplug"
        ]
    );
}

#[test]
fn a_dead_kdbusd_fails_the_run_with_its_own_code() {
    let (dir, initramfs) = initramfs_with("kdbusd-dies", &["kill-by-name"]);
    let scenario = scenario::parse(
        &dir.join("kdbusd-dies.toml"),
        r#"
description = "kdbusd is killed"
[machine]
dbus = true
[[step]]
exec = { program = "/bin/kill-by-name", args = ["kdbusd"] }
[[step]]
read = "/proc/uptime"
"#,
    )
    .unwrap();
    let mut guest = scenario.guest(&common::artifacts());
    guest.initramfs = initramfs;
    let failure = runner::run(&scenario, &common::config("kdbusd-dies", guest), &mut |_| {})
        .expect_err("the run must fail once kdbusd is dead");
    assert_eq!(failure.exit_code(), exit_code::DBUS_FAILED, "{}", failure.report());
    let Failure::AtStep { step: 1, failure: inner, .. } = &failure else { panic!("{}", failure.report()) };
    let Failure::DbusFailed { why, services, .. } = inner.as_ref() else { panic!("{}", failure.report()) };
    assert_eq!(why, "kdbusd was killed by SIGKILL");
    let named: Vec<(&str, &str)> = services.iter().map(|s| (s.program.as_str(), s.status.as_str())).collect();
    assert_eq!(named, [("kdbusd", "was killed by SIGKILL")], "the bus and the monitor live on");
}

#[test]
fn a_dead_bus_daemon_fails_the_run_with_its_own_code_and_the_last_words_and_loses_nothing() {
    let (dir, initramfs) = initramfs_with("dbus-dies", &["kill-by-name"]);
    let scenario = scenario::parse(
        &dir.join("dbus-dies.toml"),
        r#"
description = "dbus-daemon is killed"
[machine]
dbus = true
[params]
kevent_thermal.rate_limit_ms = 0
[[step]]
inject = { cpu = 0, bits = ["prochot"] }
[[step]]
exec = { program = "/bin/kill-by-name", args = ["dbus-daemon"] }
[[step]]
inject = { cpu = 1, bits = ["prochot"] }
"#,
    )
    .unwrap();
    let mut guest = scenario.guest(&common::artifacts());
    guest.initramfs = initramfs;
    let mut finished = Vec::new();
    let failure = runner::run(&scenario, &common::config("dbus-dies", guest), &mut |r| finished.push(r.clone()))
        .expect_err("the run must fail once dbus-daemon is dead");
    assert_eq!(failure.exit_code(), exit_code::DBUS_FAILED, "{}", failure.report());
    assert_eq!(failure.exit_code(), 37, "README's table says 37");

    // What was captured before is kept: the first step, whole.
    assert_eq!(finished.len(), 1, "{}", failure.report());
    assert_eq!(finished[0].datagrams.len(), 2);
    assert_eq!(finished[0].dbus.len(), 2, "the first step's signals");

    let Failure::AtStep { step, failure: inner, .. } = &failure else { panic!("{}", failure.report()) };
    assert_eq!(*step, 2, "{}", failure.report());
    let Failure::DbusFailed { why, services, .. } = inner.as_ref() else { panic!("{}", failure.report()) };
    assert_eq!(why, "dbus-daemon was killed by SIGKILL", "{}", failure.report());
    let named: Vec<(&str, &str)> = services.iter().map(|s| (s.program.as_str(), s.status.as_str())).collect();
    assert_eq!(named[0], ("dbus-daemon", "was killed by SIGKILL"), "the bus daemon first: {named:?}");
    // kdbusd lost its bus and said so before it exited: its last words.
    let kdbusd = services.iter().find(|s| s.program == "kdbusd").unwrap_or_else(|| panic!("{named:?}"));
    assert_eq!(kdbusd.status, "exited with code 1");
    let words = String::from_utf8_lossy(&kdbusd.last_words);
    assert!(words.contains("kdbusd: "), "{words:?}");
    let report = failure.report();
    assert!(report.contains("dbus-daemon was killed by SIGKILL"), "{report}");
    assert!(report.contains(words.trim()), "the report shows the last words: {report}");
}

#[test]
fn the_bus_queues_a_burst_for_a_subscriber_that_reads_nothing_and_keeps_it_connected() {
    // The slow-subscriber scenario's claim, from dbus-daemon's own
    // accounting: its snapshot shows that no signal is lost and nobody is
    // disconnected, but not where the signals the stalled subscriber never
    // read went. Its socket takes about 200 KiB; the burst's 2000 signals
    // are several times that.
    let scenario = scenario::parse(
        std::path::Path::new("dbus-held.toml"),
        r#"
description = "a stalled subscriber through a burst, then what the bus holds for it"
[machine]
dbus = true
[params]
kevent_thermal.rate_limit_ms = 0
[[step]]
exec = { program = "/sbin/kevent-dbus-tap", args = ["stall"] }
[[step]]
inject = { cpu = 1, bits = ["prochot"] }
repeat = 1000
[[step]]
exec = { program = "/sbin/kevent-dbus-tap", args = ["held", ":1.3"] }
"#,
    )
    .unwrap();
    let guest = scenario.guest(&common::artifacts());
    let transcript = runner::run(&scenario, &common::config("dbus-held", guest), &mut |_| {})
        .unwrap_or_else(|f| panic!("{}", f.report()));
    let stdout = |step: usize| match &transcript.steps[step].outcome {
        StepOutcome::Ran(r) => {
            assert_eq!(r.exit_code, 0, "step {step}: {}", String::from_utf8_lossy(&r.stderr));
            String::from_utf8_lossy(&r.stdout).into_owned()
        }
        other => panic!("step {step}: {other:?}"),
    };
    // The bus names connections in the order they come: kdbusd, the
    // agent's two, then the subscriber; the held step names it so.
    assert_eq!(stdout(0), ":1.3 subscribed to every signal and reads none from now on\n");
    let mapped = entries(&transcript.steps[1]).iter().filter(|e| e.is_mapped()).count();
    assert_eq!(mapped, 2000, "the monitor lost nothing to the stalled subscriber");
    let held = stdout(2);
    let figure = |key: &str| -> u64 {
        let line = held.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {held}"));
        line.trim_start_matches(": ").parse().unwrap_or_else(|e| panic!("{key}{line}: {e}"))
    };
    assert!(held.contains("UniqueName: :1.3"), "{held}");
    // Still connected (the call would have failed otherwise), and the bus
    // holds what its full socket would not take.
    let (messages, bytes, peak) = (figure("OutgoingMessages"), figure("OutgoingBytes"), figure("PeakOutgoingBytes"));
    assert!(messages > 0 && bytes > 0, "the bus holds nothing for the stalled subscriber:\n{held}");
    assert!(peak >= bytes, "{held}");
    assert!(messages < 2000, "its socket took some first:\n{held}");
    eprintln!("dbus-daemon holds {messages} messages, {bytes} bytes (peak {peak}) for the stalled subscriber");

    // And the run says so as it ends, naming the subscriber's process.
    let [backlog] = transcript.bus_backlog.as_deref().unwrap_or_else(|why| panic!("{why}")) else {
        panic!("{:?}", transcript.bus_backlog)
    };
    assert_eq!((backlog.name.as_str(), backlog.command.as_str()), (":1.3", "kevent-dbus-tap"), "{backlog:?}");
    assert!(backlog.pid.is_some_and(|pid| pid > 1), "{backlog:?}");
    assert!(backlog.messages >= messages && backlog.bytes >= bytes, "nothing read it since: {backlog:?}\n{held}");
}

/// Reads `child`'s stdout on a thread; `wait_for` returns once the text so
/// far contains `needle` (bounded).
struct Output {
    text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Output {
    fn of(child: &mut std::process::Child) -> Output {
        use std::io::Read;
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stdout = child.stdout.take().unwrap();
        let kept = std::sync::Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    return;
                }
                kept.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Output { text }
    }

    fn wait_for(&self, needle: &str) -> String {
        let found =
            kevent_bench::wait::until(std::time::Duration::from_secs(60), std::time::Duration::from_millis(20), || {
                let text = self.text.lock().unwrap();
                text.contains(needle).then(|| text.clone())
            });
        found.unwrap_or_else(|| panic!("no {needle:?} within 60 s in:\n{}", self.text.lock().unwrap()))
    }
}

/// `--dbus-socket`: Debian's dbus-monitor, run on the host as an ordinary
/// user (nobody), sees kdbusd's signals of an injection live, through the
/// second virtio-serial port and the guest's relay.
#[test]
fn debians_dbus_monitor_on_the_host_sees_the_guests_signals_as_an_ordinary_user() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "dbus-socket-dir");
    std::fs::create_dir_all(&dir).unwrap();
    // The socket's directory is the user's to reach; QEMU makes the socket.
    let socket = dir.join("bus");
    let mut guest = artifacts.with_dbus(artifacts.guest(
        2,
        256,
        vec![kevent_wire::module_param_arg("kevent_thermal", "rate_limit_ms", "0")],
    ));
    guest.dbus_socket = Some(socket.clone());
    let mut machine = common::boot(&common::config("dbus-socket", guest));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    let mut monitor = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "dbus-monitor", "--address"])
        .arg(format!("unix:path={}", socket.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dbus-monitor (Debian's dbus-bin)");
    let output = Output::of(&mut monitor);
    // BecomeMonitor's answer: the monitor's connection loses its unique name.
    output.wait_for("member=NameLost");

    let exchange = machine
        .request(kevent_wire::Command::Inject { package: false, cpu: 1, value: 0x8032_0001 }, common::BOUND)
        .unwrap();
    assert_eq!(exchange.outcome, kevent_wire::Outcome::Done);
    // The agent's monitor saw both signals before the reply (and the host
    // client's own traffic with the bus before them: it sees everything).
    let datagrams: Vec<&Datagram> = exchange.datagrams.iter().collect();
    let carried = dbus::entries(&exchange.dbus, &datagrams).into_iter().filter(|e| e.carries.is_some()).count();
    assert_eq!(carried, 2, "{:?}", dbus::entries(&exchange.dbus, &datagrams));
    let text = output.wait_for("member=change");
    let _ = monitor.kill();
    let _ = monitor.wait();
    common::shut_down(machine);
    assert!(
        text.contains("path=/org/kernel/devices/system/cpu/temperature; interface=org.kernel.Power; member=high"),
        "{text}"
    );
    assert!(text.contains("string \"Cpu: 1\n\""), "{text}");
    assert!(
        text.contains("path=/org/kernel/devices/system/cpu/cpu1; interface=org.kernel.Uevent; member=change"),
        "{text}"
    );
    assert!(text.contains("string \"KEVENT_SIGNAL\"\n         string \"high\""), "{text}");
}
