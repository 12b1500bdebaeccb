//! Admission: only approved versions whose blobs still match their digests are loaded.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_audit::{Entry, Outcome};
use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{
    ChatConfig, ChatEngine, ChatModel, Embedder, EmbeddingEngine, EmbeddingModel, EngineStatus,
    ModelFiles,
};
use airlock_registry::{ApprovedModel, Reference, Registry};
use airlock_upstream::{EngineProcess, Hooks, ProcessEvent, ProcessKind, ProcessSpec};

use crate::config::{Config, EngineChoice, ModelSpec, ProcessChoice};
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

/// What runs a served model: any engine behind the request-level interface.
#[derive(Debug, Clone)]
pub enum Engine {
    /// A chat model.
    Chat(Arc<dyn ChatEngine>),
    /// An embedding model.
    Embedding(Arc<dyn Embedder>),
}

impl ServedModel {
    /// `chat` or `embedding`.
    pub fn kind(&self) -> &'static str {
        match self.engine {
            Engine::Chat(_) => "chat",
            Engine::Embedding(_) => "embedding",
        }
    }

    /// The chat engine, or a 400 naming what this model is.
    pub fn chat(&self) -> Result<&dyn ChatEngine, ApiError> {
        match &self.engine {
            Engine::Chat(engine) => Ok(engine.as_ref()),
            Engine::Embedding(_) => Err(ApiError::invalid_param(
                "model",
                format!("{} is an embedding model; use /v1/embeddings", self.alias),
            )),
        }
    }

    /// The embedding engine, or a 400 naming what this model is.
    pub fn embedding(&self) -> Result<&dyn Embedder, ApiError> {
        match &self.engine {
            Engine::Embedding(engine) => Ok(engine.as_ref()),
            Engine::Chat(_) => Err(ApiError::invalid_param(
                "model",
                format!("{} is a chat model; use /v1/chat/completions", self.alias),
            )),
        }
    }

    /// Its engine's kind, state and load now.
    pub fn status(&self) -> EngineStatus {
        match &self.engine {
            Engine::Chat(engine) => engine.status(),
            Engine::Embedding(engine) => engine.status(),
        }
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
    let engine = match (&spec.engine, approved.kind.as_str()) {
        (EngineChoice::Embedded, "llm") => {
            let mut chat = ChatConfig {
                slots: spec.slots,
                context_per_slot: spec.context,
                queue: config.limits.queue,
                ..ChatConfig::default()
            };
            if let Some(threads) = spec.threads {
                chat.threads = threads;
            }
            Engine::Chat(Arc::new(
                ChatModel::load(&files, &chat).map_err(|e| e.to_string())?,
            ))
        }
        (EngineChoice::Embedded, "embedding") => {
            let mut embedding = EmbeddingConfig::default();
            if let Some(threads) = spec.threads {
                embedding.threads = threads;
            }
            let model = EmbeddingModel::load(&files, &embedding).map_err(|e| e.to_string())?;
            let engine =
                EmbeddingEngine::start(model, config.limits.embedding_queue, embedding.max_batch)
                    .map_err(|e| e.to_string())?;
            Engine::Embedding(Arc::new(engine))
        }
        (EngineChoice::Process(process), "llm") => Engine::Chat(Arc::new(start_process(
            registry, config, alias, spec, process, &approved, files,
        )?)),
        (EngineChoice::Process(_), other) => {
            return Err(format!(
                "engine processes serve chat models, and this is a {other:?} model; serve it embedded"
            ));
        }
        (EngineChoice::Embedded, other) => {
            return Err(format!("model kind {other:?} cannot be served"));
        }
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

/// Starts an engine process on the approved files. Before every restart its files are
/// verified again through the registry (re-hashed; approval checked); every start, exit and
/// refusal is an audit entry.
fn start_process(
    registry: &Registry,
    config: &Config,
    alias: &str,
    spec: &ModelSpec,
    process: &ProcessChoice,
    approved: &ApprovedModel,
    files: ModelFiles,
) -> std::result::Result<EngineProcess, String> {
    let engine = spec.engine.name();
    let runs = match process.kind {
        ProcessKind::LlamaServer => "gguf",
        ProcessKind::Vllm => "safetensors",
    };
    if approved.format != runs {
        return Err(format!(
            "{engine} runs {runs} models, and this one is {}",
            approved.format
        ));
    }
    let label = files.label().to_owned();
    let verify = {
        let data_dir = config.data_dir.clone();
        let actor = registry.actor().to_owned();
        let reference = format!("{}@{}", approved.name, approved.digest);
        let label = label.clone();
        move || {
            let registry = Registry::open(&data_dir, &actor).map_err(|e| e.to_string())?;
            let reference = Reference::parse(&reference).map_err(|e| e.to_string())?;
            let approved = registry
                .open_approved(&reference, "serve")
                .map_err(|e| e.to_string())?;
            Ok(ModelFiles::new(label.clone(), approved.files))
        }
    };
    let on_event = {
        let audit = registry.audit_log();
        let actor = registry.actor().to_owned();
        let alias = alias.to_owned();
        let digest = approved.digest.clone();
        move |event: ProcessEvent| {
            let entry = |action: &str, outcome| {
                Entry::new(&actor, action, outcome)
                    .subject(digest.clone())
                    .detail("alias", alias.clone())
                    .detail("engine", engine)
            };
            let entry = match event {
                ProcessEvent::Started { pid, seconds } => entry("engine.start", Outcome::Ok)
                    .detail("pid", pid)
                    .detail("seconds", (seconds * 1e3).round() / 1e3),
                ProcessEvent::Exited { pid, reason, log } => entry("engine.exit", Outcome::Failed)
                    .reason(reason)
                    .detail("pid", pid)
                    .detail("log", log),
                ProcessEvent::Failed { reason } => {
                    entry("engine.start", Outcome::Failed).reason(reason)
                }
                ProcessEvent::Refused { reason } => {
                    entry("engine.start", Outcome::Refused).reason(reason)
                }
                ProcessEvent::Stopped { pid, status } => entry("engine.stop", Outcome::Ok)
                    .detail("pid", pid)
                    .detail("status", status),
            };
            if let Err(e) = audit.append(entry) {
                tracing::error!("audit log append failed: {e}");
            }
        }
    };
    let process_spec = ProcessSpec {
        kind: process.kind,
        binary: process.binary.clone(),
        slots: spec.slots,
        context_per_slot: spec.context.unwrap_or(DEFAULT_PROCESS_CONTEXT),
        threads: spec.threads,
        startup_timeout: process.startup_timeout,
        share_prompt_cache: process.share_prompt_cache,
        // In the owner-only data directory: engine sockets nowhere near the system's
        // temporary directory, which other programs' sockets share.
        runtime_root: Some(config.data_dir.join("run")),
    };
    let hooks = Hooks {
        verify: Box::new(verify),
        on_event: Box::new(on_event),
    };
    EngineProcess::start(&label, process_spec, files, hooks).map_err(|e| e.to_string())
}

/// Tokens per request of an engine process when the config does not say (cut to the model's
/// training context), as for the embedded engine.
const DEFAULT_PROCESS_CONTEXT: usize = 4096;
