//! Knowledge collections: internal documents ingested into a keyword and a vector index,
//! retrieved by meaning and keywords at a caller's clearance.
//!
//! A [`Collection`] pins an embedding model by digest and holds documents, each with a data
//! class (ordered, [`Classes`]) and optional access groups, set by the ingest's class, a
//! [`rules`] file, or the collection's default. Ingest reads text, Markdown, HTML, PDF, DOCX,
//! Jira and Confluence JSON exports and git repositories ([`parse`], in a separate process
//! with limits), cuts them into chunks along their structure and sized in the embedding
//! model's tokens ([`chunk`]), and keeps a BM25 index and an HNSW index beside a database
//! that is the source of truth. Re-ingesting is incremental by content hash and crash-safe:
//! an ingest publishes everything it changed in one transaction at its end.
//!
//! Retrieval fuses a dense and a keyword ranking by weighted reciprocal rank; the caller's
//! clearance is applied **inside** both searches, before ranking, so a chunk above it never
//! reaches ranking, results, counts or scores.
//!
//! It deliberately does not: fetch anything, follow links in documents, or trust a document's
//! own claims about its class.
//!
//! ```
//! use airlock_rag::{Classes, Clearance};
//! let classes = Classes::default();
//! let reader = Clearance::new(&classes, "internal", vec![]).unwrap();
//! assert!(reader.admits(classes.rank("public").unwrap(), &[]));
//! assert!(!reader.admits(classes.rank("secret").unwrap(), &[]));
//! ```

#![deny(missing_docs)]

pub mod answer;
pub mod chunk;
pub mod class;
mod collection;
pub mod document;
mod error;
mod keyword;
pub mod parse;
pub mod rules;
mod sources;
mod store;
mod vector;

/// Internals benchmarks measure directly; not a stable interface.
#[doc(hidden)]
pub mod internal {
    pub use crate::vector::{DEFAULT_EXPANSION_SEARCH, VectorIndex, cosine};
}

pub use class::{Attested, Classes, Clearance};
pub use collection::block_on;
pub use collection::{
    ClassRows, Collection, CollectionInfo, EmbeddingPin, Hit, IngestOptions, IngestReport,
    Progress, Weights, collections_dir,
};
pub use error::{Error, Result};
pub use store::{ChunkRow, DocumentRow};
