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
//! With the D-Bus side, the same thread reads the tap's frames (every
//! message on the bus) and forwards them; a reply then also waits for a
//! fence through the bus: kdbusd's `Sync` returns only after kdbusd has
//! sent the signals of everything its own sockets held, and the tap sees
//! that return after those signals. So a step's D-Bus signals are on the
//! host before its reply too.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use kevent_wire::{
    read_frame, write_frame, AgentStage, DatagramRef, DbusMessage, GuestMessage, Outcome, TapCommand, TapEvent,
    BUS_FENCE_BOUND,
};
use nix::poll::PollFd;

use kdbusd::netlink::{self, Received};

use crate::error::AgentError;
use crate::services::{Services, TapPipes};
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
    /// kdbusd's `Sync`, seen returned by the tap.
    Sync,
    /// kdbusd's name seen without an owner (after kdbusd was stopped).
    KdbusdGone,
}

/// The tap as the capture thread drives it.
struct Tap {
    pipes: TapPipes,
    services: Services,
    /// The tap's stdout is open.
    open: bool,
    /// The D-Bus side failed and was reported: no more fences.
    failed: bool,
    next_token: u64,
}

impl Tap {
    /// Handles every frame the tap has written so far, without waiting.
    fn pump(&mut self, outbox: &mut Outbox<'_>) -> io::Result<()> {
        while self.open && self.readable(Duration::ZERO, outbox)? {
            self.next(outbox)?;
        }
        Ok(())
    }

    /// Whether a frame can be read within `bound`; what `outbox` holds goes
    /// to the host before any wait.
    fn readable(&mut self, bound: Duration, outbox: &mut Outbox<'_>) -> io::Result<bool> {
        if !self.pipes.events.buffer().is_empty() {
            return Ok(true);
        }
        let mut fds = [sys::readable(self.pipes.events.get_ref().as_fd())];
        if sys::poll_timeout(&mut fds, Duration::ZERO)? {
            return Ok(true);
        }
        if bound.is_zero() {
            return Ok(false);
        }
        outbox.flush()?;
        sys::poll_timeout(&mut fds, bound)
    }

    /// Reads one frame: a bus message goes to the host; a fence's answer
    /// is returned.
    fn next(&mut self, outbox: &mut Outbox<'_>) -> io::Result<Option<TapEvent>> {
        let frame =
            read_frame(&mut self.pipes.events).map_err(|e| io::Error::other(format!("the tap's frames: {e}")))?;
        let Some((kind, body)) = frame else {
            self.open = false;
            return Ok(None);
        };
        match TapEvent::decode(kind, &body).map_err(|e| io::Error::other(format!("the tap's frames: {e}")))? {
            TapEvent::Message { monotonic_ns, bytes } => {
                outbox.push(&GuestMessage::Dbus(DbusMessage { monotonic_ns, bytes }).encode())?;
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    /// Asks the tap for `fence` and forwards what it sees until it answers.
    fn fence(&mut self, fence: Fence, outbox: &mut Outbox<'_>) -> io::Result<Result<(), String>> {
        // The command's write may block on a full pipe: what is gathered
        // goes first.
        outbox.flush()?;
        self.next_token += 1;
        let token = self.next_token;
        let command = match fence {
            Fence::Netlink => return Ok(Ok(())),
            Fence::Sync => TapCommand::Sync { token },
            Fence::KdbusdGone => TapCommand::AwaitKdbusdGone { token },
        };
        let what = match fence {
            Fence::KdbusdGone => "kdbusd's name did not lose its owner on the bus",
            _ => "kdbusd did not answer Sync",
        };
        if let Err(e) =
            write_frame(&mut self.pipes.commands, &command.encode()).and_then(|()| self.pipes.commands.flush())
        {
            return Ok(Err(format!("{} could not be asked for a fence: {e}", crate::services::TAP)));
        }
        let deadline = Instant::now() + BUS_FENCE_BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.open {
                return Ok(Err(format!("{} ended in a fence ({what})", crate::services::TAP)));
            }
            if !self.readable(left, outbox)? {
                return Ok(Err(format!("{what} within {BUS_FENCE_BOUND:?}")));
            }
            match self.next(outbox)? {
                Some(TapEvent::Fenced { token: t }) if t == token => return Ok(Ok(())),
                Some(TapEvent::FenceFailed { token: t, why }) if t == token => {
                    return Ok(Err(format!("{what}: {why}")))
                }
                _ => {}
            }
        }
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
        match netlink::Listener::kmessage_unit() {
            Ok(unit) => listeners.push(Listener::of(
                netlink::Listener::open(unit, kevent_wire::KMESSAGE_ALL_GROUPS)
                    .map_err(|e| AgentError::io(STAGE, format_args!("open a socket on kmessage unit {unit}"), &e))?,
            )),
            // No kmessage module loaded: no unit to listen on.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::io(STAGE, "read the kmessage unit", &e)),
        }
        listeners.push(Listener::of(
            netlink::Listener::uevent().map_err(|e| AgentError::io(STAGE, "open the uevent socket", &e))?,
        ));
        Ok(Sockets(listeners))
    }
}

impl Capture {
    /// Starts the capture thread on `sockets`, and on the tap's pipes if
    /// the D-Bus side runs.
    pub fn start(
        channel: HostChannel,
        sockets: Sockets,
        dbus: Option<(Services, TapPipes)>,
    ) -> Result<Capture, AgentError> {
        let listeners = sockets.0;
        let tap = dbus.map(|(services, pipes)| Tap { pipes, services, open: true, failed: false, next_token: 0 });
        let (read_end, write_end) = sys::pipe().map_err(|e| AgentError::io(STAGE, "make the wake-up pipe", &e))?;
        let (read_end, write_end) = (File::from(read_end), File::from(write_end));
        let (replies, pending) = mpsc::channel();
        thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                if let Err(e) = capture_loop(listeners, read_end, pending, &channel, tap) {
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
    mut tap: Option<Tap>,
) -> io::Result<()> {
    let mut outbox = Outbox::new(channel);
    let result = capture_rounds(&listeners, &wake, &pending, &mut outbox, &mut tap);
    // What was read before a failure still reaches the host, before it.
    let flushed = outbox.flush();
    result.and(flushed)
}

fn capture_rounds(
    listeners: &[Listener],
    wake: &File,
    pending: &Receiver<(u32, Outcome, Fence)>,
    outbox: &mut Outbox<'_>,
    tap: &mut Option<Tap>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 << 10];
    let wake_at = listeners.len();
    loop {
        outbox.flush()?;
        // The tap's stdout leaves the set once it has closed (its end is
        // reported by its supervisor): poll would report it forever.
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| l.socket.fd())
            .chain([wake.as_fd()])
            .chain(tap.as_ref().filter(|t| t.open).map(|t| t.pipes.events.get_ref().as_fd()))
            .map(sys::readable)
            .collect();
        sys::poll(&mut fds)?;
        let ready: Vec<bool> = fds.iter().map(sys::ready).collect();
        drop(fds);
        for (listener, _) in listeners.iter().zip(&ready).filter(|(_, r)| **r) {
            listener.drain(outbox, &mut buffer)?;
        }
        if ready.get(wake_at + 1).copied().unwrap_or(false) {
            if let Some(tap) = tap.as_mut() {
                tap.pump(outbox)?;
            }
        }
        if ready[wake_at] {
            sys::drain_pipe(wake)?;
            while let Ok((id, outcome, fence)) = pending.try_recv() {
                for listener in listeners {
                    listener.drain(outbox, &mut buffer)?;
                }
                if let Some(tap) = tap.as_mut().filter(|t| !t.failed) {
                    if let Err(why) = tap.fence(fence, outbox)? {
                        // The host fails the run on the report; no reply
                        // could claim the fence held. What came before the
                        // failure goes first.
                        outbox.flush()?;
                        tap.failed = true;
                        tap.services.report(&why);
                        continue;
                    }
                }
                outbox.push(&GuestMessage::Reply { id, outcome }.encode())?;
            }
        }
    }
}
