//! Netlink capture: every datagram of the kmessage unit and of
//! NETLINK_KOBJECT_UEVENT, forwarded to the host as it arrives.
//!
//! One thread polls both sockets and a wake-up pipe. Replies to the host's
//! requests go through the same thread, after it has drained both sockets:
//! so every datagram the kernel queued before a request finished reaches
//! the host before that request's reply. The events module's trigger returns
//! only once its datagrams are queued, so an injection's events always come
//! before its reply.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use kevent_wire::{AgentStage, DatagramRef, GuestMessage, Outcome};
use nix::errno::Errno;
use nix::libc;
use nix::poll::PollFd;
use nix::sys::socket::{bind, recvmsg, setsockopt, sockopt, MsgFlags, NetlinkAddr, SockProtocol};

use crate::error::AgentError;
use crate::sys;
use crate::HostChannel;

const STAGE: AgentStage = AgentStage::Capture;

/// Where the kmessage module says which unit it registered.
const KMESSAGE_UNIT_PARAM: &str = "/sys/module/kmessage/parameters/unit";
const UEVENT_GROUPS: u32 = 1;
/// A default receive buffer holds about 92 uevents; a burst of injections
/// emits thousands. The capture thread drains continuously; this is slack.
const RECEIVE_BUFFER: usize = 32 << 20;

/// A netlink socket bound to groups of one protocol.
struct Listener {
    protocol: u32,
    fd: OwnedFd,
    /// A Cell so that draining borrows the listener shared, as the pollfds
    /// that borrow its descriptor for the thread's whole life do.
    overruns: Cell<u32>,
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
    fn open(protocol: u32, groups: u32) -> io::Result<Listener> {
        let fd = netlink_socket(protocol)?;
        setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER)?;
        // Port id 0: the kernel assigns one.
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        Ok(Listener { protocol, fd, overruns: Cell::new(0) })
    }

    /// Receives every queued datagram; an overrun is reported, not hidden.
    fn drain(&self, channel: &HostChannel, buffer: &mut [u8]) -> io::Result<()> {
        loop {
            let mut iov = [IoSliceMut::new(buffer)];
            let (n, flags, sender) =
                match recvmsg::<NetlinkAddr>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
                    Ok(msg) => (msg.bytes, msg.flags, msg.address),
                    Err(Errno::EAGAIN) => return Ok(()),
                    Err(Errno::EINTR) => continue,
                    Err(Errno::ENOBUFS) => {
                        let occurrences = self.overruns.get() + 1;
                        self.overruns.set(occurrences);
                        channel.send(&GuestMessage::Overrun { protocol: self.protocol, occurrences })?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
            if flags.contains(MsgFlags::MSG_TRUNC) {
                return Err(io::Error::other(format!("a datagram of protocol {} exceeded {n} bytes", self.protocol)));
            }
            // The group mask is what names a kmessage's type on the host: a
            // datagram without its sender cannot be told apart.
            let Some(sender) = sender else {
                return Err(io::Error::other(format!(
                    "a datagram of protocol {} came without its sender",
                    self.protocol
                )));
            };
            // Encoded straight from the receive buffer: one allocation per datagram.
            let frame = DatagramRef {
                protocol: self.protocol,
                groups: sender.groups(),
                portid: sender.pid(),
                monotonic_ns: sys::monotonic_ns(),
                bytes: &buffer[..n],
            }
            .encode();
            channel.send_frame(&frame)?;
        }
    }
}

/// Handle for the command side: replies are sent through the capture thread.
pub struct Capture {
    replies: Sender<(u32, Outcome)>,
    /// Write end of the capture thread's wake-up pipe.
    wake: File,
}

/// Bound capture sockets: the kernel queues every message for them from
/// here on, before anything reads them.
pub struct Sockets(Vec<Listener>);

impl Sockets {
    /// The kmessage listener (only if that module is loaded) and the uevent one.
    pub fn open() -> Result<Sockets, AgentError> {
        let mut listeners = Vec::new();
        if let Ok(unit) = std::fs::read_to_string(KMESSAGE_UNIT_PARAM) {
            let unit: u32 = unit
                .trim()
                .parse()
                .map_err(|_| AgentError::new(STAGE, format!("{KMESSAGE_UNIT_PARAM} holds no unit: {unit:?}")))?;
            listeners.push(
                Listener::open(unit, kevent_wire::KMESSAGE_ALL_GROUPS)
                    .map_err(|e| AgentError::io(STAGE, format_args!("open a socket on kmessage unit {unit}"), &e))?,
            );
        }
        listeners.push(
            Listener::open(SockProtocol::NetlinkKObjectUEvent as u32, UEVENT_GROUPS)
                .map_err(|e| AgentError::io(STAGE, "open the uevent socket", &e))?,
        );
        Ok(Sockets(listeners))
    }
}

impl Capture {
    /// Starts the capture thread on `sockets`.
    pub fn start(channel: HostChannel, sockets: Sockets) -> Result<Capture, AgentError> {
        let listeners = sockets.0;
        let (read_end, write_end) = sys::pipe().map_err(|e| AgentError::io(STAGE, "make the wake-up pipe", &e))?;
        let (read_end, write_end) = (File::from(read_end), File::from(write_end));
        let (replies, pending) = mpsc::channel();
        thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                if let Err(e) = capture_loop(listeners, read_end, pending, &channel) {
                    crate::fail(Some(&channel), &AgentError::io(STAGE, "netlink capture", &e));
                }
            })
            .map_err(|e| AgentError::io(STAGE, "start the capture thread", &e))?;
        Ok(Capture { replies, wake: write_end })
    }

    /// Sends `outcome` as the reply to request `id`, after every datagram
    /// already queued in the capture sockets.
    pub fn reply(&self, id: u32, outcome: Outcome) -> io::Result<()> {
        self.replies.send((id, outcome)).map_err(|_| io::Error::other("the capture thread has stopped"))?;
        sys::wake(&self.wake)
    }
}

fn capture_loop(
    listeners: Vec<Listener>,
    wake: File,
    pending: Receiver<(u32, Outcome)>,
    channel: &HostChannel,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 << 10];
    // Built once: poll fills in `revents` on every wake-up.
    let mut fds: Vec<PollFd<'_>> =
        listeners.iter().map(|l| l.fd.as_fd()).chain([wake.as_fd()]).map(sys::readable).collect();
    loop {
        sys::poll(&mut fds)?;
        for (listener, _) in listeners.iter().zip(&fds).filter(|(_, p)| sys::ready(p)) {
            listener.drain(channel, &mut buffer)?;
        }
        if fds.last().is_some_and(sys::ready) {
            sys::drain_pipe(&wake)?;
            while let Ok((id, outcome)) = pending.try_recv() {
                for listener in &listeners {
                    listener.drain(channel, &mut buffer)?;
                }
                channel.send(&GuestMessage::Reply { id, outcome })?;
            }
        }
    }
}
