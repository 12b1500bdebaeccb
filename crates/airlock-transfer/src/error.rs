//! The transfer's error type.

use std::path::PathBuf;

/// Why a send, receive or relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Net {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
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
    /// The bundle could not be opened or failed verification.
    #[error(transparent)]
    Bundle(#[from] airlock_bundle::Error),
    /// An option or input is unusable.
    #[error("{0}")]
    Usage(String),
    /// The receiver stopped before it had the whole bundle; decoded blocks are kept for the
    /// next attempt.
    #[error("{0}")]
    Incomplete(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn net(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Net { what, source }
    }

    /// True when the bundle did not arrive whole and verified, or was refused (exit status 1
    /// rather than 2, which is for usage and I/O problems).
    pub fn is_transfer_failure(&self) -> bool {
        match self {
            Error::Bundle(e) => e.is_verification_failure(),
            Error::Incomplete(_) => true,
            _ => false,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
