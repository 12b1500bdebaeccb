//! `airlock diode receive`: turn a lossy one-way stream back into a verified bundle.
//!
//! One thread reads and checks datagrams and gathers symbols per block; a second decodes,
//! checks each block against the hash the sender sent for it, and writes it in place into
//! `OUT/.airlock-diode/<digest>-<block size>/bundle.part`. A bitmap beside it records blocks
//! that are on disk and synced, so a restarted receiver keeps them. Only when every block is
//! in and the whole bundle verifies is it renamed to `OUT/<name>_<version>.airlock`; a failed
//! or abandoned session leaves `OUT/<name>_<version>.airlock.report.json` instead.
//!
//! Memory is bounded whatever the bundle size or the traffic (`docs/transfer-protocol.md`,
//! "Memory bounds"). A session is accepted only when its announced size is the one its signed
//! manifest implies (`admission.rs`), so everything kept per block is sized by signed facts
//! (`session.rs`); blocks in flight share a byte budget (the least recently fed is dropped
//! first and comes again next pass), unknown sessions' announces share another, check values
//! are capped (`check_values.rs`), and refused sessions are remembered up to a count.

mod admission;
mod check_values;
mod session;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_bundle::durable::{sync_dir, write_atomic};
use airlock_bundle::{Bundle, Limits, NoProgress, Progress, Sha256Digest, TrustPolicy};

pub use self::admission::Refusal;
use self::admission::{Admitted, Candidates, Gathered};
use self::session::Active;
use crate::net::{RecvBatch, Socket};
use crate::packet::{HEADER_LEN, Header, Kind};
use crate::{Error, Result};

/// Name of the directory under OUT that holds sessions in progress.
pub const STATE_DIR: &str = ".airlock-diode";
/// Sessions refused are remembered (and their datagrams dropped unread) up to this many.
const REFUSED_REMEMBERED: usize = 64;
/// Refusal reasons kept for the report.
const REFUSALS_REPORTED: usize = 8;
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
    let listen = socket
        .local_addr()
        .map_err(Error::net("cannot read the socket's address"))?;
    let mut rx = Receiving::new(listen, options, progress)?;
    let mut batch = RecvBatch::default();
    loop {
        if rx.active.as_ref().is_some_and(Active::complete) {
            return rx.finish();
        }
        if rx.last_useful.elapsed() >= options.idle_timeout
            && !rx.active.as_ref().is_some_and(Active::busy)
        {
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
    candidates: Candidates,
    refused: VecDeque<u64>,
    active: Option<Active>,
    first_datagram: Option<Instant>,
    last_useful: Instant,
    progress: &'a dyn Progress,
}

impl<'a> Receiving<'a> {
    fn new(
        listen: SocketAddr,
        options: &'a ReceiveOptions,
        progress: &'a dyn Progress,
    ) -> Result<Receiving<'a>> {
        let state_root = options.out.join(STATE_DIR);
        std::fs::create_dir_all(&state_root).map_err(Error::io(&state_root))?;
        Ok(Receiving {
            listen,
            options,
            state_root,
            report: ReceiveReport::default(),
            candidates: Candidates::default(),
            refused: VecDeque::new(),
            active: None,
            first_datagram: None,
            last_useful: Instant::now(),
            progress,
        })
    }

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
            return Ok(active.symbol(&header, symbol, &mut self.report));
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
        match self.candidates.add(header, symbol, &mut self.report) {
            Gathered::Dropped => Ok(false),
            Gathered::Kept => Ok(true),
            Gathered::Complete(body) => {
                match admission::admit(header, &body, self.options) {
                    Ok(admitted) => self.activate(admitted, header.digest_tag)?,
                    Err(refusal) => self.refuse(header.session, &refusal),
                }
                Ok(true)
            }
        }
    }

    fn refuse(&mut self, session: u64, refusal: &Refusal) {
        self.report.drop("refused_announce");
        self.report
            .refused_sessions
            .push(format!("{session:016x}: {refusal}"));
        if self.report.refused_sessions.len() > REFUSALS_REPORTED {
            self.report.refused_sessions.remove(0);
        }
        self.refused.push_back(session);
        if self.refused.len() > REFUSED_REMEMBERED {
            self.refused.pop_front();
        }
    }

    fn activate(&mut self, admitted: Admitted, tag: [u8; 8]) -> Result<()> {
        let Admitted { announce, stem } = admitted;
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
                &Refusal::AlreadyReceived {
                    digest: digest.to_hex(),
                },
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
        self.report.blocks = active.blocks();
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
                a.blocks()
            ),
        };
        if let Some(active) = self.active.take() {
            self.report.missing_blocks = active.blocks() - active.done_count;
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

#[cfg(test)]
mod tests;
