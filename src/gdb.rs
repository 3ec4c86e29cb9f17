//! Debugging the guest kernel with gdb (`run --gdb`): QEMU's gdbstub on a
//! TCP port of localhost or a UNIX socket, the guest held before its first
//! instruction if asked (`--gdb-wait`, QEMU's `-S`), and the gdb command
//! line that attaches with the kernel's symbols, its gdb scripts
//! (`CONFIG_GDB_SCRIPTS`: `lx-symbols` loads the modules' sections where
//! the guest put them) and the modules' directory.
//!
//! While a debugger holds the guest, every host-side wait is suspended
//! (the machine asks QEMU, over QMP, whether the guest runs): a breakpoint
//! never turns into a timeout.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::failure::Failure;

/// The port of `--gdb` alone: QEMU's `-s`.
pub const DEFAULT_PORT: u16 = 1234;

/// Where the gdbstub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP port of 127.0.0.1: only this machine's users can attach.
    Tcp(u16),
    /// A UNIX socket at this path, created by QEMU and removed after the run.
    Unix(PathBuf),
}

/// The gdbstub of one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GdbStub {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// Hold the guest before its first instruction until gdb continues it.
    pub wait: bool,
}

impl Endpoint {
    /// `PORT`, `tcp::PORT`, `tcp:localhost:PORT` or `unix:PATH`, as
    /// `--gdb=` takes it.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || path.contains(',') {
                return Err(format!("{text}: expected unix:PATH, a path without commas"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let port = ["tcp::", "tcp:localhost:", "tcp:127.0.0.1:", "localhost:", ":"]
            .iter()
            .find_map(|prefix| text.strip_prefix(prefix))
            .unwrap_or(text);
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Endpoint::Tcp(port)),
            _ => Err(format!(
                "{text}: expected a TCP port (1 to 65535, e.g. {DEFAULT_PORT} or tcp::{DEFAULT_PORT}) or unix:PATH"
            )),
        }
    }

    /// QEMU's `-gdb` device. QEMU adds `server=on,wait=off` to a TCP one
    /// itself, not to a UNIX one.
    pub fn qemu_device(&self) -> OsString {
        match self {
            Endpoint::Tcp(port) => format!("tcp:127.0.0.1:{port}").into(),
            Endpoint::Unix(path) => {
                let mut device = OsString::from("unix:");
                device.push(path);
                device.push(",server=on,wait=off");
                device
            }
        }
    }

    /// What gdb's `target remote` takes.
    pub fn gdb_target(&self) -> String {
        match self {
            Endpoint::Tcp(port) => format!("localhost:{port}"),
            Endpoint::Unix(path) => path.display().to_string(),
        }
    }

    /// Refuses an endpoint QEMU could not listen on, before QEMU starts:
    /// a port something already listens on, a socket path that exists.
    pub fn check_free(&self) -> Result<(), Failure> {
        let refuse = |reason: String| Failure::Refused { input: format!("--gdb={self}"), reason };
        match self {
            Endpoint::Tcp(port) => match TcpListener::bind(("127.0.0.1", *port)) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(refuse(format!(
                    "port {port} of localhost is in use (another QEMU's gdbstub? `ss -ltnp 'sport = :{port}'` says \
                     whose); choose another with --gdb=PORT"
                ))),
                Err(e) => Err(refuse(format!("cannot listen on port {port} of localhost: {e}"))),
            },
            Endpoint::Unix(path) => {
                if path.symlink_metadata().is_ok() {
                    return Err(refuse(format!(
                        "{} exists; QEMU would not listen there (remove it, or choose another path)",
                        path.display()
                    )));
                }
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    return Err(refuse(format!("{} is not a directory", parent.display())));
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(port) => write!(f, "{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What gdb needs of a kernel build: the `vmlinux` with its symbols, and
/// whether its build directory has the kernel's gdb scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbols {
    /// The guest's vmlinux.
    pub vmlinux: PathBuf,
    /// Where the built modules are (`lx-symbols` searches it for `.ko`s).
    pub modules_dir: PathBuf,
    /// `vmlinux-gdb.py` is beside vmlinux (`CONFIG_GDB_SCRIPTS`).
    pub scripts: bool,
    /// vmlinux has DWARF (`CONFIG_DEBUG_INFO`): types, lines, backtraces.
    pub dwarf: bool,
}

impl Symbols {
    /// The kernel build of `vmlinux`, its `.config` read for DWARF.
    pub fn of(vmlinux: &Path, modules_dir: &Path) -> Symbols {
        let build_dir = vmlinux.parent().unwrap_or(Path::new("."));
        let config = std::fs::read_to_string(build_dir.join(".config")).unwrap_or_default();
        Symbols {
            vmlinux: vmlinux.to_owned(),
            modules_dir: modules_dir.to_owned(),
            scripts: build_dir.join("vmlinux-gdb.py").exists(),
            dwarf: config.lines().any(|l| l == "CONFIG_DEBUG_INFO=y"),
        }
    }
}

/// The gdb command that attaches to `endpoint` with `symbols`, one word a
/// string: `-iex` makes the build directory safe for auto-loading before
/// vmlinux is read (gdb then loads `vmlinux-gdb.py`), and `lx-symbols`
/// loads the modules the guest has loaded, and each it loads later.
pub fn command(endpoint: &Endpoint, symbols: &Symbols) -> Vec<String> {
    let mut words = vec!["gdb".to_owned()];
    if symbols.scripts {
        let build_dir = symbols.vmlinux.parent().unwrap_or(Path::new("."));
        words.extend(["-iex".to_owned(), format!("add-auto-load-safe-path {}", build_dir.display())]);
    }
    words.push(symbols.vmlinux.display().to_string());
    words.extend(["-ex".to_owned(), format!("target remote {}", endpoint.gdb_target())]);
    if symbols.scripts {
        words.extend(["-ex".to_owned(), format!("lx-symbols {}", symbols.modules_dir.display())]);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_as_qemu_and_gdb_write_them() {
        assert_eq!(Endpoint::parse("1234"), Ok(Endpoint::Tcp(1234)));
        assert_eq!(Endpoint::parse("tcp::4321"), Ok(Endpoint::Tcp(4321)));
        assert_eq!(Endpoint::parse("localhost:99"), Ok(Endpoint::Tcp(99)));
        assert_eq!(Endpoint::parse("unix:/tmp/g.sock"), Ok(Endpoint::Unix("/tmp/g.sock".into())));
        for bad in ["0", "65536", "tcp::x", "unix:", "unix:/a,server=on", "host:1234", ""] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Endpoint::Tcp(1234).qemu_device(), "tcp:127.0.0.1:1234");
        assert_eq!(Endpoint::Unix("/t/g".into()).qemu_device(), "unix:/t/g,server=on,wait=off");
        assert_eq!(Endpoint::Tcp(1234).gdb_target(), "localhost:1234");
        assert_eq!(Endpoint::Unix("/t/g".into()).gdb_target(), "/t/g");
    }

    #[test]
    fn a_port_in_use_is_refused_before_qemu_starts() {
        let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = Endpoint::Tcp(port).check_free().unwrap_err();
        assert!(matches!(err, Failure::Refused { .. }));
        assert_eq!(err.exit_code(), crate::exit_code::BENCH_ERROR);
        assert!(err.to_string().starts_with(&format!("--gdb={port}: port {port} of localhost is in use")), "{err}");
        drop(taken);
        Endpoint::Tcp(port).check_free().unwrap();
    }

    #[test]
    fn a_socket_path_that_exists_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gdb.sock");
        Endpoint::Unix(path.clone()).check_free().unwrap();
        std::fs::write(&path, "").unwrap();
        let err = Endpoint::Unix(path.clone()).check_free().unwrap_err().to_string();
        assert!(err.contains("exists; QEMU would not listen there"), "{err}");
        let err = Endpoint::Unix(dir.path().join("no/such/dir/s")).check_free().unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn the_gdb_command_loads_the_scripts_and_the_modules_where_the_kernel_has_them() {
        let mut symbols = Symbols {
            vmlinux: "/c/build/debug-1/vmlinux".into(),
            modules_dir: "/w/target/kmod".into(),
            scripts: true,
            dwarf: true,
        };
        assert_eq!(
            crate::process::shell_line(&command(&Endpoint::Tcp(1234), &symbols)),
            "gdb -iex 'add-auto-load-safe-path /c/build/debug-1' /c/build/debug-1/vmlinux \
             -ex 'target remote localhost:1234' -ex 'lx-symbols /w/target/kmod'"
        );
        symbols.scripts = false;
        assert_eq!(
            crate::process::shell_line(&command(&Endpoint::Unix("/tmp/g s".into()), &symbols)),
            "gdb /c/build/debug-1/vmlinux -ex 'target remote /tmp/g s'"
        );
    }
}
