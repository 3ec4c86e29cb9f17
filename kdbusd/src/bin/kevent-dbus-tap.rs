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
//! `kevent-dbus-tap relay PORT`: relays host clients of a virtio-serial
//! port to the bus (kdbusd::relay).

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;

use kdbusd::mapping::{BUS_NAME, INTERFACE, OBJECT_PATH};
use kevent_wire::{read_frame, TapCommand, TapEvent, SYSTEM_BUS_SOCKET};
use nix::time::{clock_gettime, ClockId};
use zbus::blocking::{Connection, MessageIterator};
use zbus::message::Type as MessageType;
use zbus::Message;

/// Messages the monitor's connection may hold before the tap reads them:
/// past this the connection stops reading the bus (zbus applies
/// back-pressure; nothing is dropped).
const MONITOR_QUEUE: usize = 4096;

const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["monitor"] => monitor(),
        ["relay", port] => kdbusd::relay::serve(Path::new(port), Path::new(SYSTEM_BUS_SOCKET)).map_err(Into::into),
        _ => Err("usage: kevent-dbus-tap monitor | kevent-dbus-tap relay PORT".into()),
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

/// stdout, which frames go to whole, one writer at a time.
struct Out(Mutex<BufWriter<io::Stdout>>);

impl Out {
    fn send(&self, event: &TapEvent) -> io::Result<()> {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kevent_wire::write_frame(&mut *out, &event.encode())?;
        out.flush()
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
    let monitor = zbus::blocking::connection::Builder::system()
        .and_then(|b| b.max_queued(MONITOR_QUEUE).build())
        .map_err(context("connect the monitor to the system bus"))?;
    let monitor_name = monitor.unique_name().map(|n| n.to_string()).ok_or("the bus gave no unique name")?;
    // The stream exists before the call, so that nothing the bus sends
    // between its reply and the first read is missed.
    let messages = MessageIterator::from(&monitor);
    let become_monitor = monitor
        .call_method(
            Some(DBUS),
            DBUS_PATH,
            Some("org.freedesktop.DBus.Monitoring"),
            "BecomeMonitor",
            &(Vec::<&str>::new(), 0u32),
        )
        .map_err(context("BecomeMonitor"))?;
    let became = become_monitor.header().reply_serial();

    let out = Arc::new(Out(Mutex::new(BufWriter::new(io::stdout()))));
    let fences = Arc::new(Mutex::new(Fences { kdbusd: owner.clone(), ..Fences::default() }));
    out.send(&TapEvent::Ready { kdbusd: owner })?;
    let watcher = {
        let (out, fences) = (Arc::clone(&out), Arc::clone(&fences));
        let own = [client_name.clone(), monitor_name];
        thread::Builder::new().name("monitor".into()).spawn(move || watch(messages, became, &own, &out, &fences))?
    };
    commands(&client, &out, &fences)?;
    // stdin closed: the agent is done with the tap.
    drop(watcher);
    Ok(())
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
fn watch(
    messages: MessageIterator,
    became: Option<std::num::NonZeroU32>,
    own: &[String; 2],
    out: &Out,
    fences: &Mutex<Fences>,
) {
    let result = (|| -> Result<(), Error> {
        let mut monitoring = false;
        for message in messages {
            let message = message.map_err(context("read from the bus as its monitor"))?;
            let header = message.header();
            if !monitoring {
                // Everything before BecomeMonitor's reply was the monitor
                // connection's own business.
                monitoring = header.message_type() == MessageType::MethodReturn && header.reply_serial() == became;
                continue;
            }
            let sender = header.sender().map(|s| s.as_str()).unwrap_or("");
            let destination = header.destination().map(|d| d.as_str()).unwrap_or("");
            let mine = own.iter().any(|name| name == sender || name == destination);
            let mut fences = fences.lock().unwrap_or_else(|p| p.into_inner());
            if !mine {
                out.send(&TapEvent::Message { monotonic_ns: monotonic_ns(), bytes: message.data().bytes().to_vec() })?;
            }
            match header.message_type() {
                MessageType::MethodReturn | MessageType::Error if destination == own[0] => {
                    let token = header.reply_serial().and_then(|serial| fences.syncs.remove(&serial.get()));
                    if let Some(token) = token {
                        if header.message_type() == MessageType::Error {
                            let name = header.error_name().map(|n| n.to_string()).unwrap_or_default();
                            let text = message.body().deserialize::<String>().unwrap_or_default();
                            out.send(&TapEvent::FenceFailed { token, why: format!("{name}: {text}") })?;
                        } else {
                            out.send(&TapEvent::Fenced { token })?;
                        }
                    }
                }
                MessageType::Signal
                    if sender == DBUS && header.member().is_some_and(|m| m.as_str() == "NameOwnerChanged") =>
                {
                    if let Ok((name, _old, new)) = message.body().deserialize::<(String, String, String)>() {
                        if name == BUS_NAME && !new.is_empty() {
                            fences.kdbusd = new;
                        } else if name == fences.kdbusd && new.is_empty() {
                            // kdbusd's connection is gone: the bus releases
                            // its well-known name first, its unique name last.
                            fences.kdbusd.clear();
                            for token in std::mem::take(&mut fences.awaiting_gone) {
                                out.send(&TapEvent::Fenced { token })?;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Err("the bus closed the monitor's connection".into())
    })();
    if let Err(e) = result {
        eprintln!("kevent-dbus-tap: {e}");
        std::process::exit(1);
    }
}
