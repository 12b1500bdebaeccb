//! Media volumes: a bundle tar cut into pieces for removable media, each piece opening with
//! a 512-byte header that names its bundle, its place and its own SHA-256
//! (`docs/bundle-format.md`, "Media volumes").
//!
//! Volumes are found by their headers, not their names or order. A directory of volumes can be
//! verified and imported directly ([`Span`] reads across them as one file), or joined back
//! into the tar. Every fault names the volume: missing, duplicated, truncated, corrupt, or
//! from another bundle. A forged volume whose header is self-consistent is caught by the
//! signed chunk hashes, and the error names the volume holding the bad bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::{Error, Progress, Result};

/// Length of every volume header.
pub const HEADER_LEN: u64 = 512;
/// Most volumes in one set.
pub const MAX_VOLUMES: u32 = 100_000;
/// Smallest volume accepted by `split`: header plus one MiB.
pub const MIN_VOLUME_SIZE: u64 = HEADER_LEN + (1 << 20);
const MAGIC: &[u8; 8] = b"ALVOLUM1";
/// Bytes of the header covered by its checksum.
const BODY_LEN: usize = 104;

/// What a volume header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHeader {
    /// Digest of the bundle (its signed manifest) the volume belongs to.
    pub bundle: Sha256Digest,
    /// Length of the whole bundle tar.
    pub bundle_size: u64,
    /// Position in the set, from 1.
    pub index: u32,
    /// Volumes in the set.
    pub count: u32,
    /// Where this volume's payload starts in the bundle.
    pub offset: u64,
    /// Payload length.
    pub length: u64,
    /// SHA-256 of the payload.
    pub payload_sha256: Sha256Digest,
}

impl VolumeHeader {
    /// The 512-byte header: fields little-endian, then a SHA-256 of them, then zeros.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[0..8].copy_from_slice(MAGIC);
        out[8..40].copy_from_slice(&self.bundle.0);
        out[40..48].copy_from_slice(&self.bundle_size.to_le_bytes());
        out[48..52].copy_from_slice(&self.index.to_le_bytes());
        out[52..56].copy_from_slice(&self.count.to_le_bytes());
        out[56..64].copy_from_slice(&self.offset.to_le_bytes());
        out[64..72].copy_from_slice(&self.length.to_le_bytes());
        out[72..104].copy_from_slice(&self.payload_sha256.0);
        let sum = Sha256Digest::of(&out[..BODY_LEN]);
        out[BODY_LEN..BODY_LEN + 32].copy_from_slice(&sum.0);
        out
    }

    /// Parses a header, refusing a wrong magic, a bad checksum and impossible fields.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.len() < HEADER_LEN as usize {
            return Err("shorter than a volume header".into());
        }
        if &bytes[0..8] != MAGIC {
            return Err("not an airlock volume (bad magic)".into());
        }
        if Sha256Digest::of(&bytes[..BODY_LEN]).0[..] != bytes[BODY_LEN..BODY_LEN + 32] {
            return Err("header checksum mismatch".into());
        }
        if bytes[BODY_LEN + 32..HEADER_LEN as usize]
            .iter()
            .any(|b| *b != 0)
        {
            return Err("header padding is not zero".into());
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(b)
        };
        let digest_at = |i: usize| {
            let mut d = [0u8; 32];
            d.copy_from_slice(&bytes[i..i + 32]);
            Sha256Digest(d)
        };
        let header = Self {
            bundle: digest_at(8),
            bundle_size: u64_at(40),
            index: u32_at(48),
            count: u32_at(52),
            offset: u64_at(56),
            length: u64_at(64),
            payload_sha256: digest_at(72),
        };
        if header.count == 0 || header.count > MAX_VOLUMES {
            return Err(format!("volume count {} is out of range", header.count));
        }
        if header.index == 0 || header.index > header.count {
            return Err(format!(
                "index {} of {} is out of range",
                header.index, header.count
            ));
        }
        if header
            .offset
            .checked_add(header.length)
            .is_none_or(|end| end > header.bundle_size)
        {
            return Err("payload range lies outside the bundle".into());
        }
        Ok(header)
    }
}

/// `STEM.007-of-012`: the file name of volume `index` of `count`.
pub fn volume_name(stem: &str, index: u32, count: u32) -> String {
    let width = count.to_string().len().max(3);
    format!("{stem}.{index:0width$}-of-{count:0width$}")
}

fn volume_error(kind: &'static str, reason: String) -> Error {
    Error::Volume { kind, reason }
}

/// Cuts the bundle tar at `bundle` into volumes of at most `volume_size` bytes (header
/// included) in `out_dir`, named after `stem`. `digest` is the bundle's manifest digest.
/// Each volume is written under a temporary name, synced, then renamed.
pub fn split(
    bundle: &Path,
    digest: Sha256Digest,
    stem: &str,
    volume_size: u64,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>> {
    if volume_size < MIN_VOLUME_SIZE {
        return Err(Error::InvalidInput(format!(
            "volume size must be at least {MIN_VOLUME_SIZE} bytes"
        )));
    }
    let mut src = File::open(bundle).map_err(|e| Error::io(bundle, e))?;
    let size = src.metadata().map_err(|e| Error::io(bundle, e))?.len();
    let per = volume_size - HEADER_LEN;
    let count = size.div_ceil(per).max(1);
    if count > u64::from(MAX_VOLUMES) {
        return Err(Error::InvalidInput(format!(
            "{count} volumes would exceed the limit of {MAX_VOLUMES}; use a larger --size"
        )));
    }
    let count = count as u32;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    progress.begin("splitting", size);
    let mut written = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for index in 1..=count {
        let offset = u64::from(index - 1) * per;
        let length = per.min(size - offset);
        let name = volume_name(stem, index, count);
        let final_path = out_dir.join(&name);
        let tmp = out_dir.join(format!(".{name}.partial"));
        let result = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
            out.write_all(&[0u8; HEADER_LEN as usize])
                .map_err(|e| Error::io(&tmp, e))?;
            let mut hasher = Sha256::new();
            let mut left = length;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                src.read_exact(&mut buf[..n])
                    .map_err(|e| Error::io(bundle, e))?;
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
                progress.advance(n as u64);
                left -= n as u64;
            }
            let header = VolumeHeader {
                bundle: digest,
                bundle_size: size,
                index,
                count,
                offset,
                length,
                payload_sha256: Sha256Digest(hasher.finalize().into()),
            };
            out.write_all_at(&header.encode(), 0)
                .and_then(|()| out.sync_all())
                .map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &final_path).map_err(|e| Error::io(&final_path, e))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            progress.end();
            return Err(e);
        }
        written.push(final_path);
    }
    progress.end();
    File::open(out_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(out_dir, e))?;
    Ok(written)
}

/// One volume found in a directory.
#[derive(Debug)]
pub struct Volume {
    /// Its file.
    pub path: PathBuf,
    /// Its header.
    pub header: VolumeHeader,
    file: File,
}

impl Volume {
    /// Checks the payload against the SHA-256 in the header.
    pub fn check_payload(&self, progress: &dyn Progress) -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut hasher = Sha256::new();
        let mut done = 0;
        while done < self.header.length {
            let n = (self.header.length - done).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], HEADER_LEN + done)
                .map_err(|e| Error::io(&self.path, e))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            progress.advance(n as u64);
        }
        if Sha256Digest(hasher.finalize().into()) != self.header.payload_sha256 {
            return Err(volume_error(
                "volume_corrupt",
                format!(
                    "{}: volume {} of {} is corrupt: its payload does not match the SHA-256 in its header",
                    self.path.display(),
                    self.header.index,
                    self.header.count
                ),
            ));
        }
        Ok(())
    }
}

/// A complete, consistent set of volumes, in order.
#[derive(Debug)]
pub struct VolumeSet {
    /// The volumes, by index.
    pub volumes: Vec<Volume>,
}

/// True if `name` looks like a volume file (`*.NNN-of-NNN`).
pub fn is_volume_name(name: &str) -> bool {
    let Some((_, tail)) = name.rsplit_once('.') else {
        return false;
    };
    let Some((a, b)) = tail.split_once("-of-") else {
        return false;
    };
    !a.is_empty()
        && !b.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && b.bytes().all(|c| c.is_ascii_digit())
}

/// True if `dir` holds at least one file named like a volume.
pub fn is_volume_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| is_volume_name(&e.file_name().to_string_lossy()))
    })
}

impl VolumeSet {
    /// Reads the headers of every volume file in `dir` and checks that they form one whole
    /// bundle: one bundle digest and count, every index once, sizes as the headers say, and
    /// payloads that tile the bundle exactly. With `check_payloads`, each payload's SHA-256
    /// is checked too (`join` does; `verify` relies on the signed chunk hashes instead).
    pub fn open(dir: &Path, check_payloads: bool, progress: &dyn Progress) -> Result<Self> {
        let mut found: Vec<Volume> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_volume_name(&name) {
                continue;
            }
            let path = entry.path();
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let mut head = [0u8; HEADER_LEN as usize];
            let header = file
                .read_exact_at(&mut head, 0)
                .map_err(|_| "shorter than a volume header".to_owned())
                .and_then(|()| VolumeHeader::decode(&head))
                .map_err(|why| volume_error("volume_corrupt", format!("{name}: {why}")))?;
            found.push(Volume { path, header, file });
        }
        let Some(first) = found.iter().min_by_key(|v| v.header.index) else {
            return Err(volume_error(
                "volume_missing",
                format!("{}: no volumes found", dir.display()),
            ));
        };
        // The set is the one volume 1 (or the lowest index present) belongs to.
        let (bundle, count, size) = (
            first.header.bundle,
            first.header.count,
            first.header.bundle_size,
        );
        for v in &found {
            let h = &v.header;
            if h.bundle != bundle || h.count != count || h.bundle_size != size {
                return Err(volume_error(
                    "volume_foreign",
                    format!(
                        "{}: volume {} of {} belongs to another bundle (sha256:{}), not sha256:{bundle}",
                        v.path.display(),
                        h.index,
                        h.count,
                        h.bundle
                    ),
                ));
            }
        }
        found.sort_by_key(|v| v.header.index);
        for pair in found.windows(2) {
            if pair[0].header.index == pair[1].header.index {
                return Err(volume_error(
                    "volume_duplicate",
                    format!(
                        "volume {} of {count} appears twice: {} and {}",
                        pair[0].header.index,
                        pair[0].path.display(),
                        pair[1].path.display()
                    ),
                ));
            }
        }
        for index in 1..=count {
            if found.get(index as usize - 1).map(|v| v.header.index) != Some(index) {
                return Err(volume_error(
                    "volume_missing",
                    format!("volume {index} of {count} of bundle sha256:{bundle} is missing"),
                ));
            }
        }
        let mut expected_offset = 0;
        for v in &found {
            let h = &v.header;
            if h.offset != expected_offset {
                return Err(volume_error(
                    "volume_corrupt",
                    format!(
                        "{}: volume {} starts at byte {} of the bundle, expected {expected_offset}",
                        v.path.display(),
                        h.index,
                        h.offset
                    ),
                ));
            }
            expected_offset += h.length;
            let actual = v.file.metadata().map_err(|e| Error::io(&v.path, e))?.len();
            let want = HEADER_LEN + h.length;
            if actual < want {
                return Err(volume_error(
                    "volume_truncated",
                    format!(
                        "{}: volume {} of {count} is truncated: {actual} of {want} bytes",
                        v.path.display(),
                        h.index
                    ),
                ));
            }
            if actual > want {
                return Err(volume_error(
                    "volume_corrupt",
                    format!(
                        "{}: volume {} of {count} has {} bytes after its payload",
                        v.path.display(),
                        h.index,
                        actual - want
                    ),
                ));
            }
        }
        if expected_offset != size {
            return Err(volume_error(
                "volume_corrupt",
                format!("the volumes hold {expected_offset} bytes, the bundle has {size}"),
            ));
        }
        let set = Self { volumes: found };
        if check_payloads {
            set.check_payloads(progress)?;
        }
        Ok(set)
    }

    fn check_payloads(&self, progress: &dyn Progress) -> Result<()> {
        progress.begin("checking", self.size());
        let result = self
            .volumes
            .iter()
            .try_for_each(|v| v.check_payload(progress));
        progress.end();
        result
    }

    /// Volumes holding any of the bundle bytes `start..end`.
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<&Volume> {
        self.volumes
            .iter()
            .filter(|v| v.header.offset < end && start < v.header.offset + v.header.length)
            .collect()
    }

    /// The bundle digest the headers name.
    pub fn bundle_digest(&self) -> Sha256Digest {
        self.volumes[0].header.bundle
    }

    /// Length of the joined bundle.
    pub fn size(&self) -> u64 {
        self.volumes[0].header.bundle_size
    }

    /// The volume holding byte `offset` of the bundle.
    pub fn volume_at(&self, offset: u64) -> Option<&Volume> {
        // Volumes tile the bundle in order (checked by `open`), so a binary search finds the
        // one volume whose range holds `offset`; every block read goes through here.
        let i = self
            .volumes
            .partition_point(|v| v.header.offset + v.header.length <= offset);
        self.volumes
            .get(i)
            .filter(|v| offset >= v.header.offset && offset < v.header.offset + v.header.length)
    }

    /// The volumes as one readable span.
    pub fn span(self) -> Span {
        Span { set: self }
    }

    /// Writes the joined bundle to `out` (via a temporary file, synced, then renamed).
    pub fn join(&self, out: &Path, progress: &dyn Progress) -> Result<()> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy());
        let tmp = parent.join(format!(".{name}.partial"));
        let result = (|| {
            let mut dst = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            progress.begin("joining", self.size());
            for v in &self.volumes {
                let mut src = &v.file;
                src.seek(SeekFrom::Start(HEADER_LEN))
                    .map_err(|e| Error::io(&v.path, e))?;
                let n = std::io::copy(&mut src.take(v.header.length), &mut dst)
                    .map_err(|e| Error::io(&tmp, e))?;
                progress.advance(n);
            }
            progress.end();
            dst.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// A set of volumes read as the one bundle file they make up.
#[derive(Debug)]
pub struct Span {
    set: VolumeSet,
}

impl Span {
    /// The volumes behind the span.
    pub fn volumes(&self) -> &VolumeSet {
        &self.set
    }

    /// Reads exactly `buf.len()` bytes at bundle offset `pos`, across volume boundaries.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            let Some(v) = self.set.volume_at(pos) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("byte {pos} is past the end of the volumes"),
                ));
            };
            let within = pos - v.header.offset;
            let n = (v.header.length - within).min(buf.len() as u64) as usize;
            v.file.read_exact_at(&mut buf[..n], HEADER_LEN + within)?;
            buf = &mut buf[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// A sequential reader over the span, for the tar indexer.
    pub(crate) fn cursor(&self) -> SpanCursor<'_> {
        SpanCursor { span: self, pos: 0 }
    }
}

pub(crate) struct SpanCursor<'a> {
    span: &'a Span,
    pos: u64,
}

impl Read for SpanCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.span.set.size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        self.span.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SpanCursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = self.span.set.size() as i128;
        let target = match to {
            SeekFrom::Start(p) => i128::from(p),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if target < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> VolumeHeader {
        VolumeHeader {
            bundle: Sha256Digest([1; 32]),
            bundle_size: 1000,
            index: 2,
            count: 3,
            offset: 400,
            length: 400,
            payload_sha256: Sha256Digest([2; 32]),
        }
    }

    #[test]
    fn a_header_round_trips_and_any_flipped_bit_is_caught() {
        let bytes = header().encode();
        assert_eq!(VolumeHeader::decode(&bytes).unwrap(), header());
        for i in 0..HEADER_LEN as usize {
            let mut b = bytes;
            b[i] ^= 0x10;
            assert!(VolumeHeader::decode(&b).is_err(), "byte {i}");
        }
    }

    #[test]
    fn volume_names_sort_and_are_recognised() {
        assert_eq!(
            volume_name("m_1.0.0.airlock", 7, 12),
            "m_1.0.0.airlock.007-of-012"
        );
        assert_eq!(volume_name("m", 7, 1200), "m.0007-of-1200");
        assert!(is_volume_name("m_1.0.0.airlock.007-of-012"));
        assert!(!is_volume_name("m_1.0.0.airlock"));
        assert!(!is_volume_name("README.md"));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = VolumeHeader::decode(&bytes);
        }

        #[test]
        fn every_valid_header_round_trips(
            size in 1u64..u64::MAX / 2, count in 1u32..MAX_VOLUMES, index in 1u32..MAX_VOLUMES,
            offset in 0u64..1000, length in 0u64..1000,
        ) {
            let h = VolumeHeader {
                bundle: Sha256Digest([9; 32]), bundle_size: size.max(offset + length),
                index: index.min(count), count, offset, length,
                payload_sha256: Sha256Digest([3; 32]),
            };
            prop_assert_eq!(VolumeHeader::decode(&h.encode()).unwrap(), h);
        }
    }
}
