//! Decoding captured datagrams: kmessages (2004 wire format) and uevents.
//!
//! Decoding never fails: a datagram that does not parse is kept as a
//! `Malformed` event with its bytes, so nothing captured is ever lost.

use std::fmt::Write;

use kevent_wire::Datagram;
use serde::Serialize;

/// The uevent netlink protocol (15), as [`Datagram::protocol`] carries it;
/// datagrams of any other protocol are decoded as kmessages.
pub const NETLINK_KOBJECT_UEVENT: u32 = libc::NETLINK_KOBJECT_UEVENT as u32;

/// One captured datagram, decoded (docs/events.md has both formats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// `From: <object>\nSignal: <signal>\n<aux>\0` on the kmessage unit.
    Kmessage {
        /// The kmessage type its group mask names (`power`, ...), or
        /// `mask 0x..` if the mask names no single known type.
        group: String,
        /// The `From:` object path, e.g. `/org/kernel/devices/system/cpu/temperature`.
        from: String,
        /// The `Signal:` word, e.g. `high`.
        signal: String,
        /// The aux lines without their newlines; `(no final newline)` last
        /// if the aux text did not end with one.
        aux: Vec<String>,
    },
    /// `action@devpath\0KEY=value\0...` from the kernel's uevent socket.
    Uevent {
        /// `change`, `add`, ...: the part before `@`.
        action: String,
        /// Under /sys, e.g. `/devices/system/cpu/cpu1`.
        devpath: String,
        /// `KEY=value` pairs in the order the kernel sent them.
        env: Vec<String>,
    },
    /// A datagram that does not parse, kept rather than dropped.
    Malformed {
        /// Netlink protocol it came on.
        protocol: u32,
        /// The first thing found wrong.
        why: String,
        /// The whole datagram, [`escape`]d.
        bytes: String,
    },
}

/// Escapes bytes for display: printable ASCII as is, `\n`, `\0`, `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\n' => out.push_str("\\n"),
            0 => out.push_str("\\0"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// The inverse of [`escape`], for text read back (a bundle's `events.jsonl`):
/// Err says what is not an escape [`escape`] writes, and where.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes().enumerate();
    while let Some((at, b)) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next().map(|(_, b)| b) {
            Some(b'n') => out.push(b'\n'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).map(|(_, b)| b).collect();
                let value = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(value.ok_or_else(|| format!("character {at}: \\x needs two hex digits"))?);
            }
            Some(other) => return Err(format!("character {at}: unknown escape \\{}", other as char)),
            None => return Err(format!("character {at}: a backslash ends the text")),
        }
    }
    Ok(out)
}

fn group_name(mask: u32) -> String {
    kevent_wire::kmessage_type(mask).map_or_else(|| format!("mask {mask:#x}"), str::to_owned)
}

/// Decodes a datagram by its protocol; never fails (see [`Event::Malformed`]).
pub fn decode(datagram: &Datagram) -> Event {
    let malformed = |why: &str| Event::Malformed {
        protocol: datagram.protocol,
        why: why.to_owned(),
        bytes: escape(&datagram.bytes),
    };
    if datagram.protocol == NETLINK_KOBJECT_UEVENT {
        decode_uevent(&datagram.bytes).unwrap_or_else(&malformed)
    } else {
        decode_kmessage(&datagram.bytes, datagram.groups).unwrap_or_else(malformed)
    }
}

fn decode_kmessage(bytes: &[u8], groups: u32) -> Result<Event, &'static str> {
    let Some((&0, text)) = bytes.split_last() else { return Err("no terminating NUL") };
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8")?;
    if text.contains('\0') {
        return Err("NUL inside the payload");
    }
    let rest = text.strip_prefix("From: ").ok_or("does not start with \"From: \"")?;
    let (from, rest) = rest.split_once('\n').ok_or("no newline after From")?;
    let rest = rest.strip_prefix("Signal: ").ok_or("no \"Signal: \" line")?;
    let (signal, aux) = rest.split_once('\n').ok_or("no newline after Signal")?;
    let mut aux_lines: Vec<String> = aux.split('\n').map(str::to_owned).collect();
    // Aux conventionally ends with a newline; a missing one is shown, not hidden.
    if aux_lines.last().is_some_and(String::is_empty) {
        aux_lines.pop();
    } else if !aux.is_empty() {
        aux_lines.push("(no final newline)".to_owned());
    }
    Ok(Event::Kmessage { group: group_name(groups), from: from.to_owned(), signal: signal.to_owned(), aux: aux_lines })
}

fn decode_uevent(bytes: &[u8]) -> Result<Event, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?;
    let mut fields = text.strip_suffix('\0').ok_or("no terminating NUL")?.split('\0');
    let header = fields.next().ok_or("empty")?;
    let (action, devpath) = header.split_once('@').ok_or("header is not action@devpath")?;
    let env = fields.map(str::to_owned).collect();
    Ok(Event::Uevent { action: action.to_owned(), devpath: devpath.to_owned(), env })
}

/// Makes a run's events comparable with another run's: SEQNUM relative to
/// the first uevent of the run, and the CPU's MODALIAS (which names the CPU
/// model and its feature list, and so changes with the host) reduced to its
/// stable prefix. The keys stay, so their presence is still checked.
#[derive(Debug, Default)]
pub struct Normaliser {
    first_seqnum: Option<u64>,
}

/// What [`Normaliser`] puts after a CPU MODALIAS's `cpu:type:...` prefix.
pub const MODALIAS_PLACEHOLDER: &str = "[CPU model and features]";

impl Normaliser {
    /// Rewrites a uevent's SEQNUM and CPU MODALIAS in place; the first
    /// uevent seen fixes SEQNUM +0. Kmessages are left alone.
    pub fn normalise(&mut self, event: &mut Event) {
        let Event::Uevent { env, .. } = event else { return };
        for entry in env.iter_mut() {
            if let Some(seqnum) = entry.strip_prefix("SEQNUM=").and_then(|s| s.parse::<u64>().ok()) {
                let first = *self.first_seqnum.get_or_insert(seqnum);
                *entry = format!("SEQNUM=+{}", seqnum.wrapping_sub(first));
            } else if let Some(modalias) = entry.strip_prefix("MODALIAS=") {
                // The kernel's value ends with a newline: shown as `\n`, and
                // only if it is there, so the snapshot sees it go.
                let (value, newline) = match modalias.strip_suffix('\n') {
                    Some(value) => (value, "\\n"),
                    None => (modalias, ""),
                };
                let prefix = value.split_once(',').map_or(value, |(prefix, _)| prefix);
                if prefix.starts_with("cpu:type:") {
                    *entry = format!("MODALIAS={prefix},{MODALIAS_PLACEHOLDER}{newline}");
                }
            }
        }
    }
}

/// One line of a count table: "what happened", and how often.
pub fn kind_of(event: &Event) -> String {
    match event {
        Event::Kmessage { group, from, signal, .. } => format!("kmessage {group} {from} {signal}"),
        Event::Uevent { action, devpath, env } => {
            let signal = env.iter().find_map(|e| e.strip_prefix("KEVENT_SIGNAL=")).unwrap_or("");
            let object = env.iter().find_map(|e| e.strip_prefix("KEVENT_OBJECT=")).unwrap_or("");
            format!("uevent {action} {devpath} {object} {signal}").trim_end().to_owned()
        }
        Event::Malformed { protocol, why, .. } => format!("malformed protocol {protocol}: {why}"),
    }
}

/// The event as `udevadm monitor --kernel --property` prints a uevent, and
/// the kmessage likewise, with the guest's receive time.
pub fn render_live(datagram: &Datagram, event: &Event) -> String {
    let t = datagram.monotonic_ns as f64 / 1e9;
    match event {
        Event::Uevent { action, devpath, env } => {
            let subsystem = env.iter().find_map(|e| e.strip_prefix("SUBSYSTEM=")).unwrap_or("");
            let mut out = format!("KERNEL[{t:.6}] {action:<8} {devpath} ({subsystem})\n");
            for entry in env {
                out.push_str(entry.trim_end_matches('\n'));
                out.push('\n');
            }
            out
        }
        Event::Kmessage { group, from, signal, aux } => {
            let mut out = format!("KMESSAGE[{t:.6}] {group:<8} {from} {signal}\n");
            out.push_str(&format!("From: {from}\nSignal: {signal}\n"));
            for line in aux {
                out.push_str(line);
                out.push('\n');
            }
            out
        }
        Event::Malformed { protocol, why, bytes } => {
            format!("MALFORMED[{t:.6}] protocol {protocol}: {why}\n{bytes}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(protocol: u32, groups: u32, bytes: &[u8]) -> Datagram {
        Datagram { protocol, groups, portid: 0, monotonic_ns: 1_500_000_000, bytes: bytes.to_vec() }
    }

    /// The names the wire crate gives the types are those of the module's
    /// header, each at its number.
    #[test]
    fn kmessage_types_are_the_modules_own() {
        let defines = crate::kmod_source::defines("include/kmessage.h");
        let number = |name: &str| defines.get(&format!("KMSG_{}", name.to_uppercase())).map(|v| v.parse::<usize>());
        for (t, name) in kevent_wire::KMESSAGE_TYPES.iter().enumerate() {
            assert_eq!(number(name), Some(Ok(t)), "KMSG_{} in kmod/include/kmessage.h", name.to_uppercase());
        }
        let count = defines.get("KMSG_NR_TYPES").map(|v| v.parse::<usize>());
        assert_eq!(count, Some(Ok(kevent_wire::KMESSAGE_TYPES.len())));
    }

    #[test]
    fn the_seed_payload_decodes() {
        let d = datagram(31, 1 << 2, b"From: /org/kernel/devices/system/cpu/temperature\nSignal: high\nCpu: 1\n\0");
        assert_eq!(
            decode(&d),
            Event::Kmessage {
                group: "power".into(),
                from: "/org/kernel/devices/system/cpu/temperature".into(),
                signal: "high".into(),
                aux: vec!["Cpu: 1".into()],
            }
        );
    }

    #[test]
    fn broken_kmessages_are_kept_with_their_bytes() {
        for (bytes, why) in [
            (&b"From: x\nSignal: y\n"[..], "no terminating NUL"),
            (b"Signal: y\n\0", "does not start with \"From: \""),
            (b"From: x\n\0", "no \"Signal: \" line"),
            (b"From: x\0Signal: y\n\0", "NUL inside the payload"),
        ] {
            let Event::Malformed { why: got, bytes: shown, .. } = decode(&datagram(31, 4, bytes)) else {
                panic!("{bytes:?} decoded")
            };
            assert_eq!(got, why);
            assert_eq!(shown, escape(bytes));
        }
    }

    #[test]
    fn aux_without_a_final_newline_is_flagged() {
        let Event::Kmessage { aux, .. } = decode(&datagram(31, 1, b"From: a\nSignal: b\nx: 1\0")) else { panic!() };
        assert_eq!(aux, ["x: 1", "(no final newline)"]);
        let Event::Kmessage { aux, group, .. } = decode(&datagram(31, 0x10, b"From: a\nSignal: b\n\0")) else {
            panic!()
        };
        assert!(aux.is_empty());
        assert_eq!(group, "hotplug");
    }

    #[test]
    fn a_uevent_decodes_in_order_and_normalises() {
        let bytes = b"change@/devices/system/cpu/cpu1\0ACTION=change\0DEVPATH=/devices/system/cpu/cpu1\0\
SUBSYSTEM=cpu\0KEVENT_SIGNAL=high\0MODALIAS=cpu:type:x86,ven0002fam000Fmod006B:feature:,0000,0001\n\0SEQNUM=812\0";
        let mut n = Normaliser::default();
        let mut first = decode(&datagram(15, 1, bytes));
        n.normalise(&mut first);
        let Event::Uevent { action, devpath, env } = &first else { panic!("{first:?}") };
        assert_eq!(action, "change");
        assert_eq!(devpath, "/devices/system/cpu/cpu1");
        assert_eq!(
            env,
            &[
                "ACTION=change",
                "DEVPATH=/devices/system/cpu/cpu1",
                "SUBSYSTEM=cpu",
                "KEVENT_SIGNAL=high",
                "MODALIAS=cpu:type:x86,[CPU model and features]\\n",
                "SEQNUM=+0",
            ]
        );
        let later = String::from_utf8_lossy(bytes).replace("SEQNUM=812", "SEQNUM=815");
        let mut second = decode(&datagram(15, 1, later.as_bytes()));
        n.normalise(&mut second);
        let Event::Uevent { env, .. } = second else { panic!() };
        assert_eq!(env.last().unwrap(), "SEQNUM=+3");
        // A MODALIAS without the kernel's newline keeps none in the snapshot.
        let bare = String::from_utf8_lossy(bytes).replace(",0001\n\0", ",0001\0");
        let mut third = decode(&datagram(15, 1, bare.as_bytes()));
        n.normalise(&mut third);
        let Event::Uevent { env, .. } = third else { panic!() };
        assert_eq!(env[4], "MODALIAS=cpu:type:x86,[CPU model and features]");
    }

    #[test]
    fn escaping_shows_newlines_nuls_backslashes_and_other_bytes() {
        assert_eq!(escape(b"Cpu: 1\n\0a\\b\x01\xff~"), "Cpu: 1\\n\\0a\\\\b\\x01\\xff~");
    }

    #[test]
    fn live_rendering_looks_like_udevadm_monitor() {
        let d = datagram(15, 1, b"change@/devices/system/cpu/cpu1\0ACTION=change\0SUBSYSTEM=cpu\0SEQNUM=9\0");
        let text = render_live(&d, &decode(&d));
        assert_eq!(
            text,
            "KERNEL[1.500000] change   /devices/system/cpu/cpu1 (cpu)\nACTION=change\nSUBSYSTEM=cpu\nSEQNUM=9\n"
        );
    }
}
