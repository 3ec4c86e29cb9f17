//! kevent-agent: PID 1 of the kevent-bench guest.
//!
//! It mounts the kernel filesystems, opens its virtio-serial port to the
//! host, loads the events modules, greets, and then obeys the host. Whatever
//! goes wrong, it tells the host and the console why and restarts the machine
//! (QEMU exits): a guest is never left hanging.

mod capture;
mod commands;
mod error;
mod reaper;
mod services;
mod sys;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kevent_wire::{
    read_frame, write_frame, AgentStage, Command, GuestMessage, Hello, HostMessage, ModuleLoad, MODULE_DIR,
    MODULE_LIST_PATH,
};

use crate::error::AgentError;

/// Where tracefs is mounted, if the kernel has it.
const TRACEFS: &str = kevent_wire::TRACEFS;

/// virtio-console registers ports while the kernel boots, but the sysfs entry
/// can trail PID 1's start by a little: wait this long at most.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// The agent's side of the channel; writes come from several threads.
#[derive(Clone)]
pub(crate) struct HostChannel {
    port: Arc<Mutex<File>>,
}

impl HostChannel {
    /// Sends one message whole: frames from several threads never interleave.
    pub(crate) fn send(&self, message: &GuestMessage) -> io::Result<()> {
        self.send_frame(&message.encode())
    }

    /// Sends a frame encoded already, length prefix included.
    pub(crate) fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        let mut port = self.port.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        write_frame(&mut *port, frame)
    }
}

fn main() {
    let started_ns = sys::boottime_ns();
    println!("{} (pid {})", kevent_wire::AGENT_STARTED_MARKER, std::process::id());
    report_panics_and_restart();

    // The channel comes first, as soon as /sys and /dev are there to find it
    // by: from then on every failure reaches the host, a module's included.
    let channel = mount_kernel_filesystems().and_then(|()| open_host_channel()).unwrap_or_else(|e| fail(None, &e));
    if let Err(e) = boot(&channel, started_ns).and_then(|(sockets, dbus)| serve(&channel, sockets, dbus)) {
        fail(Some(&channel), &e);
    }
    sys::restart_machine();
}

/// Brings the guest up to the greeting. Order matters: modules need sysfs and
/// debugfs mounted, the greeting reports the module loads, and it comes only
/// once the capture sockets are bound: the host's sensor device may inject
/// as soon as the host is greeted, without asking the agent anything. The
/// greeting stays the first frame: nothing reads the sockets before it.
/// The D-Bus side, if asked for, is up before the greeting, kdbusd's
/// sockets bound, so that it hears every event the host causes.
fn boot(channel: &HostChannel, started_ns: u64) -> Result<(capture::Sockets, Option<Dbus>), AgentError> {
    // Before any process is started: each is then the reaper's to leave alone.
    reaper::start().map_err(|e| AgentError::io(AgentStage::Serve, "start the reaper thread", &e))?;
    let cmdline = fs::read_to_string("/proc/cmdline")
        .map_err(|e| AgentError::io(AgentStage::ModuleLoad, "read /proc/cmdline", &e))?;
    let modules = load_event_modules(&cmdline)?;
    let sockets = capture::Sockets::open()?;
    let dbus = start_dbus(channel, &cmdline)?;
    greet(channel, started_ns, modules)?;
    Ok((sockets, dbus))
}

type Dbus = (services::Services, services::BusConnections);

/// The D-Bus side, if the kernel command line asks for it; the relay too if
/// it asks for that and QEMU has the port.
/// A `kevent_bench.dbus*` word other than the two the host writes is
/// refused rather than read as "off".
fn start_dbus(channel: &HostChannel, cmdline: &str) -> Result<Option<Dbus>, AgentError> {
    let words: Vec<&str> = cmdline_words(cmdline).filter(|w| w.starts_with("kevent_bench.dbus")).collect();
    if let Some(other) = words.iter().find(|w| ![kevent_wire::DBUS_ARG, kevent_wire::DBUS_RELAY_ARG].contains(w)) {
        let known = format!("{} and {}", kevent_wire::DBUS_ARG, kevent_wire::DBUS_RELAY_ARG);
        return Err(AgentError::new(AgentStage::Dbus, format!("kernel command line: {other}: the words are {known}")));
    }
    let relay_asked = words.contains(&kevent_wire::DBUS_RELAY_ARG);
    if !words.contains(&kevent_wire::DBUS_ARG) {
        if relay_asked {
            let message =
                format!("kernel command line: {} without {}", kevent_wire::DBUS_RELAY_ARG, kevent_wire::DBUS_ARG);
            return Err(AgentError::new(AgentStage::Dbus, message));
        }
        return Ok(None);
    }
    let relay = if relay_asked {
        let port = find_port(kevent_wire::DBUS_PORT_NAME, PORT_WAIT)?;
        Some(port)
    } else {
        None
    };
    services::Services::start(channel, relay.as_deref()).map(Some)
}

fn mount_kernel_filesystems() -> Result<(), AgentError> {
    const MOUNTS: &[(&str, &str, &str)] = &[
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("debugfs", "/sys/kernel/debug", "debugfs"),
    ];
    for (source, target, fstype) in MOUNTS {
        sys::mount(source, target, fstype)
            .map_err(|e| AgentError::io(AgentStage::Mount, format_args!("mount {fstype} on {target}"), &e))?;
    }
    // Where the kernel has tracing: the host's traces (`run --trace`) and
    // anyone's `exec` step find tracefs where the kernel documents it.
    let filesystems = fs::read_to_string("/proc/filesystems")
        .map_err(|e| AgentError::io(AgentStage::Mount, "read /proc/filesystems", &e))?;
    if filesystems.lines().any(|l| l.split_whitespace().last() == Some("tracefs")) {
        sys::mount("tracefs", TRACEFS, "tracefs")
            .map_err(|e| AgentError::io(AgentStage::Mount, format_args!("mount tracefs on {TRACEFS}"), &e))?;
    }
    Ok(())
}

fn load_event_modules(cmdline: &str) -> Result<Vec<ModuleLoad>, AgentError> {
    let failed = |doing: &dyn std::fmt::Display, e: &io::Error| AgentError::io(AgentStage::ModuleLoad, doing, e);
    let list = match fs::read_to_string(MODULE_LIST_PATH) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(failed(&format_args!("read {MODULE_LIST_PATH}"), &e)),
    };
    let mut loaded = Vec::new();
    for file_name in list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name = file_name.trim_end_matches(".ko");
        let params = module_params(cmdline, name);
        let path = Path::new(MODULE_DIR).join(file_name);
        let file = File::open(&path).map_err(|e| failed(&format_args!("open {}", path.display()), &e))?;
        let begin = sys::monotonic_ns();
        sys::finit_module(&file, &params).map_err(|e| {
            failed(&format_args!("load module {name} (params \"{params}\")"), &e).hint("the kernel log above says why")
        })?;
        let load_ns = sys::monotonic_ns() - begin;
        loaded.push(ModuleLoad { name: name.to_owned(), params, load_ns });
    }
    Ok(loaded)
}

/// The parameters the kernel command line gives `module`, space separated:
/// each `kevent_bench.param=MODULE.KEY=VALUE`, and `MODULE.dyndbg[=QUERY]`
/// as modprobe passes it (the kernel applies it only to code loaded at
/// boot). Module names treat `-` and `_` alike, as the kernel does.
fn module_params(cmdline: &str, module: &str) -> String {
    let normalise = |s: &str| s.replace('-', "_");
    let module = normalise(module);
    cmdline_words(cmdline)
        .filter_map(|word| {
            let assignment = word.strip_prefix(kevent_wire::MODULE_PARAM_KEY);
            let dyndbg = word.split_once('.').filter(|(_, p)| *p == "dyndbg" || p.starts_with("dyndbg="));
            assignment.and_then(|a| a.split_once('.')).or(dyndbg)
        })
        .filter(|(target, _)| normalise(target) == module)
        .map(|(_, param)| param)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The words of a kernel command line as the kernel splits them: at
/// spaces outside double quotes, quotes kept (`a.dyndbg="func f +p"` is
/// one word).
fn cmdline_words(cmdline: &str) -> impl Iterator<Item = &str> {
    let mut rest = cmdline.trim_start();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                c.is_ascii_whitespace() && !quoted
            })
            .map_or(rest.len(), |(i, _)| i);
        let word = &rest[..end];
        rest = rest[end..].trim_start();
        Some(word)
    })
}

fn open_host_channel() -> Result<HostChannel, AgentError> {
    let device = find_port(kevent_wire::AGENT_PORT_NAME, PORT_WAIT)?;
    open_port(&device).map_err(|e| AgentError::io(AgentStage::Port, format_args!("open {}", device.display()), &e))
}

fn open_port(device: &Path) -> io::Result<HostChannel> {
    let port = OpenOptions::new().read(true).write(true).open(device)?;
    Ok(HostChannel { port: Arc::new(Mutex::new(port)) })
}

/// Finds `/dev/vportNpM` of the virtio-serial port called `name`.
fn find_port(name: &str, wait: Duration) -> Result<PathBuf, AgentError> {
    let found =
        sys::wait_until(wait, Duration::from_millis(1), || scan_ports(name).filter(|device| sys::exists(device)));
    found.ok_or_else(|| {
        AgentError::new(
            AgentStage::Port,
            format!(
                "no virtio-serial port named {name} under /sys/class/virtio-ports after {wait:?}; \
                 is QEMU given `-device virtserialport,name={name}`?"
            ),
        )
    })
}

fn scan_ports(name: &str) -> Option<PathBuf> {
    let entries = fs::read_dir("/sys/class/virtio-ports").ok()?;
    entries.flatten().find_map(|entry| {
        let port_name = fs::read_to_string(entry.path().join("name")).ok()?;
        (port_name.trim_end() == name).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

fn greet(channel: &HostChannel, started_ns: u64, modules: Vec<ModuleLoad>) -> Result<(), AgentError> {
    let clocksource = fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let hello = Hello {
        protocol_version: kevent_wire::PROTOCOL_VERSION,
        kernel_release: sys::kernel_release(),
        cpus_online: sys::cpus_online(),
        clocksource,
        agent_started_ns: started_ns,
        greeted_ns: sys::boottime_ns(),
        modules,
    };
    channel.send(&GuestMessage::Hello(hello)).map_err(|e| AgentError::io(AgentStage::Greet, "send the greeting", &e))
}

/// Captures netlink traffic and obeys the host until it asks for a
/// shutdown or goes away. Requests are carried out one at a time, in order.
fn serve(channel: &HostChannel, sockets: capture::Sockets, dbus: Option<Dbus>) -> Result<(), AgentError> {
    const STAGE: AgentStage = AgentStage::Serve;
    let services = dbus.as_ref().map(|(services, _)| services.clone());
    let capture = capture::Capture::start(channel.clone(), sockets, dbus)?;
    let mut background = commands::Background::default();
    let port = channel.port.lock().unwrap_or_else(|p| p.into_inner()).try_clone();
    let mut port = port.map_err(|e| AgentError::io(STAGE, "duplicate the port's descriptor", &e))?;
    loop {
        let frame = read_frame(&mut port).map_err(|e| AgentError::wire(STAGE, "read from the host", &e))?;
        let Some((kind, body)) = frame else {
            return Err(AgentError::new(STAGE, "the host closed the channel without asking for a shutdown"));
        };
        match HostMessage::decode(kind, &body).map_err(|e| AgentError::wire(STAGE, "bad message from the host", &e))? {
            HostMessage::Shutdown => {
                // The restart that follows ends every process; killing the
                // background programs first leaves none running on while the
                // machine goes down, without the grace period `finish` gives
                // them for results nobody would read.
                background.kill();
                return Ok(());
            }
            HostMessage::Request { id, command } => {
                let (outcome, fence) = match (command, &services) {
                    (Command::Kdbusd { start }, Some(services)) => commands::kdbusd(services, start),
                    (Command::Kdbusd { .. }, None) => (commands::no_dbus(), capture::Fence::Netlink),
                    (command, services) => {
                        let fence = match services {
                            Some(s) if s.kdbusd_running() => capture::Fence::Sync,
                            _ => capture::Fence::Netlink,
                        };
                        (commands::execute(command, &mut background), fence)
                    }
                };
                capture.reply(id, outcome, fence).map_err(|e| AgentError::io(STAGE, "reply to the host", &e))?;
            }
        }
    }
}

/// Reports a fatal error on the console and, if there is one, to the host,
/// then restarts the machine.
pub(crate) fn fail(channel: Option<&HostChannel>, error: &AgentError) -> ! {
    eprintln!("kevent-agent: fatal: {error}");
    let _ = io::stderr().flush();
    let channel = channel.cloned().or_else(open_host_channel_now);
    if let Some(channel) = channel {
        let _ = channel.send(&error.to_message());
    }
    sys::restart_machine()
}

/// The channel, if its port is there already: a failing agent must not wait.
fn open_host_channel_now() -> Option<HostChannel> {
    open_port(&scan_ports(kevent_wire::AGENT_PORT_NAME)?).ok()
}

/// A panic in PID 1 would panic the kernel and hide the cause: report it as
/// a fatal error instead.
fn report_panics_and_restart() {
    std::panic::set_hook(Box::new(|info| {
        fail(None, &AgentError::new(AgentStage::Panic, format!("agent panicked: {info}")));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_params_are_picked_from_the_command_line_by_module() {
        let cmdline = "console=ttyS0 kevent_bench.param=kevent_thermal.rate_limit_ms=0 \
                       kevent_bench.param=kmessage.unit=30 kevent_bench.param=kevent-thermal.tjmax=90\n";
        assert_eq!(module_params(cmdline, "kevent_thermal"), "rate_limit_ms=0 tjmax=90");
        assert_eq!(module_params(cmdline, "kmessage"), "unit=30");
        assert_eq!(module_params(cmdline, "other"), "");
    }

    #[test]
    fn dynamic_debug_queries_reach_their_module_as_modprobe_passes_them() {
        let cmdline = "console=ttyS0 kevent_thermal.dyndbg=\"func kt_inject +p\" kmessage.dyndbg \
                       dyndbg=\"file x.c +p\" kevent_bench.param=kevent_thermal.tjmax=90 kevent_thermal.dyndbgx=1\n";
        assert_eq!(module_params(cmdline, "kevent_thermal"), "dyndbg=\"func kt_inject +p\" tjmax=90");
        assert_eq!(module_params(cmdline, "kmessage"), "dyndbg");
    }

    #[test]
    fn the_command_line_splits_at_spaces_outside_quotes() {
        let words: Vec<&str> = cmdline_words("  a b=\"c d\"  e\"f g\"h i=\"unterminated j\n").collect();
        assert_eq!(words, ["a", "b=\"c d\"", "e\"f g\"h", "i=\"unterminated j\n"]);
        assert_eq!(cmdline_words("").count(), 0);
    }
}
