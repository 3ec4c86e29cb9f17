//! What a run of a scenario produced, in the host's terms: each step's
//! outcome and the datagrams it caused. The wire's replies are converted
//! here, at the edge; the snapshot and the JSON lines read only these types.

use std::time::Duration;

use kevent_wire::{Datagram, DbusMessage, ExecResult, Hello, Outcome};

use crate::failure::Failure;
use crate::inject::Refusal;
use crate::msr_replay::ReplayTiming;
use crate::scenario::Scenario;

/// What one step came to (the first failure, for a repeated step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step did what it says and has nothing to show.
    Done,
    /// A `read` step's bytes.
    Read(Vec<u8>),
    /// The guest refused the step: errno (0 if none applies) and why.
    Failed {
        /// What the guest's system call answered.
        errno: i32,
        /// What was refused.
        message: String,
    },
    /// An `exec` step's program, run to its end.
    Ran(ProgramRun),
}

impl StepOutcome {
    /// The step failed.
    pub fn failed(&self) -> bool {
        matches!(self, StepOutcome::Failed { .. })
    }

    /// The agent's reply to a step's request. A step never asks for the
    /// background programs' reports, so being given them is a protocol error.
    pub fn from_reply(outcome: Outcome) -> Result<StepOutcome, Failure> {
        Ok(match outcome {
            Outcome::Done => StepOutcome::Done,
            Outcome::Data(bytes) => StepOutcome::Read(bytes),
            Outcome::Error { errno, message } => StepOutcome::Failed { errno, message },
            Outcome::Exec(result) => StepOutcome::Ran(result.into()),
            Outcome::Background(_) => {
                return Err(Failure::protocol("a step's request was answered with background reports"))
            }
        })
    }
}

impl From<Refusal> for StepOutcome {
    fn from(refusal: Refusal) -> StepOutcome {
        StepOutcome::Failed { errno: refusal.errno, message: refusal.message }
    }
}

/// A program the guest ran, in the foreground or in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRun {
    /// The program as the scenario named it.
    pub program: String,
    /// Its exit code, or -1 if a signal killed it.
    pub exit_code: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// Its standard output, cut at the agent's bound with a marker.
    pub stdout: Vec<u8>,
    /// Its standard error, likewise.
    pub stderr: Vec<u8>,
}

impl From<ExecResult> for ProgramRun {
    fn from(r: ExecResult) -> ProgramRun {
        ProgramRun { program: r.program, exit_code: r.exit_code, signal: r.signal, stdout: r.stdout, stderr: r.stderr }
    }
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// 0-based position in the scenario.
    pub index: usize,
    /// The step as the scenario wrote it, in words.
    pub label: String,
    /// How many times it ran (or fired, for a device-timed step).
    pub repeat: u32,
    /// The first failure, for a repeated step; else the last outcome.
    pub outcome: StepOutcome,
    /// How many repetitions failed.
    pub failures: u32,
    /// Every datagram the step caused, in the order the host received them.
    pub datagrams: Vec<Datagram>,
    /// Every message the guest's bus carried during the step, in the bus's order.
    pub dbus: Vec<DbusMessage>,
    /// Host wall time of the step, all repetitions.
    pub elapsed: Duration,
    /// A replay step: when each injection was due and when it started.
    /// Host time, so never part of the snapshot.
    pub replay: Option<ReplayTiming>,
}

impl StepRecord {
    /// A step about to run.
    pub fn new(index: usize, label: String, repeat: u32) -> StepRecord {
        StepRecord {
            index,
            label,
            repeat,
            outcome: StepOutcome::Done,
            failures: 0,
            datagrams: Vec::new(),
            dbus: Vec::new(),
            elapsed: Duration::ZERO,
            replay: None,
        }
    }

    /// Counts a repetition's outcome: the first failure is kept, else the last outcome.
    pub fn note(&mut self, outcome: StepOutcome) {
        let failed = outcome.failed();
        if failed {
            self.failures += 1;
        }
        if self.failures == 0 || (failed && self.failures == 1) {
            self.outcome = outcome;
        }
    }
}

/// A whole run of a scenario.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// The scenario as run, command-line overrides applied.
    pub scenario: Scenario,
    /// The agent's greeting: kernel release, CPUs online, modules.
    pub hello: Hello,
    /// Every step, in order.
    pub steps: Vec<StepRecord>,
    /// Programs run in the background, reported when the scenario ended.
    pub background: Vec<ProgramRun>,
    /// Rate-limit decisions the guest's clock leaves uncertain: the
    /// snapshot could differ on another run.
    pub timing_flags: Vec<TimingFlag>,
    /// More such decisions, overwritten in the module's ring before they
    /// were read: uncertain too, but no longer placed.
    pub timing_flags_lost: u64,
    /// The kernel trace written to the run directory, if one was asked for.
    pub trace: Option<crate::trace::Summary>,
    /// With the D-Bus side: the connections the bus still held messages
    /// for as the run ended, or why the bus could not be asked. How many
    /// depends on timing, so it is said beside the snapshot, not in it.
    pub bus_backlog: Result<Vec<crate::dbus::Backlog>, String>,
}

/// An outcome the clock leaves uncertain: the snapshot could differ on
/// another run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimingFlag {
    /// A rate-limit decision close enough to its window's edge that host
    /// load (real clock) or the guest's clock jumping while it waited for
    /// the host (virtual clock) could have changed it.
    Edge {
        /// 1-based step that raised the interrupt.
        step: usize,
        /// The CPU that handled it.
        cpu: u32,
        /// Guest time from the window's edge: positive for an interrupt
        /// handled, negative for one rate-limited.
        margin_ns: i64,
        /// The edge was between firings of one device-timed entry.
        within_burst: bool,
    },
    /// A replay step whose injections started late by amounts that differ
    /// by more than half the margin the module watches around the edge,
    /// with the rate limit on: the host's pacing alone could move a
    /// decision the module did not record across the edge, so none of the
    /// step's decisions is certain.
    LateReplay {
        /// 1-based replay step.
        step: usize,
        /// The latest injection's lateness minus the earliest one's, host
        /// time: how far the pacing could move one interrupt against another.
        spread_ns: u64,
        /// The margin around the edge inside which the module records
        /// decisions (`rate_limit_edge_ms`).
        watched_ns: u64,
    },
}

impl TimingFlag {
    /// The step the flag is about.
    pub fn step(&self) -> usize {
        match self {
            TimingFlag::Edge { step, .. } | TimingFlag::LateReplay { step, .. } => *step,
        }
    }

    /// The flag for a replay step paced by `timing`, if its lateness could
    /// move a decision beyond what the module watches (`watched`).
    pub fn of_replay(step: usize, timing: &ReplayTiming, watched: Duration) -> Option<TimingFlag> {
        let late = timing.lateness();
        let spread = late.last()?.saturating_sub(late[0]);
        (spread * 2 > watched).then(|| TimingFlag::LateReplay {
            step,
            spread_ns: u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX),
            watched_ns: u64::try_from(watched.as_nanos()).unwrap_or(u64::MAX),
        })
    }
}

impl std::fmt::Display for TimingFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        match *self {
            TimingFlag::Edge { step, cpu, margin_ns, within_burst } => {
                let outcome = if margin_ns < 0 { "rate-limited" } else { "handled" };
                let between = if within_burst {
                    "between firings of one timed entry"
                } else {
                    "since an earlier step's interrupt"
                };
                write!(
                    f,
                    "step {step}: an interrupt on CPU {cpu} was {outcome} {:.3} ms from the rate limit's edge \
                     ({between}); its outcome may differ on another run",
                    ms(margin_ns.unsigned_abs())
                )
            }
            TimingFlag::LateReplay { step, spread_ns, watched_ns } => write!(
                f,
                "step {step}: the replay's injections started late by amounts up to {:.3} ms apart, more than half \
                 the {:.3} ms the run watches around the rate limit's edge; any rate-limit decision of this step may \
                 differ on another run (a lower --speed or step `speed`, or the device injector, keeps closer to the trace)",
                ms(spread_ns),
                ms(watched_ns)
            ),
        }
    }
}

/// The symbolic name of an errno (`EINVAL`), or its number if it has none.
pub fn errno_name(errno: i32) -> String {
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("errno {errno}"),
        known => format!("{known:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_flagged_when_its_pacing_could_move_a_decision_past_what_the_module_watches() {
        let ms = Duration::from_millis;
        let paced = |late: &[u64]| ReplayTiming {
            speed: 1.0,
            due: (0..late.len() as u64).map(|k| ms(250 * k)).collect(),
            started: late.iter().enumerate().map(|(k, l)| ms(250 * k as u64 + l)).collect(),
        };
        // Late by much, but by the same amount: the spacing is the trace's.
        assert_eq!(TimingFlag::of_replay(2, &paced(&[40, 40, 40]), ms(100)), None);
        assert_eq!(TimingFlag::of_replay(2, &paced(&[10, 0, 50]), ms(100)), None, "50 ms is half, not more");
        let flag = TimingFlag::of_replay(2, &paced(&[10, 0, 61]), ms(100)).unwrap();
        assert_eq!(flag, TimingFlag::LateReplay { step: 2, spread_ns: 61_000_000, watched_ns: 100_000_000 });
        assert!(flag
            .to_string()
            .starts_with("step 2: the replay's injections started late by amounts up to 61.000 ms apart"));
        assert_eq!(TimingFlag::of_replay(2, &paced(&[]), ms(100)), None, "nothing injected");
    }

    #[test]
    fn errnos_have_their_names() {
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(libc::EXDEV), "EXDEV");
        assert_eq!(errno_name(libc::EFBIG), "EFBIG");
        assert_eq!(errno_name(100_000), "errno 100000");
    }

    #[test]
    fn a_repeated_step_keeps_its_first_failure_and_counts_the_rest() {
        let mut record = StepRecord::new(0, "write".into(), 4);
        let failed = |errno| StepOutcome::Failed { errno, message: format!("errno {errno}") };
        record.note(StepOutcome::Done);
        record.note(failed(22));
        record.note(StepOutcome::Done);
        record.note(failed(18));
        assert_eq!((record.outcome, record.failures), (failed(22), 2));
        let mut clean = StepRecord::new(0, "read".into(), 2);
        clean.note(StepOutcome::Read(b"1".to_vec()));
        clean.note(StepOutcome::Read(b"2".to_vec()));
        assert_eq!((clean.outcome, clean.failures), (StepOutcome::Read(b"2".to_vec()), 0));
    }

    #[test]
    fn background_reports_are_not_a_steps_reply() {
        assert!(StepOutcome::from_reply(Outcome::Background(Vec::new())).is_err());
        let reply = Outcome::Error { errno: 2, message: "open /x".into() };
        assert_eq!(
            StepOutcome::from_reply(reply).unwrap(),
            StepOutcome::Failed { errno: 2, message: "open /x".into() }
        );
    }
}
