//! The host's requests, carried out in the guest.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command as Process, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::capture::Fence;
use crate::services::Services;
use kevent_wire::{
    Command, ExecResult, Outcome, MAX_BACKGROUND_OUTPUT_BYTES, MAX_BACKGROUND_PROGRAMS, MAX_OUTPUT_BYTES,
    MAX_READ_BYTES, READ_CHUNK_BYTES,
};

/// The debugfs trigger of the events module: `core|package <cpu> <hex>`.
const TRIGGER: &str = "/sys/kernel/debug/kevent_thermal/trigger";
/// How long a background program gets to exit after SIGTERM.
const TERMINATE_GRACE: Duration = Duration::from_secs(1);

/// Programs started in the background, with their output collectors.
#[derive(Default)]
pub struct Background {
    running: Vec<BackgroundProgram>,
}

struct BackgroundProgram {
    program: String,
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

fn error(e: io::Error, context: &str) -> Outcome {
    Outcome::Error { errno: e.raw_os_error().unwrap_or(0), message: format!("{context}: {e}") }
}

/// Carries out one request; a failure is its outcome, never the agent's.
pub fn execute(command: Command, background: &mut Background) -> Outcome {
    match command {
        Command::Inject { package, cpu, value } => {
            let register = if package { "package" } else { "core" };
            let line = format!("{register} {cpu} {value:#x}");
            match fs::write(TRIGGER, &line) {
                Ok(()) => Outcome::Done,
                Err(e) => error(e, &format!("write \"{line}\" to {TRIGGER}")),
            }
        }
        Command::ReadFile { path } => read_bounded(&path),
        Command::WriteFile { path, data } => match write_once(&path, &data) {
            Ok(()) => Outcome::Done,
            Err(e) => error(e, &format!("write {path}")),
        },
        Command::Sleep { ns } => {
            thread::sleep(Duration::from_nanos(ns));
            Outcome::Done
        }
        Command::Exec { program, args, background: false } => match run(&program, &args) {
            Ok(result) => Outcome::Exec(result),
            Err(e) => error(e, &format!("run {program}")),
        },
        Command::Exec { program, args, background: true } => match background.start(&program, &args) {
            Ok(()) => Outcome::Done,
            Err(e) => error(e, &format!("start {program}")),
        },
        Command::FinishBackground => Outcome::Background(background.finish()),
        Command::Fence => Outcome::Done,
        Command::ReadChunk { path, offset, max } => match read_chunk(&path, offset, max) {
            Ok(data) => Outcome::Data(data),
            Err(e) => error(e, &format!("read {path} from byte {offset}")),
        },
        Command::Kdbusd { .. } => no_dbus(),
    }
}

/// A request for the D-Bus side in a run without one.
pub fn no_dbus() -> Outcome {
    Outcome::Error {
        errno: Errno::ENOTSUP as i32,
        message: "this run has no D-Bus side (the scenario's [machine] dbus is false)".into(),
    }
}

/// Stops or starts kdbusd, and the fence its reply waits for: a stopped
/// kdbusd's name gone from the bus, a started one's `Sync` answered.
pub fn kdbusd(services: &Services, start: bool) -> (Outcome, Fence) {
    let running = services.kdbusd_running();
    if start == running {
        let message = if running { "kdbusd runs already" } else { "kdbusd is stopped already" };
        let errno = if running { Errno::EALREADY } else { Errno::ESRCH };
        return (Outcome::Error { errno: errno as i32, message: message.into() }, Fence::Netlink);
    }
    if start {
        match services.start_kdbusd() {
            Ok(()) => (Outcome::Done, Fence::Sync),
            Err(e) => (Outcome::Error { errno: e.errno(), message: format!("start kdbusd: {e}") }, Fence::Netlink),
        }
    } else {
        match services.stop_kdbusd() {
            Ok(()) => (Outcome::Done, Fence::KdbusdGone),
            Err(e) => (error(e, "stop kdbusd"), Fence::Netlink),
        }
    }
}

/// What `path` gives now from `offset`, at most `max` bytes (and at most
/// [`MAX_READ_BYTES`]): reads until the end, until a read would block, or
/// until no whole [`READ_CHUNK_BYTES`] read fits (one read of `max` bytes
/// if `max` is smaller).
fn read_chunk(path: &str, offset: u64, max: u32) -> io::Result<Vec<u8>> {
    let max = usize::try_from(max).unwrap_or(usize::MAX).min(MAX_READ_BYTES);
    let mut file = fs::OpenOptions::new().read(true).custom_flags(OFlag::O_NONBLOCK.bits()).open(path)?;
    if offset != 0 {
        file.seek(SeekFrom::Start(offset))?;
    }
    let step = READ_CHUNK_BYTES.min(max);
    let mut data = Vec::new();
    let mut buffer = vec![0; step];
    while step > 0 && max - data.len() >= step {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(data)
}

/// One write(2) of exactly `data`, an empty one included: the file sees the
/// bytes as given (fs::write would not call write(2) at all for no data, and
/// would retry a short write with the rest).
fn write_once(path: &str, data: &[u8]) -> io::Result<()> {
    let written = fs::File::create(path)?.write(data)?;
    if written != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, format!("wrote {written} of {} bytes", data.len())));
    }
    Ok(())
}

/// The file's bytes, at most [`MAX_READ_BYTES`]: a larger file is refused
/// (EFBIG), not cut or sent in a frame the host would refuse.
fn read_bounded(path: &str) -> Outcome {
    let mut data = Vec::new();
    let read = fs::File::open(path).and_then(|f| f.take(MAX_READ_BYTES as u64 + 1).read_to_end(&mut data));
    match read {
        Err(e) => error(e, &format!("read {path}")),
        Ok(n) if n > MAX_READ_BYTES => Outcome::Error {
            errno: Errno::EFBIG as i32,
            message: format!("read {path}: more than {MAX_READ_BYTES} bytes, the most a read step returns"),
        },
        Ok(_) => Outcome::Data(data),
    }
}

fn spawn(program: &str, args: &[String]) -> io::Result<Child> {
    crate::reaper::spawn(
        Process::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()),
    )
}

/// Reads a program's stream to its end and keeps the first `keep` bytes,
/// then a line saying how much was cut: the program never blocks on a
/// full pipe, and its result always fits in a frame.
fn collect(pipe: impl Read + Send + 'static, keep: usize) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let mut pipe = pipe;
        let _ = (&mut pipe).take(keep as u64).read_to_end(&mut out);
        let rest = io::copy(&mut pipe, &mut io::sink()).unwrap_or(0);
        if rest > 0 {
            out.extend_from_slice(
                format!("\n[kevent-agent: {rest} more bytes cut after the first {keep}]\n").as_bytes(),
            );
        }
        out
    })
}

fn result(program: &str, status: std::process::ExitStatus, stdout: Vec<u8>, stderr: Vec<u8>) -> ExecResult {
    use std::os::unix::process::ExitStatusExt;
    ExecResult {
        program: program.to_owned(),
        exit_code: status.code().unwrap_or(-1),
        signal: status.signal().unwrap_or(0),
        stdout,
        stderr,
    }
}

fn run(program: &str, args: &[String]) -> io::Result<ExecResult> {
    let mut child = spawn(program, args)?;
    let stdout = collect(child.stdout.take().expect("piped"), MAX_OUTPUT_BYTES);
    let stderr = collect(child.stderr.take().expect("piped"), MAX_OUTPUT_BYTES);
    let status = child.wait();
    // Waited for, or the wait failed (the pid is then no longer this
    // child's): either way no more the agent's own.
    crate::reaper::waited(&child);
    Ok(result(program, status?, stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default()))
}

impl Background {
    fn start(&mut self, program: &str, args: &[String]) -> io::Result<()> {
        if self.running.len() >= MAX_BACKGROUND_PROGRAMS {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{MAX_BACKGROUND_PROGRAMS} programs run in the background already, the most at once"),
            ));
        }
        let mut child = spawn(program, args)?;
        let stdout = collect(child.stdout.take().expect("piped"), MAX_BACKGROUND_OUTPUT_BYTES);
        let stderr = collect(child.stderr.take().expect("piped"), MAX_BACKGROUND_OUTPUT_BYTES);
        self.running.push(BackgroundProgram { program: program.to_owned(), child, stdout, stderr });
        Ok(())
    }

    /// Kills every program still running, at once: no wait, no results.
    pub fn kill(&mut self) {
        for p in &mut self.running {
            // Nothing to do on an error: the restart ends it all the same.
            let _ = p.child.kill();
        }
    }

    /// Asks every program still running to stop (SIGTERM, then SIGKILL after
    /// a grace period) and reports them all, in start order.
    fn finish(&mut self) -> Vec<ExecResult> {
        for p in &mut self.running {
            if matches!(p.child.try_wait(), Ok(None)) {
                // The child is ours and not yet reaped, so its pid is still
                // its own; an error means it has exited already, and the wait
                // below collects it.
                if let Ok(pid) = i32::try_from(p.child.id()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + TERMINATE_GRACE;
        self.running
            .drain(..)
            .map(|mut p| {
                let left = deadline.saturating_duration_since(Instant::now());
                let exited =
                    crate::sys::wait_until(left, Duration::from_millis(5), || p.child.try_wait().ok().flatten());
                let status = exited.unwrap_or_else(|| {
                    let _ = p.child.kill();
                    p.child.wait().expect("wait for a killed child")
                });
                crate::reaper::waited(&p.child);
                let stdout = p.stdout.join().unwrap_or_default();
                let stderr = p.stderr.join().unwrap_or_default();
                result(&p.program, status, stdout, stderr)
            })
            .collect()
    }
}
