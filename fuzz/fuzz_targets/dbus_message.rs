#![no_main]

// How the input is read, and what is checked: tests/fuzzing/mod.rs, shared
// with the corpus replay that `cargo test` runs.
#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::run("dbus_message", data));
