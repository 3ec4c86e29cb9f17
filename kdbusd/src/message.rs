//! A reader of marshalled D-Bus messages (the D-Bus specification,
//! "Message Format"), for the host: the guest's monitor forwards every
//! message as the bus sent it, and the snapshot shows what it says.
//!
//! Pure and total like [`crate::mapping`]: every byte string either reads
//! as a message or is refused with the offset and the reason; nothing here
//! panics, and nesting and lengths are bounded by the bytes given.

use std::fmt::{self, Write as _};

/// Containers nested deeper than this are refused (the specification's
/// limit is 32 arrays and 32 structs: 64 in all).
const MAX_DEPTH: usize = 64;

/// The kind of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A method call.
    MethodCall,
    /// A method's return.
    MethodReturn,
    /// An error reply.
    Error,
    /// A signal.
    Signal,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::MethodCall => "method call",
            Kind::MethodReturn => "method return",
            Kind::Error => "error",
            Kind::Signal => "signal",
        })
    }
}

/// One value of a message's body.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `y`
    Byte(u8),
    /// `b`
    Bool(bool),
    /// `n`, `i`, `x`
    Int(i64),
    /// `q`, `u`, `t`, `h`
    Uint(u64),
    /// `d`
    Double(f64),
    /// `s`
    Str(String),
    /// `o`
    ObjectPath(String),
    /// `g`
    Signature(String),
    /// `ay`, kept as bytes.
    Bytes(Vec<u8>),
    /// `a` of anything but bytes and dictionary entries.
    Array(Vec<Value>),
    /// `a{..}`, in the order marshalled.
    Dict(Vec<(Value, Value)>),
    /// `(..)`
    Struct(Vec<Value>),
    /// `v`: its signature and value.
    Variant(String, Box<Value>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Byte(b) => write!(f, "{b}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Uint(u) => write!(f, "{u}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::ObjectPath(s) => write!(f, "object {s}"),
            Value::Signature(s) => write!(f, "signature {s:?}"),
            Value::Bytes(b) => write!(f, "{} bytes {}", b.len(), escape_bytes(b)),
            Value::Array(items) | Value::Struct(items) => {
                let (open, close) = if matches!(self, Value::Array(_)) { ('[', ']') } else { ('(', ')') };
                f.write_char(open)?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_char(close)
            }
            Value::Dict(entries) => {
                f.write_char('{')?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_char('}')
            }
            Value::Variant(signature, value) => write!(f, "<{signature}> {value}"),
        }
    }
}

/// `b"..."` with printable ASCII as it is and every other byte as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("b\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            b'\n' => out.push_str("\\n"),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    out
}

/// A message, its header fields and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its kind.
    pub kind: Kind,
    /// The sender's serial of it.
    pub serial: u32,
    /// `PATH`
    pub path: Option<String>,
    /// `INTERFACE`
    pub interface: Option<String>,
    /// `MEMBER`
    pub member: Option<String>,
    /// `ERROR_NAME`
    pub error_name: Option<String>,
    /// `REPLY_SERIAL`
    pub reply_serial: Option<u32>,
    /// `DESTINATION`
    pub destination: Option<String>,
    /// `SENDER`
    pub sender: Option<String>,
    /// `SIGNATURE` (empty if absent).
    pub signature: String,
    /// The body's values, one per complete type of the signature.
    pub body: Vec<Value>,
}

impl Message {
    /// An error's name and its message, as `NAME: text` (a D-Bus error's
    /// first argument, when it is a string, is its message).
    pub fn error_text(&self) -> String {
        let text = match self.body.first() {
            Some(Value::Str(text)) => text.as_str(),
            _ => "",
        };
        format!("{}: {text}", self.error_name.as_deref().unwrap_or(""))
    }
}

/// Why bytes do not read as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Where in the bytes.
    pub offset: usize,
    /// What was wrong there.
    pub why: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a D-Bus message: at byte {}: {}", self.offset, self.why)
    }
}

impl std::error::Error for ParseError {}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    little: bool,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, why: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { offset: self.at, why: why.into() })
    }

    fn align(&mut self, to: usize) -> Result<(), ParseError> {
        let padded = self.at.div_ceil(to) * to;
        if padded > self.bytes.len() {
            return self.fail("truncated in padding");
        }
        if self.bytes[self.at..padded].iter().any(|&b| b != 0) {
            return self.fail("padding is not zero");
        }
        self.at = padded;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        match self.at.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let out = &self.bytes[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => self.fail(format!("truncated: {n} more bytes needed")),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        self.align(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        if !self.little {
            out.reverse();
        }
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn text(&mut self, len: usize) -> Result<String, ParseError> {
        let start = self.at;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ParseError { offset: start, why: "a string is not UTF-8".into() })?
            .to_owned();
        if self.take(1)? != [0] {
            return self.fail("a string does not end in NUL");
        }
        if text.contains('\0') {
            return Err(ParseError { offset: start, why: "a string holds a NUL".into() });
        }
        Ok(text)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    fn signature(&mut self) -> Result<String, ParseError> {
        let len = usize::from(self.take(1)?[0]);
        self.text(len)
    }

    /// One value of the complete type at the start of `signature`.
    fn value(&mut self, signature: &str, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return self.fail("containers nested too deep");
        }
        let Some(code) = signature.bytes().next() else { return self.fail("an empty signature") };
        Ok(match code {
            b'y' => Value::Byte(self.take(1)?[0]),
            b'b' => match self.u32()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return self.fail(format!("a boolean is {other}")),
            },
            b'n' => Value::Int(i16::from_le_bytes(self.fixed()?).into()),
            b'q' => Value::Uint(u16::from_le_bytes(self.fixed()?).into()),
            b'i' => Value::Int(i32::from_le_bytes(self.fixed()?).into()),
            b'u' | b'h' => Value::Uint(self.u32()?.into()),
            b'x' => Value::Int(i64::from_le_bytes(self.fixed()?)),
            b't' => Value::Uint(u64::from_le_bytes(self.fixed()?)),
            b'd' => Value::Double(f64::from_le_bytes(self.fixed()?)),
            b's' => Value::Str(self.string()?),
            b'o' => Value::ObjectPath(self.string()?),
            b'g' => Value::Signature(self.signature()?),
            b'v' => {
                let inner = self.signature()?;
                if complete_type(&inner).map(str::len) != Some(inner.len()) {
                    return self.fail(format!("a variant's signature {inner:?} is not one complete type"));
                }
                let value = self.value(&inner, depth + 1)?;
                Value::Variant(inner, Box::new(value))
            }
            b'a' => {
                let element = complete_type(&signature[1..])
                    .ok_or(ParseError { offset: self.at, why: format!("bad array signature {signature:?}") })?;
                let len = self.u32()? as usize;
                self.align(alignment(element))?;
                let end = match self.at.checked_add(len).filter(|&e| e <= self.bytes.len()) {
                    Some(end) => end,
                    None => return self.fail(format!("an array of {len} bytes is truncated")),
                };
                if element == "y" {
                    return Ok(Value::Bytes(self.take(len)?.to_vec()));
                }
                let mut items = Vec::new();
                while self.at < end {
                    items.push(self.value(element, depth + 1)?);
                }
                if self.at != end {
                    return self.fail("an array's elements overrun its length");
                }
                if element.starts_with('{') {
                    let entries = items.into_iter().map(|item| match item {
                        Value::Struct(mut kv) if kv.len() == 2 => {
                            let v = kv.pop().unwrap_or(Value::Bool(false));
                            let k = kv.pop().unwrap_or(Value::Bool(false));
                            (k, v)
                        }
                        other => (other, Value::Struct(Vec::new())),
                    });
                    Value::Dict(entries.collect())
                } else {
                    Value::Array(items)
                }
            }
            b'(' | b'{' => {
                self.align(8)?;
                let whole = complete_type(signature)
                    .ok_or(ParseError { offset: self.at, why: format!("bad signature {signature:?}") })?;
                let mut inner = &whole[1..whole.len() - 1];
                let mut fields = Vec::new();
                while !inner.is_empty() {
                    let field = complete_type(inner)
                        .ok_or(ParseError { offset: self.at, why: format!("bad signature {whole:?}") })?;
                    fields.push(self.value(field, depth + 1)?);
                    inner = &inner[field.len()..];
                }
                Value::Struct(fields)
            }
            other => return self.fail(format!("unknown type code {:?}", other as char)),
        })
    }
}

/// The first complete type of `signature`, if it starts with one.
pub fn complete_type(signature: &str) -> Option<&str> {
    fn end(s: &[u8], at: usize, depth: usize) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        match *s.get(at)? {
            b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b's' | b'o' | b'g' | b'v' | b'h' => {
                Some(at + 1)
            }
            b'a' => end(s, at + 1, depth + 1),
            open @ (b'(' | b'{') => {
                let close = if open == b'(' { b')' } else { b'}' };
                let mut at = at + 1;
                let mut fields = 0;
                while *s.get(at)? != close {
                    at = end(s, at, depth + 1)?;
                    fields += 1;
                }
                let ok = if open == b'(' { fields > 0 } else { fields == 2 };
                ok.then_some(at + 1)
            }
            _ => None,
        }
    }
    end(signature.as_bytes(), 0, 0).map(|n| &signature[..n])
}

fn alignment(signature: &str) -> usize {
    match signature.as_bytes().first() {
        Some(b'y' | b'g' | b'v') => 1,
        Some(b'n' | b'q') => 2,
        Some(b'x' | b't' | b'd' | b'(' | b'{') => 8,
        _ => 4,
    }
}

/// Reads one whole message; `bytes` must be exactly it.
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    parse_as(bytes, true)
}

/// Reads one whole message's header, checks the body's length and leaves
/// its values unread (`body` empty): for a reader that routes messages and
/// reads few of their bodies.
pub fn parse_header(bytes: &[u8]) -> Result<Message, ParseError> {
    parse_as(bytes, false)
}

fn parse_as(bytes: &[u8], with_body: bool) -> Result<Message, ParseError> {
    let little = match bytes.first() {
        Some(b'l') => true,
        Some(b'B') => false,
        _ => return Err(ParseError { offset: 0, why: "no endianness mark".into() }),
    };
    let mut r = Reader { bytes, at: 1, little };
    let kind = match r.take(1)?[0] {
        1 => Kind::MethodCall,
        2 => Kind::MethodReturn,
        3 => Kind::Error,
        4 => Kind::Signal,
        other => return Err(ParseError { offset: 1, why: format!("message type {other}") }),
    };
    r.take(1)?; // flags
    if r.take(1)?[0] != 1 {
        return Err(ParseError { offset: 3, why: "protocol version is not 1".into() });
    }
    let body_len = r.u32()? as usize;
    let serial = r.u32()?;
    let Value::Array(fields) = r.value("a(yv)", 0)? else {
        return Err(ParseError { offset: 12, why: "header fields".into() });
    };
    let mut message = Message {
        kind,
        serial,
        path: None,
        interface: None,
        member: None,
        error_name: None,
        reply_serial: None,
        destination: None,
        sender: None,
        signature: String::new(),
        body: Vec::new(),
    };
    // Every header of every message the agent forwards passes here: the
    // fields' strings are moved out, not copied.
    for field in fields {
        let Value::Struct(parts) = field else { continue };
        let Ok([Value::Byte(code), Value::Variant(_, value)]) = <[Value; 2]>::try_from(parts) else { continue };
        match (code, *value) {
            (1, Value::ObjectPath(s)) => message.path = Some(s),
            (2, Value::Str(s)) => message.interface = Some(s),
            (3, Value::Str(s)) => message.member = Some(s),
            (4, Value::Str(s)) => message.error_name = Some(s),
            (5, Value::Uint(u)) => message.reply_serial = u32::try_from(u).ok(),
            (6, Value::Str(s)) => message.destination = Some(s),
            (7, Value::Str(s)) => message.sender = Some(s),
            (8, Value::Signature(s)) => message.signature = s,
            _ => {}
        }
    }
    r.align(8)?;
    let body_start = r.at;
    if bytes.len() - body_start != body_len {
        return Err(ParseError {
            offset: body_start,
            why: format!("the body is {} bytes, the header says {body_len}", bytes.len() - body_start),
        });
    }
    if !with_body {
        return Ok(message);
    }
    // Alignment inside the body is from its start, which is 8-aligned.
    let mut body = Reader { bytes: &bytes[body_start..], at: 0, little };
    let mut signature = message.signature.as_str();
    while !signature.is_empty() {
        let one = complete_type(signature)
            .ok_or(ParseError { offset: body_start, why: format!("bad body signature {:?}", message.signature) })?;
        let value = body.value(one, 0).map_err(|e| ParseError { offset: body_start + e.offset, why: e.why })?;
        message.body.push(value);
        signature = &signature[one.len()..];
    }
    if body.at != body.bytes.len() {
        return Err(ParseError { offset: body_start + body.at, why: "bytes after the body's values".into() });
    }
    Ok(message)
}

/// A signal marshalled as the specification says (little-endian, no
/// sender: the bus adds it), for the body values kdbusd's signals have:
/// strings, `u`, `ay` and `a{ss}`; `None` for any other value.
pub fn marshal_signal(serial: u32, path: &str, interface: &str, member: &str, body: &[Value]) -> Option<Vec<u8>> {
    marshal(4, serial, &[(1, b'o', path), (2, b's', interface), (3, b's', member)], body)
}

/// A method call marshalled as [`marshal_signal`] marshals a signal, to
/// `destination`; its body may also hold `as`. What a client of the bus
/// sends without a D-Bus library ([`crate::bus`]: the agent's monitor and
/// `Sync` caller, the tap's stalled subscriber and its questions).
pub fn marshal_method_call(
    serial: u32,
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
    body: &[Value],
) -> Option<Vec<u8>> {
    marshal(1, serial, &[(1, b'o', path), (2, b's', interface), (3, b's', member), (6, b's', destination)], body)
}

/// The whole length of the message whose first 16 bytes are `fixed` (the
/// fixed header and the header fields' length), as the specification
/// computes it; `None` if `fixed` has no endianness mark.
pub fn message_len(fixed: &[u8; 16]) -> Option<usize> {
    let word = |at: usize| {
        let bytes = [fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]];
        match fixed[0] {
            b'l' => Some(u32::from_le_bytes(bytes) as usize),
            b'B' => Some(u32::from_be_bytes(bytes) as usize),
            _ => None,
        }
    };
    let (body, fields) = (word(4)?, word(12)?);
    16usize.checked_add(fields)?.checked_next_multiple_of(8)?.checked_add(body)
}

fn marshal(kind: u8, serial: u32, header: &[(u8, u8, &str)], body: &[Value]) -> Option<Vec<u8>> {
    fn pad(out: &mut Vec<u8>, to: usize) {
        while !out.len().is_multiple_of(to) {
            out.push(0);
        }
    }
    fn string(out: &mut Vec<u8>, s: &str) -> Option<()> {
        pad(out, 4);
        out.extend(u32::try_from(s.len()).ok()?.to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
        Some(())
    }
    fn value(out: &mut Vec<u8>, v: &Value) -> Option<&'static str> {
        Some(match v {
            Value::Str(s) => {
                string(out, s)?;
                "s"
            }
            Value::Uint(u) => {
                pad(out, 4);
                out.extend(u32::try_from(*u).ok()?.to_le_bytes());
                "u"
            }
            Value::Bytes(b) => {
                pad(out, 4);
                out.extend(u32::try_from(b.len()).ok()?.to_le_bytes());
                out.extend(b);
                "ay"
            }
            Value::Array(items) => {
                pad(out, 4);
                let len_at = out.len();
                out.extend([0; 4]);
                let start = out.len();
                for item in items {
                    let Value::Str(s) = item else { return None };
                    string(out, s)?;
                }
                let len = u32::try_from(out.len() - start).ok()?;
                out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
                "as"
            }
            Value::Dict(entries) => {
                pad(out, 4);
                let len_at = out.len();
                out.extend([0; 4]);
                pad(out, 8);
                let start = out.len();
                for (k, v) in entries {
                    pad(out, 8);
                    let (Value::Str(k), Value::Str(v)) = (k, v) else { return None };
                    string(out, k)?;
                    string(out, v)?;
                }
                let len = u32::try_from(out.len() - start).ok()?;
                out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
                "a{ss}"
            }
            _ => return None,
        })
    }
    let mut body_bytes = Vec::new();
    let mut signature = String::new();
    for v in body {
        signature.push_str(value(&mut body_bytes, v)?);
    }
    // The fields start at offset 16: the fixed header and the array's length.
    let mut fields = Vec::new();
    let signature_field = (!signature.is_empty()).then_some((8u8, b'g', signature.as_str()));
    for &(code, sig, text) in header.iter().chain(&signature_field) {
        pad(&mut fields, 8);
        fields.extend([code, 1, sig, 0]);
        if sig == b'g' {
            fields.push(u8::try_from(text.len()).ok()?);
            fields.extend(text.as_bytes());
            fields.push(0);
        } else {
            string(&mut fields, text)?;
        }
    }
    let mut m = vec![b'l', kind, 0, 1];
    m.extend(u32::try_from(body_bytes.len()).ok()?.to_le_bytes());
    m.extend(serial.to_le_bytes());
    m.extend(u32::try_from(fields.len()).ok()?.to_le_bytes());
    m.extend(fields);
    pad(&mut m, 8);
    m.extend(body_bytes);
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal as zbus marshals it (captured from kdbusd in a guest and
    /// checked by hand against the specification).
    fn signal_bytes() -> Vec<u8> {
        let mut m = vec![b'l', 4, 1, 1];
        let body: Vec<u8> = {
            let mut b = Vec::new();
            // s "a"
            b.extend(1u32.to_le_bytes());
            b.extend(b"a\0");
            b.extend([0, 0]); // pad to 4 for the dict's length... then 8 for its entries
                              // a{ss} with one entry {"K","v"}
            let entries_len: u32 = 4 + 2 + 2 + 4 + 2;
            b.extend(entries_len.to_le_bytes());
            // entries start 8-aligned: at 12 -> pad to 16
            b.extend([0, 0, 0, 0]);
            b.extend(1u32.to_le_bytes());
            b.extend(b"K\0");
            b.extend([0, 0]);
            b.extend(1u32.to_le_bytes());
            b.extend(b"v\0");
            // ay [1, 2]: at 30 -> pad to 32
            b.extend([0, 0]);
            b.extend(2u32.to_le_bytes());
            b.extend([1, 2]);
            b
        };
        m.extend((body.len() as u32).to_le_bytes());
        m.extend(7u32.to_le_bytes());
        let mut fields = Vec::new();
        let field = |fields: &mut Vec<u8>, code: u8, sig: &[u8], value: &[u8]| {
            while !fields.len().is_multiple_of(8) {
                fields.push(0);
            }
            fields.push(code);
            fields.push(sig.len() as u8);
            fields.extend(sig);
            fields.push(0);
            // the value is 4-aligned (o, s) or 1 (g), relative to the message: fields start at 16
            if sig != b"g" {
                while !(16 + fields.len()).is_multiple_of(4) {
                    fields.push(0);
                }
            }
            fields.extend(value);
        };
        let s = |text: &str| {
            let mut v = (text.len() as u32).to_le_bytes().to_vec();
            v.extend(text.as_bytes());
            v.push(0);
            v
        };
        field(&mut fields, 1, b"o", &s("/a/b"));
        field(&mut fields, 2, b"s", &s("org.kernel.Power"));
        field(&mut fields, 3, b"s", &s("high"));
        field(&mut fields, 8, b"g", b"\x08sa{ss}ay\0");
        m.extend((fields.len() as u32).to_le_bytes());
        m.extend(&fields);
        while !m.len().is_multiple_of(8) {
            m.push(0);
        }
        m.extend(body);
        m
    }

    #[test]
    fn a_signal_reads_with_its_header_and_body() {
        let message = parse(&signal_bytes()).unwrap();
        assert_eq!(message.kind, Kind::Signal);
        assert_eq!(message.serial, 7);
        assert_eq!(message.path.as_deref(), Some("/a/b"));
        assert_eq!(message.interface.as_deref(), Some("org.kernel.Power"));
        assert_eq!(message.member.as_deref(), Some("high"));
        assert_eq!(message.signature, "sa{ss}ay");
        assert_eq!(
            message.body,
            [
                Value::Str("a".into()),
                Value::Dict(vec![(Value::Str("K".into()), Value::Str("v".into()))]),
                Value::Bytes(vec![1, 2])
            ]
        );
        assert_eq!(message.body[1].to_string(), "{\"K\": \"v\"}");
        assert_eq!(message.body[2].to_string(), "2 bytes b\"\\x01\\x02\"");
    }

    /// zbus, the library kdbusd sends with, marshals what this reads.
    #[cfg(feature = "daemons")]
    #[test]
    fn a_signal_marshalled_by_zbus_reads_back() {
        let fields = std::collections::HashMap::from([("Cpu".to_owned(), "1".to_owned())]);
        let body = ("Cpu: 1\n", fields, vec![0u8, 255], (7u16, -3i64, 2.5f64, true));
        let message = zbus::Message::signal("/org/kernel/x_2dy", "org.kernel.Power", "high")
            .unwrap()
            .sender(":1.4")
            .unwrap()
            .build(&body)
            .unwrap();
        let read = parse(message.data().bytes()).unwrap();
        assert_eq!(read.kind, Kind::Signal);
        assert_eq!(
            (read.path.as_deref(), read.interface.as_deref(), read.member.as_deref(), read.sender.as_deref()),
            (Some("/org/kernel/x_2dy"), Some("org.kernel.Power"), Some("high"), Some(":1.4"))
        );
        assert_eq!(read.signature, "sa{ss}ay(qxdb)");
        assert_eq!(
            read.body,
            [
                Value::Str("Cpu: 1\n".into()),
                Value::Dict(vec![(Value::Str("Cpu".into()), Value::Str("1".into()))]),
                Value::Bytes(vec![0, 255]),
                Value::Struct(vec![Value::Uint(7), Value::Int(-3), Value::Double(2.5), Value::Bool(true)]),
            ]
        );
    }

    /// The marshaller writes what zbus writes for the same signal.
    #[cfg(feature = "daemons")]
    #[test]
    fn marshal_signal_writes_what_zbus_writes() {
        let datagram = b"From: /a\nSignal: b\nK: v\n\0".to_vec();
        let body = [
            Value::Str("K: v\n".into()),
            Value::Dict(vec![(Value::Str("K".into()), Value::Str("v".into()))]),
            Value::Bytes(datagram.clone()),
        ];
        let ours = marshal_signal(1, "/a", "org.kernel.Power", "b", &body).unwrap();
        let fields = std::collections::HashMap::from([("K".to_owned(), "v".to_owned())]);
        let theirs =
            zbus::Message::signal("/a", "org.kernel.Power", "b").unwrap().build(&("K: v\n", fields, datagram)).unwrap();
        assert_eq!(parse(&ours).unwrap().body, body);
        assert_eq!(parse(theirs.data().bytes()).unwrap().body, body);
        let (mut ours_read, mut theirs_read) = (parse(&ours).unwrap(), parse(theirs.data().bytes()).unwrap());
        ours_read.serial = 0;
        theirs_read.serial = 0;
        assert_eq!(ours_read, theirs_read);
        assert_eq!(marshal_signal(1, "/a", "i.f", "m", &[Value::Bool(true)]), None);
    }

    /// A method call with an `as` argument, as zbus writes it, and the
    /// length its first 16 bytes announce.
    #[cfg(feature = "daemons")]
    #[test]
    fn marshal_method_call_writes_what_zbus_writes() {
        let (dbus, path, monitoring) =
            ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.Monitoring");
        let body = [Value::Array(vec![Value::Str("type='signal'".into()), Value::Str("x".into())]), Value::Uint(0)];
        let ours = marshal_method_call(2, dbus, path, monitoring, "BecomeMonitor", &body).unwrap();
        let theirs = zbus::Message::method_call(path, "BecomeMonitor")
            .unwrap()
            .destination(dbus)
            .unwrap()
            .interface(monitoring)
            .unwrap()
            .build(&(vec!["type='signal'", "x"], 0u32))
            .unwrap();
        let (mut ours_read, mut theirs_read) = (parse(&ours).unwrap(), parse(theirs.data().bytes()).unwrap());
        assert_eq!(ours_read.body, body);
        ours_read.serial = 0;
        theirs_read.serial = 0;
        assert_eq!(ours_read, theirs_read);
        let hello = marshal_method_call(1, dbus, path, dbus, "Hello", &[]).unwrap();
        assert_eq!(parse(&hello).unwrap().signature, "", "no body, no signature field");
        for bytes in [&ours, &hello, &theirs.data().bytes().to_vec()] {
            assert_eq!(message_len(bytes[..16].try_into().unwrap()), Some(bytes.len()));
        }
        assert_eq!(message_len(&[0; 16]), None);
    }

    #[test]
    fn a_header_reads_as_the_whole_message_does_without_its_values() {
        let bytes = signal_bytes();
        let (whole, header) = (parse(&bytes).unwrap(), parse_header(&bytes).unwrap());
        assert!(!whole.body.is_empty() && header.body.is_empty());
        assert_eq!(Message { body: Vec::new(), ..whole }, header);
        assert!(parse_header(&bytes[..bytes.len() - 1]).is_err(), "the body's length is still checked");
    }

    #[test]
    fn every_cut_of_a_message_is_refused_without_a_panic() {
        let bytes = signal_bytes();
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parse(&longer).is_err());
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            let _ = parse(&flipped);
        }
    }

    #[test]
    fn complete_types_are_found_and_bad_ones_refused() {
        assert_eq!(complete_type("a{sv}s"), Some("a{sv}"));
        assert_eq!(complete_type("(ii)x"), Some("(ii)"));
        assert_eq!(complete_type("aay"), Some("aay"));
        assert_eq!(complete_type("()"), None);
        assert_eq!(complete_type("{s}"), None);
        assert_eq!(complete_type("a"), None);
        assert_eq!(complete_type("z"), None);
        assert_eq!(complete_type(&"a".repeat(100)), None);
    }
}
