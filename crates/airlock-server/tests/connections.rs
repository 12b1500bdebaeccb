//! The server on a real socket (127.0.0.1, port 0) with raw HTTP/1.1 clients: a client that
//! is slow with its request header, or idles on a kept-alive connection, is disconnected
//! at the header read timeout; connections past the caps wait unanswered and are served
//! once others close; answers, whole and streamed, and graceful shutdown go through the
//! accept loop as before.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_engine::ChatEngine;
use airlock_registry::{KeyRole, Registry};
use airlock_server::Server;
use airlock_server::config::RawConfig;
use airlock_server::models::{Engine, ServedModel};
use airlock_testkit::engine::{Reply, ScriptedChat};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any one step may take before a test gives up (generous: CI machines are busy).
const PATIENCE: Duration = Duration::from_secs(10);

/// A server running on its own task, with one user key and a scripted `chat` model.
struct Running {
    _dir: tempfile::TempDir,
    data: PathBuf,
    addr: SocketAddr,
    key: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<airlock_server::Result<()>>,
}

impl Running {
    /// Starts a server on 127.0.0.1:0 with these lines in its `[limits]`.
    async fn start(limits: &str, chat: ScriptedChat) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Registry::init(&data, "user:test").unwrap();
        let key = Registry::open(&data, "user:test")
            .unwrap()
            .create_key("app", KeyRole::User, "internal", None)
            .unwrap()
            .secret;
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[limits]\n{limits}\n[models.chat]\nref = \"scripted:1.0.0\"\n",
            data.display()
        );
        let config = RawConfig::parse(&text).unwrap().validate(None).unwrap();
        let chat = ServedModel {
            alias: "chat".into(),
            name: "scripted".into(),
            version: "1.0.0".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            loaded_at: 0,
            engine: Engine::Chat(Arc::new(chat) as Arc<dyn ChatEngine>),
        };
        let server = Server::with_unverified_engines(config, "user:test", [chat]).unwrap();
        let listener = server.bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            _dir: dir,
            data,
            addr,
            key,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self) -> Client {
        Client {
            io: BufReader::new(TcpStream::connect(self.addr).await.unwrap()),
            host: self.addr.to_string(),
        }
    }

    /// A streamed chat request's raw text.
    fn streamed_chat(&self) -> String {
        let body = json!({
            "model": "chat", "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
        })
        .to_string();
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.key,
            body.len()
        )
    }

    /// A raw GET with the key.
    fn get_with_key(&self, path: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.addr, self.key
        )
    }

    /// Asks the server to stop, waits until `run` has returned, and keeps its audit log.
    async fn stop(mut self) -> Stopped {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        Stopped {
            _dir: self._dir,
            data: self.data,
        }
    }
}

/// A stopped server's data directory.
struct Stopped {
    _dir: tempfile::TempDir,
    data: PathBuf,
}

impl Stopped {
    /// Every audit entry: action and details.
    fn audit(&self) -> Vec<(String, serde_json::Map<String, Value>)> {
        let mut entries = Vec::new();
        airlock_audit::for_each_record(&self.data.join("audit"), |r| {
            entries.push((r.action, r.details));
        })
        .unwrap();
        entries
    }
}

/// One HTTP/1.1 response as read off the wire.
struct Answer {
    status: u16,
    /// Header lines, lowercased.
    headers: String,
    body: String,
}

/// A raw HTTP/1.1 client on one connection.
struct Client {
    io: BufReader<TcpStream>,
    host: String,
}

impl Client {
    async fn send(&mut self, raw: &str) {
        self.io.get_mut().write_all(raw.as_bytes()).await.unwrap();
    }

    async fn get(&mut self, path: &str) -> Answer {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.send(&raw).await;
        self.answer().await
    }

    /// Reads one whole response (a `Content-Length` or chunked body).
    async fn answer(&mut self) -> Answer {
        tokio::time::timeout(PATIENCE, self.read_answer())
            .await
            .unwrap()
    }

    async fn read_answer(&mut self) -> Answer {
        let mut status_line = String::new();
        self.io.read_line(&mut status_line).await.unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            self.io.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            headers.push_str(&line.to_ascii_lowercase());
        }
        let length = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|n| n.trim().parse::<usize>().unwrap());
        let mut body = Vec::new();
        if let Some(length) = length {
            body.resize(length, 0);
            self.io.read_exact(&mut body).await.unwrap();
        } else {
            assert!(headers.contains("transfer-encoding: chunked"), "{headers}");
            loop {
                let mut size = String::new();
                self.io.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.io.read_exact(&mut chunk).await.unwrap();
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        Answer {
            status,
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    }

    /// Whether nothing arrives, and the connection stays open, for `quiet`.
    async fn silent_for(&mut self, quiet: Duration) -> bool {
        tokio::time::timeout(quiet, self.io.fill_buf())
            .await
            .is_err()
    }

    /// How long until the server closes the connection (end of stream or reset), reading
    /// and discarding anything it sends first; `None` if it is still open after `limit`.
    async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut sink = [0u8; 1024];
        let closed = tokio::time::timeout(limit, async {
            while let Ok(1..) = self.io.read(&mut sink).await {}
        })
        .await;
        closed.ok().map(|()| start.elapsed())
    }
}

fn paced_chat(pieces: &[&str], pace: Duration) -> ScriptedChat {
    ScriptedChat::new([Reply::text(pieces.iter().copied())]).paced(pace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_half_a_request_header_then_nothing_is_disconnected_at_the_header_read_timeout()
 {
    let server = Running::start("header_read_timeout_seconds = 1", ScriptedChat::new([])).await;
    let mut client = server.connect().await;
    client
        .send("GET /healthz HTTP/1.1\r\nHost: airlock\r\nUser-Ag")
        .await;
    let closed = client.closed_within(PATIENCE).await;
    assert!(closed.is_some(), "the connection is closed, not kept");
    let closed = closed.unwrap();
    assert!(
        closed >= Duration::from_millis(500) && closed < Duration::from_secs(4),
        "closed after {closed:?}, not at the 1 s timeout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_header_is_disconnected_at_the_header_read_timeout_however_steadily_it_sends()
 {
    let server = Running::start("header_read_timeout_seconds = 1", ScriptedChat::new([])).await;
    let client = server.connect().await;
    let (mut read, mut write) = client.io.into_inner().into_split();
    let start = Instant::now();
    let closed = tokio::spawn(async move {
        let mut sink = [0u8; 64];
        while let Ok(1..) = read.read(&mut sink).await {}
        start.elapsed()
    });
    // A byte every 100 ms: never silent for long, never done.
    write.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    while !closed.is_finished() && start.elapsed() < PATIENCE {
        if write.write_all(b"X").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = tokio::time::timeout(PATIENCE, closed)
        .await
        .unwrap()
        .unwrap();
    assert!(
        closed >= Duration::from_millis(500) && closed < Duration::from_secs(4),
        "closed after {closed:?}, not at the 1 s timeout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_serves_request_after_request_and_is_closed_once_idle_for_the_timeout()
 {
    let server = Running::start("header_read_timeout_seconds = 1", ScriptedChat::new([])).await;
    let mut client = server.connect().await;
    for _ in 0..3 {
        let answer = client.get("/healthz").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
        assert!(!answer.headers.contains("connection: close"));
        // Less than the timeout between requests: kept.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed = client.closed_within(PATIENCE).await;
    assert!(closed.is_some(), "an idle connection is closed, not kept");
    let closed = closed.unwrap();
    assert!(
        closed >= Duration::from_millis(300) && closed < Duration::from_secs(4),
        "closed {closed:?} after the last answer, not at the 1 s timeout"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_whole_and_streamed_past_the_header_read_timeout_arrive_intact_with_the_peer_address_audited()
 {
    // Eight pieces, 250 ms apart: the stream lasts twice the header read timeout.
    let pieces = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let server = Running::start(
        "header_read_timeout_seconds = 1",
        paced_chat(&pieces, Duration::from_millis(250)),
    )
    .await;
    let mut client = server.connect().await;
    let peer = client.io.get_ref().local_addr().unwrap();
    let start = Instant::now();
    client.send(&server.streamed_chat()).await;
    let answer = client.answer().await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.headers.contains("content-type: text/event-stream"));
    assert!(start.elapsed() >= Duration::from_millis(1500));
    let text: String = answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let event: Value = serde_json::from_str(d).unwrap();
            event["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, pieces.concat());
    assert!(answer.body.contains("data: [DONE]"));
    // The same connection, kept alive, answers whole too.
    client.send(&server.get_with_key("/v1/models")).await;
    let whole = client.answer().await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let models: Value = serde_json::from_str(&whole.body).unwrap();
    assert_eq!(models["data"][0]["id"], "chat");
    let audited = server.stop().await.audit();
    let chat = audited
        .iter()
        .find(|(action, d)| action == "api.request" && d["route"] == "/v1/chat/completions")
        .unwrap();
    assert_eq!(
        chat.1["peer"],
        peer.to_string(),
        "handlers see the peer address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_unanswered_and_are_served_once_another_closes() {
    let server = Running::start(
        "header_read_timeout_seconds = 30\nmax_connections = 2",
        ScriptedChat::new([]),
    )
    .await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    assert_eq!(first.get("/healthz").await.status, 200);
    assert_eq!(second.get("/healthz").await.status, 200);
    let mut third = server.connect().await;
    third
        .send(&format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.addr
        ))
        .await;
    assert!(
        third.silent_for(Duration::from_millis(700)).await,
        "a third connection is not served while two are open"
    );
    assert_eq!(
        second.get("/healthz").await.status,
        200,
        "the open ones are"
    );
    drop(first);
    let answer = third.answer().await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_new_ones_wait_for_a_place_and_a_kept_alive_one_past_the_cap_is_closed_after_its_answer()
 {
    // One idle place; four pieces 250 ms apart keep the first connection busy for a second.
    let server = Running::start(
        "header_read_timeout_seconds = 30\nmax_connections = 8\nmax_idle_connections = 1",
        paced_chat(&["a", "b", "c", "d"], Duration::from_millis(250)),
    )
    .await;
    let mut busy = server.connect().await;
    busy.send(&server.streamed_chat()).await;
    // Its header is complete, so its place goes to the next connection: silent, so idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut silent = server.connect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiting = server.connect().await;
    waiting
        .send(&format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.addr
        ))
        .await;
    // The stream ends with no idle place free: its connection is not kept alive.
    let answer = busy.answer().await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("data: [DONE]"));
    let closed = busy.closed_within(Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "closed after its answer, long before the 30 s timeout"
    );
    assert!(
        waiting.silent_for(Duration::from_millis(300)).await,
        "not served while the silent connection holds the idle place"
    );
    // The silent one sends its request: busy, its place goes to the waiting one.
    assert_eq!(silent.get("/healthz").await.status, 200);
    let answer = waiting.answer().await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_finishes_the_stream_in_flight_closes_idle_connections_and_audits_the_stop() {
    let server = Running::start(
        "header_read_timeout_seconds = 30",
        paced_chat(&["a", "b", "c", "d"], Duration::from_millis(200)),
    )
    .await;
    let mut idle = server.connect().await;
    assert_eq!(idle.get("/readyz").await.status, 200);
    let mut streaming = server.connect().await;
    streaming.send(&server.streamed_chat()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    assert!(
        idle.closed_within(Duration::from_secs(5)).await.is_some(),
        "an idle connection is closed at once"
    );
    let answer = streaming.answer().await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("data: [DONE]"), "the stream finishes");
    assert!(
        streaming
            .closed_within(Duration::from_secs(5))
            .await
            .is_some()
    );
    let stopped = tokio::time::timeout(PATIENCE, stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    let actions: Vec<String> = stopped
        .audit()
        .into_iter()
        .map(|(action, _)| action)
        .collect();
    let result = actions.iter().position(|a| a == "api.result").unwrap();
    let stop = actions.iter().position(|a| a == "serve.stop").unwrap();
    assert!(
        result < stop,
        "the stream's result is logged before the stop: {actions:?}"
    );
}
