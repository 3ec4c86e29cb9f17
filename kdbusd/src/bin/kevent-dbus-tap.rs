//! kevent-dbus-tap: the bench's tap on the guest's system bus, so that the
//! agent links no D-Bus library.
//!
//! `kevent-dbus-tap monitor`: becomes a monitor of the bus
//! (`org.freedesktop.DBus.Monitoring.BecomeMonitor`, every message) and
//! writes each message it sees, as marshalled, to stdout in the frames of
//! `kevent_wire::TapEvent`, in the bus's order; on stdin it takes fence
//! commands (`kevent_wire::TapCommand`). Its own second connection, which
//! calls kdbusd's `Sync`, is left out of what it forwards.
//!
//! The monitor's connection is read straight off its socket by the thread
//! that forwards: each signal is on the latency path from the kernel to
//! the host, and a library connection hands every message from a reactor
//! thread to an executor thread to the reader, three wake-ups of a TCG
//! guest instead of one. A monitor only receives, so the client side of
//! the protocol it needs is small: EXTERNAL authentication, `Hello`,
//! `BecomeMonitor`, then whole messages.
//!
//! `kevent-dbus-tap relay PORT`: relays host clients of a virtio-serial
//! port to the bus (kdbusd::relay).
//!
//! `kevent-dbus-tap stall`: leaves behind a subscriber to every signal that
//! never reads one (a scenario's slow subscriber), and exits once it has
//! subscribed, saying so; the subscriber lives until the guest ends.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;

use kdbusd::mapping::{BUS_NAME, INTERFACE, OBJECT_PATH};
use kdbusd::message::{self, Kind, Value};
use kevent_wire::{read_frame, TapCommand, TapEvent, SYSTEM_BUS_SOCKET};
use nix::time::{clock_gettime, ClockId};
use zbus::blocking::Connection;
use zbus::Message;

const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
/// The specification's largest message: 128 MiB.
const MAX_MESSAGE: usize = 128 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["monitor"] => monitor(),
        ["relay", port] => kdbusd::relay::serve(Path::new(port), Path::new(SYSTEM_BUS_SOCKET)).map_err(Into::into),
        ["stall"] => stall(),
        [STALL_HOLDER] => hold_stalled(),
        _ => Err("usage: kevent-dbus-tap monitor | kevent-dbus-tap relay PORT | kevent-dbus-tap stall".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kevent-dbus-tap: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn context<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| format!("{what}: {e}").into()
}

/// What the monitor thread and the command thread share.
#[derive(Default)]
struct Fences {
    /// Serial of a `Sync` call in flight → its token.
    syncs: HashMap<u32, u64>,
    /// Tokens waiting for kdbusd's name to lose its owner.
    awaiting_gone: Vec<u64>,
    /// The unique name of kdbusd's connection, as the monitor last saw
    /// it own kdbusd's name; empty once that connection is gone.
    kdbusd: String,
}

/// stdout, which frames go to whole, one writer at a time. Not
/// `io::Stdout`: it is line-buffered and would split a flush of binary
/// frames at its last newline byte into two writes.
struct Out(Mutex<BufWriter<File>>);

impl Out {
    /// Writes `event` and everything before it.
    fn send(&self, event: &TapEvent) -> io::Result<()> {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kevent_wire::write_frame(&mut *out, &event.encode())?;
        out.flush()
    }

    /// Writes `event` into the buffer only (a frame is its encoding, and
    /// `write_frame` would flush it); [`Out::flush`] or the next
    /// [`Out::send`] writes it.
    fn buffer(&self, event: &TapEvent) -> io::Result<()> {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(&event.encode())
    }

    fn flush(&self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

fn monitor() -> Result<(), Error> {
    let client = zbus::blocking::connection::Builder::system()
        .and_then(|b| b.build())
        .map_err(context("connect to the system bus"))?;
    let client_name = client.unique_name().map(|n| n.to_string()).ok_or("the bus gave no unique name")?;
    let owner = name_owner(&client)?;
    let (mut messages, monitor_name) =
        BusSocket::connect(Path::new(SYSTEM_BUS_SOCKET)).map_err(context("connect the monitor"))?;
    // Every message after the reply is the bus's traffic, unread so far.
    messages.call_bus(
        "org.freedesktop.DBus.Monitoring",
        "BecomeMonitor",
        &[Value::Array(Vec::new()), Value::Uint(0)],
    )?;

    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned().map_err(context("duplicate stdout"))?);
    let out = Arc::new(Out(Mutex::new(BufWriter::with_capacity(64 << 10, stdout))));
    let fences = Arc::new(Mutex::new(Fences { kdbusd: owner.clone(), ..Fences::default() }));
    out.send(&TapEvent::Ready { kdbusd: owner })?;
    let watcher = {
        let (out, fences) = (Arc::clone(&out), Arc::clone(&fences));
        let own = [client_name.clone(), monitor_name];
        thread::Builder::new().name("monitor".into()).spawn(move || watch(messages, &own, &out, &fences))?
    };
    commands(&client, &out, &fences)?;
    // stdin closed: the agent is done with the tap.
    drop(watcher);
    Ok(())
}

/// A connection to the bus of the tap's own making, read whole message by
/// whole message: the monitor's, and the stalled subscriber's.
struct BusSocket {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_serial: u32,
}

impl BusSocket {
    /// Connects to the bus at `path`, authenticates as this process's user
    /// and says Hello; returns the socket and the connection's unique name.
    fn connect(path: &Path) -> Result<(BusSocket, String), Error> {
        let stream = UnixStream::connect(path).map_err(context(&format!("connect to {}", path.display())))?;
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

    /// Calls `member` of the bus itself and returns its reply's body; what
    /// comes before the reply is the connection's own business, and dropped.
    fn call_bus(&mut self, interface: &str, member: &str, body: &[Value]) -> Result<Vec<Value>, Error> {
        let serial = self.next_serial;
        self.next_serial += 1;
        let call = message::marshal_method_call(serial, DBUS, DBUS_PATH, interface, member, body)
            .ok_or_else(|| format!("{member}: the arguments do not marshal"))?;
        self.writer.write_all(&call).map_err(context(&format!("call {member}")))?;
        loop {
            let bytes = self.next()?.ok_or_else(|| format!("the bus closed the connection before {member}'s reply"))?;
            let reply = message::parse(&bytes).map_err(context("read the bus's reply"))?;
            if reply.reply_serial != Some(serial) {
                continue;
            }
            if reply.kind == Kind::Error {
                let error = reply.error_name.clone().unwrap_or_default();
                return Err(format!("{member}: {error}: {:?}", reply.body.first()).into());
            }
            return Ok(reply.body);
        }
    }

    /// Whether the next message is already read whole: taking it cannot block.
    fn next_is_buffered(&self) -> bool {
        let buffered = self.reader.buffer();
        let fixed = buffered.get(..16).and_then(|fixed| <&[u8; 16]>::try_from(fixed).ok());
        fixed.and_then(message::message_len).is_some_and(|len| len <= buffered.len())
    }

    /// The next whole message, `None` once the bus has closed the connection.
    fn next(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut fixed = [0u8; 16];
        match self.reader.read_exact(&mut fixed[..1]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other.map_err(context("read from the bus"))?,
        }
        self.reader.read_exact(&mut fixed[1..]).map_err(context("read from the bus"))?;
        let len = message::message_len(&fixed)
            .filter(|len| *len <= MAX_MESSAGE)
            .ok_or_else(|| format!("the bus sent a message header the tap cannot frame: {fixed:02x?}"))?;
        let mut bytes = vec![0u8; len];
        bytes[..16].copy_from_slice(&fixed);
        self.reader.read_exact(&mut bytes[16..]).map_err(context("read from the bus"))?;
        Ok(Some(bytes))
    }
}

/// The hidden mode of `stall`'s subscriber.
const STALL_HOLDER: &str = "stall-holder";
/// How long `stall` waits for its subscriber to subscribe.
const STALL_BOUND: std::time::Duration = std::time::Duration::from_secs(20);

/// Starts the stalled subscriber as a process of its own, waits (bounded)
/// until it has subscribed, prints what it said and exits: the subscriber
/// outlives the scenario's step. Its stdout and stderr are pipes to this
/// process alone, so that whoever reads this process's output sees it end;
/// if it fails, what it said on stderr is in the error.
fn stall() -> Result<(), Error> {
    let mut holder = std::process::Command::new(std::env::current_exe()?)
        .arg(STALL_HOLDER)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(context("start the subscriber"))?;
    let stdout = holder.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
    });
    let why = match rx.recv_timeout(STALL_BOUND) {
        Ok(Ok(line)) if !line.is_empty() => {
            print!("{line}");
            return Ok(());
        }
        Ok(Ok(_)) => "it ended before it subscribed".to_owned(),
        Ok(Err(e)) => format!("its stdout: {e}"),
        Err(_) => format!("it did not subscribe within {STALL_BOUND:?}"),
    };
    let _ = holder.kill();
    let status = holder.wait()?;
    let mut said = String::new();
    if let Some(mut stderr) = holder.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    Err(format!("the subscriber failed: {why} ({status}); it said: {}", said.trim()).into())
}

/// The stalled subscriber: asks the bus for every signal, says so, and
/// never reads again: dbus-daemon queues what it sends it.
fn hold_stalled() -> Result<(), Error> {
    let (mut socket, name) = BusSocket::connect(Path::new(SYSTEM_BUS_SOCKET))?;
    socket.call_bus(DBUS, "AddMatch", &[Value::Str("type='signal'".into())])?;
    println!("{name} subscribed to every signal and reads none from now on");
    io::stdout().flush()?;
    // The connection stays open, unread, as long as the process lives.
    let _unread = socket;
    loop {
        thread::park();
    }
}

/// The unique name that owns kdbusd's name, empty if none does.
fn name_owner(client: &Connection) -> Result<String, Error> {
    match client.call_method(Some(DBUS), DBUS_PATH, Some(DBUS), "GetNameOwner", &BUS_NAME) {
        Ok(reply) => Ok(reply.body().deserialize::<String>()?),
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner" => {
            Ok(String::new())
        }
        Err(e) => Err(format!("GetNameOwner {BUS_NAME}: {e}").into()),
    }
}

/// Reads fence commands from stdin until it closes.
fn commands(client: &Connection, out: &Out, fences: &Mutex<Fences>) -> Result<(), Error> {
    let mut stdin = io::stdin().lock();
    while let Some((kind, body)) = read_frame(&mut stdin).map_err(context("read a command"))? {
        match TapCommand::decode(kind, &body).map_err(context("decode a command"))? {
            TapCommand::Sync { token } => {
                let call = Message::method_call(OBJECT_PATH, "Sync")?
                    .destination(BUS_NAME)?
                    .interface(INTERFACE)?
                    .build(&())?;
                let serial = call.primary_header().serial_num().get();
                fences.lock().unwrap_or_else(|p| p.into_inner()).syncs.insert(serial, token);
                // The reply is not read here: the monitor sees it, after
                // every signal kdbusd sent before it.
                if let Err(e) = client.send(&call) {
                    fences.lock().unwrap_or_else(|p| p.into_inner()).syncs.remove(&serial);
                    out.send(&TapEvent::FenceFailed { token, why: format!("call {INTERFACE}.Sync: {e}") })?;
                }
            }
            TapCommand::AwaitKdbusdGone { token } => {
                let mut fences = fences.lock().unwrap_or_else(|p| p.into_inner());
                if fences.kdbusd.is_empty() {
                    out.send(&TapEvent::Fenced { token })?;
                } else {
                    fences.awaiting_gone.push(token);
                }
            }
        }
    }
    Ok(())
}

/// Forwards every message the monitor sees (but the tap's own) and answers
/// fences as the messages that settle them go by.
fn watch(mut messages: BusSocket, own: &[String; 2], out: &Out, fences: &Mutex<Fences>) {
    let result = (|| -> Result<(), Error> {
        while let Some(bytes) = messages.next()? {
            let monotonic_ns = monotonic_ns();
            // A message the tap cannot read still goes to the host, which
            // reports it; it settles no fence.
            // The header routes; the few bodies the tap reads are read below.
            let Ok(header) = message::parse_header(&bytes) else {
                out.buffer(&TapEvent::Message { monotonic_ns, bytes })?;
                flush_unless_more(&messages, out)?;
                continue;
            };
            let sender = header.sender.as_deref().unwrap_or("");
            let destination = header.destination.as_deref().unwrap_or("");
            let mine = own.iter().any(|name| name == sender || name == destination);
            let owner_changed =
                header.kind == Kind::Signal && sender == DBUS && header.member.as_deref() == Some("NameOwnerChanged");
            let fence_failed = header.kind == Kind::Error && destination == own[0];
            let body = if owner_changed || fence_failed {
                message::parse(&bytes).map(|m| m.body).unwrap_or_default()
            } else {
                Vec::new()
            };
            let text = |at: usize| match body.get(at) {
                Some(Value::Str(s)) => s.as_str(),
                _ => "",
            };
            let mut fences = fences.lock().unwrap_or_else(|p| p.into_inner());
            if !mine {
                out.buffer(&TapEvent::Message { monotonic_ns, bytes })?;
            }
            match header.kind {
                Kind::MethodReturn | Kind::Error if destination == own[0] => {
                    let token = header.reply_serial.and_then(|serial| fences.syncs.remove(&serial));
                    if let Some(token) = token {
                        if fence_failed {
                            let name = header.error_name.as_deref().unwrap_or("");
                            out.send(&TapEvent::FenceFailed { token, why: format!("{name}: {}", text(0)) })?;
                        } else {
                            out.send(&TapEvent::Fenced { token })?;
                        }
                    }
                }
                Kind::Signal if owner_changed => {
                    let (name, new) = (text(0), text(2));
                    if name == BUS_NAME && !new.is_empty() {
                        fences.kdbusd = new.to_owned();
                    } else if name == fences.kdbusd && new.is_empty() {
                        // kdbusd's connection is gone: the bus releases
                        // its well-known name first, its unique name last.
                        fences.kdbusd.clear();
                        for token in std::mem::take(&mut fences.awaiting_gone) {
                            out.send(&TapEvent::Fenced { token })?;
                        }
                    }
                }
                _ => {}
            }
            drop(fences);
            flush_unless_more(&messages, out)?;
        }
        Err("the bus closed the monitor's connection".into())
    })();
    if let Err(e) = result {
        // What was read before the failure still reaches the agent.
        let _ = out.flush();
        eprintln!("kevent-dbus-tap: {e}");
        std::process::exit(1);
    }
}

/// Writes what is buffered unless the next message is already read: a
/// burst of signals reaches the agent in a few writes, a lone one at once.
fn flush_unless_more(messages: &BusSocket, out: &Out) -> io::Result<()> {
    if messages.next_is_buffered() {
        return Ok(());
    }
    out.flush()
}
