//! How a run can end badly, and the exit code of each way.
//!
//! Exit codes are part of the interface (README, "Exit codes"): CI scripts
//! tell a kernel crash from a hung guest from a broken host by them.

use std::fmt;
use std::time::Duration;

use kevent_wire::AgentStage;
use nix::errno::Errno;

use crate::console::CrashKind;

/// Documented exit codes of every `cargo xtask` command that boots a guest.
pub mod exit_code {
    /// The run went as asked.
    pub const SUCCESS: i32 = 0;
    /// Bad input or a host-side error: a malformed scenario, a failed build.
    pub const BENCH_ERROR: i32 = 1;
    /// The command line itself was wrong.
    pub const USAGE: i32 = 2;
    /// A prerequisite is missing and could not be installed.
    pub const MISSING_PREREQUISITE: i32 = 3;
    /// A `Kernel panic` on the console and the machine going down after it.
    pub const KERNEL_PANIC: i32 = 10;
    /// A kernel oops: a fault in kernel code (NULL dereference, GPF, ...).
    pub const KERNEL_OOPS: i32 = 11;
    /// A kernel BUG, sleeping in atomic context or UBSAN; BUG()'s invalid-opcode oops too.
    pub const KERNEL_BUG: i32 = 12;
    /// A kernel WARN or lockdep report; the kernel went on, the run does not.
    pub const KERNEL_WARNING: i32 = 13;
    /// A bounded wait ran out; the message names the stage.
    pub const TIMEOUT: i32 = 20;
    /// QEMU could not be started or never connected to the agent channel.
    pub const QEMU_START: i32 = 30;
    /// QEMU exited before the run was over, with no kernel report to explain it.
    pub const QEMU_EXITED: i32 = 31;
    /// The agent reported a fatal error (and powered the guest off).
    pub const AGENT_FATAL: i32 = 32;
    /// The agent sent something that is not the protocol.
    pub const PROTOCOL: i32 = 33;
    /// A capture socket overflowed in the guest: events were lost.
    pub const EVENTS_LOST: i32 = 34;
    /// The guest's driver never took the emulated sensor device.
    pub const SENSOR_NOT_READY: i32 = 35;
    /// The guest did not acknowledge an injection on the sensor device.
    pub const SENSOR_NO_ACK: i32 = 36;
    /// The guest's D-Bus side failed: dbus-daemon, kdbusd or the bench's
    /// tap died or did not come up, or kdbusd did not answer a fence.
    pub const DBUS_FAILED: i32 = 37;
    /// `replay`: the run did not reproduce the bundle's: it completed with
    /// other events, or completed where the bundle's run failed.
    pub const REPLAY_MISMATCH: i32 = 40;
}

/// The stages of a run, each with its own bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Until the agent's first console line: the kernel has booted to /init.
    KernelBoot,
    /// Until the agent's greeting: mounts, module loads, port found.
    AgentGreeting,
    /// Until the agent answers a request.
    Command,
    /// Shutdown requested until QEMU exits.
    Shutdown,
    /// Until the guest's sensor driver is ready or acknowledges.
    Sensor,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::KernelBoot => "kernel boot",
            Stage::AgentGreeting => "agent greeting",
            Stage::Command => "agent command",
            Stage::Shutdown => "shutdown",
            Stage::Sensor => "sensor device",
        })
    }
}

/// Why a guest run failed. Every variant carries what a developer needs to
/// see: the console excerpt that matters, or QEMU's own words.
///
/// Display describes this failure only; a lower error it wraps is its
/// `source()`, never repeated in the text. [`report`] prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// QEMU could not be run, exited before connecting, or refused its setup.
    #[error("QEMU failed to start: {message}{}", lines("QEMU said", &text_lines(qemu_stderr)))]
    QemuStart {
        /// What went wrong.
        message: String,
        /// QEMU's standard error so far.
        qemu_stderr: String,
    },
    /// The console showed a kernel report.
    #[error("{kind} on the guest console{}", lines("console", excerpt))]
    KernelCrash {
        /// Panic, oops, BUG or warning.
        kind: CrashKind,
        /// The report, as the console showed it.
        excerpt: Vec<String>,
    },
    /// A stage's bounded wait ran out.
    #[error(
        "timed out at stage \"{stage}\" after {:.1} s{}",
        waited.as_secs_f64(),
        lines("last console lines", console_tail)
    )]
    Timeout {
        /// The stage that did not finish.
        stage: Stage,
        /// How long it was waited for.
        waited: Duration,
        /// The console's last lines.
        console_tail: Vec<String>,
    },
    /// QEMU went away with no kernel report to explain it.
    #[error(
        "QEMU exited ({status}) during stage \"{stage}\" with no kernel report on the console{}{}",
        lines("QEMU said", &text_lines(qemu_stderr)),
        lines("last console lines", console_tail)
    )]
    QemuExited {
        /// The stage it went away in.
        stage: Stage,
        /// Its exit status, in words.
        status: String,
        /// QEMU's standard error.
        qemu_stderr: String,
        /// The console's last lines.
        console_tail: Vec<String>,
    },
    /// The agent's own report of why it gave up.
    #[error(
        "the guest agent failed at stage \"{stage}\"{}: {message}{}",
        errno_note(*errno),
        lines("last console lines", console_tail)
    )]
    AgentFatal {
        /// What the agent was doing.
        stage: AgentStage,
        /// The errno of the system call that failed, 0 if none applies.
        errno: i32,
        /// The agent's words.
        message: String,
        /// The console's last lines.
        console_tail: Vec<String>,
    },
    /// The agent channel carried something that is not the protocol.
    #[error("protocol error on the agent channel: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
        /// The framing error, where there was one.
        #[source]
        source: Option<kevent_wire::WireError>,
    },
    /// A capture socket overflowed in the guest.
    #[error(
        "the guest's capture socket for netlink protocol {protocol} overflowed (ENOBUFS, {occurrences} time(s)): \
         events were lost after the {captured} received in this step"
    )]
    EventsLost {
        /// The netlink protocol of the socket.
        protocol: u32,
        /// How often the agent saw ENOBUFS.
        occurrences: u32,
        /// Datagrams of the step that did arrive.
        captured: usize,
    },
    /// The guest's driver never served the sensor device, or let it go.
    #[error(
        "the guest's sensor device was not ready (waited {:.1} s): {detail}{}",
        waited.as_secs_f64(),
        lines("last console lines", console_tail)
    )]
    SensorNotReady {
        /// How long it was waited for.
        waited: Duration,
        /// What the shared memory showed.
        detail: String,
        /// The console's last lines.
        console_tail: Vec<String>,
    },
    /// The module could not send messages an interrupt caused.
    #[error(
        "kevent_thermal in the guest could not send {lost} message(s) of CPU {cpu}'s interrupts (uevent queue \
         full, out of memory, or kobject_uevent failed): events were lost after the {captured} received in \
         this step; see /sys/devices/system/cpu/cpu{cpu}/kevent_thermal/"
    )]
    GuestDropped {
        /// The CPU whose interrupts lost messages.
        cpu: u32,
        /// How many messages.
        lost: u64,
        /// Datagrams of the step that did arrive.
        captured: usize,
    },
    /// The guest did not acknowledge a device entry in time.
    #[error(
        "the guest did not acknowledge injection {seq} on CPU {cpu} within {:.1} s: {detail}{}",
        waited.as_secs_f64(),
        lines("last console lines", console_tail)
    )]
    SensorNoAck {
        /// The entry's CPU.
        cpu: u32,
        /// The entry's sequence number.
        seq: u64,
        /// How long it was waited for.
        waited: Duration,
        /// What the shared memory showed.
        detail: String,
        /// The console's last lines.
        console_tail: Vec<String>,
    },
    /// The guest's D-Bus side failed: a program died or failed its part.
    #[error(
        "the guest's D-Bus side failed: {why}{}{}",
        service_words(services),
        lines("last console lines", console_tail)
    )]
    DbusFailed {
        /// What failed first.
        why: String,
        /// Every program that had ended or failed, the bus daemon first,
        /// with its last words.
        services: Vec<kevent_wire::ServiceFailure>,
        /// The console's last lines.
        console_tail: Vec<String>,
    },
    /// A host-side system call failed.
    #[error("{what}")]
    Io {
        /// What the bench was doing ("bind the agent socket").
        what: String,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The bench was asked for something it cannot do with this guest.
    #[error("{message}")]
    Host {
        /// What and why.
        message: String,
    },
    /// The guest kernel said it ignored an input of the run (a module
    /// parameter, a command-line word): the run would not be what was asked.
    #[error(
        "the guest kernel ignored an input of this run, so the run stopped: {line}\n(check the scenario's [params] \
         and any --append against what the kernel and the modules accept)"
    )]
    IgnoredInput {
        /// The kernel's line.
        line: String,
    },
    /// An input of the run that the guest cannot honour, found once the
    /// guest could be asked (a trace event it does not have, a dynamic
    /// debug query that matches nothing): refused rather than ignored.
    #[error("{input}: {reason}")]
    Refused {
        /// The input as the user gave it, and where (`--trace irq:x`).
        input: String,
        /// Why it cannot be honoured, and what would be.
        reason: String,
    },
    /// A failure in the middle of a scenario, with the step it happened in.
    #[error("step {step} ({label}){}", captured_note(captured.len() + captured_dbus.len()))]
    AtStep {
        /// 1-based, as the run's output numbers steps.
        step: usize,
        /// The step in words.
        label: String,
        /// Datagrams of this step that reached the host before the failure.
        captured: Vec<kevent_wire::Datagram>,
        /// Messages of the guest's bus of this step that reached the host.
        captured_dbus: Vec<kevent_wire::DbusMessage>,
        /// What went wrong.
        #[source]
        failure: Box<Failure>,
    },
}

impl Failure {
    /// A failed host-side system call, saying what the bench was doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Failure {
        Failure::Io { what: what.into(), source }
    }

    /// A protocol error with no lower error to keep.
    pub fn protocol(message: impl Into<String>) -> Failure {
        Failure::Protocol { message: message.into(), source: None }
    }

    /// The documented exit code of this failure (README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::QemuStart { .. } => exit_code::QEMU_START,
            Failure::KernelCrash { kind, .. } => match kind {
                CrashKind::Panic => exit_code::KERNEL_PANIC,
                CrashKind::Oops => exit_code::KERNEL_OOPS,
                CrashKind::Bug => exit_code::KERNEL_BUG,
                CrashKind::Warning => exit_code::KERNEL_WARNING,
            },
            Failure::Timeout { .. } => exit_code::TIMEOUT,
            Failure::QemuExited { .. } => exit_code::QEMU_EXITED,
            Failure::AgentFatal { stage: AgentStage::Dbus, .. } => exit_code::DBUS_FAILED,
            Failure::AgentFatal { .. } => exit_code::AGENT_FATAL,
            Failure::Protocol { .. } => exit_code::PROTOCOL,
            Failure::EventsLost { .. } => exit_code::EVENTS_LOST,
            Failure::SensorNotReady { .. } => exit_code::SENSOR_NOT_READY,
            Failure::GuestDropped { .. } => exit_code::EVENTS_LOST,
            Failure::SensorNoAck { .. } => exit_code::SENSOR_NO_ACK,
            Failure::DbusFailed { .. } => exit_code::DBUS_FAILED,
            Failure::Io { .. } | Failure::Host { .. } | Failure::IgnoredInput { .. } | Failure::Refused { .. } => {
                exit_code::BENCH_ERROR
            }
            Failure::AtStep { failure, .. } => failure.exit_code(),
        }
    }

    /// The failure and every cause under it, as `cargo xtask` prints it.
    pub fn report(&self) -> String {
        report(self)
    }
}

/// An error and its chain of sources, joined with ": ", the way `anyhow`
/// prints `{:#}`.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

fn text_lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn lines(heading: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = format!("\n{heading}:");
    for line in lines {
        out.push_str("\n  | ");
        out.push_str(line);
    }
    out
}

fn errno_note(errno: i32) -> String {
    match (errno, Errno::from_raw(errno)) {
        (0, _) => String::new(),
        (n, Errno::UnknownErrno) => format!(" (errno {n})"),
        (n, name) => format!(" (errno {n}, {name:?})"),
    }
}

/// Each program: how it ended and its last words.
fn service_words(services: &[kevent_wire::ServiceFailure]) -> String {
    let mut out = String::new();
    for service in services {
        let words = String::from_utf8_lossy(&service.last_words);
        let words: Vec<String> = words.lines().map(str::to_owned).collect();
        out.push_str(&format!("\n{} {}", service.program, service.status));
        if words.is_empty() {
            out.push_str(", and wrote nothing to stderr");
        } else {
            out.push_str(&lines(", its last words (stderr)", &words).replacen('\n', "", 1));
        }
    }
    out
}

fn captured_note(captured: usize) -> String {
    match captured {
        0 => String::new(),
        n => format!(", after {n} of its datagram(s) reached the host"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_failure_names_its_stage_and_errno_and_exits_32() {
        let failure = Failure::AgentFatal {
            stage: AgentStage::ModuleLoad,
            errno: 16,
            message: "load module kmessage (params \"unit=15\"): Device or resource busy".into(),
            console_tail: vec!["kmessage: netlink unit 15 is NETLINK_KOBJECT_UEVENT".into()],
        };
        assert_eq!(
            failure.to_string(),
            "the guest agent failed at stage \"module load\" (errno 16, EBUSY): load module kmessage (params \"unit=15\"): \
             Device or resource busy\nlast console lines:\n  | kmessage: netlink unit 15 is NETLINK_KOBJECT_UEVENT"
        );
        assert_eq!(failure.exit_code(), exit_code::AGENT_FATAL);
        assert_eq!(exit_code::AGENT_FATAL, 32);

        let failure = Failure::AgentFatal {
            stage: AgentStage::Serve,
            errno: 0,
            message: "the host closed the channel without asking for a shutdown".into(),
            console_tail: Vec::new(),
        };
        assert_eq!(
            failure.to_string(),
            "the guest agent failed at stage \"serve\": the host closed the channel without asking for a shutdown"
        );
    }

    #[test]
    fn the_dbus_side_failing_exits_37_with_each_programs_last_words() {
        let failure = Failure::DbusFailed {
            why: "dbus-daemon was killed by SIGKILL".into(),
            services: vec![
                kevent_wire::ServiceFailure {
                    program: "dbus-daemon".into(),
                    status: "was killed by SIGKILL".into(),
                    last_words: Vec::new(),
                },
                kevent_wire::ServiceFailure {
                    program: "kdbusd".into(),
                    status: "exited with code 1".into(),
                    last_words: b"kdbusd: the system bus closed the connection\n".to_vec(),
                },
            ],
            console_tail: Vec::new(),
        };
        assert_eq!(failure.exit_code(), 37);
        let text = failure.to_string();
        assert!(text.starts_with("the guest's D-Bus side failed: dbus-daemon was killed by SIGKILL\n"), "{text}");
        assert!(text.contains("dbus-daemon was killed by SIGKILL, and wrote nothing to stderr"), "{text}");
        assert!(text.contains("kdbusd exited with code 1, its last words (stderr):"), "{text}");
        assert!(text.contains("kdbusd: the system bus closed the connection"), "{text}");
        let at_start = Failure::AgentFatal {
            stage: AgentStage::Dbus,
            errno: 0,
            message: "kdbusd did not own its name".into(),
            console_tail: Vec::new(),
        };
        assert_eq!(at_start.exit_code(), 37, "a side that does not come up is the side's failure too");
    }

    #[test]
    fn a_step_failure_keeps_its_cause_and_the_system_error_under_it() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let failure = Failure::AtStep {
            step: 2,
            label: "read /proc/uptime".into(),
            captured: Vec::new(),
            captured_dbus: Vec::new(),
            failure: Box::new(Failure::io("create target/run/console.log", io)),
        };
        assert_eq!(failure.to_string(), "step 2 (read /proc/uptime)", "Display is this layer only");
        assert_eq!(
            failure.report(),
            "step 2 (read /proc/uptime): create target/run/console.log: No space left on device (os error 28)"
        );
        let mut chain = std::iter::successors(Some(&failure as &dyn std::error::Error), |e| e.source());
        let system = chain.find_map(|e| e.downcast_ref::<std::io::Error>()).expect("the io::Error is a source");
        assert_eq!(system.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(failure.exit_code(), exit_code::BENCH_ERROR);
    }
}
