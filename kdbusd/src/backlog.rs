//! What the bus holds for a connection that does not keep up: the line
//! `kevent-dbus-tap backlog` prints in the guest, per connection, and the
//! host reads back. One format, written and read here.

use std::fmt;

/// A connection the bus held messages for that it had not written to the
/// connection's socket yet: a subscriber that does not keep up. From
/// dbus-daemon's own accounting (`org.freedesktop.DBus.Debug.Stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The connection's unique name (`:1.3`).
    pub name: String,
    /// Its process, as the bus knows it; `None` if the bus would not say.
    pub pid: Option<u32>,
    /// Its process's command (`/proc/PID/comm`), `?` if unknown.
    pub command: String,
    /// Messages the bus holds for it.
    pub messages: u64,
    /// Their bytes, as the bus counts them.
    pub bytes: u64,
    /// The most bytes it ever held for it.
    pub peak_bytes: u64,
}

impl Backlog {
    /// The line: name, pid (`?` if unknown), command, messages, bytes and
    /// peak bytes, tab-separated. A command's control characters (a
    /// process may name itself anything) become `?`, so that a line stays
    /// one line of six fields.
    pub fn line(&self) -> String {
        let pid = self.pid.map_or_else(|| "?".to_owned(), |pid| pid.to_string());
        let command: String = self.command.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        format!("{}\t{pid}\t{command}\t{}\t{}\t{}", self.name, self.messages, self.bytes, self.peak_bytes)
    }

    /// Every line of `text`, as [`Backlog::line`] wrote them.
    pub fn parse_all(text: &str) -> Result<Vec<Backlog>, String> {
        text.lines()
            .map(|line| {
                let bad = || format!("not a backlog line: {line:?}");
                let fields: Vec<&str> = line.split('\t').collect();
                let [name, pid, command, messages, bytes, peak] = fields[..] else { return Err(bad()) };
                let number = |text: &str| text.parse::<u64>().map_err(|_| bad());
                Ok(Backlog {
                    name: name.to_owned(),
                    pid: if pid == "?" { None } else { Some(pid.parse().map_err(|_| bad())?) },
                    command: command.to_owned(),
                    messages: number(messages)?,
                    bytes: number(bytes)?,
                    peak_bytes: number(peak)?,
                })
            })
            .collect()
    }
}

impl fmt::Display for Backlog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = self.pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
        write!(
            f,
            "as the run ended, the guest's bus held {} message(s), {} bytes, for {} ({pid}, {}) that its socket had \
             not taken: a subscriber that does not keep up (docs/dbus.md)",
            self.messages, self.bytes, self.name, self.command
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled() -> Backlog {
        Backlog {
            name: ":1.3".into(),
            pid: Some(57),
            command: "kevent-dbus-tap".into(),
            messages: 1924,
            bytes: 2062968,
            peak_bytes: 2062968,
        }
    }

    #[test]
    fn lines_read_back_as_written_even_from_a_command_with_tabs_and_newlines() {
        let unknown =
            Backlog { name: ":1.9".into(), pid: None, command: "?".into(), messages: 1, bytes: 300, peak_bytes: 900 };
        let odd = Backlog { command: "a\tb\nc".into(), ..stalled() };
        let text = [stalled(), unknown.clone(), odd].map(|b| b.line() + "\n").concat();
        assert_eq!(text.lines().count(), 3, "{text:?}");
        let read = Backlog::parse_all(&text).unwrap();
        assert_eq!(read, [stalled(), unknown, Backlog { command: "a?b?c".into(), ..stalled() }]);
        assert_eq!(Backlog::parse_all(""), Ok(vec![]));
    }

    #[test]
    fn anything_else_is_refused_naming_the_line() {
        for bad in [":1.3\t57\tx\t1\t2", ":1.3\t57\tx\t1\t2\t3\t4", ":1.3\tpid\tx\t1\t2\t3", ":1.3\t5\tx\t-1\t2\t3"] {
            let error = Backlog::parse_all(bad).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn it_says_what_the_bus_held_for_whom() {
        let text = stalled().to_string();
        assert!(text.contains("1924 message(s), 2062968 bytes, for :1.3 (pid 57, kevent-dbus-tap)"), "{text}");
        let text = Backlog { pid: None, ..stalled() }.to_string();
        assert!(text.contains("(pid unknown, kevent-dbus-tap)"), "{text}");
    }
}
