//! Netlink capture: every datagram of the kmessage unit and of
//! NETLINK_KOBJECT_UEVENT, forwarded to the host as it arrives.
//!
//! One thread polls both sockets and a wake-up pipe. Replies to the host's
//! requests go through the same thread, after it has drained both sockets:
//! so every datagram the kernel queued before a request finished reaches
//! the host before that request's reply. The events module's trigger returns
//! only once its datagrams are queued, so an injection's events always come
//! before its reply.
//!
//! With the D-Bus side, the same thread reads the agent's monitor of the
//! bus (every message on it) and forwards each; a reply then also waits
//! for a fence through the bus: the thread calls kdbusd's `Sync`, which
//! returns only after kdbusd has sent the signals of everything its own
//! sockets held, and the monitor sees that return after those signals. So
//! a step's D-Bus signals are on the host before its reply too.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use kdbusd::bus::DBUS;
use kdbusd::mapping::{BUS_NAME, INTERFACE, OBJECT_PATH};
use kdbusd::message::{self, Kind, Value};
use kevent_wire::{AgentStage, DatagramRef, DbusMessage, GuestMessage, Outcome, BUS_FENCE_BOUND};
use nix::poll::PollFd;

use kdbusd::netlink::{self, Received};

use crate::error::AgentError;
use crate::services::{BusConnections, Services};
use crate::sys;
use crate::HostChannel;

const STAGE: AgentStage = AgentStage::Capture;

/// A netlink listener and the overruns it has reported.
struct Listener {
    socket: netlink::Listener,
    /// A Cell so that draining borrows the listener shared, as the pollfds
    /// that borrow its descriptor for the thread's whole life do.
    overruns: Cell<u32>,
}

impl Listener {
    fn of(socket: netlink::Listener) -> Listener {
        Listener { socket, overruns: Cell::new(0) }
    }

    /// Receives every queued datagram; an overrun is reported, not hidden.
    fn drain(&self, outbox: &mut Outbox<'_>, buffer: &mut [u8]) -> io::Result<()> {
        let protocol = self.socket.protocol();
        loop {
            match self.socket.receive(buffer)? {
                None => return Ok(()),
                Some(Received::Overrun) => {
                    let occurrences = self.overruns.get() + 1;
                    self.overruns.set(occurrences);
                    outbox.push(&GuestMessage::Overrun { protocol, occurrences }.encode())?;
                }
                Some(Received::Datagram { sender, bytes }) => {
                    // The group mask is what names a kmessage's type on the
                    // host: a datagram without its sender cannot be told apart.
                    let Some(sender) = sender else {
                        return Err(io::Error::other(format!(
                            "a datagram of protocol {protocol} came without its sender"
                        )));
                    };
                    let frame = DatagramRef {
                        protocol,
                        groups: sender.groups(),
                        portid: sender.pid(),
                        monotonic_ns: sys::monotonic_ns(),
                        bytes,
                    }
                    .encode();
                    outbox.push(&frame)?;
                }
            }
        }
    }
}

/// Frames for the host, gathered while the capture thread has more to
/// read and written together before it waits: each write to the port is a
/// virtqueue kick, an exit to QEMU, which a burst pays once instead of per
/// frame. A lone event is written as soon as its round ends, as before.
struct Outbox<'c> {
    channel: &'c HostChannel,
    bytes: Vec<u8>,
}

impl<'c> Outbox<'c> {
    /// Past this many bytes the frames go at once: a burst does not wait
    /// for the end of its round.
    const FLUSH_AT: usize = 32 << 10;

    fn new(channel: &'c HostChannel) -> Outbox<'c> {
        Outbox { channel, bytes: Vec::with_capacity(2 * Self::FLUSH_AT) }
    }

    fn push(&mut self, frame: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(frame);
        if self.bytes.len() >= Self::FLUSH_AT {
            return self.flush();
        }
        Ok(())
    }

    /// Writes what is gathered, in order, as one frame sequence.
    fn flush(&mut self) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let sent = self.channel.send_frame(&self.bytes);
        self.bytes.clear();
        sent
    }
}

/// What a reply waits for besides the netlink sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Nothing: no D-Bus side, or kdbusd is stopped.
    Netlink,
    /// kdbusd's `Sync`, seen returned by the monitor.
    Sync,
    /// kdbusd's name seen without an owner (after kdbusd was stopped).
    KdbusdGone,
}

/// What a message the monitor saw settles.
enum Seen {
    /// A reply to one of the client's calls: its serial, and the error's
    /// name and text if it is an error.
    Reply { serial: u32, error: Option<String> },
    /// kdbusd's connection left the bus.
    KdbusdGone,
    /// Nothing a fence waits for.
    Traffic,
}

/// The agent's monitor of the bus as the capture thread drives it.
struct Monitor {
    bus: BusConnections,
    services: Services,
    /// The bus has not closed the monitor's connection.
    open: bool,
    /// The D-Bus side failed and was reported: no more fences.
    failed: bool,
}

impl Monitor {
    /// Handles every message the bus has sent so far, without waiting.
    fn pump(&mut self, outbox: &mut Outbox<'_>) -> io::Result<()> {
        while self.open && self.readable(Duration::ZERO, outbox)? {
            self.next(outbox)?;
        }
        Ok(())
    }

    /// Whether a message can be read within `bound`; what `outbox` holds
    /// goes to the host before any wait.
    fn readable(&mut self, bound: Duration, outbox: &mut Outbox<'_>) -> io::Result<bool> {
        if self.bus.monitor.message_buffered() {
            return Ok(true);
        }
        let mut fds = [sys::readable(self.bus.monitor.fd())];
        if sys::poll_timeout(&mut fds, Duration::ZERO)? {
            return Ok(true);
        }
        if bound.is_zero() {
            return Ok(false);
        }
        outbox.flush()?;
        sys::poll_timeout(&mut fds, bound)
    }

    /// Reads one message: the bus's traffic goes to the host (the agent's
    /// own calls and their replies do not); what it settles is returned.
    /// A connection the bus closed, or that fails, is reported, once.
    fn next(&mut self, outbox: &mut Outbox<'_>) -> io::Result<Seen> {
        let bytes = match self.bus.monitor.next_message() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return self.lost(outbox, "the bus closed the agent's monitor connection".into()),
            Err(e) => return self.lost(outbox, format!("the agent's bus monitor: {e}")),
        };
        let monotonic_ns = sys::monotonic_ns();
        // The bus allows messages of up to 128 MiB; the host's channel does
        // not carry a frame that large, and would take the rest for a
        // broken protocol.
        if bytes.len() > DbusMessage::MAX_BYTES {
            let why = format!(
                "a message of {} bytes on the bus: the host channel carries {} at most",
                bytes.len(),
                DbusMessage::MAX_BYTES
            );
            return self.lost(outbox, why);
        }
        // A message the agent cannot read still goes to the host, which
        // reports it; it settles no fence. The header routes; the few
        // bodies read are read below.
        let Ok(header) = message::parse_header(&bytes) else {
            outbox.push(&GuestMessage::Dbus(DbusMessage { monotonic_ns, bytes }).encode())?;
            return Ok(Seen::Traffic);
        };
        let (client, monitor) = (&self.bus.client_name, &self.bus.monitor_name);
        let sender = header.sender.as_deref().unwrap_or("");
        let destination = header.destination.as_deref().unwrap_or("");
        let seen = match header.kind {
            Kind::MethodReturn | Kind::Error if destination == client => {
                let error = (header.kind == Kind::Error)
                    .then(|| message::parse(&bytes).unwrap_or_else(|_| header.clone()).error_text());
                header.reply_serial.map_or(Seen::Traffic, |serial| Seen::Reply { serial, error })
            }
            Kind::Signal if sender == DBUS && header.member.as_deref() == Some("NameOwnerChanged") => {
                let body = message::parse(&bytes).map(|m| m.body).unwrap_or_default();
                let text = |at: usize| match body.get(at) {
                    Some(Value::Str(s)) => s.as_str(),
                    _ => "",
                };
                let (name, new) = (text(0), text(2));
                if name == BUS_NAME && !new.is_empty() {
                    self.bus.kdbusd = new.to_owned();
                    Seen::Traffic
                } else if !self.bus.kdbusd.is_empty() && name == self.bus.kdbusd && new.is_empty() {
                    // kdbusd's connection is gone: the bus releases its
                    // well-known name first, its unique name last.
                    self.bus.kdbusd.clear();
                    Seen::KdbusdGone
                } else {
                    Seen::Traffic
                }
            }
            _ => Seen::Traffic,
        };
        let mine = [client, monitor].iter().any(|name| *name == sender || *name == destination);
        if !mine {
            outbox.push(&GuestMessage::Dbus(DbusMessage { monotonic_ns, bytes }).encode())?;
        }
        Ok(seen)
    }

    /// The monitor can forward no more (the bus closed its connection, a
    /// read failed, a message will not fit a frame): the host hears why
    /// (the bus daemon's death, if that is the cause), after what came before.
    fn lost(&mut self, outbox: &mut Outbox<'_>, why: String) -> io::Result<Seen> {
        self.open = false;
        self.fail(outbox, &why)?;
        Ok(Seen::Traffic)
    }

    /// The D-Bus side failed: the host hears why, once, after what came
    /// before; no fence is carried out from here on.
    fn fail(&mut self, outbox: &mut Outbox<'_>, why: &str) -> io::Result<()> {
        if !self.failed {
            self.failed = true;
            outbox.flush()?;
            self.services.report(why);
        }
        Ok(())
    }

    /// Carries out `fence` and forwards what the monitor sees until it holds.
    fn fence(&mut self, fence: Fence, outbox: &mut Outbox<'_>) -> io::Result<Result<(), String>> {
        let serial = match fence {
            Fence::Netlink => return Ok(Ok(())),
            Fence::KdbusdGone if self.bus.kdbusd.is_empty() => return Ok(Ok(())),
            Fence::KdbusdGone => None,
            Fence::Sync => match self.bus.client.send_call(BUS_NAME, OBJECT_PATH, INTERFACE, "Sync", &[]) {
                Ok(serial) => Some(serial),
                Err(e) => return Ok(Err(format!("call {INTERFACE}.Sync: {e}"))),
            },
        };
        let what = match fence {
            Fence::KdbusdGone => "kdbusd's name did not lose its owner on the bus",
            _ => "kdbusd did not answer Sync",
        };
        let deadline = Instant::now() + BUS_FENCE_BOUND;
        let held = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.open {
                break Err(format!("the bus closed the agent's monitor connection in a fence ({what})"));
            }
            if !self.readable(left, outbox)? {
                break Err(format!("{what} within {BUS_FENCE_BOUND:?}"));
            }
            match (self.next(outbox)?, serial) {
                (Seen::Reply { serial: s, error }, Some(serial)) if s == serial => {
                    break error.map_or(Ok(()), |why| Err(format!("{what}: {why}")));
                }
                (Seen::KdbusdGone, None) => break Ok(()),
                _ => {}
            }
        };
        // The monitor read the replies; the client's copies are dropped.
        if let Err(e) = self.bus.client.discard_pending() {
            return Ok(Err(format!("the agent's bus client: {e}")));
        }
        Ok(held)
    }
}

/// Handle for the command side: replies are sent through the capture thread.
pub struct Capture {
    replies: Sender<(u32, Outcome, Fence)>,
    /// Write end of the capture thread's wake-up pipe.
    wake: File,
}

/// Bound capture sockets: the kernel queues every message for them from
/// here on, before anything reads them.
pub struct Sockets(Vec<Listener>);

impl Sockets {
    /// The kmessage listener (only if that module is loaded) and the uevent one.
    pub fn open() -> Result<Sockets, AgentError> {
        let mut listeners = Vec::new();
        match netlink::Listener::kmessage() {
            Ok(socket) => listeners.push(Listener::of(socket)),
            // No kmessage module loaded: no unit to listen on.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::io(STAGE, "open the kmessage socket", &e)),
        }
        listeners.push(Listener::of(
            netlink::Listener::uevent().map_err(|e| AgentError::io(STAGE, "open the uevent socket", &e))?,
        ));
        Ok(Sockets(listeners))
    }
}

impl Capture {
    /// Starts the capture thread on `sockets`, and on the agent's bus
    /// connections if the D-Bus side runs.
    pub fn start(
        channel: HostChannel,
        sockets: Sockets,
        dbus: Option<(Services, BusConnections)>,
    ) -> Result<Capture, AgentError> {
        let listeners = sockets.0;
        let monitor = dbus.map(|(services, bus)| Monitor { bus, services, open: true, failed: false });
        let (read_end, write_end) = sys::pipe().map_err(|e| AgentError::io(STAGE, "make the wake-up pipe", &e))?;
        let (read_end, write_end) = (File::from(read_end), File::from(write_end));
        let (replies, pending) = mpsc::channel();
        thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                if let Err(e) = capture_loop(listeners, read_end, pending, &channel, monitor) {
                    crate::fail(Some(&channel), &AgentError::io(STAGE, "netlink capture", &e));
                }
            })
            .map_err(|e| AgentError::io(STAGE, "start the capture thread", &e))?;
        Ok(Capture { replies, wake: write_end })
    }

    /// Sends `outcome` as the reply to request `id`, after every datagram
    /// already queued in the capture sockets, and after what `fence` waits for.
    pub fn reply(&self, id: u32, outcome: Outcome, fence: Fence) -> io::Result<()> {
        self.replies.send((id, outcome, fence)).map_err(|_| io::Error::other("the capture thread has stopped"))?;
        sys::wake(&self.wake)
    }
}

fn capture_loop(
    listeners: Vec<Listener>,
    wake: File,
    pending: Receiver<(u32, Outcome, Fence)>,
    channel: &HostChannel,
    mut monitor: Option<Monitor>,
) -> io::Result<()> {
    let mut outbox = Outbox::new(channel);
    let result = capture_rounds(&listeners, &wake, &pending, &mut outbox, &mut monitor);
    // What was read before a failure still reaches the host, before it.
    let flushed = outbox.flush();
    result.and(flushed)
}

fn capture_rounds(
    listeners: &[Listener],
    wake: &File,
    pending: &Receiver<(u32, Outcome, Fence)>,
    outbox: &mut Outbox<'_>,
    monitor: &mut Option<Monitor>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 << 10];
    let wake_at = listeners.len();
    loop {
        // Messages already read off the monitor's socket (with the one
        // before them) are not the socket's to report: poll would not wake.
        // Part of one is: poll wakes when the bus writes the rest.
        if let Some(monitor) = monitor.as_mut().filter(|m| m.open && m.bus.monitor.message_buffered()) {
            monitor.pump(outbox)?;
        }
        outbox.flush()?;
        // The monitor leaves the set once the bus has closed it (and that
        // was reported): poll would report it forever.
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| l.socket.fd())
            .chain([wake.as_fd()])
            .chain(monitor.as_ref().filter(|m| m.open).map(|m| m.bus.monitor.fd()))
            .map(sys::readable)
            .collect();
        sys::poll(&mut fds)?;
        let ready: Vec<bool> = fds.iter().map(sys::ready).collect();
        drop(fds);
        for (listener, _) in listeners.iter().zip(&ready).filter(|(_, r)| **r) {
            listener.drain(outbox, &mut buffer)?;
        }
        if ready.get(wake_at + 1).copied().unwrap_or(false) {
            if let Some(monitor) = monitor.as_mut() {
                monitor.pump(outbox)?;
            }
        }
        if ready[wake_at] {
            sys::drain_pipe(wake)?;
            while let Ok((id, outcome, fence)) = pending.try_recv() {
                for listener in listeners {
                    listener.drain(outbox, &mut buffer)?;
                }
                if let Some(monitor) = monitor.as_mut() {
                    // Once the D-Bus side failed, the host hears the report,
                    // never a reply without its fence.
                    if monitor.failed {
                        continue;
                    }
                    if let Err(why) = monitor.fence(fence, outbox)? {
                        // The host fails the run on the report; no reply
                        // could claim the fence held. A monitor lost in the
                        // fence has reported already.
                        monitor.fail(outbox, &why)?;
                        continue;
                    }
                }
                outbox.push(&GuestMessage::Reply { id, outcome }.encode())?;
            }
        }
    }
}
