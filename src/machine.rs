//! One guest: QEMU started, watched, spoken to, and stopped.
//!
//! Three threads feed one channel of [`Event`]s: the console reader (QEMU's
//! stdout: log file, crash detection, the agent's start marker), the agent
//! reader (frames from the virtio-serial socket), and QEMU's stderr collector.
//! Every wait is a `recv_timeout` on that channel against a stage deadline, so
//! a crash, an exit or a fatal agent error ends any wait at once, and a hang
//! ends it at the bound.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kevent_wire::{read_frame, write_frame, Datagram, GuestMessage, Hello, HostMessage, Outcome, WireError};

use crate::accel::Accel;
use crate::console::CrashDetector;
use crate::failure::{Failure, Stage};
use crate::qemu::{self, GuestSpec};

/// Bounds of each stage. The defaults hold for TCG on a loaded 2-core host
/// with a debug kernel; a healthy boot takes about a second.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub qemu_start: Duration,
    pub kernel_boot: Duration,
    pub agent_greeting: Duration,
    pub command: Duration,
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            qemu_start: Duration::from_secs(10),
            kernel_boot: Duration::from_secs(60),
            agent_greeting: Duration::from_secs(30),
            command: Duration::from_secs(60),
            shutdown: Duration::from_secs(15),
        }
    }
}

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// QEMU's binary: [`qemu::qemu_binary`] unless a caller knows better.
    pub qemu: PathBuf,
    pub guest: GuestSpec,
    pub accel: Accel,
    /// Where `console.log` of this run is written.
    pub run_dir: PathBuf,
    /// Copy every console line to stderr as it arrives.
    pub stream_console: bool,
    pub timeouts: Timeouts,
}

impl MachineConfig {
    /// `guest` under `accel`, logging to `run_dir`: QEMU from
    /// [`qemu::qemu_binary`], default bounds, console not streamed.
    pub fn new(guest: GuestSpec, accel: Accel, run_dir: PathBuf) -> Self {
        MachineConfig {
            qemu: qemu::qemu_binary(),
            guest,
            accel,
            run_dir,
            stream_console: false,
            timeouts: Timeouts::default(),
        }
    }
}

/// Host wall-clock milestones of a boot, from QEMU's spawn.
#[derive(Debug, Clone, Copy)]
pub struct BootTimings {
    /// QEMU connected to the agent channel: QEMU is up.
    pub qemu_started: Duration,
    /// The agent printed its start marker: the kernel has booted to /init.
    pub kernel_booted: Duration,
    /// The greeting arrived.
    pub greeted: Duration,
}

/// How a run that ended cleanly ended.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownReport {
    /// From QEMU's spawn to its exit.
    pub total: Duration,
    /// From the shutdown request to QEMU's exit.
    pub shutdown: Duration,
}

enum Event {
    AgentStarted(Instant),
    /// A console line started a kernel report.
    Crash,
    ConsoleClosed,
    Agent(GuestMessage),
    AgentClosed,
    AgentError(WireError),
}

/// Console lines kept in memory for excerpts; console.log has them all.
const CONSOLE_MEMORY: usize = 2000;
const CONSOLE_TAIL: usize = 25;
/// How long to let a kernel report finish printing once it has started.
const REPORT_GRACE: Duration = Duration::from_secs(3);

#[derive(Default)]
struct ConsoleState {
    recent: VecDeque<String>,
    detector: CrashDetector,
    closed: bool,
}

/// A running guest whose agent has greeted the host.
pub struct Machine {
    guest: Guest,
    pub hello: Hello,
    pub timings: BootTimings,
    pub console_log: PathBuf,
    /// Dropped last: QEMU must be gone before its socket is removed.
    _socket_dir: SocketDir,
}

/// QEMU and the threads that watch it; the agent channel once connected.
struct Guest {
    child: Child,
    events: Receiver<Event>,
    channel: Option<UnixStream>,
    console: Arc<Mutex<ConsoleState>>,
    /// What QEMU wrote to stderr; complete once the collector has finished.
    qemu_stderr: Arc<Mutex<String>>,
    stderr_collector: Option<thread::JoinHandle<()>>,
    spawned: Instant,
    /// Handed to the agent reader once QEMU connects.
    sender: Option<Sender<Event>>,
    /// Datagrams received and not yet handed out.
    captured: Vec<Datagram>,
    next_request: u32,
}

/// A private directory for the agent socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> std::io::Result<SocketDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kevent-bench-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir)?;
        Ok(SocketDir(dir))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn host_error(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Host { message: format!("{what}: {e}") }
}

impl Machine {
    /// Starts QEMU and waits, stage by stage, for the agent's greeting.
    pub fn boot(config: &MachineConfig) -> Result<Machine, Failure> {
        let socket_dir = SocketDir::create().map_err(|e| host_error("create the agent socket directory", e))?;
        let socket_path = socket_dir.0.join("agent.sock");
        // Listening before QEMU starts: QEMU connects as a client at startup.
        let listener = UnixListener::bind(&socket_path).map_err(|e| host_error("bind the agent socket", e))?;
        fs::create_dir_all(&config.run_dir).map_err(|e| host_error("create the run directory", e))?;
        let console_log = config.run_dir.join("console.log");
        let log_file =
            File::create(&console_log).map_err(|e| host_error(&format!("create {}", console_log.display()), e))?;

        let mut guest = Guest::spawn(config, &socket_path, log_file)?;
        let channel = guest.accept_agent(&listener, config.timeouts.qemu_start)?;
        let qemu_started = guest.spawned.elapsed();
        let reader = channel.try_clone().map_err(|e| host_error("clone the agent socket", e))?;
        spawn_agent_reader(reader, guest.sender.take().expect("sender kept until the agent connects"));
        guest.channel = Some(channel);

        let started_at = guest.wait_for(Stage::KernelBoot, config.timeouts.kernel_boot, |e| match e {
            Event::AgentStarted(at) => Some(*at),
            _ => None,
        })?;
        let kernel_booted = started_at - guest.spawned;
        let hello = guest.wait_for(Stage::AgentGreeting, config.timeouts.agent_greeting, |e| match e {
            Event::Agent(GuestMessage::Hello(h)) => Some(h.clone()),
            _ => None,
        })?;
        let timings = BootTimings { qemu_started, kernel_booted, greeted: guest.spawned.elapsed() };
        Ok(Machine { guest, hello, timings, console_log, _socket_dir: socket_dir })
    }

    /// Asks the agent to power off and waits for QEMU to exit; a kernel
    /// report on the console at any point of the run fails it here.
    pub fn shutdown(mut self, bound: Duration) -> Result<ShutdownReport, Failure> {
        let guest = &mut self.guest;
        let requested = Instant::now();
        guest.send(&HostMessage::Shutdown)?;
        guest.wait_for(Stage::Shutdown, bound, |e| matches!(e, Event::ConsoleClosed).then_some(()))?;
        let status = wait_exit(&mut guest.child, bound.saturating_sub(requested.elapsed()));
        if let Some(failure) = guest.crash_failure() {
            return Err(failure);
        }
        match status {
            Some(status) if status.success() => {
                Ok(ShutdownReport { total: guest.spawned.elapsed(), shutdown: requested.elapsed() })
            }
            Some(status) => Err(guest.exited_failure(Stage::Shutdown, status.to_string())),
            None => Err(guest.timeout(Stage::Shutdown, bound)),
        }
    }
}

/// A request's outcome and the datagrams received while it ran.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub outcome: Outcome,
    /// Every datagram the agent received before it replied, in order.
    pub datagrams: Vec<Datagram>,
}

impl Machine {
    /// Sends one request and waits (bounded) for its reply. The agent sends
    /// the reply only after draining its capture sockets, so the datagrams
    /// an injection caused are all in its exchange.
    pub fn request(&mut self, command: kevent_wire::Command, bound: Duration) -> Result<Exchange, Failure> {
        let guest = &mut self.guest;
        let id = guest.next_request;
        guest.next_request += 1;
        guest.send(&HostMessage::Request { id, command })?;
        let outcome = guest.wait_for(Stage::Command, bound, |e| match e {
            Event::Agent(GuestMessage::Reply { id: reply, outcome }) if *reply == id => Some(outcome.clone()),
            _ => None,
        })?;
        Ok(Exchange { outcome, datagrams: std::mem::take(&mut guest.captured) })
    }

    /// The console lines of a kernel report seen so far, if any: a WARN
    /// does not stop the kernel, so runs check this between steps.
    pub fn crash(&self) -> Option<Failure> {
        self.guest.crash_failure()
    }
}

impl Guest {
    fn spawn(config: &MachineConfig, socket_path: &Path, log_file: File) -> Result<Guest, Failure> {
        let qemu_binary = &config.qemu;
        let args = qemu::command_line(&config.guest, config.accel, socket_path);
        let spawned = Instant::now();
        let mut child = Command::new(qemu_binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::QemuStart {
                message: format!(
                    "cannot run {}: {e}; install it (Debian: apt-get install qemu-system-x86) or set {} to its path",
                    qemu_binary.display(),
                    qemu::QEMU_ENV
                ),
                qemu_stderr: String::new(),
            })?;
        let (tx, events) = mpsc::channel();
        let console = Arc::new(Mutex::new(ConsoleState::default()));
        let qemu_stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
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
            next_request: 1,
        })
    }

    /// Waits for QEMU to connect to the agent socket.
    fn accept_agent(&mut self, listener: &UnixListener, bound: Duration) -> Result<UnixStream, Failure> {
        let deadline = self.spawned + bound;
        loop {
            let mut pollfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: pollfd is a valid array of one element for the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, 10) };
            if ready > 0 {
                return listener
                    .accept()
                    .map(|(stream, _)| stream)
                    .map_err(|e| host_error("accept QEMU's connection", e));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Failure::QemuStart {
                    message: format!("QEMU exited ({status}) before connecting to the agent channel"),
                    qemu_stderr: self.qemu_said(),
                });
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(Stage::QemuStart, bound));
            }
        }
    }

    fn send(&mut self, message: &HostMessage) -> Result<(), Failure> {
        let channel = self.channel.as_mut().expect("the agent is connected");
        write_frame(channel, &message.encode())
            .map_err(|e| Failure::Protocol { message: format!("send to the agent: {e}") })
    }

    /// Waits for the event `pick` selects, failing on anything that ends
    /// the run: a kernel report, QEMU's exit, a fatal agent error, the bound.
    fn wait_for<T>(
        &mut self,
        stage: Stage,
        bound: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, Failure> {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(left) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => return Err(self.timeout(stage, bound)),
                Err(RecvTimeoutError::Disconnected) => Event::ConsoleClosed,
            };
            if let Some(found) = pick(&event) {
                return Ok(found);
            }
            match event {
                Event::Crash => return Err(self.crash_after_grace()),
                Event::ConsoleClosed => {
                    let status = wait_exit(&mut self.child, Duration::from_secs(2));
                    if let Some(failure) = self.crash_failure() {
                        return Err(failure);
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
                Event::Agent(GuestMessage::Fatal { message }) => {
                    // The agent restarts the machine next; let the console drain.
                    wait_exit(&mut self.child, Duration::from_secs(2));
                    return Err(Failure::AgentFatal { message, console_tail: self.console_tail() });
                }
                Event::AgentError(e) => {
                    self.kill();
                    return Err(Failure::Protocol { message: e.to_string() });
                }
                Event::Agent(GuestMessage::Hello(_)) => {
                    self.kill();
                    return Err(Failure::Protocol { message: "the agent greeted twice".into() });
                }
                Event::Agent(GuestMessage::Datagram(datagram)) => self.captured.push(datagram),
                Event::Agent(GuestMessage::Overrun { protocol, occurrences }) => {
                    self.kill();
                    return Err(Failure::EventsLost { protocol, occurrences, captured: self.captured.len() });
                }
                Event::Agent(GuestMessage::Reply { id, .. }) => {
                    self.kill();
                    return Err(Failure::Protocol {
                        message: format!("a reply to request {id}, which is not pending"),
                    });
                }
                Event::AgentStarted(_) | Event::AgentClosed => {}
            }
        }
    }

    /// A report has started: let it finish printing (or the guest die), then
    /// stop the guest and return the report.
    fn crash_after_grace(&mut self) -> Failure {
        let deadline = Instant::now() + REPORT_GRACE;
        while Instant::now() < deadline {
            {
                let console = self.console.lock().unwrap();
                if console.detector.excerpt_complete() || console.closed {
                    break;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        self.crash_failure().expect("a crash event comes with a report")
    }

    fn crash_failure(&self) -> Option<Failure> {
        let console = self.console.lock().unwrap();
        let report = console.detector.report()?;
        Some(Failure::KernelCrash { kind: report.kind, excerpt: report.excerpt.clone() })
    }

    fn timeout(&mut self, stage: Stage, waited: Duration) -> Failure {
        self.kill();
        if let Some(failure) = self.crash_failure() {
            return failure;
        }
        Failure::Timeout { stage, waited, console_tail: self.console_tail() }
    }

    fn exited_failure(&mut self, stage: Stage, status: String) -> Failure {
        Failure::QemuExited { stage, status, qemu_stderr: self.qemu_said(), console_tail: self.console_tail() }
    }

    /// QEMU's stderr; all of it once QEMU has exited.
    fn qemu_said(&mut self) -> String {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            if let Some(collector) = self.stderr_collector.take() {
                let _ = collector.join();
            }
        }
        self.qemu_stderr.lock().unwrap().clone()
    }

    fn console_tail(&self) -> Vec<String> {
        console_tail(&self.console)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn console_tail(console: &Mutex<ConsoleState>) -> Vec<String> {
    let console = console.lock().unwrap();
    let skip = console.recent.len().saturating_sub(CONSOLE_TAIL);
    console.recent.iter().skip(skip).cloned().collect()
}

fn wait_exit(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

fn spawn_console_reader(
    stdout: impl Read + Send + 'static,
    log: File,
    stream: bool,
    console: Arc<Mutex<ConsoleState>>,
    tx: Sender<Event>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut log = BufWriter::new(log);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let _ = writeln!(log, "{line}");
            let _ = log.flush();
            if stream {
                eprintln!("{line}");
            }
            let started = line.starts_with(kevent_wire::AGENT_STARTED_MARKER);
            let crash = {
                let mut console = console.lock().unwrap();
                if console.recent.len() == CONSOLE_MEMORY {
                    console.recent.pop_front();
                }
                console.recent.push_back(line.to_owned());
                console.detector.feed(line)
            };
            if started {
                let _ = tx.send(Event::AgentStarted(Instant::now()));
            }
            if crash.is_some() {
                let _ = tx.send(Event::Crash);
            }
        }
        console.lock().unwrap().closed = true;
        let _ = tx.send(Event::ConsoleClosed);
    });
}

fn spawn_stderr_collector(stderr: impl Read + Send + 'static, sink: Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    })
}

fn spawn_agent_reader(mut stream: UnixStream, tx: Sender<Event>) {
    thread::spawn(move || loop {
        let event = match read_frame(&mut stream) {
            Ok(Some((kind, body))) => match GuestMessage::decode(kind, &body) {
                Ok(message) => Event::Agent(message),
                Err(e) => Event::AgentError(e),
            },
            // The guest going away mid-frame is its death, not bad protocol:
            // the console tells why.
            Ok(None) | Err(WireError::Io(_) | WireError::TruncatedFrame { .. }) => Event::AgentClosed,
            Err(e) => Event::AgentError(e),
        };
        let last = !matches!(event, Event::Agent(_));
        if tx.send(event).is_err() || last {
            return;
        }
    });
}

/// Boots `guest` (the floor init) with the very command line of a bench guest
/// and returns the wall time from QEMU's spawn to its exit: the floor that
/// the boot benchmark compares against.
pub fn run_floor(guest: &GuestSpec, accel: Accel, bound: Duration) -> Result<Duration, Failure> {
    let socket_dir = SocketDir::create().map_err(|e| host_error("create the agent socket directory", e))?;
    let socket_path = socket_dir.0.join("agent.sock");
    let listener = UnixListener::bind(&socket_path).map_err(|e| host_error("bind the agent socket", e))?;
    let args = qemu::command_line(guest, accel, &socket_path);
    let spawned = Instant::now();
    let mut child = Command::new(qemu::qemu_binary())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Failure::QemuStart { message: format!("cannot run QEMU: {e}"), qemu_stderr: String::new() })?;
    // QEMU connects at startup and would block on a full socket otherwise;
    // the floor init never writes, so accepting is all there is to do.
    let _connection = listener.accept();
    match wait_exit(&mut child, bound) {
        Some(status) if status.success() => Ok(spawned.elapsed()),
        Some(status) => Err(Failure::QemuExited {
            stage: Stage::Shutdown,
            status: status.to_string(),
            qemu_stderr: String::new(),
            console_tail: Vec::new(),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Failure::Timeout { stage: Stage::Shutdown, waited: bound, console_tail: Vec::new() })
        }
    }
}
