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
//! limits, the digest is the SHA-256 of the payload inside the model.sig it carries, and the
//! size is the one that signed payload implies ([`crate::layout`]): nothing the receiver
//! holds for a session is sized by an unsigned number.

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
/// Smallest block size the receiver accepts. Per-block state (a bit of the bitmap, in memory
/// and on disk) is then at most 1/2^19 of the bundle, so a bundle within `--max-size` cannot
/// be announced in so many tiny blocks that the bitmap alone is large. Larger than the largest
/// symbol, so a block always holds at least one.
pub const MIN_BLOCK_SIZE: u32 = 64 << 10;

/// Which limit of [`Geometry::check`] an announced geometry breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// The symbol size is out of range or misaligned.
    #[error(
        "symbol size {symbol_size} is not a multiple of {SYMBOL_ALIGNMENT} in {MIN_SYMBOL_SIZE}..={MAX_SYMBOL_SIZE}"
    )]
    SymbolSize {
        /// The announced symbol size.
        symbol_size: u16,
    },
    /// The block size is out of range.
    #[error("block size {block_size} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}")]
    BlockSize {
        /// The announced block size.
        block_size: u32,
    },
    /// A block would need more source symbols than RFC 6330 allows.
    #[error(
        "block size {block_size} needs more than {MAX_SYMBOLS_PER_BLOCK} symbols of {symbol_size} bytes"
    )]
    TooManySymbols {
        /// The announced block size.
        block_size: u32,
        /// The announced symbol size.
        symbol_size: u16,
    },
    /// The bundle is empty.
    #[error("bundle size is zero")]
    ZeroSize,
    /// Block ids are 32-bit.
    #[error("bundle size {size} in blocks of {block_size} bytes needs more than 2^32 blocks")]
    TooManyBlocks {
        /// The announced bundle size.
        size: u64,
        /// The announced block size.
        block_size: u32,
    },
}

/// Why bytes are not an announce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Shorter than the fixed fields.
    #[error("announce of {len} bytes is too short")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Longer than [`MAX_ANNOUNCE_LEN`].
    #[error("announce of {len} bytes is too long")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The trailing SHA-256 does not match: damaged or forged.
    #[error("announce hash does not match its contents")]
    Seal,
    /// Not an announce of this protocol version.
    #[error("announce magic is wrong")]
    Magic,
    /// The reserved bytes are not zero.
    #[error("announce reserved bytes are not zero")]
    Reserved,
    /// The fixed fields run past the end.
    #[error("announce ends early")]
    EndsEarly,
    /// The model.sig length field disagrees with the bytes carried.
    #[error("announce says model.sig has {declared} bytes but carries {carried}")]
    SignatureLength {
        /// The length field.
        declared: usize,
        /// The bytes actually carried.
        carried: usize,
    },
    /// The geometry breaks a limit.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
}

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
    /// Checks the limits every geometry must meet, whatever the bundle.
    ///
    /// Whether the size is the bundle's is for the receiver to check against the signed
    /// manifest ([`crate::layout::bundle_size`]): this needs nothing but the numbers.
    pub fn check(&self) -> Result<(), GeometryError> {
        let t = usize::from(self.symbol_size);
        if !(MIN_SYMBOL_SIZE..=MAX_SYMBOL_SIZE).contains(&t) || t % SYMBOL_ALIGNMENT != 0 {
            return Err(GeometryError::SymbolSize {
                symbol_size: self.symbol_size,
            });
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(GeometryError::BlockSize {
                block_size: self.block_size,
            });
        }
        if u64::from(self.block_size).div_ceil(t as u64) > MAX_SYMBOLS_PER_BLOCK {
            return Err(GeometryError::TooManySymbols {
                block_size: self.block_size,
                symbol_size: self.symbol_size,
            });
        }
        if self.size == 0 {
            return Err(GeometryError::ZeroSize);
        }
        if self.blocks() > u64::from(u32::MAX) {
            return Err(GeometryError::TooManyBlocks {
                size: self.size,
                block_size: self.block_size,
            });
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
    pub fn decode(bytes: &[u8]) -> Result<Announce, AnnounceError> {
        if bytes.len() < FIXED_LEN {
            return Err(AnnounceError::TooShort { len: bytes.len() });
        }
        if bytes.len() > MAX_ANNOUNCE_LEN {
            return Err(AnnounceError::TooLong { len: bytes.len() });
        }
        let (body, seal) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != seal {
            return Err(AnnounceError::Seal);
        }
        let mut r = Reader(body);
        if r.take(8)? != MAGIC {
            return Err(AnnounceError::Magic);
        }
        let session = u64::from_be_bytes(r.array()?);
        let geometry = Geometry {
            size: u64::from_be_bytes(r.array()?),
            block_size: u32::from_be_bytes(r.array()?),
            symbol_size: u16::from_be_bytes(r.array()?),
        };
        if r.take(2)? != [0, 0] {
            return Err(AnnounceError::Reserved);
        }
        let digest: [u8; 32] = r.array()?;
        let sig_len = u32::from_be_bytes(r.array()?) as usize;
        if sig_len != r.0.len() {
            return Err(AnnounceError::SignatureLength {
                declared: sig_len,
                carried: r.0.len(),
            });
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
    fn take(&mut self, n: usize) -> Result<&'a [u8], AnnounceError> {
        if self.0.len() < n {
            return Err(AnnounceError::EndsEarly);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AnnounceError> {
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
        assert_eq!(Announce::decode(&bytes), Err(AnnounceError::Seal));
        let mut bad = a.clone();
        bad.geometry.symbol_size = 1441;
        assert_eq!(
            Announce::decode(&bad.encode()),
            Err(GeometryError::SymbolSize { symbol_size: 1441 }.into())
        );
        let mut bad = a.clone();
        bad.geometry.block_size = MAX_BLOCK_SIZE + 1;
        assert_eq!(
            Announce::decode(&bad.encode()),
            Err(GeometryError::BlockSize {
                block_size: MAX_BLOCK_SIZE + 1
            }
            .into())
        );
        let mut bad = a;
        bad.geometry.size = 0;
        assert_eq!(
            Announce::decode(&bad.encode()),
            Err(GeometryError::ZeroSize.into())
        );
    }

    #[test]
    fn tiny_blocks_are_refused_so_per_block_state_stays_a_small_fraction_of_the_bundle() {
        // The finding: 2^32 - 1 blocks of 64 bytes, a 256 GiB bundle within --max-size.
        let mut forged = sample();
        forged.geometry.block_size = 64;
        forged.geometry.symbol_size = 64;
        forged.geometry.size = (u64::from(u32::MAX)) * 64;
        let err = Announce::decode(&forged.encode()).unwrap_err();
        assert_eq!(
            err,
            AnnounceError::Geometry(GeometryError::BlockSize { block_size: 64 })
        );
        assert_eq!(
            err.to_string(),
            format!("block size 64 is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}")
        );
        forged.geometry.block_size = MIN_BLOCK_SIZE - 8;
        assert!(Announce::decode(&forged.encode()).is_err());
        forged.geometry.block_size = MIN_BLOCK_SIZE;
        assert!(Announce::decode(&forged.encode()).is_ok());
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
            prop_assert_eq!(
                Announce::decode(&bytes),
                Err(AnnounceError::SignatureLength {
                    declared: forged as usize,
                    carried: sample().signature.len(),
                })
            );
        }
    }
}
