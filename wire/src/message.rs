use std::fmt;

use crate::codec::{Decoder, Encoder, WireError};

/// One kernel module the agent loaded before greeting, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    /// The module's name, its file name without `.ko`.
    pub name: String,
    /// The parameters it was loaded with, space separated.
    pub params: String,
    /// Guest time spent in `finit_module`.
    pub load_ns: u64,
}

/// The agent's greeting: the first frame on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The agent's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// `uname -r` of the guest.
    pub kernel_release: String,
    /// Processors online in the guest.
    pub cpus_online: u32,
    /// `current_clocksource` of the guest.
    pub clocksource: String,
    /// Guest CLOCK_BOOTTIME when the agent's `main` began.
    pub agent_started_ns: u64,
    /// Guest CLOCK_BOOTTIME when the greeting was sent.
    pub greeted_ns: u64,
    /// The modules the agent loaded, in load order.
    pub modules: Vec<ModuleLoad>,
}

/// One netlink datagram as a guest socket received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Netlink protocol (unit) of the socket.
    pub protocol: u32,
    /// `nl_groups` of the sender address: the group mask it was sent to.
    pub groups: u32,
    /// `nl_pid` of the sender address: 0 for the kernel.
    pub portid: u32,
    /// Guest CLOCK_MONOTONIC when the agent received it.
    pub monotonic_ns: u64,
    /// The datagram as received, its netlink header included if it has one.
    pub bytes: Vec<u8>,
}

/// A [`Datagram`]'s fields, borrowed: the agent encodes what it received
/// straight from its receive buffer, without an owned copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramRef<'a> {
    /// [`Datagram::protocol`].
    pub protocol: u32,
    /// [`Datagram::groups`].
    pub groups: u32,
    /// [`Datagram::portid`].
    pub portid: u32,
    /// [`Datagram::monotonic_ns`].
    pub monotonic_ns: u64,
    /// [`Datagram::bytes`].
    pub bytes: &'a [u8],
}

impl DatagramRef<'_> {
    /// protocol, groups, portid, monotonic_ns and the length of bytes.
    const FIXED_FIELDS_LEN: usize = 4 + 4 + 4 + 8 + 4;

    /// The complete [`GuestMessage::Datagram`] frame, in a buffer of its
    /// exact size. [`GuestMessage::encode`] encodes datagrams through this.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(GUEST_DATAGRAM, Self::FIXED_FIELDS_LEN + self.bytes.len());
        e.u32(self.protocol).u32(self.groups).u32(self.portid).u64(self.monotonic_ns).bytes(self.bytes);
        e.finish()
    }
}

/// One D-Bus message the guest's bus monitor saw, as marshalled on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbusMessage {
    /// Guest CLOCK_MONOTONIC when the monitor received it.
    pub monotonic_ns: u64,
    /// The message's bytes: header, fields and body, as the bus sent them.
    pub bytes: Vec<u8>,
}

impl DbusMessage {
    /// The largest message a frame carries: the bus allows 128 MiB, a
    /// frame [`crate::MAX_FRAME_LEN`] with the kind, the time and the
    /// bytes' length.
    pub const MAX_BYTES: usize = crate::MAX_FRAME_LEN - 1 - 8 - 4;
}

/// A program of the guest's D-Bus side (dbus-daemon, kdbusd, the relay)
/// that ended or failed while the run needed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    /// The program's name.
    pub program: String,
    /// How it ended ("killed by signal 9", "exited with code 1"), or
    /// "running" if it is alive but failed its part.
    pub status: String,
    /// The end of what it wrote to stderr: its last words.
    pub last_words: Vec<u8>,
}

/// How a program run by the agent ended, and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// The program as the request named it.
    pub program: String,
    /// Exit code, or -1 if it was killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// What it wrote to stdout: the first [`crate::MAX_OUTPUT_BYTES`]
    /// ([`crate::MAX_BACKGROUND_OUTPUT_BYTES`] in the background), then a
    /// line saying how much was cut, if any was.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr, kept and cut alike.
    pub stderr: Vec<u8>,
}

/// What a request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out; nothing to return.
    Done,
    /// The bytes of a file read.
    Data(Vec<u8>),
    /// The result of a program run to its end.
    Exec(ExecResult),
    /// The results of every background program, in start order.
    Background(Vec<ExecResult>),
    /// The request failed in the guest.
    Error {
        /// The errno of the system call that failed, 0 if none applies.
        errno: i32,
        /// What failed, and why.
        message: String,
    },
}

/// Where the agent was when it failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStage {
    /// Mounting the kernel filesystems.
    Mount,
    /// Finding or opening its virtio-serial port.
    Port,
    /// Loading the events modules.
    ModuleLoad,
    /// Opening the netlink sockets, or the capture thread relaying them.
    Capture,
    /// Sending the greeting.
    Greet,
    /// Carrying out the host's requests.
    Serve,
    /// A panic, wherever it happened.
    Panic,
    /// Starting the D-Bus side: dbus-daemon, kdbusd, the agent's bus
    /// connections, the relay.
    Dbus,
}

impl AgentStage {
    /// Every stage, in the order of their wire values (boot order, then
    /// `Panic`, then `Dbus`, which came later).
    pub const ALL: [AgentStage; 8] = [
        AgentStage::Mount,
        AgentStage::Port,
        AgentStage::ModuleLoad,
        AgentStage::Capture,
        AgentStage::Greet,
        AgentStage::Serve,
        AgentStage::Panic,
        AgentStage::Dbus,
    ];

    /// The stage's byte on the wire.
    fn code(self) -> u8 {
        match self {
            AgentStage::Mount => 0,
            AgentStage::Port => 1,
            AgentStage::ModuleLoad => 2,
            AgentStage::Capture => 3,
            AgentStage::Greet => 4,
            AgentStage::Serve => 5,
            AgentStage::Panic => 6,
            AgentStage::Dbus => 7,
        }
    }

    fn from_code(code: u8) -> Option<AgentStage> {
        AgentStage::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for AgentStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentStage::Mount => "mount",
            AgentStage::Port => "port",
            AgentStage::ModuleLoad => "module load",
            AgentStage::Capture => "capture",
            AgentStage::Greet => "greeting",
            AgentStage::Serve => "serve",
            AgentStage::Panic => "panic",
            AgentStage::Dbus => "D-Bus start",
        })
    }
}

/// Messages from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    /// The greeting, first on the channel.
    Hello(Hello),
    /// The agent hit an error it cannot recover from; it restarts the
    /// machine next.
    Fatal {
        /// What it was doing.
        stage: AgentStage,
        /// The errno of the system call that failed, 0 if none applies.
        errno: i32,
        /// What failed, and why.
        message: String,
    },
    /// A netlink datagram a capture socket received.
    Datagram(Datagram),
    /// A capture socket overflowed (ENOBUFS): datagrams were lost.
    Overrun {
        /// Netlink protocol of the socket.
        protocol: u32,
        /// How many times that socket has overflowed so far.
        occurrences: u32,
    },
    /// A message the guest's system bus carried, seen by the monitor.
    Dbus(DbusMessage),
    /// The guest's D-Bus side failed: a program died, or kdbusd could not
    /// answer a fence. The run cannot go on with the bus channel it asked for.
    ServicesFailed {
        /// What failed first, in words.
        why: String,
        /// Every program of the D-Bus side that had ended or failed by the
        /// time the agent reported, the bus daemon first.
        services: Vec<ServiceFailure>,
    },
    /// The answer to a request; for every request the reply comes after all
    /// datagrams received before the request finished (and, with the bus
    /// channel, after every D-Bus message kdbusd sent for them).
    Reply {
        /// The request's id.
        id: u32,
        /// What it came to.
        outcome: Outcome,
    },
}

/// What the host asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Give `cpu` (or its package) the register image `value` and raise the
    /// thermal interrupt there, through the debugfs trigger.
    Inject {
        /// The package register rather than the core's.
        package: bool,
        /// The CPU the interrupt is raised on.
        cpu: u32,
        /// The register image.
        value: u64,
    },
    /// Return a file's bytes, at most [`crate::MAX_READ_BYTES`]: a larger
    /// file is refused (EFBIG).
    ReadFile {
        /// Absolute path in the guest.
        path: String,
    },
    /// Write `data` to a file in one write(2), an empty write included.
    WriteFile {
        /// Absolute path in the guest.
        path: String,
        /// The bytes, exactly as given.
        data: Vec<u8>,
    },
    /// Sleep in the agent before replying.
    Sleep {
        /// How long, in nanoseconds.
        ns: u64,
    },
    /// Run a program of the initramfs; `background` returns at once and the
    /// result comes with [`Command::FinishBackground`].
    Exec {
        /// Path of the program in the guest.
        program: String,
        /// Its arguments, without the program name.
        args: Vec<String>,
        /// Start it and return at once rather than wait for it.
        background: bool,
    },
    /// Stop the background programs still running and report all of them.
    FinishBackground,
    /// Reply once every datagram received so far has been sent.
    Fence,
    /// Return what a file has to give now, without waiting for more: open
    /// it non-blocking, seek to `offset` (if not 0), and read until the end
    /// of the file, until it would block, or until `max` bytes (at most
    /// [`crate::MAX_READ_BYTES`]). Reads of a file larger than a frame
    /// take one request per chunk; a pipe-like file (`trace_pipe`) is
    /// drained by asking again until a reply is empty.
    ReadChunk {
        /// Absolute path in the guest.
        path: String,
        /// Where to start, in bytes; 0 reads from where the file opens.
        offset: u64,
        /// The most bytes to return.
        max: u32,
    },
    /// Stop kdbusd (and wait until it is gone from the bus), or start it
    /// again (and wait until it owns its name).
    Kdbusd {
        /// Start it rather than stop it.
        start: bool,
    },
}

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// End the run: the agent restarts the machine, and QEMU exits.
    Shutdown,
    /// Carry out `command`; the reply names `id`.
    Request {
        /// Chosen by the host, echoed in the reply.
        id: u32,
        /// What to do.
        command: Command,
    },
}

const GUEST_HELLO: u8 = 0x01;
const GUEST_FATAL: u8 = 0x02;
const GUEST_DATAGRAM: u8 = 0x03;
const GUEST_OVERRUN: u8 = 0x04;
const GUEST_REPLY: u8 = 0x05;
const GUEST_DBUS: u8 = 0x06;
const GUEST_SERVICES_FAILED: u8 = 0x07;

const HOST_SHUTDOWN: u8 = 0x81;
const HOST_REQUEST: u8 = 0x82;

const OUTCOME_DONE: u8 = 0;
const OUTCOME_DATA: u8 = 1;
const OUTCOME_EXEC: u8 = 2;
const OUTCOME_BACKGROUND: u8 = 3;
const OUTCOME_ERROR: u8 = 4;

const COMMAND_INJECT: u8 = 0;
const COMMAND_READ_FILE: u8 = 1;
const COMMAND_WRITE_FILE: u8 = 2;
const COMMAND_SLEEP: u8 = 3;
const COMMAND_EXEC: u8 = 4;
const COMMAND_FINISH_BACKGROUND: u8 = 5;
const COMMAND_FENCE: u8 = 6;
const COMMAND_READ_CHUNK: u8 = 7;
const COMMAND_KDBUSD: u8 = 8;

fn encode_exec(e: &mut Encoder, r: &ExecResult) {
    e.str(&r.program).i32(r.exit_code).i32(r.signal).bytes(&r.stdout).bytes(&r.stderr);
}

fn decode_exec(d: &mut Decoder<'_>) -> Result<ExecResult, WireError> {
    Ok(ExecResult {
        program: d.str("exec.program")?,
        exit_code: d.i32("exec.exit_code")?,
        signal: d.i32("exec.signal")?,
        stdout: d.bytes("exec.stdout")?,
        stderr: d.bytes("exec.stderr")?,
    })
}

impl GuestMessage {
    /// The complete frame, length prefix included.
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
                    .list(&h.modules, |e, m| {
                        e.str(&m.name).str(&m.params).u64(m.load_ns);
                    });
                e.finish()
            }
            GuestMessage::Fatal { stage, errno, message } => {
                let mut e = Encoder::new(GUEST_FATAL);
                e.u8(stage.code()).i32(*errno).str(message);
                e.finish()
            }
            GuestMessage::Datagram(g) => DatagramRef {
                protocol: g.protocol,
                groups: g.groups,
                portid: g.portid,
                monotonic_ns: g.monotonic_ns,
                bytes: &g.bytes,
            }
            .encode(),
            GuestMessage::Overrun { protocol, occurrences } => {
                let mut e = Encoder::new(GUEST_OVERRUN);
                e.u32(*protocol).u32(*occurrences);
                e.finish()
            }
            GuestMessage::Dbus(m) => {
                let mut e = Encoder::with_capacity(GUEST_DBUS, 12 + m.bytes.len());
                e.u64(m.monotonic_ns).bytes(&m.bytes);
                e.finish()
            }
            GuestMessage::ServicesFailed { why, services } => {
                let mut e = Encoder::new(GUEST_SERVICES_FAILED);
                e.str(why).list(services, |e, s| {
                    e.str(&s.program).str(&s.status).bytes(&s.last_words);
                });
                e.finish()
            }
            GuestMessage::Reply { id, outcome } => {
                let mut e = Encoder::new(GUEST_REPLY);
                e.u32(*id);
                match outcome {
                    Outcome::Done => {
                        e.u8(OUTCOME_DONE);
                    }
                    Outcome::Data(data) => {
                        e.u8(OUTCOME_DATA).bytes(data);
                    }
                    Outcome::Exec(r) => {
                        e.u8(OUTCOME_EXEC);
                        encode_exec(&mut e, r);
                    }
                    Outcome::Background(results) => {
                        e.u8(OUTCOME_BACKGROUND).list(results, encode_exec);
                    }
                    Outcome::Error { errno, message } => {
                        e.u8(OUTCOME_ERROR).i32(*errno).str(message);
                    }
                }
                e.finish()
            }
        }
    }

    /// The message of a frame's kind byte and body, as [`crate::read_frame`]
    /// returns them; strict: every field present, nothing left over.
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
                let modules = d.list("modules", |d| {
                    let name = d.str("modules.name")?;
                    let params = d.str("modules.params")?;
                    let load_ns = d.u64("modules.load_ns")?;
                    Ok(ModuleLoad { name, params, load_ns })
                })?;
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
                let code = d.u8("stage")?;
                let stage = AgentStage::from_code(code).ok_or_else(|| d.bad_value("stage", code.into()))?;
                let errno = d.i32("errno")?;
                let message = d.str("message")?;
                d.end()?;
                Ok(GuestMessage::Fatal { stage, errno, message })
            }
            GUEST_DATAGRAM => {
                let mut d = Decoder::new("Datagram", body);
                let datagram = Datagram {
                    protocol: d.u32("protocol")?,
                    groups: d.u32("groups")?,
                    portid: d.u32("portid")?,
                    monotonic_ns: d.u64("monotonic_ns")?,
                    bytes: d.bytes("bytes")?,
                };
                d.end()?;
                Ok(GuestMessage::Datagram(datagram))
            }
            GUEST_OVERRUN => {
                let mut d = Decoder::new("Overrun", body);
                let (protocol, occurrences) = (d.u32("protocol")?, d.u32("occurrences")?);
                d.end()?;
                Ok(GuestMessage::Overrun { protocol, occurrences })
            }
            GUEST_DBUS => {
                let mut d = Decoder::new("Dbus", body);
                let message = DbusMessage { monotonic_ns: d.u64("monotonic_ns")?, bytes: d.bytes("bytes")? };
                d.end()?;
                Ok(GuestMessage::Dbus(message))
            }
            GUEST_SERVICES_FAILED => {
                let mut d = Decoder::new("ServicesFailed", body);
                let why = d.str("why")?;
                let services = d.list("services", |d| {
                    Ok(ServiceFailure {
                        program: d.str("services.program")?,
                        status: d.str("services.status")?,
                        last_words: d.bytes("services.last_words")?,
                    })
                })?;
                d.end()?;
                Ok(GuestMessage::ServicesFailed { why, services })
            }
            GUEST_REPLY => {
                let mut d = Decoder::new("Reply", body);
                let id = d.u32("id")?;
                let outcome = match d.u8("outcome")? {
                    OUTCOME_DONE => Outcome::Done,
                    OUTCOME_DATA => Outcome::Data(d.bytes("data")?),
                    OUTCOME_EXEC => Outcome::Exec(decode_exec(&mut d)?),
                    OUTCOME_BACKGROUND => Outcome::Background(d.list("results", decode_exec)?),
                    OUTCOME_ERROR => Outcome::Error { errno: d.i32("errno")?, message: d.str("message")? },
                    other => return Err(d.bad_value("outcome", other.into())),
                };
                d.end()?;
                Ok(GuestMessage::Reply { id, outcome })
            }
            kind => Err(WireError::UnknownKind { direction: "agent-to-host", kind }),
        }
    }
}

impl HostMessage {
    /// The complete frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HostMessage::Shutdown => Encoder::new(HOST_SHUTDOWN).finish(),
            HostMessage::Request { id, command } => {
                let mut e = Encoder::new(HOST_REQUEST);
                e.u32(*id);
                match command {
                    Command::Inject { package, cpu, value } => {
                        e.u8(COMMAND_INJECT).bool(*package).u32(*cpu).u64(*value);
                    }
                    Command::ReadFile { path } => {
                        e.u8(COMMAND_READ_FILE).str(path);
                    }
                    Command::WriteFile { path, data } => {
                        e.u8(COMMAND_WRITE_FILE).str(path).bytes(data);
                    }
                    Command::Sleep { ns } => {
                        e.u8(COMMAND_SLEEP).u64(*ns);
                    }
                    Command::Exec { program, args, background } => {
                        e.u8(COMMAND_EXEC).str(program).bool(*background).list(args, |e, arg| {
                            e.str(arg);
                        });
                    }
                    Command::FinishBackground => {
                        e.u8(COMMAND_FINISH_BACKGROUND);
                    }
                    Command::Fence => {
                        e.u8(COMMAND_FENCE);
                    }
                    Command::ReadChunk { path, offset, max } => {
                        e.u8(COMMAND_READ_CHUNK).str(path).u64(*offset).u32(*max);
                    }
                    Command::Kdbusd { start } => {
                        e.u8(COMMAND_KDBUSD).bool(*start);
                    }
                }
                e.finish()
            }
        }
    }

    /// The message of a frame's kind byte and body, as [`crate::read_frame`]
    /// returns them; strict: every field present, nothing left over.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        match kind {
            HOST_SHUTDOWN => {
                Decoder::new("Shutdown", body).end()?;
                Ok(HostMessage::Shutdown)
            }
            HOST_REQUEST => {
                let mut d = Decoder::new("Request", body);
                let id = d.u32("id")?;
                let command = match d.u8("command")? {
                    COMMAND_INJECT => {
                        Command::Inject { package: d.bool("package")?, cpu: d.u32("cpu")?, value: d.u64("value")? }
                    }
                    COMMAND_READ_FILE => Command::ReadFile { path: d.str("path")? },
                    COMMAND_WRITE_FILE => Command::WriteFile { path: d.str("path")?, data: d.bytes("data")? },
                    COMMAND_SLEEP => Command::Sleep { ns: d.u64("ns")? },
                    COMMAND_EXEC => {
                        let program = d.str("program")?;
                        let background = d.bool("background")?;
                        let args = d.list("args", |d| d.str("args"))?;
                        Command::Exec { program, args, background }
                    }
                    COMMAND_FINISH_BACKGROUND => Command::FinishBackground,
                    COMMAND_FENCE => Command::Fence,
                    COMMAND_READ_CHUNK => {
                        Command::ReadChunk { path: d.str("path")?, offset: d.u64("offset")?, max: d.u32("max")? }
                    }
                    COMMAND_KDBUSD => Command::Kdbusd { start: d.bool("start")? },
                    other => return Err(d.bad_value("command", other.into())),
                };
                d.end()?;
                Ok(HostMessage::Request { id, command })
            }
            kind => Err(WireError::UnknownKind { direction: "host-to-agent", kind }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{read_frame, Encoder};

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
        for stage in AgentStage::ALL {
            let f = GuestMessage::Fatal { stage, errno: 2, message: "open /lib/modules/x.ko".into() };
            assert_eq!(round_trip_guest(&f), f);
        }
    }

    #[test]
    fn captured_traffic_and_replies_round_trip() {
        let exec = ExecResult {
            program: "/bin/listen".into(),
            exit_code: 3,
            signal: 0,
            stdout: b"out".to_vec(),
            stderr: b"err".to_vec(),
        };
        let messages = [
            GuestMessage::Datagram(Datagram {
                protocol: 31,
                groups: 4,
                portid: 0,
                monotonic_ns: 7,
                bytes: b"From: x\nSignal: high\n\0".to_vec(),
            }),
            GuestMessage::Overrun { protocol: 15, occurrences: 2 },
            GuestMessage::Dbus(DbusMessage { monotonic_ns: 8, bytes: b"l\x04\x01\x01\0\0\0\0".to_vec() }),
            GuestMessage::ServicesFailed {
                why: "kdbusd died".into(),
                services: vec![ServiceFailure {
                    program: "kdbusd".into(),
                    status: "killed by signal 9".into(),
                    last_words: b"kdbusd: ready\n".to_vec(),
                }],
            },
            GuestMessage::Reply { id: 1, outcome: Outcome::Done },
            GuestMessage::Reply { id: 2, outcome: Outcome::Data(vec![1, 2]) },
            GuestMessage::Reply { id: 3, outcome: Outcome::Exec(exec.clone()) },
            GuestMessage::Reply { id: 4, outcome: Outcome::Background(vec![exec.clone(), exec]) },
            GuestMessage::Reply { id: 5, outcome: Outcome::Error { errno: 22, message: "Invalid argument".into() } },
        ];
        for m in &messages {
            assert_eq!(&round_trip_guest(m), m);
        }
    }

    #[test]
    fn a_bus_message_of_max_bytes_fills_a_frame_and_one_byte_more_does_not_fit() {
        for (len, fits) in [(DbusMessage::MAX_BYTES, true), (DbusMessage::MAX_BYTES + 1, false)] {
            let frame = GuestMessage::Dbus(DbusMessage { monotonic_ns: 1, bytes: vec![b'l'; len] }).encode();
            let read = crate::read_frame(&mut &frame[..]);
            assert_eq!(read.is_ok(), fits, "{len} bytes: {:?}", read.as_ref().map(|_| ()));
        }
    }

    #[test]
    fn host_messages_round_trip() {
        let messages = [
            HostMessage::Shutdown,
            HostMessage::Request { id: 1, command: Command::Inject { package: true, cpu: 3, value: 0x8832_0001 } },
            HostMessage::Request { id: 2, command: Command::ReadFile { path: "/sys/x".into() } },
            HostMessage::Request { id: 3, command: Command::WriteFile { path: "/d".into(), data: b"0x0".to_vec() } },
            HostMessage::Request { id: 4, command: Command::Sleep { ns: 5_000_000 } },
            HostMessage::Request {
                id: 5,
                command: Command::Exec {
                    program: "/bin/x".into(),
                    args: vec!["a".into(), "".into()],
                    background: true,
                },
            },
            HostMessage::Request { id: 6, command: Command::FinishBackground },
            HostMessage::Request { id: 7, command: Command::Fence },
            HostMessage::Request {
                id: 8,
                command: Command::ReadChunk { path: "/sys/kernel/tracing/trace_pipe".into(), offset: 3, max: 65536 },
            },
            HostMessage::Request { id: 9, command: Command::Kdbusd { start: false } },
            HostMessage::Request { id: 10, command: Command::Kdbusd { start: true } },
        ];
        for m in &messages {
            let frame = m.encode();
            let (kind, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
            assert_eq!(&HostMessage::decode(kind, &body).unwrap(), m);
        }
    }

    /// Both sides share this crate, so a layout change would round-trip
    /// regardless: these bytes are written out from the documented layout
    /// (`u32` LE length, kind byte, fields LE, `u32` length or count first).
    #[test]
    fn encodings_are_pinned_to_the_documented_layout() {
        let datagram = GuestMessage::Datagram(Datagram {
            protocol: 31,
            groups: 4,
            portid: 0x1122_3344,
            monotonic_ns: 0x0102_0304_0506_0708,
            bytes: b"ab".to_vec(),
        });
        #[rustfmt::skip]
        let expected: &[u8] = &[
            27, 0, 0, 0,                // frame length: kind + 26 bytes of fields
            0x03,                       // kind: Datagram
            31, 0, 0, 0,                // protocol
            4, 0, 0, 0,                 // groups
            0x44, 0x33, 0x22, 0x11,     // portid
            8, 7, 6, 5, 4, 3, 2, 1,     // monotonic_ns
            2, 0, 0, 0, b'a', b'b',     // bytes
        ];
        assert_eq!(datagram.encode(), expected);
        assert_eq!(GuestMessage::decode(expected[4], &expected[5..]).unwrap(), datagram);

        let request = HostMessage::Request {
            id: 0x0a0b_0c0d,
            command: Command::Exec { program: "/x".into(), args: vec!["a".into(), "".into()], background: true },
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            26, 0, 0, 0,                // frame length: kind + 25 bytes of fields
            0x82,                       // kind: Request
            0x0d, 0x0c, 0x0b, 0x0a,     // id
            4,                          // command: Exec
            2, 0, 0, 0, b'/', b'x',     // program
            1,                          // background
            2, 0, 0, 0,                 // args: count
            1, 0, 0, 0, b'a',           // args[0]
            0, 0, 0, 0,                 // args[1], empty
        ];
        assert_eq!(request.encode(), expected);
        assert_eq!(HostMessage::decode(expected[4], &expected[5..]).unwrap(), request);

        let fatal = GuestMessage::Fatal { stage: AgentStage::ModuleLoad, errno: 16, message: "kmessage".into() };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            18, 0, 0, 0,                // frame length: kind + 17 bytes of fields
            0x02,                       // kind: Fatal
            2,                          // stage: module load
            16, 0, 0, 0,                // errno: EBUSY
            8, 0, 0, 0,                 // message
            b'k', b'm', b'e', b's', b's', b'a', b'g', b'e',
        ];
        assert_eq!(fatal.encode(), expected);
        assert_eq!(GuestMessage::decode(expected[4], &expected[5..]).unwrap(), fatal);
    }

    #[test]
    fn every_stage_has_its_own_byte_and_an_unknown_one_is_named() {
        let codes: Vec<u8> = AgentStage::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7], "stage bytes are the protocol: never renumber one");
        let mut e = Encoder::new(GUEST_FATAL);
        e.u8(8).i32(0).str("x");
        let frame = e.finish();
        let err = GuestMessage::decode(frame[4], &frame[5..]).unwrap_err().to_string();
        assert_eq!(err, "Fatal: field `stage` has invalid value 8");
    }

    #[test]
    fn every_truncation_of_a_fatal_is_an_error_not_a_panic() {
        let frame = GuestMessage::Fatal { stage: AgentStage::Serve, errno: 5, message: "read".into() }.encode();
        let body = &frame[5..];
        for cut in 0..body.len() {
            assert!(GuestMessage::decode(frame[4], &body[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = body.to_vec();
        long.push(0);
        assert!(matches!(
            GuestMessage::decode(frame[4], &long),
            Err(WireError::TrailingBytes { message: "Fatal", count: 1 })
        ));
    }

    #[test]
    fn a_borrowed_datagram_encodes_as_the_owned_one_without_spare_room() {
        let bytes = b"add@/devices/virtual/thermal\0ACTION=add\0".to_vec();
        let owned = Datagram { protocol: 15, groups: 1, portid: 0, monotonic_ns: 123, bytes: bytes.clone() };
        let borrowed = DatagramRef { protocol: 15, groups: 1, portid: 0, monotonic_ns: 123, bytes: &bytes };
        let frame = borrowed.encode();
        assert_eq!(frame, GuestMessage::Datagram(owned).encode());
        assert_eq!(frame.len(), 4 + 1 + DatagramRef::FIXED_FIELDS_LEN + bytes.len());
        assert_eq!(frame.capacity(), frame.len(), "sized once, never grown");
    }

    #[test]
    fn an_unknown_command_or_outcome_is_named() {
        let mut e = Encoder::new(HOST_REQUEST);
        e.u32(1).u8(0x77);
        let frame = e.finish();
        let err = HostMessage::decode(frame[4], &frame[5..]).unwrap_err().to_string();
        assert_eq!(err, "Request: field `command` has invalid value 119");
        let mut e = Encoder::new(GUEST_REPLY);
        e.u32(1).u8(0x66);
        let frame = e.finish();
        let err = GuestMessage::decode(frame[4], &frame[5..]).unwrap_err().to_string();
        assert_eq!(err, "Reply: field `outcome` has invalid value 102");
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
