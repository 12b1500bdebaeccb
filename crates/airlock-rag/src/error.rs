//! What can go wrong with a collection.

use std::path::PathBuf;

/// Collection errors; each names the problem in one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument or name.
    #[error("{0}")]
    Usage(String),
    /// A class the collection does not define.
    #[error("unknown class {class:?}; this collection's classes are: {known}")]
    UnknownClass {
        /// The class asked for.
        class: String,
        /// The collection's classes, least sensitive first.
        known: String,
    },
    /// The rules file is not valid.
    #[error("rules: {0}")]
    Rules(String),
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No collection of that name.
    #[error("collection {name:?} does not exist; create it with `airlock collection create`")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A collection of that name exists already.
    #[error("collection {name:?} already exists")]
    Exists {
        /// The name.
        name: String,
    },
    /// The embedding model offered is not the one the collection's vectors were made with.
    #[error(
        "collection {name:?} holds vectors of embedding model {pinned}, not {offered}; `airlock collection rebuild {name} --embed REF` re-embeds it with another model"
    )]
    ModelMismatch {
        /// The collection.
        name: String,
        /// The digest it was built with.
        pinned: String,
        /// The digest offered.
        offered: String,
    },
    /// No document of that id in the collection.
    #[error("collection {collection:?} has no document {document:?}")]
    NoDocument {
        /// The collection.
        collection: String,
        /// The id asked for.
        document: String,
    },
    /// The collection's files are not what this build reads.
    #[error("collection {name:?}: {reason}")]
    Corrupt {
        /// The collection.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The metadata database failed.
    #[error("collection database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The keyword index failed.
    #[error("keyword index: {0}")]
    Keyword(String),
    /// The vector index failed.
    #[error("vector index: {0}")]
    Vector(String),
    /// The embedding model failed.
    #[error("embedding: {0}")]
    Embed(#[from] airlock_engine::Error),
}

/// Collection results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tantivy::TantivyError> for Error {
    fn from(e: tantivy::TantivyError) -> Self {
        Self::Keyword(e.to_string())
    }
}
