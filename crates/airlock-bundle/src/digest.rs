//! SHA-256 digests and the streaming hashers built on them.

use std::fmt;
use std::io::Read;

use sha2::{Digest as _, Sha256};

/// The fixed chunk size of the signed per-chunk hashes (`docs/bundle-format.md`, "Chunks").
pub const CHUNK_SIZE: u64 = 64 << 20;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Lower-case hex, as used everywhere in the bundle format.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lower- or upper-case hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

/// Whole-file and per-chunk digests of one file, computed in a single pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: Sha256Digest,
    /// SHA-256 of each [`CHUNK_SIZE`] chunk, the last one possibly shorter. Empty for an
    /// empty file.
    pub chunks: Vec<Sha256Digest>,
}

/// Feeds bytes to a whole-file hasher and a chunk hasher at once.
#[derive(Default)]
pub struct DualHasher {
    whole: Sha256,
    chunk: Sha256,
    in_chunk: u64,
    size: u64,
    chunks: Vec<Sha256Digest>,
}

impl DualHasher {
    /// A hasher with nothing fed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = usize::try_from(CHUNK_SIZE - self.in_chunk).unwrap_or(usize::MAX);
            let take = room.min(bytes.len());
            self.chunk.update(&bytes[..take]);
            self.in_chunk += take as u64;
            bytes = &bytes[take..];
            if self.in_chunk == CHUNK_SIZE {
                self.chunks
                    .push(Sha256Digest(self.chunk.finalize_reset().into()));
                self.in_chunk = 0;
            }
        }
    }

    /// Finishes both hashes.
    pub fn finish(mut self) -> FileDigests {
        if self.in_chunk > 0 {
            self.chunks.push(Sha256Digest(self.chunk.finalize().into()));
        }
        FileDigests {
            size: self.size,
            sha256: Sha256Digest(self.whole.finalize().into()),
            chunks: self.chunks,
        }
    }
}

/// Number of chunks a file of `size` bytes has.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// Hashes everything `reader` yields, calling `progress` with each block's length.
pub fn sha256_reader(
    reader: &mut impl Read,
    progress: &dyn Fn(u64),
) -> std::io::Result<(Sha256Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        progress(n as u64);
    }
    Ok((Sha256Digest(hasher.finalize().into()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_hasher_splits_on_chunk_boundaries_whatever_the_feed_sizes() {
        let data: Vec<u8> = (0..(CHUNK_SIZE as usize + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut one = DualHasher::new();
        one.update(&data);
        let mut many = DualHasher::new();
        for piece in data.chunks(7_777_777) {
            many.update(piece);
        }
        let (one, many) = (one.finish(), many.finish());
        assert_eq!(one, many);
        assert_eq!(one.chunks.len(), 2);
        assert_eq!(
            one.chunks[0],
            Sha256Digest::of(&data[..CHUNK_SIZE as usize])
        );
        assert_eq!(
            one.chunks[1],
            Sha256Digest::of(&data[CHUNK_SIZE as usize..])
        );
        assert_eq!(one.sha256, Sha256Digest::of(&data));
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let d = DualHasher::new().finish();
        assert_eq!(d.size, 0);
        assert!(d.chunks.is_empty());
        assert_eq!(chunk_count(0), 0);
    }

    #[test]
    fn hex_round_trips_and_rejects_wrong_lengths() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(Sha256Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Sha256Digest::from_hex("abcd"), None);
        assert_eq!(Sha256Digest::from_hex(&"zz".repeat(32)), None);
    }
}
