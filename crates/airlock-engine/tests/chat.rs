//! SmolLM2-135M-Instruct (GGUF, Q4_1) on the embedded engine.

#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed expect is a failed test"
)]

mod support;

use airlock_engine::{ChatConfig, GenerateParams, Message, Role, SamplingParams};

#[test]
fn answers_paris() {
    let model = support::smollm2(&ChatConfig::default());
    let prompt = model
        .chat_prompt(&[Message::new(
            Role::User,
            "What is the capital of France? Answer with one word.",
        )])
        .unwrap();
    let out = model
        .generate(
            prompt,
            GenerateParams {
                max_tokens: Some(16),
                sampling: SamplingParams::greedy(),
                ..Default::default()
            },
        )
        .unwrap()
        .collect_blocking()
        .unwrap();
    eprintln!("{out:?}");
    assert!(out.text.contains("Paris"), "{:?}", out.text);
}

/// Sixteen different requests (prompts, temperatures, seeds) run together in shared decode
/// batches; each must produce exactly what it produces alone.
#[test]
fn sixteen_concurrent_generations_each_equal_their_single_run() {
    let model = support::smollm2(&ChatConfig {
        slots: 16,
        context_per_slot: Some(512),
        ..ChatConfig::default()
    });
    let topics = [
        "France",
        "the ocean",
        "a cat",
        "Rust",
        "bread",
        "winter",
        "music",
        "the moon",
    ];
    let requests: Vec<(Vec<i32>, GenerateParams)> = (0..16)
        .map(|i| {
            let prompt = model
                .chat_prompt(&[Message::new(
                    Role::User,
                    format!("Write one sentence about {}.", topics[i % 8]),
                )])
                .unwrap();
            let sampling = SamplingParams {
                temperature: if i % 4 == 0 { 0.0 } else { 0.8 },
                top_p: 0.95,
                top_k: 40,
                seed: Some(1000 + i as u32),
                ..SamplingParams::default()
            };
            (
                prompt,
                GenerateParams {
                    max_tokens: Some(40),
                    sampling,
                    ..Default::default()
                },
            )
        })
        .collect();
    let alone: Vec<_> = requests
        .iter()
        .map(|(p, g)| {
            model
                .generate(p.clone(), g.clone())
                .unwrap()
                .collect_blocking()
                .unwrap()
        })
        .collect();
    let running: Vec<_> = requests
        .iter()
        .map(|(p, g)| model.generate(p.clone(), g.clone()).unwrap())
        .collect();
    // Forty tokens each take far longer than sixteen submissions: they really run together.
    assert!(
        model.running() + model.queued() >= 15,
        "{} running, {} queued",
        model.running(),
        model.queued()
    );
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = running
            .into_iter()
            .map(|g| s.spawn(move || g.collect_blocking().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(!a.tokens.is_empty());
        assert_eq!(
            a.tokens, b.tokens,
            "request {i}: {:?} vs {:?}",
            a.text, b.text
        );
        assert_eq!(a.text, b.text);
    }
}

/// The golden file is llama.cpp's own greedy continuation (argmax of its logits each step) of a
/// fixed chat, made by `scripts/reference/make-goldens.sh`; our prompt and every generated token
/// must be the same.
#[test]
fn greedy_output_equals_llama_cpp_token_for_token() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::golden("smollm2_greedy.json")).unwrap(),
    )
    .unwrap();
    let ids = |key: &str| -> Vec<i32> {
        golden[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| i32::try_from(t.as_i64().unwrap()).unwrap())
            .collect()
    };
    let messages: Vec<Message> = golden["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "user" => Role::User,
                other => panic!("golden role {other}"),
            };
            Message::new(role, m["content"].as_str().unwrap())
        })
        .collect();
    let expected = ids("tokens");
    assert!(!expected.is_empty(), "the golden file holds no tokens");

    let model = support::smollm2(&ChatConfig::default());
    let prompt = model.chat_prompt(&messages).unwrap();
    assert_eq!(
        prompt,
        ids("prompt_tokens"),
        "prompt tokens differ from llama.cpp's"
    );
    let out = model
        .generate(
            prompt,
            GenerateParams {
                max_tokens: Some(usize::try_from(golden["max_tokens"].as_u64().unwrap()).unwrap()),
                sampling: SamplingParams::greedy(),
                ..Default::default()
            },
        )
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(out.tokens, expected, "ours: {:?}", out.text);
    assert_eq!(out.text, golden["text"].as_str().unwrap());
}

/// A conversation's second turn reuses the first turn's cache (its prompt and the answer fed
/// back) and gives the greedy answer of a model that decodes the whole conversation afresh.
#[test]
fn the_second_turn_of_a_conversation_reuses_the_first_and_answers_as_if_decoded_afresh() {
    let config = ChatConfig {
        slots: 2,
        context_per_slot: Some(512),
        ..ChatConfig::default()
    };
    let params = |scope: Option<&str>| GenerateParams {
        max_tokens: Some(24),
        sampling: SamplingParams::greedy(),
        cache_scope: scope.map(str::to_owned),
        ..Default::default()
    };
    let model = support::smollm2(&config);
    let run = |prompt: &[i32], params: GenerateParams| {
        model
            .generate(prompt.to_vec(), params)
            .expect("queued")
            .collect_blocking()
            .expect("generated")
    };
    let mut conversation = vec![Message::new(Role::User, "Name three colours.")];
    let first_prompt = model.chat_prompt(&conversation).expect("prompt");
    let first = run(&first_prompt, params(Some("alice")));
    conversation.push(Message::new(Role::Assistant, first.text.trim()));
    conversation.push(Message::new(Role::User, "Which of them is the darkest?"));
    let second_prompt = model.chat_prompt(&conversation).expect("prompt");

    let reused = run(&second_prompt, params(Some("alice")));
    assert!(
        reused.usage.cached_tokens >= first_prompt.len(),
        "{} of {} prompt tokens reused",
        reused.usage.cached_tokens,
        second_prompt.len()
    );
    let whole = support::smollm2(&config)
        .generate(second_prompt.clone(), params(None))
        .expect("queued")
        .collect_blocking()
        .expect("generated");
    assert_eq!(whole.usage.cached_tokens, 0);
    assert_eq!(
        reused.tokens, whole.tokens,
        "{:?} / {:?}",
        reused.text, whole.text
    );
}

/// A schema-constrained answer parses and matches its schema, greedy and sampled, alone and
/// beside unconstrained generations in the same batches; without the grammar the same prompt
/// does not answer in JSON at all.
#[test]
fn constrained_answers_always_parse_and_match_their_schema() {
    use airlock_engine::{ChatParams, ChatRequest, OutputFormat, Prompt, RequestLimits};
    let model = support::smollm2(&ChatConfig {
        slots: 4,
        context_per_slot: Some(1024),
        ..ChatConfig::default()
    });
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
            "size": {"enum": ["small", "medium", "large"]},
            "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3}
        },
        "required": ["city", "country", "population_millions", "size", "landmarks"],
        "additionalProperties": false
    });
    let request = |format: OutputFormat, sampling: SamplingParams| {
        let prompt = model
            .chat_prompt(&[Message::new(Role::User, "Tell me about Paris.")])
            .unwrap();
        let params = ChatParams {
            max_tokens: Some(200),
            sampling,
            format,
            ..ChatParams::default()
        };
        let request = ChatRequest::new(
            Prompt::Chat(vec![Message::new(Role::User, "Tell me about Paris.")]),
            params,
            &RequestLimits::default(),
        )
        .expect("a valid request");
        (prompt, request)
    };
    let constrained = OutputFormat::JsonSchema {
        schema: schema.clone(),
        name: None,
    };
    let mut streams = Vec::new();
    for seed in [None, Some(1), Some(2)] {
        let sampling = match seed {
            None => SamplingParams::greedy(),
            Some(seed) => SamplingParams {
                temperature: 0.8,
                seed: Some(seed),
                ..SamplingParams::default()
            },
        };
        let (_, r) = request(constrained.clone(), sampling);
        streams.push(model.answer(r).expect("queued"));
    }
    let (_, free) = request(OutputFormat::Text, SamplingParams::greedy());
    let free = model.answer(free).expect("queued");
    let runtime = tokio_runtime();
    for stream in streams {
        let (text, ending) = runtime.block_on(stream.collect()).expect("answered");
        eprintln!("{text}");
        assert_eq!(ending.reason, airlock_engine::FinishReason::Stop, "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).expect("parses as JSON");
        let object = value.as_object().expect("an object");
        assert_eq!(object.len(), 5, "{text}");
        assert!(
            object["city"]
                .as_str()
                .is_some_and(|s| s.chars().count() <= 30)
        );
        assert!(
            object["population_millions"]
                .as_u64()
                .is_some_and(|n| n <= 100)
        );
        assert!(["small", "medium", "large"].contains(&object["size"].as_str().unwrap()));
        assert!(object["landmarks"].as_array().is_some_and(|a| a.len() <= 3));
    }
    let (text, _) = runtime.block_on(free.collect()).expect("answered");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "{text}"
    );
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

/// Schemas inside the limits but built to be hard on a grammar (ambiguous alternations,
/// recursion through objects, nesting near the limit, a large enum) compile and generate, and
/// every answer stops at its length.
#[test]
fn adversarial_schemas_within_the_limits_generate_within_their_length() {
    use airlock_engine::{ChatParams, ChatRequest, OutputFormat, Prompt, RequestLimits};
    let model = support::smollm2(&ChatConfig {
        context_per_slot: Some(1024),
        ..ChatConfig::default()
    });
    let mut nested = serde_json::json!({"type": "integer"});
    for _ in 0..30 {
        nested = serde_json::json!({"type": "array", "items": nested, "maxItems": 2});
    }
    let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    for schema in [
        serde_json::json!({"type": "string", "pattern": "^(a|aa|aaa)*(b|ab|bb)*$"}),
        serde_json::json!({"$defs": {"Node": {"type": "object", "properties": {
            "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}, "required": ["next"]}},
            "$ref": "#/$defs/Node"}),
        nested,
        serde_json::json!({"enum": words}),
    ] {
        let request = ChatRequest::new(
            Prompt::Chat(vec![Message::new(Role::User, "Answer in JSON.")]),
            ChatParams {
                max_tokens: Some(48),
                sampling: SamplingParams::greedy(),
                format: OutputFormat::JsonSchema {
                    schema: schema.clone(),
                    name: None,
                },
                ..ChatParams::default()
            },
            &RequestLimits::default(),
        )
        .expect("within the limits");
        let (text, ending) = tokio_runtime()
            .block_on(model.answer(request).expect("queued").collect())
            .expect("answered");
        assert!(ending.usage.completion_tokens <= 48, "{schema}: {text}");
        if ending.reason == airlock_engine::FinishReason::Stop {
            serde_json::from_str::<serde_json::Value>(&text).expect("a finished answer parses");
        }
    }
}

/// Requests of one scope with the same long prompt, started together as the answers of one
/// `n` request are: the first decodes the prompt and the others copy it from its cache (a
/// seeded one only whole, with the logits of the step that decoded it, if it came in time),
/// and each gives exactly what it gives alone on a model that decodes everything itself.
#[test]
fn requests_sharing_a_prompt_decode_it_once_and_each_answers_as_if_alone() {
    let config = ChatConfig {
        slots: 4,
        context_per_slot: Some(512),
        ..ChatConfig::default()
    };
    let model = support::smollm2(&config);
    let prompt = model
        .chat_prompt(&[
            Message::new(
                Role::System,
                "You are a careful assistant for a hospital's records office. Answer briefly, \
                 in plain words, and say when you do not know. Never guess a patient's details.",
            ),
            Message::new(Role::User, "Name three colours."),
        ])
        .expect("prompt");
    let params = |temperature: f32, seed: Option<u32>, scope: Option<&str>| GenerateParams {
        max_tokens: Some(16),
        sampling: SamplingParams {
            temperature,
            seed,
            ..SamplingParams::greedy()
        },
        cache_scope: scope.map(str::to_owned),
        ..Default::default()
    };
    let choices = [(0.0, None), (0.0, None), (0.9, Some(2)), (0.9, Some(3))];
    let together: Vec<_> = choices
        .iter()
        .map(|&(t, seed)| {
            model
                .generate(prompt.clone(), params(t, seed, Some("alice")))
                .expect("queued")
        })
        .collect();
    let together: Vec<_> = together
        .into_iter()
        .map(|g| g.collect_blocking().expect("generated"))
        .collect();
    let len = prompt.len();
    let cached: Vec<usize> = together.iter().map(|c| c.usage.cached_tokens).collect();
    eprintln!("prompt {len} tokens, cached {cached:?}");
    assert_eq!(cached[0], 0, "{cached:?}");
    assert!([len - 1, len].contains(&cached[1]), "{cached:?}");
    assert!(
        cached[2..].iter().all(|c| [0, len].contains(c)),
        "{cached:?}"
    );
    let fresh = support::smollm2(&config);
    for (&(t, seed), shared) in choices.iter().zip(&together) {
        let alone = fresh
            .generate(prompt.clone(), params(t, seed, None))
            .expect("queued")
            .collect_blocking()
            .expect("generated");
        assert_eq!(
            shared.tokens, alone.tokens,
            "{:?} / {:?}",
            shared.text, alone.text
        );
    }
}
