//! The guest's serial console: crash detection and excerpts.
//!
//! The markers are the start lines of kernel reports as syzkaller's
//! `pkg/report/linux.go` knows them, matched at the start of a message (after
//! the printk timestamp), so that a line merely mentioning "BUG:" in the
//! middle does not count.

use std::fmt;

/// What kind of kernel report a console line starts, most severe last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CrashKind {
    /// WARN(), lockdep and other `WARNING:`/`INFO:` reports: the kernel goes on.
    Warning,
    /// BUG(), `BUG:` reports such as sleeping in atomic context, UBSAN.
    Bug,
    /// An oops: a fault in kernel code (NULL dereference, GPF, invalid opcode).
    Oops,
    /// `Kernel panic - not syncing`: the machine is going down.
    Panic,
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrashKind::Warning => "kernel warning",
            CrashKind::Bug => "kernel BUG",
            CrashKind::Oops => "kernel oops",
            CrashKind::Panic => "kernel panic",
        })
    }
}

/// Start markers, checked in order: the first that matches decides the kind.
const MARKERS: &[(&str, CrashKind)] = &[
    ("Kernel panic - not syncing", CrashKind::Panic),
    ("BUG: kernel NULL pointer dereference", CrashKind::Oops),
    ("BUG: unable to handle", CrashKind::Oops),
    ("Oops:", CrashKind::Oops),
    ("general protection fault", CrashKind::Oops),
    ("Unable to handle kernel", CrashKind::Oops),
    ("stack segment: ", CrashKind::Oops),
    ("invalid opcode:", CrashKind::Oops),
    ("divide error:", CrashKind::Oops),
    ("PANIC: double fault", CrashKind::Oops),
    ("int3: ", CrashKind::Oops),
    ("kernel BUG at", CrashKind::Bug),
    ("Kernel BUG at", CrashKind::Bug),
    ("BUG kmalloc-", CrashKind::Bug),
    ("BUG:", CrashKind::Bug),
    ("UBSAN:", CrashKind::Bug),
    ("------------[ cut here ]------------", CrashKind::Warning),
    ("WARNING:", CrashKind::Warning),
    ("INFO: possible", CrashKind::Warning),
    ("INFO: task ", CrashKind::Warning),
    ("INFO: rcu_", CrashKind::Warning),
    ("INFO: trying to register non-static key", CrashKind::Warning),
    ("watchdog: BUG: soft lockup", CrashKind::Bug),
];

/// What kernel_restart() and kernel_power_off() print: an orderly end,
/// asked for by user space (kernel/reboot.c).
const ORDERLY_RESTART: &[&str] = &["reboot: Restarting system", "reboot: Power down"];

/// Lines that end a report; the excerpt stops after them.
const END_MARKERS: &[&str] = &["---[ end trace", "---[ end Kernel panic"];

/// Removes a printk timestamp (`[    1.234567] `) and a leading caller id.
pub fn message_of(line: &str) -> &str {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(rest) = line.strip_prefix('[') else { return line };
    match rest.find("] ") {
        Some(end) if rest[..end].trim().chars().all(|c| c.is_ascii_digit() || c == '.') => &rest[end + 2..],
        _ => line,
    }
}

/// The kind of report `line` starts, if any.
pub fn crash_marker(line: &str) -> Option<CrashKind> {
    let message = message_of(line);
    MARKERS.iter().find(|(marker, _)| message.starts_with(marker)).map(|&(_, kind)| kind)
}

/// The oops line of BUG()'s trap: `Oops: invalid opcode: ...` (6.12) or
/// `invalid opcode: ...` (older kernels).
fn is_bug_trap(line: &str) -> bool {
    let message = message_of(line);
    message.strip_prefix("Oops: ").unwrap_or(message).starts_with("invalid opcode:")
}

/// Whether `line` closes a report (`---[ end trace`, `---[ end Kernel panic`):
/// the excerpt kept for a failure stops there.
pub fn is_report_end(line: &str) -> bool {
    let message = message_of(line);
    END_MARKERS.iter().any(|m| message.starts_with(m))
}

/// An input the kernel said it ignored: a module parameter the module does
/// not have, or a command-line word no part of the kernel knows. The bench
/// refuses to run on with an input silently dropped.
pub fn ignored_input(line: &str) -> Option<&str> {
    let message = message_of(line);
    let module_parameter = message
        .split_once(": unknown parameter '")
        .is_some_and(|(module, rest)| !module.contains(' ') && rest.ends_with("' ignored"));
    let command_line = message.starts_with("Unknown kernel command line parameters \"");
    (module_parameter || command_line).then_some(message)
}

/// A kernel report found on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// The most severe kind seen in the run.
    pub kind: CrashKind,
    /// The report's lines, from the first marker to its end (bounded).
    pub excerpt: Vec<String>,
}

/// Longest excerpt kept of one report.
pub const EXCERPT_LINES: usize = 80;

/// Scans a console line by line; keeps the first report's excerpt and the
/// most severe kind seen.
///
/// `Kernel panic - not syncing` lines are kept apart ([`Self::panic`]): any
/// program can write that text to /dev/kmsg or the console, so only the
/// machine going down after it makes it a panic, and the caller decides.
#[derive(Debug, Default)]
pub struct CrashDetector {
    report: Option<CrashReport>,
    collecting: bool,
    panic: Option<CrashReport>,
    /// Panic lines the kernel outlived: a program wrote them.
    survived_panic: Option<CrashReport>,
    /// Lines left in which an invalid-opcode oops belongs to the `kernel BUG
    /// at` line before it: on x86, BUG() is an invalid opcode, and the trap
    /// prints its oops line right after the BUG line.
    bug_trap_window: u8,
}

impl CrashDetector {
    /// Feeds one line; returns the kind if this line starts a report.
    pub fn feed(&mut self, line: &str) -> Option<CrashKind> {
        let line = line.trim_end_matches(['\r', '\n']);
        let mut kind = crash_marker(line);
        if kind == Some(CrashKind::Oops) && self.bug_trap_window > 0 && is_bug_trap(line) {
            kind = Some(CrashKind::Bug);
        }
        self.bug_trap_window = self.bug_trap_window.saturating_sub(1);
        if message_of(line).to_ascii_lowercase().starts_with("kernel bug at") {
            self.bug_trap_window = 3;
        }
        if kind == Some(CrashKind::Panic) {
            self.panic.get_or_insert_with(|| CrashReport { kind: CrashKind::Panic, excerpt: Vec::new() });
        }
        // A panic restarts the machine with emergency_restart(), which says
        // nothing; "Restarting system" is reboot(2)'s: the kernel was alive
        // and user space asked. A panic line before it was not the kernel's.
        if self.panic.is_some() && ORDERLY_RESTART.iter().any(|m| message_of(line).starts_with(m)) {
            self.survived_panic = self.panic.take();
        }
        if let Some(panic) = self.panic.as_mut().filter(|p| p.excerpt.len() < EXCERPT_LINES) {
            if kind == Some(CrashKind::Panic) || !panic.excerpt.is_empty() {
                panic.excerpt.push(line.to_owned());
            }
        }
        if kind == Some(CrashKind::Panic) {
            return kind;
        }
        match (&mut self.report, kind) {
            (None, Some(kind)) => {
                self.report = Some(CrashReport { kind, excerpt: vec![line.to_owned()] });
                self.collecting = true;
            }
            (Some(report), kind) => {
                if let Some(kind) = kind {
                    report.kind = report.kind.max(kind);
                }
                if self.collecting {
                    report.excerpt.push(line.to_owned());
                    if is_report_end(line) || report.excerpt.len() >= EXCERPT_LINES {
                        self.collecting = false;
                    }
                }
            }
            (None, None) => {}
        }
        kind
    }

    /// The first report other than a panic, with the most severe such kind.
    pub fn report(&self) -> Option<&CrashReport> {
        self.report.as_ref()
    }

    /// The panic lines seen, from the first `Kernel panic` line on: a panic
    /// only if the machine then went down.
    pub fn panic(&self) -> Option<&CrashReport> {
        self.panic.as_ref()
    }

    /// The run's report once the machine has gone down: a panic (with the
    /// excerpt of the report that led to it, if one did) wins.
    pub fn report_after_exit(&self) -> Option<CrashReport> {
        match (&self.report, &self.panic) {
            (Some(report), Some(_)) => Some(CrashReport { kind: CrashKind::Panic, excerpt: report.excerpt.clone() }),
            (None, Some(panic)) => Some(panic.clone()),
            (report, None) => report.clone(),
        }
    }

    /// Forgets panic lines the machine survived (user space wrote them).
    pub fn retract_panic(&mut self) -> Option<CrashReport> {
        let retracted = self.panic.take();
        if retracted.is_some() {
            self.survived_panic.clone_from(&retracted);
        }
        retracted
    }

    /// Panic lines the kernel outlived, if any: what a program wrote.
    pub fn survived_panic(&self) -> Option<&CrashReport> {
        self.survived_panic.as_ref()
    }

    /// Whether the first report's excerpt is complete.
    pub fn excerpt_complete(&self) -> bool {
        self.report.is_some() && !self.collecting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real reports, shaped as a 6.12 kernel prints them on the serial console.
    const NULL_DEREF_OOPS: &str = "\
[    2.345678] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    2.345901] #PF: supervisor read access in kernel mode
[    2.346012] #PF: error_code(0x0000) - not-present page
[    2.346120] PGD 0 P4D 0
[    2.346200] Oops: Oops: 0000 [#1] SMP NOPTI
[    2.346300] CPU: 1 UID: 0 PID: 42 Comm: kworker/1:1 Tainted: G           O       6.12.57 #1
[    2.346400] RIP: 0010:thermal_work+0x12/0x40 [kevent_thermal]
[    2.346500] Call Trace:
[    2.346600]  <TASK>
[    2.346700]  process_one_work+0x17e/0x330
[    2.346800]  </TASK>
[    2.346900] ---[ end trace 0000000000000000 ]---
[    2.347000] CR2: 0000000000000000";

    const WARN_REPORT: &str = "\
[    1.100000] ------------[ cut here ]------------
[    1.100100] WARNING: CPU: 0 PID: 1 at kmod/thermal_handler.c:88 thermal_handle+0x5c/0x80 [kevent_thermal]
[    1.100200] Modules linked in: kevent_thermal(O) kmessage(O)
[    1.100300] CPU: 0 UID: 0 PID: 1 Comm: init Tainted: G           O       6.12.57 #1
[    1.100400] RIP: 0010:thermal_handle+0x5c/0x80 [kevent_thermal]
[    1.100500] ---[ end trace 0000000000000000 ]---";

    const PANIC_REPORT: &str = "\
[    0.912345] Run /init as init process
[    0.913000] Kernel panic - not syncing: No working init found.  Try passing init= option to kernel. See Linux Documentation/admin-guide/init.rst for guidance.
[    0.913100] CPU: 0 UID: 0 PID: 1 Comm: swapper/0 Not tainted 6.12.57 #1
[    0.913200] Call Trace:
[    0.913300] ---[ end Kernel panic - not syncing: No working init found. ]---";

    const SLEEP_IN_ATOMIC: &str = "\
[    3.000000] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:585
[    3.000100] in_atomic(): 1, irqs_disabled(): 1, non_block: 0, pid: 0, name: swapper/1";

    /// BUG() in a module on 6.12 x86: "cut here", the BUG line, then the
    /// trap's oops line (arch/x86/kernel/dumpstack.c prints "Oops: %s").
    const MODULE_BUG: &str = "\
[    2.100000] ------------[ cut here ]------------
[    2.100100] kernel BUG at /build/kmod/kthermal_debugfs.c:42!
[    2.100200] Oops: invalid opcode: 0000 [#1] SMP NOPTI
[    2.100300] CPU: 0 UID: 0 PID: 1 Comm: kevent-agent Tainted: G           O       6.12.117 #1
[    2.100400] RIP: 0010:kt_trigger_write+0x10/0x20 [kevent_thermal]
[    2.100500] ---[ end trace 0000000000000000 ]---";

    const LOCKDEP: &str = "\
[    4.000000] ======================================================
[    4.000100] WARNING: possible circular locking dependency detected
[    4.000200] 6.12.57 #1 Tainted: G           O";

    /// Ordinary lines of a bench boot and of the thermal module.
    const ORDINARY_BOOT: &str = "\
[    0.000000] Linux version 6.12.57 (root@host) (gcc (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP
[    0.000000] Command line: console=ttyS0 panic=-1
[    0.010000] x86/fpu: Supporting XSAVE feature 0x001: 'x87 floating point registers'
[    0.120000] smpboot: CPU0: AMD QEMU Virtual CPU version 2.5+ (family: 0xf, model: 0x6b, stepping: 0x1)
[    0.300000] printk: legacy console [ttyS0] enabled
[    0.400000] Unpacking initramfs...
[    0.600000] debug: unmapping init [mem 0xffffffff82000000-0xffffffff820fffff]
[    0.650000] Run /init as init process
kevent-agent: started (pid 1)
[    0.700000] kmessage: loading out-of-tree module taints kernel.
[    0.710000] CPU1: Temperature above threshold
[    0.710001] CPU1: Running in modulated clock mode
[    0.720000] CPU1: Temperature/speed normal
[    0.730000] reboot: Restarting system
kevent-agent: fatal: something mentions BUG: in the middle
[    0.800000] this line says WARNING: but not at the start";

    fn detect(text: &str) -> CrashDetector {
        let mut d = CrashDetector::default();
        for line in text.lines() {
            d.feed(line);
        }
        d
    }

    #[test]
    fn an_oops_is_found_with_its_whole_report() {
        let d = detect(NULL_DEREF_OOPS);
        let r = d.report().unwrap();
        assert_eq!(r.kind, CrashKind::Oops);
        assert!(r.excerpt[0].contains("NULL pointer dereference"));
        assert!(r.excerpt.last().unwrap().contains("---[ end trace"));
        assert!(d.excerpt_complete());
    }

    #[test]
    fn a_warn_is_found_from_its_cut_here_line() {
        let r = detect(WARN_REPORT).report().unwrap().clone();
        assert_eq!(r.kind, CrashKind::Warning);
        assert!(r.excerpt[0].contains("cut here"));
        assert!(r.excerpt[1].contains("WARNING: CPU: 0 PID: 1 at kmod/thermal_handler.c:88"));
    }

    #[test]
    fn a_panic_is_held_apart_until_the_machine_goes_down() {
        let alone = detect(PANIC_REPORT);
        assert!(alone.report().is_none(), "a panic line alone is not yet a report");
        let panic = alone.panic().unwrap();
        assert!(panic.excerpt[0].contains("Kernel panic - not syncing: No working init"), "{:?}", panic.excerpt);
        assert!(panic.excerpt.last().unwrap().contains("---[ end Kernel panic"));
        assert_eq!(alone.report_after_exit().unwrap().kind, CrashKind::Panic);

        let both = format!("{WARN_REPORT}\n{PANIC_REPORT}");
        let d = detect(&both);
        assert_eq!(d.report().unwrap().kind, CrashKind::Warning, "the unconfirmed panic does not count yet");
        let r = d.report_after_exit().unwrap();
        assert_eq!(r.kind, CrashKind::Panic, "once the machine is down the panic wins");
        assert!(r.excerpt[0].contains("cut here"), "the excerpt starts at the first report");
    }

    #[test]
    fn a_panic_line_before_an_orderly_restart_was_not_the_kernels() {
        // The agent's reboot(2) at the end of a run whose program wrote a
        // panic line to /dev/kmsg.
        let d = detect(
            "[    2.926066] Kernel panic - not syncing: written by a guest program\n\
             [    2.987758] reboot: Restarting system\n\
             [    2.988069] reboot: machine restart",
        );
        assert!(d.report_after_exit().is_none());
        assert!(d.survived_panic().unwrap().excerpt[0].contains("written by a guest program"));
        // A real panic's restart prints no such line.
        assert_eq!(detect(PANIC_REPORT).report_after_exit().unwrap().kind, CrashKind::Panic);
    }

    #[test]
    fn a_panic_line_the_machine_survived_is_retracted() {
        // What a guest program writing to /dev/kmsg produces.
        let mut d = detect("[    3.000000] Kernel panic - not syncing: written by user space");
        assert!(d.retract_panic().is_some());
        assert!(d.report_after_exit().is_none());
        d.feed(NULL_DEREF_OOPS.lines().next().unwrap());
        assert_eq!(d.report_after_exit().unwrap().kind, CrashKind::Oops);
    }

    #[test]
    fn a_bug_is_a_bug_though_x86_reports_it_as_an_invalid_opcode_oops() {
        let d = detect(MODULE_BUG);
        let r = d.report().unwrap();
        assert_eq!(r.kind, CrashKind::Bug);
        assert!(r.excerpt[1].contains("kernel BUG at"), "{:?}", r.excerpt);
        // An invalid opcode with no BUG line before it is an oops.
        let oops = MODULE_BUG.replace("kernel BUG at /build/kmod/kthermal_debugfs.c:42!", "some other line");
        assert_eq!(detect(&oops).report().unwrap().kind, CrashKind::Oops);
        // A genuine oops after the BUG's report has ended still counts.
        let later = format!("{MODULE_BUG}\n{NULL_DEREF_OOPS}");
        assert_eq!(detect(&later).report().unwrap().kind, CrashKind::Oops);
    }

    #[test]
    fn sleeping_in_atomic_and_lockdep_reports_are_found() {
        assert_eq!(detect(SLEEP_IN_ATOMIC).report().unwrap().kind, CrashKind::Bug);
        assert_eq!(detect(LOCKDEP).report().unwrap().kind, CrashKind::Warning);
    }

    #[test]
    fn ordinary_boot_lines_are_not_crashes() {
        for line in ORDINARY_BOOT.lines() {
            assert_eq!(crash_marker(line), None, "{line}");
        }
        assert!(detect(ORDINARY_BOOT).report().is_none());
    }

    #[test]
    fn inputs_the_kernel_ignored_are_found() {
        // kernel/params.c and init/main.c, as 6.12 prints them.
        let module = "[    0.912000] kevent_thermal: unknown parameter 'rate_limt_ms' ignored";
        assert_eq!(ignored_input(module), Some("kevent_thermal: unknown parameter 'rate_limt_ms' ignored"));
        let cmdline = "[    0.104682] Unknown kernel command line parameters \"lapic_timer_period=4000000\", will be passed to user space.";
        assert!(ignored_input(cmdline).unwrap().contains("lapic_timer_period=4000000"));
        for line in ORDINARY_BOOT.lines() {
            assert_eq!(ignored_input(line), None, "{line}");
        }
        assert_eq!(ignored_input("a program said: unknown parameter 'x' ignored by it"), None);
    }

    #[test]
    fn timestamps_are_stripped_but_bracketed_text_is_kept() {
        assert_eq!(message_of("[   12.000001] BUG: x"), "BUG: x");
        assert_eq!(message_of("[abc] BUG: x"), "[abc] BUG: x");
        assert_eq!(message_of("BUG: x\r\n"), "BUG: x");
    }

    #[test]
    fn an_endless_report_is_cut_at_the_excerpt_limit() {
        let mut d = CrashDetector::default();
        d.feed("[    1.0] BUG: soft lockup");
        for i in 0..500 {
            d.feed(&format!("[    1.0] frame {i}"));
        }
        assert_eq!(d.report().unwrap().excerpt.len(), EXCERPT_LINES);
        assert!(d.excerpt_complete());
    }
}
