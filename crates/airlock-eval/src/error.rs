//! Errors of suites and runs.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A suite file is malformed or over a limit.
    #[error("eval suite {file}, line {line}: {reason}")]
    Suite {
        /// Which file.
        file: String,
        /// 1-based line (0: the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The model could not run an item.
    #[error("eval suite {suite}, item {id}: {reason}")]
    Item {
        /// Suite name.
        suite: String,
        /// Item id.
        id: String,
        /// What the model said.
        reason: String,
    },
    /// The model failed.
    #[error("{0}")]
    Model(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
