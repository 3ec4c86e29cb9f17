//! Choosing the accelerator ([`Accel`], whose QEMU arguments are in
//! `qemu`): KVM only when it demonstrably runs a guest.
//!
//! On some hosts /dev/kvm opens but guests hang (nested virtualisation gone
//! wrong), or QEMU aborts setting an MSR. Opening the device proves nothing, so
//! `auto` boots the real kernel with the floor init under KVM, bounded, and
//! falls back to TCG if it does not come back in time. The verdict is cached
//! per host boot, so only the first run after a reboot pays for the probe.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::qemu::{self, GuestSpec, Qemu};
pub use crate::qemu::{Accel, ACCEL_ENV};

/// What the user asked for with `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM if a probe guest boots on it in time, else TCG (see [`decide`]).
    #[default]
    Auto,
    /// KVM, unprobed: a KVM that does not work fails the run.
    Kvm,
    /// TCG, whatever the host offers.
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(format!("unknown accelerator {other:?}: expected auto, kvm or tcg")),
        }
    }
}

/// The accelerator to use and why, for the run's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    /// The accelerator every guest of the run gets.
    pub accel: Accel,
    /// Why, in a few words: "asked for", the probe's outcome, or why there was no probe.
    pub reason: String,
}

/// How long a KVM guest may take to boot the floor init before KVM is
/// judged not to work. A working KVM boots it in well under a second.
pub const KVM_PROBE_BOUND: Duration = Duration::from_secs(3);

/// Resolves `choice`. `probe_guest` is the kernel with the floor init;
/// `cache_dir` keeps the verdict of the last probe.
pub fn decide(choice: AccelChoice, probe_guest: &GuestSpec, cache_dir: &Path) -> AccelDecision {
    match choice {
        AccelChoice::Tcg => AccelDecision { accel: Accel::Tcg, reason: "asked for".into() },
        AccelChoice::Kvm => AccelDecision { accel: Accel::Kvm, reason: "asked for".into() },
        AccelChoice::Auto => decide_auto(probe_guest, cache_dir),
    }
}

fn decide_auto(probe_guest: &GuestSpec, cache_dir: &Path) -> AccelDecision {
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return AccelDecision { accel: Accel::Tcg, reason: format!("/dev/kvm: {e}") };
    }
    let qemu = match qemu::resolve() {
        Ok(qemu) => qemu,
        Err(e) => return AccelDecision { accel: Accel::Tcg, reason: format!("no KVM probe: {e}") },
    };
    let key = probe_key(&qemu, probe_guest);
    let cache = cache_file(cache_dir, &probe_guest.kernel);
    if let Some(decision) = cache.as_deref().and_then(|c| read_cached(c, &key)) {
        return decision;
    }
    // The floor guest, as the boot benchmark runs it, on KVM: a working KVM
    // boots it and comes back well inside the bound.
    let decision = match crate::machine::run_to_exit(probe_guest, Accel::Kvm, KVM_PROBE_BOUND) {
        Ok(elapsed) => AccelDecision {
            accel: Accel::Kvm,
            reason: format!("KVM booted a probe guest in {:.2} s", elapsed.as_secs_f64()),
        },
        Err(failure) => AccelDecision { accel: Accel::Tcg, reason: format!("KVM probe failed: {failure}") },
    };
    if let Some(cache) = cache {
        let _ = fs::create_dir_all(cache_dir);
        let _ = fs::write(cache, format!("{key}\n{}\n{}\n", decision.accel, decision.reason));
    }
    decision
}

/// One verdict per kernel: the default and debug kernels keep their own.
fn cache_file(cache_dir: &Path, kernel: &Path) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    kernel.hash(&mut hasher);
    Some(cache_dir.join(format!("kvm-probe-{:016x}", hasher.finish())))
}

/// The verdict holds for one host boot, one QEMU binary and one kernel.
fn probe_key(qemu: &Qemu, guest: &GuestSpec) -> String {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let stamp = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).map(|t| format!("{t:?}")).unwrap_or_default();
    format!("{} {} {} {}", boot_id.trim(), qemu.binary.display(), stamp(&qemu.binary), stamp(&guest.kernel))
}

fn read_cached(cache: &Path, key: &str) -> Option<AccelDecision> {
    let text = fs::read_to_string(cache).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let accel = match lines.next()? {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    let reason = format!("{} (cached for this host boot)", lines.next()?);
    Some(AccelDecision { accel, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_unknown_ones_are_named() {
        assert_eq!("auto".parse::<AccelChoice>(), Ok(AccelChoice::Auto));
        assert_eq!("tcg".parse::<AccelChoice>(), Ok(AccelChoice::Tcg));
        assert_eq!("kvm".parse::<AccelChoice>(), Ok(AccelChoice::Kvm));
        assert_eq!("hvf".parse::<AccelChoice>().unwrap_err(), "unknown accelerator \"hvf\": expected auto, kvm or tcg");
    }

    #[test]
    fn a_cached_verdict_is_used_only_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("kvm-probe");
        fs::write(&cache, "key-1\ntcg\nKVM probe failed: the guest did not finish within 3 s\n").unwrap();
        let hit = read_cached(&cache, "key-1").unwrap();
        assert_eq!(hit.accel, Accel::Tcg);
        assert!(hit.reason.ends_with("(cached for this host boot)"));
        assert!(read_cached(&cache, "key-2").is_none());
    }
}
