//! Socket addresses as a sandboxed process passed them to the kernel, decoded for decisions
//! and for the egress log. The bytes come from another task's memory and are untrusted: every
//! length is checked, and anything not understood is reported by its family number.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The most of a `sockaddr` ever read (`sizeof(struct sockaddr_storage)`).
pub const MAX_SOCKADDR: usize = 128;

/// Where a stopped call was going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// A unix socket path (`@name` for the abstract namespace).
    Unix(String),
    /// Any other family (netlink, packet, ...), by number.
    Family(u16),
    /// `socket()` itself: the family and type asked for; nothing was addressed yet.
    NewSocket {
        /// `AF_*`.
        family: u16,
        /// `SOCK_*` without the `SOCK_NONBLOCK`/`SOCK_CLOEXEC` flags.
        kind: u32,
    },
    /// The address could not be read (bad pointer, too short).
    Unreadable,
    /// Nothing is addressed (the call itself is refused, e.g. `io_uring_setup`).
    None,
}

impl Destination {
    /// Decodes a `sockaddr` of `bytes` (as many as the caller's length said, at most
    /// [`MAX_SOCKADDR`]).
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Self {
        let Some(family) = bytes.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])) else {
            return Self::Unreadable;
        };
        let port = || bytes.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
        match i32::from(family) {
            libc::AF_INET => match (port(), bytes.get(4..8)) {
                (Some(port), Some(a)) => Self::Ip(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                    port,
                ))),
                _ => Self::Unreadable,
            },
            libc::AF_INET6 => match (port(), bytes.get(8..24)) {
                (Some(port), Some(a)) => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(a);
                    Self::Ip(SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::from(octets),
                        port,
                        0,
                        0,
                    )))
                }
                _ => Self::Unreadable,
            },
            libc::AF_UNIX => {
                let path = bytes.get(2..).unwrap_or_default();
                let (abstract_name, path) = match path.first() {
                    Some(0) => (true, &path[1..]),
                    _ => (false, path),
                };
                let end = if abstract_name {
                    path.len()
                } else {
                    path.iter().position(|&b| b == 0).unwrap_or(path.len())
                };
                let name = String::from_utf8_lossy(&path[..end]);
                Self::Unix(if abstract_name {
                    format!("@{name}")
                } else {
                    name.into_owned()
                })
            }
            _ => Self::Family(family),
        }
    }

    /// Whether this is a unix socket (local to the machine by construction).
    #[must_use]
    pub fn is_unix(&self) -> bool {
        matches!(self, Self::Unix(_))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{path}"),
            Self::Family(family) => write!(f, "{}", family_name(*family)),
            Self::NewSocket { family, kind } => {
                write!(
                    f,
                    "new {} {} socket",
                    family_name(*family),
                    kind_name(*kind)
                )
            }
            Self::Unreadable => f.write_str("unreadable address"),
            Self::None => f.write_str("-"),
        }
    }
}

fn family_name(family: u16) -> String {
    match i32::from(family) {
        libc::AF_UNSPEC => "AF_UNSPEC".into(),
        libc::AF_UNIX => "AF_UNIX".into(),
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        libc::AF_VSOCK => "AF_VSOCK".into(),
        other => format!("family {other}"),
    }
}

fn kind_name(kind: u32) -> String {
    match i32::try_from(kind).unwrap_or(-1) {
        libc::SOCK_STREAM => "SOCK_STREAM".into(),
        libc::SOCK_DGRAM => "SOCK_DGRAM".into(),
        libc::SOCK_RAW => "SOCK_RAW".into(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".into(),
        other => format!("type {other}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn inet(a: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend(port.to_be_bytes());
        b.extend(a);
        b.extend([0u8; 8]);
        b
    }

    #[test]
    fn ipv4_addresses_and_ports_are_decoded() {
        let d = Destination::parse(&inet([192, 0, 2, 1], 443));
        assert_eq!(d.to_string(), "192.0.2.1:443");
    }

    #[test]
    fn ipv6_addresses_are_decoded() {
        let mut b = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        b.extend(53u16.to_be_bytes());
        b.extend([0u8; 4]);
        b.extend(Ipv6Addr::LOCALHOST.octets());
        b.extend([0u8; 4]);
        assert_eq!(Destination::parse(&b).to_string(), "[::1]:53");
    }

    #[test]
    fn unix_paths_and_abstract_names_are_decoded() {
        let mut b = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        b.extend(b"/run/engine.sock\0junk");
        assert_eq!(
            Destination::parse(&b),
            Destination::Unix("/run/engine.sock".into())
        );
        let mut b = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        b.extend(b"\0name");
        assert_eq!(Destination::parse(&b).to_string(), "unix:@name");
    }

    #[test]
    fn short_addresses_are_unreadable_and_others_named_by_family() {
        assert_eq!(Destination::parse(&[2]), Destination::Unreadable);
        assert_eq!(
            Destination::parse(&inet([1, 2, 3, 4], 80)[..6]),
            Destination::Unreadable
        );
        let netlink = (libc::AF_NETLINK as u16).to_ne_bytes();
        assert_eq!(Destination::parse(&netlink).to_string(), "AF_NETLINK");
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..MAX_SOCKADDR)) {
            let d = Destination::parse(&bytes);
            let _ = d.to_string();
        }
    }
}
