//! gdb on the real guest (`run --gdb`): Debian's gdb attaches to QEMU's
//! gdbstub with the command the bench prints, loads the modules' symbols
//! with the kernel's `lx-symbols`, stops in the thermal handler at an
//! injection, and holds the guest longer than the host's bound on that
//! injection, which must not run out meanwhile.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kevent_bench::gdb::{self, Endpoint, GdbStub};
use kevent_bench::sensor::Register;

/// PROCHOT at 95 °C under TjMax 100.
const PROCHOT_95C: u64 = 0x8005_0001;
/// The host's bound on the injection's acknowledgement in this test.
const ACK_BOUND: Duration = Duration::from_secs(10);
/// How long gdb holds the guest at the breakpoint: longer than the bound.
const HOLD_SECS: u64 = 15;
/// What gdb says (through a shell) once the breakpoint is set: the guest
/// takes the injection when gdb continues it right after.
const READY: &str = "kevent-bench-test: breakpoint set";
/// Bound of gdb's own steps (attach, lx-symbols, the breakpoint).
const GDB_BOUND: Duration = Duration::from_secs(300);

#[test]
fn gdb_stops_in_the_thermal_handler_and_the_hosts_wait_outlasts_the_hold() {
    let artifacts = common::artifacts();
    let modules_dir = artifacts.modules[0].parent().unwrap().to_owned();
    let symbols = gdb::Symbols::of(&artifacts.vmlinux, &modules_dir);
    if !symbols.dwarf || !symbols.scripts {
        // The default profile: no DWARF, no lx-symbols; the debug profile
        // (`cargo xtask test` runs it second) has both.
        eprintln!(
            "SKIPPED: the {} kernel has no DWARF or gdb scripts; the debug profile runs this test",
            artifacts.profile
        );
        return;
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
    let endpoint = Endpoint::Tcp(port);
    let mut config = common::config_with_params("gdb", &[("kevent_thermal", "rate_limit_ms", "0")]);
    config.gdb = Some(GdbStub { endpoint: endpoint.clone(), wait: false });
    config.timeouts.sensor_ack = ACK_BOUND;
    let mut machine = common::boot(&config);

    // The printed command, made batch, then the session.
    let mut words = gdb::command(&endpoint, &symbols);
    words.splice(1..1, ["-batch".to_owned(), "-nx".to_owned()]);
    // gdb's own output is buffered into a pipe; a shell's is not.
    let ready = format!("shell echo {READY} >&2");
    for command in [
        "break kt_thermal_interrupt",
        &ready,
        "continue",
        "bt",
        &format!("shell sleep {HOLD_SECS}"),
        "delete",
        "detach",
    ] {
        words.extend(["-ex".to_owned(), command.to_owned()]);
    }
    let mut gdb = Command::new(&words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gdb (a prerequisite: cargo xtask build installs it)");
    let (lines, output) = mpsc::channel();
    let stdout = gdb.stdout.take().unwrap();
    let stderr = gdb.stderr.take().unwrap();
    let err_lines = lines.clone();
    std::thread::spawn(move || {
        BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| {
            let _ = err_lines.send(l);
        })
    });
    std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| {
            let _ = lines.send(l);
        })
    });
    let mut transcript = Vec::new();
    let deadline = Instant::now() + GDB_BOUND;
    while !transcript.iter().any(|l: &String| l == READY) {
        let left = deadline.saturating_duration_since(Instant::now());
        match output.recv_timeout(left) {
            Ok(line) => transcript.push(line),
            Err(e) => panic!("gdb did not set its breakpoint ({e}):\n{}", transcript.join("\n")),
        }
    }

    let fired = Instant::now();
    let published = machine.fire(1, Register::Core, PROCHOT_95C).unwrap_or_else(|f| panic!("{}", f.report()));
    let refused =
        machine.wait_acked(published).unwrap_or_else(|f| panic!("{}\ngdb:\n{}", f.report(), transcript.join("\n")));
    let waited = fired.elapsed();
    assert_eq!(refused, None);
    let status = gdb.wait().unwrap();
    transcript.extend(output.try_iter());
    let text = transcript.join("\n");
    assert!(status.success(), "gdb: {status}\n{text}");

    // The breakpoint in the module's handler, found by lx-symbols.
    assert!(text.lines().any(|l| l.contains("hit Breakpoint 1, kt_thermal_interrupt (")), "{text}");
    assert!(text.contains("kevent_thermal.ko"), "lx-symbols loaded the module: {text}");
    let frames: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert!(frames[0].contains("kt_thermal_interrupt"), "{frames:#?}");
    // Called from the device's vector handler, in the kernel's IRQ entry.
    assert!(frames.iter().any(|f| f.contains(" kt_ring_irq (")), "{frames:#?}");
    assert!(frames.iter().any(|f| f.contains("handle_irq_event")), "{frames:#?}");
    assert!(frames.iter().any(|f| f.contains("common_interrupt")), "{frames:#?}");
    // kt_thermal_interrupt is in kthermal_irq.c, with DWARF's lines.
    assert!(frames[0].contains("kthermal_irq.c:"), "{frames:#?}");

    // The guest was held longer than the bound, and the wait outlasted it.
    assert!(waited > Duration::from_secs(HOLD_SECS), "acknowledged after {waited:?}");
    let datagrams = machine.fence(common::BOUND).unwrap().datagrams;
    assert_eq!(common::kmessages(&datagrams).len(), 1, "the handler ran on once gdb detached");
    common::shut_down(machine);
}
