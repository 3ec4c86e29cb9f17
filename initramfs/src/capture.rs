//! Netlink capture: every datagram of the kmessage unit and of
//! NETLINK_KOBJECT_UEVENT, forwarded to the host as it arrives.
//!
//! One thread polls both sockets and a wake-up pipe. Replies to the host's
//! requests go through the same thread, after it has drained both sockets:
//! so every datagram the kernel queued before a request finished reaches
//! the host before that request's reply. The events module's trigger returns
//! only once its datagrams are queued, so an injection's events always come
//! before its reply.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use kevent_wire::{DatagramRef, GuestMessage, Outcome};

use crate::sys;
use crate::HostChannel;

/// Where the kmessage module says which unit it registered.
const KMESSAGE_UNIT_PARAM: &str = "/sys/module/kmessage/parameters/unit";
const UEVENT_GROUPS: u32 = 1;
/// A default receive buffer holds about 92 uevents; a burst of injections
/// emits thousands. The capture thread drains continuously; this is slack.
const RECEIVE_BUFFER: libc::c_int = 32 << 20;

/// A netlink socket bound to groups of one protocol.
struct Listener {
    protocol: u32,
    fd: OwnedFd,
    overruns: u32,
}

impl Listener {
    fn open(protocol: u32, groups: u32) -> io::Result<Listener> {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, protocol as i32)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = RECEIVE_BUFFER;
        // SAFETY: the option value is a valid c_int of the given length.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_nl is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Listener { protocol, fd, overruns: 0 })
    }

    /// Receives every queued datagram; an overrun is reported, not hidden.
    fn drain(&mut self, channel: &HostChannel, buffer: &mut [u8]) -> io::Result<()> {
        loop {
            // SAFETY: sockaddr_nl is plain old data; all-zero is valid.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
            // SAFETY: msghdr is plain old data; all-zero is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut from as *mut libc::sockaddr_nl).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            // SAFETY: msg points at a valid iovec over `buffer` and a valid
            // sockaddr_nl, all of which outlive the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        self.overruns += 1;
                        let overrun = GuestMessage::Overrun { protocol: self.protocol, occurrences: self.overruns };
                        channel.send(&overrun)?;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            if msg.msg_flags & libc::MSG_TRUNC != 0 {
                return Err(io::Error::other(format!("a datagram of protocol {} exceeded {n} bytes", self.protocol)));
            }
            // Encoded straight from the receive buffer: one allocation per datagram.
            let frame = DatagramRef {
                protocol: self.protocol,
                groups: from.nl_groups,
                portid: from.nl_pid,
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
    pub fn open() -> Result<Sockets, String> {
        let mut listeners = Vec::new();
        if let Ok(unit) = std::fs::read_to_string(KMESSAGE_UNIT_PARAM) {
            let unit: u32 = unit.trim().parse().map_err(|_| format!("{KMESSAGE_UNIT_PARAM}: {unit:?}"))?;
            listeners.push(
                Listener::open(unit, kevent_wire::KMESSAGE_ALL_GROUPS)
                    .map_err(|e| format!("kmessage unit {unit}: {e}"))?,
            );
        }
        listeners.push(
            Listener::open(libc::NETLINK_KOBJECT_UEVENT as u32, UEVENT_GROUPS)
                .map_err(|e| format!("uevent socket: {e}"))?,
        );
        Ok(Sockets(listeners))
    }
}

impl Capture {
    /// Starts the capture thread on `sockets`.
    pub fn start(channel: HostChannel, sockets: Sockets) -> Result<Capture, String> {
        let listeners = sockets.0;
        let (read_end, write_end) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        let (read_end, write_end) = (File::from(read_end), File::from(write_end));
        let (replies, pending) = mpsc::channel();
        thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                if let Err(e) = capture_loop(listeners, read_end, pending, &channel) {
                    crate::fail(Some(&channel), &format!("netlink capture: {e}"));
                }
            })
            .map_err(|e| format!("start the capture thread: {e}"))?;
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
    mut listeners: Vec<Listener>,
    wake: File,
    pending: Receiver<(u32, Outcome)>,
    channel: &HostChannel,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 << 10];
    // Built once: poll fills in `revents` on every wake-up.
    let mut fds: Vec<libc::pollfd> =
        listeners.iter().map(|l| l.fd.as_raw_fd()).chain([wake.as_raw_fd()]).map(sys::readable).collect();
    loop {
        sys::poll(&mut fds)?;
        for (listener, _) in listeners.iter_mut().zip(&fds).filter(|(_, p)| p.revents != 0) {
            listener.drain(channel, &mut buffer)?;
        }
        if fds.last().is_some_and(|p| p.revents != 0) {
            sys::drain_pipe(&wake)?;
            while let Ok((id, outcome)) = pending.try_recv() {
                for listener in &mut listeners {
                    listener.drain(channel, &mut buffer)?;
                }
                channel.send(&GuestMessage::Reply { id, outcome })?;
            }
        }
    }
}
