//! The threads that feed a guest's one event channel: the console reader
//! (QEMU's stdout: log file, crash detection, the agent's start marker,
//! inputs the kernel ignored), the agent reader (frames from the
//! virtio-serial socket), and the sensor's ack watcher (rings of the host's
//! vector). A fourth, QEMU's stderr collector, keeps what QEMU says for the
//! failure that needs it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kevent_wire::{read_frame, Datagram, DbusMessage, GuestMessage, WireError};

use super::guest::{ConsoleState, CONSOLE_MEMORY};

pub(super) enum Event {
    AgentStarted(Instant),
    /// A console line started a kernel report.
    Crash,
    ConsoleClosed,
    Agent(GuestMessage),
    /// A datagram, stamped when the agent reader decoded it.
    Datagram(Datagram, Instant),
    /// A message of the guest's bus, stamped likewise.
    Dbus(DbusMessage, Instant),
    AgentClosed,
    AgentError(WireError),
    /// The guest rang the host's sensor vector: an acknowledgement.
    SensorAck,
    /// The kernel said on the console that it ignored an input.
    IgnoredInput(String),
}

pub(super) fn spawn_console_reader(
    stdout: impl Read + Send + 'static,
    log: File,
    stream: bool,
    console: Arc<Mutex<ConsoleState>>,
    tx: Sender<Event>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut log = BufWriter::new(log);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let _ = writeln!(log, "{line}");
            let _ = log.flush();
            if stream {
                eprintln!("{line}");
            }
            let started = line.starts_with(kevent_wire::AGENT_STARTED_MARKER);
            if let Some(ignored) = crate::console::ignored_input(line) {
                let _ = tx.send(Event::IgnoredInput(ignored.to_owned()));
            }
            let crash = {
                let mut console = console.lock().unwrap();
                if console.recent.len() == CONSOLE_MEMORY {
                    console.recent.pop_front();
                }
                console.recent.push_back(line.to_owned());
                console.detector.feed(line)
            };
            if started {
                let _ = tx.send(Event::AgentStarted(Instant::now()));
            }
            if crash.is_some() {
                let _ = tx.send(Event::Crash);
            }
        }
        console.lock().unwrap().closed = true;
        let _ = tx.send(Event::ConsoleClosed);
    });
}

pub(super) fn spawn_stderr_collector(
    stderr: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    })
}

/// Turns rings of the host's ack vector into events, so that waits see
/// acknowledgements, console crashes and agent messages on one channel.
pub(super) fn spawn_ack_watcher(acks: crate::sensor::ivshmem::EventFd, stop: Arc<AtomicBool>, tx: Sender<Event>) {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match acks.poll(Duration::from_millis(50)) {
                Ok(true) => {
                    let _ = acks.drain();
                    if tx.send(Event::SensorAck).is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
}

pub(super) fn spawn_agent_reader(mut stream: UnixStream, tx: Sender<Event>) {
    thread::spawn(move || loop {
        let event = match read_frame(&mut stream) {
            Ok(Some((kind, body))) => match GuestMessage::decode(kind, &body) {
                Ok(GuestMessage::Datagram(datagram)) => Event::Datagram(datagram, Instant::now()),
                Ok(GuestMessage::Dbus(message)) => Event::Dbus(message, Instant::now()),
                Ok(message) => Event::Agent(message),
                Err(e) => Event::AgentError(e),
            },
            // The guest going away mid-frame is its death, not bad protocol:
            // the console tells why.
            Ok(None) | Err(WireError::Io(_) | WireError::TruncatedFrame { .. }) => Event::AgentClosed,
            Err(e) => Event::AgentError(e),
        };
        let last = !matches!(event, Event::Agent(_) | Event::Datagram(..) | Event::Dbus(..));
        if tx.send(event).is_err() || last {
            return;
        }
    });
}
