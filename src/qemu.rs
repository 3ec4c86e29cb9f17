//! QEMU's command line, built from small pure functions.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::accel::Accel;

/// Name of QEMU's binary, looked up on PATH unless `KEVENT_BENCH_QEMU` names one.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
pub const QEMU_ENV: &str = "KEVENT_BENCH_QEMU";

/// Kernel arguments every boot gets. `panic=-1` restarts at once on a panic
/// and `-no-reboot` turns that restart into QEMU's exit. TCG's `max` CPU does
/// not advertise a constant TSC, so the kernel would fall back to jiffies
/// (4 ms resolution for guest timestamps): QEMU keeps the vCPUs' TSCs in
/// step, so `tsc=reliable` is true here.
pub const BASE_KERNEL_ARGS: &[&str] = &["console=ttyS0", "panic=-1", "tsc=reliable"];

/// What one guest is made of.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    pub clock: Clock,
    /// Appended after [`BASE_KERNEL_ARGS`].
    pub kernel_args: Vec<String>,
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
    pub const NAMES: &'static str = "\"real\" or \"virtual\"";

    pub fn name(self) -> &'static str {
        match self {
            Clock::Real => "real",
            Clock::Virtual => "virtual",
        }
    }

    pub fn from_name(name: &str) -> Option<Clock> {
        [Clock::Real, Clock::Virtual].into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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

/// The QEMU binary to run: `KEVENT_BENCH_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os(QEMU_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(QEMU_BINARY))
}

/// A command for QEMU that dies with the thread that starts it: a host
/// killed outright (CI's timeout, kill -9) must not leave guests running.
/// Threads that start a guest own it until it is gone, so the thread is
/// the right lifetime.
pub fn command(binary: &Path) -> std::process::Command {
    use std::os::unix::process::CommandExt;

    let mut command = std::process::Command::new(binary);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only calls functions that
    // are async-signal-safe (prctl, getppid, _exit) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the request took effect.
            if libc::getppid() != parent {
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
    use std::arch::x86_64::_rdtsc;
    use std::time::Instant;

    // SAFETY: rdtsc has no preconditions on x86_64.
    let (start, tsc_start) = (Instant::now(), unsafe { _rdtsc() });
    std::thread::sleep(window);
    // SAFETY: as above.
    let (tsc_end, elapsed) = (unsafe { _rdtsc() }, start.elapsed());
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

/// Without ACPI the kernel finds CPUs in the BIOS's MP table, which lists
/// one per socket: `-smp N` alone would bring up one CPU.
pub fn topology_args(cpus: u32, memory_mib: u32) -> Vec<OsString> {
    vec!["-smp".into(), format!("{cpus},sockets={cpus}").into(), "-m".into(), format!("{memory_mib}M").into()]
}

/// The uncompressed vmlinux boots through PVH, the initramfs beside it.
/// `tsc_khz`, when known, spares the kernel calibrating its TSC: under TCG
/// the PIT calibration fails now and then on a loaded host (no HPET, no
/// PM timer to fall back on), and the guest is left on jiffies.
pub fn boot_args(spec: &GuestSpec, tsc_khz: Option<u64>) -> Vec<OsString> {
    let tsc = tsc_khz.map(|khz| format!("tsc_early_khz={khz}"));
    let mut append: Vec<&str> = BASE_KERNEL_ARGS.to_vec();
    append.extend(tsc.as_deref());
    append.extend(spec.kernel_args.iter().map(String::as_str));
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
        topology_args(spec.cpus, spec.memory_mib),
        boot_args(spec, guest_tsc_khz(accel, spec.clock)),
        console_args(),
        agent_channel_args(agent_socket),
        sensor_socket.map(|socket| sensor_args(socket, spec.cpus)).unwrap_or_default(),
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
            cpus: 4,
            memory_mib: 256,
            clock: Clock::Real,
            kernel_args: vec!["kevent_bench.param=kmessage.unit=30".into()],
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
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
    fn every_cpu_gets_its_own_socket() {
        assert_eq!(joined(&topology_args(4, 256)), "-smp 4,sockets=4 -m 256M");
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
            "-kernel /k/vmlinux -initrd /k/initramfs.cpio -append console=ttyS0 panic=-1 tsc=reliable kevent_bench.param=kmessage.unit=30"
        );
        let args = joined(&boot_args(&spec(), Some(3_295_012)));
        assert!(args.contains("tsc=reliable tsc_early_khz=3295012 kevent_bench"), "{args}");
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
    fn the_sensor_has_one_vector_per_cpu_on_the_hosts_socket() {
        let args = joined(&command_line(&spec(), Accel::Tcg, Path::new("/a.sock"), Some(Path::new("/s.sock"))));
        assert!(
            args.ends_with("-chardev socket,id=sensor,path=/s.sock -device ivshmem-doorbell,chardev=sensor,vectors=4,ioeventfd=off"),
            "{args}"
        );
    }
}
