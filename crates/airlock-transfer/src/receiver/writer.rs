//! The writer thread: decodes each gathered block, checks it against its check value, writes
//! it in place, and keeps the bitmap of written blocks durable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use crate::announce::Geometry;
use crate::fec::BlockAssembly;
use crate::packet::{BlockHash, block_hash};
use crate::{Error, Result};

/// Blocks written but not yet synced before the bitmap is brought up to date.
const SYNC_EVERY_BLOCKS: usize = 64;
/// Longest a written block waits for its sync.
const SYNC_EVERY: Duration = Duration::from_millis(500);

/// A block for the writer.
pub(super) enum Job {
    Block {
        block: u32,
        asm: BlockAssembly,
        hash: BlockHash,
    },
}

/// What became of a [`Job`].
pub(super) enum Outcome {
    Written {
        block: u32,
        repaired: bool,
        buffer: Vec<u8>,
    },
    Undecodable {
        block: u32,
        asm: BlockAssembly,
    },
    HashMismatch {
        block: u32,
    },
}

/// The writer thread's state: decodes, checks, writes, and keeps the bitmap durable.
pub(super) struct Writer {
    pub(super) part: File,
    pub(super) part_path: PathBuf,
    pub(super) bitmap_path: PathBuf,
    pub(super) done: Vec<u8>,
    pub(super) geometry: Geometry,
    pub(super) unsynced: Vec<u32>,
    pub(super) last_sync: Instant,
}

impl Writer {
    pub(super) fn run(mut self, jobs: &Receiver<Job>, results: &Sender<Outcome>) -> Result<()> {
        loop {
            match jobs.recv_timeout(SYNC_EVERY) {
                Ok(Job::Block { block, asm, hash }) => {
                    let repaired = !asm.is_complete();
                    let outcome = match asm.finish() {
                        Err(asm) => Outcome::Undecodable { block, asm },
                        Ok(bytes) => {
                            let len = self.geometry.block_len(block);
                            if block_hash(&bytes[..len]) != hash {
                                Outcome::HashMismatch { block }
                            } else {
                                let at = self.geometry.block_offset(block);
                                self.part
                                    .write_all_at(&bytes[..len], at)
                                    .map_err(Error::io(&self.part_path))?;
                                self.unsynced.push(block);
                                Outcome::Written {
                                    block,
                                    repaired,
                                    buffer: bytes,
                                }
                            }
                        }
                    };
                    // Results are reported before the sync: the reader only uses them to stop
                    // gathering symbols; the bitmap on disk is what survives a crash.
                    let _ = results.send(outcome);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return self.sync();
                }
            }
            if self.unsynced.len() >= SYNC_EVERY_BLOCKS
                || (!self.unsynced.is_empty() && self.last_sync.elapsed() >= SYNC_EVERY)
            {
                self.sync()?;
            }
        }
    }

    /// Data first, then the bitmap that vouches for it.
    fn sync(&mut self) -> Result<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        self.part.sync_data().map_err(Error::io(&self.part_path))?;
        for block in self.unsynced.drain(..) {
            self.done[(block / 8) as usize] |= 1 << (block % 8);
        }
        let bitmap = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.bitmap_path)
            .map_err(Error::io(&self.bitmap_path))?;
        // Bits only ever go from 0 to 1, so a torn write still vouches only for synced data.
        bitmap
            .write_all_at(&self.done, 0)
            .and_then(|()| bitmap.sync_data())
            .map_err(Error::io(&self.bitmap_path))?;
        self.last_sync = Instant::now();
        Ok(())
    }
}
