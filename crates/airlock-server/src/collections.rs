//! Knowledge collections the server searches: each opened read-only with the embedding model
//! it is pinned to, loaded from the registry (approved, re-hashed) like a served model.
//!
//! A collection is served only if its classes are those the audit log recorded at its
//! creation, and a search sees only the documents whose class and groups the log backs
//! (`collection.classes` entries): a document reclassified in its database alone is not
//! returned to anyone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use airlock_audit::{Entry, Outcome};
use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{Embedder, EmbeddingEngine, EmbeddingModel, ModelFiles};
use airlock_rag::{Attested, Clearance, Collection, Hit, Weights};
use airlock_registry::replay::{self, ObservedChunks, ObservedCollection};
use airlock_registry::{Binding, LogState, Reference, Registry};

use crate::auth::Principal;
use crate::config::Config;
use crate::error::{ApiError, Error, Result};

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
    /// The audit log's state: searches see only documents whose class and groups it backs.
    /// `None` for collections served without admission.
    binding: Option<Arc<Binding>>,
    /// The attestation made from the last log state read, and that state.
    attested: Mutex<Option<(Arc<LogState>, Arc<Attested>)>>,
}

/// How stale the log state a search applies may be: documents ingested since are found once
/// it is read again.
const LOG_FRESHNESS: std::time::Duration = std::time::Duration::from_secs(1);

/// What the audit log records of collection `name` (its classes, and each document's class
/// and groups), for [`Collection::attest`]; `None` if it records no such collection.
pub fn attestation(state: &LogState, name: &str) -> Option<Attested> {
    let logged = state.collections.get(name)?;
    Some(Attested::new(
        logged.classes.clone(),
        logged
            .documents
            .iter()
            .map(|(id, d)| (id.clone(), d.class.clone(), d.groups.clone())),
    ))
}

/// A collection's class rows, in the form [`replay::compare_collection`] checks.
pub fn observe(collection: &Collection) -> airlock_rag::Result<ObservedCollection> {
    let rows = collection.class_rows()?;
    Ok(ObservedCollection {
        name: collection.name().to_owned(),
        classes: rows.classes,
        documents: rows.documents,
        chunks: rows
            .chunks
            .into_iter()
            .map(|(document, rank, groups, count)| ObservedChunks {
                document,
                rank,
                groups,
                count,
            })
            .collect(),
    })
}

impl std::fmt::Debug for ServedCollection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCollection")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl ServedCollection {
    /// A collection searched with `embedder`, **without admission**: nothing checks that the
    /// embedder is the approved model the collection is pinned to. For in-process tests.
    pub fn unverified(collection: Collection, embedder: Arc<dyn Embedder>) -> Self {
        Self {
            name: collection.name().to_owned(),
            digest: collection.pin().digest.clone(),
            collection: Mutex::new(collection),
            embedder,
            binding: None,
            attested: Mutex::new(None),
        }
    }

    /// The attestation of the current log state, made anew only when the state changed.
    fn attestation(&self) -> airlock_registry::Result<Option<Arc<Attested>>> {
        let Some(binding) = &self.binding else {
            return Ok(None);
        };
        let state = binding.state_within(LOG_FRESHNESS)?;
        let mut cached = self.attested.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read, attested)) = cached.as_ref()
            && Arc::ptr_eq(read, &state)
        {
            return Ok(Some(Arc::clone(attested)));
        }
        // A collection the log does not know shows nothing.
        let attested = Arc::new(attestation(&state, &self.name).unwrap_or_default());
        *cached = Some((state, Arc::clone(&attested)));
        Ok(Some(attested))
    }

    /// The rows of this collection that disagree with the audit log, if it is checked
    /// against it.
    pub fn unbacked(&self) -> Result<Vec<airlock_registry::Discrepancy>> {
        let Some(binding) = &self.binding else {
            return Ok(Vec::new());
        };
        let state = binding.state()?;
        let collection = self
            .collection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let observed = observe(&collection).map_err(|e| refused(&self.name, e.to_string()))?;
        Ok(replay::compare_collection(&state, &observed))
    }

    /// The `k` best chunks for `query` that `principal` may read: its clearance and groups
    /// are applied inside both searches, before ranking.
    pub(crate) async fn search(
        self: &Arc<Self>,
        principal: Principal,
        query: &str,
        k: usize,
    ) -> std::result::Result<Vec<Hit>, ApiError> {
        let vector = self.embed(query).await?;
        self.search_embedded(principal, query, vector, k).await
    }

    /// `query`'s vector from this collection's embedding model.
    pub(crate) async fn embed(&self, query: &str) -> std::result::Result<Vec<f32>, ApiError> {
        Collection::embed_query(&*self.embedder, query)
            .await
            .map_err(|e| ApiError::Internal {
                detail: format!("embedding the query for {}: {e}", self.name),
            })
    }

    /// As [`ServedCollection::search`], with the query's `vector` already made by
    /// [`ServedCollection::embed`] (or by another collection pinned to the same model).
    pub(crate) async fn search_embedded(
        self: &Arc<Self>,
        principal: Principal,
        query: &str,
        vector: Vec<f32>,
        k: usize,
    ) -> std::result::Result<Vec<Hit>, ApiError> {
        let name = self.name.clone();
        let searching = Arc::clone(self);
        let text = query.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut collection = searching
                .collection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            collection.refresh().map_err(Failure::Search)?;
            // Only documents whose class and groups the audit log backs are searched.
            if searching.binding.is_some() {
                let attested = searching.attestation().map_err(Failure::Log)?;
                collection.attest(attested);
            }
            let clearance =
                Clearance::new(collection.classes(), &principal.clearance, principal.groups)
                    .map_err(|_| Failure::Clearance)?;
            collection
                .search(&text, &vector, &clearance, k, &Weights::default())
                .map_err(Failure::Search)
        })
        .await
        .map_err(|e| ApiError::Internal {
            detail: format!("search task failed: {e}"),
        })?
        .map_err(|e| match e {
            Failure::Clearance => ApiError::Forbidden {
                message: format!("your clearance is not one of the classes of {name}"),
            },
            Failure::Search(e) => ApiError::Internal {
                detail: format!("searching {name}: {e}"),
            },
            Failure::Log(e) => ApiError::Internal {
                detail: format!("reading the audit log for {name}: {e}"),
            },
        })
    }
}

/// Why a search could not run.
enum Failure {
    /// The caller's clearance is not a class of the collection.
    Clearance,
    /// The collection failed.
    Search(airlock_rag::Error),
    /// The audit log could not be read.
    Log(airlock_registry::Error),
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

/// Refuses to start, with an audit entry, when a model answers from a collection that is not
/// served.
pub fn check_rag(registry: &Registry, config: &Config, served: &ServedCollections) -> Result<()> {
    for (alias, spec) in &config.models {
        let Some(rag) = &spec.rag else { continue };
        if let Some(missing) = rag.collections.iter().find(|c| !served.contains_key(*c)) {
            let error = Error::Admission {
                alias: alias.clone(),
                reference: spec.reference.clone(),
                reason: format!(
                    "its rag collection {missing} does not exist in the data directory"
                ),
            };
            let entry = Entry::new(registry.actor(), "serve.admission", Outcome::Refused)
                .subject(format!("collection:{missing}"))
                .reason(error.to_string());
            registry.audit_log().append(entry)?;
            return Err(error);
        }
    }
    Ok(())
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
    // Its classes must be the ones the audit log recorded at its creation: a rank means
    // nothing under another order.
    let binding = registry.binding().map_err(|e| e.to_string())?;
    let state = binding.state().map_err(|e| e.to_string())?;
    match state.collections.get(name) {
        None => return Err("the audit log records no creation of it".into()),
        Some(logged) if logged.classes != collection.classes().names() => {
            return Err(format!(
                "its classes are {} in its database, but the audit log recorded {}",
                collection.classes().names().join(" < "),
                logged.classes.join(" < ")
            ));
        }
        Some(_) => {}
    }
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
        binding: Some(binding),
        attested: Mutex::new(None),
    })
}
