//! Kernel confinement of airlock's own processes.
//!
//! A command calls [`confine`] once, at start, before it reads untrusted input. Three pieces:
//!
//! - **the seal** (seccomp, [`seal`]): the network system calls of every thread, and of every
//!   process started afterwards, go through a filter; what would leave the machine is refused
//!   with `EPERM` and recorded with its destination ([`EgressLog`], [`blocked_total`]), but
//!   connections to the egress allow-list's destinations ([`egress`]), which the listener
//!   makes itself, records and hands in;
//! - **the fence** (Landlock, [`fence`]): files only beneath the paths the command was given
//!   and the system's libraries; TCP bind refused outright, and TCP connect but to the egress
//!   allow-list's ports;
//! - **no_new_privs**: nothing started afterwards gains privileges (set-uid binaries).
//!
//! The seal is required: a kernel that refuses it fails the command. The fence is best
//! effort and [`Report`] says what the kernel enforced. A confined process is also made
//! non-dumpable: nothing it starts may ptrace it or read its memory.
//!
//! The engine processes a command starts are third-party code and get a box of their own
//! ([`engine_box`]); what the seal lets through (a unix socket beneath the command's own
//! directories) the seal's listener connects itself and hands in ([`seal`]), so what is
//! checked is what is connected. Refusals are recorded with a bound on how many entries a
//! flood makes ([`recorder`]).

pub mod egress;
pub mod engine_box;
mod fence;
mod handover;
pub mod recorder;
mod seal;
pub mod sockaddr;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

pub use egress::{AllowList, Allowed, Destinations};
pub use engine_box::{BoxSpec, Contained, contain};
pub use fence::{Fenced, Paths, parent_of};
pub use seal::{EngineSockets, allow_engine_sockets};
pub use sockaddr::Destination;

/// Environment variable that makes a confined command stop itself (`SIGSTOP`) right after
/// confinement, so that a test or an operator can inspect `/proc/PID/status` of a command
/// that would otherwise finish too quickly; `SIGCONT` resumes it.
pub const STOP_AFTER_CONFINE_ENV: &str = "AIRLOCK_STOP_AFTER_CONFINE";

/// Why confinement could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel or libseccomp refused the filter.
    #[error("seccomp: {what}: {reason}")]
    Seccomp {
        /// The step that failed.
        what: &'static str,
        /// The library's or kernel's reason.
        reason: String,
    },
    /// Landlock refused a rule (a kernel without Landlock is not an error).
    #[error("landlock: {0}")]
    Landlock(String),
}

/// What network a command keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Nothing leaves the machine: only unix sockets are connected, bound or addressed; sockets
    /// that exist already (a server's listeners and the connections they accept) keep working.
    Sealed,
    /// As [`Network::Sealed`], and nothing is sent at all, even on sockets that exist (a
    /// diode receiver keeps its bound socket to read from).
    ReceiveOnly,
    /// Not filtered (connected-side commands that send over the network: the diode sender).
    Open,
}

/// What a command asks to keep.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its network.
    pub network: Network,
    /// Its files.
    pub paths: Paths,
    /// The destinations beyond its unix sockets it may connect to (sealed networks only).
    pub egress: AllowList,
}

/// One refused attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the kernel stopped it.
    pub time: SystemTime,
    /// The thread that made it (a thread id of this process or of a process it started).
    pub pid: u32,
    /// The thread's name when it is one of this process's, else `started by airlock`.
    pub process: String,
    /// The system call (`connect`, `sendto`, `socket`, ...).
    pub syscall: &'static str,
    /// Where it was going.
    pub destination: Destination,
}

impl Attempt {
    pub(crate) fn now(pid: u32, syscall: &'static str, destination: Destination) -> Self {
        Self {
            time: SystemTime::now(),
            pid,
            process: process_name(pid),
            syscall,
            destination,
        }
    }

    /// The decision, as logged: always `refused` (what continues is not an attempt).
    #[must_use]
    pub fn decision(&self) -> &'static str {
        "refused"
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} to {} by pid {} ({}) refused by the kernel: this command has no network",
            self.syscall, self.destination, self.pid, self.process
        )
    }
}

/// One connection the egress allow-list let through, made by the seal's listener and
/// handed in.
#[derive(Debug, Clone)]
pub struct Connection {
    /// When it was let through.
    pub time: SystemTime,
    /// The thread that asked for it, as in [`Attempt::pid`].
    pub pid: u32,
    /// As in [`Attempt::process`].
    pub process: String,
    /// Where it goes (over TCP).
    pub destination: std::net::SocketAddr,
    /// The allow-list entry's purpose.
    pub purpose: String,
}

impl Connection {
    pub(crate) fn now(pid: u32, destination: std::net::SocketAddr, purpose: &str) -> Self {
        Self {
            time: SystemTime::now(),
            pid,
            process: process_name(pid),
            destination,
            purpose: purpose.to_owned(),
        }
    }
}

impl std::fmt::Display for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connect to {} by pid {} ({}) allowed by the egress allow-list ({})",
            self.destination, self.pid, self.process, self.purpose
        )
    }
}

/// The name of thread `pid` when it is one of this process's, else `started by airlock`.
fn process_name(pid: u32) -> String {
    // A thread of this process has its entry under /proc/self/task; the fence keeps other
    // processes' /proc entries (and so their names) out of reach.
    if std::path::Path::new(&format!("/proc/self/task/{pid}")).exists() {
        std::fs::read_to_string(format!("/proc/self/task/{pid}/comm"))
            .map_or_else(|_| "airlock".to_owned(), |c| c.trim_end().to_owned())
    } else {
        "started by airlock".to_owned()
    }
}

/// Refusals (or allowed connections) of one kind in one interval that were counted but not
/// recorded one by one ([`recorder`]).
#[derive(Debug, Clone)]
pub struct Summary {
    /// The process name, as in [`Attempt::process`].
    pub process: String,
    /// The system call.
    pub syscall: &'static str,
    /// Where they were going.
    pub destination: String,
    /// `refused`, or `allowed` for connections the allow-list let through.
    pub decision: &'static str,
    /// How many.
    pub count: u64,
    /// The first one's time.
    pub first: SystemTime,
    /// The last one's time.
    pub last: SystemTime,
}

/// Where refused attempts and allowed connections are recorded (the audit log, standard
/// error). Called on a thread of its own while the caller waits (bounded), so it must not
/// make network calls itself.
pub trait EgressLog: Send + Sync {
    /// Records one refused attempt.
    fn record(&self, attempt: &Attempt);
    /// Records one connection the allow-list lets through, before it is made; returns
    /// whether it is on record (a connection that is not, is refused).
    fn allowed(&self, connection: &Connection) -> bool;
    /// Records refusals that were counted, not recorded one by one.
    fn summarise(&self, summary: &Summary);
}

/// Writes the summaries of refusals counted so far (call before the process ends, so that
/// the log's counts add up to [`blocked_total`]).
pub fn flush_egress_log() {
    seal::flush();
}

static BLOCKED: AtomicU64 = AtomicU64::new(0);

/// Destinations told apart in [`egress_by_destination`]; the rest are counted as `other`.
const MOST_COUNTED_DESTINATIONS: usize = 256;

/// Decisions by destination and decision (`allowed`, `refused`).
static BY_DESTINATION: std::sync::Mutex<BTreeMap<(String, &'static str), u64>> =
    std::sync::Mutex::new(BTreeMap::new());

pub(crate) fn count_egress(destination: String, decision: &'static str) {
    let mut counts = BY_DESTINATION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (destination, decision);
    let key = if counts.contains_key(&key) || counts.len() < MOST_COUNTED_DESTINATIONS {
        key
    } else {
        ("other".to_owned(), decision)
    };
    *counts.entry(key).or_default() += 1;
}

/// Connections allowed and attempts refused since the process confined itself, by
/// destination and decision (`allowed`, `refused`), for metrics. At most 256 destinations
/// are told apart; the rest are counted under `other`.
#[must_use]
pub fn egress_by_destination() -> Vec<(String, &'static str, u64)> {
    BY_DESTINATION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|((destination, decision), count)| (destination.clone(), *decision, *count))
        .collect()
}

/// Attempts refused in this process (and the processes it started) since it confined itself.
#[must_use]
pub fn blocked_total() -> u64 {
    BLOCKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// What is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The network the seal keeps; `None` when no filter is loaded.
    pub seal: Option<Network>,
    /// The fence as the kernel enforced it.
    pub fence: Fenced,
    /// Whether `no_new_privs` is set.
    pub no_new_privs: bool,
}

/// Confines this process and everything it starts, for good. Call it before starting threads
/// that matter (the filter reaches every thread, but it is simpler to reason about one).
pub fn confine(policy: &Policy, log: Arc<dyn EgressLog>) -> Result<Report, Error> {
    // TCP connects reach the allow-list's ports (the seal checks the addresses) where the
    // network is sealed; an open network is not filtered at all.
    let tcp_ports = match policy.network {
        Network::Sealed => policy.egress.tcp_ports(),
        Network::ReceiveOnly | Network::Open => Vec::new(),
    };
    let fence = fence::restrict(&policy.paths, &tcp_ports)?;
    // Nothing this process starts may ptrace it, read its memory or take its descriptors
    // (the seal's notification descriptor among them) through the dumpable check.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| Error::Seccomp {
            what: "making the process non-dumpable",
            reason: e.to_string(),
        })?;
    let seal = match policy.network {
        Network::Open => {
            no_new_privs()?;
            None
        }
        network => {
            // Unix sockets it may reach: beneath the directories it may write.
            let egress = match network {
                Network::Sealed => policy.egress.clone(),
                Network::ReceiveOnly | Network::Open => AllowList::default(),
            };
            let reach = seal::Reach::new(&policy.paths.write, egress);
            seal::install(network, reach, log)?;
            Some(network)
        }
    };
    let report = Report {
        seal,
        fence,
        no_new_privs: status_field("NoNewPrivs").as_deref() == Some("1"),
    };
    if std::env::var_os(STOP_AFTER_CONFINE_ENV).is_some() {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
    Ok(report)
}

/// For a process that already inherited its confinement and only reads (a parser of hostile
/// documents): no writing, making or removing files, no executing, from now on.
pub fn forbid_writes() -> Result<Fenced, Error> {
    no_new_privs()?;
    fence::forbid_writes()
}

fn no_new_privs() -> Result<(), Error> {
    rustix::thread::set_no_new_privs(true).map_err(|e| Error::Seccomp {
        what: "setting no_new_privs",
        reason: e.to_string(),
    })
}

/// A field of `/proc/self/status` (`Seccomp`, `NoNewPrivs`, ...).
#[must_use]
pub fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// The outcome of trying to reach the network on purpose ([`probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The kernel refused it (`EPERM`/`EACCES`): the seal holds.
    Refused(String),
    /// It got through, or failed for a reason that is not a refusal (no route, timeout): the
    /// seal did not stop it.
    NotRefused(String),
}

/// Tries to open a TCP connection to `address`; a sealed process must be refused at once.
#[must_use]
pub fn probe(address: std::net::SocketAddr) -> Probe {
    match std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2)) {
        Ok(_) => Probe::NotRefused(format!("connected to {address}")),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Probe::Refused(e.to_string()),
        Err(e) => Probe::NotRefused(e.to_string()),
    }
}
