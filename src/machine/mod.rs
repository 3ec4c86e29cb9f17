//! One guest: QEMU started, watched, spoken to, and stopped.
//!
//! - this file: the public machine, its configuration, boot and shutdown,
//!   and requests to the agent;
//! - `guest`: QEMU's process and every wait on it, with the failures that
//!   end a run;
//! - `pump`: the threads that turn what QEMU and the guest say into events
//!   on one channel;
//! - `sensor`: injections through the emulated sensor device and the waits
//!   for the guest's acknowledgements.
//!
//! Every wait is a `recv_timeout` on that channel against a stage deadline,
//! so a crash, an exit or a fatal agent error ends any wait at once, and a
//! hang ends it at the bound.

mod guest;
mod pump;
mod qmp;
mod sensor;

use std::fs::{self, File};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kevent_wire::{Datagram, DbusMessage, GuestMessage, Hello, HostMessage, Outcome};

use crate::failure::{Failure, Stage};
use crate::process::{self};
use crate::qemu::Accel;
use crate::qemu::{self, GuestSpec};
use crate::sensor::SensorDevice;
use crate::topology::Topology;
use guest::{wait_exit, Guest};
use pump::{spawn_ack_watcher, spawn_agent_reader, Event};
use sensor::Sensor;

/// Bounds of each stage. The defaults hold for TCG on a loaded 2-core host
/// with a debug kernel; a healthy boot takes about a second.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From QEMU's spawn until it connects to each of the host's sockets
    /// (the sensor device's server, then the agent channel).
    pub qemu_start: Duration,
    /// Until the agent's start marker on the console (or its greeting, if that comes first).
    pub kernel_boot: Duration,
    /// From the start marker until the agent's greeting.
    pub agent_greeting: Duration,
    /// One request to the agent, until its reply; the runner's bound for each step.
    pub command: Duration,
    /// From the shutdown request until QEMU has exited.
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
    /// Kernel, initramfs, CPUs, memory, clock and kernel arguments.
    pub guest: GuestSpec,
    /// KVM or TCG; the virtual clock needs TCG.
    pub accel: Accel,
    /// Where `console.log` of this run is written.
    pub run_dir: PathBuf,
    /// Copy every console line to stderr as it arrives.
    pub stream_console: bool,
    /// Give the guest the emulated sensor device (see [`crate::sensor`]).
    pub sensor: bool,
    /// Bounds of each stage of the run.
    pub timeouts: Timeouts,
    /// QEMU's gdbstub, for a debugger (see [`crate::gdb`]): every wait is
    /// then suspended while the debugger holds the guest.
    pub gdb: Option<crate::gdb::GdbStub>,
    /// Dynamic debug queries, on the kernel command line (see
    /// [`crate::dyndbg`]); [`crate::runner::run`] refuses one that
    /// selected nothing.
    pub dyndbg: Vec<crate::dyndbg::Query>,
}

impl MachineConfig {
    /// The guest as QEMU boots it: [`MachineConfig::guest`], the
    /// [`MachineConfig::dyndbg`] queries' kernel command-line words added.
    pub fn guest_spec(&self) -> GuestSpec {
        let mut spec = self.guest.clone();
        spec.kernel_args.extend(crate::dyndbg::kernel_args(&self.dyndbg, &self.guest.kernel_args));
        spec
    }

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
            gdb: None,
            dyndbg: Vec::new(),
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

/// A running guest whose agent has greeted the host.
pub struct Machine {
    guest: Guest,
    /// The agent's greeting: what the guest runs (kernel release, CPUs online,
    /// clocksource, modules loaded) and when the agent started.
    pub hello: Hello,
    /// When QEMU, the kernel and the agent came up.
    pub timings: BootTimings,
    /// The run's `console.log`, kept after the machine is gone.
    pub console_log: PathBuf,
    sensor: Option<Sensor>,
    timeouts: Timeouts,
    topology: Topology,
    /// The gdbstub's UNIX socket, removed once QEMU is gone.
    _gdb_socket: Option<RemovedOnDrop>,
    /// Dropped last: QEMU must be gone before its socket is removed.
    socket_dir: SocketDir,
}

/// A path QEMU created for the run, removed with the machine.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Where a run keeps QEMU's command line (a shell reads it back).
pub const QEMU_COMMAND_FILE: &str = "qemu-command.txt";

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

/// A fault inside QEMU, as opposed to a kill from outside (SIGKILL, SIGTERM),
/// which is a decision somebody made and is not retried.
fn qemu_crashed(status: &str) -> bool {
    ["SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL"].iter().any(|signal| status.contains(signal))
}

impl Machine {
    /// Starts QEMU and waits, stage by stage, for the agent's greeting.
    pub fn boot(config: &MachineConfig) -> Result<Machine, Failure> {
        match Machine::boot_once(config) {
            // QEMU 7.2 itself crashes now and then while the guest probes the
            // ivshmem device's BARs (SIGSEGV, QEMU's bug: about once in a few
            // hundred boots on a loaded host). Nothing has been captured
            // before the greeting, so one more boot loses nothing; it is said
            // out loud, and the first console is kept.
            Err(Failure::QemuExited { stage, status, .. })
                if qemu_crashed(&status) && matches!(stage, Stage::KernelBoot | Stage::AgentGreeting) =>
            {
                let crashed = config.run_dir.join("console.qemu-crashed.log");
                let _ = fs::rename(config.run_dir.join("console.log"), &crashed);
                eprintln!(
                    "warning: QEMU died ({status}) while the guest booted; booting once more (the first console is in {})",
                    crashed.display()
                );
                Machine::boot_once(config)
            }
            result => result,
        }
    }

    fn boot_once(config: &MachineConfig) -> Result<Machine, Failure> {
        // Before anything starts: QEMU would fail half-way.
        if let Some(gdb) = &config.gdb {
            gdb.endpoint.check_free()?;
        }
        let socket_dir = SocketDir::create().map_err(|e| Failure::io("create the agent socket directory", e))?;
        let socket_path = socket_dir.path().join("agent.sock");
        // Listening before QEMU starts: QEMU connects as a client at startup.
        let listener = UnixListener::bind(&socket_path).map_err(|e| Failure::io("bind the agent socket", e))?;
        fs::create_dir_all(&config.run_dir).map_err(|e| Failure::io("create the run directory", e))?;
        let console_log = config.run_dir.join("console.log");
        let log_file =
            File::create(&console_log).map_err(|e| Failure::io(format!("create {}", console_log.display()), e))?;

        let sensor_setup = if config.sensor {
            let device = SensorDevice::new(config.guest.topology)
                .map_err(|e| Failure::io("set up the emulated sensor device", e))?;
            let path = socket_dir.path().join("sensor.sock");
            // QEMU reads the device's setup while it starts: listen first.
            let listener = UnixListener::bind(&path).map_err(|e| Failure::io("bind the sensor socket", e))?;
            Some((device, listener, path))
        } else {
            None
        };
        let sensor_socket = sensor_setup.as_ref().map(|(_, _, path)| path.as_path());
        let qmp_setup = match &config.gdb {
            Some(_) => {
                let path = socket_dir.path().join("qmp.sock");
                let listener = UnixListener::bind(&path).map_err(|e| Failure::io("bind the QMP socket", e))?;
                Some((listener, path))
            }
            None => None,
        };
        let qmp_socket = qmp_setup.as_ref().map(|(_, path)| path.as_path());
        let mut guest = Guest::spawn(config, &socket_path, sensor_socket, qmp_socket, log_file)?;
        let gdb_socket = match config.gdb.as_ref().map(|g| &g.endpoint) {
            Some(crate::gdb::Endpoint::Unix(path)) => Some(RemovedOnDrop(path.clone())),
            _ => None,
        };
        let command_file = config.run_dir.join(QEMU_COMMAND_FILE);
        fs::write(&command_file, format!("{}\n", guest.command_line))
            .map_err(|e| Failure::io(format!("write {}", command_file.display()), e))?;
        let sensor = match sensor_setup {
            Some((mut device, listener, _)) => {
                let stream = guest.accept(&listener, "the sensor device's server", config.timeouts.qemu_start)?;
                device.serve(stream).map_err(|e| Failure::QemuStart {
                    message: format!("hand QEMU the sensor device's memory and vectors: {e}"),
                    qemu_stderr: guest.qemu_said(),
                })?;
                let watcher_stop = Arc::new(AtomicBool::new(false));
                let acks = device.ack_events().map_err(|e| Failure::io("watch the sensor's ack vector", e))?;
                spawn_ack_watcher(acks, Arc::clone(&watcher_stop), guest.sender.clone().expect("sender kept"));
                let dropped_seen = vec![0; device.cpus() as usize];
                Some(Sensor { device, watcher_stop, dropped_seen })
            }
            None => None,
        };
        if let Some((listener, _)) = qmp_setup {
            let stream = guest.accept(&listener, "the QMP monitor", config.timeouts.qemu_start)?;
            let clock = qmp::watch(stream, config.timeouts.qemu_start).map_err(|e| Failure::QemuStart {
                message: format!("ask QEMU's monitor whether the guest runs: {e}"),
                qemu_stderr: guest.qemu_said(),
            })?;
            guest.pause = Some(clock);
        }
        let channel = guest.accept(&listener, "the agent channel", config.timeouts.qemu_start)?;
        let qemu_started = guest.spawned.elapsed();
        let reader = channel.try_clone().map_err(|e| Failure::io("clone the agent socket", e))?;
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
        let topology = config.guest.topology;
        if topology.shares_packages() && hello.cpus_online < topology.cpus() {
            // The sensor device would refuse the guest's topology later,
            // and every package injection would miss cores: say why now.
            return Err(Failure::Host {
                message: format!(
                    "the guest brought up {} of the {} CPUs of {topology}: packages that share cores need the \
                     kernel's ACPI (CONFIG_ACPI, for the MADT; SeaBIOS's MP table lists one CPU per socket) and no \
                     acpi=off, maxcpus= or nosmp on its command line",
                    hello.cpus_online,
                    topology.cpus()
                ),
            });
        }
        // The sensor's readiness is waited for at its first use: a run that
        // injects through debugfs does not depend on the guest's driver.
        Ok(Machine {
            guest,
            hello,
            timings,
            console_log,
            sensor,
            timeouts: config.timeouts,
            topology: config.guest.topology,
            _gdb_socket: gdb_socket,
            socket_dir,
        })
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
    /// The agent's reply: done, data, a program's result, or an error with its errno.
    pub outcome: Outcome,
    /// Every datagram the agent received before it replied, in order.
    pub datagrams: Vec<Datagram>,
    /// When each datagram reached the host.
    pub arrived: Vec<Instant>,
    /// Every message of the guest's bus the agent forwarded before it
    /// replied (with the D-Bus side: after kdbusd's signals for the datagrams).
    pub dbus: Vec<DbusMessage>,
    /// When each of those reached the host.
    pub dbus_arrived: Vec<Instant>,
}

/// What reached the host and was not handed out yet.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Netlink datagrams, in order.
    pub datagrams: Vec<Datagram>,
    /// Messages of the guest's bus, in order.
    pub dbus: Vec<DbusMessage>,
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

    /// Sends one request and waits (bounded) for its reply, leaving the
    /// datagrams that arrive meanwhile to the next step's request: for the
    /// bench's own business between steps (trace markers and drains),
    /// which must not take a step's events.
    pub fn ask(&mut self, command: kevent_wire::Command, bound: Duration) -> Result<Outcome, Failure> {
        let guest = &mut self.guest;
        let id = guest.next_request;
        guest.next_request += 1;
        guest.send(&HostMessage::Request { id, command })?;
        guest.wait_for(Stage::Command, bound, |e| match e {
            Event::Agent(GuestMessage::Reply { id: reply, outcome }) if *reply == id => Some(outcome.clone()),
            _ => None,
        })
    }

    /// The datagrams and bus messages received and not yet handed out:
    /// after a failure, what the failed request had brought in.
    pub fn take_captured(&mut self) -> Captured {
        let exchange = self.guest.exchange(Outcome::Done);
        Captured { datagrams: exchange.datagrams, dbus: exchange.dbus }
    }

    /// The private directory of this guest's sockets, removed when the
    /// machine is dropped.
    pub fn socket_dir(&self) -> &Path {
        self.socket_dir.path()
    }

    /// The guest's CPUs, as packages of cores.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// QEMU's command line, as a shell would read it back (also in the run
    /// directory's [`QEMU_COMMAND_FILE`]); its sockets are the run's own.
    pub fn qemu_command(&self) -> &str {
        &self.guest.command_line
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

    /// Waits until at least `count` bus messages are waiting on the host,
    /// and hands out all that was captured, without asking the agent anything.
    pub fn wait_dbus(&mut self, count: usize, bound: Duration) -> Result<Exchange, Failure> {
        let guest = &mut self.guest;
        let tick = Duration::from_millis(50);
        if !guest.wait_until(Stage::Command, bound, tick, |g| g.captured_dbus.len() >= count)? {
            return Err(guest.timeout(Stage::Command, bound));
        }
        Ok(guest.exchange(Outcome::Done))
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

/// Boots `guest` to its own exit with the very command line of a bench
/// guest (its agent channel listened on, never spoken to), and returns the
/// wall time from QEMU's spawn to its exit: the boot benchmark's floor, with
/// the floor init, and the KVM probe, under KVM.
pub fn run_to_exit(guest: &GuestSpec, accel: Accel, bound: Duration) -> Result<Duration, Failure> {
    let socket_dir = SocketDir::create().map_err(|e| Failure::io("create the agent socket directory", e))?;
    let socket_path = socket_dir.path().join("agent.sock");
    // QEMU connects at startup; the connection waits in the backlog, since
    // an init that exits at once never writes.
    let _listener = UnixListener::bind(&socket_path).map_err(|e| Failure::io("bind the agent socket", e))?;
    let qemu = qemu::resolve()?;
    let args = qemu::command_line(guest, accel, &socket_path, None);
    let spawned = Instant::now();
    let mut child = process::spawn(
        qemu::command(&qemu.binary).args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()),
    )
    .map_err(|e| Failure::QemuStart { message: format!("cannot run {qemu}: {e}"), qemu_stderr: String::new() })?;
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
