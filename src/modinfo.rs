//! What a built kernel module says about itself: the `.modinfo` section of
//! the `.ko` (as `modinfo` prints it), read without loading the module, so
//! the host can check a scenario's module parameters before it boots.

use std::collections::BTreeSet;
use std::path::Path;

/// A module's name and the parameters it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `name=` of `.modinfo` (else the file's stem), with `-` read as `_`
    /// as the kernel does.
    pub name: String,
    /// Every parameter named by a `parm=` or `parmtype=` entry, as written.
    pub parameters: BTreeSet<String>,
}

/// Why a file could not be read as a kernel module.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file, as displayed.
        path: String,
        /// What reading it returned.
        source: std::io::Error,
    },
    /// The bytes are not an ELF64 little-endian object, or its headers or
    /// section table are cut short or point outside the file.
    #[error("{path}: not a 64-bit little-endian ELF object: {why}")]
    NotElf {
        /// The file, as displayed.
        path: String,
        /// What check failed.
        why: &'static str,
    },
    /// A valid ELF object with no `.modinfo` section.
    #[error("{path}: no .modinfo section: not a kernel module")]
    NoModinfo {
        /// The file, as displayed.
        path: String,
    },
}

/// Reads `path`'s `.modinfo`.
pub fn read(path: &Path) -> Result<ModuleInfo, ModinfoError> {
    let bytes =
        std::fs::read(path).map_err(|source| ModinfoError::Read { path: path.display().to_string(), source })?;
    from_object(path, &bytes)
}

/// The `.modinfo` of `bytes`, the contents of the object file `path`:
/// [`read`] without the file system (the fuzz target's way in).
pub fn from_object(path: &Path, bytes: &[u8]) -> Result<ModuleInfo, ModinfoError> {
    let shown = path.display().to_string();
    let section = modinfo_section(bytes).map_err(|why| ModinfoError::NotElf { path: shown.clone(), why })?;
    let section = section.ok_or(ModinfoError::NoModinfo { path: shown })?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(parse(section, &stem))
}

/// `key=value` strings, NUL-separated: `name=` is the module's name,
/// `parmtype=NAME:type` is there for every parameter (`parm=NAME:text` only
/// for those with a description).
fn parse(section: &[u8], fallback_name: &str) -> ModuleInfo {
    let mut name = None;
    let mut parameters = BTreeSet::new();
    for entry in section.split(|b| *b == 0).filter_map(|e| std::str::from_utf8(e).ok()) {
        let Some((key, value)) = entry.split_once('=') else { continue };
        match key {
            "name" => name = Some(value.to_owned()),
            "parm" | "parmtype" => {
                if let Some((parameter, _)) = value.split_once(':') {
                    parameters.insert(parameter.to_owned());
                }
            }
            _ => {}
        }
    }
    let name = name.unwrap_or_else(|| fallback_name.to_owned()).replace('-', "_");
    ModuleInfo { name, parameters }
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], &'static str> {
    at.checked_add(N).and_then(|end| bytes.get(at..end)).and_then(|b| b.try_into().ok()).ok_or("truncated")
}

fn u16_at(bytes: &[u8], at: usize) -> Result<usize, &'static str> {
    Ok(usize::from(u16::from_le_bytes(field(bytes, at)?)))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<usize, &'static str> {
    usize::try_from(u32::from_le_bytes(field(bytes, at)?)).map_err(|_| "offset out of range")
}

fn u64_at(bytes: &[u8], at: usize) -> Result<usize, &'static str> {
    usize::try_from(u64::from_le_bytes(field(bytes, at)?)).map_err(|_| "offset out of range")
}

/// The bytes of section `.modinfo`, if the ELF has one. Every offset is
/// checked against the file: a truncated or hostile file is an error.
fn modinfo_section(bytes: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    const ELFCLASS64: u8 = 2;
    const ELFDATA2LSB: u8 = 1;
    const SECTION_HEADER_LEN: usize = 64;
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("no ELF magic");
    }
    if bytes.get(4) != Some(&ELFCLASS64) || bytes.get(5) != Some(&ELFDATA2LSB) {
        return Err("not ELFCLASS64 and ELFDATA2LSB");
    }
    let table = u64_at(bytes, 0x28)?;
    let entry_len = u16_at(bytes, 0x3a)?;
    let count = u16_at(bytes, 0x3c)?;
    let names_index = u16_at(bytes, 0x3e)?;
    if entry_len < SECTION_HEADER_LEN || names_index >= count {
        return Err("bad section header table");
    }
    let header = |index: usize| -> Result<(usize, usize, usize), &'static str> {
        let at = index.checked_mul(entry_len).and_then(|o| o.checked_add(table)).ok_or("bad section header table")?;
        Ok((u32_at(bytes, at)?, u64_at(bytes, at + 24)?, u64_at(bytes, at + 32)?))
    };
    let contents = |offset: usize, size: usize| {
        offset.checked_add(size).and_then(|end| bytes.get(offset..end)).ok_or("a section runs past the end")
    };
    let (_, names_offset, names_size) = header(names_index)?;
    let names = contents(names_offset, names_size)?;
    for index in 0..count {
        let (name, offset, size) = header(index)?;
        let name = names.get(name..).ok_or("a section name is out of range")?;
        if name.split(|b| *b == 0).next() == Some(b".modinfo") {
            return contents(offset, size).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE object: null section, .shstrtab, .modinfo.
    fn elf(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        let names_at = out.len();
        out.extend_from_slice(names);
        let modinfo_at = out.len();
        out.extend_from_slice(modinfo);
        let table = out.len();
        out[0x28..0x30].copy_from_slice(&(table as u64).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, offset, size) in
            [(0u32, 0usize, 0usize), (1, names_at, names.len()), (11, modinfo_at, modinfo.len())]
        {
            let mut header = [0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            header[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
            header[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            out.extend_from_slice(&header);
        }
        out
    }

    const KEVENT_THERMAL: &[u8] = b"license=GPL\0parm=rate_limit_ms:per-CPU: ignore...\0parmtype=rate_limit_ms:uint\0\
parmtype=tjmax:uint\0name=kevent_thermal\0vermagic=6.12.117 SMP mod_unload \0";

    #[test]
    fn parameters_come_from_parmtype_and_parm_lines() {
        let object = elf(KEVENT_THERMAL);
        let section = modinfo_section(&object).unwrap().unwrap();
        let info = parse(section, "ignored");
        assert_eq!(info.name, "kevent_thermal");
        assert_eq!(info.parameters, BTreeSet::from(["rate_limit_ms".to_owned(), "tjmax".to_owned()]));
    }

    #[test]
    fn a_truncated_or_foreign_file_is_an_error_not_a_panic() {
        let whole = elf(KEVENT_THERMAL);
        for len in 0..whole.len() {
            let _ = modinfo_section(&whole[..len]);
        }
        assert_eq!(modinfo_section(b"#!/bin/sh\n"), Err("no ELF magic"));
        // Cut inside the last section header's size field.
        assert_eq!(modinfo_section(&whole[..whole.len() - 30]), Err("truncated"));
        let mut no_modinfo = whole.clone();
        let name_at = whole.len() - 64;
        no_modinfo[name_at..name_at + 4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(modinfo_section(&no_modinfo), Ok(None));
    }

    /// Found by the fuzz target modinfo_object: a section table said to be
    /// at the very end of the address space overflowed `at + N` (a panic in
    /// debug builds, such as `cargo xtask check`'s).
    #[test]
    fn a_section_table_at_the_end_of_the_address_space_is_truncated() {
        let mut object = elf(KEVENT_THERMAL);
        object[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        object[0x3e..0x40].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(modinfo_section(&object), Err("truncated"));
        object[0x28..0x30].copy_from_slice(&(u64::MAX - 23).to_le_bytes());
        assert_eq!(modinfo_section(&object), Err("truncated"));
    }
}
