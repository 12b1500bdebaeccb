//! Refused attempts and allowed connections on their way to the egress log, bounded.
//!
//! A hostile process can make hundreds of refused calls a second, or connect to an allowed
//! destination in a loop; one durable audit entry each would grow the log by a gigabyte an
//! hour. So, per interval ([`INTERVAL`]), for refusals and allowed connections alike:
//!
//! - the first [`FIRST_OF_A_KIND`] of each kind (process, system call, destination,
//!   decision) are entries of their own, at most [`MOST_ENTRIES`] in all;
//! - the rest are counted, and each kind with refusals left unrecorded gets one summary entry
//!   with their number, first and last time when the interval ends;
//! - at most [`MOST_KINDS`] kinds are told apart; refusals of further kinds are counted
//!   together in one summary.
//!
//! So an interval adds at most `MOST_ENTRIES + MOST_KINDS + 1` entries, whatever the flood.
//! The total in [`crate::blocked_total`] counts every refusal, recorded or not, and the
//! entries' `count`s add up to it once the interval's summaries are written.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use crate::{Attempt, Connection, EgressLog, Error, Summary};

/// `allowed` or `refused`.
type Decision = &'static str;

/// How long one interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Refusals of one kind recorded one by one in an interval.
pub const FIRST_OF_A_KIND: u64 = 5;
/// Refusals recorded one by one in an interval, of all kinds together.
pub const MOST_ENTRIES: u64 = 50;
/// Kinds told apart in an interval.
pub const MOST_KINDS: usize = 256;
/// Attempts waiting for the recorder before further ones are only counted.
const QUEUE: usize = 1024;
/// How long the listener waits for an attempt to be on record before it answers anyway.
const RECORD_WAIT: Duration = Duration::from_secs(2);

/// What makes two refusals, or two allowed connections, of the same kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    process: String,
    syscall: &'static str,
    destination: String,
    decision: Decision,
}

impl Kind {
    fn of_attempt(attempt: &Attempt) -> Self {
        Self {
            process: attempt.process.clone(),
            syscall: attempt.syscall,
            destination: attempt.destination.to_string(),
            decision: "refused",
        }
    }

    fn of_connection(connection: &Connection) -> Self {
        Self {
            process: connection.process.clone(),
            syscall: "connect",
            destination: connection.destination.to_string(),
            decision: "allowed",
        }
    }
}

/// Refusals of one kind not recorded one by one.
#[derive(Debug, Clone)]
struct Tally {
    recorded: u64,
    unrecorded: u64,
    first: SystemTime,
    last: SystemTime,
}

/// The current interval's bookkeeping.
struct Interval {
    started: Instant,
    recorded: u64,
    kinds: HashMap<Kind, Tally>,
    /// Refusals of kinds beyond [`MOST_KINDS`].
    others: Option<Tally>,
}

impl Interval {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            recorded: 0,
            kinds: HashMap::new(),
            others: None,
        }
    }

    /// Whether an event of `kind` at `time` gets an entry of its own; counts it either way.
    fn admit(&mut self, kind: Kind, time: SystemTime) -> bool {
        let fresh = Tally {
            recorded: 0,
            unrecorded: 0,
            first: time,
            last: time,
        };
        let tally = if self.kinds.contains_key(&kind) || self.kinds.len() < MOST_KINDS {
            self.kinds.entry(kind).or_insert(fresh)
        } else {
            self.others.get_or_insert(fresh)
        };
        tally.last = time;
        let own_entry = tally.recorded < FIRST_OF_A_KIND && self.recorded < MOST_ENTRIES;
        if own_entry {
            tally.recorded += 1;
            self.recorded += 1;
        } else {
            tally.unrecorded += 1;
        }
        own_entry
    }

    /// The summaries of what was counted and not recorded.
    fn summaries(self) -> Vec<Summary> {
        let mut out: Vec<Summary> = self
            .kinds
            .into_iter()
            .filter(|(_, t)| t.unrecorded > 0)
            .map(|(kind, t)| Summary {
                process: kind.process,
                syscall: kind.syscall,
                destination: kind.destination,
                decision: kind.decision,
                count: t.unrecorded,
                first: t.first,
                last: t.last,
            })
            .collect();
        if let Some(t) = self.others.filter(|t| t.unrecorded > 0) {
            out.push(Summary {
                process: "(several)".to_owned(),
                syscall: "(several)",
                destination: format!("(more than {MOST_KINDS} kinds)"),
                decision: "(several)",
                count: t.unrecorded,
                first: t.first,
                last: t.last,
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.count));
        out
    }
}

enum Message {
    Attempt(Attempt, SyncSender<()>),
    /// An allowed connection; answered with whether it is on record (or counted).
    Allowed(Connection, SyncSender<bool>),
    /// Write the summaries now (the process is about to end).
    Flush(SyncSender<()>),
}

/// Writes attempts on a thread of its own, so that a log that blocks (a lock the refused
/// caller holds) cannot stall the listener, and with it every checked call, for good.
#[derive(Clone)]
pub(crate) struct Recorder {
    queue: SyncSender<Message>,
}

impl Recorder {
    pub(crate) fn start(log: Arc<dyn EgressLog>) -> Result<Self, Error> {
        let (queue, messages) = std::sync::mpsc::sync_channel::<Message>(QUEUE);
        std::thread::Builder::new()
            .name("airlock-egress-log".into())
            .spawn(move || record_until_closed(&messages, log.as_ref()))
            .map_err(|source| Error::Seccomp {
                what: "starting the egress log",
                reason: source.to_string(),
            })?;
        Ok(Self { queue })
    }

    /// Records `attempt`, waiting until it is on record (so that a command which gives up
    /// and exits on the error cannot exit first), but no longer than [`RECORD_WAIT`]. A
    /// recorder that is behind by [`QUEUE`] attempts only counts the rest.
    pub(crate) fn record(&self, attempt: Attempt) {
        let (done, recorded) = std::sync::mpsc::sync_channel(1);
        match self.queue.try_send(Message::Attempt(attempt, done)) {
            Ok(()) => {
                let _ = recorded.recv_timeout(RECORD_WAIT);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }

    /// Records `connection` (or counts it, past the interval's bound) and says whether that
    /// is done: no later than [`RECORD_WAIT`] for room in the queue and as long again for
    /// the log, else `false`.
    pub(crate) fn allowed(&self, connection: Connection) -> bool {
        let (done, recorded) = std::sync::mpsc::sync_channel(1);
        let deadline = Instant::now() + RECORD_WAIT;
        let mut message = Message::Allowed(connection, done);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        recorded.recv_timeout(RECORD_WAIT).unwrap_or(false)
    }

    /// Writes the current interval's summaries now and waits for them (bounded).
    pub(crate) fn flush(&self) {
        let (done, flushed) = std::sync::mpsc::sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = flushed.recv_timeout(RECORD_WAIT * 5);
        }
    }
}

fn record_until_closed(messages: &Receiver<Message>, log: &dyn EgressLog) {
    let mut interval = Interval::new();
    loop {
        let left = INTERVAL.saturating_sub(interval.started.elapsed());
        let message = match messages.recv_timeout(left) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match message {
            Some(Message::Attempt(attempt, done)) => {
                if interval.admit(Kind::of_attempt(&attempt), attempt.time) {
                    log.record(&attempt);
                }
                let _ = done.try_send(());
            }
            Some(Message::Allowed(connection, done)) => {
                let kind = Kind::of_connection(&connection);
                let on_record = !interval.admit(kind, connection.time) || log.allowed(&connection);
                let _ = done.try_send(on_record);
            }
            Some(Message::Flush(done)) => {
                for summary in std::mem::replace(&mut interval, Interval::new()).summaries() {
                    log.summarise(&summary);
                }
                let _ = done.try_send(());
            }
            None => {}
        }
        if interval.started.elapsed() >= INTERVAL {
            for summary in std::mem::replace(&mut interval, Interval::new()).summaries() {
                log.summarise(&summary);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Destination;

    fn attempt(destination: &str) -> Attempt {
        Attempt {
            time: SystemTime::now(),
            pid: 7,
            process: "started by airlock".into(),
            syscall: "connect",
            destination: Destination::Unix(destination.into()),
        }
    }

    #[test]
    fn a_flood_of_one_kind_is_a_few_entries_and_one_summary_with_the_rest_counted() {
        let mut interval = Interval::new();
        let admitted = (0..10_000)
            .filter(|_| {
                let a = attempt("/run/x.sock");
                interval.admit(Kind::of_attempt(&a), a.time)
            })
            .count();
        assert_eq!(admitted as u64, FIRST_OF_A_KIND);
        let summaries = interval.summaries();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, 10_000 - FIRST_OF_A_KIND);
    }

    #[test]
    fn many_kinds_are_bounded_in_entries_and_in_kinds_and_every_refusal_is_counted() {
        let mut interval = Interval::new();
        let total = 100_000u64;
        let admitted = (0..total)
            .filter(|i| {
                let a = attempt(&format!("/run/{}.sock", i % 5000));
                interval.admit(Kind::of_attempt(&a), a.time)
            })
            .count() as u64;
        assert_eq!(admitted, MOST_ENTRIES);
        let summaries = interval.summaries();
        assert!(summaries.len() <= MOST_KINDS + 1, "{}", summaries.len());
        let counted: u64 = summaries.iter().map(|s| s.count).sum();
        assert_eq!(admitted + counted, total);
    }
}
