//! The Anthropic Messages API: `POST /v1/messages`, plain and streamed.

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
        conversation.push(Message::new(role, m.content.text("messages")?));
    }
    Ok(conversation)
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
    refuse_if(&request.tools, "tools", |v| {
        v.as_array().is_some_and(|a| a.is_empty()) || v.is_null()
    })?;
    refuse_if(&request.tool_choice, "tool_choice", Value::is_null)?;
    refuse_if(&request.thinking, "thinking", |v| {
        v.get("type").and_then(Value::as_str) == Some("disabled") || v.is_null()
    })?;
    structured::anthropic_output_config(request.output_config)?;
    let conversation = conversation(request.system, request.messages)?;
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
    refuse_if(&request.tools, "tools", |v| {
        v.as_array().is_some_and(|a| a.is_empty()) || v.is_null()
    })?;
    refuse_if(&request.tool_choice, "tool_choice", Value::is_null)?;
    refuse_if(&request.thinking, "thinking", |v| {
        v.get("type").and_then(Value::as_str) == Some("disabled") || v.is_null()
    })?;
    let mut conversation = conversation(request.system, request.messages)?;
    let format = structured::anthropic_output_config(request.output_config)?;
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

/// The Messages stream: `message_start`, `content_block_start`, `ping`,
/// `content_block_delta`..., `content_block_stop`, `message_delta`, `message_stop`.
struct MessageEvents {
    id: String,
    model: String,
    /// The sources of a RAG model's answer.
    grounded: Option<Grounded>,
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
        let mut body = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason(ending),
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
        vec![
            event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": prompt_tokens.unwrap_or(0), "output_tokens": 0},
                }}),
            ),
            event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", &json!({"type": "ping"})),
        ]
    }

    fn delta(&mut self, text: &str) -> Vec<SseEvent> {
        if let Some(grounded) = &mut self.grounded {
            grounded.push(text);
        }
        vec![event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )]
    }

    fn settle(&mut self, whole: Option<&str>, record: &RequestRecord, partial: bool) {
        if let Some(grounded) = &mut self.grounded {
            grounded.settle(whole, record, partial);
        }
    }

    fn done(&mut self, ending: &Ending) -> Vec<SseEvent> {
        let mut events = Vec::new();
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
        events.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
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
