//! The initramfs writer: an uncompressed newc ("070701") cpio archive.
//!
//! The bench kernel has no `RD_GZIP`, so the archive stays uncompressed. Every
//! header field that could vary between builds (inode numbers, times, owners)
//! is fixed, so identical inputs give a byte-identical archive.

use std::io::{self, Write};

/// One entry of the archive, in the order it is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory; [`Archive::dir`] adds them with mode 0755.
    Directory {
        /// Relative to the archive's root, no leading or trailing `/`.
        path: String,
        /// Permission bits; the type bits are added when written.
        mode: u32,
    },
    /// A regular file with its contents.
    File {
        /// Relative to the archive's root, no leading `/`.
        path: String,
        /// Permission bits; the type bits are added when written.
        mode: u32,
        /// The contents, under 4 GiB (newc's size field is 32 bits).
        data: Vec<u8>,
    },
    /// A character device node, e.g. `dev/console`.
    CharDevice {
        /// Relative to the archive's root, no leading `/`.
        path: String,
        /// Permission bits; the type bits are added when written.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Collects entries and writes them as one archive.
#[derive(Debug, Default)]
pub struct Archive {
    entries: Vec<Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Archive::default()
    }

    /// Adds a directory and, first, any parents not yet added.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let path = path.trim_matches('/');
        if path.is_empty() || self.has(path) {
            return self;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push(Entry::Directory { path: path.to_owned(), mode: 0o755 });
        self
    }

    /// Adds a regular file (and its parent directories).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> &mut Self {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push(Entry::File { path: path.to_owned(), mode, data });
        self
    }

    /// Adds a character device node; no privileges are needed to describe one.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push(Entry::CharDevice { path: path.to_owned(), mode, major, minor });
        self
    }

    fn has(&self, path: &str) -> bool {
        self.entries.iter().any(|e| e.path() == path)
    }

    /// The entries so far, parents before their children, in archive order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Writes the archive, trailer included.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut offset = 0usize;
        for (index, entry) in self.entries.iter().enumerate() {
            let header = Header::for_entry(entry, index as u32 + 1);
            offset += write_entry(w, &header, entry.path(), entry.data())?;
        }
        let trailer = Header { ino: 0, mode: 0, nlink: 1, size: 0, rdev_major: 0, rdev_minor: 0 };
        offset += write_entry(w, &trailer, "TRAILER!!!", &[])?;
        // The kernel reads the archive in 512-byte blocks, as cpio(1) pads it.
        w.write_all(&vec![0; padding(offset, 512)])
    }

    /// The whole archive in memory, as [`Self::write_to`] writes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Writes to `out` the initramfs `base` with this archive after it: the
    /// kernel unpacks concatenated archives in order, later files winning.
    pub fn append_to(&self, base: &std::path::Path, out: &std::path::Path) -> io::Result<()> {
        let mut bytes = std::fs::read(base)?;
        self.write_to(&mut bytes)?;
        std::fs::write(out, bytes)
    }
}

impl Entry {
    /// The entry's name in the archive.
    pub fn path(&self) -> &str {
        match self {
            Entry::Directory { path, .. } | Entry::File { path, .. } | Entry::CharDevice { path, .. } => path,
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Entry::File { data, .. } => data,
            _ => &[],
        }
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev_major: u32,
    rdev_minor: u32,
}

impl Header {
    fn for_entry(entry: &Entry, ino: u32) -> Header {
        match entry {
            Entry::Directory { mode, .. } => {
                Header { ino, mode: S_IFDIR | mode, nlink: 2, size: 0, rdev_major: 0, rdev_minor: 0 }
            }
            Entry::File { mode, data, .. } => {
                Header { ino, mode: S_IFREG | mode, nlink: 1, size: data.len(), rdev_major: 0, rdev_minor: 0 }
            }
            Entry::CharDevice { mode, major, minor, .. } => {
                Header { ino, mode: S_IFCHR | mode, nlink: 1, size: 0, rdev_major: *major, rdev_minor: *minor }
            }
        }
    }
}

fn write_entry(w: &mut impl Write, h: &Header, name: &str, data: &[u8]) -> io::Result<usize> {
    let size = u32::try_from(h.size).map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB")))?;
    let namesize = name.len() + 1;
    let fields = [h.ino, h.mode, 0, 0, h.nlink, 0, size, 0, 0, h.rdev_major, h.rdev_minor, namesize as u32, 0];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for field in fields {
        header.push_str(&format!("{field:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let name_end = 110 + namesize;
    w.write_all(&vec![0; padding(name_end, 4)])?;
    w.write_all(data)?;
    w.write_all(&vec![0; padding(data.len(), 4)])?;
    Ok(name_end + padding(name_end, 4) + data.len() + padding(data.len(), 4))
}

fn padding(len: usize, align: usize) -> usize {
    (align - len % align) % align
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.char_device("/dev/console", 0o600, 5, 1).file("/init", 0o755, b"#!agent".to_vec()).file(
            "/lib/modules/kmessage.ko",
            0o644,
            vec![0xaa; 5],
        );
        a
    }

    /// Name, mode, data and device numbers of one parsed entry.
    type Parsed = (String, u32, Vec<u8>, (u32, u32));

    /// A minimal newc reader, written from the format description
    /// (Documentation/driver-api/early-userspace/buffer-format.rst); the
    /// other independent reader is the kernel, which unpacks the archive in
    /// every guest test.
    fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap()
        };
        let total = bytes.len();
        loop {
            let consumed = total - bytes.len();
            assert_eq!(consumed % 4, 0, "every header starts 4-byte aligned");
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, rmaj, rmin, namesize) =
                (field(bytes, 1), field(bytes, 6), field(bytes, 9), field(bytes, 10), field(bytes, 11));
            let name = std::str::from_utf8(&bytes[110..110 + namesize as usize - 1]).unwrap().to_owned();
            assert_eq!(bytes[110 + namesize as usize - 1], 0, "name is NUL-terminated");
            let data_start = (110 + namesize as usize).next_multiple_of(4);
            let data = bytes[data_start..data_start + size as usize].to_vec();
            bytes = &bytes[(data_start + size as usize).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(bytes.iter().all(|&b| b == 0), "only padding after the trailer");
                return out;
            }
            out.push((name, mode, data, (rmaj, rmin)));
        }
    }

    #[test]
    fn entries_come_back_with_their_modes_data_and_parents() {
        let bytes = sample().to_bytes();
        let parsed = parse(&bytes);
        let names: Vec<_> = parsed.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/kmessage.ko"]);
        assert_eq!(parsed[0].1, 0o040755);
        assert_eq!(parsed[1].1, 0o020600);
        assert_eq!(parsed[1].3, (5, 1));
        assert_eq!(parsed[2].1, 0o100755);
        assert_eq!(parsed[2].2, b"#!agent");
        assert_eq!(parsed[5].2, vec![0xaa; 5]);
    }

    #[test]
    fn identical_inputs_give_identical_bytes_padded_to_blocks() {
        let (a, b) = (sample().to_bytes(), sample().to_bytes());
        assert_eq!(a, b);
        assert_eq!(a.len() % 512, 0);
    }

    #[test]
    fn directories_are_added_once() {
        let mut a = Archive::new();
        a.file("/a/b/c", 0o644, vec![]).file("/a/b/d", 0o644, vec![]).dir("/a");
        let names: Vec<_> = a.entries().iter().map(Entry::path).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c", "a/b/d"]);
    }
}
