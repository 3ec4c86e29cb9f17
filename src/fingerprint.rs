//! FNV-1a, 64 bits: the cache keys of xtask and the record of the sources a
//! guest was built from, one function for both so that they always agree.

const PRIME: u64 = 0x0000_0100_0000_01b3;

/// A cache key, not a security boundary.
#[derive(Clone)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprint {
    /// The empty fingerprint: FNV-1a's 64-bit offset basis.
    pub fn new() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }

    /// Adds one field; a separator byte after it keeps `"ab", "c"` apart from `"a", "bc"`.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        // A plain loop over a local: the guest tests fingerprint every source
        // per test in unoptimised builds, where an iterator chain and a field
        // store per byte cost ten times as much.
        let mut hash = self.0;
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
        self.0 = (hash ^ 0xff).wrapping_mul(PRIME);
        self
    }

    /// The hash as 16 lowercase hex digits: the form in cache directory
    /// names and `source=` records, so it must never change.
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
    fn the_key_format_is_stable() {
        // Cache directories on disk are named by these keys: a change here
        // orphans every kernel build in every developer's cache.
        assert_eq!(Fingerprint::new().add(b"x86_64").hex(), "bbeae4f882c3163d");
    }
}
