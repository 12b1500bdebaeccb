//! Reads `strace -f -e trace=network,openat` output and names every sign that a traced
//! process tried to reach beyond the machine: a connect or an addressed send to anything but
//! loopback, anything to port 53, a DNS resolver's unix socket, or the resolver's files opened
//! (a lookup starts there, before any packet). A run with an egress allow-list may also
//! connect to the destinations on it, and to nothing else ([`violations_allowing`]).

use std::net::{IpAddr, SocketAddr};

/// One line of a trace that breaks network silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1-based line number in the trace.
    pub line: usize,
    /// What it is.
    pub reason: String,
    /// The line itself.
    pub text: String,
}

/// Calls that name a destination.
const ADDRESSED: [&str; 5] = ["connect(", "sendto(", "sendmsg(", "sendmmsg(", "bind("];

/// Socket families a silent run may make (IP sockets only ever reach loopback, checked
/// where they are addressed).
const LOCAL_FAMILIES: [&str; 3] = ["AF_UNIX", "AF_INET", "AF_INET6"];

/// Files a name lookup opens first.
const RESOLVER_FILES: [&str; 4] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
];

/// Resolver daemons' sockets.
const RESOLVER_SOCKETS: [&str; 3] = [
    "/run/systemd/resolve/io.systemd.Resolve",
    "/run/nscd/socket",
    "/var/run/nscd/socket",
];

/// Every violation in `trace`.
#[must_use]
pub fn violations(trace: &str) -> Vec<Violation> {
    violations_allowing(trace, &[])
}

/// Every violation in `trace` of a run whose allow-list holds `allowed`: a connect to one of
/// them is not one (an addressed send still is: the seal lets only connects through).
#[must_use]
pub fn violations_allowing(trace: &str, allowed: &[SocketAddr]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (index, text) in trace.lines().enumerate() {
        let found = |reason: String| Violation {
            line: index + 1,
            reason,
            text: text.to_owned(),
        };
        if call_at_start(text, "openat(") {
            if let Some(file) = RESOLVER_FILES
                .iter()
                .find(|f| text.contains(&format!("\"{f}\"")))
            {
                out.push(found(format!("name lookup: opened {file}")));
            }
            continue;
        }
        // Sockets of other families reach interfaces, routes, hypervisors or raw links.
        if call_at_start(text, "socket(")
            && let Some(family) = text
                .split_once("socket(")
                .and_then(|(_, rest)| rest.split(',').next())
            && !LOCAL_FAMILIES.contains(&family)
        {
            out.push(found(format!("a {family} socket")));
            continue;
        }
        let Some(call) = ADDRESSED.iter().find(|c| call_at_start(text, c)) else {
            continue;
        };
        let call = call.trim_end_matches('(');
        if let Some(path) = RESOLVER_SOCKETS
            .iter()
            .find(|s| text.contains(&format!("\"{s}\"")))
        {
            out.push(found(format!("name lookup: {call} to {path}")));
            continue;
        }
        for (ip, port) in inet_addresses(text) {
            // Binding the wildcard address listens; it reaches nothing.
            let local = ip.is_loopback()
                || (call == "bind" && ip.is_unspecified())
                || (call == "connect" && allowed.contains(&SocketAddr::new(ip, port)));
            if port == 53 {
                out.push(found(format!("name lookup: {call} to {ip} port 53")));
            } else if !local {
                out.push(found(format!("{call} to {ip}:{port}, not loopback")));
            }
        }
    }
    out
}

/// Whether the traced call on this line is `call` (after an optional pid and timestamp).
fn call_at_start(line: &str, call: &str) -> bool {
    let rest = line.trim_start();
    let rest = rest
        .split_once(' ')
        .filter(|(pid, _)| pid.chars().all(|c| c.is_ascii_digit()))
        .map_or(rest, |(_, r)| r.trim_start());
    rest.starts_with(call)
}

/// The IPv4 and IPv6 addresses (with ports) strace printed on a line.
fn inet_addresses(line: &str) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("sa_family=AF_INET") {
        rest = &rest[at + "sa_family=".len()..];
        let end = rest.find('}').unwrap_or(rest.len());
        let sockaddr = &rest[..end];
        let port = between(sockaddr, "htons(", ")").and_then(|p| p.parse().ok());
        let ip = between(sockaddr, "inet_addr(\"", "\"")
            .or_else(|| between(sockaddr, "inet_pton(AF_INET6, \"", "\""))
            .and_then(|a| a.parse::<IpAddr>().ok());
        if let (Some(ip), Some(port)) = (ip, port) {
            // An IPv4-mapped IPv6 address is its IPv4 address.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            out.push((ip, port));
        }
        rest = &rest[end..];
    }
    out
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Recorded from `airlock serve` and an SDK request on loopback (trimmed).
    const SILENT: &str = r#"4242  socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 9
4242  bind(3, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
4242  listen(3, 1024)                   = 0
4251  accept4(3, {sa_family=AF_INET, sin_port=htons(51532), sin_addr=inet_addr("127.0.0.1")}, [128 => 16], SOCK_CLOEXEC|SOCK_NONBLOCK) = 10
4251  sendto(10, "HTTP/1.1 200 OK\r\ncontent-type: a"..., 412, MSG_NOSIGNAL, NULL, 0) = 412
4260  connect(5, {sa_family=AF_UNIX, sun_path="/tmp/airlock-engine-4242-x/engine.sock"}, 110) = 0
4270  sendto(4, "\x52\x51", 1200, 0, {sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr("127.0.0.1")}, 16) = 1200
4271  connect(6, {sa_family=AF_INET6, sin6_port=htons(8080), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0
4272  openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3
"#;

    #[test]
    fn loopback_and_unix_traffic_is_silent() {
        assert_eq!(violations(SILENT), vec![]);
    }

    #[test]
    fn a_connect_out_is_caught_even_when_the_kernel_refused_it() {
        let trace = format!(
            "{SILENT}4242  connect(11, {{sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr(\"192.0.2.1\")}}, 16) = -1 EPERM (Operation not permitted)\n"
        );
        let found = violations(&trace);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, "connect to 192.0.2.1:443, not loopback");
        assert_eq!(found[0].line, 10);
    }

    #[test]
    fn with_an_allow_list_only_connects_to_its_destinations_pass() {
        let to = |ip: &str, port: u16| {
            format!(
                "7 connect(5, {{sa_family=AF_INET, sin_port=htons({port}), sin_addr=inet_addr(\"{ip}\")}}, 16) = 0\n"
            )
        };
        let allowed: SocketAddr = "10.77.0.2:8636".parse().unwrap();
        let trace = format!(
            "{}{}{}7 sendto(5, \"x\", 1, 0, {{sa_family=AF_INET, sin_port=htons(8636), sin_addr=inet_addr(\"10.77.0.2\")}}, 16) = 1\n",
            to("10.77.0.2", 8636),
            to("10.77.0.3", 8636),
            to("10.77.0.2", 8637),
        );
        let reasons: Vec<String> = violations_allowing(&trace, &[allowed])
            .into_iter()
            .map(|v| v.reason)
            .collect();
        assert_eq!(
            reasons,
            vec![
                "connect to 10.77.0.3:8636, not loopback",
                "connect to 10.77.0.2:8637, not loopback",
                "sendto to 10.77.0.2:8636, not loopback",
            ]
        );
        assert_eq!(violations(&to("10.77.0.2", 8636)).len(), 1);
    }

    #[test]
    fn every_sign_of_a_name_lookup_is_caught() {
        let trace = r#"77 openat(AT_FDCWD, "/etc/resolv.conf", O_RDONLY|O_CLOEXEC) = 3
77 connect(3, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 0
77 sendmmsg(3, [{msg_hdr={msg_name={sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:4860:4860::8888", &sin6_addr), sin6_scope_id=0}, msg_namelen=28}}], 2, MSG_NOSIGNAL) = 2
77 connect(4, {sa_family=AF_UNIX, sun_path="/run/systemd/resolve/io.systemd.Resolve"}, 42) = -1 ENOENT
"#;
        let reasons: Vec<String> = violations(trace).into_iter().map(|v| v.reason).collect();
        assert_eq!(
            reasons,
            vec![
                "name lookup: opened /etc/resolv.conf",
                "name lookup: connect to 127.0.0.53 port 53",
                "name lookup: sendmmsg to 2001:4860:4860::8888 port 53",
                "name lookup: connect to /run/systemd/resolve/io.systemd.Resolve",
            ]
        );
    }

    #[test]
    fn other_socket_families_and_only_real_calls_count() {
        let trace = "5 socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 3\n\
                     5 sendto(4, \"openat(AT_FDCWD, \\\"/etc/hosts\\\"\"..., 40, 0, NULL, 0) = 40\n\
                     5 socket(AF_UNIX, SOCK_STREAM, 0) = 4\n";
        let reasons: Vec<String> = violations(trace).into_iter().map(|v| v.reason).collect();
        assert_eq!(reasons, vec!["a AF_NETLINK socket"]);
    }

    #[test]
    fn unfinished_calls_and_mapped_addresses_are_read() {
        let trace = "9 connect(3, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, \"::ffff:10.0.0.8\", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>\n9 <... connect resumed>) = -1 EINPROGRESS\n10 connect(3, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, \"::ffff:127.0.0.1\", &sin6_addr), sin6_scope_id=0}, 28) = 0\n";
        let found = violations(trace);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, "connect to 10.0.0.8:80, not loopback");
    }
}
