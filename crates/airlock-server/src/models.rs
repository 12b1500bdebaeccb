//! Admission: only approved versions whose blobs still match their digests are loaded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use airlock_audit::{Entry, Outcome};
use airlock_engine::embed::{EmbeddingConfig, EmbeddingModelInfo, Embeddings};
use airlock_engine::{ChatConfig, ChatModel, EmbeddingModel, ModelFiles};
use airlock_registry::{Reference, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ModelSpec};
use crate::error::{ApiError, Error, Result};

/// A model being served.
#[derive(Debug)]
pub struct ServedModel {
    /// The alias clients name it by.
    pub alias: String,
    /// Registry name.
    pub name: String,
    /// Registry version.
    pub version: String,
    /// `sha256:<hex>` of its bundle.
    pub digest: String,
    /// When it was loaded (Unix seconds), for `/v1/models`.
    pub loaded_at: u64,
    /// The engine running it.
    pub engine: Engine,
}

/// What runs a served model.
#[derive(Debug)]
pub enum Engine {
    /// A chat model with its own scheduler.
    Chat(ChatModel),
    /// An embedding model, one batch at a time.
    Embedding(EmbeddingWorker),
}

impl ServedModel {
    /// `chat` or `embedding`.
    pub fn kind(&self) -> &'static str {
        match self.engine {
            Engine::Chat(_) => "chat",
            Engine::Embedding(_) => "embedding",
        }
    }

    /// The chat model, or a 400 naming what this model is.
    pub fn chat(&self) -> Result<&ChatModel, ApiError> {
        match &self.engine {
            Engine::Chat(model) => Ok(model),
            Engine::Embedding(_) => Err(ApiError::invalid_param(
                "model",
                format!("{} is an embedding model; use /v1/embeddings", self.alias),
            )),
        }
    }

    /// The embedding model, or a 400 naming what this model is.
    pub fn embedding(&self) -> Result<&EmbeddingWorker, ApiError> {
        match &self.engine {
            Engine::Embedding(worker) => Ok(worker),
            Engine::Chat(_) => Err(ApiError::invalid_param(
                "model",
                format!("{} is a chat model; use /v1/chat/completions", self.alias),
            )),
        }
    }

    /// Requests waiting for this model.
    pub fn queued(&self) -> usize {
        match &self.engine {
            Engine::Chat(model) => model.queued(),
            Engine::Embedding(worker) => worker.waiting(),
        }
    }

    /// Requests this model is running.
    pub fn running(&self) -> usize {
        match &self.engine {
            Engine::Chat(model) => model.running(),
            Engine::Embedding(worker) => usize::from(worker.running()),
        }
    }
}

/// Embeds requests on one thread, merging those that wait into one batch (the model packs
/// texts without padding, so a merged batch costs what its tokens cost, and larger matrix
/// products run faster than many small ones). The queue is bounded: when it is full a
/// request is refused at once.
#[derive(Debug)]
pub struct EmbeddingWorker {
    model: Arc<EmbeddingModel>,
    jobs: mpsc::Sender<EmbedJob>,
    queue: usize,
    running: Arc<AtomicBool>,
    batches: Arc<AtomicU64>,
}

/// One request's texts and where its answer goes.
#[derive(Debug)]
struct EmbedJob {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Embeddings, ApiError>>,
}

impl EmbeddingWorker {
    /// Starts the worker thread for `model`; `queue` requests may wait, and one merged
    /// batch holds at most `max_batch` texts. The thread ends when the worker is dropped.
    pub fn start(model: EmbeddingModel, queue: usize, max_batch: usize) -> Result<Self> {
        let queue = queue.max(1);
        let (jobs, incoming) = mpsc::channel(queue);
        let running = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(AtomicU64::new(0));
        let model = Arc::new(model);
        let counters = (Arc::clone(&running), Arc::clone(&batches));
        let worker_model = Arc::clone(&model);
        std::thread::Builder::new()
            .name(format!("embed {}", model.info().label))
            .spawn(move || embed_batches(&worker_model, incoming, max_batch.max(1), &counters))
            .map_err(|source| Error::Io {
                what: "starting the embedding worker".into(),
                source,
            })?;
        Ok(Self {
            model,
            jobs,
            queue,
            running,
            batches,
        })
    }

    /// The model's facts (dimension, maximum tokens).
    pub fn info(&self) -> &EmbeddingModelInfo {
        self.model.info()
    }

    /// The model itself, for in-process callers (benchmarks) that bypass the queue.
    pub fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    /// Requests waiting for the model.
    pub fn waiting(&self) -> usize {
        self.queue.saturating_sub(self.jobs.capacity())
    }

    /// Whether a batch is running now.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Batches run so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Embeds `texts` in the next batch; refuses at once with a 429 when the queue is full.
    /// Dropping the future withdraws the request if its batch has not started.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embeddings, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(EmbedJob { texts, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ApiError::RateLimited {
                    message: "the embedding model is busy and its queue is full".into(),
                    retry_after: 1,
                },
                mpsc::error::TrySendError::Closed(_) => ApiError::Internal {
                    detail: "the embedding worker has stopped".into(),
                },
            })?;
        answer.await.map_err(|_| ApiError::Internal {
            detail: "the embedding worker dropped the request".into(),
        })?
    }
}

/// The worker loop: takes the first waiting job, adds every other waiting job while the
/// batch stays within `max_batch` texts, embeds them together and hands each its share.
fn embed_batches(
    model: &EmbeddingModel,
    mut incoming: mpsc::Receiver<EmbedJob>,
    max_batch: usize,
    (running, batches): &(Arc<AtomicBool>, Arc<AtomicU64>),
) {
    let mut carried: Option<EmbedJob> = None;
    loop {
        let Some(first) = carried.take().or_else(|| incoming.blocking_recv()) else {
            return;
        };
        let mut texts = first.texts.len();
        let mut batch = vec![first];
        while let Ok(job) = incoming.try_recv() {
            if texts + job.texts.len() > max_batch {
                carried = Some(job);
                break;
            }
            texts += job.texts.len();
            batch.push(job);
        }
        // Callers that went away while waiting cost nothing.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        running.store(true, Ordering::Relaxed);
        answer_batch(model, batch);
        batches.fetch_add(1, Ordering::Relaxed);
        running.store(false, Ordering::Relaxed);
    }
}

/// Embeds `batch` in one call and splits the result; if the merged call fails, each job runs
/// alone, so one request's bad input fails only that request.
fn answer_batch(model: &EmbeddingModel, batch: Vec<EmbedJob>) {
    let embed = |texts: &[&str]| model.embed(texts).map_err(ApiError::from);
    if batch.len() > 1 {
        let all: Vec<&str> = batch
            .iter()
            .flat_map(|job| job.texts.iter().map(String::as_str))
            .collect();
        if let Ok(merged) = embed(&all) {
            let mut vectors = merged.vectors.into_iter();
            let mut counts = merged.text_tokens.into_iter();
            for job in batch {
                let n = job.texts.len();
                let text_tokens: Vec<usize> = counts.by_ref().take(n).collect();
                let _ = job.reply.send(Ok(Embeddings {
                    vectors: vectors.by_ref().take(n).collect(),
                    tokens: text_tokens.iter().sum(),
                    text_tokens,
                }));
            }
            return;
        }
    }
    for job in batch {
        let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
        let _ = job.reply.send(embed(&texts));
    }
}

/// The models being served: alias → model.
pub type ServedModels = BTreeMap<String, Arc<ServedModel>>;

/// Opens, re-verifies and loads every configured model. The first that may not be served
/// stops startup; its refusal is in the audit log with the reason.
pub fn admit(registry: &Registry, config: &Config) -> Result<ServedModels> {
    admit_again(registry, config, &ServedModels::new())
}

/// Admits every configured model as at startup — the reference resolved anew (a moved tag
/// names its new version), approval checked, every blob re-hashed — and loads those whose
/// approved digest is not already running in `current`; those that are keep their loaded
/// engine. Nothing is returned unless every model passes; each refusal is audited.
pub fn admit_again(
    registry: &Registry,
    config: &Config,
    current: &ServedModels,
) -> Result<ServedModels> {
    let mut served = ServedModels::new();
    for (alias, spec) in &config.models {
        let model = admit_one(registry, config, alias, spec, current).map_err(|reason| {
            let error = Error::Admission {
                alias: alias.clone(),
                reference: spec.reference.clone(),
                reason,
            };
            let entry = Entry::new(registry.actor(), "serve.admission", Outcome::Refused)
                .subject(spec.reference.clone())
                .reason(error.to_string())
                .detail("alias", alias.clone());
            match registry.audit_log().append(entry) {
                Ok(_) => error,
                Err(audit) => Error::Audit(audit),
            }
        })?;
        served.insert(alias.clone(), model);
    }
    Ok(served)
}

fn admit_one(
    registry: &Registry,
    config: &Config,
    alias: &str,
    spec: &ModelSpec,
    current: &ServedModels,
) -> std::result::Result<Arc<ServedModel>, String> {
    let reference = Reference::parse(&spec.reference).map_err(|e| e.to_string())?;
    let approved = registry
        .open_approved(&reference, "serve")
        .map_err(|e| e.to_string())?;
    if let Some(running) = current.get(alias)
        && running.digest == approved.digest
    {
        return Ok(Arc::clone(running));
    }
    let files = ModelFiles::new(
        format!("{}:{}", approved.name, approved.version),
        approved.files.clone(),
    );
    let engine = match approved.kind.as_str() {
        "llm" => {
            let mut chat = ChatConfig {
                slots: spec.slots,
                context_per_slot: spec.context,
                queue: config.limits.queue,
                ..ChatConfig::default()
            };
            if let Some(threads) = spec.threads {
                chat.threads = threads;
            }
            Engine::Chat(ChatModel::load(&files, &chat).map_err(|e| e.to_string())?)
        }
        "embedding" => {
            let mut embedding = EmbeddingConfig::default();
            if let Some(threads) = spec.threads {
                embedding.threads = threads;
            }
            let model = EmbeddingModel::load(&files, &embedding).map_err(|e| e.to_string())?;
            let worker =
                EmbeddingWorker::start(model, config.limits.embedding_queue, embedding.max_batch)
                    .map_err(|e| e.to_string())?;
            Engine::Embedding(worker)
        }
        other => return Err(format!("model kind {other:?} cannot be served")),
    };
    Ok(Arc::new(ServedModel {
        alias: alias.to_owned(),
        name: approved.name,
        version: approved.version,
        digest: approved.digest,
        loaded_at: crate::unix_now(),
        engine,
    }))
}
