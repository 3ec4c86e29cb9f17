//! The guest's CPUs as packages of cores.
//!
//! QEMU numbers CPUs package by package (`-smp P*C,sockets=P,cores=C`: CPU
//! i is core i % C of package i / C), and so does everything here: the
//! sensor device's header, the package register file, traces replayed
//! into the guest.

use std::fmt;
use std::ops::Range;

/// The bench kernel's NR_CPUS and the sensor device's rings.
pub const MAX_CPUS: u32 = crate::sensor::abi::MAX_CPUS;
/// The sensor device's package registers.
pub const MAX_PACKAGES: u32 = crate::sensor::abi::MAX_PACKAGES;

/// `packages` packages of `cores` cores each (one thread per core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topology {
    /// Physical packages (sockets).
    pub packages: u32,
    /// Cores of each package.
    pub cores: u32,
}

impl Default for Topology {
    fn default() -> Topology {
        Topology::flat(2)
    }
}

impl Topology {
    /// `cpus` CPUs, each its own package: what the guest had before
    /// packages could share cores, and what it still boots without ACPI.
    pub fn flat(cpus: u32) -> Topology {
        Topology { packages: cpus, cores: 1 }
    }

    /// A topology the bench can boot, or why not.
    pub fn new(packages: u32, cores: u32) -> Result<Topology, String> {
        let topology = Topology { packages, cores };
        topology.check()?;
        Ok(topology)
    }

    /// Whether the guest can have this topology: 1 to [`MAX_CPUS`] CPUs in
    /// 1 to [`MAX_PACKAGES`] packages.
    pub fn check(self) -> Result<(), String> {
        if self.packages == 0 || self.cores == 0 {
            return Err(format!("{self}: a machine has at least one package of at least one core"));
        }
        match self.packages.checked_mul(self.cores) {
            Some(cpus) if cpus <= MAX_CPUS => Ok(()),
            _ => Err(format!("{self} would be more than the {MAX_CPUS} CPUs the bench kernel runs")),
        }
    }

    /// Every CPU of the machine.
    pub fn cpus(self) -> u32 {
        self.packages * self.cores
    }

    /// The package CPU `cpu` belongs to.
    pub fn package_of(self, cpu: u32) -> u32 {
        cpu / self.cores
    }

    /// CPU `cpu`'s core number inside its package (sysfs `core_id`).
    pub fn core_of(self, cpu: u32) -> u32 {
        cpu % self.cores
    }

    /// The CPUs of `package`, in ascending order.
    pub fn cpus_of(self, package: u32) -> Range<u32> {
        package * self.cores..(package + 1) * self.cores
    }

    /// Whether packages have more than one core: the guest then needs
    /// ACPI to find them all (SeaBIOS's MP table lists one CPU per package).
    pub fn shares_packages(self) -> bool {
        self.cores > 1
    }

    /// `PxC`, as `--topology` takes it: `2x2` is 2 packages of 2 cores.
    pub fn parse(text: &str) -> Result<Topology, String> {
        let (packages, cores) =
            text.split_once(['x', 'X']).ok_or_else(|| format!("{text:?}: expected PACKAGESxCORES, e.g. 2x2"))?;
        let number = |what: &str, s: &str| {
            s.parse::<u32>().map_err(|_| format!("{text:?}: {what} {s:?} is not a number (expected PACKAGESxCORES)"))
        };
        Topology::new(number("packages", packages)?, number("cores", cores)?)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: u32, what: &str| if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") };
        write!(f, "{} × {}", plural(self.packages, "package"), plural(self.cores, "core"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_numbered_package_by_package() {
        let t = Topology::new(2, 3).unwrap();
        assert_eq!(t.cpus(), 6);
        let placed: Vec<(u32, u32)> = (0..6).map(|cpu| (t.package_of(cpu), t.core_of(cpu))).collect();
        assert_eq!(placed, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        assert_eq!(t.cpus_of(1), 3..6);
        assert!(t.shares_packages());
        assert!(!Topology::flat(4).shares_packages());
        assert_eq!(Topology::flat(4).package_of(3), 3);
    }

    #[test]
    fn a_topology_is_parsed_from_packages_x_cores_and_bounded() {
        assert_eq!(Topology::parse("2x2"), Ok(Topology { packages: 2, cores: 2 }));
        assert_eq!(Topology::parse("1X8"), Ok(Topology { packages: 1, cores: 8 }));
        assert_eq!(Topology::parse("8x1"), Ok(Topology::flat(8)));
        assert_eq!(
            Topology::parse("3x3").unwrap_err(),
            "3 packages × 3 cores would be more than the 8 CPUs the bench kernel runs"
        );
        assert!(Topology::parse("0x2").unwrap_err().contains("at least one package"), "{:?}", Topology::parse("0x2"));
        assert!(Topology::parse("2").unwrap_err().contains("expected PACKAGESxCORES"));
        assert!(Topology::parse("2xtwo").unwrap_err().contains("cores \"two\" is not a number"));
        assert!(Topology::parse("4294967295x2").unwrap_err().contains("more than the 8 CPUs"));
    }

    #[test]
    fn it_reads_as_packages_and_cores() {
        assert_eq!(Topology::new(2, 2).unwrap().to_string(), "2 packages × 2 cores");
        assert_eq!(Topology::flat(1).to_string(), "1 package × 1 core");
    }
}
