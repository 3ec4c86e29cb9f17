//! kdbusd, the daemon the kernel events layer of 2004 was made for: it
//! listens on the kmessage unit and the uevent socket and re-emits every
//! datagram as a D-Bus signal on the system bus (docs/dbus.md).
//!
//! The library is the mapping ([`mapping`]), the message reader
//! ([`message`]), pure, total and fuzzed, and the tap's backlog line
//! ([`backlog`]); with feature `netlink`, the
//! sockets kdbusd, the tap and the guest agent share: the netlink
//! listeners ([`netlink`]) and a raw bus connection ([`bus`]). The daemons
//! (`kdbusd` and `kevent-dbus-tap`) are this crate's binaries.

pub mod backlog;
#[cfg(feature = "netlink")]
pub mod bus;
pub mod mapping;
pub mod message;
#[cfg(feature = "netlink")]
pub mod netlink;
#[cfg(feature = "daemons")]
pub mod relay;
