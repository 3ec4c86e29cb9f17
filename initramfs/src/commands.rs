//! The host's requests, carried out in the guest.

use std::fs;
use std::io::{self, Read, Write};
use std::process::{Child, Command as Process, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kevent_wire::{Command, ExecResult, Outcome};

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
        Command::ReadFile { path } => match fs::read(&path) {
            Ok(data) => Outcome::Data(data),
            Err(e) => error(e, &format!("read {path}")),
        },
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
    }
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

fn spawn(program: &str, args: &[String]) -> io::Result<Child> {
    Process::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
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
    let output = spawn(program, args)?.wait_with_output()?;
    Ok(result(program, output.status, output.stdout, output.stderr))
}

impl Background {
    fn start(&mut self, program: &str, args: &[String]) -> io::Result<()> {
        let mut child = spawn(program, args)?;
        let stdout = collect(child.stdout.take().expect("piped"));
        let stderr = collect(child.stderr.take().expect("piped"));
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
                // SAFETY: kill(2) takes no pointers; the pid is our child's.
                unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + TERMINATE_GRACE;
        self.running
            .drain(..)
            .map(|mut p| {
                let status = loop {
                    match p.child.try_wait() {
                        Ok(Some(status)) => break status,
                        Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                        _ => {
                            let _ = p.child.kill();
                            break p.child.wait().expect("wait for a killed child");
                        }
                    }
                };
                let stdout = p.stdout.join().unwrap_or_default();
                let stderr = p.stderr.join().unwrap_or_default();
                result(&p.program, status, stdout, stderr)
            })
            .collect()
    }
}
