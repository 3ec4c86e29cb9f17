//! Replaying a recorded trace into the guest: each changed value injected
//! at its recorded time from the replay's start (divided by the speed), as
//! measured by the host's monotonic clock, through either injector; and how
//! late each injection started, which depends on the host and so stays out
//! of the snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::failure::Failure;
use crate::inject::{Injection, Injector};
use crate::machine::Machine;
use crate::msr_trace::{self as trace, Trace};
use crate::stats::percentile;
use crate::transcript::{StepOutcome, StepRecord};

/// The longest the host sleeps between two looks at the guest: a guest
/// that crashes during a long gap is reported within this.
const WATCH: Duration = Duration::from_millis(100);

/// When each injection of a replay was due and when the host started it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayTiming {
    /// Times faster than recorded.
    pub speed: f64,
    /// Per injection, in order: its recorded time divided by the speed,
    /// from the replay's start.
    pub due: Vec<Duration>,
    /// Per injection: when the host started it, from the replay's start.
    pub started: Vec<Duration>,
}

impl ReplayTiming {
    /// How late each injection started, sorted: never negative, since the
    /// host waits for each one's time on a monotonic clock.
    pub fn lateness(&self) -> Vec<Duration> {
        let mut late: Vec<Duration> =
            self.due.iter().zip(&self.started).map(|(due, started)| started.saturating_sub(*due)).collect();
        late.sort();
        late
    }

    /// The `p`th percentile of [`Self::lateness`], if anything was injected.
    pub fn late_percentile(&self, p: usize) -> Option<Duration> {
        let late = self.lateness();
        (!late.is_empty()).then(|| percentile(&late, p))
    }
}

impl fmt::Display for ReplayTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        write!(
            f,
            "{} injection(s) at speed {}, started after their recorded times by p50 {:.3} ms, p99 {:.3} ms, max \
             {:.3} ms (host time, not part of the snapshot)",
            self.due.len(),
            self.speed,
            ms(self.late_percentile(50)),
            ms(self.late_percentile(99)),
            ms(self.late_percentile(100)),
        )
    }
}

/// What a replay did: its timing, and the interrupts it raised per CPU.
#[derive(Debug)]
pub struct Replayed {
    /// When each injection was due and started.
    pub timing: ReplayTiming,
    /// Interrupts raised per CPU (a package injection: each core of the package).
    pub interrupts: BTreeMap<u32, u64>,
}

/// The host's clock, so that the pacing can be tested without waiting.
pub trait Clock {
    /// Now.
    fn now(&mut self) -> Instant;
    /// Sleeps at least until `until`, in slices of at most `slice`, calling
    /// `watch` between them and at both ends: an error ends the wait.
    fn sleep_until(
        &mut self,
        until: Instant,
        slice: Duration,
        watch: &mut dyn FnMut() -> Result<(), Failure>,
    ) -> Result<(), Failure>;
}

/// The real monotonic clock.
pub struct HostClock;

impl Clock for HostClock {
    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn sleep_until(
        &mut self,
        until: Instant,
        slice: Duration,
        watch: &mut dyn FnMut() -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let bound = until.saturating_duration_since(Instant::now());
        crate::wait::until(bound, slice, || watch().err()).map_or(Ok(()), Err)
    }
}

/// Paces `injections` of a trace at `speed` on `clock`, handing each to
/// `inject` once its time has come; `watch` runs while waiting.
pub fn pace(
    injections: &[trace::Injection],
    speed: f64,
    clock: &mut dyn Clock,
    watch: &mut dyn FnMut() -> Result<(), Failure>,
    inject: &mut dyn FnMut(&trace::Injection) -> Result<(), Failure>,
) -> Result<ReplayTiming, Failure> {
    let start = clock.now();
    let mut timing = ReplayTiming { speed, due: Vec::new(), started: Vec::new() };
    for injection in injections {
        let due = injection.at.div_f64(speed);
        clock.sleep_until(start + due, WATCH, watch)?;
        timing.due.push(due);
        timing.started.push(clock.now() - start);
        inject(injection)?;
    }
    Ok(timing)
}

/// Replays `trace` at `speed` into `machine` through `injector`, adding
/// what each injection caused and any refusal to `record`.
pub fn replay(
    machine: &mut Machine,
    injector: Injector,
    trace: &Trace,
    speed: f64,
    bound: Duration,
    record: &mut StepRecord,
) -> Result<Replayed, Failure> {
    if trace.topology != machine.topology() {
        return Err(Failure::Host {
            message: format!(
                "{} was recorded on {}, and this guest has {}",
                trace.path.display(),
                trace.topology,
                machine.topology()
            ),
        });
    }
    let injections = trace.injections();
    let mut interrupts: BTreeMap<u32, u64> = BTreeMap::new();
    let mut made = 0usize;
    let machine = std::cell::RefCell::new(machine);
    let timing = pace(
        &injections,
        speed,
        &mut HostClock,
        &mut || machine.borrow().crash().map_or(Ok(()), Err),
        &mut |injection| {
            let injected = machine.borrow_mut().inject(
                injector,
                Injection { cpu: injection.cpu, register: injection.msr.into(), value: injection.value },
                bound,
            )?;
            made += 1;
            for cpu in &injected.interrupted {
                *interrupts.entry(*cpu).or_default() += 1;
            }
            record.datagrams.extend(injected.datagrams);
            record.dbus.extend(injected.dbus);
            record.note(injected.refused.map_or(StepOutcome::Done, StepOutcome::from));
            Ok(())
        },
    )?;
    record.repeat = made.max(1) as u32;
    Ok(Replayed { timing, interrupts })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;
    use std::rc::Rc;

    use super::*;

    /// A clock that jumps to whatever it is asked to sleep until; the
    /// injections move it on as long as they take.
    struct FakeClock {
        now: Rc<Cell<Instant>>,
        slept_in_slices: Vec<Duration>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock { now: Rc::new(Cell::new(Instant::now())), slept_in_slices: Vec::new() }
        }
    }

    impl Clock for FakeClock {
        fn now(&mut self) -> Instant {
            self.now.get()
        }

        fn sleep_until(
            &mut self,
            until: Instant,
            slice: Duration,
            watch: &mut dyn FnMut() -> Result<(), Failure>,
        ) -> Result<(), Failure> {
            while self.now.get() < until {
                let step = (until - self.now.get()).min(slice);
                self.slept_in_slices.push(step);
                self.now.set(self.now.get() + step);
                watch()?;
            }
            Ok(())
        }
    }

    fn trace() -> Trace {
        crate::msr_trace::parse(
            Path::new("t.csv"),
            "# kevent-bench thermal trace 1\n# cpu 0 package 0 core 0\n# cpu 1 package 0 core 1\n\
             time_us,cpu,package,register,value\n0,0,0,0x19c,0x80320000\n1000,0,0,0x19c,0x80050001\n\
             1000,1,0,0x1b1,0x50001\n250000,0,0,0x19c,0x80320000\n",
        )
        .unwrap()
    }

    #[test]
    fn injections_wait_for_their_recorded_time_divided_by_the_speed() {
        let injections = trace().injections();
        for speed in [1.0, 4.0] {
            let mut clock = FakeClock::new();
            let mut made = Vec::new();
            let mut watched = 0;
            let timing = pace(
                &injections,
                speed,
                &mut clock,
                &mut || {
                    watched += 1;
                    Ok(())
                },
                &mut |i| {
                    made.push(i.line);
                    Ok(())
                },
            )
            .unwrap();
            // The first row is the reset image: nothing to inject.
            assert_eq!(made, [6, 7, 8], "speed {speed}");
            let expected: Vec<Duration> =
                [1000u64, 1000, 250_000].iter().map(|us| Duration::from_micros(*us).div_f64(speed)).collect();
            assert_eq!(timing.due, expected, "speed {speed}");
            assert_eq!(timing.started, expected, "a clock that wakes on time starts each on time");
            assert_eq!(timing.late_percentile(99), Some(Duration::ZERO));
            // The long gap is slept in slices, the guest watched after each.
            assert!(clock.slept_in_slices.iter().all(|s| *s <= WATCH));
            // 1 ms, nothing, then 249 ms: 1 + 0 + 3 slices at speed 1; at speed 4
            // 0.25 ms, nothing, 62.25 ms: 1 + 0 + 1.
            let slices = if speed == 1.0 { 4 } else { 2 };
            assert_eq!(clock.slept_in_slices.len(), slices, "{:?}", clock.slept_in_slices);
            assert_eq!(watched, clock.slept_in_slices.len());
        }
    }

    #[test]
    fn a_slow_injection_makes_the_next_late_and_the_lateness_says_so() {
        let injections = trace().injections();
        let mut clock = FakeClock::new();
        let now = Rc::clone(&clock.now);
        // Each injection takes 2 ms: the second, due with the first, starts
        // 2 ms late; the third, due 249 ms later, on time.
        let timing = pace(&injections, 1.0, &mut clock, &mut || Ok(()), &mut |_| {
            now.set(now.get() + Duration::from_millis(2));
            Ok(())
        })
        .unwrap();
        assert_eq!(timing.lateness(), [Duration::ZERO, Duration::ZERO, Duration::from_millis(2)]);
        assert_eq!(timing.late_percentile(50), Some(Duration::ZERO));
        assert_eq!(timing.late_percentile(100), Some(Duration::from_millis(2)));
        let text = timing.to_string();
        assert!(
            text.starts_with(
                "3 injection(s) at speed 1, started after their recorded times by p50 0.000 ms, p99 2.000 ms"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_guest_that_dies_during_a_gap_ends_the_wait() {
        let injections = trace().injections();
        let mut clock = FakeClock::new();
        let mut made = 0;
        let e = pace(&injections, 1.0, &mut clock, &mut || Err(Failure::Host { message: "gone".into() }), &mut |_| {
            made += 1;
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
        assert_eq!(made, 0, "the first injection was due 1 ms in, after a look at the guest");
    }
}
