//! One way to carry an injection into the guest, shared by the scenario
//! runner and the benchmarks: through the emulated sensor device, or
//! through the module's debugfs trigger, answered in the same terms.

use std::fmt;
use std::time::{Duration, Instant};

use kevent_wire::{Command, Datagram, DbusMessage, Outcome};

use crate::failure::Failure;
use crate::machine::Machine;
use crate::sensor::{Published, Register, Timing};

/// How injections reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Injector {
    /// The host's emulated sensor raises the CPU's MSI-X vector.
    #[default]
    Device,
    /// The guest agent writes the module's debugfs trigger.
    Debugfs,
}

impl Injector {
    /// Every injector, in the order help texts list them.
    pub const ALL: [Injector; 2] = [Injector::Device, Injector::Debugfs];
    /// The names a scenario may give, as an error message lists them.
    pub const NAMES: &'static str = "\"device\" or \"debugfs\"";

    /// The injector's name in scenarios and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Injector::Device => "device",
            Injector::Debugfs => "debugfs",
        }
    }

    /// The injector a scenario or the command line names.
    pub fn from_name(name: &str) -> Option<Injector> {
        Injector::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl fmt::Display for Injector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One register image for one CPU: its core register, or its package's.
/// A package's register is shared by its cores and so is its interrupt:
/// every online CPU of the package takes it, one after the other in
/// ascending order, whichever injector carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// The CPU whose handler sees the interrupt (the package register: a
    /// CPU of the package).
    pub cpu: u32,
    /// Which of the CPU's two thermal status registers takes the image.
    pub register: Register,
    /// The register image (Intel SDM layout; `crate::thermal`).
    pub value: u64,
}

/// An injection the module did not take, in the same words whichever
/// injector carried it, so snapshots do not tell the injectors apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What the module answered (EINVAL, EXDEV, ...).
    pub errno: i32,
    /// What was refused.
    pub message: String,
}

impl Injection {
    /// The refusal of this injection with `errno`.
    pub fn refused(&self, errno: i32) -> Refusal {
        Refusal {
            errno,
            message: format!(
                "kevent_thermal did not take {} image {:#x} for CPU {}",
                self.register.name(),
                self.value,
                self.cpu
            ),
        }
    }
}

/// What one injection came to on the host.
#[derive(Debug, Default)]
pub struct Injected {
    /// Why the module refused it, if it did.
    pub refused: Option<Refusal>,
    /// Datagrams that reached the host while the injection was carried:
    /// every one it caused for debugfs (the agent fences its request),
    /// none waited for on the device path (acknowledged means broadcast;
    /// [`Machine::fence`] or [`Machine::wait_datagrams`] brings them in).
    pub datagrams: Vec<Datagram>,
    /// When each of those datagrams reached the host.
    pub arrived: Vec<Instant>,
    /// Messages of the guest's bus that reached the host meanwhile (the
    /// debugfs path's request is fenced through the bus too).
    pub dbus: Vec<DbusMessage>,
    /// Device path: when the guest's acknowledgement was seen.
    pub acknowledged: Option<Instant>,
    /// The CPUs whose handler the injection interrupted, in order (as far
    /// as the host knows which are online).
    pub interrupted: Vec<u32>,
}

impl Injected {
    /// Refused on the host: the device's CPU is offline, which debugfs
    /// refuses with EINVAL too, so both injectors give the same snapshot.
    fn offline(injection: Injection) -> Injected {
        Injected { refused: Some(injection.refused(libc::EINVAL)), ..Injected::default() }
    }
}

impl Machine {
    /// Carries `injection` into the guest `via` one injector and waits
    /// (bounded) until the module has taken or refused it.
    pub fn inject(&mut self, via: Injector, injection: Injection, bound: Duration) -> Result<Injected, Failure> {
        match via {
            Injector::Device if self.device_says_offline(injection.cpu) => Ok(Injected::offline(injection)),
            Injector::Device if injection.register == Register::Package => {
                // The hardware interrupts the package's cores, each after
                // the last has been handled: one entry per online core.
                let mut interrupted = Vec::new();
                for cpu in self.package_cpus_online(injection.cpu) {
                    let published = self.fire(cpu, injection.register, injection.value)?;
                    let done = self.acknowledged(injection, published, Duration::ZERO)?;
                    if done.refused.is_some() {
                        // Refused by the first core, the image changed nothing.
                        return Ok(Injected { interrupted, ..done });
                    }
                    interrupted.push(cpu);
                }
                Ok(Injected { acknowledged: Some(Instant::now()), interrupted, ..Injected::default() })
            }
            Injector::Device => {
                let published = self.fire(injection.cpu, injection.register, injection.value)?;
                self.acknowledged(injection, published, Duration::ZERO)
            }
            Injector::Debugfs => {
                let Injection { cpu, register, value } = injection;
                let command = Command::Inject { package: register == Register::Package, cpu, value };
                let exchange = self.request(command, bound)?;
                let refused = match exchange.outcome {
                    Outcome::Done => None,
                    Outcome::Error { errno, .. } => Some(injection.refused(errno)),
                    other => return Err(Failure::protocol(format!("an injection request answered {other:?}"))),
                };
                let interrupted = match (&refused, register) {
                    (Some(_), _) => Vec::new(),
                    (None, Register::Core) => vec![cpu],
                    (None, Register::Package) => self.package_cpus_online(cpu),
                };
                Ok(Injected {
                    refused,
                    datagrams: exchange.datagrams,
                    arrived: exchange.arrived,
                    dbus: exchange.dbus,
                    acknowledged: None,
                    interrupted,
                })
            }
        }
    }

    /// Whether the sensor device's driver says `cpu` is offline. The device
    /// then publishes nothing to it (its vector is freed while it is down)
    /// and refuses the injection with EINVAL, as the guest's debugfs does
    /// an injection at an offline CPU: the two injectors stay alike.
    fn device_says_offline(&self, cpu: u32) -> bool {
        self.sensor().filter(|d| d.is_ready()).is_some_and(|d| !d.is_online(cpu))
    }

    /// The CPUs of `cpu`'s package that the guest has online, ascending:
    /// those a change of the package register interrupts. The sensor
    /// device's driver says which are online; a guest without it, or a
    /// package none of whose CPUs is online, is taken at its word: all of
    /// the package's CPUs, or `cpu` itself.
    pub fn package_cpus_online(&self, cpu: u32) -> Vec<u32> {
        let topology = self.topology();
        let all: Vec<u32> = topology.cpus_of(topology.package_of(cpu)).collect();
        let Some(device) = self.sensor().filter(|d| d.is_ready()) else { return all };
        let online: Vec<u32> = all.iter().copied().filter(|c| device.is_online(*c)).collect();
        if online.is_empty() {
            vec![cpu]
        } else {
            online
        }
    }

    /// The device fires `injection` `timing.repeat` times, `timing`'s
    /// interval apart on the guest's clock, so where the firings fall in
    /// guest time does not depend on the host; the guest takes or refuses
    /// the entry whole. Device only: debugfs writes are paced by the host.
    pub fn inject_timed(&mut self, injection: Injection, timing: Timing) -> Result<Injected, Failure> {
        if injection.register == Register::Package && self.topology().shares_packages() {
            return Err(Failure::Host {
                message: format!(
                    "a timed package injection on {}: the package's cores are interrupted one after the other, and \
                     the device times one CPU's entries",
                    self.topology()
                ),
            });
        }
        if self.device_says_offline(injection.cpu) {
            return Ok(Injected::offline(injection));
        }
        let published = self.fire_timed(injection.cpu, injection.register, injection.value, timing)?;
        let span = Duration::from_nanos(u64::from(timing.interval_ns) * u64::from(timing.repeat.saturating_sub(1)));
        self.acknowledged(injection, published, span)
    }

    fn acknowledged(
        &mut self,
        injection: Injection,
        published: Published,
        span: Duration,
    ) -> Result<Injected, Failure> {
        let refused = self.wait_acked_after(published, span)?;
        Ok(Injected {
            interrupted: if refused.is_some() { Vec::new() } else { vec![published.cpu] },
            refused: refused.map(|errno| injection.refused(errno as i32)),
            acknowledged: Some(Instant::now()),
            ..Injected::default()
        })
    }
}
