//! kdbusd: every datagram of the kmessage unit and of the uevent socket,
//! re-emitted as a D-Bus signal on the system bus (docs/dbus.md).
//!
//! Two threads: one owns the netlink sockets and is the only one to emit
//! signals; the other serves the bus (`Sync`, introspection, `Peer`). A
//! `Sync` call is answered only after the netlink thread has drained its
//! sockets and sent every signal of what they held, so the method return
//! follows those signals on the bus: a monitor that sees the return has
//! seen them all.
//!
//! On stdout it prints one line once it owns its name and serves (the
//! agent waits for it); everything else it says goes to stderr. It exits
//! non-zero when the bus or a socket fails; a datagram it cannot parse is
//! never a reason: it becomes a `Malformed` signal and a line on stderr.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use kdbusd::mapping::{self, Body, Signal, Source, BUS_NAME, INTERFACE, NETLINK_KOBJECT_UEVENT, OBJECT_PATH};
use kdbusd::netlink::{Listener, Received};
use kevent_wire::KDBUSD_SYNC_BOUND;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::ser::{Serialize, SerializeMap, Serializer};
use zbus::blocking::{Connection, MessageIterator};
use zbus::message::{Flags, Type as MessageType};
use zbus::zvariant::{Signature, Type};
use zbus::MatchRule;

/// The counters `Sync` returns: kmessages, uevents, malformed datagrams,
/// socket overruns, since kdbusd started.
type Counters = (u64, u64, u64, u64);

const INTROSPECTION: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.kernel.Events">
    <!-- Replies once every datagram kdbusd's sockets held has been sent as a signal.
         Returns kmessages, uevents, malformed datagrams and socket overruns so far. -->
    <method name="Sync">
      <arg name="kmessages" type="t" direction="out"/>
      <arg name="uevents" type="t" direction="out"/>
      <arg name="malformed" type="t" direction="out"/>
      <arg name="overruns" type="t" direction="out"/>
    </method>
    <signal name="Malformed">
      <arg name="why" type="s"/>
      <arg name="protocol" type="u"/>
      <arg name="groups" type="u"/>
      <arg name="datagram" type="ay"/>
    </signal>
    <signal name="Overrun">
      <arg name="protocol" type="u"/>
      <arg name="occurrences" type="u"/>
    </signal>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="machine_uuid" type="s" direction="out"/></method>
  </interface>
</node>
"#;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kdbusd: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn context<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| format!("{what}: {e}").into()
}

fn run() -> Result<(), Error> {
    // The sockets come first: from here on the kernel queues every event
    // for kdbusd, before the bus knows it.
    let listeners = vec![
        Listener::kmessage().map_err(context("open the kmessage socket"))?,
        Listener::uevent().map_err(context("open the uevent socket"))?,
    ];
    let conn = zbus::blocking::connection::Builder::system()
        .and_then(|b| b.build())
        .map_err(context("connect to the system bus"))?;
    // Listening for calls before the name is ours, so that no call to the
    // name can come before the iterator.
    let calls = MessageIterator::for_match_rule(
        MatchRule::builder().msg_type(MessageType::MethodCall).build(),
        &conn,
        Some(256),
    )
    .map_err(context("listen for method calls"))?;
    conn.request_name(BUS_NAME).map_err(context(&format!("own {BUS_NAME}")))?;

    let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let (syncs, pending) = mpsc::channel();
    let emitter = conn.clone();
    let netlink = thread::Builder::new().name("netlink".into()).spawn(move || {
        if let Err(e) = netlink_loop(&listeners, &emitter, File::from(wake_read), &pending) {
            eprintln!("kdbusd: {e}");
            std::process::exit(1);
        }
    })?;
    let unique = conn.unique_name().map(|n| n.to_string()).unwrap_or_default();
    println!("kdbusd: ready, {BUS_NAME} is {unique}");
    io::stdout().flush()?;
    let wake = File::from(wake_write);
    serve(&conn, calls, &syncs, &wake)?;
    drop(netlink);
    Err("the system bus closed the connection".into())
}

/// Answers method calls until the bus connection ends.
fn serve(
    conn: &Connection,
    calls: MessageIterator,
    syncs: &Sender<Sender<Counters>>,
    wake: &File,
) -> Result<(), Error> {
    for call in calls {
        let call = call.map_err(context("read from the system bus"))?;
        let header = call.header();
        let interface = header.interface().map(|i| i.as_str().to_owned()).unwrap_or_default();
        let member = header.member().map(|m| m.as_str().to_owned()).unwrap_or_default();
        let path = header.path().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let no_reply = call.primary_header().flags().contains(Flags::NoReplyExpected);
        let reply = match (interface.as_str(), member.as_str()) {
            // A netlink thread that did not drain in time is the caller's
            // error to hear, with why; kdbusd serves on.
            ("org.kernel.Events" | "", "Sync") if path == OBJECT_PATH => match sync(syncs, wake) {
                Ok(counters) => conn.reply(&header, &counters),
                Err(e) => conn.reply_dbus_error(&header, zbus::fdo::Error::Failed(e.to_string())),
            },
            ("org.freedesktop.DBus.Introspectable" | "", "Introspect") => conn.reply(&header, &introspect(&path)),
            ("org.freedesktop.DBus.Peer" | "", "Ping") => conn.reply(&header, &()),
            ("org.freedesktop.DBus.Peer" | "", "GetMachineId") => match std::fs::read_to_string("/etc/machine-id") {
                Ok(id) => conn.reply(&header, &id.trim()),
                Err(e) => conn.reply_dbus_error(&header, zbus::fdo::Error::FileNotFound(e.to_string())),
            },
            _ => conn.reply_dbus_error(
                &header,
                zbus::fdo::Error::UnknownMethod(format!("{path} has no method {interface}.{member}")),
            ),
        };
        if !no_reply {
            reply.map_err(context("reply on the system bus"))?;
        }
    }
    Ok(())
}

/// The netlink thread's answer to one `Sync`.
fn sync(syncs: &Sender<Sender<Counters>>, wake: &File) -> Result<Counters, Error> {
    let (done, answer) = mpsc::channel();
    syncs.send(done).map_err(|_| "the netlink thread has stopped")?;
    wake_up(wake)?;
    answer
        .recv_timeout(KDBUSD_SYNC_BOUND)
        .map_err(|e| format!("Sync: the netlink thread did not drain its sockets: {e}").into())
}

fn wake_up(mut pipe: &File) -> io::Result<()> {
    match pipe.write(&[1]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other.map(drop),
    }
}

fn introspect(path: &str) -> String {
    if path == OBJECT_PATH {
        return INTROSPECTION.to_owned();
    }
    // The nodes above kdbusd's object name their one child.
    let child = OBJECT_PATH.strip_prefix(path).and_then(|rest| rest.trim_start_matches('/').split('/').next());
    let node = match child {
        Some(child) if !child.is_empty() && (path == "/" || OBJECT_PATH[path.len()..].starts_with('/')) => {
            format!("  <node name=\"{child}\"/>\n")
        }
        _ => String::new(),
    };
    format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n{node}</node>\n"
    )
}

/// The netlink side: every datagram becomes a signal, in the order each
/// socket delivered them; `Sync` requests are answered after a full drain.
fn netlink_loop(
    listeners: &[Listener],
    conn: &Connection,
    wake: File,
    pending: &Receiver<Sender<Counters>>,
) -> Result<(), Error> {
    let mut emitter = Emitter { conn, counters: (0, 0, 0, 0), overruns: HashMap::new() };
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(Listener::fd)
            .chain([wake.as_fd()])
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll the netlink sockets: {e}").into()),
        }
        let ready: Vec<bool> = fds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
        for (listener, _) in listeners.iter().zip(&ready).filter(|(_, r)| **r) {
            emitter.drain(listener, &mut buffer)?;
        }
        if ready.last().copied().unwrap_or(false) {
            drain_pipe(&wake)?;
            while let Ok(done) = pending.try_recv() {
                for listener in listeners {
                    emitter.drain(listener, &mut buffer)?;
                }
                // The caller may have given up; the counters are not lost.
                let _ = done.send(emitter.counters);
            }
        }
    }
}

fn drain_pipe(mut pipe: &File) -> io::Result<()> {
    let mut bytes = [0u8; 64];
    loop {
        match pipe.read(&mut bytes) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

struct Emitter<'c> {
    conn: &'c Connection,
    counters: Counters,
    overruns: HashMap<u32, u32>,
}

impl Emitter<'_> {
    fn drain(&mut self, listener: &Listener, buffer: &mut [u8]) -> Result<(), Error> {
        loop {
            match listener.receive(buffer).map_err(context("receive from a netlink socket"))? {
                None => return Ok(()),
                Some(Received::Datagram { sender, bytes }) => {
                    let source = if listener.protocol() == NETLINK_KOBJECT_UEVENT {
                        Source::Uevent
                    } else {
                        // Without the sender's groups the type is unknown:
                        // the mapping says so in a Malformed signal.
                        Source::Kmessage { unit: listener.protocol(), groups: sender.map_or(0, |s| s.groups()) }
                    };
                    let signal = mapping::map(source, bytes);
                    self.emit(&signal)?;
                }
                Some(Received::Overrun) => {
                    let protocol = listener.protocol();
                    self.counters.3 += 1;
                    let occurrences = self.overruns.entry(protocol).or_default();
                    *occurrences += 1;
                    eprintln!("kdbusd: the socket of netlink protocol {protocol} overflowed: datagrams were lost");
                    self.conn
                        .emit_signal(None::<()>, OBJECT_PATH, INTERFACE, "Overrun", &(protocol, *occurrences))
                        .map_err(context("emit Overrun"))?;
                }
            }
        }
    }

    fn emit(&mut self, signal: &Signal) -> Result<(), Error> {
        let Signal { path, interface, member, body } = signal;
        let sent = match body {
            Body::Kmessage { aux, fields, datagram } => {
                self.counters.0 += 1;
                self.conn.emit_signal(
                    None::<()>,
                    path.as_str(),
                    *interface,
                    member.as_str(),
                    &(aux, Ordered(fields), Bytes(datagram)),
                )
            }
            Body::Uevent { env, datagram } => {
                self.counters.1 += 1;
                self.conn.emit_signal(
                    None::<()>,
                    path.as_str(),
                    *interface,
                    member.as_str(),
                    &(Ordered(env), Bytes(datagram)),
                )
            }
            Body::Malformed { why, protocol, groups, datagram } => {
                self.counters.2 += 1;
                eprintln!(
                    "kdbusd: a datagram of {} bytes on netlink protocol {protocol} (groups {groups:#x}) is malformed ({why}); \
                     sent as {INTERFACE}.Malformed",
                    datagram.len()
                );
                self.conn.emit_signal(
                    None::<()>,
                    path.as_str(),
                    *interface,
                    member.as_str(),
                    &(why, protocol, groups, Bytes(datagram)),
                )
            }
        };
        sent.map_err(|e| format!("emit {interface}.{member} from {path}: {e}").into())
    }
}

/// `a{ss}` in the order given: the kernel's order of a uevent's environment
/// and of a kmessage's aux lines, which a sorted map would lose.
struct Ordered<'a>(&'a [(String, String)]);

impl Type for Ordered<'_> {
    const SIGNATURE: &'static Signature = <HashMap<String, String> as Type>::SIGNATURE;
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// `ay` written as one block: serde's default for a byte slice is a
/// sequence, which zvariant marshals a byte at a time, each with its own
/// alignment and signature checks, on the path of every signal.
struct Bytes<'a>(&'a [u8]);

impl Type for Bytes<'_> {
    const SIGNATURE: &'static Signature = <Vec<u8> as Type>::SIGNATURE;
}

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::serialized::Context;
    use zbus::zvariant::{to_bytes, BE, LE};

    #[test]
    fn bytes_marshal_exactly_as_a_byte_sequence_does() {
        let fields = vec![("Cpu".to_owned(), "0".to_owned())];
        // Odd lengths and an empty one, either byte order: the array's
        // alignment and the padding after it must match too.
        for ctxt in [Context::new_dbus(LE, 0), Context::new_dbus(BE, 0)] {
            for datagram in [&b""[..], b"x", b"From: /a\nSignal: b\n\0", &[0xff; 1001]] {
                let fast = to_bytes(ctxt, &("aux", Ordered(&fields), Bytes(datagram), 7u32)).unwrap();
                let generic = to_bytes(ctxt, &("aux", Ordered(&fields), datagram.to_vec(), 7u32)).unwrap();
                assert_eq!(fast.bytes(), generic.bytes(), "datagram of {} bytes", datagram.len());
            }
        }
    }
}
