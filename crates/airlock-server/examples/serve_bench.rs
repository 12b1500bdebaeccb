//! Server benchmarks, run by `scripts/bench-serve.sh`.
//!
//! `serve_bench overhead DATA KEY` starts the server in this process on an ephemeral
//! loopback port and times the same one-token completion two ways, alternating: through
//! HTTP (routing, auth, audit, JSON) and straight into the same loaded engine. The difference
//! of the medians is what the server adds. It then measures `/v1/embeddings` requests/s.
//!
//! `serve_bench load ADDR KEY PID CLIENTS SECONDS` runs CLIENTS streaming chat clients against
//! a running server for SECONDS; every fourth client hangs up mid-answer. It reports
//! latency percentiles, aggregate tokens/s, status counts and the server's RSS before,
//! during and after, and exits non-zero on any error other than a 429 or if memory does not
//! come back.

#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{
    ChatEngine, ChatParams, ChatRequest, EmbeddingModel, ModelFiles, Prompt, RequestLimits,
    SamplingParams,
};
use airlock_server::Server;
use airlock_server::config::RawConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("overhead") => runtime.block_on(overhead(&args[2], &args[3])),
        Some("load") => {
            let ok = runtime.block_on(load(
                &args[2],
                &args[3],
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
                args[6].parse().unwrap(),
            ));
            if !ok {
                return std::process::ExitCode::FAILURE;
            }
        }
        _ => {
            eprintln!("usage: serve_bench overhead DATA KEY | load ADDR KEY PID CLIENTS SECONDS");
            return std::process::ExitCode::from(2);
        }
    }
    std::process::ExitCode::SUCCESS
}

/// A keep-alive HTTP/1.1 connection that reads `content-length` bodies.
struct Connection {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl Connection {
    async fn open(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
            addr: addr.to_owned(),
        }
    }

    async fn post(&mut self, path: &str, key: &str, body: &str) -> (u16, Vec<u8>) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        self.read_response().await
    }

    async fn read_response(&mut self) -> (u16, Vec<u8>) {
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        (status, body)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `p50 X  p99 Y` of sorted values, in their unit.
fn p50_p99(sorted: &[f64]) -> String {
    format!(
        "p50 {:.3}  p99 {:.3}",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99)
    )
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

async fn overhead(data: &str, key: &str) {
    let mut raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data.into()),
        ..RawConfig::default()
    };
    raw.set_model("chat=smollm2:prod").unwrap();
    raw.set_model("embed=all-minilm-l6-v2:prod").unwrap();
    let server = Server::start(raw.validate(None).unwrap(), "user:bench").unwrap();
    let app = server.app();
    let listener = server.bind().await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(server.run(listener, std::future::pending()));

    // One prompt token and one generated: the engine's part is a single short decode step,
    // steady enough that the paired differences resolve fractions of a millisecond.
    let question = "What is the capital of France?";
    let prompt_text = "Paris";
    let body = json!({"model": "chat", "prompt": prompt_text, "temperature": 0, "max_tokens": 1})
        .to_string();
    let served = app.models();
    let model = served["chat"].chat().unwrap();
    let mut connection = Connection::open(&addr).await;
    let rounds = 1000;
    let (mut http, mut direct, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds + 20 {
        // Which goes first alternates, so neither gains from running right after the other.
        let (through_http, in_process) = if round % 2 == 0 {
            let h = time_http(&mut connection, key, &body).await;
            (h, time_direct(model, prompt_text).await)
        } else {
            let d = time_direct(model, prompt_text).await;
            (time_http(&mut connection, key, &body).await, d)
        };
        // The first rounds warm caches and the connection.
        if round >= 20 {
            http.push(through_http);
            direct.push(in_process);
            added.push(through_http - in_process);
        }
    }
    let (http, direct, added) = (sorted(http), sorted(direct), sorted(added));
    println!("completion of one token from a one-word prompt, {rounds} alternating rounds (ms):");
    println!(
        "  through HTTP (routing + auth + audit + JSON): {}",
        p50_p99(&http)
    );
    println!(
        "  engine in-process:                           {}",
        p50_p99(&direct)
    );
    println!(
        "  added by the server, median of paired differences: {:.3} ms (target < 1 ms)",
        percentile(&added, 0.5)
    );

    // A route with no engine work: all of its time is the server's own.
    let mut models = Vec::new();
    for round in 0..1020 {
        let started = Instant::now();
        let request = format!(
            "GET /v1/models HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-length: 0\r\n\r\n"
        );
        connection
            .stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let (status, _) = connection.read_response().await;
        assert_eq!(status, 200);
        if round >= 20 {
            models.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let models = sorted(models);
    let unknown =
        json!({"model": "no-such-model", "messages": [{"role": "user", "content": question}],
        "temperature": 0, "max_tokens": 1})
        .to_string();
    let mut refused = Vec::new();
    for round in 0..1020 {
        let started = Instant::now();
        let (status, _) = connection.post("/v1/chat/completions", key, &unknown).await;
        assert_eq!(status, 404);
        if round >= 20 {
            refused.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let refused = sorted(refused);
    println!(
        "POST /v1/chat/completions for an unknown model, 1000 requests (all but the engine): {} ms",
        p50_p99(&refused)
    );
    println!(
        "GET /v1/models, 1000 requests (auth + audit append with fdatasync + routing + JSON + loopback): {} ms",
        p50_p99(&models)
    );

    // The anchor calls the model itself, in this process, with no queue in between: a second
    // copy loaded from the same approved files.
    let files = {
        let registry =
            airlock_registry::Registry::open(std::path::Path::new(data), "user:bench").unwrap();
        let reference = airlock_registry::Reference::parse("all-minilm-l6-v2:prod").unwrap();
        let approved = registry.open_approved(&reference, "benchmark").unwrap();
        ModelFiles::new("all-minilm-l6-v2", approved.files)
    };
    let embedder = EmbeddingModel::load(&files, &EmbeddingConfig::default()).unwrap();
    let sentence = "Air-gapped networks keep sensitive data inside the enclave.";
    let clients = 4;
    // Anchors: the model called in this process, one sentence a call (what each request
    // asks for), and as many sentences a call as there are clients (the most that merging
    // their requests into one batch can reach). The three take turns in 2 s slices, so
    // drift in the machine's speed touches all of them alike.
    let slice = Duration::from_secs(2);
    let in_process = |per_call: usize| {
        let texts = vec![sentence; per_call];
        let started = Instant::now();
        let mut embedded = 0u64;
        while started.elapsed() < slice {
            embedder.embed(&texts).unwrap();
            embedded += per_call as u64;
        }
        (embedded, started.elapsed())
    };
    let mut totals = [(0u64, Duration::ZERO); 3];
    for _ in 0..4 {
        for (total, (n, t)) in totals.iter_mut().zip([
            in_process(1),
            in_process(clients),
            http_embeddings(&addr, key, sentence, clients, slice).await,
        ]) {
            total.0 += n;
            total.1 += t;
        }
    }
    let [one_a_call, batched, http_rate] = totals.map(|(n, t)| n as f64 / t.as_secs_f64());
    println!("embeddings, one sentence a request, 4 x 2 s slices taking turns:");
    println!("  /v1/embeddings, {clients} clients:          {http_rate:>7.1} requests/s");
    println!(
        "  in-process, one sentence a call:    {one_a_call:>7.1} sentences/s  (ratio {:.2})",
        http_rate / one_a_call
    );
    println!(
        "  in-process, {clients} sentences a call:      {batched:>7.1} sentences/s  (ratio {:.2})",
        http_rate / batched
    );
}

/// Requests answered by `clients` keep-alive connections posting one sentence each for
/// `slice`, and the time taken.
async fn http_embeddings(
    addr: &str,
    key: &str,
    sentence: &str,
    clients: usize,
    slice: Duration,
) -> (u64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, key, done) = (addr.to_owned(), key.to_owned(), Arc::clone(&done));
        let body = json!({"model": "embed", "input": sentence}).to_string();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(&addr).await;
            while started.elapsed() < slice {
                let (status, _) = connection.post("/v1/embeddings", &key, &body).await;
                assert_eq!(status, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (done.load(Ordering::Relaxed), started.elapsed())
}

async fn time_http(connection: &mut Connection, key: &str, body: &str) -> f64 {
    let started = Instant::now();
    let (status, reply) = connection.post("/v1/completions", key, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    started.elapsed().as_secs_f64() * 1e3
}

/// One request straight through the engine interface, as the server makes it.
async fn time_direct(model: &dyn ChatEngine, text: &str) -> f64 {
    let started = Instant::now();
    let params = ChatParams {
        max_tokens: Some(1),
        sampling: SamplingParams::greedy(),
        ..ChatParams::default()
    };
    let request =
        ChatRequest::new(Prompt::Text(text.into()), params, &RequestLimits::default()).unwrap();
    model.start(request).await.unwrap().collect().await.unwrap();
    started.elapsed().as_secs_f64() * 1e3
}

/// Resident memory of `pid`, MiB.
fn rss(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

#[derive(Default)]
struct Tally {
    completed: u64,
    disconnected: u64,
    rate_limited: u64,
    errors: Vec<String>,
    latencies: Vec<f64>,
    first_token: Vec<f64>,
    tokens: u64,
}

const PROMPTS: [&str; 4] = [
    "Write a short poem about the sea.",
    "Explain what a data diode is.",
    "List three uses of a hammer.",
    "Describe a sunrise in the mountains.",
];

/// One streamed chat request; `hang_up_after` content events, if set, ends it early.
async fn stream_once(
    addr: &str,
    key: &str,
    prompt: &str,
    hang_up_after: Option<usize>,
    tally: &std::sync::Mutex<Tally>,
) {
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64, "temperature": 0.7, "stream": true})
    .to_string();
    let started = Instant::now();
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => BufReader::new(s),
        Err(e) => {
            tally.lock().unwrap().errors.push(format!("connect: {e}"));
            return;
        }
    };
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.get_mut().write_all(request.as_bytes()).await {
        tally.lock().unwrap().errors.push(format!("write: {e}"));
        return;
    }
    let mut line = String::new();
    let _ = stream.read_line(&mut line).await;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 429 {
        tally.lock().unwrap().rate_limited += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        return;
    }
    if status != 200 {
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest).await;
        tally
            .lock()
            .unwrap()
            .errors
            .push(format!("status {status}: {rest}"));
        return;
    }
    let (mut events, mut first) = (0usize, None);
    loop {
        line.clear();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            let mut t = tally.lock().unwrap();
            t.completed += 1;
            t.latencies.push(started.elapsed().as_secs_f64());
            t.first_token.extend(first);
            t.tokens += events as u64;
            return;
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if chunk.get("error").is_some() {
            tally
                .lock()
                .unwrap()
                .errors
                .push(format!("stream error: {data}"));
            return;
        }
        if chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            events += 1;
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            if hang_up_after.is_some_and(|n| events >= n) {
                let mut t = tally.lock().unwrap();
                t.disconnected += 1;
                t.tokens += events as u64;
                return;
            }
        }
    }
    tally
        .lock()
        .unwrap()
        .errors
        .push("stream ended without [DONE]".into());
}

async fn load(addr: &str, key: &str, pid: u32, clients: usize, seconds: u64) -> bool {
    // Warm up: every slot's KV cache and the allocator's arenas.
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let warm: Vec<_> = (0..16)
        .map(|n| {
            let (addr, key, tally) = (addr.to_owned(), key.to_owned(), Arc::clone(&tally));
            tokio::spawn(
                async move { stream_once(&addr, &key, PROMPTS[n % 4], None, &tally).await },
            )
        })
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss(pid);
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let peak = Arc::new(std::sync::Mutex::new(before));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let now = rss(pid);
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            let (addr, key, tally) = (addr.to_owned(), key.to_owned(), Arc::clone(&tally));
            tokio::spawn(async move {
                let mut round = 0;
                while Instant::now() < deadline {
                    // Every fourth client hangs up after a few tokens.
                    let hang_up = (n % 4 == 0).then_some(3 + round % 5);
                    stream_once(&addr, &key, PROMPTS[(n + round) % 4], hang_up, &tally).await;
                    round += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let wall = started.elapsed().as_secs_f64();
    sampler.await.unwrap();
    let during = *peak.lock().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss(pid);
    let t = tally.lock().unwrap();
    let latencies = sorted(t.latencies.clone());
    let first = sorted(t.first_token.clone());
    println!("{clients} streaming clients for {seconds} s, every fourth hanging up mid-answer:");
    println!(
        "  completed {}  hung up {}  429s {}  other errors {}",
        t.completed,
        t.disconnected,
        t.rate_limited,
        t.errors.len()
    );
    println!(
        "  latency to [DONE]: p50 {:.2} s  p99 {:.2} s;  time to first token: p50 {:.2} s  p99 {:.2} s",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&first, 0.5),
        percentile(&first, 0.99)
    );
    println!(
        "  aggregate: {:.1} streamed tokens/s ({} tokens in {wall:.1} s)",
        t.tokens as f64 / wall,
        t.tokens
    );
    println!("  server RSS: before {before:.1} MiB, peak {during:.1} MiB, after {after:.1} MiB");
    for e in t.errors.iter().take(5) {
        println!("  error: {e}");
    }
    let memory_back = after <= before * 1.05 + 16.0;
    if !memory_back {
        println!("  FAILED: memory did not return to its baseline");
    }
    t.errors.is_empty() && memory_back && t.completed > 0 && t.disconnected > 0
}
