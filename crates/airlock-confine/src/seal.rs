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
//! `AF_INET6` with any type but `SOCK_STREAM`, is sent to the listener and refused (a TCP
//! socket may be made so that its `connect` shows the destination; the connect is refused).
//! `sendto` without an address (a connected socket: the server's replies) passes unchecked.
//!
//! The one window: a decision to continue is taken on memory that another thread of the same
//! process could change before the kernel reads it (seccomp_unotify(2) warns of this). It only
//! matters for a continued call, which here means a unix address: a thread racing to swap in
//! an IP address would need code execution in airlock already, and then still meets Landlock's
//! TCP rules where the kernel has them (see `fence`), which refuse every TCP connect.

use std::io::IoSliceMut;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpFilterContext, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags,
    ScmpSyscall, notify_id_valid, scmp_cmp,
};

use crate::sockaddr::{Destination, MAX_SOCKADDR};
use crate::{Attempt, BLOCKED, EgressLog, Error, Network};

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
    Refuse(Destination),
}

/// Reads the calling task's memory and sockets.
pub(crate) trait Task {
    /// `len` bytes at `addr`, or `None` when they cannot all be read.
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>>;
    /// The address family of the caller's descriptor `fd`.
    fn socket_family(&self, fd: u64) -> Option<u16>;
}

/// `struct msghdr` on 64-bit Linux: `msg_name` then `msg_namelen` lead.
const MSGHDR_SIZE: usize = 56;
/// `struct mmsghdr`: a `msghdr` and the sent length, padded.
const MMSGHDR_SIZE: usize = 64;
/// The kernel's own cap on `sendmmsg`'s vector (`UIO_MAXIOV`).
const MAX_MMSG: u64 = 1024;

/// The decision on one notified call (`args` as the kernel gave them).
pub(crate) fn decide(network: Network, call: Call, args: [u64; 6], task: &dyn Task) -> Verdict {
    let address = |ptr: u64, len: u64| -> Destination {
        let len = usize::try_from(len)
            .unwrap_or(MAX_SOCKADDR)
            .min(MAX_SOCKADDR);
        task.read(ptr, len)
            .map_or(Destination::Unreadable, |b| Destination::parse(&b))
    };
    let local_or_refused = |destination: Destination| {
        if destination.is_unix() {
            Verdict::Continue
        } else {
            Verdict::Refuse(destination)
        }
    };
    // The name of each message header that has one: `(pointer, length)`.
    let named = |headers: &[u8], stride: usize| -> Option<Destination> {
        headers.chunks_exact(stride).find_map(|h| {
            let ptr = u64::from_ne_bytes(h[..8].try_into().ok()?);
            let len = u32::from_ne_bytes(h[8..12].try_into().ok()?);
            (ptr != 0).then(|| address(ptr, u64::from(len)))
        })
    };
    match call {
        Call::Socket => Verdict::Refuse(Destination::NewSocket {
            family: u16::try_from(args[0]).unwrap_or(u16::MAX),
            kind: (args[1] as u32) & !((libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u32),
        }),
        Call::IoUringSetup => Verdict::Refuse(Destination::None),
        Call::Connect => match address(args[1], args[2]) {
            // AF_UNSPEC dissolves a datagram socket's association: it goes nowhere.
            Destination::Family(0) => Verdict::Continue,
            other => local_or_refused(other),
        },
        Call::Bind => local_or_refused(address(args[1], args[2])),
        Call::Listen => match task.socket_family(args[0]) {
            Some(family) if i32::from(family) == libc::AF_UNIX => Verdict::Continue,
            Some(family) => Verdict::Refuse(Destination::Family(family)),
            None => Verdict::Refuse(Destination::Unreadable),
        },
        Call::SendTo if network == Network::ReceiveOnly => Verdict::Refuse(if args[4] == 0 {
            Destination::None
        } else {
            address(args[4], args[5])
        }),
        Call::SendTo => local_or_refused(address(args[4], args[5])),
        Call::SendMsg | Call::SendMmsg => {
            let (count, stride) = if call == Call::SendMsg {
                (1, MSGHDR_SIZE)
            } else {
                (args[2].min(MAX_MMSG) as usize, MMSGHDR_SIZE)
            };
            let Some(headers) = task.read(args[1], count * stride) else {
                return Verdict::Refuse(Destination::Unreadable);
            };
            match named(&headers, stride) {
                _ if network == Network::ReceiveOnly => {
                    Verdict::Refuse(named(&headers, stride).unwrap_or(Destination::None))
                }
                None => Verdict::Continue,
                Some(destination) => local_or_refused(destination),
            }
        }
    }
}

/// Builds and loads the filter for every thread of the process, then starts the listener.
pub(crate) fn install(network: Network, log: Arc<dyn EgressLog>) -> Result<(), Error> {
    let e = |what: &'static str| {
        move |source: libseccomp::error::SeccompError| Error::Seccomp {
            what,
            reason: source.to_string(),
        }
    };
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(e("creating the filter"))?;
    // Another architecture's system call numbers (int 0x80) would slip past the rules.
    ctx.set_act_badarch(ScmpAction::KillProcess)
        .map_err(e("refusing other architectures"))?;
    ctx.set_ctl_nnp(true).map_err(e("setting no_new_privs"))?;
    ctx.set_ctl_tsync(true)
        .map_err(e("synchronising threads"))?;
    let mut numbers = Vec::new();
    for call in Call::ALL {
        let number = ScmpSyscall::from_name(call.name()).map_err(e("naming a system call"))?;
        numbers.push((number, call));
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
    // socket(): AF_UNIX always; AF_INET/AF_INET6 only as SOCK_STREAM (see the module docs).
    let (inet, inet6) = (libc::AF_INET as u64, libc::AF_INET6 as u64);
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
    }
    rule(Call::Connect, &[])?;
    rule(Call::Bind, &[])?;
    rule(Call::Listen, &[])?;
    match network {
        Network::ReceiveOnly => rule(Call::SendTo, &[])?,
        _ => rule(Call::SendTo, &[scmp_cmp!($arg4 != 0)])?,
    }
    rule(Call::SendMsg, &[])?;
    rule(Call::SendMmsg, &[])?;
    rule(Call::IoUringSetup, &[])?;
    ctx.load().map_err(e("loading the filter"))?;
    let fd = ctx
        .get_notify_fd()
        .map_err(e("opening the notification descriptor"))?;
    let native = ScmpArch::native();
    // The filter stays loaded for the life of the process, and the context keeps the
    // descriptor open in libseccomp: keep the context for good too.
    std::mem::forget(ctx);
    std::thread::Builder::new()
        .name("airlock-seal".into())
        .spawn(move || listen(fd, network, &numbers, native, log.as_ref()))
        .map_err(|source| Error::Seccomp {
            what: "starting the listener",
            reason: source.to_string(),
        })?;
    Ok(())
}

/// Answers notifications until the descriptor fails (the process is exiting).
fn listen(
    fd: i32,
    network: Network,
    numbers: &[(ScmpSyscall, Call)],
    native: ScmpArch,
    log: &dyn EgressLog,
) {
    let mut failures = 0u32;
    loop {
        let request = match ScmpNotifReq::receive(fd) {
            Ok(request) => {
                failures = 0;
                request
            }
            // A caller that died between notification and receipt, or an interrupted wait
            // (libseccomp reports both without the errno): try again, but not forever.
            Err(_) if failures < 100 => {
                failures += 1;
                std::thread::sleep(std::time::Duration::from_millis(failures.into()));
                continue;
            }
            Err(_) => return,
        };
        let call = numbers
            .iter()
            .find(|(number, _)| *number == request.data.syscall)
            .map(|(_, call)| *call);
        let verdict = match call {
            Some(call) if request.data.arch == native => {
                decide(network, call, request.data.args, &Caller(request.pid))
            }
            // Not one of ours, or another architecture: nothing to continue.
            _ => Verdict::Refuse(Destination::Unreadable),
        };
        // The memory read above belongs to this request only if the caller still waits on it.
        if notify_id_valid(fd, request.id).is_err() {
            continue;
        }
        let response = match verdict {
            Verdict::Continue => {
                ScmpNotifResp::new_continue(request.id, ScmpNotifRespFlags::empty())
            }
            Verdict::Refuse(destination) => {
                BLOCKED.fetch_add(1, Ordering::Relaxed);
                // Recorded before the caller resumes, so that a command which gives up and
                // exits on the error cannot exit before its attempt is on record.
                log.record(&Attempt::now(
                    request.pid,
                    call.map_or("unknown", Call::name),
                    destination,
                ));
                ScmpNotifResp::new_error(request.id, -libc::EPERM, ScmpNotifRespFlags::empty())
            }
        };
        // A caller killed meanwhile: nothing to answer.
        let _ = response.respond(fd);
    }
}

/// A task that made a notified call, by thread id.
struct Caller(u32);

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
        use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
        let pid = Pid::from_raw(i32::try_from(self.0).ok()?)?;
        // The caller may be any thread: PIDFD_THREAD (O_EXCL) names a thread, not a process.
        let pidfd = pidfd_open(pid, PidfdFlags::from_bits_retain(libc::O_EXCL as _)).ok()?;
        let socket = pidfd_getfd(&pidfd, i32::try_from(fd).ok()?, PidfdGetfdFlags::empty()).ok()?;
        let address = rustix::net::getsockname(&socket).ok()?;
        Some(address.address_family().as_raw())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    /// A caller whose memory is a map of address to bytes.
    #[derive(Default)]
    struct Scripted {
        memory: HashMap<u64, Vec<u8>>,
        families: HashMap<u64, u16>,
    }

    impl Task for Scripted {
        fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            let bytes = self.memory.get(&addr)?;
            (bytes.len() >= len).then(|| bytes[..len].to_vec())
        }
        fn socket_family(&self, fd: u64) -> Option<u16> {
            self.families.get(&fd).copied()
        }
    }

    fn inet(a: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend(port.to_be_bytes());
        b.extend(a);
        b.extend([0u8; 8]);
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

    #[test]
    fn connects_to_ip_addresses_are_refused_with_their_destination() {
        let task = Scripted {
            memory: HashMap::from([(0x1000, inet([93, 184, 216, 34], 443))]),
            ..Default::default()
        };
        let verdict = decide(
            Network::Sealed,
            Call::Connect,
            [3, 0x1000, 16, 0, 0, 0],
            &task,
        );
        assert_eq!(
            verdict,
            Verdict::Refuse(Destination::parse(&inet([93, 184, 216, 34], 443)))
        );
        // Loopback is refused too: the seal is no network, not no internet.
        let task = Scripted {
            memory: HashMap::from([(0x1000, inet([127, 0, 0, 1], 8080))]),
            ..Default::default()
        };
        assert!(matches!(
            decide(
                Network::Sealed,
                Call::Connect,
                [3, 0x1000, 16, 0, 0, 0],
                &task
            ),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn unix_sockets_continue_and_unreadable_addresses_do_not() {
        let task = Scripted {
            memory: HashMap::from([(0x1000, unix("/tmp/engine.sock"))]),
            ..Default::default()
        };
        assert_eq!(
            decide(
                Network::Sealed,
                Call::Connect,
                [3, 0x1000, 19, 0, 0, 0],
                &task
            ),
            Verdict::Continue
        );
        assert_eq!(
            decide(Network::Sealed, Call::Bind, [3, 0x1000, 19, 0, 0, 0], &task),
            Verdict::Continue
        );
        assert_eq!(
            decide(
                Network::Sealed,
                Call::Connect,
                [3, 0x2000, 16, 0, 0, 0],
                &task
            ),
            Verdict::Refuse(Destination::Unreadable)
        );
    }

    #[test]
    fn sends_with_an_address_are_refused_and_connected_sends_continue() {
        let task = Scripted {
            memory: HashMap::from([
                (0x1000, inet([8, 8, 8, 8], 53)),
                (0x2000, msghdr(0, 0)),
                (0x3000, msghdr(0x1000, 16)),
            ]),
            ..Default::default()
        };
        let dns = Destination::parse(&inet([8, 8, 8, 8], 53));
        assert_eq!(
            decide(
                Network::Sealed,
                Call::SendTo,
                [3, 0, 10, 0, 0x1000, 16],
                &task
            ),
            Verdict::Refuse(dns.clone())
        );
        assert_eq!(
            decide(
                Network::Sealed,
                Call::SendMsg,
                [3, 0x2000, 0, 0, 0, 0],
                &task
            ),
            Verdict::Continue
        );
        assert_eq!(
            decide(
                Network::Sealed,
                Call::SendMsg,
                [3, 0x3000, 0, 0, 0, 0],
                &task
            ),
            Verdict::Refuse(dns.clone())
        );
        // The receive-only seal refuses every send, addressed or not.
        assert_eq!(
            decide(
                Network::ReceiveOnly,
                Call::SendMsg,
                [3, 0x2000, 0, 0, 0, 0],
                &task
            ),
            Verdict::Refuse(Destination::None)
        );
        assert_eq!(
            decide(
                Network::ReceiveOnly,
                Call::SendTo,
                [3, 0, 10, 0, 0, 0],
                &task
            ),
            Verdict::Refuse(Destination::None)
        );
    }

    #[test]
    fn sendmmsg_is_refused_when_any_message_is_addressed() {
        let mut vector = Vec::new();
        for name in [0u64, 0x1000] {
            let mut h = msghdr(name, 16);
            h.resize(MMSGHDR_SIZE, 0);
            vector.extend(h);
        }
        let task = Scripted {
            memory: HashMap::from([(0x1000, inet([1, 1, 1, 1], 53)), (0x4000, vector)]),
            ..Default::default()
        };
        assert!(matches!(
            decide(
                Network::Sealed,
                Call::SendMmsg,
                [3, 0x4000, 2, 0, 0, 0],
                &task
            ),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            decide(
                Network::Sealed,
                Call::SendMmsg,
                [3, 0x4000, 1, 0, 0, 0],
                &task
            ),
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
            decide(Network::Sealed, Call::Listen, [4, 0, 0, 0, 0, 0], &task),
            Verdict::Continue
        );
        assert!(matches!(
            decide(Network::Sealed, Call::Listen, [5, 0, 0, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            decide(Network::Sealed, Call::Listen, [6, 0, 0, 0, 0, 0], &task),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn new_sockets_are_named_by_family_and_type_without_flags() {
        let task = Scripted::default();
        let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
        let verdict = decide(
            Network::Sealed,
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
