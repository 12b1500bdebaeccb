//! The receiver against forged traffic: every datagram goes through `Receiving::handle`, as
//! the socket loop would hand it over, and what the receiver then holds is inspected.

use std::path::{Path, PathBuf};

use airlock_bundle::manifest::Statement;
use airlock_bundle::signature::SigstoreBundle;
use airlock_bundle::{NoProgress, PrivateKey};

use super::admission::{ANNOUNCE_BUDGET, MAX_CANDIDATES, admit};
use super::check_values::MAX_CHECK_VALUES;
use super::*;
use crate::announce::{Announce, AnnounceError, Geometry, GeometryError, MIN_BLOCK_SIZE};
use crate::fec::encode_object;
use crate::layout::LayoutError;
use crate::packet::{BlockHash, HASH_ENTRY_LEN, write_hash_table};
use crate::test_support::{Genuine, genuine_bundle};

/// Symbol size at MTU 1500.
const T: usize = 1440;
/// A forger's session id.
const FORGED: u64 = 0xF0F0_F0F0_0000_0001;

fn receiving(options: &ReceiveOptions) -> Receiving<'_> {
    let listen = SocketAddr::from(([127, 0, 0, 1], 7700));
    Receiving::new(listen, options, &NoProgress).unwrap()
}

fn datagram(kind: Kind, session: u64, tag: [u8; 8], block: u32, esi: u32, bytes: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN];
    d.extend_from_slice(bytes);
    Header {
        kind,
        session,
        digest_tag: tag,
        block,
        symbol: esi,
    }
    .seal(&mut d);
    d
}

fn tag_of(digest: &[u8; 32]) -> [u8; 8] {
    let mut tag = [0; 8];
    tag.copy_from_slice(&digest[..8]);
    tag
}

/// An announce carrying the genuine model.sig, with whatever geometry the forger chose.
fn announce(bundle: &Genuine, session: u64, geometry: Geometry) -> Announce {
    Announce {
        session,
        geometry,
        digest: bundle.digest,
        signature: bundle.signature.clone(),
    }
}

/// The geometry a genuine sender uses, in the smallest blocks allowed (more blocks to forge).
fn genuine_geometry(bundle: &Genuine) -> Geometry {
    Geometry {
        size: bundle.size,
        block_size: MIN_BLOCK_SIZE,
        symbol_size: T as u16,
    }
}

/// The announce's datagrams: its source symbols and as many repair symbols.
fn announce_datagrams(announce: &Announce) -> Vec<Vec<u8>> {
    let body = announce.encode();
    let t = usize::from(announce.geometry.symbol_size);
    let k = body.len().div_ceil(t) as u32;
    encode_object(&body, t, 0, k.max(4))
        .into_iter()
        .map(|(esi, symbol)| {
            datagram(
                Kind::Announce,
                announce.session,
                tag_of(&announce.digest),
                body.len() as u32,
                esi,
                &symbol,
            )
        })
        .collect()
}

/// The header the announce's datagrams carry, for checking the announce alone.
fn announce_header(announce: &Announce) -> Header {
    Header {
        kind: Kind::Announce,
        session: announce.session,
        digest_tag: tag_of(&announce.digest),
        block: announce.encode().len() as u32,
        symbol: 0,
    }
}

fn feed(rx: &mut Receiving<'_>, datagrams: impl IntoIterator<Item = Vec<u8>>) -> usize {
    let mut count = 0;
    for d in datagrams {
        rx.handle(&d).unwrap();
        count += 1;
    }
    count
}

fn dropped(rx: &Receiving<'_>, reason: &str) -> u64 {
    rx.report.dropped.get(reason).copied().unwrap_or(0)
}

/// Every file and directory under the receiver's state directory.
fn state_entries(options: &ReceiveOptions) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.clone());
            if path.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&options.out.join(STATE_DIR), &mut out);
    out
}

/// Has `rx` accept the forger's announce of the genuine bundle; returns the block count.
fn accept_forged_session(rx: &mut Receiving<'_>, bundle: &Genuine) -> u64 {
    let geometry = genuine_geometry(bundle);
    feed(rx, announce_datagrams(&announce(bundle, FORGED, geometry)));
    assert!(rx.active.is_some(), "{:?}", rx.report.refused_sessions);
    geometry.blocks()
}

/// A check value made of one random number.
fn hash(random: u64) -> BlockHash {
    let mut hash = [0; 16];
    hash[..8].copy_from_slice(&random.to_be_bytes());
    hash
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn the_findings_announce_of_2_pow_32_minus_1_blocks_of_64_bytes_is_refused_before_anything_is_written()
 {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 100_000);
    let options = ReceiveOptions::new(dir.path().join("out"));
    let forged = announce(
        &bundle,
        FORGED,
        Geometry {
            size: u64::from(u32::MAX) * 64,
            block_size: 64,
            symbol_size: 64,
        },
    );
    assert!(matches!(
        admit(&announce_header(&forged), &forged.encode(), &options),
        Err(Refusal::Announce(AnnounceError::Geometry(
            GeometryError::BlockSize { block_size: 64 }
        )))
    ));

    let mut rx = receiving(&options);
    let sent = feed(&mut rx, announce_datagrams(&forged));
    assert!(sent < 200, "the attack is a few dozen datagrams ({sent})");
    assert!(rx.active.is_none());
    assert_eq!(dropped(&rx, "refused_announce"), 1);
    assert_eq!(
        rx.report.refused_sessions,
        [format!(
            "{FORGED:016x}: block size 64 is outside {MIN_BLOCK_SIZE}..={}",
            crate::announce::MAX_BLOCK_SIZE
        )]
    );
    assert_eq!(state_entries(&options), Vec::<PathBuf>::new());
    // Its datagrams are then dropped unread, the rest of its announce included.
    let unread = dropped(&rx, "refused_session");
    assert!(unread > 0);
    feed(
        &mut rx,
        [datagram(
            Kind::Data,
            FORGED,
            tag_of(&bundle.digest),
            7,
            0,
            &[0; 64],
        )],
    );
    assert_eq!(dropped(&rx, "refused_session"), unread + 1);
}

#[test]
fn an_announced_size_that_disagrees_with_the_signed_manifest_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 100_000);
    let mut options = ReceiveOptions::new(dir.path().join("out"));
    // Not --max-size but the signed facts are what refuse these.
    options.max_size = u64::MAX;
    let block = u64::from(MIN_BLOCK_SIZE);
    for announced in [
        bundle.size + 1,
        bundle.size - 1,
        bundle.size + 512,
        1 << 38,
        u64::from(u32::MAX) * block,
    ] {
        let mut geometry = genuine_geometry(&bundle);
        geometry.size = announced;
        let forged = announce(&bundle, FORGED, geometry);
        let refusal = admit(&announce_header(&forged), &forged.encode(), &options).unwrap_err();
        match &refusal {
            Refusal::SizeDisagrees {
                announced: a,
                announced_blocks,
                block_size,
                signed,
            } => {
                assert_eq!(*a, announced);
                assert_eq!(*announced_blocks, announced.div_ceil(block));
                assert_eq!(*block_size, MIN_BLOCK_SIZE);
                assert_eq!(*signed, bundle.size);
            }
            other => panic!("{announced}: {other:?}"),
        }
        let line = refusal.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(&format!("announce says {announced} bytes"))
                && line.contains(&format!("makes the bundle {} bytes", bundle.size)),
            "{line}"
        );

        let mut rx = receiving(&options);
        feed(&mut rx, announce_datagrams(&forged));
        assert!(rx.active.is_none());
        assert_eq!(
            rx.report.refused_sessions,
            [format!("{FORGED:016x}: {line}")]
        );
        assert_eq!(state_entries(&options), Vec::<PathBuf>::new());
    }
}

#[test]
fn an_announce_over_max_size_is_refused_by_its_announced_size() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 100_000);
    let mut options = ReceiveOptions::new(dir.path().join("out"));
    options.max_size = bundle.size - 1;
    let genuine = announce(&bundle, FORGED, genuine_geometry(&bundle));
    assert!(matches!(
        admit(&announce_header(&genuine), &genuine.encode(), &options),
        Err(Refusal::OverMaxSize { size, max_size }) if size == bundle.size && max_size == bundle.size - 1
    ));
}

#[test]
fn a_manifest_that_signs_no_file_sizes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = ReceiveOptions::new(dir.path().join("out"));
    let statement = Statement::for_files(
        "m",
        [("w.safetensors", airlock_bundle::Sha256Digest::of(b"w"))],
        None,
    );
    let payload = statement.canonical_bytes().unwrap();
    let key = PrivateKey::generate().unwrap();
    let signature = SigstoreBundle::sign(&payload, &key).to_bytes().unwrap();
    let forged = Announce {
        session: FORGED,
        geometry: Geometry {
            size: 10 << 20,
            block_size: 1 << 20,
            symbol_size: T as u16,
        },
        digest: airlock_bundle::Sha256Digest::of(&payload).0,
        signature,
    };
    let refusal = admit(&announce_header(&forged), &forged.encode(), &options).unwrap_err();
    assert!(
        matches!(
            &refusal,
            Refusal::Layout(LayoutError::UnsizedFile { path }) if path == "w.safetensors"
        ),
        "{refusal:?}"
    );
}

#[test]
fn the_genuine_announce_is_admitted_and_everything_is_sized_by_the_signed_size() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 1 << 20);
    let options = ReceiveOptions::new(dir.path().join("out"));
    let mut rx = receiving(&options);
    let blocks = accept_forged_session(&mut rx, &bundle);
    let Some(active) = rx.active.as_ref() else {
        panic!("not accepted");
    };
    let held = active.held();
    assert_eq!(held.bitmap_bytes as u64, blocks.div_ceil(8));
    assert_eq!(held.check_value_capacity as u64, blocks);
    assert_eq!(
        std::fs::metadata(active.dir.join("bundle.part"))
            .unwrap()
            .len(),
        bundle.size
    );
}

#[test]
fn forged_hash_tables_for_an_accepted_session_are_dropped_counted_and_bounded_by_the_block_count() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 1 << 20);
    let options = ReceiveOptions::new(dir.path().join("out"));
    let mut rx = receiving(&options);
    let blocks = accept_forged_session(&mut rx, &bundle);
    let tag = tag_of(&bundle.digest);
    let per_table = (T - 2) / HASH_ENTRY_LEN;
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut table = vec![0u8; T];

    // Tables naming blocks past the end, alone or among genuine-looking entries.
    for i in 0..1000u32 {
        let entries: Vec<(u32, BlockHash)> = (0..per_table as u32)
            .map(|j| {
                let block = if j == i % per_table as u32 {
                    blocks as u32 + (rng.next() as u32 % (u32::MAX - blocks as u32))
                } else {
                    (rng.next() % blocks) as u32
                };
                (block, [j as u8; 16])
            })
            .collect();
        write_hash_table(&mut table, &entries);
        feed(&mut rx, [datagram(Kind::Hashes, FORGED, tag, 0, 0, &table)]);
    }
    assert_eq!(dropped(&rx, "block_out_of_range"), 1000);
    let Some(active) = rx.active.as_ref() else {
        panic!("session lost");
    };
    assert_eq!(active.held().check_values, 0, "no entry of those was taken");

    // Tables whose count overruns the datagram.
    table.fill(0);
    table[..2].copy_from_slice(&u16::MAX.to_be_bytes());
    for _ in 0..1000 {
        feed(&mut rx, [datagram(Kind::Hashes, FORGED, tag, 0, 0, &table)]);
    }
    assert_eq!(dropped(&rx, "bad_hash_table"), 1000);

    // Tables of valid blocks with ever-new values: held once per block at most.
    for _ in 0..20_000 {
        let entries: Vec<(u32, BlockHash)> = (0..per_table)
            .map(|_| ((rng.next() % blocks) as u32, hash(rng.next())))
            .collect();
        write_hash_table(&mut table, &entries);
        feed(&mut rx, [datagram(Kind::Hashes, FORGED, tag, 0, 0, &table)]);
    }
    let Some(active) = rx.active.as_ref() else {
        panic!("session lost");
    };
    let held = active.held();
    assert!(held.check_values as u64 <= blocks, "{held:?}");
    assert!(held.check_value_capacity <= MAX_CHECK_VALUES);
}

#[test]
fn forged_data_for_an_accepted_session_is_dropped_counted_and_bounded_by_the_block_count() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 1 << 20);
    let options = ReceiveOptions::new(dir.path().join("out"));
    let mut rx = receiving(&options);
    let blocks = accept_forged_session(&mut rx, &bundle);
    let tag = tag_of(&bundle.digest);
    let mut rng = Rng(0xDEAD_BEEF_0000_0001);
    let symbol = vec![0x5Au8; T];

    for i in 0..1000u32 {
        let past_end = blocks as u32 + i * 4_000_000;
        feed(
            &mut rx,
            [datagram(Kind::Data, FORGED, tag, past_end, 0, &symbol)],
        );
    }
    assert_eq!(dropped(&rx, "block_out_of_range"), 1000);
    feed(
        &mut rx,
        [datagram(Kind::Data, FORGED, [9; 8], 0, 0, &symbol)],
    );
    assert_eq!(dropped(&rx, "wrong_digest"), 1);
    feed(
        &mut rx,
        [datagram(Kind::Data, FORGED, tag, 0, 0, &symbol[..T - 8])],
    );
    assert_eq!(dropped(&rx, "wrong_size"), 1);
    let Some(active) = rx.active.as_ref() else {
        panic!("session lost");
    };
    assert_eq!(active.held().in_flight, 0);

    // Repair symbols with any id, for every block: gathered, but never more than each
    // block can use (K + 16 repair symbols), and only for blocks that exist.
    for _ in 0..200_000 {
        let block = (rng.next() % blocks) as u32;
        let esi = (rng.next() % (1 << 24)) as u32;
        feed(
            &mut rx,
            [datagram(Kind::Data, FORGED, tag, block, esi, &symbol)],
        );
    }
    let Some(active) = rx.active.as_ref() else {
        panic!("session lost");
    };
    let held = active.held();
    let k = u64::from(MIN_BLOCK_SIZE).div_ceil(T as u64);
    let most_per_block = k * T as u64 + (k + 16) * (T as u64 + 32);
    assert!(held.in_flight as u64 <= blocks, "{held:?}");
    assert!(
        held.in_flight_bytes as u64 <= blocks * most_per_block,
        "{held:?}"
    );
    assert_eq!(held.bitmap_bytes as u64, blocks.div_ceil(8));
}

#[test]
fn a_flood_of_session_ids_holds_a_bounded_number_of_announces_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let options = ReceiveOptions::new(dir.path().join("out"));
    let mut rx = receiving(&options);
    let mut rng = Rng(0x0BAD_5EED_0000_0001);
    let symbol = vec![0xA5u8; T];
    // Announces claiming the largest length, each from a new session, one symbol each.
    for _ in 0..20_000 {
        let session = rng.next();
        let esi = (rng.next() % 100) as u32;
        let len = crate::announce::MAX_ANNOUNCE_LEN as u32;
        feed(
            &mut rx,
            [datagram(Kind::Announce, session, [1; 8], len, esi, &symbol)],
        );
        assert!(rx.candidates.len() <= MAX_CANDIDATES);
        assert!(rx.candidates.reserved() <= ANNOUNCE_BUDGET);
    }
    assert!(dropped(&rx, "announce_evicted") > 19_000);
    // Complete announces of garbage, each from a new session: refused and remembered, up to
    // a count.
    for _ in 0..5_000 {
        feed(
            &mut rx,
            [datagram(
                Kind::Announce,
                rng.next(),
                [1; 8],
                200,
                0,
                &symbol,
            )],
        );
        assert!(rx.refused.len() <= REFUSED_REMEMBERED);
        assert!(rx.report.refused_sessions.len() <= REFUSALS_REPORTED);
    }
    assert_eq!(dropped(&rx, "refused_announce"), 5_000);
    assert!(
        rx.report.refused_sessions[0].ends_with(": announce hash does not match its contents"),
        "{:?}",
        rx.report.refused_sessions
    );
    assert!(rx.active.is_none());
    assert_eq!(state_entries(&options), Vec::<PathBuf>::new());
}
