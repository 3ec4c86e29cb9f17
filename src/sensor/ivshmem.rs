//! The ivshmem server side of QEMU's `ivshmem-doorbell` (QEMU's
//! docs/specs/ivshmem-spec.rst): shared memory and eventfds handed to QEMU
//! over a UNIX socket with SCM_RIGHTS.
//!
//! QEMU reads the whole setup synchronously while it realises the device,
//! so the socket listens before QEMU starts and the handshake is sent as
//! soon as QEMU connects. Every message is one little-endian i64, with at
//! most one file descriptor.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The protocol version QEMU 7.2 accepts.
const PROTOCOL_VERSION: i64 = 0;
/// The message that carries the shared memory.
const SHARED_MEMORY: i64 = -1;

/// A Linux eventfd: one side writes 1, the other polls and reads.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn from_owned(fd: OwnedFd) -> EventFd {
        EventFd(fd)
    }

    pub fn try_clone(&self) -> io::Result<EventFd> {
        Ok(EventFd(self.0.try_clone()?))
    }

    /// Adds one to the counter: the reader (QEMU, for a guest vector) wakes.
    pub fn notify(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: the buffer is 8 valid bytes, as eventfd requires.
        let n = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits up to `bound` for a notification; true if there is one.
    pub fn poll(&self, bound: Duration) -> io::Result<bool> {
        let mut pollfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = bound.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pollfd is one valid element for the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
        match ready {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    /// Reads and clears the counter; 0 if nothing was pending. QEMU makes
    /// the descriptors it receives non-blocking, and that flag is shared
    /// with the host's copies, so a read must not rely on blocking.
    pub fn drain(&self) -> io::Result<u64> {
        let mut value = [0u8; 8];
        // SAFETY: the buffer is 8 writable bytes, as eventfd requires.
        let n = unsafe { libc::read(self.0.as_raw_fd(), value.as_mut_ptr().cast(), value.len()) };
        if n == 8 {
            return Ok(u64::from_ne_bytes(value));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        // A blocking eventfd with nothing pending would block: poll first.
        Err(e)
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An anonymous shared-memory file of `size` bytes (QEMU maps it as BAR2).
pub fn shared_memory(name: &str, size: usize) -> io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: name is a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    Ok(file)
}

/// Sends one protocol message: `value`, and `fd` as SCM_RIGHTS if given.
pub fn send_message(stream: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is a valid empty message; the pointers set below
    // stay valid for the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        assert!(space <= std::mem::size_of_val(&control));
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes, enough for one
        // header carrying one descriptor, so CMSG_FIRSTHDR is non-null and
        // CMSG_DATA points inside the buffer.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: msg and everything it points at are valid for the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        8 => Ok(()),
        n => Err(io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of 8 bytes"))),
    }
}

/// Receives one protocol message, as QEMU does: the value and its
/// descriptor. Only the tests' stand-in guest needs this side.
#[cfg(test)]
pub fn recv_message(stream: &UnixStream) -> io::Result<(i64, Option<OwnedFd>)> {
    let mut bytes = [0u8; 8];
    let mut iov = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: bytes.len() };
    let mut control = [0u64; 4];
    // SAFETY: as in send_message; recvmsg fills what the pointers allow.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at valid buffers for the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Every descriptor received is owned (and closed) whatever happens next.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with well-formed headers, each
    // SCM_RIGHTS one carrying (cmsg_len - CMSG_LEN(0)) / 4 descriptors.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were truncated"));
    }
    if n != 8 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("received {n} of 8 bytes")));
    }
    if fds.len() > 1 {
        return Err(io::Error::other(format!("{} descriptors in one message", fds.len())));
    }
    Ok((i64::from_le_bytes(bytes), fds.pop()))
}

/// Descriptors of one ivshmem setup, as the server hands them out.
pub struct Setup<'a> {
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
