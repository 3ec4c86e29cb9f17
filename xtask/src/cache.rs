//! Entries that one process at a time may build: the unpacked kernel source
//! and each kernel build in the cache every checkout on the host shares, and
//! a checkout's own modules and archives.
//!
//! Entry `E` is guarded by an advisory lock (flock) on `E.lock`, beside it. A
//! builder holds it exclusively while it builds, then shared while it builds
//! on top of the entry, so that nobody rebuilds an entry someone is reading
//! (a user's kernel tree is rebuilt by every run). Lock files are never
//! removed: removing one races with a process that has just opened it.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// How an entry came to be ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This process built it.
    Built,
    /// It was ready; `waited` says whether another builder had to finish first.
    Reused { waited: bool },
}

/// The lock of one entry; released when dropped (or when the process dies).
pub struct EntryLock {
    file: File,
    entry: PathBuf,
    /// Whether acquiring it ever had to wait for another process.
    waited: bool,
}

/// `dir/name` is locked by `dir/name.lock`.
pub fn lock_path(entry: &Path) -> PathBuf {
    let mut name = entry.file_name().unwrap_or(entry.as_os_str()).to_owned();
    name.push(".lock");
    entry.with_file_name(name)
}

impl EntryLock {
    /// Opens (creates) the lock file, without locking it yet.
    pub fn open(entry: &Path) -> anyhow::Result<EntryLock> {
        let path = lock_path(entry);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("create the lock file {}", path.display()))?;
        Ok(EntryLock { file, entry: entry.to_owned(), waited: false })
    }

    pub fn shared(&mut self) -> anyhow::Result<()> {
        self.acquire(true)
    }

    pub fn exclusive(&mut self) -> anyhow::Result<()> {
        self.acquire(false)
    }

    /// Says so once before blocking, so that a build that seems to hang is
    /// seen to be waiting for another one.
    fn acquire(&mut self, shared: bool) -> anyhow::Result<()> {
        let attempt = if shared { self.file.try_lock_shared() } else { self.file.try_lock() };
        match attempt {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {}", lock_path(&self.entry).display()));
            }
        }
        eprintln!("waiting for another build of {}", self.entry.display());
        self.waited = true;
        let locked = if shared { self.file.lock_shared() } else { self.file.lock() };
        locked.with_context(|| format!("lock {}", lock_path(&self.entry).display()))
    }

    /// Drops whatever lock is held. flock converts between shared and
    /// exclusive only by dropping one and then waiting for the other, so this
    /// is written out where it happens.
    fn unlock(&mut self) -> anyhow::Result<()> {
        self.file.unlock().with_context(|| format!("unlock {}", lock_path(&self.entry).display()))
    }
}

/// Makes the entry ready: reused as is if `ready()` holds, else built by
/// `build` under the exclusive lock. `ready()` is asked again once the
/// exclusive lock is held, as another builder may just have finished; a
/// `build` that fails (or a process that dies in it) leaves the entry
/// not ready, so `build` must make `ready()` true only as its last step.
///
/// Returns with the lock held shared: the entry stays as it is while the
/// caller uses it.
pub fn ensure(
    mut lock: EntryLock,
    ready: impl Fn() -> bool,
    build: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(EntryLock, Outcome)> {
    lock.shared()?;
    if ready() {
        let waited = lock.waited;
        return Ok((lock, Outcome::Reused { waited }));
    }
    lock.unlock()?;
    lock.exclusive()?;
    let outcome = if ready() {
        Outcome::Reused { waited: lock.waited }
    } else {
        build()?;
        Outcome::Built
    };
    lock.unlock()?;
    lock.shared()?;
    Ok((lock, outcome))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_lock_file_sits_beside_the_entry() {
        assert_eq!(lock_path(Path::new("/c/build/default-1234")), Path::new("/c/build/default-1234.lock"));
    }

    #[test]
    fn a_second_builder_waits_for_the_first_and_reuses_its_result() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("entry");
        let stamp = entry.join("done");
        let builds = AtomicUsize::new(0);
        let ready = || stamp.exists();
        let build = || {
            builds.fetch_add(1, Ordering::SeqCst);
            fs::create_dir_all(&entry).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            fs::write(&stamp, "").unwrap();
            Ok(())
        };
        let (started, is_started) = mpsc::channel();
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                let (lock, outcome) = ensure(EntryLock::open(&entry).unwrap(), ready, || {
                    started.send(()).unwrap();
                    build()
                })
                .unwrap();
                drop(lock);
                outcome
            });
            is_started.recv().unwrap();
            // The first holds the exclusive lock and sleeps in its build.
            let second = s.spawn(|| ensure(EntryLock::open(&entry).unwrap(), ready, build).unwrap().1);
            assert_eq!(first.join().unwrap(), Outcome::Built);
            assert_eq!(second.join().unwrap(), Outcome::Reused { waited: true });
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_build_is_not_trusted_and_leaves_the_entry_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("entry");
        let stamp = dir.path().join("done");
        let ready = || stamp.exists();
        let err = ensure(EntryLock::open(&entry).unwrap(), ready, || anyhow::bail!("make failed")).err().unwrap();
        assert_eq!(err.to_string(), "make failed");
        let (_lock, outcome) = ensure(EntryLock::open(&entry).unwrap(), ready, || {
            fs::write(&stamp, "")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(outcome, Outcome::Built);
        let (_lock, outcome) = ensure(EntryLock::open(&entry).unwrap(), ready, || panic!("built twice")).unwrap();
        assert_eq!(outcome, Outcome::Reused { waited: false }, "shared locks do not exclude each other");
    }

    #[test]
    fn an_unwritable_place_for_the_lock_is_named() {
        let err = EntryLock::open(Path::new("/proc/kevent-bench/entry")).err().unwrap();
        assert!(format!("{err:#}").starts_with("create /proc/kevent-bench: "), "{err:#}");
    }
}
