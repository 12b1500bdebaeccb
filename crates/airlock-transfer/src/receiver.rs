//! `airlock diode receive`: turn a lossy one-way stream back into a verified bundle.
//!
//! One thread reads and checks datagrams and gathers symbols per block; a second decodes,
//! checks each block against the hash the sender sent for it, and writes it in place into
//! `OUT/.airlock-diode/<digest>-<block size>/bundle.part`. A bitmap beside it records blocks
//! that are on disk and synced, so a restarted receiver keeps them. Only when every block is
//! in and the whole bundle verifies is it renamed to `OUT/<name>_<version>.airlock`; a failed
//! or abandoned session leaves `OUT/<name>_<version>.airlock.report.json` instead.
//!
//! Memory is bounded whatever the bundle size or the traffic: blocks in flight share a byte
//! budget (the least recently fed is dropped first and comes again next pass), unknown
//! sessions' announces share another, and per-block state is a bit and a hash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use airlock_bundle::durable::{sync_dir, write_atomic};
use airlock_bundle::signature::SigstoreBundle;
use airlock_bundle::{Bundle, Limits, Manifest, NoProgress, Progress, Sha256Digest, TrustPolicy};

use crate::announce::{Announce, Geometry, MAX_ANNOUNCE_LEN, MAX_SYMBOLS_PER_BLOCK};
use crate::fec::BlockAssembly;
use crate::net::{RecvBatch, Socket};
use crate::packet::{
    BlockHash, HEADER_LEN, Header, Kind, MIN_SYMBOL_SIZE, SYMBOL_ALIGNMENT, block_hash,
    read_hash_table,
};
use crate::{Error, Result};

/// Name of the directory under OUT that holds sessions in progress.
pub const STATE_DIR: &str = ".airlock-diode";
/// Blocks written but not yet synced before the bitmap is brought up to date.
const SYNC_EVERY_BLOCKS: usize = 64;
/// Longest a written block waits for its sync.
const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Memory for the announces of sessions not yet accepted.
const ANNOUNCE_BUDGET: usize = 40 << 20;
/// Sessions refused are remembered (and their datagrams dropped unread) up to this many.
const REFUSED_REMEMBERED: usize = 64;
/// Symbols kept per block while it is being decoded, in case decoding fails.
const LATE_SYMBOLS_KEPT: usize = 64;
/// A session with no accepted datagram for this long may be replaced by another bundle.
const SESSION_STALE: Duration = Duration::from_secs(5);

/// How to receive.
#[derive(Clone)]
pub struct ReceiveOptions {
    /// Where finished bundles, reports and state go.
    pub out: PathBuf,
    /// Largest bundle accepted.
    pub max_size: u64,
    /// Keys the bundle must be signed by; checked on the announce, before anything is
    /// written, and again at the end. `None` checks integrity only.
    pub trust: Option<TrustPolicy>,
    /// Give up when no useful datagram arrived for this long.
    pub idle_timeout: Duration,
    /// Bytes of blocks being assembled at once.
    pub memory_budget: usize,
    /// Limits for parsing the signature and verifying the bundle.
    pub limits: Limits,
}

impl ReceiveOptions {
    /// Defaults: 1 TiB largest bundle, 60 s idle timeout, 256 MiB for blocks in flight.
    pub fn new(out: PathBuf) -> ReceiveOptions {
        ReceiveOptions {
            out,
            max_size: 1 << 40,
            trust: None,
            idle_timeout: Duration::from_secs(60),
            memory_budget: 256 << 20,
            limits: Limits::default(),
        }
    }
}

/// What a receive did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReceiveReport {
    /// `received`, `incomplete` or `failed`.
    pub status: String,
    /// The finished bundle, when received.
    pub bundle: Option<PathBuf>,
    /// Where the report was written, when not received.
    pub report: Option<PathBuf>,
    /// The error, when not received.
    pub error: Option<String>,
    /// Bundle digest (SHA-256 of the signed manifest), hex.
    pub digest: Option<String>,
    /// Bundle bytes.
    pub size: u64,
    /// Blocks in the bundle.
    pub blocks: u64,
    /// Blocks found already on disk from an earlier run.
    pub resumed_blocks: u64,
    /// Blocks decoded and written by this run.
    pub decoded_blocks: u64,
    /// Blocks that needed RaptorQ decoding (some source symbol was lost).
    pub repaired_blocks: u64,
    /// Blocks still missing.
    pub missing_blocks: u64,
    /// Datagrams read.
    pub datagrams: u64,
    /// Datagrams used (new symbols, hashes, announces).
    pub accepted: u64,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Sessions refused, with the reason for each (the last few).
    pub refused_sessions: Vec<String>,
    /// Times a new sender run of the same bundle took over.
    pub session_changes: u64,
    /// Seconds from the first datagram to the end.
    pub seconds: f64,
}

impl ReceiveReport {
    fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}

/// Receives one bundle on `socket`: returns when it is verified and in place, or when nothing
/// useful arrived for the idle timeout (an `Incomplete` error, with the report written).
pub fn receive(
    socket: &Socket,
    options: &ReceiveOptions,
    progress: &dyn Progress,
) -> Result<ReceiveReport> {
    let state_root = options.out.join(STATE_DIR);
    std::fs::create_dir_all(&state_root).map_err(Error::io(&state_root))?;
    let mut rx = Receiving {
        listen: socket
            .local_addr()
            .map_err(Error::net("cannot read the socket's address"))?,
        options,
        state_root,
        report: ReceiveReport::default(),
        candidates: VecDeque::new(),
        refused: VecDeque::new(),
        active: None,
        first_datagram: None,
        last_useful: Instant::now(),
        progress,
    };
    let mut batch = RecvBatch::default();
    loop {
        if rx.active.as_ref().is_some_and(Active::complete) {
            return rx.finish();
        }
        if rx.last_useful.elapsed() >= options.idle_timeout {
            return rx.give_up();
        }
        if let Some(active) = rx.active.as_mut() {
            active.collect_results(&mut rx.report, progress)?;
        }
        if !socket
            .wait_readable(Duration::from_millis(50))
            .map_err(Error::net("cannot wait for datagrams"))?
        {
            continue;
        }
        batch
            .recv(socket)
            .map_err(Error::net("cannot read datagrams"))?;
        let mut useful = false;
        for (_, datagram) in batch.datagrams() {
            rx.report.datagrams += 1;
            if rx.handle(datagram)? {
                rx.report.accepted += 1;
                useful = true;
            }
        }
        // One clock read per batch, not per datagram.
        let now = Instant::now();
        rx.first_datagram.get_or_insert(now);
        if useful {
            rx.last_useful = now;
            if let Some(active) = rx.active.as_mut() {
                active.last_accepted = now;
            }
        }
    }
}

struct Receiving<'a> {
    listen: SocketAddr,
    options: &'a ReceiveOptions,
    state_root: PathBuf,
    report: ReceiveReport,
    /// Announces being gathered, oldest first.
    candidates: VecDeque<Candidate>,
    refused: VecDeque<u64>,
    active: Option<Active>,
    first_datagram: Option<Instant>,
    last_useful: Instant,
    progress: &'a dyn Progress,
}

struct Candidate {
    session: u64,
    len: u32,
    symbol_size: usize,
    asm: BlockAssembly,
}

impl Receiving<'_> {
    /// Takes one datagram; true when it was of use.
    fn handle(&mut self, datagram: &[u8]) -> Result<bool> {
        let header = match Header::open(datagram) {
            Ok(h) => h,
            Err(why) => {
                self.report.drop(why.name());
                return Ok(false);
            }
        };
        let symbol = &datagram[HEADER_LEN..];
        // The active session first: nearly every datagram is one of its symbols.
        if let Some(active) = self.active.as_mut().filter(|a| a.session == header.session) {
            if header.kind == Kind::Announce {
                self.report.drop("announce_repeat");
                return Ok(false);
            }
            return active.symbol(&header, symbol, &mut self.report);
        }
        if self.refused.contains(&header.session) {
            self.report.drop("refused_session");
            return Ok(false);
        }
        if header.kind == Kind::Announce {
            return self.announce_symbol(&header, symbol);
        }
        self.report.drop("unknown_session");
        Ok(false)
    }

    fn announce_symbol(&mut self, header: &Header, symbol: &[u8]) -> Result<bool> {
        let (len, t) = (header.block, symbol.len());
        let k = (len as usize).div_ceil(t.max(1)) as u64;
        if len as usize > MAX_ANNOUNCE_LEN
            || k > MAX_SYMBOLS_PER_BLOCK
            || t < MIN_SYMBOL_SIZE
            || t % SYMBOL_ALIGNMENT != 0
            || len == 0
        {
            self.report.drop("bad_announce_geometry");
            return Ok(false);
        }
        let at = match self
            .candidates
            .iter()
            .position(|c| c.session == header.session)
        {
            Some(at) => {
                let c = &self.candidates[at];
                if c.len != len || c.symbol_size != t {
                    self.report.drop("inconsistent_announce");
                    return Ok(false);
                }
                at
            }
            None => {
                let asm = BlockAssembly::new(k as u32, t);
                // Bounded: the oldest unfinished announce makes room for the new one.
                while !self.candidates.is_empty()
                    && self
                        .candidates
                        .iter()
                        .map(|c| c.asm.footprint())
                        .sum::<usize>()
                        + asm.footprint()
                        > ANNOUNCE_BUDGET
                {
                    self.candidates.pop_front();
                    self.report.drop("announce_evicted");
                }
                self.candidates.push_back(Candidate {
                    session: header.session,
                    len,
                    symbol_size: t,
                    asm,
                });
                self.candidates.len() - 1
            }
        };
        if !self.candidates[at].asm.add(header.symbol, symbol) {
            self.report.drop("duplicate");
            return Ok(false);
        }
        if !self.candidates[at].asm.ready_to_decode() {
            return Ok(true);
        }
        let Some(candidate) = self.candidates.remove(at) else {
            return Ok(true);
        };
        match candidate.asm.finish() {
            Err(asm) => {
                self.candidates.push_back(Candidate { asm, ..candidate });
                Ok(true)
            }
            Ok(mut body) => {
                body.truncate(candidate.len as usize);
                match self.accept_announce(header, &body) {
                    Ok((announce, stem)) => self.activate(announce, stem, header.digest_tag)?,
                    Err(reason) => self.refuse(header.session, reason),
                }
                Ok(true)
            }
        }
    }

    /// Checks an announce completely before anything is written for it; returns it with the
    /// file name the bundle will get.
    fn accept_announce(&self, header: &Header, body: &[u8]) -> Result<(Announce, String), String> {
        let announce = Announce::decode(body)?;
        if announce.session != header.session {
            return Err("announce names another session".into());
        }
        if announce.digest[..8] != header.digest_tag {
            return Err("announce digest disagrees with its packets".into());
        }
        if announce.geometry.size > self.options.max_size {
            return Err(format!(
                "bundle of {} bytes is over --max-size {}",
                announce.geometry.size, self.options.max_size
            ));
        }
        let limits = &self.options.limits;
        let signature =
            SigstoreBundle::parse(&announce.signature, limits).map_err(|e| e.to_string())?;
        let payload = signature.payload().map_err(|e| e.to_string())?;
        let manifest = Manifest::parse(payload, limits).map_err(|e| e.to_string())?;
        if manifest.digest.0 != announce.digest {
            return Err("announced digest is not the digest of the signed manifest".into());
        }
        if let Some(trust) = &self.options.trust {
            signature.verify(trust, limits).map_err(|e| e.to_string())?;
        }
        let stem = manifest
            .airlock()
            .and_then(|a| a.file_name())
            .unwrap_or_else(|| format!("{}.airlock", &manifest.digest.to_hex()[..16]));
        Ok((announce, stem))
    }

    fn refuse(&mut self, session: u64, reason: String) {
        self.report.drop("refused_announce");
        self.report
            .refused_sessions
            .push(format!("{session:016x}: {reason}"));
        if self.report.refused_sessions.len() > 8 {
            self.report.refused_sessions.remove(0);
        }
        self.refused.push_back(session);
        if self.refused.len() > REFUSED_REMEMBERED {
            self.refused.pop_front();
        }
    }

    fn activate(&mut self, announce: Announce, stem: String, tag: [u8; 8]) -> Result<()> {
        if let Some(active) = self.active.as_mut() {
            let same_bundle = active.announce.digest == announce.digest
                && active.announce.geometry.size == announce.geometry.size
                && active.announce.geometry.block_size == announce.geometry.block_size;
            if same_bundle {
                // The sender restarted: keep every block, drop half-gathered ones (the new
                // run may use another symbol size).
                active.switch_session(announce);
                self.report.session_changes += 1;
                return Ok(());
            }
            if active.last_accepted.elapsed() < SESSION_STALE {
                // Busy with another bundle; this one will be announced again.
                self.report.drop("other_bundle_busy");
                return Ok(());
            }
        }
        let digest = Sha256Digest(announce.digest);
        if self.state_root.join(format!("{digest}.done")).exists() {
            self.refuse(
                announce.session,
                format!("bundle sha256:{digest} was already received"),
            );
            return Ok(());
        }
        if let Some(old) = self.active.take() {
            old.stop()?;
        }
        let active = Active::open(
            &self.state_root,
            announce,
            stem,
            tag,
            self.options.memory_budget,
        )?;
        self.report.resumed_blocks = active.done_count;
        self.report.digest = Some(digest.to_hex());
        self.report.size = active.announce.geometry.size;
        self.report.blocks = active.announce.geometry.blocks();
        self.progress
            .begin("receiving", active.announce.geometry.size);
        self.progress.advance(active.done_bytes());
        self.active = Some(active);
        Ok(())
    }

    /// Writes `OUT/<stem>.report.json` for a session that did not end in a bundle.
    fn save_report(&mut self, stem: &str, status: &str, why: &str) -> Result<PathBuf> {
        let path = self.options.out.join(format!("{stem}.report.json"));
        self.report.status = status.into();
        self.report.error = Some(why.into());
        self.report.report = Some(path.clone());
        self.report.seconds = self
            .first_datagram
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let text = serde_json::to_vec_pretty(&self.report).map_err(std::io::Error::other);
        write_atomic(&path, &text.map_err(Error::io(&path))?)?;
        Ok(path)
    }

    fn give_up(mut self) -> Result<ReceiveReport> {
        self.progress.end();
        let why = match &self.active {
            None if self.report.refused_sessions.is_empty() => format!(
                "no session announced on {} within {}s",
                self.listen,
                self.options.idle_timeout.as_secs()
            ),
            None => format!(
                "every session was refused; last: {}",
                self.report
                    .refused_sessions
                    .last()
                    .map_or("", String::as_str)
            ),
            Some(a) => format!(
                "stream stopped with {} of {} blocks; decoded blocks are kept for the next run",
                a.done_count,
                a.geometry().blocks()
            ),
        };
        if let Some(active) = self.active.take() {
            self.report.missing_blocks = active.geometry().blocks() - active.done_count;
            self.report.decoded_blocks = active.decoded;
            self.report.repaired_blocks = active.repaired;
            let stem = active.stem.clone();
            active.stop()?;
            let path = self.save_report(&stem, "incomplete", &why)?;
            return Err(Error::Incomplete(format!(
                "{why} (report: {})",
                path.display()
            )));
        }
        Err(Error::Incomplete(why))
    }

    /// Every block is in: sync, verify the whole bundle, and only then give it its name.
    fn finish(mut self) -> Result<ReceiveReport> {
        self.progress.end();
        let Some(active) = self.active.take() else {
            return Err(Error::Incomplete("no session".into()));
        };
        self.report.decoded_blocks = active.decoded;
        self.report.repaired_blocks = active.repaired;
        let stem = active.stem.clone();
        let digest = active.announce.digest;
        let dir = active.dir.clone();
        let part = dir.join("bundle.part");
        active.stop()?;
        let limits = &self.options.limits;
        let verified = Bundle::open(&part, limits).and_then(|b| match &self.options.trust {
            Some(trust) => b.verify(trust, limits, &NoProgress),
            None => b.verify_integrity_only(limits, &NoProgress),
        });
        let failure = match verified {
            Ok(v) if v.manifest.digest.0 == digest => None,
            Ok(v) => Some(format!(
                "received bundle has digest sha256:{}, announced sha256:{}",
                v.manifest.digest,
                Sha256Digest(digest)
            )),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            // Every block matched its check value, so the sender's bytes themselves are bad:
            // forget the blocks (a later run starts over) but keep the bytes for inspection.
            let _ = std::fs::remove_file(dir.join("blocks.done"));
            let report = self.save_report(&stem, "failed", &why)?;
            return Err(Error::Incomplete(format!(
                "received bundle failed verification: {why} (report: {}; the received bytes are in {})",
                report.display(),
                part.display()
            )));
        }
        let target = self.options.out.join(&stem);
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &part,
            rustix::fs::CWD,
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| Error::Io {
            path: target.clone(),
            source: std::io::Error::from(e),
        })?;
        sync_dir(&self.options.out)?;
        let marker = self
            .state_root
            .join(format!("{}.done", Sha256Digest(digest)));
        write_atomic(&marker, stem.as_bytes())?;
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(self.options.out.join(format!("{stem}.report.json")));
        self.report.status = "received".into();
        self.report.bundle = Some(target);
        self.report.seconds = self
            .first_datagram
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok(self.report)
    }
}

/// The session being received, and its on-disk state.
struct Active {
    announce: Announce,
    session: u64,
    tag: [u8; 8],
    stem: String,
    dir: PathBuf,
    done: Vec<u8>,
    done_count: u64,
    hashes: HashMap<u32, BlockHash>,
    in_flight: HashMap<u32, InFlight>,
    in_flight_bytes: usize,
    budget: usize,
    /// Blocks handed to the writer and not yet reported back, with symbols that arrived
    /// meanwhile: if decoding fails they are what lets the next attempt succeed.
    writing: HashMap<u32, Vec<(u32, Vec<u8>)>>,
    /// Block buffers the writer is done with, reused so blocks cost no page faults.
    spare_buffers: Vec<Vec<u8>>,
    tick: u64,
    jobs: Sender<Job>,
    results: Receiver<Outcome>,
    writer: Option<std::thread::JoinHandle<Result<()>>>,
    decoded: u64,
    repaired: u64,
    last_accepted: Instant,
}

struct InFlight {
    asm: BlockAssembly,
    last_fed: u64,
}

enum Job {
    Block {
        block: u32,
        asm: BlockAssembly,
        hash: BlockHash,
    },
}

enum Outcome {
    Written {
        block: u32,
        repaired: bool,
        buffer: Vec<u8>,
    },
    Undecodable {
        block: u32,
        asm: BlockAssembly,
    },
    HashMismatch {
        block: u32,
    },
}

impl Active {
    fn open(
        root: &Path,
        announce: Announce,
        stem: String,
        tag: [u8; 8],
        budget: usize,
    ) -> Result<Active> {
        let g = announce.geometry;
        let dir = root.join(format!(
            "{}-{}",
            Sha256Digest(announce.digest),
            g.block_size
        ));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let part_path = dir.join("bundle.part");
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(Error::io(&part_path))?;
        let len = part.metadata().map_err(Error::io(&part_path))?.len();
        let bitmap_path = dir.join("blocks.done");
        let bitmap_len = g.blocks().div_ceil(8) as usize;
        let mut done = match std::fs::read(&bitmap_path) {
            Ok(bytes) if bytes.len() == bitmap_len && len == g.size => bytes,
            _ => vec![0; bitmap_len],
        };
        // Bits past the last block are never set.
        if let Some(last) = done.last_mut() {
            let used = (g.blocks() % 8) as u32;
            if used != 0 {
                *last &= (1u8 << used) - 1;
            }
        }
        if len != g.size {
            part.set_len(g.size).map_err(Error::io(&part_path))?;
        }
        std::fs::write(dir.join("announce"), announce.encode()).map_err(Error::io(&dir))?;
        let done_count = done.iter().map(|b| u64::from(b.count_ones())).sum();
        let (jobs, job_rx) = channel();
        let (result_tx, results) = channel();
        let writer_state = Writer {
            part,
            part_path,
            bitmap_path,
            done: done.clone(),
            geometry: g,
            unsynced: Vec::new(),
            last_sync: Instant::now(),
        };
        let writer = std::thread::Builder::new()
            .name("diode-writer".into())
            .spawn(move || writer_state.run(&job_rx, &result_tx))
            .map_err(Error::io(&dir))?;
        Ok(Active {
            session: announce.session,
            announce,
            tag,
            stem,
            dir,
            done,
            done_count,
            hashes: HashMap::new(),
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            budget,
            writing: HashMap::new(),
            spare_buffers: Vec::new(),
            tick: 0,
            jobs,
            results,
            writer: Some(writer),
            decoded: 0,
            repaired: 0,
            last_accepted: Instant::now(),
        })
    }

    fn geometry(&self) -> Geometry {
        self.announce.geometry
    }

    fn complete(&self) -> bool {
        self.done_count == self.geometry().blocks()
    }

    fn is_done(&self, block: u32) -> bool {
        self.done[(block / 8) as usize] & (1 << (block % 8)) != 0
    }

    fn done_bytes(&self) -> u64 {
        (0..self.geometry().blocks() as u32)
            .filter(|b| self.is_done(*b))
            .map(|b| self.geometry().block_len(b) as u64)
            .sum()
    }

    fn switch_session(&mut self, announce: Announce) {
        self.session = announce.session;
        self.announce = announce;
        self.in_flight.clear();
        self.in_flight_bytes = 0;
    }

    fn symbol(
        &mut self,
        header: &Header,
        symbol: &[u8],
        report: &mut ReceiveReport,
    ) -> Result<bool> {
        if header.digest_tag != self.tag {
            report.drop("wrong_digest");
            return Ok(false);
        }
        if symbol.len() != usize::from(self.geometry().symbol_size) {
            report.drop("wrong_size");
            return Ok(false);
        }
        match header.kind {
            Kind::Hashes => self.hash_table(symbol, report),
            Kind::Data => self.data(header, symbol, report),
            Kind::Announce => Ok(false),
        }
    }

    fn hash_table(&mut self, symbol: &[u8], report: &mut ReceiveReport) -> Result<bool> {
        let Some(entries) = read_hash_table(symbol) else {
            report.drop("bad_hash_table");
            return Ok(false);
        };
        let blocks = self.geometry().blocks();
        let mut useful = false;
        let mut ready = Vec::new();
        for (block, hash) in entries {
            if u64::from(block) >= blocks {
                report.drop("block_out_of_range");
                continue;
            }
            if self.is_done(block) || self.writing.contains_key(&block) {
                continue;
            }
            if self.hashes.insert(block, hash) != Some(hash) {
                useful = true;
                if self
                    .in_flight
                    .get(&block)
                    .is_some_and(|f| f.asm.ready_to_decode())
                {
                    ready.push(block);
                }
            }
        }
        for block in ready {
            self.dispatch(block);
        }
        Ok(useful)
    }

    fn data(&mut self, header: &Header, symbol: &[u8], report: &mut ReceiveReport) -> Result<bool> {
        let block = header.block;
        if u64::from(block) >= self.geometry().blocks() {
            report.drop("block_out_of_range");
            return Ok(false);
        }
        if self.is_done(block) {
            report.drop("block_already_decoded");
            return Ok(false);
        }
        if let Some(late) = self.writing.get_mut(&block) {
            if late.len() >= LATE_SYMBOLS_KEPT || late.iter().any(|(esi, _)| *esi == header.symbol)
            {
                report.drop("block_being_decoded");
                return Ok(false);
            }
            late.push((header.symbol, symbol.to_vec()));
            return Ok(true);
        }
        self.tick += 1;
        if !self.in_flight.contains_key(&block) {
            let asm = BlockAssembly::with_buffer(
                self.geometry().source_symbols(block),
                usize::from(self.geometry().symbol_size),
                self.spare_buffers.pop().unwrap_or_default(),
            );
            self.in_flight_bytes += asm.footprint();
            self.in_flight.insert(
                block,
                InFlight {
                    asm,
                    last_fed: self.tick,
                },
            );
            self.evict_over_budget(block, report);
        }
        let Some(entry) = self.in_flight.get_mut(&block) else {
            return Ok(false);
        };
        let before = entry.asm.footprint();
        if !entry.asm.add(header.symbol, symbol) {
            report.drop("duplicate");
            return Ok(false);
        }
        entry.last_fed = self.tick;
        self.in_flight_bytes += entry.asm.footprint() - before;
        if entry.asm.ready_to_decode() && self.hashes.contains_key(&block) {
            self.dispatch(block);
        }
        Ok(true)
    }

    /// Drops the least recently fed blocks until the budget holds (never `keep`).
    fn evict_over_budget(&mut self, keep: u32, report: &mut ReceiveReport) {
        while self.in_flight_bytes > self.budget && self.in_flight.len() > 1 {
            let Some(victim) = self
                .in_flight
                .iter()
                .filter(|(b, _)| **b != keep)
                .min_by_key(|(_, f)| f.last_fed)
                .map(|(b, _)| *b)
            else {
                return;
            };
            if let Some(f) = self.in_flight.remove(&victim) {
                self.in_flight_bytes -= f.asm.footprint();
                report.drop("block_evicted");
            }
        }
    }

    fn dispatch(&mut self, block: u32) {
        let (Some(f), Some(hash)) = (self.in_flight.remove(&block), self.hashes.get(&block)) else {
            return;
        };
        self.in_flight_bytes -= f.asm.footprint();
        self.writing.insert(block, Vec::new());
        // The writer only stops when this side drops its sender, so the send cannot fail
        // while `self` lives.
        let _ = self.jobs.send(Job::Block {
            block,
            asm: f.asm,
            hash: *hash,
        });
    }

    /// Takes what the writer finished.
    fn collect_results(
        &mut self,
        report: &mut ReceiveReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        while let Ok(outcome) = self.results.try_recv() {
            match outcome {
                Outcome::Written {
                    block,
                    repaired,
                    buffer,
                } => {
                    if self.spare_buffers.len() < 32 {
                        self.spare_buffers.push(buffer);
                    }
                    self.writing.remove(&block);
                    self.hashes.remove(&block);
                    if !self.is_done(block) {
                        self.done[(block / 8) as usize] |= 1 << (block % 8);
                        self.done_count += 1;
                        self.decoded += 1;
                        self.repaired += u64::from(repaired);
                        progress.advance(self.geometry().block_len(block) as u64);
                    }
                }
                Outcome::Undecodable { block, mut asm } => {
                    for (esi, symbol) in self.writing.remove(&block).unwrap_or_default() {
                        asm.add(esi, &symbol);
                    }
                    report.drop("decode_retry");
                    self.in_flight_bytes += asm.footprint();
                    self.tick += 1;
                    self.in_flight.insert(
                        block,
                        InFlight {
                            asm,
                            last_fed: self.tick,
                        },
                    );
                    if self
                        .in_flight
                        .get(&block)
                        .is_some_and(|f| f.asm.ready_to_decode())
                    {
                        self.dispatch(block);
                    }
                }
                Outcome::HashMismatch { block } => {
                    // Corrupted symbols got through; the block comes again next pass.
                    self.writing.remove(&block);
                    self.hashes.remove(&block);
                    report.drop("block_hash_mismatch");
                }
            }
        }
        if self.writer.as_ref().is_some_and(|w| w.is_finished()) {
            return self.stop_writer();
        }
        Ok(())
    }

    fn stop_writer(&mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let (tx, _) = channel();
        drop(std::mem::replace(&mut self.jobs, tx));
        writer
            .join()
            .map_err(|_| Error::Usage("the diode writer thread panicked".into()))?
    }

    /// Stops the writer after it has synced everything it wrote.
    fn stop(mut self) -> Result<()> {
        self.stop_writer()
    }
}

/// The writer thread's state: decodes, checks, writes, and keeps the bitmap durable.
struct Writer {
    part: File,
    part_path: PathBuf,
    bitmap_path: PathBuf,
    done: Vec<u8>,
    geometry: Geometry,
    unsynced: Vec<u32>,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self, jobs: &Receiver<Job>, results: &Sender<Outcome>) -> Result<()> {
        loop {
            match jobs.recv_timeout(SYNC_EVERY) {
                Ok(Job::Block { block, asm, hash }) => {
                    let repaired = !asm.is_complete();
                    let outcome = match asm.finish() {
                        Err(asm) => Outcome::Undecodable { block, asm },
                        Ok(bytes) => {
                            let len = self.geometry.block_len(block);
                            if block_hash(&bytes[..len]) != hash {
                                Outcome::HashMismatch { block }
                            } else {
                                let at = self.geometry.block_offset(block);
                                self.part
                                    .write_all_at(&bytes[..len], at)
                                    .map_err(Error::io(&self.part_path))?;
                                self.unsynced.push(block);
                                Outcome::Written {
                                    block,
                                    repaired,
                                    buffer: bytes,
                                }
                            }
                        }
                    };
                    // Results are reported before the sync: the reader only uses them to stop
                    // gathering symbols; the bitmap on disk is what survives a crash.
                    let _ = results.send(outcome);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return self.sync();
                }
            }
            if self.unsynced.len() >= SYNC_EVERY_BLOCKS
                || (!self.unsynced.is_empty() && self.last_sync.elapsed() >= SYNC_EVERY)
            {
                self.sync()?;
            }
        }
    }

    /// Data first, then the bitmap that vouches for it.
    fn sync(&mut self) -> Result<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        self.part.sync_data().map_err(Error::io(&self.part_path))?;
        for block in self.unsynced.drain(..) {
            self.done[(block / 8) as usize] |= 1 << (block % 8);
        }
        let bitmap = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.bitmap_path)
            .map_err(Error::io(&self.bitmap_path))?;
        // Bits only ever go from 0 to 1, so a torn write still vouches only for synced data.
        bitmap
            .write_all_at(&self.done, 0)
            .and_then(|()| bitmap.sync_data())
            .map_err(Error::io(&self.bitmap_path))?;
        self.last_sync = Instant::now();
        Ok(())
    }
}
