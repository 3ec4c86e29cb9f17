//! The events modules in a real guest, checked on the bytes the agent's
//! netlink sockets received: the seed's payload, the group mask, the uevent,
//! the rate limit, refused debugfs writes (a NUL or no byte among them
//! included), and R/WC0 log bits.

mod common;

use common::{kmessages, read, shut_down, uevents, write, BOUND};
use kevent_bench::Machine;
use kevent_wire::{Command, Datagram, Outcome};

const DEBUGFS: &str = "/sys/kernel/debug/kevent_thermal";
const PROCHOT: u64 = 1;
const VALID_50C: u64 = 0x8032_0000;
const NO_RATE_LIMIT: (&str, &str, &str) = ("kevent_thermal", "rate_limit_ms", "0");

fn boot(test: &str, params: &[(&str, &str, &str)]) -> Machine {
    common::boot(&common::config_with_params(test, params))
}

fn inject(machine: &mut Machine, cpu: u32, value: u64) -> Vec<Datagram> {
    let exchange = machine.request(Command::Inject { package: false, cpu, value }, BOUND).unwrap();
    assert_eq!(exchange.outcome, Outcome::Done);
    exchange.datagrams
}

#[test]
fn high_and_normal_carry_the_seeds_exact_payload_on_the_power_group() {
    let mut m = boot("payload", &[NO_RATE_LIMIT]);
    for (value, signal) in [(VALID_50C | PROCHOT, "high"), (VALID_50C, "normal")] {
        let datagrams = inject(&mut m, 1, value);
        let [kmessage] = kmessages(&datagrams)[..] else { panic!("{datagrams:?}") };
        let expected = format!("From: /org/kernel/devices/system/cpu/temperature\nSignal: {signal}\nCpu: 1\n\0");
        assert_eq!(kmessage.bytes, expected.as_bytes(), "no nlmsghdr, NUL counted");
        assert_eq!(kmessage.groups, 1 << 2, "KMSG_POWER is seen as the 2004 mask 1 << 2");
        assert_eq!(kmessage.portid, 0, "sent by the kernel");
    }
    shut_down(m);
}

#[test]
fn each_event_is_a_change_uevent_on_the_cpu_device_pointing_at_its_counter() {
    let mut m = boot("uevent", &[NO_RATE_LIMIT]);
    let datagrams = inject(&mut m, 1, VALID_50C | PROCHOT);
    let [uevent] = uevents(&datagrams)[..] else { panic!("{datagrams:?}") };
    assert_eq!(uevent.groups, 1);
    let text = String::from_utf8(uevent.bytes.clone()).unwrap();
    let fields: Vec<&str> = text.strip_suffix('\0').unwrap().split('\0').collect();
    assert_eq!(
        &fields[..9],
        [
            "change@/devices/system/cpu/cpu1",
            "ACTION=change",
            "DEVPATH=/devices/system/cpu/cpu1",
            "SUBSYSTEM=cpu",
            "KEVENT_OBJECT=/org/kernel/devices/system/cpu/temperature",
            "KEVENT_SIGNAL=high",
            "KEVENT_CPU=1",
            "KEVENT_ATTR=kevent_thermal/prochot_high",
            "KEVENT_COUNT=1",
        ]
    );
    // The kernel appends MODALIAS (its value ends with a newline), then SEQNUM, last.
    assert_eq!(fields.len(), 11, "{fields:?}");
    assert!(fields[9].starts_with("MODALIAS=cpu:type:x86,") && fields[9].ends_with('\n'), "{fields:?}");
    assert!(fields[10].strip_prefix("SEQNUM=").is_some_and(|n| n.parse::<u64>().is_ok()), "{fields:?}");
    // The attribute it points at is the payload: the counter it names.
    assert_eq!(read(&mut m, "/sys/devices/system/cpu/cpu1/kevent_thermal/prochot_high").trim(), "1");
    shut_down(m);
}

#[test]
fn a_second_interrupt_inside_the_rate_limit_window_produces_nothing() {
    let mut m = boot("rate-limit", &[]); // the default, 5000 ms
    assert_eq!(kmessages(&inject(&mut m, 0, VALID_50C | PROCHOT)).len(), 1);
    let swallowed = inject(&mut m, 0, VALID_50C);
    assert!(swallowed.is_empty(), "{swallowed:?}");
    assert_eq!(read(&mut m, "/sys/devices/system/cpu/cpu0/kevent_thermal/rate_limited").trim(), "1");
    assert_eq!(read(&mut m, "/sys/devices/system/cpu/cpu0/kevent_thermal/interrupts").trim(), "2");
    shut_down(m);
}

#[test]
fn every_kind_of_invalid_debugfs_write_is_refused_and_changes_nothing() {
    let mut m = boot("invalid-debugfs", &[NO_RATE_LIMIT]);
    let state_files = [
        format!("{DEBUGFS}/cpu"),
        format!("{DEBUGFS}/therm_status"),
        format!("{DEBUGFS}/pkg_therm_status"),
        format!("{DEBUGFS}/cpu0/therm_status"),
        format!("{DEBUGFS}/cpu1/therm_status"),
        format!("{DEBUGFS}/cpu1/pkg_therm_status"),
        format!("{DEBUGFS}/device/bare"),
        "/sys/devices/system/cpu/cpu1/kevent_thermal/interrupts".to_owned(),
    ];
    let state = |m: &mut Machine| state_files.iter().map(|f| read(m, f)).collect::<Vec<_>>();
    let before = state(&mut m);
    let invalid = [
        ("cpu", "not-a-number"),
        ("cpu", "2"), // the machine has CPUs 0 and 1
        ("cpu", "-1"),
        ("therm_status", "0x1000"), // reserved bit 12
        ("therm_status", "zz"),
        ("pkg_therm_status", "0x80000000"), // bit 31 is reserved in the package register
        ("trigger", "sideways"),
        ("trigger", "core 2 0x1"),
        ("trigger", "core 1 0x100000000"),
        ("trigger", "core 1"),
        ("cpu1/therm_status", "0x1"), // status bits are read-only
        ("cpu1/therm_status", "0x4000"),
        ("device/bare", "2"), // a switch: 0 or 1
        ("device/bare", "on"),
    ];
    for (file, data) in invalid {
        let outcome = write(&mut m, &format!("{DEBUGFS}/{file}"), data);
        let Outcome::Error { errno, .. } = outcome else { panic!("{file} <- {data:?} was accepted") };
        assert_eq!(errno, libc::EINVAL, "{file} <- {data:?}");
    }
    assert_eq!(state(&mut m), before, "a refused write changed nothing");
    let none = m.request(Command::Fence, BOUND).unwrap();
    assert!(none.datagrams.is_empty(), "no refused trigger raised an interrupt: {:?}", none.datagrams);
    shut_down(m);
}

#[test]
fn a_write_is_its_bytes_so_a_nul_anywhere_or_no_byte_at_all_is_refused() {
    let mut m = boot("nul-debugfs", &[NO_RATE_LIMIT]);
    let device = format!("{DEBUGFS}/device");
    // Everything a wrongly accepted write could change: staged and live
    // registers, the ack switch, and every counter an injection moves.
    let state_files = [
        format!("{DEBUGFS}/cpu"),
        format!("{DEBUGFS}/therm_status"),
        format!("{DEBUGFS}/pkg_therm_status"),
        format!("{DEBUGFS}/cpu1/therm_status"),
        format!("{DEBUGFS}/cpu1/pkg_therm_status"),
        format!("{DEBUGFS}/stats"),
        format!("{device}/hold_acks"),
        format!("{device}/stats"),
        "/sys/devices/system/cpu/cpu0/kevent_thermal/interrupts".to_owned(),
        "/sys/devices/system/cpu/cpu1/kevent_thermal/interrupts".to_owned(),
        format!("{device}/bare"),
    ];
    let state = |m: &mut Machine| state_files.iter().map(|f| read(m, f)).collect::<Vec<_>>();
    let before = state(&mut m);
    assert_eq!((before[0].as_str(), before[6].as_str(), before[10].as_str()), ("0\n", "0\n", "0\n"), "the defaults");
    // The part before each NUL is valid on its own: read as a C string, the
    // triggers would inject, cpu would stage CPU 1, hold_acks hold the acks,
    // bare acknowledge without firing.
    let invalid = [
        ("trigger", "core 1 0x80000001\0junk"),
        ("trigger", "core 1 0x80000001\n\0"),
        ("trigger", "core\0"),
        ("cpu", "1\0junk"),
        ("device/hold_acks", "1\0junk"),
        ("device/bare", "1\0junk"),
        ("therm_status", "0x80000001\0"),
        ("cpu1/therm_status", "0x80320000\0"),
        ("cpu1/pkg_therm_status", "\0"),
    ];
    // And a write of no bytes at all, to every writable file.
    let empty =
        ["trigger", "cpu", "device/hold_acks", "device/bare", "therm_status", "pkg_therm_status", "cpu1/therm_status"];
    let cases = invalid.into_iter().chain(empty.into_iter().map(|file| (file, "")));
    for (file, data) in cases {
        let outcome = write(&mut m, &format!("{DEBUGFS}/{file}"), data);
        let Outcome::Error { errno, .. } = outcome else { panic!("{file} <- {data:?} was accepted") };
        assert_eq!(errno, libc::EINVAL, "{file} <- {data:?}");
    }
    let none = m.request(Command::Fence, BOUND).unwrap();
    assert!(none.datagrams.is_empty(), "no refused write raised an interrupt: {:?}", none.datagrams);
    assert_eq!(state(&mut m), before, "a refused write changed nothing");
    // The same bytes without the NUL are accepted: the NUL alone refused them.
    assert_eq!(write(&mut m, &format!("{DEBUGFS}/cpu"), "1\n"), Outcome::Done);
    assert_eq!(read(&mut m, &format!("{DEBUGFS}/cpu")), "1\n");
    shut_down(m);
}

#[test]
fn log_bits_are_set_by_the_hardware_and_cleared_only_by_writing_zero() {
    let mut m = boot("log-bits", &[NO_RATE_LIMIT]);
    let status = format!("{DEBUGFS}/cpu1/therm_status");
    inject(&mut m, 1, VALID_50C | PROCHOT);
    assert_eq!(read(&mut m, &status), "0x80320003\n", "PROCHOT and its log");
    inject(&mut m, 1, VALID_50C);
    assert_eq!(read(&mut m, &status), "0x80320002\n", "the log outlives the status");
    assert_eq!(write(&mut m, &status, "0x2"), Outcome::Done);
    assert_eq!(read(&mut m, &status), "0x80320002\n", "writing 1 leaves it");
    assert_eq!(write(&mut m, &status, "0x0"), Outcome::Done);
    assert_eq!(read(&mut m, &status), "0x80320000\n", "writing 0 clears it");
    // A log bit given with the injection is latched too (a pulse the
    // hardware saw between interrupts), and ORed with what is there.
    inject(&mut m, 1, VALID_50C | 0x20);
    assert_eq!(read(&mut m, &status), "0x80320020\n");
    shut_down(m);
}

/// debugfs `kmessage/send` is send_kmessage() from userspace: a good write
/// is exactly the datagram a driver's call would broadcast, on its type's
/// group; every bad one is refused with EINVAL and sends nothing.
#[test]
fn kmessage_send_is_send_kmessage_and_refuses_every_bad_write() {
    const SEND: &str = "/sys/kernel/debug/kmessage/send";
    let mut m = boot("kmessage-send", &[]);
    let sent =
        m.request(Command::WriteFile { path: SEND.into(), data: b"fs /org/kernel/x high\nK: v\n".to_vec() }, BOUND);
    let exchange = sent.unwrap();
    assert_eq!(exchange.outcome, Outcome::Done, "{:?}", exchange.outcome);
    let got: Vec<(u32, &[u8])> = kmessages(&exchange.datagrams).iter().map(|d| (d.groups, &d.bytes[..])).collect();
    assert_eq!(got, [(1 << 3, &b"From: /org/kernel/x\nSignal: high\nK: v\n\0"[..])], "group fs, the seed's format");
    let bare = m.request(Command::WriteFile { path: SEND.into(), data: b"general /a b".to_vec() }, BOUND).unwrap();
    let got: Vec<&[u8]> = kmessages(&bare.datagrams).iter().map(|d| &d.bytes[..]).collect();
    assert_eq!(got, [&b"From: /a\nSignal: b\n\0"[..]], "no aux, no newline needed");

    let stats = read(&mut m, "/sys/kernel/debug/kmessage/stats");
    // The datagram of a send, as docs/events.md gives the seed's format:
    // `From: OBJECT\nSignal: SIGNAL\n` + the aux + a NUL.
    let datagram_len = |object: &str, signal: &str, aux: &str| {
        "From: ".len() + object.len() + "\nSignal: ".len() + signal.len() + "\n".len() + aux.len() + 1
    };
    // A write that fits a page, whose header does not: send_kmessage() refuses it.
    let object = format!("/{}", "o".repeat(4080));
    let long_object = format!("power {object} high\n");
    assert!(long_object.len() <= 4096 && datagram_len(&object, "high", "") > 4096);
    // More than a page written.
    let too_long = format!("power /x high\n{}", "a".repeat(4096));
    // A page written, whose datagram (the header's words added) would not
    // fit: a driver's aux would be cut; a write is refused whole.
    let aux = "a".repeat(4096 - 8);
    let cut_aux = format!("fs /x y\n{aux}");
    assert!(cut_aux.len() == 4096 && datagram_len("/x", "y", &aux) > 4096);
    let invalid: [&str; 14] = [
        "",
        "power",
        "power /x",
        "power /x \n",
        "power  /x y",
        "power /x y z",
        "thermal /x y",
        "POWER /x y",
        "power /x\0 y",
        "power /x\ty",
        "power /x y\r\n",
        &long_object,
        &too_long,
        &cut_aux,
    ];
    for data in invalid {
        let command = Command::WriteFile { path: SEND.into(), data: data.as_bytes().to_vec() };
        let exchange = m.request(command, BOUND).unwrap();
        let Outcome::Error { errno, .. } = exchange.outcome else { panic!("{data:.40?} was accepted") };
        assert_eq!(errno, libc::EINVAL, "{data:.40?}");
        assert!(kmessages(&exchange.datagrams).is_empty(), "{data:.40?} sent {:?}", exchange.datagrams);
    }
    let after = read(&mut m, "/sys/kernel/debug/kmessage/stats");
    let sent_line = |text: &str| text.lines().find(|l| l.starts_with("sent ")).unwrap().to_owned();
    assert_eq!(sent_line(&after), sent_line(&stats));
    shut_down(m);
}
