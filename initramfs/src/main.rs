//! kevent-agent: PID 1 of the kevent-bench guest.
//!
//! It mounts the kernel filesystems, loads the events modules, opens its
//! virtio-serial port to the host, greets, and then obeys the host. Whatever
//! goes wrong, it tells the host and the console why and restarts the machine
//! (QEMU exits): a guest is never left hanging.

mod capture;
mod commands;
mod sys;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kevent_wire::{
    read_frame, write_frame, GuestMessage, Hello, HostMessage, ModuleLoad, MODULE_DIR, MODULE_LIST_PATH,
};

/// virtio-console registers ports while the kernel boots, but the sysfs entry
/// can trail PID 1's start by a little: wait this long at most.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// The agent's side of the channel; writes come from several threads.
#[derive(Clone)]
pub(crate) struct HostChannel {
    port: Arc<Mutex<File>>,
}

impl HostChannel {
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

    let (channel, sockets) = match boot(started_ns) {
        Ok(booted) => booted,
        Err(message) => fail(None, &message),
    };
    if let Err(message) = serve(&channel, sockets) {
        fail(Some(&channel), &message);
    }
    sys::restart_machine();
}

/// Brings the guest up to the greeting. Order matters: modules need sysfs and
/// debugfs mounted, the greeting reports the module loads, and it comes only
/// once the capture sockets are bound: the host's sensor device may inject
/// as soon as the host is greeted, without asking the agent anything. The
/// greeting stays the first frame: nothing reads the sockets before it.
fn boot(started_ns: u64) -> Result<(HostChannel, capture::Sockets), String> {
    mount_kernel_filesystems()?;
    let modules = load_event_modules()?;
    let channel = open_host_channel()?;
    let sockets = capture::Sockets::open()?;
    greet(&channel, started_ns, modules)?;
    Ok((channel, sockets))
}

fn mount_kernel_filesystems() -> Result<(), String> {
    const MOUNTS: &[(&str, &str, &str)] = &[
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("debugfs", "/sys/kernel/debug", "debugfs"),
    ];
    for (source, target, fstype) in MOUNTS {
        sys::mount(source, target, fstype).map_err(|e| format!("mount {fstype} on {target}: {e}"))?;
    }
    Ok(())
}

fn load_event_modules() -> Result<Vec<ModuleLoad>, String> {
    let list = match fs::read_to_string(MODULE_LIST_PATH) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("read {MODULE_LIST_PATH}: {e}")),
    };
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("read /proc/cmdline: {e}"))?;
    let mut loaded = Vec::new();
    for file_name in list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name = file_name.trim_end_matches(".ko");
        let params = module_params(&cmdline, name);
        let path = Path::new(MODULE_DIR).join(file_name);
        let file = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let begin = sys::monotonic_ns();
        sys::finit_module(&file, &params)
            .map_err(|e| format!("load module {name} (params \"{params}\"): {e}; the kernel log above says why"))?;
        let load_ns = sys::monotonic_ns() - begin;
        loaded.push(ModuleLoad { name: name.to_owned(), params, load_ns });
    }
    Ok(loaded)
}

/// The parameters the kernel command line gives `module`, space separated.
/// Module names treat `-` and `_` alike, as the kernel does.
fn module_params(cmdline: &str, module: &str) -> String {
    let normalise = |s: &str| s.replace('-', "_");
    let module = normalise(module);
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(kevent_wire::MODULE_PARAM_KEY))
        .filter_map(|assignment| assignment.split_once('.'))
        .filter(|(target, _)| normalise(target) == module)
        .map(|(_, param)| param)
        .collect::<Vec<_>>()
        .join(" ")
}

fn open_host_channel() -> Result<HostChannel, String> {
    let device = find_port(kevent_wire::AGENT_PORT_NAME, PORT_WAIT)?;
    open_port(&device).map_err(|e| format!("open {}: {e}", device.display()))
}

fn open_port(device: &Path) -> io::Result<HostChannel> {
    let port = OpenOptions::new().read(true).write(true).open(device)?;
    Ok(HostChannel { port: Arc::new(Mutex::new(port)) })
}

/// Finds `/dev/vportNpM` of the virtio-serial port called `name`.
fn find_port(name: &str, wait: Duration) -> Result<PathBuf, String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(device) = scan_ports(name) {
            if sys::exists(&device) {
                return Ok(device);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no virtio-serial port named {name} under /sys/class/virtio-ports after {wait:?}; \
                 is QEMU given `-device virtserialport,name={name}`?"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn scan_ports(name: &str) -> Option<PathBuf> {
    let entries = fs::read_dir("/sys/class/virtio-ports").ok()?;
    entries.flatten().find_map(|entry| {
        let port_name = fs::read_to_string(entry.path().join("name")).ok()?;
        (port_name.trim_end() == name).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

fn greet(channel: &HostChannel, started_ns: u64, modules: Vec<ModuleLoad>) -> Result<(), String> {
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
    channel.send(&GuestMessage::Hello(hello)).map_err(|e| format!("send greeting: {e}"))
}

/// Captures netlink traffic and obeys the host until it asks for a
/// shutdown or goes away. Requests are carried out one at a time, in order.
fn serve(channel: &HostChannel, sockets: capture::Sockets) -> Result<(), String> {
    let capture = capture::Capture::start(channel.clone(), sockets)?;
    let mut background = commands::Background::default();
    let mut port = channel.port.lock().unwrap_or_else(|p| p.into_inner()).try_clone().map_err(|e| e.to_string())?;
    loop {
        let frame = read_frame(&mut port).map_err(|e| format!("read from host: {e}"))?;
        let Some((kind, body)) = frame else {
            return Err("the host closed the channel without asking for a shutdown".into());
        };
        match HostMessage::decode(kind, &body).map_err(|e| format!("bad message from host: {e}"))? {
            HostMessage::Shutdown => {
                // The restart that follows ends every process; killing the
                // background programs first leaves none running on while the
                // machine goes down, without the grace period `finish` gives
                // them for results nobody would read.
                background.kill();
                return Ok(());
            }
            HostMessage::Request { id, command } => {
                let outcome = commands::execute(command, &mut background);
                capture.reply(id, outcome).map_err(|e| format!("reply to the host: {e}"))?;
            }
        }
    }
}

/// Reports a fatal error on the console and, if there is one, to the host,
/// then restarts the machine.
pub(crate) fn fail(channel: Option<&HostChannel>, message: &str) -> ! {
    eprintln!("kevent-agent: fatal: {message}");
    let _ = io::stderr().flush();
    let channel = channel.cloned().or_else(open_host_channel_now);
    if let Some(channel) = channel {
        let _ = channel.send(&GuestMessage::Fatal { message: message.to_owned() });
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
        fail(None, &format!("agent panicked: {info}"));
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
}
