//! The collection's metadata database: the source of truth for documents, chunks (with their
//! text and vectors), classes and the published generation. The keyword and vector indexes
//! are derived from it and may hold more chunks than it publishes, never fewer.
//!
//! A chunk moves through states: **staged** (written, embedded, not yet in the indexes),
//! **indexed** (in both indexes, not yet visible), **live** (visible to searches), and
//! **retired** (replaced or removed; dropped from the indexes, then deleted). Only the
//! publish step makes chunks live and retires the old ones, in one transaction per batch, so
//! an ingest killed at any point leaves the previous generation whole, and what it staged or
//! indexed is reused by the next ingest rather than embedded again.

use std::collections::HashMap;
use std::path::Path;

/// A document's live chunks of one class rank and group set: (document id, class rank,
/// groups, chunks).
pub(crate) type LiveClass = (String, u32, Vec<String>, u64);

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use crate::document::Location;
use crate::{Error, Result};

/// The schema this build reads and writes.
pub(crate) const SCHEMA: &str = "1";

/// A prepared chunk's state (the `state` column; 2 is live, 3 retired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Written and embedded, not in the indexes yet.
    Staged,
    /// In both indexes, not visible yet.
    Indexed,
}

/// A document as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRow {
    /// Its identity: source path or export id.
    pub id: String,
    /// Where it was read from: the file, the export file, or the repository.
    pub source: String,
    /// SHA-256 of its content.
    pub version: String,
    /// `markdown`, `pdf`, `jira`, ...
    pub kind: String,
    /// Its title, if any.
    pub title: Option<String>,
    /// The git commit it was read at, for files of a repository.
    pub commit: Option<String>,
    /// Its class.
    pub class: String,
    /// Its access groups.
    pub groups: Vec<String>,
    /// Chunks it has.
    pub chunks: u64,
}

/// A new chunk to stage.
#[derive(Debug, Clone)]
pub(crate) struct NewChunk {
    pub(crate) ordinal: u32,
    pub(crate) heading: String,
    pub(crate) location: Location,
    pub(crate) text: String,
    pub(crate) tokens: usize,
    pub(crate) vector: Vec<f32>,
}

/// A chunk as searches return it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    /// Its id (never reused).
    pub id: u64,
    /// Its document.
    pub document: String,
    /// The document's version it belongs to.
    pub document_version: String,
    /// Its place in the document.
    pub ordinal: u32,
    /// Its heading path (`A > B`).
    pub heading: String,
    /// Where it stands.
    pub location: Location,
    /// Its text.
    pub text: String,
    /// Its class.
    pub class: String,
    /// The document's title.
    pub title: Option<String>,
    /// The git commit, for repository files.
    pub commit: Option<String>,
}

/// What a chunk is indexed by.
#[derive(Debug)]
pub(crate) struct ChunkContent {
    pub(crate) id: u64,
    pub(crate) heading: String,
    pub(crate) text: String,
    pub(crate) vector: Vec<f32>,
}

/// What a collection holds.
#[derive(Debug)]
pub(crate) struct Counts {
    pub(crate) documents: u64,
    /// Live chunks.
    pub(crate) live: u64,
    /// Staged or indexed chunks, not yet live.
    pub(crate) pending: u64,
    /// Live chunks per class rank.
    pub(crate) by_class: Vec<(u32, u64)>,
}

/// What a search may see of a live chunk: its class rank and access groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Visible {
    pub(crate) rank: u32,
    pub(crate) groups: Vec<String>,
}

/// The database.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
}

fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn vector_of(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn groups_json(groups: &[String]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".into())
}

fn groups_of(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

impl Store {
    /// Creates the database with its metadata.
    pub(crate) fn create(path: &Path, meta: &[(&str, String)]) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE documents (
                 id TEXT PRIMARY KEY, source TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
                 title TEXT, source_commit TEXT, class TEXT NOT NULL, groups TEXT NOT NULL,
                 chunks INTEGER NOT NULL, bytes INTEGER NOT NULL, published INTEGER NOT NULL);
             CREATE TABLE chunks (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 doc_id TEXT NOT NULL, doc_version TEXT NOT NULL, ordinal INTEGER NOT NULL,
                 heading TEXT NOT NULL, location TEXT NOT NULL, text TEXT NOT NULL,
                 tokens INTEGER NOT NULL, class_rank INTEGER NOT NULL, groups TEXT NOT NULL,
                 vector BLOB NOT NULL, state INTEGER NOT NULL);
             CREATE INDEX chunks_doc ON chunks (doc_id, doc_version);
             CREATE INDEX chunks_state ON chunks (state);",
        )?;
        let tx = conn.unchecked_transaction()?;
        tx.execute("INSERT INTO meta VALUES ('schema', ?1)", [SCHEMA])?;
        tx.execute("INSERT INTO meta VALUES ('generation', '0')", [])?;
        for (key, value) in meta {
            tx.execute("INSERT INTO meta VALUES (?1, ?2)", params![key, value])?;
        }
        tx.commit()?;
        Ok(Self { conn })
    }

    /// Opens an existing database.
    pub(crate) fn open(path: &Path, name: &str) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let store = Self { conn };
        match store.meta("schema")?.as_deref() {
            Some(SCHEMA) => Ok(store),
            other => Err(Error::Corrupt {
                name: name.to_owned(),
                reason: format!("schema {other:?} is not what this build reads ({SCHEMA})"),
            }),
        }
    }

    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// The published generation.
    pub(crate) fn generation(&self) -> Result<u64> {
        Ok(self
            .meta("generation")?
            .and_then(|g| g.parse().ok())
            .unwrap_or(0))
    }

    pub(crate) fn document(&self, id: &str) -> Result<Option<DocumentRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, source, version, kind, title, source_commit, class, groups, chunks
                 FROM documents WHERE id = ?1",
                [id],
                document_row,
            )
            .optional()?)
    }

    pub(crate) fn documents(&self) -> Result<Vec<DocumentRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, source, version, kind, title, source_commit, class, groups, chunks
             FROM documents ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], document_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Staged or indexed chunk ids of `doc` at `version`, in order, with whether all are
    /// indexed; empty if none were staged.
    pub(crate) fn prepared(&self, doc: &str, version: &str) -> Result<Vec<(u64, State)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, state FROM chunks WHERE doc_id = ?1 AND doc_version = ?2 AND state IN (0, 1)
             ORDER BY ordinal",
        )?;
        let rows = stmt
            .query_map(params![doc, version], |r| {
                let state: i64 = r.get(1)?;
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    if state == 1 {
                        State::Indexed
                    } else {
                        State::Staged
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Writes a document version's chunks as staged, in one transaction; returns their ids.
    pub(crate) fn stage(
        &mut self,
        doc: &str,
        version: &str,
        rank: u32,
        groups: &[String],
        chunks: &[NewChunk],
    ) -> Result<Vec<u64>> {
        let tx = self.conn.transaction()?;
        // A staging left by an earlier run for the same version is replaced whole.
        tx.execute(
            "DELETE FROM chunks WHERE doc_id = ?1 AND doc_version = ?2 AND state IN (0, 1)",
            params![doc, version],
        )?;
        let mut ids = Vec::with_capacity(chunks.len());
        {
            let mut insert = tx.prepare(
                "INSERT INTO chunks (doc_id, doc_version, ordinal, heading, location, text, tokens,
                                     class_rank, groups, vector, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0)",
            )?;
            let groups = groups_json(groups);
            for c in chunks {
                insert.execute(params![
                    doc,
                    version,
                    c.ordinal,
                    c.heading,
                    serde_json::to_string(&c.location).unwrap_or_default(),
                    c.text,
                    c.tokens as i64,
                    rank,
                    groups,
                    vector_bytes(&c.vector),
                ])?;
                ids.push(tx.last_insert_rowid() as u64);
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Texts (heading line, text) and vectors of chunks, for (re)indexing.
    pub(crate) fn chunk_content(&self, ids: &[u64]) -> Result<Vec<ChunkContent>> {
        let mut stmt = self
            .conn
            .prepare("SELECT heading, text, vector FROM chunks WHERE id = ?1")?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some((heading, text, vector)) = stmt
                .query_row([id as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()?
            {
                out.push(ChunkContent {
                    id,
                    heading,
                    text,
                    vector: vector_of(&vector),
                });
            }
        }
        Ok(out)
    }

    /// Records that `ids` are in both indexes and that the vector index is now `vector_file`,
    /// in one transaction.
    pub(crate) fn mark_indexed(&mut self, ids: &[u64], vector_file: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut update =
                tx.prepare("UPDATE chunks SET state = 1 WHERE id = ?1 AND state = 0")?;
            for &id in ids {
                update.execute([id as i64])?;
            }
            tx.execute(
                "INSERT INTO meta VALUES ('vector_file', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
                [vector_file],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Starts the publish transaction of a batch.
    pub(crate) fn begin(&mut self) -> Result<Publish<'_>> {
        let tx = self.conn.transaction()?;
        let generation: u64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get::<_, String>(0)
            })?
            .parse()
            .unwrap_or(0);
        Ok(Publish {
            tx,
            generation: generation + 1,
        })
    }

    /// Chunks no longer live, for removal from the indexes.
    pub(crate) fn retired(&self) -> Result<Vec<u64>> {
        let mut stmt = self.conn.prepare("SELECT id FROM chunks WHERE state = 3")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0).map(|i| i as u64))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// Staged or indexed chunks of versions no document wants any more (left by a run that
    /// stopped, then overtaken by another version), for removal.
    pub(crate) fn orphans(&self) -> Result<Vec<u64>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id FROM chunks c WHERE c.state IN (0, 1) AND NOT EXISTS (
                 SELECT 1 FROM documents d WHERE d.id = c.doc_id AND d.version = c.doc_version)",
        )?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0).map(|i| i as u64))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// Deletes chunk rows once the indexes no longer hold them (the vector index now being
    /// `vector_file`), in one transaction.
    pub(crate) fn delete_chunks(&mut self, ids: &[u64], vector_file: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut delete = tx.prepare("DELETE FROM chunks WHERE id = ?1")?;
            for &id in ids {
                delete.execute([id as i64])?;
            }
            tx.execute(
                "INSERT INTO meta VALUES ('vector_file', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
                [vector_file],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every live chunk's id, class rank and groups; with `attested`, only the chunks whose
    /// document it names with that rank and those groups.
    pub(crate) fn visible(
        &self,
        attested: Option<&crate::class::Attested>,
    ) -> Result<HashMap<u64, Visible>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, class_rank, groups, doc_id FROM chunks WHERE state = 2")?;
        let mut map = HashMap::new();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let groups: String = r.get(2)?;
            let visible = Visible {
                rank: r.get(1)?,
                groups: if groups == "[]" {
                    Vec::new()
                } else {
                    groups_of(&groups)
                },
            };
            if let Some(attested) = attested {
                let doc: String = r.get(3)?;
                if !attested.admits(&doc, visible.rank, &visible.groups) {
                    continue;
                }
            }
            map.insert(r.get::<_, i64>(0)? as u64, visible);
        }
        Ok(map)
    }

    /// Live chunks counted by document, class rank and groups.
    pub(crate) fn live_classes(&self) -> Result<Vec<LiveClass>> {
        let mut stmt = self.conn.prepare(
            "SELECT doc_id, class_rank, groups, COUNT(*) FROM chunks WHERE state = 2
             GROUP BY doc_id, class_rank, groups ORDER BY doc_id, class_rank",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let groups: String = r.get(2)?;
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    groups_of(&groups),
                    r.get::<_, i64>(3)? as u64,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Live or indexed chunk ids and vectors (for an exact search among a few, or a rebuild).
    pub(crate) fn vectors(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT vector FROM chunks WHERE id = ?1")?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(v) = stmt
                .query_row([id as i64], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
            {
                out.push((id, vector_of(&v)));
            }
        }
        Ok(out)
    }

    /// Up to `limit` live and indexed chunks after id `after`, in id order: id and embedding
    /// text (a rebuild with another model pages through them).
    pub(crate) fn texts_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, heading, text FROM chunks WHERE state IN (1, 2) AND id > ?1 \
             ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![after as i64, limit as i64], |r| {
                let heading: String = r.get(1)?;
                let text: String = r.get(2)?;
                let embedded = if heading.is_empty() {
                    text
                } else {
                    format!("{heading}\n{text}")
                };
                Ok((r.get::<_, i64>(0)? as u64, embedded))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Empties the table a rebuild stages new vectors in (what an interrupted one left).
    pub(crate) fn clear_rebuild(&self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS rebuild (id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
             DELETE FROM rebuild;",
        )?;
        Ok(())
    }

    /// Stages new vectors of a rebuild (nothing searches them until `finish_rebuild`).
    pub(crate) fn stage_rebuild(&mut self, vectors: &[(u64, Vec<f32>)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare("INSERT OR REPLACE INTO rebuild VALUES (?1, ?2)")?;
            for (id, v) in vectors {
                insert.execute(params![*id as i64, vector_bytes(v)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Puts every staged vector in place and records the embedding model, in one transaction.
    pub(crate) fn finish_rebuild(&mut self, meta: &[(&str, String)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            tx.execute(
                "UPDATE chunks SET vector = (SELECT vector FROM rebuild WHERE rebuild.id = chunks.id) \
                 WHERE id IN (SELECT id FROM rebuild)",
                [],
            )?;
            tx.execute("DELETE FROM rebuild", [])?;
            for (key, value) in meta {
                tx.execute(
                    "INSERT INTO meta VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
                    params![key, value],
                )?;
            }
            let generation: u64 = tx
                .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                    r.get::<_, String>(0)
                })?
                .parse()
                .unwrap_or(0);
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'generation'",
                [(generation + 1).to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Chunks by id, with their document's class, title and commit.
    pub(crate) fn chunks(
        &self,
        ids: &[u64],
        classes: &crate::class::Classes,
    ) -> Result<Vec<ChunkRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.doc_id, c.doc_version, c.ordinal, c.heading, c.location, c.text,
                    c.class_rank, d.title, d.source_commit
             FROM chunks c LEFT JOIN documents d ON d.id = c.doc_id WHERE c.id = ?1",
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(row) = stmt
                .query_row([id as i64], |r| {
                    let location: String = r.get(5)?;
                    let rank: u32 = r.get(7)?;
                    Ok(ChunkRow {
                        id: r.get::<_, i64>(0)? as u64,
                        document: r.get(1)?,
                        document_version: r.get(2)?,
                        ordinal: r.get(3)?,
                        heading: r.get(4)?,
                        location: serde_json::from_str(&location)
                            .unwrap_or(Location::Block { index: 0 }),
                        text: r.get(6)?,
                        class: classes.name(rank).unwrap_or("?").to_owned(),
                        title: r.get(8)?,
                        commit: r.get(9)?,
                    })
                })
                .optional()?
            {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// How much it holds.
    pub(crate) fn counts(&self) -> Result<Counts> {
        let documents: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM documents", [], |r| r.get(0))?;
        let live: i64 =
            self.conn
                .query_row("SELECT COUNT(*) FROM chunks WHERE state = 2", [], |r| {
                    r.get(0)
                })?;
        let pending: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM chunks WHERE state IN (0, 1)",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT class_rank, COUNT(*) FROM chunks WHERE state = 2 GROUP BY class_rank ORDER BY class_rank",
        )?;
        let by_class = stmt
            .query_map([], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Counts {
            documents: documents as u64,
            live: live as u64,
            pending: pending as u64,
            by_class,
        })
    }
}

fn document_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DocumentRow> {
    let groups: String = r.get(7)?;
    Ok(DocumentRow {
        id: r.get(0)?,
        source: r.get(1)?,
        version: r.get(2)?,
        kind: r.get(3)?,
        title: r.get(4)?,
        commit: r.get(5)?,
        class: r.get(6)?,
        groups: groups_of(&groups),
        chunks: r.get::<_, i64>(8)? as u64,
    })
}

/// One batch's publish: documents and their chunks change together, at one generation.
pub(crate) struct Publish<'c> {
    tx: Transaction<'c>,
    generation: u64,
}

impl Publish<'_> {
    /// Makes `doc`'s prepared chunks of `row.version` live (at class `rank`) and retires its
    /// others.
    pub(crate) fn document(&self, row: &DocumentRow, rank: u32, bytes: u64) -> Result<()> {
        self.tx.execute(
            "UPDATE chunks SET state = 3 WHERE doc_id = ?1 AND state = 2",
            [&row.id],
        )?;
        self.tx.execute(
            "UPDATE chunks SET state = 2, class_rank = ?3, groups = ?4
             WHERE doc_id = ?1 AND doc_version = ?2 AND state = 1",
            params![row.id, row.version, rank, groups_json(&row.groups)],
        )?;
        self.tx.execute(
            "INSERT INTO documents (id, version, kind, title, source_commit, class, groups, chunks, bytes, published, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (id) DO UPDATE SET version = ?2, kind = ?3, title = ?4, source_commit = ?5,
                 class = ?6, groups = ?7, chunks = ?8, bytes = ?9, published = ?10, source = ?11",
            params![
                row.id,
                row.version,
                row.kind,
                row.title,
                row.commit,
                row.class,
                groups_json(&row.groups),
                row.chunks as i64,
                bytes as i64,
                self.generation as i64,
                row.source,
            ],
        )?;
        Ok(())
    }

    /// Gives a document (unchanged content) a new class and groups.
    pub(crate) fn reclassify(
        &self,
        id: &str,
        class: &str,
        rank: u32,
        groups: &[String],
    ) -> Result<()> {
        self.tx.execute(
            "UPDATE chunks SET class_rank = ?2, groups = ?3 WHERE doc_id = ?1 AND state IN (0, 1, 2)",
            params![id, rank, groups_json(groups)],
        )?;
        self.tx.execute(
            "UPDATE documents SET class = ?2, groups = ?3 WHERE id = ?1",
            params![id, class, groups_json(groups)],
        )?;
        Ok(())
    }

    /// Removes a document: its chunks are retired.
    pub(crate) fn remove(&self, id: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE chunks SET state = 3 WHERE doc_id = ?1 AND state IN (0, 1, 2)",
            [id],
        )?;
        self.tx
            .execute("DELETE FROM documents WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Commits the batch as the next generation.
    pub(crate) fn commit(self) -> Result<u64> {
        self.tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'generation'",
            [self.generation.to_string()],
        )?;
        self.tx.commit()?;
        Ok(self.generation)
    }
}
