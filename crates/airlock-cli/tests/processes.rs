//! Engine processes: `airlock serve` in front of a llama-server it starts, verifies and
//! supervises (the real llama-server built by `scripts/build-llama-cpp.sh`, the real SmolLM2),
//! and start failures named by the process's own last words (small stand-in programs).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::registry::Site;
use crate::serve::{
    Server, audit_matching, chat_body, create_key, sdk_e2e, sdk_tools, site_with_models,
};
use crate::support::{llama_server, run};

/// A config file serving `chat` from SmolLM2 on a supervised llama-server (and `embed` on the
/// embedded engine, from the command line), with `extra` lines in the chat model's table.
fn process_config(site: &Site, extra: &str) -> PathBuf {
    process_config_with(site, &llama_server(), extra)
}

/// As [`process_config`], with `binary` as the engine process's executable.
pub(crate) fn process_config_with(site: &Site, binary: &Path, extra: &str) -> PathBuf {
    let path = site.ws.path("airlock.toml");
    std::fs::write(
        &path,
        format!(
            "[models.chat]\nref = \"smollm2:prod\"\nengine = \"llama-server\"\nbinary = {:?}\nslots = 4\ncontext = 1024\nthreads = 2\n{extra}\n",
            binary.display()
        ),
    )
    .unwrap();
    path
}

fn start_with_process(site: &Site, extra: &str) -> Server {
    let config = process_config(site, extra);
    Server::start(site, &["--config", config.to_str().unwrap()])
}

/// The chat model's engine in `/admin/status`.
fn engine(server: &Server, admin: &str) -> Value {
    server.model_status(admin, "chat")["engine"].clone()
}

/// Polls the chat engine's status until `ready` holds of it, or fails after `within`.
fn wait_for_engine(
    server: &Server,
    admin: &str,
    within: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = engine(server, admin);
        if ready(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "engine never reached the state: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_9(pid: u64) {
    run(std::process::Command::new("kill").args(["-9", &pid.to_string()])).ok();
}

#[test]
fn the_official_sdks_work_unchanged_through_a_supervised_llama_server() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "sdk"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    // The SDK script checks that a question asked twice is read from the cache the second
    // time, which llama-server does across callers only when told it may.
    let server = start_with_process(&site, "share_prompt_cache = true");
    let status = engine(&server, &admin);
    assert_eq!(status["kind"], "llama-server");
    assert_eq!(status["state"], "ready");
    assert!(status["pid"].as_u64().is_some());
    sdk_e2e(&server, &key);
    // Function calls: the grammar that constrains the call reaches llama-server.
    sdk_tools(&server, &key);
}

#[test]
fn an_engine_process_killed_mid_answer_fails_that_answer_cleanly_and_the_next_succeeds_after_its_restart()
 {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "app"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let server = start_with_process(&site, "");
    let first_pid = engine(&server, &admin)["pid"].as_u64().unwrap();

    // A long streamed answer; once its first words arrive, the process is killed.
    let socket = server.ask_for_a_long_answer(&key, true, 900);
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(socket);
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early: {seen}"
        );
        seen.push_str(&line);
    }
    kill_9(first_pid);
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("\"error\""),
        "the stream ends with an error event: {rest}"
    );
    assert!(
        !rest.contains("[DONE]"),
        "a failed answer is not done: {rest}"
    );

    // Until the process is back, requests are refused at once with a time to come back.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refusals = 0;
    let answer = loop {
        let asked = Instant::now();
        let question = json!({
            "model": "chat", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer with one word."}],
        });
        let reply = server.post("/v1/chat/completions", &key, &question);
        if reply.status == 200 {
            break reply;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(reply.headers.contains("retry-after:"), "{}", reply.headers);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a refusal never waits"
        );
        refusals += 1;
        assert!(Instant::now() < deadline, "the engine never came back");
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = answer.json()["choices"][0]["message"]["content"].clone();
    assert!(text.as_str().unwrap().contains("Paris"), "{}", answer.body);
    let status = engine(&server, &admin);
    assert_eq!(status["state"], "ready");
    assert_eq!(status["restarts"], 1);
    assert_ne!(status["pid"].as_u64().unwrap(), first_pid, "a new process");
    let metrics = server.get("/metrics", &admin).body;
    for line in [
        "airlock_engine_restarts_total{model=\"chat\",engine=\"llama-server\"} 1",
        "airlock_engine_up{model=\"chat\",engine=\"llama-server\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        refusals >= 1,
        "the restart takes at least its backoff second"
    );

    // The cut answer, the exit, the restart and the answer after it are all in the log.
    let exits = audit_matching(&site, "100000", Duration::from_secs(5), 1, |e| {
        e["action"] == "engine.exit"
    });
    assert!(
        exits[0]["reason"].as_str().unwrap().contains("signal 9"),
        "{}",
        exits[0]
    );
    assert_eq!(exits[0]["details"]["pid"], first_pid);
    let starts = audit_matching(&site, "100000", Duration::from_secs(5), 2, |e| {
        e["action"] == "engine.start" && e["outcome"] == "ok"
    });
    assert_eq!(starts.len(), 2, "the first start and the restart");
    let results = audit_matching(&site, "100000", Duration::from_secs(5), 2, |e| {
        e["action"] == "api.result" && e["details"]["route"] == "/v1/chat/completions"
    });
    let cut = &results[0];
    assert_eq!(cut["details"]["stream"], true);
    assert_eq!(cut["details"]["status"], 503, "{cut}");
    assert_eq!(cut["details"]["error"], "unavailable");
    assert_eq!(results.last().unwrap()["details"]["status"], 200);
}

/// CPU seconds a process has used.
fn cpu_seconds(pid: u64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn a_client_that_hangs_up_cancels_its_answer_inside_the_engine_process() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "impatient"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let server = start_with_process(&site, "");
    let pid = engine(&server, &admin)["pid"].as_u64().unwrap();
    for stream in [false, true] {
        let socket = server.ask_for_a_long_answer(&key, stream, 900);
        wait_for_engine(&server, &admin, Duration::from_secs(10), |e| {
            e["running"] == 1
        });
        // It is generating: the process uses CPU.
        let busy = cpu_seconds(pid);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            cpu_seconds(pid) - busy > 0.2,
            "stream {stream}: the process is generating"
        );
        drop(socket);
        wait_for_engine(&server, &admin, Duration::from_secs(3), |e| {
            e["running"] == 0
        });
        // It stops within moments, not after the 900 tokens (half a minute) it was asked for:
        // some half-second window in the next five shows it idle.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let before = cpu_seconds(pid);
            std::thread::sleep(Duration::from_millis(500));
            let used = cpu_seconds(pid) - before;
            if used < 0.08 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream}: still generating after the client left ({used:.2} s of CPU in 0.5 s)"
            );
        }
    }
}

#[test]
fn an_engine_process_whose_weights_were_altered_on_disk_is_not_started_again() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "app"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let server = start_with_process(&site, "");
    let pid = engine(&server, &admin)["pid"].as_u64().unwrap();

    let blob = site.blob_path("smollm2:1.0.0", "SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    crate::support::flip_byte(&blob, 1 << 20);
    kill_9(pid);

    let failed = wait_for_engine(&server, &admin, Duration::from_secs(30), |e| {
        e["state"] == "failed"
    });
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("altered on disk"),
        "{failed}"
    );
    // Through two more backoff periods it stays down, and callers are told so at once.
    std::thread::sleep(Duration::from_secs(4));
    let status = engine(&server, &admin);
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["pid"].is_null(), "no process runs: {status}");
    let reply = server.post("/v1/chat/completions", &key, &chat_body("Hello?"));
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.headers.contains("retry-after:"));

    let refusals = audit_matching(&site, "100000", Duration::from_secs(5), 1, |e| {
        e["action"] == "engine.start" && e["outcome"] == "refused"
    });
    assert!(
        refusals[0]["reason"]
            .as_str()
            .unwrap()
            .contains("altered on disk"),
        "{}",
        refusals[0]
    );
}

/// Every variable of a process's environment.
fn environment(pid: u64) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let text = String::from_utf8_lossy(v);
            let (k, v) = text.split_once('=').unwrap_or((&text, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The inodes of the TCP sockets listening on this machine (IPv4 and IPv6).
fn listening_tcp_inodes() -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN; field 9 is the inode.
            if fields.get(3) == Some(&"0A") {
                inodes.push(fields[9].to_owned());
            }
        }
    }
    inodes
}

#[test]
fn an_engine_process_gets_no_setting_that_could_reach_the_network() {
    let site = site_with_models();
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    // airlock's own environment carries what would send a careless runtime online.
    let config = process_config(&site, "");
    let hostile = [
        ("HTTPS_PROXY", "http://203.0.113.7:3128"),
        ("HTTP_PROXY", "http://203.0.113.7:3128"),
        ("ALL_PROXY", "socks5://203.0.113.7:1080"),
        ("HF_ENDPOINT", "http://203.0.113.7"),
        ("HF_HUB_OFFLINE", "0"),
        ("LLAMA_ARG_HF_REPO", "evil/model"),
        ("LLAMA_ARG_MODEL_URL", "http://203.0.113.7/model.gguf"),
        ("LLAMA_ARG_TOOLS", "all"),
        ("LLAMA_ARG_HOST", "0.0.0.0"),
    ];
    let server = Server::start_with_env(
        &site,
        &[
            "--model",
            "embed=all-minilm-l6-v2:prod",
            "--config",
            config.to_str().unwrap(),
        ],
        &hostile,
    );
    let pid = engine(&server, &admin)["pid"].as_u64().unwrap();

    let allowed = [
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "VLLM_NO_USAGE_STATS",
        "VLLM_DO_NOT_TRACK",
        "DO_NOT_TRACK",
        "LANG",
        "HOME",
        "PATH",
        "LLAMA_API_KEY",
    ];
    let env = environment(pid);
    for (name, value) in &env {
        assert!(
            allowed.contains(&name.as_str()),
            "{name}={value} reached the engine process"
        );
        assert!(!value.contains("203.0.113.7"), "{name}={value}");
    }
    for switch in [
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "DO_NOT_TRACK",
        "VLLM_NO_USAGE_STATS",
    ] {
        assert!(
            env.iter().any(|(k, v)| k == switch && v == "1"),
            "{switch} is set: {env:?}"
        );
    }

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(args[0].ends_with("llama-server"), "{args:?}");
    assert!(args.iter().any(|a| a == "--offline"), "{args:?}");
    let host = args
        .iter()
        .position(|a| a == "--host")
        .map(|i| &args[i + 1]);
    assert!(
        host.is_some_and(|h| h.ends_with(".sock")),
        "a unix socket, not an address: {args:?}"
    );
    for arg in &args {
        let lower = arg.to_lowercase();
        assert!(!lower.contains("http"), "{arg} in {args:?}");
        for flag in [
            "--hf",
            "-hf",
            "--model-url",
            "-mu",
            "--tools",
            "--mcp",
            "--port",
        ] {
            assert!(!lower.starts_with(flag), "{arg} in {args:?}");
        }
    }

    // And it listens on no TCP port at all.
    let listening = listening_tcp_inodes();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            assert!(
                !listening.contains(&inode.to_owned()),
                "the engine listens on TCP"
            );
        }
    }
}

/// A stand-in for an engine binary: a shell script.
pub(crate) fn script(site: &Site, name: &str, body: &str) -> PathBuf {
    let path = site.ws.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

pub(crate) fn serve_with_binary(site: &Site, binary: &Path, extra: &str) -> crate::support::Run {
    let config = site.ws.path("broken.toml");
    std::fs::write(
        &config,
        format!(
            "[models.chat]\nref = \"smollm2:prod\"\nengine = \"llama-server\"\nbinary = {:?}\n{extra}\n",
            binary.display()
        ),
    )
    .unwrap();
    site.cmd(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ])
}

#[test]
fn an_engine_process_that_dies_or_never_becomes_ready_is_a_startup_error_naming_its_last_words() {
    let site = site_with_models();
    let dies = script(
        &site,
        "dies",
        "echo 'loading model'\necho 'error: out of device memory' >&2\nexit 3",
    );
    let failed = serve_with_binary(&site, &dies, "");
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.contains("exited with status 3")
            && failed.stderr.contains("out of device memory"),
        "{}",
        failed.stderr
    );

    let hangs = script(
        &site,
        "hangs",
        "echo 'still loading tensors'\nexec sleep 600",
    );
    let started = Instant::now();
    let slow = serve_with_binary(&site, &hangs, "startup_timeout_seconds = 2");
    assert_ne!(slow.code, 0);
    assert!(
        slow.stderr.contains("not ready within 2 s")
            && slow.stderr.contains("still loading tensors"),
        "{}",
        slow.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the timeout holds"
    );
    let refusals = audit_matching(&site, "50", Duration::from_secs(5), 2, |e| {
        e["action"] == "serve.admission" && e["outcome"] == "refused"
    });
    assert_eq!(refusals.len(), 2);
}

#[test]
fn vllm_serves_through_the_same_interface_where_it_is_installed() {
    // vLLM needs a safetensors chat model and a machine it installs on; this runs where both
    // are at hand (AIRLOCK_VLLM_MODEL names a Hugging Face model directory) and says so where not.
    let importable = std::process::Command::new("python3")
        .args(["-c", "import vllm"])
        .status()
        .is_ok_and(|s| s.success());
    let Some(model) = std::env::var_os("AIRLOCK_VLLM_MODEL").filter(|_| importable) else {
        eprintln!("vllm is not importable here or AIRLOCK_VLLM_MODEL is unset: nothing to run");
        return;
    };
    let site = Site::new();
    let reference = crate::engine::pack_and_import(&site, Path::new(&model), "vllm-model", &[]);
    site.approve(&reference, "approver").ok();
    site.cmd(&["tag", &reference, "prod"]).ok();
    let (key, _) = create_key(&site, &["--name", "app"]);
    let config = site.ws.path("vllm.toml");
    std::fs::write(
        &config,
        "[models.chat]\nref = \"vllm-model:prod\"\nengine = \"vllm\"\nslots = 4\ncontext = 2048\n",
    )
    .unwrap();
    let server = Server::start_with(&site, &["--config", config.to_str().unwrap()]);
    let reply = server.post("/v1/chat/completions", &key, &chat_body("Say hello."));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let anthropic = server.request(
        "POST",
        "/v1/messages",
        &[("x-api-key", &key), ("content-type", "application/json")],
        json!({"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(anthropic.status, 200, "{}", anthropic.body);
}

#[test]
fn log_probabilities_agree_with_llama_servers_for_the_same_greedy_tokens() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "app"]);
    // `chat` on llama-server, `local` on the embedded engine: the same bundle.
    let server = start_with_process(
        &site,
        "\n[models.local]\nref = \"smollm2:prod\"\nslots = 1\ncontext = 1024\nthreads = 2",
    );
    let ask = |model: &str, content: &str| {
        let reply = server.post(
            "/v1/chat/completions",
            &key,
            &json!({"model": model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": 24, "logprobs": true, "top_logprobs": 5}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .clone()
    };
    let mut compared = 0;
    let mut largest = 0f64;
    for question in [
        "What is the capital of France?",
        "Write one sentence about the sea.",
        "List three colours.",
    ] {
        let ours = ask("local", question);
        let theirs = ask("chat", question);
        assert!(!ours.is_empty());
        // The same greedy tokens, then the same numbers within 1e-3.
        let tokens = |list: &[Value]| -> Vec<String> {
            list.iter()
                .map(|t| t["token"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(tokens(&ours), tokens(&theirs), "{question}");
        for (a, b) in ours.iter().zip(&theirs) {
            let diff = (a["logprob"].as_f64().unwrap() - b["logprob"].as_f64().unwrap()).abs();
            largest = largest.max(diff);
            assert!(diff < 1e-3, "{question}: {a} against {b}");
            let (top_a, top_b) = (
                a["top_logprobs"].as_array().unwrap(),
                b["top_logprobs"].as_array().unwrap(),
            );
            assert_eq!(top_a.len(), 5);
            assert_eq!(
                tokens(top_a)[..3],
                tokens(top_b)[..3],
                "{question}: {a} against {b}"
            );
            for (x, y) in top_a.iter().zip(top_b) {
                if x["token"] == y["token"] {
                    let diff =
                        (x["logprob"].as_f64().unwrap() - y["logprob"].as_f64().unwrap()).abs();
                    largest = largest.max(diff);
                    assert!(diff < 1e-3, "{question}: {x} against {y}");
                }
            }
            compared += 1;
        }
    }
    eprintln!("{compared} tokens compared; largest difference {largest:.2e}");
}
