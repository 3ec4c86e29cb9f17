//! kdbusd's own netlink sockets, as the seeds' daemon had them: the
//! kmessage unit (all five groups) and NETLINK_KOBJECT_UEVENT (group 1).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{bind, recvmsg, setsockopt, sockopt, MsgFlags, NetlinkAddr};

use kevent_wire::{KMESSAGE_ALL_GROUPS, KMESSAGE_UNIT_PARAM};

use crate::mapping::{Source, NETLINK_KOBJECT_UEVENT};

/// A default receive buffer holds about 92 uevents; slack for bursts while
/// the bus is slow to take the signals.
const RECEIVE_BUFFER: usize = 32 << 20;

/// What one receive gave.
#[derive(Debug)]
pub enum Received<'a> {
    /// A datagram and where it came from.
    Datagram(Source, &'a [u8]),
    /// The socket overflowed (ENOBUFS): datagrams were lost before this.
    Overrun {
        /// The socket's protocol.
        protocol: u32,
    },
}

/// One bound netlink socket.
pub struct Listener {
    protocol: u32,
    fd: OwnedFd,
}

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
    /// A socket of `protocol` bound to `groups`, non-blocking.
    pub fn open(protocol: u32, groups: u32) -> io::Result<Listener> {
        let fd = netlink_socket(protocol)?;
        // FORCE needs CAP_NET_ADMIN; an ordinary user gets what rmem_max allows.
        if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER)?;
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        Ok(Listener { protocol, fd })
    }

    /// The kmessage listener of the unit the module registered.
    pub fn kmessage() -> io::Result<Listener> {
        let text = std::fs::read_to_string(KMESSAGE_UNIT_PARAM).map_err(|e| {
            io::Error::new(e.kind(), format!("read {KMESSAGE_UNIT_PARAM} (is kmessage.ko loaded?): {e}"))
        })?;
        let unit = text.trim().parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{KMESSAGE_UNIT_PARAM} holds no unit: {text:?}"))
        })?;
        Listener::open(unit, KMESSAGE_ALL_GROUPS)
    }

    /// The uevent listener.
    pub fn uevent() -> io::Result<Listener> {
        Listener::open(NETLINK_KOBJECT_UEVENT, 1)
    }

    /// The socket's descriptor, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Receives one datagram into `buffer` without waiting; `None` once
    /// the socket is empty.
    pub fn receive<'b>(&self, buffer: &'b mut [u8]) -> io::Result<Option<Received<'b>>> {
        loop {
            let mut iov = [IoSliceMut::new(buffer)];
            let (n, flags, sender) =
                match recvmsg::<NetlinkAddr>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
                    Ok(msg) => (msg.bytes, msg.flags, msg.address),
                    Err(Errno::EAGAIN) => return Ok(None),
                    Err(Errno::EINTR) => continue,
                    Err(Errno::ENOBUFS) => return Ok(Some(Received::Overrun { protocol: self.protocol })),
                    Err(e) => return Err(e.into()),
                };
            if flags.contains(MsgFlags::MSG_TRUNC) {
                return Err(io::Error::other(format!("a datagram of protocol {} exceeded {n} bytes", self.protocol)));
            }
            let groups = sender.map_or(0, |s| s.groups());
            let source = if self.protocol == NETLINK_KOBJECT_UEVENT {
                Source::Uevent
            } else {
                Source::Kmessage { unit: self.protocol, groups }
            };
            return Ok(Some(Received::Datagram(source, &buffer[..n])));
        }
    }
}
