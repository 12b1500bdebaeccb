//! Contained: an engine process is third-party code, boxed as an attacker. A hostile engine
//! (`tests/data/hostile-engine.c`, built here) stands in llama-server's place behind `airlock
//! serve` and tries every escape an engine with code execution would: the server's
//! descriptors (the seal's notification descriptor among them), ptrace and the server's
//! memory, sockets under the temporary directory and through a link, the data directory's
//! files, a listener of its own for its seccomp notifications, a double-forked survivor and
//! a refusal flood, calls of another architecture. Every attempt is refused, the survivor is
//! gone once the server stops, and the flood leaves the audit log within its bound with every
//! refusal counted; as root and as an unprivileged user.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::processes::process_config_with;
use crate::registry::Site;
use crate::serve::{Server, audit_matching, create_key, site_with_models};
use crate::support::airlock;

/// The hostile engine, compiled into `dir`.
fn hostile_engine(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile-engine.c");
    let binary = dir.join("hostile-engine");
    let built = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    binary
}

/// What the hostile engine aims at, and what must never hear from it.
struct Targets {
    outside: std::os::unix::net::UnixListener,
    outside_path: PathBuf,
    tcp: std::net::TcpListener,
    udp: std::net::UdpSocket,
    _dir: tempfile::TempDir,
}

impl Targets {
    fn new() -> Self {
        // In the system's temporary directory, where an operator's tmux or ssh-agent socket
        // would be.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let outside_path = dir.path().join("outside.sock");
        let outside = std::os::unix::net::UnixListener::bind(&outside_path).unwrap();
        std::fs::set_permissions(&outside_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        outside.set_nonblocking(true).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        Self {
            outside,
            outside_path,
            tcp,
            udp,
            _dir: dir,
        }
    }

    /// `targets.txt` beside the engine's binary.
    fn write(&self, beside: &Path, server_pid: u32, site: &Site, flood_seconds: u64) {
        let mut text = format!(
            "server_pid={server_pid}\noutside_socket={}\ntcp_port={}\nudp_port={}\nflood_seconds={flood_seconds}\n",
            self.outside_path.display(),
            self.tcp.local_addr().unwrap().port(),
            self.udp.local_addr().unwrap().port(),
        );
        for file in ["registry.db", "keys/audit.key", "policy.toml"] {
            text.push_str(&format!("data_file={}\n", site.data.join(file).display()));
        }
        text.push_str("end\n");
        std::fs::write(beside.parent().unwrap().join("targets.txt"), text).unwrap();
    }

    /// Nothing reached any of them.
    fn assert_untouched(&self) {
        assert!(
            self.outside.accept().is_err(),
            "a connection reached the unix socket outside"
        );
        assert!(self.tcp.accept().is_err(), "a TCP connection got through");
        let mut buffer = [0u8; 16];
        assert!(
            self.udp.recv(&mut buffer).is_err(),
            "a datagram got through"
        );
    }
}

/// The engine's report, once it says `done` (its attempts are over).
fn report(site: &Site, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let found = std::fs::read_dir(site.data.join("run"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("report.txt"))
            .find_map(|p| std::fs::read_to_string(p).ok());
        if let Some(text) = &found
            && text.lines().any(|l| l == "done")
        {
            return text.lines().map(str::to_owned).collect();
        }
        assert!(
            Instant::now() < deadline,
            "the hostile engine never finished: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` is alive and named `name` (its `comm`; another process may have
/// its number by now).
fn alive_as(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == name)
}

/// Every attempt the report names was refused, and each escape was tried.
fn assert_every_attempt_refused(lines: &[String]) {
    let attempts: Vec<&String> = lines
        .iter()
        .filter(|l| {
            !(l.starts_with("pid ")
                || l.starts_with("flood ")
                || l.starts_with("survivor-pid ")
                || *l == "done")
        })
        .collect();
    for line in &attempts {
        assert!(
            line.contains(" refused "),
            "an escape succeeded: {line}\n{lines:#?}"
        );
    }
    for tried in [
        "getppid",
        "pidfd_open(server)",
        "pidfd_getfd(server)",
        "ptrace(server)",
        "process_vm_readv(server)",
        "open(/proc/server)",
        "kill(server)",
        "udp",
        "packet socket",
        "tcp",
        "unix socket outside",
        "unix socket through a link",
        "read data file",
        "write data file",
        "write /tmp",
        "seccomp listener of its own",
        "unshare",
        "int 0x80",
        "x32 call",
        "survivor",
    ] {
        assert!(
            attempts.iter().any(|l| l.starts_with(&format!("{tried} "))),
            "{tried} was not tried: {lines:#?}"
        );
    }
}

/// A hostile engine behind `airlock serve`, run by `user` (`None`: as the test's own user).
/// Returns the engine's report, the server's refusal count and its egress entries.
fn contain_a_hostile_engine(
    user: Option<u32>,
    flood_seconds: u64,
) -> (Vec<String>, u64, Vec<Value>) {
    let site = site_with_models();
    let (admin, _) = create_key(&site, &["--name", "ops", "--role", "admin"]);
    let binary = hostile_engine(&site.ws.path("engine/bin"));
    let config = process_config_with(&site, &binary, "");
    let targets = Targets::new();
    let mut command = match user {
        None => airlock(),
        Some(uid) => {
            // The workspace readable to the user, the data directory its own.
            for path in [
                site.ws.dir.path(),
                &site.ws.path("engine"),
                &site.ws.path("engine/bin"),
            ] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let chown = Command::new("chown")
                .args(["-R", &format!("{uid}:{uid}")])
                .arg(&site.data)
                .status()
                .unwrap();
            assert!(chown.success());
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_airlock"));
            c
        }
    };
    command
        .arg("--data")
        .arg(&site.data)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config);
    let server = Server::spawn(command, |pid| {
        targets.write(&binary, pid, &site, flood_seconds);
    });
    let lines = report(&site, Duration::from_secs(60 + flood_seconds));
    // The server serves on, untouched.
    assert_eq!(server.get("/healthz", "").status, 200);
    let metrics = server.get("/metrics", &admin).body;
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("airlock_egress_refused_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    let survivor: u32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("survivor-pid ")?.parse().ok())
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        alive_as(survivor, "airlock-survivr"),
        "the survivor runs while the server does"
    );
    let status = server.stop();
    assert!(status.success(), "serve ended with {status}");
    targets.assert_untouched();
    // The whole tree ended with the server, the double-forked survivor included.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive_as(survivor, "airlock-survivr") {
        assert!(
            Instant::now() < deadline,
            "a process the engine started outlived the server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let egress = audit_matching(&site, "100000", Duration::from_secs(5), 1, |e| {
        e["action"] == "egress.refused"
    });
    (lines, counted, egress)
}

#[test]
fn a_hostile_engine_is_refused_every_escape_as_root_and_its_flood_is_summarised() {
    let flood = 60;
    let (lines, counted, egress) = contain_a_hostile_engine(None, flood);
    assert_every_attempt_refused(&lines);
    let flooded: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("flood ")?.parse().ok())
        .unwrap();
    assert!(flooded > 1000, "a flood of {flooded} refusals in {flood} s");
    // Every refusal counted: the entries' counts add up to what /metrics said, and the log
    // grew by at most the recorder's bound per interval begun (two intervals at most here).
    let logged: u64 = egress
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(logged, counted, "{egress:#?}");
    assert!(counted >= flooded);
    // A call of another architecture is refused and on record, not a silent kill.
    assert!(
        egress
            .iter()
            .any(|e| e["details"]["syscall"] == "call of another architecture"),
        "{egress:#?}"
    );
    let bound = 2
        * (airlock_confine::recorder::MOST_ENTRIES as usize
            + airlock_confine::recorder::MOST_KINDS
            + 1);
    assert!(egress.len() <= bound, "{} entries", egress.len());
    assert!(
        egress
            .iter()
            .any(|e| e["details"]["summary"] == true && e["details"]["count"].as_u64() > Some(1000)),
        "{egress:#?}"
    );
}

#[test]
fn a_hostile_engine_is_refused_every_escape_as_an_unprivileged_user() {
    let (lines, counted, egress) = contain_a_hostile_engine(Some(65534), 2);
    assert_every_attempt_refused(&lines);
    let logged: u64 = egress
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(logged, counted, "{egress:#?}");
}
