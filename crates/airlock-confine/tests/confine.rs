//! Confinement is for good, so each scenario runs in a child: this test binary started again
//! with `SCENARIO` set, which confines itself, tries things, and prints what happened.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use airlock_confine::{
    AllowList, Allowed, Attempt, Connection, EgressLog, Fenced, Network, Paths, Policy, Probe,
    Summary, confine,
};

const SCENARIO: &str = "AIRLOCK_CONFINE_SCENARIO";

#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

impl EgressLog for Recorded {
    fn record(&self, attempt: &Attempt) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", attempt.syscall, attempt.destination));
    }

    fn allowed(&self, connection: &Connection) -> bool {
        self.0.lock().unwrap().push(format!(
            "allowed {} {}",
            connection.destination, connection.purpose
        ));
        true
    }

    fn summarise(&self, summary: &Summary) {
        self.0.lock().unwrap().push(format!(
            "{} more {} {}",
            summary.count, summary.syscall, summary.destination
        ));
    }
}

/// Runs `name` in a child and returns its standard output, line by line.
fn scenario(name: &str, dir: &Path) -> Vec<String> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, name)
        .env("SCENARIO_DIR", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        // libtest prints "test child ... " without a newline before the first result.
        .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_owned()))
        .collect()
}

fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("granted");
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(inside.join("given.txt"), "given").unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    (dir, inside, outside)
}

#[test]
fn child() {
    let Ok(name) = std::env::var(SCENARIO) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("SCENARIO_DIR").unwrap());
    let inside = dir.join("granted");
    let log = Arc::new(Recorded::default());
    let network = if name == "receive-only" {
        Network::ReceiveOnly
    } else {
        Network::Sealed
    };
    // A UDP socket made before confinement, as the diode receiver binds its own.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A unix socket outside what the command keeps (as a resolver's or a bus's would be).
    let outside = dir.join("elsewhere/outside.sock");
    let _outside_listener = UnixListener::bind(&outside).unwrap();
    // For the race: a socket outside, named as long as one inside, and a UDP listener.
    let race = (name == "race").then(|| {
        std::fs::create_dir_all(dir.join("outward")).unwrap();
        let outward = UnixListener::bind(dir.join("outward/s.sock")).unwrap();
        let udp_listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (outward, udp_listener, udp_sender)
    });
    // For the allow-list: listeners made before confinement, as the enclave's services.
    let services = (name == "egress").then(Services::new);
    let egress = services
        .as_ref()
        .map(Services::allow_list)
        .unwrap_or_default();
    let report = confine(
        &Policy {
            network,
            paths: Paths {
                write: vec![inside.clone()],
                ..Paths::default()
            },
            egress,
        },
        log.clone(),
    )
    .unwrap();
    let say = |what: String| println!("RESULT {what}");
    say(format!(
        "seccomp {}",
        airlock_confine::status_field("Seccomp").unwrap()
    ));
    say(format!("no_new_privs {}", report.no_new_privs));
    say(format!("fence {:?}", report.fence));
    match name.as_str() {
        "network" => {
            say(format!(
                "probe {:?}",
                matches!(
                    airlock_confine::probe("192.0.2.1:443".parse().unwrap()),
                    Probe::Refused(_)
                )
            ));
            say(format!(
                "loopback {:?}",
                matches!(
                    airlock_confine::probe("127.0.0.1:9".parse().unwrap()),
                    Probe::Refused(_)
                )
            ));
            let dgram = std::net::UdpSocket::bind("0.0.0.0:0");
            say(format!("new udp socket {}", dgram.is_err()));
            let sent = udp.send_to(b"x", "198.51.100.7:53");
            say(format!("udp send_to {}", sent.is_err()));
            // Unix sockets are local and keep working, including through a listener.
            let path = inside.join("s.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let mut client = UnixStream::connect(&path).unwrap();
            let (mut served, _) = listener.accept().unwrap();
            client.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            served.read_exact(&mut buf).unwrap();
            say(format!("unix {}", &buf == b"ping"));
            say(format!(
                "unix outside {}",
                UnixStream::connect(&outside).is_err()
            ));
            // SCTP connects through setsockopt, past connect's check: no such socket.
            let sctp = rustix::net::socket(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::STREAM,
                Some(rustix::net::ipproto::SCTP),
            );
            say(format!("sctp {}", sctp.is_err()));
            // A child process inherits the seal, and its attempt reaches the same log.
            let status = Command::new("/bin/bash")
                .args(["-c", "exec 3<>/dev/tcp/203.0.113.9/80"])
                .status()
                .unwrap();
            say(format!("child refused {}", !status.success()));
            for line in log.0.lock().unwrap().iter() {
                say(format!("logged {line}"));
            }
            say(format!("blocked {}", airlock_confine::blocked_total()));
        }
        "files" => {
            say(format!(
                "given {}",
                std::fs::read_to_string(inside.join("given.txt")).is_ok()
            ));
            let crafted = inside.join("../elsewhere/secret.txt");
            say(format!(
                "outside {}",
                std::fs::read_to_string(crafted).is_err()
            ));
            std::os::unix::fs::symlink(dir.join("elsewhere/secret.txt"), inside.join("link"))
                .unwrap();
            say(format!(
                "symlink {}",
                std::fs::read_to_string(inside.join("link")).is_err()
            ));
            say(format!(
                "shadow {}",
                std::fs::read_to_string("/etc/shadow").is_err()
            ));
            say(format!(
                "write {}",
                std::fs::write(inside.join("new.txt"), "x").is_ok()
            ));
            say(format!(
                "libraries {}",
                std::fs::metadata("/usr/lib").is_ok()
            ));
        }
        "read-only" => {
            airlock_confine::forbid_writes().unwrap();
            say(format!(
                "read {}",
                std::fs::read_to_string(inside.join("given.txt")).is_ok()
            ));
            say(format!(
                "write {}",
                std::fs::write(inside.join("new.txt"), "x").is_err()
            ));
            say(format!(
                "exec {}",
                Command::new("/bin/true").status().is_err()
            ));
        }
        "receive-only" => {
            let sent = udp.send_to(b"x", "127.0.0.1:9");
            say(format!("udp send {}", sent.is_err()));
            say(format!("logged {}", log.0.lock().unwrap().join(",")));
        }
        "race" => {
            let (outward, udp_listener, udp_sender) = race.unwrap();
            let (reached_inside, reached_outside, datagrams) =
                race_connects(&inside.join("s.sock"), &outward, &udp_listener, &udp_sender);
            say(format!("inside {reached_inside}"));
            say(format!("outside {reached_outside}"));
            say(format!("datagrams {datagrams}"));
        }
        "egress" => services.unwrap().try_each(&say, &log),
        other => panic!("no scenario {other}"),
    }
}

/// The enclave's services, on loopback: a TCP service on the list, one whose entry has lapsed,
/// and a UDP one whose address and port are on the list (which lets TCP through, never UDP),
/// with a UDP socket made before confinement to try it with.
struct Services {
    allowed: std::net::TcpListener,
    lapsed: std::net::TcpListener,
    datagrams: std::net::UdpSocket,
    sender: std::net::UdpSocket,
}

impl Services {
    fn new() -> Self {
        Self {
            allowed: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            lapsed: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            datagrams: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            sender: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn allow_list(&self) -> AllowList {
        let entry = |address: std::net::SocketAddr, purpose: &str| {
            Allowed::new(address.to_string().parse().unwrap(), purpose)
        };
        let mut lapsed = entry(self.lapsed.local_addr().unwrap(), "lapsed");
        lapsed.until = Some(std::time::SystemTime::now());
        let datagrams = entry(self.datagrams.local_addr().unwrap(), "datagrams");
        AllowList::new(vec![
            entry(self.allowed.local_addr().unwrap(), "directory"),
            lapsed,
            datagrams,
        ])
        .unwrap()
    }

    fn try_each(self, say: &dyn Fn(String), log: &Recorded) {
        use std::net::{SocketAddr, TcpStream};
        let allowed = self.allowed.local_addr().unwrap();
        let port = allowed.port();
        let refused = |to: SocketAddr| {
            matches!(
                TcpStream::connect(to),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied
            )
        };
        // Reached, and the connection carries bytes both ways.
        let mut client = TcpStream::connect(allowed).unwrap();
        let (mut served, _) = self.allowed.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        served.read_exact(&mut buf).unwrap();
        served.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        say(format!("tcp reached {}", &buf == b"pong"));
        // A non-blocking connect (std's connect_timeout) is made the same way.
        let timed = TcpStream::connect_timeout(&allowed, std::time::Duration::from_secs(5));
        say(format!("non-blocking reached {}", timed.is_ok()));
        say(format!(
            "other address refused {}",
            refused(SocketAddr::from(([127, 0, 0, 2], port)))
        ));
        say(format!(
            "other port refused {}",
            refused(SocketAddr::from((
                [127, 0, 0, 1],
                port.wrapping_add(1).max(1)
            )))
        ));
        say(format!(
            "lapsed refused {}",
            refused(self.lapsed.local_addr().unwrap())
        ));
        // UDP never: no new datagram socket, and one made before reaches nothing on the list.
        let udp = self.datagrams.local_addr().unwrap();
        say(format!(
            "new udp socket refused {}",
            std::net::UdpSocket::bind("127.0.0.1:0").is_err()
        ));
        say(format!(
            "udp connect refused {}",
            self.sender.connect(udp).is_err()
        ));
        say(format!(
            "udp sendto refused {}",
            self.sender.send_to(b"x", udp).is_err()
        ));
        // A process this one started is held to the same list.
        let bash = |to: SocketAddr| {
            let out = Command::new("/bin/bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port())])
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        say(format!("child reached {}", bash(allowed).0));
        let _ = self.allowed.accept().unwrap();
        // Refused by the kernel, not merely unanswered.
        let (connected, error) = bash(SocketAddr::from(([127, 0, 0, 2], port)));
        say(format!(
            "child refused {}",
            !connected && error.contains("Operation not permitted")
        ));
        for line in log.0.lock().unwrap().iter() {
            say(format!("logged {line}"));
        }
        for (destination, decision, count) in airlock_confine::egress_by_destination() {
            say(format!("counted {decision} {destination} {count}"));
        }
    }
}

/// Tries this many connects while another thread swaps what they name.
const RACE_TRIES: usize = 10_000;

/// Connects `RACE_TRIES` times to `inside` (a socket beneath the command's directory)
/// through one address buffer and one descriptor number, while another thread keeps
/// swapping the buffer to `outward` (a unix socket outside) or to the UDP listener's address,
/// and the descriptor to a UDP socket; after each connect, sends a byte on the descriptor.
/// Returns how many connections each listener got and how many datagrams arrived.
#[expect(
    unsafe_code,
    reason = "raw connect on a buffer another thread rewrites"
)]
fn race_connects(
    inside: &Path,
    outward: &UnixListener,
    udp_listener: &std::net::UdpSocket,
    udp_sender: &std::net::UdpSocket,
) -> (usize, usize, usize) {
    use std::os::fd::AsRawFd as _;
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
    let sockaddr = |path: &Path| {
        let mut bytes = vec![0u8; std::mem::size_of::<libc::sockaddr_un>()];
        bytes[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        let path = path.as_os_str().as_encoded_bytes();
        bytes[2..2 + path.len()].copy_from_slice(path);
        bytes
    };
    let good = sockaddr(inside);
    let outward_address = outward.local_addr().unwrap();
    let bad = sockaddr(outward_address.as_pathname().unwrap());
    assert_eq!(good.len(), bad.len());
    let mut inet = vec![0u8; good.len()];
    let port = udp_listener.local_addr().unwrap().port();
    inet[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    inet[2..4].copy_from_slice(&port.to_be_bytes());
    inet[4..8].copy_from_slice(&[127, 0, 0, 1]);
    let buffer: Arc<Vec<AtomicU8>> = Arc::new(good.iter().map(|b| AtomicU8::new(*b)).collect());
    let write = |to: &[u8]| {
        for (slot, byte) in buffer.iter().zip(to) {
            slot.store(*byte, Ordering::Relaxed);
        }
    };
    let listener = UnixListener::bind(inside).unwrap();
    listener.set_nonblocking(true).unwrap();
    outward.set_nonblocking(true).unwrap();
    udp_listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    // One descriptor number for every try; the swapper puts a UDP socket there.
    let slot = rustix::io::dup(udp_sender).unwrap();
    let slot_number = slot.as_raw_fd();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if listener.accept().is_ok() {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        scope.spawn(|| {
            let udp = udp_sender.as_raw_fd();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                match round % 3 {
                    0 => write(&bad),
                    1 => write(&inet),
                    _ => write(&good),
                }
                // SAFETY: dup2 onto a descriptor number this test owns.
                unsafe { libc::dup2(udp, slot_number) };
                std::hint::spin_loop();
            }
        });
        for _ in 0..RACE_TRIES {
            let fresh = rustix::net::socket(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                None,
            )
            .unwrap();
            // SAFETY: plain system calls on descriptors and a buffer that live across them.
            unsafe {
                libc::dup2(fresh.as_raw_fd(), slot_number);
                let connected = libc::connect(
                    slot_number,
                    buffer.as_ptr().cast::<libc::sockaddr>(),
                    good.len() as libc::socklen_t,
                );
                if connected == 0 {
                    libc::send(slot_number, b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT);
                }
            }
            write(&good);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
    });
    drop(slot);
    let mut reached_outside = 0;
    while outward.accept().is_ok() {
        reached_outside += 1;
    }
    let mut datagrams = 0;
    let mut byte = [0u8; 8];
    while udp_listener.recv(&mut byte).is_ok() {
        datagrams += 1;
    }
    (accepted.load(Ordering::Relaxed), reached_outside, datagrams)
}

#[test]
fn the_seal_refuses_every_way_out_and_logs_each_with_its_destination() {
    let (dir, _, _) = layout();
    let out = scenario("network", dir.path());
    let has = |line: &str| out.iter().any(|l| l == line);
    assert!(has("seccomp 2"), "{out:?}");
    assert!(has("no_new_privs true"), "{out:?}");
    assert!(has("probe true") && has("loopback true"), "{out:?}");
    assert!(
        has("new udp socket true") && has("udp send_to true"),
        "{out:?}"
    );
    assert!(has("unix true"), "{out:?}");
    assert!(has("unix outside true") && has("sctp true"), "{out:?}");
    assert!(
        out.iter().any(
            |l| l.starts_with("logged connect unix:") && l.ends_with("/elsewhere/outside.sock")
        ),
        "{out:?}"
    );
    assert!(
        has("logged socket new AF_INET SOCK_STREAM socket"),
        "{out:?}"
    );
    assert!(has("child refused true"), "{out:?}");
    assert!(has("logged connect 192.0.2.1:443"), "{out:?}");
    assert!(has("logged connect 127.0.0.1:9"), "{out:?}");
    assert!(
        has("logged socket new AF_INET SOCK_DGRAM socket"),
        "{out:?}"
    );
    assert!(has("logged sendto 198.51.100.7:53"), "{out:?}");
    assert!(
        has("logged connect 203.0.113.9:80"),
        "the child's attempt: {out:?}"
    );
    // Each refusal is logged once; the machine may add its own (bash asking a
    // name-service cache for the user), which are refused and logged too.
    let logged = out.iter().filter(|l| l.starts_with("logged ")).count();
    assert!(logged >= 7, "{out:?}");
    assert!(has(&format!("blocked {logged}")), "{out:?}");
}

#[test]
fn the_allow_list_reaches_its_destinations_and_refuses_every_other_with_the_reason_on_record() {
    let (dir, _, _) = layout();
    let out = scenario("egress", dir.path());
    let has = |line: &str| out.iter().any(|l| l == line);
    for reached in ["tcp", "non-blocking", "child"] {
        assert!(
            has(&format!("{reached} reached true")),
            "{reached}: {out:?}"
        );
    }
    for refused in [
        "other address",
        "other port",
        "lapsed",
        "new udp socket",
        "udp connect",
        "udp sendto",
        "child",
    ] {
        assert!(
            has(&format!("{refused} refused true")),
            "{refused}: {out:?}"
        );
    }
    let logged = |prefix: &str| out.iter().filter(|l| l.starts_with(prefix)).count();
    // Every allowed connection is on record with its purpose: the client's two, the child's.
    assert_eq!(logged("logged allowed 127.0.0.1:"), 3, "{out:?}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("logged allowed") && l.ends_with(" directory")),
        "{out:?}"
    );
    assert!(logged("logged connect 127.0.0.2:") >= 2, "{out:?}");
    assert!(logged("logged connect 127.0.0.1:") >= 3, "{out:?}");
    assert!(logged("logged sendto 127.0.0.1:") >= 1, "{out:?}");
    assert!(
        has("logged socket new AF_INET SOCK_DGRAM socket"),
        "{out:?}"
    );
    // Counted by destination for metrics: the three allowed connections to the one service.
    assert!(
        out.iter()
            .any(|l| l.starts_with("counted allowed 127.0.0.1:") && l.ends_with(" 3")),
        "{out:?}"
    );
    assert!(logged("counted refused 127.0.0.2:") >= 1, "{out:?}");
}

#[test]
fn connects_swapped_under_the_seal_never_reach_what_it_did_not_check() {
    let (dir, _, _) = layout();
    let out = scenario("race", dir.path());
    let value = |key: &str| {
        out.iter()
            .find_map(|l| l.strip_prefix(&format!("{key} "))?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{key} missing: {out:?}"))
    };
    // The swaps land: some tries reach the socket inside, and none anything else.
    assert!(value("inside") > 0, "{out:?}");
    assert_eq!(value("outside"), 0, "{out:?}");
    assert_eq!(value("datagrams"), 0, "{out:?}");
}

#[test]
fn a_receive_only_seal_refuses_sends_on_a_socket_it_already_has() {
    let (dir, _, _) = layout();
    let out = scenario("receive-only", dir.path());
    assert!(out.iter().any(|l| l == "udp send true"), "{out:?}");
    assert!(
        out.iter().any(|l| l == "logged sendto 127.0.0.1:9"),
        "{out:?}"
    );
}

#[test]
fn the_fence_keeps_reads_to_what_was_given_where_the_kernel_has_landlock() {
    let (dir, _, _) = layout();
    let out = scenario("files", dir.path());
    if out
        .iter()
        .any(|l| l == &format!("fence {:?}", Fenced::Unsupported))
    {
        eprintln!("this kernel has no Landlock: file rules not tested");
        return;
    }
    for expected in [
        "given true",
        "outside true",
        "symlink true",
        "shadow true",
        "write true",
        "libraries true",
    ] {
        assert!(out.iter().any(|l| l == expected), "{expected}: {out:?}");
    }
}

#[test]
fn a_worker_that_gives_up_writing_still_reads_what_it_was_given() {
    let (dir, _, _) = layout();
    let out = scenario("read-only", dir.path());
    if out
        .iter()
        .any(|l| l == &format!("fence {:?}", Fenced::Unsupported))
    {
        eprintln!("this kernel has no Landlock: file rules not tested");
        return;
    }
    for expected in ["read true", "write true", "exec true"] {
        assert!(out.iter().any(|l| l == expected), "{expected}: {out:?}");
    }
}
