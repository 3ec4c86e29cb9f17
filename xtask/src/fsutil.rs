//! Small file-system helpers that keep rebuilds incremental.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
pub use kevent_bench::fingerprint::Fingerprint;

/// Writes `data` unless the file already holds exactly it, so that make and
/// cargo see an unchanged timestamp. Returns whether it wrote.
pub fn write_if_changed(path: &Path, data: &[u8]) -> anyhow::Result<bool> {
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    // Through a temporary file of its own, so that a reader never sees half a
    // file and two builds writing the same file at once do not trip over one
    // name; 0o666 because umask then applies as it does to any new file.
    let mut tmp = tempfile::Builder::new()
        .prefix(".kevent-bench-")
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(parent)
        .with_context(|| format!("create a temporary file in {}", parent.display()))?;
    tmp.write_all(data).with_context(|| format!("write {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("rename a temporary file to {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_content_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/f");
        assert!(write_if_changed(&path, b"one").unwrap());
        assert!(!write_if_changed(&path, b"one").unwrap());
        assert!(write_if_changed(&path, b"two").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "readable like any new file, not a private temporary: {mode:o}");
    }

    #[test]
    fn concurrent_writers_of_one_file_all_succeed_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("artifacts");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for round in 0..50 {
                        write_if_changed(path, format!("writer {i} round {round}").as_bytes()).unwrap();
                    }
                });
            }
        });
        assert!(fs::read_to_string(&path).unwrap().ends_with("round 49"));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["artifacts"]);
    }
}
