use std::io::{self, Read, Write};

/// Largest frame either side accepts; a netlink datagram is at most a page,
/// file reads and program output are capped well below this.
pub const MAX_FRAME_LEN: usize = 4 << 20;

// Every reply the agent can send fits in a frame, with half of it left for
// the other fields and the cut markers: one read, one program's two
// streams, or every background program's two streams.
const _: () = assert!(crate::MAX_READ_BYTES <= MAX_FRAME_LEN / 2);
const _: () = assert!(2 * crate::MAX_OUTPUT_BYTES <= MAX_FRAME_LEN / 2);
const _: () = assert!(2 * crate::MAX_BACKGROUND_PROGRAMS * crate::MAX_BACKGROUND_OUTPUT_BYTES <= MAX_FRAME_LEN / 2);

/// Everything that can go wrong reading or decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream failed underneath the frame.
    #[error("agent channel: {0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("agent channel closed inside a frame ({got} of {expected} bytes)")]
    TruncatedFrame {
        /// Bytes the frame (or its length prefix) needed.
        expected: usize,
        /// Bytes the stream gave before it ended.
        got: usize,
    },
    /// A frame announced a length larger than [`MAX_FRAME_LEN`], or zero.
    #[error("frame length {0} is outside 1..={MAX_FRAME_LEN}")]
    BadFrameLength(usize),
    /// The frame's kind byte names no message of this direction.
    #[error("unknown {direction} message kind {kind:#04x}")]
    UnknownKind {
        /// `agent-to-host` or `host-to-agent`.
        direction: &'static str,
        /// The kind byte as received.
        kind: u8,
    },
    /// A field ran past the end of the body.
    #[error("{message}: field `{field}` runs past the end of the frame (at byte {offset})")]
    ShortField {
        /// The message being decoded.
        message: &'static str,
        /// The field that did not fit.
        field: &'static str,
        /// Where in the body the field began.
        offset: usize,
    },
    /// A string field was not UTF-8.
    #[error("{message}: field `{field}` is not UTF-8")]
    NotUtf8 {
        /// The message being decoded.
        message: &'static str,
        /// The string field.
        field: &'static str,
    },
    /// The body had bytes left after its last field.
    #[error("{message}: {count} unexpected bytes after the last field")]
    TrailingBytes {
        /// The message being decoded.
        message: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A field held a value outside its range.
    #[error("{message}: field `{field}` has invalid value {value}")]
    BadValue {
        /// The message being decoded.
        message: &'static str,
        /// The field whose value is refused.
        field: &'static str,
        /// The value, widened.
        value: u64,
    },
}

/// Builds one frame: kind byte, then fields, each method appending one
/// field in its wire form.
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An encoder for a frame of message `kind`; its buffer grows as needed.
    pub fn new(kind: u8) -> Self {
        Encoder::with_capacity(kind, 59)
    }

    /// An encoder whose buffer holds `fields_len` bytes of fields without
    /// growing: for a caller that knows the size of the frame.
    pub fn with_capacity(kind: u8, fields_len: usize) -> Self {
        // Room for the length prefix, filled in by `finish`, and the kind.
        let mut buf = Vec::with_capacity(5 + fields_len);
        buf.extend_from_slice(&[0; 4]);
        buf.push(kind);
        Encoder { buf }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// 2 bytes, little-endian.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// 4 bytes, little-endian.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// 8 bytes, little-endian.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// 4 bytes, little-endian two's complement.
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u32` length, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("field longer than 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
        self
    }

    /// A string as its UTF-8 bytes, length first.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// A list: a `u32` count, then each item as `item` encodes it.
    pub fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) -> &mut Self {
        let count = u32::try_from(items.len()).expect("list longer than 4 Gi items");
        self.u32(count);
        for i in items {
            item(self, i);
        }
        self
    }

    /// One byte, 0 or 1.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// The complete frame, length prefix included.
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len() - 4).expect("frame longer than 4 GiB");
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf
    }
}

/// Reads the fields of one frame body, naming the message and field in errors.
pub struct Decoder<'a> {
    message: &'static str,
    body: &'a [u8],
    offset: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder of `body`, the fields of a frame of `message`, which its
    /// errors name.
    pub fn new(message: &'static str, body: &'a [u8]) -> Self {
        Decoder { message, body, offset: 0 }
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.offset.checked_add(n).filter(|&end| end <= self.body.len());
        let Some(end) = end else {
            return Err(WireError::ShortField { message: self.message, field, offset: self.offset });
        };
        let out = &self.body[self.offset..end];
        self.offset = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        Ok(self.take(field, N)?.try_into().expect("take returned N bytes"))
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// 2 bytes, little-endian.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// 4 bytes, little-endian.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// 8 bytes, little-endian.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// 4 bytes, little-endian two's complement.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, WireError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    /// A `u32` length, then that many bytes.
    pub fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let len = self.u32(field)? as usize;
        Ok(self.take(field, len)?.to_vec())
    }

    /// Bytes as [`Decoder::bytes`] reads them, which must be UTF-8.
    pub fn str(&mut self, field: &'static str) -> Result<String, WireError> {
        String::from_utf8(self.bytes(field)?).map_err(|_| WireError::NotUtf8 { message: self.message, field })
    }

    /// A list: a `u32` count, read as `field`, then each item as `item`
    /// decodes it.
    pub fn list<T>(
        &mut self,
        field: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let count = self.u32(field)?;
        // Not sized from `count`: it comes off the wire, and a short body
        // fails on the first item it cannot hold.
        let mut items = Vec::new();
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }

    /// One byte, 0 or 1; any other value is an error.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.bad_value(field, v.into())),
        }
    }

    /// The error for `field` holding `value`, which it cannot hold.
    pub fn bad_value(&self, field: &'static str, value: u64) -> WireError {
        WireError::BadValue { message: self.message, field, value }
    }

    /// Fails if any byte of the body was not consumed.
    pub fn end(self) -> Result<(), WireError> {
        match self.body.len() - self.offset {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes { message: self.message, count }),
        }
    }
}

/// Reads one frame: `Ok(None)` on a clean end of stream between frames.
/// Returns the kind byte and the body.
pub fn read_frame(r: &mut impl Read) -> Result<Option<(u8, Vec<u8>)>, WireError> {
    let mut len = [0u8; 4];
    let got = read_full(r, &mut len)?;
    if got == 0 {
        return Ok(None);
    }
    if got < len.len() {
        return Err(WireError::TruncatedFrame { expected: len.len(), got });
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(WireError::BadFrameLength(len));
    }
    let mut frame = vec![0u8; len];
    let got = read_full(r, &mut frame)?;
    if got < len {
        return Err(WireError::TruncatedFrame { expected: len, got });
    }
    let body = frame.split_off(1);
    Ok(Some((frame[0], body)))
}

/// Writes one encoded frame in full.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_the_decoder_consumes_them_all() {
        let mut e = Encoder::new(7);
        e.u8(1).u16(2).u32(3).u64(4).i32(-5).str("héllo").bytes(&[0, 1, 2]).bool(true);
        let frame = e.finish();
        let (kind, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
        assert_eq!(kind, 7);
        let mut d = Decoder::new("Test", &body);
        assert_eq!(d.u8("a").unwrap(), 1);
        assert_eq!(d.u16("b").unwrap(), 2);
        assert_eq!(d.u32("c").unwrap(), 3);
        assert_eq!(d.u64("d").unwrap(), 4);
        assert_eq!(d.i32("e").unwrap(), -5);
        assert_eq!(d.str("f").unwrap(), "héllo");
        assert_eq!(d.bytes("g").unwrap(), vec![0, 1, 2]);
        assert!(d.bool("h").unwrap());
        d.end().unwrap();
    }

    #[test]
    fn a_short_body_names_the_message_and_field() {
        let mut e = Encoder::new(1);
        e.u32(100);
        let frame = e.finish();
        let (_, body) = read_frame(&mut &frame[..]).unwrap().unwrap();
        let mut d = Decoder::new("Hello", &body);
        let err = d.str("kernel_release").unwrap_err().to_string();
        assert_eq!(err, "Hello: field `kernel_release` runs past the end of the frame (at byte 4)");
    }

    #[test]
    fn lists_are_a_count_then_items_and_a_short_one_names_its_fields() {
        let mut e = Encoder::new(1);
        e.list(&["a", "bc"], |e, s| {
            e.str(s);
        });
        let frame = e.finish();
        assert_eq!(frame[5..], [2, 0, 0, 0, 1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c']);
        let mut d = Decoder::new("Test", &frame[5..]);
        assert_eq!(d.list("items", |d| d.str("items.item")).unwrap(), ["a", "bc"]);
        d.end().unwrap();

        let mut d = Decoder::new("Test", &frame[5..frame.len() - 1]);
        let err = d.list("items", |d| d.str("items.item")).unwrap_err().to_string();
        assert_eq!(err, "Test: field `items.item` runs past the end of the frame (at byte 13)");
        let mut d = Decoder::new("Test", &frame[5..7]);
        let err = d.list("items", |d| d.str("items.item")).unwrap_err().to_string();
        assert_eq!(err, "Test: field `items` runs past the end of the frame (at byte 0)");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let body = [1u8, 2, 3];
        let mut d = Decoder::new("Fatal", &body);
        d.u8("x").unwrap();
        assert!(matches!(d.end(), Err(WireError::TrailingBytes { count: 2, .. })));
    }

    #[test]
    fn end_of_stream_between_frames_is_clean_but_inside_a_frame_is_not() {
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
        let err = read_frame(&mut &[9u8, 0, 0, 0, 1, 2][..]).unwrap_err();
        assert!(matches!(err, WireError::TruncatedFrame { expected: 9, got: 2 }), "{err}");
        let err = read_frame(&mut &[9u8, 0][..]).unwrap_err();
        assert!(matches!(err, WireError::TruncatedFrame { expected: 4, got: 2 }), "{err}");
    }

    /// A reader that fails as a broken port would.
    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(5))
        }
    }

    #[test]
    fn a_failing_stream_is_an_io_error_that_keeps_its_source() {
        let err = read_frame(&mut Broken).unwrap_err();
        assert!(err.to_string().starts_with("agent channel: Input/output error"), "{err}");
        let source = std::error::Error::source(&err).expect("the io::Error is kept as the source");
        let source = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(source.raw_os_error(), Some(5));
    }

    #[test]
    fn absurd_lengths_are_refused_before_allocating() {
        let err = read_frame(&mut &[0xff, 0xff, 0xff, 0xff][..]).unwrap_err();
        assert!(matches!(err, WireError::BadFrameLength(0xffff_ffff)));
        let err = read_frame(&mut &[0, 0, 0, 0][..]).unwrap_err();
        assert!(matches!(err, WireError::BadFrameLength(0)));
    }

    #[test]
    fn bad_utf8_and_bad_bools_are_named() {
        let mut e = Encoder::new(1);
        e.bytes(&[0xff, 0xfe]).u8(2);
        let frame = e.finish();
        let body = &frame[5..];
        let mut d = Decoder::new("Log", body);
        assert_eq!(d.str("line").unwrap_err().to_string(), "Log: field `line` is not UTF-8");
        assert_eq!(d.bool("flag").unwrap_err().to_string(), "Log: field `flag` has invalid value 2");
    }
}
