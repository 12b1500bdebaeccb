//! `airlock diode send`: a paced carousel of RaptorQ-coded blocks.
//!
//! Blocks are coded in groups of `interleave` blocks by a pool of encoder threads and sent in
//! order by one thread. Within a group the symbols are sent round-robin across its blocks, so
//! a burst of `n` lost datagrams costs each block about `n / interleave` symbols, which its
//! repair symbols cover. Every pass sends each block's source symbols (a receiver that lost
//! nothing decodes by copying) and repair symbols with ids not used in earlier passes (a
//! receiver that kept part of a block gains new information).

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use airlock_bundle::signature::SigstoreBundle;
use airlock_bundle::{Bundle, Layout, Limits, Manifest, Progress, Sha256Digest};
use rand_core::{OsRng, RngCore as _};

use crate::announce::{Announce, Geometry, MAX_ANNOUNCE_LEN};
use crate::net::Socket;
use crate::packet::{
    BlockHash, HASH_ENTRY_LEN, HEADER_LEN, Header, Kind, MAX_SYMBOL_ID, MAX_SYMBOL_SIZE,
    MIN_SYMBOL_SIZE, SYMBOL_ALIGNMENT, block_hash, write_hash_table,
};
use crate::{Error, Result, fec, layout};

/// Bytes of IPv4 + UDP headers, counted in the link rate.
const IPV4_UDP: usize = 28;
/// Bytes of IPv6 + UDP headers.
const IPV6_UDP: usize = 48;
/// Copies of each group's block-hash table (first, middle, last of the group).
const HASH_COPIES: u32 = 3;

/// How to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Where the datagrams go (the diode's input, or a relay).
    pub to: SocketAddr,
    /// Link rate in bits per second, IP and UDP headers included; `None` sends unpaced.
    pub rate: Option<u64>,
    /// Repair symbols per pass as a fraction of source symbols (0.05 = 5 %).
    pub overhead: f64,
    /// Carousel passes; `None` repeats until the process is stopped.
    pub passes: Option<u32>,
    /// Link MTU: the largest IP packet, headers included.
    pub mtu: usize,
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks whose symbols are interleaved.
    pub interleave: u32,
}

impl SendOptions {
    /// Defaults for a 1 Gbit/s diode: 800 Mbit/s, 5 % repair, one pass, 1500-byte MTU.
    pub fn new(to: SocketAddr) -> SendOptions {
        SendOptions {
            to,
            rate: Some(800_000_000),
            overhead: 0.05,
            passes: Some(1),
            mtu: 1500,
            block_size: 1 << 20,
            interleave: 16,
        }
    }

    fn ip_overhead(&self) -> usize {
        if self.to.is_ipv4() {
            IPV4_UDP
        } else {
            IPV6_UDP
        }
    }

    /// The symbol size that fills one datagram of the MTU.
    pub fn symbol_size(&self) -> Result<usize> {
        let room = self
            .mtu
            .saturating_sub(self.ip_overhead() + HEADER_LEN)
            .min(MAX_SYMBOL_SIZE);
        let symbol = room - room % SYMBOL_ALIGNMENT;
        if symbol < MIN_SYMBOL_SIZE {
            return Err(Error::Usage(format!(
                "MTU {} leaves no room for a {MIN_SYMBOL_SIZE}-byte symbol",
                self.mtu
            )));
        }
        Ok(symbol)
    }

    fn check(&self) -> Result<()> {
        if !(0.0..=10.0).contains(&self.overhead) || self.overhead.is_nan() {
            return Err(Error::Usage(format!(
                "overhead {} is outside 0..=1000 %",
                self.overhead
            )));
        }
        if self.passes == Some(0) {
            return Err(Error::Usage("--passes must be at least 1".into()));
        }
        if self.rate == Some(0) {
            return Err(Error::Usage("--rate must be above zero".into()));
        }
        if self.interleave == 0 || self.interleave > 256 {
            return Err(Error::Usage(format!(
                "interleave {} is outside 1..=256",
                self.interleave
            )));
        }
        Ok(())
    }
}

/// What a send did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SendReport {
    /// The session id, in hex as receivers print it.
    pub session: String,
    /// SHA-256 of the signed manifest, hex.
    pub digest: String,
    /// Bundle bytes.
    pub size: u64,
    /// Blocks per pass.
    pub blocks: u64,
    /// Symbol bytes per datagram.
    pub symbol_size: usize,
    /// Passes completed.
    pub passes: u32,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes on the link, IP and UDP headers included.
    pub wire_bytes: u64,
    /// Seconds spent sending.
    pub seconds: f64,
}

/// Reads the bundle's identity: raw model.sig, the digest of its signed payload, and its size,
/// which must be the size that payload implies (receivers refuse any other).
pub fn bundle_identity(path: &Path, limits: &Limits) -> Result<(Vec<u8>, Sha256Digest, u64)> {
    let bundle = Bundle::open(path, limits)?;
    if bundle.layout() != Layout::Tar {
        return Err(Error::Usage(format!(
            "{} is not a bundle tar; diode send works on .airlock files",
            path.display()
        )));
    }
    let limit = limits
        .max_signature_bytes
        .min(MAX_ANNOUNCE_LEN as u64 - 4096);
    let signature = bundle
        .read_small("model.sig", limit)?
        .ok_or(airlock_bundle::Error::Unsigned)?;
    let payload = SigstoreBundle::parse(&signature, limits)?.payload()?;
    let manifest = Manifest::parse(payload, limits)?;
    let signed =
        layout::bundle_size(signature.len() as u64, &manifest).map_err(|source| Error::Layout {
            path: path.to_owned(),
            source,
        })?;
    let size = std::fs::metadata(path).map_err(Error::io(path))?.len();
    if size != signed {
        return Err(Error::BundleSizeMismatch {
            path: path.to_owned(),
            actual: size,
            signed,
        });
    }
    Ok((signature, manifest.digest, size))
}

/// Sends the bundle at `path`, pass after pass, and returns when the last pass is out.
pub fn send(
    path: &Path,
    options: &SendOptions,
    limits: &Limits,
    progress: &dyn Progress,
) -> Result<SendReport> {
    options.check()?;
    let symbol_size = options.symbol_size()?;
    let (signature, digest, size) = bundle_identity(path, limits)?;
    let geometry = Geometry {
        size,
        block_size: options.block_size,
        symbol_size: symbol_size as u16,
    };
    geometry.check()?;
    let announce = Announce {
        session: OsRng.next_u64(),
        geometry,
        digest: digest.0,
        signature,
    };
    let file = File::open(path).map_err(Error::io(path))?;
    let socket =
        Socket::for_sending_to(options.to).map_err(Error::net("cannot open a UDP socket"))?;

    let plan = Plan::new(&announce, options);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let start = Instant::now();
    let mut report = SendReport {
        session: format!("{:016x}", announce.session),
        digest: digest.to_hex(),
        size,
        blocks: geometry.blocks(),
        symbol_size,
        passes: 0,
        datagrams: 0,
        wire_bytes: 0,
        seconds: 0.0,
    };
    let result = std::thread::scope(|scope| -> Result<()> {
        let mut queues: Vec<Receiver<Result<Group>>> = Vec::new();
        let mut recycle: Vec<SyncSender<Vec<u8>>> = Vec::new();
        for worker in 0..workers {
            let (tx, rx) = sync_channel(1);
            let (give_back, take_back) = sync_channel(2);
            queues.push(rx);
            recycle.push(give_back);
            let (plan, file) = (&plan, &file);
            scope.spawn(move || encode_jobs(plan, file, worker, workers, &tx, &take_back));
        }
        let mut link = Link {
            socket: &socket,
            to: options.to,
            segment: HEADER_LEN + symbol_size,
            pacer: Pacer::new(options.rate),
            ip_overhead: options.ip_overhead(),
            report: &mut report,
        };
        let mut announces = 0u32;
        let mut since_announce = 0u64;
        let groups = plan.groups();
        for job in 0.. {
            let (pass, group) = (job / groups, job % groups);
            if options.passes.is_some_and(|p| pass >= u64::from(p)) {
                break;
            }
            if group == 0 {
                progress.begin(&format!("pass {}", pass + 1), size);
                link.send(&plan.announce_datagrams(announces))?;
                announces += 1;
                since_announce = 0;
            }
            let worker = (job % workers as u64) as usize;
            let built = queues[worker]
                .recv()
                .map_err(|_| Error::Usage("an encoder thread stopped".into()))??;
            link.send(&built.datagrams)?;
            // The buffer goes back to its encoder, which refills it without zeroing.
            progress.advance(built.bytes);
            since_announce += (built.datagrams.len() / link.segment) as u64;
            let _ = recycle[worker].try_send(built.datagrams);
            if since_announce >= plan.announce_every {
                link.send(&plan.announce_datagrams(announces))?;
                announces += 1;
                since_announce = 0;
            }
            if group + 1 == groups {
                progress.end();
                link.report.passes += 1;
            }
        }
        drop(queues);
        drop(recycle);
        Ok(())
    });
    report.seconds = start.elapsed().as_secs_f64();
    result.map(|()| report)
}

/// The fixed facts of a send that the encoder threads share.
struct Plan {
    announce: Announce,
    announce_body: Vec<u8>,
    geometry: Geometry,
    overhead: f64,
    interleave: u32,
    tag: [u8; 8],
    /// Data datagrams between announce repeats.
    announce_every: u64,
}

impl Plan {
    fn new(announce: &Announce, options: &SendOptions) -> Plan {
        let body = announce.encode();
        let symbol_size = usize::from(announce.geometry.symbol_size);
        let announce_symbols = body.len().div_ceil(symbol_size) as u64;
        let mut tag = [0; 8];
        tag.copy_from_slice(&announce.digest[..8]);
        Plan {
            announce: announce.clone(),
            announce_body: body,
            geometry: announce.geometry,
            overhead: options.overhead,
            interleave: options.interleave,
            tag,
            // Often enough that a receiver joining mid-stream waits seconds, rarely enough
            // that announces stay under ~3 % of the link.
            announce_every: (announce_symbols * 2 * 32).max(4096),
        }
    }

    fn groups(&self) -> u64 {
        self.geometry.blocks().div_ceil(u64::from(self.interleave))
    }

    fn header(&self, kind: Kind, block: u32, symbol: u32) -> Header {
        Header {
            kind,
            session: self.announce.session,
            digest_tag: self.tag,
            block,
            symbol,
        }
    }

    fn repair_count(&self, source: u32) -> u32 {
        (f64::from(source) * self.overhead).ceil() as u32
    }

    /// The announce, coded with as many repair symbols as source symbols (at least four);
    /// each repeat uses new repair ids so a receiver that missed some gains from the next.
    fn announce_datagrams(&self, repeat: u32) -> Vec<u8> {
        let t = usize::from(self.geometry.symbol_size);
        let k = self.announce_body.len().div_ceil(t) as u32;
        let repair = k.max(4);
        let span = MAX_SYMBOL_ID - k - repair;
        let first = (u64::from(repeat) * u64::from(repair) % u64::from(span)) as u32;
        let symbols = fec::encode_object(&self.announce_body, t, first, repair);
        let mut out = vec![0u8; symbols.len() * (HEADER_LEN + t)];
        for ((esi, symbol), datagram) in symbols.iter().zip(out.chunks_mut(HEADER_LEN + t)) {
            datagram[HEADER_LEN..].copy_from_slice(symbol);
            self.header(Kind::Announce, self.announce_body.len() as u32, *esi)
                .seal(datagram);
        }
        out
    }

    /// Codes one group of blocks for one pass into ready-to-send datagrams.
    fn build_group(
        &self,
        file: &File,
        pass: u64,
        group: u64,
        mut out: Vec<u8>,
        spare: &mut Vec<Vec<u8>>,
    ) -> std::io::Result<Group> {
        let t = usize::from(self.geometry.symbol_size);
        let first_block = group * u64::from(self.interleave);
        let last_block = (first_block + u64::from(self.interleave)).min(self.geometry.blocks());
        let mut blocks = Vec::new();
        let mut bytes = 0u64;
        for block in first_block..last_block {
            let block = block as u32;
            let len = self.geometry.block_len(block);
            let k = self.geometry.source_symbols(block);
            // Reused buffers: only the tail past the block's bytes must be zero.
            let mut padded = spare.pop().unwrap_or_default();
            padded.resize(k as usize * t, 0);
            padded[len..].fill(0);
            file.read_exact_at(&mut padded[..len], self.geometry.block_offset(block))?;
            let hash = block_hash(&padded[..len]);
            let r = self.repair_count(k);
            // New repair ids each pass; wrap long before the 24-bit limit.
            let span = u64::from(MAX_SYMBOL_ID - k - r.max(1)).max(1);
            let first = (pass * u64::from(r) % span) as u32;
            let repair = fec::repair_symbols(&padded, t, first, r);
            bytes += len as u64;
            blocks.push(CodedBlock {
                block,
                k,
                padded,
                repair,
                hash,
            });
        }
        let hashes: Vec<(u32, BlockHash)> = blocks.iter().map(|b| (b.block, b.hash)).collect();
        let rounds = blocks
            .iter()
            .map(|b| b.k as usize + b.repair.len())
            .max()
            .unwrap_or(0);
        let tables = hashes.len().div_ceil((t - 2) / HASH_ENTRY_LEN);
        let total: usize = blocks
            .iter()
            .map(|b| b.k as usize + b.repair.len())
            .sum::<usize>()
            + tables * HASH_COPIES as usize;
        let segment = HEADER_LEN + t;
        // Every byte is written below, so a recycled buffer needs no zeroing.
        out.resize(total * segment, 0);
        let mut datagrams = out.chunks_exact_mut(segment);
        let mut emit = |header: Header, symbol: &[u8]| {
            if let Some(datagram) = datagrams.next() {
                datagram[HEADER_LEN..].copy_from_slice(symbol);
                header.seal(datagram);
            }
        };
        let mut table = vec![0u8; t];
        let mut emit_hashes = |copy: u32, emit: &mut dyn FnMut(Header, &[u8])| {
            for entries in hashes.chunks((t - 2) / HASH_ENTRY_LEN) {
                write_hash_table(&mut table, entries);
                emit(self.header(Kind::Hashes, entries[0].0, copy), &table);
            }
        };
        emit_hashes(0, &mut emit);
        for round in 0..rounds as u32 {
            if round == rounds as u32 / 2 {
                emit_hashes(1, &mut emit);
            }
            for b in &blocks {
                if round < b.k {
                    let r = round as usize;
                    emit(
                        self.header(Kind::Data, b.block, round),
                        &b.padded[r * t..(r + 1) * t],
                    );
                } else if let Some((esi, s)) = b.repair.get((round - b.k) as usize) {
                    emit(self.header(Kind::Data, b.block, *esi), s);
                }
            }
        }
        emit_hashes(2, &mut emit);
        spare.extend(blocks.into_iter().map(|b| b.padded));
        Ok(Group {
            datagrams: out,
            bytes,
        })
    }
}

struct CodedBlock {
    block: u32,
    k: u32,
    padded: Vec<u8>,
    repair: Vec<(u32, Vec<u8>)>,
    hash: BlockHash,
}

/// One group's datagrams, ready to send.
struct Group {
    datagrams: Vec<u8>,
    bytes: u64,
}

/// Encoder thread `worker` of `workers`: builds jobs `worker`, `worker + workers`, ... in
/// order; the sender takes them round-robin, so output order is job order.
fn encode_jobs(
    plan: &Plan,
    file: &File,
    worker: usize,
    workers: usize,
    tx: &SyncSender<Result<Group>>,
    recycled: &Receiver<Vec<u8>>,
) {
    let groups = plan.groups();
    let mut job = worker as u64;
    let mut spare = Vec::new();
    loop {
        let buffer = recycled.try_recv().unwrap_or_default();
        let built = plan
            .build_group(file, job / groups, job % groups, buffer, &mut spare)
            .map_err(|e| Error::Net {
                what: "cannot read the bundle".into(),
                source: e,
            });
        let failed = built.is_err();
        if tx.send(built).is_err() || failed {
            return;
        }
        job += workers as u64;
    }
}

struct Link<'a> {
    socket: &'a Socket,
    to: SocketAddr,
    segment: usize,
    pacer: Pacer,
    ip_overhead: usize,
    report: &'a mut SendReport,
}

impl Link<'_> {
    /// Sends a run of datagrams in paced slices of about 64 KiB.
    fn send(&mut self, datagrams: &[u8]) -> Result<()> {
        let per_slice = (64 << 10) / self.segment;
        for slice in datagrams.chunks(per_slice.max(1) * self.segment) {
            let count = slice.len() / self.segment;
            let wire = (slice.len() + count * self.ip_overhead) as u64;
            self.pacer.wait_for(wire);
            self.socket
                .send_all(self.to, slice, self.segment)
                .map_err(Error::net(format!("cannot send to {}", self.to)))?;
            self.report.datagrams += count as u64;
            self.report.wire_bytes += wire;
        }
        Ok(())
    }
}

/// Keeps the average rate at or under the target; after a stall it catches up by at most
/// 5 ms of traffic, so the link never sees a long burst.
struct Pacer {
    bytes_per_second: Option<f64>,
    start: Instant,
    credit_until: f64,
}

impl Pacer {
    fn new(bits_per_second: Option<u64>) -> Pacer {
        Pacer {
            bytes_per_second: bits_per_second.map(|r| r as f64 / 8.0),
            start: Instant::now(),
            credit_until: 0.0,
        }
    }

    fn wait_for(&mut self, bytes: u64) {
        let Some(rate) = self.bytes_per_second else {
            return;
        };
        let now = self.start.elapsed().as_secs_f64();
        if self.credit_until < now - 0.005 {
            self.credit_until = now - 0.005;
        }
        if self.credit_until > now {
            std::thread::sleep(Duration::from_secs_f64(self.credit_until - now));
        }
        self.credit_until += bytes as f64 / rate;
    }
}
