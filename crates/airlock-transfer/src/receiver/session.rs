//! The session being received: its on-disk state and every table it keeps in memory.
//!
//! Everything here is sized by the accepted announce, whose size the receiver has checked
//! against the signed manifest, and by the memory budget, never by a number in a datagram:
//! the bitmap has a bit per block of the signed size, check values are capped
//! ([`CheckValues`]), blocks being gathered share the budget, blocks queued for the writer
//! take at most half of it, and a datagram naming a block past the end is dropped.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::time::Instant;

use airlock_bundle::{Progress, Sha256Digest};

use super::ReceiveReport;
use super::check_values::CheckValues;
use super::writer::{Job, Outcome, Writer};
use crate::announce::{Announce, Geometry};
use crate::fec::BlockAssembly;
use crate::packet::{Header, Kind, read_hash_table};
use crate::{Error, Result};

/// Symbols kept per block while it is being decoded, in case decoding fails.
const LATE_SYMBOLS_KEPT: usize = 64;
/// Block buffers kept for reuse.
const SPARE_BUFFERS: usize = 32;
/// Bounds of the writer's queue, in blocks.
const MIN_QUEUED: usize = 2;
const MAX_QUEUED: usize = 1024;

/// The session being received, and its on-disk state.
pub(super) struct Active {
    pub(super) announce: Announce,
    pub(super) session: u64,
    tag: [u8; 8],
    pub(super) stem: String,
    pub(super) dir: PathBuf,
    done: Vec<u8>,
    pub(super) done_count: u64,
    /// Blocks of the bundle; the announce's size was checked against the signed manifest.
    blocks: u64,
    hashes: CheckValues,
    in_flight: HashMap<u32, InFlight>,
    in_flight_bytes: usize,
    budget: usize,
    /// Blocks handed to the writer and not yet reported back, with symbols that arrived
    /// meanwhile: if decoding fails they are what lets the next attempt succeed.
    writing: HashMap<u32, Vec<(u32, Vec<u8>)>>,
    /// Block buffers the writer is done with, reused so blocks cost no page faults.
    spare_buffers: Vec<Vec<u8>>,
    tick: u64,
    /// Bounded. When the writer falls behind, complete blocks wait here, in order, their
    /// symbols still in `in_flight` within the memory budget: the reader never waits for the
    /// writer, since a reader that waits lets the kernel drop what arrives meanwhile.
    jobs: SyncSender<Job>,
    waiting: std::collections::VecDeque<u32>,
    results: Receiver<Outcome>,
    writer: Option<std::thread::JoinHandle<Result<()>>>,
    pub(super) decoded: u64,
    pub(super) repaired: u64,
    pub(super) last_accepted: Instant,
}

struct InFlight {
    asm: BlockAssembly,
    last_fed: u64,
    /// Complete and waiting for room in the writer's queue: never evicted.
    waiting: bool,
}

impl Active {
    pub(super) fn open(
        root: &Path,
        announce: Announce,
        stem: String,
        tag: [u8; 8],
        budget: usize,
    ) -> Result<Active> {
        let g = announce.geometry;
        let blocks = g.blocks();
        let dir = root.join(format!(
            "{}-{}",
            Sha256Digest(announce.digest),
            g.block_size
        ));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let part_path = dir.join("bundle.part");
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(Error::io(&part_path))?;
        let len = part.metadata().map_err(Error::io(&part_path))?.len();
        let bitmap_path = dir.join("blocks.done");
        let bitmap_len = blocks.div_ceil(8);
        // Read only a bitmap of the right length: a larger file is not ours to load.
        let kept = std::fs::metadata(&bitmap_path).is_ok_and(|m| m.len() == bitmap_len);
        let mut done = match std::fs::read(&bitmap_path) {
            Ok(bytes) if kept && bytes.len() as u64 == bitmap_len && len == g.size => bytes,
            _ => vec![0; bitmap_len as usize],
        };
        // Bits past the last block are never set.
        if let Some(last) = done.last_mut() {
            let used = (blocks % 8) as u32;
            if used != 0 {
                *last &= (1u8 << used) - 1;
            }
        }
        // The signed size: the file is never longer than the bundle it will become.
        if len != g.size {
            part.set_len(g.size).map_err(Error::io(&part_path))?;
        }
        std::fs::write(dir.join("announce"), announce.encode()).map_err(Error::io(&dir))?;
        let done_count = done.iter().map(|b| u64::from(b.count_ones())).sum();
        let (jobs, job_rx) = sync_channel(queue_len(&g, budget));
        let (result_tx, results) = channel();
        let writer_state = Writer {
            part,
            part_path,
            bitmap_path,
            done: done.clone(),
            geometry: g,
            unsynced: Vec::new(),
            last_sync: Instant::now(),
        };
        let writer = std::thread::Builder::new()
            .name("diode-writer".into())
            .spawn(move || writer_state.run(&job_rx, &result_tx))
            .map_err(Error::io(&dir))?;
        Ok(Active {
            session: announce.session,
            announce,
            tag,
            stem,
            dir,
            done,
            done_count,
            blocks,
            hashes: CheckValues::new(blocks),
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            budget,
            writing: HashMap::new(),
            waiting: std::collections::VecDeque::new(),
            spare_buffers: Vec::new(),
            tick: 0,
            jobs,
            results,
            writer: Some(writer),
            decoded: 0,
            repaired: 0,
            last_accepted: Instant::now(),
        })
    }

    pub(super) fn geometry(&self) -> Geometry {
        self.announce.geometry
    }

    pub(super) fn blocks(&self) -> u64 {
        self.blocks
    }

    pub(super) fn complete(&self) -> bool {
        self.done_count == self.blocks
    }

    /// Whether blocks are still with the writer or waiting for it: the stream may have
    /// ended, but the bundle is not given up on while they are.
    pub(super) fn busy(&self) -> bool {
        !self.waiting.is_empty() || !self.writing.is_empty()
    }

    fn is_done(&self, block: u32) -> bool {
        self.done[(block / 8) as usize] & (1 << (block % 8)) != 0
    }

    pub(super) fn done_bytes(&self) -> u64 {
        (0..self.blocks as u32)
            .filter(|b| self.is_done(*b))
            .map(|b| self.geometry().block_len(b) as u64)
            .sum()
    }

    pub(super) fn switch_session(&mut self, announce: Announce) {
        self.session = announce.session;
        self.announce = announce;
        self.in_flight.clear();
        self.waiting.clear();
        self.in_flight_bytes = 0;
    }

    /// Takes a data or hash-table datagram of this session; true when it was of use.
    pub(super) fn symbol(
        &mut self,
        header: &Header,
        symbol: &[u8],
        report: &mut ReceiveReport,
    ) -> bool {
        if header.digest_tag != self.tag {
            report.drop("wrong_digest");
            return false;
        }
        if symbol.len() != usize::from(self.geometry().symbol_size) {
            report.drop("wrong_size");
            return false;
        }
        match header.kind {
            Kind::Hashes => self.hash_table(symbol, report),
            Kind::Data => self.data(header, symbol, report),
            Kind::Announce => false,
        }
    }

    fn hash_table(&mut self, symbol: &[u8], report: &mut ReceiveReport) -> bool {
        let Some(mut entries) = read_hash_table(symbol) else {
            report.drop("bad_hash_table");
            return false;
        };
        // A genuine table lists blocks of this bundle only: one naming a block past the end
        // was forged or damaged, and none of its entries is taken.
        if entries.any(|(block, _)| u64::from(block) >= self.blocks) {
            report.drop("block_out_of_range");
            return false;
        }
        let mut useful = false;
        let mut ready = Vec::new();
        for (block, hash) in read_hash_table(symbol).into_iter().flatten() {
            if self.is_done(block) || self.writing.contains_key(&block) {
                continue;
            }
            if self.hashes.insert(block, hash) {
                useful = true;
                if self
                    .in_flight
                    .get(&block)
                    .is_some_and(|f| f.asm.ready_to_decode())
                {
                    ready.push(block);
                }
            }
        }
        for block in ready {
            self.dispatch(block);
        }
        useful
    }

    fn data(&mut self, header: &Header, symbol: &[u8], report: &mut ReceiveReport) -> bool {
        let block = header.block;
        if u64::from(block) >= self.blocks {
            report.drop("block_out_of_range");
            return false;
        }
        if self.is_done(block) {
            report.drop("block_already_decoded");
            return false;
        }
        if let Some(late) = self.writing.get_mut(&block) {
            if late.len() >= LATE_SYMBOLS_KEPT || late.iter().any(|(esi, _)| *esi == header.symbol)
            {
                report.drop("block_being_decoded");
                return false;
            }
            late.push((header.symbol, symbol.to_vec()));
            return true;
        }
        self.tick += 1;
        if !self.in_flight.contains_key(&block) {
            let asm = BlockAssembly::with_buffer(
                self.geometry().source_symbols(block),
                usize::from(self.geometry().symbol_size),
                self.spare_buffers.pop().unwrap_or_default(),
            );
            self.in_flight_bytes += asm.footprint();
            self.in_flight.insert(
                block,
                InFlight {
                    asm,
                    last_fed: self.tick,
                    waiting: false,
                },
            );
            self.evict_over_budget(block, report);
        }
        let Some(entry) = self.in_flight.get_mut(&block) else {
            return false;
        };
        let before = entry.asm.footprint();
        if !entry.asm.add(header.symbol, symbol) {
            report.drop("duplicate");
            return false;
        }
        entry.last_fed = self.tick;
        self.in_flight_bytes += entry.asm.footprint() - before;
        if !entry.waiting && entry.asm.ready_to_decode() && self.hashes.contains(block) {
            self.dispatch(block);
        }
        true
    }

    /// Drops the least recently fed blocks until the budget holds (never `keep`).
    fn evict_over_budget(&mut self, keep: u32, report: &mut ReceiveReport) {
        while self.in_flight_bytes > self.budget && self.in_flight.len() > 1 {
            let Some(victim) = self
                .in_flight
                .iter()
                .filter(|(b, f)| **b != keep && !f.waiting)
                .min_by_key(|(_, f)| f.last_fed)
                .map(|(b, _)| *b)
            else {
                return;
            };
            if let Some(f) = self.in_flight.remove(&victim) {
                self.in_flight_bytes -= f.asm.footprint();
                report.drop("block_evicted");
            }
        }
    }

    /// Hands a complete block to the writer, or, while the writer's queue is full, puts it
    /// behind the blocks already waiting.
    fn dispatch(&mut self, block: u32) {
        if !self.waiting.is_empty() {
            self.wait_for_writer(block);
            self.send_waiting();
        } else if !self.send(block, false) {
            self.wait_for_writer(block);
        }
    }

    fn wait_for_writer(&mut self, block: u32) {
        if let Some(f) = self.in_flight.get_mut(&block)
            && !f.waiting
        {
            f.waiting = true;
            self.waiting.push_back(block);
        }
        // Waiting blocks are never evicted, so past the budget the reader waits for the
        // writer after all: memory stays bounded whatever arrives.
        while self.in_flight_bytes > self.budget {
            let Some(&block) = self.waiting.front() else {
                return;
            };
            self.send(block, true);
            self.waiting.pop_front();
        }
    }

    /// Sends the waiting blocks, in order, while the writer's queue has room.
    pub(super) fn send_waiting(&mut self) {
        while let Some(&block) = self.waiting.front() {
            if !self.send(block, false) {
                return;
            }
            self.waiting.pop_front();
        }
    }

    /// Sends `block` to the writer, waiting for room in its queue if `wait`; `false` if the
    /// queue is full (the block stays where it was).
    fn send(&mut self, block: u32, wait: bool) -> bool {
        use std::sync::mpsc::TrySendError;
        let Some(hash) = self.hashes.get(block).copied() else {
            // No check value: nothing to decode against; the block goes back to being fed.
            if let Some(f) = self.in_flight.get_mut(&block) {
                f.waiting = false;
            }
            return true;
        };
        let Some(f) = self.in_flight.remove(&block) else {
            // Gone meanwhile (a new session): nothing to send.
            return true;
        };
        let footprint = f.asm.footprint();
        let job = Job::Block {
            block,
            asm: f.asm,
            hash,
        };
        let sent = if wait {
            self.jobs
                .send(job)
                .map_err(|e| TrySendError::Disconnected(e.0))
        } else {
            self.jobs.try_send(job)
        };
        match sent {
            Ok(()) => {
                self.in_flight_bytes -= footprint;
                self.writing.insert(block, Vec::new());
                true
            }
            Err(TrySendError::Full(Job::Block { asm, .. })) => {
                self.in_flight.insert(
                    block,
                    InFlight {
                        asm,
                        last_fed: f.last_fed,
                        waiting: f.waiting,
                    },
                );
                false
            }
            // The writer stopped: `collect_results` reports why.
            Err(TrySendError::Disconnected(_)) => {
                self.in_flight_bytes -= footprint;
                true
            }
        }
    }

    /// Takes what the writer finished.
    pub(super) fn collect_results(
        &mut self,
        report: &mut ReceiveReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        while let Ok(outcome) = self.results.try_recv() {
            match outcome {
                Outcome::Written {
                    block,
                    repaired,
                    buffer,
                } => {
                    if self.spare_buffers.len() < SPARE_BUFFERS {
                        self.spare_buffers.push(buffer);
                    }
                    self.writing.remove(&block);
                    self.hashes.remove(block);
                    if !self.is_done(block) {
                        self.done[(block / 8) as usize] |= 1 << (block % 8);
                        self.done_count += 1;
                        self.decoded += 1;
                        self.repaired += u64::from(repaired);
                        progress.advance(self.geometry().block_len(block) as u64);
                    }
                }
                Outcome::Undecodable { block, mut asm } => {
                    for (esi, symbol) in self.writing.remove(&block).unwrap_or_default() {
                        asm.add(esi, &symbol);
                    }
                    report.drop("decode_retry");
                    self.in_flight_bytes += asm.footprint();
                    self.tick += 1;
                    let ready = asm.ready_to_decode();
                    self.in_flight.insert(
                        block,
                        InFlight {
                            asm,
                            last_fed: self.tick,
                            waiting: false,
                        },
                    );
                    self.evict_over_budget(block, report);
                    if ready {
                        self.dispatch(block);
                    }
                }
                Outcome::HashMismatch { block } => {
                    // Corrupted symbols got through; the block comes again next pass.
                    self.writing.remove(&block);
                    self.hashes.remove(block);
                    report.drop("block_hash_mismatch");
                }
            }
        }
        // The writer made room.
        self.send_waiting();
        if self.writer.as_ref().is_some_and(|w| w.is_finished()) {
            return self.stop_writer();
        }
        Ok(())
    }

    fn stop_writer(&mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let (tx, _) = sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, tx));
        writer
            .join()
            .map_err(|_| Error::Usage("the diode writer thread panicked".into()))?
    }

    /// Stops the writer after it has synced everything it wrote.
    pub(super) fn stop(mut self) -> Result<()> {
        self.stop_writer()
    }

    /// What the session holds in memory, for tests of its bounds.
    #[cfg(test)]
    pub(super) fn held(&self) -> Held {
        Held {
            check_values: self.hashes.len(),
            check_value_capacity: self.hashes.capacity(),
            in_flight: self.in_flight.len(),
            in_flight_bytes: self.in_flight_bytes,
            bitmap_bytes: self.done.len(),
        }
    }
}

/// A snapshot of what a session holds (tests only).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) check_values: usize,
    pub(super) check_value_capacity: usize,
    pub(super) in_flight: usize,
    pub(super) in_flight_bytes: usize,
    pub(super) bitmap_bytes: usize,
}

/// Blocks the writer may have queued: half the memory budget's worth of blocks with their
/// repair symbols (a block of K symbols may carry K + 16 repair symbols).
fn queue_len(g: &Geometry, budget: usize) -> usize {
    let block = usize::try_from(g.block_size).unwrap_or(usize::MAX);
    (budget / 2 / block.saturating_mul(2).max(1)).clamp(MIN_QUEUED, MAX_QUEUED)
}
