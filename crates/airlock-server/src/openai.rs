//! OpenAI-compatible routes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`.
//!
//! Parameters are parsed strictly: unknown fields are refused by name, and known ones this
//! server does not implement (`n` > 1, tools, logprobs, ...) get a 400 rather than being
//! silently ignored.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_engine::{
    ChatParams, Ending, FinishReason, Logprob, Message, Param, Prompt, Role, TokenLogprobs, Usage,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::FutureExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::error::{ApiError, Dialect};
use crate::gate::RequestRecord;
use crate::generation::{
    self, Shape, StopSequences, TextContent, parse_body, refuse_if, served_model,
};
use crate::rag::{self, Grounded};
use crate::structured;
use crate::tools;

/// Answers with the handler's response, or its error in OpenAI's shape.
fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| e.into_response_for(Dialect::OpenAi))
}

/// `GET /v1/models`.
pub(crate) async fn models(State(app): State<Arc<App>>) -> Response {
    let data: Vec<Value> = app
        .models()
        .values()
        .map(|m| {
            json!({
                "id": m.alias,
                "object": "model",
                "created": m.loaded_at,
                "owned_by": "airlock",
                "airlock": {"name": m.name, "version": m.version, "digest": m.digest, "kind": m.kind()},
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: Option<TextContent>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted for compatibility; names do not reach the template"
    )]
    name: Option<String>,
    /// An assistant turn's calls.
    tool_calls: Option<Vec<MessageToolCall>>,
    /// The call a `tool` message answers.
    tool_call_id: Option<String>,
    // What an SDK sends back when an answer object is appended to the conversation as is.
    #[expect(dead_code, reason = "accepted for compatibility; carries nothing here")]
    refusal: Option<Value>,
    #[expect(dead_code, reason = "accepted for compatibility; carries nothing here")]
    annotations: Option<Value>,
    #[expect(dead_code, reason = "accepted for compatibility; carries nothing here")]
    audio: Option<Value>,
    #[expect(dead_code, reason = "accepted for compatibility; carries nothing here")]
    function_call: Option<Value>,
}

/// A call in an assistant message: `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    function: CalledFunction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalledFunction {
    name: String,
    /// The arguments as a JSON text.
    arguments: String,
}

/// The request body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stop: Option<StopSequences>,
    seed: Option<i64>,
    n: Option<u32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    logit_bias: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
    #[expect(
        dead_code,
        reason = "accepted for compatibility: the caller is known from the key"
    )]
    user: Option<String>,
    #[expect(dead_code, reason = "accepted for compatibility; not stored")]
    metadata: Option<Value>,
    store: Option<bool>,
    // Extensions that llama.cpp's server and vLLM accept too.
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    /// Return the sources a RAG model placed in its prompt beside the answer.
    airlock_sources: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl ChatRequest {
    /// Refuses parameters set to something this server does not do.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        refuse_if(&self.frequency_penalty, "frequency_penalty", |v| *v == 0.0)?;
        refuse_if(&self.presence_penalty, "presence_penalty", |v| *v == 0.0)?;
        refuse_if(&self.logit_bias, "logit_bias", |v| {
            v.as_object().is_some_and(|o| o.is_empty()) || v.is_null()
        })?;
        refuse_if(&self.functions, "functions", Value::is_null)?;
        refuse_if(&self.function_call, "function_call", |v| {
            v == "none" || v.is_null()
        })?;
        refuse_if(&self.store, "store", |v| !v)?;
        Ok(())
    }
}

fn messages(raw: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    // Which function each earlier call went to, for the results that answer them.
    let mut called: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for m in raw {
        let text = |content: Option<TextContent>| match content {
            Some(c) => c.text("messages"),
            None => Ok(String::new()),
        };
        let message = match m.role.as_str() {
            "system" | "developer" => Message::new(Role::System, required(m.content)?),
            "user" => Message::new(Role::User, required(m.content)?),
            "assistant" => match m.tool_calls.filter(|calls| !calls.is_empty()) {
                Some(calls) => {
                    let mut parsed = Vec::with_capacity(calls.len());
                    for call in calls {
                        if call.kind != "function" {
                            return Err(ApiError::invalid_param(
                                "messages",
                                format!("tool calls of type {:?} are not supported", call.kind),
                            ));
                        }
                        let arguments =
                            serde_json::from_str(&call.function.arguments).map_err(|e| {
                                ApiError::invalid_param(
                                    "messages",
                                    format!(
                                        "the arguments of call {:?} are not JSON: {e}",
                                        call.id
                                    ),
                                )
                            })?;
                        called.insert(call.id, call.function.name.clone());
                        parsed.push(tools::ToolCall {
                            name: call.function.name,
                            arguments,
                        });
                    }
                    Message::new(Role::Assistant, tools::calls_text(&parsed))
                }
                None => Message::new(Role::Assistant, required(m.content)?),
            },
            "tool" => {
                let id = m.tool_call_id.ok_or_else(|| {
                    ApiError::invalid_param("messages", "a tool message needs a tool_call_id")
                })?;
                let result = text(m.content)?;
                Message::new(
                    Role::User,
                    tools::result_text(called.get(&id).map(String::as_str), &result, false),
                )
            }
            "function" => {
                return Err(ApiError::unsupported(
                    "messages",
                    "function messages are deprecated and not supported; use tool messages",
                ));
            }
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("unknown message role {other:?}"),
                ));
            }
        };
        out.push(message);
    }
    Ok(out)
}

fn required(content: Option<TextContent>) -> Result<String, ApiError> {
    content
        .ok_or_else(|| ApiError::invalid_param("messages", "a message has no content"))?
        .text("messages")
}

/// `tools`, `tool_choice` and `parallel_tool_calls`, read into the functions offered.
fn offered_tools(
    tools: Option<Value>,
    choice: Option<Value>,
    parallel: Option<bool>,
) -> Result<Option<tools::Tools>, ApiError> {
    const FIELDS: tools::FunctionFields = tools::FunctionFields {
        called: "function",
        known: &["name", "description", "parameters", "strict"],
        schema: "parameters",
        default_schema: Some(|| json!({"type": "object", "properties": {}})),
    };
    let list = tools::tool_list(tools)?;
    let mut offered = Vec::with_capacity(list.len());
    for tool in list {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::unsupported(
                "tools",
                "only tools of type function are supported",
            ));
        }
        let function = tool
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| ApiError::invalid_param("tools", "a tool needs a function object"))?;
        offered.push(tools::Tool::read(function, &FIELDS)?);
    }
    let choice = match choice {
        None | Some(Value::Null) => tools::ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => tools::ToolChoice::None,
            "auto" => tools::ToolChoice::Auto,
            "required" => tools::ToolChoice::Required,
            other => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("tool_choice {other:?} is unknown (expected none, auto, required or a function)"),
                ));
            }
        },
        Some(named) => tools::ToolChoice::Named(
            named
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "tool_choice",
                        "tool_choice names a function as {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?
                .to_owned(),
        ),
    };
    tools::Tools::new(offered, choice, parallel.unwrap_or(true))
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(app): State<Arc<App>>,
    Extension(record): Extension<Arc<RequestRecord>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(chat(app, record, body).await)
}

async fn chat(
    app: Arc<App>,
    record: Arc<RequestRecord>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_body(body, &record, app.config.limits.max_body_bytes)?;
    let served = served_model(&app, &record, &request.model)?;
    request.refuse_unsupported()?;
    let include_usage = stream_usage(request.stream_options.as_ref(), request.stream)?;
    let (max_tokens, max_tokens_param) = match (request.max_completion_tokens, request.max_tokens) {
        (Some(n), _) => (Some(n), "max_completion_tokens"),
        (None, n) => (n, "max_tokens"),
    };
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (Some(true), top) => Some(top.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs needs logprobs set to true",
            ));
        }
        (_, None) => None,
    };
    let offered = offered_tools(
        request.tools,
        request.tool_choice,
        request.parallel_tool_calls,
    )?;
    let format = tools::answer_format(
        offered.as_ref(),
        structured::openai_response_format(request.response_format)?,
        "response_format",
    )?;
    if offered.is_some() && rag::answers_from_collections(&app, &served.alias) {
        return Err(ApiError::unsupported(
            "tools",
            format!(
                "model {} answers from collections, without tools",
                served.alias
            ),
        ));
    }
    let params = ChatParams {
        max_tokens,
        logprobs,
        format,
        stop: stops(request.stop),
        sampling: generation::sampling(
            request.temperature,
            request.top_p,
            request.top_k,
            request.min_p,
            request.repetition_penalty,
            request.seed,
        ),
        ..ChatParams::default()
    };
    let mut conversation = messages(request.messages)?;
    if let Some(tools) = &offered {
        tools::offer(&mut conversation, tools);
    }
    let grounded = rag::ground(
        &app,
        &record,
        &served.alias,
        &mut conversation,
        request.airlock_sources.unwrap_or(false),
    )
    .await?;
    let n = choice_count(request.n, request.stream)?;
    if n > 1 && grounded.is_some() {
        return Err(ApiError::unsupported(
            "n",
            "n > 1 is not supported for models that answer from collections",
        ));
    }
    let prompt = Prompt::Chat(conversation);
    let shape = Chunks {
        grounded,
        tools: offered.map(tools::Offered::new),
        id: format!("chatcmpl-{}", record.id()),
        created: crate::unix_now(),
        model: served.alias.clone(),
        fingerprint: served.digest.clone(),
        include_usage,
        kind: ChunkKind::Chat,
        max_tokens_param,
        logprobs: logprobs.map(|_| Vec::new()),
        text_offset: 0,
    };
    if n > 1 {
        return generation::answer_choices(&app, record, &served, prompt, params, n, shape).await;
    }
    generation::answer(&app, record, &served, prompt, params, request.stream, shape).await
}

/// `n`: how many answers, 1 to [`generation::MAX_CHOICES`], several only without streaming.
fn choice_count(n: Option<u32>, stream: bool) -> Result<u32, ApiError> {
    match n.unwrap_or(1) {
        0 => Err(ApiError::invalid_param("n", "n must be at least 1")),
        n if n > generation::MAX_CHOICES => Err(ApiError::invalid_param(
            "n",
            format!(
                "n is {n}; at most {} answers per request",
                generation::MAX_CHOICES
            ),
        )),
        n if n > 1 && stream => Err(ApiError::unsupported(
            "n",
            "n > 1 is supported without streaming; stream one answer per request",
        )),
        n => Ok(n),
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(counts: &Usage) -> Value {
    json!({
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": counts.cached_tokens},
    })
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// Which endpoint's chunks a stream carries.
#[derive(Debug, Clone, Copy)]
enum ChunkKind {
    /// `chat.completion.chunk`: text in `delta.content`, the role first.
    Chat,
    /// `text_completion`: text in `text`.
    Text,
}

/// The answers of `/v1/chat/completions` and `/v1/completions`, whole or in streamed chunks.
struct Chunks {
    /// The sources of a RAG model's answer.
    grounded: Option<Grounded>,
    /// The functions offered, and the answer held while it may be calls.
    tools: Option<tools::Offered>,
    id: String,
    created: u64,
    model: String,
    /// The served bundle's digest, as `system_fingerprint`.
    fingerprint: String,
    include_usage: bool,
    kind: ChunkKind,
    /// `max_tokens` or `max_completion_tokens`, whichever the request used.
    max_tokens_param: &'static str,
    /// Log-probabilities not yet sent, if the request asked for them.
    logprobs: Option<Vec<TokenLogprobs>>,
    /// Bytes of answer text already covered by log-probabilities (a text completion's
    /// `text_offset`).
    text_offset: usize,
}

impl Chunks {
    /// The kept log-probabilities in this endpoint's shape (`null` when none were asked
    /// for), emptying the buffer.
    fn take_logprobs(&mut self) -> Value {
        let Some(tokens) = self.logprobs.as_mut().map(std::mem::take) else {
            return Value::Null;
        };
        match self.kind {
            ChunkKind::Chat => {
                let entry = |l: &Logprob| json!({"token": l.text(), "logprob": l.logprob, "bytes": l.bytes});
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut value = entry(&t.chosen);
                        value["top_logprobs"] = t.top.iter().map(entry).collect();
                        value
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            ChunkKind::Text => {
                let mut offsets = Vec::with_capacity(tokens.len());
                for t in &tokens {
                    offsets.push(self.text_offset);
                    self.text_offset += t.chosen.bytes.len();
                }
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        t.top
                            .iter()
                            .map(|l| (l.text(), json!(l.logprob)))
                            .collect::<serde_json::Map<_, _>>()
                            .into()
                    })
                    .collect();
                json!({
                    "tokens": tokens.iter().map(|t| t.chosen.text()).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.chosen.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    fn object(&self) -> &'static str {
        match self.kind {
            ChunkKind::Chat => "chat.completion.chunk",
            ChunkKind::Text => "text_completion",
        }
    }

    /// A chunk with one choice: `delta` for chat (or the role when `None`), text for text,
    /// and the log-probabilities kept since the last chunk.
    fn chunk(&mut self, text: Option<&str>, finish: Option<&str>) -> SseEvent {
        data(&self.chunk_value(text, finish))
    }

    fn chunk_value(&mut self, text: Option<&str>, finish: Option<&str>) -> Value {
        let logprobs = self.take_logprobs();
        let choice = match self.kind {
            ChunkKind::Chat => {
                let delta = match (text, finish) {
                    (Some(t), _) => json!({"content": t}),
                    (None, None) => json!({"role": "assistant", "content": ""}),
                    (None, Some(_)) => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            ChunkKind::Text => {
                json!({"text": text.unwrap_or(""), "index": 0, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

impl Chunks {
    /// One answer of a whole body, with the log-probabilities kept for it.
    fn choice_value(&mut self, index: usize, text: String, ending: &Ending) -> Value {
        let finish = finish_reason(ending.reason);
        let logprobs = self.take_logprobs();
        match self.kind {
            ChunkKind::Chat => match self.calls(index, &text) {
                Some(calls) => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": calls},
                    "logprobs": logprobs,
                    "finish_reason": "tool_calls",
                }),
                None => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }),
            },
            ChunkKind::Text => {
                json!({"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    /// The calls `text` makes (OpenAI's `tool_calls`), if functions were offered and it is
    /// a call object. Ids are unique per request and answer.
    fn calls(&self, answer: usize, text: &str) -> Option<Vec<Value>> {
        let calls = self.tools.as_ref()?.tools().calls(text)?;
        Some(
            calls
                .into_iter()
                .enumerate()
                .map(|(i, call)| {
                    json!({
                        "id": self.call_id(answer, i),
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments.to_string()},
                    })
                })
                .collect(),
        )
    }

    /// Call `call` of answer `answer`: unique per request and answer.
    fn call_id(&self, answer: usize, call: usize) -> String {
        let request = self.id.strip_prefix("chatcmpl-").unwrap_or(&self.id);
        format!("call_{request}_{answer}_{call}")
    }

    /// A streamed piece of a forced call, as OpenAI's tool-call delta.
    fn call_chunk(&mut self, piece: tools::CallPiece) -> SseEvent {
        let call = match piece {
            tools::CallPiece::Start { index, name } => json!({
                "index": index, "id": self.call_id(0, index), "type": "function",
                "function": {"name": name, "arguments": ""},
            }),
            tools::CallPiece::Arguments { index, json } => {
                json!({"index": index, "function": {"arguments": json}})
            }
        };
        let mut chunk = self.chunk_value(None, None);
        chunk["choices"][0]["delta"] = json!({"tool_calls": [call]});
        data(&chunk)
    }

    fn body_value(&self, choices: Vec<Value>, counts: &Usage) -> Value {
        let object = match self.kind {
            ChunkKind::Chat => "chat.completion",
            ChunkKind::Text => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(counts),
            "system_fingerprint": self.fingerprint,
        })
    }
}

impl generation::ManyChoices for Chunks {
    fn choices_body(&mut self, choices: Vec<generation::Choice>) -> Value {
        let counts = generation::Choice::usage(&choices);
        let values = choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| {
                self.text_offset = 0;
                for token in choice.logprobs {
                    self.logprobs(token);
                }
                self.choice_value(index, choice.text, &choice.ending)
            })
            .collect();
        self.body_value(values, &counts)
    }
}

impl Shape for Chunks {
    fn param_name(&self, param: Param) -> &'static str {
        match param {
            Param::MaxTokens => self.max_tokens_param,
            Param::TopLogprobs if matches!(self.kind, ChunkKind::Text) => "logprobs",
            other => other.name(),
        }
    }

    fn body(&mut self, text: String, ending: &Ending) -> Value {
        let choice = self.choice_value(0, text, ending);
        let mut body = self.body_value(vec![choice], &ending.usage);
        if let Some(grounded) = &self.grounded {
            body["choices"][0]["message"]["annotations"] = grounded.openai_annotations();
            body["airlock"] = grounded.extension();
        }
        body
    }

    fn start(&mut self, _prompt_tokens: Option<usize>) -> Vec<SseEvent> {
        match self.kind {
            ChunkKind::Chat => vec![self.chunk(None, None)],
            ChunkKind::Text => Vec::new(),
        }
    }

    fn delta(&mut self, text: &str) -> Vec<SseEvent> {
        if let Some(grounded) = &mut self.grounded {
            grounded.push(text);
        }
        if let Some(offered) = &mut self.tools {
            let pieces = offered.push(text);
            return pieces.into_iter().map(|p| self.call_chunk(p)).collect();
        }
        vec![self.chunk(Some(text), None)]
    }

    fn logprobs(&mut self, token: TokenLogprobs) {
        if let Some(kept) = &mut self.logprobs {
            kept.push(token);
        }
    }

    fn settle(&mut self, whole: Option<&str>, record: &RequestRecord, partial: bool) {
        if let Some(grounded) = &mut self.grounded {
            grounded.settle(whole, record, partial);
        }
    }

    fn done(&mut self, ending: &Ending) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut finish = finish_reason(ending.reason);
        let (streamed_calls, whole) = self
            .tools
            .as_ref()
            .map_or((0, false), tools::Offered::streamed_calls);
        if streamed_calls > 0 {
            // A forced call's answer streamed as it was made; one cut short by the length
            // limit or a stop sequence keeps that finish reason.
            if whole {
                finish = "tool_calls";
            }
        } else if let Some(offered) = &mut self.tools {
            let held = offered.take_held();
            match self.calls(0, &held) {
                Some(calls) => {
                    // Each call whole, in the shape of OpenAI's tool-call deltas.
                    for (index, mut call) in calls.into_iter().enumerate() {
                        call["index"] = json!(index);
                        let mut chunk = self.chunk_value(None, None);
                        chunk["choices"][0]["delta"] = json!({"tool_calls": [call]});
                        events.push(data(&chunk));
                    }
                    finish = "tool_calls";
                }
                None if !held.is_empty() => events.push(self.chunk(Some(&held), None)),
                None => {}
            }
        }
        let mut last = self.chunk_value(None, Some(finish));
        // Citations come with the final chunk, once the whole answer could be checked.
        if let Some(grounded) = &self.grounded {
            last["choices"][0]["delta"]["annotations"] = grounded.openai_annotations();
            last["airlock"] = grounded.extension();
        }
        events.push(data(&last));
        if self.include_usage {
            events.push(data(&json!({
                "id": self.id,
                "object": self.object(),
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(&ending.usage),
            })));
        }
        events.push(SseEvent::default().data("[DONE]"));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![data(
            &json!({"error": {"message": error.message(), "type": "server_error", "code": error.kind()}}),
        )]
    }
}

/// `stream_options.include_usage`, refused without `stream`.
fn stream_usage(options: Option<&StreamOptions>, stream: bool) -> Result<bool, ApiError> {
    match options {
        Some(_) if !stream => Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true",
        )),
        options => Ok(options.is_some_and(|o| o.include_usage)),
    }
}

fn stops(stop: Option<StopSequences>) -> Vec<String> {
    stop.map(StopSequences::into_vec).unwrap_or_default()
}

/// `prompt` of `/v1/completions`: one string (a list of one is accepted).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptInput {
    One(String),
    Many(Vec<Value>),
}

/// The request body of `POST /v1/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionRequest {
    model: String,
    prompt: PromptInput,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u64>,
    stop: Option<StopSequences>,
    seed: Option<i64>,
    n: Option<u32>,
    best_of: Option<u32>,
    echo: Option<bool>,
    suffix: Option<String>,
    logprobs: Option<u32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<Value>,
    #[expect(
        dead_code,
        reason = "accepted for compatibility: the caller is known from the key"
    )]
    user: Option<String>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

/// OpenAI's default answer length for legacy completions.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(app): State<Arc<App>>,
    Extension(record): Extension<Arc<RequestRecord>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(complete(app, record, body).await)
}

async fn complete(
    app: Arc<App>,
    record: Arc<RequestRecord>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_body(body, &record, app.config.limits.max_body_bytes)?;
    let served = served_model(&app, &record, &request.model)?;
    if rag::answers_from_collections(&app, &served.alias) {
        return Err(ApiError::invalid_param(
            "model",
            format!(
                "model {} answers from collections; ask it through /v1/chat/completions",
                served.alias
            ),
        ));
    }
    let n = choice_count(request.n, request.stream)?;
    refuse_if(&request.best_of, "best_of", |b| {
        Some(*b) == request.n || *b == 1
    })?;
    refuse_if(&request.echo, "echo", |v| !v)?;
    refuse_if(&request.suffix, "suffix", String::is_empty)?;
    refuse_if(&request.frequency_penalty, "frequency_penalty", |v| {
        *v == 0.0
    })?;
    refuse_if(&request.presence_penalty, "presence_penalty", |v| *v == 0.0)?;
    refuse_if(&request.logit_bias, "logit_bias", |v| {
        v.as_object().is_some_and(|o| o.is_empty()) || v.is_null()
    })?;
    let text = match request.prompt {
        PromptInput::One(text) => text,
        PromptInput::Many(items) => match items.as_slice() {
            [Value::String(text)] => text.clone(),
            [] => String::new(),
            [Value::String(_), ..] => {
                return Err(ApiError::unsupported("prompt", "one prompt per request"));
            }
            _ => {
                return Err(ApiError::unsupported(
                    "prompt",
                    "token-id prompts are not supported; send text",
                ));
            }
        },
    };
    let include_usage = stream_usage(request.stream_options.as_ref(), request.stream)?;
    let logprobs = request.logprobs.map(|n| n as usize);
    let params = ChatParams {
        max_tokens: request.max_tokens,
        logprobs,
        default_max_tokens: Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
        stop: stops(request.stop),
        sampling: generation::sampling(
            request.temperature,
            request.top_p,
            request.top_k,
            request.min_p,
            request.repetition_penalty,
            request.seed,
        ),
        ..ChatParams::default()
    };
    let shape = Chunks {
        grounded: None,
        tools: None,
        id: format!("cmpl-{}", record.id()),
        created: crate::unix_now(),
        model: served.alias.clone(),
        fingerprint: served.digest.clone(),
        include_usage,
        kind: ChunkKind::Text,
        max_tokens_param: "max_tokens",
        logprobs: logprobs.map(|_| Vec::new()),
        text_offset: 0,
    };
    let prompt = Prompt::Text(text);
    if n > 1 {
        return generation::answer_choices(&app, record, &served, prompt, params, n, shape).await;
    }
    generation::answer(&app, record, &served, prompt, params, request.stream, shape).await
}

/// `input` of `/v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<Value>),
}

/// The request body of `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingRequest {
    model: String,
    input: EmbeddingInput,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    #[expect(
        dead_code,
        reason = "accepted for compatibility: the caller is known from the key"
    )]
    user: Option<String>,
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(app): State<Arc<App>>,
    Extension(record): Extension<Arc<RequestRecord>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(embed(app, record, body).await)
}

async fn embed(
    app: Arc<App>,
    record: Arc<RequestRecord>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = parse_body(body, &record, app.config.limits.max_body_bytes)?;
    let served = served_model(&app, &record, &request.model)?;
    let engine = served.embedding()?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("encoding_format {other:?} is not one of: float, base64"),
            ));
        }
    };
    let dimension = engine.dimension();
    if let Some(d) = request.dimensions
        && d != dimension
    {
        return Err(ApiError::unsupported(
            "dimensions",
            format!("this model embeds in {dimension} dimensions; {d} is not available"),
        ));
    }
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::unsupported(
                    "input",
                    "token-id inputs are not supported; send strings",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    if texts.is_empty() {
        return Err(ApiError::invalid_param("input", "input must not be empty"));
    }
    let limit = app.config.limits.max_embedding_inputs;
    if texts.len() > limit {
        return Err(ApiError::invalid_param(
            "input",
            format!(
                "{} inputs, over this server's limit of {limit}",
                texts.len()
            ),
        ));
    }
    // The request's entry is written while the model embeds; nothing is sent before both.
    let (embeddings, ()) = tokio::try_join!(
        engine.embed(texts).map(|r| r.map_err(ApiError::from)),
        record.open(None, false)
    )?;
    record.usage(
        &Usage {
            prompt_tokens: embeddings.tokens,
            ..Usage::default()
        },
        None,
    );
    let data: Vec<Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": served.alias,
        "usage": {"prompt_tokens": embeddings.tokens, "total_tokens": embeddings.tokens},
    }))
    .into_response())
}
