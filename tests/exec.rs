//! An exec step runs a program the user brought into the initramfs: here a
//! static listener of the tests' own, unprivileged, in the background.

mod common;

use kevent_bench::runner;
use kevent_bench::scenario;
use kevent_bench::transcript::StepOutcome;

#[test]
fn a_users_own_unprivileged_listener_receives_the_seed_payload() {
    let artifacts = common::artifacts();
    let (dir, initramfs_path) = common::initramfs_with_programs("exec", &["kmsg-listen"], &artifacts.initramfs);

    let scenario = scenario::parse(
        &dir.join("exec.toml"),
        r#"
description = "a user's listener in the background"
[params]
kevent_thermal.rate_limit_ms = 0
[[step]]
exec = { program = "/bin/kmsg-listen", background = true }
[[step]]
sleep_ms = 500
[[step]]
inject = { cpu = 1, bits = ["prochot"] }
[[step]]
exec = { program = "/bin/kmsg-listen-missing" }
"#,
    )
    .unwrap();
    let mut guest = scenario.guest(&artifacts);
    guest.initramfs = initramfs_path;
    let transcript = runner::run(&scenario, &common::config("exec", guest), &mut |_| {})
        .unwrap_or_else(|f| panic!("{}", f.report()));

    let [listener] = &transcript.background[..] else { panic!("{:?}", transcript.background) };
    let stdout = String::from_utf8_lossy(&listener.stdout);
    let stderr = String::from_utf8_lossy(&listener.stderr);
    assert_eq!((listener.exit_code, listener.signal), (0, 0), "stdout {stdout:?} stderr {stderr:?}");
    assert_eq!(
        stdout,
        "uid 65534 bytes 70 groups 0x4 pid 0\nFrom: /org/kernel/devices/system/cpu/temperature\\nSignal: high\\nCpu: 1\\n\\0\n"
    );
    // A program that is not there is an error of its step, named.
    let missing = &transcript.steps[3];
    let StepOutcome::Failed { errno, message } = &missing.outcome else { panic!("{:?}", missing.outcome) };
    assert_eq!(*errno, libc::ENOENT, "{message}");
    assert!(message.contains("/bin/kmsg-listen-missing"), "{message}");
}

#[test]
fn what_a_step_brings_back_is_bounded_and_a_larger_file_is_refused_by_name() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "bounded-initramfs");
    let mut extra = common::guest_programs(&["flood"], &dir);
    extra.file("/big", 0o644, vec![0; kevent_wire::MAX_READ_BYTES + 1]);
    let initramfs_path = common::initramfs_with(&extra, &artifacts.initramfs, &dir);
    let scenario = scenario::parse(
        &dir.join("bounded.toml"),
        &format!(
            r#"
description = "reads and outputs larger than a frame"
[[step]]
read = "/big"
[[step]]
exec = {{ program = "/bin/flood", args = ["{}"] }}
"#,
            3 * kevent_wire::MAX_OUTPUT_BYTES
        ),
    )
    .unwrap();
    let mut guest = scenario.guest(&artifacts);
    guest.initramfs = initramfs_path;
    let transcript = runner::run(&scenario, &common::config("bounded", guest), &mut |_| {})
        .unwrap_or_else(|f| panic!("{}", f.report()));

    let StepOutcome::Failed { errno, message } = &transcript.steps[0].outcome else {
        panic!("{:?}", transcript.steps[0].outcome)
    };
    assert_eq!(*errno, libc::EFBIG, "{message}");
    assert!(message.contains("/big") && message.contains("1048576"), "{message}");

    let StepOutcome::Ran(result) = &transcript.steps[1].outcome else { panic!("{:?}", transcript.steps[1].outcome) };
    assert_eq!(result.exit_code, 0, "the program wrote everything: nothing blocked it");
    let (kept, marker) = result.stdout.split_at(kevent_wire::MAX_OUTPUT_BYTES);
    assert!(kept.iter().all(|b| *b == b'x'));
    let cut = 2 * kevent_wire::MAX_OUTPUT_BYTES;
    assert_eq!(
        String::from_utf8_lossy(marker),
        format!("\n[kevent-agent: {cut} more bytes cut after the first {}]\n", kevent_wire::MAX_OUTPUT_BYTES)
    );
}

#[test]
fn a_panic_line_a_guest_program_writes_to_kmsg_does_not_fail_the_run() {
    let artifacts = common::artifacts();
    let (dir, initramfs_path) = common::initramfs_with_programs("kmsg-panic", &["kmsg-write"], &artifacts.initramfs);
    let scenario = scenario::parse(
        &dir.join("kmsg-panic.toml"),
        r#"
description = "user space claims a panic"
[[step]]
exec = { program = "/bin/kmsg-write", args = ["Kernel panic - not syncing: written by a guest program"] }
[[step]]
read = "/proc/uptime"
"#,
    )
    .unwrap();
    let mut guest = scenario.guest(&artifacts);
    guest.initramfs = initramfs_path;
    let config = common::config("kmsg-panic", guest);
    let transcript = runner::run(&scenario, &config, &mut |_| {}).unwrap_or_else(|f| panic!("{}", f.report()));
    assert!(matches!(&transcript.steps[0].outcome, StepOutcome::Ran(r) if r.exit_code == 0));
    assert!(matches!(transcript.steps[1].outcome, StepOutcome::Read(_)), "the guest went on");
    let console = std::fs::read_to_string(config.run_dir.join("console.log")).unwrap();
    assert!(
        console.contains("Kernel panic - not syncing: written by a guest program"),
        "the line did reach the console"
    );
}

#[test]
fn a_users_event_loop_program_finds_what_it_needs_in_the_guest_kernel() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "eventloop-initramfs");
    let mut extra = common::guest_programs(&["eventloop"], &dir);
    extra.dir("/tmp");
    let initramfs_path = common::initramfs_with(&extra, &artifacts.initramfs, &dir);
    let scenario = scenario::parse(
        &dir.join("eventloop.toml"),
        "description = \"an event loop\"\n[[step]]\nexec = { program = \"/bin/eventloop\" }\n",
    )
    .unwrap();
    let mut guest = scenario.guest(&artifacts);
    guest.initramfs = initramfs_path;
    let transcript = runner::run(&scenario, &common::config("eventloop", guest), &mut |_| {})
        .unwrap_or_else(|f| panic!("{}", f.report()));
    let StepOutcome::Ran(result) = &transcript.steps[0].outcome else { panic!("{:?}", transcript.steps[0].outcome) };
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(stdout, "epoll ok\neventfd ok\ntimerfd ok\nsignalfd ok\ninotify ok\naf_unix ok\n", "{result:?}");
    assert_eq!(result.exit_code, 0);
}

/// The agent is PID 1: a process whose parent exits becomes its child, and
/// it reaps it when it ends, as init does; its own children stay theirs.
#[test]
fn an_orphan_that_ends_is_reaped_by_the_agent_as_init_would() {
    use kevent_wire::{Command, Outcome};
    let artifacts = common::artifacts();
    let (_dir, initramfs) = common::initramfs_with_programs("orphan", &["orphan"], &artifacts.initramfs);
    let mut guest = artifacts.guest(2, 256, Vec::new());
    guest.initramfs = initramfs;
    let mut machine = common::boot(&common::config("orphan", guest));
    let exec = Command::Exec { program: "/bin/orphan".into(), args: Vec::new(), background: false };
    let Outcome::Exec(ran) = machine.ask(exec, common::BOUND).unwrap() else { panic!("exec") };
    assert_eq!(ran.exit_code, 0, "{ran:?}");
    let pid: u32 = String::from_utf8_lossy(&ran.stdout).trim().parse().unwrap();
    let stat = format!("/proc/{pid}/stat");
    // Ended 200 ms after its parent; the reaper looks every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match machine.ask(Command::ReadFile { path: stat.clone() }, common::BOUND).unwrap() {
            Outcome::Error { errno, .. } if errno == libc::ENOENT => {
                common::shut_down(machine);
                return;
            }
            other => last = Some(other),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("pid {pid} was not reaped within 10 s: {last:?}");
}
