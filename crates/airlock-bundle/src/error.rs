//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while packing, reading or verifying a bundle.
///
/// Each variant names the file, chunk or key at fault so that its `Display` is a complete
/// one-line reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// An archive or bundle path that is unsafe or malformed (absolute, `..`, empty, NUL...).
    #[error("unsafe path {path:?} in bundle: {reason}")]
    UnsafePath {
        /// The path as found (lossy UTF-8).
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A tar entry whose type is not a plain file or directory.
    #[error("tar entry {path:?} is a {kind}; bundles hold only plain files")]
    UnsafeEntry {
        /// The entry's path.
        path: String,
        /// What it is (symlink, hardlink, device...).
        kind: &'static str,
    },
    /// The same path appears twice.
    #[error("duplicate entry {path:?} in bundle")]
    DuplicateEntry {
        /// The repeated path.
        path: String,
    },
    /// The archive ends before its declared contents.
    #[error("bundle archive is truncated: {detail}")]
    Truncated {
        /// Where the bytes ran out.
        detail: String,
    },
    /// The archive is not a well-formed POSIX tar.
    #[error("malformed tar archive at byte {offset}: {reason}")]
    MalformedTar {
        /// Byte offset of the bad header.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the manifest lists is absent.
    #[error("missing file {path:?}: listed in the manifest but not in the bundle")]
    MissingFile {
        /// The absent path.
        path: String,
    },
    /// A file is present that the manifest does not list.
    #[error("unexpected file {path:?}: in the bundle but not in the signed manifest")]
    ExtraFile {
        /// The unlisted path.
        path: String,
    },
    /// A file's size differs from the signed size.
    #[error("{path}: size is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Signed size.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// A chunk of a file does not hash to its signed value.
    #[error(
        "{path}: chunk {index} (bytes {offset}..) hash mismatch: expected {expected}, got {actual}"
    )]
    ChunkMismatch {
        /// The file.
        path: String,
        /// Chunk number, from 0.
        index: u64,
        /// Byte offset of the chunk in the file.
        offset: u64,
        /// Signed digest.
        expected: String,
        /// Digest found.
        actual: String,
    },
    /// A whole file does not hash to its signed value.
    #[error("{path}: SHA-256 mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The file.
        path: String,
        /// Signed digest.
        expected: String,
        /// Digest found.
        actual: String,
    },
    /// `model.sig` is absent.
    #[error("no model.sig: the bundle is unsigned")]
    Unsigned,
    /// `model.sig` (the Sigstore bundle) cannot be parsed or is not of the expected form.
    #[error("model.sig is malformed: {0}")]
    MalformedSignature(String),
    /// The DSSE payload type is not an in-toto statement.
    #[error("signed payload has type {found:?}, expected \"application/vnd.in-toto+json\"")]
    PayloadType {
        /// The payload type found.
        found: String,
    },
    /// The signed statement is not a model-signing v1.0 statement of the expected form.
    #[error("signed statement is invalid: {0}")]
    InvalidStatement(String),
    /// The statement lists no files.
    #[error("signed manifest lists no files")]
    EmptyManifest,
    /// A signature by a trusted key does not verify: the signed bytes were altered.
    #[error(
        "signature by trusted key {key_id} does not verify: the manifest was altered or the signature is corrupt"
    )]
    BadSignature {
        /// The key whose signature failed.
        key_id: String,
    },
    /// Signatures exist but none is by a trusted key.
    #[error("no signature by a trusted key; signed by untrusted key(s) {}", key_ids.join(", "))]
    UntrustedSigner {
        /// The key ids that signed (or `unknown` when the signature names none).
        key_ids: Vec<String>,
    },
    /// Fewer distinct trusted keys signed than the threshold requires.
    #[error("signature threshold not met: {valid} distinct trusted key(s) signed, {needed} required{}",
        if *duplicates > 0 { format!(" ({duplicates} repeated signature(s) by the same key not counted)") } else { String::new() })]
    ThresholdNotMet {
        /// Required number of distinct keys.
        needed: usize,
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// Signatures that repeat a key already counted.
        duplicates: usize,
    },
    /// A key file cannot be read as the expected kind of key.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A pack source file is refused (pickle, code, unknown type...).
    #[error("refused {path}: {reason}")]
    Refused {
        /// The source file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A safetensors file is invalid.
    #[error("{path}: invalid safetensors: {reason}")]
    Safetensors {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A GGUF file is invalid.
    #[error("{path}: invalid GGUF: {reason}")]
    Gguf {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad argument to pack (name, version, kind...).
    #[error("{0}")]
    InvalidInput(String),
    /// A media volume is missing, duplicated, truncated, corrupt or from another bundle.
    #[error("{reason}")]
    Volume {
        /// `volume_missing`, `volume_duplicate`, `volume_truncated`, `volume_corrupt`,
        /// `volume_foreign`.
        kind: &'static str,
        /// One line naming the volume and the fault.
        reason: String,
    },
    /// A limit from [`crate::Limits`] was exceeded.
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What exceeded it.
        what: String,
        /// The limit.
        limit: u64,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A stable snake_case name for the kind of failure, for `--json` output and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::UnsafePath { .. } => "unsafe_path",
            Error::UnsafeEntry { .. } => "unsafe_entry",
            Error::DuplicateEntry { .. } => "duplicate_entry",
            Error::Truncated { .. } => "truncated",
            Error::MalformedTar { .. } => "malformed_tar",
            Error::MissingFile { .. } => "missing_file",
            Error::ExtraFile { .. } => "extra_file",
            Error::SizeMismatch { .. } => "size_mismatch",
            Error::ChunkMismatch { .. } => "chunk_mismatch",
            Error::HashMismatch { .. } => "hash_mismatch",
            Error::Unsigned => "unsigned",
            Error::MalformedSignature(_) => "malformed_signature",
            Error::PayloadType { .. } => "payload_type",
            Error::InvalidStatement(_) => "invalid_statement",
            Error::EmptyManifest => "empty_manifest",
            Error::BadSignature { .. } => "bad_signature",
            Error::UntrustedSigner { .. } => "untrusted_signer",
            Error::ThresholdNotMet { .. } => "threshold_not_met",
            Error::Key { .. } => "key",
            Error::Refused { .. } => "refused",
            Error::Safetensors { .. } => "invalid_safetensors",
            Error::Gguf { .. } => "invalid_gguf",
            Error::InvalidInput(_) => "invalid_input",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::Volume { kind, .. } => kind,
        }
    }

    /// True when this error means the bundle failed verification (as opposed to a usage or
    /// I/O problem). The CLI maps it to exit code 1.
    pub fn is_verification_failure(&self) -> bool {
        !matches!(
            self,
            Error::Io { .. } | Error::Key { .. } | Error::InvalidInput(_)
        )
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
