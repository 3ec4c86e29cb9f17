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
    pub const KERNEL_PANIC: i32 = 10;
    pub const KERNEL_OOPS: i32 = 11;
    pub const KERNEL_BUG: i32 = 12;
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
#[derive(Debug)]
pub enum Failure {
    QemuStart {
        message: String,
        qemu_stderr: String,
    },
    KernelCrash {
        kind: CrashKind,
        excerpt: Vec<String>,
    },
    Timeout {
        stage: Stage,
        waited: Duration,
        console_tail: Vec<String>,
    },
    QemuExited {
        stage: Stage,
        status: String,
        qemu_stderr: String,
        console_tail: Vec<String>,
    },
    /// The agent's own report of why it gave up.
    AgentFatal {
        /// What the agent was doing.
        stage: AgentStage,
        /// The errno of the system call that failed, 0 if none applies.
        errno: i32,
        message: String,
        console_tail: Vec<String>,
    },
    Protocol {
        message: String,
    },
    EventsLost {
        protocol: u32,
        occurrences: u32,
        captured: usize,
    },
    SensorNotReady {
        waited: Duration,
        detail: String,
        console_tail: Vec<String>,
    },
    GuestDropped {
        cpu: u32,
        lost: u64,
        captured: usize,
    },
    SensorNoAck {
        cpu: u32,
        seq: u64,
        waited: Duration,
        detail: String,
        console_tail: Vec<String>,
    },
    Host {
        message: String,
    },
    /// The guest kernel said it ignored an input of the run (a module
    /// parameter, a command-line word): the run would not be what was asked.
    IgnoredInput {
        line: String,
    },
    /// A failure in the middle of a scenario, with the step it happened in.
    AtStep(Box<StepFailure>),
}

/// The step a scenario failed in, and what the step had received by then.
#[derive(Debug)]
pub struct StepFailure {
    /// 1-based, as the run's output numbers steps.
    pub step: usize,
    pub label: String,
    /// Datagrams of this step that reached the host before the failure.
    pub captured: Vec<kevent_wire::Datagram>,
    pub failure: Failure,
}

impl Failure {
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
            Failure::AgentFatal { .. } => exit_code::AGENT_FATAL,
            Failure::Protocol { .. } => exit_code::PROTOCOL,
            Failure::EventsLost { .. } => exit_code::EVENTS_LOST,
            Failure::SensorNotReady { .. } => exit_code::SENSOR_NOT_READY,
            Failure::GuestDropped { .. } => exit_code::EVENTS_LOST,
            Failure::SensorNoAck { .. } => exit_code::SENSOR_NO_ACK,
            Failure::Host { .. } | Failure::IgnoredInput { .. } => exit_code::BENCH_ERROR,
            Failure::AtStep(at) => at.failure.exit_code(),
        }
    }
}

fn write_lines(f: &mut fmt::Formatter<'_>, heading: &str, lines: &[String]) -> fmt::Result {
    if lines.is_empty() {
        return Ok(());
    }
    write!(f, "\n{heading}:")?;
    for line in lines {
        write!(f, "\n  | {line}")?;
    }
    Ok(())
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::QemuStart { message, qemu_stderr } => {
                write!(f, "QEMU failed to start: {message}")?;
                let stderr: Vec<String> = qemu_stderr.lines().map(str::to_owned).collect();
                write_lines(f, "QEMU said", &stderr)
            }
            Failure::KernelCrash { kind, excerpt } => {
                write!(f, "{kind} on the guest console")?;
                write_lines(f, "console", excerpt)
            }
            Failure::Timeout { stage, waited, console_tail } => {
                write!(f, "timed out at stage \"{stage}\" after {:.1} s", waited.as_secs_f64())?;
                write_lines(f, "last console lines", console_tail)
            }
            Failure::QemuExited { stage, status, qemu_stderr, console_tail } => {
                write!(f, "QEMU exited ({status}) during stage \"{stage}\" with no kernel report on the console")?;
                let stderr: Vec<String> = qemu_stderr.lines().map(str::to_owned).collect();
                write_lines(f, "QEMU said", &stderr)?;
                write_lines(f, "last console lines", console_tail)
            }
            Failure::AgentFatal { stage, errno, message, console_tail } => {
                write!(f, "the guest agent failed at stage \"{stage}\"")?;
                match (*errno, Errno::from_raw(*errno)) {
                    (0, _) => {}
                    (n, Errno::UnknownErrno) => write!(f, " (errno {n})")?,
                    (n, name) => write!(f, " (errno {n}, {name:?})")?,
                }
                write!(f, ": {message}")?;
                write_lines(f, "last console lines", console_tail)
            }
            Failure::Protocol { message } => write!(f, "protocol error on the agent channel: {message}"),
            Failure::EventsLost { protocol, occurrences, captured } => write!(
                f,
                "the guest's capture socket for netlink protocol {protocol} overflowed (ENOBUFS, {occurrences} time(s)): \
                 events were lost after the {captured} received in this step"
            ),
            Failure::SensorNotReady { waited, detail, console_tail } => {
                write!(f, "the guest's sensor device was not ready (waited {:.1} s): {detail}", waited.as_secs_f64())?;
                write_lines(f, "last console lines", console_tail)
            }
            Failure::GuestDropped { cpu, lost, captured } => write!(
                f,
                "kevent_thermal in the guest could not send {lost} message(s) of CPU {cpu}'s interrupts (uevent queue \
                 full, out of memory, or kobject_uevent failed): events were lost after the {captured} received in \
                 this step; see /sys/devices/system/cpu/cpu{cpu}/kevent_thermal/"
            ),
            Failure::SensorNoAck { cpu, seq, waited, detail, console_tail } => {
                write!(
                    f,
                    "the guest did not acknowledge injection {seq} on CPU {cpu} within {:.1} s: {detail}",
                    waited.as_secs_f64()
                )?;
                write_lines(f, "last console lines", console_tail)
            }
            Failure::Host { message } => f.write_str(message),
            Failure::IgnoredInput { line } => write!(
                f,
                "the guest kernel ignored an input of this run, so the run stopped: {line}\n(check the scenario's \
                 [params] and any --append against what the kernel and the modules accept)"
            ),
            Failure::AtStep(at) => {
                write!(f, "step {} ({}): {}", at.step, at.label, at.failure)?;
                if !at.captured.is_empty() {
                    write!(f, "\n({} datagram(s) of this step reached the host before it failed)", at.captured.len())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Failure {}

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
}
