//! Reading a log as it grows, trusting only what signed checkpoints seal.
//!
//! A [`Follower`] reads the log from where it last stopped: it hashes every entry line into
//! the Merkle tree, checks each checkpoint's signature, origin, size and root, and only then
//! hands the entries that checkpoint seals to its caller. Entries after the last checkpoint
//! (an append in progress, or lines added without the key) are held back and read again next
//! time. A caller that wants only some kinds of entries names them with a filter on the
//! action: other entries are hashed, never parsed, so a log of millions of request entries
//! costs one SHA-256 per line.
//!
//! [`verify_and_replay`] is the one-pass form of `airlock audit verify`: every entry parsed
//! and checked canonical, no torn or unsealed end, and `head` a prefix of the log, while the
//! wanted entries go to the caller.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::entry::{CHECKPOINT_PREFIX, CheckpointLine, Record};
use crate::log::{HEAD_FILE, Head, LOG_FILE, Scanner};
use crate::merkle::{self, Frontier, Hash};
use crate::note::NoteVerifier;
use crate::{Error, Result};

/// A verifying reader that remembers where it stopped.
#[derive(Debug, Clone)]
pub struct Follower {
    path: PathBuf,
    verifier: NoteVerifier,
    strict: bool,
    origin: Option<String>,
    /// The tree of every entry up to `offset`.
    frontier: Frontier,
    /// Byte offset just after the last verified checkpoint.
    offset: u64,
    /// Lines before `offset`.
    lines: u64,
    checkpoints: u64,
    /// A tree size whose root to remember, and the root once read.
    watch: Option<(u64, Option<Hash>)>,
}

/// What one [`Follower::advance`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advance {
    /// Entries newly sealed by a verified checkpoint (wanted or not).
    pub sealed: u64,
    /// Entries after the last checkpoint, held back.
    pub unsealed: u64,
    /// Byte offset where they start, if any.
    pub unsealed_offset: Option<u64>,
    /// Offset of an incomplete final line, if the log ends in one.
    pub torn: Option<u64>,
}

/// The action of an entry line, read without parsing the line: entry lines are canonical
/// JSON, whose first key is `action`. `None` when the action holds an escape (parse it).
fn action_of(line: &[u8]) -> Option<&str> {
    let rest = line.strip_prefix(b"{\"action\":\"")?;
    let end = rest.iter().position(|b| *b == b'"' || *b == b'\\')?;
    if rest[end] == b'\\' {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

impl Follower {
    /// A reader of the log in `dir` that has read nothing yet.
    pub fn new(dir: &Path, verifier: NoteVerifier) -> Self {
        Self {
            path: dir.join(LOG_FILE),
            verifier,
            strict: false,
            origin: None,
            frontier: Frontier::new(),
            offset: 0,
            lines: 0,
            checkpoints: 0,
            watch: None,
        }
    }

    /// Parses every entry and checks it is canonical and at its index, as
    /// [`LogView::load`](crate::LogView::load) does, instead of trusting the signed roots
    /// alone for the entries it does not hand out.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Entries sealed and read so far.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Signed checkpoints verified so far.
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints
    }

    /// The log's origin, from its first checkpoint.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Reads what was appended since the last call. Every checkpoint must be signed by the
    /// verifier key, name the log's origin, count the entries before it and carry their
    /// root; the entries it seals whose action `wanted` accepts then go to `visit`, in
    /// order. Damage is an error; an incomplete last line or entries not yet sealed are not
    /// (a writer may be between its two writes): they are left for the next call.
    pub fn advance(
        &mut self,
        wanted: &dyn Fn(&str) -> bool,
        visit: &mut dyn FnMut(Record),
    ) -> Result<Advance> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        if len < self.offset {
            return Err(Error::Shrank {
                expected: self.offset,
                actual: len,
            });
        }
        let mut scan = Scanner::new(&file, self.offset, &self.path)?;
        let mut frontier = self.frontier.clone();
        // Wanted entries not yet sealed: parsed records, or raw lines with their index.
        let mut held: Vec<Held> = Vec::new();
        let mut out = Advance::default();
        let mut first_unsealed: Option<u64> = None;
        let base = self.lines;
        while let Some(line) = scan.next_line()? {
            let number = base + line.number;
            let malformed = |reason: String| Error::MalformedLine {
                line: number,
                reason,
            };
            if line.bytes.starts_with(CHECKPOINT_PREFIX) {
                let parsed: CheckpointLine = serde_json::from_slice(line.bytes)
                    .map_err(|e| malformed(format!("bad checkpoint line: {e}")))?;
                let checkpoint = self.verifier.open(&parsed.checkpoint)?;
                match &self.origin {
                    None => self.origin = Some(checkpoint.origin.clone()),
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
                        line: number,
                        size: checkpoint.size,
                        signed: hex::encode(checkpoint.root),
                        computed: hex::encode(computed),
                    });
                }
                // Sealed: what it covers may be believed.
                out.sealed += frontier.size() - self.frontier.size();
                self.frontier = frontier.clone();
                self.offset = line.end;
                self.lines = number;
                self.checkpoints += 1;
                first_unsealed = None;
                for item in held.drain(..) {
                    let (record, check) = item.into_record()?;
                    if !check || wanted(&record.action) {
                        visit(record);
                    }
                }
            } else {
                let index = frontier.size();
                first_unsealed.get_or_insert(line.start);
                if self.strict {
                    let record = Record::parse_canonical(line.bytes).map_err(malformed)?;
                    if record.index != index {
                        return Err(Error::IndexMismatch {
                            line: number,
                            expected: index,
                            found: record.index,
                        });
                    }
                    if wanted(&record.action) {
                        held.push(Held::Record(record));
                    }
                } else {
                    // Kinds the caller does not want are hashed, never parsed.
                    let action = action_of(line.bytes);
                    if action.is_none_or(wanted) {
                        held.push(Held::Line {
                            index,
                            number,
                            bytes: line.bytes.to_vec(),
                            check_action: action.is_none(),
                        });
                    }
                }
                frontier.push(merkle::leaf_hash(line.bytes));
                if let Some((size, root @ None)) = &mut self.watch
                    && *size == frontier.size()
                {
                    *root = Some(frontier.root());
                }
            }
        }
        // What `held` still holds was not sealed: it is read again next time.
        out.unsealed = frontier.size() - self.frontier.size();
        out.unsealed_offset = first_unsealed;
        out.torn = scan.torn;
        Ok(out)
    }
}

/// A wanted entry read but not yet sealed.
enum Held {
    /// Parsed already (strict reading).
    Record(Record),
    /// The line, parsed once sealed; `check_action` when its action could not be read
    /// without parsing, so the caller's filter is still to be applied.
    Line {
        index: u64,
        number: u64,
        bytes: Vec<u8>,
        check_action: bool,
    },
}

impl Held {
    fn into_record(self) -> Result<(Record, bool)> {
        match self {
            Held::Record(r) => Ok((r, false)),
            Held::Line {
                index,
                number,
                bytes,
                check_action,
            } => {
                let record =
                    Record::parse_canonical(&bytes).map_err(|reason| Error::MalformedLine {
                        line: number,
                        reason,
                    })?;
                if record.index != index {
                    return Err(Error::IndexMismatch {
                        line: number,
                        expected: index,
                        found: record.index,
                    });
                }
                Ok((record, check_action))
            }
        }
    }
}

/// What [`verify_and_replay`] verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Entries in the log.
    pub entries: u64,
    /// Signed checkpoints in the log.
    pub checkpoints: u64,
    /// The reader, positioned at the end: [`Follower::advance`] reads what is appended next.
    pub follower: Follower,
}

/// Verifies the whole log in `dir` as [`LogView::load`](crate::LogView::load) does — every
/// entry canonical and at its index, every checkpoint signed with its root, no torn or
/// unsealed end, and the checkpoint kept in `head` a prefix of the log — in one pass that
/// also hands the entries whose action `wanted` accepts to `visit`. If it fails, what was
/// visited must be thrown away.
pub fn verify_and_replay(
    dir: &Path,
    verifier: &NoteVerifier,
    wanted: &dyn Fn(&str) -> bool,
    visit: &mut dyn FnMut(Record),
) -> Result<Verified> {
    // `head` first, as `LogView::load` reads it: written only after the log bytes it seals.
    let head = std::fs::read(dir.join(HEAD_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Head>(bytes.trim_ascii_end()).ok())
        .map(|h| h.checkpoint);
    let head = head.map(|note| verifier.open(&note)).transpose()?;
    let mut follower = Follower::new(dir, verifier.clone()).strict();
    if let Some(head) = &head {
        let root = (head.size == 0).then(merkle::empty_root);
        follower.watch = Some((head.size, root));
    }
    let read = follower.advance(wanted, visit)?;
    if let Some(offset) = read.torn {
        let len = std::fs::metadata(&follower.path)
            .map_err(|e| Error::io(&follower.path, e))?
            .len();
        return Err(Error::TornEntry {
            offset,
            bytes: len - offset,
        });
    }
    if let Some(offset) = read.unsealed_offset {
        return Err(Error::UnsealedTail {
            first: follower.size(),
            offset,
        });
    }
    if let Some(head) = head {
        if let Some(origin) = follower.origin()
            && origin != head.origin
        {
            return Err(Error::ForeignOrigin {
                expected: origin.to_owned(),
                found: head.origin,
            });
        }
        if head.size > follower.size() {
            return Err(Error::Truncated {
                checkpoint_size: head.size,
                log_size: follower.size(),
            });
        }
        let actual = follower
            .watch
            .take()
            .and_then(|(_, root)| root)
            .unwrap_or_else(merkle::empty_root);
        if actual != head.root {
            return Err(Error::Inconsistent {
                size: head.size,
                expected: hex::encode(head.root),
                actual: hex::encode(actual),
            });
        }
    }
    follower.watch = None;
    Ok(Verified {
        entries: follower.size(),
        checkpoints: follower.checkpoints(),
        follower,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditLog, Entry, LogView, NoteSigner, Outcome};

    fn new_log() -> (tempfile::TempDir, AuditLog, NoteVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate("test-audit").unwrap();
        let verifier = signer.verifier();
        let log = AuditLog::create(dir.path(), "airlock.test/audit", signer).unwrap();
        (dir, log, verifier)
    }

    fn append(log: &AuditLog, action: &str, n: u64) {
        log.append(Entry::new("user:t", action, Outcome::Ok).detail("n", n))
            .unwrap();
    }

    fn read(follower: &mut Follower) -> (Vec<(String, u64)>, Advance) {
        let mut seen = Vec::new();
        let advance = follower
            .advance(&|a| a == "keep", &mut |r| {
                seen.push((r.action.clone(), r.index));
            })
            .unwrap();
        (seen, advance)
    }

    #[test]
    fn a_follower_hands_out_sealed_wanted_entries_once_and_reads_on_where_it_stopped() {
        let (dir, log, verifier) = new_log();
        for n in 0..4 {
            append(&log, if n % 2 == 0 { "keep" } else { "skip" }, n);
        }
        let mut follower = Follower::new(dir.path(), verifier);
        let (seen, advance) = read(&mut follower);
        assert_eq!(seen, [("keep".into(), 0), ("keep".into(), 2)]);
        assert_eq!(advance.sealed, 4);
        assert_eq!(advance.unsealed, 0);
        assert_eq!(read(&mut follower).0, []);
        append(&log, "keep", 4);
        append(&log, "skip", 5);
        let (seen, _) = read(&mut follower);
        assert_eq!(seen, [("keep".into(), 4)]);
        assert_eq!(follower.size(), 6);

        // A line appended without a checkpoint (a writer mid-commit, or someone without
        // the key) is held back, not believed.
        let line = Record::new(6, "2026-01-01T00:00:00.000Z".into(), {
            Entry::new("user:t", "keep", Outcome::Ok)
        })
        .to_canonical()
        .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        std::io::Write::write_all(&mut file, &[line.as_slice(), b"\n"].concat()).unwrap();
        let (seen, advance) = read(&mut follower);
        assert_eq!(seen, []);
        assert_eq!(advance.unsealed, 1);
        assert_eq!(follower.size(), 6);
    }

    #[test]
    fn an_edited_entry_stops_the_follower_even_one_it_skips() {
        let (dir, log, verifier) = new_log();
        append(&log, "skip", 0);
        append(&log, "keep", 1);
        let path = dir.path().join(LOG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"n\":0", "\"n\":7")).unwrap();
        let mut follower = Follower::new(dir.path(), verifier);
        let err = follower
            .advance(&|a| a == "keep", &mut |_| panic!("nothing is believed"))
            .unwrap_err();
        assert!(matches!(err, Error::RootMismatch { .. }), "{err}");
    }

    #[test]
    fn verify_and_replay_verifies_as_log_view_does_in_one_pass() {
        let (dir, log, verifier) = new_log();
        for n in 0..5 {
            append(&log, "keep", n);
        }
        let mut kept = 0;
        let verified =
            verify_and_replay(dir.path(), &verifier, &|a| a == "keep", &mut |_| kept += 1).unwrap();
        let view = LogView::load(dir.path(), &verifier).unwrap();
        assert_eq!(verified.entries, view.size());
        assert_eq!(verified.checkpoints, view.checkpoint_count() as u64);
        assert_eq!(kept, 5);

        // The last entry and its checkpoint cut off: `head` still names the longer log.
        let path = dir.path().join(LOG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
        let err = verify_and_replay(dir.path(), &verifier, &|_| true, &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        assert!(matches!(
            LogView::load(dir.path(), &verifier),
            Err(Error::Truncated { .. })
        ));
    }
}
