//! The one-way UDP link: a bundle crosses a lossy, reordering, duplicating, corrupting link
//! and arrives byte-identical and verified; bursts are repaired by the carousel; a receiver
//! killed mid-transfer keeps what it decoded; hostile datagrams are counted and dropped.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use airlock_transfer::announce::{Announce, Geometry};
use airlock_transfer::packet::{HEADER_LEN, Header, Kind};
use airlock_transfer::receiver::STATE_DIR;

use crate::support::{Workspace, airlock};

/// A bundle whose weights are `mib` MiB of bytes that repeat nowhere.
fn bundle_of(ws: &Workspace, mib: usize) -> PathBuf {
    let src = ws.safetensors_model(&format!("src-{mib}"));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let weights: Vec<u8> = (0..mib << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(
        src.join("model.safetensors"),
        airlock_testkit::safetensors::build_with_data("w", "U8", &weights),
    )
    .unwrap();
    drop(weights);
    ws.pack(&src, &format!("big-{mib}.airlock"), &[])
}

/// A child process and the address it printed on stderr; the rest of stderr is collected.
struct Spawned {
    child: Child,
    addr: SocketAddr,
    stderr: JoinHandle<String>,
}

fn spawn(cmd: &mut std::process::Command) -> Spawned {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    let stderr = std::thread::spawn(move || {
        let mut rest = line;
        reader.read_to_string(&mut rest).unwrap();
        rest
    });
    Spawned {
        child,
        addr,
        stderr,
    }
}

impl Spawned {
    /// Waits for the exit (killing after `limit`); returns exit code, stdout, stderr.
    fn finish(mut self, limit: Duration) -> (i32, String, String) {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                self.child.kill().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (
            status.code().unwrap_or(-1),
            out,
            self.stderr.join().unwrap(),
        )
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A receiver on `listen` that gives up after `idle` without a useful datagram.
fn receiver(out: &Path, listen: &str, idle: &str) -> Spawned {
    spawn(
        airlock()
            .args(["diode", "receive", "--listen", listen, "--json", "-o"])
            .arg(out)
            .args(["--idle-timeout", idle]),
    )
}

fn relay(to: SocketAddr, impairments: &[&str]) -> Spawned {
    spawn(
        airlock()
            .args([
                "diode",
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--idle",
                "3s",
            ])
            .arg("--to")
            .arg(to.to_string())
            .args(impairments),
    )
}

fn sender(bundle: &Path, to: SocketAddr, extra: &[&str]) -> Child {
    airlock()
        .args(["diode", "send", "--json"])
        .arg(bundle)
        .arg("--to")
        .arg(to.to_string())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn json(text: &str, stderr: &str) -> serde_json::Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}\nstderr: {stderr}"))
}

/// Files are equal, compared a MiB at a time.
fn assert_identical(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    assert_eq!(fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        assert!(
            ba[..n] == bb[..n],
            "{} and {} differ",
            a.display(),
            b.display()
        );
    }
}

/// Sends `bundle` through a relay with `impairments`; returns the receiver's and relay's
/// reports once the receiver is done.
fn transfer(
    ws: &Workspace,
    bundle: &Path,
    out: &str,
    impairments: &[&str],
    send: &[&str],
) -> (serde_json::Value, serde_json::Value) {
    let out = ws.path(out);
    let rx = receiver(&out, "127.0.0.1:0", "20s");
    let link = relay(rx.addr, impairments);
    let mut tx = sender(bundle, link.addr, send);
    let (code, stdout, stderr) = rx.finish(Duration::from_secs(240));
    let _ = tx.kill();
    let _ = tx.wait();
    let (_, relay_out, relay_err) = link.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "receiver failed: {stdout}\n{stderr}");
    let report = json(&stdout, &stderr);
    assert_eq!(report["status"], "received");
    let received = PathBuf::from(report["bundle"].as_str().unwrap());
    assert_eq!(received, out.join("tiny_1.0.0.airlock"));
    assert_identical(bundle, &received);
    ws.verify(&received, &[&"--trust", &ws.public("publisher")])
        .ok();
    assert!(
        !out.join(STATE_DIR)
            .join(format!("{}-1048576", report["digest"].as_str().unwrap()))
            .exists(),
        "the session state is removed once the bundle is in place"
    );
    (report, json(&relay_out, &relay_err))
}

#[test]
fn a_200_mb_bundle_arrives_identical_and_verified_through_loss_reordering_duplication_and_corruption()
 {
    let ws = Workspace::new();
    let bundle = bundle_of(&ws, 200);
    let send = ["--rate", "700M", "--passes", "6"];
    let cases: [(&str, &[&str]); 4] = [
        ("clean", &[]),
        ("loss1", &["--loss", "1%", "--seed", "11"]),
        ("loss5", &["--loss", "5%", "--seed", "12"]),
        (
            "mixed",
            &[
                "--reorder",
                "5%",
                "--duplicate",
                "1%",
                "--corrupt",
                "0.1%",
                "--seed",
                "13",
            ],
        ),
    ];
    for (name, impairments) in cases {
        let (report, link) = transfer(&ws, &bundle, name, impairments, &send);
        assert_eq!(report["missing_blocks"], 0, "{name}");
        match name {
            "loss1" | "loss5" => {
                assert!(
                    link["lost_random"].as_u64().unwrap() > 1000,
                    "{name}: {link}"
                );
                assert!(
                    report["repaired_blocks"].as_u64().unwrap() > 0,
                    "{name}: {report}"
                );
            }
            "mixed" => {
                for what in ["reordered", "duplicated", "corrupted"] {
                    assert!(link[what].as_u64().unwrap() > 0, "{what}: {link}");
                }
                assert!(
                    report["dropped"]["bad_checksum"].as_u64().unwrap_or(0) > 0,
                    "corrupted datagrams are caught by the checksum: {report}"
                );
            }
            _ => {}
        }
    }
}

#[test]
fn a_burst_of_500_lost_datagrams_is_repaired_and_a_longer_one_by_the_next_pass() {
    let ws = Workspace::new();
    let bundle = bundle_of(&ws, 24);
    // 500 in a row, in the middle of the first pass, at the default 5 % overhead.
    let (report, link) = transfer(
        &ws,
        &bundle,
        "burst500",
        &["--burst-at", "4000", "--burst-len", "500"],
        &["--rate", "400M", "--passes", "2"],
    );
    assert_eq!(link["lost_burst"], 500);
    assert_eq!(report["missing_blocks"], 0);

    // 6000 in a row is more than one pass's repair symbols for the blocks it hits: those
    // blocks come complete only from the second pass. One pass is not enough...
    let out = ws.path("burst6000-one-pass");
    let rx = receiver(&out, "127.0.0.1:0", "3s");
    let link = relay(rx.addr, &["--burst-at", "2000", "--burst-len", "6000"]);
    let mut tx = sender(&bundle, link.addr, &["--rate", "400M", "--passes", "1"]);
    tx.wait().unwrap();
    let (code, stdout, stderr) = rx.finish(Duration::from_secs(60));
    link.finish(Duration::from_secs(30));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("stream stopped with"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tiny_1.0.0.airlock.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["status"], "incomplete");
    assert!(report["missing_blocks"].as_u64().unwrap() > 0, "{report}");
    assert!(
        !out.join("tiny_1.0.0.airlock").exists(),
        "no bundle under its final name"
    );

    // ...two passes are.
    let (report, link) = transfer(
        &ws,
        &bundle,
        "burst6000",
        &["--burst-at", "2000", "--burst-len", "6000"],
        &["--rate", "400M", "--passes", "2"],
    );
    assert_eq!(link["lost_burst"], 6000);
    assert_eq!(report["missing_blocks"], 0);
}

fn blocks_on_disk(out: &Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(out.join(STATE_DIR)) else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path().join("blocks.done")).ok())
        .map(|bits| bits.iter().map(|b| b.count_ones()).sum::<u32>())
        .sum()
}

#[test]
fn a_receiver_killed_mid_transfer_keeps_its_decoded_blocks_and_finishes_without_starting_over() {
    let ws = Workspace::new();
    let bundle = bundle_of(&ws, 48);
    let out = ws.path("restart");
    let rx = receiver(&out, "127.0.0.1:0", "20s");
    let port = rx.addr;
    // 48 MiB at 100 Mbit/s: about 4 s a pass, repeated until the test stops it.
    let mut tx = sender(&bundle, port, &["--rate", "100M", "--forever"]);
    let start = Instant::now();
    while blocks_on_disk(&out) < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no blocks synced"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rx.kill();
    let kept = blocks_on_disk(&out);
    assert!((8..49).contains(&kept), "{kept} blocks on disk at the kill");
    assert!(!out.join("tiny_1.0.0.airlock").exists());

    let rx = receiver(&out, &port.to_string(), "20s");
    let (code, stdout, stderr) = rx.finish(Duration::from_secs(120));
    let _ = tx.kill();
    let _ = tx.wait();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report = json(&stdout, &stderr);
    let resumed = report["resumed_blocks"].as_u64().unwrap();
    assert!(resumed >= u64::from(kept), "kept {kept}, resumed {resumed}");
    assert_eq!(
        resumed + report["decoded_blocks"].as_u64().unwrap(),
        report["blocks"].as_u64().unwrap(),
        "the second run decoded only what the first had not: {report}"
    );
    assert_identical(&bundle, &out.join("tiny_1.0.0.airlock"));
}

/// Peak resident memory of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn datagram(
    kind: Kind,
    session: u64,
    tag: [u8; 8],
    block: u32,
    symbol: u32,
    len: usize,
) -> Vec<u8> {
    let filler: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    symbol_datagram(kind, session, tag, block, symbol, &filler)
}

/// A datagram with a valid checksum around `symbol`.
fn symbol_datagram(
    kind: Kind,
    session: u64,
    tag: [u8; 8],
    block: u32,
    symbol: u32,
    bytes: &[u8],
) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN];
    d.extend_from_slice(bytes);
    Header {
        kind,
        session,
        digest_tag: tag,
        block,
        symbol,
    }
    .seal(&mut d);
    d
}

#[test]
fn hostile_datagrams_are_counted_and_dropped_and_memory_stays_bounded() {
    let ws = Workspace::new();
    let bundle = bundle_of(&ws, 4);
    let out = ws.path("hostile");
    let rx = receiver(&out, "127.0.0.1:0", "20s");
    let pid = rx.child.id();
    let to = rx.addr;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pace = |i: usize| {
        if i.is_multiple_of(256) {
            std::thread::sleep(Duration::from_millis(1));
        }
    };

    // A session announced by someone with the real bundle's model.sig: accepted, so its
    // data can be forged with the right session id.
    let (signature, digest, size) =
        airlock_transfer::sender::bundle_identity(&bundle, &airlock_bundle::Limits::default())
            .unwrap();
    let digest = digest.0;
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&digest[..8]);
    let t = 1440usize;
    let forged_session = 0xF0F0_F0F0_0000_0001u64;
    let announce = Announce {
        session: forged_session,
        geometry: Geometry {
            size,
            block_size: 1 << 20,
            symbol_size: t as u16,
        },
        digest,
        signature: signature.clone(),
    }
    .encode();
    let symbols = airlock_transfer::fec::encode_object(&announce, t, 0, 8);
    for (esi, s) in &symbols {
        socket
            .send_to(
                &symbol_datagram(
                    Kind::Announce,
                    forged_session,
                    tag,
                    announce.len() as u32,
                    *esi,
                    s,
                ),
                to,
            )
            .unwrap();
    }
    // An announce whose digest is not that of its manifest: refused.
    let liar = 0xBAD0_0000_0000_0002u64;
    let mut lie = Announce::decode(&announce).unwrap();
    lie.session = liar;
    lie.digest[5] ^= 1;
    let lie = lie.encode();
    let mut lie_tag = tag;
    lie_tag[5] ^= 1;
    for (esi, s) in airlock_transfer::fec::encode_object(&lie, t, 0, 8) {
        socket
            .send_to(
                &symbol_datagram(Kind::Announce, liar, lie_tag, lie.len() as u32, esi, &s),
                to,
            )
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));

    let mut rng = 0x1234_5678_9ABC_DEF1u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..20_000usize {
        let r = next();
        let d = match i % 10 {
            // Garbage of any size up to 9000 bytes, the largest UDP datagram, tiny ones.
            0 => (0..(r % 9000) as usize).map(|_| next() as u8).collect(),
            1 if i % 20 == 1 => vec![b'A'; 65_507],
            1 => vec![b'A'; (r % 40) as usize],
            // Valid checksums, sessions nobody announced.
            2 => datagram(Kind::Data, r, tag, 0, 0, t),
            // Announce symbols claiming huge or tiny lengths, from ever-new sessions.
            3 => datagram(Kind::Announce, r, tag, u32::MAX, 0, t),
            4 => datagram(Kind::Announce, r, tag, 16 << 20, (r % 50) as u32, t),
            // The accepted session with a wrong digest, a block past the end, a wrong
            // symbol size, a forged symbol id, an overrunning hash table.
            5 => datagram(Kind::Data, forged_session, [9; 8], 0, 0, t),
            6 => datagram(
                Kind::Data,
                forged_session,
                tag,
                1 + (r as u32 % 1000) + 4,
                0,
                t,
            ),
            7 => datagram(Kind::Data, forged_session, tag, 0, 1, t + 8),
            8 => {
                // A valid checksum over a symbol id of 2^24: sealed by hand, as seal()
                // writes whatever it is given.
                datagram(Kind::Data, forged_session, tag, 0, 1 << 24, t)
            }
            _ => {
                let mut table = vec![0u8; t];
                table[..2].copy_from_slice(&u16::MAX.to_be_bytes());
                symbol_datagram(Kind::Hashes, forged_session, tag, 0, 0, &table)
            }
        };
        let _ = socket.send_to(&d, to);
        pace(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let peak_during_flood = peak_rss_kib(pid).unwrap();

    // The real sender: a new session for the same bundle takes over and finishes.
    let mut tx = sender(&bundle, to, &["--rate", "200M", "--passes", "3"]);
    let (code, stdout, stderr) = rx.finish(Duration::from_secs(60));
    let _ = tx.kill();
    let _ = tx.wait();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report = json(&stdout, &stderr);
    assert_identical(&bundle, &out.join("tiny_1.0.0.airlock"));
    let dropped = &report["dropped"];
    for reason in [
        "too_short",
        "too_long",
        "bad_magic",
        "unknown_session",
        "bad_announce_geometry",
        "refused_announce",
        "wrong_digest",
        "block_out_of_range",
        "wrong_size",
        "symbol_id_out_of_range",
        "bad_hash_table",
    ] {
        assert!(
            dropped[reason].as_u64().unwrap_or(0) > 0,
            "{reason} not counted: {report}"
        );
    }
    assert!(
        report["refused_sessions"]
            .to_string()
            .contains("not the digest of the signed manifest"),
        "{report}"
    );
    assert_eq!(report["session_changes"], 1, "{report}");
    assert!(
        peak_during_flood < 200 * 1024,
        "receiver peaked at {peak_during_flood} KiB under the flood"
    );
}
