//! `airlock serve`: approved models behind OpenAI- and Anthropic-compatible HTTP APIs.
//!
//! The server admits only approved registry versions whose blobs still hash to their
//! digests ([`models::admit`]), authenticates every API request with a registry key or an
//! OIDC JWT ([`auth`]), applies per-key limits, and writes every request to the audit log
//! ahead of its answer ([`gate`]). Official SDKs work by changing their base URL.
//!
//! It deliberately does not: fetch anything (JWKS come from a file), listen beyond loopback
//! unless told to, or run models the registry has not approved.
//!
//! ```no_run
//! # async fn demo() -> airlock_server::Result<()> {
//! use airlock_server::config::RawConfig;
//! let mut raw = RawConfig::default();
//! raw.data_dir = Some("/var/lib/airlock".into());
//! raw.set_model("chat=smollm2:prod")?;
//! let server = airlock_server::Server::start(raw.validate(None)?, "user:ops")?;
//! let listener = server.bind().await?;
//! server.run(listener, std::future::pending()).await
//! # }
//! ```

#![deny(missing_docs)]

mod anthropic;
pub mod auth;
pub mod collections;
pub mod config;
mod error;
pub mod gate;
mod generation;
pub mod limits;
mod listener;
pub mod metrics;
pub mod models;
mod openai;
mod rag;
mod structured;
mod tools;
mod vector_stores;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use airlock_audit::{AuditLog, Entry, Outcome};
use airlock_engine::RequestLimits;
use airlock_registry::Registry;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use error::{ApiError, Dialect, Error, Result};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::models::{ServedModel, ServedModels};

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything a request handler reads.
#[derive(Debug)]
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// Alias → loaded model; replaced as a whole by a reload.
    models: RwLock<Arc<ServedModels>>,
    /// Knowledge collections served for search.
    collections: collections::ServedCollections,
    /// Held for admission checks; one reload at a time.
    registry: Mutex<Registry>,
    actor: String,
    auth: Authenticator,
    audit: Arc<AuditLog>,
    limiter: Limiter,
    /// What every chat request is checked against.
    request_limits: RequestLimits,
    metrics: Metrics,
    audit_backlog: gate::Backlog,
    id_prefix: String,
    next_id: AtomicU64,
    started: Instant,
    ready: AtomicBool,
    /// What the fences around a RAG prompt's sources are derived from.
    fence_key: airlock_rag::answer::FenceKey,
}

impl App {
    /// The models served now. A request keeps the set it started with, so a reload never
    /// pulls a model out from under a generation.
    pub fn models(&self) -> Arc<ServedModels> {
        Arc::clone(&self.models.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The collections served for search.
    pub fn collections(&self) -> &collections::ServedCollections {
        &self.collections
    }

    /// The served model called `alias`.
    pub fn model(&self, alias: &str) -> Result<Arc<ServedModel>, ApiError> {
        self.models()
            .get(alias)
            .cloned()
            .ok_or_else(|| ApiError::UnknownModel {
                model: alias.to_owned(),
            })
    }

    /// Admits every configured model again, exactly as at startup: each reference resolved
    /// anew (a tag moved to a newly approved version deploys it), approval checked, every
    /// blob re-hashed. If all pass, the new set replaces the old in one swap: models whose
    /// digest is unchanged keep running, new versions are loaded first, and requests in
    /// flight finish on the model they started with. If any fails, nothing changes. Either
    /// way the reload is an audit entry (`serve.reload`). Blocks while it hashes and loads.
    pub fn reload(&self) -> Result<Vec<Reloaded>> {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.models();
        let admitted = match models::admit_again(&registry, &self.config, &current) {
            Ok(admitted) => admitted,
            Err(error) => {
                self.audit.append(
                    Entry::new(&self.actor, "serve.reload", Outcome::Refused)
                        .reason(error.to_string()),
                )?;
                return Err(error);
            }
        };
        let changes: Vec<Reloaded> = admitted
            .iter()
            .map(|(alias, model)| Reloaded {
                alias: alias.clone(),
                name: model.name.clone(),
                version: model.version.clone(),
                digest: model.digest.clone(),
                previous: current
                    .get(alias)
                    .filter(|old| old.digest != model.digest)
                    .map(|old| old.digest.clone()),
            })
            .collect();
        let mut entry = Entry::new(&self.actor, "serve.reload", Outcome::Ok);
        for change in &changes {
            entry = entry.detail(&format!("model.{}", change.alias), change.digest.clone());
            if let Some(previous) = &change.previous {
                entry = entry.detail(&format!("replaced.{}", change.alias), previous.clone());
            }
        }
        // Durable before the swap: no request reaches a new version the log does not name.
        self.audit.append(entry)?;
        *self.models.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(admitted);
        if let Err(e) = report_unbacked(&registry, &self.actor, &self.auth, &self.collections) {
            tracing::error!("naming what the audit log does not back failed: {e}");
        }
        Ok(changes)
    }

    /// A fresh response id: unique within this process and unlikely to repeat across
    /// restarts.
    pub fn next_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:08x}", self.id_prefix)
    }
}

/// One served model after a reload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// The alias clients use.
    pub alias: String,
    /// Registry name.
    pub name: String,
    /// Registry version now served.
    pub version: String,
    /// `sha256:<hex>` now served.
    pub digest: String,
    /// The digest it replaced, if the version changed.
    pub previous: Option<String>,
}

/// The router: API routes behind the [gate](gate::gate), probes outside it.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route(
            "/v1/vector_stores/{name}/search",
            post(vector_stores::search),
        )
        .route("/metrics", get(metrics))
        .route("/admin/status", get(status))
        .route("/admin/reload", post(reload))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            gate::gate,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    ApiError::NotFound { path }.into_response_for(gate::dialect(request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed.into_response_for(gate::dialect(request.uri().path()))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        ApiError::Unavailable {
            message: "shutting down".into(),
            retry_after: None,
        }
        .into_response_for(Dialect::OpenAi)
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(app.models().values().map(AsRef::as_ref));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn status(State(app): State<Arc<App>>) -> Response {
    let models: Vec<_> = app
        .models()
        .values()
        .map(|m| {
            json!({
                "alias": m.alias, "name": m.name, "version": m.version, "digest": m.digest,
                "kind": m.kind(), "engine": m.status(),
            })
        })
        .collect();
    let collections: Vec<_> = app
        .collections
        .values()
        .map(|c| json!({"name": c.name, "embedding": c.digest}))
        .collect();
    axum::Json(json!({
        "uptime_seconds": app.started.elapsed().as_secs(),
        "listen": app.config.listen.to_string(),
        "models": models,
        "collections": collections,
        "log_bodies": app.config.log_bodies,
    }))
    .into_response()
}

/// `POST /admin/reload`: admits the configured models again (see [`App::reload`]); 409 with
/// the reason if any may not be served, and the old set keeps serving.
async fn reload(State(app): State<Arc<App>>) -> Response {
    let reloading = Arc::clone(&app);
    match tokio::task::spawn_blocking(move || reloading.reload()).await {
        Ok(Ok(models)) => axum::Json(json!({"reloaded": true, "models": models})).into_response(),
        Ok(Err(error)) => ApiError::Conflict {
            message: format!("reload refused; still serving the previous models: {error}"),
        }
        .into_response_for(Dialect::OpenAi),
        Err(join) => ApiError::Internal {
            detail: format!("reload task failed: {join}"),
        }
        .into_response_for(Dialect::OpenAi),
    }
}

/// A server whose models are admitted and loaded, ready to bind.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
}

impl Server {
    /// Opens the registry, admits and loads every configured model, and prepares
    /// authentication. Fails — with an audit entry — if any model may not be served.
    pub fn start(config: Config, actor: &str) -> Result<Self> {
        let registry = Registry::open(&config.data_dir, actor)?;
        let models = models::admit(&registry, &config)?;
        let collections = collections::open(&registry, &config)?;
        collections::check_rag(&registry, &config, &collections)?;
        Self::assemble(config, actor, registry, models, collections)
    }

    /// A server over engines made by the caller, each served under its alias, **without
    /// admission**: nothing checks that a registry approved what they run. For in-process
    /// tests with scripted engines. The data directory must hold a registry (keys, audit
    /// log); a reload replaces these engines with the configured, admitted models.
    pub fn with_unverified_engines(
        config: Config,
        actor: &str,
        engines: impl IntoIterator<Item = ServedModel>,
    ) -> Result<Self> {
        Self::with_unverified_engines_and_collections(config, actor, engines, [])
    }

    /// As [`Server::with_unverified_engines`], also serving `collections` (made with
    /// [`collections::ServedCollection::unverified`]).
    pub fn with_unverified_engines_and_collections(
        config: Config,
        actor: &str,
        engines: impl IntoIterator<Item = ServedModel>,
        collections: impl IntoIterator<Item = collections::ServedCollection>,
    ) -> Result<Self> {
        let registry = Registry::open(&config.data_dir, actor)?;
        let models = engines
            .into_iter()
            .map(|m| (m.alias.clone(), Arc::new(m)))
            .collect();
        let collections = collections
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect();
        Self::assemble(config, actor, registry, models, collections)
    }

    fn assemble(
        config: Config,
        actor: &str,
        registry: Registry,
        models: ServedModels,
        collections: collections::ServedCollections,
    ) -> Result<Self> {
        // Keys are checked against the audit log state the registry replayed for admission.
        let auth = Authenticator::new(registry.key_store()?, config.oidc.as_ref())?;
        report_unbacked(&registry, actor, &auth, &collections)?;
        let mut prefix = [0u8; 6];
        rand_prefix(&mut prefix);
        let app = App {
            limiter: Limiter::new(
                config.limits.per_key_concurrency,
                config.limits.per_key_per_minute,
            ),
            request_limits: RequestLimits {
                max_tokens: config.limits.max_tokens,
                ..RequestLimits::default()
            },
            config,
            models: RwLock::new(Arc::new(models)),
            collections,
            audit: registry.audit_log(),
            registry: Mutex::new(registry),
            actor: actor.to_owned(),
            auth,
            metrics: Metrics::default(),
            audit_backlog: gate::Backlog::default(),
            id_prefix: hex::encode(prefix),
            next_id: AtomicU64::new(0),
            started: Instant::now(),
            ready: AtomicBool::new(true),
            fence_key: airlock_rag::answer::FenceKey::random(),
        };
        Ok(Self { app: Arc::new(app) })
    }

    /// The shared state (for in-process tests and benchmarks).
    pub fn app(&self) -> Arc<App> {
        Arc::clone(&self.app)
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener> {
        let addr = self.app.config.listen;
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Io {
                what: format!("listening on {addr}"),
                source,
            })
    }

    /// Serves on `listener` until `shutdown` completes, then drains requests in flight.
    /// Start and stop are audit entries. Connections are HTTP/1.1 (kept alive), within the
    /// connection limits of [`config::Limits`]: a header read timeout, a cap on open
    /// connections and one on idle connections (see `header_read_timeout`,
    /// `max_connections` and `max_idle_connections` there).
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let local = listener.local_addr().map_err(|source| Error::Io {
            what: "reading the listening address".into(),
            source,
        })?;
        let mut start = Entry::new(&self.app.actor, "serve.start", Outcome::Ok)
            .detail("listen", local.to_string())
            .detail("log_bodies", self.app.config.log_bodies)
            .detail("oidc", self.app.config.oidc.is_some());
        for (alias, model) in self.app.models().iter() {
            start = start.detail(&format!("model.{alias}"), model.digest.clone());
        }
        self.app.audit.append(start)?;
        let app = Arc::clone(&self.app);
        listener::serve(
            listener,
            router(Arc::clone(&self.app)),
            &self.app.config.limits,
            async move {
                shutdown.await;
                app.ready.store(false, Ordering::Release);
            },
        )
        .await;
        // Results of the last answers may still be on their way to the log.
        self.app.audit_backlog.drained().await;
        self.app.audit.append(
            Entry::new(&self.app.actor, "serve.stop", Outcome::Ok)
                .detail("listen", local.to_string()),
        )?;
        Ok(())
    }
}

/// Most rows named in one `serve.unbacked` entry (all go to stderr).
const MAX_UNBACKED_IN_ENTRY: usize = 64;

/// Names every row the server will not trust because the audit log does not back it — API
/// keys (refused with a 401) and documents of served collections (never returned) — on
/// stderr and in one `serve.unbacked` audit entry.
fn report_unbacked(
    registry: &Registry,
    actor: &str,
    auth: &Authenticator,
    collections: &collections::ServedCollections,
) -> Result<()> {
    let mut rows: Vec<String> = auth
        .unbacked_keys()?
        .iter()
        .map(ToString::to_string)
        .collect();
    for collection in collections.values() {
        rows.extend(collection.unbacked()?.iter().map(ToString::to_string));
    }
    if rows.is_empty() {
        return Ok(());
    }
    for row in &rows {
        tracing::warn!("not trusted, the audit log does not back it: {row}");
    }
    let named: Vec<String> = rows.iter().take(MAX_UNBACKED_IN_ENTRY).cloned().collect();
    registry.audit_log().append(
        Entry::new(actor, "serve.unbacked", Outcome::Refused)
            .reason(format!(
                "{} row(s) the audit log does not back are not trusted: API keys so named get 401, documents so named are not returned",
                rows.len()
            ))
            .detail("rows", named),
    )?;
    Ok(())
}

fn rand_prefix(out: &mut [u8]) {
    use std::hash::{BuildHasher, RandomState};
    // Response ids need to be unique, not secret: the std hasher's random keys suffice.
    let mut seed = RandomState::new().hash_one(SystemTime::now());
    for byte in out {
        *byte = seed as u8;
        seed = seed.rotate_right(8);
    }
}
