//! Injections through the emulated sensor device: firing entries on a
//! CPU's ring, and the bounded waits for the guest to be ready and to
//! acknowledge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::guest::Guest;
use super::Machine;
use crate::failure::{Failure, Stage};
use crate::sensor::{CpuStatus, Published, Register, SensorDevice, Timing};

/// The emulated sensor device and the thread that watches its ack vector.
pub(super) struct Sensor {
    pub(super) device: SensorDevice,
    pub(super) watcher_stop: Arc<AtomicBool>,
    /// Per CPU, the guest's count of unsent messages when last checked.
    pub(super) dropped_seen: Vec<u64>,
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.watcher_stop.store(true, Ordering::Relaxed);
    }
}

/// How often a wait on the shared memory looks again when no event came.
pub(super) const SENSOR_TICK: Duration = Duration::from_millis(2);

impl Machine {
    /// The emulated sensor device, if the guest has one.
    pub fn sensor(&self) -> Option<&SensorDevice> {
        self.sensor.as_ref().map(|s| &s.device)
    }

    fn sensor_mut(&mut self) -> Result<&mut SensorDevice, Failure> {
        match &mut self.sensor {
            Some(sensor) => Ok(&mut sensor.device),
            None => Err(Failure::Host { message: "this guest was started without the emulated sensor device".into() }),
        }
    }

    /// Waits until the guest's driver has a handler on every vector: QEMU
    /// drops a ring that comes before MSI-X is enabled.
    fn wait_sensor_ready(&mut self) -> Result<(), Failure> {
        let bound = self.timeouts.sensor_ready;
        let Machine { guest, sensor, .. } = self;
        let sensor = sensor.as_mut().expect("called with a sensor");
        let device = &sensor.device;
        if !guest.wait_until(Stage::Sensor, bound, SENSOR_TICK, |_| device.is_ready())? {
            let detail = "kevent_thermal.ko has not bound the ivshmem-doorbell device (1af4:1110) with one MSI-X \
                          vector per CPU, or was unbound";
            return Err(guest.sensor_not_ready(bound, detail.to_owned()));
        }
        let (serves, cpus) = (device.guest_cpus(), device.cpus());
        if serves != cpus {
            return Err(
                guest.sensor_not_ready(bound, format!("its driver serves {serves} of the device's {cpus} CPUs"))
            );
        }
        // What the guest lost before this driver took the device is not ours to report.
        for cpu in 0..cpus {
            sensor.dropped_seen[cpu as usize] = device.status(cpu).events_dropped;
        }
        Ok(())
    }

    /// The sensor hardware changes `cpu`'s register (or its package's) to
    /// `value` and raises `cpu`'s thermal interrupt, without waiting for
    /// the guest. Waits (bounded) for the device to be ready and for ring
    /// space; QEMU raises MSI-X vector `cpu`.
    pub fn fire(&mut self, cpu: u32, register: Register, value: u64) -> Result<Published, Failure> {
        self.fire_timed(cpu, register, value, Timing::ONCE)
    }

    /// [`Self::fire`], with the guest firing the image as `timing` says,
    /// paced by its own clock; acknowledged after the last firing.
    pub fn fire_timed(
        &mut self,
        cpu: u32,
        register: Register,
        value: u64,
        timing: Timing,
    ) -> Result<Published, Failure> {
        let cpus = self.sensor_mut()?.cpus();
        if cpu >= cpus {
            return Err(Failure::Host {
                message: format!("CPU {cpu}: the sensor device serves CPUs 0 to {}", cpus - 1),
            });
        }
        if !self.sensor_mut()?.is_ready() {
            self.wait_sensor_ready()?;
        }
        let bound = self.timeouts.sensor_ack;
        let Machine { guest, sensor, .. } = self;
        let device = &mut sensor.as_mut().expect("checked above").device;
        if !guest.wait_until(Stage::Sensor, bound, SENSOR_TICK, |_| device.has_room(cpu, timing))? {
            let status = device.status(cpu);
            let failure = Failure::SensorNoAck {
                cpu,
                seq: device.oldest_unacked(cpu).unwrap_or(status.acked_seq + 1),
                waited: bound,
                detail: no_ack_detail(&status, true),
                console_tail: guest.console_tail(),
            };
            return Err(guest.fail(failure));
        }
        let published = device.publish(cpu, register, value, timing).expect("room checked");
        device.ring(cpu).map_err(|e| Failure::io("ring the sensor's vector", e))?;
        Ok(published)
    }

    /// Waits (bounded) until the guest acknowledges `published`: its
    /// handler ran and every message it caused has been broadcast. Returns
    /// the errno the guest refused the entry with, if it did.
    pub fn wait_acked(&mut self, published: Published) -> Result<Option<u32>, Failure> {
        self.wait_acked_after(published, Duration::ZERO)
    }

    /// [`Self::wait_acked`] for an entry whose firings span `span` of the
    /// guest's time: the bound grows by that much.
    pub fn wait_acked_after(&mut self, published: Published, span: Duration) -> Result<Option<u32>, Failure> {
        let bound = self.timeouts.sensor_ack + span;
        let Machine { guest, sensor, .. } = self;
        let sensor = sensor.as_mut().ok_or_else(|| Failure::Host { message: "no sensor device".into() })?;
        let device = &sensor.device;
        let settled = |_: &Guest| device.is_acked(published) || !device.is_ready();
        if guest.wait_until(Stage::Sensor, bound, SENSOR_TICK, settled)? {
            if !device.is_acked(published) {
                let detail = format!("the driver let go of the device while injection {} was pending", published.seq);
                return Err(guest.sensor_not_ready(Duration::ZERO, detail));
            }
            let cpu = published.cpu;
            let dropped = device.status(cpu).events_dropped;
            let seen = std::mem::replace(&mut sensor.dropped_seen[cpu as usize], dropped);
            if dropped > seen {
                let lost = dropped - seen;
                return Err(guest.fail(Failure::GuestDropped { cpu, lost, captured: guest.captured.len() }));
            }
            return Ok(device.rejection(published));
        }
        let status = device.status(published.cpu);
        let failure = Failure::SensorNoAck {
            cpu: published.cpu,
            seq: published.seq,
            waited: bound,
            detail: no_ack_detail(&status, false),
            console_tail: guest.console_tail(),
        };
        Err(guest.fail(failure))
    }

    /// The host's sensor emulator dies: the device's server connection,
    /// eventfds and mapping go away while QEMU and the guest run on. The
    /// guest keeps the memory and vectors QEMU holds, which nobody drives.
    pub fn disconnect_sensor(&mut self) {
        self.sensor = None;
    }
}

/// Why an acknowledgement did not come, from what the guest left in the
/// shared memory.
fn no_ack_detail(status: &CpuStatus, ring_full: bool) -> String {
    let consumed = if status.tail == status.head {
        "it took every published entry".to_owned()
    } else {
        format!("it took {} of {} published entries", status.tail, status.head)
    };
    let what = if ring_full { "the ring stayed full" } else { "the acknowledgement never came" };
    format!(
        "{what}: the guest's handler ran {} time(s), {consumed}, acknowledged up to seq {} and refused {}",
        status.interrupts, status.acked_seq, status.rejected
    )
}
