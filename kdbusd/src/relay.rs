//! The guest end of `cargo xtask run --dbus-socket`: a virtio-serial port
//! whose host end is a UNIX socket that D-Bus clients on the host connect
//! to, relayed byte for byte to the guest's system bus, one bus connection
//! per host client.
//!
//! The bus authenticates the relay (its socket's credentials: uid 0), not
//! the host client, whose `AUTH EXTERNAL` names its own uid, which the bus
//! would refuse. The relay rewrites that uid to 0 during the authentication
//! phase and passes everything else as it is: every host client that can
//! open the socket is root on the guest's bus (docs/dbus.md, "The bus from
//! the host").

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How often the relay looks for a host client while none is connected:
/// virtio-serial reports a disconnected host as a hang-up that poll
/// returns at once, so there is nothing to block on.
const IDLE_TICK: Duration = Duration::from_millis(20);

/// The uid the relay's connections have on the bus, as `AUTH EXTERNAL`
/// spells it: "0" in hex of its ASCII.
const RELAY_UID_HEX: &str = "30";

/// Rewrites a client's side of the D-Bus authentication so that `EXTERNAL`
/// claims the relay's uid; passes everything from `BEGIN` on untouched.
#[derive(Debug, Default)]
pub struct AuthRewriter {
    /// `BEGIN` has gone through: the rest is the message stream.
    authenticated: bool,
    /// The start of a line not yet complete.
    pending: Vec<u8>,
    /// The client chose EXTERNAL without an initial response: its next
    /// `DATA` line is the uid.
    external_data_next: bool,
    /// The NUL byte that opens the stream has been passed.
    nul_seen: bool,
}

impl AuthRewriter {
    /// The bytes to send to the bus for `input` from the client.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        if self.authenticated {
            return input.to_vec();
        }
        let mut out = Vec::with_capacity(input.len() + 8);
        let mut input = input;
        if !self.nul_seen {
            if let Some((&first, rest)) = input.split_first() {
                out.push(first);
                input = rest;
                self.nul_seen = true;
            }
        }
        self.pending.extend_from_slice(input);
        while !self.authenticated {
            let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") else { break };
            let line: Vec<u8> = self.pending.drain(..end + 2).collect();
            out.extend_from_slice(&self.rewrite(&line[..end]));
            out.extend_from_slice(b"\r\n");
        }
        if self.authenticated {
            out.append(&mut self.pending);
        }
        out
    }

    fn rewrite(&mut self, line: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(line);
        let words: Vec<&str> = text.split(' ').collect();
        match words.as_slice() {
            ["AUTH", "EXTERNAL", _] => {
                self.external_data_next = false;
                return format!("AUTH EXTERNAL {RELAY_UID_HEX}").into_bytes();
            }
            ["AUTH", "EXTERNAL"] => self.external_data_next = true,
            ["AUTH", ..] => self.external_data_next = false,
            ["DATA", ..] if self.external_data_next => {
                self.external_data_next = false;
                return format!("DATA {RELAY_UID_HEX}").into_bytes();
            }
            ["BEGIN"] => self.authenticated = true,
            _ => {}
        }
        line.to_vec()
    }
}

/// Relays host clients of `port` to the bus at `bus_socket`, one after
/// the other, until the port goes away.
pub fn serve(port: &Path, bus_socket: &Path) -> io::Result<()> {
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(port)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", port.display())))?;
    loop {
        wait_for_host(&port)?;
        let bus = UnixStream::connect(bus_socket)
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {}: {e}", bus_socket.display())))?;
        bus.set_nonblocking(true)?;
        session(&port, bus)?;
    }
}

fn revents(fd: &PollFd<'_>) -> PollFlags {
    fd.revents().unwrap_or(PollFlags::empty())
}

fn wait_for_host(port: &File) -> io::Result<()> {
    loop {
        let mut fds = [PollFd::new(port.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO)?;
        if !revents(&fds[0]).contains(PollFlags::POLLHUP) {
            return Ok(());
        }
        std::thread::sleep(IDLE_TICK);
    }
}

/// One host client, from its connection to its hang-up. If the bus ends
/// the connection first (a refused authentication), what the client still
/// sends is read and dropped: the guest cannot hang up on the host.
fn session(port: &File, mut bus: UnixStream) -> io::Result<()> {
    let mut rewriter = AuthRewriter::default();
    let mut buffer = vec![0u8; 64 << 10];
    let mut bus_open = true;
    loop {
        let mut fds = vec![PollFd::new(port.as_fd(), PollFlags::POLLIN)];
        if bus_open {
            fds.push(PollFd::new(bus.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let (port_events, bus_events) = (revents(&fds[0]), fds.get(1).map(revents).unwrap_or(PollFlags::empty()));
        if port_events.contains(PollFlags::POLLIN) {
            match (&*port).read(&mut buffer) {
                // Nothing to read and the host is gone: the client hung up.
                Ok(0) => return Ok(()),
                Ok(n) if bus_open => {
                    if write_all(&bus, &rewriter.feed(&buffer[..n]), None).is_err() {
                        bus_open = false;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        } else if port_events.contains(PollFlags::POLLHUP) {
            return Ok(());
        }
        if bus_events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match bus.read(&mut buffer) {
                Ok(0) => bus_open = false,
                Ok(n) => {
                    if !write_all(port, &buffer[..n], Some(port))? {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => bus_open = false,
            }
        }
    }
}

/// Writes all of `data` to a non-blocking `to`, waiting for room; false if
/// `port` (when given) reports the host gone first.
fn write_all(mut to: impl Write + AsFd, data: &[u8], port: Option<&File>) -> io::Result<bool> {
    let mut data = data;
    while !data.is_empty() {
        match to.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(to.as_fd(), PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::NONE)?;
                if port.is_some() && revents(&fds[0]).contains(PollFlags::POLLHUP) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_claims_the_relays_uid_and_the_rest_passes() {
        let mut r = AuthRewriter::default();
        let out = r.feed(b"\0AUTH EXTERNAL 3635353334\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01\0\x01");
        assert_eq!(out, b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01\0\x01");
        assert_eq!(r.feed(b"AUTH EXTERNAL 31\r\n"), b"AUTH EXTERNAL 31\r\n", "after BEGIN, bytes are messages");
    }

    #[test]
    fn lines_split_across_reads_and_the_data_form_are_rewritten() {
        let mut r = AuthRewriter::default();
        let mut out = r.feed(b"\0");
        out.extend(r.feed(b"AUTH\r\nAUTH EXTER"));
        out.extend(r.feed(b"NAL\r\nDATA 31303030\r"));
        out.extend(r.feed(b"\nBEG"));
        out.extend(r.feed(b"IN\r\n"));
        assert_eq!(out, b"\0AUTH\r\nAUTH EXTERNAL\r\nDATA 30\r\nBEGIN\r\n");
        let mut r = AuthRewriter::default();
        let out = r.feed(b"\0AUTH DBUS_COOKIE_SHA1 31303030\r\nDATA abcd\r\n");
        assert_eq!(out, b"\0AUTH DBUS_COOKIE_SHA1 31303030\r\nDATA abcd\r\n", "other mechanisms pass");
    }
}
