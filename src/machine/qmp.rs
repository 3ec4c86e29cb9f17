//! QEMU's machine protocol (QMP), asked one thing: does the guest run? A
//! debugger holding the guest (gdbstub at a breakpoint, `-S` before the
//! first instruction) stops it, and the host's waits must not count that
//! time: [`PauseClock`] adds it up, from QMP's STOP and RESUME events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The guest's stopped time, as QEMU reports it.
#[derive(Debug, Default)]
pub struct PauseClock {
    state: Mutex<PauseState>,
}

#[derive(Debug, Default)]
struct PauseState {
    stopped_since: Option<Instant>,
    stopped_before: Duration,
}

impl PauseClock {
    /// All the time the guest has been stopped so far, the current stop
    /// included.
    pub fn stopped_total(&self) -> Duration {
        let state = self.state.lock().unwrap();
        state.stopped_before + state.stopped_since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Whether the guest is stopped now.
    #[cfg(test)]
    fn is_stopped(&self) -> bool {
        self.state.lock().unwrap().stopped_since.is_some()
    }

    fn stop(&self) {
        let mut state = self.state.lock().unwrap();
        state.stopped_since.get_or_insert_with(Instant::now);
    }

    fn resume(&self) {
        let mut state = self.state.lock().unwrap();
        if let Some(since) = state.stopped_since.take() {
            state.stopped_before += since.elapsed();
        }
    }
}

/// Negotiates QMP on `stream` (bounded by `bound`), asks whether the
/// guest runs, and starts the thread that follows its STOP and RESUME
/// events for as long as QEMU runs.
pub fn watch(stream: UnixStream, bound: Duration) -> std::io::Result<Arc<PauseClock>> {
    stream.set_read_timeout(Some(bound))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let clock = Arc::new(PauseClock::default());
    // The greeting, then the capabilities handshake, then the status.
    next_message(&mut reader)?;
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")?;
    let mut replies = 0;
    while replies < 2 {
        let message = next_message(&mut reader)?;
        if let Some(reply) = message.get("return") {
            replies += 1;
            if reply.get("running") == Some(&Value::Bool(false)) {
                clock.stop();
            }
        } else if let Some(error) = message.get("error") {
            return Err(std::io::Error::other(format!("QMP refused a request: {error}")));
        } else {
            follow(&clock, &message);
        }
    }
    reader.get_ref().set_read_timeout(None)?;
    let watched = Arc::clone(&clock);
    thread::spawn(move || {
        // Ends with QEMU, which closes the socket.
        while let Ok(message) = next_message(&mut reader) {
            follow(&watched, &message);
        }
    });
    Ok(clock)
}

fn follow(clock: &PauseClock, message: &Value) {
    match message.get("event").and_then(Value::as_str) {
        Some("STOP") => clock.stop(),
        Some("RESUME") => clock.resume(),
        _ => {}
    }
}

/// One JSON object of QMP's stream (one a line).
fn next_message(reader: &mut impl BufRead) -> std::io::Result<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP closed"));
        }
        if !line.trim().is_empty() {
            return serde_json::from_str(&line).map_err(std::io::Error::other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_time_adds_up_across_stops_and_counts_the_current_one() {
        let clock = PauseClock::default();
        assert_eq!(clock.stopped_total(), Duration::ZERO);
        clock.stop();
        std::thread::sleep(Duration::from_millis(20));
        clock.stop();
        assert!(clock.is_stopped());
        let during = clock.stopped_total();
        assert!(during >= Duration::from_millis(20), "{during:?}");
        clock.resume();
        assert!(!clock.is_stopped());
        let after = clock.stopped_total();
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(clock.stopped_total(), after, "a running guest adds nothing");
    }

    #[test]
    fn the_handshake_reads_the_status_and_events_follow() {
        let (host, mut qemu) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            qemu.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").unwrap();
            let mut requests = BufReader::new(qemu.try_clone().unwrap());
            let mut line = String::new();
            requests.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            qemu.write_all(b"{\"return\": {}}\r\n").unwrap();
            line.clear();
            requests.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"), "{line}");
            qemu.write_all(b"{\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}}\r\n")
                .unwrap();
            qemu
        });
        let clock = watch(host, Duration::from_secs(5)).unwrap();
        let mut qemu = server.join().unwrap();
        assert!(clock.is_stopped(), "-S: stopped before the first instruction");
        qemu.write_all(b"{\"timestamp\": {}, \"event\": \"RESUME\"}\r\n").unwrap();
        crate::wait::until(Duration::from_secs(5), Duration::from_millis(1), || (!clock.is_stopped()).then_some(()))
            .expect("RESUME is followed");
        qemu.write_all(b"{\"timestamp\": {}, \"event\": \"STOP\"}\r\n").unwrap();
        crate::wait::until(Duration::from_secs(5), Duration::from_millis(1), || clock.is_stopped().then_some(()))
            .expect("STOP is followed");
    }
}
