//! Netlink listeners of the kernel events layer, as the seeds' daemon had
//! them: the kmessage unit (all five groups) and NETLINK_KOBJECT_UEVENT
//! (group 1). kdbusd listens on its own; the guest agent, which captures
//! the same traffic for the host, uses these too (feature `netlink`).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{bind, recvmsg, setsockopt, sockopt, MsgFlags, NetlinkAddr};

use kevent_wire::{KMESSAGE_ALL_GROUPS, KMESSAGE_UNIT_PARAM};

use crate::mapping::NETLINK_KOBJECT_UEVENT;

/// A default receive buffer holds about 92 uevents; a burst of injections
/// emits thousands, and a listener is not always quick to drain.
const RECEIVE_BUFFER: usize = 32 << 20;

/// What one receive gave.
#[derive(Debug)]
pub enum Received<'a> {
    /// A datagram, and its sender's address if the kernel gave one: its
    /// `nl_groups` is what names a kmessage's type.
    Datagram {
        /// The sender's address.
        sender: Option<NetlinkAddr>,
        /// The datagram.
        bytes: &'a [u8],
    },
    /// The socket overflowed (ENOBUFS): datagrams were lost before this.
    Overrun,
}

/// One bound netlink socket.
pub struct Listener {
    protocol: u32,
    fd: OwnedFd,
}

/// socket(2) for a netlink protocol given by number. nix's `socket` takes its
/// `SockProtocol` enum, which names only the kernel's own units: the kmessage
/// module registers a unit of its choosing (31 unless told otherwise).
fn netlink_socket(protocol: u32) -> io::Result<OwnedFd> {
    let protocol = libc::c_int::try_from(protocol).map_err(|_| io::Error::from(Errno::EINVAL))?;
    let kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket(2) takes no pointers. A descriptor it returns is new and
    // owned by nothing else, so the OwnedFd made of it is its only owner.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_NETLINK, kind, protocol);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
    };
    fd.ok_or_else(io::Error::last_os_error)
}

impl Listener {
    /// A socket of `protocol` bound to `groups`, non-blocking, with a port
    /// id the kernel assigns.
    pub fn open(protocol: u32, groups: u32) -> io::Result<Listener> {
        let fd = netlink_socket(protocol)?;
        // FORCE needs CAP_NET_ADMIN; an ordinary user gets what rmem_max allows.
        if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER)?;
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        Ok(Listener { protocol, fd })
    }

    /// The unit the kmessage module registered, from its parameter.
    pub fn kmessage_unit() -> io::Result<u32> {
        let text = std::fs::read_to_string(KMESSAGE_UNIT_PARAM).map_err(|e| {
            io::Error::new(e.kind(), format!("read {KMESSAGE_UNIT_PARAM} (is kmessage.ko loaded?): {e}"))
        })?;
        text.trim().parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{KMESSAGE_UNIT_PARAM} holds no unit: {text:?}"))
        })
    }

    /// A listener of every group of the kmessage unit.
    pub fn kmessage() -> io::Result<Listener> {
        Listener::open(Listener::kmessage_unit()?, KMESSAGE_ALL_GROUPS)
    }

    /// The uevent listener.
    pub fn uevent() -> io::Result<Listener> {
        Listener::open(NETLINK_KOBJECT_UEVENT, 1)
    }

    /// The socket's protocol (unit).
    pub fn protocol(&self) -> u32 {
        self.protocol
    }

    /// The socket's descriptor, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Receives one datagram into `buffer` without waiting; `None` once
    /// the socket is empty. A datagram longer than `buffer` is an error.
    pub fn receive<'b>(&self, buffer: &'b mut [u8]) -> io::Result<Option<Received<'b>>> {
        loop {
            let mut iov = [IoSliceMut::new(buffer)];
            let (n, flags, sender) =
                match recvmsg::<NetlinkAddr>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
                    Ok(msg) => (msg.bytes, msg.flags, msg.address),
                    Err(Errno::EAGAIN) => return Ok(None),
                    Err(Errno::EINTR) => continue,
                    Err(Errno::ENOBUFS) => return Ok(Some(Received::Overrun)),
                    Err(e) => return Err(e.into()),
                };
            if flags.contains(MsgFlags::MSG_TRUNC) {
                return Err(io::Error::other(format!("a datagram of protocol {} exceeded {n} bytes", self.protocol)));
            }
            return Ok(Some(Received::Datagram { sender, bytes: &buffer[..n] }));
        }
    }
}
