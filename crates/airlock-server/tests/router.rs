//! The router in-process (`oneshot`, no socket) over scripted engines: every engine failure
//! reaches both APIs in their own error shapes, answers come out whole and streamed, requests
//! reach the engine checked, and a caller that hangs up cancels its answer.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use airlock_engine::{
    ChatEngine, ChatEvent, Embedder, Ending, EngineState, Error, FinishReason, Param, Prompt, Usage,
};
use airlock_registry::{KeyRole, Registry};
use airlock_server::config::RawConfig;
use airlock_server::models::{Engine, ServedModel};
use airlock_server::{App, Server, router};
use airlock_testkit::engine::{Reply, ScriptedChat, ScriptedEmbedder};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// A registry with one user key, and a server whose `chat` and `embed` models are scripted.
struct Harness {
    _dir: tempfile::TempDir,
    app: Arc<App>,
    chat: Arc<ScriptedChat>,
    embed: Arc<ScriptedEmbedder>,
    key: String,
}

impl Harness {
    fn new(chat: ScriptedChat) -> Self {
        Self::with(chat, ScriptedEmbedder::new(8, []), "")
    }

    fn with(chat: ScriptedChat, embed: ScriptedEmbedder, extra_config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Registry::init(&data, "user:test").unwrap();
        let key = Registry::open(&data, "user:test")
            .unwrap()
            .create_key("app", KeyRole::User, "internal", None)
            .unwrap()
            .secret;
        let text = format!(
            "data_dir = {:?}\n{extra_config}\n[models.chat]\nref = \"scripted:1.0.0\"\n",
            data.display()
        );
        let config = RawConfig::parse(&text).unwrap().validate(None).unwrap();
        let chat = Arc::new(chat);
        let embed = Arc::new(embed);
        let served = |alias: &str, engine| ServedModel {
            alias: alias.into(),
            name: "scripted".into(),
            version: "1.0.0".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            loaded_at: 0,
            engine,
        };
        let server = Server::with_unverified_engines(
            config,
            "user:test",
            [
                served(
                    "chat",
                    Engine::Chat(Arc::clone(&chat) as Arc<dyn ChatEngine>),
                ),
                served(
                    "embed",
                    Engine::Embedding(Arc::clone(&embed) as Arc<dyn Embedder>),
                ),
            ],
        )
        .unwrap();
        Self {
            _dir: dir,
            app: server.app(),
            chat,
            embed,
            key,
        }
    }

    async fn send(&self, path: &str, body: &Value) -> axum::response::Response {
        let request = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        router(Arc::clone(&self.app))
            .oneshot(request)
            .await
            .unwrap()
    }

    /// Status, `Retry-After`, and the body (JSON, or the SSE text of a stream).
    async fn post(&self, path: &str, body: &Value) -> Answer {
        let response = self.send(path, body).await;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        Answer {
            status,
            retry_after,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    json: Value,
    text: String,
}

impl Answer {
    /// The JSON of every `data:` line of an SSE body, `[DONE]` left out.
    fn events(&self) -> Vec<Value> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}

fn openai_chat(extra: Value) -> Value {
    let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn openai_text(extra: Value) -> Value {
    let mut body = json!({"model": "chat", "prompt": "hi"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn anthropic(extra: Value) -> Value {
    let mut body =
        json!({"model": "chat", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// What each API must answer for one engine failure.
struct Expected {
    status: StatusCode,
    openai_type: &'static str,
    openai_code: Option<&'static str>,
    openai_param: Option<&'static str>,
    anthropic_type: &'static str,
    retry_after: Option<&'static str>,
    /// Text the client must not see (server-side detail).
    hidden: Option<&'static str>,
}

/// A named way for the engine to fail, and what each API must answer.
type Failure = (&'static str, fn() -> Error, Expected);

/// One of every engine error variant, and how each API answers it.
fn every_engine_failure() -> Vec<Failure> {
    let bad_request = |param| Expected {
        status: StatusCode::BAD_REQUEST,
        openai_type: "invalid_request_error",
        openai_code: None,
        openai_param: param,
        anthropic_type: "invalid_request_error",
        retry_after: None,
        hidden: None,
    };
    let internal = |hidden| Expected {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        openai_type: "server_error",
        openai_code: None,
        openai_param: None,
        anthropic_type: "api_error",
        retry_after: None,
        hidden: Some(hidden),
    };
    vec![
        (
            "invalid parameter",
            || Error::Invalid {
                param: Param::Temperature,
                reason: "is 9; it must be 0 to 2".into(),
            },
            bad_request(Some("temperature")),
        ),
        (
            "request the model cannot do",
            || Error::Request("token 99999 is outside the vocabulary".into()),
            bad_request(None),
        ),
        (
            "template refused the conversation",
            || Error::Template("roles must alternate".into()),
            bad_request(None),
        ),
        (
            "context length",
            || Error::ContextLength {
                prompt: 4000,
                requested: 200,
                context: 4096,
            },
            Expected {
                openai_code: Some("context_length_exceeded"),
                openai_param: Some("messages"),
                ..bad_request(None)
            },
        ),
        (
            "busy",
            || Error::Busy {
                running: 8,
                queued: 64,
            },
            Expected {
                status: StatusCode::TOO_MANY_REQUESTS,
                openai_type: "rate_limit_error",
                openai_code: Some("rate_limit_exceeded"),
                openai_param: None,
                anthropic_type: "rate_limit_error",
                retry_after: Some("1"),
                hidden: None,
            },
        ),
        (
            "engine restarting",
            || Error::Unavailable {
                reason: "llama-server exited with signal 9".into(),
                retry_after: Duration::from_millis(2500),
            },
            Expected {
                status: StatusCode::SERVICE_UNAVAILABLE,
                openai_type: "server_error",
                openai_code: None,
                openai_param: None,
                anthropic_type: "overloaded_error",
                retry_after: Some("3"),
                hidden: Some("signal 9"),
            },
        ),
        (
            "model files",
            || Error::Model {
                model: "m:1".into(),
                reason: "/var/lib/airlock/blobs/ab: bad tensor".into(),
            },
            internal("blobs"),
        ),
        (
            "engine process answered nonsense",
            || Error::Upstream("status 418 from /v1/chat/completions".into()),
            internal("418"),
        ),
        (
            "worker stopped",
            || Error::Stopped("the worker has ended".into()),
            internal("worker"),
        ),
        (
            "inference failed",
            || Error::Inference("llama_decode returned -3".into()),
            internal("llama_decode"),
        ),
        (
            "io",
            || Error::Io {
                path: "/secret/path".into(),
                source: std::io::Error::other("disk on fire"),
            },
            internal("/secret/path"),
        ),
    ]
}

#[tokio::test]
async fn every_engine_failure_reaches_both_apis_in_their_own_error_shapes() {
    for (what, error, expected) in every_engine_failure() {
        let h = Harness::new(ScriptedChat::new([
            Reply::Refuse(error()),
            Reply::Refuse(error()),
            Reply::Refuse(error()),
            Reply::Refuse(error()),
        ]));
        for (path, body) in [
            ("/v1/chat/completions", openai_chat(json!({}))),
            ("/v1/completions", openai_text(json!({}))),
            ("/v1/chat/completions", openai_chat(json!({"stream": true}))),
        ] {
            let answer = h.post(path, &body).await;
            assert_eq!(
                answer.status, expected.status,
                "{what} on {path}: {}",
                answer.text
            );
            let e = &answer.json["error"];
            assert_eq!(e["type"], expected.openai_type, "{what}: {e}");
            assert_eq!(e["code"].as_str(), expected.openai_code, "{what}: {e}");
            assert_eq!(e["param"].as_str(), expected.openai_param, "{what}: {e}");
            assert!(!e["message"].as_str().unwrap().is_empty(), "{what}");
            assert_eq!(
                answer.retry_after.as_deref(),
                expected.retry_after,
                "{what}"
            );
            if let Some(hidden) = expected.hidden {
                assert!(
                    !answer.text.contains(hidden),
                    "{what} leaks {hidden}: {}",
                    answer.text
                );
            }
        }
        let answer = h.post("/v1/messages", &anthropic(json!({}))).await;
        assert_eq!(
            answer.status, expected.status,
            "{what} on messages: {}",
            answer.text
        );
        assert_eq!(answer.json["type"], "error", "{what}");
        assert_eq!(
            answer.json["error"]["type"], expected.anthropic_type,
            "{what}"
        );
        assert_eq!(
            answer.retry_after.as_deref(),
            expected.retry_after,
            "{what}"
        );
        if let Some(hidden) = expected.hidden {
            assert!(!answer.text.contains(hidden), "{what} leaks {hidden}");
        }
    }
}

#[tokio::test]
async fn a_failure_mid_stream_ends_each_stream_with_an_error_event_in_its_apis_format() {
    let failing = || {
        Reply::Events(vec![
            Ok(ChatEvent::Text("Par".into())),
            Err(Error::Inference("llama_decode returned -3".into())),
        ])
    };
    let h = Harness::new(ScriptedChat::new([failing(), failing()]));
    let openai = h
        .post(
            "/v1/chat/completions",
            &openai_chat(json!({"stream": true})),
        )
        .await;
    assert_eq!(openai.status, StatusCode::OK);
    let events = openai.events();
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "Par");
    let last = events.last().unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{}", openai.text);
    assert!(!openai.text.contains("llama_decode"));
    assert!(
        !openai.text.contains("[DONE]"),
        "a failed stream is not done"
    );

    let messages = h
        .post("/v1/messages", &anthropic(json!({"stream": true})))
        .await;
    assert!(messages.text.contains("event: error"), "{}", messages.text);
    let last = messages.events().pop().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(!messages.text.contains("message_stop"));
}

#[tokio::test]
async fn bad_values_are_refused_once_naming_the_parameter_as_each_api_calls_it() {
    let h = Harness::with(
        ScriptedChat::new([]),
        ScriptedEmbedder::new(8, []),
        "[limits]\nmax_tokens = 100",
    );
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            openai_chat(json!({"max_tokens": 101})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"max_completion_tokens": 0})),
            "max_completion_tokens",
        ),
        (
            "/v1/completions",
            openai_text(json!({"max_tokens": 500})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"temperature": 3.0})),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"top_p": 0.0})),
            "top_p",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"min_p": 2.0})),
            "min_p",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"repetition_penalty": 0.0})),
            "repetition_penalty",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"stop": [""]})),
            "stop",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"messages": []})),
            "messages",
        ),
        (
            "/v1/completions",
            openai_text(json!({"prompt": ""})),
            "prompt",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"top_logprobs": 2})),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            openai_text(json!({"logprobs": 30})),
            "logprobs",
        ),
        ("/v1/chat/completions", openai_chat(json!({"n": 9})), "n"),
        ("/v1/chat/completions", openai_chat(json!({"n": 0})), "n"),
        (
            "/v1/chat/completions",
            openai_chat(json!({"n": 2, "stream": true})),
            "n",
        ),
        (
            "/v1/chat/completions",
            openai_chat(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": true}}}})),
            "response_format",
        ),
    ] {
        let answer = h.post(path, &body).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.text
        );
        assert_eq!(answer.json["error"]["param"], param, "{body}");
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(param), "{message}");
    }
    for (body, name) in [
        (anthropic(json!({"max_tokens": 101})), "max_tokens"),
        (
            anthropic(json!({"stop_sequences": ["x".repeat(300)]})),
            "stop_sequences",
        ),
        (anthropic(json!({"messages": []})), "messages"),
        (
            anthropic(json!({"output_config": {"format": {"type": "json_schema",
                "schema": {"type": "string", "pattern": "^(a{1000}){1000}$"}}}})),
            "output_config.format",
        ),
    ] {
        let answer = h.post("/v1/messages", &body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.json["error"]["type"], "invalid_request_error");
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(name),
            "{}",
            answer.text
        );
    }
    assert!(
        h.chat.requests().is_empty(),
        "no bad request reached the engine"
    );
}

#[tokio::test]
async fn both_apis_hand_the_engine_one_checked_request_and_shape_its_answer() {
    let ending = |reason, stop: Option<&str>| {
        Ok(ChatEvent::Done(Ending {
            reason,
            stop_sequence: stop.map(str::to_owned),
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 2,
                cached_tokens: 5,
            },
        }))
    };
    let answer = |reason, stop| {
        Reply::Events(vec![
            Ok(ChatEvent::Text("Par".into())),
            Ok(ChatEvent::Text("is".into())),
            ending(reason, stop),
        ])
    };
    let h = Harness::new(ScriptedChat::new([
        answer(FinishReason::Stop, None),
        answer(FinishReason::Length, None),
        answer(FinishReason::Stop, Some("###")),
        answer(FinishReason::Stop, None),
    ]));

    let whole = h
        .post(
            "/v1/chat/completions",
            &openai_chat(json!({"max_tokens": 7, "stop": "###", "temperature": 0, "seed": 3})),
        )
        .await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.text);
    assert_eq!(whole.json["object"], "chat.completion");
    assert_eq!(whole.json["choices"][0]["message"]["content"], "Paris");
    assert_eq!(whole.json["choices"][0]["finish_reason"], "stop");
    assert_eq!(whole.json["usage"]["total_tokens"], 14);
    assert_eq!(
        whole.json["usage"]["prompt_tokens_details"]["cached_tokens"],
        5
    );

    let streamed = h
        .post(
            "/v1/completions",
            &openai_text(json!({"stream": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    let events = streamed.events();
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "Paris");
    assert!(
        events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "length")
    );
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 2);
    assert!(streamed.text.ends_with("data: [DONE]\n\n"));

    let message = h
        .post(
            "/v1/messages",
            &anthropic(json!({"system": "Be brief.", "stop_sequences": ["###"]})),
        )
        .await;
    assert_eq!(message.json["content"][0]["text"], "Paris");
    assert_eq!(message.json["stop_reason"], "stop_sequence");
    assert_eq!(message.json["stop_sequence"], "###");
    assert_eq!(message.json["usage"]["input_tokens"], 7);
    assert_eq!(message.json["usage"]["cache_read_input_tokens"], 5);

    let stream = h
        .post("/v1/messages", &anthropic(json!({"stream": true})))
        .await;
    let kinds: Vec<String> = stream
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );

    let requests = h.chat.requests();
    assert_eq!(requests.len(), 4);
    let first = &requests[0];
    assert_eq!(first.max_tokens(), Some(7));
    assert_eq!(first.stop(), ["###"]);
    assert_eq!(first.sampling().temperature, 0.0);
    assert_eq!(first.sampling().seed, Some(3));
    assert!(
        first.cache_scope().is_some(),
        "a seeded request keeps its scope: the engine decides what it may share"
    );
    assert!(
        requests[1]
            .cache_scope()
            .is_some_and(|s| s.contains("internal")),
        "a caller's scope names its clearance"
    );
    assert_eq!(requests[1].max_tokens(), None);
    assert_eq!(
        requests[1].default_max_tokens(),
        16,
        "legacy completions default to 16"
    );
    assert_eq!(requests[1].prompt(), &Prompt::Text("hi".into()));
    let Prompt::Chat(conversation) = requests[2].prompt() else {
        panic!("messages become a conversation")
    };
    assert_eq!(
        conversation.len(),
        2,
        "the system prompt leads the conversation"
    );
    assert_eq!(conversation[0].content, "Be brief.");
}

#[tokio::test]
async fn a_caller_that_hangs_up_mid_stream_drops_its_answer_in_the_engine() {
    let h = Harness::new(ScriptedChat::new([Reply::Hang(vec![ChatEvent::Text(
        "Once".into(),
    )])]));
    let response = h
        .send(
            "/v1/chat/completions",
            &openai_chat(json!({"stream": true})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The role chunk, then the first text.
    let mut seen = String::new();
    while !seen.contains("Once") {
        let frame = body.frame().await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    assert_eq!(h.chat.open_streams(), 1);
    drop(body);
    assert_eq!(
        h.chat.open_streams(),
        0,
        "the answer is dropped with the connection"
    );
}

#[tokio::test]
async fn embeddings_go_through_the_embedder_and_its_refusals_map_like_chats() {
    let h = Harness::with(
        ScriptedChat::new([]),
        ScriptedEmbedder::new(
            4,
            [Error::Busy {
                running: 1,
                queued: 4,
            }],
        ),
        "",
    );
    let body = json!({"model": "embed", "input": ["one two", "three"], "encoding_format": "float"});
    let busy = h.post("/v1/embeddings", &body).await;
    assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(busy.retry_after.as_deref(), Some("1"));
    let ok = h.post("/v1/embeddings", &body).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.json["data"].as_array().unwrap().len(), 2);
    assert_eq!(ok.json["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(ok.json["usage"]["prompt_tokens"], 3);
    let wrong = h
        .post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": "x", "dimensions": 9}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.embed.calls(),
        2,
        "a refused dimension never reaches the engine"
    );
}

#[tokio::test]
async fn status_shows_each_engines_kind_state_and_load() {
    let h = Harness::new(ScriptedChat::new([]));
    h.chat.set_state(EngineState::Restarting {
        reason: "exited with signal 9".into(),
    });
    let admin = Registry::open(&h.app.config.data_dir, "user:test")
        .unwrap()
        .create_key("ops", KeyRole::Admin, "internal", None)
        .unwrap()
        .secret;
    let request = Request::get("/admin/status")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    let response = router(Arc::clone(&h.app)).oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let status: Value = serde_json::from_slice(&bytes).unwrap();
    let chat = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["alias"] == "chat")
        .unwrap();
    assert_eq!(chat["engine"]["kind"], "scripted");
    assert_eq!(chat["engine"]["state"], "restarting");
    assert_eq!(chat["engine"]["reason"], "exited with signal 9");
    assert_eq!(chat["engine"]["running"], 0);
}

#[tokio::test]
async fn both_apis_hand_a_schema_to_the_engine_compiled_and_refuse_what_cannot_be_enforced() {
    let h = Harness::with(ScriptedChat::new([]), ScriptedEmbedder::new(8, []), "");
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}},
        "required": ["name"], "additionalProperties": false});
    h.post(
        "/v1/chat/completions",
        &openai_chat(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "Person", "schema": schema, "strict": true}}})),
    )
    .await;
    h.post(
        "/v1/chat/completions",
        &openai_chat(json!({"response_format": {"type": "json_object"}})),
    )
    .await;
    h.post(
        "/v1/messages",
        &anthropic(json!({"output_config": {"format": {"type": "json_schema", "schema": schema}}})),
    )
    .await;
    let requests = h.chat.requests();
    assert_eq!(requests.len(), 3);
    let named = requests[0].constraint().expect("a constraint");
    assert_eq!(named.schema(), &schema);
    assert_eq!(named.name(), Some("Person"));
    assert!(named.grammar().contains("root ::="));
    assert!(
        requests[1]
            .constraint()
            .expect("a constraint")
            .is_any_object()
    );
    assert_eq!(
        requests[2].constraint().expect("a constraint").schema(),
        &schema
    );

    let mut deep = json!({"type": "string"});
    for _ in 0..64 {
        deep = json!({"type": "array", "items": deep});
    }
    for (schema, says) in [
        (deep, "deeper than"),
        (
            json!({"$ref": "https://example.com/schema.json"}),
            "nothing is fetched",
        ),
        (json!({"enum": (0..5000).collect::<Vec<_>>()}), "enum"),
        (
            json!({"type": "string", "pattern": "^((a{40}){40}){40}$"}),
            "copies",
        ),
        (json!({"type": "string", "pattern": "^(a)\\1$"}), "pattern"),
    ] {
        for (path, body) in [
            (
                "/v1/chat/completions",
                openai_chat(json!({"response_format": {"type": "json_schema",
                    "json_schema": {"name": "x", "schema": schema}}})),
            ),
            (
                "/v1/messages",
                anthropic(
                    json!({"output_config": {"format": {"type": "json_schema", "schema": schema}}}),
                ),
            ),
        ] {
            let answer = h.post(path, &body).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
            let message = answer.json["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{path} {schema}: {message}");
        }
    }
    assert_eq!(
        h.chat.requests().len(),
        3,
        "no refused schema reached the engine"
    );
}

#[tokio::test]
async fn count_tokens_counts_the_conversation_with_the_engine_and_generates_nothing() {
    let h = Harness::with(ScriptedChat::new([]), ScriptedEmbedder::new(8, []), "");
    let answer = h
        .post(
            "/v1/messages/count_tokens",
            &json!({"model": "chat", "system": "be brief",
                "messages": [{"role": "user", "content": "one two three"}]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // The scripted engine counts two per message and one per word.
    assert_eq!(answer.json, json!({"input_tokens": 9}));
    let refused = h
        .post(
            "/v1/messages/count_tokens",
            &json!({"model": "chat", "messages": []}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json["error"]["type"], "invalid_request_error");
    assert!(h.chat.requests().is_empty(), "counting generates nothing");
}

#[tokio::test]
async fn calls_come_back_in_each_apis_own_shape_whole_and_streamed_and_earlier_calls_reach_the_model()
 {
    let call = r#"{"tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "get_weather", "parameters": {"city": "Rome"}}]}"#;
    // The same call, split as a model streams it.
    let pieces = [&call[..20], &call[20..]];
    let small: Vec<&str> = (0..call.len())
        .step_by(7)
        .map(|i| &call[i..(i + 7).min(call.len())])
        .collect();
    let h = Harness::new(ScriptedChat::new([
        Reply::text(pieces),
        Reply::text(pieces),
        Reply::text(small.clone()),
        Reply::text(pieces),
        Reply::text(pieces),
        Reply::text(small),
        Reply::text(["It is sunny."]),
    ]));
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let openai_tools =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]);
    let anthropic_tools = json!([{"name": "get_weather", "input_schema": schema}]);

    let whole = h
        .post(
            "/v1/chat/completions",
            &openai_chat(json!({"tools": openai_tools, "tool_choice": "required"})),
        )
        .await;
    let choice = &whole.json["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{}", whole.text);
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["function"]["name"], "get_weather");
    assert_eq!(calls[1]["function"]["arguments"], r#"{"city":"Rome"}"#);
    assert_ne!(calls[0]["id"], calls[1]["id"]);

    let streamed = h
        .post(
            "/v1/chat/completions",
            &openai_chat(json!({"tools": openai_tools, "stream": true})),
        )
        .await;
    let events = streamed.events();
    let deltas: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(deltas.len(), 2, "{}", streamed.text);
    assert_eq!(deltas[1]["index"], 1);
    assert_eq!(deltas[0]["function"]["arguments"], r#"{"city":"Oslo"}"#);
    assert!(events.iter().all(|e| {
        e["choices"][0]["delta"]["content"]
            .as_str()
            .is_none_or(str::is_empty)
    }));
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // A required call streams as it is made: each call's name once whole, then its
    // arguments' text piece by piece.
    let streamed = h
        .post(
            "/v1/chat/completions",
            &openai_chat(json!({"tools": openai_tools, "tool_choice": "required", "stream": true})),
        )
        .await;
    let events = streamed.events();
    let deltas: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(deltas.len() > 4, "{}", streamed.text);
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for delta in &deltas {
        let index = delta["index"].as_u64().unwrap() as usize;
        if let Some(name) = delta["function"]["name"].as_str() {
            assert_eq!(index, calls.len(), "a call starts once, in order");
            assert_eq!(delta["type"], "function");
            calls.push((
                delta["id"].as_str().unwrap().into(),
                name.into(),
                String::new(),
            ));
        }
        calls[index].2 += delta["function"]["arguments"].as_str().unwrap();
    }
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].0, calls[1].0);
    assert_eq!(calls[0].1, "get_weather");
    assert_eq!(calls[0].2, r#"{"city": "Oslo"}"#);
    assert_eq!(calls[1].2, r#"{"city": "Rome"}"#);
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    let whole = h
        .post(
            "/v1/messages",
            &anthropic(json!({"tools": anthropic_tools, "tool_choice": {"type": "any"}})),
        )
        .await;
    assert_eq!(whole.json["stop_reason"], "tool_use", "{}", whole.text);
    assert_eq!(whole.json["content"][0]["type"], "tool_use");
    assert_eq!(whole.json["content"][1]["input"], json!({"city": "Rome"}));

    let streamed = h
        .post(
            "/v1/messages",
            &anthropic(json!({"tools": anthropic_tools, "stream": true})),
        )
        .await;
    let events = streamed.events();
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .collect();
    assert_eq!(starts.len(), 2, "{}", streamed.text);
    assert_eq!(starts[0]["content_block"]["type"], "tool_use");
    let json_deltas: Vec<&str> = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .map(|e| e["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(json_deltas, [r#"{"city":"Oslo"}"#, r#"{"city":"Rome"}"#]);
    assert!(
        events
            .iter()
            .any(|e| e["delta"]["stop_reason"] == "tool_use")
    );

    let streamed = h
        .post(
            "/v1/messages",
            &anthropic(
                json!({"tools": anthropic_tools, "tool_choice": {"type": "any"}, "stream": true}),
            ),
        )
        .await;
    let events = streamed.events();
    let kinds: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("content_block"))
        .map(|e| (e["type"].as_str().unwrap(), e["index"].as_u64().unwrap()))
        .collect();
    let starts = kinds.iter().filter(|k| k.0 == "content_block_start");
    assert_eq!(starts.count(), 2, "{}", streamed.text);
    // Each block opens, takes its deltas, and closes before the next opens.
    let mut open = None;
    let mut inputs = [String::new(), String::new()];
    for e in events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("content_block"))
    {
        let index = e["index"].as_u64().unwrap();
        match e["type"].as_str().unwrap() {
            "content_block_start" => {
                assert_eq!(open, None, "{}", streamed.text);
                assert_eq!(e["content_block"]["name"], "get_weather");
                open = Some(index);
            }
            "content_block_delta" => {
                assert_eq!(open, Some(index));
                inputs[index as usize] += e["delta"]["partial_json"].as_str().unwrap();
            }
            _ => {
                assert_eq!(open, Some(index));
                open = None;
            }
        }
    }
    assert_eq!(open, None);
    assert!(kinds.len() > 6, "the input streams in pieces: {kinds:?}");
    assert_eq!(inputs, [r#"{"city": "Oslo"}"#, r#"{"city": "Rome"}"#]);
    assert!(
        events
            .iter()
            .any(|e| e["delta"]["stop_reason"] == "tool_use")
    );

    // A conversation with a call and its result: both reach the model as text, after the
    // functions' prompt in the system message.
    h.post(
        "/v1/chat/completions",
        &openai_chat(json!({"tools": openai_tools, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "refusal": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]})),
    )
    .await;
    let requests = h.chat.requests();
    let Prompt::Chat(conversation) = requests.last().unwrap().prompt() else {
        panic!("a conversation");
    };
    assert!(
        conversation[0]
            .content
            .starts_with("Be brief.\n\nYou can call functions.")
    );
    assert!(conversation[0].content.contains("get_weather"));
    assert_eq!(
        conversation[2].content,
        r#"{"tool_calls":[{"name":"get_weather","parameters":{"city":"Oslo"}}]}"#
    );
    assert_eq!(
        conversation[3].content,
        "Function get_weather returned:\nsunny"
    );
    assert!(
        requests[0].constraint().is_some(),
        "required: calls constrained"
    );
    assert!(requests[1].constraint().is_none(), "auto: free");
    assert!(requests[2].constraint().is_some());
}

/// Every Messages content block that starts stops once, before the next starts.
fn blocks_are_well_formed(events: &[Value]) -> bool {
    let mut open: Option<&Value> = None;
    for e in events {
        match e["type"].as_str() {
            Some("content_block_start") if open.is_none() => open = Some(&e["index"]),
            Some("content_block_delta") if open == Some(&e["index"]) => {}
            Some("content_block_stop") if open == Some(&e["index"]) => open = None,
            Some("content_block_start" | "content_block_delta" | "content_block_stop") => {
                return false;
            }
            _ => {}
        }
    }
    open.is_none()
}

#[tokio::test]
async fn a_required_call_cut_short_streams_well_formed_events_that_say_why() {
    let cut = |pieces: &[&str], reason, stop: Option<&str>| {
        let mut events: Vec<_> = pieces
            .iter()
            .map(|p| Ok(ChatEvent::Text((*p).to_owned())))
            .collect();
        events.push(Ok(ChatEvent::Done(Ending {
            reason,
            stop_sequence: stop.map(str::to_owned),
            usage: Usage::default(),
        })));
        Reply::Events(events)
    };
    let before_a_name = [r#"{"tool_calls": [{"na"#];
    let in_the_second_call = [
        r#"{"tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}, "#,
        r#"{"name": "get_wea"#,
    ];
    let at_a_stop_sequence =
        [r#"{"tool_calls": [{"name": "get_weather", "parameters": {"city": ""#];
    let h = Harness::new(ScriptedChat::new([
        cut(&before_a_name, FinishReason::Length, None),
        cut(&in_the_second_call, FinishReason::Length, None),
        cut(&at_a_stop_sequence, FinishReason::Stop, Some("Os")),
        cut(&at_a_stop_sequence, FinishReason::Stop, Some("Os")),
    ]));
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let tools = json!([{"name": "get_weather", "input_schema": schema}]);
    let request = json!({"tools": tools, "tool_choice": {"type": "any"}, "stream": true});
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let streamed = h.post("/v1/messages", &anthropic(request.clone())).await;
        let events = streamed.events();
        assert!(blocks_are_well_formed(&events), "{}", streamed.text);
        let types: Vec<String> = events
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .map(|e| e["content_block"]["type"].as_str().unwrap().to_owned())
            .collect();
        let end = events
            .iter()
            .find(|e| e["type"] == "message_delta")
            .unwrap();
        outcomes.push((
            types,
            end["delta"]["stop_reason"].clone(),
            end["delta"]["stop_sequence"].clone(),
        ));
    }
    assert_eq!(
        outcomes,
        [
            (vec!["text".to_owned()], json!("max_tokens"), Value::Null),
            (
                vec!["tool_use".to_owned()],
                json!("max_tokens"),
                Value::Null
            ),
            (
                vec!["tool_use".to_owned()],
                json!("stop_sequence"),
                json!("Os")
            ),
        ]
    );
    let openai_tools =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]);
    let streamed = h
        .post(
            "/v1/chat/completions",
            &openai_chat(json!({"tools": openai_tools, "tool_choice": "required", "stream": true})),
        )
        .await;
    let finish = streamed
        .events()
        .iter()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str().map(str::to_owned));
    assert_eq!(finish.as_deref(), Some("stop"), "{}", streamed.text);
}
