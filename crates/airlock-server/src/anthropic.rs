//! The Anthropic Messages API: `POST /v1/messages`, plain and streamed.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_engine::{ChatParams, Ending, FinishReason, Message, Param, Prompt, Role};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::error::{ApiError, Dialect};
use crate::gate::RequestRecord;
use crate::generation::{self, Shape, TextContent, parse_body, refuse_if, served_model};
use crate::rag::{self, Grounded};
use crate::structured;
use crate::tools;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputMessage {
    role: String,
    content: TextContent,
}

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesRequest {
    model: String,
    max_tokens: u64,
    messages: Vec<InputMessage>,
    system: Option<TextContent>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    /// An extension, as on the OpenAI routes (llama.cpp's and vLLM's servers take it too).
    repetition_penalty: Option<f32>,
    #[serde(default)]
    stream: bool,
    #[expect(
        dead_code,
        reason = "accepted for compatibility: the caller is known from the key"
    )]
    metadata: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    thinking: Option<Value>,
    /// The answer's structure (`format`, a JSON schema).
    output_config: Option<Value>,
    #[expect(dead_code, reason = "accepted for compatibility; there is one tier")]
    service_tier: Option<String>,
    /// Return the sources a RAG model placed in its prompt beside the answer.
    airlock_sources: Option<bool>,
}

/// The conversation a Messages request describes: its system prompt, then its messages.
/// Calls (`tool_use` blocks) and their results (`tool_result` blocks) are written as the
/// functions' prompt asks the model to write and read them.
fn conversation(
    system: Option<TextContent>,
    messages: Vec<InputMessage>,
) -> Result<Vec<Message>, ApiError> {
    // The system prompt travels apart from the messages here, and alone it is no conversation.
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut conversation = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = system {
        conversation.push(Message::new(Role::System, system.text("system")?));
    }
    let mut called: HashMap<String, String> = HashMap::new();
    for m in messages {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => {
                return Err(ApiError::invalid_param(
                    "messages",
                    "messages have roles user and assistant; put instructions in the top-level system parameter",
                ));
            }
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("unknown message role {other:?}"),
                ));
            }
        };
        let parts = match m.content {
            TextContent::Text(text) => {
                conversation.push(Message::new(role, text));
                continue;
            }
            TextContent::Parts(parts) => parts,
        };
        let mut texts = Vec::new();
        let mut calls = Vec::new();
        for part in parts {
            match part.get("type").and_then(Value::as_str) {
                Some("tool_use") if role == Role::Assistant => {
                    let (Some(id), Some(name)) = (
                        part.get("id").and_then(Value::as_str),
                        part.get("name").and_then(Value::as_str),
                    ) else {
                        return Err(ApiError::invalid_param(
                            "messages",
                            "a tool_use block needs an id and a name",
                        ));
                    };
                    called.insert(id.to_owned(), name.to_owned());
                    calls.push(tools::ToolCall {
                        name: name.to_owned(),
                        arguments: part.get("input").cloned().unwrap_or_else(|| json!({})),
                    });
                }
                Some("tool_result") if role == Role::User => {
                    let id = part
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            ApiError::invalid_param(
                                "messages",
                                "a tool_result block needs a tool_use_id",
                            )
                        })?;
                    let content = match part.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(text)) => text.clone(),
                        Some(Value::Array(blocks)) => {
                            TextContent::Parts(blocks.clone()).text("messages")?
                        }
                        Some(_) => {
                            return Err(ApiError::invalid_param(
                                "messages",
                                "a tool_result's content is text or a list of text blocks",
                            ));
                        }
                    };
                    let failed = part
                        .get("is_error")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    texts.push(tools::result_text(
                        called.get(id).map(String::as_str),
                        &content,
                        failed,
                    ));
                }
                _ => texts.push(TextContent::Parts(vec![part]).text("messages")?),
            }
        }
        // An assistant turn that calls is written as the call alone, as the model would.
        let content = if calls.is_empty() {
            texts.concat()
        } else {
            tools::calls_text(&calls)
        };
        conversation.push(Message::new(role, content));
    }
    Ok(conversation)
}

/// `tools` and `tool_choice` of a Messages request, read into the functions offered.
fn offered_tools(
    tools: Option<Value>,
    choice: Option<Value>,
) -> Result<Option<tools::Tools>, ApiError> {
    const FIELDS: tools::FunctionFields = tools::FunctionFields {
        called: "tool",
        known: &[
            "name",
            "description",
            "input_schema",
            "type",
            "cache_control",
        ],
        schema: "input_schema",
        default_schema: None,
    };
    let list = tools::tool_list(tools)?;
    let mut offered = Vec::with_capacity(list.len());
    for tool in list {
        let Some(object) = tool.as_object() else {
            return Err(ApiError::invalid_param("tools", "a tool must be an object"));
        };
        if object
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "custom")
        {
            return Err(ApiError::unsupported(
                "tools",
                "only custom tools (name, description, input_schema) are supported",
            ));
        }
        offered.push(tools::Tool::read(object, &FIELDS)?);
    }
    let (choice, parallel) = match choice {
        None | Some(Value::Null) => (tools::ToolChoice::Auto, true),
        Some(choice) => {
            let parallel = !choice
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let kind = match choice.get("type").and_then(Value::as_str) {
                Some("auto") => tools::ToolChoice::Auto,
                Some("any") => tools::ToolChoice::Required,
                Some("none") => tools::ToolChoice::None,
                Some("tool") => tools::ToolChoice::Named(
                    choice
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            ApiError::invalid_param(
                                "tool_choice",
                                "tool_choice of type tool needs a name",
                            )
                        })?
                        .to_owned(),
                ),
                _ => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        "tool_choice type must be auto, any, tool or none",
                    ));
                }
            };
            (kind, parallel)
        }
    };
    tools::Tools::new(offered, choice, parallel)
}

/// What a Messages request (or a count of one) gives the model to read: the conversation,
/// with the functions offered in it, and those functions.
fn read_prompt(
    system: Option<TextContent>,
    messages: Vec<InputMessage>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    thinking: &Option<Value>,
) -> Result<(Vec<Message>, Option<tools::Tools>), ApiError> {
    let offered = offered_tools(tools, tool_choice)?;
    refuse_if(thinking, "thinking", |v| {
        v.get("type").and_then(Value::as_str) == Some("disabled") || v.is_null()
    })?;
    let mut conversation = conversation(system, messages)?;
    if let Some(tools) = &offered {
        tools::offer(&mut conversation, tools);
    }
    Ok((conversation, offered))
}

/// The body of `POST /v1/messages/count_tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountTokensRequest {
    model: String,
    messages: Vec<InputMessage>,
    system: Option<TextContent>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    thinking: Option<Value>,
    output_config: Option<Value>,
}

/// `POST /v1/messages/count_tokens`: the prompt's length as the model would read it (the
/// conversation through its chat template). A model that answers from collections is counted
/// before its sources are added.
pub(crate) async fn count_tokens(
    State(app): State<Arc<App>>,
    Extension(record): Extension<Arc<RequestRecord>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    count(app, record, body)
        .await
        .unwrap_or_else(|e| e.into_response_for(Dialect::Anthropic))
}

async fn count(
    app: Arc<App>,
    record: Arc<RequestRecord>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CountTokensRequest = parse_body(body, &record, app.config.limits.max_body_bytes)?;
    let served = served_model(&app, &record, &request.model)?;
    let (conversation, _) = read_prompt(
        request.system,
        request.messages,
        request.tools,
        request.tool_choice,
        &request.thinking,
    )?;
    structured::anthropic_output_config(request.output_config)?;
    let engine = served.chat()?;
    let tokens = engine
        .count_tokens(&Prompt::Chat(conversation))
        .map_err(|e| ApiError::from_engine(e, Param::name))?;
    record.open(Some(tokens), false).await?;
    Ok(axum::Json(json!({"input_tokens": tokens})).into_response())
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(app): State<Arc<App>>,
    Extension(record): Extension<Arc<RequestRecord>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(app, record, body)
        .await
        .unwrap_or_else(|e| e.into_response_for(Dialect::Anthropic))
}

async fn handle(
    app: Arc<App>,
    record: Arc<RequestRecord>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: MessagesRequest = parse_body(body, &record, app.config.limits.max_body_bytes)?;
    let served = served_model(&app, &record, &request.model)?;
    let (mut conversation, offered) = read_prompt(
        request.system,
        request.messages,
        request.tools,
        request.tool_choice,
        &request.thinking,
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
    let format = tools::answer_format(
        offered.as_ref(),
        structured::anthropic_output_config(request.output_config)?,
        "output_config.format",
    )?;
    let params = ChatParams {
        max_tokens: Some(request.max_tokens),
        format,
        stop: request.stop_sequences.unwrap_or_default(),
        sampling: generation::sampling(
            request.temperature,
            request.top_p,
            request.top_k,
            None,
            request.repetition_penalty,
            None,
        ),
        ..ChatParams::default()
    };
    let grounded = rag::ground(
        &app,
        &record,
        &served.alias,
        &mut conversation,
        request.airlock_sources.unwrap_or(false),
    )
    .await?;
    let shape = MessageEvents {
        id: format!("msg_{}", record.id()),
        model: served.alias.clone(),
        grounded,
        tools: offered.map(tools::Offered::new),
    };
    let prompt = Prompt::Chat(conversation);
    generation::answer(&app, record, &served, prompt, params, request.stream, shape).await
}

/// Token counts as the Messages API gives them: prompt tokens read from a kept cache are
/// counted apart from `input_tokens`, which are the ones decoded.
fn usage(ending: &Ending) -> Value {
    let usage = &ending.usage;
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(usage.cached_tokens),
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": usage.completion_tokens,
    })
}

fn stop_reason(ending: &Ending) -> &'static str {
    match (ending.reason, &ending.stop_sequence) {
        (FinishReason::Length, _) => "max_tokens",
        (FinishReason::Stop, Some(_)) => "stop_sequence",
        (FinishReason::Stop, None) => "end_turn",
    }
}

fn event(name: &str, value: &Value) -> SseEvent {
    SseEvent::default().event(name).data(value.to_string())
}

fn text_block_start() -> SseEvent {
    event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    )
}

fn text_delta(text: &str) -> SseEvent {
    event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
    )
}

fn block_stop(index: usize) -> SseEvent {
    event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    )
}

/// The Messages stream: `message_start`, `content_block_start`, `ping`,
/// `content_block_delta`..., `content_block_stop`, `message_delta`, `message_stop`.
struct MessageEvents {
    id: String,
    model: String,
    /// The sources of a RAG model's answer.
    grounded: Option<Grounded>,
    /// The functions offered, and the answer held while it may be calls (`tool_use` blocks).
    tools: Option<tools::Offered>,
}

impl MessageEvents {
    /// `tool_use` blocks for the calls `text` makes, if functions were offered and it is a
    /// call object.
    fn tool_uses(&self, text: &str) -> Option<Vec<Value>> {
        let calls = self.tools.as_ref()?.tools().calls(text)?;
        Some(
            calls
                .into_iter()
                .enumerate()
                .map(|(i, call)| {
                    json!({"type": "tool_use", "id": self.tool_use_id(i),
                        "name": call.name, "input": call.arguments})
                })
                .collect(),
        )
    }

    /// Call `call`'s id: unique per request.
    fn tool_use_id(&self, call: usize) -> String {
        let request = self.id.strip_prefix("msg_").unwrap_or(&self.id);
        format!("toolu_{request}_{call}")
    }

    /// A streamed piece of a forced call, as the Messages stream's events: each call a
    /// `tool_use` block of its own, its input in JSON deltas.
    fn call_events(&self, piece: tools::CallPiece) -> Vec<SseEvent> {
        match piece {
            tools::CallPiece::Start { index, name } => {
                let mut events = Vec::new();
                if index > 0 {
                    events.push(block_stop(index - 1));
                }
                let block = json!({"type": "tool_use", "id": self.tool_use_id(index),
                    "name": name, "input": {}});
                events.push(event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index, "content_block": block}),
                ));
                events
            }
            tools::CallPiece::Arguments { index, json } => vec![event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": json}}),
            )],
        }
    }
}

impl Shape for MessageEvents {
    fn param_name(&self, param: Param) -> &'static str {
        match param {
            Param::Stop => "stop_sequences",
            Param::ResponseFormat => "output_config.format",
            other => other.name(),
        }
    }

    fn body(&mut self, text: String, ending: &Ending) -> Value {
        let (content, reason) = match self.tool_uses(&text) {
            Some(uses) => (Value::Array(uses), "tool_use"),
            None => (json!([{"type": "text", "text": text}]), stop_reason(ending)),
        };
        let mut body = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": ending.stop_sequence,
            "usage": usage(ending),
        });
        if let Some(grounded) = &self.grounded {
            body["content"][0]["citations"] = grounded.anthropic_citations().into();
            body["airlock"] = grounded.extension();
        }
        body
    }

    fn start(&mut self, prompt_tokens: Option<usize>) -> Vec<SseEvent> {
        let mut events = vec![event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": prompt_tokens.unwrap_or(0), "output_tokens": 0},
            }}),
        )];
        // With functions offered, the first block's type is known only at the end.
        if self.tools.is_none() {
            events.push(text_block_start());
        }
        events.push(event("ping", &json!({"type": "ping"})));
        events
    }

    fn delta(&mut self, text: &str) -> Vec<SseEvent> {
        if let Some(grounded) = &mut self.grounded {
            grounded.push(text);
        }
        if let Some(offered) = &mut self.tools {
            let pieces = offered.push(text);
            return pieces
                .into_iter()
                .flat_map(|p| self.call_events(p))
                .collect();
        }
        vec![text_delta(text)]
    }

    fn settle(&mut self, whole: Option<&str>, record: &RequestRecord, partial: bool) {
        if let Some(grounded) = &mut self.grounded {
            grounded.settle(whole, record, partial);
        }
    }

    fn done(&mut self, ending: &Ending) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let (streamed_calls, whole) = self
            .tools
            .as_ref()
            .map_or((0, false), tools::Offered::streamed_calls);
        if streamed_calls > 0 {
            // A forced call's answer streamed as it was made; one cut short by the length
            // limit or a stop sequence says so.
            let (reason, stop_sequence) = if whole {
                ("tool_use", None)
            } else {
                (stop_reason(ending), ending.stop_sequence.as_deref())
            };
            events.push(block_stop(streamed_calls - 1));
            events.push(event(
                "message_delta",
                &json!({"type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                    "usage": usage(ending)}),
            ));
            events.push(event("message_stop", &json!({"type": "message_stop"})));
            return events;
        }
        if let Some(offered) = &mut self.tools {
            let held = offered.take_held();
            match self.tool_uses(&held) {
                Some(uses) => {
                    // Each call as its own block: the call with empty input, then the input
                    // whole as one JSON delta, as the Messages stream sends them.
                    for (index, mut block) in uses.into_iter().enumerate() {
                        let input = block["input"].take();
                        block["input"] = json!({});
                        events.push(event(
                            "content_block_start",
                            &json!({"type": "content_block_start", "index": index, "content_block": block}),
                        ));
                        events.push(event(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
                        ));
                        events.push(block_stop(index));
                    }
                    events.push(event(
                        "message_delta",
                        &json!({"type": "message_delta",
                            "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                            "usage": usage(ending)}),
                    ));
                    events.push(event("message_stop", &json!({"type": "message_stop"})));
                    return events;
                }
                None => {
                    events.push(text_block_start());
                    if !held.is_empty() {
                        events.push(text_delta(&held));
                    }
                }
            }
        }
        let mut message_delta = json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(ending), "stop_sequence": ending.stop_sequence},
            "usage": usage(ending)});
        // Citations come at the end of the block, once the whole answer could be checked.
        if let Some(grounded) = &self.grounded {
            for citation in grounded.anthropic_citations() {
                events.push(event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "citations_delta", "citation": citation}}),
                ));
            }
            message_delta["airlock"] = grounded.extension();
        }
        events.push(block_stop(0));
        events.push(event("message_delta", &message_delta));
        events.push(event("message_stop", &json!({"type": "message_stop"})));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![event(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": error.message()}}),
        )]
    }
}
