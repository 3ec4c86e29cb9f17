//! Booting the real kernel under QEMU: the greeting, and each way a boot
//! can fail ending with its own failure and exit code, never a hang.

mod common;

use std::time::{Duration, Instant};

use kevent_bench::console::CrashKind;
use kevent_bench::cpio::Archive;
use kevent_bench::qemu::{self, Origin, Qemu};
use kevent_bench::sensor::Register;
use kevent_bench::{exit_code, Failure, Machine, Stage};

#[test]
fn the_real_kernel_boots_and_the_agent_greets() {
    let artifacts = common::artifacts();
    let config = common::config("greeting", artifacts.guest(2, 256, Vec::new()));
    let machine = Machine::boot(&config).unwrap_or_else(|f| panic!("{}", f.report()));
    let hello = machine.hello.clone();
    assert_eq!(hello.kernel_release, artifacts.kernel_release);
    assert_eq!(hello.cpus_online, 2, "-smp 2,sockets=2 must bring up both CPUs");
    assert!(hello.clocksource.starts_with("tsc"), "clocksource {:?}: guest timestamps need the TSC", hello.clocksource);
    let loaded: Vec<&str> = hello.modules.iter().map(|m| m.name.as_str()).collect();
    let built: Vec<String> =
        artifacts.modules.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(loaded, built, "the agent loads every built module, in order");
    assert!(hello.agent_started_ns > 0 && hello.greeted_ns >= hello.agent_started_ns);
    let t = machine.timings;
    assert!(t.qemu_started <= t.kernel_booted && t.kernel_booted <= t.greeted);
    machine.shutdown(Duration::from_secs(15)).unwrap_or_else(|f| panic!("{}", f.report()));
    let console = std::fs::read_to_string(config.run_dir.join("console.log")).unwrap();
    assert!(console.contains(kevent_wire::AGENT_STARTED_MARKER), "the console log holds the whole run");
}

/// The private QEMU (Debian's packages extracted into the cache, for hosts
/// where installing them would remove a package) boots the real guest with
/// its sensor device, on its own TCG module rather than the system's.
#[test]
fn the_real_kernel_boots_on_the_private_qemu() {
    let artifacts = common::artifacts();
    let private_dir = artifacts.cache_dir.join(qemu::PRIVATE_DIR);
    let Some(binary) = qemu::private_qemu(&private_dir) else {
        eprintln!(
            "SKIPPED: no private QEMU in {} (`cargo xtask test` extracts it on hosts with apt-get)",
            private_dir.display()
        );
        return;
    };
    let version = qemu::version(&binary).unwrap();
    assert!(version.starts_with("QEMU emulator version 7.2."), "{version}");
    let mut config = common::config("private-qemu", artifacts.guest(2, 256, Vec::new()));
    config.qemu = Qemu { binary: binary.clone(), origin: Origin::Private };
    let mut machine = Machine::boot(&config).unwrap_or_else(|f| panic!("{}", f.report()));
    let pid = machine.qemu_pid();
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), binary.canonicalize().unwrap());
    if config.accel == kevent_bench::Accel::Tcg {
        let prefix = binary.parent().unwrap().parent().unwrap().parent().unwrap().canonicalize().unwrap();
        let module = prefix.join("usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains(module.to_str().unwrap()), "TCG must come from {}:\n{maps}", module.display());
    }
    assert_eq!(machine.hello.kernel_release, artifacts.kernel_release);
    assert_eq!(machine.hello.cpus_online, 2);
    // One injection through ivshmem-doorbell, MSI-X vector 1 to CPU 1.
    let published = machine.fire(1, Register::Core, 0x8005_0001).unwrap_or_else(|f| panic!("{}", f.report()));
    assert_eq!(machine.wait_acked(published).unwrap_or_else(|f| panic!("{}", f.report())), None);
    let datagrams = machine.fence(common::BOUND).unwrap_or_else(|f| panic!("{}", f.report())).datagrams;
    assert_eq!(common::kmessages(&datagrams).len(), 1, "{datagrams:?}");
    machine.shutdown(Duration::from_secs(15)).unwrap_or_else(|f| panic!("{}", f.report()));
}

#[test]
fn qemu_dies_with_the_host_thread_that_started_it() {
    // A host killed outright never runs its destructors: here the thread
    // that booted the guest ends without dropping it.
    let config = common::config("host-death", common::artifacts().guest(2, 256, Vec::new()));
    let pid = std::thread::spawn(move || {
        let machine = Machine::boot(&config).unwrap_or_else(|f| panic!("{}", f.report()));
        let pid = machine.qemu_pid();
        std::mem::forget(machine);
        pid
    })
    .join()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Gone, or a zombie of this process (forgotten, so never reaped).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    };
    while alive() {
        assert!(Instant::now() < deadline, "QEMU {pid} outlived the thread that started it");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_guest_that_panics_at_boot_is_reported_as_a_panic() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "panic-initramfs");
    std::fs::create_dir_all(&dir).unwrap();
    // No /init at all: the kernel panics with "No working init found".
    let initramfs = dir.join("no-init.cpio");
    std::fs::write(&initramfs, Archive::new().char_device("/dev/console", 0o600, 5, 1).to_bytes()).unwrap();
    let mut guest = artifacts.guest(2, 256, Vec::new());
    guest.initramfs = initramfs;
    let started = Instant::now();
    let failure = Machine::boot(&common::config("panic", guest)).err().expect("the boot must fail");
    let Failure::KernelCrash { kind, excerpt } = &failure else { panic!("expected a kernel panic, got: {failure}") };
    assert_eq!(*kind, CrashKind::Panic);
    assert!(excerpt[0].contains("Kernel panic - not syncing: No working init found"), "{excerpt:?}");
    assert_eq!(failure.exit_code(), exit_code::KERNEL_PANIC);
    assert!(failure.to_string().starts_with("kernel panic on the guest console"), "{failure}");
    assert!(started.elapsed() < Duration::from_secs(30), "a panic ends the run at once");
}

#[test]
fn a_guest_that_hangs_times_out_naming_the_stage() {
    let artifacts = common::artifacts();
    let dir = common::run_dir(&artifacts, "hang-initramfs");
    let hang = common::static_guest_program("hang", &dir);
    let initramfs = dir.join("hang.cpio");
    let mut archive = Archive::new();
    archive.char_device("/dev/console", 0o600, 5, 1).file("/init", 0o755, std::fs::read(hang).unwrap());
    std::fs::write(&initramfs, archive.to_bytes()).unwrap();
    let mut guest = artifacts.guest(2, 256, Vec::new());
    guest.initramfs = initramfs;
    let mut config = common::config("hang", guest);
    config.timeouts.kernel_boot = Duration::from_secs(8);
    let started = Instant::now();
    let failure = Machine::boot(&config).err().expect("the boot must fail");
    let elapsed = started.elapsed();
    let Failure::Timeout { stage, console_tail, .. } = &failure else { panic!("expected a timeout, got: {failure}") };
    assert_eq!(*stage, Stage::KernelBoot);
    assert!(console_tail.iter().any(|l| l.contains("Run /init as init process")), "{console_tail:?}");
    assert_eq!(failure.exit_code(), exit_code::TIMEOUT);
    assert!(failure.to_string().starts_with("timed out at stage \"kernel boot\" after 8.0 s"), "{failure}");
    assert!(elapsed >= Duration::from_secs(8) && elapsed < Duration::from_secs(20), "bounded: {elapsed:?}");
}

#[test]
fn a_missing_qemu_is_a_start_failure_that_names_the_binary_and_where_it_came_from() {
    let artifacts = common::artifacts();
    let mut config = common::config("no-qemu", artifacts.guest(1, 256, Vec::new()));
    config.qemu = Qemu { binary: "/nonexistent/qemu-system-x86_64".into(), origin: Origin::Variable };
    let failure = Machine::boot(&config).err().expect("the boot must fail");
    assert!(matches!(failure, Failure::QemuStart { .. }), "{failure}");
    assert_eq!(failure.exit_code(), exit_code::QEMU_START);
    let text = failure.to_string();
    assert!(
        text.contains("cannot run /nonexistent/qemu-system-x86_64 (named by KEVENT_BENCH_QEMU): No such file"),
        "{text}"
    );
    assert!(!text.contains("apt-get"), "the user named this binary; another package is no answer: {text}");
}

#[test]
fn qemu_refusing_its_arguments_is_a_start_failure_with_its_words() {
    let artifacts = common::artifacts();
    let mut guest = artifacts.guest(1, 256, Vec::new());
    guest.kernel = "/nonexistent/vmlinux".into();
    let failure = Machine::boot(&common::config("bad-kernel", guest)).err().expect("the boot must fail");
    let Failure::QemuStart { qemu_stderr, .. } = &failure else { panic!("expected a start failure, got: {failure}") };
    assert!(qemu_stderr.contains("/nonexistent/vmlinux"), "QEMU's own message is kept: {qemu_stderr}");
    assert_eq!(failure.exit_code(), exit_code::QEMU_START);
}

#[test]
fn a_module_parameter_the_module_ignores_stops_the_run() {
    // The host checks scenarios' parameters before boot; this one bypasses
    // that check, as a parameter given some other way would.
    let misspelt = kevent_wire::module_param_arg("kevent_thermal", "rate_limt_ms", "0");
    let config = common::config("ignored-parameter", common::artifacts().guest(2, 256, vec![misspelt]));
    let failure = Machine::boot(&config).err().expect("the boot must fail");
    let Failure::IgnoredInput { line } = &failure else { panic!("expected an ignored input, got: {failure}") };
    assert_eq!(line, "kevent_thermal: unknown parameter 'rate_limt_ms' ignored");
    assert_eq!(failure.exit_code(), exit_code::BENCH_ERROR);
}

#[test]
fn a_module_that_fails_to_load_is_the_agents_fatal_error_with_its_stage_and_errno() {
    // kmessage refuses a unit the kernel assigns in tree (15, the uevent
    // unit) with EBUSY: finit_module fails before the greeting.
    let taken = kevent_wire::module_param_arg("kmessage", "unit", "15");
    let config = common::config("module-fails-to-load", common::artifacts().guest(2, 256, vec![taken]));
    let failure = Machine::boot(&config).err().expect("the boot must fail");
    let Failure::AgentFatal { stage, errno, message, console_tail } = &failure else {
        panic!("expected the agent's fatal error, got: {failure}")
    };
    assert_eq!(*stage, kevent_wire::AgentStage::ModuleLoad, "{failure}");
    assert_eq!(*errno, 16, "EBUSY: {failure}");
    assert!(message.starts_with("load module kmessage (params \"unit=15\"): Device or resource busy"), "{message}");
    assert!(console_tail.iter().any(|l| l.contains("netlink unit 15 is NETLINK_KOBJECT_UEVENT")), "{failure}");
    assert!(failure.to_string().contains("(errno 16, EBUSY)"), "{failure}");
    assert_eq!(failure.exit_code(), exit_code::AGENT_FATAL);
}

#[test]
fn sigterm_stops_the_guest_removes_its_sockets_and_exits_143() {
    use std::io::BufRead;

    // The bench under test is this test binary, re-run as one test: it
    // boots a guest and waits in a long agent command for the signal.
    if std::env::var_os("KEVENT_SIGNAL_TEST_BENCH").is_some() {
        kevent_bench::process::exit_on_signals().unwrap();
        let config = common::config("signalled", common::artifacts().guest(2, 256, Vec::new()));
        let mut machine = Machine::boot(&config).unwrap_or_else(|f| panic!("{}", f.report()));
        println!("qemu {} sockets {}", machine.qemu_pid(), machine.socket_dir().display());
        let waited = machine.request(kevent_wire::Command::Sleep { ns: 30_000_000_000 }, Duration::from_secs(60));
        let signal = kevent_bench::process::interrupted().unwrap_or_else(|| panic!("not interrupted: {waited:?}"));
        drop(machine);
        std::process::exit(kevent_bench::process::exit_code_of(signal));
    }
    let mut bench = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sigterm_stops_the_guest_removes_its_sockets_and_exits_143", "--nocapture"])
        .env("KEVENT_SIGNAL_TEST_BENCH", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(bench.stdout.take().unwrap()).lines();
    let line = lines.map(Result::unwrap).find(|l| l.starts_with("qemu ")).expect("the bench booted its guest");
    let words: Vec<&str> = line.split_whitespace().collect();
    let (qemu, sockets) = (words[1].to_owned(), std::path::PathBuf::from(words[3]));
    assert!(sockets.join("agent.sock").exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bench.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = bench.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status}");
    assert!(!sockets.exists(), "{} was left behind", sockets.display());
    let alive = std::fs::read_to_string(format!("/proc/{qemu}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')));
    assert!(!alive, "QEMU {qemu} outlived the bench");
}
