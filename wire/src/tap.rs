//! The pipe protocol between the agent and `kevent-dbus-tap monitor`, the
//! process that watches the guest's system bus for it (the agent links no
//! D-Bus library). Frames as on the host channel ([`crate::write_frame`]),
//! the tap's on its stdout, the agent's on the tap's stdin.

use crate::codec::{Decoder, Encoder, WireError};

/// What the tap tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapEvent {
    /// The tap is a monitor of the bus: every message from here on reaches
    /// the agent.
    Ready {
        /// The unique name that owned kdbusd's well-known name when the tap
        /// started, empty if none did.
        kdbusd: String,
    },
    /// One message the monitor saw, in the bus's order.
    Message {
        /// Guest CLOCK_MONOTONIC when the tap received it.
        monotonic_ns: u64,
        /// The message as marshalled on the bus.
        bytes: Vec<u8>,
    },
    /// Everything fence `token` asked for has been seen, and every message
    /// the monitor saw before is already on the pipe.
    Fenced {
        /// The token of the [`TapCommand`].
        token: u64,
    },
    /// Fence `token` cannot be had.
    FenceFailed {
        /// The token of the [`TapCommand`].
        token: u64,
        /// Why: the D-Bus error, or what the bus said.
        why: String,
    },
}

/// What the agent asks of the tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapCommand {
    /// Call kdbusd's `Sync` and answer [`TapEvent::Fenced`] once the
    /// monitor has seen its return: kdbusd sends every signal of the
    /// datagrams its sockets held before that return.
    Sync {
        /// Echoed in the answer.
        token: u64,
    },
    /// Answer once the monitor has seen kdbusd's connection leave the bus
    /// (its unique name released, after its well-known name), at once if
    /// it has already.
    AwaitKdbusdGone {
        /// Echoed in the answer.
        token: u64,
    },
}

const TAP_READY: u8 = 0x41;
const TAP_MESSAGE: u8 = 0x42;
const TAP_FENCED: u8 = 0x43;
const TAP_FENCE_FAILED: u8 = 0x44;
const TAP_SYNC: u8 = 0x51;
const TAP_AWAIT_GONE: u8 = 0x52;

impl TapEvent {
    /// The complete frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TapEvent::Ready { kdbusd } => {
                let mut e = Encoder::new(TAP_READY);
                e.str(kdbusd);
                e.finish()
            }
            TapEvent::Message { monotonic_ns, bytes } => {
                let mut e = Encoder::with_capacity(TAP_MESSAGE, 12 + bytes.len());
                e.u64(*monotonic_ns).bytes(bytes);
                e.finish()
            }
            TapEvent::Fenced { token } => {
                let mut e = Encoder::new(TAP_FENCED);
                e.u64(*token);
                e.finish()
            }
            TapEvent::FenceFailed { token, why } => {
                let mut e = Encoder::new(TAP_FENCE_FAILED);
                e.u64(*token).str(why);
                e.finish()
            }
        }
    }

    /// The event of a frame's kind byte and body; strict.
    pub fn decode(kind: u8, body: &[u8]) -> Result<TapEvent, WireError> {
        let event = match kind {
            TAP_READY => {
                let mut d = Decoder::new("TapReady", body);
                let kdbusd = d.str("kdbusd")?;
                d.end()?;
                TapEvent::Ready { kdbusd }
            }
            TAP_MESSAGE => {
                let mut d = Decoder::new("TapMessage", body);
                let (monotonic_ns, bytes) = (d.u64("monotonic_ns")?, d.bytes("bytes")?);
                d.end()?;
                TapEvent::Message { monotonic_ns, bytes }
            }
            TAP_FENCED => {
                let mut d = Decoder::new("TapFenced", body);
                let token = d.u64("token")?;
                d.end()?;
                TapEvent::Fenced { token }
            }
            TAP_FENCE_FAILED => {
                let mut d = Decoder::new("TapFenceFailed", body);
                let (token, why) = (d.u64("token")?, d.str("why")?);
                d.end()?;
                TapEvent::FenceFailed { token, why }
            }
            kind => return Err(WireError::UnknownKind { direction: "tap-to-agent", kind }),
        };
        Ok(event)
    }
}

impl TapCommand {
    /// The complete frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, token) = match self {
            TapCommand::Sync { token } => (TAP_SYNC, token),
            TapCommand::AwaitKdbusdGone { token } => (TAP_AWAIT_GONE, token),
        };
        let mut e = Encoder::new(kind);
        e.u64(*token);
        e.finish()
    }

    /// The command of a frame's kind byte and body; strict.
    pub fn decode(kind: u8, body: &[u8]) -> Result<TapCommand, WireError> {
        let name = match kind {
            TAP_SYNC => "TapSync",
            TAP_AWAIT_GONE => "TapAwaitKdbusdGone",
            kind => return Err(WireError::UnknownKind { direction: "agent-to-tap", kind }),
        };
        let mut d = Decoder::new(name, body);
        let token = d.u64("token")?;
        d.end()?;
        Ok(if kind == TAP_SYNC { TapCommand::Sync { token } } else { TapCommand::AwaitKdbusdGone { token } })
    }

    /// The command's token.
    pub fn token(&self) -> u64 {
        match self {
            TapCommand::Sync { token } | TapCommand::AwaitKdbusdGone { token } => *token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_frame;

    #[test]
    fn tap_frames_round_trip_and_refuse_the_other_direction() {
        for event in [
            TapEvent::Ready { kdbusd: ":1.0".into() },
            TapEvent::Message { monotonic_ns: 9, bytes: b"l\x04\x01\x01".to_vec() },
            TapEvent::Fenced { token: 3 },
            TapEvent::FenceFailed { token: 4, why: "org.freedesktop.DBus.Error.NoReply".into() },
        ] {
            let frame = event.encode();
            let (kind, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
            assert_eq!(TapEvent::decode(kind, &body).unwrap(), event);
            assert!(TapCommand::decode(kind, &body).is_err());
        }
        for command in [TapCommand::Sync { token: 1 }, TapCommand::AwaitKdbusdGone { token: u64::MAX }] {
            let frame = command.encode();
            let (kind, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
            assert_eq!(TapCommand::decode(kind, &body).unwrap(), command);
            assert!(TapEvent::decode(kind, &body).is_err());
        }
    }
}
