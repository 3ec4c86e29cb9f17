use crate::codec::{Decoder, Encoder, WireError};

/// One kernel module the agent loaded before greeting, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    pub name: String,
    pub params: String,
    /// Guest time spent in `finit_module`.
    pub load_ns: u64,
}

/// The agent's greeting: the first frame on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    /// `uname -r` of the guest.
    pub kernel_release: String,
    pub cpus_online: u32,
    /// `current_clocksource` of the guest.
    pub clocksource: String,
    /// Guest CLOCK_BOOTTIME when the agent's `main` began.
    pub agent_started_ns: u64,
    /// Guest CLOCK_BOOTTIME when the greeting was sent.
    pub greeted_ns: u64,
    pub modules: Vec<ModuleLoad>,
}

/// Messages from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    Hello(Hello),
    /// The agent hit an error it cannot recover from; it powers off next.
    Fatal {
        message: String,
    },
}

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// Power the guest off now.
    Shutdown,
}

const GUEST_HELLO: u8 = 0x01;
const GUEST_FATAL: u8 = 0x02;

const HOST_SHUTDOWN: u8 = 0x81;

impl GuestMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            GuestMessage::Hello(h) => {
                let mut e = Encoder::new(GUEST_HELLO);
                e.u16(h.protocol_version)
                    .str(&h.kernel_release)
                    .u32(h.cpus_online)
                    .str(&h.clocksource)
                    .u64(h.agent_started_ns)
                    .u64(h.greeted_ns)
                    .u32(h.modules.len() as u32);
                for m in &h.modules {
                    e.str(&m.name).str(&m.params).u64(m.load_ns);
                }
                e.finish()
            }
            GuestMessage::Fatal { message } => {
                let mut e = Encoder::new(GUEST_FATAL);
                e.str(message);
                e.finish()
            }
        }
    }

    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        match kind {
            GUEST_HELLO => {
                let mut d = Decoder::new("Hello", body);
                // The version comes first so that a mismatch is reported as
                // such rather than as a garbled field further on.
                let protocol_version = d.u16("protocol_version")?;
                if protocol_version != crate::PROTOCOL_VERSION {
                    return Err(d.bad_value("protocol_version", protocol_version.into()));
                }
                let kernel_release = d.str("kernel_release")?;
                let cpus_online = d.u32("cpus_online")?;
                let clocksource = d.str("clocksource")?;
                let agent_started_ns = d.u64("agent_started_ns")?;
                let greeted_ns = d.u64("greeted_ns")?;
                let count = d.u32("modules")?;
                let mut modules = Vec::new();
                for _ in 0..count {
                    let name = d.str("modules.name")?;
                    let params = d.str("modules.params")?;
                    let load_ns = d.u64("modules.load_ns")?;
                    modules.push(ModuleLoad { name, params, load_ns });
                }
                d.end()?;
                Ok(GuestMessage::Hello(Hello {
                    protocol_version,
                    kernel_release,
                    cpus_online,
                    clocksource,
                    agent_started_ns,
                    greeted_ns,
                    modules,
                }))
            }
            GUEST_FATAL => {
                let mut d = Decoder::new("Fatal", body);
                let message = d.str("message")?;
                d.end()?;
                Ok(GuestMessage::Fatal { message })
            }
            kind => Err(WireError::UnknownKind { direction: "agent-to-host", kind }),
        }
    }
}

impl HostMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HostMessage::Shutdown => Encoder::new(HOST_SHUTDOWN).finish(),
        }
    }

    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        match kind {
            HOST_SHUTDOWN => {
                Decoder::new("Shutdown", body).end()?;
                Ok(HostMessage::Shutdown)
            }
            kind => Err(WireError::UnknownKind { direction: "host-to-agent", kind }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::read_frame;

    fn hello() -> Hello {
        Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            kernel_release: "6.12.57".into(),
            cpus_online: 2,
            clocksource: "tsc-early".into(),
            agent_started_ns: 900_000_000,
            greeted_ns: 912_000_000,
            modules: vec![ModuleLoad { name: "kmessage".into(), params: "unit=31".into(), load_ns: 1_500_000 }],
        }
    }

    fn round_trip_guest(m: &GuestMessage) -> GuestMessage {
        let frame = m.encode();
        let (kind, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
        GuestMessage::decode(kind, &body).unwrap()
    }

    #[test]
    fn guest_messages_round_trip() {
        let h = GuestMessage::Hello(hello());
        assert_eq!(round_trip_guest(&h), h);
        let f = GuestMessage::Fatal { message: "no port".into() };
        assert_eq!(round_trip_guest(&f), f);
    }

    #[test]
    fn host_messages_round_trip() {
        let frame = HostMessage::Shutdown.encode();
        let (kind, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
        assert_eq!(HostMessage::decode(kind, &body).unwrap(), HostMessage::Shutdown);
    }

    #[test]
    fn a_hello_of_another_version_is_refused_by_name() {
        let mut h = hello();
        h.protocol_version = crate::PROTOCOL_VERSION + 1;
        let frame = GuestMessage::Hello(h).encode();
        let (kind, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
        let err = GuestMessage::decode(kind, &body).unwrap_err().to_string();
        assert!(err.starts_with("Hello: field `protocol_version` has invalid value"), "{err}");
    }

    #[test]
    fn every_truncation_of_a_hello_is_an_error_not_a_panic() {
        let frame = GuestMessage::Hello(hello()).encode();
        let body = &frame[5..];
        for cut in 0..body.len() {
            assert!(GuestMessage::decode(frame[4], &body[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_kinds_are_named_by_direction() {
        let err = GuestMessage::decode(0x7f, &[]).unwrap_err().to_string();
        assert_eq!(err, "unknown agent-to-host message kind 0x7f");
        let err = HostMessage::decode(0x01, &[]).unwrap_err().to_string();
        assert_eq!(err, "unknown host-to-agent message kind 0x01");
    }
}
