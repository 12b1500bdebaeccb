//! The registry's error type.

use std::path::PathBuf;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Policy or verification refused the operation. Nothing changed; the refusal is in the
    /// audit log.
    #[error("refused: {reason}")]
    Refused {
        /// Stable snake_case name of the rule that refused (`untrusted_signer`, `rollback`, ...).
        kind: &'static str,
        /// One line naming the problem.
        reason: String,
    },
    /// No such model, version or tag.
    #[error("not found: {0}")]
    NotFound(String),
    /// A reference or argument is malformed.
    #[error("{0}")]
    Usage(String),
    /// The data directory is missing, not initialised, or already initialised.
    #[error("{path}: {reason}")]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `policy.toml` does not parse or breaks a rule (threshold 0, a key whose id does not
    /// match its PEM, ...).
    #[error("{path}: invalid policy: {reason}")]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bundle could not be read (I/O, not verification).
    #[error(transparent)]
    Bundle(airlock_bundle::Error),
    /// The audit log failed or failed verification.
    #[error("audit log: {0}")]
    Audit(#[from] airlock_audit::Error),
    /// The metadata database failed.
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
}

impl Error {
    /// A file error from the bundle crate's helpers, kept as this crate's `Io`.
    pub(crate) fn from_bundle_io(e: airlock_bundle::Error) -> Self {
        match e {
            airlock_bundle::Error::Io { path, source } => Self::Io { path, source },
            other => Self::Bundle(other),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A refusal of kind `kind` (stable, snake_case) with a one-line reason.
    pub fn refused(kind: &'static str, reason: impl Into<String>) -> Self {
        Self::Refused {
            kind,
            reason: reason.into(),
        }
    }

    /// Stable snake_case name of the error, for `--json` output and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Refused { kind, .. } => kind,
            Self::NotFound(_) => "not_found",
            Self::Usage(_) => "usage",
            Self::DataDir { .. } => "data_dir",
            Self::Policy { .. } => "invalid_policy",
            Self::Io { .. } => "io",
            Self::Bundle(e) => e.kind(),
            Self::Audit(e) if e.is_integrity_failure() => "audit_integrity",
            Self::Audit(_) => "audit",
            Self::Db(_) => "database",
        }
    }

    /// True for refusals and failed integrity checks (exit code 1), false for usage and
    /// I/O problems (exit code 2).
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Refused { .. } => true,
            Self::Audit(e) => e.is_integrity_failure(),
            _ => false,
        }
    }
}

impl From<airlock_bundle::Error> for Error {
    fn from(e: airlock_bundle::Error) -> Self {
        if e.is_verification_failure() {
            Self::Refused {
                kind: e.kind(),
                reason: e.to_string(),
            }
        } else {
            Self::Bundle(e)
        }
    }
}

/// The registry's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
