//! What the OpenAI and Anthropic routes share: request bodies, and the one path from a
//! request to its answer, whole or streamed as SSE ([`answer`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use airlock_engine::{
    ChatEngine, ChatEvent, ChatParams, ChatRequest, ChatStream, Ending, FinishReason, Param,
    Prompt, SamplingParams, TokenLogprobs, Usage,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt as _, Stream};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::App;
use crate::error::ApiError;
use crate::gate::RequestRecord;
use crate::models::ServedModel;

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
    /// The list (checked with the rest of the request by [`ChatRequest::new`]).
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
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

/// The served model a request names, noted in its record; 404 if there is none.
pub(crate) fn served_model(
    app: &App,
    record: &RequestRecord,
    alias: &str,
) -> Result<Arc<ServedModel>, ApiError> {
    let served = app.model(alias)?;
    record.model(&served.alias, &served.digest);
    Ok(served)
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

/// How one API shapes an answer: as one JSON body, or as a stream of SSE events.
pub(crate) trait Shape: Send + 'static {
    /// The API's name for a request parameter, in errors.
    fn param_name(&self, param: Param) -> &'static str {
        param.name()
    }
    /// The whole answer as one JSON body.
    fn body(&mut self, text: String, ending: &Ending) -> Value;
    /// Events before the first token; `prompt_tokens` if the engine counted them already.
    fn start(&mut self, prompt_tokens: Option<usize>) -> Vec<SseEvent>;
    /// Events for newly visible text (never empty text).
    fn delta(&mut self, text: &str) -> Vec<SseEvent>;
    /// A generated token's log-probability (only when the request asked for them), before
    /// the text it produced: kept until the next delta, or the body.
    fn logprobs(&mut self, _token: TokenLogprobs) {}
    /// Events after the last token.
    fn done(&mut self, ending: &Ending) -> Vec<SseEvent>;
    /// Events for a failure after the stream began.
    fn error(&mut self, error: &ApiError) -> Vec<SseEvent>;
    /// Called once the answer ends and before its audit entry is written, with the whole
    /// text when it was not streamed; `partial` when it was cut short. A grounded answer
    /// checks its citations here.
    fn settle(&mut self, _whole: Option<&str>, _record: &RequestRecord, _partial: bool) {}
}

/// The one path of every chat-shaped route: checks the request, starts the model, writes
/// the request's audit entry (durable before anything the model produced is sent), then
/// answers whole or streamed in `shape`.
pub(crate) async fn answer<S: Shape>(
    app: &App,
    record: Arc<RequestRecord>,
    served: &ServedModel,
    prompt: Prompt,
    mut params: ChatParams,
    stream: bool,
    mut shape: S,
) -> Result<Response, ApiError> {
    let engine = served.chat()?;
    // Each caller reuses only its own kept caches, at its current clearance, so that no
    // caller learns from response times what another has asked.
    params.cache_scope = record.cache_scope();
    let chat = start_checked(app, engine, &record, prompt, params, stream, &shape).await?;
    if stream {
        return Ok(self::stream(chat, record, shape));
    }
    let (text, ending) = collect(chat, &record, &mut shape).await?;
    shape.settle(Some(&text), &record, false);
    Ok(Json(shape.body(text, &ending)).into_response())
}

/// One of several answers to the same request.
pub(crate) struct Choice {
    pub(crate) text: String,
    pub(crate) ending: Ending,
    pub(crate) logprobs: Vec<TokenLogprobs>,
}

impl Choice {
    /// The token counts of answers to one prompt: the prompt once, every answer's tokens.
    pub(crate) fn usage(choices: &[Choice]) -> Usage {
        let mut usage = choices.first().map(|c| c.ending.usage).unwrap_or_default();
        usage.completion_tokens = choices
            .iter()
            .map(|c| c.ending.usage.completion_tokens)
            .sum();
        usage
    }
}

/// A shape that can hold several answers to one request (OpenAI's `n`).
pub(crate) trait ManyChoices: Shape {
    /// The answers as one JSON body, `choices` in order.
    fn choices_body(&mut self, choices: Vec<Choice>) -> Value;
}

/// Most answers one request may ask for.
pub(crate) const MAX_CHOICES: u32 = 8;

/// `n` answers to one prompt, whole (streams carry one): each a generation of its own, all
/// queued at once so the engine runs them side by side and, sharing one cache scope, decodes
/// their prompt once. A seeded request seeds answer `i`
/// with `seed + i`, so the set is reproducible and its answers differ. The audit entry counts
/// the prompt once and the answers' tokens together, and hashes their texts in order.
pub(crate) async fn answer_choices<S: ManyChoices>(
    app: &App,
    record: Arc<RequestRecord>,
    served: &ServedModel,
    prompt: Prompt,
    mut params: ChatParams,
    n: u32,
    mut shape: S,
) -> Result<Response, ApiError> {
    let engine = served.chat()?;
    params.cache_scope = record.cache_scope();
    let mut streams = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut choice = params.clone();
        choice.sampling.seed = params.sampling.seed.map(|seed| seed.wrapping_add(i));
        streams.push(
            start_checked(app, engine, &record, prompt.clone(), choice, false, &shape).await?,
        );
    }
    let mut choices = Vec::with_capacity(streams.len());
    for chat in streams {
        let (text, ending, logprobs) = read_answer(chat).await?;
        record.completion_text(&text);
        choices.push(Choice {
            text,
            ending,
            logprobs,
        });
    }
    record.usage(
        &Choice::usage(&choices),
        Some(reason_name(choices[0].ending.reason)),
    );
    Ok(Json(shape.choices_body(choices)).into_response())
}

/// Reads an answer to its end: its text, how it ended, its tokens' log-probabilities.
async fn read_answer(
    mut chat: ChatStream,
) -> Result<(String, Ending, Vec<TokenLogprobs>), ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = chat.next().await {
        match event? {
            ChatEvent::Text(piece) => text.push_str(&piece),
            ChatEvent::Logprobs(token) => logprobs.push(token),
            ChatEvent::Done(ending) => return Ok((text, ending, logprobs)),
        }
    }
    Err(ApiError::Internal {
        detail: "the answer ended without finishing".into(),
    })
}

/// Checks `params` into a request and starts it on `engine` (see [`start`]); a refusal is
/// named in `shape`'s terms.
async fn start_checked(
    app: &App,
    engine: &dyn ChatEngine,
    record: &RequestRecord,
    prompt: Prompt,
    params: ChatParams,
    stream: bool,
    shape: &impl Shape,
) -> Result<ChatStream, ApiError> {
    let engine_error = |e| ApiError::from_engine(e, |p| shape.param_name(p));
    let request = ChatRequest::new(prompt, params, &app.request_limits).map_err(engine_error)?;
    start(engine, request, record, stream)
        .await
        .map_err(|e| e.into_api(&engine_error))
}

/// A failure to start: the engine's, or the audit log's.
enum StartError {
    Engine(airlock_engine::Error),
    Api(ApiError),
}

impl StartError {
    fn into_api(self, engine_error: &impl Fn(airlock_engine::Error) -> ApiError) -> ApiError {
        match self {
            Self::Engine(e) => engine_error(e),
            Self::Api(e) => e,
        }
    }
}

/// Starts `request` on `engine` and writes the request's `api.request` entry while the model
/// works; returns once both are done.
async fn start(
    engine: &dyn ChatEngine,
    request: ChatRequest,
    record: &RequestRecord,
    stream: bool,
) -> Result<ChatStream, StartError> {
    let mut starting = engine.start(request);
    // The embedded engine takes a request at once and knows its prompt's length, which the
    // entry then names. An engine process answers over a socket; the entry is written
    // meanwhile and the length comes with the usage at the end.
    if let Some(started) = (&mut starting).now_or_never() {
        let chat = started.map_err(StartError::Engine)?;
        record
            .open(chat.prompt_tokens(), stream)
            .await
            .map_err(StartError::Api)?;
        return Ok(chat);
    }
    let (chat, ()) = tokio::try_join!(
        starting.map(|r| r.map_err(StartError::Engine)),
        record
            .open(None, stream)
            .map(|r| r.map_err(StartError::Api)),
    )?;
    Ok(chat)
}

/// Runs an answer to its end, recording text and usage.
async fn collect(
    chat: ChatStream,
    record: &RequestRecord,
    shape: &mut impl Shape,
) -> Result<(String, Ending), ApiError> {
    let (text, ending, logprobs) = read_answer(chat).await?;
    logprobs.into_iter().for_each(|token| shape.logprobs(token));
    record.completion_text(&text);
    record.usage(&ending.usage, Some(reason_name(ending.reason)));
    Ok((text, ending))
}

fn reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

struct Streamer<S: Shape> {
    chat: ChatStream,
    record: Arc<RequestRecord>,
    shape: S,
    pending: VecDeque<SseEvent>,
    finished: bool,
    /// The shape has seen the answer's end (or what there was of it).
    settled: bool,
}

impl<S: Shape> Drop for Streamer<S> {
    /// A client that went away mid-answer: what was said so far is still settled, before the
    /// record writes the request's last entry.
    fn drop(&mut self) {
        if !self.settled {
            self.shape.settle(None, &self.record, true);
        }
    }
}

/// The SSE response for `chat`. The audit entry is written before the final events; if the
/// client goes away first, dropping the stream cancels the generation and the record writes
/// the entry on its own.
fn stream<S: Shape>(chat: ChatStream, record: Arc<RequestRecord>, mut shape: S) -> Response {
    let pending = shape.start(chat.prompt_tokens()).into();
    let streamer = Streamer {
        chat,
        record,
        shape,
        pending,
        finished: false,
        settled: false,
    };
    Sse::new(events(streamer))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn events<S: Shape>(
    streamer: Streamer<S>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    futures_util::stream::unfold(streamer, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            if s.finished {
                return None;
            }
            match s.chat.next().await {
                Some(Ok(ChatEvent::Text(text))) => {
                    s.record.completion_text(&text);
                    let events = s.shape.delta(&text);
                    s.pending.extend(events);
                }
                Some(Ok(ChatEvent::Logprobs(token))) => s.shape.logprobs(token),
                Some(Ok(ChatEvent::Done(ending))) => {
                    s.record
                        .usage(&ending.usage, Some(reason_name(ending.reason)));
                    s.shape.settle(None, &s.record, false);
                    s.settled = true;
                    let events = match s.record.finish(200).await {
                        Ok(()) => s.shape.done(&ending),
                        Err(error) => s.shape.error(&error),
                    };
                    s.pending.extend(events);
                    s.finished = true;
                }
                Some(Err(e)) => fail(&mut s, ApiError::from(e)).await,
                None => {
                    let error = ApiError::Internal {
                        detail: "the answer ended without finishing".into(),
                    };
                    fail(&mut s, error).await;
                }
            }
        }
    })
}

async fn fail<S: Shape>(s: &mut Streamer<S>, error: ApiError) {
    s.record.error(&error);
    s.shape.settle(None, &s.record, true);
    s.settled = true;
    // The entry is best effort here: the stream is already failing either way.
    let _ = s.record.finish(error.status().as_u16()).await;
    let events = s.shape.error(&error);
    s.pending.extend(events);
    s.finished = true;
}
