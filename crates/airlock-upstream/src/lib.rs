//! Engine processes: llama-server (and vLLM where it is installed) started by airlock on
//! files the registry has just verified, supervised, and answering through the same
//! [`ChatEngine`] interface as the embedded engine.
//!
//! An [`EngineProcess`] starts its process offline ([`launch`]: emptied environment with every
//! offline switch, no proxy, the approved files linked read-only, a unix socket in a private
//! directory, a fresh secret per start), waits until it is healthy, and keeps it so: a process
//! that exits or stops answering health checks is started again with backoff, after its files
//! are verified again; requests meanwhile are refused at once with
//! [`Error::Unavailable`](airlock_engine::Error::Unavailable) and a time to come back, never
//! left waiting. Dropping the engine stops the process.
//!
//! It deliberately does not: download anything, let the process listen on a network port, or
//! trust the process to bound its output (streams are read with limits, [`sse`]).
//!
//! ```no_run
//! # fn demo(files: airlock_engine::ModelFiles) -> Result<(), airlock_upstream::Error> {
//! use std::time::Duration;
//! use airlock_upstream::{EngineProcess, Hooks, ProcessKind, ProcessSpec};
//! let spec = ProcessSpec {
//!     kind: ProcessKind::LlamaServer,
//!     binary: "/opt/llama.cpp/bin/llama-server".into(),
//!     slots: 4,
//!     context_per_slot: 4096,
//!     threads: Some(8),
//!     startup_timeout: Duration::from_secs(120),
//!     share_prompt_cache: false,
//!     runtime_root: Some("/var/lib/airlock/run".into()),
//! };
//! let verify_again = files.clone();
//! let hooks = Hooks {
//!     verify: Box::new(move || Ok(verify_again.clone())),
//!     on_event: Box::new(|event| eprintln!("{event:?}")),
//! };
//! let engine = EngineProcess::start("smollm2:1.0.0", spec, files, hooks)?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod http;
pub mod launch;
mod protocol;
mod sse;
mod supervisor;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use airlock_engine::{
    BoxFuture, ChatEngine, ChatEvent, ChatRequest, ChatStream, EngineKind, EngineStatus,
    ModelFiles, Prompter,
};
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use hyper::body::Incoming;
use serde_json::Value;

pub use launch::{OFFLINE_ENVIRONMENT, resolve_binary};

use crate::protocol::{Chunk, OpenAiEnding};
use crate::sse::SseDecoder;
use crate::supervisor::Shared;

/// Which program runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// llama.cpp's `llama-server` (GGUF models).
    LlamaServer,
    /// vLLM's OpenAI-compatible server (`vllm serve`, safetensors models).
    Vllm,
}

impl ProcessKind {
    /// The kind the engine interface reports.
    pub fn engine_kind(self) -> EngineKind {
        match self {
            Self::LlamaServer => EngineKind::LlamaServer,
            Self::Vllm => EngineKind::Vllm,
        }
    }
}

/// How to run one engine process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Which program.
    pub kind: ProcessKind,
    /// Its executable (see [`resolve_binary`]).
    pub binary: PathBuf,
    /// Requests it runs at once.
    pub slots: usize,
    /// Tokens one request may hold, prompt and answer.
    pub context_per_slot: usize,
    /// CPU threads (llama-server); `None`: its own default.
    pub threads: Option<usize>,
    /// How long it may take to load before the start counts as failed.
    pub startup_timeout: Duration,
    /// Let the process reuse prompt caches across callers (faster follow-up turns; a caller
    /// could then learn from response times whether others sent the same prompt prefix).
    pub share_prompt_cache: bool,
    /// Where its runtime directories (socket, model links) are made: a directory only
    /// airlock's user can enter, such as the data directory's `run/`. `None`: the system's
    /// temporary directory.
    pub runtime_root: Option<PathBuf>,
}

/// What the supervisor asks of its owner.
pub struct Hooks {
    /// Verifies the model's files again (before every restart) and returns them, or why they
    /// may not be used; the process is not started until they pass.
    pub verify: Box<dyn Fn() -> Result<ModelFiles, String> + Send + Sync>,
    /// Told of every start, exit, refusal and stop (for the audit log).
    pub on_event: Box<dyn Fn(ProcessEvent) + Send + Sync>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// Something that happened to an engine process.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessEvent {
    /// It started and became ready.
    Started {
        /// Its process id.
        pid: u32,
        /// Seconds from launch to ready.
        seconds: f64,
    },
    /// It went down (exited, or was killed for failing health checks); a restart follows.
    Exited {
        /// Its process id.
        pid: u32,
        /// How it went down.
        reason: String,
        /// Its last log lines.
        log: String,
    },
    /// A restart failed; another follows after backoff.
    Failed {
        /// Why.
        reason: String,
    },
    /// Its files failed verification: it was not started.
    Refused {
        /// Why.
        reason: String,
    },
    /// It was stopped because airlock no longer serves it.
    Stopped {
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: String,
    },
}

/// Why an engine process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model's files cannot be served by this kind of process.
    #[error("{0}")]
    Model(#[from] airlock_engine::Error),
    /// The process could not be launched.
    #[error("{0}")]
    Launch(String),
    /// The process exited while starting.
    #[error("the engine process {status} while starting; its last output: {log}")]
    Exited {
        /// How it ended.
        status: String,
        /// Its last log lines.
        log: String,
    },
    /// The process did not become ready in time (and was stopped).
    #[error("the engine process was not ready within {seconds} s; its last output: {log}")]
    NotReady {
        /// The startup timeout.
        seconds: u64,
        /// Its last log lines.
        log: String,
    },
}

/// A supervised engine process behind the engine interface.
#[derive(Debug)]
pub struct EngineProcess {
    kind: ProcessKind,
    shared: Arc<Shared>,
    /// llama-server takes token ids rendered here.
    prompter: Option<Prompter>,
    context_per_slot: usize,
    share_prompt_cache: bool,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

impl EngineProcess {
    /// Starts the process on `files` (verified by the caller) and returns once it is ready,
    /// or with why it is not (its last log lines included). Later restarts call
    /// `hooks.verify` first.
    pub fn start(
        label: &str,
        spec: ProcessSpec,
        files: ModelFiles,
        hooks: Hooks,
    ) -> Result<Self, Error> {
        let prompter = match spec.kind {
            ProcessKind::LlamaServer => Some(Prompter::load(&files)?),
            ProcessKind::Vllm => None,
        };
        let context_per_slot = match &prompter {
            Some(p) => spec.context_per_slot.min(p.training_context()),
            None => spec.context_per_slot,
        };
        let spec = ProcessSpec {
            context_per_slot,
            ..spec
        };
        let shared = Arc::new(Shared::new());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let supervisor = {
            let shared = Arc::clone(&shared);
            let spec = spec.clone();
            std::thread::Builder::new()
                .name(format!("engine {label}"))
                .spawn(move || supervisor::supervise(&shared, &spec, files, &hooks, ready_tx))
                .map_err(|e| Error::Launch(format!("cannot start the supervisor thread: {e}")))?
        };
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(Error::Launch("the supervisor ended while starting".into())));
        if let Err(error) = started {
            let _ = supervisor.join();
            return Err(error);
        }
        Ok(Self {
            kind: spec.kind,
            shared,
            prompter,
            context_per_slot,
            share_prompt_cache: spec.share_prompt_cache,
            supervisor: Some(supervisor),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.shared.state().1
    }

    async fn answer(&self, request: ChatRequest) -> airlock_engine::Result<ChatStream> {
        use airlock_engine::Error as E;
        let endpoint = self
            .shared
            .endpoint()
            .map_err(|(reason, retry_after)| E::Unavailable {
                reason,
                retry_after,
            })?;
        let (path, body, decoder, prompt_tokens) = match &self.prompter {
            Some(prompter) => {
                let prompt = prompter.tokens(request.prompt())?;
                let max_tokens = request.answer_tokens(prompt.len(), self.context_per_slot);
                if prompt.len() + max_tokens > self.context_per_slot {
                    return Err(E::ContextLength {
                        prompt: prompt.len(),
                        requested: max_tokens,
                        context: self.context_per_slot,
                    });
                }
                let body = protocol::llama_server_body(
                    &request,
                    &prompt,
                    max_tokens,
                    self.share_prompt_cache,
                );
                (
                    "/completion",
                    body,
                    Decoder::LlamaServer {
                        prompt_tokens: prompt.len(),
                        top_logprobs: request.logprobs(),
                    },
                    Some(prompt.len()),
                )
            }
            None => {
                if request.logprobs().is_some() {
                    return Err(E::Invalid {
                        param: airlock_engine::Param::TopLogprobs,
                        reason: "is not passed on to vLLM processes; serve this model on the embedded engine or llama-server for log-probabilities".into(),
                    });
                }
                let max_tokens = request
                    .max_tokens()
                    .unwrap_or_else(|| request.default_max_tokens());
                let (path, body) = protocol::vllm_body(&request, max_tokens);
                (path, body, Decoder::OpenAi(OpenAiEnding::default()), None)
            }
        };
        let response = endpoint
            .post(path, body.to_string().into_bytes())
            .await
            .map_err(|reason| E::Unavailable {
                reason,
                retry_after: Duration::from_secs(1),
            })?;
        if response.status() != StatusCode::OK {
            let (status, body) = http::error_body(response).await;
            return Err(refusal(status, &body));
        }
        let guard = RunningGuard::new(&self.shared);
        let events = Events {
            body: response.into_body(),
            sse: SseDecoder::default(),
            data: VecDeque::new(),
            pending: VecDeque::new(),
            decoder,
            finished: false,
            _guard: guard,
        };
        Ok(ChatStream::new(events.into_stream(), prompt_tokens))
    }
}

impl ChatEngine for EngineProcess {
    fn start(&self, request: ChatRequest) -> BoxFuture<'_, airlock_engine::Result<ChatStream>> {
        Box::pin(self.answer(request))
    }

    /// llama-server's prompts are tokenised here, so they are counted here; vLLM tokenises
    /// its own.
    fn count_tokens(&self, prompt: &airlock_engine::Prompt) -> airlock_engine::Result<usize> {
        match &self.prompter {
            Some(prompter) => Ok(prompter.tokens(prompt)?.len()),
            None => Err(airlock_engine::Error::Request(
                "vLLM processes count their own tokens; token counts are not available for this model".into(),
            )),
        }
    }

    fn status(&self) -> EngineStatus {
        let (state, pid) = self.shared.state();
        EngineStatus {
            kind: self.kind.engine_kind(),
            state,
            running: self.shared.running.load(Ordering::Relaxed),
            queued: 0,
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            batches: None,
            pid,
        }
    }
}

impl Drop for EngineProcess {
    /// Asks the supervisor to stop the process and returns at once: this may run on an async
    /// worker, and the stop can take the process's grace period. The supervisor ends on its
    /// own; if airlock exits first, the parent-death signal ends the process.
    fn drop(&mut self) {
        self.shared.stop();
        drop(self.supervisor.take());
    }
}

/// The engine error for a refusal by the process.
fn refusal(status: StatusCode, body: &str) -> airlock_engine::Error {
    use airlock_engine::Error as E;
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = json
        .get("error")
        .map_or_else(|| body.chars().take(512).collect(), protocol::error_message);
    match status {
        StatusCode::BAD_REQUEST if protocol::is_context_error(&json) => E::Request(format!(
            "the prompt is over the engine's context: {message}"
        )),
        StatusCode::BAD_REQUEST if message.contains("maximum context length") => E::Request(
            format!("the prompt is over the engine's context: {message}"),
        ),
        StatusCode::BAD_REQUEST => E::Request(message),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => E::Unavailable {
            reason: format!("the engine process answered {status}: {message}"),
            retry_after: Duration::from_secs(1),
        },
        other => E::Upstream(format!("status {other}: {message}")),
    }
}

/// Counts a request as running until its answer is dropped.
struct RunningGuard(Arc<Shared>);

impl RunningGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.running.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(shared))
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a process's stream is read.
enum Decoder {
    LlamaServer {
        prompt_tokens: usize,
        /// Alternatives asked for beside each token's log-probability.
        top_logprobs: Option<usize>,
    },
    OpenAi(OpenAiEnding),
}

impl Decoder {
    fn chunk(&mut self, data: &str) -> Result<Chunk, String> {
        match self {
            Self::LlamaServer {
                prompt_tokens,
                top_logprobs,
            } => protocol::llama_server_chunk(data, *prompt_tokens, *top_logprobs),
            Self::OpenAi(ending) => ending.chunk(data),
        }
    }
}

/// An answer streamed from the process. Dropping it drops the connection, which the process
/// takes as a cancellation.
struct Events {
    body: Incoming,
    sse: SseDecoder,
    /// Event payloads read but not yet decoded.
    data: VecDeque<String>,
    /// Events decoded but not yet handed out.
    pending: VecDeque<ChatEvent>,
    decoder: Decoder,
    finished: bool,
    _guard: RunningGuard,
}

impl Events {
    fn into_stream(
        self,
    ) -> impl futures_core::Stream<Item = airlock_engine::Result<ChatEvent>> + Send {
        futures_util::stream::unfold(self, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        })
    }

    async fn next(&mut self) -> Option<airlock_engine::Result<ChatEvent>> {
        use airlock_engine::Error as E;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if let Some(data) = self.data.pop_front() {
                match self.decoder.chunk(&data) {
                    Ok(Chunk::Nothing) => {}
                    Ok(Chunk::Text(text, logprobs)) => {
                        self.pending
                            .extend(logprobs.into_iter().map(ChatEvent::Logprobs));
                        if !text.is_empty() {
                            self.pending.push_back(ChatEvent::Text(text));
                        }
                    }
                    Ok(Chunk::Last(text, ending)) => {
                        if !text.is_empty() {
                            self.pending.push_back(ChatEvent::Text(text));
                        }
                        self.pending.push_back(ChatEvent::Done(ending));
                        self.finished = true;
                    }
                    Ok(Chunk::Failed(message)) => {
                        self.finished = true;
                        return Some(Err(E::Upstream(message)));
                    }
                    Err(reason) => {
                        self.finished = true;
                        return Some(Err(E::Upstream(reason)));
                    }
                }
                continue;
            }
            let frame = match self.body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(gone(&e.to_string())));
                }
                None => {
                    self.finished = true;
                    return Some(Err(gone("the stream ended before the answer did")));
                }
            };
            let Ok(bytes) = frame.into_data() else {
                continue;
            };
            let mut out = Vec::new();
            if let Err(e) = self.sse.push(&bytes, &mut out) {
                self.finished = true;
                return Some(Err(E::Upstream(format!("unreadable stream: {e:?}"))));
            }
            self.data.extend(out);
        }
    }
}

/// The error for a stream cut short: the process most likely went down.
fn gone(reason: &str) -> airlock_engine::Error {
    airlock_engine::Error::Unavailable {
        reason: format!("the engine process went away mid-answer: {reason}"),
        retry_after: Duration::from_secs(1),
    }
}
