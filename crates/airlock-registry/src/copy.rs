//! Copying one bundle file into staging while its signed hashes are checked.
//!
//! The source is read once, by the kernel: `copy_file_range` moves each 64 MiB chunk
//! into the staging file without passing through user space. Two hashing threads then
//! hash alternate chunks *from the staging file*, while it is still in the page cache, so
//! what is verified is exactly what will be installed (a source that changes between reads,
//! such as a hostile USB device, cannot slip in bytes that were not hashed). A third
//! thread syncs finished chunks to disk as the copy goes on, so the final sync has little
//! left to do. Memory is one 1 MiB buffer per hasher.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::mpsc::{Receiver, sync_channel};

use airlock_bundle::digest::CHUNK_SIZE;
use airlock_bundle::manifest::ManifestFile;
use airlock_bundle::{Progress, Sha256Digest};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result, store};

const HASHERS: usize = 2;
/// Sync the staging file after this many bytes have been copied.
const SYNC_EVERY: u64 = 128 << 20;

/// One hashing assignment: a byte range of the staging file and the digest it must have.
struct Job {
    start: u64,
    len: u64,
    digest: Sha256Digest,
    /// Chunk number, or `None` for a whole-file digest.
    index: Option<u64>,
}

/// Copies `size` bytes at `offset` of `source` to a new file `dest`, checking them against
/// the signed digests in `expected`: per chunk where the manifest has chunk digests,
/// whole-file otherwise. `dest` is synced before this returns. On a mismatch the error
/// names the file and chunk, and `dest` is left for the caller's staging cleanup.
pub(crate) fn copy_verified(
    source: &File,
    offset: u64,
    size: u64,
    name: &str,
    expected: &ManifestFile,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let jobs = plan(size, name, expected)?;
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| Error::io(dest, e))?;
    std::thread::scope(|scope| {
        let (out, dest) = (&out, dest);
        let mut senders = Vec::with_capacity(HASHERS);
        let mut hashers = Vec::with_capacity(HASHERS);
        for _ in 0..HASHERS {
            let (tx, rx) = sync_channel::<Job>(2);
            senders.push(tx);
            hashers.push(scope.spawn(move || hash_worker(rx, out, dest, name, progress)));
        }
        let (sync_tx, sync_rx) = sync_channel::<()>(1);
        let syncer = scope.spawn(move || -> Result<()> {
            for () in sync_rx {
                out.sync_data().map_err(|e| Error::io(dest, e))?;
            }
            Ok(())
        });
        let copied = (|| -> Result<()> {
            let mut src = source;
            src.seek(SeekFrom::Start(offset))
                .map_err(|e| Error::io(dest, e))?;
            let mut dst = out;
            let mut since_sync = 0;
            for (n, job) in jobs.into_iter().enumerate() {
                let copied = std::io::copy(&mut (&mut src).take(job.len), &mut dst)
                    .map_err(|e| Error::io(dest, e))?;
                if copied != job.len {
                    return Err(Error::Bundle(airlock_bundle::Error::Truncated {
                        detail: format!("{name} ended after {} bytes", job.start + copied),
                    }));
                }
                if n == 0 {
                    store::fault_point("import.file_copy_started");
                }
                since_sync += job.len;
                if since_sync >= SYNC_EVERY {
                    // A full queue means a sync is already under way; skip this one.
                    let _ = sync_tx.try_send(());
                    since_sync = 0;
                }
                if senders[n % HASHERS].send(job).is_err() {
                    break; // that hasher found a mismatch; its error is reported below
                }
            }
            Ok(())
        })();
        drop(senders);
        drop(sync_tx);
        // A hasher's mismatch explains a stopped copy better than the copy's own error.
        let mut result = Ok(());
        for handle in hashers {
            let r = handle
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("hashing thread failed".into())));
            if result.is_ok() {
                result = r;
            }
        }
        let synced = syncer
            .join()
            .unwrap_or_else(|_| Err(Error::Usage("sync thread failed".into())));
        result.and(copied).and(synced)
    })?;
    out.sync_data().map_err(|e| Error::io(dest, e))?;
    Ok(())
}

/// The hashing jobs for one file, after checking the manifest entry is self-consistent.
fn plan(size: u64, name: &str, expected: &ManifestFile) -> Result<Vec<Job>> {
    let Some((chunked_size, chunks)) = &expected.chunked else {
        return Ok(vec![Job {
            start: 0,
            len: size,
            digest: expected.sha256,
            index: None,
        }]);
    };
    if *chunked_size != size {
        return Err(airlock_bundle::Error::SizeMismatch {
            path: name.to_owned(),
            expected: *chunked_size,
            actual: size,
        }
        .into());
    }
    // With one chunk (or none) the whole-file digest must equal it: a free check that the
    // signed manifest is self-consistent, so the blob's name is its true hash.
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
    Ok(chunks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let start = i as u64 * CHUNK_SIZE;
            Job {
                start,
                len: CHUNK_SIZE.min(size - start),
                digest: *d,
                index: Some(i as u64),
            }
        })
        .collect())
}

fn hash_worker(
    rx: Receiver<Job>,
    file: &File,
    path: &Path,
    name: &str,
    progress: &dyn Progress,
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for job in rx {
        let mut hasher = Sha256::new();
        let mut done = 0;
        while done < job.len {
            let want = (job.len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..want], job.start + done)
                .map_err(|e| Error::io(path, e))?;
            hasher.update(&buf[..want]);
            done += want as u64;
            progress.advance(want as u64);
        }
        let actual = Sha256Digest(hasher.finalize().into());
        if actual != job.digest {
            let err = match job.index {
                Some(index) => airlock_bundle::Error::ChunkMismatch {
                    path: name.to_owned(),
                    index,
                    offset: job.start,
                    expected: job.digest.to_hex(),
                    actual: actual.to_hex(),
                },
                None => airlock_bundle::Error::HashMismatch {
                    path: name.to_owned(),
                    expected: job.digest.to_hex(),
                    actual: actual.to_hex(),
                },
            };
            return Err(err.into());
        }
    }
    Ok(())
}
