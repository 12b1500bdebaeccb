//! Copying one bundle file into staging while its signed hashes are checked.
//!
//! The source is read once. Two threads take alternate 64 MiB chunks; each reads a block,
//! hashes it while it is hot in cache, and writes that same block to the staging file, so
//! the bytes verified are exactly the bytes kept (a source that changes between reads, such
//! as a hostile USB device, cannot slip in anything unhashed). A third thread syncs the
//! staging file as the copy goes on, so the final sync has little left to do. Memory is one
//! 1 MiB buffer per copying thread.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

use airlock_bundle::digest::CHUNK_SIZE;
use airlock_bundle::manifest::ManifestFile;
use airlock_bundle::{Progress, Sha256Digest, Source};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result, store};

const WORKERS: usize = 2;
const BLOCK: usize = 1 << 20;
/// Sync the staging file after about this many bytes have been written.
const SYNC_EVERY: u64 = 128 << 20;

/// Turns a content mismatch into the clearest error the source can give (for volumes: which
/// volume holds the bad bytes).
pub(crate) type Explain<'a> = dyn Fn(airlock_bundle::Error) -> airlock_bundle::Error + Sync + 'a;

/// One hashing assignment: a byte range of the file and the digest it must have.
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
#[expect(
    clippy::too_many_arguments,
    reason = "one caller; the source range, its signed digests and the destination belong together"
)]
pub(crate) fn copy_verified(
    source: &Source,
    offset: u64,
    size: u64,
    name: &str,
    expected: &ManifestFile,
    dest: &Path,
    explain: &Explain<'_>,
    progress: &dyn Progress,
) -> Result<()> {
    let jobs = plan(size, name, expected)?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| Error::io(dest, e))?;
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (out, failed, jobs) = (&out, &failed, &jobs);
        let (sync_tx, sync_rx) = sync_channel::<()>(1);
        let syncer = scope.spawn(move || -> Result<()> {
            for () in sync_rx {
                out.sync_data().map_err(|e| Error::io(dest, e))?;
            }
            Ok(())
        });
        let workers: Vec<_> = (0..WORKERS.min(jobs.len()).max(1))
            .map(|w| {
                let sync_tx = sync_tx.clone();
                scope.spawn(move || {
                    let mut buf = vec![0u8; BLOCK];
                    let mut since_sync = 0;
                    for job in jobs.iter().skip(w).step_by(WORKERS) {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let r = copy_job(source, offset, out, dest, name, job, &mut buf, progress)
                            .map_err(|e| match e {
                                CopyFault::Mismatch(m) => Error::from(explain(m)),
                                CopyFault::Other(e) => e,
                            });
                        if let Err(e) = r {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        if job.start == 0 {
                            store::fault_point("import.file_copy_started");
                        }
                        since_sync += job.len;
                        if since_sync >= SYNC_EVERY / WORKERS as u64 {
                            // A full queue means a sync is already under way; skip this one.
                            let _ = sync_tx.try_send(());
                            since_sync = 0;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        drop(sync_tx);
        // A content mismatch (a refusal) explains a failure better than the error the
        // other thread met when it was told to stop, so it is reported first.
        let mut errors: Vec<Error> = Vec::new();
        for handle in workers {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(Error::Usage("copy thread failed".into())),
            }
        }
        let synced = syncer
            .join()
            .unwrap_or_else(|_| Err(Error::Usage("sync thread failed".into())));
        errors.sort_by_key(|e| !e.is_refusal());
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => synced,
        }
    })?;
    out.sync_data().map_err(|e| Error::io(dest, e))?;
    Ok(())
}

/// Copies one range block by block, hashing each block before writing it.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn copy_job(
    source: &Source,
    offset: u64,
    out: &File,
    dest: &Path,
    name: &str,
    job: &Job,
    buf: &mut [u8],
    progress: &dyn Progress,
) -> std::result::Result<(), CopyFault> {
    let mut hasher = Sha256::new();
    let mut done = 0;
    while done < job.len {
        let want = (job.len - done).min(buf.len() as u64) as usize;
        let block = &mut buf[..want];
        source
            .read_exact_at(block, offset + job.start + done)
            .map_err(|e| {
                Error::Bundle(airlock_bundle::Error::Truncated {
                    detail: format!("{name}: cannot read byte {}: {e}", job.start + done),
                })
            })?;
        hasher.update(&*block);
        out.write_all_at(block, job.start + done)
            .map_err(|e| Error::io(dest, e))?;
        done += want as u64;
        progress.advance(want as u64);
    }
    let actual = Sha256Digest(hasher.finalize().into());
    if actual == job.digest {
        return Ok(());
    }
    Err(CopyFault::Mismatch(match job.index {
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
    }))
}

/// Why copying one range failed: its bytes do not match, or something else went wrong.
enum CopyFault {
    Mismatch(airlock_bundle::Error),
    Other(Error),
}

impl From<Error> for CopyFault {
    fn from(e: Error) -> Self {
        Self::Other(e)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_bundle::NoProgress;
    use std::io::Write as _;

    fn manifest_entry(data: &[u8]) -> ManifestFile {
        let chunks = data
            .chunks(CHUNK_SIZE as usize)
            .map(Sha256Digest::of)
            .collect();
        ManifestFile {
            sha256: Sha256Digest::of(data),
            chunked: Some((data.len() as u64, chunks)),
        }
    }

    fn source(dir: &Path, prefix: &[u8], data: &[u8]) -> Source {
        let path = dir.join("source");
        let mut f = File::create(&path).unwrap();
        f.write_all(prefix).unwrap();
        f.write_all(data).unwrap();
        Source::File(File::open(path).unwrap())
    }

    #[test]
    fn a_file_spanning_three_chunks_is_copied_exactly_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * CHUNK_SIZE + 7)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let src = source(dir.path(), b"tar header", &data);
        let dest = dir.path().join("staged");
        copy_verified(
            &src,
            10,
            data.len() as u64,
            "w",
            &manifest_entry(&data),
            &dest,
            &|e| e,
            &NoProgress,
        )
        .unwrap();
        assert!(std::fs::read(&dest).unwrap() == data);
    }

    #[test]
    fn a_changed_byte_is_reported_with_its_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..CHUNK_SIZE + 100).map(|i| (i % 7) as u8).collect();
        let expected = manifest_entry(&data);
        let mut tampered = data.clone();
        tampered[CHUNK_SIZE as usize + 5] ^= 1;
        let src = source(dir.path(), b"", &tampered);
        let dest = dir.path().join("staged");
        let err = copy_verified(
            &src,
            0,
            data.len() as u64,
            "w",
            &expected,
            &dest,
            &|e| e,
            &NoProgress,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Refused { kind: "chunk_mismatch", ref reason } if reason.contains("chunk 1")),
            "{err}"
        );
    }

    #[test]
    fn a_whole_file_digest_is_checked_when_there_are_no_chunk_digests() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), b"", b"hello");
        let whole = ManifestFile {
            sha256: Sha256Digest::of(b"hellO"),
            chunked: None,
        };
        let err = copy_verified(
            &src,
            0,
            5,
            "w",
            &whole,
            &dir.path().join("a"),
            &|e| e,
            &NoProgress,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Refused {
                kind: "hash_mismatch",
                ..
            }
        ));
    }

    #[test]
    fn a_manifest_whose_file_digest_disagrees_with_its_only_chunk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), b"", b"hello");
        let mut entry = manifest_entry(b"hello");
        entry.sha256 = Sha256Digest::of(b"other");
        let err = copy_verified(
            &src,
            0,
            5,
            "w",
            &entry,
            &dir.path().join("a"),
            &|e| e,
            &NoProgress,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Refused {
                kind: "invalid_statement",
                ..
            }
        ));
    }
}
