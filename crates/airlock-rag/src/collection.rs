//! A collection: its directory, ingest (incremental, crash-safe), and hybrid retrieval
//! filtered by clearance inside both searches.
//!
//! Layout under the data directory: `collections/NAME/collection.db` (the source of truth,
//! [`crate::store`]), `keyword/` (tantivy), `vectors-N.usearch` (the vector index the
//! database names), `write.lock` (one writer at a time).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use airlock_engine::Embedder;
use serde::Serialize;

use crate::chunk::{Chunk, chunks};
use crate::class::{Attested, Classes, Clearance, check_name};
use crate::keyword::KeywordIndex;
use crate::parse::worker::{Parser, Source};
use crate::parse::{Format, ParseLimits, sha256_hex};
use crate::rules::{Classification, Rules};
use crate::sources::{Content, SourceFile};
use crate::store::{ChunkRow, DocumentRow, NewChunk, State, Store, Visible};
use crate::vector::{VectorIndex, cosine};
use crate::{Error, Result};

/// Texts embedded in one call.
const EMBED_BATCH: usize = 32;
/// Chunks staged before the indexes are committed (the vector index file is rewritten at
/// each commit, so a large collection commits less often: every eighth of its size, up to
/// a ceiling that bounds the chunks held in memory).
const INDEX_BATCH: usize = 2048;
const INDEX_BATCH_CEILING: usize = 32_768;
/// Chunks gathered from consecutive documents before they are embedded together.
const EMBED_ACROSS: usize = 256;
/// Vectors an exact search reads at a time.
const EXACT_PAGE: usize = 4096;
/// Chunks a rebuild reads, embeds and stages at a time.
const REBUILD_PAGE: usize = 4096;

/// The embedding model a collection is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbeddingPin {
    /// The reference it was given by (`all-minilm-l6-v2:prod`).
    pub reference: String,
    /// `sha256:<hex>` of the approved bundle.
    pub digest: String,
    /// Length of its vectors.
    pub dimension: usize,
}

/// What `collection show` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionInfo {
    /// Its name.
    pub name: String,
    /// Its embedding model.
    pub embedding: EmbeddingPin,
    /// Its classes, least sensitive first.
    pub classes: Vec<String>,
    /// The class of documents nothing else classifies.
    pub default_class: String,
    /// Documents.
    pub documents: u64,
    /// Live chunks.
    pub chunks: u64,
    /// Live chunks per class.
    pub chunks_by_class: Vec<(String, u64)>,
    /// Chunks prepared by an ingest that has not finished.
    pub pending_chunks: u64,
    /// The published generation (each finished ingest adds one).
    pub generation: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// How to ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// The class of documents no rule classifies (else the collection's default).
    pub class: Option<String>,
    /// Rules by path and export field.
    pub rules: Option<PathBuf>,
    /// Remove documents of the given inputs that are no longer there.
    pub prune: bool,
    /// The revision of git repositories among the inputs (default `HEAD`).
    pub rev: Option<String>,
    /// Parser limits.
    pub limits: ParseLimits,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    /// Documents new to the collection.
    pub added: Vec<String>,
    /// Documents whose content changed.
    pub changed: Vec<String>,
    /// Documents unchanged (content and class).
    pub unchanged: usize,
    /// Documents whose class or groups changed, content unchanged (nothing re-embedded).
    pub reclassified: Vec<String>,
    /// Documents removed by `--prune`.
    pub removed: Vec<String>,
    /// Documents that could not be read, each with its reason.
    pub failed: Vec<(String, String)>,
    /// Files passed over (no parser for their type, or binary).
    pub skipped: Vec<String>,
    /// Chunks embedded by this run.
    pub embedded_chunks: usize,
    /// Chunks an interrupted earlier run had prepared, reused without embedding.
    pub reused_chunks: usize,
    /// The generation published.
    pub generation: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// Every document the run read, with the class and groups it decided (for unchanged
    /// documents, the ones they keep): id, class, groups. Failed documents are not in it.
    #[serde(skip)]
    pub classes: Vec<(String, String, Vec<String>)>,
}

/// A collection's classes as its database holds them: what [`Collection::class_rows`]
/// returns for checking against a record kept elsewhere.
#[derive(Debug, Clone, Default)]
pub struct ClassRows {
    /// The collection's classes, least sensitive first.
    pub classes: Vec<String>,
    /// Each document's id, class and groups.
    pub documents: Vec<(String, String, Vec<String>)>,
    /// Live chunks counted by document, class rank and groups.
    pub chunks: Vec<(String, u32, Vec<String>, u64)>,
}

impl IngestReport {
    /// Counts `id` as changed or added.
    fn note_change(&mut self, id: &str, changed: bool) {
        if changed {
            self.changed.push(id.to_owned());
        } else {
            self.added.push(id.to_owned());
        }
    }
}

/// A document cut into chunks, waiting to be embedded with its neighbours.
struct Cut {
    /// Its row as it will be published (`chunks` set once staged).
    row: DocumentRow,
    /// Its class's rank.
    rank: u32,
    /// Bytes read.
    bytes: u64,
    /// Whether it replaces an earlier version.
    changed: bool,
    chunks: Vec<Chunk>,
}

/// Where an ingest is, for progress bars.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// `done` of `total` files read.
    Files {
        /// Done.
        done: usize,
        /// In all.
        total: usize,
    },
}

/// How hybrid retrieval weighs its two searches (reciprocal-rank fusion).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Weight of the dense (vector) ranking.
    pub dense: f32,
    /// Weight of the keyword (BM25) ranking.
    pub keyword: f32,
    /// Candidates each search contributes (at least `k`).
    pub candidates: usize,
}

impl Default for Weights {
    /// Chosen by measurement (`scripts/eval-rag.sh`, PostgreSQL's manual, 400 questions):
    /// nDCG@10 was 0.539 dense alone, 0.481 BM25 alone, 0.577 / 0.591 / 0.595 / 0.598 / 0.593
    /// fused with the keyword side at 0.1 / 0.2 / 0.3 / 0.5 / 1.0. Questions phrased as
    /// sentences favour the dense side more than that corpus's headings do, so the default
    /// stays below the best weight there.
    fn default() -> Self {
        Self {
            dense: 1.0,
            keyword: 0.3,
            candidates: 50,
        }
    }
}

/// The constant of reciprocal-rank fusion.
const RRF_K: f32 = 60.0;

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// The chunk.
    #[serde(flatten)]
    pub chunk: ChunkRow,
    /// Its fused score.
    pub score: f32,
}

impl Serialize for ChunkRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Chunk", 8)?;
        st.serialize_field("document", &self.document)?;
        st.serialize_field("chunk", &self.id)?;
        st.serialize_field("class", &self.class)?;
        st.serialize_field("heading", &self.heading)?;
        st.serialize_field("location", &self.location.describe())?;
        st.serialize_field("text", &self.text)?;
        st.serialize_field("title", &self.title)?;
        st.serialize_field("commit", &self.commit)?;
        st.end()
    }
}

/// The live chunks of one published generation (as attested, if it is).
struct VisibleAt {
    generation: u64,
    attested: Option<Arc<Attested>>,
    chunks: Arc<HashMap<u64, Visible>>,
}

/// A collection, open for searching (or, with [`Collection::open_writer`], for changes).
pub struct Collection {
    name: String,
    dir: PathBuf,
    store: Store,
    keyword: KeywordIndex,
    vectors: VectorIndex,
    vector_file: Option<String>,
    classes: Classes,
    default_class: String,
    pin: EmbeddingPin,
    visible: Mutex<Option<VisibleAt>>,
    attested: Option<Arc<Attested>>,
    _lock: Option<File>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The directory holding every collection of a data directory.
pub fn collections_dir(data: &Path) -> PathBuf {
    data.join("collections")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        path: path.to_owned(),
        source: e,
    }
}

impl Collection {
    /// Creates collection `name` under `data`, pinned to `pin`, with `classes` and
    /// `default_class`.
    pub fn create(
        data: &Path,
        name: &str,
        pin: &EmbeddingPin,
        classes: &Classes,
        default_class: &str,
    ) -> Result<CollectionInfo> {
        check_name("collection name", name)?;
        classes.rank(default_class)?;
        let root = collections_dir(data);
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let dir = root.join(name);
        if dir.exists() {
            return Err(Error::Exists { name: name.into() });
        }
        // Built beside, then renamed into place: a failed create leaves nothing.
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}-"))
            .tempdir_in(&root)
            .map_err(io(&root))?;
        Store::create(
            &staging.path().join("collection.db"),
            &[
                ("name", name.to_owned()),
                ("embed_ref", pin.reference.clone()),
                ("embed_digest", pin.digest.clone()),
                ("dimension", pin.dimension.to_string()),
                (
                    "classes",
                    serde_json::to_string(classes.names()).unwrap_or_default(),
                ),
                ("default_class", default_class.to_owned()),
            ],
        )?;
        KeywordIndex::open(&staging.path().join("keyword"))?;
        let staged = staging.keep();
        std::fs::rename(&staged, &dir).map_err(io(&dir))?;
        Self::open(data, name)?.info()
    }

    /// The names of every collection under `data`.
    pub fn names(data: &Path) -> Result<Vec<String>> {
        let root = collections_dir(data);
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("collection.db").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Opens collection `name` for searching.
    pub fn open(data: &Path, name: &str) -> Result<Self> {
        Self::open_with(data, name, false)
    }

    /// Opens collection `name` for changes: one writer at a time.
    pub fn open_writer(data: &Path, name: &str) -> Result<Self> {
        Self::open_with(data, name, true)
    }

    fn open_with(data: &Path, name: &str, write: bool) -> Result<Self> {
        check_name("collection name", name)?;
        let dir = collections_dir(data).join(name);
        let db = dir.join("collection.db");
        if !db.is_file() {
            return Err(Error::NotFound { name: name.into() });
        }
        let lock = if write {
            let path = dir.join("write.lock");
            let file = File::create(&path).map_err(io(&path))?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
                |_| Error::Usage(format!("collection {name:?} is being changed by another process; try again when it is done")),
            )?;
            Some(file)
        } else {
            None
        };
        let store = Store::open(&db, name)?;
        let corrupt = |reason: &str| Error::Corrupt {
            name: name.into(),
            reason: reason.into(),
        };
        let classes: Vec<String> = store
            .meta("classes")?
            .and_then(|c| serde_json::from_str(&c).ok())
            .ok_or_else(|| corrupt("no classes"))?;
        let classes = Classes::new(classes)?;
        let pin = EmbeddingPin {
            reference: store.meta("embed_ref")?.unwrap_or_default(),
            digest: store
                .meta("embed_digest")?
                .ok_or_else(|| corrupt("no embedding model"))?,
            dimension: store
                .meta("dimension")?
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| corrupt("no dimension"))?,
        };
        let default_class = store
            .meta("default_class")?
            .unwrap_or_else(|| classes.lowest().to_owned());
        let keyword = KeywordIndex::open(&dir.join("keyword"))?;
        let vector_file = store.meta("vector_file")?;
        let vectors = match &vector_file {
            Some(file) if write => VectorIndex::load(&dir.join(file), pin.dimension)?,
            Some(file) => VectorIndex::view(&dir.join(file), pin.dimension)?,
            None => VectorIndex::new(pin.dimension)?,
        };
        Ok(Self {
            name: name.to_owned(),
            dir,
            store,
            keyword,
            vectors,
            vector_file,
            classes,
            default_class,
            pin,
            visible: Mutex::new(None),
            attested: None,
            _lock: lock,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its classes.
    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// The embedding model it is pinned to.
    pub fn pin(&self) -> &EmbeddingPin {
        &self.pin
    }

    /// Refuses an embedding model other than the one its vectors were made with.
    pub fn check_model(&self, digest: &str) -> Result<()> {
        if digest == self.pin.digest {
            Ok(())
        } else {
            Err(Error::ModelMismatch {
                name: self.name.clone(),
                pinned: self.pin.digest.clone(),
                offered: digest.to_owned(),
            })
        }
    }

    /// What it holds.
    pub fn info(&self) -> Result<CollectionInfo> {
        let counts = self.store.counts()?;
        let bytes = dir_size(&self.dir);
        Ok(CollectionInfo {
            name: self.name.clone(),
            embedding: self.pin.clone(),
            classes: self.classes.names().to_vec(),
            default_class: self.default_class.clone(),
            documents: counts.documents,
            chunks: counts.live,
            chunks_by_class: counts
                .by_class
                .into_iter()
                .map(|(rank, n)| (self.classes.name(rank).unwrap_or("?").to_owned(), n))
                .collect(),
            pending_chunks: counts.pending,
            generation: self.store.generation()?,
            bytes,
        })
    }

    /// Its documents.
    pub fn documents(&self) -> Result<Vec<DocumentRow>> {
        self.store.documents()
    }

    /// Its classes, each document's class and groups, and the class and groups of its live
    /// chunks, as the database holds them.
    pub fn class_rows(&self) -> Result<ClassRows> {
        Ok(ClassRows {
            classes: self.classes.names().to_vec(),
            documents: self
                .store
                .documents()?
                .into_iter()
                .map(|d| (d.id, d.class, d.groups))
                .collect(),
            chunks: self.store.live_classes()?,
        })
    }

    /// From now on, searches see only what `attested` records (see [`Attested`]); `None`
    /// goes back to the database alone.
    pub fn attest(&mut self, attested: Option<Arc<Attested>>) {
        self.attested = attested;
    }

    /// Sets how many candidates the vector search keeps (more: better recall, slower).
    pub fn set_vector_expansion(&self, expansion: usize) {
        self.vectors.set_expansion(expansion);
    }

    /// Bytes the vector index takes (in memory or mapped).
    pub fn vector_index_bytes(&self) -> usize {
        self.vectors.memory()
    }

    /// Ingests `inputs` (files, trees, git repositories, exports): new and changed documents
    /// are parsed in `parser`, chunked in `embedder`'s tokens, embedded and indexed, and
    /// published together at the end; unchanged ones cost a hash.
    pub fn ingest(
        &mut self,
        inputs: &[PathBuf],
        options: &IngestOptions,
        parser: &mut Parser,
        embedder: &dyn Embedder,
        embedder_digest: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<IngestReport> {
        self.writable()?;
        self.check_model(embedder_digest)?;
        if embedder.dimension() != self.pin.dimension {
            return Err(Error::Usage(format!(
                "the embedding model makes {}-long vectors; the collection holds {}",
                embedder.dimension(),
                self.pin.dimension
            )));
        }
        let started = Instant::now();
        let rules = match &options.rules {
            Some(path) => Rules::load(path, &self.classes)?,
            None => Rules::default(),
        };
        let fallback = options
            .class
            .clone()
            .unwrap_or_else(|| self.default_class.clone());
        self.classes.rank(&fallback)?;
        let mut report = IngestReport::default();
        let mut files = Vec::new();
        let mut roots = Vec::new();
        for input in inputs {
            let expanded = crate::sources::expand(input, options.rev.as_deref(), &options.limits)?;
            roots.push(
                input
                    .canonicalize()
                    .map_err(io(input))?
                    .to_string_lossy()
                    .into_owned(),
            );
            report.skipped.extend(expanded.skipped);
            files.extend(expanded.files);
        }
        let mut repos: HashMap<String, git2::Repository> = HashMap::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut publish: Vec<(DocumentRow, u64)> = Vec::new();
        let mut reclassify: Vec<(String, Classification)> = Vec::new();
        // Unchanged documents, with the class and groups they keep.
        let mut kept: Vec<(String, String, Vec<String>)> = Vec::new();
        let mut pending: Vec<u64> = Vec::new();
        let mut to_embed: Vec<Cut> = Vec::new();
        let max_tokens = embedder.max_tokens();
        let count = |text: &str| embedder.count_tokens(text).unwrap_or(text.len() / 3 + 2);
        let total = files.len();
        for (n, file) in files.iter().enumerate() {
            progress(Progress::Files { done: n, total });
            let bytes = match read_source(file, &mut repos, &options.limits) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    report.skipped.push(file.relative.clone());
                    continue;
                }
                Err(reason) => {
                    seen.insert(file.id.clone());
                    report.failed.push((file.id.clone(), reason));
                    continue;
                }
            };
            let file_version = sha256_hex(&bytes);
            // A file that is one document and unchanged costs its hash and no parse.
            if file.format != Format::Json
                && let Some(existing) = self.store.document(&file.id)?
                && existing.version == file_version
            {
                seen.insert(file.id.clone());
                let class = rules
                    .classify(&file.relative, &[])
                    .unwrap_or_else(|| Classification {
                        class: fallback.clone(),
                        groups: Vec::new(),
                    });
                if class.class != existing.class || class.groups != existing.groups {
                    report.reclassified.push(file.id.clone());
                    reclassify.push((file.id.clone(), class));
                } else {
                    report.unchanged += 1;
                    kept.push((file.id.clone(), class.class, class.groups));
                }
                continue;
            }
            let items = match parser.parse(Source::Bytes(&bytes), file.format, &options.limits) {
                Ok(items) => items,
                Err(reason) => {
                    seen.insert(file.id.clone());
                    report.failed.push((file.id.clone(), reason));
                    continue;
                }
            };
            for item in items {
                let id = match &item.key {
                    Some(key) => format!("{}:{key}", item.kind),
                    None => file.id.clone(),
                };
                seen.insert(id.clone());
                let version = item
                    .content_sha256
                    .clone()
                    .unwrap_or_else(|| file_version.clone());
                let class = rules
                    .classify(&file.relative, &item.parsed.fields)
                    .unwrap_or_else(|| Classification {
                        class: fallback.clone(),
                        groups: Vec::new(),
                    });
                let rank = self.classes.rank(&class.class)?;
                let existing = self.store.document(&id)?;
                if let Some(existing) = &existing
                    && existing.version == version
                {
                    if class.class != existing.class || class.groups != existing.groups {
                        report.reclassified.push(id.clone());
                        reclassify.push((id, class));
                    } else {
                        report.unchanged += 1;
                        kept.push((id, class.class, class.groups));
                    }
                    continue;
                }
                let row = DocumentRow {
                    id: id.clone(),
                    source: file.root.clone(),
                    version: version.clone(),
                    kind: item.kind.clone(),
                    title: item.parsed.title.clone(),
                    commit: file.commit.clone(),
                    class: class.class,
                    groups: class.groups,
                    chunks: 0,
                };
                let document = Cut {
                    row,
                    rank,
                    bytes: bytes.len() as u64,
                    changed: existing.is_some(),
                    chunks: Vec::new(),
                };
                let prepared = self.store.prepared(&id, &version)?;
                if prepared.is_empty() {
                    let chunks = chunks(&item.parsed, max_tokens.saturating_sub(2).max(16), &count);
                    to_embed.push(Cut { chunks, ..document });
                } else {
                    // A staging already indexed needs nothing more; one that is not yet is
                    // indexed with the next batch.
                    report.reused_chunks += prepared.len();
                    pending.extend(
                        prepared
                            .iter()
                            .filter(|(_, state)| *state == State::Staged)
                            .map(|(id, _)| *id),
                    );
                    let chunk_count = prepared.len() as u64;
                    report.note_change(&document.row.id, document.changed);
                    publish.push((
                        DocumentRow {
                            chunks: chunk_count,
                            ..document.row
                        },
                        document.bytes,
                    ));
                }
                if to_embed.iter().map(|d| d.chunks.len()).sum::<usize>() >= EMBED_ACROSS {
                    self.embed_and_stage(
                        &mut to_embed,
                        embedder,
                        &mut report,
                        &mut pending,
                        &mut publish,
                    )?;
                }
                if pending.len() >= (self.vectors.len() / 8).clamp(INDEX_BATCH, INDEX_BATCH_CEILING)
                {
                    self.index(&std::mem::take(&mut pending))?;
                }
            }
        }
        self.embed_and_stage(
            &mut to_embed,
            embedder,
            &mut report,
            &mut pending,
            &mut publish,
        )?;
        progress(Progress::Files { done: total, total });
        self.index(&std::mem::take(&mut pending))?;
        let removed: Vec<String> = if options.prune {
            self.store
                .documents()?
                .into_iter()
                .filter(|d| {
                    roots
                        .iter()
                        .any(|r| d.source == *r || d.source.starts_with(&format!("{r}/")))
                        && !seen.contains(&d.id)
                })
                .map(|d| d.id)
                .collect()
        } else {
            Vec::new()
        };
        // Everything this run changes becomes visible at once.
        let tx = self.store.begin()?;
        for (row, bytes) in &publish {
            tx.document(row, self.classes.rank(&row.class)?, *bytes)?;
        }
        for (id, class) in &reclassify {
            tx.reclassify(
                id,
                &class.class,
                self.classes.rank(&class.class)?,
                &class.groups,
            )?;
        }
        for id in &removed {
            tx.remove(id)?;
        }
        report.generation = tx.commit()?;
        report.removed = removed;
        report.classes = publish
            .into_iter()
            .map(|(row, _)| (row.id, row.class, row.groups))
            .chain(
                reclassify
                    .into_iter()
                    .map(|(id, class)| (id, class.class, class.groups)),
            )
            .chain(kept)
            .collect();
        self.sweep()?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Embeds the chunks of `documents` together (a batch per call whatever the documents'
    /// sizes: most are a few chunks long) and stages each document's chunks.
    fn embed_and_stage(
        &mut self,
        documents: &mut Vec<Cut>,
        embedder: &dyn Embedder,
        report: &mut IngestReport,
        pending: &mut Vec<u64>,
        publish: &mut Vec<(DocumentRow, u64)>,
    ) -> Result<()> {
        let texts: Vec<String> = documents
            .iter()
            .flat_map(|d| d.chunks.iter().map(Chunk::embedding_text))
            .collect();
        // Texts of like length share a batch, so little of a batch is padding.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        let lengths: Vec<usize> = documents
            .iter()
            .flat_map(|d| d.chunks.iter().map(|c| c.tokens))
            .collect();
        order.sort_by_key(|&i| lengths[i]);
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for batch in order.chunks(EMBED_BATCH) {
            let embedded =
                block_on(embedder.embed(batch.iter().map(|&i| texts[i].clone()).collect()))?;
            for (&i, vector) in batch.iter().zip(embedded.vectors) {
                vectors[i] = vector;
            }
        }
        let mut vectors = vectors.into_iter();
        for document in documents.drain(..) {
            let count = document.chunks.len();
            report.embedded_chunks += count;
            let new: Vec<NewChunk> = document
                .chunks
                .into_iter()
                .zip(vectors.by_ref())
                .enumerate()
                .map(|(i, (c, vector))| NewChunk {
                    ordinal: i as u32,
                    heading: c.heading_line(),
                    location: c.location,
                    text: c.text,
                    tokens: c.tokens,
                    vector,
                })
                .collect();
            let row = &document.row;
            pending.extend(self.store.stage(
                &row.id,
                &row.version,
                document.rank,
                &row.groups,
                &new,
            )?);
            report.note_change(&row.id, document.changed);
            publish.push((
                DocumentRow {
                    chunks: count as u64,
                    ..document.row
                },
                document.bytes,
            ));
        }
        Ok(())
    }

    /// Puts staged chunks into both indexes and records it.
    fn index(&mut self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let chunks = self.store.chunk_content(ids)?;
        for chunk in &chunks {
            self.keyword.upsert(chunk.id, &chunk.heading, &chunk.text)?;
        }
        let vectors: Vec<(u64, &[f32])> = chunks
            .iter()
            .map(|chunk| (chunk.id, chunk.vector.as_slice()))
            .collect();
        self.vectors.upsert_all(&vectors)?;
        self.keyword.commit()?;
        let file = self.save_vectors()?;
        self.store.mark_indexed(ids, &file)?;
        self.forget_old_vector_files(&file);
        Ok(())
    }

    /// Writes the vector index to a new file (the database names the current one).
    fn save_vectors(&mut self) -> Result<String> {
        let next = self
            .vector_file
            .as_deref()
            .and_then(|f| {
                f.strip_prefix("vectors-")?
                    .strip_suffix(".usearch")?
                    .parse::<u64>()
                    .ok()
            })
            .map_or(1, |n| n + 1);
        let name = format!("vectors-{next}.usearch");
        self.vectors.save(&self.dir.join(&name))?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(name)
    }

    /// Removes vector files other than `current`.
    fn forget_old_vector_files(&mut self, current: &str) {
        self.vector_file = Some(current.to_owned());
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("vectors-") && name.ends_with(".usearch") && name != current {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Drops retired chunks, and stagings no document wants, from the indexes and the
    /// database.
    fn sweep(&mut self) -> Result<()> {
        let mut gone = self.store.retired()?;
        gone.extend(self.store.orphans()?);
        if gone.is_empty() {
            return Ok(());
        }
        for &id in &gone {
            self.keyword.remove(id)?;
            self.vectors.remove(id)?;
        }
        self.keyword.commit()?;
        let file = self.save_vectors()?;
        self.store.delete_chunks(&gone, &file)?;
        self.forget_old_vector_files(&file);
        Ok(())
    }

    fn writable(&self) -> Result<()> {
        if self._lock.is_none() {
            return Err(Error::Usage(format!(
                "collection {:?} was opened for searching, not for changes",
                self.name
            )));
        }
        Ok(())
    }

    /// Removes one document.
    pub fn remove_document(&mut self, id: &str) -> Result<u64> {
        self.writable()?;
        if self.store.document(id)?.is_none() {
            return Err(Error::NoDocument {
                collection: self.name.clone(),
                document: id.to_owned(),
            });
        }
        let tx = self.store.begin()?;
        tx.remove(id)?;
        let generation = tx.commit()?;
        self.sweep()?;
        Ok(generation)
    }

    /// Re-embeds every chunk with another model (a complete rebuild, never a mix): the new
    /// vectors and the new pin take effect together.
    pub fn rebuild(&mut self, embedder: &dyn Embedder, pin: &EmbeddingPin) -> Result<usize> {
        self.writable()?;
        if embedder.dimension() != pin.dimension {
            return Err(Error::Usage(
                "the model's dimension does not match its pin".into(),
            ));
        }
        // Pages of chunks are embedded into a new index and staged beside the old vectors,
        // which searches keep using until the one transaction that swaps them: memory holds
        // the index being built and one page, whatever the collection's size.
        self.store.clear_rebuild()?;
        let mut index = VectorIndex::new(pin.dimension)?;
        let mut embedded_count = 0;
        let mut after = 0;
        loop {
            let page = self.store.texts_after(after, REBUILD_PAGE)?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            after = last;
            let mut vectors = Vec::with_capacity(page.len());
            for batch in page.chunks(EMBED_BATCH) {
                let embedded =
                    block_on(embedder.embed(batch.iter().map(|(_, t)| t.clone()).collect()))?;
                vectors.extend(batch.iter().map(|(id, _)| *id).zip(embedded.vectors));
            }
            let items: Vec<(u64, &[f32])> =
                vectors.iter().map(|(id, v)| (*id, v.as_slice())).collect();
            index.upsert_all(&items)?;
            self.store.stage_rebuild(&vectors)?;
            embedded_count += vectors.len();
        }
        let old = std::mem::replace(&mut self.vectors, index);
        let file = match self.save_vectors() {
            Ok(file) => file,
            Err(e) => {
                self.vectors = old;
                return Err(e);
            }
        };
        self.store.finish_rebuild(&[
            ("embed_ref", pin.reference.clone()),
            ("embed_digest", pin.digest.clone()),
            ("dimension", pin.dimension.to_string()),
            ("vector_file", file.clone()),
        ])?;
        self.pin = pin.clone();
        self.forget_old_vector_files(&file);
        Ok(embedded_count)
    }

    /// The live chunks a search may consider, for the published generation and, if the
    /// collection is attested, as attested.
    fn visible(&self) -> Result<Arc<HashMap<u64, Visible>>> {
        let generation = self.store.generation()?;
        let mut cached = self.visible.lock().unwrap_or_else(PoisonError::into_inner);
        let same_attestation = |at: &VisibleAt| match (&at.attested, &self.attested) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if let Some(at) = cached.as_ref()
            && at.generation == generation
            && same_attestation(at)
        {
            return Ok(Arc::clone(&at.chunks));
        }
        let chunks = match &self.attested {
            // Classes other than the recorded ones: no rank can be trusted.
            Some(attested) if attested.classes() != self.classes.names() => HashMap::new(),
            attested => self.store.visible(attested.as_deref())?,
        };
        let chunks = Arc::new(chunks);
        *cached = Some(VisibleAt {
            generation,
            attested: self.attested.clone(),
            chunks: Arc::clone(&chunks),
        });
        Ok(chunks)
    }

    /// Rereads what another process has published (a long-running searcher calls this
    /// before searching).
    pub fn refresh(&mut self) -> Result<()> {
        self.keyword.reload()?;
        let current = self.store.meta("vector_file")?;
        if current != self.vector_file
            && let Some(file) = &current
        {
            self.vectors = VectorIndex::view(&self.dir.join(file), self.pin.dimension)?;
            self.vector_file = current;
        }
        Ok(())
    }

    /// Embeds a query with the collection's model.
    pub async fn embed_query(embedder: &dyn Embedder, query: &str) -> Result<Vec<f32>> {
        let mut embedded = embedder.embed(vec![query.to_owned()]).await?;
        embedded
            .vectors
            .pop()
            .ok_or_else(|| Error::Vector("the model returned no vector".into()))
    }

    /// The `k` best chunks for `query` (whose embedding is `vector`) that `clearance` may
    /// read: dense and keyword rankings, each filtered inside its search, fused by weighted
    /// reciprocal rank. Returns `k` results whenever `k` eligible chunks exist.
    pub fn search(
        &self,
        query: &str,
        vector: &[f32],
        clearance: &Clearance,
        k: usize,
        weights: &Weights,
    ) -> Result<Vec<Hit>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let visible = self.visible()?;
        let admit = {
            let visible = Arc::clone(&visible);
            let clearance = clearance.clone();
            Arc::new(move |id: u64| {
                visible
                    .get(&id)
                    .is_some_and(|v| clearance.admits(v.rank, &v.groups))
            })
        };
        let want = weights.candidates.max(k);
        let mut dense = if weights.dense > 0.0 {
            self.vectors.search(vector, want, &*admit)?
        } else {
            Vec::new()
        };
        if dense.len() < k {
            // The graph walk may run out before it finds enough among few eligible chunks:
            // those few are then ranked exactly.
            let eligible: Vec<u64> = visible.keys().copied().filter(|id| admit(*id)).collect();
            if eligible.len() > dense.len() {
                dense = self.exact_top(vector, &eligible, want)?;
            }
        }
        let keyword = if weights.keyword > 0.0 {
            self.keyword.search(query, want, admit.clone())?
        } else {
            Vec::new()
        };
        let mut fused: HashMap<u64, f32> = HashMap::new();
        for (rank, (id, _)) in dense.iter().enumerate() {
            *fused.entry(*id).or_default() += weights.dense / (RRF_K + rank as f32 + 1.0);
        }
        for (rank, (id, _)) in keyword.iter().enumerate() {
            *fused.entry(*id).or_default() += weights.keyword / (RRF_K + rank as f32 + 1.0);
        }
        let mut ranked: Vec<(u64, f32)> = fused.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        let ids: Vec<u64> = ranked.iter().map(|(id, _)| *id).collect();
        let rows = self.store.chunks(&ids, &self.classes)?;
        let scores: HashMap<u64, f32> = ranked.into_iter().collect();
        Ok(rows
            .into_iter()
            .map(|chunk| Hit {
                score: scores.get(&chunk.id).copied().unwrap_or(0.0),
                chunk,
            })
            .collect())
    }

    /// Exact dense search among every chunk the clearance may read (for measuring the
    /// approximate index's recall).
    pub fn exact_dense(&self, vector: &[f32], clearance: &Clearance, k: usize) -> Result<Vec<u64>> {
        let visible = self.visible()?;
        let eligible: Vec<u64> = visible
            .iter()
            .filter(|(_, v)| clearance.admits(v.rank, &v.groups))
            .map(|(id, _)| *id)
            .collect();
        Ok(self
            .exact_top(vector, &eligible, k)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The `k` chunks of `eligible` nearest to `vector` by exact cosine, nearest first (ties
    /// by id), reading their vectors a page at a time.
    fn exact_top(&self, vector: &[f32], eligible: &[u64], k: usize) -> Result<Vec<(u64, f32)>> {
        let mut best: Vec<(u64, f32)> = Vec::with_capacity(k + EXACT_PAGE);
        let nearest_first =
            |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        for page in eligible.chunks(EXACT_PAGE) {
            best.extend(
                self.store
                    .vectors(page)?
                    .into_iter()
                    .map(|(id, v)| (id, cosine(vector, &v))),
            );
            best.sort_by(nearest_first);
            best.truncate(k);
        }
        Ok(best)
    }

    /// The approximate dense search alone (for measuring recall).
    pub fn approximate_dense(
        &self,
        vector: &[f32],
        clearance: &Clearance,
        k: usize,
    ) -> Result<Vec<u64>> {
        let visible = self.visible()?;
        let admit = |id: u64| {
            visible
                .get(&id)
                .is_some_and(|v| clearance.admits(v.rank, &v.groups))
        };
        Ok(self
            .vectors
            .search(vector, k, &admit)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }
}

fn read_source(
    file: &SourceFile,
    repos: &mut HashMap<String, git2::Repository>,
    limits: &ParseLimits,
) -> std::result::Result<Option<Vec<u8>>, String> {
    match &file.content {
        Content::File(path) => {
            let size = std::fs::metadata(path)
                .map_err(|e| format!("cannot read it: {e}"))?
                .len();
            if size > limits.max_file_bytes {
                return Err(crate::parse::over("the file", size, limits.max_file_bytes));
            }
            std::fs::read(path)
                .map(Some)
                .map_err(|e| format!("cannot read it: {e}"))
        }
        Content::Blob { oid, sniff } => {
            if !repos.contains_key(&file.root) {
                let repo = git2::Repository::open(&file.root)
                    .map_err(|e| format!("cannot open the repository: {}", e.message()))?;
                repos.insert(file.root.clone(), repo);
            }
            let repo = repos
                .get(&file.root)
                .ok_or_else(|| "the repository is gone".to_owned())?;
            crate::sources::read_blob(repo, *oid, *sniff).map_err(|e| e.to_string())
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Runs a future to its end on this thread (the embedding engine's futures need no runtime).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
