//! The audit crate's error type.

use std::path::PathBuf;

/// Why an audit operation failed, or what verification found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a log file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `create` found a log already there.
    #[error("{0}: an audit log already exists here")]
    AlreadyExists(PathBuf),
    /// A key string could not be used.
    #[error("audit key: {0}")]
    BadKey(String),
    /// A checkpoint note is not well formed.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    /// No valid signature by the log's key on a checkpoint.
    #[error("checkpoint for tree size {size} is not signed by the log's key")]
    BadCheckpointSignature {
        /// The size the checkpoint claims.
        size: u64,
    },
    /// A line of the log is not a well-formed entry or checkpoint.
    #[error("line {line}: {reason}")]
    MalformedLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry carries the wrong index: an entry was deleted, duplicated or moved.
    #[error(
        "line {line}: entry claims index {found}, expected {expected} (entries deleted, inserted or reordered)"
    )]
    IndexMismatch {
        /// 1-based line number.
        line: u64,
        /// The index the position requires.
        expected: u64,
        /// The index the entry claims.
        found: u64,
    },
    /// A signed checkpoint's root does not match the entries before it.
    #[error(
        "line {line}: signed checkpoint for {size} entries has root {signed}, but the entries hash to {computed} (entries edited, deleted or reordered)"
    )]
    RootMismatch {
        /// 1-based line number.
        line: u64,
        /// Tree size of the checkpoint.
        size: u64,
        /// Root in the signed checkpoint (hex).
        signed: String,
        /// Root computed from the log (hex).
        computed: String,
    },
    /// A checkpoint names a different log.
    #[error("checkpoint origin {found:?} is not this log's {expected:?}")]
    ForeignOrigin {
        /// This log's origin.
        expected: String,
        /// The checkpoint's.
        found: String,
    },
    /// The log ends in the middle of a line: a write was interrupted.
    #[error(
        "torn entry at byte {offset} ({bytes} bytes without a line end): the last write was interrupted; run `airlock audit repair` to set the bytes aside"
    )]
    TornEntry {
        /// Byte offset of the incomplete line.
        offset: u64,
        /// Its length.
        bytes: u64,
    },
    /// Entries at the end are not covered by a signed checkpoint.
    #[error(
        "entries from index {first} on are not covered by a signed checkpoint (interrupted write, or appended without the key); run `airlock audit repair` to set them aside"
    )]
    UnsealedTail {
        /// First uncovered index.
        first: u64,
        /// Byte offset where they start.
        offset: u64,
    },
    /// The log is shorter than a checkpoint that was issued for it.
    #[error(
        "log truncated: a checkpoint for {checkpoint_size} entries exists, but the log holds {log_size}"
    )]
    Truncated {
        /// Size of the checkpoint.
        checkpoint_size: u64,
        /// Entries in the log.
        log_size: u64,
    },
    /// The log file is shorter than a length already sealed and recorded.
    #[error("log truncated: {expected} bytes were sealed, the file now holds {actual}")]
    Shrank {
        /// Sealed length in bytes.
        expected: u64,
        /// Current length.
        actual: u64,
    },
    /// A checkpoint held outside the log does not match the log at that size.
    #[error(
        "checkpoint for {size} entries does not match the log (root {expected}, log has {actual}): the log was rewritten"
    )]
    Inconsistent {
        /// Tree size.
        size: u64,
        /// Root in the checkpoint (hex).
        expected: String,
        /// Root of the log's first `size` entries (hex).
        actual: String,
    },
    /// An entry index or tree size outside the log.
    #[error("{what} {value} is outside the log of {size} entries")]
    OutOfRange {
        /// What was asked for.
        what: &'static str,
        /// The value asked for.
        value: u64,
        /// Entries in the log.
        size: u64,
    },
    /// An entry is too large or cannot be encoded.
    #[error("entry refused: {0}")]
    BadEntry(String),
    /// The shared commit this append joined failed.
    #[error("audit append failed: {0}")]
    AppendFailed(String),
    /// The log was opened without a signing key.
    #[error("the audit log was opened read-only (no signing key)")]
    ReadOnly,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error is evidence of tampering or damage, not an I/O or usage problem.
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            Self::MalformedCheckpoint(_)
                | Self::BadCheckpointSignature { .. }
                | Self::MalformedLine { .. }
                | Self::IndexMismatch { .. }
                | Self::RootMismatch { .. }
                | Self::ForeignOrigin { .. }
                | Self::TornEntry { .. }
                | Self::UnsealedTail { .. }
                | Self::Truncated { .. }
                | Self::Shrank { .. }
                | Self::Inconsistent { .. }
        )
    }
}

/// The audit crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
