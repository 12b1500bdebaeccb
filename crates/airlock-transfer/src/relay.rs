//! A lossy UDP link for tests and drills: forwards datagrams from one loopback port to
//! another, dropping (at random and in bursts), duplicating, reordering and corrupting them
//! at set rates. It stops by itself after a packet count, a duration, or a quiet spell.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use crate::net::{RecvBatch, Socket};
use crate::{Error, Result};

/// What the link does to traffic. Rates are probabilities per datagram.
#[derive(Debug, Clone)]
pub struct Impairments {
    /// Independent random loss.
    pub loss: f64,
    /// Drop this many consecutive datagrams starting at datagram `burst_at` (0-based).
    pub burst: Option<(u64, u64)>,
    /// Send a datagram twice.
    pub duplicate: f64,
    /// Hold a datagram back and release it after 1 to `reorder_depth` later ones.
    pub reorder: f64,
    /// Most datagrams a held one is overtaken by.
    pub reorder_depth: usize,
    /// Flip one to four random bits of a datagram.
    pub corrupt: f64,
    /// Seed of the random choices, so a failing run can be replayed.
    pub seed: u64,
}

impl Default for Impairments {
    fn default() -> Self {
        Impairments {
            loss: 0.0,
            burst: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_depth: 32,
            corrupt: 0.0,
            seed: 1,
        }
    }
}

/// When the relay stops.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// After this many datagrams in.
    pub max_datagrams: u64,
    /// After this long in total.
    pub max_time: Duration,
    /// After this long without a datagram, once the first has come.
    pub idle: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_datagrams: 50_000_000,
            max_time: Duration::from_secs(600),
            idle: Duration::from_secs(3),
        }
    }
}

/// What the relay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RelayReport {
    /// Datagrams in.
    pub received: u64,
    /// Datagrams out (duplicates included).
    pub forwarded: u64,
    /// Dropped at random.
    pub lost_random: u64,
    /// Dropped in the burst.
    pub lost_burst: u64,
    /// Sent twice.
    pub duplicated: u64,
    /// Held back and sent late.
    pub reordered: u64,
    /// Bits flipped.
    pub corrupted: u64,
    /// Why it stopped.
    pub stopped: String,
}

/// Forwards from `socket` to `to` under `impairments` until `bounds` stop it. Forwarded
/// datagrams leave from `from` when given (some receivers, udpcast's among them, accept data
/// only from the sender's own port), else from any free port.
pub fn relay(
    socket: &Socket,
    to: SocketAddr,
    from: Option<SocketAddr>,
    impairments: &Impairments,
    bounds: &Bounds,
) -> Result<RelayReport> {
    let out = match from {
        Some(addr) => Socket::bind(addr).map_err(Error::net(format!("cannot bind {addr}")))?,
        None => Socket::for_sending_to(to).map_err(Error::net("cannot open a UDP socket"))?,
    };
    let mut rng = SmallRng::seed_from_u64(impairments.seed);
    let mut report = RelayReport::default();
    let mut batch = RecvBatch::default();
    // Datagrams held back for reordering: (release after this many more, bytes).
    let mut held: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let start = Instant::now();
    let mut last = None::<Instant>;
    let mut outgoing = Outgoing {
        socket: &out,
        to,
        bytes: Vec::new(),
        segment: 0,
    };
    loop {
        if report.received >= bounds.max_datagrams {
            report.stopped = format!("{} datagrams", bounds.max_datagrams);
            break;
        }
        if start.elapsed() >= bounds.max_time {
            report.stopped = format!("{}s elapsed", bounds.max_time.as_secs());
            break;
        }
        if last.is_some_and(|t| t.elapsed() >= bounds.idle) {
            report.stopped = format!("idle for {}s", bounds.idle.as_secs_f64());
            break;
        }
        if !socket
            .wait_readable(Duration::from_millis(20))
            .map_err(Error::net("relay cannot wait"))?
        {
            continue;
        }
        batch
            .recv(socket)
            .map_err(Error::net("relay cannot read"))?;
        for (_, datagram) in batch.datagrams() {
            last = Some(Instant::now());
            let index = report.received;
            report.received += 1;
            if let Some((at, len)) = impairments.burst
                && (at..at + len).contains(&index)
            {
                report.lost_burst += 1;
                continue;
            }
            if rng.gen_bool(impairments.loss.clamp(0.0, 1.0)) {
                report.lost_random += 1;
                continue;
            }
            let mut bytes = datagram.to_vec();
            if rng.gen_bool(impairments.corrupt.clamp(0.0, 1.0)) && !bytes.is_empty() {
                for _ in 0..rng.gen_range(1..=4) {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                }
                report.corrupted += 1;
            }
            let copies = if rng.gen_bool(impairments.duplicate.clamp(0.0, 1.0)) {
                report.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                if rng.gen_bool(impairments.reorder.clamp(0.0, 1.0)) {
                    let delay = rng.gen_range(1..=impairments.reorder_depth.max(1)) as u64;
                    held.push_back((delay, bytes.clone()));
                    report.reordered += 1;
                } else {
                    outgoing.push(&bytes, &mut report)?;
                    outgoing.release_due(&mut held, &mut report)?;
                }
            }
        }
        outgoing.flush()?;
    }
    for (_, bytes) in held.drain(..) {
        outgoing.push(&bytes, &mut report)?;
    }
    outgoing.flush()?;
    Ok(report)
}

/// Datagrams queued for one batched send: a run of equal size.
struct Outgoing<'a> {
    socket: &'a Socket,
    to: SocketAddr,
    bytes: Vec<u8>,
    segment: usize,
}

impl Outgoing<'_> {
    fn push(&mut self, datagram: &[u8], report: &mut RelayReport) -> Result<()> {
        if datagram.len() != self.segment || self.bytes.len() + datagram.len() > 60_000 {
            self.flush()?;
            self.segment = datagram.len();
        }
        self.bytes.extend_from_slice(datagram);
        report.forwarded += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.bytes.is_empty() {
            self.socket
                .send_all(self.to, &self.bytes, self.segment)
                .map_err(Error::net(format!("relay cannot send to {}", self.to)))?;
            self.bytes.clear();
        }
        Ok(())
    }

    /// Counts down the held datagrams and sends those whose turn has come.
    fn release_due(
        &mut self,
        held: &mut VecDeque<(u64, Vec<u8>)>,
        report: &mut RelayReport,
    ) -> Result<()> {
        for entry in held.iter_mut() {
            entry.0 = entry.0.saturating_sub(1);
        }
        while let Some(pos) = held.iter().position(|(left, _)| *left == 0) {
            if let Some((_, bytes)) = held.remove(pos) {
                self.push(&bytes, report)?;
            }
        }
        Ok(())
    }
}
