//! `airlock.toml`: what the server serves, to whom, within which limits.
//!
//! Precedence is built-in defaults < the file < `AIRLOCK_*` environment < flags. The file
//! is read into [`RawConfig`] (every field optional, unknown fields refused), overrides are
//! applied on top, and [`RawConfig::validate`] produces the [`Config`] the server runs with.
//! Nothing after startup sees a raw value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_upstream::ProcessKind;
use serde::Deserialize;

use crate::{Error, Result};

/// The file as written: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Registry data directory.
    pub data_dir: Option<PathBuf>,
    /// Alias → model to serve.
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Who may call.
    #[serde(default)]
    pub auth: RawAuth,
    /// Ceilings.
    #[serde(default)]
    pub limits: RawLimits,
    /// What the audit log keeps of each request.
    #[serde(default)]
    pub audit: RawAudit,
    /// Knowledge collections to serve for search; absent: every collection of the data
    /// directory.
    pub collections: Option<Vec<String>>,
    /// `[egress]`: narrows the registry policy's allow-list for this server.
    pub egress: Option<RawEgress>,
}

/// `[egress]` of a server's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// Destinations (`10.0.0.5:636`, `10.0.0.0/24:636`), each within an entry of the
    /// registry's `policy.toml` `[egress]`: a server may narrow the list, never widen it.
    pub allow: Vec<String>,
}

/// One served model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `name:tag`, `name:version` or `name@sha256:<hex>`.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Generations that run at once (chat models).
    pub slots: Option<usize>,
    /// Tokens one generation may hold, prompt and answer (chat models).
    pub context: Option<usize>,
    /// CPU threads.
    pub threads: Option<usize>,
    /// What runs it: `embedded` (the default: in this process), `llama-server` or `vllm`
    /// (an engine process airlock starts and supervises).
    pub engine: Option<String>,
    /// The engine process's executable; else `AIRLOCK_LLAMA_SERVER` / `AIRLOCK_VLLM`, else
    /// the name on `PATH`.
    pub binary: Option<PathBuf>,
    /// Seconds an engine process may take to load (default 300).
    pub startup_timeout_seconds: Option<u64>,
    /// Let an engine process reuse prompt caches across callers (default false: a caller
    /// could otherwise learn from response times whether others sent the same prompt
    /// prefix; the embedded engine always keeps caches per caller).
    pub share_prompt_cache: Option<bool>,
    /// Answer from knowledge collections (chat models): `rag = { collections = [...] }`.
    pub rag: Option<RawRag>,
}

/// `rag` of a served model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRag {
    /// Collections searched, at the caller's clearance.
    pub collections: Option<Vec<String>>,
    /// Chunks retrieved per question (default 5).
    pub top_k: Option<usize>,
    /// Tokens the placed sources may take in the prompt (default 1500).
    pub max_context_tokens: Option<usize>,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `[auth.oidc]`: accept JWTs from the enclave's identity provider.
    pub oidc: Option<RawOidc>,
}

/// `[auth.oidc]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// Expected `iss`.
    pub issuer: Option<String>,
    /// Expected `aud` (one of them, if the token has several).
    pub audience: Option<String>,
    /// JWKS file exported from the identity provider (no key is ever fetched).
    pub jwks_file: Option<PathBuf>,
    /// Claim holding the caller's roles (a string or an array of strings).
    pub role_claim: Option<String>,
    /// Values of the role claim that make the caller an admin.
    pub admin_roles: Option<Vec<String>>,
    /// Values of the role claim that let the caller in as a user. Empty: any valid token.
    pub user_roles: Option<Vec<String>>,
    /// Claim holding the caller's clearance.
    pub clearance_claim: Option<String>,
    /// Clearance of a token without that claim.
    pub default_clearance: Option<String>,
    /// Claim holding the caller's access groups (a string or an array of strings).
    pub groups_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: Option<u64>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body, bytes.
    pub max_body_bytes: Option<usize>,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: Option<usize>,
    /// Requests one key may have in flight.
    pub per_key_concurrency: Option<usize>,
    /// Requests one key may start per minute.
    pub per_key_per_minute: Option<u32>,
    /// Requests that may wait for a generation slot, per chat model.
    pub queue: Option<usize>,
    /// Texts in one embeddings request.
    pub max_embedding_inputs: Option<usize>,
    /// Embedding requests that may wait for the model, per embedding model.
    pub embedding_queue: Option<usize>,
    /// Seconds a connection may take to send a complete request header, counted from when
    /// the server starts waiting for one (also how long a kept-alive connection may idle).
    pub header_read_timeout_seconds: Option<u64>,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: Option<usize>,
    /// Connections with no request in flight (new ones not yet through their first header,
    /// kept-alive ones waiting for the next).
    pub max_idle_connections: Option<usize>,
}

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Keep prompt and completion text in the audit log (`true`), or only their SHA-256
    /// (`false`, the default).
    pub log_bodies: Option<bool>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Registry data directory.
    pub data_dir: PathBuf,
    /// Alias → model.
    pub models: BTreeMap<String, ModelSpec>,
    /// OIDC, if configured.
    pub oidc: Option<OidcConfig>,
    /// Ceilings.
    pub limits: Limits,
    /// Keep bodies in the audit log.
    pub log_bodies: bool,
    /// Collections to serve; `None`: every one the data directory holds.
    pub collections: Option<Vec<String>>,
    /// The destinations of the registry's egress allow-list this server keeps; `None`: all.
    pub egress: Option<Vec<airlock_confine::Destinations>>,
}

/// A model to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Registry reference.
    pub reference: String,
    /// Generations at once (chat).
    pub slots: usize,
    /// Tokens per generation (chat); `None`: the model's own, at most 4096.
    pub context: Option<usize>,
    /// CPU threads; `None`: all cores.
    pub threads: Option<usize>,
    /// What runs it.
    pub engine: EngineChoice,
    /// Answers from collections, if set.
    pub rag: Option<RagSpec>,
}

/// How a served model answers from collections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RagSpec {
    /// Collections searched.
    pub collections: Vec<String>,
    /// Chunks retrieved per question, over all its collections.
    pub top_k: usize,
    /// Tokens the placed sources may take.
    pub max_context_tokens: usize,
}

/// Chunks a RAG model retrieves when its `top_k` is not set.
pub const DEFAULT_RAG_TOP_K: usize = 5;
/// Source tokens a RAG model places when its `max_context_tokens` is not set.
pub const DEFAULT_RAG_CONTEXT_TOKENS: usize = 1500;

/// What runs a served model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineChoice {
    /// The embedded engine, in this process.
    Embedded,
    /// An engine process airlock starts and supervises.
    Process(ProcessChoice),
}

impl EngineChoice {
    /// The name the configuration uses.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Process(p) => match p.kind {
                ProcessKind::LlamaServer => "llama-server",
                ProcessKind::Vllm => "vllm",
            },
        }
    }
}

/// An engine process's settings, its executable resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessChoice {
    /// Which program.
    pub kind: ProcessKind,
    /// Its executable.
    pub binary: PathBuf,
    /// How long it may take to load.
    pub startup_timeout: Duration,
    /// Whether callers share its prompt cache.
    pub share_prompt_cache: bool,
}

/// Seconds an engine process may take to load, by default.
const DEFAULT_STARTUP_TIMEOUT: u64 = 300;

/// Validated `[auth.oidc]`.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// The JWKS file.
    pub jwks_file: PathBuf,
    /// Claim with roles.
    pub role_claim: String,
    /// Role values that make an admin.
    pub admin_roles: Vec<String>,
    /// Role values that make a user; empty: any valid token.
    pub user_roles: Vec<String>,
    /// Claim with the clearance.
    pub clearance_claim: String,
    /// Clearance when the claim is absent.
    pub default_clearance: String,
    /// Claim with the access groups.
    pub groups_claim: String,
    /// Tolerated clock skew.
    pub leeway: Duration,
}

/// Every ceiling the server enforces, with its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (default 1 MiB: far above any prompt the served context holds).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` (default 4096).
    pub max_tokens: usize,
    /// Requests one principal may have in flight (default 32).
    pub per_key_concurrency: usize,
    /// Requests one principal may start per minute (default 6000).
    pub per_key_per_minute: u32,
    /// Requests waiting for a chat slot before 429s (default 64).
    pub queue: usize,
    /// Texts in one embeddings request (default 256).
    pub max_embedding_inputs: usize,
    /// Embedding requests waiting for the model before 429s (default 64).
    pub embedding_queue: usize,
    /// How long a connection may take to send a complete request header (default 10 s),
    /// counted from when the server starts waiting for it: when the connection is accepted,
    /// and on a kept-alive connection when the previous response has been sent. A client
    /// that sends its header slowly, or not at all, is disconnected when it passes; so is a
    /// kept-alive connection that sends no new request for this long (the HTTP library,
    /// hyper, runs one timer for both). A request whose header is complete is not timed by
    /// it, however long its answer streams.
    pub header_read_timeout: Duration,
    /// Connections open at once (default 512, under the usual limit of 1024 open files).
    /// At the cap the server stops accepting: new connections wait in the kernel's listen
    /// backlog, unanswered, until an open one closes.
    pub max_connections: usize,
    /// Connections open with no request in flight (default 128; unset, never more than
    /// `max_connections`): new ones that have not yet sent a complete request header, and
    /// kept-alive ones waiting for their next. At the cap a new connection is not served,
    /// and nothing more is accepted, until a place frees; a connection that finishes a
    /// response then, or while a new one waits for a place, is closed instead of kept alive.
    pub max_idle_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_tokens: 4096,
            per_key_concurrency: 32,
            per_key_per_minute: 6000,
            queue: 64,
            max_embedding_inputs: 256,
            embedding_queue: 64,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT),
            max_connections: 512,
            max_idle_connections: 128,
        }
    }
}

/// Seconds a connection may take to send a complete request header, by default.
const DEFAULT_HEADER_READ_TIMEOUT: u64 = 10;

/// Default listen address: loopback only; serving other hosts is a deliberate choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Generations per chat model at once when the config does not say.
const DEFAULT_SLOTS: usize = 8;

impl RawConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: Some(path.to_owned()),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config { reason, .. } => Error::Config {
                path: Some(path.to_owned()),
                reason,
            },
            other => other,
        })
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config {
            path: None,
            reason: e.message().to_owned(),
        })
    }

    /// Adds or replaces a model from `ALIAS=REF` (a flag or env value).
    pub fn set_model(&mut self, assignment: &str) -> Result<()> {
        let (alias, reference) = assignment.split_once('=').ok_or_else(|| Error::Config {
            path: None,
            reason: format!("model {assignment:?} is not ALIAS=REF (e.g. chat=smollm2:prod)"),
        })?;
        let model = self.models.entry(alias.trim().to_owned()).or_default();
        model.reference = Some(reference.trim().to_owned());
        Ok(())
    }

    /// Checks every value and resolves defaults. `path` names the file in errors.
    pub fn validate(self, path: Option<&Path>) -> Result<Config> {
        let bad = |reason: String| Error::Config {
            path: path.map(Path::to_owned),
            reason,
        };
        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| bad(format!("listen {listen_text:?} is not an IP:port address")))?;
        let data_dir = self
            .data_dir
            .or_else(airlock_registry::default_data_dir)
            .ok_or_else(|| bad("no data_dir given and no default data directory".into()))?;
        let mut models = BTreeMap::new();
        for (alias, raw) in self.models {
            check_alias(&alias).map_err(&bad)?;
            let reference = raw
                .reference
                .clone()
                .ok_or_else(|| bad(format!("model {alias:?} has no ref")))?;
            airlock_registry::Reference::parse(&reference)
                .map_err(|e| bad(format!("model {alias:?}: {e}")))?;
            let slots = raw.slots.unwrap_or(DEFAULT_SLOTS);
            if !(1..=256).contains(&slots) {
                return Err(bad(format!(
                    "model {alias:?}: slots {slots} is not 1..=256"
                )));
            }
            if raw.context.is_some_and(|c| !(16..=1 << 20).contains(&c)) {
                return Err(bad(format!(
                    "model {alias:?}: context must be 16..=1048576"
                )));
            }
            if raw.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
                return Err(bad(format!("model {alias:?}: threads must be 1..=1024")));
            }
            let engine = engine_choice(&alias, &raw).map_err(&bad)?;
            let rag = raw
                .rag
                .map(|r| rag_spec(&alias, r, self.collections.as_deref()))
                .transpose()
                .map_err(&bad)?;
            models.insert(
                alias,
                ModelSpec {
                    reference,
                    slots,
                    context: raw.context,
                    threads: raw.threads,
                    engine,
                    rag,
                },
            );
        }
        if models.is_empty() {
            return Err(bad(
                "no models to serve: add [models.ALIAS] ref = \"name:tag\" or --model ALIAS=REF"
                    .into(),
            ));
        }
        let oidc = self.auth.oidc.map(|o| validate_oidc(o, &bad)).transpose()?;
        let egress = self
            .egress
            .map(|e| {
                e.allow
                    .iter()
                    .map(|to| {
                        to.parse::<airlock_confine::Destinations>()
                            .map_err(|error| bad(format!("egress.allow: {error}")))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        let defaults = Limits::default();
        let l = self.limits;
        let limits = Limits {
            max_body_bytes: l.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_tokens: l.max_tokens.unwrap_or(defaults.max_tokens),
            per_key_concurrency: l
                .per_key_concurrency
                .unwrap_or(defaults.per_key_concurrency),
            per_key_per_minute: l.per_key_per_minute.unwrap_or(defaults.per_key_per_minute),
            queue: l.queue.unwrap_or(defaults.queue),
            max_embedding_inputs: l
                .max_embedding_inputs
                .unwrap_or(defaults.max_embedding_inputs),
            embedding_queue: l.embedding_queue.unwrap_or(defaults.embedding_queue),
            header_read_timeout: Duration::from_secs(
                l.header_read_timeout_seconds
                    .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            ),
            max_connections: l.max_connections.unwrap_or(defaults.max_connections),
            // Unset, it follows a lower max_connections down.
            max_idle_connections: l.max_idle_connections.unwrap_or_else(|| {
                defaults
                    .max_idle_connections
                    .min(l.max_connections.unwrap_or(defaults.max_connections))
            }),
        };
        for (name, value) in [
            ("max_body_bytes", limits.max_body_bytes),
            ("max_tokens", limits.max_tokens),
            ("per_key_concurrency", limits.per_key_concurrency),
            ("per_key_per_minute", limits.per_key_per_minute as usize),
            ("max_embedding_inputs", limits.max_embedding_inputs),
            ("max_connections", limits.max_connections),
            ("max_idle_connections", limits.max_idle_connections),
        ] {
            if value == 0 {
                return Err(bad(format!("limits.{name} must be at least 1")));
            }
        }
        if limits.max_body_bytes > 256 << 20 {
            return Err(bad("limits.max_body_bytes is over 256 MiB".into()));
        }
        if !(1..=3600).contains(&limits.header_read_timeout.as_secs()) {
            return Err(bad(
                "limits.header_read_timeout_seconds must be 1..=3600".into()
            ));
        }
        if limits.max_connections > 1 << 20 {
            return Err(bad("limits.max_connections is over 1048576".into()));
        }
        if limits.max_idle_connections > limits.max_connections {
            return Err(bad(format!(
                "limits.max_idle_connections ({}) is over limits.max_connections ({})",
                limits.max_idle_connections, limits.max_connections
            )));
        }
        Ok(Config {
            listen,
            data_dir,
            models,
            oidc,
            limits,
            log_bodies: self.audit.log_bodies.unwrap_or(false),
            collections: self.collections,
            egress,
        })
    }
}

fn rag_spec(
    alias: &str,
    raw: RawRag,
    served: Option<&[String]>,
) -> std::result::Result<RagSpec, String> {
    let collections = raw.collections.unwrap_or_default();
    if collections.is_empty() {
        return Err(format!(
            "model {alias:?}: rag names no collections; add collections = [\"NAME\"]"
        ));
    }
    if let Some(served) = served
        && let Some(missing) = collections.iter().find(|c| !served.contains(c))
    {
        return Err(format!(
            "model {alias:?}: rag collection {missing:?} is not in the served collections"
        ));
    }
    let top_k = raw.top_k.unwrap_or(DEFAULT_RAG_TOP_K);
    if !(1..=50).contains(&top_k) {
        return Err(format!("model {alias:?}: rag top_k {top_k} is not 1..=50"));
    }
    let max_context_tokens = raw.max_context_tokens.unwrap_or(DEFAULT_RAG_CONTEXT_TOKENS);
    if !(64..=1 << 20).contains(&max_context_tokens) {
        return Err(format!(
            "model {alias:?}: rag max_context_tokens {max_context_tokens} is not 64..=1048576"
        ));
    }
    Ok(RagSpec {
        collections,
        top_k,
        max_context_tokens,
    })
}

fn validate_oidc(raw: RawOidc, bad: &impl Fn(String) -> Error) -> Result<OidcConfig> {
    let need = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("auth.oidc.{name} is required")))
    };
    Ok(OidcConfig {
        issuer: need(raw.issuer, "issuer")?,
        audience: need(raw.audience, "audience")?,
        jwks_file: raw
            .jwks_file
            .ok_or_else(|| bad("auth.oidc.jwks_file is required".into()))?,
        role_claim: raw.role_claim.unwrap_or_else(|| "roles".into()),
        admin_roles: raw
            .admin_roles
            .unwrap_or_else(|| vec!["airlock-admin".into()]),
        user_roles: raw.user_roles.unwrap_or_default(),
        clearance_claim: raw.clearance_claim.unwrap_or_else(|| "clearance".into()),
        default_clearance: raw.default_clearance.unwrap_or_else(|| "public".into()),
        groups_claim: raw.groups_claim.unwrap_or_else(|| "groups".into()),
        leeway: Duration::from_secs(raw.leeway_seconds.unwrap_or(30).min(600)),
    })
}

/// The engine a model's settings choose, with an engine process's executable found.
fn engine_choice(alias: &str, raw: &RawModel) -> std::result::Result<EngineChoice, String> {
    let kind = match raw.engine.as_deref() {
        None | Some("embedded") => {
            let process_only = [
                ("binary", raw.binary.is_some()),
                (
                    "startup_timeout_seconds",
                    raw.startup_timeout_seconds.is_some(),
                ),
                ("share_prompt_cache", raw.share_prompt_cache.is_some()),
            ];
            if let Some((name, _)) = process_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "model {alias:?}: {name} applies to engine processes; set engine = \"llama-server\" or \"vllm\""
                ));
            }
            return Ok(EngineChoice::Embedded);
        }
        Some("llama-server") => ProcessKind::LlamaServer,
        Some("vllm") => ProcessKind::Vllm,
        Some(other) => {
            return Err(format!(
                "model {alias:?}: engine {other:?} is not one of: embedded, llama-server, vllm"
            ));
        }
    };
    let binary = airlock_upstream::resolve_binary(kind, raw.binary.as_deref(), |name| {
        std::env::var_os(name)
    })
    .map_err(|e| format!("model {alias:?}: {e}"))?;
    let timeout = raw
        .startup_timeout_seconds
        .unwrap_or(DEFAULT_STARTUP_TIMEOUT);
    if !(1..=3600).contains(&timeout) {
        return Err(format!(
            "model {alias:?}: startup_timeout_seconds must be 1..=3600"
        ));
    }
    Ok(EngineChoice::Process(ProcessChoice {
        kind,
        binary,
        startup_timeout: Duration::from_secs(timeout),
        share_prompt_cache: raw.share_prompt_cache.unwrap_or(false),
    }))
}

/// Aliases appear in URLs' JSON bodies and metric labels: keep them plain.
fn check_alias(alias: &str) -> std::result::Result<(), String> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model alias {alias:?}: use 1-64 letters, digits, '.', '_', '-', ':'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(text: &str) -> Result<Config> {
        RawConfig::parse(text)?.validate(None)
    }

    #[test]
    fn a_minimal_file_gets_loopback_and_the_documented_defaults() -> Result<()> {
        let config = validated("data_dir = \"/d\"\n[models.chat]\nref = \"smollm2:prod\"\n")?;
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(config.listen.ip().is_loopback());
        assert_eq!(config.limits, Limits::default());
        assert!(!config.log_bodies);
        assert_eq!(config.models["chat"].slots, DEFAULT_SLOTS);
        Ok(())
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = validated("data_dir = \"/d\"\nlisten_port = 80\n").map(|_| ());
        assert!(
            matches!(&err, Err(Error::Config { reason, .. }) if reason.contains("listen_port"))
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (text, needle) in [
            (
                "data_dir=\"/d\"\nlisten = \"localhost\"\n[models.a]\nref=\"m:prod\"",
                "listen",
            ),
            ("data_dir=\"/d\"\n", "no models"),
            ("data_dir=\"/d\"\n[models.a]\nref=\"M!\"", "model \"a\""),
            ("data_dir=\"/d\"\n[models.\"a b\"]\nref=\"m:prod\"", "alias"),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\nslots=0",
                "slots",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n[limits]\nmax_tokens=0",
                "max_tokens",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n[auth.oidc]\nissuer=\"i\"",
                "audience",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n[limits]\nheader_read_timeout_seconds=0",
                "header_read_timeout_seconds",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n[limits]\nmax_connections=0",
                "max_connections",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n[limits]\nmax_connections=8\nmax_idle_connections=9",
                "max_idle_connections (9) is over limits.max_connections (8)",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\nrag={collections=[]}",
                "names no collections",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\nrag={collections=[\"kb\"],top_k=0}",
                "top_k",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\nrag={collections=[\"kb\"],max_context_tokens=1}",
                "max_context_tokens",
            ),
            (
                "data_dir=\"/d\"\ncollections=[\"other\"]\n[models.a]\nref=\"m:prod\"\nrag={collections=[\"kb\"]}",
                "not in the served collections",
            ),
            (
                "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\nrag={collections=[\"kb\"],k=3}",
                "unknown field",
            ),
        ] {
            match validated(text) {
                Err(Error::Config { reason, .. }) => {
                    assert!(reason.contains(needle), "{text:?}: {reason}");
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn connection_limits_come_from_the_limits_table_and_idle_follows_a_lower_cap() -> Result<()> {
        let defaults = Limits::default();
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_connections, 512);
        assert_eq!(defaults.max_idle_connections, 128);
        let config = validated(
            "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n[limits]\nheader_read_timeout_seconds=3\nmax_connections=64\nmax_idle_connections=16",
        )?;
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(config.limits.max_connections, 64);
        assert_eq!(config.limits.max_idle_connections, 16);
        let lowered =
            validated("data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n[limits]\nmax_connections=8")?;
        assert_eq!(lowered.limits.max_idle_connections, 8);
        Ok(())
    }

    #[test]
    fn an_engine_process_needs_its_binary_and_takes_its_own_settings() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            what: "tempdir".into(),
            source: e,
        })?;
        let binary = dir.path().join("llama-server");
        std::fs::write(&binary, b"").map_err(|e| Error::Io {
            what: "binary".into(),
            source: e,
        })?;
        let config = validated(&format!(
            "data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\nengine=\"llama-server\"\nbinary={:?}\nstartup_timeout_seconds=30\nshare_prompt_cache=true",
            binary.display()
        ))?;
        let EngineChoice::Process(process) = &config.models["a"].engine else {
            panic!("an engine process was configured")
        };
        assert_eq!(process.kind, ProcessKind::LlamaServer);
        assert_eq!(process.startup_timeout, Duration::from_secs(30));
        assert!(process.share_prompt_cache);
        assert_eq!(config.models["a"].engine.name(), "llama-server");
        let default = validated("data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"")?;
        assert_eq!(default.models["a"].engine, EngineChoice::Embedded);
        for (text, needle) in [
            ("engine=\"ollama\"", "not one of"),
            (
                "engine=\"llama-server\"\nbinary=\"/no/such/llama-server\"",
                "no such file",
            ),
            ("binary=\"/usr/bin/true\"", "applies to engine processes"),
        ] {
            let text = format!("data_dir=\"/d\"\n[models.a]\nref=\"m:prod\"\n{text}");
            match validated(&text) {
                Err(Error::Config { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn flags_replace_a_models_reference_from_the_file() -> Result<()> {
        let mut raw = RawConfig::parse("data_dir=\"/d\"\n[models.chat]\nref=\"a:prod\"\nslots=2")?;
        raw.set_model("chat=b:prod")?;
        raw.set_model("emb=c:prod")?;
        let config = raw.validate(None)?;
        assert_eq!(config.models["chat"].reference, "b:prod");
        assert_eq!(config.models["chat"].slots, 2);
        assert_eq!(config.models["emb"].reference, "c:prod");
        assert!(matches!(
            RawConfig::default().set_model("no-equals"),
            Err(Error::Config { .. })
        ));
        Ok(())
    }
}
