//! The ivshmem server side of QEMU's `ivshmem-doorbell` (QEMU's
//! docs/specs/ivshmem-spec.rst): shared memory and eventfds handed to QEMU
//! over a UNIX socket with SCM_RIGHTS.
//!
//! QEMU reads the whole setup synchronously while it realises the device,
//! so the socket listens before QEMU starts and the handshake is sent as
//! soon as QEMU connects. Every message is one little-endian i64, with at
//! most one file descriptor.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EfdFlags;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The protocol version QEMU 7.2 accepts.
const PROTOCOL_VERSION: i64 = 0;
/// The message that carries the shared memory.
const SHARED_MEMORY: i64 = -1;

/// A Linux eventfd: one side writes 1, the other polls and reads.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A fresh eventfd, counter 0, close-on-exec.
    pub fn new() -> io::Result<EventFd> {
        let fd = nix::sys::eventfd::EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?;
        Ok(EventFd(fd.into()))
    }

    /// Wraps a descriptor that must be an eventfd; the tests' stand-in guest
    /// wraps the vectors it receives.
    pub fn from_owned(fd: OwnedFd) -> EventFd {
        EventFd(fd)
    }

    /// Another descriptor of the same eventfd (shared counter), for another thread.
    pub fn try_clone(&self) -> io::Result<EventFd> {
        Ok(EventFd(self.0.try_clone()?))
    }

    /// Adds one to the counter: the reader (QEMU, for a guest vector) wakes.
    pub fn notify(&self) -> io::Result<()> {
        match nix::unistd::write(&self.0, &1u64.to_ne_bytes())? {
            8 => Ok(()),
            n => Err(io::Error::new(io::ErrorKind::WriteZero, format!("wrote {n} of 8 bytes to an eventfd"))),
        }
    }

    /// Waits up to `bound` for a notification; true if there is one.
    pub fn poll(&self, bound: Duration) -> io::Result<bool> {
        let timeout = PollTimeout::try_from(bound).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)], timeout) {
            Ok(ready) => Ok(ready > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and clears the counter; 0 if nothing was pending. QEMU makes
    /// the descriptors it receives non-blocking, and that flag is shared
    /// with the host's copies, so a read must not rely on blocking.
    pub fn drain(&self) -> io::Result<u64> {
        let mut value = [0u8; 8];
        match nix::unistd::read(&self.0, &mut value) {
            Ok(8) => Ok(u64::from_ne_bytes(value)),
            Ok(n) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("read {n} of 8 bytes from an eventfd"))),
            Err(Errno::EAGAIN) => Ok(0),
            // A blocking eventfd with nothing pending would block: poll first.
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An anonymous shared-memory file of `size` bytes (QEMU maps it as BAR2).
pub fn shared_memory(name: &str, size: usize) -> io::Result<File> {
    let file = File::from(memfd_create(name, MFdFlags::MFD_CLOEXEC)?);
    file.set_len(size as u64)?;
    Ok(file)
}

/// Sends one protocol message: `value`, and `fd` as SCM_RIGHTS if given.
pub fn send_message(stream: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    let fds = fd.map(|fd| [fd.as_raw_fd()]);
    let rights: Vec<ControlMessage<'_>> = fds.iter().map(|fds| ControlMessage::ScmRights(fds)).collect();
    let sent = sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&bytes)], &rights, MsgFlags::MSG_NOSIGNAL, None)?;
    match sent {
        8 => Ok(()),
        n => Err(io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of 8 bytes"))),
    }
}

/// Receives one protocol message, as QEMU does: the value and its
/// descriptor. Only the tests' stand-in guest needs this side.
#[cfg(test)]
pub fn recv_message(stream: &UnixStream) -> io::Result<(i64, Option<OwnedFd>)> {
    use std::os::fd::FromRawFd;

    use nix::sys::socket::{recvmsg, ControlMessageOwned};

    let mut bytes = [0u8; 8];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (received, fds) = {
        let mut iov = [io::IoSliceMut::new(&mut bytes)];
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel installed these descriptors in this
                // process for this message; nothing else owns them.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::other("descriptors were truncated"));
        }
        (msg.bytes, fds)
    };
    if received != 8 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("received {received} of 8 bytes")));
    }
    let mut fds = fds;
    if fds.len() > 1 {
        return Err(io::Error::other(format!("{} descriptors in one message", fds.len())));
    }
    Ok((i64::from_le_bytes(bytes), fds.pop()))
}

/// Descriptors of one ivshmem setup, as the server hands them out.
pub struct Setup<'a> {
    /// The region's memfd, sent with message -1; QEMU maps it as BAR2.
    pub shared_memory: BorrowedFd<'a>,
    /// The host's own vectors: the guest rings these.
    pub host_vectors: Vec<BorrowedFd<'a>>,
    /// The guest's vectors: writing to one raises that MSI-X vector.
    pub guest_vectors: Vec<BorrowedFd<'a>>,
}

/// The whole server → QEMU handshake: version, the client's id, the shared
/// memory, the host peer's vectors (so the guest can ring the host), then
/// the client's own vectors.
pub fn handshake(stream: &UnixStream, host_peer: u16, guest_peer: u16, setup: &Setup<'_>) -> io::Result<()> {
    send_message(stream, PROTOCOL_VERSION, None)?;
    send_message(stream, i64::from(guest_peer), None)?;
    send_message(stream, SHARED_MEMORY, Some(setup.shared_memory))?;
    for fd in &setup.host_vectors {
        send_message(stream, i64::from(host_peer), Some(*fd))?;
    }
    for fd in &setup.guest_vectors {
        send_message(stream, i64::from(guest_peer), Some(*fd))?;
    }
    Ok(())
}
