//! Copying one bundle file into staging while its hashes are checked, in a single read.
//!
//! The calling thread reads 1 MiB blocks and writes them to the staging file; two hashing
//! threads take alternate 64 MiB chunks, so hashing runs beside the copy and on both cores
//! instead of after it. Memory is bounded by the channel depth (a few MiB).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use airlock_bundle::digest::CHUNK_SIZE;
use airlock_bundle::manifest::ManifestFile;
use airlock_bundle::{Progress, Sha256Digest};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result, store};

const BLOCK: usize = 1 << 20;
const HASHERS: usize = 2;
/// Blocks in flight per hasher.
const DEPTH: usize = 8;

/// One hashing assignment: a byte range with the digest it must have.
struct Expected {
    digest: Sha256Digest,
    /// Chunk number, or `None` for a whole-file digest.
    index: Option<u64>,
    offset: u64,
}

enum Msg {
    Data(Arc<Vec<u8>>),
    End(Expected),
}

/// Copies `size` bytes from `reader` to a new file at `dest`, checking them against the
/// signed digests in `expected`: per chunk where the manifest has chunk digests, whole-file
/// otherwise. The file is synced before returning. On a mismatch the error names the file
/// and chunk, and `dest` is left for the caller's staging cleanup.
pub(crate) fn copy_verified(
    mut reader: impl Read,
    size: u64,
    name: &str,
    expected: &ManifestFile,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let ranges: Vec<(u64, u64, Expected)> = match &expected.chunked {
        Some((chunked_size, chunks)) => {
            if *chunked_size != size {
                return Err(Error::refused(
                    "size_mismatch",
                    format!("{name}: size is {size} bytes, the manifest says {chunked_size}"),
                ));
            }
            // With one chunk (or none) the whole-file digest must equal it: a free check
            // that the signed manifest is self-consistent.
            let whole_matches = match chunks.as_slice() {
                [] => expected.sha256 == Sha256Digest::of(&[]),
                [only] => *only == expected.sha256,
                _ => true,
            };
            if !whole_matches {
                return Err(Error::refused(
                    "invalid_statement",
                    format!("{name}: the manifest's file digest disagrees with its chunk digest"),
                ));
            }
            chunks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let start = i as u64 * CHUNK_SIZE;
                    let len = CHUNK_SIZE.min(size - start);
                    (
                        start,
                        len,
                        Expected {
                            digest: *d,
                            index: Some(i as u64),
                            offset: start,
                        },
                    )
                })
                .collect()
        }
        None => vec![(
            0,
            size,
            Expected {
                digest: expected.sha256,
                index: None,
                offset: 0,
            },
        )],
    };
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| Error::io(dest, e))?;
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(HASHERS);
        let mut handles = Vec::with_capacity(HASHERS);
        for _ in 0..HASHERS {
            let (tx, rx) = sync_channel::<Msg>(DEPTH);
            senders.push(tx);
            handles.push(scope.spawn(move || hash_worker(rx, name)));
        }
        let copied = feed(&mut reader, &mut out, dest, ranges, &senders, progress);
        drop(senders);
        // A hasher's mismatch explains a failed send better than the send error does.
        let mut hashed = Ok(());
        for handle in handles {
            let r = handle
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("hashing thread failed".into())));
            if hashed.is_ok() {
                hashed = r;
            }
        }
        hashed.and(copied)
    })?;
    out.sync_data().map_err(|e| Error::io(dest, e))?;
    Ok(())
}

fn feed(
    reader: &mut impl Read,
    out: &mut File,
    dest: &Path,
    ranges: Vec<(u64, u64, Expected)>,
    senders: &[SyncSender<Msg>],
    progress: &dyn Progress,
) -> Result<()> {
    let hasher_gone = || Error::Usage("hashing stopped".into());
    let mut first_block = true;
    for (n, (_, len, expected)) in ranges.into_iter().enumerate() {
        let tx = &senders[n % senders.len()];
        let mut left = len;
        while left > 0 {
            let want = left.min(BLOCK as u64) as usize;
            let mut block = vec![0u8; want];
            reader.read_exact(&mut block).map_err(|e| {
                Error::Bundle(airlock_bundle::Error::Io {
                    path: dest.to_owned(),
                    source: e,
                })
            })?;
            out.write_all(&block).map_err(|e| Error::io(dest, e))?;
            if first_block {
                store::fault_point("import.file_copy_started");
                first_block = false;
            }
            progress.advance(want as u64);
            left -= want as u64;
            tx.send(Msg::Data(Arc::new(block)))
                .map_err(|_| hasher_gone())?;
        }
        tx.send(Msg::End(expected)).map_err(|_| hasher_gone())?;
    }
    Ok(())
}

fn hash_worker(rx: Receiver<Msg>, name: &str) -> Result<()> {
    let mut hasher = Sha256::new();
    for msg in rx {
        match msg {
            Msg::Data(block) => hasher.update(&block[..]),
            Msg::End(expected) => {
                let actual = Sha256Digest(hasher.finalize_reset().into());
                if actual != expected.digest {
                    let err = match expected.index {
                        Some(index) => airlock_bundle::Error::ChunkMismatch {
                            path: name.to_owned(),
                            index,
                            offset: expected.offset,
                            expected: expected.digest.to_hex(),
                            actual: actual.to_hex(),
                        },
                        None => airlock_bundle::Error::HashMismatch {
                            path: name.to_owned(),
                            expected: expected.digest.to_hex(),
                            actual: actual.to_hex(),
                        },
                    };
                    return Err(err.into());
                }
            }
        }
    }
    Ok(())
}
