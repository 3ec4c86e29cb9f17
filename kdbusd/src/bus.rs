//! A connection to the bus of this crate's own making, read whole message by
//! whole message: the guest agent's monitor and its `Sync` caller, and the
//! tap's stalled subscriber and its questions to the bus (`held`,
//! `backlog`). A library connection hands every message from
//! a reactor thread to an executor thread to the reader, three wake-ups of
//! a TCG guest instead of one, on the path of every signal; what these
//! need of the protocol is small: EXTERNAL authentication, `Hello`, method
//! calls, then whole messages.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use crate::message::{self, Kind, Value};

/// The bus itself.
pub const DBUS: &str = "org.freedesktop.DBus";
/// The bus's object.
pub const DBUS_PATH: &str = "/org/freedesktop/DBus";
/// The specification's largest message: 128 MiB.
const MAX_MESSAGE: usize = 128 << 20;

/// Why a connection failed, in words.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `what` failed, and why: an error's context.
pub fn context<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| format!("{what}: {e}").into()
}

/// One connection to the bus.
pub struct BusSocket {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_serial: u32,
}

impl BusSocket {
    /// Connects to the bus at `path`, authenticates as this process's user
    /// and says Hello; returns the socket and the connection's unique name.
    /// Every read waits `bound` at most, from the handshake on.
    pub fn connect(path: &Path, bound: Duration) -> Result<(BusSocket, String), Error> {
        let stream = UnixStream::connect(path).map_err(context(&format!("connect to {}", path.display())))?;
        stream.set_read_timeout(Some(bound))?;
        let mut writer = stream.try_clone()?;
        let uid = nix::unistd::getuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        writer.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes()).map_err(context("authenticate"))?;
        let mut reader = BufReader::with_capacity(64 << 10, stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).map_err(context("authenticate"))?;
        if !answer.starts_with("OK ") {
            return Err(format!("the bus refused EXTERNAL authentication: {:?}", answer.trim_end()).into());
        }
        writer.write_all(b"BEGIN\r\n").map_err(context("authenticate"))?;
        let mut socket = BusSocket { reader, writer, next_serial: 1 };
        let name = match socket.call_bus(DBUS, "Hello", &[])?.first() {
            Some(Value::Str(name)) if !name.is_empty() => name.clone(),
            _ => return Err("the bus gave no unique name".into()),
        };
        Ok((socket, name))
    }

    /// Sends a method call to `destination` without waiting for its reply;
    /// returns its serial, which the reply names.
    pub fn send_call(
        &mut self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        body: &[Value],
    ) -> Result<u32, Error> {
        let serial = self.next_serial;
        self.next_serial += 1;
        let call = message::marshal_method_call(serial, destination, path, interface, member, body)
            .ok_or_else(|| format!("{member}: the arguments do not marshal"))?;
        self.writer.write_all(&call).map_err(context(&format!("call {member}")))?;
        Ok(serial)
    }

    /// Calls `member` of the bus itself and returns its reply's body; what
    /// comes before the reply is the connection's own business, and dropped.
    pub fn call_bus(&mut self, interface: &str, member: &str, body: &[Value]) -> Result<Vec<Value>, Error> {
        let serial = self.send_call(DBUS, DBUS_PATH, interface, member, body)?;
        loop {
            let bytes =
                self.next_message()?.ok_or_else(|| format!("the bus closed the connection before {member}'s reply"))?;
            let reply = message::parse(&bytes).map_err(context("read the bus's reply"))?;
            if reply.reply_serial != Some(serial) {
                continue;
            }
            if reply.kind == Kind::Error {
                return Err(format!("{member}: {}", reply.error_text()).into());
            }
            return Ok(reply.body);
        }
    }

    /// Whether a whole message is read and not taken yet: poll on the
    /// socket would not see it, and [`BusSocket::next_message`] returns it
    /// without waiting. Part of one is not enough: reading the rest would
    /// wait for the bus to write it.
    pub fn message_buffered(&self) -> bool {
        let buffered = self.reader.buffer();
        let fixed = buffered.get(..16).and_then(|fixed| <&[u8; 16]>::try_from(fixed).ok());
        fixed.and_then(message::message_len).is_some_and(|len| len <= buffered.len())
    }

    /// The next whole message, `None` once the bus has closed the connection.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut fixed = [0u8; 16];
        match self.reader.read_exact(&mut fixed[..1]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other.map_err(|e| self.read_failed(e))?,
        }
        self.reader.read_exact(&mut fixed[1..]).map_err(|e| self.read_failed(e))?;
        let len = message::message_len(&fixed)
            .filter(|len| *len <= MAX_MESSAGE)
            .ok_or_else(|| format!("the bus sent a message header that cannot be framed: {fixed:02x?}"))?;
        let mut bytes = vec![0u8; len];
        bytes[..16].copy_from_slice(&fixed);
        self.reader.read_exact(&mut bytes[16..]).map_err(|e| self.read_failed(e))?;
        Ok(Some(bytes))
    }

    /// A read's failure in words; the read bound's end (which the kernel
    /// reports as EAGAIN) says so.
    fn read_failed(&self, e: io::Error) -> Error {
        let bound = self.reader.get_ref().read_timeout().ok().flatten();
        match (e.kind(), bound) {
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(bound)) => {
                format!("read from the bus: nothing, or only part of a message, came within {bound:?}").into()
            }
            _ => context("read from the bus")(e),
        }
    }

    /// Bounds every read from now on: a message the bus began and did not
    /// finish fails its reader instead of holding it forever.
    pub fn set_read_timeout(&self, bound: Duration) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(bound))
    }

    /// Reads and drops whatever the bus has sent, without waiting: the
    /// replies to calls whose answers are read elsewhere (by a monitor).
    /// Message boundaries are lost: the connection's incoming messages are
    /// not read again.
    pub fn discard_pending(&mut self) -> io::Result<()> {
        let buffered = self.reader.buffer().len();
        self.reader.consume(buffered);
        let mut sink = [0u8; 4096];
        loop {
            match recv(self.reader.get_ref().as_raw_fd(), &mut sink, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The socket, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.reader.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_of_a_message_is_not_a_buffered_message() {
        let (ours, bus) = UnixStream::pair().unwrap();
        let mut socket = BusSocket {
            reader: BufReader::with_capacity(64 << 10, ours.try_clone().unwrap()),
            writer: ours,
            next_serial: 1,
        };
        let signal =
            |serial| message::marshal_signal(serial, "/org/kernel/x", "org.kernel.Power", "high", &[]).unwrap();
        let (first, second) = (signal(1), signal(2));
        let mut bus = bus;
        // The bus wrote the first message and the start of the second: one
        // read takes both into the buffer.
        bus.write_all(&first).unwrap();
        bus.write_all(&second[..20]).unwrap();
        assert!(!socket.message_buffered(), "nothing is read yet");
        assert_eq!(socket.next_message().unwrap(), Some(first));
        assert!(!socket.reader.buffer().is_empty(), "the second's start is buffered");
        assert!(!socket.message_buffered(), "but not the whole of it");
        bus.write_all(&second[20..]).unwrap();
        bus.write_all(&signal(3)).unwrap();
        assert_eq!(socket.next_message().unwrap(), Some(second));
        assert!(socket.message_buffered(), "the third came whole with the second's rest");
        drop(bus);
        assert_eq!(socket.next_message().unwrap(), Some(signal(3)));
        assert_eq!(socket.next_message().unwrap(), None, "the bus closed the connection");

        // A message the bus began and did not finish fails its reader at
        // the read bound, saying so.
        let (ours, mut bus) = UnixStream::pair().unwrap();
        let mut socket = BusSocket { reader: BufReader::new(ours.try_clone().unwrap()), writer: ours, next_serial: 1 };
        socket.set_read_timeout(Duration::from_millis(50)).unwrap();
        bus.write_all(&signal(4)[..20]).unwrap();
        let error = socket.next_message().unwrap_err().to_string();
        assert!(error.contains("nothing, or only part of a message, came within"), "{error}");
    }
}
