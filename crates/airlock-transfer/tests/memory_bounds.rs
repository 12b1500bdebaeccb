//! The receiver's memory under a forged stream, measured in-process from `/proc/self/status`
//! (this file holds one test, so nothing else runs in the process meanwhile).
//!
//! The stream is the security finding and worse: the announce of 2^32 − 1 blocks of 64 bytes
//! carrying a genuine `model.sig` (which made the receiver grow from 20 to 544 MB and create a
//! 256 GiB sparse `bundle.part`), announces whose size disagrees with the signed manifest, and
//! then, for a session accepted with the genuine geometry, hash tables and data naming blocks
//! past the end, overrunning tables, tables and symbols for every real block, and a flood of
//! fresh session ids. `docs/transfer-protocol.md` ("Memory bounds") states the ceiling.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use airlock_bundle::NoProgress;
use airlock_transfer::Error;
use airlock_transfer::announce::{Geometry, MAX_ANNOUNCE_LEN, MIN_BLOCK_SIZE};
use airlock_transfer::net::Socket;
use airlock_transfer::packet::{HASH_ENTRY_LEN, Kind, write_hash_table};
use airlock_transfer::receiver::{self, ReceiveOptions, STATE_DIR};

use common::{Rng, announce_datagrams, datagram, files_under, genuine_bundle, status_kib};

/// Symbol size at MTU 1500.
const T: usize = 1440;
/// Forged datagrams after the announces.
const FLOOD: usize = 300_000;
/// The ceiling on the receiver's peak resident memory above its idle baseline (see
/// `docs/transfer-protocol.md`, "Memory bounds"). Measured growth is 2.6 to 2.8 MiB, about
/// what the 17 real blocks may hold while gathered; a table that grew with the traffic would
/// pass this within the first thousands of datagrams.
const CEILING_KIB: u64 = 8 << 10;

#[test]
fn a_forged_stream_keeps_the_receivers_peak_memory_within_8_mib_of_idle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 1 << 20);
    let out = dir.path().join("out");
    let mut options = ReceiveOptions::new(out.clone());
    options.idle_timeout = Duration::from_secs(2);
    let socket = Socket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let to = socket.local_addr().unwrap();
    let receiving = std::thread::spawn(move || receiver::receive(&socket, &options, &NoProgress));
    std::thread::sleep(Duration::from_millis(300));
    let idle = status_kib("VmRSS");
    // Resets VmHWM to the current RSS, so the peak read at the end is the receiver's alone
    // and not the packing's above.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0u64;
    let mut send = |d: &[u8]| {
        tx.send_to(d, to).unwrap();
        sent += 1;
        // Paced so loopback keeps up and the receiver sees the whole stream.
        if sent.is_multiple_of(128) {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let tag = bundle.tag();
    // The finding, then a size off by one block.
    let finding = bundle.announce(
        0xF1,
        Geometry {
            size: u64::from(u32::MAX) * 64,
            block_size: 64,
            symbol_size: 64,
        },
    );
    let genuine = Geometry {
        size: bundle.size,
        block_size: MIN_BLOCK_SIZE,
        symbol_size: T as u16,
    };
    let off_by_one_block = bundle.announce(
        0xF2,
        Geometry {
            size: bundle.size + u64::from(MIN_BLOCK_SIZE),
            ..genuine
        },
    );
    for d in announce_datagrams(&finding)
        .iter()
        .chain(&announce_datagrams(&off_by_one_block))
    {
        send(d);
    }
    // A session accepted with the genuine geometry: its datagrams can then be forged.
    let session = 0xF3;
    for d in &announce_datagrams(&bundle.announce(session, genuine)) {
        send(d);
    }
    std::thread::sleep(Duration::from_millis(200));

    let blocks = genuine.blocks();
    let per_table = (T - 2) / HASH_ENTRY_LEN;
    let mut rng = Rng(0x5EED_0000_0000_0001);
    let mut table = vec![0u8; T];
    let symbol = vec![0x5Au8; T];
    let start = Instant::now();
    for i in 0..FLOOD {
        let r = rng.next();
        let d = match i % 8 {
            0 => {
                let entries: Vec<_> = (0..per_table as u32)
                    .map(|j| (blocks as u32 + j + (r as u32 % 1_000_000), [j as u8; 16]))
                    .collect();
                write_hash_table(&mut table, &entries);
                datagram(Kind::Hashes, session, tag, 0, 0, &table)
            }
            1 => {
                table.fill(0);
                table[..2].copy_from_slice(&u16::MAX.to_be_bytes());
                datagram(Kind::Hashes, session, tag, 0, 0, &table)
            }
            2 => {
                let entries: Vec<_> = (0..per_table)
                    .map(|j| ((rng.next() % blocks) as u32, [(r as u8) ^ (j as u8); 16]))
                    .collect();
                write_hash_table(&mut table, &entries);
                datagram(Kind::Hashes, session, tag, 0, 0, &table)
            }
            3 => datagram(
                Kind::Data,
                session,
                tag,
                blocks as u32 + r as u32 % 1_000_000,
                0,
                &symbol,
            ),
            4 => {
                let block = (r % blocks) as u32;
                datagram(
                    Kind::Data,
                    session,
                    tag,
                    block,
                    (rng.next() % (1 << 24)) as u32,
                    &symbol,
                )
            }
            5 => datagram(Kind::Data, r, tag, 0, 0, &symbol),
            6 => datagram(
                Kind::Announce,
                r,
                tag,
                MAX_ANNOUNCE_LEN as u32,
                (r % 64) as u32,
                &symbol,
            ),
            // Datagrams of the refused session, and source symbols of real blocks: with the
            // forged tables above, whole blocks go to the writer and fail their check value.
            _ if i % 16 == 7 => datagram(Kind::Data, 0xF1, tag, 0, 0, &symbol),
            _ => {
                let k = u64::from(MIN_BLOCK_SIZE).div_ceil(T as u64);
                datagram(
                    Kind::Data,
                    session,
                    tag,
                    (r % blocks) as u32,
                    (rng.next() % k) as u32,
                    &symbol,
                )
            }
        };
        send(&d);
    }
    let flood_seconds = start.elapsed().as_secs_f64();

    let Err(Error::Incomplete(why)) = receiving.join().unwrap() else {
        panic!("the receiver did not stop for want of the bundle");
    };
    let peak = status_kib("VmHWM");
    let growth = peak.saturating_sub(idle);
    eprintln!(
        "receiver memory: idle VmRSS {idle} KiB, peak VmHWM {peak} KiB (reset: {peak_reset}), growth {growth} KiB; {sent} datagrams in {flood_seconds:.1}s"
    );

    // The stream reached the receiver and was dropped for the reasons it was forged for.
    let report_path = out.join("tiny_1.0.0.airlock.report.json");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&report_path).unwrap_or_else(|e| panic!("{why}: {e}")),
    )
    .unwrap();
    assert!(
        report["datagrams"].as_u64().unwrap() * 10 >= sent * 9,
        "{report}"
    );
    for reason in [
        "block_out_of_range",
        "bad_hash_table",
        "unknown_session",
        "announce_evicted",
        "refused_announce",
        "refused_session",
        "block_hash_mismatch",
    ] {
        assert!(
            report["dropped"][reason].as_u64().unwrap_or(0) > 0,
            "{reason}: {report}"
        );
    }
    let refusals = report["refused_sessions"].to_string();
    assert!(refusals.contains("block size 64 is outside"), "{refusals}");
    assert!(
        refusals.contains(&format!(
            "the signed manifest makes the bundle {} bytes",
            bundle.size
        )),
        "{refusals}"
    );
    // On disk: one session, its bundle.part exactly the signed size.
    let parts: Vec<_> = files_under(&out.join(STATE_DIR))
        .into_iter()
        .filter(|p| p.ends_with("bundle.part"))
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(std::fs::metadata(&parts[0]).unwrap().len(), bundle.size);

    assert!(
        peak_reset,
        "cannot reset VmHWM through /proc/self/clear_refs; the peak would include packing"
    );
    assert!(
        growth < CEILING_KIB,
        "receiver grew by {growth} KiB under the forged stream (ceiling {CEILING_KIB} KiB)"
    );
}
