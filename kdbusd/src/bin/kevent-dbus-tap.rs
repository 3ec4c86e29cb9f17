//! kevent-dbus-tap: the bench's helpers on the guest's bus that are
//! processes of their own.
//!
//! `kevent-dbus-tap relay PORT`: relays host clients of a virtio-serial
//! port to the bus (kdbusd::relay).
//!
//! `kevent-dbus-tap stall`: leaves behind a subscriber to every signal that
//! never reads one (a scenario's slow subscriber), and exits once it has
//! subscribed, saying so; the subscriber lives until the guest ends.
//!
//! `kevent-dbus-tap held NAME`: what the bus holds for connection NAME,
//! from dbus-daemon's own accounting (`org.freedesktop.DBus.Debug.Stats`),
//! one `Key: value` line per figure in the bus's order; exits 1, saying so,
//! if NAME is not on the bus (dbus-daemon disconnected it).
//!
//! `kevent-dbus-tap backlog`: every connection on the bus the bus holds
//! messages for that it has not written to the connection's socket yet
//! (a subscriber that does not keep up), one line each
//! (kdbusd::backlog); nothing if none. The host runs it as a D-Bus run
//! ends. A connection is listed only if the bus still holds messages for
//! it when asked a second time, after the first pass's round trips, so that
//! one merely being written to (this question's own `NameOwnerChanged`,
//! say) is not. Monitors are not on the bus's list of names and are not
//! asked about.
//!
//! (The agent's monitor of the bus is the agent's own connection:
//! kdbusd::bus.)

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::thread;

use kdbusd::backlog::Backlog;
use kdbusd::bus::{context, BusSocket, Error, DBUS};
use kdbusd::message::Value;
use kevent_wire::SYSTEM_BUS_SOCKET;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["relay", port] => kdbusd::relay::serve(Path::new(port), Path::new(SYSTEM_BUS_SOCKET)).map_err(Into::into),
        ["stall"] => stall(),
        [STALL_HOLDER] => hold_stalled(),
        ["held", name] => held(name),
        ["backlog"] => backlog(),
        _ => Err("usage: kevent-dbus-tap relay PORT | kevent-dbus-tap stall | kevent-dbus-tap held NAME | \
             kevent-dbus-tap backlog"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kevent-dbus-tap: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hidden mode of `stall`'s subscriber.
const STALL_HOLDER: &str = "stall-holder";
/// How long a connection to the bus may take, and each of its reads; how
/// long `stall` waits for its subscriber to subscribe.
const BUS_BOUND: std::time::Duration = std::time::Duration::from_secs(20);

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
    let why = match rx.recv_timeout(BUS_BOUND) {
        Ok(Ok(line)) if !line.is_empty() => {
            print!("{line}");
            return Ok(());
        }
        Ok(Ok(_)) => "it ended before it subscribed".to_owned(),
        Ok(Err(e)) => format!("its stdout: {e}"),
        Err(_) => format!("it did not subscribe within {BUS_BOUND:?}"),
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
    let (mut socket, name) = BusSocket::connect(Path::new(SYSTEM_BUS_SOCKET), BUS_BOUND)?;
    socket.call_bus(DBUS, "AddMatch", &[Value::Str("type='signal'".into())])?;
    println!("{name} subscribed to every signal and reads none from now on");
    io::stdout().flush()?;
    // The connection stays open, unread, as long as the process lives.
    let _unread = socket;
    loop {
        thread::park();
    }
}

/// Prints dbus-daemon's figures for connection `name`: messages and bytes
/// it has queued for it and not yet written to its socket (`Outgoing…`),
/// their peak, and the rest of what `GetConnectionStats` gives.
fn held(name: &str) -> Result<(), Error> {
    let (mut socket, _) = BusSocket::connect(Path::new(SYSTEM_BUS_SOCKET), BUS_BOUND)?;
    let mut out = io::stdout().lock();
    for (key, value) in connection_stats(&mut socket, name)? {
        match value {
            Value::Str(text) => writeln!(out, "{key}: {text}")?,
            value => writeln!(out, "{key}: {value}")?,
        }
    }
    Ok(())
}

/// Prints a line for each connection the bus holds unwritten messages for.
fn backlog() -> Result<(), Error> {
    let (mut socket, own) = BusSocket::connect(Path::new(SYSTEM_BUS_SOCKET), BUS_BOUND)?;
    let names = match socket.call_bus(DBUS, "ListNames", &[])?.first() {
        Some(Value::Array(names)) => names.clone(),
        other => return Err(format!("ListNames gave no array: {other:?}").into()),
    };
    let mut candidates = Vec::new();
    for name in names {
        let Value::Str(name) = name else { continue };
        if name.starts_with(':')
            && name != own
            && held_for(&mut socket, &name)?.is_some_and(|(messages, ..)| messages > 0)
        {
            candidates.push(name);
        }
    }
    // Asked again, after the round trips of the first pass: a connection
    // that keeps up has been written what the bus held for it then (this
    // question's own NameOwnerChanged, say); one that does not still has it.
    let mut out = io::stdout().lock();
    for name in candidates {
        let Some((messages, bytes, peak_bytes)) = held_for(&mut socket, &name)?.filter(|(messages, ..)| *messages > 0)
        else {
            continue;
        };
        let pid = match socket.call_bus(DBUS, "GetConnectionUnixProcessID", &[Value::Str(name.clone())]) {
            Ok(reply) => match reply.first() {
                Some(Value::Uint(pid)) => u32::try_from(*pid).ok(),
                _ => None,
            },
            // The backlog is the news; its owner is named if the bus says.
            Err(_) => None,
        };
        let command = pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .map_or_else(|| "?".to_owned(), |comm| comm.trim_end_matches('\n').to_owned());
        writeln!(out, "{}", Backlog { name, pid, command, messages, bytes, peak_bytes }.line())?;
    }
    Ok(())
}

/// What the bus holds for connection `name` and has not written to its
/// socket: messages, bytes and the peak of bytes; `None` if the connection
/// has left the bus.
fn held_for(socket: &mut BusSocket, name: &str) -> Result<Option<(u64, u64, u64)>, Error> {
    let stats = match connection_stats(socket, name) {
        Ok(stats) => stats,
        Err(e) if e.to_string().contains("org.freedesktop.DBus.Error.NameHasNoOwner") => return Ok(None),
        Err(e) => return Err(e),
    };
    let figure = |key: &str| {
        stats.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
            Value::Uint(n) => Some(*n),
            _ => None,
        })
    };
    match (figure("OutgoingMessages"), figure("OutgoingBytes"), figure("PeakOutgoingBytes")) {
        (Some(messages), Some(bytes), Some(peak)) => Ok(Some((messages, bytes, peak))),
        _ => Err(format!("GetConnectionStats of {name} lacks the outgoing figures: {stats:?}").into()),
    }
}

/// dbus-daemon's figures for connection `name` (`org.freedesktop.DBus.
/// Debug.Stats.GetConnectionStats`), in the bus's order, variants opened.
fn connection_stats(socket: &mut BusSocket, name: &str) -> Result<Vec<(String, Value)>, Error> {
    let reply = socket.call_bus(&format!("{DBUS}.Debug.Stats"), "GetConnectionStats", &[Value::Str(name.into())])?;
    let Some(Value::Dict(figures)) = reply.first() else {
        return Err(format!("GetConnectionStats gave no dictionary: {reply:?}").into());
    };
    figures
        .iter()
        .map(|(key, value)| {
            let Value::Str(key) = key else {
                return Err(format!("GetConnectionStats gave a key that is not a string: {key:?}").into());
            };
            let value = match value {
                Value::Variant(_, inner) => inner.as_ref().clone(),
                other => other.clone(),
            };
            Ok((key.clone(), value))
        })
        .collect()
}
