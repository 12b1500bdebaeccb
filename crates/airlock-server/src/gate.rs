//! What every API request passes through: authentication, role and per-key limits on the
//! way in; metrics and its audit entry on the way out.
//!
//! A request's [`RequestRecord`] travels in its extensions; handlers add the model, token
//! counts and body digests. A plain response is audited before it is sent — if the audit
//! log cannot take the entry, the client gets a 500 instead (fail closed). A streamed
//! response is audited when its stream ends, before its final event, or — if the client
//! went away — when the stream is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use airlock_audit::{Entry, Outcome};
use airlock_registry::KeyRole;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest as _, Sha256};

use crate::App;
use crate::auth::Principal;
use crate::error::{ApiError, Dialect};
use crate::limits::Permit;

/// Routes that answer without credentials and are not audited (probes call them every
/// few seconds; they reveal only whether the server is up).
const PUBLIC: [&str; 2] = ["/healthz", "/readyz"];
/// Routes that need the admin role.
const ADMIN: [&str; 2] = ["/metrics", "/admin/status"];

/// Longest body text kept in an audit entry when bodies are logged; the SHA-256 always
/// covers the whole body.
const MAX_LOGGED_BODY: usize = 16 << 10;

/// What is known about one request, filled in as it is handled.
#[derive(Debug)]
pub struct RequestRecord {
    app: Arc<App>,
    started: Instant,
    fields: Mutex<Fields>,
}

#[derive(Debug, Default)]
struct Fields {
    principal: Option<Principal>,
    route: String,
    method: String,
    peer: Option<SocketAddr>,
    model: Option<(String, String)>,
    prompt_tokens: Option<usize>,
    completion_tokens: Option<usize>,
    request_sha256: Option<String>,
    request_text: Option<String>,
    completion: Option<Sha256>,
    completion_text: String,
    finish_reason: Option<String>,
    stream: bool,
    error: Option<ApiError>,
    status: Option<u16>,
    permit: Option<Permit>,
    audited: bool,
}

impl RequestRecord {
    fn fields(&self) -> std::sync::MutexGuard<'_, Fields> {
        self.fields.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes the request body (its digest; its text too if bodies are logged).
    pub fn request_body(&self, body: &[u8]) {
        let mut f = self.fields();
        f.request_sha256 = Some(hex::encode(Sha256::digest(body)));
        if self.app.config.log_bodies {
            f.request_text = Some(truncated(&String::from_utf8_lossy(body)));
        }
    }

    /// Notes which model answers.
    pub fn model(&self, alias: &str, digest: &str) {
        self.fields().model = Some((alias.to_owned(), digest.to_owned()));
    }

    /// Notes that the answer is streamed: the stream, not the middleware, writes the entry.
    pub fn streaming(&self) {
        self.fields().stream = true;
    }

    /// Appends generated text to the completion digest (and text, if bodies are logged).
    pub fn completion_text(&self, text: &str) {
        let mut f = self.fields();
        f.completion
            .get_or_insert_with(Sha256::new)
            .update(text.as_bytes());
        if self.app.config.log_bodies && f.completion_text.len() < MAX_LOGGED_BODY {
            f.completion_text.push_str(text);
        }
    }

    /// Notes token counts and why generation ended.
    pub fn usage(&self, prompt: usize, completion: usize, finish_reason: Option<&str>) {
        let mut f = self.fields();
        f.prompt_tokens = Some(prompt);
        f.completion_tokens = Some(completion);
        f.finish_reason = finish_reason.map(str::to_owned);
    }

    /// Notes the error a handler answered with.
    pub fn error(&self, error: &ApiError) {
        self.fields().error = Some(error.clone());
    }

    /// Writes the audit entry (once) with the final status, and waits until it is durable.
    pub async fn finish(self: &Arc<Self>, status: u16) -> Result<(), ApiError> {
        let Some(entry) = self.take_entry(status) else {
            return Ok(());
        };
        let log = self.app.audit.clone();
        tokio::task::spawn_blocking(move || log.append(entry))
            .await
            .map_err(|e| ApiError::Internal {
                detail: format!("audit task failed: {e}"),
            })?
            .map(|_| ())
            .map_err(|e| {
                tracing::error!("audit log append failed: {e}");
                ApiError::Internal {
                    detail: format!("audit log append failed: {e}"),
                }
            })
    }

    /// Builds the entry unless it was already written, and counts the request in metrics.
    fn take_entry(&self, status: u16) -> Option<Entry> {
        let mut f = self.fields();
        if f.audited {
            return None;
        }
        f.audited = true;
        f.status = Some(status);
        f.permit = None;
        let latency = self.started.elapsed();
        self.app.metrics.record(&f.route, status, latency);
        if let (Some(p), Some(c)) = (f.prompt_tokens, f.completion_tokens) {
            self.app.metrics.tokens(p, c);
        }
        let outcome = match status {
            0..400 => Outcome::Ok,
            500.. => Outcome::Failed,
            _ => Outcome::Refused,
        };
        let actor = f
            .principal
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |p| p.id.clone());
        let mut entry = Entry::new(actor, "api.request", outcome)
            .detail("route", f.route.clone())
            .detail("method", f.method.clone())
            .detail("status", status)
            .detail("latency_ms", (latency.as_secs_f64() * 1e6).round() / 1e3);
        if let Some(p) = &f.principal {
            entry = entry
                .detail("principal", p.name.clone())
                .detail("role", p.role.as_str())
                .detail("clearance", p.clearance.clone());
        }
        if let Some(peer) = f.peer {
            entry = entry.detail("peer", peer.to_string());
        }
        if let Some((alias, digest)) = &f.model {
            entry = entry.subject(digest.clone()).detail("model", alias.clone());
        }
        if let Some(n) = f.prompt_tokens {
            entry = entry.detail("prompt_tokens", n);
        }
        if let Some(n) = f.completion_tokens {
            entry = entry.detail("completion_tokens", n);
        }
        if let Some(reason) = &f.finish_reason {
            entry = entry.detail("finish_reason", reason.clone());
        }
        if f.stream {
            entry = entry.detail("stream", true);
        }
        if let Some(sha) = &f.request_sha256 {
            entry = entry.detail("request_sha256", sha.clone());
        }
        if let Some(text) = f.request_text.take() {
            entry = entry.detail("request_body", text);
        }
        if let Some(hasher) = f.completion.take() {
            entry = entry.detail("completion_sha256", hex::encode(hasher.finalize()));
        }
        if self.app.config.log_bodies && f.completion_tokens.is_some() {
            entry = entry.detail("completion_text", truncated(&f.completion_text));
        }
        if let Some(error) = &f.error {
            entry = entry
                .reason(truncated(&error.detail()))
                .detail("error", error.kind());
        }
        Some(entry)
    }
}

impl Drop for RequestRecord {
    /// A stream dropped before it finished: the client went away. Its entry is written in
    /// the background; nobody is waiting for it.
    fn drop(&mut self) {
        let closed = ApiError::ClientClosed;
        let status = closed.status().as_u16();
        {
            let mut f = self.fields();
            if f.audited {
                return;
            }
            f.error.get_or_insert(closed);
            f.finish_reason
                .get_or_insert_with(|| "client_closed".into());
        }
        if let Some(entry) = self.take_entry(status) {
            let log = self.app.audit.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn_blocking(move || {
                    if let Err(e) = log.append(entry) {
                        tracing::error!("audit log append failed: {e}");
                    }
                });
            } else if let Err(e) = log.append(entry) {
                tracing::error!("audit log append failed: {e}");
            }
        }
    }
}

fn truncated(text: &str) -> String {
    if text.len() <= MAX_LOGGED_BODY {
        return text.to_owned();
    }
    let mut end = MAX_LOGGED_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[truncated]", &text[..end])
}

/// The credential in the header the API uses (`Authorization: Bearer` for OpenAI routes,
/// `x-api-key` for Anthropic), falling back to the other, as either SDK may send either.
fn credential(headers: &HeaderMap, dialect: Dialect) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    match dialect {
        Dialect::OpenAi => bearer.or(api_key),
        Dialect::Anthropic => api_key.or(bearer),
    }
}

/// The dialect of errors for `path`.
pub fn dialect(path: &str) -> Dialect {
    if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// The middleware.
pub async fn gate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if PUBLIC.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let dialect = dialect(&path);
    // Unknown routes are audited under one label, so a scan cannot flood metrics labels.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let record = Arc::new(RequestRecord {
        app: Arc::clone(&app),
        started: Instant::now(),
        fields: Mutex::new(Fields {
            route,
            method: request.method().to_string(),
            peer: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            ..Fields::default()
        }),
    });
    let admitted = app
        .auth
        .authenticate(credential(request.headers(), dialect))
        .and_then(|principal| {
            record.fields().principal = Some(principal.clone());
            if ADMIN.contains(&path.as_str()) && principal.role != KeyRole::Admin {
                return Err(ApiError::Forbidden {
                    message: format!("{path} needs an admin key"),
                });
            }
            app.limiter.acquire(&principal.id)
        });
    let response = match admitted {
        Ok(permit) => {
            record.fields().permit = Some(permit);
            request.extensions_mut().insert(Arc::clone(&record));
            next.run(request).await
        }
        Err(error) => {
            record.error(&error);
            error.into_response_for(dialect)
        }
    };
    if let Some(error) = response.extensions().get::<ApiError>() {
        record.error(error);
    }
    let streaming = record.fields().stream && response.status().is_success();
    if streaming {
        // The stream holds its own reference and writes the entry when it ends.
        return response;
    }
    match record.finish(response.status().as_u16()).await {
        Ok(()) => response,
        Err(error) => error.into_response_for(dialect),
    }
}

/// The request's record, put there by [`gate`].
pub fn record(request_extensions: &axum::http::Extensions) -> Result<Arc<RequestRecord>, ApiError> {
    request_extensions
        .get::<Arc<RequestRecord>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal {
            detail: "request reached a handler without passing the gate".into(),
        })
}
