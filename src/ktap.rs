//! KTAP version 1 output (the kernel's Documentation/dev-tools/ktap.rst),
//! the format kselftest, KUnit, KernelCI and LKFT read: a version line, a
//! plan, one result line per test, `# ` diagnostic lines before the result
//! they explain, and nested tests indented two spaces per level, each with
//! its own version line and plan, its parent's result after them.
//!
//! The writer streams: each line is written as soon as it is known, so a
//! reader (or a person) sees results as tests finish.

use std::io::{self, Write};

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`.
    Pass,
    /// `not ok`.
    Fail,
    /// `ok ... # SKIP reason`: the test does not apply.
    Skip(String),
}

impl Outcome {
    /// A parent's outcome from its children's, as ktap.rst "bubbles up":
    /// any failure fails it; skipped only if every child was skipped.
    pub fn of_children<'a>(children: impl IntoIterator<Item = &'a Outcome>) -> Outcome {
        let mut all_skipped = true;
        let mut any = false;
        for child in children {
            any = true;
            match child {
                Outcome::Fail => return Outcome::Fail,
                Outcome::Pass => all_skipped = false,
                Outcome::Skip(_) => {}
            }
        }
        if any && all_skipped {
            Outcome::Skip("every subtest was skipped".into())
        } else {
            Outcome::Pass
        }
    }
}

/// Writes KTAP to `out`, one line at a time.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// A writer on `out`; nothing is written yet.
    pub fn new(out: W) -> Self {
        Writer { out }
    }

    /// The document's first lines: `KTAP version 1`, `about` as diagnostic
    /// lines (what ran, on what), and the plan of `tests` top-level tests.
    pub fn start(&mut self, about: &str, tests: usize) -> io::Result<()> {
        self.line(0, "KTAP version 1")?;
        self.diagnostic(0, about)?;
        self.line(0, &format!("1..{tests}"))
    }

    /// Opens the subtests of a test named `name` at `depth` (0 for a
    /// top-level test): its own version line, name and plan, indented one
    /// level deeper. Its result follows with [`Writer::result`] at `depth`.
    pub fn start_subtests(&mut self, depth: usize, name: &str, tests: usize) -> io::Result<()> {
        self.line(depth + 1, "KTAP version 1")?;
        self.line(depth + 1, &format!("# Subtest: {}", description(name)))?;
        self.line(depth + 1, &format!("1..{tests}"))
    }

    /// A diagnostic at `depth`: one `# ` line per line of `text`.
    pub fn diagnostic(&mut self, depth: usize, text: &str) -> io::Result<()> {
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                self.line(depth, "#")?;
            } else {
                self.line(depth, &format!("# {line}"))?;
            }
        }
        Ok(())
    }

    /// The result line of test `number` (1-based within its parent) at `depth`.
    pub fn result(&mut self, depth: usize, number: usize, name: &str, outcome: &Outcome) -> io::Result<()> {
        let name = description(name);
        let line = match outcome {
            Outcome::Pass => format!("ok {number} {name}"),
            Outcome::Fail => format!("not ok {number} {name}"),
            Outcome::Skip(reason) => format!("ok {number} {name} # SKIP {}", one_line(reason)),
        };
        self.line(depth, &line)?;
        self.out.flush()
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn line(&mut self, depth: usize, text: &str) -> io::Result<()> {
        writeln!(self.out, "{:width$}{text}", "", width = 2 * depth)
    }
}

/// A test's description: "any string of characters other than # or a
/// newline" (ktap.rst).
fn description(name: &str) -> String {
    one_line(name).replace('#', "_")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_results_are_indented_with_their_own_version_and_plan() {
        let mut w = Writer::new(Vec::new());
        w.start("two tests", 2).unwrap();
        w.start_subtests(0, "prochot", 2).unwrap();
        w.result(1, 1, "device", &Outcome::Pass).unwrap();
        w.diagnostic(1, "snapshot differs:\n-  result: \"1\"\n\n+  result: \"2\"").unwrap();
        w.result(1, 2, "debugfs", &Outcome::Fail).unwrap();
        w.result(0, 1, "prochot", &Outcome::Fail).unwrap();
        w.start_subtests(0, "timed # burst", 1).unwrap();
        w.result(1, 1, "debugfs", &Outcome::Skip("device-timed\nsteps".into())).unwrap();
        w.result(0, 2, "timed # burst", &Outcome::Skip("every subtest was skipped".into())).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        assert_eq!(
            text,
            "KTAP version 1\n# two tests\n1..2\n  KTAP version 1\n  # Subtest: prochot\n  1..2\n  ok 1 device\n  # snapshot \
             differs:\n  # -  result: \"1\"\n  #\n  # +  result: \"2\"\n  not ok 2 debugfs\nnot ok 1 prochot\n  KTAP \
             version 1\n  # Subtest: timed _ burst\n  1..1\n  ok 1 debugfs # SKIP device-timed steps\nok 2 timed _ \
             burst # SKIP every subtest was skipped\n"
        );
    }

    #[test]
    fn a_parent_fails_with_any_child_and_is_skipped_only_if_all_were() {
        let skip = Outcome::Skip("n/a".into());
        assert_eq!(Outcome::of_children(&[Outcome::Pass, skip.clone()]), Outcome::Pass);
        assert_eq!(Outcome::of_children(&[skip.clone(), Outcome::Fail]), Outcome::Fail);
        assert!(matches!(Outcome::of_children(&[skip.clone(), skip]), Outcome::Skip(_)));
        assert_eq!(Outcome::of_children(&[]), Outcome::Pass);
    }
}
