//! The bench's cache directory, one per host user and shared by every
//! checkout: kernel sources and builds, the accelerator verdict, the private
//! QEMU. xtask and the host library both find it here, so they agree.

use std::ffi::OsString;
use std::path::PathBuf;

/// Environment variable naming the cache directory; empty counts as unset.
pub const CACHE_ENV: &str = "KEVENT_BENCH_CACHE";

/// `KEVENT_BENCH_CACHE`, else `$XDG_CACHE_HOME/kevent-bench`, else
/// `~/.cache/kevent-bench`.
pub fn dir() -> Result<PathBuf, String> {
    let var = |name| std::env::var_os(name);
    dir_from(var(CACHE_ENV), var("XDG_CACHE_HOME"), var("HOME"))
}

/// An empty variable counts as unset: `VAR= cargo xtask ...` is how a shell
/// user clears one for a single command.
fn dir_from(cache: Option<OsString>, xdg: Option<OsString>, home: Option<OsString>) -> Result<PathBuf, String> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(cache) {
        return Ok(dir);
    }
    if let Some(xdg) = set(xdg) {
        return Ok(xdg.join("kevent-bench"));
    }
    let home = set(home).ok_or_else(|| format!("neither {CACHE_ENV}, XDG_CACHE_HOME nor HOME is set"))?;
    Ok(home.join(".cache").join("kevent-bench"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(s.into())
    }

    #[test]
    fn the_variable_wins_then_xdg_then_home() {
        assert_eq!(dir_from(os("/c"), os("/x"), os("/h")).unwrap(), PathBuf::from("/c"));
        assert_eq!(dir_from(None, os("/x"), os("/h")).unwrap(), PathBuf::from("/x/kevent-bench"));
        assert_eq!(dir_from(os(""), os(""), os("/h")).unwrap(), PathBuf::from("/h/.cache/kevent-bench"));
        assert_eq!(
            dir_from(None, None, None).unwrap_err(),
            "neither KEVENT_BENCH_CACHE, XDG_CACHE_HOME nor HOME is set"
        );
    }
}
