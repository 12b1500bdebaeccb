//! What every API request passes through: authentication, role and per-key limits on the
//! way in; metrics and its audit entries on the way out.
//!
//! A request's [`RequestRecord`] travels in its extensions; handlers add the model, token
//! counts and body digests. Audit entries are written ahead of the answer:
//!
//! - A request that a model will answer gets its `api.request` entry (caller, route, model
//!   and digest, request digest, prompt tokens) as soon as the model's work is queued, and
//!   nothing the model produces is sent before that entry is durable — if the log cannot
//!   take it, the client gets a 500 and the generation is cancelled. The append overlaps
//!   the model's work, so it adds no latency unless the model answers faster than the disk
//!   syncs. Its `api.result` entry (status, completion tokens, finish reason, answer digest,
//!   latency; the same `request_id`) is appended as the answer goes out, without holding
//!   the answer back. A server that dies mid-answer leaves a request without a result,
//!   which shows; it never leaves an answer without a request.
//! - Any other request (model lists, refusals, bad input) gets one `api.request` entry with
//!   its status, durable before the response is sent.
//!
//! Each response carries the request's id in `x-request-id`; completion ids end with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use airlock_audit::{Entry, Outcome};
use airlock_engine::Usage;
use airlock_registry::KeyRole;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

use crate::App;
use crate::auth::Principal;
use crate::error::{ApiError, Dialect};
use crate::limits::Permit;

/// Routes that answer without credentials and are not audited (probes call them every
/// few seconds; they reveal only whether the server is up).
const PUBLIC: [&str; 2] = ["/healthz", "/readyz"];
/// Routes that need the admin role.
const ADMIN: [&str; 3] = ["/metrics", "/admin/status", "/admin/reload"];

/// Longest body text kept in an audit entry when bodies are logged; the SHA-256 always
/// covers the whole body.
const MAX_LOGGED_BODY: usize = 16 << 10;

/// The response header that names the request, as its audit entries do.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What is known about one request, filled in as it is handled.
#[derive(Debug)]
pub struct RequestRecord {
    app: Arc<App>,
    id: String,
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
    /// Prompt tokens read from a kept cache rather than decoded.
    cached_tokens: usize,
    request_sha256: Option<String>,
    request_text: Option<String>,
    completion: Option<Sha256>,
    completion_text: String,
    finish_reason: Option<String>,
    stream: bool,
    error: Option<ApiError>,
    permit: Option<Permit>,
    /// The `api.request` entry went out ahead of the answer; the end writes `api.result`.
    opened: bool,
    /// The last entry was written (or handed to the log).
    audited: bool,
    /// What the handler adds to the request's last entry (a search's collection, clearance
    /// and the chunks it returned).
    details: Vec<(String, serde_json::Value)>,
    /// What the handler adds to the `api.request` entry, durable before any answer goes out
    /// (the chunks a RAG prompt carries).
    request_details: Vec<(String, serde_json::Value)>,
}

impl RequestRecord {
    fn fields(&self) -> std::sync::MutexGuard<'_, Fields> {
        self.fields.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request's id, as its audit entries and `x-request-id` name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Notes the request body (its digest; its text too if bodies are logged).
    pub fn request_body(&self, body: &[u8]) {
        let mut f = self.fields();
        f.request_sha256 = Some(hex::encode(Sha256::digest(body)));
        if self.app.config.log_bodies {
            f.request_text = Some(truncated(&String::from_utf8_lossy(body)));
        }
    }

    /// Whose generation caches this request may reuse: the caller's alone, at its current
    /// clearance, so that no caller learns from response times what another has asked.
    pub fn cache_scope(&self) -> Option<String> {
        let f = self.fields();
        let principal = f.principal.as_ref()?;
        Some(format!("{}\n{}", principal.id, principal.clearance))
    }

    /// Notes which model answers.
    pub fn model(&self, alias: &str, digest: &str) {
        self.fields().model = Some((alias.to_owned(), digest.to_owned()));
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
    pub fn usage(&self, usage: &Usage, finish_reason: Option<&str>) {
        let mut f = self.fields();
        f.prompt_tokens = Some(usage.prompt_tokens);
        f.completion_tokens = Some(usage.completion_tokens);
        f.cached_tokens = usage.cached_tokens;
        f.finish_reason = finish_reason.map(str::to_owned);
    }

    /// Notes the error a handler answered with.
    pub fn error(&self, error: &ApiError) {
        self.fields().error = Some(error.clone());
    }

    /// Adds `key` = `value` to the request's last entry.
    pub fn detail(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.fields().details.push((key.to_owned(), value.into()));
    }

    /// Adds a detail to the `api.request` entry, which is durable before the answer begins.
    pub fn request_detail(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.fields()
            .request_details
            .push((key.to_owned(), value.into()));
    }

    /// Who is asking, once authenticated.
    pub fn principal(&self) -> Option<Principal> {
        self.fields().principal.clone()
    }

    /// Writes the `api.request` entry once a model's work for this request is queued, and
    /// waits until it is durable; the caller sends nothing the model produced before this
    /// returns `Ok`. `prompt_tokens`: the prompt's length, when known before the work;
    /// `stream`: the answer is streamed, so the stream, not the middleware, ends the record.
    pub async fn open(&self, prompt_tokens: Option<usize>, stream: bool) -> Result<(), ApiError> {
        let entry = {
            let mut f = self.fields();
            if f.opened || f.audited {
                return Ok(());
            }
            f.opened = true;
            f.prompt_tokens = prompt_tokens;
            f.stream = stream;
            self.request_entry(&mut f, Outcome::Ok)
        };
        append_durably(&self.app, entry).await
    }

    /// Ends the record with the final status: the `api.result` entry of an opened request is
    /// handed to the log without waiting; any other request's `api.request` entry is waited
    /// for, and a failure to write it is returned.
    pub async fn finish(&self, status: u16) -> Result<(), ApiError> {
        match self.take_last_entry(status) {
            None => Ok(()),
            Some((entry, true)) => {
                append_behind(&self.app, entry);
                Ok(())
            }
            Some((entry, false)) => append_durably(&self.app, entry).await,
        }
    }

    /// The request's last entry, and whether it is a result (the request was opened);
    /// `None` if it was already taken. Counts the request in metrics.
    fn take_last_entry(&self, status: u16) -> Option<(Entry, bool)> {
        let mut f = self.fields();
        if f.audited {
            return None;
        }
        f.audited = true;
        f.permit = None;
        let latency = self.started.elapsed();
        self.app.metrics.record(&f.route, status, latency);
        if let (Some(p), Some(c)) = (f.prompt_tokens, f.completion_tokens) {
            self.app.metrics.tokens(p, c, f.cached_tokens);
        }
        let outcome = match status {
            0..400 => Outcome::Ok,
            500.. => Outcome::Failed,
            _ => Outcome::Refused,
        };
        let opened = f.opened;
        let entry = if opened {
            self.entry(&f, "api.result", outcome)
        } else {
            self.request_entry(&mut f, outcome)
        };
        Some((self.add_result(entry, &mut f, status, latency), opened))
    }

    /// An entry naming the caller, the request and the model.
    fn entry(&self, f: &Fields, action: &str, outcome: Outcome) -> Entry {
        let actor = f
            .principal
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |p| p.id.clone());
        let mut entry = Entry::new(actor, action, outcome)
            .detail("request_id", self.id.clone())
            .detail("route", f.route.clone());
        if let Some((alias, digest)) = &f.model {
            entry = entry.subject(digest.clone()).detail("model", alias.clone());
        }
        entry
    }

    /// `api.request`: who asked what, with the request's digest (and text, if logged).
    fn request_entry(&self, f: &mut Fields, outcome: Outcome) -> Entry {
        let mut entry = self
            .entry(f, "api.request", outcome)
            .detail("method", f.method.clone());
        if let Some(p) = &f.principal {
            entry = entry
                .detail("principal", p.name.clone())
                .detail("role", p.role.as_str())
                .detail("clearance", p.clearance.clone());
        }
        if let Some(peer) = f.peer {
            entry = entry.detail("peer", peer.to_string());
        }
        if let Some(n) = f.prompt_tokens {
            entry = entry.detail("prompt_tokens", n);
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
        for (key, value) in f.request_details.drain(..) {
            entry = entry.detail(&key, value);
        }
        entry
    }

    /// How the request ended: status, latency, tokens, the answer's digest, the error.
    fn add_result(
        &self,
        mut entry: Entry,
        f: &mut Fields,
        status: u16,
        latency: std::time::Duration,
    ) -> Entry {
        entry = entry
            .detail("status", status)
            .detail("latency_ms", (latency.as_secs_f64() * 1e6).round() / 1e3);
        if let Some(n) = f.prompt_tokens {
            entry = entry.detail("prompt_tokens", n);
        }
        if let Some(n) = f.completion_tokens {
            entry = entry.detail("completion_tokens", n);
        }
        if f.cached_tokens > 0 {
            entry = entry.detail("cached_tokens", f.cached_tokens);
        }
        if let Some(reason) = &f.finish_reason {
            entry = entry.detail("finish_reason", reason.clone());
        }
        if f.stream {
            entry = entry.detail("stream", true);
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
        for (key, value) in f.details.drain(..) {
            entry = entry.detail(&key, value);
        }
        entry
    }
}

impl Drop for RequestRecord {
    /// A stream dropped before it finished: the client went away. Its last entry is written
    /// in the background; nobody is waiting for it.
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
        if let Some((entry, _)) = self.take_last_entry(status) {
            append_behind(&self.app, entry);
        }
    }
}

/// Appends `entry` and waits until it is durable.
async fn append_durably(app: &Arc<App>, entry: Entry) -> Result<(), ApiError> {
    let log = Arc::clone(&app.audit);
    tokio::task::spawn_blocking(move || log.append(entry))
        .await
        .map_err(|e| ApiError::Internal {
            detail: format!("audit task failed: {e}"),
        })?
        .map(|_| ())
        .map_err(|e| {
            tracing::error!("audit log append failed: {e}");
            app.metrics.audit_failure();
            ApiError::Internal {
                detail: format!("audit log append failed: {e}"),
            }
        })
}

/// Appends `entry` in the background; the server waits for these before it stops.
fn append_behind(app: &Arc<App>, entry: Entry) {
    let guard = app.audit_backlog.enter();
    let app = Arc::clone(app);
    let append = move || {
        if let Err(e) = app.audit.append(entry) {
            tracing::error!("audit log append failed: {e}");
            app.metrics.audit_failure();
        }
        drop(guard);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(append)),
        Err(_) => append(),
    }
}

/// Audit entries handed to the log and not yet written.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

/// One pending entry; dropping it marks the entry written.
struct BacklogGuard {
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

impl Backlog {
    fn enter(&self) -> BacklogGuard {
        self.pending.fetch_add(1, Ordering::AcqRel);
        BacklogGuard {
            pending: Arc::clone(&self.pending),
            drained: Arc::clone(&self.drained),
        }
    }

    /// Returns once every entry handed to the log so far is written.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for BacklogGuard {
    fn drop(&mut self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
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
        id: app.next_id(),
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
    let mut response = if streaming {
        // The stream holds its own reference and ends the record when it ends.
        response
    } else {
        match record.finish(response.status().as_u16()).await {
            Ok(()) => response,
            Err(error) => error.into_response_for(dialect),
        }
    };
    if let Ok(id) = HeaderValue::from_str(record.id()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_backlog_drains_only_when_every_pending_entry_is_written() {
        let backlog = Arc::new(Backlog::default());
        backlog.drained().await;
        let guards: Vec<BacklogGuard> = (0..3).map(|_| backlog.enter()).collect();
        let waiter = tokio::spawn({
            let backlog = Arc::clone(&backlog);
            async move { backlog.drained().await }
        });
        for guard in guards {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished(), "an entry is still pending");
            drop(guard);
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("drained once the last entry is written")
            .unwrap();
    }

    #[test]
    fn credentials_come_from_the_apis_own_header_first() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer openai".parse().unwrap());
        headers.insert("x-api-key", "anthropic".parse().unwrap());
        assert_eq!(credential(&headers, Dialect::OpenAi), Some("openai"));
        assert_eq!(credential(&headers, Dialect::Anthropic), Some("anthropic"));
        headers.remove("x-api-key");
        assert_eq!(credential(&headers, Dialect::Anthropic), Some("openai"));
    }
}
