//! Recording a real machine's thermal registers into a trace
//! (`cargo xtask record`): IA32_THERM_STATUS of every online CPU and
//! IA32_PACKAGE_THERM_STATUS of every package, read through the `msr`
//! module's `/dev/cpu/N/msr` (pread at the MSR's address, 8 bytes), with
//! the topology sysfs gives. Nothing here builds or boots anything; both
//! directories can be pointed at fake files laid out the same way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::msr_trace::{self, Msr, TraceCpu, Writer};

/// IA32_TEMPERATURE_TARGET: TjMax in bits 23:16.
const MSR_TEMPERATURE_TARGET: u64 = 0x1a2;

/// Why a recording could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// No `/dev/cpu/N/msr`: the msr module is not loaded (or the directory
    /// is not a `/dev/cpu`).
    #[error(
        "{} does not exist: the msr module is not loaded (as root: modprobe msr), or {} is not a /dev/cpu directory",
        path.display(),
        dir.display()
    )]
    NoMsrDevice {
        /// The device that is missing.
        path: PathBuf,
        /// The directory given as /dev/cpu.
        dir: PathBuf,
    },
    /// The device exists but may not be read.
    #[error(
        "{}: access refused: reading MSRs needs root (or CAP_SYS_RAWIO and read access to the device)",
        path.display()
    )]
    AccessRefused {
        /// The device.
        path: PathBuf,
        #[source]
        /// The error of open(2) or pread(2).
        source: io::Error,
    },
    /// The CPU refused the rdmsr: it does not have that register.
    #[error(
        "CPU {cpu}: reading {msr} failed: this CPU does not have it (it needs Intel thermal monitoring; the package \
         register also package thermal management, CPUID.06H:EAX[6])"
    )]
    NoSuchRegister {
        /// The CPU read.
        cpu: u32,
        /// The register.
        msr: Msr,
        #[source]
        /// The error of pread(2).
        source: io::Error,
    },
    /// The topology in sysfs is missing or unreadable.
    #[error("{}: {why}", path.display())]
    Topology {
        /// The sysfs file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The CPUs to record are not a machine a guest can be.
    #[error("{why}: a trace of these CPUs could not be replayed, so nothing is recorded")]
    NotAGuest {
        /// Why the guest cannot have them.
        why: String,
    },
    /// Writing the trace, or another I/O error.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        #[source]
        /// Its error.
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> RecordError {
    let what = what.into();
    move |source| RecordError::Io { what, source }
}

/// A cpulist as sysfs writes it (and `record --cpus` takes it): `0-3,5`.
pub fn parse_cpulist(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
                if first > last || last - first > 4096 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

fn read_number(path: &Path) -> Result<u32, RecordError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RecordError::Topology { path: path.to_owned(), why: format!("cannot read it: {e}") })?;
    text.trim()
        .parse()
        .map_err(|_| RecordError::Topology { path: path.to_owned(), why: format!("{:?} is not a number", text.trim()) })
}

/// The online CPUs and where each sits, from `sysfs_root`
/// (`devices/system/cpu/online`, `cpuN/topology/physical_package_id` and
/// `core_id`).
pub fn read_topology(sysfs_root: &Path) -> Result<Vec<TraceCpu>, RecordError> {
    let cpu_dir = sysfs_root.join("devices/system/cpu");
    let online_path = cpu_dir.join("online");
    let online = std::fs::read_to_string(&online_path)
        .map_err(|e| RecordError::Topology { path: online_path.clone(), why: format!("cannot read it: {e}") })?;
    let cpus = parse_cpulist(&online).filter(|c| !c.is_empty()).ok_or_else(|| RecordError::Topology {
        path: online_path.clone(),
        why: format!("{:?} is not a CPU list", online.trim()),
    })?;
    cpus.into_iter()
        .map(|cpu| {
            let topology = cpu_dir.join(format!("cpu{cpu}/topology"));
            Ok(TraceCpu {
                cpu,
                package: read_number(&topology.join("physical_package_id"))?,
                core: read_number(&topology.join("core_id"))?,
            })
        })
        .collect()
}

/// The open MSR devices of a machine and what was last read from them.
pub struct Recorder {
    cpus: Vec<TraceCpu>,
    /// The guest the recorded CPUs make, as a replay will boot it.
    topology: crate::Topology,
    devices: Vec<(PathBuf, File)>,
    /// Per package, the index of the CPU its register is read through:
    /// its first online CPU.
    package_reader: BTreeMap<u32, usize>,
    /// The last value written per register (CPU for the core register,
    /// package for the package one).
    last: BTreeMap<(Msr, u32), u64>,
    /// Per register, every bit outside the bench's model that was set.
    unmodelled: BTreeMap<Msr, u64>,
}

/// One value of a sample, to be written as a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The CPU read.
    pub cpu: u32,
    /// Its package.
    pub package: u32,
    /// The register.
    pub msr: Msr,
    /// Restricted to [`Msr::modelled_bits`].
    pub value: u64,
}

impl Recorder {
    /// Opens the MSR device of every online CPU under `msr_dir` (of those
    /// in `only`, if given: a machine with more CPUs than a guest can
    /// have is recorded in part) and reads the topology under
    /// `sysfs_root`; says why it cannot.
    pub fn open(msr_dir: &Path, sysfs_root: &Path, only: Option<&[u32]>) -> Result<Recorder, RecordError> {
        let mut cpus = read_topology(sysfs_root)?;
        if let Some(only) = only {
            let online: Vec<u32> = cpus.iter().map(|c| c.cpu).collect();
            if let Some(missing) = only.iter().find(|c| !online.contains(c)) {
                return Err(RecordError::Topology {
                    path: sysfs_root.join("devices/system/cpu/online"),
                    why: format!("CPU {missing} is not online (online: {online:?})"),
                });
            }
            cpus.retain(|c| only.contains(&c.cpu));
        }
        // Refused now rather than by the replay after an hour of recording.
        let (topology, _) = msr_trace::guest_topology(&cpus).map_err(|why| RecordError::NotAGuest { why })?;
        let mut devices = Vec::new();
        for c in &cpus {
            let path = msr_dir.join(c.cpu.to_string()).join("msr");
            let file = File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => RecordError::NoMsrDevice { path: path.clone(), dir: msr_dir.to_owned() },
                io::ErrorKind::PermissionDenied => RecordError::AccessRefused { path: path.clone(), source: e },
                _ => RecordError::Io { what: format!("open {}", path.display()), source: e },
            })?;
            devices.push((path, file));
        }
        let mut package_reader = BTreeMap::new();
        for (i, c) in cpus.iter().enumerate() {
            package_reader.entry(c.package).or_insert(i);
        }
        Ok(Recorder { cpus, topology, devices, package_reader, last: BTreeMap::new(), unmodelled: BTreeMap::new() })
    }

    /// The CPUs recorded.
    pub fn cpus(&self) -> &[TraceCpu] {
        &self.cpus
    }

    /// The guest the recorded CPUs make.
    pub fn topology(&self) -> crate::Topology {
        self.topology
    }

    fn rdmsr(&self, index: usize, address: u64) -> io::Result<u64> {
        let mut bytes = [0u8; 8];
        self.devices[index].1.read_exact_at(&mut bytes, address)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn read(&self, index: usize, msr: Msr) -> Result<u64, RecordError> {
        let cpu = self.cpus[index].cpu;
        self.rdmsr(index, u64::from(msr.address())).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => {
                RecordError::AccessRefused { path: self.devices[index].0.clone(), source: e }
            }
            // The msr driver's answer for a CPU that is not online.
            _ if e.raw_os_error() == Some(libc::ENXIO) => RecordError::Io {
                what: format!("CPU {cpu} went offline during the recording (reading {msr})"),
                source: e,
            },
            // The msr driver answers EIO for an MSR the CPU does not have;
            // a fake file too short to hold it ends early.
            _ => RecordError::NoSuchRegister { cpu, msr, source: e },
        })
    }

    /// TjMax in °C from IA32_TEMPERATURE_TARGET of the first CPU, if the
    /// CPU has it.
    pub fn tjmax(&self) -> Option<u32> {
        let value = self.rdmsr(0, MSR_TEMPERATURE_TARGET).ok()?;
        let tjmax = ((value >> 16) & 0xff) as u32;
        crate::thermal::TJMAX_RANGE.contains(&tjmax).then_some(tjmax)
    }

    /// Reads every register once: returns those whose value changed since
    /// the last sample (every one, the first time), core registers in CPU
    /// order, then package registers in package order.
    pub fn sample(&mut self) -> Result<Vec<Reading>, RecordError> {
        let mut readings = Vec::new();
        for index in 0..self.cpus.len() {
            let value = self.read(index, Msr::ThermStatus)?;
            let c = self.cpus[index];
            readings.push((Reading { cpu: c.cpu, package: c.package, msr: Msr::ThermStatus, value }, c.cpu));
        }
        for (&package, &index) in &self.package_reader {
            let value = self.read(index, Msr::PackageThermStatus)?;
            let cpu = self.cpus[index].cpu;
            readings.push((Reading { cpu, package, msr: Msr::PackageThermStatus, value }, package));
        }
        let mut changed = Vec::new();
        for (mut reading, key) in readings {
            let unmodelled = reading.value & !reading.msr.modelled_bits();
            *self.unmodelled.entry(reading.msr).or_default() |= unmodelled;
            reading.value &= reading.msr.modelled_bits();
            if self.last.insert((reading.msr, key), reading.value) != Some(reading.value) {
                changed.push(reading);
            }
        }
        Ok(changed)
    }

    /// Bits that were set outside the bench's model, per register: they
    /// are not recorded (README, "Recording a real machine").
    pub fn unmodelled(&self) -> impl Iterator<Item = (Msr, u64)> + '_ {
        self.unmodelled.iter().filter(|(_, bits)| **bits != 0).map(|(msr, bits)| (*msr, *bits))
    }
}

/// What a recording wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Samples taken (every register read once each).
    pub samples: u64,
    /// Rows written: values that changed.
    pub rows: u64,
    /// How long it ran.
    pub elapsed: Duration,
    /// Whether `stop` ended it before its duration.
    pub stopped: bool,
    /// Samples that began more than one interval late (a loaded host).
    pub late_samples: u64,
    /// Whether it ended because one more sample would have taken the trace
    /// past `max_rows` (a trace may hold [`msr_trace::MAX_ROWS`]).
    pub full: bool,
}

/// Samples every `interval` for `duration` (the first at once), writing a
/// row for each changed value, with the microseconds since the first
/// sample; `stop` is asked before each sample. It ends early, before the
/// sample that would take it past `max_rows`. The trace on `out` is whole
/// after every sample.
pub fn record<W: Write>(
    recorder: &mut Recorder,
    out: W,
    interval: Duration,
    duration: Duration,
    max_rows: usize,
    notes: &[String],
    stop: &dyn Fn() -> bool,
) -> Result<Recorded, RecordError> {
    let tjmax = recorder.tjmax();
    let mut writer = Writer::new(out, recorder.cpus(), tjmax, notes).map_err(io_error("write the trace header"))?;
    // Flushed after the header and after each sample: a recording killed
    // outright is still a trace up to its last whole sample.
    writer.flush().map_err(io_error("write the trace header"))?;
    let start = Instant::now();
    let mut done =
        Recorded { samples: 0, rows: 0, elapsed: Duration::ZERO, stopped: false, late_samples: 0, full: false };
    loop {
        let due = interval * u32::try_from(done.samples).unwrap_or(u32::MAX);
        if due > duration {
            break;
        }
        // In slices, so that a stop is seen within 50 ms of being asked.
        while let Some(wait) = (start + due).checked_duration_since(Instant::now()) {
            if stop() {
                break;
            }
            std::thread::sleep(wait.min(Duration::from_millis(50)));
        }
        if stop() {
            done.stopped = true;
            break;
        }
        let at = start.elapsed();
        if at > due + interval {
            done.late_samples += 1;
        }
        let time_us = at.as_micros() as u64;
        let readings = recorder.sample()?;
        // Whole samples only: the trace stays one a replay can read.
        if done.rows + readings.len() as u64 > max_rows as u64 {
            done.full = true;
            break;
        }
        for r in readings {
            writer.row(time_us, r.cpu, r.package, r.msr, r.value).map_err(io_error("write a trace row"))?;
            done.rows += 1;
        }
        writer.flush().map_err(io_error("write a trace row"))?;
        done.samples += 1;
    }
    for (msr, bits) in recorder.unmodelled().collect::<Vec<_>>() {
        writer
            .comment(&format!("{msr}: bits {bits:#x} were set and are not recorded: the bench does not model them"))
            .map_err(io_error("write a trace comment"))?;
    }
    writer.flush().map_err(io_error("write the trace"))?;
    done.elapsed = start.elapsed();
    Ok(done)
}

/// A directory laid out like `/dev/cpu` and `/sys` for a machine of
/// `cpus`, whose register values a test (or a scripted episode) sets:
/// `N/msr` files holding each MSR at its address.
pub struct FakeMachine {
    /// The fake `/dev/cpu`: `N/msr`.
    pub msr_dir: PathBuf,
    /// The fake `/sys`: `devices/system/cpu`.
    pub sysfs_root: PathBuf,
    files: Vec<File>,
}

impl FakeMachine {
    /// Creates the layout under `root` for `cpus` (with their packages and
    /// core ids) and TjMax `tjmax`; every register holds `0` until set.
    pub fn create(root: &Path, cpus: &[TraceCpu], tjmax: u32) -> io::Result<FakeMachine> {
        let msr_dir = root.join("dev/cpu");
        let sysfs_root = root.join("sys");
        let cpu_dir = sysfs_root.join("devices/system/cpu");
        std::fs::create_dir_all(&cpu_dir)?;
        let list: Vec<String> = cpus.iter().map(|c| c.cpu.to_string()).collect();
        std::fs::write(cpu_dir.join("online"), format!("{}\n", list.join(",")))?;
        let mut files = Vec::new();
        for c in cpus {
            let topology = cpu_dir.join(format!("cpu{}/topology", c.cpu));
            std::fs::create_dir_all(&topology)?;
            std::fs::write(topology.join("physical_package_id"), format!("{}\n", c.package))?;
            std::fs::write(topology.join("core_id"), format!("{}\n", c.core))?;
            let dir = msr_dir.join(c.cpu.to_string());
            std::fs::create_dir_all(&dir)?;
            let file =
                std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join("msr"))?;
            file.set_len(0x200)?;
            file.write_all_at(&(u64::from(tjmax) << 16).to_le_bytes(), MSR_TEMPERATURE_TARGET)?;
            files.push(file);
        }
        Ok(FakeMachine { msr_dir, sysfs_root, files })
    }

    /// Sets `msr` of the `index`th CPU to `value`.
    pub fn set(&self, index: usize, msr: Msr, value: u64) -> io::Result<()> {
        self.files[index].write_all_at(&value.to_le_bytes(), u64::from(msr.address()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_read_as_sysfs_writes_them() {
        assert_eq!(parse_cpulist("0-3,5\n"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpulist("0"), Some(vec![0]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("x"), None);
    }
}
