//! Admission: only approved versions whose blobs still match their digests are loaded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use airlock_audit::{Entry, Outcome};
use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{ChatConfig, ChatModel, EmbeddingModel, ModelFiles};
use airlock_registry::{Reference, Registry};
use tokio::sync::Semaphore;

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
            Engine::Embedding(worker) => worker.waiting.load(Ordering::Relaxed),
        }
    }

    /// Requests this model is running.
    pub fn running(&self) -> usize {
        match &self.engine {
            Engine::Chat(model) => model.running(),
            Engine::Embedding(worker) => usize::from(worker.permit.available_permits() == 0),
        }
    }
}

/// Runs embedding batches one at a time (each batch already uses every core) and bounds
/// how many requests wait.
#[derive(Debug)]
pub struct EmbeddingWorker {
    model: Arc<EmbeddingModel>,
    permit: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
}

impl EmbeddingWorker {
    /// The model's facts (dimension, maximum tokens).
    pub fn info(&self) -> &airlock_engine::embed::EmbeddingModelInfo {
        self.model.info()
    }

    /// Embeds `texts`, waiting for the model if another batch runs; refuses at once with a
    /// 429 when the queue is full.
    pub async fn embed(
        &self,
        texts: Vec<String>,
    ) -> Result<airlock_engine::embed::Embeddings, ApiError> {
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = scopeguard(|| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        });
        if waiting >= self.queue {
            return Err(ApiError::RateLimited {
                message: "the embedding model is busy and its queue is full".into(),
                retry_after: 1,
            });
        }
        let _permit = self
            .permit
            .acquire()
            .await
            .map_err(|e| ApiError::Internal {
                detail: format!("embedding worker closed: {e}"),
            })?;
        let model = Arc::clone(&self.model);
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.embed(&refs)
        })
        .await
        .map_err(|e| ApiError::Internal {
            detail: format!("embedding task failed: {e}"),
        })?
        .map_err(ApiError::from)
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
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
            Engine::Embedding(EmbeddingWorker {
                model: Arc::new(model),
                permit: Semaphore::new(1),
                waiting: AtomicUsize::new(0),
                queue: config.limits.embedding_queue,
            })
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
