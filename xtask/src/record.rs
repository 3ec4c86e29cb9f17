//! `cargo xtask record`: a host program for a real machine. It records the
//! thermal registers of every CPU into a trace (docs/trace-format.md) and
//! builds, installs and boots nothing.

use std::io::BufWriter;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use kevent_bench::msr_trace::MAX_ROWS;
use kevent_bench::record::{record, Recorder};

use crate::flags::RecordFlags;

pub fn run(flags: &RecordFlags) -> anyhow::Result<()> {
    let mut recorder = Recorder::open(&flags.msr_dir, &flags.sysfs_root, flags.cpus.as_deref())?;
    let interval = Duration::from_micros(flags.interval_us);
    let duration = Duration::from_secs(flags.duration);
    eprintln!(
        "recording {} CPU(s) ({}) from {} every {} µs for {} s into {} (Ctrl-C ends it early)",
        recorder.cpus().len(),
        recorder.topology(),
        flags.msr_dir.display(),
        flags.interval_us,
        flags.duration,
        flags.out.display()
    );
    let file = std::fs::File::create(&flags.out).with_context(|| format!("create {}", flags.out.display()))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let notes = [format!(
        "recorded by cargo xtask record on {} at unix time {since_epoch}, every {} µs, from {}",
        if host.trim().is_empty() { "an unnamed host" } else { host.trim() },
        flags.interval_us,
        flags.msr_dir.display()
    )];
    let recorded = record(&mut recorder, BufWriter::new(file), interval, duration, MAX_ROWS, &notes, &|| {
        kevent_bench::process::interrupted().is_some()
    })?;
    for (msr, bits) in recorder.unmodelled() {
        eprintln!(
            "note: {msr} had bits {bits:#x} set, which the bench's register model does not have; they are not in \
             the trace (it says so in a comment)"
        );
    }
    if recorded.late_samples > 0 {
        eprintln!(
            "warning: {} of {} samples began more than one interval late: the host was busy; their rows carry the \
             time they were read",
            recorded.late_samples, recorded.samples
        );
    }
    eprintln!(
        "{}: {} samples in {:.3} s, {} row(s){}",
        flags.out.display(),
        recorded.samples,
        recorded.elapsed.as_secs_f64(),
        recorded.rows,
        if recorded.stopped { ", stopped early" } else { "" }
    );
    if recorded.full {
        eprintln!(
            "warning: the recording stopped before its {} s: one more sample would have taken it past the {} rows a \
             trace may hold (record a shorter episode, or a longer --interval-us)",
            flags.duration, MAX_ROWS
        );
    }
    Ok(())
}
