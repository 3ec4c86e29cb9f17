//! Small file-system helpers that keep rebuilds incremental.

use std::fs;
use std::path::Path;

use anyhow::Context;
pub use kevent_bench::fingerprint::Fingerprint;

/// Writes `data` unless the file already holds exactly it, so that make and
/// cargo see an unchanged timestamp. Returns whether it wrote.
pub fn write_if_changed(path: &Path, data: &[u8]) -> anyhow::Result<bool> {
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    // Through a temporary name, so a reader never sees half a file.
    let tmp = path.with_extension("tmp-write");
    fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_content_is_not_rewritten() {
        let dir = std::env::temp_dir().join(format!("kevent-fsutil-{}", std::process::id()));
        let path = dir.join("f");
        assert!(write_if_changed(&path, b"one").unwrap());
        assert!(!write_if_changed(&path, b"one").unwrap());
        assert!(write_if_changed(&path, b"two").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"two");
        fs::remove_dir_all(&dir).unwrap();
    }
}
