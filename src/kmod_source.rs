//! The events modules' C sources, read by tests that keep the host's
//! mirrors of their constants (`sensor::abi`, `thermal`) equal to them.

use std::collections::BTreeMap;
use std::path::Path;

/// `#define NAME value` lines of a file of kmod/, continuation lines
/// joined, values as written with single spaces, up to a trailing comment.
pub fn defines(file: &str) -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kmod").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|line| line.strip_prefix("#define "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let name = words.next()?.to_owned();
            let value: String = words.take_while(|w| !w.starts_with("/*")).collect::<Vec<_>>().join(" ");
            Some((name, value))
        })
        .collect()
}
