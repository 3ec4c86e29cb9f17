//! The kernel's glob (lib/glob.c) as tracefs event names and dynamic
//! debug queries use it: `*` any run, `?` one character, nothing else.

/// `text` matches the shell-style `pattern` (`*` any run, `?` one character).
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn star_matches_any_run_and_question_mark_one_character() {
        assert!(glob(b"irq:*", b"irq:irq_handler_entry"));
        assert!(glob(b"*", b""));
        assert!(glob(b"kevent_thermal:thermal_?one", b"kevent_thermal:thermal_done"));
        assert!(!glob(b"irq:?", b"irq:"));
        assert!(!glob(b"irq:*", b"irq_vectors:x"));
        assert!(glob(b"*:*_entry", b"irq:softirq_entry"));
        assert!(!glob(b"workqueue", b"workqueue:queue_work"));
        assert!(glob(b"a*b*c", b"abbbc"));
        assert!(!glob(b"irq_*_entry", b"irq_handler_exit"));
    }
}
