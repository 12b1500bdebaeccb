//! Knowledge collections the server searches: each opened read-only with the embedding model
//! it is pinned to, loaded from the registry (approved, re-hashed) like a served model.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use airlock_audit::{Entry, Outcome};
use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{Embedder, EmbeddingEngine, EmbeddingModel, ModelFiles};
use airlock_rag::Collection;
use airlock_registry::{Reference, Registry};

use crate::config::Config;
use crate::error::{Error, Result};

/// A collection being served.
pub struct ServedCollection {
    /// Its name.
    pub name: String,
    /// The collection; a search rereads what ingests have published since.
    pub(crate) collection: Mutex<Collection>,
    /// Its embedding model, for queries.
    pub(crate) embedder: Arc<dyn Embedder>,
    /// The model's digest.
    pub digest: String,
}

impl std::fmt::Debug for ServedCollection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCollection")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Name → collection.
pub type ServedCollections = BTreeMap<String, Arc<ServedCollection>>;

/// Opens the configured collections (every one of the data directory when none are named).
/// One that cannot be served stops startup, with an audit entry, as a model would.
pub fn open(registry: &Registry, config: &Config) -> Result<ServedCollections> {
    let names = match &config.collections {
        Some(names) => names.clone(),
        None => Collection::names(&config.data_dir).map_err(|e| refused("*", e.to_string()))?,
    };
    let mut served = ServedCollections::new();
    for name in names {
        let collection = open_one(registry, config, &name).map_err(|reason| {
            let error = refused(&name, reason);
            let entry = Entry::new(registry.actor(), "serve.admission", Outcome::Refused)
                .subject(format!("collection:{name}"))
                .reason(error.to_string());
            match registry.audit_log().append(entry) {
                Ok(_) => error,
                Err(audit) => Error::Audit(audit),
            }
        })?;
        served.insert(name, Arc::new(collection));
    }
    Ok(served)
}

fn refused(name: &str, reason: String) -> Error {
    Error::Admission {
        alias: format!("collection {name}"),
        reference: name.to_owned(),
        reason,
    }
}

fn open_one(
    registry: &Registry,
    config: &Config,
    name: &str,
) -> std::result::Result<ServedCollection, String> {
    let collection = Collection::open(&config.data_dir, name).map_err(|e| e.to_string())?;
    let pin = collection.pin().clone();
    let model_name = pin
        .reference
        .split([':', '@'])
        .next()
        .unwrap_or(&pin.reference);
    let reference =
        Reference::parse(&format!("{model_name}@{}", pin.digest)).map_err(|e| e.to_string())?;
    let approved = registry.open_approved(&reference, "serve").map_err(|e| {
        format!(
            "its embedding model {} ({}): {e}",
            pin.reference, pin.digest
        )
    })?;
    collection
        .check_model(&approved.digest)
        .map_err(|e| e.to_string())?;
    let files = ModelFiles::new(
        format!("{}:{}", approved.name, approved.version),
        approved.files,
    );
    let config = EmbeddingConfig::default();
    let model = EmbeddingModel::load(&files, &config).map_err(|e| e.to_string())?;
    let engine = EmbeddingEngine::start(model, 64, config.max_batch).map_err(|e| e.to_string())?;
    Ok(ServedCollection {
        name: name.to_owned(),
        collection: Mutex::new(collection),
        embedder: Arc::new(engine),
        digest: approved.digest,
    })
}
