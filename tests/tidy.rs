//! The events modules follow kernel style: checkpatch --strict, from the
//! very kernel tree they are built against, has nothing to say.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn checkpatch_strict_is_clean_on_every_kmod_file() {
    // Only the kernel tree's scripts are used, not the built guest: checking
    // a module source just edited needs no rebuild first.
    let path = kevent_bench::artifacts::path_from_env();
    let artifacts = kevent_bench::Artifacts::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    let checkpatch = artifacts.kernel_tree.join("scripts/checkpatch.pl");
    let kmod = Path::new(env!("CARGO_MANIFEST_DIR")).join("kmod");
    let mut files = Vec::new();
    for dir in [kmod.clone(), kmod.join("include")] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "c" || e == "h") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    let mut findings = String::new();
    for file in &files {
        let out = Command::new("perl")
            .arg(&checkpatch)
            .args(["--strict", "--no-tree", "--quiet", "--show-types", "-f"])
            .arg(file)
            .output()
            .expect("run checkpatch.pl");
        if !out.status.success() {
            findings.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    assert!(findings.is_empty(), "checkpatch --strict findings (fix them, then `cargo xtask test`):\n{findings}");
}
