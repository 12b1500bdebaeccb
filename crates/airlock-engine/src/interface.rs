//! The request-level interface between the server and every engine.
//!
//! The server turns each API's wire format into one [`ChatRequest`] (checked once, by
//! [`ChatRequest::new`]) and hands it to a [`ChatEngine`]: the embedded engine
//! ([`ChatModel`](crate::ChatModel)), an engine process (llama-server, vLLM) or a scripted
//! engine in tests. The engine answers with a [`ChatStream`] of [`ChatEvent`]s ending in
//! usage. Embedding models sit behind [`Embedder`], which batches concurrent callers itself.
//! Every failure is an [`Error`](crate::Error) whose [`kind`](crate::Error::kind) the server
//! maps to each API's error shape.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::chat::{FinishReason, SamplingParams, Usage};
use crate::constraint::{Constraint, OutputFormat, SchemaLimits};
use crate::embed::Embeddings;
use crate::template::Message;
use crate::{Error, Result};

/// A boxed future that can cross threads, as engine methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a request asks the model to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template; the answer is the
    /// assistant's next turn.
    Chat(Vec<Message>),
    /// Plain text continued as it is, with no template; control-token text in it stays text.
    Text(String),
}

/// A request parameter, as errors name it. Each API maps it to its own field name
/// (Anthropic's `stop_sequences` is [`Param::Stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    /// The conversation.
    Messages,
    /// The plain text prompt.
    Prompt,
    /// The answer's length.
    MaxTokens,
    /// Stop sequences.
    Stop,
    /// Sampling temperature.
    Temperature,
    /// Nucleus sampling.
    TopP,
    /// Top-k sampling.
    TopK,
    /// Min-p sampling.
    MinP,
    /// Repetition penalty.
    RepetitionPenalty,
    /// The answer's structure (a JSON schema).
    ResponseFormat,
    /// How many alternatives to report with each token's log-probability.
    TopLogprobs,
}

impl Param {
    /// The name OpenAI's API gives the parameter.
    pub fn name(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Prompt => "prompt",
            Self::MaxTokens => "max_tokens",
            Self::Stop => "stop",
            Self::Temperature => "temperature",
            Self::TopP => "top_p",
            Self::TopK => "top_k",
            Self::MinP => "min_p",
            Self::RepetitionPenalty => "repetition_penalty",
            Self::ResponseFormat => "response_format",
            Self::TopLogprobs => "top_logprobs",
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ceilings every request is checked against, set by the server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most tokens one answer may ask for.
    pub max_tokens: usize,
    /// Most stop sequences.
    pub max_stop_sequences: usize,
    /// Longest stop sequence, bytes.
    pub max_stop_bytes: usize,
    /// Most messages in a conversation.
    pub max_messages: usize,
    /// Ceilings on a structured-output schema.
    pub schema: SchemaLimits,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            max_stop_sequences: 16,
            max_stop_bytes: 256,
            max_messages: 1024,
            schema: SchemaLimits::default(),
        }
    }
}

/// What a request asks for besides its prompt, as the API sent it (before any check).
#[derive(Debug, Clone, Default)]
pub struct ChatParams {
    /// The answer length asked for.
    pub max_tokens: Option<u64>,
    /// The answer length when none is asked for (OpenAI's legacy completions: 16); `None`:
    /// the server's ceiling. Either way no more than the context has room for.
    pub default_max_tokens: Option<usize>,
    /// Text that ends the answer (not included in it).
    pub stop: Vec<String>,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Whose kept caches this request may reuse (see
    /// [`GenerateParams::cache_scope`](crate::GenerateParams::cache_scope)).
    pub cache_scope: Option<String>,
    /// The answer's structure.
    pub format: OutputFormat,
    /// Report each token's log-probability and this many most likely alternatives (at most
    /// [`MAX_TOP_LOGPROBS`]); `None`: none.
    pub logprobs: Option<usize>,
}

/// Most alternatives a request may ask to see beside each token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A request every engine can run: made only by [`ChatRequest::new`], so an engine never
/// sees an unchecked value.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub(crate) prompt: Prompt,
    max_tokens: Option<usize>,
    default_max_tokens: usize,
    pub(crate) stop: Vec<String>,
    pub(crate) sampling: SamplingParams,
    pub(crate) cache_scope: Option<String>,
    pub(crate) ignore_eos: bool,
    pub(crate) constraint: Option<Constraint>,
    pub(crate) logprobs: Option<usize>,
}

impl ChatRequest {
    /// Checks `prompt` and `params` against `limits`: the one place a request's values are
    /// judged. Each refusal names its parameter.
    pub fn new(prompt: Prompt, params: ChatParams, limits: &RequestLimits) -> Result<Self> {
        let invalid = |param: Param, reason: String| Err(Error::Invalid { param, reason });
        match &prompt {
            Prompt::Chat(messages) if messages.is_empty() => {
                return invalid(Param::Messages, "must not be empty".into());
            }
            Prompt::Chat(messages) if messages.len() > limits.max_messages => {
                return invalid(
                    Param::Messages,
                    format!(
                        "holds {} messages, over this server's limit of {}",
                        messages.len(),
                        limits.max_messages
                    ),
                );
            }
            Prompt::Text(text) if text.is_empty() => {
                return invalid(Param::Prompt, "must not be empty".into());
            }
            Prompt::Chat(_) | Prompt::Text(_) => {}
        }
        let cap = limits.max_tokens;
        let max_tokens = match params.max_tokens {
            Some(0) => return invalid(Param::MaxTokens, "must be at least 1".into()),
            Some(n) if n > cap as u64 => {
                return invalid(
                    Param::MaxTokens,
                    format!("is {n}, over this server's limit of {cap}"),
                );
            }
            Some(n) => Some(n as usize),
            None => None,
        };
        if params.stop.len() > limits.max_stop_sequences {
            return invalid(
                Param::Stop,
                format!(
                    "holds {} stop sequences; at most {} are allowed",
                    params.stop.len(),
                    limits.max_stop_sequences
                ),
            );
        }
        if params
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > limits.max_stop_bytes)
        {
            return invalid(
                Param::Stop,
                format!("entries must be 1 to {} bytes long", limits.max_stop_bytes),
            );
        }
        params.sampling.check()?;
        if let Some(n) = params.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return invalid(
                Param::TopLogprobs,
                format!("is {n}; at most {MAX_TOP_LOGPROBS} alternatives can be reported"),
            );
        }
        let constraint =
            Constraint::compile(&params.format, &limits.schema).map_err(|e| Error::Invalid {
                param: Param::ResponseFormat,
                reason: e.to_string(),
            })?;
        Ok(Self {
            prompt,
            max_tokens,
            default_max_tokens: params.default_max_tokens.unwrap_or(cap).clamp(1, cap),
            stop: params.stop,
            sampling: params.sampling,
            cache_scope: params.cache_scope,
            ignore_eos: false,
            constraint,
            logprobs: params.logprobs,
        })
    }

    /// The same request, generating past end-of-turn tokens until its length is reached
    /// (benchmarks that need an exact answer length).
    pub fn ignoring_end_of_turn(mut self) -> Self {
        self.ignore_eos = true;
        self
    }

    /// What to continue.
    pub fn prompt(&self) -> &Prompt {
        &self.prompt
    }

    /// The answer length asked for, within the server's ceiling.
    pub fn max_tokens(&self) -> Option<usize> {
        self.max_tokens
    }

    /// The answer length for a prompt of `prompt_tokens` in a context of `context`: what was
    /// asked for (the engine refuses it if it does not fit), or else the default cut to the
    /// room left.
    pub fn answer_tokens(&self, prompt_tokens: usize, context: usize) -> usize {
        self.max_tokens.unwrap_or_else(|| {
            self.default_max_tokens
                .min(context.saturating_sub(prompt_tokens).max(1))
        })
    }

    /// The answer length when none was asked for, before the context's room is known.
    pub fn default_max_tokens(&self) -> usize {
        self.default_max_tokens
    }

    /// Stop sequences.
    pub fn stop(&self) -> &[String] {
        &self.stop
    }

    /// Token choice.
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }

    /// Whose caches this request may reuse.
    pub fn cache_scope(&self) -> Option<&str> {
        self.cache_scope.as_deref()
    }

    /// Whether end-of-turn tokens are ignored.
    pub fn ignores_end_of_turn(&self) -> bool {
        self.ignore_eos
    }

    /// How many alternatives to report with each token's log-probability; `None`: no
    /// log-probabilities.
    pub fn logprobs(&self) -> Option<usize> {
        self.logprobs
    }

    /// The structure the answer must have, compiled; `None` for free text.
    pub fn constraint(&self) -> Option<&Constraint> {
        self.constraint.as_ref()
    }
}

/// How an answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Why.
    pub reason: FinishReason,
    /// The stop sequence that ended it, if one did.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: Usage,
}

/// A token and its log-probability under the model (before any sampling filter or grammar).
#[derive(Debug, Clone, PartialEq)]
pub struct Logprob {
    /// The token's bytes (one token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Natural log of its probability.
    pub logprob: f32,
}

impl Logprob {
    /// The token's text, with any partial character replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// One generated token's log-probability, and the most likely tokens at its step (most
/// likely first).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The token generated.
    pub chosen: Logprob,
    /// The alternatives asked for.
    pub top: Vec<Logprob>,
}

/// One event of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// Newly visible text (never empty).
    Text(String),
    /// The next generated token's log-probability (asked for with
    /// [`ChatParams::logprobs`]); comes before the text it produced, which may come later
    /// (a held-back stop sequence) or never (the stop sequence itself).
    Logprobs(TokenLogprobs),
    /// The answer ended; nothing follows.
    Done(Ending),
}

/// An answer on its way: read its events with [`ChatStream::next`]; drop it to cancel the
/// generation (the engine frees its place at its next step).
pub struct ChatStream {
    events: Pin<Box<dyn Stream<Item = Result<ChatEvent>> + Send>>,
    prompt_tokens: Option<usize>,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("prompt_tokens", &self.prompt_tokens)
            .finish_non_exhaustive()
    }
}

impl ChatStream {
    /// A stream of `events`; `prompt_tokens` if the engine counted the prompt before
    /// answering (an engine process reports it only with the usage at the end).
    pub fn new(
        events: impl Stream<Item = Result<ChatEvent>> + Send + 'static,
        prompt_tokens: Option<usize>,
    ) -> Self {
        Self {
            events: Box::pin(events),
            prompt_tokens,
        }
    }

    /// The prompt's length in tokens, if known before the answer.
    pub fn prompt_tokens(&self) -> Option<usize> {
        self.prompt_tokens
    }

    /// The next event; `None` after [`ChatEvent::Done`] or an error.
    pub async fn next(&mut self) -> Option<Result<ChatEvent>> {
        std::future::poll_fn(|cx| self.events.as_mut().poll_next(cx)).await
    }

    /// Reads the answer to its end: the whole text and how it ended.
    pub async fn collect(mut self) -> Result<(String, Ending)> {
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event? {
                ChatEvent::Text(piece) => text.push_str(&piece),
                ChatEvent::Logprobs(_) => {}
                ChatEvent::Done(ending) => return Ok((text, ending)),
            }
        }
        Err(Error::Stopped("the answer ended without finishing".into()))
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

/// What runs an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// In this process: llama.cpp for GGUF chat models, airlock's encoder for embeddings.
    Embedded,
    /// A llama-server process started and supervised by airlock.
    LlamaServer,
    /// A vLLM process started and supervised by airlock.
    Vllm,
    /// A test double that answers from a script.
    Scripted,
}

impl EngineKind {
    /// The name configuration files and status reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::LlamaServer => "llama-server",
            Self::Vllm => "vllm",
            Self::Scripted => "scripted",
        }
    }
}

/// Whether an engine is taking requests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EngineState {
    /// Answering requests.
    Ready,
    /// Starting (an engine process loading its model).
    Starting,
    /// Down and being started again; requests are refused until it is back.
    Restarting {
        /// Why it went down.
        reason: String,
    },
    /// Down and not being started again until what is wrong is fixed (its files failed
    /// verification); retried with backoff.
    Failed {
        /// Why.
        reason: String,
    },
}

/// An engine's state and load, for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineStatus {
    /// What runs it.
    pub kind: EngineKind,
    /// Whether it takes requests.
    #[serde(flatten)]
    pub state: EngineState,
    /// Requests it is answering.
    pub running: usize,
    /// Requests waiting for it.
    pub queued: usize,
    /// Times its process was started again after a crash or a failed health check.
    pub restarts: u64,
    /// Batches an embedding engine has run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<u64>,
    /// The engine process, if it is one and it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl EngineStatus {
    /// A ready engine of `kind` with the given load.
    pub fn ready(kind: EngineKind, running: usize, queued: usize) -> Self {
        Self {
            kind,
            state: EngineState::Ready,
            running,
            queued,
            restarts: 0,
            batches: None,
            pid: None,
        }
    }
}

/// Answers chat and completion requests.
pub trait ChatEngine: Send + Sync + fmt::Debug {
    /// Starts answering `request`. Resolves once the engine has taken it (queued it, or the
    /// engine process has accepted it), or with the reason it will not: a prompt over the
    /// context, a full queue, an engine that is down.
    fn start(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>>;

    /// How many tokens `prompt` takes as this engine would feed it to the model (a
    /// conversation through its chat template). An engine that cannot tell says so.
    fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
        let _ = prompt;
        Err(Error::Request("this engine does not count tokens".into()))
    }

    /// State and load now.
    fn status(&self) -> EngineStatus;
}

/// Embeds texts. Concurrent callers are batched inside the engine.
pub trait Embedder: Send + Sync + fmt::Debug {
    /// Length of every vector.
    fn dimension(&self) -> usize;

    /// Longest text, in tokens, the model reads whole; longer texts are cut.
    fn max_tokens(&self) -> usize;

    /// How many tokens the model reads of `text` (special tokens included), uncut.
    fn count_tokens(&self, text: &str) -> Result<usize>;

    /// Embeds `texts`, one vector each, in order. Resolves with [`Error::Busy`] at once when
    /// the engine's queue is full; dropping the future withdraws the request if its batch
    /// has not started.
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Embeddings>>;

    /// State and load now.
    fn status(&self) -> EngineStatus;
}

/// How long a caller refused by an engine that is down should wait, in whole seconds (at
/// least one), as `Retry-After` says it.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Role;

    fn chat() -> Prompt {
        Prompt::Chat(vec![Message::new(Role::User, "hi")])
    }

    fn refused(prompt: Prompt, params: ChatParams) -> Param {
        match ChatRequest::new(prompt, params, &RequestLimits::default()) {
            Err(Error::Invalid { param, .. }) => param,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_value_is_refused_naming_its_parameter() {
        assert_eq!(
            refused(Prompt::Chat(vec![]), ChatParams::default()),
            Param::Messages
        );
        assert_eq!(
            refused(Prompt::Text(String::new()), ChatParams::default()),
            Param::Prompt
        );
        let too_many = Prompt::Chat(vec![Message::new(Role::User, "x"); 1025]);
        assert_eq!(refused(too_many, ChatParams::default()), Param::Messages);
        for max_tokens in [0, 4097] {
            let params = ChatParams {
                max_tokens: Some(max_tokens),
                ..ChatParams::default()
            };
            assert_eq!(refused(chat(), params), Param::MaxTokens);
        }
        for stop in [
            vec![String::new()],
            vec!["x".repeat(257)],
            vec!["s".into(); 17],
        ] {
            let params = ChatParams {
                stop,
                ..ChatParams::default()
            };
            assert_eq!(refused(chat(), params), Param::Stop);
        }
        let cases: [(SamplingParams, Param); 5] = [
            (
                SamplingParams {
                    temperature: 2.5,
                    ..SamplingParams::default()
                },
                Param::Temperature,
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..SamplingParams::default()
                },
                Param::TopP,
            ),
            (
                SamplingParams {
                    min_p: 1.5,
                    ..SamplingParams::default()
                },
                Param::MinP,
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..SamplingParams::default()
                },
                Param::RepetitionPenalty,
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..SamplingParams::default()
                },
                Param::Temperature,
            ),
        ];
        for (sampling, param) in cases {
            let params = ChatParams {
                sampling,
                ..ChatParams::default()
            };
            assert_eq!(refused(chat(), params), param);
        }
    }

    #[test]
    fn the_answer_length_defaults_to_what_the_context_has_room_for() -> Result<()> {
        let limits = RequestLimits {
            max_tokens: 100,
            ..RequestLimits::default()
        };
        let open = ChatRequest::new(chat(), ChatParams::default(), &limits)?;
        assert_eq!(open.answer_tokens(10, 1000), 100);
        assert_eq!(open.answer_tokens(950, 1000), 50);
        assert_eq!(open.answer_tokens(1000, 1000), 1);
        let short = ChatParams {
            default_max_tokens: Some(16),
            ..ChatParams::default()
        };
        assert_eq!(
            ChatRequest::new(chat(), short, &limits)?.answer_tokens(10, 1000),
            16
        );
        let asked = ChatParams {
            max_tokens: Some(80),
            ..ChatParams::default()
        };
        // What was asked for stands; the engine refuses it if it does not fit.
        assert_eq!(
            ChatRequest::new(chat(), asked, &limits)?.answer_tokens(950, 1000),
            80
        );
        Ok(())
    }

    #[test]
    fn a_seeded_request_keeps_its_scope() -> Result<()> {
        let params = ChatParams {
            cache_scope: Some("caller".into()),
            sampling: SamplingParams {
                seed: Some(7),
                ..SamplingParams::default()
            },
            ..ChatParams::default()
        };
        let request = ChatRequest::new(chat(), params, &RequestLimits::default())?;
        assert_eq!(request.cache_scope(), Some("caller"));
        Ok(())
    }
}
