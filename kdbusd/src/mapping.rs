//! The mapping of docs/dbus.md: one netlink datagram, one D-Bus signal.
//!
//! Pure and total: every byte string maps to a signal whose object path,
//! interface and member are valid D-Bus names, whatever the datagram holds,
//! and the datagram itself is the signal's last argument, so nothing of it
//! is lost. Nothing here panics (the fuzz target `kdbusd_mapping` checks it).

use std::fmt::Write as _;

/// Where every kmessage interface and the uevent interface live.
pub const INTERFACE_PREFIX: &str = "org.kernel";
/// kdbusd's own name, object and interface: `Sync`, `Malformed`, `Overrun`.
pub const BUS_NAME: &str = "org.kernel.Events";
/// The object of kdbusd itself.
pub const OBJECT_PATH: &str = "/org/kernel/Events";
/// The interface of kdbusd itself.
pub const INTERFACE: &str = "org.kernel.Events";
/// The interface of uevent signals.
pub const UEVENT_INTERFACE: &str = "org.kernel.Uevent";
/// The prefix of a uevent's object path; DEVPATH follows, escaped.
pub const UEVENT_PATH_PREFIX: &str = "/org/kernel";
/// kmessage types by number, as `kmod/include/kmessage.h` defines `KMSG_*`,
/// and the interface each one's signals are on.
pub const KMESSAGE_INTERFACES: [(&str, &str); 5] = [
    ("general", "org.kernel.General"),
    ("storage", "org.kernel.Storage"),
    ("power", "org.kernel.Power"),
    ("fs", "org.kernel.Fs"),
    ("hotplug", "org.kernel.Hotplug"),
];
/// The uevent netlink protocol.
pub const NETLINK_KOBJECT_UEVENT: u32 = 15;
/// The longest member name D-Bus allows.
pub const MAX_MEMBER_LEN: usize = 255;

/// Which socket a datagram came from, and the group mask of its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kmessage unit; `groups` is the sender's `nl_groups`.
    Kmessage {
        /// The netlink unit.
        unit: u32,
        /// `nl_groups` of the sender address: `1 << type`.
        groups: u32,
    },
    /// NETLINK_KOBJECT_UEVENT group 1.
    Uevent,
}

/// The arguments of a signal, by kind; each ends with the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `sa{ss}ay`: the aux text, its `Key: value` lines, the datagram.
    Kmessage {
        /// Everything after the `Signal:` line, before the final NUL.
        aux: String,
        /// The aux lines of the form `Key: value`, in order, first of each key.
        fields: Vec<(String, String)>,
        /// The datagram as received.
        datagram: Vec<u8>,
    },
    /// `a{ss}ay`: the environment, `KEY=value` split at the first `=`, and
    /// the datagram.
    Uevent {
        /// The environment in the kernel's order, first of each key.
        env: Vec<(String, String)>,
        /// The datagram as received.
        datagram: Vec<u8>,
    },
    /// `suuay`: why it did not parse, the protocol, the group mask, the datagram.
    Malformed {
        /// Why the datagram is not a kmessage or a uevent.
        why: String,
        /// The netlink protocol it came from.
        protocol: u32,
        /// The sender's group mask.
        groups: u32,
        /// The datagram as received.
        datagram: Vec<u8>,
    },
}

impl Body {
    /// The D-Bus signature of the body.
    pub fn signature(&self) -> &'static str {
        match self {
            Body::Kmessage { .. } => "sa{ss}ay",
            Body::Uevent { .. } => "a{ss}ay",
            Body::Malformed { .. } => "suuay",
        }
    }

    /// The datagram the signal carries.
    pub fn datagram(&self) -> &[u8] {
        match self {
            Body::Kmessage { datagram, .. } | Body::Uevent { datagram, .. } | Body::Malformed { datagram, .. } => {
                datagram
            }
        }
    }
}

/// One signal, ready to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// A valid object path.
    pub path: String,
    /// A valid interface name.
    pub interface: &'static str,
    /// A valid member name.
    pub member: String,
    /// The arguments.
    pub body: Body,
}

/// The signal for one datagram; never fails.
pub fn map(source: Source, datagram: &[u8]) -> Signal {
    let mapped = match source {
        Source::Kmessage { groups, .. } => map_kmessage(groups, datagram),
        Source::Uevent => map_uevent(datagram),
    };
    mapped.unwrap_or_else(|why| {
        let (protocol, groups) = match source {
            Source::Kmessage { unit, groups } => (unit, groups),
            Source::Uevent => (NETLINK_KOBJECT_UEVENT, 1),
        };
        Signal {
            path: OBJECT_PATH.to_owned(),
            interface: INTERFACE,
            member: "Malformed".to_owned(),
            body: Body::Malformed { why: why.to_owned(), protocol, groups, datagram: datagram.to_vec() },
        }
    })
}

fn map_kmessage(groups: u32, datagram: &[u8]) -> Result<Signal, &'static str> {
    let interface = kmessage_interface(groups).ok_or("the group mask names no single kmessage type")?;
    let Some((&0, text)) = datagram.split_last() else { return Err("no terminating NUL") };
    if text.contains(&0) {
        return Err("a NUL inside the payload");
    }
    let rest = text.strip_prefix(b"From: ").ok_or("does not start with \"From: \"")?;
    let newline = rest.iter().position(|&b| b == b'\n').ok_or("no newline after From")?;
    let (from, rest) = (&rest[..newline], &rest[newline + 1..]);
    let rest = rest.strip_prefix(b"Signal: ").ok_or("no \"Signal: \" line")?;
    let newline = rest.iter().position(|&b| b == b'\n').ok_or("no newline after Signal")?;
    let (signal, aux) = (&rest[..newline], &rest[newline + 1..]);
    let aux = text_of(aux);
    let fields = first_of_each(aux.lines().filter_map(|line| line.split_once(": ")));
    Ok(Signal {
        path: object_path(from),
        interface,
        member: member(signal),
        body: Body::Kmessage { aux, fields, datagram: datagram.to_vec() },
    })
}

fn map_uevent(datagram: &[u8]) -> Result<Signal, &'static str> {
    let Some((&0, text)) = datagram.split_last() else { return Err("no terminating NUL") };
    let mut parts = text.split(|&b| b == 0);
    let header = parts.next().unwrap_or_default();
    let at = header.iter().position(|&b| b == b'@').ok_or("header is not action@devpath")?;
    let (action, header_devpath) = (&header[..at], &header[at + 1..]);
    // DEVPATH names the device (the header's copy stands in if it is
    // absent), escaped from its bytes: the path gives them back exactly,
    // even where they are not UTF-8 and the environment's text cannot.
    let devpath = parts.clone().find_map(|entry| entry.strip_prefix(b"DEVPATH=")).unwrap_or(header_devpath);
    let env = first_of_each(parts.map(|entry| {
        let entry = text_of(entry);
        match entry.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (entry, String::new()),
        }
    }));
    Ok(Signal {
        path: uevent_path(devpath),
        interface: UEVENT_INTERFACE,
        member: member(action),
        body: Body::Uevent { env, datagram: datagram.to_vec() },
    })
}

/// The interface of the kmessage type a group mask names, if exactly one.
pub fn kmessage_interface(groups: u32) -> Option<&'static str> {
    if groups.count_ones() != 1 {
        return None;
    }
    KMESSAGE_INTERFACES.get(groups.trailing_zeros() as usize).map(|(_, interface)| *interface)
}

/// Bytes as text: invalid UTF-8 and NUL (which a D-Bus string cannot hold)
/// each become U+FFFD.
pub fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{fffd}")
}

/// Pairs in order, keeping the first of each key: a D-Bus dictionary has
/// unique keys, and the datagram keeps the others.
fn first_of_each<K: AsRef<str> + PartialEq, V>(pairs: impl Iterator<Item = (K, V)>) -> Vec<(String, String)>
where
    V: AsRef<str>,
{
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in pairs {
        if !out.iter().any(|(k, _)| k == key.as_ref()) {
            out.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        }
    }
    out
}

/// systemd's `bus_label_escape`: ASCII letters and digits stay, except a
/// digit in first place; every other byte becomes `_` and two lowercase hex
/// digits; the empty label is `_`. The result is a valid object path
/// element and member name, and the escaping can be undone
/// ([`unescape_label`]).
pub fn escape_label(label: &[u8]) -> String {
    if label.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(label.len());
    for (i, &b) in label.iter().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

/// The bytes an [`escape_label`] result stands for; `None` if it is not one.
pub fn unescape_label(label: &str) -> Option<Vec<u8>> {
    if label == "_" {
        return Some(Vec::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if hex.bytes().any(|b| b.is_ascii_uppercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether `path` is a valid D-Bus object path: `/`, or `/`-separated
/// non-empty elements of `[A-Za-z0-9_]`, no trailing `/`.
pub fn is_object_path(path: &[u8]) -> bool {
    if path == b"/" {
        return true;
    }
    match path.strip_prefix(b"/") {
        Some(rest) => rest
            .split(|&b| b == b'/')
            .all(|element| !element.is_empty() && element.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')),
        None => false,
    }
}

/// Whether `name` is a valid D-Bus member name.
pub fn is_member(name: &[u8]) -> bool {
    match name.split_first() {
        Some((first, rest)) => {
            name.len() <= MAX_MEMBER_LEN
                && (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

/// A kmessage's object: the `From:` text as it is if it is a valid object
/// path, else every element (the text split at `/`, after a leading `/`)
/// escaped with [`escape_label`].
pub fn object_path(from: &[u8]) -> String {
    if is_object_path(from) {
        return String::from_utf8_lossy(from).into_owned();
    }
    escaped_path("", from.strip_prefix(b"/").unwrap_or(from))
}

/// A uevent's object: [`UEVENT_PATH_PREFIX`], then every element of
/// DEVPATH escaped with [`escape_label`] (as systemd's `sd_bus_path_encode`
/// does for each element).
pub fn uevent_path(devpath: &[u8]) -> String {
    escaped_path(UEVENT_PATH_PREFIX, devpath.strip_prefix(b"/").unwrap_or(devpath))
}

fn escaped_path(prefix: &str, elements: &[u8]) -> String {
    let mut path = prefix.to_owned();
    for element in elements.split(|&b| b == b'/') {
        path.push('/');
        path.push_str(&escape_label(element));
    }
    path
}

/// A signal's member: the `Signal:` word (or the uevent action) as it is if
/// it is a valid member name, else escaped with [`escape_label`] and cut to
/// [`MAX_MEMBER_LEN`] bytes (the whole word is in the datagram).
pub fn member(word: &[u8]) -> String {
    if is_member(word) {
        return String::from_utf8_lossy(word).into_owned();
    }
    let mut escaped = escape_label(word);
    escaped.truncate(MAX_MEMBER_LEN);
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const POWER: Source = Source::Kmessage { unit: 31, groups: 1 << 2 };

    #[test]
    fn the_seed_payload_is_a_power_signal_from_its_object() {
        let datagram = b"From: /org/kernel/devices/system/cpu/temperature\nSignal: high\nCpu: 1\n\0";
        let signal = map(POWER, datagram);
        assert_eq!(signal.path, "/org/kernel/devices/system/cpu/temperature");
        assert_eq!(signal.interface, "org.kernel.Power");
        assert_eq!(signal.member, "high");
        assert_eq!(
            signal.body,
            Body::Kmessage {
                aux: "Cpu: 1\n".into(),
                fields: vec![("Cpu".into(), "1".into())],
                datagram: datagram.to_vec()
            }
        );
        assert_eq!(signal.body.signature(), "sa{ss}ay");
    }

    #[test]
    fn every_type_has_its_interface() {
        let names: Vec<&str> = KMESSAGE_INTERFACES.iter().map(|(_, i)| *i).collect();
        for (t, interface) in names.iter().enumerate() {
            assert_eq!(kmessage_interface(1 << t), Some(*interface));
        }
        assert_eq!(kmessage_interface(0), None);
        assert_eq!(kmessage_interface(0b11), None);
        assert_eq!(kmessage_interface(1 << 5), None);
    }

    #[test]
    fn labels_escape_as_systemd_does_and_unescape() {
        assert_eq!(escape_label(b"cpu1"), "cpu1");
        assert_eq!(escape_label(b"1cpu"), "_31cpu");
        assert_eq!(escape_label(b"a-b.c:d_e"), "a_2db_2ec_3ad_5fe");
        assert_eq!(escape_label(b""), "_");
        assert_eq!(escape_label(b"\xff\0"), "_ff_00");
        for label in [&b"cpu1"[..], b"1cpu", b"a-b.c:d_e", b"", b"\xff\0", b"_", b"__"] {
            assert_eq!(unescape_label(&escape_label(label)).as_deref(), Some(label), "{label:?}");
        }
        assert_eq!(unescape_label("_4"), None);
        assert_eq!(unescape_label("_4G"), None);
        assert_eq!(unescape_label("_4A"), None, "uppercase hex is not what escape_label writes");
    }

    #[test]
    fn an_invalid_object_is_escaped_element_by_element() {
        assert_eq!(object_path(b"/org/kernel/block/sda"), "/org/kernel/block/sda");
        assert_eq!(object_path(b"/org/kernel/block/sda-1"), "/org/kernel/block/sda_2d1");
        assert_eq!(object_path(b"/org//x/"), "/org/_/x/_");
        assert_eq!(object_path(b"org.kernel"), "/org_2ekernel");
        assert_eq!(object_path(b""), "/_");
        assert_eq!(object_path(b"/"), "/");
        for from in [&b"/a b/\xff"[..], b"//", b"x", b"/1/2", b"/a/"] {
            assert!(is_object_path(object_path(from).as_bytes()), "{from:?}");
        }
    }

    #[test]
    fn devpaths_become_paths_under_org_kernel() {
        assert_eq!(uevent_path(b"/devices/system/cpu/cpu1"), "/org/kernel/devices/system/cpu/cpu1");
        assert_eq!(
            uevent_path(b"/devices/pci0000:00/0000:00:03.0"),
            "/org/kernel/devices/pci0000_3a00/_30000_3a00_3a03_2e0"
        );
    }

    #[test]
    fn an_invalid_signal_word_is_escaped_and_cut() {
        assert_eq!(member(b"high"), "high");
        assert_eq!(member(b"over-heat"), "over_2dheat");
        assert_eq!(member(b"2hot"), "_32hot");
        assert_eq!(member(b""), "_");
        let long = member(&[b'-'; 300]);
        assert_eq!(long.len(), MAX_MEMBER_LEN);
        assert!(is_member(long.as_bytes()));
        assert!(!is_member(&[b'a'; 256]));
    }

    #[test]
    fn bad_datagrams_are_malformed_signals_carrying_their_bytes() {
        for (datagram, why) in [
            (&b"From: /a\nSignal: b\n"[..], "no terminating NUL"),
            (b"Signal: b\n\0", "does not start with \"From: \""),
            (b"From: /a\n\0", "no \"Signal: \" line"),
            (b"From: /a\0Signal: b\n\0", "a NUL inside the payload"),
            (b"", "no terminating NUL"),
        ] {
            let signal = map(POWER, datagram);
            assert_eq!(
                (signal.path.as_str(), signal.interface, signal.member.as_str()),
                (OBJECT_PATH, INTERFACE, "Malformed")
            );
            assert_eq!(
                signal.body,
                Body::Malformed { why: why.into(), protocol: 31, groups: 4, datagram: datagram.to_vec() }
            );
        }
        let signal = map(Source::Kmessage { unit: 31, groups: 3 }, b"From: /a\nSignal: b\n\0");
        assert!(matches!(signal.body, Body::Malformed { ref why, .. } if why.contains("group mask")));
        let signal = map(Source::Uevent, b"no-at-sign\0A=1\0");
        assert!(matches!(signal.body, Body::Malformed { ref why, protocol: 15, .. } if why.contains("action@devpath")));
    }

    #[test]
    fn aux_that_is_not_utf8_is_replaced_and_fields_keep_the_first_of_each_key() {
        let datagram = b"From: /a\nSignal: b\nK: \xff\nK: 2\nno colon\nX: y: z\n\0";
        let Body::Kmessage { aux, fields, .. } = map(Source::Kmessage { unit: 31, groups: 1 }, datagram).body else {
            panic!()
        };
        assert_eq!(aux, "K: \u{fffd}\nK: 2\nno colon\nX: y: z\n");
        assert_eq!(fields, [("K".into(), "\u{fffd}".into()), ("X".into(), "y: z".into())]);
    }

    #[test]
    fn a_uevent_is_a_signal_from_its_device_with_its_environment() {
        let datagram = b"change@/devices/system/cpu/cpu1\0ACTION=change\0DEVPATH=/devices/system/cpu/cpu1\0\
SUBSYSTEM=cpu\0KEVENT_SIGNAL=high\0SEQNUM=5\0";
        let signal = map(Source::Uevent, datagram);
        assert_eq!(
            (signal.path.as_str(), signal.interface, signal.member.as_str()),
            ("/org/kernel/devices/system/cpu/cpu1", "org.kernel.Uevent", "change")
        );
        let Body::Uevent { env, datagram: carried } = signal.body else { panic!() };
        assert_eq!(env[0], ("ACTION".into(), "change".into()));
        assert_eq!(env[4], ("SEQNUM".into(), "5".into()));
        assert_eq!(carried, datagram);
        // Without DEVPATH, the header names the device.
        let signal = map(Source::Uevent, b"add@/devices/virtual/x-y\0ACTION=add\0\0");
        assert_eq!(signal.path, "/org/kernel/devices/virtual/x_2dy");
        let Body::Uevent { env, .. } = signal.body else { panic!() };
        assert_eq!(env, [("ACTION".into(), "add".into()), ("".into(), "".into())]);
    }

    #[test]
    fn a_devpath_that_is_not_utf8_comes_back_whole_from_the_object_path() {
        let signal = map(Source::Uevent, b"change@/devices/x\xff\0ACTION=change\0DEVPATH=/devices/virtual/n\xe9t\0\0");
        assert_eq!(signal.path, "/org/kernel/devices/virtual/n_e9t");
        let elements: Vec<Vec<u8>> =
            signal.path["/org/kernel/".len()..].split('/').map(|label| unescape_label(label).unwrap()).collect();
        assert_eq!(elements.join(&b'/'), b"devices/virtual/n\xe9t");
        let Body::Uevent { env, .. } = signal.body else { panic!() };
        assert_eq!(
            env[1],
            ("DEVPATH".into(), "/devices/virtual/n\u{fffd}t".into()),
            "the text replaces what the path keeps"
        );
    }
}
