//! kevent-bench, the host side: runs QEMU, talks to the guest agent, and
//! tells a clean run from a crashed, hung or broken one.
//!
//! It builds nothing: `cargo xtask` builds the kernel, the modules, the agent
//! and the initramfs, then calls in here.

pub mod accel;
pub mod artifacts;
pub mod bundle;
pub mod cache;
pub mod console;
pub mod cpio;
pub mod dbus;
pub mod dyndbg;
pub mod events;
pub mod failure;
pub mod fingerprint;
pub mod gdb;
pub mod inject;
pub mod json_lines;
pub mod ktap;
pub mod load;
pub mod machine;
pub mod modinfo;
pub mod msr_replay;
pub mod msr_trace;
pub mod process;
pub mod qemu;
pub mod record;
pub mod runner;
pub mod scenario;
pub mod sensor;
pub mod snapshot;
pub mod sources;
pub mod stats;
pub mod thermal;
pub mod topology;
pub mod trace;
pub mod transcript;
pub mod wait;

mod glob;
#[cfg(test)]
mod kmod_source;

pub use accel::{Accel, AccelChoice, AccelDecision};
pub use artifacts::Artifacts;
pub use failure::{exit_code, Failure, Stage};
pub use machine::{run_to_exit, BootTimings, Exchange, Machine, MachineConfig, ShutdownReport, Timeouts};
pub use qemu::{Clock, GuestSpec, Qemu};
pub use topology::Topology;
