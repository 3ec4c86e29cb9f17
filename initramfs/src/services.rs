//! The guest's D-Bus side, when the run asks for it (`kevent_bench.dbus=1`):
//! Debian's dbus-daemon with the bench's configuration, kdbusd, the
//! agent's own connections to the bus (a monitor of every message, and a
//! client that calls kdbusd's `Sync`), and the relay of the host's bus
//! port if QEMU has one. The programs are processes of their own, started
//! in that order, each waited for until it is ready, and each supervised:
//! one that ends without being asked to is reported to the host with its
//! last words (the end of its stderr), and the run fails there.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kdbusd::bus::{BusSocket, DBUS};
use kdbusd::mapping::BUS_NAME;
use kdbusd::message::Value;
use kevent_wire::{
    AgentStage, GuestMessage, ServiceFailure, DBUS_CONFIG_PATH, DBUS_DAEMON_PATH, DBUS_TAP_PATH, KDBUSD_PATH,
    SYSTEM_BUS_ADDRESS, SYSTEM_BUS_SOCKET,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::AgentError;
use crate::{sys, HostChannel};

const STAGE: AgentStage = AgentStage::Dbus;
/// How long a program may take to say it is ready: TCG on a loaded host.
const READY_BOUND: Duration = Duration::from_secs(20);
/// How long a stopped program may take to exit.
const STOP_BOUND: Duration = Duration::from_secs(10);
/// How long a failure waits for the death behind it to be recorded (its
/// supervisor reads the program's stderr to the end first). A death ends
/// the wait at once; only a failure with no death behind it (a program
/// alive but silent) waits it out.
const DEATH_BOUND: Duration = Duration::from_secs(2);
/// How long a failure waits for dbus-daemon to finish exiting, in case its
/// death is what ended the program that failed: its sockets close early in
/// its exit, and a follower can end before it does. A failure with the
/// bus alive waits this long for nothing.
const BUS_EXIT_GRACE: Duration = Duration::from_secs(1);
/// Once dbus-daemon is dead, kdbusd loses its bus and exits saying so:
/// its last words are waited for, this long at most.
const FOLLOWERS_BOUND: Duration = Duration::from_secs(10);
/// The last words kept of each program.
const LAST_WORDS: usize = 4096;
/// The longest the bus may take to finish a message it has begun to send
/// the agent's monitor: a read past it fails instead of holding the
/// capture thread.
const MESSAGE_BOUND: Duration = Duration::from_secs(10);

pub const DBUS_DAEMON: &str = "dbus-daemon";
pub const KDBUSD: &str = "kdbusd";
pub const RELAY: &str = "kevent-dbus-tap relay";

/// One supervised program, as its supervisor thread last saw it.
struct Program {
    name: &'static str,
    pid: u32,
    /// Asked to stop: its end is no failure.
    stopping: bool,
    /// How it ended, once it has.
    ended: Option<String>,
    last_words: Arc<Mutex<VecDeque<u8>>>,
}

#[derive(Default)]
struct State {
    programs: Vec<Program>,
    /// The host has been told: one report per run.
    reported: bool,
    /// The first program that ended without being asked to, and how: the
    /// cause that the report names, whoever noticed the failure first.
    first_death: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    channel: HostChannel,
}

/// The running D-Bus side.
#[derive(Clone)]
pub struct Services {
    shared: Arc<Shared>,
}

/// The agent's own connections to the bus, which the capture thread owns.
pub struct BusConnections {
    /// A monitor (`BecomeMonitor`): every message on the bus, in the bus's order.
    pub monitor: BusSocket,
    /// Calls kdbusd's `Sync`; the monitor sees the replies.
    pub client: BusSocket,
    /// `client`'s unique name: the replies addressed to it settle fences.
    pub client_name: String,
    /// `monitor`'s unique name. Neither connection's own messages are the
    /// bus's traffic.
    pub monitor_name: String,
    /// The unique name that owns kdbusd's name, as the monitor last saw
    /// it; empty while none does.
    pub kdbusd: String,
}

fn base_command(path: &str) -> Command {
    let mut command = Command::new(path);
    command.env("DBUS_SYSTEM_BUS_ADDRESS", SYSTEM_BUS_ADDRESS).stdin(Stdio::null()).stderr(Stdio::piped());
    command
}

impl Services {
    /// Starts the bus, kdbusd, the agent's connections and (if `relay_port` names the host's
    /// bus port) the relay, each once the one before is ready.
    pub fn start(
        channel: &HostChannel,
        relay_port: Option<&std::path::Path>,
    ) -> Result<(Services, BusConnections), AgentError> {
        std::fs::create_dir_all("/run/dbus").map_err(|e| AgentError::io(STAGE, "create /run/dbus", &e))?;
        let services = Services {
            shared: Arc::new(Shared { state: Mutex::default(), changed: Condvar::new(), channel: channel.clone() }),
        };
        let mut daemon = base_command(DBUS_DAEMON_PATH);
        daemon
            .args([
                &format!("--config-file={DBUS_CONFIG_PATH}"),
                "--nofork",
                "--nopidfile",
                "--nosyslog",
                "--print-address=1",
            ])
            .stdout(Stdio::piped());
        let mut child = services.spawn(DBUS_DAEMON, &mut daemon)?;
        // The address is printed once the bus listens.
        let stdout = child.stdout.take().expect("piped");
        services.supervise(DBUS_DAEMON, child);
        services.await_line(DBUS_DAEMON, stdout, "print its address")?;

        services.start_kdbusd()?;

        let connections = connect().map_err(|why| AgentError::new(STAGE, format!("the agent's bus monitor: {why}")))?;

        if let Some(port) = relay_port {
            let mut relay = base_command(DBUS_TAP_PATH);
            relay.arg("relay").arg(port).stdout(Stdio::null());
            let child = services.spawn(RELAY, &mut relay)?;
            services.supervise(RELAY, child);
        }
        Ok((services, connections))
    }

    fn spawn(&self, name: &'static str, command: &mut Command) -> Result<Child, AgentError> {
        crate::reaper::spawn(command).map_err(|e| AgentError::io(STAGE, format_args!("start {name}"), &e))
    }

    /// Starts kdbusd and waits until it owns its name.
    pub fn start_kdbusd(&self) -> Result<(), AgentError> {
        let mut command = base_command(KDBUSD_PATH);
        command.stdout(Stdio::piped());
        let mut child = self.spawn(KDBUSD, &mut command)?;
        let stdout = child.stdout.take().expect("piped");
        self.supervise(KDBUSD, child);
        self.await_line(KDBUSD, stdout, "own its name")
    }

    /// Stops kdbusd (SIGTERM) and waits until it has exited.
    pub fn stop_kdbusd(&self) -> io::Result<()> {
        {
            let mut state = self.lock();
            let program = state
                .programs
                .iter_mut()
                .rev()
                .find(|p| p.name == KDBUSD && p.ended.is_none())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "kdbusd is not running"))?;
            program.stopping = true;
            let pid = Pid::from_raw(i32::try_from(program.pid).map_err(|_| io::Error::other("pid out of range"))?);
            kill(pid, Signal::SIGTERM)?;
        }
        let running = |s: &State| s.programs.iter().any(|p| p.name == KDBUSD && p.ended.is_none());
        if running(&self.wait_for(STOP_BOUND, |s| !running(s))) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("kdbusd did not exit within {STOP_BOUND:?} of SIGTERM"),
            ));
        }
        Ok(())
    }

    /// Whether kdbusd runs (and so answers `Sync`).
    pub fn kdbusd_running(&self) -> bool {
        self.lock().programs.iter().any(|p| p.name == KDBUSD && p.ended.is_none() && !p.stopping)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state once `done` holds of it, or once `bound` has passed: every
    /// change a supervisor records wakes the wait.
    fn wait_for(&self, bound: Duration, done: impl Fn(&State) -> bool) -> std::sync::MutexGuard<'_, State> {
        let deadline = Instant::now() + bound;
        let mut state = self.lock();
        while !done(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        state
    }

    /// Keeps `child`'s last words and reports its end unless it was asked to end.
    fn supervise(&self, name: &'static str, mut child: Child) {
        let last_words = Arc::new(Mutex::new(VecDeque::new()));
        self.lock().programs.push(Program {
            name,
            pid: child.id(),
            stopping: false,
            ended: None,
            last_words: Arc::clone(&last_words),
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let this = self.clone();
        let pid = child.id();
        thread::spawn(move || {
            keep_last_words(stderr, &last_words);
            let status = match child.wait() {
                Ok(status) => describe(status),
                Err(e) => format!("could not be waited for: {e}"),
            };
            crate::reaper::waited(&child);
            let unplanned = {
                let mut state = this.lock();
                let program = state.programs.iter_mut().find(|p| p.pid == pid && p.ended.is_none());
                let unplanned = program.is_some_and(|p| {
                    p.ended = Some(status.clone());
                    !p.stopping
                });
                if unplanned && state.first_death.is_none() {
                    state.first_death = Some(format!("{name} {status}"));
                }
                unplanned
            };
            this.shared.changed.notify_all();
            if unplanned {
                this.report(&format!("{name} {status}"));
            }
        });
    }

    /// Tells the host, once per run, that the D-Bus side failed: `why`,
    /// then every program that has ended (or is named in `why`), the bus
    /// daemon first. Waits a little for the deaths that follow the first.
    pub fn report(&self, why: &str) {
        if self.lock().reported {
            return;
        }
        // A kdbusd killed mid-step fails its Sync at once, before its
        // supervisor has recorded the death that the report must name.
        drop(self.wait_for(DEATH_BOUND, |s| s.reported || s.first_death.is_some()));
        // kdbusd or the agent's monitor can see the end of the bus daemon
        // whose death ended them before its supervisor does: a dead bus is
        // the cause, whoever noticed first.
        // A dying process closes its sockets before it becomes a zombie, so
        // a follower may even end before the daemon is seen to exit.
        if bus_death(&self.lock()).is_none()
            && sys::wait_until(BUS_EXIT_GRACE, Duration::from_millis(10), || self.bus_daemon_exited().then_some(()))
                .is_some()
        {
            drop(self.wait_for(DEATH_BOUND, |s| s.reported || bus_death(s).is_some()));
        }
        let message = {
            // Without the bus, every program that uses it ends (the relay
            // only between host clients): wait for their words.
            let mut state = self.wait_for(FOLLOWERS_BOUND, |s| {
                let bus_dead = s.programs.iter().any(|p| p.name == DBUS_DAEMON && p.ended.is_some());
                let following =
                    s.programs.iter().any(|p| p.name != RELAY && p.name != DBUS_DAEMON && p.ended.is_none());
                s.reported || !bus_dead || !following
            });
            if state.reported {
                return;
            }
            state.reported = true;
            let why = bus_death(&state).or_else(|| state.first_death.clone()).unwrap_or_else(|| why.to_owned());
            let services = state
                .programs
                .iter()
                .filter(|p| p.ended.as_ref().is_some_and(|_| !p.stopping) || why.starts_with(p.name))
                .map(|p| ServiceFailure {
                    program: p.name.to_owned(),
                    status: p.ended.clone().unwrap_or_else(|| "running".to_owned()),
                    last_words: p.last_words.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect(),
                })
                .collect();
            (GuestMessage::ServicesFailed { why: why.clone(), services }, why)
        };
        let (message, why) = message;
        eprintln!("kevent-agent: the D-Bus side failed: {why}");
        let _ = self.shared.channel.send(&message);
    }

    /// Whether dbus-daemon has exited, whether or not its supervisor has
    /// reaped it yet (WNOWAIT leaves that to the supervisor).
    fn bus_daemon_exited(&self) -> bool {
        let Some(pid) = self.lock().programs.iter().find(|p| p.name == DBUS_DAEMON).map(|p| p.pid) else {
            return false;
        };
        let Ok(pid) = i32::try_from(pid) else { return false };
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(_) => true,
            // Already reaped: its supervisor is recording the end.
            Err(nix::errno::Errno::ECHILD) => true,
            Err(_) => false,
        }
    }

    /// Waits (bounded) for the first line `name` prints on stdout: its
    /// word that it is ready. The rest of its stdout is read and dropped.
    fn await_line(&self, name: &'static str, stdout: ChildStdout, what: &str) -> Result<(), AgentError> {
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = io::copy(&mut reader, &mut io::sink());
        });
        let failed = |why: String| self.startup_failure(name, format!("{name} did not {what}: {why}"));
        match rx.recv_timeout(READY_BOUND) {
            Ok(Ok(line)) if !line.is_empty() => Ok(()),
            Ok(Ok(_)) => Err(failed("its stdout closed (it exited)".into())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("nothing within {READY_BOUND:?}"))),
        }
    }

    /// A program did not come up: the failure, with what it said.
    fn startup_failure(&self, name: &str, message: String) -> AgentError {
        // Its last words are whole once its supervisor has seen it end.
        let state = self.wait_for(DEATH_BOUND, |s| {
            s.programs.iter().rev().find(|p| p.name == name).is_none_or(|p| p.ended.is_some())
        });
        let words: Vec<u8> = state
            .programs
            .iter()
            .rev()
            .find(|p| p.name == name)
            .map(|p| p.last_words.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect())
            .unwrap_or_default();
        let words = String::from_utf8_lossy(&words);
        AgentError::new(STAGE, format!("{message}; it said: {}", words.trim()))
    }
}

/// The agent's client and monitor on the system bus, and kdbusd's unique
/// name, which must own its well-known name already (kdbusd said it did
/// before this): otherwise fences would go nowhere.
fn connect() -> Result<BusConnections, kdbusd::bus::Error> {
    let socket = std::path::Path::new(SYSTEM_BUS_SOCKET);
    let (mut client, client_name) = BusSocket::connect(socket, READY_BOUND)?;
    let owner = client.call_bus(DBUS, "GetNameOwner", &[Value::Str(BUS_NAME.into())]);
    let kdbusd = match owner.as_deref().map(<[Value]>::first) {
        Ok(Some(Value::Str(owner))) if !owner.is_empty() => owner.clone(),
        other => {
            let got = other.map_or_else(|e| e.to_string(), |v| format!("{v:?}"));
            return Err(format!("no owner of {BUS_NAME} on the bus, though kdbusd said it owned it ({got})").into());
        }
    };
    let (mut monitor, monitor_name) = BusSocket::connect(socket, READY_BOUND)?;
    // Every message after the reply is the bus's traffic, unread so far.
    monitor.call_bus(
        "org.freedesktop.DBus.Monitoring",
        "BecomeMonitor",
        &[Value::Array(Vec::new()), Value::Uint(0)],
    )?;
    monitor.set_read_timeout(MESSAGE_BOUND)?;
    Ok(BusConnections { monitor, client, client_name, monitor_name, kdbusd })
}

/// dbus-daemon's end, if it ended without being asked to.
fn bus_death(state: &State) -> Option<String> {
    let daemon = state.programs.iter().find(|p| p.name == DBUS_DAEMON && !p.stopping)?;
    daemon.ended.as_ref().map(|status| format!("{DBUS_DAEMON} {status}"))
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned());
            format!("was killed by {name}")
        }
        _ => status.to_string(),
    }
}

/// Reads `stderr` to its end, keeping its last [`LAST_WORDS`] bytes.
fn keep_last_words(mut stderr: impl Read, kept: &Mutex<VecDeque<u8>>) {
    let mut buffer = [0u8; 4096];
    loop {
        match stderr.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.extend(&buffer[..n]);
                let excess = kept.len().saturating_sub(LAST_WORDS);
                kept.drain(..excess);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
