//! The Anthropic Messages API: `POST /v1/messages`, plain and streamed.

use std::sync::Arc;

use airlock_engine::{FinishReason, Message, Role};
use axum::Json;
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
use crate::generation::{self, Ask, Ending, StreamFormat, TextContent, parse_body, refuse_if};

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
    #[expect(dead_code, reason = "accepted for compatibility; there is one tier")]
    service_tier: Option<String>,
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
    let served = app.model(&request.model)?;
    record.model(&served.alias, &served.digest);
    let model = served.chat()?;
    refuse_if(&request.tools, "tools", |v| {
        v.as_array().is_some_and(|a| a.is_empty()) || v.is_null()
    })?;
    refuse_if(&request.tool_choice, "tool_choice", Value::is_null)?;
    refuse_if(&request.thinking, "thinking", |v| {
        v.get("type").and_then(Value::as_str) == Some("disabled") || v.is_null()
    })?;
    if let Some(t) = request.temperature
        && !(0.0..=1.0).contains(&t)
    {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature is {t}; it must be 0 to 1"),
        ));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut conversation = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = request.system {
        conversation.push(Message::new(Role::System, system.text("system")?));
    }
    for m in request.messages {
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
    // The engine bounds the stop sequences' number and length.
    let ask = Ask {
        max_tokens: Some(request.max_tokens),
        param: "max_tokens",
        default_max: None,
        stop: request.stop_sequences.unwrap_or_default(),
        sampling: generation::sampling(
            request.temperature,
            request.top_p,
            request.top_k,
            None,
            None,
            None,
        ),
        stream: request.stream,
    };
    let prompt = model.chat_prompt(&conversation)?;
    let (generation, prompt_tokens) =
        generation::start(model, prompt, app.config.limits.max_tokens, ask, &record).await?;
    let id = format!("msg_{}", record.id());
    if request.stream {
        let format = MessageEvents {
            id,
            model: served.alias.clone(),
        };
        return Ok(generation::stream(
            generation,
            record,
            format,
            prompt_tokens,
        ));
    }
    let (text, ending) = generation::collect(generation, &record).await?;
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": served.alias,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason(&ending),
        "stop_sequence": ending.stop_sequence,
        "usage": usage(&ending),
    }))
    .into_response())
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
}

impl StreamFormat for MessageEvents {
    fn start(&mut self, prompt_tokens: usize) -> Vec<SseEvent> {
        vec![
            event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
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
        vec![event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )]
    }

    fn done(&mut self, ending: &Ending) -> Vec<SseEvent> {
        vec![
            event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "message_delta",
                &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(ending), "stop_sequence": ending.stop_sequence},
                    "usage": usage(ending)}),
            ),
            event("message_stop", &json!({"type": "message_stop"})),
        ]
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![event(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": error.message()}}),
        )]
    }
}
