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
pub use message::{Command, Datagram, DatagramRef, ExecResult, GuestMessage, Hello, HostMessage, ModuleLoad, Outcome};

/// Version of this protocol; bump it whenever a message's layout changes.
pub const PROTOCOL_VERSION: u16 = 2;

/// Name of the virtio-serial port the agent talks on (`virtserialport,name=`).
pub const AGENT_PORT_NAME: &str = "org.kevent-bench.agent";

/// Line the agent prints on the console as its first act: the host reads it
/// as "the kernel has booted and started /init".
pub const AGENT_STARTED_MARKER: &str = "kevent-agent: started";

/// Most bytes a read step returns: the reply must fit in a frame.
pub const MAX_READ_BYTES: usize = 1 << 20;
/// Most bytes kept of a program's stdout, and of its stderr.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Programs running in the background at once, and the bytes kept of each
/// one's stdout and stderr: all their results travel in one frame.
pub const MAX_BACKGROUND_PROGRAMS: usize = 8;
pub const MAX_BACKGROUND_OUTPUT_BYTES: usize = 128 << 10;

/// Kernel command-line key that carries one module parameter to the agent,
/// which loads the modules: `kevent_bench.param=MODULE.KEY=VALUE`.
pub const MODULE_PARAM_KEY: &str = "kevent_bench.param=";

/// The kernel command-line word that gives `module` the parameter `key=value`.
pub fn module_param_arg(module: &str, key: &str, value: &str) -> String {
    format!("{MODULE_PARAM_KEY}{module}.{key}={value}")
}
