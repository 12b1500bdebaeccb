//! The datagram format of the one-way transfer.
//!
//! Every datagram is a 32-byte header followed by one symbol of `symbol_size` bytes. All
//! fields are big-endian:
//!
//! ```text
//!  0  2  magic "AL"
//!  2  1  version (1)
//!  3  1  kind: 1 announce symbol, 2 data symbol, 3 block hashes
//!  4  4  CRC-32C of the whole datagram with these four bytes taken as zero
//!  8  8  session id (random per sender run)
//! 16  8  digest tag: the first 8 bytes of the bundle digest
//! 24  4  data: block index; hashes: first block listed; announce: announce length in bytes
//! 28  4  data and announce: encoding symbol id (RFC 6330 ESI, < 2^24); hashes: copy number
//! 32     symbol
//! ```
//!
//! The decoder checks everything it can without session state: size, magic, version, kind,
//! checksum, and the ranges of ids. What needs the session (symbol size, block count) is
//! checked by the receiver, which names each reason a datagram was dropped.

use std::fmt;

/// Bytes before the symbol.
pub const HEADER_LEN: usize = 32;
/// "AL": the first two bytes of every datagram.
pub const MAGIC: [u8; 2] = *b"AL";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// RFC 6330 encoding symbol ids are 24-bit.
pub const MAX_SYMBOL_ID: u32 = (1 << 24) - 1;
/// The smallest symbol the format allows; the hash table of a group needs room.
pub const MIN_SYMBOL_SIZE: usize = 64;
/// The largest symbol: a maximum UDP payload less the header, rounded down to the alignment.
pub const MAX_SYMBOL_SIZE: usize = 65_472;
/// RaptorQ symbol alignment (RFC 6330 recommends 8 on 64-bit hosts).
pub const SYMBOL_ALIGNMENT: usize = 8;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A symbol of the session's announce (manifest and geometry).
    Announce = 1,
    /// A source or repair symbol of one bundle block.
    Data = 2,
    /// SHA-256 hashes of a group of blocks.
    Hashes = 3,
}

/// A parsed header; the symbol is the rest of the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the symbol is.
    pub kind: Kind,
    /// Random per sender run; ties packets to one announce.
    pub session: u64,
    /// First 8 bytes of the bundle digest.
    pub digest_tag: [u8; 8],
    /// Block index, first block of a hash table, or announce length (see the module docs).
    pub block: u32,
    /// Encoding symbol id, or the copy number of a hash table.
    pub symbol: u32,
}

/// Why a datagram was refused before any session state was consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Shorter than a header plus the smallest symbol.
    TooShort,
    /// Longer than the largest datagram the format allows.
    TooLong,
    /// Does not start with "AL".
    BadMagic,
    /// A version this build does not speak.
    BadVersion,
    /// An unknown kind byte.
    BadKind,
    /// The CRC-32C does not match: corrupted in flight.
    BadChecksum,
    /// A symbol id at or above 2^24.
    SymbolIdOutOfRange,
}

impl Malformed {
    /// A stable name for counters and reports.
    pub fn name(self) -> &'static str {
        match self {
            Malformed::TooShort => "too_short",
            Malformed::TooLong => "too_long",
            Malformed::BadMagic => "bad_magic",
            Malformed::BadVersion => "bad_version",
            Malformed::BadKind => "bad_kind",
            Malformed::BadChecksum => "bad_checksum",
            Malformed::SymbolIdOutOfRange => "symbol_id_out_of_range",
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The checksum with the checksum field read as zero.
fn checksum(datagram: &[u8]) -> u32 {
    let head = crc32c::crc32c(&datagram[..4]);
    let zeros = crc32c::crc32c_append(head, &[0; 4]);
    crc32c::crc32c_append(zeros, &datagram[8..])
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `datagram` and seals the
    /// checksum over the whole datagram, so the symbol must already be in place.
    pub fn seal(&self, datagram: &mut [u8]) {
        datagram[0..2].copy_from_slice(&MAGIC);
        datagram[2] = VERSION;
        datagram[3] = self.kind as u8;
        datagram[8..16].copy_from_slice(&self.session.to_be_bytes());
        datagram[16..24].copy_from_slice(&self.digest_tag);
        datagram[24..28].copy_from_slice(&self.block.to_be_bytes());
        datagram[28..32].copy_from_slice(&self.symbol.to_be_bytes());
        let crc = checksum(datagram);
        datagram[4..8].copy_from_slice(&crc.to_be_bytes());
    }

    /// Parses and checks a datagram; on success the symbol is `&datagram[HEADER_LEN..]`.
    pub fn open(datagram: &[u8]) -> Result<Header, Malformed> {
        if datagram.len() < HEADER_LEN + MIN_SYMBOL_SIZE {
            return Err(Malformed::TooShort);
        }
        if datagram.len() > HEADER_LEN + MAX_SYMBOL_SIZE {
            return Err(Malformed::TooLong);
        }
        if datagram[0..2] != MAGIC {
            return Err(Malformed::BadMagic);
        }
        if datagram[2] != VERSION {
            return Err(Malformed::BadVersion);
        }
        let kind = match datagram[3] {
            1 => Kind::Announce,
            2 => Kind::Data,
            3 => Kind::Hashes,
            _ => return Err(Malformed::BadKind),
        };
        let stored = u32::from_be_bytes(field(datagram, 4));
        if stored != checksum(datagram) {
            return Err(Malformed::BadChecksum);
        }
        let header = Header {
            kind,
            session: u64::from_be_bytes(field(datagram, 8)),
            digest_tag: field(datagram, 16),
            block: u32::from_be_bytes(field(datagram, 24)),
            symbol: u32::from_be_bytes(field(datagram, 28)),
        };
        if kind != Kind::Hashes && header.symbol > MAX_SYMBOL_ID {
            return Err(Malformed::SymbolIdOutOfRange);
        }
        Ok(header)
    }
}

/// A fixed-size field; the caller has checked the datagram is longer than the header.
fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// A block's check value: XXH3-128 of its bytes, big-endian.
///
/// It catches what slipped past the datagram checksums (and any decoding fault) so one bad
/// block is dropped and received again, instead of failing the whole bundle at the end. It is
/// not what makes the bundle trustworthy: the receiver's final verification checks every byte
/// against the SHA-256 hashes in the signed manifest. A non-cryptographic hash keeps this
/// per-block check off the critical path of both ends.
pub type BlockHash = [u8; 16];

/// The check value of a block's bytes.
pub fn block_hash(bytes: &[u8]) -> BlockHash {
    xxhash_rust::xxh3::xxh3_128(bytes).to_be_bytes()
}

/// One entry of a block-hash table: the block index and its [`BlockHash`].
pub const HASH_ENTRY_LEN: usize = 4 + 16;

/// Writes a hash table into a symbol: a 2-byte count, then `(block u32, hash)` entries,
/// then zeros. Returns how many entries fitted.
pub fn write_hash_table(symbol: &mut [u8], entries: &[(u32, BlockHash)]) -> usize {
    let fit = ((symbol.len() - 2) / HASH_ENTRY_LEN).min(entries.len());
    symbol.fill(0);
    symbol[0..2].copy_from_slice(&(fit as u16).to_be_bytes());
    for (i, (block, hash)) in entries[..fit].iter().enumerate() {
        let at = 2 + i * HASH_ENTRY_LEN;
        symbol[at..at + 4].copy_from_slice(&block.to_be_bytes());
        symbol[at + 4..at + HASH_ENTRY_LEN].copy_from_slice(hash);
    }
    fit
}

/// Reads a hash table written by [`write_hash_table`]; `None` when the count overruns the
/// symbol.
pub fn read_hash_table(symbol: &[u8]) -> Option<impl Iterator<Item = (u32, BlockHash)> + '_> {
    let count = usize::from(u16::from_be_bytes(field(symbol, 0)));
    if 2 + count * HASH_ENTRY_LEN > symbol.len() {
        return None;
    }
    Some((0..count).map(move |i| {
        let at = 2 + i * HASH_ENTRY_LEN;
        (u32::from_be_bytes(field(symbol, at)), field(symbol, at + 4))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(symbol_len: usize) -> Vec<u8> {
        let mut d = vec![0u8; HEADER_LEN + symbol_len];
        for (i, b) in d[HEADER_LEN..].iter_mut().enumerate() {
            *b = i as u8;
        }
        Header {
            kind: Kind::Data,
            session: 0x0102_0304_0506_0708,
            digest_tag: *b"digest!!",
            block: 7,
            symbol: 9,
        }
        .seal(&mut d);
        d
    }

    #[test]
    fn a_sealed_header_opens_to_the_same_fields() {
        let d = sample(1440);
        let h = Header::open(&d).unwrap();
        assert_eq!(h.kind, Kind::Data);
        assert_eq!(h.session, 0x0102_0304_0506_0708);
        assert_eq!(&h.digest_tag, b"digest!!");
        assert_eq!((h.block, h.symbol), (7, 9));
    }

    #[test]
    fn each_malformation_has_its_own_reason() {
        let good = sample(128);
        assert_eq!(
            Header::open(&good[..HEADER_LEN + 10]),
            Err(Malformed::TooShort)
        );
        assert_eq!(
            Header::open(&vec![0; HEADER_LEN + MAX_SYMBOL_SIZE + 1]),
            Err(Malformed::TooLong)
        );
        let mut d = good.clone();
        d[0] = b'X';
        assert_eq!(Header::open(&d), Err(Malformed::BadMagic));
        let mut d = good.clone();
        d[2] = 2;
        assert_eq!(Header::open(&d), Err(Malformed::BadVersion));
        let mut d = good.clone();
        d[3] = 9;
        assert_eq!(Header::open(&d), Err(Malformed::BadKind));
        let mut d = good.clone();
        d[100] ^= 1;
        assert_eq!(Header::open(&d), Err(Malformed::BadChecksum));
        let mut d = good.clone();
        Header {
            kind: Kind::Data,
            session: 1,
            digest_tag: [0; 8],
            block: 0,
            symbol: MAX_SYMBOL_ID + 1,
        }
        .seal(&mut d);
        assert_eq!(Header::open(&d), Err(Malformed::SymbolIdOutOfRange));
    }

    #[test]
    fn hash_tables_round_trip_and_refuse_an_overrunning_count() {
        let mut symbol = vec![0u8; 200];
        let entries: Vec<(u32, BlockHash)> = (0..10).map(|i| (i, [i as u8; 16])).collect();
        let fit = write_hash_table(&mut symbol, &entries);
        assert_eq!(fit, (200 - 2) / HASH_ENTRY_LEN);
        let read: Vec<_> = read_hash_table(&symbol).unwrap().collect();
        assert_eq!(read, entries[..fit]);
        symbol[0..2].copy_from_slice(&100u16.to_be_bytes());
        assert!(read_hash_table(&symbol).is_none());
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = Header::open(&bytes);
            if bytes.len() >= 2 {
                let _ = read_hash_table(&bytes).map(|t| t.count());
            }
        }

        #[test]
        fn any_single_bit_flip_is_caught(len in MIN_SYMBOL_SIZE..1500usize, bit in 0usize..(1500 * 8)) {
            let mut d = sample(len);
            let bit = bit % (d.len() * 8);
            d[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Header::open(&d).is_err());
        }

        #[test]
        fn sealed_fields_survive_any_values(session: u64, tag: [u8; 8], block: u32, symbol in 0..=MAX_SYMBOL_ID, len in MIN_SYMBOL_SIZE..2000usize) {
            let mut d = vec![0xA5u8; HEADER_LEN + len];
            let h = Header { kind: Kind::Announce, session, digest_tag: tag, block, symbol };
            h.seal(&mut d);
            prop_assert_eq!(Header::open(&d), Ok(h));
        }
    }
}
