//! Landlock: what the process may open, and no TCP bind, nor connect but to the egress
//! allow-list's ports. Applied best
//! effort: a kernel without Landlock, or with an older ABI, is reported, not fatal (the seal,
//! not the fence, is what keeps the network shut).

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr as _, RulesetCreatedAttr as _,
    RulesetStatus, Scope, path_beneath_rules,
};

use crate::Error;

/// The newest ABI whose rights are asked for; older kernels grant what they know.
pub(crate) const ABI_WANTED: ABI = ABI::V6;

/// System files every command reads: the dynamic linker's cache and libraries (engine
/// processes are started by `exec`), the time zone, CPU topology and cgroup limits (thread
/// counts), and this process's own `/proc` entry.
const SYSTEM_READ: [&str; 10] = [
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/proc/self",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
];

/// What an engine process reads of the system: [`SYSTEM_READ`] but this process's `/proc`
/// entry (an engine's own would be another path, and it needs none).
pub(crate) fn system_read_for_engines() -> impl Iterator<Item = &'static str> {
    SYSTEM_READ.into_iter().filter(|p| *p != "/proc/self")
}

/// Devices opened for writing: the bit bucket, and the terminal a passphrase is asked on.
const SYSTEM_WRITE: [&str; 2] = ["/dev/null", "/dev/tty"];

/// What the fence let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// Every right asked for is enforced.
    Full,
    /// The kernel enforces some of the rights (an older Landlock ABI).
    Partial,
    /// The kernel has no Landlock (or it is disabled).
    Unsupported,
}

impl From<RulesetStatus> for Fenced {
    fn from(status: RulesetStatus) -> Self {
        match status {
            RulesetStatus::FullyEnforced => Self::Full,
            RulesetStatus::PartiallyEnforced => Self::Partial,
            RulesetStatus::NotEnforced => Self::Unsupported,
        }
    }
}

fn landlock_error(source: landlock::RulesetError) -> Error {
    Error::Landlock(source.to_string())
}

/// Reading never includes running: an input is data.
pub(crate) fn read_rights() -> landlock::BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// Paths the process keeps.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// Read (files or directory trees).
    pub read: Vec<PathBuf>,
    /// Read, write, create and remove beneath (the data directory, output directories).
    pub write: Vec<PathBuf>,
    /// Make and replace plain files and directories beneath, nothing else (the directory an
    /// output file is written into, beside it, then renamed).
    pub create: Vec<PathBuf>,
    /// Read and execute (programs it starts, and their libraries).
    pub exec: Vec<PathBuf>,
}

/// Restricts this process (and what it starts) to `paths`, with TCP closed but connects to
/// `tcp_ports`.
pub(crate) fn restrict(paths: &Paths, tcp_ports: &[u16]) -> Result<Fenced, Error> {
    let e = landlock_error;
    let read = read_rights();
    let exec = read | AccessFs::Execute;
    let all = AccessFs::from_all(ABI_WANTED);
    let write = all & !AccessFs::Execute;
    let create = read
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::RemoveFile
        | AccessFs::RemoveDir
        | AccessFs::Truncate;
    let system_read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    let system_write: Vec<PathBuf> = SYSTEM_WRITE.iter().map(PathBuf::from).collect();
    let status =
        ruleset(&[
            (&system_read, exec),
            (
                &system_write,
                read | AccessFs::WriteFile | AccessFs::IoctlDev,
            ),
            (&paths.read, read),
            (&paths.exec, exec),
            (&paths.write, write),
            (&paths.create, create),
        ])?
        .add_rules(tcp_ports.iter().map(|port| {
            Ok::<_, landlock::RulesetError>(NetPort::new(*port, AccessNet::ConnectTcp))
        }))
        .map_err(e)?
        .restrict_self()
        .map_err(e)?;
    Ok(status.ruleset.into())
}

/// A ruleset that handles every file right, TCP (no rule for it: every connect and bind is
/// refused unless a rule is added) and every scope (abstract unix sockets and signals outside the domain), granting
/// each set of rights beneath its paths (those that exist: Landlock keeps only what is there).
pub(crate) fn ruleset(
    grants: &[(&[PathBuf], landlock::BitFlags<AccessFs>)],
) -> Result<landlock::RulesetCreated, Error> {
    let e = landlock_error;
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .map_err(e)?
        .handle_access(AccessNet::from_all(ABI_WANTED))
        .map_err(e)?
        .scope(Scope::from_all(ABI_WANTED))
        .map_err(e)?
        .create()
        .map_err(e)?;
    for (paths, rights) in grants {
        let existing = paths.iter().filter(|p| p.exists());
        created = created
            .add_rules(path_beneath_rules(existing, *rights))
            .map_err(e)?;
    }
    Ok(created)
}

/// The directory a new output file lands in (it is written beside, then renamed).
#[must_use]
pub fn parent_of(output: &Path) -> PathBuf {
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Adds a layer that forbids writing, making and removing files anywhere, and executing
/// anything, on top of whatever the process already has: for a worker that only reads
/// hostile input and answers on a pipe it already holds.
pub(crate) fn forbid_writes() -> Result<Fenced, Error> {
    let e = landlock_error;
    let read = read_rights();
    // Every right but reading is handled, and no rule grants any of them.
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED) & !read)
        .map_err(e)?
        .handle_access(AccessNet::from_all(ABI_WANTED))
        .map_err(e)?
        .create()
        .map_err(e)?
        .restrict_self()
        .map_err(e)?;
    Ok(status.ruleset.into())
}
