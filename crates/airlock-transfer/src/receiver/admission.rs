//! Before a session: gathering announces, and deciding whether one may be received.
//!
//! Anyone upstream of the diode can send announce symbols under fresh session ids, so what is
//! held for announces not yet complete is bounded by count and by bytes, each reserved at its
//! worst case when the first symbol arrives. A complete announce is then checked against the
//! signed manifest it carries before anything is written: its size must be the one the signed
//! file sizes imply ([`crate::layout`]), so no table, bitmap or file of the session is sized by
//! an unsigned number.

use std::collections::{BTreeMap, VecDeque};

use airlock_bundle::Manifest;
use airlock_bundle::signature::SigstoreBundle;

use super::{ReceiveOptions, ReceiveReport};
use crate::announce::{Announce, AnnounceError, MAX_ANNOUNCE_LEN, MAX_SYMBOLS_PER_BLOCK};
use crate::fec::BlockAssembly;
use crate::layout::{self, LayoutError};
use crate::packet::{Header, MIN_SYMBOL_SIZE, SYMBOL_ALIGNMENT};

/// Memory for the announces of sessions not yet accepted.
pub(super) const ANNOUNCE_BUDGET: usize = 40 << 20;
/// Announces gathered at once: a genuine sender has one; more only lets a flood of session
/// ids cost bookkeeping.
pub(super) const MAX_CANDIDATES: usize = 16;
/// Bytes of bookkeeping per announce besides its symbols.
const CANDIDATE_OVERHEAD: usize = 256;
/// Repair symbols an assembly keeps beyond K (see [`BlockAssembly::add`]).
const EXTRA_REPAIR: usize = 16;
/// Bytes of bookkeeping per kept repair symbol besides its bytes.
const REPAIR_OVERHEAD: usize = 32;

/// Why an announce was refused. The message is one line naming what disagrees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not a well-formed announce, or its geometry breaks a limit.
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    /// The announce names a session other than the datagrams that carried it.
    #[error("announce names session {announced:016x} but came in datagrams of {carried:016x}")]
    OtherSession {
        /// The session in the announce.
        announced: u64,
        /// The session in the datagram headers.
        carried: u64,
    },
    /// The digest does not start with the datagrams' digest tag.
    #[error("announce digest disagrees with its packets")]
    DigestTag,
    /// The announced size is over `--max-size`.
    #[error("bundle of {size} bytes is over --max-size {max_size}")]
    OverMaxSize {
        /// The announced size.
        size: u64,
        /// The limit.
        max_size: u64,
    },
    /// `model.sig` or its payload is not a manifest.
    #[error("model.sig: {0}")]
    Signature(String),
    /// The digest is not that of the signed manifest carried.
    #[error("announced digest is not the digest of the signed manifest")]
    DigestMismatch,
    /// The signed manifest does not fix the bundle's size.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The announced size (and so the block count) is not what the signed manifest implies.
    #[error(
        "announce says {announced} bytes in {announced_blocks} blocks of {block_size}; the signed manifest makes the bundle {signed} bytes"
    )]
    SizeDisagrees {
        /// The announced size.
        announced: u64,
        /// The block count that size would give.
        announced_blocks: u64,
        /// The announced block size.
        block_size: u32,
        /// The size the signed manifest implies.
        signed: u64,
    },
    /// The signature does not meet `--trust`.
    #[error("not trusted: {0}")]
    Untrusted(String),
    /// This bundle was received before.
    #[error("bundle sha256:{digest} was already received")]
    AlreadyReceived {
        /// The bundle digest, hex.
        digest: String,
    },
}

/// An announce that may be received, with the file name the bundle will get.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) announce: Announce,
    pub(super) stem: String,
}

/// Checks an announce completely before anything is written for it: cheap checks first, the
/// signature's ECDSA last.
pub(super) fn admit(
    header: &Header,
    body: &[u8],
    options: &ReceiveOptions,
) -> Result<Admitted, Refusal> {
    let announce = Announce::decode(body)?;
    if announce.session != header.session {
        return Err(Refusal::OtherSession {
            announced: announce.session,
            carried: header.session,
        });
    }
    if announce.digest[..8] != header.digest_tag {
        return Err(Refusal::DigestTag);
    }
    let g = announce.geometry;
    if g.size > options.max_size {
        return Err(Refusal::OverMaxSize {
            size: g.size,
            max_size: options.max_size,
        });
    }
    let limits = &options.limits;
    let signature = SigstoreBundle::parse(&announce.signature, limits)
        .map_err(|e| Refusal::Signature(e.to_string()))?;
    let payload = signature
        .payload()
        .map_err(|e| Refusal::Signature(e.to_string()))?;
    let manifest =
        Manifest::parse(payload, limits).map_err(|e| Refusal::Signature(e.to_string()))?;
    if manifest.digest.0 != announce.digest {
        return Err(Refusal::DigestMismatch);
    }
    let signed = layout::bundle_size(announce.signature.len() as u64, &manifest)?;
    if g.size != signed {
        return Err(Refusal::SizeDisagrees {
            announced: g.size,
            announced_blocks: g.blocks(),
            block_size: g.block_size,
            signed,
        });
    }
    if let Some(trust) = &options.trust {
        signature
            .verify(trust, limits)
            .map_err(|e| Refusal::Untrusted(e.to_string()))?;
    }
    let stem = manifest
        .airlock()
        .and_then(|a| a.file_name())
        .unwrap_or_else(|| format!("{}.airlock", &manifest.digest.to_hex()[..16]));
    Ok(Admitted { announce, stem })
}

/// Announces being gathered, oldest first.
#[derive(Default)]
pub(super) struct Candidates {
    list: VecDeque<Candidate>,
    /// Sum of every candidate's `reserved`: at most [`ANNOUNCE_BUDGET`] unless one alone is.
    reserved: usize,
}

struct Candidate {
    session: u64,
    len: u32,
    symbol_size: usize,
    /// The most this announce can hold: its source symbols and every repair symbol kept.
    reserved: usize,
    gathered: Gathering,
}

/// An announce's symbols: held one by one until K have come, so memory follows what arrived
/// and not the length the datagrams claim (a symbol claiming 16 MiB costs one symbol); only
/// then, with K datagrams paid for, the block buffer RaptorQ decodes into.
enum Gathering {
    Symbols {
        k: u32,
        symbols: BTreeMap<u32, Vec<u8>>,
    },
    Assembly(BlockAssembly),
}

impl Gathering {
    /// Adds a symbol; false for a duplicate or one of no use.
    fn add(&mut self, esi: u32, symbol: &[u8], symbol_size: usize) -> bool {
        match self {
            Gathering::Assembly(asm) => asm.add(esi, symbol),
            Gathering::Symbols { k, symbols } => {
                if symbols.insert(esi, symbol.to_vec()).is_some() {
                    return false;
                }
                if symbols.len() >= *k as usize {
                    let mut asm = BlockAssembly::new(*k, symbol_size);
                    for (esi, symbol) in std::mem::take(symbols) {
                        asm.add(esi, &symbol);
                    }
                    *self = Gathering::Assembly(asm);
                }
                true
            }
        }
    }
}

/// What became of an announce symbol.
pub(super) enum Gathered {
    /// Not of use; the reason was counted.
    Dropped,
    /// Kept; the announce is not complete.
    Kept,
    /// The announce's bytes, decoded.
    Complete(Vec<u8>),
}

impl Candidates {
    /// Takes one announce symbol.
    pub(super) fn add(
        &mut self,
        header: &Header,
        symbol: &[u8],
        report: &mut ReceiveReport,
    ) -> Gathered {
        let (len, t) = (header.block, symbol.len());
        let k = (len as usize).div_ceil(t.max(1));
        if len as usize > MAX_ANNOUNCE_LEN
            || k as u64 > MAX_SYMBOLS_PER_BLOCK
            || t < MIN_SYMBOL_SIZE
            || t % SYMBOL_ALIGNMENT != 0
            || len == 0
        {
            report.drop("bad_announce_geometry");
            return Gathered::Dropped;
        }
        let at = match self.list.iter().position(|c| c.session == header.session) {
            Some(at) => {
                let c = &self.list[at];
                if c.len != len || c.symbol_size != t {
                    report.drop("inconsistent_announce");
                    return Gathered::Dropped;
                }
                at
            }
            None => {
                let reserved =
                    k * t + (k + EXTRA_REPAIR) * (t + REPAIR_OVERHEAD) + k + CANDIDATE_OVERHEAD;
                // Bounded: the oldest unfinished announces make room for the new one.
                while !self.list.is_empty()
                    && (self.list.len() >= MAX_CANDIDATES
                        || self.reserved + reserved > ANNOUNCE_BUDGET)
                {
                    if let Some(old) = self.list.pop_front() {
                        self.reserved -= old.reserved;
                    }
                    report.drop("announce_evicted");
                }
                self.reserved += reserved;
                self.list.push_back(Candidate {
                    session: header.session,
                    len,
                    symbol_size: t,
                    reserved,
                    gathered: Gathering::Symbols {
                        k: k as u32,
                        symbols: BTreeMap::new(),
                    },
                });
                self.list.len() - 1
            }
        };
        if !self.list[at].gathered.add(header.symbol, symbol, t) {
            report.drop("duplicate");
            return Gathered::Dropped;
        }
        if !matches!(&self.list[at].gathered, Gathering::Assembly(asm) if asm.ready_to_decode()) {
            return Gathered::Kept;
        }
        let Some(candidate) = self.list.remove(at) else {
            return Gathered::Kept;
        };
        let asm = match candidate.gathered {
            Gathering::Assembly(asm) => asm,
            symbols @ Gathering::Symbols { .. } => {
                self.list.push_back(Candidate {
                    gathered: symbols,
                    ..candidate
                });
                return Gathered::Kept;
            }
        };
        match asm.finish() {
            Err(asm) => {
                // Too few independent symbols yet: it waits for one more.
                self.list.push_back(Candidate {
                    gathered: Gathering::Assembly(asm),
                    ..candidate
                });
                Gathered::Kept
            }
            Ok(mut body) => {
                self.reserved -= candidate.reserved;
                body.truncate(candidate.len as usize);
                Gathered::Complete(body)
            }
        }
    }

    /// Announces held (tests of the bound).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Bytes reserved for them (tests of the bound).
    #[cfg(test)]
    pub(super) fn reserved(&self) -> usize {
        self.reserved
    }
}
