//! The emulated thermal sensor: the hardware side of the device path.
//!
//! The register file and a ring of pending injections per CPU live in a
//! memfd that QEMU maps as BAR2 of an `ivshmem-doorbell` device; the host
//! maps the same memory with vm-memory. Injecting is: latch the image in the
//! next ring entry, publish the ring's head (Release), write the CPU's
//! eventfd, and QEMU raises that CPU's MSI-X vector. The guest's ring consumer
//! (`kmod/kthermal_ring.c`) acknowledges by publishing the entry's sequence
//! number (the host loads it with Acquire) and ringing the host's vector.
//! The layout is `kmod/include/kevent_sensor.h`, mirrored in [`abi`].

pub mod abi;
mod device;
pub mod ivshmem;

pub use device::{CpuStatus, Published, Register, RingFull, SensorDevice, Timing};
