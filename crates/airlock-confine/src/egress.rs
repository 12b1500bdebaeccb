//! The egress allow-list: the enclave's own services a sealed command may reach.
//!
//! Each entry is an address or CIDR range and one port, reached over TCP, with the purpose it
//! was granted for and when it lapses. Destinations are IP addresses only: a name would be
//! resolved through a resolver that reaches out, and what it resolves to can change after the
//! check. Everything not on the list stays refused.
//!
//! TCP only: a connection is made by the seal's listener and handed in, so what was checked
//! is what is connected, and a TCP socket goes nowhere else afterwards. A datagram socket's
//! every send may name another address, read from memory the caller can change after any
//! check, so UDP is not let through at all.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::SystemTime;

/// The longest `to` accepted (`[` + an IPv6 address with a zone-less prefix + `]:65535`).
const MAX_TO: usize = 64;
/// The most entries a list may have: each is checked on every connect.
pub const MAX_ENTRIES: usize = 256;
/// The longest purpose kept (it is written into every audit entry).
const MAX_PURPOSE: usize = 200;

/// Addresses and one port: `10.0.0.5:636`, `10.0.0.0/24:636`, `[fd00::5]:443`,
/// `[fd00::/64]:443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destinations {
    network: IpAddr,
    prefix: u8,
    port: u16,
}

/// Why a destination could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Too long to be an address.
    #[error("{0:?} is too long to be an address and port")]
    TooLong(String),
    /// No `:port`.
    #[error("{0:?} has no port: write ADDRESS:PORT ([ADDRESS]:PORT for IPv6)")]
    NoPort(String),
    /// Not a port number.
    #[error("{0:?} has no valid port (1-65535)")]
    BadPort(String),
    /// A host name (or anything else that is not an address).
    #[error(
        "{0:?} is not an IP address or CIDR range: airlock resolves no names (a resolver reaches out, and a name can point elsewhere after the check)"
    )]
    NotAnAddress(String),
    /// A prefix longer than the address.
    #[error("{0:?} has a prefix longer than its address")]
    BadPrefix(String),
    /// Bits set past the prefix (`10.0.0.5/24`): probably not what was meant.
    #[error("{0:?} has host bits set past its prefix: write the network ({1})")]
    HostBits(String, String),
}

impl FromStr for Destinations {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let owned = || text.to_owned();
        if text.len() > MAX_TO {
            return Err(ParseError::TooLong(text.chars().take(MAX_TO).collect()));
        }
        let bracketed = text.starts_with('[');
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest
                .split_once(']')
                .ok_or_else(|| ParseError::NoPort(owned()))?;
            let port = port
                .strip_prefix(':')
                .ok_or_else(|| ParseError::NoPort(owned()))?;
            (host, port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| ParseError::NoPort(owned()))?;
            // An IPv6 address without brackets: its colons make the port ambiguous.
            if host.contains(':') {
                return Err(ParseError::NoPort(owned()));
            }
            (host, port)
        };
        // Digits only, as written: no sign, no leading zero.
        let number = |digits: &str| {
            (!digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0')))
            .then(|| digits.parse::<u32>().ok())
            .flatten()
        };
        let port = number(port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| ParseError::BadPort(owned()))?;
        let (address, prefix) = match host.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (host, None),
        };
        // Brackets hold an IPv6 address, and only they do.
        let network: IpAddr = if bracketed {
            address.parse::<std::net::Ipv6Addr>().map(IpAddr::V6)
        } else {
            address.parse::<std::net::Ipv4Addr>().map(IpAddr::V4)
        }
        .map_err(|_| ParseError::NotAnAddress(owned()))?;
        let width: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => number(p)
                .and_then(|p| u8::try_from(p).ok())
                .filter(|p| *p <= width)
                .ok_or_else(|| ParseError::BadPrefix(owned()))?,
        };
        // An IPv4-mapped range is the IPv4 range it maps: connects are matched as IPv4.
        let (network, prefix) = match network {
            IpAddr::V6(v6) if prefix >= 96 => v6
                .to_ipv4_mapped()
                .map_or((network, prefix), |v4| (IpAddr::V4(v4), prefix - 96)),
            other => (other, prefix),
        };
        let parsed = Self {
            network,
            prefix,
            port,
        };
        let masked = parsed.masked(network);
        if masked != network {
            return Err(ParseError::HostBits(
                owned(),
                Self {
                    network: masked,
                    ..parsed
                }
                .to_string(),
            ));
        }
        Ok(parsed)
    }
}

impl Destinations {
    /// `address` with the bits past this range's prefix cleared.
    fn masked(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// Whether `address` is one of these destinations. An IPv4 address written as IPv6
    /// (`::ffff:10.0.0.5`) is the IPv4 address it maps.
    #[must_use]
    pub fn contains(&self, address: SocketAddr) -> bool {
        let ip = match address.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        address.port() == self.port
            && ip.is_ipv4() == self.network.is_ipv4()
            && self.masked(ip) == self.network
    }

    /// Whether every destination of `other` is one of these.
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        other.port == self.port
            && other.network.is_ipv4() == self.network.is_ipv4()
            && other.prefix >= self.prefix
            && self.masked(other.network) == self.network
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// One address of the range (its first), for probing.
    #[must_use]
    pub fn first(&self) -> SocketAddr {
        SocketAddr::new(self.network, self.port)
    }
}

impl fmt::Display for Destinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = if self.network.is_ipv4() { 32 } else { 128 };
        let host = if self.prefix == width {
            self.network.to_string()
        } else {
            format!("{}/{}", self.network, self.prefix)
        };
        if self.network.is_ipv4() {
            write!(f, "{host}:{}", self.port)
        } else {
            write!(f, "[{host}]:{}", self.port)
        }
    }
}

/// One exception to the seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Where.
    pub to: Destinations,
    /// Why, as written into every audit entry of a connection it lets through.
    pub purpose: String,
    /// When it lapses; past this it is refused like any other destination.
    pub until: Option<SystemTime>,
}

impl Allowed {
    /// An entry for `to` granted for `purpose`, over TCP, that does not lapse.
    #[must_use]
    pub fn new(to: Destinations, purpose: &str) -> Self {
        Self {
            to,
            purpose: purpose.chars().take(MAX_PURPOSE).collect(),
            until: None,
        }
    }

    /// Whether it has lapsed at `now`.
    #[must_use]
    pub fn expired(&self, now: SystemTime) -> bool {
        self.until.is_some_and(|until| now >= until)
    }
}

/// The destinations a command may reach beyond its unix sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Allowed>,
}

/// A list longer than [`MAX_ENTRIES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the egress allow-list has {0} entries; at most {MAX_ENTRIES} are kept")]
pub struct TooMany(pub usize);

impl AllowList {
    /// A list of `entries`.
    pub fn new(entries: Vec<Allowed>) -> Result<Self, TooMany> {
        if entries.len() > MAX_ENTRIES {
            return Err(TooMany(entries.len()));
        }
        Ok(Self { entries })
    }

    /// The entries.
    #[must_use]
    pub fn entries(&self) -> &[Allowed] {
        &self.entries
    }

    /// Whether nothing is allowed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ports TCP may connect to (for Landlock's rule).
    #[must_use]
    pub fn tcp_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.entries.iter().map(|e| e.to.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The entry that lets a TCP connection reach `address` at `now`, if one does.
    #[must_use]
    pub fn permits(&self, address: SocketAddr, now: SystemTime) -> Option<&Allowed> {
        self.entries
            .iter()
            .find(|e| e.to.contains(address) && !e.expired(now))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn to(text: &str) -> Destinations {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_and_port_reaches_that_address_and_port_only() {
        let d = to("10.0.0.5:636");
        assert!(d.contains(addr("10.0.0.5:636")));
        assert!(!d.contains(addr("10.0.0.6:636")));
        assert!(!d.contains(addr("10.0.0.5:389")));
        assert!(
            d.contains(addr("[::ffff:10.0.0.5]:636")),
            "an IPv4-mapped address"
        );
        assert!(!d.contains(addr("[fd00::5]:636")));
    }

    #[test]
    fn a_range_reaches_every_address_within_it() {
        let d = to("10.1.0.0/16:443");
        assert!(d.contains(addr("10.1.200.3:443")));
        assert!(!d.contains(addr("10.2.0.1:443")));
        let v6 = to("[fd00:1::/64]:8443");
        assert!(v6.contains(addr("[fd00:1::42]:8443")));
        assert!(!v6.contains(addr("[fd00:2::42]:8443")));
        assert!(to("0.0.0.0/0:53").contains(addr("192.0.2.1:53")));
        assert!(to("[::/0]:53").contains(addr("[fd00::1]:53")));
        assert!(
            !to("[::/0]:53").contains(addr("192.0.2.1:53")),
            "IPv6 ranges hold no IPv4"
        );
        assert!(to("[fd00::1/128]:53").contains(addr("[fd00::1]:53")));
        assert!(!to("10.0.0.1/32:53").contains(addr("10.0.0.2:53")));
    }

    #[test]
    fn names_and_malformed_destinations_are_refused_with_the_reason() {
        let name = "ldap.corp.example:636".parse::<Destinations>().unwrap_err();
        assert!(matches!(name, ParseError::NotAnAddress(_)));
        assert!(name.to_string().contains("resolves no names"), "{name}");
        for (text, want) in [
            ("10.0.0.5", "has no port"),
            ("fd00::5:443", "has no port"),
            ("10.0.0.5:0", "no valid port"),
            ("10.0.0.5:70000", "no valid port"),
            ("10.0.0.5/33:1", "prefix longer"),
            (
                "10.0.0.5/24:1",
                "host bits set past its prefix: write the network (10.0.0.0/24:1)",
            ),
            ("[fd00::5:443", "has no port"),
            ("[10.0.0.5]:636", "not an IP address"),
            ("10.0.0.5:+636", "no valid port"),
            ("10.0.0.5:0636", "no valid port"),
            ("10.0.0.0/+24:636", "prefix"),
            ("10.0.0.0/024:636", "prefix"),
        ] {
            let error = text.parse::<Destinations>().unwrap_err().to_string();
            assert!(error.contains(want), "{text}: {error}");
        }
    }

    #[test]
    fn a_range_covers_what_lies_within_it_on_the_same_port() {
        assert!(to("10.0.0.0/8:636").covers(&to("10.3.0.0/16:636")));
        assert!(to("10.0.0.0/8:636").covers(&to("10.3.0.1:636")));
        assert!(!to("10.3.0.0/16:636").covers(&to("10.0.0.0/8:636")));
        assert!(!to("10.0.0.0/8:636").covers(&to("10.3.0.1:389")));
        assert!(!to("10.0.0.0/8:636").covers(&to("[fd00::1]:636")));
    }

    #[test]
    fn a_lapsed_entry_lets_nothing_through_from_the_moment_it_lapses() {
        let now = SystemTime::now();
        let mut old = Allowed::new(to("10.0.0.9:443"), "old");
        old.until = Some(now);
        let mut live = Allowed::new(to("10.0.0.10:443"), "live");
        live.until = Some(now + Duration::from_secs(60));
        let list = AllowList::new(vec![
            Allowed::new(to("10.0.0.5:636"), "directory"),
            old,
            live,
        ])
        .unwrap();
        assert_eq!(
            list.permits(addr("10.0.0.5:636"), now).unwrap().purpose,
            "directory"
        );
        assert!(
            list.permits(addr("10.0.0.9:443"), now).is_none(),
            "at its lapse"
        );
        assert!(
            list.permits(addr("10.0.0.9:443"), now - Duration::from_secs(1))
                .is_some()
        );
        assert!(list.permits(addr("10.0.0.10:443"), now).is_some());
        assert_eq!(list.tcp_ports(), vec![443, 636]);
    }

    #[test]
    fn a_list_is_bounded() {
        let many = vec![Allowed::new(to("10.0.0.1:1"), "x"); MAX_ENTRIES + 1];
        assert_eq!(AllowList::new(many), Err(TooMany(MAX_ENTRIES + 1)));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,80}") {
            let _ = text.parse::<Destinations>();
        }

        #[test]
        fn what_is_printed_parses_back_to_the_same(
            v4 in any::<u32>(), v6 in any::<u128>(), prefix4 in 0u8..=32, prefix6 in 0u8..=128,
            port in 1u16..,
        ) {
            for text in [
                format!("{}/{prefix4}:{port}", std::net::Ipv4Addr::from(v4)),
                format!("[{}/{prefix6}]:{port}", std::net::Ipv6Addr::from(v6)),
            ] {
                // Host bits are refused with the network to write instead; that one parses.
                let parsed = match text.parse::<Destinations>() {
                    Ok(d) => d,
                    Err(ParseError::HostBits(_, network)) => network.parse().unwrap(),
                    Err(other) => panic!("{text}: {other}"),
                };
                prop_assert_eq!(parsed.to_string().parse::<Destinations>().unwrap(), parsed);
                prop_assert!(parsed.contains(parsed.first()));
            }
        }
    }
}
