//! The keyword index (BM25, tantivy): chunk text and heading path, English stemming, keyed by
//! chunk id. Which chunks a search may see is decided per chunk id by the caller's filter
//! *while collecting*, so that an invisible chunk never takes a place among the top results.

use std::path::Path;
use std::sync::Arc;

use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::QueryParser;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term, doc};

use crate::Result;

/// Memory the writer may buffer before flushing a segment.
const WRITER_MEMORY: usize = 64 << 20;

struct Fields {
    id: Field,
    text: Field,
    heading: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let id = builder.add_u64_field("chunk", INDEXED | FAST);
    let stemmed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("en_stem")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let text = builder.add_text_field("text", stemmed.clone());
    let heading = builder.add_text_field("heading", stemmed);
    (builder.build(), Fields { id, text, heading })
}

/// The keyword index of one collection.
pub(crate) struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    writer: Option<IndexWriter>,
}

impl std::fmt::Debug for KeywordIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeywordIndex").finish_non_exhaustive()
    }
}

impl KeywordIndex {
    /// Opens the index in `dir`, creating it if it is not there.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let (schema, fields) = schema();
        let index = if dir.join("meta.json").is_file() {
            Index::open_in_dir(dir)?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| crate::Error::Io {
                path: dir.to_owned(),
                source: e,
            })?;
            Index::create_in_dir(dir, schema)?
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            fields,
            writer: None,
        })
    }

    fn writer(&mut self) -> Result<&mut IndexWriter> {
        if self.writer.is_none() {
            self.writer = Some(self.index.writer_with_num_threads(1, WRITER_MEMORY)?);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| crate::Error::Keyword("no writer".into()))
    }

    /// Adds (or replaces) a chunk.
    pub(crate) fn upsert(&mut self, id: u64, heading: &str, text: &str) -> Result<()> {
        let Fields {
            id: id_field,
            text: text_field,
            heading: heading_field,
        } = self.fields;
        let writer = self.writer()?;
        writer.delete_term(Term::from_field_u64(id_field, id));
        writer.add_document(doc!(id_field => id, text_field => text, heading_field => heading))?;
        Ok(())
    }

    /// Removes a chunk.
    pub(crate) fn remove(&mut self, id: u64) -> Result<()> {
        let field = self.fields.id;
        self.writer()?.delete_term(Term::from_field_u64(field, id));
        Ok(())
    }

    /// Makes the changes durable.
    pub(crate) fn commit(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.as_mut() {
            writer.commit()?;
        }
        Ok(())
    }

    /// Rereads what has been committed (by this process or another).
    pub(crate) fn reload(&self) -> Result<()> {
        self.reader.reload()?;
        Ok(())
    }

    /// The best `k` chunks for `query` by BM25 among those `admit` lets through, best first.
    pub(crate) fn search(
        &self,
        query: &str,
        k: usize,
        admit: Arc<dyn Fn(u64) -> bool + Send + Sync>,
    ) -> Result<Vec<(u64, f32)>> {
        let mut parser =
            QueryParser::for_index(&self.index, vec![self.fields.text, self.fields.heading]);
        parser.set_field_boost(self.fields.heading, 2.0);
        // User text is not query syntax: what does not parse is taken as words.
        let (query, _) = parser.parse_query_lenient(query);
        let searcher = self.reader.searcher();
        let collector = FilterCollector::new(
            "chunk".to_owned(),
            move |id: u64| admit(id),
            TopDocs::with_limit(k.max(1)).order_by_score(),
        );
        let top = searcher.search(&query, &collector)?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            // The id is a fast field, not a stored one: read from its column.
            let ids = searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .u64("chunk")?;
            if let Some(id) = ids.first(address.doc_id) {
                out.push((id, score));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bm25_finds_stems_and_the_filter_acts_before_the_top_k() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::Error::Io {
            path: "tmp".into(),
            source: e,
        })?;
        let mut index = KeywordIndex::open(dir.path())?;
        index.upsert(1, "Leave", "Annual leave is twenty five days.")?;
        index.upsert(2, "Leave", "Leaving early needs approval.")?;
        index.upsert(3, "Travel", "Trains are preferred.")?;
        index.commit()?;
        index.reload()?;
        let all: Arc<dyn Fn(u64) -> bool + Send + Sync> = Arc::new(|_| true);
        let hits = index.search("leaves", 10, Arc::clone(&all))?;
        let ids: Vec<u64> = hits.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.contains(&1) && ids.contains(&2) && !ids.contains(&3),
            "{hits:?}"
        );
        // With k = 1 and chunk 1 hidden, chunk 2 still comes back: the filter is inside.
        let hide_one: Arc<dyn Fn(u64) -> bool + Send + Sync> = Arc::new(|id| id != 1);
        assert_eq!(
            index
                .search("annual leave", 1, hide_one)?
                .first()
                .map(|h| h.0),
            Some(2)
        );
        // Replacing a chunk does not duplicate it; removing it hides it.
        index.upsert(3, "Travel", "Trains and leave.")?;
        index.remove(2)?;
        index.commit()?;
        index.reload()?;
        let ids: Vec<u64> = index
            .search("leave", 10, all.clone())?
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(!ids.contains(&2));
        // Query syntax in user text is taken as words, not an error.
        assert!(index.search("leave AND (\"unbalanced", 10, all).is_ok());
        Ok(())
    }
}
