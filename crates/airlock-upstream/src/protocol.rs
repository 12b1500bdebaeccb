//! What airlock says to each kind of engine process, and how it reads the answer.
//!
//! **llama-server**: airlock renders the conversation with the model's own chat template in
//! its sandbox and tokenises it exactly as the embedded engine does (message text as plain
//! text, so `<|im_start|>` typed by a user cannot forge a turn), then sends the token ids to
//! llama-server's native `POST /completion`, whose stream reports why generation stopped and
//! which stop word ended it.
//!
//! **vLLM**: OpenAI's `POST /v1/chat/completions` and `/v1/completions`, streamed with usage;
//! vLLM names the stop string that ended an answer in its `stop_reason` extension.

use airlock_engine::{
    ChatRequest, Ending, FinishReason, Logprob, MAX_TOP_LOGPROBS, Message, Prompt, Role,
    TokenLogprobs, Usage,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The model name airlock gives a vLLM process, and asks it for.
pub(crate) const SERVED_NAME: &str = "airlock";

/// One decoded stream event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Chunk {
    /// Newly generated text (possibly empty), and the log-probabilities of the tokens that
    /// produced it when they were asked for.
    Text(String, Vec<TokenLogprobs>),
    /// Text (possibly empty), then the end.
    Last(String, Ending),
    /// The process reported an error in the stream.
    Failed(String),
    /// An event that carries nothing for the answer (vLLM's `[DONE]`, a role-only delta).
    Nothing,
}

/// `POST /completion` for llama-server: `prompt` is the rendered, tokenised request.
pub(crate) fn llama_server_body(
    request: &ChatRequest,
    prompt: &[i32],
    max_tokens: usize,
    share_cache: bool,
) -> Value {
    let s = request.sampling();
    let mut body = json!({
        "prompt": prompt,
        "n_predict": max_tokens,
        "stream": true,
        "stop": request.stop(),
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repeat_penalty": s.repetition_penalty,
        "repeat_last_n": 64,
        "ignore_eos": request.ignores_end_of_turn(),
        // Without sharing, no caller's timing depends on what another caller asked before.
        "cache_prompt": share_cache,
    });
    if let Some(seed) = s.seed {
        body["seed"] = json!(seed);
    }
    // The grammar this side compiled and checked, rather than the schema: llama-server's own
    // converter may be another version, which could enforce a schema differently.
    if let Some(constraint) = request.constraint() {
        body["grammar"] = json!(constraint.grammar().as_ref());
    }
    // llama-server reports the chosen token's probability only when it is among the `n_probs`
    // it lists, so it is always asked for the most there may be; the reader keeps as many as
    // the request wants.
    if request.logprobs().is_some() {
        body["n_probs"] = json!(MAX_TOP_LOGPROBS);
        body["post_sampling_probs"] = json!(false);
    }
    // Greedy decoding picks the most likely token, which no filter removes: keeping only it
    // spares llama-server's sampler chain a pass over the whole vocabulary for each token of
    // each sequence (the embedded engine takes the argmax for the same reason).
    if s.temperature == 0.0 && s.repetition_penalty == 1.0 {
        body["top_k"] = json!(1);
    }
    body
}

#[derive(Debug, Deserialize)]
struct LlamaChunk {
    #[serde(default)]
    content: String,
    #[serde(default)]
    completion_probabilities: Vec<LlamaTokenProbs>,
    #[serde(default)]
    stop: bool,
    stop_type: Option<String>,
    stopping_word: Option<String>,
    tokens_predicted: Option<usize>,
    tokens_evaluated: Option<usize>,
    timings: Option<Timings>,
    error: Option<Value>,
}

/// One token's entry in llama-server's `completion_probabilities`.
#[derive(Debug, Deserialize)]
struct LlamaTokenProbs {
    id: i32,
    bytes: Vec<u8>,
    logprob: f32,
    #[serde(default)]
    top_logprobs: Vec<LlamaTopProb>,
}

#[derive(Debug, Deserialize)]
struct LlamaTopProb {
    id: i32,
    bytes: Vec<u8>,
    logprob: f32,
}

impl LlamaTokenProbs {
    /// The engine's account of the token with the `top` most likely alternatives. The chosen
    /// token's log-probability is taken from the list where it is on it (llama-server sets
    /// a token outside the list to probability 1).
    fn into_engine(self, top: usize) -> TokenLogprobs {
        let listed = self
            .top_logprobs
            .iter()
            .find(|t| t.id == self.id)
            .map(|t| t.logprob);
        TokenLogprobs {
            chosen: Logprob {
                bytes: self.bytes,
                logprob: listed.unwrap_or(self.logprob),
            },
            top: self
                .top_logprobs
                .into_iter()
                .take(top)
                .map(|t| Logprob {
                    bytes: t.bytes,
                    logprob: t.logprob,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Timings {
    /// Prompt tokens taken from the slot's cache.
    cache_n: Option<usize>,
}

/// Reads one event of llama-server's native stream.
/// `top`: how many alternatives the request asked to see beside each token.
pub(crate) fn llama_server_chunk(
    data: &str,
    prompt_tokens: usize,
    top: Option<usize>,
) -> Result<Chunk, String> {
    let chunk: LlamaChunk = serde_json::from_str(data)
        .map_err(|e| format!("an event is not a completion chunk: {e}"))?;
    if let Some(error) = chunk.error {
        return Ok(Chunk::Failed(error_message(&error)));
    }
    if !chunk.stop {
        let logprobs = match top {
            Some(top) => chunk
                .completion_probabilities
                .into_iter()
                .map(|t| t.into_engine(top))
                .collect(),
            None => Vec::new(),
        };
        return Ok(Chunk::Text(chunk.content, logprobs));
    }
    let (reason, stop_sequence) = match chunk.stop_type.as_deref() {
        Some("limit") => (FinishReason::Length, None),
        Some("word") => (
            FinishReason::Stop,
            chunk.stopping_word.filter(|w| !w.is_empty()),
        ),
        Some("eos") => (FinishReason::Stop, None),
        other => {
            return Err(format!(
                "the stream ended without a stop reason ({other:?})"
            ));
        }
    };
    let usage = Usage {
        prompt_tokens: chunk.tokens_evaluated.unwrap_or(prompt_tokens),
        completion_tokens: chunk.tokens_predicted.unwrap_or(0),
        cached_tokens: chunk.timings.and_then(|t| t.cache_n).unwrap_or(0),
    };
    Ok(Chunk::Last(
        chunk.content,
        Ending {
            reason,
            stop_sequence,
            usage,
        },
    ))
}

/// `POST /v1/chat/completions` or `/v1/completions` for vLLM, and which one.
pub(crate) fn vllm_body(request: &ChatRequest, max_tokens: usize) -> (&'static str, Value) {
    let s = request.sampling();
    let mut body = json!({
        "model": SERVED_NAME,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "stop": request.stop(),
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": if s.top_k == 0 { -1 } else { i64::from(s.top_k) },
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "ignore_eos": request.ignores_end_of_turn(),
    });
    if let Some(seed) = s.seed {
        body["seed"] = json!(seed);
    }
    if let Some(constraint) = request.constraint() {
        body["response_format"] = if constraint.is_any_object() {
            json!({"type": "json_object"})
        } else {
            json!({"type": "json_schema", "json_schema": {
                "name": constraint.name().unwrap_or("answer"),
                "schema": constraint.schema(),
                "strict": true,
            }})
        };
    }
    match request.prompt() {
        Prompt::Chat(messages) => {
            body["messages"] = messages.iter().map(openai_message).collect();
            ("/v1/chat/completions", body)
        }
        Prompt::Text(text) => {
            body["prompt"] = json!(text);
            ("/v1/completions", body)
        }
    }
}

fn openai_message(message: &Message) -> Value {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    json!({"role": role, "content": message.content})
}

#[derive(Debug, Deserialize)]
struct OpenAiChunk {
    #[serde(default)]
    choices: Vec<OpenAiChoice>,
    usage: Option<OpenAiUsage>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OpenAiChoice {
    delta: Option<OpenAiDelta>,
    text: Option<String>,
    finish_reason: Option<String>,
    /// vLLM: the stop string (or token id) that ended the answer.
    stop_reason: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OpenAiDelta {
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OpenAiUsage {
    prompt_tokens: usize,
    completion_tokens: usize,
    prompt_tokens_details: Option<OpenAiPromptDetails>,
}

#[derive(Debug, Deserialize)]
struct OpenAiPromptDetails {
    cached_tokens: Option<usize>,
}

/// What an OpenAI-style stream has said so far about how it ends: the finish reason comes
/// in one chunk and the usage in a later one.
#[derive(Debug, Default)]
pub(crate) struct OpenAiEnding {
    finish: Option<(FinishReason, Option<String>)>,
}

impl OpenAiEnding {
    /// Reads one event of vLLM's OpenAI-compatible stream.
    pub(crate) fn chunk(&mut self, data: &str) -> Result<Chunk, String> {
        if data == "[DONE]" {
            return Ok(Chunk::Nothing);
        }
        let chunk: OpenAiChunk = serde_json::from_str(data)
            .map_err(|e| format!("an event is not a completion chunk: {e}"))?;
        if let Some(error) = chunk.error {
            return Ok(Chunk::Failed(error_message(&error)));
        }
        let mut text = String::new();
        for choice in &chunk.choices {
            if let Some(piece) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
                text.push_str(piece);
            }
            if let Some(piece) = &choice.text {
                text.push_str(piece);
            }
            match choice.finish_reason.as_deref() {
                None => {}
                Some("length") => self.finish = Some((FinishReason::Length, None)),
                Some(_) => {
                    let stop = choice
                        .stop_reason
                        .as_ref()
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    self.finish = Some((FinishReason::Stop, stop));
                }
            }
        }
        let Some(usage) = chunk.usage else {
            return Ok(if text.is_empty() {
                Chunk::Nothing
            } else {
                Chunk::Text(text, Vec::new())
            });
        };
        let (reason, stop_sequence) = self
            .finish
            .take()
            .ok_or("usage arrived before the finish reason")?;
        Ok(Chunk::Last(
            text,
            Ending {
                reason,
                stop_sequence,
                usage: Usage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cached_tokens: usage
                        .prompt_tokens_details
                        .and_then(|d| d.cached_tokens)
                        .unwrap_or(0),
                },
            },
        ))
    }
}

/// The message of an engine process's error object (`{"message": ...}` or a string).
pub(crate) fn error_message(error: &Value) -> String {
    let text = error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .map_or_else(|| error.to_string(), str::to_owned);
    text.chars().take(512).collect()
}

/// Whether an error body of the engine process says the prompt was over the context.
pub(crate) fn is_context_error(body: &Value) -> bool {
    let error = body.get("error").unwrap_or(body);
    error.get("type").and_then(Value::as_str) == Some("exceed_context_size_error")
}

#[cfg(test)]
mod tests {
    use airlock_engine::{ChatParams, RequestLimits, SamplingParams};

    use super::*;

    fn request(stop: &[&str]) -> ChatRequest {
        let params = ChatParams {
            stop: stop.iter().map(|s| (*s).to_owned()).collect(),
            sampling: SamplingParams {
                temperature: 0.0,
                seed: Some(5),
                ..SamplingParams::default()
            },
            ..ChatParams::default()
        };
        ChatRequest::new(
            Prompt::Chat(vec![Message::new(Role::User, "hi")]),
            params,
            &RequestLimits::default(),
        )
        .unwrap()
    }

    #[test]
    fn llama_server_gets_token_ids_and_every_sampling_setting_explicitly() {
        let body = llama_server_body(&request(&["END"]), &[1, 2, 3], 32, false);
        assert_eq!(body["prompt"], json!([1, 2, 3]));
        assert_eq!(body["n_predict"], 32);
        assert_eq!(body["stop"], json!(["END"]));
        // Greedy: only the most likely token is kept.
        assert_eq!(body["top_k"], 1);
        let sampled = ChatRequest::new(
            Prompt::Text("hi".into()),
            ChatParams {
                sampling: SamplingParams {
                    temperature: 0.7,
                    ..SamplingParams::default()
                },
                ..ChatParams::default()
            },
            &RequestLimits::default(),
        )
        .unwrap();
        // llama-server's own defaults (top_k 40, top_p 0.95, min_p 0.05) differ from ours.
        let body = llama_server_body(&sampled, &[1], 8, false);
        assert_eq!(body["top_k"], 0);
        assert_eq!(body["top_p"], 1.0);
        assert_eq!(body["min_p"], 0.0);
        assert!(body.get("seed").is_none(), "no seed asked for, none sent");
        assert_eq!(body["cache_prompt"], false);
        let seeded = llama_server_body(&request(&[]), &[1], 8, true);
        assert_eq!(seeded["seed"], 5);
        assert_eq!(seeded["cache_prompt"], true);
    }

    #[test]
    fn llama_server_chunks_carry_text_then_the_reason_word_and_usage() {
        assert_eq!(
            llama_server_chunk(r#"{"content":"Par","stop":false,"tokens":[1]}"#, 9, None),
            Ok(Chunk::Text("Par".into(), Vec::new()))
        );
        let last = llama_server_chunk(
            r#"{"content":"","stop":true,"stop_type":"word","stopping_word":"END",
                "tokens_predicted":4,"tokens_evaluated":12,"timings":{"cache_n":7}}"#,
            9,
            None,
        );
        assert_eq!(
            last,
            Ok(Chunk::Last(
                String::new(),
                Ending {
                    reason: FinishReason::Stop,
                    stop_sequence: Some("END".into()),
                    usage: Usage {
                        prompt_tokens: 12,
                        completion_tokens: 4,
                        cached_tokens: 7
                    },
                }
            ))
        );
        let Ok(Chunk::Last(_, ending)) = llama_server_chunk(
            r#"{"stop":true,"stop_type":"limit","tokens_predicted":3}"#,
            9,
            None,
        ) else {
            panic!("a limit ends the answer")
        };
        assert_eq!(ending.reason, FinishReason::Length);
        assert_eq!(
            ending.usage.prompt_tokens, 9,
            "our own count when none is given"
        );
        assert!(matches!(
            llama_server_chunk(r#"{"error":{"message":"boom"}}"#, 9, None),
            Ok(Chunk::Failed(m)) if m == "boom"
        ));
        assert!(llama_server_chunk(r#"{"stop":true,"stop_type":"none"}"#, 9, None).is_err());
        assert!(llama_server_chunk("not json", 9, None).is_err());
    }

    #[test]
    fn llama_server_log_probabilities_become_the_engines_cut_to_what_was_asked() {
        let data = r#"{"content":"Pa","stop":false,"completion_probabilities":[
            {"id":5,"token":"Pa","bytes":[80,97],"logprob":0.0,"top_logprobs":[
                {"id":7,"token":"Lo","bytes":[76,111],"logprob":-0.5},
                {"id":5,"token":"Pa","bytes":[80,97],"logprob":-1.25},
                {"id":9,"token":"X","bytes":[88],"logprob":-3.0}]}]}"#;
        let Ok(Chunk::Text(text, logprobs)) = llama_server_chunk(data, 9, Some(2)) else {
            panic!("a text chunk");
        };
        assert_eq!(text, "Pa");
        assert_eq!(logprobs.len(), 1);
        // The chosen token's value comes from the list (llama-server's own field says 0 here).
        assert_eq!(logprobs[0].chosen.logprob, -1.25);
        assert_eq!(logprobs[0].chosen.bytes, b"Pa");
        assert_eq!(logprobs[0].top.len(), 2);
        assert_eq!(logprobs[0].top[0].text(), "Lo");
        let Ok(Chunk::Text(_, none)) = llama_server_chunk(data, 9, None) else {
            panic!("a text chunk");
        };
        assert!(none.is_empty(), "none asked for, none passed on");
    }

    #[test]
    fn a_schema_reaches_each_engine_process_in_its_own_terms() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let request = ChatRequest::new(
            Prompt::Chat(vec![Message::new(Role::User, "hi")]),
            ChatParams {
                format: airlock_engine::OutputFormat::JsonSchema {
                    schema: schema.clone(),
                    name: Some("A".into()),
                },
                ..ChatParams::default()
            },
            &RequestLimits::default(),
        )
        .unwrap();
        let grammar = request.constraint().unwrap().grammar().to_string();
        let body = llama_server_body(&request, &[1], 8, false);
        assert_eq!(body["grammar"], json!(grammar), "the grammar checked here");
        let (_, body) = vllm_body(&request, 8);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["schema"], schema);
        assert_eq!(body["response_format"]["json_schema"]["name"], "A");
        assert!(
            llama_server_body(&super::tests::request(&[]), &[1], 8, false)
                .get("grammar")
                .is_none()
        );
    }

    #[test]
    fn vllm_streams_end_with_the_stop_string_and_the_usage_chunk() {
        let (path, body) = vllm_body(&request(&["END"]), 16);
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["top_k"], -1);
        let mut ending = OpenAiEnding::default();
        assert_eq!(
            ending.chunk(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#),
            Ok(Chunk::Nothing)
        );
        assert_eq!(
            ending.chunk(r#"{"choices":[{"delta":{"content":"Paris"},"finish_reason":null}]}"#),
            Ok(Chunk::Text("Paris".into(), Vec::new()))
        );
        assert_eq!(
            ending
                .chunk(r#"{"choices":[{"delta":{},"finish_reason":"stop","stop_reason":"END"}]}"#),
            Ok(Chunk::Nothing)
        );
        let Ok(Chunk::Last(_, last)) = ending.chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,
                "prompt_tokens_details":{"cached_tokens":4}}}"#,
        ) else {
            panic!("usage ends the stream")
        };
        assert_eq!(last.stop_sequence.as_deref(), Some("END"));
        assert_eq!(last.usage.cached_tokens, 4);
        assert_eq!(ending.chunk("[DONE]"), Ok(Chunk::Nothing));
    }

    #[test]
    fn a_context_overflow_is_recognised_by_its_error_type() {
        assert!(is_context_error(
            &json!({"error": {"code": 400, "type": "exceed_context_size_error", "message": "x"}})
        ));
        assert!(!is_context_error(
            &json!({"error": {"type": "invalid_request_error"}})
        ));
        assert_eq!(
            error_message(&json!({"message": "y".repeat(2000)})).len(),
            512
        );
    }
}
