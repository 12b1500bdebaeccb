//! The box an engine process runs in.
//!
//! An engine process (llama-server, vLLM) is third-party code: a supply-chain attack lands
//! there first, so airlock treats it as an attacker with code execution. What it inherits
//! from the server (the network seal, no_new_privs) is not enough on its own: in the server's
//! Landlock domain and process tree it could ptrace the server, take the seal's notification
//! descriptor with `pidfd_getfd`, open the data directory and outlive the server. The box is
//! built from kernel facilities alone, put in place between `fork` and `exec`:
//!
//! - **a user and PID namespace of its own**: the engine is PID 1 of a namespace whose
//!   processes all die with it (whatever it forks, double-forked and `setsid` or not); it
//!   cannot name any process outside, the server included; it keeps no capability outside
//!   its namespace, and none at all once it has `exec`ed (its user is unmapped there);
//! - **its own Landlock domain**, nested in the server's: it reads only the files it was given
//!   (the verified model files) and the system's libraries, writes only its runtime directory,
//!   has no TCP, and cannot signal, ptrace or read the memory of anything outside its domain
//!   (Landlock's ptrace and signal scoping), the server included;
//! - **a seccomp layer of its own** on top of the seal, refusing what only an escape needs:
//!   `ptrace`, `process_vm_readv/writev`, `pidfd_open`/`pidfd_getfd`, `kcmp`, new namespaces,
//!   mounts, BPF, perf, userfaultfd, keyrings, modules, and installing seccomp filters (a
//!   filter of its own with a notification listener would take precedence over the seal's
//!   listener and could answer "continue" to itself);
//! - **a parent-death signal** at both levels, so the namespace dies with the server even
//!   when the server is killed outright.
//!
//! Between the server and the engine stands a small keeper process (the `fork` in the new PID
//! namespace): it forwards the stop signals to the engine, and exits as the engine did. It runs
//! no third-party code, holds no descriptor and is outside the engine's namespace, so the
//! engine cannot reach it either.

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use landlock::{Access as _, AccessFs};
use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall, scmp_cmp};

use crate::Error;
use crate::fence::{ABI_WANTED, system_read_for_engines};

/// What an engine process may touch.
#[derive(Debug, Clone, Default)]
pub struct BoxSpec {
    /// Files it may read: the verified model files (and nothing else of the data directory).
    pub read: Vec<PathBuf>,
    /// Directories it may read and run programs from: its program's directory and the
    /// libraries beside it.
    pub exec: Vec<PathBuf>,
    /// Its runtime directory: the one place it may write, make its socket and remove files.
    pub runtime: PathBuf,
}

/// System calls an engine never needs and an escape does. Names unknown to this machine's
/// libseccomp are skipped (they do not exist here to be called).
const REFUSED: [&str; 37] = [
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "kcmp",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "name_to_handle_at",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "seccomp",
    "acct",
    "quotactl",
];

/// `clone` flags that make a namespace: refused (the box's namespaces are its own already).
const NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// Signals the keeper passes on to the engine (and `SIGCHLD`, which tells it the engine
/// ended).
const KEPT_SIGNALS: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCHLD,
];

/// Set for a command run with `--dangerous-no-sandbox`: its engine processes get no box.
static NO_BOX: AtomicBool = AtomicBool::new(false);

/// Engine processes this process starts from now on run without a box (for debugging and
/// for measuring what the box costs; the caller says so loudly and audits it).
pub fn dangerous_no_engine_box() {
    NO_BOX.store(true, Ordering::Relaxed);
}

/// A command arranged to start in a box: what the parent learns once it has started.
#[derive(Debug)]
pub struct Contained {
    /// Where the keeper writes the engine's process id; `None` when there is no box.
    engine_pid: Option<OwnedFd>,
}

/// How long the parent waits for the keeper to name the engine.
const PID_WAIT: Duration = Duration::from_secs(5);

impl Contained {
    /// The engine's process id as this process sees it, once `command` was spawned as
    /// `keeper` (the child the spawn returned, which is the engine itself without a box).
    pub fn engine_pid(&self, keeper: u32) -> u32 {
        let Some(pipe) = &self.engine_pid else {
            return keeper;
        };
        let mut ready = [rustix::event::PollFd::new(
            pipe,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec::try_from(PID_WAIT).ok();
        let mut bytes = [0u8; 4];
        match rustix::event::poll(&mut ready, timeout.as_ref()) {
            Ok(1) => match rustix::io::read(pipe, &mut bytes) {
                Ok(4) => u32::from_ne_bytes(bytes),
                _ => keeper,
            },
            _ => keeper,
        }
    }
}

/// Arranges for `command` to start inside a box made to `spec`. The box is prepared now (the
/// Landlock ruleset and the seccomp program), and entered by the child between `fork` and
/// `exec`; spawning fails if the kernel refuses any part of it.
pub fn contain(command: &mut Command, spec: &BoxSpec) -> Result<Contained, Error> {
    if NO_BOX.load(Ordering::Relaxed) {
        return Ok(Contained { engine_pid: None });
    }
    let ruleset = engine_ruleset(spec)?;
    let filter = engine_filter()?;
    let (read, write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|source| {
            Error::Seccomp {
                what: "making the engine's pid pipe",
                reason: source.to_string(),
            }
        })?;
    enter_on_spawn(command, ruleset, filter, write);
    Ok(Contained {
        engine_pid: Some(read),
    })
}

/// The engine's Landlock domain: the system's libraries, its programs, its model files, its
/// runtime directory; no TCP; no signals or abstract sockets outside it. `None` on a kernel
/// without Landlock (the namespaces and the seccomp layer still hold there).
fn engine_ruleset(spec: &BoxSpec) -> Result<Option<OwnedFd>, Error> {
    let read = crate::fence::read_rights();
    let exec = read | AccessFs::Execute;
    let runtime = AccessFs::from_all(ABI_WANTED) & !AccessFs::Execute;
    let system: Vec<PathBuf> = system_read_for_engines().map(PathBuf::from).collect();
    let created = crate::fence::ruleset(&[
        (&system, exec),
        (&[PathBuf::from("/dev/null")], read | AccessFs::WriteFile),
        (&spec.read, read),
        (&spec.exec, exec),
        (std::slice::from_ref(&spec.runtime), runtime),
    ])?;
    Ok(Option::<OwnedFd>::from(created))
}

/// The engine's seccomp layer, as the BPF program the child loads.
fn engine_filter() -> Result<Vec<libc::sock_filter>, Error> {
    let e = |what: &'static str| {
        move |source: libseccomp::error::SeccompError| Error::Seccomp {
            what,
            reason: source.to_string(),
        }
    };
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(e("creating the filter"))?;
    // Calls of another architecture are the seal's to refuse and record (it sends every one
    // to its listener, and a notification outranks this layer's allow); with no seal in
    // this process, they end the engine.
    let other_architectures = if crate::seal::installed() {
        ScmpAction::Allow
    } else {
        ScmpAction::KillProcess
    };
    ctx.set_act_badarch(other_architectures)
        .map_err(e("handling other architectures"))?;
    let refuse = ScmpAction::Errno(libc::EPERM);
    for name in REFUSED {
        if let Ok(number) = ScmpSyscall::from_name(name) {
            ctx.add_rule(refuse, number).map_err(e("adding a rule"))?;
        }
    }
    // prctl(PR_SET_SECCOMP): the other way to install a filter.
    let prctl = ScmpSyscall::from_name("prctl").map_err(e("naming a system call"))?;
    ctx.add_rule_conditional(
        refuse,
        prctl,
        &[scmp_cmp!($arg0 == libc::PR_SET_SECCOMP as u64)],
    )
    .map_err(e("adding a rule"))?;
    let clone = ScmpSyscall::from_name("clone").map_err(e("naming a system call"))?;
    for flag in NAMESPACE_FLAGS {
        let flag = flag as u64;
        ctx.add_rule_conditional(refuse, clone, &[scmp_cmp!($arg0 & flag == flag)])
            .map_err(e("adding a rule"))?;
    }
    // clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes the C
    // library fall back to clone, whose flags it can.
    if let Ok(clone3) = ScmpSyscall::from_name("clone3") {
        ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), clone3)
            .map_err(e("adding a rule"))?;
    }
    let (reader, writer) = rustix::pipe::pipe().map_err(|source| Error::Seccomp {
        what: "exporting the filter",
        reason: source.to_string(),
    })?;
    ctx.export_bpf(&writer).map_err(e("exporting the filter"))?;
    drop(writer);
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut std::fs::File::from(reader), &mut bytes).map_err(|source| {
        Error::Seccomp {
            what: "exporting the filter",
            reason: source.to_string(),
        }
    })?;
    Ok(bytes
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

/// Installs the hook that enters the box in the child. Everything the child needs was made
/// here, in the parent: between `fork` and `exec` of a multi-threaded process only
/// async-signal-safe system calls may run (no allocation, no locks).
#[expect(
    unsafe_code,
    reason = "between fork and exec the box is entered with raw system calls"
)]
fn enter_on_spawn(
    command: &mut Command,
    ruleset: Option<OwnedFd>,
    filter: Vec<libc::sock_filter>,
    engine_pid: OwnedFd,
) {
    let hook = move || -> io::Result<()> {
        let ruleset = ruleset.as_ref().map(|fd| fd.as_raw_fd());
        // SAFETY: runs in the child between fork and exec; every call below is a system call
        // on memory this closure owns, with no allocation.
        unsafe { enter(ruleset, &filter, engine_pid.as_raw_fd()) }
    };
    // SAFETY: the hook calls only async-signal-safe system calls (see `enter`).
    unsafe {
        command.pre_exec(hook);
    }
}

fn check(result: libc::c_long) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the child: new namespaces, the keeper's fork, then (in the engine) the seccomp layer
/// and the Landlock domain. Returns (to `exec`) only in the engine.
#[expect(unsafe_code, reason = "raw system calls between fork and exec")]
unsafe fn enter(
    ruleset: Option<RawFd>,
    filter: &[libc::sock_filter],
    engine_pid: RawFd,
) -> io::Result<()> {
    // SAFETY (the whole function): system calls with valid pointers to locals or to memory
    // the caller owns; nothing allocates.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into())?;
        // Already set in a sealed command; set here too for one run without the seal.
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
        check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID).into())?;
        // Block what the keeper waits for before the engine exists, so that none is lost.
        let mut kept: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut kept);
        for signal in KEPT_SIGNALS {
            libc::sigaddset(&mut kept, signal);
        }
        check(libc::sigprocmask(libc::SIG_BLOCK, &kept, std::ptr::null_mut()).into())?;
        // fork without the C library's fork handlers (they may take locks another thread of
        // the parent held when it forked).
        let engine = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
        check(engine)?;
        if engine > 0 {
            // The engine's pid in this namespace, the server's: the engine's own is 1.
            let pid = (engine as u32).to_ne_bytes();
            libc::write(engine_pid, pid.as_ptr().cast(), pid.len());
            keep(engine as libc::pid_t, &kept);
        }
        // The engine: PID 1 of its namespace.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into())?;
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()).into())?;
        if let Some(ruleset) = ruleset {
            check(libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0))?;
        }
        let program = libc::sock_fprog {
            len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
            filter: filter.as_ptr().cast_mut(),
        };
        check(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
                0,
                0,
            )
            .into(),
        )?;
    }
    Ok(())
}

/// The keeper: holds nothing, passes stop signals on to the engine, and ends as it did.
#[expect(unsafe_code, reason = "raw system calls in a forked child")]
unsafe fn keep(engine: libc::pid_t, kept: &libc::sigset_t) -> ! {
    // SAFETY (the whole function): system calls on locals; `_exit` never returns.
    unsafe {
        // Every descriptor closed: the exec-status pipe among them, which the parent reads
        // until it closes, and the engine's output pipes, which its readers follow to the end.
        libc::syscall(libc::SYS_close_range, 0, libc::c_uint::MAX, 0);
        loop {
            let signal = libc::sigwaitinfo(kept, std::ptr::null_mut());
            if signal != libc::SIGCHLD && signal > 0 {
                libc::kill(engine, signal);
                continue;
            }
            let mut status = 0;
            if libc::waitpid(engine, &mut status, libc::WNOHANG) != engine {
                continue;
            }
            if libc::WIFSIGNALED(status) {
                // Die of the same signal, so the supervisor sees how the engine ended.
                let signal = libc::WTERMSIG(status);
                libc::signal(signal, libc::SIG_DFL);
                let mut only: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut only);
                libc::sigaddset(&mut only, signal);
                libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
                libc::kill(libc::getpid(), signal);
                libc::_exit(128 + signal);
            }
            libc::_exit(libc::WEXITSTATUS(status));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_engine_filter_is_a_whole_bpf_program() {
        let filter = engine_filter().unwrap();
        assert!(
            filter.len() > REFUSED.len(),
            "{} instructions",
            filter.len()
        );
        assert!(filter.len() < usize::from(u16::MAX));
    }
}
