//! The announce: what a receiver must know before it writes a byte of a session.
//!
//! It is sent RaptorQ-coded with heavy repair at the start of every carousel pass and again
//! between groups, so a receiver that joins mid-stream learns the session within seconds.
//! Layout (big-endian):
//!
//! ```text
//! 8   magic "ALDANN01"
//! 8   session id (equal to every packet's header)
//! 8   bundle size in bytes
//! 4   block size in bytes
//! 2   symbol size in bytes
//! 2   zero
//! 32  bundle digest: SHA-256 of the signed manifest (the DSSE payload of model.sig)
//! 4   length of model.sig
//! ..  model.sig, exactly as in the bundle
//! 32  SHA-256 of everything above
//! ```
//!
//! The receiver accepts an announce only if its own hash matches, the geometry is within
//! limits, and the digest is the SHA-256 of the payload inside the model.sig it carries.

use sha2::{Digest as _, Sha256};

use crate::packet::{MAX_SYMBOL_SIZE, MIN_SYMBOL_SIZE, SYMBOL_ALIGNMENT};

const MAGIC: &[u8; 8] = b"ALDANN01";
const FIXED_LEN: usize = 8 + 8 + 8 + 4 + 2 + 2 + 32 + 4 + 32;
/// The largest announce accepted: model.sig of a bundle with a few hundred thousand chunks.
pub const MAX_ANNOUNCE_LEN: usize = 16 << 20;
/// RFC 6330's largest source block.
pub const MAX_SYMBOLS_PER_BLOCK: u64 = 56_403;
/// Largest block size the receiver accepts (bounds its memory per block in flight).
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;

/// How a session cuts the bundle into blocks and symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bundle size in bytes.
    pub size: u64,
    /// Bytes per block (the last block may be shorter).
    pub block_size: u32,
    /// Bytes per symbol (and per datagram, less the header).
    pub symbol_size: u16,
}

impl Geometry {
    /// Checks the limits every geometry must meet; the message names the broken one.
    pub fn check(&self) -> Result<(), String> {
        let t = usize::from(self.symbol_size);
        if !(MIN_SYMBOL_SIZE..=MAX_SYMBOL_SIZE).contains(&t) || t % SYMBOL_ALIGNMENT != 0 {
            return Err(format!(
                "symbol size {t} is not a multiple of {SYMBOL_ALIGNMENT} in {MIN_SYMBOL_SIZE}..={MAX_SYMBOL_SIZE}"
            ));
        }
        if self.block_size < u32::from(self.symbol_size) || self.block_size > MAX_BLOCK_SIZE {
            return Err(format!(
                "block size {} is outside {t}..={MAX_BLOCK_SIZE}",
                self.block_size
            ));
        }
        if u64::from(self.block_size).div_ceil(t as u64) > MAX_SYMBOLS_PER_BLOCK {
            return Err(format!(
                "block size {} needs more than {MAX_SYMBOLS_PER_BLOCK} symbols",
                self.block_size
            ));
        }
        if self.size == 0 {
            return Err("bundle size is zero".into());
        }
        if self.blocks() > u64::from(u32::MAX) {
            return Err(format!(
                "bundle size {} needs more than 2^32 blocks",
                self.size
            ));
        }
        Ok(())
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size))
    }

    /// Offset of a block in the bundle.
    pub fn block_offset(&self, block: u32) -> u64 {
        u64::from(block) * u64::from(self.block_size)
    }

    /// Bytes in a block (the last may be short).
    pub fn block_len(&self, block: u32) -> usize {
        let start = self.block_offset(block);
        (self.size - start).min(u64::from(self.block_size)) as usize
    }

    /// Source symbols of a block (RFC 6330's K); its bytes are zero-padded to K symbols.
    pub fn source_symbols(&self, block: u32) -> u32 {
        self.block_len(block)
            .div_ceil(usize::from(self.symbol_size)) as u32
    }
}

/// A decoded, checked announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The sender run's session id.
    pub session: u64,
    /// Block and symbol layout.
    pub geometry: Geometry,
    /// SHA-256 of the signed manifest.
    pub digest: [u8; 32],
    /// The bundle's `model.sig`.
    pub signature: Vec<u8>,
}

impl Announce {
    /// Serializes, sealed with its own hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.signature.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.geometry.size.to_be_bytes());
        out.extend_from_slice(&self.geometry.block_size.to_be_bytes());
        out.extend_from_slice(&self.geometry.symbol_size.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&(self.signature.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.signature);
        let seal = Sha256::digest(&out);
        out.extend_from_slice(&seal);
        out
    }

    /// Parses and checks everything that does not need the signature's own format: the seal,
    /// the lengths, the geometry. The caller checks the digest against the signature.
    pub fn decode(bytes: &[u8]) -> Result<Announce, String> {
        if bytes.len() < FIXED_LEN {
            return Err(format!("announce of {} bytes is too short", bytes.len()));
        }
        if bytes.len() > MAX_ANNOUNCE_LEN {
            return Err(format!("announce of {} bytes is too long", bytes.len()));
        }
        let (body, seal) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != seal {
            return Err("announce hash does not match its contents".into());
        }
        let mut r = Reader(body);
        if r.take(8)? != MAGIC {
            return Err("announce magic is wrong".into());
        }
        let session = u64::from_be_bytes(r.array()?);
        let geometry = Geometry {
            size: u64::from_be_bytes(r.array()?),
            block_size: u32::from_be_bytes(r.array()?),
            symbol_size: u16::from_be_bytes(r.array()?),
        };
        if r.take(2)? != [0, 0] {
            return Err("announce reserved bytes are not zero".into());
        }
        let digest: [u8; 32] = r.array()?;
        let sig_len = u32::from_be_bytes(r.array()?) as usize;
        if sig_len != r.0.len() {
            return Err(format!(
                "announce says model.sig has {sig_len} bytes but carries {}",
                r.0.len()
            ));
        }
        geometry.check()?;
        Ok(Announce {
            session,
            geometry,
            digest,
            signature: r.0.to_vec(),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("announce ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Announce {
        Announce {
            session: 42,
            geometry: Geometry {
                size: 5_000_000,
                block_size: 1 << 20,
                symbol_size: 1440,
            },
            digest: [7; 32],
            signature: b"{\"mediaType\":\"...\"}".to_vec(),
        }
    }

    #[test]
    fn an_announce_round_trips() {
        let a = sample();
        assert_eq!(Announce::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn geometry_counts_blocks_and_symbols() {
        let g = sample().geometry;
        assert_eq!(g.blocks(), 5);
        assert_eq!(g.block_len(4), 5_000_000 - 4 * (1 << 20));
        assert_eq!(g.source_symbols(0), (1u32 << 20).div_ceil(1440));
    }

    #[test]
    fn a_damaged_or_inconsistent_announce_is_refused_with_its_reason() {
        let a = sample();
        let mut bytes = a.encode();
        bytes[30] ^= 1;
        assert!(Announce::decode(&bytes).unwrap_err().contains("hash"));
        let mut bad = a.clone();
        bad.geometry.symbol_size = 1441;
        assert!(
            Announce::decode(&bad.encode())
                .unwrap_err()
                .contains("symbol size")
        );
        let mut bad = a.clone();
        bad.geometry.block_size = MAX_BLOCK_SIZE + 1;
        assert!(
            Announce::decode(&bad.encode())
                .unwrap_err()
                .contains("block size")
        );
        let mut bad = a;
        bad.geometry.size = 0;
        assert!(
            Announce::decode(&bad.encode())
                .unwrap_err()
                .contains("zero")
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Announce::decode(&bytes);
        }

        #[test]
        fn a_forged_signature_length_is_refused(extra in 1u32..1000) {
            let mut bytes = sample().encode();
            bytes.truncate(bytes.len() - 32);
            let at = bytes.len() - sample().signature.len() - 4;
            let forged = sample().signature.len() as u32 + extra;
            bytes[at..at + 4].copy_from_slice(&forged.to_be_bytes());
            let seal = Sha256::digest(&bytes);
            bytes.extend_from_slice(&seal);
            prop_assert!(Announce::decode(&bytes).unwrap_err().contains("model.sig"));
        }
    }
}
