//! Sealed by the kernel: every isolated-side command, and the engine processes `serve`
//! starts, run under the seccomp filter; an engine process that phones home is refused,
//! logged with its destination and counted while the server keeps serving; the fence keeps a
//! command to the files it was given.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::processes::process_config_with;
use crate::registry::Site;
use crate::serve::{Server, audit_matching, chat_body, create_key, site_with_models};
use crate::support::{airlock, llama_server};

/// `Seccomp` and `NoNewPrivs` of a process, from `/proc/PID/status`.
fn confinement_of(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    (field("Seccomp"), field("NoNewPrivs"))
}

/// Starts `airlock ARGS`, which stops itself once confined; reads its status; resumes it.
fn confinement_while_stopped(site: &Site, args: &[&str]) -> (String, String) {
    let mut child = airlock()
        .arg("--data")
        .arg(&site.data)
        .args(args)
        .env("AIRLOCK_STOP_AFTER_CONFINE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        if state == Some("T") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} exited before it confined itself"
        );
        assert!(Instant::now() < deadline, "{args:?} never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = confinement_of(pid);
    Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    seen
}

#[test]
fn every_isolated_side_command_and_the_engine_processes_it_starts_run_under_seccomp() {
    let site = site_with_models();
    let docs = site.ws.path("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("a.md"), "# A\n\nVisitors sign in at the desk.\n").unwrap();
    let received = site.ws.path("received");
    let key = site.ws.key("approver");
    let commands: Vec<Vec<&str>> = vec![
        vec!["import", "/no/such/bundle.airlock"],
        // Connected-side commands are sealed too.
        vec![
            "quantize",
            "/no/such/bundle.airlock",
            "--type",
            "Q8_0",
            "--key",
            key.to_str().unwrap(),
            "-o",
            "/tmp/x.airlock",
        ],
        vec!["approve", "smollm2:prod", "--key", key.to_str().unwrap()],
        vec!["tag", "smollm2:prod", "stable"],
        vec!["run", "smollm2:prod", "Hi"],
        vec!["eval", "smollm2:prod"],
        vec!["embed", "all-minilm-l6-v2:prod", "Hi"],
        vec![
            "collection",
            "create",
            "kb",
            "--embed",
            "all-minilm-l6-v2:prod",
        ],
        vec!["ingest", "kb", docs.to_str().unwrap()],
        vec!["search", "kb", "visitors"],
        vec![
            "ask",
            "kb",
            "Where do visitors sign in?",
            "--model",
            "smollm2:prod",
        ],
        vec!["audit", "verify"],
        vec!["fsck"],
        vec!["ls"],
        vec![
            "diode",
            "receive",
            "--listen",
            "127.0.0.1:0",
            "-o",
            received.to_str().unwrap(),
            "--idle-timeout",
            "1s",
        ],
    ];
    for args in &commands {
        let (seccomp, no_new_privs) = confinement_while_stopped(&site, args);
        assert_eq!(seccomp, "2", "{args:?} runs without its seccomp filter");
        assert_eq!(no_new_privs, "1", "{args:?} runs without no_new_privs");
    }
    // serve, once bound, and the llama-server it starts and supervises.
    let config = process_config_with(&site, &llama_server(), "");
    let server = Server::start_with(&site, &["--config", config.to_str().unwrap()]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let engine = server.model_status(&admin, "chat")["engine"]["pid"]
        .as_u64()
        .unwrap();
    assert_eq!(
        confinement_of(server.pid()),
        ("2".into(), "1".into()),
        "serve"
    );
    assert_eq!(
        confinement_of(u32::try_from(engine).unwrap()),
        ("2".into(), "1".into()),
        "the engine process"
    );
}

/// A copy of llama.cpp's tools directory with a `llama-server` stand-in that first tries to
/// reach an address on the internet (as engines that phone home do), then runs the real one.
fn phoning_llama_server(dir: &Path) -> std::path::PathBuf {
    let real = llama_server();
    let bin = real.parent().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(bin)
        .arg(dir.join("bin"))
        .status()
        .unwrap();
    assert!(status.success());
    let wrapper = dir.join("bin/llama-server-phoning-home");
    std::fs::write(
        &wrapper,
        "#!/bin/bash\n(exec 3<>/dev/tcp/203.0.113.9/443) 2>/dev/null\nhere=\"$(dirname \"$0\")\"\nLD_LIBRARY_PATH=\"$here\" exec \"$here/llama-server\" \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

#[test]
fn an_engine_process_that_phones_home_is_refused_logged_and_counted_and_the_server_keeps_serving() {
    let site = site_with_models();
    let (key, _) = create_key(&site, &["--name", "user"]);
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let binary = phoning_llama_server(site.ws.dir.path());
    let config = process_config_with(&site, &binary, "");
    let server = Server::start_with(&site, &["--config", config.to_str().unwrap()]);
    // (bash also asks nscd's unix socket who it runs as: outside what serve keeps, so that
    // is refused and logged too.)
    let refused = audit_matching(&site, "50", Duration::from_secs(10), 1, |e| {
        e["action"] == "egress.refused" && e["details"]["destination"] == "203.0.113.9:443"
    });
    let entry = &refused[0];
    assert_eq!(entry["outcome"], "refused", "{entry}");
    assert_eq!(
        entry["details"]["destination"], "203.0.113.9:443",
        "{entry}"
    );
    assert_eq!(entry["details"]["syscall"], "connect", "{entry}");
    assert_eq!(entry["details"]["command"], "serve", "{entry}");
    // Not airlock itself: a process it started (the fence keeps others' /proc entries,
    // and so their names, out of reach).
    assert_eq!(entry["details"]["process"], "started by airlock", "{entry}");
    assert_ne!(entry["details"]["pid"], server.pid(), "{entry}");
    let metrics = server.get("/metrics", &admin);
    let counted = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("airlock_egress_refused_total "))
        .and_then(|n| n.parse::<u64>().ok());
    let logged = audit_matching(&site, "50", Duration::from_secs(1), 1, |e| {
        e["action"] == "egress.refused"
    });
    assert_eq!(counted, Some(logged.len() as u64), "{}", metrics.body);
    let reply = server.post(
        "/v1/chat/completions",
        &key,
        &chat_body("What is the capital of France?"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        server.model_status(&admin, "chat")["engine"]["state"],
        "ready"
    );
}

/// `airlock doctor --json` on `site`.
fn doctor(site: &Site) -> serde_json::Value {
    site.cmd(&["doctor", "--json"]).ok().json()
}

#[test]
fn doctor_reports_the_confinement_and_proves_the_seal_with_a_refused_connect() {
    let site = Site::new();
    let report = doctor(&site);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["seal"]["active"], true, "{report}");
    assert_eq!(report["seccomp_status"], "2", "{report}");
    assert_eq!(report["no_new_privs"], true, "{report}");
    assert_eq!(report["probe"]["refused"], true, "{report}");
    assert_eq!(report["probe"]["logged"], true, "{report}");
    assert_eq!(
        report["engine_offline_environment"]["HF_HUB_OFFLINE"], "1",
        "{report}"
    );
    assert!(
        report["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["owner_only"] == true),
        "{report}"
    );
    let entries = audit_matching(&site, "5", Duration::from_secs(5), 2, |e| {
        e["action"] == "doctor" || e["action"] == "egress.refused"
    });
    assert_eq!(
        entries[0]["details"]["destination"], "192.0.2.1:443",
        "{entries:?}"
    );
    assert_eq!(entries[1]["action"], "doctor");
    assert_eq!(entries[1]["outcome"], "ok");
    // A data directory others can read is reported, and doctor fails.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&site.data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = site.cmd(&["doctor"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("(readable by others)"),
        "{}",
        out.stdout
    );
    // Without the sandbox, doctor says so, and the choice is audited.
    std::fs::set_permissions(&site.data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let open = site.cmd(&["--dangerous-no-sandbox", "doctor", "--json"]);
    assert_eq!(open.code, 1);
    assert!(
        open.stderr.contains("--dangerous-no-sandbox"),
        "{}",
        open.stderr
    );
    let report = open.json();
    assert_eq!(report["seal"]["active"], false, "{report}");
    let disabled = audit_matching(&site, "5", Duration::from_secs(5), 1, |e| {
        e["action"] == "sandbox.disabled"
    });
    assert_eq!(disabled[0]["details"]["command"], "doctor");
}

#[test]
fn a_command_cannot_read_outside_what_it_was_given_even_through_a_crafted_path() {
    let site = Site::new();
    if doctor(&site)["fence"]["mode"] != "full" {
        eprintln!("this kernel has no full Landlock: the fence is not tested here");
        return;
    }
    // The audit log replaced by a link to a file outside the data directory.
    let log = site.data.join("audit/log");
    std::fs::remove_file(&log).unwrap();
    for target in [
        Path::new("/etc/shadow").to_owned(),
        site.ws.path("elsewhere.txt"),
    ] {
        std::fs::write(site.ws.path("elsewhere.txt"), "not a log\n").unwrap();
        let _ = std::fs::remove_file(&log);
        std::os::unix::fs::symlink(&target, &log).unwrap();
        let out = site.cmd(&["audit", "verify"]);
        assert_ne!(out.code, 0);
        assert!(
            out.stderr.contains("Permission denied"),
            "{} through a crafted path must be refused by the kernel: {}",
            target.display(),
            out.stderr
        );
    }
    // Without the fence the same read reaches the file (and the log check fails on its
    // content instead).
    let open = site.cmd(&["--dangerous-no-sandbox", "audit", "verify"]);
    assert_ne!(open.code, 0);
    assert!(
        !open.stderr.contains("Permission denied"),
        "{}",
        open.stderr
    );
}

#[test]
fn a_file_named_on_the_command_line_is_kept_wherever_it_lies() {
    let site = Site::new();
    // The verifier key as a file outside the data directory.
    let key = site.ws.path("elsewhere/audit.pub");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::copy(site.data.join("audit.pub"), &key).unwrap();
    let out = site.cmd(&["audit", "verify", "--key", key.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("OK audit log"), "{}", out.stdout);
}
