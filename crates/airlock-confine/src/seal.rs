//! The network seal: a seccomp filter whose network system calls go to a listener thread in
//! this process (seccomp user notification). The listener reads the address the caller passed,
//! lets local (unix socket) traffic continue, and refuses everything else with `EPERM`, after
//! recording who tried to reach what.
//!
//! Why user notification rather than a plain `EPERM` filter: a filter cannot read memory, so
//! it cannot see a destination, and the issue is not only to stop an attempt but to say where
//! it was going. Why not `SIGSYS` traps: a trap handler does not survive `exec`, and the engine
//! processes airlock starts inherit the filter; their notifications reach the same listener.
//!
//! What the filter decides alone: `socket()` of any family but `AF_UNIX`, and of `AF_INET`/
//! `AF_INET6` as anything but plain TCP (another type, or SCTP, which connects through
//! `setsockopt`), goes to the listener and is refused. A TCP socket may be made so that its
//! `connect` shows where it was going; the connect is refused unless the egress allow-list
//! ([`crate::egress`]) holds its destination, and then made by the listener and handed in. `sendto` without an address
//! and without `MSG_FASTOPEN` (a connected socket: the server's replies) passes unchecked;
//! `ioctl(TIOCSTI)`, which types into the terminal, is refused outright.
//!
//! What the listener lets continue: a connect or an addressed send to a unix socket beneath
//! the command's own directories, from a unix socket (a resolver's or a bus's socket is local,
//! but what listens there reaches out); a bind or listen of a unix socket; a send that names
//! no address. Everything else is refused.
//!
//! No window: a connect the listener allows is not continued but made by the listener itself
//! and handed in ([`crate::handover`]), so another thread of the caller swapping the path or
//! the descriptor after the check changes nothing. Processes the command started (engine
//! processes) reach only the engine runtime directories' sockets ([`allow_engine_sockets`])
//! and send nothing addressed. A call of another architecture (`int 0x80`, x32) is refused
//! and recorded like any other.

use std::io::IoSliceMut;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpFilterContext, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags,
    ScmpSyscall, notify_id_valid, scmp_cmp,
};

use std::time::SystemTime;

use crate::egress::AllowList;
use crate::recorder::Recorder;
use crate::sockaddr::{Destination, MAX_SOCKADDR};
use crate::{Attempt, BLOCKED, Connection, EgressLog, Error, Network};

/// The calls the listener sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Socket,
    Connect,
    Bind,
    Listen,
    SendTo,
    SendMsg,
    SendMmsg,
    IoUringSetup,
}

impl Call {
    const ALL: [Self; 8] = [
        Self::Socket,
        Self::Connect,
        Self::Bind,
        Self::Listen,
        Self::SendTo,
        Self::SendMsg,
        Self::SendMmsg,
        Self::IoUringSetup,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Connect => "connect",
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::SendTo => "sendto",
            Self::SendMsg => "sendmsg",
            Self::SendMmsg => "sendmmsg",
            Self::IoUringSetup => "io_uring_setup",
        }
    }
}

/// What the listener answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Continue,
    /// Connect the caller's socket to the unix socket at this path, beneath `root`: the
    /// listener makes the connection and hands it in.
    Connect {
        root: String,
        rest: String,
    },
    /// Connect the caller's socket to this destination of the egress allow-list: the
    /// listener makes the connection and hands it in.
    ConnectIp {
        to: std::net::SocketAddr,
        purpose: String,
    },
    Refuse(Destination),
}

/// Reads the calling task's memory and sockets.
pub(crate) trait Task {
    /// `len` bytes at `addr`, or `None` when they cannot all be read.
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>>;
    /// The address family of the caller's descriptor `fd`.
    fn socket_family(&self, fd: u64) -> Option<u16>;
    /// The type (`SOCK_STREAM`, `SOCK_DGRAM`, ...) of the caller's socket `fd`.
    fn socket_type(&self, fd: u64) -> Option<i32>;
}

/// `struct msghdr` on 64-bit Linux: `msg_name` then `msg_namelen` lead.
const MSGHDR_SIZE: usize = 56;
/// `struct mmsghdr`: a `msghdr` and the sent length, padded.
const MMSGHDR_SIZE: usize = 64;
/// The kernel's own cap on `sendmmsg`'s vector (`UIO_MAXIOV`).
const MAX_MMSG: u64 = 1024;

/// What a caller may reach: unix sockets beneath these directories, by absolute path, and
/// the egress allow-list's destinations.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reach {
    roots: Vec<String>,
    /// Whether a send may name a unix socket beneath a root (the command's own threads); a
    /// process it started sends only on connected sockets.
    addressed_sends: bool,
    /// The same for every caller: what an engine process reaches is what the command may.
    egress: Arc<AllowList>,
}

/// The engine runtime directories whose sockets may be reached, by every process of the
/// command (engine processes included, which reach nothing else).
static ENGINE_SOCKET_DIRS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// While held, unix sockets beneath one engine runtime directory may be connected to.
#[derive(Debug)]
pub struct EngineSockets {
    dir: String,
}

/// Lets the command and the processes it started connect to unix sockets beneath `dir` (an
/// engine's runtime directory) until the returned guard is dropped.
pub fn allow_engine_sockets(dir: &std::path::Path) -> std::io::Result<EngineSockets> {
    let dir = canonical_root(dir)?;
    ENGINE_SOCKET_DIRS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(dir.clone());
    Ok(EngineSockets { dir })
}

impl Drop for EngineSockets {
    fn drop(&mut self) {
        let mut dirs = ENGINE_SOCKET_DIRS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = dirs.iter().position(|d| *d == self.dir) {
            dirs.swap_remove(at);
        }
    }
}

fn canonical_root(dir: &std::path::Path) -> std::io::Result<String> {
    let real = std::fs::canonicalize(dir)?;
    Ok(real.to_string_lossy().trim_end_matches('/').to_owned())
}

impl Reach {
    pub(crate) fn new(roots: &[std::path::PathBuf], egress: AllowList) -> Self {
        let roots = roots
            .iter()
            .filter_map(|r| canonical_root(r).ok())
            .collect();
        Self {
            roots,
            addressed_sends: true,
            egress: Arc::new(egress),
        }
    }

    /// What a caller may reach: the command's own threads, its roots and the engines'
    /// sockets; a process it started, the engines' sockets only, and no addressed sends.
    fn for_caller(&self, own_thread: bool) -> Self {
        let engines = ENGINE_SOCKET_DIRS
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut roots = if own_thread {
            self.roots.clone()
        } else {
            Vec::new()
        };
        roots.extend(engines);
        Self {
            roots,
            addressed_sends: own_thread && self.addressed_sends,
            egress: self.egress.clone(),
        }
    }

    /// The root `path` lies beneath and the rest of it: absolute, no `..`, no abstract name
    /// (abstract sockets belong to whoever made them: a desktop bus, a resolver).
    fn root_of(&self, path: &str) -> Option<(String, String)> {
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return None;
        }
        self.roots.iter().find_map(|root| {
            let rest = path.strip_prefix(root.as_str())?.strip_prefix('/')?;
            (!rest.is_empty()).then(|| (root.clone(), rest.to_owned()))
        })
    }

    fn allows(&self, path: &str) -> bool {
        self.root_of(path).is_some()
    }
}

/// `MSG_FASTOPEN`: a send that opens a TCP connection on the way.
const MSG_FASTOPEN: u64 = 0x2000_0000;

/// The decision on one notified call (`args` as the kernel gave them).
pub(crate) fn decide(
    network: Network,
    local: &Reach,
    call: Call,
    args: [u64; 6],
    task: &dyn Task,
) -> Verdict {
    let address = |ptr: u64, len: u64| -> Destination {
        let len = usize::try_from(len)
            .unwrap_or(MAX_SOCKADDR)
            .min(MAX_SOCKADDR);
        task.read(ptr, len)
            .map_or(Destination::Unreadable, |b| Destination::parse(&b))
    };
    // A unix socket beneath the command's own directories; nothing else. (Unix sockets are
    // local, but what listens on them need not be: a resolver or a bus can reach out.)
    let reachable = |destination: &Destination| match destination {
        Destination::Unix(path) => local.addressed_sends && local.allows(path),
        _ => false,
    };
    let reachable_or_refused = |destination: Destination| {
        if reachable(&destination) {
            Verdict::Continue
        } else {
            Verdict::Refuse(destination)
        }
    };
    let unix_socket = |fd: u64| {
        task.socket_family(fd)
            .is_some_and(|family| i32::from(family) == libc::AF_UNIX)
    };
    match call {
        Call::Socket => Verdict::Refuse(Destination::NewSocket {
            family: u16::try_from(args[0]).unwrap_or(u16::MAX),
            kind: (args[1] as u32) & !((libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u32),
        }),
        Call::IoUringSetup => Verdict::Refuse(Destination::None),
        Call::Connect => {
            let destination = address(args[1], args[2]);
            if network == Network::ReceiveOnly {
                return Verdict::Refuse(destination);
            }
            // An IP socket reaches the allow-list's destinations and nothing else; it is
            // never given a unix address (another thread could rewrite it after the check).
            if !unix_socket(args[0]) {
                // TCP only (the filter lets no other IP socket be made; checked again here).
                if task.socket_type(args[0]) != Some(libc::SOCK_STREAM) {
                    return Verdict::Refuse(destination);
                }
                return match destination {
                    Destination::Ip(to) => match local.egress.permits(to, SystemTime::now()) {
                        Some(allowed) => Verdict::ConnectIp {
                            to,
                            purpose: allowed.purpose.clone(),
                        },
                        None => Verdict::Refuse(destination),
                    },
                    other => Verdict::Refuse(other),
                };
            }
            match destination {
                // AF_UNSPEC dissolves an association: it goes nowhere.
                Destination::Family(0) => Verdict::Continue,
                Destination::Unix(path) => match local.root_of(&path) {
                    Some((root, rest)) => Verdict::Connect { root, rest },
                    None => Verdict::Refuse(Destination::Unix(path)),
                },
                other => Verdict::Refuse(other),
            }
        }
        // A unix socket's name is made under the fence's rules; anything else is refused.
        Call::Bind => match address(args[1], args[2]) {
            destination @ Destination::Unix(_) => {
                if unix_socket(args[0]) {
                    Verdict::Continue
                } else {
                    Verdict::Refuse(destination)
                }
            }
            other => Verdict::Refuse(other),
        },
        Call::Listen => match task.socket_family(args[0]) {
            Some(family) if i32::from(family) == libc::AF_UNIX => Verdict::Continue,
            Some(family) => Verdict::Refuse(Destination::Family(family)),
            None => Verdict::Refuse(Destination::Unreadable),
        },
        Call::SendTo => {
            let destination = if args[4] == 0 {
                Destination::None
            } else {
                address(args[4], args[5])
            };
            if network == Network::ReceiveOnly || args[3] & MSG_FASTOPEN != 0 {
                Verdict::Refuse(destination)
            } else {
                reachable_or_refused(destination)
            }
        }
        Call::SendMsg | Call::SendMmsg => {
            let (count, stride, flags) = if call == Call::SendMsg {
                (1, MSGHDR_SIZE, args[2])
            } else {
                (args[2].min(MAX_MMSG) as usize, MMSGHDR_SIZE, args[3])
            };
            let Some(headers) = task.read(args[1], count * stride) else {
                return Verdict::Refuse(Destination::Unreadable);
            };
            // Every named message must be one the command may send; unnamed ones go where
            // the socket is already connected.
            let mut names = headers.chunks_exact(stride).filter_map(|h| {
                let ptr = u64::from_ne_bytes(h[..8].try_into().ok()?);
                let len = u32::from_ne_bytes(h[8..12].try_into().ok()?);
                (ptr != 0).then(|| address(ptr, u64::from(len)))
            });
            let refused = names.find(|d| !reachable(d));
            if network == Network::ReceiveOnly || flags & MSG_FASTOPEN != 0 {
                return Verdict::Refuse(refused.unwrap_or(Destination::None));
            }
            refused.map_or(Verdict::Continue, Verdict::Refuse)
        }
    }
}

/// Builds and loads the filter for every thread of the process, then starts the listener.
pub(crate) fn install(
    network: Network,
    local: Reach,
    log: Arc<dyn EgressLog>,
) -> Result<(), Error> {
    let e = |what: &'static str| {
        move |source: libseccomp::error::SeccompError| Error::Seccomp {
            what,
            reason: source.to_string(),
        }
    };
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(e("creating the filter"))?;
    // Another architecture's system call numbers (int 0x80, x32) would slip past the rules:
    // every such call goes to the listener, which refuses and records it (a kernel that
    // cannot notify them kills the process instead).
    if ctx.set_act_badarch(ScmpAction::Notify).is_err() {
        ctx.set_act_badarch(ScmpAction::KillProcess)
            .map_err(e("refusing other architectures"))?;
    }
    ctx.set_ctl_nnp(true).map_err(e("setting no_new_privs"))?;
    ctx.set_ctl_tsync(true)
        .map_err(e("synchronising threads"))?;
    let mut numbers = Vec::new();
    for call in Call::ALL {
        let number = ScmpSyscall::from_name(call.name()).map_err(e("naming a system call"))?;
        numbers.push((number, call));
    }
    // Typing into the terminal that started airlock would run commands outside the seal.
    let ioctl = ScmpSyscall::from_name("ioctl").map_err(e("naming a system call"))?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "the ioctl request type differs between targets"
    )]
    for request in [libc::TIOCSTI as u64, libc::TIOCLINUX as u64] {
        ctx.add_rule_conditional(
            ScmpAction::Errno(libc::EPERM),
            ioctl,
            &[scmp_cmp!($arg1 == request)],
        )
        .map_err(e("adding a rule"))?;
    }
    let notify = ScmpAction::Notify;
    let mut rule = |call: Call, conditions: &[libseccomp::ScmpArgCompare]| {
        let number = ScmpSyscall::from_name(call.name()).map_err(e("naming a system call"))?;
        if conditions.is_empty() {
            ctx.add_rule(notify, number).map(|_| ())
        } else {
            ctx.add_rule_conditional(notify, number, conditions)
                .map(|_| ())
        }
        .map_err(e("adding a rule"))
    };
    // socket(): AF_UNIX always; AF_INET/AF_INET6 only as plain TCP (see the module docs).
    let (inet, inet6) = (libc::AF_INET as u64, libc::AF_INET6 as u64);
    let stream = libc::SOCK_STREAM as u64;
    rule(Call::Socket, &[scmp_cmp!($arg0 == libc::AF_UNSPEC as u64)])?;
    for family in 3..inet6 {
        rule(Call::Socket, &[scmp_cmp!($arg0 == family)])?;
    }
    rule(Call::Socket, &[scmp_cmp!($arg0 > inet6)])?;
    for family in [inet, inet6] {
        for kind in [
            libc::SOCK_DGRAM,
            libc::SOCK_RAW,
            libc::SOCK_RDM,
            libc::SOCK_SEQPACKET,
            libc::SOCK_DCCP,
            // SOCK_PACKET (10), obsolete but still accepted by the kernel.
            10,
        ] {
            rule(
                Call::Socket,
                &[
                    scmp_cmp!($arg0 == family),
                    scmp_cmp!($arg1 & 0xf == kind as u64),
                ],
            )?;
        }
        // A stream socket of another protocol than TCP (SCTP connects through setsockopt,
        // past connect's check; MPTCP): only protocol 0 or IPPROTO_TCP (6).
        let tcp = libc::IPPROTO_TCP as u64;
        for protocol in 1..tcp {
            rule(
                Call::Socket,
                &[
                    scmp_cmp!($arg0 == family),
                    scmp_cmp!($arg1 & 0xf == stream),
                    scmp_cmp!($arg2 == protocol),
                ],
            )?;
        }
        rule(
            Call::Socket,
            &[
                scmp_cmp!($arg0 == family),
                scmp_cmp!($arg1 & 0xf == stream),
                scmp_cmp!($arg2 > tcp),
            ],
        )?;
    }
    rule(Call::Connect, &[])?;
    rule(Call::Bind, &[])?;
    rule(Call::Listen, &[])?;
    match network {
        Network::ReceiveOnly => rule(Call::SendTo, &[])?,
        _ => {
            rule(Call::SendTo, &[scmp_cmp!($arg4 != 0)])?;
            // TCP Fast Open: a send that connects.
            rule(
                Call::SendTo,
                &[scmp_cmp!($arg3 & MSG_FASTOPEN == MSG_FASTOPEN)],
            )?;
        }
    }
    rule(Call::SendMsg, &[])?;
    rule(Call::SendMmsg, &[])?;
    rule(Call::IoUringSetup, &[])?;
    // A filter of a later layer with a listener of its own would take precedence over this
    // one's listener, and could answer "continue" to itself: no new listener, in any process.
    let seccomp = ScmpSyscall::from_name("seccomp").map_err(e("naming a system call"))?;
    let new_listener: u64 = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    ctx.add_rule_conditional(
        ScmpAction::Errno(libc::EPERM),
        seccomp,
        &[scmp_cmp!($arg1 & new_listener == new_listener)],
    )
    .map_err(e("adding a rule"))?;
    ctx.load().map_err(e("loading the filter"))?;
    let fd = ctx
        .get_notify_fd()
        .map_err(e("opening the notification descriptor"))?;
    let native = ScmpArch::native();
    // The filter stays loaded for the life of the process, and the context keeps the
    // descriptor open in libseccomp: keep the context for good too.
    std::mem::forget(ctx);
    let recorder = Recorder::start(log)?;
    let _ = RECORDER.set(recorder.clone());
    let connector = Connector::start(fd, &recorder)?;
    std::thread::Builder::new()
        .name("airlock-seal".into())
        .spawn(move || listen(fd, network, &local, &numbers, native, &recorder, &connector))
        .map_err(|source| Error::Seccomp {
            what: "starting the listener",
            reason: source.to_string(),
        })?;
    Ok(())
}

/// Whether this process has loaded the seal (it sends calls of another architecture to its
/// listener).
pub(crate) fn installed() -> bool {
    RECORDER.get().is_some()
}

/// The running seal's recorder, for [`flush`].
static RECORDER: std::sync::OnceLock<Recorder> = std::sync::OnceLock::new();

/// Writes the summaries of refusals counted so far.
pub(crate) fn flush() {
    if let Some(recorder) = RECORDER.get() {
        recorder.flush();
    }
}

/// Consecutive failures to receive a notification after which the listener gives up. It
/// then ends the process: a listener that stopped answering would leave every checked call
/// waiting for good.
const MAX_RECEIVE_FAILURES: u32 = 1000;

/// Answers notifications for the life of the process.
fn listen(
    fd: i32,
    network: Network,
    local: &Reach,
    numbers: &[(ScmpSyscall, Call)],
    native: ScmpArch,
    recorder: &Recorder,
    connector: &Connector,
) {
    let mut failures = 0u32;
    loop {
        let request = match ScmpNotifReq::receive(fd) {
            Ok(request) => {
                failures = 0;
                request
            }
            // Most often a caller that died between notification and receipt.
            Err(error) => {
                failures += 1;
                if failures >= MAX_RECEIVE_FAILURES {
                    eprintln!("airlock: the network seal's listener failed ({error}); stopping");
                    std::process::abort();
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        let call = numbers
            .iter()
            .find(|(number, _)| *number == request.data.syscall)
            .map(|(_, call)| *call);
        // A connector's own connect, to what the listener checked and it resolved: its
        // arguments live on its stack, which nothing outside this process can touch.
        if connector.tids.contains(&request.pid) && call == Some(Call::Connect) {
            let _ =
                ScmpNotifResp::new_continue(request.id, ScmpNotifRespFlags::empty()).respond(fd);
            continue;
        }
        let own_thread = Caller(request.pid).is_own_thread();
        let (verdict, name) = match call {
            Some(call) if request.data.arch == native => (
                decide(
                    network,
                    &local.for_caller(own_thread),
                    call,
                    request.data.args,
                    &Caller(request.pid),
                ),
                call.name(),
            ),
            _ if request.data.arch != native => (
                Verdict::Refuse(Destination::None),
                "call of another architecture",
            ),
            // Not one of ours: nothing to continue.
            _ => (Verdict::Refuse(Destination::Unreadable), "unknown"),
        };
        // What was read belongs to this request only if the caller still waits on it.
        if notify_id_valid(fd, request.id).is_err() {
            continue;
        }
        let flags = ScmpNotifRespFlags::empty();
        let response = match verdict {
            Verdict::Continue => ScmpNotifResp::new_continue(request.id, flags),
            // A connector answers: its connect comes back to this thread for a verdict.
            Verdict::Connect { root, rest } => {
                let job = Job::for_request(&request, Target::Unix { root, rest });
                match connector.queue(&job, own_thread).try_send(job) {
                    Ok(()) => continue,
                    Err(_) => ScmpNotifResp::new_error(request.id, -libc::EAGAIN, flags),
                }
            }
            Verdict::ConnectIp { to, purpose } => {
                let job = Job::for_request(&request, Target::Ip { to, purpose });
                match connector.queue(&job, own_thread).try_send(job) {
                    Ok(()) => continue,
                    Err(_) => ScmpNotifResp::new_error(request.id, -libc::EAGAIN, flags),
                }
            }
            Verdict::Refuse(destination) => {
                BLOCKED.fetch_add(1, Ordering::Relaxed);
                crate::count_egress(destination.to_string(), "refused");
                recorder.record(Attempt::now(request.pid, name, destination));
                ScmpNotifResp::new_error(request.id, -libc::EPERM, flags)
            }
        };
        // A caller killed meanwhile: nothing to answer.
        let _ = response.respond(fd);
    }
}

/// A connect the listener allowed, for a connector to make.
struct Job {
    id: u64,
    pid: u32,
    slot: u64,
    target: Target,
}

impl Job {
    /// The connect `request` asked for (its socket is argument 0), to `target`.
    fn for_request(request: &ScmpNotifReq, target: Target) -> Self {
        Self {
            id: request.id,
            pid: request.pid,
            slot: request.data.args[0],
            target,
        }
    }
}

enum Target {
    /// The unix socket at `rest` beneath `root`.
    Unix { root: String, rest: String },
    /// A destination of the egress allow-list, granted for `purpose`.
    Ip {
        to: std::net::SocketAddr,
        purpose: String,
    },
}

/// The threads that make allowed connections and hand them in. Their own `connect`s go
/// through the filter like every thread's, and the listener lets them continue by thread
/// id: the listener cannot connect itself, since nobody would be left to answer. Unix
/// connects are local and quick, one thread makes them all. A connect to another machine may
/// wait up to [`handover::IP_CONNECT_WAIT`], so those have threads of their own: some for the
/// command's own threads and some for the processes it started, so that an engine tying up
/// its connectors cannot hold up the server's.
///
/// [`handover::IP_CONNECT_WAIT`]: crate::handover::IP_CONNECT_WAIT
struct Connector {
    unix: std::sync::mpsc::SyncSender<Job>,
    ip_own: std::sync::mpsc::SyncSender<Job>,
    ip_started: std::sync::mpsc::SyncSender<Job>,
    tids: Vec<u32>,
}

/// Connects waiting for a connector before further ones are refused with `EAGAIN`.
const CONNECT_QUEUE: usize = 256;
/// Threads making connections to the allow-list's destinations, for each of the two kinds of
/// caller.
const IP_CONNECTORS: usize = 2;

/// Ends the process if a connector thread ends: its thread id is trusted by the listener, and
/// once reused by another thread (or a process an engine forks) would let connects through
/// unchecked.
struct AbortOnExit;

impl Drop for AbortOnExit {
    fn drop(&mut self) {
        eprintln!("airlock: a connector of the network seal stopped; stopping");
        std::process::abort();
    }
}

impl Connector {
    /// Where `job` waits: unix connects in one queue; connects to other machines in the
    /// command's own or in its engines', so that neither holds up the other.
    fn queue(&self, job: &Job, own_thread: bool) -> &std::sync::mpsc::SyncSender<Job> {
        match (&job.target, own_thread) {
            (Target::Unix { .. }, _) => &self.unix,
            (Target::Ip { .. }, true) => &self.ip_own,
            (Target::Ip { .. }, false) => &self.ip_started,
        }
    }

    fn start(notify: i32, recorder: &Recorder) -> Result<Self, Error> {
        type Queue = Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Job>>>;
        let queue = || {
            let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(CONNECT_QUEUE);
            (jobs, Arc::new(std::sync::Mutex::new(queue)))
        };
        let (unix, unix_queue) = queue();
        let (ip_own, ip_own_queue) = queue();
        let (ip_started, ip_started_queue) = queue();
        let threads: Vec<Queue> = std::iter::once(unix_queue)
            .chain(std::iter::repeat_n(ip_own_queue, IP_CONNECTORS))
            .chain(std::iter::repeat_n(ip_started_queue, IP_CONNECTORS))
            .collect();
        let count = threads.len();
        let (tid_tx, tid_rx) = std::sync::mpsc::sync_channel(count);
        let failed = |source: std::io::Error| Error::Seccomp {
            what: "starting the connector",
            reason: source.to_string(),
        };
        for queue in threads {
            let tid_tx = tid_tx.clone();
            let recorder = recorder.clone();
            std::thread::Builder::new()
                .name("airlock-connect".into())
                .spawn(move || {
                    let _abort_on_exit = AbortOnExit;
                    let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
                    drop(tid_tx);
                    loop {
                        let job = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        // The listener holds the sending end for the life of the process:
                        // without it nothing answers, and the process ends (`AbortOnExit`).
                        let Ok(job) = job else { return };
                        if let Err(errno) = connect_for(notify, &job, &recorder) {
                            let flags = ScmpNotifRespFlags::empty();
                            let _ = ScmpNotifResp::new_error(job.id, -errno.raw_os_error(), flags)
                                .respond(notify);
                        }
                    }
                })
                .map_err(failed)?;
        }
        let tids = (0..count)
            .map(|_| {
                tid_rx
                    .recv()
                    .ok()
                    .and_then(|tid| u32::try_from(tid).ok())
                    .ok_or_else(|| failed(std::io::Error::other("a connector did not start")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            unix,
            ip_own,
            ip_started,
            tids,
        })
    }
}

/// Makes the connection an allowed connect asked for, puts it in the caller's place and
/// answers the caller's connect. A connection to the allow-list is made only once it is on
/// record (or counted in a summary of a flood, [`crate::recorder`]).
fn connect_for(notify: i32, job: &Job, recorder: &Recorder) -> Result<(), rustix::io::Errno> {
    use crate::handover::{self, Progress};
    let theirs = Caller(job.pid)
        .socket(job.slot)
        .ok_or(rustix::io::Errno::BADF)?;
    let (ours, progress) = match &job.target {
        Target::Unix { root, rest } => {
            let target = handover::resolve_beneath(root, rest)?;
            (
                handover::connect_like(&theirs, &target)?,
                Progress::Connected,
            )
        }
        Target::Ip { to, purpose } => {
            // The caller may have gone meanwhile: then nothing is connected or recorded.
            if notify_id_valid(notify, job.id).is_err() {
                return Err(rustix::io::Errno::INTR);
            }
            // Not on record, not made: a log that cannot take the entry refuses the
            // connection.
            if !recorder.allowed(Connection::now(job.pid, *to, purpose)) {
                BLOCKED.fetch_add(1, Ordering::Relaxed);
                crate::count_egress(to.to_string(), "refused");
                return Err(rustix::io::Errno::PERM);
            }
            crate::count_egress(to.to_string(), "allowed");
            handover::connect_ip(&theirs, *to)?
        }
    };
    handover::hand_in(notify, job.id, &ours, job.slot)?;
    let flags = ScmpNotifRespFlags::empty();
    let response = match progress {
        Progress::Connected => ScmpNotifResp::new_val(job.id, 0, flags),
        Progress::InProgress => ScmpNotifResp::new_error(job.id, -libc::EINPROGRESS, flags),
    };
    // A caller killed meanwhile: nothing to answer.
    let _ = response.respond(notify);
    Ok(())
}

/// A task that made a notified call, by thread id.
struct Caller(u32);

impl Caller {
    /// Whether the caller is a thread of this process (not one it started).
    fn is_own_thread(&self) -> bool {
        std::path::Path::new(&format!("/proc/self/task/{}", self.0)).exists()
    }

    /// A duplicate of the caller's descriptor `fd`.
    fn socket(&self, fd: u64) -> Option<std::os::fd::OwnedFd> {
        use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
        let pid = Pid::from_raw(i32::try_from(self.0).ok()?)?;
        // The caller may be any thread: PIDFD_THREAD (O_EXCL, Linux 6.9) names a thread. An
        // older kernel needs the process: this one's for its own threads, else the caller
        // itself, which is right for a single-threaded child's main thread.
        let pidfd = pidfd_open(pid, PidfdFlags::from_bits_retain(libc::O_EXCL as _))
            .or_else(|_| {
                let process = if self.is_own_thread() {
                    rustix::process::getpid()
                } else {
                    pid
                };
                pidfd_open(process, PidfdFlags::empty())
            })
            .ok()?;
        pidfd_getfd(&pidfd, i32::try_from(fd).ok()?, PidfdGetfdFlags::empty()).ok()
    }
}

impl Task for Caller {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if addr == 0 || len == 0 {
            return None;
        }
        let mut buffer = vec![0u8; len];
        let remote = [nix::sys::uio::RemoteIoVec {
            base: usize::try_from(addr).ok()?,
            len,
        }];
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0).ok()?);
        let read =
            nix::sys::uio::process_vm_readv(pid, &mut [IoSliceMut::new(&mut buffer)], &remote)
                .ok()?;
        (read == len).then_some(buffer)
    }

    fn socket_family(&self, fd: u64) -> Option<u16> {
        let socket = self.socket(fd)?;
        let address = rustix::net::getsockname(&socket).ok()?;
        Some(address.address_family().as_raw())
    }

    fn socket_type(&self, fd: u64) -> Option<i32> {
        let socket = self.socket(fd)?;
        let kind = rustix::net::sockopt::socket_type(&socket).ok()?;
        i32::try_from(kind.as_raw()).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::egress::Allowed;
    use std::collections::HashMap;

    /// A caller whose memory is a map of address to bytes.
    #[derive(Default)]
    struct Scripted {
        memory: HashMap<u64, Vec<u8>>,
        families: HashMap<u64, u16>,
        /// Socket types; a socket not named here is a stream.
        types: HashMap<u64, i32>,
    }

    impl Task for Scripted {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            let bytes = self.memory.get(&addr)?;
            (bytes.len() >= len).then(|| bytes[..len].to_vec())
        }
        fn socket_family(&self, fd: u64) -> Option<u16> {
            self.families.get(&fd).copied()
        }
        fn socket_type(&self, fd: u64) -> Option<i32> {
            self.families
                .contains_key(&fd)
                .then(|| self.types.get(&fd).copied().unwrap_or(libc::SOCK_STREAM))
        }
    }

    fn inet(a: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend(port.to_be_bytes());
        b.extend(a);
        b.extend([0u8; 8]);
        b
    }

    fn inet6(a: std::net::Ipv6Addr, port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        b.extend(port.to_be_bytes());
        b.extend([0u8; 4]);
        b.extend(a.octets());
        b.extend([0u8; 4]);
        b
    }

    fn unix(path: &str) -> Vec<u8> {
        let mut b = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        b.extend(path.as_bytes());
        b.push(0);
        b
    }

    fn msghdr(name: u64, len: u32) -> Vec<u8> {
        let mut h = name.to_ne_bytes().to_vec();
        h.extend(len.to_ne_bytes());
        h.resize(MSGHDR_SIZE, 0);
        h
    }

    /// Unix sockets may be reached beneath /tmp only.
    fn local() -> Reach {
        Reach::new(&[std::path::PathBuf::from("/tmp")], AllowList::default())
    }

    fn sealed(call: Call, args: [u64; 6], task: &Scripted) -> Verdict {
        decide(Network::Sealed, &local(), call, args, task)
    }

    /// A caller whose descriptor 3 is of `family` and whose memory holds `at`.
    fn caller(family: i32, at: &[(u64, Vec<u8>)]) -> Scripted {
        Scripted {
            memory: at.iter().cloned().collect(),
            families: HashMap::from([(3, family as u16)]),
            ..Default::default()
        }
    }

    #[test]
    fn the_allow_list_lets_its_destinations_through_to_the_listener_and_nothing_else() {
        let mut lapsed = Allowed::new("10.0.0.9:443".parse().unwrap(), "lapsed");
        lapsed.until = Some(SystemTime::now() - std::time::Duration::from_secs(1));
        let reach = Reach::new(
            &[std::path::PathBuf::from("/tmp")],
            AllowList::new(vec![
                Allowed::new("10.0.0.5:636".parse().unwrap(), "directory"),
                Allowed::new("[fd00::5]:443".parse().unwrap(), "object store"),
                lapsed,
            ])
            .unwrap(),
        );
        let connect = |family: i32, to: Vec<u8>, kind: i32, reach: &Reach, network| {
            let len = to.len() as u64;
            let mut task = caller(family, &[(0x1000, to)]);
            task.types.insert(3, kind);
            decide(
                network,
                reach,
                Call::Connect,
                [3, 0x1000, len, 0, 0, 0],
                &task,
            )
        };
        let sealed = Network::Sealed;
        let (v4, v6, stream) = (libc::AF_INET, libc::AF_INET6, libc::SOCK_STREAM);
        assert_eq!(
            connect(v4, inet([10, 0, 0, 5], 636), stream, &reach, sealed),
            Verdict::ConnectIp {
                to: "10.0.0.5:636".parse().unwrap(),
                purpose: "directory".into()
            }
        );
        // An IPv6 socket reaches an IPv4 entry through its mapped address, and IPv6 entries.
        assert!(matches!(
            connect(
                v6,
                inet6("::ffff:10.0.0.5".parse().unwrap(), 636),
                stream,
                &reach,
                sealed
            ),
            Verdict::ConnectIp { .. }
        ));
        assert!(matches!(
            connect(
                v6,
                inet6("fd00::5".parse().unwrap(), 443),
                stream,
                &reach,
                sealed
            ),
            Verdict::ConnectIp { .. }
        ));
        for (family, to, kind) in [
            (v4, inet([10, 0, 0, 6], 636), stream), // another address, same port
            (v4, inet([10, 0, 0, 5], 389), stream), // same address, another port
            (v4, inet([10, 0, 0, 9], 443), stream), // lapsed
            (v6, inet6("fd00::6".parse().unwrap(), 443), stream),
            (v4, inet([10, 0, 0, 5], 636), libc::SOCK_DGRAM), // UDP is never let through
            (v4, inet([10, 0, 0, 5], 636), libc::SOCK_RAW),
            (v4, unix("/tmp/x.sock"), stream), // a unix address on an IP socket
        ] {
            assert!(
                matches!(
                    connect(family, to.clone(), kind, &reach, sealed),
                    Verdict::Refuse(_)
                ),
                "{:?} {kind}",
                Destination::parse(&to)
            );
        }
        // A receive-only command sends nothing, whatever the list says; a process the command
        // started is held to the same list.
        assert!(matches!(
            connect(
                v4,
                inet([10, 0, 0, 5], 636),
                stream,
                &reach,
                Network::ReceiveOnly
            ),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            connect(
                v4,
                inet([10, 0, 0, 5], 636),
                stream,
                &reach.for_caller(false),
                sealed
            ),
            Verdict::ConnectIp { .. }
        ));
        // An allowed destination named in a send is still refused: only a connect, made by
        // the listener, reaches it.
        let task = caller(v4, &[(0x1000, inet([10, 0, 0, 5], 636))]);
        assert!(matches!(
            decide(
                sealed,
                &reach,
                Call::SendTo,
                [3, 0, 0, 0, 0x1000, 16],
                &task
            ),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn connects_to_ip_addresses_are_refused_with_their_destination() {
        let task = caller(libc::AF_INET, &[(0x1000, inet([93, 184, 216, 34], 443))]);
        assert_eq!(
            sealed(Call::Connect, [3, 0x1000, 16, 0, 0, 0], &task),
            Verdict::Refuse(Destination::parse(&inet([93, 184, 216, 34], 443)))
        );
        // Loopback is refused too: the seal is no network, not no internet.
        let task = caller(libc::AF_INET, &[(0x1000, inet([127, 0, 0, 1], 8080))]);
        assert!(matches!(
            sealed(Call::Connect, [3, 0x1000, 16, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn unix_connects_beneath_the_commands_directories_are_made_by_the_listener() {
        let engine = caller(
            libc::AF_UNIX,
            &[(0x1000, unix("/tmp/airlock-engine-1/engine.sock"))],
        );
        assert_eq!(
            sealed(Call::Connect, [3, 0x1000, 35, 0, 0, 0], &engine),
            Verdict::Connect {
                root: std::fs::canonicalize("/tmp")
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                rest: "airlock-engine-1/engine.sock".into()
            }
        );
        assert_eq!(
            sealed(Call::Bind, [3, 0x1000, 35, 0, 0, 0], &engine),
            Verdict::Continue
        );
        // A resolver's or a bus's socket is local, but what listens there reaches out.
        for path in [
            "/run/dbus/system_bus_socket",
            "/tmp/../run/nscd/socket",
            "/tmpx/s",
            "tmp/s",
        ] {
            let task = caller(libc::AF_UNIX, &[(0x1000, unix(path))]);
            let len = 3 + path.len() as u64;
            assert!(
                matches!(
                    sealed(Call::Connect, [3, 0x1000, len, 0, 0, 0], &task),
                    Verdict::Refuse(_)
                ),
                "{path}"
            );
        }
        let mut abstract_name = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abstract_name.extend(b"\0/tmp/x");
        let task = caller(libc::AF_UNIX, &[(0x1000, abstract_name)]);
        assert!(matches!(
            sealed(Call::Connect, [3, 0x1000, 9, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
        // An unreadable address, or a unix address on an IP socket, is refused.
        assert_eq!(
            sealed(Call::Connect, [3, 0x2000, 16, 0, 0, 0], &engine),
            Verdict::Refuse(Destination::Unreadable)
        );
        let ip_socket = caller(
            libc::AF_INET,
            &[(0x1000, unix("/tmp/airlock-engine-1/engine.sock"))],
        );
        assert!(matches!(
            sealed(Call::Connect, [3, 0x1000, 35, 0, 0, 0], &ip_socket),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            sealed(Call::Bind, [3, 0x1000, 35, 0, 0, 0], &ip_socket),
            Verdict::Refuse(_)
        ));
        // A receive-only seal connects nothing.
        assert!(matches!(
            decide(
                Network::ReceiveOnly,
                &local(),
                Call::Connect,
                [3, 0x1000, 35, 0, 0, 0],
                &engine
            ),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn a_started_process_reaches_only_engine_sockets_and_sends_nothing_addressed() {
        let run = tempfile::tempdir().unwrap();
        let engine_socket = run.path().join("engine.sock");
        let text = engine_socket.to_str().unwrap();
        let task = caller(
            libc::AF_UNIX,
            &[
                (0x1000, unix(text)),
                (0x2000, unix("/tmp/tmux-0/default")),
                (0x3000, msghdr(0x1000, 3 + text.len() as u32)),
            ],
        );
        let len = 3 + text.len() as u64;
        let started = |local: &Reach, call, args| {
            decide(Network::Sealed, &local.for_caller(false), call, args, &task)
        };
        // Before the engine's directory is allowed, and after, only its sockets.
        assert!(matches!(
            started(&local(), Call::Connect, [3, 0x1000, len, 0, 0, 0]),
            Verdict::Refuse(_)
        ));
        let guard = allow_engine_sockets(run.path()).unwrap();
        assert!(matches!(
            started(&local(), Call::Connect, [3, 0x1000, len, 0, 0, 0]),
            Verdict::Connect { .. }
        ));
        // The command's own directories (here /tmp) are not the started process's.
        assert!(matches!(
            started(&local(), Call::Connect, [3, 0x2000, 22, 0, 0, 0]),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            started(&local(), Call::SendMsg, [3, 0x3000, 0, 0, 0, 0]),
            Verdict::Refuse(_)
        ));
        drop(guard);
        assert!(matches!(
            started(&local(), Call::Connect, [3, 0x1000, len, 0, 0, 0]),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn sends_with_an_address_are_refused_and_connected_sends_continue() {
        let task = caller(
            libc::AF_INET,
            &[
                (0x1000, inet([8, 8, 8, 8], 53)),
                (0x2000, msghdr(0, 0)),
                (0x3000, msghdr(0x1000, 16)),
            ],
        );
        let dns = Destination::parse(&inet([8, 8, 8, 8], 53));
        assert_eq!(
            sealed(Call::SendTo, [3, 0, 10, 0, 0x1000, 16], &task),
            Verdict::Refuse(dns.clone())
        );
        assert_eq!(
            sealed(Call::SendMsg, [3, 0x2000, 0, 0, 0, 0], &task),
            Verdict::Continue
        );
        assert_eq!(
            sealed(Call::SendMsg, [3, 0x3000, 0, 0, 0, 0], &task),
            Verdict::Refuse(dns)
        );
        // TCP Fast Open connects on the way: refused with or without an address.
        assert!(matches!(
            sealed(Call::SendMsg, [3, 0x2000, MSG_FASTOPEN, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            sealed(Call::SendTo, [3, 0, 10, MSG_FASTOPEN, 0, 0], &task),
            Verdict::Refuse(_)
        ));
        // The receive-only seal refuses every send, addressed or not.
        let receive_only = |call, args| decide(Network::ReceiveOnly, &local(), call, args, &task);
        assert_eq!(
            receive_only(Call::SendMsg, [3, 0x2000, 0, 0, 0, 0]),
            Verdict::Refuse(Destination::None)
        );
        assert_eq!(
            receive_only(Call::SendTo, [3, 0, 10, 0, 0, 0]),
            Verdict::Refuse(Destination::None)
        );
    }

    #[test]
    fn sendmmsg_is_refused_when_any_message_is_addressed_elsewhere() {
        let mut vector = Vec::new();
        for (name, len) in [(0u64, 0), (0x5000, 34), (0x1000, 16)] {
            let mut h = msghdr(name, len);
            h.resize(MMSGHDR_SIZE, 0);
            vector.extend(h);
        }
        let task = caller(
            libc::AF_UNIX,
            &[
                (0x1000, inet([1, 1, 1, 1], 53)),
                (0x5000, unix("/tmp/airlock-engine-1/dgram.sock")),
                (0x4000, vector),
            ],
        );
        assert!(matches!(
            sealed(Call::SendMmsg, [3, 0x4000, 3, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            sealed(Call::SendMmsg, [3, 0x4000, 2, 0, 0, 0], &task),
            Verdict::Continue
        );
    }

    #[test]
    fn listen_continues_only_on_unix_sockets() {
        let task = Scripted {
            families: HashMap::from([(4, libc::AF_UNIX as u16), (5, libc::AF_INET as u16)]),
            ..Default::default()
        };
        assert_eq!(
            sealed(Call::Listen, [4, 0, 0, 0, 0, 0], &task),
            Verdict::Continue
        );
        assert!(matches!(
            sealed(Call::Listen, [5, 0, 0, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            sealed(Call::Listen, [6, 0, 0, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn new_sockets_are_named_by_family_and_type_without_flags() {
        let task = Scripted::default();
        let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
        let verdict = sealed(
            Call::Socket,
            [
                libc::AF_INET as u64,
                libc::SOCK_DGRAM as u64 | flags,
                0,
                0,
                0,
                0,
            ],
            &task,
        );
        assert_eq!(
            verdict.clone(),
            Verdict::Refuse(Destination::NewSocket {
                family: libc::AF_INET as u16,
                kind: libc::SOCK_DGRAM as u32
            })
        );
        let Verdict::Refuse(d) = verdict else {
            unreachable!()
        };
        assert_eq!(d.to_string(), "new AF_INET SOCK_DGRAM socket");
    }
}
