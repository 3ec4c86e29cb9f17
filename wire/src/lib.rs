//! The protocol between the kevent-bench host and its guest agent.
//!
//! Both ends speak it over one virtio-serial port. A frame is a little-endian
//! `u32` length, then that many bytes: a one-byte message kind and its body.
//! Bodies are fixed sequences of fields (integers little-endian, strings and
//! byte strings prefixed with a `u32` length), decoded strictly: a short body,
//! trailing bytes, an unknown kind or bad UTF-8 is a [`WireError`] that says
//! which field of which message was wrong, never a panic.
//!
//! The agent's first frame is always [`GuestMessage::Hello`], whose first
//! field is [`PROTOCOL_VERSION`]; the host refuses any other version.
//!
//! This crate is plain data and encoding, with no I/O beyond `Read` and
//! `Write` and no dependency beyond `thiserror`: it builds for the host and
//! for the static agent alike.

mod codec;
mod message;

pub use codec::{read_frame, write_frame, Decoder, Encoder, WireError, MAX_FRAME_LEN};
pub use message::{
    AgentStage, Command, Datagram, DatagramRef, DbusMessage, ExecResult, GuestMessage, Hello, HostMessage, ModuleLoad,
    Outcome, ServiceFailure,
};

/// Version of this protocol; bump it whenever a message's layout changes.
pub const PROTOCOL_VERSION: u16 = 5;

/// Name of the virtio-serial port the agent talks on (`virtserialport,name=`).
pub const AGENT_PORT_NAME: &str = "org.kevent-bench.agent";

/// Line the agent prints on the console as its first act: the host reads it
/// as "the kernel has booted and started /init".
pub const AGENT_STARTED_MARKER: &str = "kevent-agent: started";

/// The file in the initramfs that lists the modules the agent loads, one
/// file name of [`MODULE_DIR`] a line, in load order: xtask writes it.
pub const MODULE_LIST_PATH: &str = "/etc/kevent-bench/modules";
/// Where the initramfs holds the modules the list names.
pub const MODULE_DIR: &str = "/lib/modules";

/// The kmessage types by number, as `kmod/include/kmessage.h` defines
/// `KMSG_*`: type `t` reaches the listeners that bind the 2004 group mask
/// `1 << t`, and a datagram's `groups` is that mask.
pub const KMESSAGE_TYPES: [&str; 5] = ["general", "storage", "power", "fs", "hotplug"];
/// The group mask that hears every kmessage type.
pub const KMESSAGE_ALL_GROUPS: u32 = (1 << KMESSAGE_TYPES.len()) - 1;
/// Where the kmessage module says which netlink unit it registered: the
/// agent's and kdbusd's listeners bind that unit.
pub const KMESSAGE_UNIT_PARAM: &str = "/sys/module/kmessage/parameters/unit";

/// The kmessage type a datagram's group mask names, if it names exactly one.
pub fn kmessage_type(groups: u32) -> Option<&'static str> {
    if groups.count_ones() != 1 {
        return None;
    }
    KMESSAGE_TYPES.get(groups.trailing_zeros() as usize).copied()
}

/// The kernel command-line word that has the agent start the guest's D-Bus
/// side (dbus-daemon, kdbusd, the monitor) before it greets.
pub const DBUS_ARG: &str = "kevent_bench.dbus=1";
/// The kernel command-line word that has the agent relay the host's bus
/// port ([`DBUS_PORT_NAME`]) to the guest's system bus.
pub const DBUS_RELAY_ARG: &str = "kevent_bench.dbus_relay=1";
/// Name of the virtio-serial port bridged to the guest's system bus
/// (`cargo xtask run --dbus-socket`).
pub const DBUS_PORT_NAME: &str = "org.kevent-bench.dbus";
/// Where the guest's system bus listens, and the address its clients use.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";
/// The guest's system bus address, as `DBUS_SYSTEM_BUS_ADDRESS`.
pub const SYSTEM_BUS_ADDRESS: &str = "unix:path=/run/dbus/system_bus_socket";
/// The bench's configuration of the guest's system bus.
pub const DBUS_CONFIG_PATH: &str = "/etc/kevent-bench/dbus/system.conf";
/// Debian's dbus-daemon, at the path it has on the host.
pub const DBUS_DAEMON_PATH: &str = "/usr/bin/dbus-daemon";
/// kdbusd in the initramfs.
pub const KDBUSD_PATH: &str = "/sbin/kdbusd";
/// The bench's helpers on the bus (the host relay, the stalled subscriber) in the initramfs.
pub const DBUS_TAP_PATH: &str = "/sbin/kevent-dbus-tap";
/// How long kdbusd's `Sync` waits for its netlink thread before it answers
/// with an error that says so.
pub const KDBUSD_SYNC_BOUND: std::time::Duration = std::time::Duration::from_secs(25);
/// How long the agent waits for a fence through the bus: longer than
/// [`KDBUSD_SYNC_BOUND`], so that a stuck kdbusd's own error, which names
/// what is stuck, reaches the host rather than the agent's bare timeout;
/// shorter than the host's bound on a command (60 s).
pub const BUS_FENCE_BOUND: std::time::Duration = std::time::Duration::from_secs(30);
/// Where the agent mounts tracefs when the guest kernel has it.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Most bytes a read step returns: the reply must fit in a frame.
pub const MAX_READ_BYTES: usize = 1 << 20;
/// Room of each read(2) the agent makes for [`Command::ReadChunk`]: a
/// reply shorter than `max - READ_CHUNK_BYTES` ended where the file did (or
/// where a read would block), not at `max`. tracefs's `trace_pipe` formats
/// up to 8 KiB per read and keeps what did not fit in the open file, which
/// a chunk then closes: every read has room for a whole one.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// Most bytes kept of a program's stdout, and of its stderr.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Programs running in the background at once: all their results travel in
/// one frame.
pub const MAX_BACKGROUND_PROGRAMS: usize = 8;
/// Most bytes kept of a background program's stdout, and of its stderr.
pub const MAX_BACKGROUND_OUTPUT_BYTES: usize = 128 << 10;

/// Kernel command-line key that carries one module parameter to the agent,
/// which loads the modules: `kevent_bench.param=MODULE.KEY=VALUE`.
pub const MODULE_PARAM_KEY: &str = "kevent_bench.param=";

/// The kernel command-line word that gives `module` the parameter `key=value`.
pub fn module_param_arg(module: &str, key: &str, value: &str) -> String {
    format!("{MODULE_PARAM_KEY}{module}.{key}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kmessage_mask_names_its_type_only_when_it_has_one_known_bit() {
        assert_eq!(KMESSAGE_ALL_GROUPS, 0x1f);
        assert_eq!(kmessage_type(1), Some("general"));
        assert_eq!(kmessage_type(1 << 2), Some("power"));
        assert_eq!(kmessage_type(1 << 4), Some("hotplug"));
        assert_eq!(kmessage_type(1 << 5), None);
        assert_eq!(kmessage_type(0b11), None);
        assert_eq!(kmessage_type(0), None);
    }
}
