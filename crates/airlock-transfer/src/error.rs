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
    /// The block layout asked for breaks a limit every receiver enforces.
    #[error("block layout: {0}")]
    Geometry(#[from] crate::announce::GeometryError),
    /// The signed manifest does not fix the bundle's size, so no receiver would accept it.
    #[error("{path}: {source}")]
    Layout {
        /// The bundle.
        path: PathBuf,
        /// Why the size is not fixed.
        #[source]
        source: crate::layout::LayoutError,
    },
    /// The bundle file is not the size its signed manifest implies, so every receiver would
    /// refuse its announce.
    #[error(
        "{path} has {actual} bytes but its signed manifest makes the bundle {signed} bytes: it was not written by airlock pack or sign, or was changed"
    )]
    BundleSizeMismatch {
        /// The bundle.
        path: PathBuf,
        /// Its size on disk.
        actual: u64,
        /// The size the signed manifest implies.
        signed: u64,
    },
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
            Error::Incomplete(_) | Error::Layout { .. } | Error::BundleSizeMismatch { .. } => true,
            _ => false,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
