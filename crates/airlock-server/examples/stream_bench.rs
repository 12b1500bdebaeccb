//! Streaming clients for `scripts/bench-engines.sh`: the same load against any OpenAI-style
//! chat endpoint (`airlock serve`, llama-server), so that servers are compared on one client.
//!
//! `stream_bench clients ADDR KEY CLIENTS REQUESTS MAX_TOKENS` runs CLIENTS concurrent clients,
//! each sending REQUESTS streamed chat completions one after another (greedy, a different
//! question each), and prints one JSON line: tokens, wall seconds, aggregate tokens/s, time to
//! first token and to the end (p50, p95), errors.
//!
//! `stream_bench ask ADDR KEY MODEL QUESTIONS CLIENTS REQUESTS MAX_TOKENS` is the same load
//! on model MODEL with the questions of file QUESTIONS (JSON lines with a "query"), and also
//! reports the mean prompt length: for answers from collections against plain ones.
//!
//! `stream_bench search ADDR KEY COLLECTION QUESTIONS CLIENTS REQUESTS` sends the questions
//! to `/v1/vector_stores/COLLECTION/search` instead: retrieval alone, end to end.
//!
//! `stream_bench paired ADDR_A KEY_A ADDR_B KEY_B ROUNDS` sends the same one-token completion
//! to A and to B in turn (which goes first alternates) and prints the medians and the median
//! of the paired differences (A − B), in milliseconds: what A adds in front of B.
//!
//! KEY `-` sends no credentials.

#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Questions whose answers run past 64 tokens.
const QUESTIONS: [&str; 16] = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how a steam engine works.",
    "Describe a busy market in a coastal town.",
    "Write a long letter to a friend about a journey by train.",
    "Explain how bread is made, step by step.",
    "Describe the life cycle of a butterfly in detail.",
    "Write a long story about a dragon who learns to read.",
    "Explain how a bicycle works, part by part.",
    "Describe a walk through an old forest.",
    "Write a long poem about the four seasons.",
    "Explain how rain forms, in detail.",
    "Describe a day in the life of a baker.",
    "Write a long story about a robot in a library.",
    "Explain how a library organises its books.",
    "Describe a storm at sea from a sailor's view.",
    "Write a long story about a cat who climbs mountains.",
];

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("clients") if args.len() == 7 => runtime.block_on(clients(
            Load {
                addr: args[2].clone(),
                key: args[3].clone(),
                model: "chat".into(),
                questions: QUESTIONS.iter().map(|q| (*q).to_owned()).collect(),
                max_tokens: args[6].parse().unwrap(),
                search: None,
            },
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        )),
        Some("ask") if args.len() == 9 => runtime.block_on(clients(
            Load {
                addr: args[2].clone(),
                key: args[3].clone(),
                model: args[4].clone(),
                questions: questions(&args[5]),
                max_tokens: args[8].parse().unwrap(),
                search: None,
            },
            args[6].parse().unwrap(),
            args[7].parse().unwrap(),
        )),
        Some("search") if args.len() == 8 => runtime.block_on(clients(
            Load {
                addr: args[2].clone(),
                key: args[3].clone(),
                model: String::new(),
                questions: questions(&args[5]),
                max_tokens: 0,
                search: Some(args[4].clone()),
            },
            args[6].parse().unwrap(),
            args[7].parse().unwrap(),
        )),
        Some("paired") if args.len() == 7 => runtime.block_on(paired(
            (&args[2], &args[3]),
            (&args[4], &args[5]),
            args[6].parse().unwrap(),
        )),
        _ => {
            eprintln!(
                "usage: stream_bench clients ADDR KEY CLIENTS REQUESTS MAX_TOKENS\n       stream_bench ask ADDR KEY MODEL QUESTIONS CLIENTS REQUESTS MAX_TOKENS\n       stream_bench search ADDR KEY COLLECTION QUESTIONS CLIENTS REQUESTS\n       stream_bench paired ADDR_A KEY_A ADDR_B KEY_B ROUNDS"
            );
            return std::process::ExitCode::from(2);
        }
    }
    std::process::ExitCode::SUCCESS
}

/// The questions of a JSON-lines file (`{"query": ...}` per line).
fn questions(path: &str) -> Vec<String> {
    let questions: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["query"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(!questions.is_empty(), "no questions in {path}");
    questions
}

/// What every client sends.
#[derive(Clone)]
struct Load {
    addr: String,
    key: String,
    model: String,
    questions: Vec<String>,
    max_tokens: u64,
    /// Search this collection instead of asking a model.
    search: Option<String>,
}

/// What one request took.
struct Timing {
    first: f64,
    total: f64,
    tokens: u64,
    prompt_tokens: u64,
}

fn request(addr: &str, key: &str, body: &Value) -> String {
    request_to(addr, key, "/v1/chat/completions", body)
}

fn request_to(addr: &str, key: &str, path: &str, body: &Value) -> String {
    let body = body.to_string();
    let auth = if key == "-" {
        String::new()
    } else {
        format!("authorization: Bearer {key}\r\n")
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One search on a fresh connection; its whole time counts as both first and last.
async fn search_once(load: &Load, collection: &str, question: &str) -> Result<Timing, String> {
    let body = json!({"query": question, "max_num_results": 5});
    let path = format!("/v1/vector_stores/{collection}/search");
    let started = Instant::now();
    let mut socket = TcpStream::connect(&load.addr)
        .await
        .map_err(|e| e.to_string())?;
    socket
        .write_all(request_to(&load.addr, &load.key, &path, &body).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    socket
        .read_to_string(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    if !reply.starts_with("HTTP/1.1 200") {
        return Err(reply);
    }
    let total = started.elapsed().as_secs_f64();
    Ok(Timing {
        first: total,
        total,
        tokens: 0,
        prompt_tokens: 0,
    })
}

/// One streamed chat completion on a fresh connection.
async fn stream_once(load: &Load, question: &str) -> Result<Timing, String> {
    let (addr, key, max_tokens) = (load.addr.as_str(), load.key.as_str(), load.max_tokens);
    let body = json!({
        "model": load.model, "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let started = Instant::now();
    let socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(socket);
    stream
        .get_mut()
        .write_all(request(addr, key, &body).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    stream
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    if !line.contains(" 200 ") {
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest).await;
        return Err(format!("{} {rest}", line.trim()));
    }
    let mut first = None;
    let mut tokens = None;
    let mut prompt_tokens = 0;
    loop {
        line.clear();
        if stream
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("the stream ended without [DONE]".into());
        }
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if chunk.get("error").is_some() {
            return Err(data.to_owned());
        }
        if chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n);
            prompt_tokens = chunk["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        }
    }
    Ok(Timing {
        first: first.ok_or("no text")?,
        total: started.elapsed().as_secs_f64(),
        tokens: tokens.ok_or("no usage")?,
        prompt_tokens,
    })
}

async fn clients(load: Load, clients: usize, requests: usize) {
    let timings = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let load = load.clone();
            let (timings, errors) = (Arc::clone(&timings), Arc::clone(&errors));
            tokio::spawn(async move {
                for n in 0..requests {
                    let question = &load.questions[(client * requests + n) % load.questions.len()];
                    let timing = match &load.search {
                        Some(collection) => search_once(&load, collection, question).await,
                        None => stream_once(&load, question).await,
                    };
                    match timing {
                        Ok(t) => timings.lock().unwrap().push(t),
                        Err(e) => errors.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let wall = started.elapsed().as_secs_f64();
    let timings = timings.lock().unwrap();
    let tokens: u64 = timings.iter().map(|t| t.tokens).sum();
    let prompt_tokens: u64 = timings.iter().map(|t| t.prompt_tokens).sum();
    let first = sorted(timings.iter().map(|t| t.first).collect());
    let total = sorted(timings.iter().map(|t| t.total).collect());
    let errors = errors.lock().unwrap();
    println!(
        "{}",
        json!({
            "requests": timings.len(), "tokens": tokens, "wall_s": wall,
            "tok_s": tokens as f64 / wall,
            "prompt_tokens_mean": prompt_tokens as f64 / timings.len().max(1) as f64,
            "ttft_p50_s": percentile(&first, 0.5), "ttft_p95_s": percentile(&first, 0.95),
            "latency_p50_s": percentile(&total, 0.5), "latency_p95_s": percentile(&total, 0.95),
            "errors": errors.len(), "first_error": errors.first(),
        })
    );
}

/// A one-token completion on a fresh connection, in milliseconds.
async fn one_token(addr: &str, key: &str) -> f64 {
    let body = json!({
        "model": "chat", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1, "temperature": 0,
    });
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(request(addr, key, &body).as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    socket.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    started.elapsed().as_secs_f64() * 1e3
}

async fn paired(a: (&str, &str), b: (&str, &str), rounds: usize) {
    let (mut through_a, mut through_b, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds + 20 {
        let (ta, tb) = if round % 2 == 0 {
            let ta = one_token(a.0, a.1).await;
            (ta, one_token(b.0, b.1).await)
        } else {
            let tb = one_token(b.0, b.1).await;
            (one_token(a.0, a.1).await, tb)
        };
        // The first rounds warm caches.
        if round >= 20 {
            through_a.push(ta);
            through_b.push(tb);
            added.push(ta - tb);
        }
    }
    let (through_a, through_b, added) = (sorted(through_a), sorted(through_b), sorted(added));
    println!(
        "{}",
        json!({
            "rounds": rounds,
            "a_p50_ms": percentile(&through_a, 0.5), "b_p50_ms": percentile(&through_b, 0.5),
            "added_p50_ms": percentile(&added, 0.5),
        })
    );
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
