//! Small file-system helpers that keep rebuilds incremental.

use std::fs;
use std::path::Path;

use anyhow::Context;

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

/// FNV-1a, 64 bits: a cache key, not a security boundary.
#[derive(Clone)]
pub struct Fingerprint(u64);

impl Fingerprint {
    pub fn new() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }

    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_separate_fields_and_follow_content() {
        let key = |parts: &[&str]| {
            let mut f = Fingerprint::new();
            parts.iter().for_each(|p| {
                f.add(p.as_bytes());
            });
            f.hex()
        };
        assert_eq!(key(&["ab", "c"]), key(&["ab", "c"]));
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]), "field boundaries count");
        assert_ne!(key(&["CONFIG_BUG=y"]), key(&["CONFIG_BUG=n"]));
    }

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
