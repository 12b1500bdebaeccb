//! A strict POSIX tar reader and a deterministic tar writer (`docs/bundle-format.md`, "Archive").
//!
//! The reader accepts only what a bundle may contain: plain files and directories under
//! validated relative paths, ustar or GNU magic, PAX `path`/`size` records. Links, devices,
//! FIFOs, sparse files, GNU long names and global PAX headers are refused, never skipped, as
//! are bad checksums and an archive that ends before its end-of-archive blocks. It indexes
//! entries by seeking past their data, so indexing a 500 GB bundle reads a few kilobytes.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::path::BundlePath;
use crate::{Error, Limits, Result};

const BLOCK: u64 = 512;
/// Largest size a ustar octal size field can hold (11 octal digits).
const USTAR_MAX_SIZE: u64 = (1 << 33) - 1;

/// One plain file found in a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Its validated path.
    pub path: BundlePath,
    /// Its length in bytes.
    pub size: u64,
    /// Where its data starts in the archive.
    pub data_offset: u64,
    /// Where its first header (a PAX header, if any) starts.
    pub header_offset: u64,
}

/// Reads every header of the tar in `archive` (of total length `len`), checking each one.
///
/// Returns the plain files in archive order. Directory entries are validated and dropped.
pub fn index<R: Read + Seek>(archive: &mut R, len: u64, limits: &Limits) -> Result<Vec<TarEntry>> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    let mut pending = PaxOverrides::default();
    let mut entry_start = 0u64;
    let mut block = [0u8; BLOCK as usize];
    loop {
        read_block(archive, offset, len, &mut block)?;
        if block.iter().all(|&b| b == 0) {
            read_block(archive, offset + BLOCK, len, &mut block)?;
            if block.iter().all(|&b| b == 0) {
                if pending.is_set() {
                    return Err(malformed(offset, "PAX header not followed by an entry"));
                }
                return Ok(entries);
            }
            return Err(malformed(offset, "single zero block inside the archive"));
        }
        let header = Header::parse(&block, offset)?;
        let data_offset = offset + BLOCK;
        let size = pending.size.take().unwrap_or(header.size);
        let data_end = data_offset
            .checked_add(size)
            .ok_or_else(|| malformed(offset, "entry size overflows"))?;
        if data_end > len {
            return Err(Error::Truncated {
                detail: format!(
                    "entry at byte {offset} needs {size} bytes of data, the archive ends at {len}"
                ),
            });
        }
        let next = data_offset + size.div_ceil(BLOCK) * BLOCK;
        match header.typeflag {
            b'x' => {
                if size > limits.max_pax_bytes {
                    return Err(Error::LimitExceeded {
                        what: format!("PAX header at byte {offset}"),
                        limit: limits.max_pax_bytes,
                    });
                }
                let mut records = vec![0u8; size as usize];
                archive
                    .seek(SeekFrom::Start(data_offset))
                    .map_err(|e| io_at(offset, e))?;
                archive
                    .read_exact(&mut records)
                    .map_err(|e| io_at(offset, e))?;
                if pending.is_set() {
                    return Err(malformed(offset, "two PAX headers in a row"));
                }
                pending = PaxOverrides::parse(&records, offset)?;
                entry_start = offset;
                offset = next;
                continue;
            }
            b'0' | 0 | b'5' => {}
            other => {
                let path = String::from_utf8_lossy(&header.raw_path()).into_owned();
                return Err(Error::UnsafeEntry {
                    path,
                    kind: kind_name(other),
                });
            }
        }
        let raw_path = pending.path.take().unwrap_or_else(|| header.raw_path());
        let is_dir = header.typeflag == b'5';
        let trimmed = if is_dir {
            raw_path.strip_suffix(b"/").unwrap_or(&raw_path)
        } else {
            &raw_path[..]
        };
        let path = BundlePath::parse(trimmed, limits.max_path_bytes)?;
        if !seen.insert(path.clone()) {
            return Err(Error::DuplicateEntry {
                path: path.to_string(),
            });
        }
        if is_dir {
            if size != 0 {
                return Err(malformed(offset, "directory entry with data"));
            }
        } else {
            if entries.len() >= limits.max_files {
                return Err(Error::LimitExceeded {
                    what: "number of files in the archive".into(),
                    limit: limits.max_files as u64,
                });
            }
            entries.push(TarEntry {
                path,
                size,
                data_offset,
                header_offset: entry_start.min(offset),
            });
        }
        offset = next;
        entry_start = next;
    }
}

fn read_block<R: Read + Seek>(
    archive: &mut R,
    offset: u64,
    len: u64,
    block: &mut [u8; 512],
) -> Result<()> {
    if offset + BLOCK > len {
        return Err(Error::Truncated {
            detail: format!("archive ends at byte {len} before its end-of-archive marker"),
        });
    }
    archive
        .seek(SeekFrom::Start(offset))
        .map_err(|e| io_at(offset, e))?;
    archive.read_exact(block).map_err(|e| io_at(offset, e))
}

fn io_at(offset: u64, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Truncated {
            detail: format!("unexpected end of archive at byte {offset}"),
        }
    } else {
        Error::MalformedTar {
            offset,
            reason: e.to_string(),
        }
    }
}

fn malformed(offset: u64, reason: &str) -> Error {
    Error::MalformedTar {
        offset,
        reason: reason.to_owned(),
    }
}

fn kind_name(typeflag: u8) -> &'static str {
    match typeflag {
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'6' => "FIFO",
        b'7' => "contiguous file",
        b'g' => "global PAX header",
        b'L' | b'K' => "GNU long-name record",
        b'S' => "GNU sparse file",
        _ => "entry of unknown type",
    }
}

struct Header {
    name: [u8; 100],
    prefix: [u8; 155],
    size: u64,
    typeflag: u8,
}

impl Header {
    fn parse(block: &[u8; 512], offset: u64) -> Result<Self> {
        let magic = &block[257..265];
        let gnu = match magic {
            b"ustar\x0000" => false,
            b"ustar  \0" => true,
            _ => return Err(malformed(offset, "not a ustar header (bad magic)")),
        };
        let stored =
            parse_octal(&block[148..156]).ok_or_else(|| malformed(offset, "bad checksum field"))?;
        let actual: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != actual {
            return Err(malformed(offset, "header checksum mismatch"));
        }
        let size_field = &block[124..136];
        let size = if size_field[0] & 0x80 != 0 {
            parse_base256(size_field).ok_or_else(|| malformed(offset, "bad base-256 size"))?
        } else {
            parse_octal(size_field).ok_or_else(|| malformed(offset, "bad size field"))?
        };
        let mut name = [0u8; 100];
        name.copy_from_slice(&block[..100]);
        let mut prefix = [0u8; 155];
        // GNU headers use the prefix area for access and change times, not for a path prefix.
        if !gnu {
            prefix.copy_from_slice(&block[345..500]);
        }
        Ok(Self {
            name,
            prefix,
            size,
            typeflag: block[156],
        })
    }

    fn raw_path(&self) -> Vec<u8> {
        let name = until_nul(&self.name);
        let prefix = until_nul(&self.prefix);
        if prefix.is_empty() {
            name.to_vec()
        } else {
            [prefix, b"/", name].concat()
        }
    }
}

fn until_nul(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end])
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = until_nul(field);
    let text = text
        .iter()
        .position(|&b| b != b' ')
        .map_or(&text[..0], |start| &text[start..]);
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let (digits, rest) = text.split_at(end);
    if digits.is_empty() || rest.iter().any(|&b| b != b' ') {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        acc.checked_mul(8)?.checked_add(u64::from(d - b'0'))
    })
}

fn parse_base256(field: &[u8]) -> Option<u64> {
    // The first byte's top bit marks the encoding; a negative size is nonsense.
    if field[0] & 0x40 != 0 {
        return None;
    }
    field.iter().enumerate().try_fold(0u64, |acc, (i, &b)| {
        let b = if i == 0 { b & 0x3f } else { b };
        acc.checked_mul(256)?.checked_add(u64::from(b))
    })
}

#[derive(Default)]
struct PaxOverrides {
    path: Option<Vec<u8>>,
    size: Option<u64>,
}

impl PaxOverrides {
    fn is_set(&self) -> bool {
        self.path.is_some() || self.size.is_some()
    }

    fn parse(mut records: &[u8], offset: u64) -> Result<Self> {
        let mut out = Self::default();
        while !records.is_empty() {
            let space = records
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| malformed(offset, "PAX record without length"))?;
            let len: usize = std::str::from_utf8(&records[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| malformed(offset, "bad PAX record length"))?;
            if len <= space + 1 || len > records.len() || records[len - 1] != b'\n' {
                return Err(malformed(offset, "PAX record length out of range"));
            }
            let record = &records[space + 1..len - 1];
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| malformed(offset, "PAX record without ="))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => out.path = Some(value.to_vec()),
                b"size" => {
                    let size = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                    out.size = Some(size.ok_or_else(|| malformed(offset, "bad PAX size"))?);
                }
                b"linkpath" => {
                    return Err(malformed(offset, "PAX linkpath: links are not allowed"));
                }
                k if k.starts_with(b"GNU.sparse") => {
                    return Err(malformed(offset, "sparse files are not allowed"));
                }
                // Times, owners and vendor attributes do not affect what is extracted.
                _ => {}
            }
            records = &records[len..];
        }
        Ok(out)
    }
}

/// Writes a deterministic tar: ustar headers, mode 0644, uid/gid 0, empty owner names, one
/// fixed mtime, PAX records only where ustar cannot hold a path or size.
pub struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    /// A writer stamping every entry with `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u64) -> Self {
        Self { out, mtime }
    }

    /// Appends a plain file of exactly `size` bytes read from `data`.
    ///
    /// Fails if `data` yields fewer bytes; never reads more than `size`.
    pub fn append(
        &mut self,
        path: &BundlePath,
        size: u64,
        data: &mut impl Read,
        on_bytes: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let name = path.as_str().as_bytes();
        let split = split_ustar_path(name);
        if split.is_none() || size > USTAR_MAX_SIZE {
            let mut records = Vec::new();
            if split.is_none() {
                records.extend(pax_record("path", name));
            }
            if size > USTAR_MAX_SIZE {
                records.extend(pax_record("size", size.to_string().as_bytes()));
            }
            let pax_name = format!("PaxHeaders/{}", path.file_name());
            let pax_name = &pax_name.as_bytes()[..pax_name.len().min(100)];
            self.out
                .write_all(&self.header(pax_name, b"", records.len() as u64, b'x'))?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let (prefix, short) = split.unwrap_or((b"", &name[..name.len().min(100)]));
        let header_size = if size > USTAR_MAX_SIZE { 0 } else { size };
        self.out
            .write_all(&self.header(short, prefix, header_size, b'0'))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = data.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{path} shrank while being written"),
                ));
            }
            on_bytes(&buf[..n]);
            self.out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        self.pad(size)
    }

    /// Writes the two zero blocks that end the archive and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK) as usize;
        if rem != 0 {
            self.out
                .write_all(&[0u8; BLOCK as usize][..BLOCK as usize - rem])?;
        }
        Ok(())
    }

    fn header(&self, name: &[u8], prefix: &[u8], size: u64, typeflag: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        write_octal(&mut h[100..108], 0o644);
        write_octal(&mut h[108..116], 0);
        write_octal(&mut h[116..124], 0);
        write_octal(&mut h[124..136], size);
        write_octal(&mut h[136..148], self.mtime.min(USTAR_MAX_SIZE));
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        write_octal(&mut h[329..337], 0);
        write_octal(&mut h[337..345], 0);
        h[345..345 + prefix.len()].copy_from_slice(prefix);
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        write_octal(&mut h[148..155], sum);
        h[155] = b' ';
        h
    }
}

fn write_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// Splits a path into ustar `prefix` (≤155) and `name` (≤100) at a `/`, if it fits.
fn split_ustar_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((b"", path));
    }
    path.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= 155 && name.len() <= 100 && !name.is_empty())
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // The length prefix counts itself, so find the fixed point.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;

    fn build(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), 0);
        for (name, data) in files {
            let path = BundlePath::parse(name.as_bytes(), 1024).unwrap();
            w.append(&path, data.len() as u64, &mut &data[..], &mut |_| {})
                .unwrap();
        }
        w.finish().unwrap()
    }

    fn read(bytes: &[u8]) -> Result<Vec<TarEntry>> {
        index(
            &mut Cursor::new(bytes),
            bytes.len() as u64,
            &Limits::default(),
        )
    }

    /// A raw ustar header with the given name and typeflag and a valid checksum.
    fn raw_header(name: &[u8], typeflag: u8, size: u64) -> Vec<u8> {
        let w = TarWriter::new(Vec::<u8>::new(), 0);
        w.header(name, b"", size, typeflag).to_vec()
    }

    fn archive_of(headers: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = headers.concat();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn round_trips_files_in_order_with_data_offsets() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let longer = "x".repeat(300);
        let bytes = build(&[
            ("model.sig", b"sig"),
            (&long, b"hello"),
            (&longer, &[7u8; 1000]),
            ("empty", b""),
        ]);
        let entries = read(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.path.as_str().to_owned()).collect();
        assert_eq!(
            names,
            ["model.sig", long.as_str(), longer.as_str(), "empty"]
        );
        let e = &entries[1];
        assert_eq!(&bytes[e.data_offset as usize..][..5], b"hello");
        assert_eq!(entries[2].size, 1000);
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        assert_eq!(
            build(&[("a", b"1"), ("b/c", b"22")]),
            build(&[("a", b"1"), ("b/c", b"22")])
        );
    }

    #[test]
    fn gnu_tar_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("t.tar");
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        std::fs::write(&tar_path, build(&[("a.txt", b"one"), (&long, b"two")])).unwrap();
        let status = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"one");
        assert_eq!(std::fs::read(dir.path().join(&long)).unwrap(), b"two");
    }

    #[test]
    fn refuses_links_devices_and_fifos() {
        for (flag, kind) in [
            (b'1', "hard link"),
            (b'2', "symbolic link"),
            (b'3', "character device"),
            (b'4', "block device"),
            (b'6', "FIFO"),
            (b'L', "GNU long-name record"),
        ] {
            let bytes = archive_of(&[raw_header(b"evil", flag, 0)]);
            match read(&bytes) {
                Err(Error::UnsafeEntry { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("typeflag {flag}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_escaping_and_duplicate_paths() {
        assert!(matches!(
            read(&archive_of(&[raw_header(b"../x", b'0', 0)])),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            read(&archive_of(&[raw_header(b"/etc/x", b'0', 0)])),
            Err(Error::UnsafePath { .. })
        ));
        let dup = archive_of(&[raw_header(b"a", b'0', 0), raw_header(b"a", b'0', 0)]);
        assert!(matches!(read(&dup), Err(Error::DuplicateEntry { .. })));
    }

    #[test]
    fn refuses_truncation_anywhere() {
        let bytes = build(&[("a", &[1u8; 3000]), ("b", b"x")]);
        for cut in [bytes.len() - 1, bytes.len() - 1024, 600, 1500, 100] {
            match read(&bytes[..cut]) {
                Err(Error::Truncated { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_a_corrupted_header() {
        let mut bytes = build(&[("a", b"x")]);
        bytes[0] = b'b';
        assert!(matches!(read(&bytes), Err(Error::MalformedTar { .. })));
    }

    #[test]
    fn pax_records_know_their_own_length() {
        for n in [0, 1, 80, 95, 96, 97, 990, 995, 9990] {
            let rec = pax_record("path", &vec![b'a'; n]);
            let len: usize =
                std::str::from_utf8(&rec[..rec.iter().position(|&b| b == b' ').unwrap()])
                    .unwrap()
                    .parse()
                    .unwrap();
            assert_eq!(len, rec.len());
        }
    }

    #[test]
    fn octal_fields_parse_strictly() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"  644 \0\0"), Some(0o644));
        assert_eq!(parse_octal(b"0008\0"), None);
        assert_eq!(parse_octal(b"\0\0\0"), None);
    }

    proptest! {
        #[test]
        fn index_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = read(&bytes);
        }

        #[test]
        fn index_never_panics_on_mutated_archives(pos in 0usize..3584, val in any::<u8>()) {
            let mut bytes = build(&[("model.sig", b"s"), ("w.safetensors", &[9u8; 700])]);
            let pos = pos % bytes.len();
            bytes[pos] = val;
            let _ = read(&bytes);
        }

        #[test]
        fn write_then_index_round_trips(files in proptest::collection::btree_map("[a-z]{1,8}(/[a-z0-9_-][a-z0-9_.-]{0,39}){0,4}", proptest::collection::vec(any::<u8>(), 0..1200), 1..6)) {
            let list: Vec<(&str, &[u8])> = files.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            // A name that is also another's directory prefix is fine in tar.
            let bytes = build(&list);
            let entries = read(&bytes).unwrap();
            prop_assert_eq!(entries.len(), list.len());
            for (entry, (name, data)) in entries.iter().zip(&list) {
                prop_assert_eq!(entry.path.as_str(), *name);
                prop_assert_eq!(&bytes[entry.data_offset as usize..][..data.len()], *data);
            }
        }
    }
}
