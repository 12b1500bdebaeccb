//! RaptorQ (RFC 6330) over one block at a time.
//!
//! Each block is its own RaptorQ object with a single source block, so block numbers are
//! ours (32-bit, in the packet header) and never RFC 6330's 8-bit SBN, which would wrap.

use raptorq::{
    EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder,
    SourceBlockEncoder,
};

use crate::packet::SYMBOL_ALIGNMENT;

fn config(padded_len: usize, symbol_size: usize) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(
        padded_len as u64,
        symbol_size as u16,
        1,
        1,
        SYMBOL_ALIGNMENT as u8,
    )
}

/// Repair symbols `first..first + count` of a block padded to a whole number of symbols,
/// each with its encoding symbol id.
pub fn repair_symbols(
    padded: &[u8],
    symbol_size: usize,
    first: u32,
    count: u32,
) -> Vec<(u32, Vec<u8>)> {
    if count == 0 {
        return Vec::new();
    }
    let encoder = SourceBlockEncoder::new(0, &config(padded.len(), symbol_size), padded);
    encoder
        .repair_packets(first, count)
        .into_iter()
        .map(|packet| {
            let (id, data) = packet.split();
            (id.encoding_symbol_id(), data)
        })
        .collect()
}

/// Collects the symbols of one block until it can be rebuilt.
///
/// Source symbols are copied straight into the block buffer as they arrive, so a block that
/// lost nothing is complete without any decoding; repair symbols are kept aside and used only
/// when a source symbol is missing.
pub struct BlockAssembly {
    symbol_size: usize,
    source_symbols: u32,
    buffer: Vec<u8>,
    have_source: Vec<bool>,
    source_count: u32,
    repair: Vec<(u32, Vec<u8>)>,
    /// Decoding is tried again only when this many distinct symbols have arrived.
    next_attempt: u32,
}

impl BlockAssembly {
    /// An empty assembly for a block of `source_symbols` symbols.
    pub fn new(source_symbols: u32, symbol_size: usize) -> BlockAssembly {
        Self::with_buffer(source_symbols, symbol_size, Vec::new())
    }

    /// As [`BlockAssembly::new`], reusing `buffer`'s allocation. Its old contents need no
    /// clearing: every source symbol's bytes are overwritten before they are read.
    pub fn with_buffer(
        source_symbols: u32,
        symbol_size: usize,
        mut buffer: Vec<u8>,
    ) -> BlockAssembly {
        buffer.resize(source_symbols as usize * symbol_size, 0);
        BlockAssembly {
            symbol_size,
            source_symbols,
            buffer,
            have_source: vec![false; source_symbols as usize],
            source_count: 0,
            repair: Vec::new(),
            next_attempt: source_symbols,
        }
    }

    /// Bytes held, for memory accounting.
    pub fn footprint(&self) -> usize {
        self.buffer.len() + self.repair.len() * (self.symbol_size + 32)
    }

    /// Distinct symbols received.
    pub fn received(&self) -> u32 {
        self.source_count + self.repair.len() as u32
    }

    /// Adds one symbol; false if it was a duplicate or not wanted. The caller has checked the
    /// symbol's length and that `esi` is below 2^24.
    pub fn add(&mut self, esi: u32, symbol: &[u8]) -> bool {
        if esi < self.source_symbols {
            let slot = &mut self.have_source[esi as usize];
            if *slot {
                return false;
            }
            *slot = true;
            self.source_count += 1;
            let at = esi as usize * self.symbol_size;
            self.buffer[at..at + self.symbol_size].copy_from_slice(symbol);
            return true;
        }
        // Once every source symbol is here, repair symbols are of no use.
        if self.source_count == self.source_symbols
            || self.repair.iter().any(|(have, _)| *have == esi)
        {
            return false;
        }
        // Never hold more repair symbols than could be needed: bounds memory against a flood.
        if self.repair.len() as u32 >= self.source_symbols + 16 {
            return false;
        }
        self.repair.push((esi, symbol.to_vec()));
        true
    }

    /// True when every source symbol has arrived: the block needs no decoding.
    pub fn is_complete(&self) -> bool {
        self.source_count == self.source_symbols
    }

    /// True when enough symbols are here that decoding is worth trying.
    pub fn ready_to_decode(&self) -> bool {
        self.is_complete() || self.received() >= self.next_attempt
    }

    /// Rebuilds the padded block: directly if complete, else by RaptorQ decoding. On failure
    /// (too few independent symbols: about 1 in 100 with K symbols, 1 in 10^4 with K + 1)
    /// the next attempt waits for one more.
    pub fn finish(mut self) -> Result<Vec<u8>, BlockAssembly> {
        if self.is_complete() {
            return Ok(self.buffer);
        }
        let padded = self.buffer.len();
        let mut decoder =
            SourceBlockDecoder::new(0, &config(padded, self.symbol_size), padded as u64);
        let symbol_size = self.symbol_size;
        let sources = self
            .have_source
            .iter()
            .enumerate()
            .filter(|(_, have)| **have)
            .map(|(i, _)| {
                EncodingPacket::new(
                    PayloadId::new(0, i as u32),
                    self.buffer[i * symbol_size..(i + 1) * symbol_size].to_vec(),
                )
            });
        let repairs = self
            .repair
            .iter()
            .map(|(esi, data)| EncodingPacket::new(PayloadId::new(0, *esi), data.clone()));
        let packets: Vec<EncodingPacket> = sources.chain(repairs).collect();
        match decoder.decode(packets) {
            Some(block) => Ok(block),
            None => {
                self.next_attempt = self.received() + 1;
                Err(self)
            }
        }
    }
}

/// Encodes a small object (the announce) whole: `(esi, symbol)` for all source symbols and
/// repair symbols `first_repair..first_repair + repair`.
pub fn encode_object(
    object: &[u8],
    symbol_size: usize,
    first_repair: u32,
    repair: u32,
) -> Vec<(u32, Vec<u8>)> {
    let k = object.len().div_ceil(symbol_size);
    let mut padded = object.to_vec();
    padded.resize(k * symbol_size, 0);
    let mut out: Vec<(u32, Vec<u8>)> = padded
        .chunks(symbol_size)
        .enumerate()
        .map(|(i, s)| (i as u32, s.to_vec()))
        .collect();
    out.extend(repair_symbols(&padded, symbol_size, first_repair, repair));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(k: usize, t: usize) -> Vec<u8> {
        (0..k * t).map(|i| (i * 7 + i / 13) as u8).collect()
    }

    #[test]
    fn a_block_missing_source_symbols_is_rebuilt_from_repair_symbols() {
        let (k, t) = (100usize, 64usize);
        let data = block(k, t);
        let repairs = repair_symbols(&data, t, 0, 10);
        assert_eq!(repairs[0].0, k as u32, "repair ids follow the source ids");
        let mut asm = BlockAssembly::new(k as u32, t);
        for i in (0..k).filter(|i| i % 10 != 3) {
            assert!(asm.add(i as u32, &data[i * t..(i + 1) * t]));
        }
        assert!(!asm.ready_to_decode());
        for (esi, s) in &repairs {
            asm.add(*esi, s);
        }
        assert!(
            !asm.add(repairs[0].0, &repairs[0].1),
            "duplicates are refused"
        );
        assert!(asm.ready_to_decode());
        assert_eq!(asm.finish().ok().unwrap(), data);
    }

    #[test]
    fn a_complete_block_needs_no_decoding_and_refuses_repair() {
        let (k, t) = (5usize, 64usize);
        let data = block(k, t);
        let mut asm = BlockAssembly::new(k as u32, t);
        for i in 0..k {
            asm.add(i as u32, &data[i * t..(i + 1) * t]);
        }
        assert!(asm.is_complete());
        assert!(!asm.add(9, &[0; 64]));
        assert_eq!(asm.finish().ok().unwrap(), data);
    }

    #[test]
    fn too_few_symbols_fail_and_wait_for_more() {
        let (k, t) = (20usize, 64usize);
        let data = block(k, t);
        let mut asm = BlockAssembly::new(k as u32, t);
        for i in 0..k - 1 {
            asm.add(i as u32, &data[i * t..(i + 1) * t]);
        }
        // K symbols, one of them a repair symbol for another object: decoding may fail.
        asm.add(k as u32, &[0xFF; 64]);
        if let Err(asm) = asm.finish() {
            assert!(!asm.ready_to_decode());
        }
    }

    #[test]
    fn a_small_object_round_trips_through_repair_symbols_alone() {
        let object: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let symbols = encode_object(&object, 64, 0, 30);
        let k = object.len().div_ceil(64) as u32;
        let mut asm = BlockAssembly::new(k, 64);
        for (esi, s) in symbols.iter().filter(|(esi, _)| *esi >= 3) {
            asm.add(*esi, s);
        }
        let mut got = asm.finish().ok().unwrap();
        got.truncate(object.len());
        assert_eq!(got, object);
    }
}
