//! What the OpenAI and Anthropic routes share: request bodies, sampling parameters, and
//! turning an engine [`Generation`] into a response or an SSE stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use airlock_engine::{
    ChatModel, Event, FinishReason, GenerateParams, Generation, SamplingParams, Usage,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::gate::RequestRecord;

/// Parses a JSON body, mapping every failure to a 4xx in the API's terms.
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    record: &RequestRecord,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge { limit }
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"))
        }
    })?;
    record.request_body(&body);
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::invalid(format!("the request body is not valid JSON: {e}"))
        }
        _ => ApiError::invalid(format!("invalid request: {e}")),
    })
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum StopSequences {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StopSequences {
    /// The list, checked against OpenAI's ceiling of four.
    pub(crate) fn into_vec(self, param: &str) -> Result<Vec<String>, ApiError> {
        let stops = match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        };
        if stops.len() > 4 {
            return Err(ApiError::invalid_param(
                param,
                format!("at most 4 stop sequences, got {}", stops.len()),
            ));
        }
        if stops.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::invalid_param(
                param,
                "stop sequences must be 1 to 256 bytes",
            ));
        }
        Ok(stops)
    }
}

/// Message content as both APIs send it: a string, or a list of typed parts of which only
/// `text` parts are accepted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum TextContent {
    /// Plain text.
    Text(String),
    /// Typed parts (`{"type": "text", "text": ...}`).
    Parts(Vec<Value>),
}

impl TextContent {
    /// The text, with parts joined; any other part type is refused, naming `param`.
    pub(crate) fn text(self, param: &str) -> Result<String, ApiError> {
        let parts = match self {
            Self::Text(text) => return Ok(text),
            Self::Parts(parts) => parts,
        };
        let mut text = String::new();
        for part in parts {
            match (
                part.get("type").and_then(Value::as_str),
                part.get("text").and_then(Value::as_str),
            ) {
                (Some("text"), Some(t)) => text.push_str(t),
                (Some(kind), _) => {
                    return Err(ApiError::unsupported(
                        param,
                        format!("content parts of type {kind:?} are not supported; send text"),
                    ));
                }
                _ => return Err(ApiError::invalid_param(param, "a content part has no type")),
            }
        }
        Ok(text)
    }
}

/// Token choice from a request's optional knobs; what is absent keeps the engine's default.
pub(crate) fn sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<i64>,
) -> SamplingParams {
    let defaults = SamplingParams::default();
    SamplingParams {
        temperature: temperature.unwrap_or(defaults.temperature),
        top_p: top_p.unwrap_or(defaults.top_p),
        top_k: top_k.unwrap_or(defaults.top_k),
        min_p: min_p.unwrap_or(defaults.min_p),
        repetition_penalty: repetition_penalty.unwrap_or(defaults.repetition_penalty),
        // OpenAI seeds are signed 64-bit; the engine's are 32-bit.
        seed: seed.map(|s| s.rem_euclid(1 << 32) as u32),
    }
}

/// What a request asks the engine for, besides its prompt.
pub(crate) struct Ask {
    /// The requested answer length, if any.
    pub(crate) max_tokens: Option<u64>,
    /// The parameter it came from, for errors.
    pub(crate) param: &'static str,
    /// The length when none was asked for; `None`: the configured cap.
    pub(crate) default_max: Option<usize>,
    /// Stop sequences.
    pub(crate) stop: Vec<String>,
    /// Token choice.
    pub(crate) sampling: SamplingParams,
    /// Whether the answer is streamed.
    pub(crate) stream: bool,
}

/// Queues a generation of `prompt` on `model`, its length checked against `cap` and the
/// context left, then writes the request's audit entry while the model works; returns once
/// that entry is durable (nothing the model produces may be sent before), with the
/// generation and the prompt's token count.
pub(crate) async fn start(
    model: &ChatModel,
    prompt: Vec<i32>,
    cap: usize,
    ask: Ask,
    record: &RequestRecord,
) -> Result<(Generation, usize), ApiError> {
    let room = model.info().context_per_slot.saturating_sub(prompt.len());
    let max = max_tokens(ask.max_tokens, ask.param, cap, ask.default_max, room)?;
    let prompt_tokens = prompt.len();
    // A seed asks for an answer that can be reproduced, and a reused cache can change a
    // sampled answer in its last bits, so seeded requests decode their whole prompt.
    let cache_scope = match ask.sampling.seed {
        Some(_) => None,
        None => record.cache_scope(),
    };
    let generation = model.generate(
        prompt,
        GenerateParams {
            max_tokens: Some(max),
            stop: ask.stop,
            sampling: ask.sampling,
            ignore_eos: false,
            cache_scope,
        },
    )?;
    record.open(Some(prompt_tokens), ask.stream).await?;
    Ok((generation, prompt_tokens))
}

/// The answer length: what was asked for, within the configured cap and the context left;
/// `default` when nothing was asked for.
fn max_tokens(
    asked: Option<u64>,
    param: &str,
    cap: usize,
    default: Option<usize>,
    room: usize,
) -> Result<usize, ApiError> {
    match asked {
        Some(0) => Err(ApiError::invalid_param(
            param,
            format!("{param} must be at least 1"),
        )),
        Some(n) if n > cap as u64 => Err(ApiError::invalid_param(
            param,
            format!("{param} is {n}, over this server's limit of {cap}"),
        )),
        Some(n) => Ok(n as usize),
        None => Ok(default.unwrap_or(cap).min(cap).min(room.max(1))),
    }
}

/// Refuses a parameter that is set to anything but its neutral value.
pub(crate) fn refuse_if<T>(
    value: &Option<T>,
    param: &str,
    neutral: impl Fn(&T) -> bool,
) -> Result<(), ApiError> {
    match value {
        Some(v) if !neutral(v) => Err(ApiError::unsupported(
            param,
            format!("{param} is not supported by this server"),
        )),
        _ => Ok(()),
    }
}

/// How a finished generation ended, as the engine reports it.
#[derive(Debug, Clone)]
pub(crate) struct Ending {
    /// Why.
    pub reason: FinishReason,
    /// The stop sequence that ended it, if one did.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: Usage,
}

/// Runs a generation to its end, recording text and usage.
pub(crate) async fn collect(
    mut generation: Generation,
    record: &RequestRecord,
) -> Result<(String, Ending), ApiError> {
    let mut text = String::new();
    while let Some(event) = generation.next().await {
        match event? {
            Event::Token { text: piece, .. } => text.push_str(&piece),
            Event::Done {
                text: rest,
                reason,
                stop_sequence,
                usage,
            } => {
                text.push_str(&rest);
                record.completion_text(&text);
                record.usage(&usage, Some(reason_name(reason)));
                return Ok((
                    text,
                    Ending {
                        reason,
                        stop_sequence,
                        usage,
                    },
                ));
            }
        }
    }
    Err(ApiError::Internal {
        detail: "the generation ended without finishing".into(),
    })
}

fn reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// How one API writes a generation as SSE events.
pub(crate) trait StreamFormat: Send + 'static {
    /// Events before the first token.
    fn start(&mut self, prompt_tokens: usize) -> Vec<SseEvent>;
    /// Events for newly visible text (never empty text).
    fn delta(&mut self, text: &str) -> Vec<SseEvent>;
    /// Events after the last token.
    fn done(&mut self, ending: &Ending) -> Vec<SseEvent>;
    /// Events for a failure after the stream began.
    fn error(&mut self, error: &ApiError) -> Vec<SseEvent>;
}

struct Streamer<F> {
    generation: Generation,
    record: Arc<RequestRecord>,
    format: F,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

/// The SSE response for `generation`. The audit entry is written before the final events;
/// if the client goes away first, dropping the stream cancels the generation and the
/// record writes the entry on its own.
pub(crate) fn stream<F: StreamFormat>(
    generation: Generation,
    record: Arc<RequestRecord>,
    mut format: F,
    prompt_tokens: usize,
) -> Response {
    let pending = format.start(prompt_tokens).into();
    let streamer = Streamer {
        generation,
        record,
        format,
        pending,
        finished: false,
    };
    Sse::new(events(streamer))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn events<F: StreamFormat>(
    streamer: Streamer<F>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    futures_util::stream::unfold(streamer, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            if s.finished {
                return None;
            }
            let next = s.generation.next().await;
            match next {
                Some(Ok(Event::Token { text, .. })) => {
                    if !text.is_empty() {
                        s.record.completion_text(&text);
                        let events = s.format.delta(&text);
                        s.pending.extend(events);
                    }
                }
                Some(Ok(Event::Done {
                    text,
                    reason,
                    stop_sequence,
                    usage,
                })) => {
                    if !text.is_empty() {
                        s.record.completion_text(&text);
                        let events = s.format.delta(&text);
                        s.pending.extend(events);
                    }
                    s.record.usage(&usage, Some(reason_name(reason)));
                    let ending = Ending {
                        reason,
                        stop_sequence,
                        usage,
                    };
                    let events = match s.record.finish(200).await {
                        Ok(()) => s.format.done(&ending),
                        Err(error) => s.format.error(&error),
                    };
                    s.pending.extend(events);
                    s.finished = true;
                }
                Some(Err(e)) => {
                    let error = ApiError::from(e);
                    fail(&mut s, error).await;
                }
                None => {
                    let error = ApiError::Internal {
                        detail: "the generation ended without finishing".into(),
                    };
                    fail(&mut s, error).await;
                }
            }
        }
    })
}

async fn fail<F: StreamFormat>(s: &mut Streamer<F>, error: ApiError) {
    s.record.error(&error);
    // The entry is best effort here: the stream is already failing either way.
    let _ = s.record.finish(error.status().as_u16()).await;
    let events = s.format.error(&error);
    s.pending.extend(events);
    s.finished = true;
}
