//! QEMU's command line, built from small pure functions.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::topology::Topology;

/// Name of QEMU's binary, looked up on PATH unless `KEVENT_BENCH_QEMU` names one.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Environment variable naming the QEMU binary to run (a path, or a name
/// looked up on PATH); empty counts as unset.
pub const QEMU_ENV: &str = "KEVENT_BENCH_QEMU";
/// The private QEMU's directory under the cache: one prefix per Debian
/// version of qemu-system-x86, and [`PRIVATE_CURRENT`] naming the one in use.
pub const PRIVATE_DIR: &str = "qemu";
/// File under [`PRIVATE_DIR`] holding the name of the complete prefix in
/// use; written last, so a half-extracted prefix is never run.
pub const PRIVATE_CURRENT: &str = "current";

/// Kernel arguments every boot gets. `panic=-1` restarts at once on a panic
/// and `-no-reboot` turns that restart into QEMU's exit. TCG's `max` CPU does
/// not advertise a constant TSC, so the kernel would fall back to jiffies
/// (4 ms resolution for guest timestamps): QEMU keeps the vCPUs' TSCs in
/// step, so `tsc=reliable` is true here. `no_timer_check`: the IO-APIC
/// timer check busy-waits a few ticks for the timer's interrupt, which a
/// TCG vCPU descheduled on a loaded host misses, and the kernel panicked
/// ("IO-APIC + timer doesn't work!") in about 1 of 10 boots at load 10.
/// `acpi=off` follows for guests that need no ACPI ([`topology_kernel_args`]).
pub const BASE_KERNEL_ARGS: &[&str] = &["console=ttyS0", "panic=-1", "tsc=reliable", "no_timer_check"];

/// The accelerator QEMU runs the guest on; [`crate::accel`] decides which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm, `-cpu host`; the real clock only.
    Kvm,
    /// QEMU's emulator, `-cpu max`: works everywhere, and the only one
    /// that runs the virtual clock.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Environment variable through which `cargo xtask test` tells the tests
/// which accelerator it decided on.
pub const ACCEL_ENV: &str = "KEVENT_BENCH_ACCEL";

impl Accel {
    /// The accelerator named by [`ACCEL_ENV`]; TCG, which always works,
    /// when unset.
    pub fn from_env() -> Accel {
        match std::env::var(ACCEL_ENV).as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }
}

/// What one guest is made of.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The uncompressed vmlinux, booted through PVH.
    pub kernel: PathBuf,
    /// The newc archive whose `/init` runs as PID 1.
    pub initramfs: PathBuf,
    /// Its CPUs, as packages of cores.
    pub topology: Topology,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// What guest time follows.
    pub clock: Clock,
    /// Appended after [`BASE_KERNEL_ARGS`].
    pub kernel_args: Vec<String>,
    /// The host end of the guest's system bus (`cargo xtask run
    /// --dbus-socket`): QEMU listens there, a second virtio-serial port
    /// carries each client to the guest's relay (docs/dbus.md). Needs the
    /// D-Bus guest.
    pub dbus_socket: Option<PathBuf>,
}

/// What the guest's clock follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The host's: guest time is wall time, so a loaded host stretches
    /// what the guest does in it. vCPUs run in parallel host threads.
    #[default]
    Real,
    /// QEMU's instruction counter (`-icount`): guest time advances with the
    /// instructions the guest executes, whatever the host's load, and jumps
    /// straight to the next timer when every vCPU is idle, so sleeps cost
    /// no wall time. vCPUs share one host thread. TCG only.
    Virtual,
}

impl Clock {
    /// The accepted names, quoted as a scenario writes them, for error messages.
    pub const NAMES: &'static str = "\"real\" or \"virtual\"";

    /// The name scenarios, `--clock` and snapshots use.
    pub fn name(self) -> &'static str {
        match self {
            Clock::Real => "real",
            Clock::Virtual => "virtual",
        }
    }

    /// The clock called `name` ([`Self::name`]), if any.
    pub fn from_name(name: &str) -> Option<Clock> {
        [Clock::Real, Clock::Virtual].into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Clock {
    /// How close to a rate-limit window's edge a decision may fall before
    /// its outcome could change from run to run, in ms: across injections,
    /// and between firings of one timed device entry. The module records
    /// closer decisions (`rate_limit_edge_ms`, `rate_limit_burst_edge_ms`)
    /// and the run flags them.
    ///
    /// Real clock: host load delays what the guest does by up to tens of
    /// milliseconds (firings of a timed entry were seen 13.5 ms late at
    /// load 9 on 2 cores), and the host's turnaround between two steps
    /// adds as much. Virtual clock: firings of one entry are exact (1 ms
    /// covers a host-driven interrupt landing between them), but between
    /// two steps the idle guest's clock jumps to its next timer while it
    /// waits for the host, by any amount (0.4 s to 611 s were seen), so
    /// every decision across steps is uncertain.
    pub fn rate_limit_edges_ms(self) -> (u32, u32) {
        match self {
            Clock::Real => (100, 100),
            Clock::Virtual => (3_600_000, 1),
        }
    }
}

/// Guest nanoseconds per instruction under the virtual clock: 2^6, a
/// 15.6 MIPS guest. Smaller shifts make the guest's boot-time busy waits
/// (APIC timer calibration, CPU bring-up) cost more wall time: on this
/// kind of host a boot to the greeting took 5.6 s at shift 3, 3.0 s at 5,
/// 2.3 s at 6 and 1.9 s on the real clock.
pub const VIRTUAL_CLOCK_SHIFT: u32 = 6;

/// Under `-icount` QEMU's guest TSC counts virtual nanoseconds: 1 GHz.
/// The kernel must be told, or its APIC timer calibration is wrong, the
/// APIC timer is declared not functional, and shutdown hangs.
const VIRTUAL_TSC_KHZ: u64 = 1_000_000;

/// Where the QEMU in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Named by [`QEMU_ENV`].
    Variable,
    /// [`QEMU_BINARY`] found on PATH.
    Path,
    /// Debian's packages extracted into the cache by `cargo xtask build`.
    Private,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Variable => write!(f, "named by {QEMU_ENV}"),
            Origin::Path => write!(f, "{QEMU_BINARY} on PATH"),
            Origin::Private => f.write_str("the bench's private QEMU: Debian's packages extracted into the cache"),
        }
    }
}

/// The QEMU binary every guest of this process runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    /// Path of an executable file, checked when resolved.
    pub binary: PathBuf,
    /// Where it was found, for messages.
    pub origin: Origin,
}

impl fmt::Display for Qemu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.binary.display(), self.origin)
    }
}

/// No QEMU to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuNotFound {
    /// The variable is set but names no executable file. The user chose
    /// this binary: installing another would not be what they asked for.
    Variable {
        /// The variable's value.
        value: OsString,
        /// Why it is not an executable file.
        why: String,
    },
    /// Not set, not on PATH, and no private QEMU in the cache (or no cache).
    Nowhere {
        /// The private QEMU's directory that was looked in, or why there
        /// is no cache directory to look in.
        private: Result<PathBuf, String>,
    },
}

impl fmt::Display for QemuNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QemuNotFound::Variable { value, why } => write!(
                f,
                "{QEMU_ENV}={} does not name an executable file: {why}; point it at a QEMU binary or unset it",
                Path::new(value).display()
            ),
            QemuNotFound::Nowhere { private } => {
                write!(f, "no QEMU: {QEMU_ENV} is not set, {QEMU_BINARY} is not on PATH, and ")?;
                match private {
                    Ok(dir) => write!(f, "there is no private QEMU in {}", dir.display())?,
                    Err(why) => write!(f, "there is no cache directory for a private QEMU ({why})")?,
                }
                f.write_str(" (`cargo xtask build` installs Debian's qemu-system-x86, or extracts it there)")
            }
        }
    }
}

impl std::error::Error for QemuNotFound {}

impl From<QemuNotFound> for crate::Failure {
    fn from(e: QemuNotFound) -> Self {
        crate::Failure::QemuStart { message: e.to_string(), qemu_stderr: String::new() }
    }
}

/// The QEMU to run, the first of: `KEVENT_BENCH_QEMU`, `qemu-system-x86_64`
/// on PATH, the private QEMU in the cache. xtask, the tests and every boot
/// resolve it here, so they all run the same binary.
pub fn resolve() -> Result<Qemu, QemuNotFound> {
    resolve_from(std::env::var_os(QEMU_ENV), std::env::var_os("PATH"), crate::cache::dir())
}

fn resolve_from(
    variable: Option<OsString>,
    path: Option<OsString>,
    cache: Result<PathBuf, String>,
) -> Result<Qemu, QemuNotFound> {
    // Empty counts as unset, as for the cache variable.
    if let Some(value) = variable.filter(|v| !v.is_empty()) {
        return match crate::process::find_executable(&value, path.as_deref()) {
            Ok(binary) => Ok(Qemu { binary, origin: Origin::Variable }),
            Err(why) => Err(QemuNotFound::Variable { value, why }),
        };
    }
    if let Ok(binary) = crate::process::find_executable(OsStr::new(QEMU_BINARY), path.as_deref()) {
        return Ok(Qemu { binary, origin: Origin::Path });
    }
    let private = cache.map(|cache| cache.join(PRIVATE_DIR));
    if let Some(binary) = private.as_deref().ok().and_then(private_qemu) {
        return Ok(Qemu { binary, origin: Origin::Private });
    }
    Err(QemuNotFound::Nowhere { private })
}

/// The binary of the private QEMU in `private_dir` (`<cache>/qemu`), if one
/// was extracted completely: `current` is written only after the prefix is
/// in place.
pub fn private_qemu(private_dir: &Path) -> Option<PathBuf> {
    let current = std::fs::read_to_string(private_dir.join(PRIVATE_CURRENT)).ok()?;
    let key = current.trim();
    if key.is_empty() || Path::new(key).components().count() != 1 {
        return None;
    }
    let binary = private_binary(&private_dir.join(key));
    crate::process::executable(&binary).ok().map(|()| binary)
}

/// Where `dpkg-deb -x` puts qemu-system-x86_64 under a prefix. QEMU finds
/// its firmware and modules relative to its binary (`../share/qemu`,
/// `../share/seabios`, `../lib/x86_64-linux-gnu/qemu`), so a prefix laid out
/// as Debian installs it needs no `-L`.
pub fn private_binary(prefix: &Path) -> PathBuf {
    prefix.join("usr/bin").join(QEMU_BINARY)
}

/// The first line of `binary -version`, e.g.
/// `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`.
pub fn version(binary: &Path) -> Result<String, String> {
    let out = std::process::Command::new(binary)
        .arg("-version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run {} -version: {e}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().next() {
        Some(line) if out.status.success() => Ok(line.to_owned()),
        _ => Err(format!(
            "{} -version failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A command for QEMU that dies with the thread that starts it: a host
/// killed outright (CI's timeout, kill -9) must not leave guests running.
/// Threads that start a guest own it until it is gone, so the thread is
/// the right lifetime.
pub fn command(binary: &Path) -> std::process::Command {
    use std::os::unix::process::CommandExt;

    let mut command = std::process::Command::new(binary);
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure only makes system calls
    // that are async-signal-safe (prctl, getppid, _exit) and allocates
    // nothing, as a child of a multithreaded process must.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before the request took effect.
            if nix::unistd::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command
}

/// The host's TSC rate, which a TCG guest's TSC runs at (QEMU reads the
/// host's TSC for it): measured once against the monotonic clock, and only
/// on a host whose TSC rate is constant.
pub fn host_tsc_khz() -> Option<u64> {
    static MEASURED: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *MEASURED.get_or_init(|| {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
        if !flags.split_whitespace().any(|f| f == "constant_tsc") {
            return None;
        }
        measure_tsc_khz(std::time::Duration::from_millis(20))
    })
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz(window: std::time::Duration) -> Option<u64> {
    use std::time::Instant;

    // SAFETY: rdtsc has no preconditions on x86_64; std marks the
    // intrinsic unsafe only because some targets lack the instruction.
    let tsc = || unsafe { std::arch::x86_64::_rdtsc() };
    // The clock read between two TSC reads, the pair whose reads lie
    // closest of a few: a thread preempted between reading one clock and
    // the other (a loaded host) would skew the rate by the time it lost.
    let stamp = || {
        (0..16)
            .map(|_| {
                let before = tsc();
                let at = Instant::now();
                let after = tsc();
                (after.wrapping_sub(before), at, before + after.wrapping_sub(before) / 2)
            })
            .min_by_key(|(spread, ..)| *spread)
            .map(|(_, at, tsc)| (at, tsc))
            .expect("sixteen tries")
    };
    let (start, tsc_start) = stamp();
    std::thread::sleep(window);
    let (end, tsc_end) = stamp();
    let elapsed = end.duration_since(start);
    let khz = u128::from(tsc_end.wrapping_sub(tsc_start)) * 1_000_000 / elapsed.as_nanos().max(1);
    u64::try_from(khz).ok().filter(|khz| *khz > 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz(_: std::time::Duration) -> Option<u64> {
    None
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// No default devices, no display, and a restart is an exit.
pub fn machine_args() -> Vec<OsString> {
    os(&["-nodefaults", "-no-reboot", "-nographic", "-machine", "pc"])
}

/// The accelerator and CPU model; the virtual clock adds single-threaded
/// TCG and `-icount` at [`VIRTUAL_CLOCK_SHIFT`]. KVM ignores the clock
/// (the virtual one is TCG only).
pub fn accel_args(accel: Accel, clock: Clock) -> Vec<OsString> {
    match (accel, clock) {
        (Accel::Kvm, _) => os(&["-accel", "kvm", "-cpu", "host"]),
        (Accel::Tcg, Clock::Real) => os(&["-accel", "tcg", "-cpu", "max"]),
        // -icount needs one TCG thread for all vCPUs; sleep=off lets an
        // idle guest's clock jump to its next timer.
        (Accel::Tcg, Clock::Virtual) => vec![
            "-accel".into(),
            "tcg,thread=single".into(),
            "-cpu".into(),
            "max".into(),
            "-icount".into(),
            format!("shift={VIRTUAL_CLOCK_SHIFT},sleep=off").into(),
        ],
    }
}

/// The guest's TSC rate, when the host knows it: spares the kernel a
/// calibration that fails now and then under TCG (no HPET or PM timer to
/// fall back on) and leaves the guest on jiffies.
fn guest_tsc_khz(accel: Accel, clock: Clock) -> Option<u64> {
    match (accel, clock) {
        (Accel::Kvm, _) => None,
        (Accel::Tcg, Clock::Real) => host_tsc_khz(),
        (Accel::Tcg, Clock::Virtual) => Some(VIRTUAL_TSC_KHZ),
    }
}

/// Without ACPI the kernel finds CPUs in SeaBIOS's MP table, which lists
/// the first CPU of each socket only: `-smp N` alone would bring up one
/// CPU, and `-smp 4,sockets=2,cores=2` two. A guest whose packages have
/// one core each gets a socket per CPU and boots without ACPI
/// ([`topology_kernel_args`]); one whose packages share cores needs ACPI's
/// MADT, which lists them all.
pub fn topology_args(topology: Topology, memory_mib: u32) -> Vec<OsString> {
    let (cpus, sockets, cores) = (topology.cpus(), topology.packages, topology.cores);
    let smp = if topology.shares_packages() {
        format!("{cpus},sockets={sockets},cores={cores},threads=1")
    } else {
        format!("{cpus},sockets={cpus}")
    };
    vec!["-smp".into(), smp.into(), "-m".into(), format!("{memory_mib}M").into()]
}

/// `acpi=off` where the topology does not need ACPI: the bench kernel has
/// it for packages that share cores only, and a guest without it boots as
/// fast as before it was there (README, "Topology").
pub fn topology_kernel_args(topology: Topology) -> &'static [&'static str] {
    if topology.shares_packages() {
        &[]
    } else {
        &["acpi=off"]
    }
}

/// The uncompressed vmlinux boots through PVH, the initramfs beside it.
/// `tsc_khz`, when known, spares the kernel calibrating its TSC: under TCG
/// the PIT calibration fails now and then on a loaded host (no HPET, no
/// PM timer to fall back on), and the guest is left on jiffies.
pub fn boot_args(spec: &GuestSpec, tsc_khz: Option<u64>) -> Vec<OsString> {
    let tsc = tsc_khz.map(|khz| format!("tsc_early_khz={khz}"));
    let mut append: Vec<&str> = BASE_KERNEL_ARGS.to_vec();
    append.extend(topology_kernel_args(spec.topology));
    append.extend(tsc.as_deref());
    append.extend(spec.kernel_args.iter().map(String::as_str));
    if spec.dbus_socket.is_some() {
        append.push(kevent_wire::DBUS_RELAY_ARG);
    }
    vec![
        "-kernel".into(),
        spec.kernel.clone().into(),
        "-initrd".into(),
        spec.initramfs.clone().into(),
        "-append".into(),
        append.join(" ").into(),
    ]
}

/// The serial console goes to QEMU's stdout, which the host reads.
pub fn console_args() -> Vec<OsString> {
    os(&["-serial", "stdio"])
}

/// The agent's virtio-serial port, connected to the host's listening socket.
pub fn agent_channel_args(socket: &Path) -> Vec<OsString> {
    let mut chardev = OsString::from("socket,id=agent,path=");
    chardev.push(socket);
    vec![
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        chardev,
        "-device".into(),
        format!("virtserialport,chardev=agent,name={}", kevent_wire::AGENT_PORT_NAME).into(),
    ]
}

/// The guest's bus port: QEMU listens on `socket` (one host client at a
/// time; a client that hangs up makes room for the next) and the guest's
/// relay connects each to the system bus.
pub fn dbus_port_args(socket: &Path) -> Vec<OsString> {
    let mut chardev = OsString::from("socket,id=dbus,server=on,wait=off,path=");
    chardev.push(socket);
    vec![
        "-chardev".into(),
        chardev,
        "-device".into(),
        format!("virtserialport,chardev=dbus,name={}", kevent_wire::DBUS_PORT_NAME).into(),
    ]
}

/// The emulated sensor: an ivshmem-doorbell device whose server is the
/// host's socket, one MSI-X vector per CPU.
///
/// `ioeventfd=off`: QEMU takes the setup messages after the shared memory
/// from its main loop while the guest already runs, and with ioeventfds on
/// each of them changes the memory map under the running vCPUs. One such
/// change raced a TCG vCPU's MMIO write into a NULL region (QEMU 7.2,
/// SIGSEGV in memory_region_dispatch_write, once in about 1400 boots).
/// Without ioeventfds the doorbell write signals the same eventfd from the
/// device's own MMIO handler, which is where TCG handles it anyway.
pub fn sensor_args(socket: &Path, cpus: u32) -> Vec<OsString> {
    let mut chardev = OsString::from("socket,id=sensor,path=");
    chardev.push(socket);
    vec![
        "-chardev".into(),
        chardev,
        "-device".into(),
        format!("ivshmem-doorbell,chardev=sensor,vectors={cpus},ioeventfd=off").into(),
    ]
}

/// The gdbstub (and `-S`, the guest held before its first instruction,
/// if asked), and QEMU's monitor in control mode (QMP) on the host's
/// listening socket: the host asks it whether a debugger stopped the guest.
pub fn debug_args(gdb: &crate::gdb::GdbStub, qmp_socket: &Path) -> Vec<OsString> {
    let mut args = vec!["-gdb".into(), gdb.endpoint.qemu_device()];
    if gdb.wait {
        args.push("-S".into());
    }
    let mut chardev = OsString::from("socket,id=qmp,path=");
    chardev.push(qmp_socket);
    args.extend(["-chardev".into(), chardev, "-mon".into(), "chardev=qmp,mode=control".into()]);
    args
}

/// `binary` and `args` as one line a shell reads back into them.
pub fn shell_command(binary: &Path, args: &[OsString]) -> String {
    let words: Vec<String> = std::iter::once(binary.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    crate::process::shell_line(&words)
}

/// Every argument for one guest; the sensor device if its socket is given.
pub fn command_line(
    spec: &GuestSpec,
    accel: Accel,
    agent_socket: &Path,
    sensor_socket: Option<&Path>,
) -> Vec<OsString> {
    [
        machine_args(),
        accel_args(accel, spec.clock),
        topology_args(spec.topology, spec.memory_mib),
        boot_args(spec, guest_tsc_khz(accel, spec.clock)),
        console_args(),
        agent_channel_args(agent_socket),
        spec.dbus_socket.as_deref().map(dbus_port_args).unwrap_or_default(),
        sensor_socket.map(|socket| sensor_args(socket, spec.topology.cpus())).unwrap_or_default(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuestSpec {
        GuestSpec {
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            topology: Topology::flat(4),
            memory_mib: 256,
            clock: Clock::Real,
            kernel_args: vec!["kevent_bench.param=kmessage.unit=30".into()],
            dbus_socket: None,
        }
    }

    #[test]
    fn the_bus_port_is_a_second_virtio_serial_port_qemu_listens_on_and_the_agent_is_told() {
        let with_bus = GuestSpec { dbus_socket: Some("/tmp/bus".into()), ..spec() };
        let args = joined(&command_line(&with_bus, Accel::Tcg, Path::new("/a.sock"), None));
        assert!(
            args.ends_with(
                "-chardev socket,id=dbus,server=on,wait=off,path=/tmp/bus -device virtserialport,chardev=dbus,name=org.kevent-bench.dbus"
            ),
            "{args}"
        );
        assert!(args.contains(" kevent_bench.dbus_relay=1 "), "{args}");
        assert!(!joined(&command_line(&spec(), Accel::Tcg, Path::new("/a.sock"), None)).contains("dbus"));
    }

    fn joined(args: &[OsString]) -> String {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    /// A scratch directory with an executable `qemu-system-x86_64` in `bin/`
    /// and a private QEMU under `cache/qemu/7.2-test/`, named by `current`.
    struct Layout {
        root: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Layout {
        fn new(name: &str) -> Layout {
            use std::os::unix::fs::PermissionsExt;

            let dir = tempfile::Builder::new().prefix(&format!("kevent-qemu-{name}-")).tempdir().unwrap();
            let root = dir.path().to_owned();
            let private = private_binary(&root.join("cache/qemu/7.2-test"));
            for binary in [root.join("bin").join(QEMU_BINARY), private] {
                std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
                std::fs::write(&binary, "#!/bin/sh\n").unwrap();
                std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            std::fs::write(root.join("cache/qemu/current"), "7.2-test\n").unwrap();
            Layout { root, _dir: dir }
        }

        fn path(&self) -> Option<OsString> {
            Some(std::env::join_paths([self.root.join("empty"), self.root.join("bin")]).unwrap())
        }

        fn cache(&self) -> Result<PathBuf, String> {
            Ok(self.root.join("cache"))
        }
    }

    #[test]
    fn a_variable_naming_nothing_is_an_error_naming_the_variable_not_a_package() {
        let layout = Layout::new("variable");
        let err = resolve_from(Some("/nonexistent".into()), layout.path(), layout.cache()).unwrap_err();
        assert!(matches!(err, QemuNotFound::Variable { .. }), "PATH's QEMU must not stand in for the named one");
        let text = err.to_string();
        assert!(text.starts_with("KEVENT_BENCH_QEMU=/nonexistent does not name an executable file: "), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(!text.contains("apt-get") && !text.contains("install"), "{text}");
        assert!(matches!(crate::Failure::from(err).exit_code(), crate::exit_code::QEMU_START));

        let dir = layout.root.join("bin");
        let err = resolve_from(Some(dir.clone().into()), layout.path(), layout.cache()).unwrap_err();
        assert!(err.to_string().ends_with(": not a regular file; point it at a QEMU binary or unset it"), "{err}");
        let err = resolve_from(Some("qemu-nowhere".into()), layout.path(), layout.cache()).unwrap_err();
        assert!(err.to_string().contains("no executable qemu-nowhere on PATH"), "{err}");
    }

    #[test]
    fn the_variable_then_path_then_the_private_qemu() {
        let layout = Layout::new("order");
        let on_path = layout.root.join("bin").join(QEMU_BINARY);
        let private = private_binary(&layout.root.join("cache/qemu/7.2-test"));

        let named = resolve_from(Some(private.clone().into()), layout.path(), layout.cache()).unwrap();
        assert_eq!(named, Qemu { binary: private.clone(), origin: Origin::Variable });
        let found = resolve_from(None, layout.path(), layout.cache()).unwrap();
        assert_eq!(found, Qemu { binary: on_path.clone(), origin: Origin::Path });
        let empty_is_unset = resolve_from(Some("".into()), layout.path(), layout.cache()).unwrap();
        assert_eq!(empty_is_unset.origin, Origin::Path);

        std::fs::remove_file(&on_path).unwrap();
        let fallback = resolve_from(None, layout.path(), layout.cache()).unwrap();
        assert_eq!(fallback, Qemu { binary: private, origin: Origin::Private });
    }

    #[test]
    fn a_file_that_is_not_executable_is_not_qemu_and_nothing_anywhere_names_the_private_directory() {
        use std::os::unix::fs::PermissionsExt;

        let layout = Layout::new("nowhere");
        let on_path = layout.root.join("bin").join(QEMU_BINARY);
        std::fs::set_permissions(&on_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A prefix left half-extracted is never named by `current`.
        std::fs::remove_file(layout.root.join("cache/qemu/current")).unwrap();
        let err = resolve_from(None, layout.path(), layout.cache()).unwrap_err();
        let text = err.to_string();
        let expected = format!("there is no private QEMU in {}", layout.root.join("cache/qemu").display());
        assert!(text.starts_with("no QEMU: KEVENT_BENCH_QEMU is not set, qemu-system-x86_64 is not on PATH"), "{text}");
        assert!(text.contains(&expected), "{text}");
        let err = resolve_from(None, None, Err("HOME is not set".into())).unwrap_err();
        assert!(err.to_string().contains("no cache directory for a private QEMU (HOME is not set)"), "{err}");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_host_tsc_rate_is_measured_consistently() {
        let window = std::time::Duration::from_millis(20);
        let (a, b) = (measure_tsc_khz(window).unwrap(), measure_tsc_khz(window).unwrap());
        assert!((500_000..10_000_000).contains(&a), "{a} kHz");
        assert!(a.abs_diff(b) * 1000 < a, "{a} and {b} kHz differ by more than 0.1 %");
    }

    #[test]
    fn every_cpu_gets_its_own_socket_unless_packages_share_cores() {
        assert_eq!(joined(&topology_args(Topology::flat(4), 256)), "-smp 4,sockets=4 -m 256M");
        let shared = Topology::new(2, 2).unwrap();
        assert_eq!(joined(&topology_args(shared, 256)), "-smp 4,sockets=2,cores=2,threads=1 -m 256M");
        // Only a guest whose packages share cores boots with ACPI.
        let mut spec = spec();
        assert!(joined(&boot_args(&spec, None)).contains("no_timer_check acpi=off kevent_bench"));
        spec.topology = shared;
        assert!(!joined(&boot_args(&spec, None)).contains("acpi"));
    }

    #[test]
    fn tcg_uses_the_max_cpu_model_and_kvm_the_host_one() {
        assert_eq!(joined(&accel_args(Accel::Tcg, Clock::Real)), "-accel tcg -cpu max");
        assert_eq!(joined(&accel_args(Accel::Kvm, Clock::Real)), "-accel kvm -cpu host");
    }

    #[test]
    fn the_virtual_clock_counts_instructions_on_one_thread_with_a_1_ghz_tsc() {
        let mut spec = spec();
        spec.clock = Clock::Virtual;
        let args = joined(&command_line(&spec, Accel::Tcg, Path::new("/a.sock"), None));
        assert!(args.contains("-accel tcg,thread=single -cpu max -icount shift=6,sleep=off"), "{args}");
        assert!(args.contains("tsc_early_khz=1000000"), "{args}");
    }

    #[test]
    fn the_kernel_boots_from_vmlinux_with_panic_restart_and_extra_args_last() {
        let args = joined(&boot_args(&spec(), None));
        assert_eq!(
            args,
            "-kernel /k/vmlinux -initrd /k/initramfs.cpio -append console=ttyS0 panic=-1 tsc=reliable no_timer_check acpi=off kevent_bench.param=kmessage.unit=30"
        );
        let args = joined(&boot_args(&spec(), Some(3_295_012)));
        assert!(args.contains("no_timer_check acpi=off tsc_early_khz=3295012 kevent_bench"), "{args}");
    }

    #[test]
    fn the_full_command_line_has_no_defaults_and_never_restarts() {
        let args = joined(&command_line(&spec(), Accel::Tcg, Path::new("/tmp/x/agent.sock"), None));
        assert!(args.starts_with("-nodefaults -no-reboot -nographic"), "{args}");
        assert!(!args.contains("ivshmem"), "{args}");
        assert!(args.contains("-chardev socket,id=agent,path=/tmp/x/agent.sock"), "{args}");
        assert!(args.contains("virtserialport,chardev=agent,name=org.kevent-bench.agent"), "{args}");
        assert!(args.contains("-serial stdio"), "{args}");
    }

    #[test]
    fn a_debugged_guest_has_a_gdbstub_and_a_monitor_for_the_host() {
        let stub = crate::gdb::GdbStub { endpoint: crate::gdb::Endpoint::Tcp(1234), wait: true };
        assert_eq!(
            joined(&debug_args(&stub, Path::new("/s/qmp.sock"))),
            "-gdb tcp:127.0.0.1:1234 -S -chardev socket,id=qmp,path=/s/qmp.sock -mon chardev=qmp,mode=control"
        );
        let stub = crate::gdb::GdbStub { wait: false, ..stub };
        assert!(!joined(&debug_args(&stub, Path::new("/q"))).contains("-S"));
        let args = [OsString::from("-append"), OsString::from("console=ttyS0 x=\"a b\"")];
        assert_eq!(
            shell_command(Path::new("/usr/bin/qemu-system-x86_64"), &args),
            "/usr/bin/qemu-system-x86_64 -append 'console=ttyS0 x=\"a b\"'"
        );
    }

    #[test]
    fn the_sensor_has_one_vector_per_cpu_on_the_hosts_socket() {
        let args = joined(&command_line(&spec(), Accel::Tcg, Path::new("/a.sock"), Some(Path::new("/s.sock"))));
        assert!(
            args.ends_with("-chardev socket,id=sensor,path=/s.sock -device ivshmem-doorbell,chardev=sensor,vectors=4,ioeventfd=off"),
            "{args}"
        );
    }
}
