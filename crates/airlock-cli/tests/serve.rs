//! `airlock serve`: admission, authentication, bad input, audit, and the official SDKs, against
//! the real binary on loopback with the real default models.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, Jwk, JwkSet, OctetKeyPairParameters, OctetKeyPairType,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::engine::{pack_and_import, pack_and_import_version};
use crate::registry::Site;
use crate::support::{Run, airlock, cache_dir, models_dir, run};

/// A site with SmolLM2 and all-MiniLM-L6-v2 imported, approved and tagged prod.
pub(crate) fn site_with_models() -> Site {
    let site = Site::new();
    let models = models_dir();
    for (src, name, extra) in [
        (
            models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "smollm2",
            &[][..],
        ),
        (
            models.join("all-minilm-l6-v2"),
            "all-minilm-l6-v2",
            &["--kind", "embedding"][..],
        ),
    ] {
        let reference = pack_and_import(&site, &src, name, extra);
        site.approve(&reference, "approver").ok();
        site.cmd(&["tag", &reference, "prod"]).ok();
    }
    site
}

const MODELS: [&str; 2] = ["chat=smollm2:prod", "embed=all-minilm-l6-v2:prod"];

pub(crate) fn create_key(site: &Site, args: &[&str]) -> (String, String) {
    let out = site
        .cmd(&[&["keys", "create", "--json"], args].concat())
        .ok()
        .json();
    (
        out["key"].as_str().unwrap().to_owned(),
        out["info"]["id"].as_str().unwrap().to_owned(),
    )
}

/// A running `airlock serve`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
}

impl Server {
    /// Serves the default models (`chat`, `embed`) with `extra` arguments.
    pub(crate) fn start(site: &Site, extra: &[&str]) -> Self {
        let mut args = Vec::new();
        for m in MODELS {
            args.extend(["--model", m]);
        }
        args.extend(extra);
        Self::start_with(site, &args)
    }

    /// Serves what `args` (after `serve --listen 127.0.0.1:0`) configure.
    pub(crate) fn start_with(site: &Site, args: &[&str]) -> Self {
        Self::start_with_env(site, args, &[])
    }

    /// Serves what `args` configure, with `env` added to the server's environment.
    pub(crate) fn start_with_env(site: &Site, args: &[&str], env: &[(&str, &str)]) -> Self {
        let args = [&["serve", "--listen", "127.0.0.1:0"][..], args].concat();
        let mut command = airlock();
        command
            .arg("--data")
            .arg(&site.data)
            .args(&args)
            .envs(env.iter().copied());
        Self::spawn(command, |_| {})
    }

    /// Starts `command` (an `airlock serve`), tells `started` its process id at once, and
    /// waits until it serves.
    pub(crate) fn spawn(mut command: std::process::Command, started: impl FnOnce(u32)) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        started(child.id());
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line.trim().strip_prefix("airlock: serving on http://") else {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("server did not start: {line} {stderr}");
        };
        Self {
            child,
            addr: url.trim_end_matches("/v1").to_owned(),
        }
    }

    /// Stops the server as an operator would (SIGTERM) and waits for it to end.
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        http(&self.addr, method, path, headers, body)
    }

    pub(crate) fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {key}");
        self.request(
            "POST",
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    pub(crate) fn get(&self, path: &str, key: &str) -> Reply {
        let auth = format!("Bearer {key}");
        self.request("GET", path, &[("authorization", &auth)], b"")
    }

    /// Sends a chat request for `max_tokens` of a long story (greedy; streamed or not) on a
    /// connection of its own and returns it unread: minutes of work if nothing stops it.
    pub(crate) fn ask_for_a_long_answer(
        &self,
        key: &str,
        stream: bool,
        max_tokens: u32,
    ) -> TcpStream {
        let body = json!({
            "model": "chat", "stream": stream, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
        })
        .to_string();
        let mut socket = TcpStream::connect(&self.addr).unwrap();
        write!(
            socket,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        socket
    }

    /// `alias`'s entry in `/admin/status` (version, digest, its engine's kind, state and load).
    pub(crate) fn model_status(&self, admin_key: &str, alias: &str) -> Value {
        let status = self.get("/admin/status", admin_key).json();
        status["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["alias"] == alias)
            .cloned()
            .unwrap_or_else(|| panic!("{alias} is not served: {status}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`. The body is written from another thread,
/// so a server that answers before reading all of it (413) is still heard.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let body = body.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    Reply {
        status,
        headers: head.to_lowercase(),
        body: body.to_owned(),
    }
}

pub(crate) fn chat_body(content: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8})
}

pub(crate) fn audit_entries(site: &Site, n: &str) -> Vec<Value> {
    let tail = site.cmd(&["audit", "tail", "-n", n, "--json"]).ok().stdout;
    tail.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The last `n` audit entries, re-read until `ready` holds of them or `within` has passed:
/// results are appended as the answer goes out, so they may land a moment after it. The
/// caller's assertions then say what is missing.
fn audit_entries_once(
    site: &Site,
    n: &str,
    within: Duration,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let entries = audit_entries(site, n);
        if ready(&entries) || std::time::Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The entries among the last `n` that `matches` picks, re-read until there are at least
/// `at_least` of them or `within` has passed.
pub(crate) fn audit_matching(
    site: &Site,
    n: &str,
    within: Duration,
    at_least: usize,
    matches: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    audit_entries_once(site, n, within, |entries| {
        entries.iter().filter(|e| matches(e)).count() >= at_least
    })
    .into_iter()
    .filter(|e| matches(e))
    .collect()
}

#[test]
fn the_official_openai_and_anthropic_sdks_work_with_only_base_url_and_key_changed() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "sdk"]);
    let server = Server::start(&site, &[]);
    sdk_e2e(&server, &key);
}

/// The Python environments the SDK tests run in: the pinned SDK versions, and the newest on
/// PyPI (both installed by `scripts/setup-test-tools.sh`).
pub(crate) const SDK_VENVS: [&str; 2] = ["tools-venv", "sdk-newest-venv"];

/// Runs `scripts/sdk-e2e.py` (the official OpenAI and Anthropic SDKs, unchanged but for
/// their base URL and key) against `server`'s `chat` and `embed` models, with the pinned SDKs
/// and with the newest; fails on any check.
pub(crate) fn sdk_e2e(server: &Server, key: &str) {
    for venv in SDK_VENVS {
        let out = sdk_script(
            venv,
            "sdk-e2e.py",
            &[&format!("http://{}", server.addr), key, "chat", "embed"],
        );
        assert!(out.json()["passed"].as_u64().unwrap() >= 30, "{venv}");
    }
}

/// Runs one of the SDK scripts under `scripts/` in the venv `venv`, asserting it passed.
pub(crate) fn sdk_script(venv: &str, script: &str, args: &[&str]) -> Run {
    let python = cache_dir().join(venv).join("bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let out = run(std::process::Command::new(&python).arg(script).args(args));
    assert_eq!(out.code, 0, "{venv}: {}\n{}", out.stdout, out.stderr);
    out
}

/// Runs `scripts/sdk-tools.py` (call, result, answer; required and named choices, streamed
/// and not, both SDKs) against `server`'s `chat` model, with the pinned SDKs and the newest.
pub(crate) fn sdk_tools(server: &Server, key: &str) {
    for venv in SDK_VENVS {
        let out = sdk_script(
            venv,
            "sdk-tools.py",
            &[&format!("http://{}", server.addr), key, "chat"],
        );
        eprintln!("{}", out.stdout);
        assert!(out.json()["passed"].as_u64().unwrap() >= 32, "{venv}");
    }
}

#[test]
fn function_calls_round_trip_through_both_sdks_with_arguments_that_match_their_schemas() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "sdk"]);
    let server = Server::start(&site, &[]);
    sdk_tools(&server, &key);
}

#[test]
fn structured_output_through_the_newest_sdks_parses_twenty_schemas_and_refuses_hostile_ones() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "sdk"]);
    let server = Server::start(&site, &[]);
    let out = sdk_script(
        "sdk-newest-venv",
        "sdk-structured.py",
        &[&format!("http://{}", server.addr), &key, "chat"],
    );
    let report = out.json();
    eprintln!("{report}");
    assert!(report["passed"].as_u64().unwrap() >= 53, "{report}");
}

#[test]
fn admission_refuses_unknown_unapproved_and_altered_models_with_the_reason() {
    let site = site_with_models();
    let serve = |models: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        for m in models {
            args.extend(["--model", m]);
        }
        site.cmd(&args)
    };

    let unknown = serve(&["chat=nosuch:prod"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("nosuch:prod") && unknown.stderr.contains("not found"),
        "{}",
        unknown.stderr
    );

    // A second version, imported but not approved.
    let bundle = site.ws.path("smollm2-2.airlock");
    run(airlock()
        .arg("pack")
        .arg(models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .args([
            "--name",
            "smollm2",
            "--version",
            "2.0.0",
            "--license",
            "Apache-2.0",
            "--key",
        ])
        .arg(site.ws.key("publisher"))
        .arg("-o")
        .arg(&bundle))
    .ok();
    site.import(&bundle).ok();
    let unapproved = serve(&["chat=smollm2:2.0.0"]);
    assert_ne!(unapproved.code, 0);
    assert!(
        unapproved.stderr.contains("only approved versions"),
        "{}",
        unapproved.stderr
    );

    let blob = site.blob_path("all-minilm-l6-v2:1.0.0", "model.safetensors");
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    file.write_all(b"\0").unwrap();
    drop(file);
    let altered = serve(&MODELS);
    assert_ne!(altered.code, 0);
    assert!(
        altered.stderr.contains("altered on disk"),
        "{}",
        altered.stderr
    );

    let entries = audit_entries(&site, "20");
    let refusals: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "serve.admission" && e["outcome"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 3, "{entries:#?}");
    assert!(!entries.iter().any(|e| e["action"] == "serve.start"));
}

/// The identity provider of the tests: an ES256, an EdDSA and an RS256 key in a JWKS file.
struct Idp {
    es256: EncodingKey,
    eddsa: EncodingKey,
    rs256: EncodingKey,
    rsa_public_pem: Vec<u8>,
    jwks: PathBuf,
}

impl Idp {
    fn new(dir: &Path) -> Self {
        let ec = p256::SecretKey::random(&mut rand_core::OsRng);
        let es256 = EncodingKey::from_ec_der(
            p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&ec)
                .unwrap()
                .as_bytes(),
        );
        let ed = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let eddsa = EncodingKey::from_ed_der(
            ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&ed)
                .unwrap()
                .as_bytes(),
        );
        let rsa_path = dir.join("rsa.pem");
        run(std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&rsa_path))
        .ok();
        let rsa_public = run(std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&rsa_path))
        .ok();
        let rs256 = EncodingKey::from_rsa_pem(&std::fs::read(&rsa_path).unwrap()).unwrap();
        let mut es_jwk = Jwk::from_encoding_key(&es256, Algorithm::ES256).unwrap();
        es_jwk.common.key_id = Some("es".into());
        let mut rs_jwk = Jwk::from_encoding_key(&rs256, Algorithm::RS256).unwrap();
        rs_jwk.common.key_id = Some("rs".into());
        let ed_jwk = Jwk {
            common: CommonParameters {
                key_id: Some("ed".into()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: jsonwebtoken::jwk::EllipticCurve::Ed25519,
                x: base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(ed.verifying_key().as_bytes()),
            }),
        };
        let jwks = dir.join("jwks.json");
        let set = JwkSet {
            keys: vec![es_jwk, ed_jwk, rs_jwk],
        };
        std::fs::write(&jwks, serde_json::to_vec(&set).unwrap()).unwrap();
        Self {
            es256,
            eddsa,
            rs256,
            rsa_public_pem: rsa_public.stdout.into_bytes(),
            jwks,
        }
    }

    fn config(&self, dir: &Path) -> PathBuf {
        let path = dir.join("airlock.toml");
        std::fs::write(
            &path,
            format!(
                "[auth.oidc]\nissuer = \"https://idp.enclave\"\naudience = \"airlock\"\njwks_file = {:?}\nadmin_roles = [\"ops\"]\n",
                self.jwks
            ),
        )
        .unwrap();
        path
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(aud: &str, exp: u64) -> Value {
    json!({"iss": "https://idp.enclave", "aud": aud, "sub": "alice", "exp": exp, "iat": now(), "clearance": "internal"})
}

fn sign(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[test]
fn credentials_that_are_missing_wrong_revoked_expired_or_forged_get_401_and_roles_403() {
    let site = site_with_models();
    let idp = Idp::new(&site.ws.path(""));
    let config = idp.config(&site.ws.path(""));
    let (user, _) = create_key(&site, &["--name", "app"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let (revoked, revoked_id) = create_key(&site, &["--name", "old"]);
    let (expiring, _) = create_key(&site, &["--name", "temp", "--expires", "1s"]);
    let server = Server::start(&site, &["--config", config.to_str().unwrap()]);

    assert_eq!(server.get("/v1/models", &user).status, 200);
    assert_eq!(
        server.get("/v1/models", &revoked).status,
        200,
        "works until revoked"
    );
    site.cmd(&["keys", "revoke", &revoked_id]).ok();
    std::thread::sleep(Duration::from_millis(1100));

    let hour = now() + 3600;
    let good = claims("airlock", hour);
    for (alg, kid, key) in [
        (Algorithm::ES256, "es", &idp.es256),
        (Algorithm::EdDSA, "ed", &idp.eddsa),
        (Algorithm::RS256, "rs", &idp.rs256),
    ] {
        let token = sign(alg, kid, &good, key);
        assert_eq!(
            server.get("/v1/models", &token).status,
            200,
            "{alg:?} token accepted"
        );
    }

    let stranger = EncodingKey::from_ec_der(
        p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&p256::SecretKey::random(
            &mut rand_core::OsRng,
        ))
        .unwrap()
        .as_bytes(),
    );
    let cases: Vec<(&str, String)> = vec![
        ("no key", String::new()),
        (
            "wrong key",
            "alk-0123456789abcdef-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        ),
        ("revoked key", revoked.clone()),
        ("expired key", expiring.clone()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good)
            ),
        ),
        (
            "wrong aud",
            sign(
                Algorithm::ES256,
                "es",
                &claims("someone-else", hour),
                &idp.es256,
            ),
        ),
        (
            "expired JWT",
            sign(
                Algorithm::ES256,
                "es",
                &claims("airlock", now() - 3600),
                &idp.es256,
            ),
        ),
        (
            "unknown signer",
            sign(Algorithm::ES256, "es", &good, &stranger),
        ),
        (
            "HS256 signed with the RSA public key",
            sign(
                Algorithm::HS256,
                "rs",
                &good,
                &EncodingKey::from_secret(&idp.rsa_public_pem),
            ),
        ),
        (
            "ES256 header on the RSA key",
            sign(Algorithm::ES256, "rs", &good, &idp.es256),
        ),
    ];
    for (what, credential) in &cases {
        let reply = server.get("/v1/models", credential);
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        assert_eq!(
            reply.json()["error"]["type"],
            "authentication_error",
            "{what}"
        );
        // Anthropic routes answer in Anthropic's shape.
        let reply = server.request(
            "POST",
            "/v1/messages",
            &[
                ("x-api-key", credential),
                ("content-type", "application/json"),
            ],
            b"{}",
        );
        assert_eq!(reply.status, 401, "{what}");
        assert_eq!(reply.json()["type"], "error");
        assert_eq!(reply.json()["error"]["type"], "authentication_error");
    }

    for path in ["/metrics", "/admin/status"] {
        let reply = server.get(path, &user);
        assert_eq!(reply.status, 403, "{path} with a user key");
        assert_eq!(reply.json()["error"]["type"], "permission_error");
        assert_eq!(
            server.get(path, &admin).status,
            200,
            "{path} with an admin key"
        );
    }
    let ops = json!({"iss": "https://idp.enclave", "aud": "airlock", "sub": "bob", "exp": hour, "roles": ["ops"]});
    let ops_token = sign(Algorithm::EdDSA, "ed", &ops, &idp.eddsa);
    assert_eq!(
        server.get("/admin/status", &ops_token).status,
        200,
        "role claim maps to admin"
    );
    assert_eq!(
        server
            .get(
                "/admin/status",
                &sign(Algorithm::EdDSA, "ed", &good, &idp.eddsa)
            )
            .status,
        403
    );

    let entries = audit_entries(&site, "60");
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "api.request" && e["details"]["status"] == 401)
        .collect();
    assert!(
        refused.len() >= 2 * cases.len(),
        "every refusal is audited: {}",
        refused.len()
    );
    assert!(
        refused
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("revoked"))
    );
    assert!(entries.iter().any(|e| e["actor"] == "oidc:alice"));
}

#[test]
fn bad_input_gets_a_4xx_in_the_apis_error_shape_and_the_server_keeps_serving() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "app"]);
    let server = Server::start(&site, &[]);
    let auth = format!("Bearer {key}");
    let post_raw = |path: &str, body: &[u8]| {
        server.request(
            "POST",
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
    };

    let huge = vec![b'a'; 10 << 20];
    let cases: Vec<(&str, Reply, u16)> = vec![
        ("malformed JSON", post_raw("/v1/chat/completions", b"{\"model\": \"chat\", "), 400),
        ("wrong types", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": "hi"})), 400),
        ("temperature as a string", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})), 400),
        ("10 MB body", post_raw("/v1/chat/completions", &huge), 413),
        ("max_tokens 10^9", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000_000u64})), 400),
        ("unknown model", server.post("/v1/chat/completions", &key, &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})), 404),
        ("empty message list", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": []})), 400),
        ("n over 8", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "n": 9})), 400),
        ("a tool without its function", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]})), 400),
        ("a schema that cannot be enforced", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}})), 400),
        ("unknown parameter", server.post("/v1/chat/completions", &key, &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1})), 400),
        ("chat on the embedding model", server.post("/v1/chat/completions", &key, &json!({"model": "embed", "messages": [{"role": "user", "content": "hi"}]})), 400),
        ("prompt over the context", server.post("/v1/completions", &key, &json!({"model": "chat", "prompt": "word ".repeat(6000), "max_tokens": 4})), 400),
        ("embedding token arrays", server.post("/v1/embeddings", &key, &json!({"model": "embed", "input": [[1, 2, 3]]})), 400),
        ("embedding encoding", server.post("/v1/embeddings", &key, &json!({"model": "embed", "input": "x", "encoding_format": "int8"})), 400),
        ("empty body", post_raw("/v1/embeddings", b""), 400),
        ("unknown route", server.get("/v1/nothing", &key), 404),
        ("wrong method", server.get("/v1/chat/completions", &key), 405),
    ];
    for (what, reply, status) in &cases {
        assert_eq!(reply.status, *status, "{what}: {}", reply.body);
        let error = &reply.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            reply.body
        );
        assert!(error["type"].is_string(), "{what}");
    }
    let big = &cases[3].1;
    assert!(
        big.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );

    let anthropic = server.request(
        "POST",
        "/v1/messages",
        &[("x-api-key", &key), ("content-type", "application/json")],
        json!({"model": "chat", "max_tokens": 8, "messages": []})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(anthropic.status, 400);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "invalid_request_error");

    let ok = server.post(
        "/v1/chat/completions",
        &key,
        &chat_body("What is the capital of France?"),
    );
    assert_eq!(ok.status, 200, "still serving: {}", ok.body);
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn every_request_is_audited_ahead_of_its_answer_with_caller_model_digest_tokens_and_body_hashes_only()
 {
    let site = site_with_models();
    let (key, id) = create_key(&site, &["--name", "auditor-app", "--clearance", "internal"]);
    let server = Server::start(&site, &[]);
    let reply = server.post(
        "/v1/chat/completions",
        &key,
        &chat_body("What is the capital of France?"),
    );
    assert_eq!(reply.status, 200);
    let stream = server.post(
        "/v1/chat/completions",
        &key,
        &json!({"model": "chat", "messages": [{"role": "user", "content": "Say hi"}], "stream": true, "max_tokens": 4}),
    );
    assert!(stream.headers.contains("text/event-stream"));
    assert!(stream.body.contains("[DONE]"));
    let embedded = server.post(
        "/v1/embeddings",
        &key,
        &json!({"model": "embed", "input": ["a", "b"]}),
    );
    assert_eq!(embedded.status, 200);
    let listed = server.get("/v1/models", &key);
    assert_eq!(listed.status, 200);
    let replies = [&reply, &stream, &embedded, &listed];
    let ids: Vec<String> = replies
        .iter()
        .map(|r| {
            r.headers
                .lines()
                .find_map(|l| l.strip_prefix("x-request-id: "))
                .unwrap_or_else(|| panic!("no x-request-id in {}", r.headers))
                .to_owned()
        })
        .collect();
    assert!(
        reply.json()["id"].as_str().unwrap().ends_with(&ids[0]),
        "the completion id names the request"
    );

    // A model's answer has two entries: the request, durable before anything was sent,
    // and its result, written as the answer went out (so it may land a moment later).
    let entries_of = |entries: &[Value], id: &str| -> Vec<Value> {
        entries
            .iter()
            .filter(|e| e["details"]["request_id"] == id)
            .cloned()
            .collect()
    };
    let entries = audit_entries_once(&site, "20", Duration::from_secs(10), |entries| {
        entries
            .iter()
            .filter(|e| e["action"] == "api.result")
            .count()
            >= 3
    });
    let digest = site.cmd(&["show", "smollm2:prod", "--json"]).ok().json()["digest"].clone();
    let chat = entries_of(&entries, &ids[0]);
    assert_eq!(chat.len(), 2, "{entries:#?}");
    let (request, result) = (&chat[0], &chat[1]);
    assert_eq!(request["action"], "api.request");
    assert_eq!(result["action"], "api.result");
    assert!(request["index"].as_u64() < result["index"].as_u64());
    for e in [request, result] {
        assert_eq!(e["actor"], format!("apikey:{id}"));
        assert_eq!(e["subject"], digest);
        assert_eq!(e["details"]["model"], "chat");
        assert_eq!(e["details"]["route"], "/v1/chat/completions");
    }
    assert_eq!(request["details"]["clearance"], "internal");
    assert_eq!(request["details"]["principal"], "auditor-app");
    assert!(request["details"]["prompt_tokens"].as_u64().unwrap() > 10);
    assert_eq!(
        request["details"]["request_sha256"].as_str().unwrap().len(),
        64
    );
    assert!(
        request["details"].get("status").is_none(),
        "written before the outcome was known"
    );
    assert_eq!(result["details"]["status"], 200);
    assert_eq!(result["outcome"], "ok");
    assert!(result["details"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(result["details"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(["stop", "length"].contains(&result["details"]["finish_reason"].as_str().unwrap()));
    assert_eq!(
        result["details"]["completion_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains("capital of France"),
        "bodies are not logged by default"
    );

    let streamed = entries_of(&entries, &ids[1]);
    assert_eq!(streamed.len(), 2, "{entries:#?}");
    assert_eq!(streamed[0]["details"]["stream"], true);
    assert_eq!(streamed[1]["details"]["completion_tokens"], 4);
    let embedding = entries_of(&entries, &ids[2]);
    assert_eq!(embedding.len(), 2, "{entries:#?}");
    assert_eq!(embedding[1]["details"]["model"], "embed");
    assert!(embedding[1]["details"]["prompt_tokens"].as_u64().unwrap() > 0);

    // A request no model answers is one entry, with its status, written before the answer.
    let listing = entries_of(&entries, &ids[3]);
    assert_eq!(listing.len(), 1, "{entries:#?}");
    assert_eq!(listing[0]["action"], "api.request");
    assert_eq!(listing[0]["details"]["status"], 200);
    site.cmd(&["audit", "verify"]).ok();
}

#[test]
fn a_reload_re_admits_every_model_deploys_a_moved_tag_and_changes_nothing_when_a_check_fails() {
    let site = site_with_models();
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let (user, _) = create_key(&site, &["--name", "app"]);
    let server = Server::start(&site, &[]);
    let served = |alias: &str| server.model_status(&admin, alias);
    let reload = |key: &str| server.post("/admin/reload", key, &json!({}));
    let before = served("embed");

    assert_eq!(reload(&user).status, 403, "reloading needs an admin key");
    let unchanged = reload(&admin);
    assert_eq!(unchanged.status, 200, "{}", unchanged.body);
    for model in unchanged.json()["models"].as_array().unwrap() {
        assert!(model["previous"].is_null(), "nothing moved: {model}");
    }

    // Deploy: a newly approved version, the tag moved onto it, a reload.
    let next = pack_and_import_version(
        &site,
        &models_dir().join("all-minilm-l6-v2"),
        "all-minilm-l6-v2",
        "1.0.1",
        &["--kind", "embedding"],
    );
    site.approve(&next, "approver").ok();
    site.cmd(&["tag", &next, "prod"]).ok();
    let deployed = reload(&admin);
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let embed = served("embed");
    assert_eq!(embed["version"], "1.0.1");
    assert_ne!(embed["digest"], before["digest"]);
    let change = deployed.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["alias"] == "embed")
        .cloned()
        .unwrap();
    assert_eq!(change["previous"], before["digest"]);
    let embedded = server.post(
        "/v1/embeddings",
        &user,
        &json!({"model": "embed", "input": "hello"}),
    );
    assert_eq!(embedded.status, 200, "{}", embedded.body);

    // A check fails (the chat model's tag is gone): 409 with the reason, nothing changes.
    site.cmd(&["untag", "smollm2:prod"]).ok();
    let refused = reload(&admin);
    assert_eq!(refused.status, 409, "{}", refused.body);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("chat") && message.contains("smollm2:prod"),
        "{message}"
    );
    assert_eq!(served("embed")["version"], "1.0.1");
    assert_eq!(served("chat")["version"], "1.0.0");
    let answer = server.post("/v1/chat/completions", &user, &chat_body("Hi"));
    assert_eq!(
        answer.status, 200,
        "the old set keeps serving: {}",
        answer.body
    );

    // SIGHUP reloads the same way.
    site.cmd(&["tag", "smollm2:1.0.0", "prod"]).ok();
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let is_reload = |e: &Value| e["action"] == "serve.reload";
    let reloads = audit_matching(&site, "200", Duration::from_secs(30), 4, is_reload);
    let outcomes: Vec<&str> = reloads
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "refused", "ok"], "{reloads:#?}");
    assert_eq!(reloads[1]["details"]["replaced.embed"], before["digest"]);
    assert!(
        reloads[2]["reason"]
            .as_str()
            .unwrap()
            .contains("smollm2:prod")
    );
    site.cmd(&["audit", "verify"]).ok();
}

#[test]
fn concurrent_embedding_requests_share_model_calls_and_each_gets_its_own_vectors() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "indexer"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let server = Server::start(&site, &[]);
    let texts: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "document {i}: {}",
                "classified memo about supply routes ".repeat(i % 5 + 1)
            )
        })
        .collect();
    let embed = |text: &str| -> (Vec<f64>, u64) {
        let reply = server.post(
            "/v1/embeddings",
            &key,
            &json!({"model": "embed", "input": text}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.json();
        let vector = body["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        (vector, body["usage"]["prompt_tokens"].as_u64().unwrap())
    };
    let batches = || -> u64 {
        let text = server.get("/metrics", &admin).body;
        text.lines()
            .find_map(|l| l.strip_prefix("airlock_embedding_batches_total{model=\"embed\"} "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let alone: Vec<(Vec<f64>, u64)> = texts.iter().map(|t| embed(t)).collect();
    let before = batches();
    assert_eq!(
        before,
        texts.len() as u64,
        "one call per request when they come one by one"
    );

    let together: Vec<(Vec<f64>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = texts.iter().map(|t| s.spawn(|| embed(t))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let calls = batches() - before;
    assert!(
        calls < texts.len() as u64,
        "{} concurrent requests took {calls} model calls",
        texts.len()
    );
    for (i, ((a, a_tokens), (b, b_tokens))) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a_tokens, b_tokens, "request {i} is billed its own tokens");
        let cosine: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(
            cosine > 0.99999,
            "request {i} got its own vector: cosine {cosine}"
        );
    }
    assert!(alone[0].1 < alone[4].1, "longer texts have more tokens");
}

#[test]
fn a_client_that_hangs_up_cancels_its_generation_at_once_streamed_or_not() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "impatient"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let server = Server::start(&site, &[]);
    let running = || {
        server.model_status(&admin, "chat")["engine"]["running"]
            .as_u64()
            .unwrap()
    };
    for stream in [false, true] {
        let socket = server.ask_for_a_long_answer(&key, stream, 4000);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the generation never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let hung_up = std::time::Instant::now();
        drop(socket);
        while running() > 0 {
            assert!(
                hung_up.elapsed() < Duration::from_secs(3),
                "stream {stream}: still generating after the client left"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Every status poll above is an audit entry of its own: read the whole log.
    let is_closed = |e: &Value| e["action"] == "api.result" && e["details"]["status"] == 499;
    let closed = audit_matching(&site, "100000", Duration::from_secs(5), 2, is_closed);
    assert_eq!(closed.len(), 2, "each hang-up is recorded as 499");
    assert_eq!(closed[1]["details"]["stream"], true);
    for entry in &closed {
        assert_eq!(entry["details"]["finish_reason"], "client_closed");
        assert!(entry["details"]["latency_ms"].as_f64().unwrap() < 10_000.0);
    }
}

#[test]
fn config_check_accepts_a_valid_file_and_names_the_problem_in_a_bad_one() {
    let site = Site::new();
    let good = site.ws.path("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:9000\"\n[models.chat]\nref = \"smollm2:prod\"\nslots = 4\n[limits]\nmax_tokens = 512\n",
    )
    .unwrap();
    let checked = site
        .cmd(&[
            "config",
            "check",
            "--config",
            good.to_str().unwrap(),
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(checked["listen"], "127.0.0.1:9000");
    assert_eq!(checked["limits"]["max_tokens"], 512);
    assert_eq!(
        checked["limits"]["per_key_concurrency"], 32,
        "defaults fill the rest"
    );
    assert_eq!(checked["models"]["chat"]["slots"], 4);

    let flags = site
        .cmd(&[
            "config",
            "check",
            "--config",
            good.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9100",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(flags["listen"], "127.0.0.1:9100", "flags override the file");

    for (text, needle) in [
        (
            "listen = \"everywhere\"\n[models.chat]\nref = \"smollm2:prod\"\n",
            "listen",
        ),
        (
            "[models.chat]\nref = \"smollm2:prod\"\nsluts = 4\n",
            "sluts",
        ),
        (
            "[models.chat]\nref = \"smollm2:prod\"\n[auth.oidc]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"/nonexistent/jwks.json\"\n",
            "JWKS",
        ),
        ("listen = ", "invalid configuration"),
    ] {
        let bad = site.ws.path("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = site.cmd(&["config", "check", "--config", bad.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{text:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{text:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    }
}

#[test]
fn keys_are_listed_with_their_state_and_never_their_secret() {
    let site = Site::new();
    let (secret, id) = create_key(
        &site,
        &[
            "--name",
            "wiki-bot",
            "--clearance",
            "confidential",
            "--expires",
            "30d",
        ],
    );
    create_key(&site, &["--name", "ops", "--role", "admin"]);
    site.cmd(&["keys", "revoke", "ops"]).ok();
    let listed = site.cmd(&["keys", "ls", "--json"]).ok();
    assert!(
        !listed.stdout.contains(&secret[20..]),
        "the secret is never shown again"
    );
    let keys = listed.json();
    let wiki = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(wiki["clearance"], "confidential");
    assert!(wiki["expires_at"].is_string());
    let ops = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ops")
        .unwrap();
    assert!(ops["revoked_at"].is_string());
    assert!(site.cmd(&["keys", "ls"]).ok().stdout.contains("revoked"));

    let again = site.cmd(&["keys", "revoke", "ops"]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("already revoked"), "{}", again.stderr);
    let unknown = site.cmd(&["keys", "revoke", "nobody"]);
    assert!(unknown.stderr.contains("no API key"), "{}", unknown.stderr);
    let bad_name = site.cmd(&["keys", "create", "--name", "Bad Name"]);
    assert_eq!(bad_name.code, 2);
    assert!(bad_name.stderr.contains("key name"), "{}", bad_name.stderr);
    let log = site.cmd(&["audit", "tail", "-n", "5"]).ok().stdout;
    assert!(
        log.contains("key.create") && log.contains("key.revoke"),
        "{log}"
    );
}

#[test]
fn a_caller_asking_again_reuses_its_own_cached_prompt_and_never_another_callers() {
    let site = site_with_models();
    let (alice, alice_id) = create_key(&site, &["--name", "alice"]);
    let (bob, _) = create_key(&site, &["--name", "bob"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let server = Server::start(&site, &[]);
    let ask = |key: &str, body: &Value| {
        let reply = server.post("/v1/chat/completions", key, body);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let json = reply.json();
        let usage = &json["usage"];
        (
            json["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        )
    };
    let body = chat_body("What is the capital of France?");
    let (answer, prompt_tokens, cached) = ask(&alice, &body);
    assert_eq!(cached, 0);
    // Only the prompt's last token is decoded again; the answer is the same.
    assert_eq!(
        ask(&alice, &body),
        (answer.clone(), prompt_tokens, prompt_tokens - 1)
    );
    assert_eq!(
        ask(&bob, &body),
        (answer.clone(), prompt_tokens, 0),
        "bob reuses nothing of alice's"
    );
    let mut seeded = body.clone();
    seeded["seed"] = json!(7);
    assert_eq!(
        ask(&alice, &seeded).2,
        0,
        "a seeded request decodes its whole prompt"
    );

    // The Messages API counts cache reads apart from the input tokens decoded.
    let reply = server.request(
        "POST",
        "/v1/messages",
        &[("x-api-key", &alice), ("content-type", "application/json")],
        json!({"model": "chat", "max_tokens": 8, "temperature": 0,
               "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let usage = &reply.json()["usage"];
    assert_eq!(
        (
            usage["input_tokens"].as_u64(),
            usage["cache_read_input_tokens"].as_u64()
        ),
        (Some(1), Some(prompt_tokens - 1)),
        "{usage}"
    );

    // The audit log and the metrics count what was reused.
    let reused_by_alice = |e: &Value| {
        e["action"] == "api.result"
            && e["actor"] == format!("apikey:{alice_id}")
            && e["details"]["cached_tokens"] == prompt_tokens - 1
    };
    let reused = audit_matching(&site, "40", Duration::from_secs(5), 2, reused_by_alice);
    assert_eq!(reused.len(), 2, "{reused:#?}");
    let metrics = server.get("/metrics", &admin).body;
    assert!(
        metrics.contains(&format!(
            "airlock_cached_prompt_tokens_total {}",
            2 * (prompt_tokens - 1)
        )),
        "{metrics}"
    );
}

#[test]
fn a_key_raised_by_hand_gets_401_everywhere_and_the_server_names_it_at_start() {
    let site = site_with_models();
    let (raised, id) = create_key(&site, &["--name", "app", "--clearance", "internal"]);
    let (honest, _) = create_key(&site, &["--name", "honest"]);
    crate::support::sql(
        &site.db(),
        &format!("UPDATE api_keys SET role = 'admin', clearance = 'secret' WHERE id = '{id}'"),
    );
    let server = Server::start(&site, &[]);
    for path in ["/v1/models", "/admin/status"] {
        let reply = server.get(path, &raised);
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
    }
    let embedded = server.post(
        "/v1/embeddings",
        &raised,
        &json!({"model": "embed", "input": "hello"}),
    );
    assert_eq!(embedded.status, 401, "{}", embedded.body);
    assert_eq!(server.get("/v1/models", &honest).status, 200);
    // A key made while the server runs is honoured: the log is read on.
    let (later, _) = create_key(&site, &["--name", "later"]);
    assert_eq!(server.get("/v1/models", &later).status, 200);

    let line = format!(
        "api_keys {id} (app): the database says role admin, clearance secret; the log says role user, clearance internal"
    );
    let entries = audit_entries(&site, "100");
    let named = entries
        .iter()
        .find(|e| e["action"] == "serve.unbacked")
        .unwrap_or_else(|| panic!("no serve.unbacked entry: {entries:#?}"));
    assert_eq!(named["outcome"], "refused");
    assert_eq!(named["details"]["rows"], json!([line]));
    // Each refusal is in the log with its reason.
    assert!(
        entries.iter().any(|e| e["action"] == "api.request"
            && e["details"]["status"] == 401
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not what the audit log recorded"))),
        "{entries:#?}"
    );
}

#[test]
fn a_version_approved_by_hand_or_a_tag_moved_by_hand_is_not_served() {
    let site = site_with_models();
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let server = Server::start(&site, &[]);
    // 2.0.0 imported, quarantined; then approved and tagged prod in the database alone.
    pack_and_import_version(
        &site,
        &models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "smollm2",
        "2.0.0",
        &[],
    );
    crate::support::sql(
        &site.db(),
        "UPDATE versions SET state = 'approved' WHERE name = 'smollm2' AND version = '2.0.0';
         UPDATE tags SET version_id = (SELECT id FROM versions WHERE name = 'smollm2' AND version = '2.0.0')
             WHERE name = 'smollm2' AND tag = 'prod';",
    );
    // On reload: refused, and the old set keeps serving.
    let refused = server.post("/admin/reload", &admin, &json!({}));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body.contains(
            "tag smollm2:prod points at 2.0.0 in the database, but the audit log says it points at 1.0.0"
        ),
        "{}",
        refused.body
    );
    assert_eq!(server.model_status(&admin, "chat")["version"], "1.0.0");
    drop(server);

    // At start: neither the moved tag nor the version itself.
    let serve = |model: &str| {
        site.cmd(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model",
            model,
            "--model",
            "embed=all-minilm-l6-v2:prod",
        ])
    };
    let by_tag = serve("chat=smollm2:prod");
    assert_ne!(by_tag.code, 0);
    assert!(
        by_tag
            .stderr
            .contains("the audit log says it points at 1.0.0"),
        "{}",
        by_tag.stderr
    );
    let by_version = serve("chat=smollm2:2.0.0");
    assert_ne!(by_version.code, 0);
    assert!(
        by_version.stderr.contains(
            "smollm2:2.0.0 is approved in the database, but the audit log says it is quarantined"
        ),
        "{}",
        by_version.stderr
    );
    let problems = site.fsck_problems();
    assert!(
        problems.contains(
            &"versions smollm2:2.0.0: the database says approved; the log says quarantined"
                .to_owned()
        ) && problems.contains(
            &"tags smollm2:prod: the database says it points at 2.0.0; the log says it points at 1.0.0"
                .to_owned()
        ),
        "{problems:#?}"
    );
}
