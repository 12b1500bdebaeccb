//! The log on disk: appends with group commit, and a verifying reader.
//!
//! Layout of the log directory:
//!
//! - `log`: one line per entry (canonical JSON [`Record`]) and, after every commit, one
//!   `{"checkpoint":"<signed note>"}` line sealing everything before it. Entries and their
//!   seal go out in one `write` and one `fdatasync`.
//! - `head`: the latest checkpoint, the byte length of the log it seals and the tree's
//!   right edge, replaced atomically after each commit. It lets a writer start without
//!   rereading the log, and it is a second copy of the latest checkpoint, so cutting entries
//!   off the end of `log` is caught.
//!
//! Concurrent appends inside a process share one sync (a leader writes everyone's pending
//! entries); appends from several processes are serialised by an exclusive `flock` on the
//! log, and each writer first reads what others appended.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::entry::{CHECKPOINT_PREFIX, CheckpointLine, Entry, MAX_ENTRY_BYTES, Prepared, Record};
use crate::merkle::{self, Frontier, Hash};
use crate::note::{Checkpoint, MAX_NOTE_BYTES, NoteSigner, NoteVerifier};
use crate::{Error, Result};

pub(crate) const LOG_FILE: &str = "log";
pub(crate) const HEAD_FILE: &str = "head";
/// Longest a leader waits for more appends to join its batch: about one sync on a fast disk.
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_micros(200);
/// How far ahead of the end disk blocks are reserved.
const RESERVE_AHEAD: u64 = 16 << 20;
/// Fixed size of `head`: a checkpoint note and at most 64 subtree roots fit.
const HEAD_BYTES: usize = 8192;
/// Longest line of either kind; anything longer is damage, not data.
const MAX_LINE: usize = if MAX_ENTRY_BYTES > 2 * MAX_NOTE_BYTES {
    MAX_ENTRY_BYTES
} else {
    2 * MAX_NOTE_BYTES
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; the writer rescans the
    // file when in doubt, so continuing is sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An audit log open for appending.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    origin: String,
    signer: NoteSigner,
    queue: Mutex<Queue>,
    committed: Condvar,
    enqueued: Condvar,
    writer: Mutex<Writer>,
    head: Mutex<Option<File>>,
    syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    next_ticket: u64,
    pending: Vec<(u64, Vec<Prepared>)>,
    leader: bool,
    /// Callers in the previous batch: how many the leader waits for.
    last_batch: usize,
    /// Callers inside `append_all`, queued or waiting for their result.
    inside: usize,
    done: HashMap<u64, std::result::Result<Vec<u64>, String>>,
}

#[derive(Debug)]
struct Writer {
    file: File,
    /// The file has disk blocks reserved up to here (beyond its length, invisible to
    /// readers), so a commit's sync need not allocate.
    reserved: u64,
    /// Bytes of `log` this writer has accounted for; `None` until (re)loaded.
    state: Option<(u64, Frontier)>,
}

/// What `head` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Head {
    pub(crate) checkpoint: String,
    offset: u64,
    subtrees: Vec<String>,
}

impl AuditLog {
    /// Creates a new, empty log in `dir` (created if missing), sealed by a checkpoint of
    /// size 0. Fails if a log is already there.
    pub fn create(dir: &Path, origin: &str, signer: NoteSigner) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::AlreadyExists(dir.to_owned()),
                _ => Error::io(&path, e),
            })?;
        let log = Self::with_file(dir, origin, signer, file);
        log.write_batch(&[])?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
        Ok(log)
    }

    /// Opens an existing log for appending, signing checkpoints with `signer` under
    /// `origin`. A torn or unsealed end is reported here, and appends are refused until it
    /// is [repaired](Self::repair).
    pub fn open(dir: &Path, origin: &str, signer: NoteSigner) -> Result<Self> {
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let log = Self::with_file(dir, origin, signer, file);
        {
            let mut w = lock(&log.writer);
            log.catch_up(&mut w)?;
        }
        Ok(log)
    }

    /// Opens a log whose end may be torn or unsealed, only to [repair](Self::repair) it.
    pub fn open_for_repair(dir: &Path, origin: &str, signer: NoteSigner) -> Result<Self> {
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self::with_file(dir, origin, signer, file))
    }

    fn with_file(dir: &Path, origin: &str, signer: NoteSigner, file: File) -> Self {
        Self {
            dir: dir.to_owned(),
            origin: origin.to_owned(),
            signer,
            queue: Mutex::new(Queue::default()),
            committed: Condvar::new(),
            enqueued: Condvar::new(),
            writer: Mutex::new(Writer {
                file,
                state: None,
                reserved: 0,
            }),
            head: Mutex::new(None),
            syncs: AtomicU64::new(0),
        }
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times this handle has synced the log to disk.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Appends one entry and returns once it is durable, with its index.
    pub fn append(&self, entry: Entry) -> Result<u64> {
        let indices = self.append_all(vec![entry])?;
        indices
            .first()
            .copied()
            .ok_or_else(|| Error::AppendFailed("no index assigned".into()))
    }

    /// Appends entries as one contiguous run and returns once they are durable.
    ///
    /// Callers on other threads that append at the same time share the same write and sync
    /// (group commit): the first becomes leader and commits everything pending.
    pub fn append_all(&self, entries: Vec<Entry>) -> Result<Vec<u64>> {
        // Encode here, on the caller's thread: the shared commit only glues in index and
        // time, and an unencodable entry is refused before it can fail anyone else's batch.
        let entries = entries
            .iter()
            .map(Prepared::new)
            .collect::<Result<Vec<_>>>()?;
        let mut queue = lock(&self.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push((ticket, entries));
        queue.inside += 1;
        if queue.leader {
            self.enqueued.notify_one();
        }
        loop {
            if let Some(result) = queue.done.remove(&ticket) {
                queue.inside -= 1;
                return result.map_err(Error::AppendFailed);
            }
            if queue.leader {
                queue = self
                    .committed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            queue.leader = true;
            // Lead until this caller's own entry is committed, then hand over so that its
            // thread can queue its next entry while another leads: every writer then fits
            // in each batch.
            while !queue.pending.is_empty() && !queue.done.contains_key(&ticket) {
                queue = self.gather(queue);
                let batch = std::mem::take(&mut queue.pending);
                queue.last_batch = batch.len();
                drop(queue);
                let outcome = self.write_batch(&batch);
                queue = lock(&self.queue);
                Self::record_outcome(&mut queue, &batch, outcome);
                self.committed.notify_all();
            }
            queue.leader = false;
            self.committed.notify_all();
        }
    }

    /// Gives writers released by the last commit a moment to queue their next entries, so
    /// one sync covers them all: waits until as many callers are pending as made up the last
    /// batch (never more than are inside `append_all`), or [`GATHER_WINDOW`] has passed.
    /// Costs nothing when appends are rare.
    fn gather<'q>(&self, mut queue: MutexGuard<'q, Queue>) -> MutexGuard<'q, Queue> {
        let deadline = std::time::Instant::now() + GATHER_WINDOW;
        let target = queue.last_batch.min(queue.inside);
        while queue.pending.len() < target {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            queue = self
                .enqueued
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        queue
    }

    fn record_outcome(
        queue: &mut Queue,
        batch: &[(u64, Vec<Prepared>)],
        outcome: Result<Vec<Vec<u64>>>,
    ) {
        match outcome {
            Ok(indices) => {
                for ((t, _), idx) in batch.iter().zip(indices) {
                    queue.done.insert(*t, Ok(idx));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (t, _) in batch {
                    queue.done.insert(*t, Err(message.clone()));
                }
            }
        }
    }

    /// Writes one batch under the cross-process lock: catch up, append entries and a signed
    /// checkpoint in one write, sync, then replace `head`.
    fn write_batch(&self, batch: &[(u64, Vec<Prepared>)]) -> Result<Vec<Vec<u64>>> {
        let mut w = lock(&self.writer);
        w.file.lock().map_err(|e| Error::io(self.log_path(), e))?;
        let result = self.write_locked(&mut w, batch);
        if result.is_err() {
            // The file may hold part of the batch; reread it before the next commit.
            w.state = None;
        }
        let unlocked = w.file.unlock().map_err(|e| Error::io(self.log_path(), e));
        let indices = result?;
        unlocked?;
        Ok(indices)
    }

    fn write_locked(
        &self,
        w: &mut Writer,
        batch: &[(u64, Vec<Prepared>)],
    ) -> Result<Vec<Vec<u64>>> {
        self.catch_up(w)?;
        let Some((_, frontier)) = w.state.as_mut() else {
            return Err(Error::AppendFailed("log state not loaded".into()));
        };
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut buf = Vec::with_capacity(512 * (batch.len() + 1));
        let mut indices = Vec::with_capacity(batch.len());
        for (_, entries) in batch {
            let mut mine = Vec::with_capacity(entries.len());
            for entry in entries {
                let index = frontier.size();
                let line = entry.line(index, &time)?;
                frontier.push(merkle::leaf_hash(&line));
                buf.extend_from_slice(&line);
                buf.push(b'\n');
                mine.push(index);
            }
            indices.push(mine);
        }
        let note = self.signer.sign(&Checkpoint {
            origin: self.origin.clone(),
            size: frontier.size(),
            root: frontier.root(),
        });
        let seal = serde_json_canonicalizer::to_vec(&CheckpointLine {
            checkpoint: note.clone(),
        })
        .map_err(|e| Error::BadEntry(e.to_string()))?;
        buf.extend_from_slice(&seal);
        buf.push(b'\n');
        let path = self.log_path();
        let start = w.state.as_ref().map_or(0, |(end, _)| *end);
        if start + buf.len() as u64 > w.reserved {
            // Reserve blocks ahead of the end without changing the length (KEEP_SIZE): an
            // append then only extends the length at sync time, which makes each commit's
            // sync about a third cheaper on ext4. Best effort: a file system without
            // fallocate just allocates as it goes.
            let reserve = start + buf.len() as u64 + RESERVE_AHEAD;
            let ok = rustix::fs::fallocate(
                &w.file,
                rustix::fs::FallocateFlags::KEEP_SIZE,
                start,
                reserve - start,
            )
            .is_ok();
            w.reserved = if ok { reserve } else { u64::MAX };
        }
        w.file.write_all(&buf).map_err(|e| Error::io(&path, e))?;
        w.file.sync_data().map_err(|e| Error::io(&path, e))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let Some((end, frontier)) = w.state.as_mut() else {
            return Err(Error::AppendFailed("log state not loaded".into()));
        };
        *end += buf.len() as u64;
        let head = Head {
            checkpoint: note,
            offset: *end,
            subtrees: frontier.subtrees().iter().map(hex::encode).collect(),
        };
        self.write_head(&head)?;
        Ok(indices)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Overwrites `head` in place: one positional write of a fixed-size, space-padded
    /// record, not synced. Replacing the file by rename would cost an implicit flush on
    /// ext4 at every commit. After a crash `head` may be stale or torn; it is checked
    /// against the log before use and ignored (the log is rescanned) when it does not match.
    fn write_head(&self, head: &Head) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        let path = self.dir.join(HEAD_FILE);
        let mut bytes = serde_json::to_vec(head).map_err(|e| Error::BadEntry(e.to_string()))?;
        if bytes.len() > HEAD_BYTES {
            return Err(Error::BadEntry("head record too large".into()));
        }
        bytes.resize(HEAD_BYTES, b' ');
        let mut w = lock(&self.head);
        if w.is_none() {
            *w = Some(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?,
            );
        }
        if let Some(file) = w.as_ref() {
            file.write_all_at(&bytes, 0)
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Brings the writer's view up to the end of the file: from `head` when the writer has
    /// none, then line by line over whatever other processes appended.
    fn catch_up(&self, w: &mut Writer) -> Result<()> {
        let path = self.log_path();
        let len = w.file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if w.state.is_none() {
            w.state = Some(self.start_from_head(&w.file, len)?.unwrap_or_default());
        }
        let Some((end, frontier)) = w.state.as_mut() else {
            return Ok(());
        };
        if len < *end {
            return Err(Error::Shrank {
                expected: *end,
                actual: len,
            });
        }
        if len == *end {
            return Ok(());
        }
        let mut scan = Scanner::new(&w.file, *end, &path)?;
        let mut sealed = (*end, frontier.clone());
        let mut unsealed_from: Option<(u64, u64)> = None;
        while let Some(line) = scan.next_line()? {
            if line.bytes.starts_with(CHECKPOINT_PREFIX) {
                sealed = (line.end, frontier.clone());
                unsealed_from = None;
            } else {
                unsealed_from.get_or_insert((frontier.size(), line.start));
                frontier.push(merkle::leaf_hash(line.bytes));
            }
        }
        if let Some(offset) = scan.torn {
            return Err(Error::TornEntry {
                offset,
                bytes: len - offset,
            });
        }
        if let Some((first, offset)) = unsealed_from {
            return Err(Error::UnsealedTail { first, offset });
        }
        w.state = Some(sealed);
        Ok(())
    }

    /// The state `head` describes, if it is consistent with the log; `None` to rescan.
    fn start_from_head(&self, file: &File, len: u64) -> Result<Option<(u64, Frontier)>> {
        let Ok(bytes) = std::fs::read(self.dir.join(HEAD_FILE)) else {
            return Ok(None);
        };
        let Ok(head) = serde_json::from_slice::<Head>(bytes.trim_ascii_end()) else {
            return Ok(None);
        };
        let verifier = self.signer.verifier();
        let Ok(checkpoint) = verifier.open(&head.checkpoint) else {
            return Ok(None);
        };
        if head.offset > len {
            return Err(Error::Shrank {
                expected: head.offset,
                actual: len,
            });
        }
        let subtrees: Option<Vec<Hash>> = head
            .subtrees
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out).ok().map(|()| out)
            })
            .collect();
        let Some(frontier) = subtrees.and_then(|s| Frontier::from_parts(checkpoint.size, s)) else {
            return Ok(None);
        };
        // The line ending at `offset` must be this very checkpoint, or head is stale or lies.
        let want = serde_json_canonicalizer::to_vec(&CheckpointLine {
            checkpoint: head.checkpoint.clone(),
        })
        .map_err(|e| Error::BadEntry(e.to_string()))?;
        let Some(start) = head.offset.checked_sub(want.len() as u64 + 1) else {
            return Ok(None);
        };
        let mut found = vec![0u8; want.len() + 1];
        use std::os::unix::fs::FileExt as _;
        if file.read_exact_at(&mut found, start).is_err()
            || found[..want.len()] != want[..]
            || found[want.len()] != b'\n'
            || frontier.root() != checkpoint.root
            || (start > 0 && !self.byte_before_is_newline(file, start))
        {
            return Ok(None);
        }
        Ok(Some((head.offset, frontier)))
    }

    fn byte_before_is_newline(&self, file: &File, offset: u64) -> bool {
        use std::os::unix::fs::FileExt as _;
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, offset - 1).is_ok() && b[0] == b'\n'
    }

    /// Sets aside a torn or unsealed end of the log: its bytes are copied to
    /// `log.set-aside-<offset>`, the log is cut back to its last checkpoint, and an
    /// `audit.repair` entry records what was removed (offset, length, SHA-256). Returns
    /// `None` when the log needs no repair.
    pub fn repair(&self, actor: &str) -> Result<Option<RepairReport>> {
        let path = self.log_path();
        let mut w = lock(&self.writer);
        w.file.lock().map_err(|e| Error::io(&path, e))?;
        let result = self.repair_locked(&mut w);
        let unlocked = w.file.unlock().map_err(|e| Error::io(&path, e));
        let report = result?;
        unlocked?;
        drop(w);
        if let Some(r) = &report {
            self.append(
                Entry::new(actor, "audit.repair", crate::Outcome::Ok)
                    .reason(r.reason.clone())
                    .detail("offset", r.offset)
                    .detail("bytes", r.bytes)
                    .detail("sha256", r.sha256.clone())
                    .detail("saved_to", r.saved_to.display().to_string()),
            )?;
        }
        Ok(report)
    }

    fn repair_locked(&self, w: &mut Writer) -> Result<Option<RepairReport>> {
        w.state = None;
        let (offset, reason) = match self.catch_up(w) {
            Ok(()) => return Ok(None),
            Err(Error::TornEntry { .. }) | Err(Error::UnsealedTail { .. }) => {
                let sealed = last_sealed_offset(&w.file, &self.log_path())?;
                (sealed, "torn or unsealed end of the log set aside")
            }
            Err(e) => return Err(e),
        };
        let path = self.log_path();
        let mut tail = Vec::new();
        let mut reader = &w.file;
        reader
            .seek(SeekFrom::Start(offset))
            .and_then(|_| reader.read_to_end(&mut tail))
            .map_err(|e| Error::io(&path, e))?;
        let saved_to = self.dir.join(format!("{LOG_FILE}.set-aside-{offset}"));
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&saved_to)
            .map_err(|e| Error::io(&saved_to, e))?;
        out.write_all(&tail)
            .and_then(|()| out.sync_all())
            .map_err(|e| Error::io(&saved_to, e))?;
        w.file
            .set_len(offset)
            .and_then(|()| w.file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        w.state = None;
        w.reserved = 0;
        self.catch_up(w)?;
        use sha2::Digest as _;
        Ok(Some(RepairReport {
            offset,
            bytes: tail.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&tail)),
            saved_to,
            reason: reason.to_owned(),
        }))
    }
}

/// What [`AuditLog::repair`] set aside.
#[derive(Debug, Clone)]
pub struct RepairReport {
    /// Where the removed bytes began.
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes: u64,
    /// Their SHA-256, hex.
    pub sha256: String,
    /// The file now holding them.
    pub saved_to: PathBuf,
    /// Why.
    pub reason: String,
}

/// The byte offset just after the last checkpoint line (0 for none).
fn last_sealed_offset(file: &File, path: &Path) -> Result<u64> {
    let mut scan = Scanner::new(file, 0, path)?;
    let mut sealed = 0;
    while let Some(line) = scan.next_line()? {
        if line.bytes.starts_with(CHECKPOINT_PREFIX) {
            sealed = line.end;
        }
    }
    Ok(sealed)
}

/// Reads complete lines from an offset, refusing over-long ones and noting a torn end.
pub(crate) struct Scanner<'a> {
    reader: BufReader<&'a File>,
    offset: u64,
    line_no: u64,
    buf: Vec<u8>,
    path: &'a Path,
    /// Offset of an incomplete final line, once seen.
    pub(crate) torn: Option<u64>,
}

pub(crate) struct Line<'b> {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) number: u64,
    pub(crate) bytes: &'b [u8],
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(file: &'a File, offset: u64, path: &'a Path) -> Result<Self> {
        let mut f = file;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, file),
            offset,
            line_no: 0,
            buf: Vec::new(),
            path,
            torn: None,
        })
    }

    pub(crate) fn next_line(&mut self) -> Result<Option<Line<'_>>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::io(self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        let start = self.offset;
        if self.buf.last() != Some(&b'\n') {
            if n > MAX_LINE {
                return Err(Error::MalformedLine {
                    line: self.line_no,
                    reason: format!("longer than {MAX_LINE} bytes"),
                });
            }
            self.torn = Some(start);
            return Ok(None);
        }
        self.offset += n as u64;
        Ok(Some(Line {
            start,
            end: self.offset,
            number: self.line_no,
            bytes: &self.buf[..n - 1],
        }))
    }
}

/// A fully verified log: every entry parsed and indexed, every checkpoint's signature and
/// root checked against the entries before it.
#[derive(Debug)]
pub struct LogView {
    origin: Option<String>,
    leaves: Vec<Hash>,
    /// Where each signed checkpoint line is, by tree size: read back on demand, so memory
    /// holds 16 bytes per checkpoint, not the note.
    checkpoints: BTreeMap<u64, (u64, usize)>,
    path: PathBuf,
}

impl LogView {
    /// Reads and verifies the log in `dir` with `verifier`: any edit, deletion, insertion,
    /// reordering, torn or unsealed end, checkpoint not signed by the key, or a log shorter
    /// than the checkpoint kept in `head` is an error.
    pub fn load(dir: &Path, verifier: &NoteVerifier) -> Result<Self> {
        // `head` is read before the log: it is only ever written after the log bytes it
        // describes, so a writer appending meanwhile cannot make a sound log look truncated.
        let head = std::fs::read(dir.join(HEAD_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Head>(bytes.trim_ascii_end()).ok())
            .map(|h| h.checkpoint);
        let path = dir.join(LOG_FILE);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut scan = Scanner::new(&file, 0, &path)?;
        let mut view = Self {
            origin: None,
            leaves: Vec::new(),
            checkpoints: BTreeMap::new(),
            path: path.clone(),
        };
        let mut frontier = Frontier::new();
        let mut unsealed: Option<(u64, u64)> = None;
        while let Some(line) = scan.next_line()? {
            let malformed = |reason: String| Error::MalformedLine {
                line: line.number,
                reason,
            };
            if line.bytes.starts_with(CHECKPOINT_PREFIX) {
                let parsed: CheckpointLine = serde_json::from_slice(line.bytes)
                    .map_err(|e| malformed(format!("bad checkpoint line: {e}")))?;
                let checkpoint = verifier.open(&parsed.checkpoint)?;
                match &view.origin {
                    None => view.origin = Some(checkpoint.origin.clone()),
                    Some(o) if *o != checkpoint.origin => {
                        return Err(Error::ForeignOrigin {
                            expected: o.clone(),
                            found: checkpoint.origin,
                        });
                    }
                    Some(_) => {}
                }
                if checkpoint.size != frontier.size() {
                    return Err(malformed(format!(
                        "checkpoint claims {} entries, {} precede it",
                        checkpoint.size,
                        frontier.size()
                    )));
                }
                let computed = frontier.root();
                if checkpoint.root != computed {
                    return Err(Error::RootMismatch {
                        line: line.number,
                        size: checkpoint.size,
                        signed: hex::encode(checkpoint.root),
                        computed: hex::encode(computed),
                    });
                }
                view.checkpoints
                    .insert(checkpoint.size, (line.start, line.bytes.len()));
                unsealed = None;
            } else {
                let record = Record::parse_canonical(line.bytes).map_err(malformed)?;
                if record.index != frontier.size() {
                    return Err(Error::IndexMismatch {
                        line: line.number,
                        expected: frontier.size(),
                        found: record.index,
                    });
                }
                unsealed.get_or_insert((record.index, line.start));
                let leaf = merkle::leaf_hash(line.bytes);
                frontier.push(leaf);
                view.leaves.push(leaf);
            }
        }
        if let Some(offset) = scan.torn {
            let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            return Err(Error::TornEntry {
                offset,
                bytes: len - offset,
            });
        }
        if let Some((first, offset)) = unsealed {
            return Err(Error::UnsealedTail { first, offset });
        }
        // The latest checkpoint is also kept outside the log: cutting entries off the end
        // of the log leaves it pointing past the end.
        if let Some(head) = &head {
            view.check_checkpoint(verifier, head)?;
        }
        Ok(view)
    }

    /// Checks that a signed checkpoint held elsewhere (the log's `head`, or one an auditor
    /// kept) describes a prefix of this log.
    pub fn check_checkpoint(&self, verifier: &NoteVerifier, note: &str) -> Result<Checkpoint> {
        let checkpoint = verifier.open(note)?;
        if let Some(origin) = &self.origin
            && *origin != checkpoint.origin
        {
            return Err(Error::ForeignOrigin {
                expected: origin.clone(),
                found: checkpoint.origin,
            });
        }
        if checkpoint.size > self.size() {
            return Err(Error::Truncated {
                checkpoint_size: checkpoint.size,
                log_size: self.size(),
            });
        }
        let actual = self.root_at(checkpoint.size)?;
        if actual != checkpoint.root {
            return Err(Error::Inconsistent {
                size: checkpoint.size,
                expected: hex::encode(checkpoint.root),
                actual: hex::encode(actual),
            });
        }
        Ok(checkpoint)
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The log's origin, from its checkpoints.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Number of signed checkpoints in the log.
    pub fn checkpoint_count(&self) -> usize {
        self.checkpoints.len()
    }

    /// The signed checkpoint note for tree size `size`, if the log has one.
    pub fn checkpoint(&self, size: u64) -> Result<Option<String>> {
        let Some(&(offset, len)) = self.checkpoints.get(&size) else {
            return Ok(None);
        };
        self.read_checkpoint(offset, len).map(Some)
    }

    /// The latest signed checkpoint note.
    pub fn latest_checkpoint(&self) -> Result<Option<String>> {
        match self.checkpoints.last_key_value() {
            Some((_, &(offset, len))) => self.read_checkpoint(offset, len).map(Some),
            None => Ok(None),
        }
    }

    fn read_checkpoint(&self, offset: u64, len: usize) -> Result<String> {
        use std::os::unix::fs::FileExt as _;
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut line = vec![0u8; len];
        file.read_exact_at(&mut line, offset)
            .map_err(|e| Error::io(&self.path, e))?;
        let parsed: CheckpointLine =
            serde_json::from_slice(&line).map_err(|e| Error::MalformedLine {
                line: 0,
                reason: format!("checkpoint at byte {offset} changed since verification: {e}"),
            })?;
        Ok(parsed.checkpoint)
    }

    /// Leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }

    /// Root of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        self.check_size("tree size", size)?;
        Ok(merkle::root(&self.leaves[..size as usize]))
    }

    fn check_size(&self, what: &'static str, value: u64) -> Result<()> {
        if value > self.size() {
            return Err(Error::OutOfRange {
                what,
                value,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// The audit path for entry `index` in the tree of the first `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.check_size("tree size", size)?;
        merkle::inclusion_proof(&self.leaves[..size as usize], index as usize).ok_or(
            Error::OutOfRange {
                what: "entry index",
                value: index,
                size,
            },
        )
    }

    /// The proof that the first `old` entries are a prefix of the first `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        self.check_size("tree size", new)?;
        if old > new {
            return Err(Error::OutOfRange {
                what: "old tree size",
                value: old,
                size: new,
            });
        }
        if old == 0 || old == new {
            return Ok(Vec::new());
        }
        merkle::consistency_proof(&self.leaves[..new as usize], old as usize).ok_or(
            Error::OutOfRange {
                what: "old tree size",
                value: old,
                size: new,
            },
        )
    }
}

/// Calls `f` with every entry in order, read without verification and one at a time, so
/// memory does not grow with the log. Returns the offset of a torn final line, if any.
pub fn for_each_record(dir: &Path, mut f: impl FnMut(Record)) -> Result<Option<u64>> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut scan = Scanner::new(&file, 0, &path)?;
    while let Some(line) = scan.next_line()? {
        if line.bytes.starts_with(CHECKPOINT_PREFIX) {
            continue;
        }
        let record =
            Record::parse_canonical(line.bytes).map_err(|reason| Error::MalformedLine {
                line: line.number,
                reason,
            })?;
        f(record);
    }
    Ok(scan.torn)
}

/// The last `n` entries, read without verification (that is `LogView::load`'s job), and
/// the offset of a torn final line if there is one.
pub fn tail(dir: &Path, n: usize) -> Result<(Vec<Record>, Option<u64>)> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut scan = Scanner::new(&file, 0, &path)?;
    let mut last: VecDeque<Record> = VecDeque::with_capacity(n.min(1 << 16));
    while let Some(line) = scan.next_line()? {
        if n == 0 || line.bytes.starts_with(CHECKPOINT_PREFIX) {
            continue;
        }
        let record =
            Record::parse_canonical(line.bytes).map_err(|reason| Error::MalformedLine {
                line: line.number,
                reason,
            })?;
        if last.len() == n {
            last.pop_front();
        }
        last.push_back(record);
    }
    Ok((last.into(), scan.torn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    const ORIGIN: &str = "airlock.test/audit";

    fn new_log(entries: usize) -> (tempfile::TempDir, AuditLog, NoteVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate("test-audit").unwrap();
        let verifier = signer.verifier();
        let log = AuditLog::create(dir.path(), ORIGIN, signer).unwrap();
        for i in 0..entries {
            log.append(Entry::new("user:t", "act", Outcome::Ok).detail("n", i))
                .unwrap();
        }
        (dir, log, verifier)
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join(LOG_FILE), lines.join("\n") + "\n").unwrap();
    }

    fn verify(dir: &Path, verifier: &NoteVerifier) -> Result<LogView> {
        LogView::load(dir, verifier)
    }

    #[test]
    fn entries_get_consecutive_indices_and_every_commit_is_sealed() {
        let (dir, log, verifier) = new_log(5);
        assert_eq!(
            log.syncs(),
            6,
            "one sync for the initial seal, one per append"
        );
        let all = lines(dir.path());
        // Initial seal, then each entry followed by its checkpoint.
        assert_eq!(all.len(), 11);
        assert!(
            all.iter()
                .step_by(2)
                .all(|l| l.starts_with("{\"checkpoint\":"))
        );
        let view = verify(dir.path(), &verifier).unwrap();
        assert_eq!(view.size(), 5);
        assert_eq!(view.checkpoint_count(), 6);
        let (records, torn) = tail(dir.path(), 2).unwrap();
        assert_eq!(torn, None);
        assert_eq!(records.iter().map(|r| r.index).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn an_edited_entry_is_detected() {
        let (dir, _log, verifier) = new_log(4);
        let mut all = lines(dir.path());
        all[3] = all[3].replace("\"user:t\"", "\"user:mallory\"");
        write_lines(dir.path(), &all);
        assert!(matches!(
            verify(dir.path(), &verifier),
            Err(Error::RootMismatch { size: 2, .. })
        ));
    }

    #[test]
    fn a_deleted_entry_is_detected() {
        let (dir, _log, verifier) = new_log(4);
        let mut all = lines(dir.path());
        all.remove(3);
        write_lines(dir.path(), &all);
        assert!(matches!(
            verify(dir.path(), &verifier),
            Err(Error::MalformedLine { .. })
        ));
        // Deleting an entry together with its checkpoint shifts every later index.
        let (dir, _log, verifier) = new_log(4);
        let mut all = lines(dir.path());
        all.drain(3..5);
        write_lines(dir.path(), &all);
        assert!(matches!(
            verify(dir.path(), &verifier),
            Err(Error::IndexMismatch {
                expected: 1,
                found: 2,
                ..
            })
        ));
    }

    #[test]
    fn swapped_entries_are_detected() {
        let (dir, _log, verifier) = new_log(4);
        let mut all = lines(dir.path());
        all.swap(3, 5);
        write_lines(dir.path(), &all);
        assert!(matches!(
            verify(dir.path(), &verifier),
            Err(Error::IndexMismatch {
                expected: 1,
                found: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_truncated_tail_is_detected() {
        // Cut at a line boundary that leaves the log sealed: only `head` can tell.
        let (dir, _log, verifier) = new_log(4);
        let mut all = lines(dir.path());
        all.truncate(all.len() - 2);
        write_lines(dir.path(), &all);
        assert!(matches!(
            verify(dir.path(), &verifier),
            Err(Error::Truncated {
                checkpoint_size: 4,
                log_size: 3
            })
        ));
        // Cut in the middle of a line: torn.
        let (dir, _log, verifier) = new_log(4);
        let path = dir.path().join(LOG_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        assert!(matches!(
            verify(dir.path(), &verifier),
            Err(Error::TornEntry { .. })
        ));
    }

    #[test]
    fn a_log_rewritten_without_the_key_fails_its_signatures() {
        let (dir, _log, verifier) = new_log(3);
        // The forger edits an entry and recomputes every root, but must sign with a key
        // of their own.
        let mut all = lines(dir.path());
        all[3] = all[3].replace("\"user:t\"", "\"user:mallory\"");
        let forger = NoteSigner::generate("test-audit").unwrap();
        let mut frontier = Frontier::new();
        for line in &mut all {
            if line.starts_with("{\"checkpoint\":") {
                let note = forger.sign(&Checkpoint {
                    origin: ORIGIN.into(),
                    size: frontier.size(),
                    root: frontier.root(),
                });
                *line = String::from_utf8(
                    serde_json_canonicalizer::to_vec(&CheckpointLine { checkpoint: note }).unwrap(),
                )
                .unwrap();
            } else {
                frontier.push(merkle::leaf_hash(line.as_bytes()));
            }
        }
        write_lines(dir.path(), &all);
        assert!(matches!(
            verify(dir.path(), &verifier),
            Err(Error::BadCheckpointSignature { size: 0 })
        ));
    }

    #[test]
    fn repair_sets_aside_a_torn_end_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate("test-audit").unwrap();
        let key = signer.to_key_string();
        let verifier = signer.verifier();
        let log = AuditLog::create(dir.path(), ORIGIN, signer).unwrap();
        log.append(Entry::new("user:t", "act", Outcome::Ok))
            .unwrap();
        drop(log);
        let path = dir.path().join(LOG_FILE);
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"action\":\"half")
            .unwrap();
        let reopened = AuditLog::open(dir.path(), ORIGIN, NoteSigner::parse(&key).unwrap());
        assert!(matches!(reopened, Err(Error::TornEntry { bytes: 15, .. })));
        let log = AuditLog::open_for_repair(dir.path(), ORIGIN, NoteSigner::parse(&key).unwrap())
            .unwrap();
        let report = log.repair("user:operator").unwrap().unwrap();
        assert_eq!(report.bytes, 15);
        assert_eq!(
            std::fs::read(&report.saved_to).unwrap(),
            b"{\"action\":\"half"
        );
        let view = verify(dir.path(), &verifier).unwrap();
        assert_eq!(view.size(), 2);
        let (records, _) = tail(dir.path(), 1).unwrap();
        assert_eq!(records[0].action, "audit.repair");
        assert!(log.repair("user:operator").unwrap().is_none());
    }

    #[test]
    fn concurrent_writers_share_syncs_and_lose_nothing() {
        let (dir, log, verifier) = new_log(0);
        let before = log.syncs();
        std::thread::scope(|s| {
            for t in 0..8 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..200 {
                        log.append(
                            Entry::new(format!("user:{t}"), "act", Outcome::Ok).detail("i", i),
                        )
                        .unwrap();
                    }
                });
            }
        });
        let view = verify(dir.path(), &verifier).unwrap();
        assert_eq!(view.size(), 1600);
        assert!(log.syncs() - before <= 1600);
    }

    #[test]
    fn two_handles_on_one_log_interleave_safely_as_two_processes_would() {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate("test-audit").unwrap();
        let key = signer.to_key_string();
        let verifier = signer.verifier();
        drop(AuditLog::create(dir.path(), ORIGIN, signer).unwrap());
        let a = AuditLog::open(dir.path(), ORIGIN, NoteSigner::parse(&key).unwrap()).unwrap();
        let b = AuditLog::open(dir.path(), ORIGIN, NoteSigner::parse(&key).unwrap()).unwrap();
        std::thread::scope(|s| {
            for log in [&a, &b] {
                s.spawn(move || {
                    for _ in 0..100 {
                        log.append(Entry::new("user:t", "act", Outcome::Ok))
                            .unwrap();
                    }
                });
            }
        });
        let view = verify(dir.path(), &verifier).unwrap();
        assert_eq!(view.size(), 200);
        // A third writer starts from `head` and continues the same tree.
        let c = AuditLog::open(dir.path(), ORIGIN, NoteSigner::parse(&key).unwrap()).unwrap();
        assert_eq!(
            c.append(Entry::new("user:t", "act", Outcome::Ok)).unwrap(),
            200
        );
        verify(dir.path(), &verifier).unwrap();
    }

    #[test]
    fn proofs_from_the_view_verify() {
        let (dir, _log, verifier) = new_log(13);
        let view = verify(dir.path(), &verifier).unwrap();
        let root = view.root_at(13).unwrap();
        for i in 0..13 {
            let proof = view.inclusion_proof(i, 13).unwrap();
            assert!(merkle::verify_inclusion(
                &view.leaves()[i as usize],
                i,
                13,
                &proof,
                &root
            ));
        }
        let proof = view.consistency_proof(5, 13).unwrap();
        assert!(merkle::verify_consistency(
            5,
            13,
            &view.root_at(5).unwrap(),
            &root,
            &proof
        ));
        assert!(matches!(
            view.inclusion_proof(13, 13),
            Err(Error::OutOfRange { .. })
        ));
    }
}
