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
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kevent_wire::{read_frame, write_frame, Datagram, GuestMessage, Hello, HostMessage, Outcome, WireError};

use crate::accel::Accel;
use crate::console::CrashDetector;
use crate::failure::{Failure, Stage};
use crate::process::{self, Child};
use crate::qemu::{self, GuestSpec};
use crate::sensor::{CpuStatus, Published, Register, SensorDevice, Timing};

/// Bounds of each stage. The defaults hold for TCG on a loaded 2-core host
/// with a debug kernel; a healthy boot takes about a second.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub qemu_start: Duration,
    pub kernel_boot: Duration,
    pub agent_greeting: Duration,
    pub command: Duration,
    pub shutdown: Duration,
    /// Until the guest's sensor driver has a handler on every vector.
    pub sensor_ready: Duration,
    /// Until the guest acknowledges an injection on the sensor device (or
    /// frees ring space); the kernel's own injection fence is 10 s.
    pub sensor_ack: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            qemu_start: Duration::from_secs(10),
            kernel_boot: Duration::from_secs(60),
            agent_greeting: Duration::from_secs(30),
            command: Duration::from_secs(60),
            shutdown: Duration::from_secs(15),
            sensor_ready: Duration::from_secs(10),
            sensor_ack: Duration::from_secs(15),
        }
    }
}

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// QEMU's binary: [`qemu::resolve`] unless a caller knows better.
    pub qemu: qemu::Qemu,
    pub guest: GuestSpec,
    pub accel: Accel,
    /// Where `console.log` of this run is written.
    pub run_dir: PathBuf,
    /// Copy every console line to stderr as it arrives.
    pub stream_console: bool,
    /// Give the guest the emulated sensor device (see [`crate::sensor`]).
    pub sensor: bool,
    pub timeouts: Timeouts,
}

impl MachineConfig {
    /// `guest` under `accel`, logging to `run_dir`: QEMU from
    /// [`qemu::resolve`], default bounds, console not streamed.
    pub fn new(guest: GuestSpec, accel: Accel, run_dir: PathBuf) -> Result<Self, Failure> {
        Ok(MachineConfig {
            qemu: qemu::resolve()?,
            guest,
            accel,
            run_dir,
            stream_console: false,
            sensor: true,
            timeouts: Timeouts::default(),
        })
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
    /// A datagram, stamped when the agent reader decoded it.
    Datagram(Datagram, Instant),
    AgentClosed,
    AgentError(WireError),
    /// The guest rang the host's sensor vector: an acknowledgement.
    SensorAck,
    /// The kernel said on the console that it ignored an input.
    IgnoredInput(String),
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
    sensor: Option<Sensor>,
    timeouts: Timeouts,
    /// Dropped last: QEMU must be gone before its socket is removed.
    socket_dir: SocketDir,
}

/// The emulated sensor device and the thread that watches its ack vector.
struct Sensor {
    device: SensorDevice,
    watcher_stop: Arc<AtomicBool>,
    /// Per CPU, the guest's count of unsent messages when last checked.
    dropped_seen: Vec<u64>,
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.watcher_stop.store(true, Ordering::Relaxed);
    }
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
    /// Datagrams received and not yet handed out, with when each arrived.
    captured: Vec<Datagram>,
    arrived: Vec<Instant>,
    next_request: u32,
}

/// A private directory for the run's sockets, removed on drop; its name is
/// not predictable, so nothing else can take the path first.
struct SocketDir(tempfile::TempDir);

impl SocketDir {
    fn create() -> std::io::Result<SocketDir> {
        tempfile::Builder::new().prefix("kevent-bench-").tempdir().map(SocketDir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn host_error(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Host { message: format!("{what}: {e}") }
}

impl Machine {
    /// Starts QEMU and waits, stage by stage, for the agent's greeting.
    pub fn boot(config: &MachineConfig) -> Result<Machine, Failure> {
        let socket_dir = SocketDir::create().map_err(|e| host_error("create the agent socket directory", e))?;
        let socket_path = socket_dir.path().join("agent.sock");
        // Listening before QEMU starts: QEMU connects as a client at startup.
        let listener = UnixListener::bind(&socket_path).map_err(|e| host_error("bind the agent socket", e))?;
        fs::create_dir_all(&config.run_dir).map_err(|e| host_error("create the run directory", e))?;
        let console_log = config.run_dir.join("console.log");
        let log_file =
            File::create(&console_log).map_err(|e| host_error(&format!("create {}", console_log.display()), e))?;

        let sensor_setup = if config.sensor {
            let device =
                SensorDevice::new(config.guest.cpus).map_err(|e| host_error("set up the emulated sensor device", e))?;
            let path = socket_dir.path().join("sensor.sock");
            // QEMU reads the device's setup while it starts: listen first.
            let listener = UnixListener::bind(&path).map_err(|e| host_error("bind the sensor socket", e))?;
            Some((device, listener, path))
        } else {
            None
        };
        let sensor_socket = sensor_setup.as_ref().map(|(_, _, path)| path.as_path());
        let mut guest = Guest::spawn(config, &socket_path, sensor_socket, log_file)?;
        let sensor = match sensor_setup {
            Some((mut device, listener, _)) => {
                let stream = guest.accept(&listener, "the sensor device's server", config.timeouts.qemu_start)?;
                device.serve(stream).map_err(|e| Failure::QemuStart {
                    message: format!("hand QEMU the sensor device's memory and vectors: {e}"),
                    qemu_stderr: guest.qemu_said(),
                })?;
                let watcher_stop = Arc::new(AtomicBool::new(false));
                let acks = device.ack_events().map_err(|e| host_error("watch the sensor's ack vector", e))?;
                spawn_ack_watcher(acks, Arc::clone(&watcher_stop), guest.sender.clone().expect("sender kept"));
                let dropped_seen = vec![0; device.cpus() as usize];
                Some(Sensor { device, watcher_stop, dropped_seen })
            }
            None => None,
        };
        let channel = guest.accept(&listener, "the agent channel", config.timeouts.qemu_start)?;
        let qemu_started = guest.spawned.elapsed();
        let reader = channel.try_clone().map_err(|e| host_error("clone the agent socket", e))?;
        spawn_agent_reader(reader, guest.sender.take().expect("sender kept until the agent connects"));
        guest.channel = Some(channel);

        // The start marker crosses the slow serial console and the greeting
        // the fast agent channel: the greeting can be read first.
        let first = guest.wait_for(Stage::KernelBoot, config.timeouts.kernel_boot, |e| match e {
            Event::AgentStarted(at) => Some(Ok(*at)),
            Event::Agent(GuestMessage::Hello(h)) => Some(Err(h.clone())),
            _ => None,
        })?;
        let (kernel_booted, hello) = match first {
            Ok(started_at) => {
                let hello = guest.wait_for(Stage::AgentGreeting, config.timeouts.agent_greeting, |e| match e {
                    Event::Agent(GuestMessage::Hello(h)) => Some(h.clone()),
                    _ => None,
                })?;
                (started_at - guest.spawned, hello)
            }
            Err(hello) => (guest.spawned.elapsed(), hello),
        };
        let timings = BootTimings { qemu_started, kernel_booted, greeted: guest.spawned.elapsed() };
        // The sensor's readiness is waited for at its first use: a run that
        // injects through debugfs does not depend on the guest's driver.
        Ok(Machine { guest, hello, timings, console_log, sensor, timeouts: config.timeouts, socket_dir })
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
        if let Some(claimed) = guest.console.lock().unwrap().detector.survived_panic() {
            eprintln!(
                "warning: the guest console claimed a kernel panic but the kernel lived on to restart in order (a \
                 guest program wrote it?): {}",
                claimed.excerpt.first().map_or("", String::as_str)
            );
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
    /// When each datagram reached the host.
    pub arrived: Vec<Instant>,
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
        Ok(guest.exchange(outcome))
    }

    /// The datagrams received and not yet handed out: after a failure,
    /// what the failed request had brought in.
    pub fn take_captured(&mut self) -> Vec<Datagram> {
        self.guest.arrived.clear();
        std::mem::take(&mut self.guest.captured)
    }

    /// The private directory of this guest's sockets, removed when the
    /// machine is dropped.
    pub fn socket_dir(&self) -> &Path {
        self.socket_dir.path()
    }

    /// QEMU's process id.
    pub fn qemu_pid(&self) -> u32 {
        self.guest.child.id()
    }

    /// The console lines of a kernel report seen so far, if any: a WARN
    /// does not stop the kernel, so runs check this between steps.
    pub fn crash(&self) -> Option<Failure> {
        self.guest.crash_failure()
    }

    /// Waits (bounded) until every datagram the agent has received so far
    /// has reached the host, and hands them out: the agent replies to a
    /// fence only after draining its sockets.
    pub fn fence(&mut self, bound: Duration) -> Result<Exchange, Failure> {
        self.request(kevent_wire::Command::Fence, bound)
    }

    /// Waits until at least `count` datagrams are waiting on the host, and
    /// hands out all of them, without asking the agent anything.
    pub fn wait_datagrams(&mut self, count: usize, bound: Duration) -> Result<Exchange, Failure> {
        let guest = &mut self.guest;
        let tick = Duration::from_millis(50);
        if !guest.wait_until(Stage::Command, bound, tick, |g| g.captured.len() >= count)? {
            return Err(guest.timeout(Stage::Command, bound));
        }
        Ok(guest.exchange(Outcome::Done))
    }
}

/// How often a wait on the shared memory looks again when no event came.
const SENSOR_TICK: Duration = Duration::from_millis(2);

impl Machine {
    /// The emulated sensor device, if the guest has one.
    pub fn sensor(&self) -> Option<&SensorDevice> {
        self.sensor.as_ref().map(|s| &s.device)
    }

    fn sensor_mut(&mut self) -> Result<&mut SensorDevice, Failure> {
        match &mut self.sensor {
            Some(sensor) => Ok(&mut sensor.device),
            None => Err(Failure::Host { message: "this guest was started without the emulated sensor device".into() }),
        }
    }

    /// Waits until the guest's driver has a handler on every vector: QEMU
    /// drops a ring that comes before MSI-X is enabled.
    fn wait_sensor_ready(&mut self) -> Result<(), Failure> {
        let bound = self.timeouts.sensor_ready;
        let Machine { guest, sensor, .. } = self;
        let sensor = sensor.as_mut().expect("called with a sensor");
        let device = &sensor.device;
        if !guest.wait_until(Stage::Sensor, bound, SENSOR_TICK, |_| device.is_ready())? {
            let detail = "kevent_thermal.ko has not bound the ivshmem-doorbell device (1af4:1110) with one MSI-X \
                          vector per CPU, or was unbound";
            return Err(guest.sensor_not_ready(bound, detail.to_owned()));
        }
        let (serves, cpus) = (device.guest_cpus(), device.cpus());
        if serves != cpus {
            return Err(
                guest.sensor_not_ready(bound, format!("its driver serves {serves} of the device's {cpus} CPUs"))
            );
        }
        // What the guest lost before this driver took the device is not ours to report.
        for cpu in 0..cpus {
            sensor.dropped_seen[cpu as usize] = device.status(cpu).events_dropped;
        }
        Ok(())
    }

    /// The sensor hardware changes `cpu`'s register (or its package's) to
    /// `value` and raises `cpu`'s thermal interrupt, without waiting for
    /// the guest. Waits (bounded) for the device to be ready and for ring
    /// space; QEMU raises MSI-X vector `cpu`.
    pub fn fire(&mut self, cpu: u32, register: Register, value: u64) -> Result<Published, Failure> {
        self.fire_timed(cpu, register, value, Timing::ONCE)
    }

    /// [`Self::fire`], with the guest firing the image as `timing` says,
    /// paced by its own clock; acknowledged after the last firing.
    pub fn fire_timed(
        &mut self,
        cpu: u32,
        register: Register,
        value: u64,
        timing: Timing,
    ) -> Result<Published, Failure> {
        let cpus = self.sensor_mut()?.cpus();
        if cpu >= cpus {
            return Err(Failure::Host {
                message: format!("CPU {cpu}: the sensor device serves CPUs 0 to {}", cpus - 1),
            });
        }
        if !self.sensor_mut()?.is_ready() {
            self.wait_sensor_ready()?;
        }
        let bound = self.timeouts.sensor_ack;
        let Machine { guest, sensor, .. } = self;
        let device = &mut sensor.as_mut().expect("checked above").device;
        if !guest.wait_until(Stage::Sensor, bound, SENSOR_TICK, |_| device.has_room(cpu, timing))? {
            let status = device.status(cpu);
            let failure = Failure::SensorNoAck {
                cpu,
                seq: device.oldest_unacked(cpu).unwrap_or(status.acked_seq + 1),
                waited: bound,
                detail: no_ack_detail(&status, true),
                console_tail: guest.console_tail(),
            };
            return Err(guest.fail(failure));
        }
        let published = device.publish(cpu, register, value, timing).expect("room checked");
        device.ring(cpu).map_err(|e| host_error("ring the sensor's vector", e))?;
        Ok(published)
    }

    /// Waits (bounded) until the guest acknowledges `published`: its
    /// handler ran and every message it caused has been broadcast. Returns
    /// the errno the guest refused the entry with, if it did.
    pub fn wait_acked(&mut self, published: Published) -> Result<Option<u32>, Failure> {
        self.wait_acked_after(published, Duration::ZERO)
    }

    /// [`Self::wait_acked`] for an entry whose firings span `span` of the
    /// guest's time: the bound grows by that much.
    pub fn wait_acked_after(&mut self, published: Published, span: Duration) -> Result<Option<u32>, Failure> {
        let bound = self.timeouts.sensor_ack + span;
        let Machine { guest, sensor, .. } = self;
        let sensor = sensor.as_mut().ok_or_else(|| Failure::Host { message: "no sensor device".into() })?;
        let device = &sensor.device;
        let settled = |_: &Guest| device.is_acked(published) || !device.is_ready();
        if guest.wait_until(Stage::Sensor, bound, SENSOR_TICK, settled)? {
            if !device.is_acked(published) {
                let detail = format!("the driver let go of the device while injection {} was pending", published.seq);
                return Err(guest.sensor_not_ready(Duration::ZERO, detail));
            }
            let cpu = published.cpu;
            let dropped = device.status(cpu).events_dropped;
            let seen = std::mem::replace(&mut sensor.dropped_seen[cpu as usize], dropped);
            if dropped > seen {
                let lost = dropped - seen;
                return Err(guest.fail(Failure::GuestDropped { cpu, lost, captured: guest.captured.len() }));
            }
            return Ok(device.rejection(published));
        }
        let status = device.status(published.cpu);
        let failure = Failure::SensorNoAck {
            cpu: published.cpu,
            seq: published.seq,
            waited: bound,
            detail: no_ack_detail(&status, false),
            console_tail: guest.console_tail(),
        };
        Err(guest.fail(failure))
    }

    /// The host's sensor emulator dies: the device's server connection,
    /// eventfds and mapping go away while QEMU and the guest run on. The
    /// guest keeps the memory and vectors QEMU holds, which nobody drives.
    pub fn disconnect_sensor(&mut self) {
        self.sensor = None;
    }
}

/// Why an acknowledgement did not come, from what the guest left in the
/// shared memory.
fn no_ack_detail(status: &CpuStatus, ring_full: bool) -> String {
    let consumed = if status.tail == status.head {
        "it took every published entry".to_owned()
    } else {
        format!("it took {} of {} published entries", status.tail, status.head)
    };
    let what = if ring_full { "the ring stayed full" } else { "the acknowledgement never came" };
    format!(
        "{what}: the guest's handler ran {} time(s), {consumed}, acknowledged up to seq {} and refused {}",
        status.interrupts, status.acked_seq, status.rejected
    )
}

impl Guest {
    fn spawn(
        config: &MachineConfig,
        socket_path: &Path,
        sensor_socket: Option<&Path>,
        log_file: File,
    ) -> Result<Guest, Failure> {
        let args = qemu::command_line(&config.guest, config.accel, socket_path, sensor_socket);
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
            next_request: 1,
        })
    }

    /// Waits for QEMU to connect to one of the host's sockets.
    fn accept(&mut self, listener: &UnixListener, what: &str, bound: Duration) -> Result<UnixStream, Failure> {
        let deadline = self.spawned + bound;
        loop {
            let mut pollfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: pollfd is a valid array of one element for the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, 10) };
            if ready > 0 {
                return listener
                    .accept()
                    .map(|(stream, _)| stream)
                    .map_err(|e| host_error(&format!("accept QEMU's connection to {what}"), e));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Failure::QemuStart {
                    message: format!("QEMU exited ({status}) before connecting to {what}"),
                    qemu_stderr: self.qemu_said(),
                });
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Failure::QemuStart {
                    message: format!("QEMU did not connect to {what} within {:.1} s", bound.as_secs_f64()),
                    qemu_stderr: self.qemu_said(),
                });
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
            self.absorb(stage, event)?;
        }
    }

    /// Waits until `done` holds, checking it at every event and every
    /// `tick`; Ok(false) once `bound` has passed. Fails like [`Self::wait_for`].
    fn wait_until(
        &mut self,
        stage: Stage,
        bound: Duration,
        tick: Duration,
        mut done: impl FnMut(&Guest) -> bool,
    ) -> Result<bool, Failure> {
        let deadline = Instant::now() + bound;
        loop {
            if done(self) {
                return Ok(true);
            }
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
    fn absorb(&mut self, stage: Stage, event: Event) -> Result<(), Failure> {
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
                return Err(Failure::Protocol { message: e.to_string() });
            }
            Event::Agent(GuestMessage::Hello(_)) => {
                self.kill();
                return Err(Failure::Protocol { message: "the agent greeted twice".into() });
            }
            Event::Datagram(datagram, at) => {
                self.captured.push(datagram);
                self.arrived.push(at);
            }
            Event::Agent(GuestMessage::Datagram(datagram)) => {
                self.captured.push(datagram);
                self.arrived.push(Instant::now());
            }
            Event::Agent(GuestMessage::Overrun { protocol, occurrences }) => {
                self.kill();
                return Err(Failure::EventsLost { protocol, occurrences, captured: self.captured.len() });
            }
            Event::Agent(GuestMessage::Reply { id, .. }) => {
                self.kill();
                return Err(Failure::Protocol { message: format!("a reply to request {id}, which is not pending") });
            }
            Event::IgnoredInput(line) => {
                return Err(self.fail(Failure::IgnoredInput { line }));
            }
            Event::AgentStarted(_) | Event::AgentClosed | Event::SensorAck => {}
        }
        Ok(())
    }

    /// A report has started: let it finish printing (or the guest die), then
    /// stop the guest and return the report. A panic is one only if the
    /// machine goes down after it (panic=-1 restarts at once, and QEMU
    /// exits): a panic line the guest survives was written by user space,
    /// and the run goes on.
    fn crash_after_grace(&mut self) -> Option<Failure> {
        let deadline = Instant::now() + REPORT_GRACE;
        loop {
            {
                let console = self.console.lock().unwrap();
                let panic_pending = console.detector.panic().is_some();
                if console.closed || (console.detector.excerpt_complete() && !panic_pending) {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        {
            let mut console = self.console.lock().unwrap();
            // The guest outlived its panic line: user space wrote it. With
            // nothing else reported, the run goes on.
            if !console.closed && console.detector.retract_panic().is_some() {
                console.detector.report()?;
            }
        }
        self.kill();
        self.await_console_close();
        self.crash_failure()
    }

    /// The kernel report of the run, if any. Once QEMU has gone, a panic
    /// line is confirmed by that and counts.
    fn crash_failure(&self) -> Option<Failure> {
        let console = self.console.lock().unwrap();
        let report =
            if console.closed { console.detector.report_after_exit() } else { console.detector.report().cloned() }?;
        Some(Failure::KernelCrash { kind: report.kind, excerpt: report.excerpt })
    }

    /// After QEMU has been killed, its console reader reaches the end of
    /// the stream soon; what it read last may complete a report.
    fn await_console_close(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.console.lock().unwrap().closed && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn timeout(&mut self, stage: Stage, waited: Duration) -> Failure {
        self.kill();
        self.await_console_close();
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

    fn exchange(&mut self, outcome: Outcome) -> Exchange {
        Exchange { outcome, datagrams: std::mem::take(&mut self.captured), arrived: std::mem::take(&mut self.arrived) }
    }

    fn sensor_not_ready(&mut self, waited: Duration, detail: String) -> Failure {
        let console_tail = self.console_tail();
        self.fail(Failure::SensorNotReady { waited, detail, console_tail })
    }

    /// A run-ending failure found while the guest was otherwise waited for:
    /// the guest is stopped, and a kernel report wins over `failure`.
    fn fail(&mut self, failure: Failure) -> Failure {
        self.kill();
        self.await_console_close();
        self.crash_failure().unwrap_or(failure)
    }

    fn kill(&mut self) {
        self.child.kill();
    }
}

fn console_tail(console: &Mutex<ConsoleState>) -> Vec<String> {
    let console = console.lock().unwrap();
    let skip = console.recent.len().saturating_sub(CONSOLE_TAIL);
    console.recent.iter().skip(skip).cloned().collect()
}

fn wait_exit(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    child.wait_timeout(bound).ok().flatten()
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
            if let Some(ignored) = crate::console::ignored_input(line) {
                let _ = tx.send(Event::IgnoredInput(ignored.to_owned()));
            }
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

/// Turns rings of the host's ack vector into events, so that waits see
/// acknowledgements, console crashes and agent messages on one channel.
fn spawn_ack_watcher(acks: crate::sensor::ivshmem::EventFd, stop: Arc<AtomicBool>, tx: Sender<Event>) {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match acks.poll(Duration::from_millis(50)) {
                Ok(true) => {
                    let _ = acks.drain();
                    if tx.send(Event::SensorAck).is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
}

fn spawn_agent_reader(mut stream: UnixStream, tx: Sender<Event>) {
    thread::spawn(move || loop {
        let event = match read_frame(&mut stream) {
            Ok(Some((kind, body))) => match GuestMessage::decode(kind, &body) {
                Ok(GuestMessage::Datagram(datagram)) => Event::Datagram(datagram, Instant::now()),
                Ok(message) => Event::Agent(message),
                Err(e) => Event::AgentError(e),
            },
            // The guest going away mid-frame is its death, not bad protocol:
            // the console tells why.
            Ok(None) | Err(WireError::Io(_) | WireError::TruncatedFrame { .. }) => Event::AgentClosed,
            Err(e) => Event::AgentError(e),
        };
        let last = !matches!(event, Event::Agent(_) | Event::Datagram(..));
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
    let socket_path = socket_dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket_path).map_err(|e| host_error("bind the agent socket", e))?;
    let qemu = qemu::resolve()?;
    let args = qemu::command_line(guest, accel, &socket_path, None);
    let spawned = Instant::now();
    let mut child = process::spawn(
        qemu::command(&qemu.binary).args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()),
    )
    .map_err(|e| Failure::QemuStart { message: format!("cannot run {qemu}: {e}"), qemu_stderr: String::new() })?;
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
            child.kill();
            Err(Failure::Timeout { stage: Stage::Shutdown, waited: bound, console_tail: Vec::new() })
        }
    }
}
