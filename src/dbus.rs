//! The third channel: messages of the guest's system bus, as the agent's
//! monitor forwarded them (docs/dbus.md), read and checked for the
//! snapshot.
//!
//! A signal that carries a datagram (its last argument, `ay`) is matched
//! with the step's netlink datagrams byte for byte, and checked to be
//! exactly what docs/dbus.md maps that datagram to: the snapshot then says
//! which datagram it carries, and shows the rest of the signal. Anything
//! else on the bus is shown as it is.

use kdbusd::mapping::{self, Body, Source};
use kdbusd::message::{self, Kind, Value};
use kevent_wire::{Datagram, DbusMessage};
use serde::Serialize;

use crate::events::NETLINK_KOBJECT_UEVENT;

/// What the guest's bus held for a connection as a run ended.
pub use kdbusd::backlog::Backlog;

/// One message of the bus, for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbusEntry {
    /// `signal org.kernel.Power.high`, `method call org.x.Y.Z`, ...
    pub message: String,
    /// The object path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Which of the step's datagrams the signal carries, byte for byte
    /// (`kmessage 2`: the second kmessage event of the step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carries: Option<String>,
    /// The arguments, each as text; a carried datagram's environment
    /// (uevents) is named rather than repeated, the datagram itself too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Set when the signal is not what docs/dbus.md maps its datagram to,
    /// or the message does not read: what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong: Option<String>,
}

impl DbusEntry {
    /// The key of the entry in a repeated step's counts.
    pub fn kind(&self) -> String {
        match &self.path {
            Some(path) => format!("dbus {} {path}", self.message),
            None => format!("dbus {}", self.message),
        }
    }

    /// Whether the entry is a signal that carries one of the step's
    /// datagrams and is exactly what docs/dbus.md maps it to.
    pub fn is_mapped(&self) -> bool {
        self.carries.is_some() && self.wrong.is_none()
    }
}

/// Whether `bytes` is a signal kdbusd sends of a kernel event: on one of
/// the `org.kernel.` interfaces (docs/dbus.md), whatever it carries.
pub fn is_event_signal(bytes: &[u8]) -> bool {
    message::parse(bytes)
        .is_ok_and(|m| m.kind == Kind::Signal && m.interface.is_some_and(|i| i.starts_with("org.kernel.")))
}

/// The channel a carried datagram came on: kmessages sort first.
fn channel_rank(entry: &DbusEntry) -> u8 {
    match entry.carries.as_deref() {
        Some(c) if c.starts_with("uevent") => 1,
        Some(_) => 0,
        None => 2,
    }
}

/// The step's bus messages for review, given the step's datagrams in the
/// order the snapshot shows them (kmessages, then uevents).
///
/// kdbusd reads its two sockets as the kernel fills them, so which
/// channel's signal goes first is scheduling: each channel keeps its order,
/// kmessages' signals first, then uevents', then whatever else the bus
/// carried, in the bus's order.
pub fn entries(messages: &[DbusMessage], datagrams: &[&Datagram]) -> Vec<DbusEntry> {
    let mut used = vec![false; datagrams.len()];
    // Calls by (sender, serial), so that a reply names what it answers.
    let mut calls: Vec<((String, u32), String)> = Vec::new();
    let mut out: Vec<DbusEntry> = messages
        .iter()
        .map(|m| {
            let message = match message::parse(&m.bytes) {
                Ok(message) => message,
                Err(e) => return unreadable(&m.bytes, &e),
            };
            let mut entry = entry(&message, datagrams, &mut used);
            match message.kind {
                Kind::MethodCall => {
                    let key = (message.sender.clone().unwrap_or_default(), message.serial);
                    calls.push((key, entry.message.trim_start_matches("method call ").to_owned()));
                }
                Kind::MethodReturn | Kind::Error => {
                    let key = (message.destination.clone().unwrap_or_default(), message.reply_serial.unwrap_or(0));
                    if let Some((_, call)) = calls.iter().find(|(k, _)| *k == key) {
                        entry.message = format!("{} (to {call})", entry.message);
                    }
                }
                Kind::Signal => {}
            }
            entry
        })
        .collect();
    out.sort_by_key(channel_rank);
    out
}

/// How the snapshot names the `index`th datagram: `kmessage 2`, counting
/// within its channel from 1.
fn datagram_name(datagrams: &[&Datagram], index: usize) -> String {
    let uevent = datagrams[index].protocol == NETLINK_KOBJECT_UEVENT;
    let nth = datagrams[..=index].iter().filter(|d| (d.protocol == NETLINK_KOBJECT_UEVENT) == uevent).count();
    format!("{} {nth}", if uevent { "uevent" } else { "kmessage" })
}

fn unreadable(bytes: &[u8], why: &message::ParseError) -> DbusEntry {
    DbusEntry {
        message: "unreadable".into(),
        path: None,
        carries: None,
        args: vec![message::escape_bytes(bytes)],
        wrong: Some(why.to_string()),
    }
}

fn entry(message: &message::Message, datagrams: &[&Datagram], used: &mut [bool]) -> DbusEntry {
    let name = match (&message.interface, &message.member, &message.error_name) {
        (_, _, Some(error)) => format!("{} {error}", message.kind),
        (Some(interface), Some(member), _) => format!("{} {interface}.{member}", message.kind),
        (None, Some(member), _) => format!("{} {member}", message.kind),
        _ => message.kind.to_string(),
    };
    let mut entry = DbusEntry {
        message: name,
        path: message.path.clone(),
        carries: None,
        args: message.body.iter().map(Value::to_string).collect(),
        wrong: None,
    };
    // A signal whose last argument is a datagram of this step.
    let carried = match (message.kind, message.body.last()) {
        (Kind::Signal, Some(Value::Bytes(carried))) => carried,
        _ => return entry,
    };
    let found = (0..datagrams.len()).find(|&i| !used[i] && datagrams[i].bytes == *carried);
    let Some(index) = found else {
        entry.wrong = Some("it carries bytes that are none of the step's datagrams".into());
        return entry;
    };
    used[index] = true;
    let datagram = datagrams[index];
    entry.carries = Some(datagram_name(datagrams, index));
    let source = if datagram.protocol == NETLINK_KOBJECT_UEVENT {
        Source::Uevent
    } else {
        Source::Kmessage { unit: datagram.protocol, groups: datagram.groups }
    };
    let expected = mapping::map(source, &datagram.bytes);
    let expected_body = body_values(&expected.body);
    let header_matches = message.path.as_deref() == Some(expected.path.as_str())
        && message.interface.as_deref() == Some(expected.interface)
        && message.member.as_deref() == Some(expected.member.as_str());
    if !header_matches || message.body != expected_body {
        entry.wrong = Some(format!(
            "docs/dbus.md maps it to {} {}.{} with ({})",
            expected.path,
            expected.interface,
            expected.member,
            expected_body.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")
        ));
        return entry;
    }
    // Checked equal to the mapping: the datagram is named, not repeated,
    // and a uevent's environment (its SEQNUM differs from run to run) too.
    entry.args = match &expected.body {
        Body::Kmessage { aux, fields, .. } => vec![
            format!("aux {aux:?}"),
            format!(
                "fields {{{}}}",
                fields.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect::<Vec<_>>().join(", ")
            ),
        ],
        Body::Uevent { env, .. } => vec![format!("env: the {} entries of its environment, in order", env.len())],
        Body::Malformed { why, protocol, groups, .. } => {
            vec![format!("why {why:?}"), format!("protocol {protocol}"), format!("groups {groups:#x}")]
        }
    };
    entry
}

/// The values a mapped signal's body marshals to.
pub fn body_values(body: &Body) -> Vec<Value> {
    let dict = |pairs: &[(String, String)]| {
        Value::Dict(pairs.iter().map(|(k, v)| (Value::Str(k.clone()), Value::Str(v.clone()))).collect())
    };
    match body {
        Body::Kmessage { aux, fields, datagram } => {
            vec![Value::Str(aux.clone()), dict(fields), Value::Bytes(datagram.clone())]
        }
        Body::Uevent { env, datagram } => vec![dict(env), Value::Bytes(datagram.clone())],
        Body::Malformed { why, protocol, groups, datagram } => vec![
            Value::Str(why.clone()),
            Value::Uint((*protocol).into()),
            Value::Uint((*groups).into()),
            Value::Bytes(datagram.clone()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kdbusds_signals_are_event_signals() {
        let power = message::marshal_signal(1, "/org/kernel/x", "org.kernel.Power", "high", &[]).unwrap();
        let owner =
            message::marshal_signal(2, "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged", &[]);
        let sync = message::marshal_method_call(
            3,
            "org.kernel.Events",
            "/org/kernel/Events",
            "org.kernel.Events",
            "Sync",
            &[],
        );
        assert!(is_event_signal(&power));
        assert!(!is_event_signal(&owner.unwrap()));
        assert!(!is_event_signal(&sync.unwrap()), "a call on kdbusd's interface is no event");
        assert!(!is_event_signal(&power[..power.len() - 1]));
    }

    fn datagram(protocol: u32, groups: u32, bytes: &[u8]) -> Datagram {
        Datagram { protocol, groups, portid: 0, monotonic_ns: 0, bytes: bytes.to_vec() }
    }

    fn marshal(path: &str, interface: &str, member: &str, body: &[Value]) -> Vec<u8> {
        message::marshal_signal(1, path, interface, member, body).unwrap()
    }

    fn mapped(source: Source, bytes: &[u8]) -> Vec<u8> {
        let signal = mapping::map(source, bytes);
        marshal(&signal.path, signal.interface, &signal.member, &body_values(&signal.body))
    }

    #[test]
    fn signals_name_the_datagram_they_carry_and_sort_by_channel() {
        let power = Source::Kmessage { unit: 31, groups: 4 };
        let k = datagram(31, 4, b"From: /org/kernel/x\nSignal: high\nCpu: 1\n\0");
        let u = datagram(15, 1, b"change@/devices/system/cpu/cpu1\0ACTION=change\0SEQNUM=9\0");
        let messages = [mapped(Source::Uevent, &u.bytes), mapped(power, &k.bytes)]
            .map(|bytes| DbusMessage { monotonic_ns: 0, bytes });
        let got = entries(&messages, &[&k, &u]);
        assert_eq!(
            got[0],
            DbusEntry {
                message: "signal org.kernel.Power.high".into(),
                path: Some("/org/kernel/x".into()),
                carries: Some("kmessage 1".into()),
                args: vec!["aux \"Cpu: 1\\n\"".into(), "fields {\"Cpu\": \"1\"}".into()],
                wrong: None,
            }
        );
        assert_eq!(got[1].message, "signal org.kernel.Uevent.change");
        assert_eq!(got[1].path.as_deref(), Some("/org/kernel/devices/system/cpu/cpu1"));
        assert_eq!(got[1].carries.as_deref(), Some("uevent 1"));
        assert_eq!(got[1].args, ["env: the 2 entries of its environment, in order"]);
    }

    #[test]
    fn a_signal_that_is_not_the_mapping_of_its_datagram_says_so() {
        let k = datagram(31, 4, b"From: /a-b\nSignal: 2hot\n\0");
        // The path sent unescaped would be invalid D-Bus; a wrong member is enough here.
        let bytes = marshal(
            "/a_2db",
            "org.kernel.Power",
            "hot",
            &[Value::Str(String::new()), Value::Dict(Vec::new()), Value::Bytes(k.bytes.clone())],
        );
        let got = entries(&[DbusMessage { monotonic_ns: 0, bytes }], &[&k]);
        assert_eq!(got[0].wrong.as_deref(), Some("docs/dbus.md maps it to /a_2db org.kernel.Power._32hot with (\"\", {}, 25 bytes b\"From: /a-b\\nSignal: 2hot\\n\\x00\")"));
        let stray = marshal("/x", "org.kernel.Power", "high", &[Value::Bytes(b"other".to_vec())]);
        let got = entries(&[DbusMessage { monotonic_ns: 0, bytes: stray }], &[&k]);
        assert_eq!(got[0].wrong.as_deref(), Some("it carries bytes that are none of the step's datagrams"));
        let got = entries(&[DbusMessage { monotonic_ns: 0, bytes: b"l\x04".to_vec() }], &[]);
        assert_eq!(got[0].message, "unreadable");
        assert!(got[0].wrong.as_deref().unwrap().starts_with("not a D-Bus message: at byte 2"));
    }
}
