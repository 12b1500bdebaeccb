//! Connections the seal makes itself and hands in.
//!
//! A listener that answers "continue" lets the kernel run the caller's call on the caller's
//! memory and descriptors as they are *then*, which another thread of the caller may have
//! changed since the check (seccomp_unotify(2)). So a connect the seal allows is never
//! continued: the listener resolves the destination itself, beneath the directory that
//! allowed it and without following any link, connects a socket of its own, and puts that
//! socket in the caller's place with `SECCOMP_IOCTL_NOTIF_ADDFD`. What was checked is what is
//! connected; whatever the caller's memory or descriptor table says afterwards.
//!
//! What the caller's socket had that the new one has not: its bound name and options set
//! before the connect (the new socket is of the same family and type, with the caller's
//! `O_NONBLOCK`, and close-on-exec).

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags};

/// How long a connect to a full backlog may wait before the caller is told `EAGAIN`.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How long a connect to an allow-list destination may take before the caller is told
/// `ETIMEDOUT` (the kernel's own default is minutes).
pub(crate) const IP_CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Opens the unix socket `rest` beneath `root`, resolved without links, `..` or mount
/// crossings; it must be a socket.
pub(crate) fn resolve_beneath(root: &str, rest: &str) -> Result<OwnedFd, Errno> {
    let root = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let target = rustix::fs::openat2(
        &root,
        rest,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )?;
    let stat = rustix::fs::fstat(&target)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Err(Errno::CONNREFUSED);
    }
    Ok(target)
}

/// A socket like `theirs` (a duplicate of the caller's), connected to the socket `target`
/// refers to.
pub(crate) fn connect_like(theirs: &OwnedFd, target: &OwnedFd) -> Result<OwnedFd, Errno> {
    let family = rustix::net::getsockname(theirs)?.address_family();
    if family != AddressFamily::UNIX {
        return Err(Errno::AFNOSUPPORT);
    }
    let kind = rustix::net::sockopt::socket_type(theirs)?;
    let nonblocking = rustix::fs::fcntl_getfl(theirs)?.contains(OFlags::NONBLOCK);
    let ours = rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None)?;
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    set_socket_timeout(&ours, Timeout::Send, Some(CONNECT_WAIT))?;
    // The socket's inode through the descriptor that was checked: no path is looked up again.
    let via = SocketAddrUnix::new(format!("/proc/self/fd/{}", target.as_raw_fd()))?;
    rustix::net::connect(&ours, &via)?;
    set_socket_timeout(&ours, Timeout::Send, None)?;
    if nonblocking {
        rustix::fs::fcntl_setfl(&ours, OFlags::NONBLOCK)?;
    }
    Ok(ours)
}

/// A TCP socket of `theirs`'s family (a duplicate of the caller's), connecting to `to`. A caller whose socket is
/// non-blocking gets it as its own connect would leave it: possibly still connecting
/// (`InProgress`, to be answered `EINPROGRESS`); a blocking caller, connected, after at
/// most [`IP_CONNECT_WAIT`].
pub(crate) fn connect_ip(
    theirs: &OwnedFd,
    to: std::net::SocketAddr,
) -> Result<(OwnedFd, Progress), Errno> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::net::SocketType;
    let family = rustix::net::getsockname(theirs)?.address_family();
    if family != AddressFamily::INET && family != AddressFamily::INET6 {
        return Err(Errno::AFNOSUPPORT);
    }
    let nonblocking = rustix::fs::fcntl_getfl(theirs)?.contains(OFlags::NONBLOCK);
    let ours = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    match rustix::net::connect(&ours, &to) {
        Ok(()) => {}
        Err(Errno::INPROGRESS) if nonblocking => return Ok((ours, Progress::InProgress)),
        Err(Errno::INPROGRESS) => {
            let wait = Timespec {
                tv_sec: IP_CONNECT_WAIT.as_secs().try_into().unwrap_or(10),
                tv_nsec: 0,
            };
            let mut ready = [PollFd::new(&ours, PollFlags::OUT)];
            if poll(&mut ready, Some(&wait))? == 0 {
                return Err(Errno::TIMEDOUT);
            }
            rustix::net::sockopt::socket_error(&ours)??;
        }
        Err(other) => return Err(other),
    }
    if !nonblocking {
        rustix::fs::fcntl_setfl(&ours, OFlags::empty())?;
    }
    Ok((ours, Progress::Connected))
}

/// How far a connection handed in has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Connected,
    /// Still connecting (a non-blocking caller's): its connect is answered `EINPROGRESS`.
    InProgress,
}

/// Puts `socket` in the caller's descriptor slot `slot` (replacing what is there) while the
/// caller waits in notification `id`.
#[expect(
    unsafe_code,
    reason = "the seccomp notification ioctl has no safe wrapper"
)]
pub(crate) fn hand_in(notify: i32, id: u64, socket: &OwnedFd, slot: u64) -> Result<(), Errno> {
    let slot = u32::try_from(slot).map_err(|_| Errno::BADF)?;
    let request = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
        srcfd: u32::try_from(socket.as_raw_fd()).map_err(|_| Errno::BADF)?,
        newfd: slot,
        newfd_flags: libc::O_CLOEXEC as u32,
    };
    // SAFETY: `request` is a valid seccomp_notif_addfd that lives across the call; the
    // kernel only reads it.
    let result = unsafe {
        libc::ioctl(
            notify,
            libc::SECCOMP_IOCTL_NOTIF_ADDFD,
            &request as *const libc::seccomp_notif_addfd,
        )
    };
    if result < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_socket_is_found_beneath_its_root_and_a_link_to_it_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        std::fs::create_dir(&root).unwrap();
        let socket = root.join("engine.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let root_text = root.to_str().unwrap();
        let found = resolve_beneath(root_text, "engine.sock").unwrap();
        let theirs: OwnedFd = std::os::unix::net::UnixStream::pair().unwrap().0.into();
        connect_like(&theirs, &found).unwrap();
        // A link inside the root to the same socket, or to one outside, is not followed.
        std::os::unix::fs::symlink(&socket, root.join("link.sock")).unwrap();
        assert_eq!(
            resolve_beneath(root_text, "link.sock").unwrap_err(),
            Errno::LOOP
        );
        let outside = dir.path().join("outside.sock");
        let _other = std::os::unix::net::UnixListener::bind(&outside).unwrap();
        assert_eq!(
            resolve_beneath(root_text, "../outside.sock").unwrap_err(),
            Errno::XDEV
        );
        // A plain file is no socket.
        std::fs::write(root.join("file"), b"").unwrap();
        assert_eq!(
            resolve_beneath(root_text, "file").unwrap_err(),
            Errno::CONNREFUSED
        );
    }
}
