//! The agent's one error: every failure it cannot recover from, as the host
//! receives it in [`GuestMessage::Fatal`].

use std::fmt;
use std::io;

use kevent_wire::{AgentStage, GuestMessage, WireError};
use nix::errno::Errno;

/// A failure that ends the run: where, the errno if a system call gave one,
/// and what the agent was doing.
#[derive(Debug)]
pub struct AgentError {
    stage: AgentStage,
    errno: Option<Errno>,
    message: String,
}

impl AgentError {
    /// A failure no system call reported.
    pub fn new(stage: AgentStage, message: impl Into<String>) -> AgentError {
        AgentError { stage, errno: None, message: message.into() }
    }

    /// `doing` failed with `e`. An errno is kept apart and the message takes
    /// its description only: io::Error's "(os error N)" would say it twice.
    pub fn io(stage: AgentStage, doing: impl fmt::Display, e: &io::Error) -> AgentError {
        match e.raw_os_error().map(Errno::from_raw) {
            Some(errno) => AgentError { stage, errno: Some(errno), message: format!("{doing}: {}", errno.desc()) },
            None => AgentError::new(stage, format!("{doing}: {e}")),
        }
    }

    /// `doing` failed on the channel to the host.
    pub fn wire(stage: AgentStage, doing: impl fmt::Display, e: &WireError) -> AgentError {
        match e {
            WireError::Io(e) => AgentError::io(stage, doing, e),
            e => AgentError::new(stage, format!("{doing}: {e}")),
        }
    }

    /// The same failure, with a hint where to look appended to its message.
    pub fn hint(mut self, hint: &str) -> AgentError {
        self.message.push_str("; ");
        self.message.push_str(hint);
        self
    }

    /// The errno, 0 if no system call gave one.
    pub fn errno(&self) -> i32 {
        self.errno.map_or(0, |e| e as i32)
    }

    /// The failure as the host receives it.
    pub fn to_message(&self) -> GuestMessage {
        GuestMessage::Fatal {
            stage: self.stage,
            errno: self.errno.map_or(0, |e| e as i32),
            message: self.message.clone(),
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.stage)?;
        if let Some(errno) = self.errno {
            write!(f, " ({errno:?})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for AgentError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_keeps_its_errno_apart_from_the_message() {
        let e = AgentError::io(AgentStage::ModuleLoad, "load module kmessage", &io::Error::from_raw_os_error(16))
            .hint("the kernel log above says why");
        assert_eq!(
            e.to_string(),
            "module load (EBUSY): load module kmessage: Device or resource busy; the kernel log above says why"
        );
        let GuestMessage::Fatal { stage, errno, message } = e.to_message() else { panic!() };
        assert_eq!((stage, errno), (AgentStage::ModuleLoad, 16));
        assert_eq!(message, "load module kmessage: Device or resource busy; the kernel log above says why");
    }

    #[test]
    fn an_error_without_an_errno_sends_errno_0() {
        let e = AgentError::wire(
            AgentStage::Serve,
            "bad message from host",
            &WireError::TrailingBytes { message: "Shutdown", count: 1 },
        );
        assert_eq!(e.to_string(), "serve: bad message from host: Shutdown: 1 unexpected bytes after the last field");
        assert!(matches!(e.to_message(), GuestMessage::Fatal { errno: 0, .. }));
        let e = AgentError::io(AgentStage::Capture, "receive", &io::Error::other("a datagram exceeded 65536 bytes"));
        assert!(matches!(e.to_message(), GuestMessage::Fatal { errno: 0, .. }));
        assert_eq!(e.to_string(), "capture: receive: a datagram exceeded 65536 bytes");
    }

    #[test]
    fn an_error_of_the_channel_keeps_the_errno_of_the_stream() {
        let e = AgentError::wire(AgentStage::Serve, "read from host", &WireError::Io(io::Error::from_raw_os_error(5)));
        assert!(matches!(e.to_message(), GuestMessage::Fatal { stage: AgentStage::Serve, errno: 5, .. }));
    }
}
