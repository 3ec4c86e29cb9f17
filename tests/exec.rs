//! An exec step runs a program the user brought into the initramfs: here a
//! static listener of the tests' own, unprivileged, in the background.

mod common;

use kevent_bench::runner;
use kevent_bench::scenario;

#[test]
fn a_users_own_unprivileged_listener_receives_the_seed_payload() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "exec-initramfs");
    let listener = common::static_guest_program("kmsg-listen", &dir);
    let mut extra = kevent_bench::cpio::Archive::new();
    extra.file("/bin/kmsg-listen", 0o755, std::fs::read(listener).unwrap());
    let initramfs_path = dir.join("initramfs.cpio");
    extra.append_to(&artifacts.initramfs, &initramfs_path).unwrap();

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
    let transcript =
        runner::run(&scenario, &common::config("exec", guest), &mut |_| {}).unwrap_or_else(|f| panic!("{f}"));

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
    let kevent_wire::Outcome::Error { errno, message } = &missing.outcome else { panic!("{:?}", missing.outcome) };
    assert_eq!(*errno, libc::ENOENT, "{message}");
    assert!(message.contains("/bin/kmsg-listen-missing"), "{message}");
}
