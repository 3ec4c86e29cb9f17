//! QEMU's process and the waits on it: every one bounded, every one ended
//! at once by a crash, an exit or a fatal agent error, each with the
//! failure that says what happened.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kevent_wire::{write_frame, Datagram, DbusMessage, GuestMessage, HostMessage, Outcome};

use super::pump::{spawn_console_reader, spawn_stderr_collector, Event};
use super::qmp::PauseClock;
use super::{Exchange, MachineConfig};
use crate::console::CrashDetector;
use crate::failure::{Failure, Stage};
use crate::process::{self, Child};
use crate::qemu;

/// Console lines kept in memory for excerpts; console.log has them all.
pub(super) const CONSOLE_MEMORY: usize = 2000;

pub(super) const CONSOLE_TAIL: usize = 25;

/// How long to let a kernel report finish printing once it has started.
pub(super) const REPORT_GRACE: Duration = Duration::from_secs(3);

#[derive(Default)]
pub(super) struct ConsoleState {
    pub(super) recent: VecDeque<String>,
    pub(super) detector: CrashDetector,
    pub(super) closed: bool,
}

/// QEMU and the threads that watch it; the agent channel once connected.
/// How long the agent reader may take to deliver what QEMU's socket still
/// held once QEMU has exited.
const AGENT_DRAIN: Duration = Duration::from_secs(1);

pub(super) struct Guest {
    pub(super) child: Child,
    pub(super) events: Receiver<Event>,
    pub(super) channel: Option<UnixStream>,
    pub(super) console: Arc<Mutex<ConsoleState>>,
    /// What QEMU wrote to stderr; complete once the collector has finished.
    pub(super) qemu_stderr: Arc<Mutex<String>>,
    pub(super) stderr_collector: Option<thread::JoinHandle<()>>,
    pub(super) spawned: Instant,
    /// Handed to the agent reader once QEMU connects.
    pub(super) sender: Option<Sender<Event>>,
    /// Datagrams received and not yet handed out, with when each arrived.
    pub(super) captured: Vec<Datagram>,
    pub(super) arrived: Vec<Instant>,
    /// Messages of the guest's bus likewise.
    pub(super) captured_dbus: Vec<DbusMessage>,
    pub(super) dbus_arrived: Vec<Instant>,
    pub(super) next_request: u32,
    /// QEMU's command line, as a shell would read it back.
    pub(super) command_line: String,
    /// Set when a debugger may stop the guest: the time it held it, which
    /// no wait counts against its bound.
    pub(super) pause: Option<Arc<PauseClock>>,
}

impl Guest {
    pub(super) fn spawn(
        config: &MachineConfig,
        socket_path: &Path,
        sensor_socket: Option<&Path>,
        qmp_socket: Option<&Path>,
        log_file: File,
    ) -> Result<Guest, Failure> {
        let mut args = qemu::command_line(&config.guest_spec(), config.accel, socket_path, sensor_socket);
        if let (Some(gdb), Some(qmp)) = (&config.gdb, qmp_socket) {
            args.extend(qemu::debug_args(gdb, qmp));
        }
        let command_line = qemu::shell_command(&config.qemu.binary, &args);
        let spawned = Instant::now();
        let mut child = process::spawn(
            qemu::command(&config.qemu.binary)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| Failure::QemuStart {
            message: format!("cannot run {}: {e}", config.qemu),
            qemu_stderr: String::new(),
        })?;
        let (tx, events) = mpsc::channel();
        let console = Arc::new(Mutex::new(ConsoleState::default()));
        let qemu_stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.inner().stdout.take().expect("stdout is piped");
        let stderr = child.inner().stderr.take().expect("stderr is piped");
        spawn_console_reader(stdout, log_file, config.stream_console, Arc::clone(&console), tx.clone());
        let stderr_collector = Some(spawn_stderr_collector(stderr, Arc::clone(&qemu_stderr)));
        Ok(Guest {
            child,
            events,
            channel: None,
            console,
            qemu_stderr,
            stderr_collector,
            spawned,
            sender: Some(tx),
            captured: Vec::new(),
            arrived: Vec::new(),
            captured_dbus: Vec::new(),
            dbus_arrived: Vec::new(),
            next_request: 1,
            command_line,
            pause: None,
        })
    }

    /// How long a debugger has held the guest so far.
    fn stopped_total(&self) -> Duration {
        self.pause.as_ref().map_or(Duration::ZERO, |p| p.stopped_total())
    }

    /// Waits for QEMU to connect to one of the host's sockets.
    pub(super) fn accept(
        &mut self,
        listener: &UnixListener,
        what: &str,
        bound: Duration,
    ) -> Result<UnixStream, Failure> {
        listener.set_nonblocking(true).map_err(|e| Failure::io(format!("watch {what}"), e))?;
        let left = (self.spawned + bound).saturating_duration_since(Instant::now());
        let connected = crate::wait::until(left, Duration::from_millis(5), || match listener.accept() {
            Ok((stream, _)) => Some(Ok(stream)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match self.child.try_wait() {
                Ok(Some(status)) => Some(Err(Failure::QemuStart {
                    message: format!("QEMU exited ({status}) before connecting to {what}"),
                    qemu_stderr: String::new(),
                })),
                _ => None,
            },
            Err(e) => Some(Err(Failure::io(format!("accept QEMU's connection to {what}"), e))),
        });
        match connected {
            Some(Ok(stream)) => Ok(stream),
            Some(Err(Failure::QemuStart { message, .. })) => {
                Err(Failure::QemuStart { message, qemu_stderr: self.qemu_said() })
            }
            Some(Err(failure)) => Err(failure),
            None => {
                self.kill();
                Err(Failure::QemuStart {
                    message: format!("QEMU did not connect to {what} within {:.1} s", bound.as_secs_f64()),
                    qemu_stderr: self.qemu_said(),
                })
            }
        }
    }

    pub(super) fn send(&mut self, message: &HostMessage) -> Result<(), Failure> {
        let channel = self.channel.as_mut().expect("the agent is connected");
        write_frame(channel, &message.encode())
            .map_err(|e| Failure::Protocol { message: "send to the agent".into(), source: Some(e.into()) })
    }

    /// Waits for the event `pick` selects, failing on anything that ends
    /// the run: a kernel report, QEMU's exit, a fatal agent error, the bound.
    /// The bound does not run while a debugger holds the guest.
    pub(super) fn wait_for<T>(
        &mut self,
        stage: Stage,
        bound: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, Failure> {
        // Time a debugger holds the guest moves the deadline by as much; a
        // wait that wakes at the old deadline sees the new one, since the
        // stop in progress counts.
        let (started, stopped_before) = (Instant::now(), self.stopped_total());
        let deadline = |guest: &Guest| started + bound + (guest.stopped_total() - stopped_before);
        loop {
            let left = deadline(self).saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(left) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline(self) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(self.timeout(stage, bound)),
                Err(RecvTimeoutError::Disconnected) => Event::ConsoleClosed,
            };
            if let Some(found) = pick(&event) {
                return Ok(found);
            }
            self.absorb(stage, event)?;
        }
    }

    /// Waits until `done` holds, checking it at every event and every
    /// `tick`; Ok(false) once `bound` has passed. Fails like [`Self::wait_for`].
    pub(super) fn wait_until(
        &mut self,
        stage: Stage,
        bound: Duration,
        tick: Duration,
        mut done: impl FnMut(&Guest) -> bool,
    ) -> Result<bool, Failure> {
        let (started, stopped_before) = (Instant::now(), self.stopped_total());
        loop {
            if done(self) {
                return Ok(true);
            }
            let deadline = started + bound + (self.stopped_total() - stopped_before);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.events.recv_timeout(left.min(tick)) {
                Ok(event) => self.absorb(stage, event)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.absorb(stage, Event::ConsoleClosed)?,
            }
        }
    }

    /// Keeps what an event carries (datagrams) and turns everything that
    /// ends the run into its failure.
    pub(super) fn absorb(&mut self, stage: Stage, event: Event) -> Result<(), Failure> {
        match event {
            Event::Crash => {
                if let Some(failure) = self.crash_after_grace() {
                    return Err(failure);
                }
            }
            Event::ConsoleClosed => {
                let status = wait_exit(&mut self.child, Duration::from_secs(2));
                if let Some(failure) = self.crash_failure() {
                    return Err(failure);
                }
                // The agent's last frame can still be on its way when the
                // console closes: its own words explain the exit better.
                if let Some(fatal) = self.agent_last_words() {
                    return Err(fatal);
                }
                let status = status.map_or_else(|| "still running".to_owned(), |s| s.to_string());
                if self.console.lock().unwrap().recent.is_empty() {
                    // QEMU connects its chardevs before it loads the kernel:
                    // an exit with a silent console is QEMU refusing to start.
                    return Err(Failure::QemuStart {
                        message: format!("QEMU exited ({status}) before the guest printed anything"),
                        qemu_stderr: self.qemu_said(),
                    });
                }
                return Err(self.exited_failure(stage, status));
            }
            Event::Agent(GuestMessage::Fatal { stage, errno, message }) => {
                // The agent restarts the machine next; let the console drain.
                wait_exit(&mut self.child, Duration::from_secs(2));
                return Err(Failure::AgentFatal { stage, errno, message, console_tail: self.console_tail() });
            }
            Event::AgentError(e) => {
                self.kill();
                return Err(Failure::Protocol { message: "read the agent's frames".into(), source: Some(e) });
            }
            Event::Agent(GuestMessage::Hello(_)) => {
                self.kill();
                return Err(Failure::protocol("the agent greeted twice"));
            }
            Event::Datagram(datagram, at) => {
                self.captured.push(datagram);
                self.arrived.push(at);
            }
            Event::Agent(GuestMessage::Datagram(datagram)) => {
                self.captured.push(datagram);
                self.arrived.push(Instant::now());
            }
            Event::Dbus(message, at) => {
                self.captured_dbus.push(message);
                self.dbus_arrived.push(at);
            }
            Event::Agent(GuestMessage::Dbus(message)) => {
                self.captured_dbus.push(message);
                self.dbus_arrived.push(Instant::now());
            }
            Event::Agent(GuestMessage::ServicesFailed { why, services }) => {
                // What the agent sent before its report is already here;
                // the guest has nothing more for this run.
                let console_tail = self.console_tail();
                return Err(self.fail(Failure::DbusFailed { why, services, console_tail }));
            }
            Event::Agent(GuestMessage::Overrun { protocol, occurrences }) => {
                self.kill();
                return Err(Failure::EventsLost { protocol, occurrences, captured: self.captured.len() });
            }
            Event::Agent(GuestMessage::Reply { id, .. }) => {
                self.kill();
                return Err(Failure::protocol(format!("a reply to request {id}, which is not pending")));
            }
            Event::IgnoredInput(line) => {
                return Err(self.fail(Failure::IgnoredInput { line }));
            }
            Event::AgentStarted(_) | Event::AgentClosed | Event::SensorAck => {}
        }
        Ok(())
    }

    /// After QEMU has gone: what the agent reader still had to deliver,
    /// up to the end of the channel, and the agent's fatal error if it was
    /// among it. Datagrams are kept.
    fn agent_last_words(&mut self) -> Option<Failure> {
        // The sender is handed to the agent reader when QEMU connects;
        // before that, nothing more can come.
        if self.sender.is_some() {
            return None;
        }
        let deadline = Instant::now() + AGENT_DRAIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Agent(GuestMessage::Fatal { stage, errno, message })) => {
                    return Some(Failure::AgentFatal { stage, errno, message, console_tail: self.console_tail() });
                }
                Ok(Event::Datagram(datagram, at)) => {
                    self.captured.push(datagram);
                    self.arrived.push(at);
                }
                Ok(Event::Dbus(message, at)) => {
                    self.captured_dbus.push(message);
                    self.dbus_arrived.push(at);
                }
                Ok(Event::Agent(GuestMessage::ServicesFailed { why, services })) => {
                    return Some(Failure::DbusFailed { why, services, console_tail: self.console_tail() });
                }
                Ok(Event::AgentClosed) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// A report has started: let it finish printing (or the guest die), then
    /// stop the guest and return the report. A panic is one only if the
    /// machine goes down after it (panic=-1 restarts at once, and QEMU
    /// exits): a panic line the guest survives was written by user space,
    /// and the run goes on.
    pub(super) fn crash_after_grace(&mut self) -> Option<Failure> {
        crate::wait::until(REPORT_GRACE, Duration::from_millis(20), || {
            let console = self.console.lock().unwrap();
            let panic_pending = console.detector.panic().is_some();
            (console.closed || (console.detector.excerpt_complete() && !panic_pending)).then_some(())
        });
        {
            let mut console = self.console.lock().unwrap();
            if console.closed {
                // QEMU is on its way out by itself: a kill now could only
                // turn its own exit status into SIGKILL's.
                drop(console);
                return self.crash_failure();
            }
            // The guest outlived its panic line (it is still up, or it
            // restarted in order during the grace): user space wrote it.
            // With nothing else reported, the run goes on.
            console.detector.retract_panic();
            console.detector.report()?;
        }
        self.kill();
        self.await_console_close();
        self.crash_failure()
    }

    /// The kernel report of the run, if any. Once QEMU has gone, a panic
    /// line is confirmed by that and counts.
    pub(super) fn crash_failure(&self) -> Option<Failure> {
        let console = self.console.lock().unwrap();
        let report =
            if console.closed { console.detector.report_after_exit() } else { console.detector.report().cloned() }?;
        Some(Failure::KernelCrash { kind: report.kind, excerpt: report.excerpt })
    }

    /// After QEMU has been killed, its console reader reaches the end of
    /// the stream soon; what it read last may complete a report.
    pub(super) fn await_console_close(&self) {
        crate::wait::until(Duration::from_secs(1), Duration::from_millis(5), || {
            self.console.lock().unwrap().closed.then_some(())
        });
    }

    pub(super) fn timeout(&mut self, stage: Stage, waited: Duration) -> Failure {
        self.kill();
        self.await_console_close();
        if let Some(failure) = self.crash_failure() {
            return failure;
        }
        Failure::Timeout { stage, waited, console_tail: self.console_tail() }
    }

    pub(super) fn exited_failure(&mut self, stage: Stage, status: String) -> Failure {
        Failure::QemuExited { stage, status, qemu_stderr: self.qemu_said(), console_tail: self.console_tail() }
    }

    /// QEMU's stderr; all of it once QEMU has exited.
    pub(super) fn qemu_said(&mut self) -> String {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            if let Some(collector) = self.stderr_collector.take() {
                let _ = collector.join();
            }
        }
        self.qemu_stderr.lock().unwrap().clone()
    }

    pub(super) fn console_tail(&self) -> Vec<String> {
        console_tail(&self.console)
    }

    pub(super) fn exchange(&mut self, outcome: Outcome) -> Exchange {
        Exchange {
            outcome,
            datagrams: std::mem::take(&mut self.captured),
            arrived: std::mem::take(&mut self.arrived),
            dbus: std::mem::take(&mut self.captured_dbus),
            dbus_arrived: std::mem::take(&mut self.dbus_arrived),
        }
    }

    pub(super) fn sensor_not_ready(&mut self, waited: Duration, detail: String) -> Failure {
        let console_tail = self.console_tail();
        self.fail(Failure::SensorNotReady { waited, detail, console_tail })
    }

    /// A run-ending failure found while the guest was otherwise waited for:
    /// the guest is stopped, and a kernel report wins over `failure`.
    pub(super) fn fail(&mut self, failure: Failure) -> Failure {
        self.kill();
        self.await_console_close();
        self.crash_failure().unwrap_or(failure)
    }

    pub(super) fn kill(&mut self) {
        self.child.kill();
    }
}

pub(super) fn console_tail(console: &Mutex<ConsoleState>) -> Vec<String> {
    let console = console.lock().unwrap();
    let skip = console.recent.len().saturating_sub(CONSOLE_TAIL);
    console.recent.iter().skip(skip).cloned().collect()
}

pub(super) fn wait_exit(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    child.wait_timeout(bound).ok().flatten()
}
