//! `airlock diode send | receive | relay`.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::ExitCode;

use airlock_bundle::{Limits, PublicKey, TrustPolicy};
use airlock_confine::{Network, Paths, Policy};
use airlock_transfer::net::Socket;
use airlock_transfer::receiver::{self, ReceiveOptions};
use airlock_transfer::relay::{self, Bounds, Impairments};
use airlock_transfer::sender::{self, SendOptions};
use anyhow::{Context as _, bail};

use crate::cli::{DiodeCommand, DiodeReceiveArgs, DiodeRelayArgs, DiodeSendArgs};
use crate::cmd::volumes::parse_size;
use crate::output::{self, Bars};

pub(crate) fn run(
    cmd: DiodeCommand,
    limits: &Limits,
    no_sandbox: bool,
) -> anyhow::Result<ExitCode> {
    match cmd {
        DiodeCommand::Send(args) => send(args, limits),
        DiodeCommand::Receive(args) => receive(args, limits, no_sandbox),
        DiodeCommand::Relay(args) => relay(args),
    }
}

fn send(args: DiodeSendArgs, limits: &Limits) -> anyhow::Result<ExitCode> {
    let to = resolve(&args.to)?;
    let mut options = SendOptions::new(to);
    options.rate = parse_rate(&args.rate)?;
    options.overhead = parse_share(&args.overhead, "--overhead")?;
    options.passes = (!args.forever).then_some(args.passes);
    options.mtu = args.mtu;
    let report = sender::send(&args.bundle, &options, limits, &Bars::new())
        .with_context(|| format!("cannot send {}", args.bundle.display()))?;
    if args.json {
        output::json(&serde_json::to_value(&report)?)?;
    } else {
        output::out(&format!(
            "sent {} (sha256:{}) to {to}: session {}, {} pass(es), {} datagrams of {} bytes, {:.1} MB in {:.2}s ({:.0} Mbit/s on the link)\n",
            args.bundle.display(),
            report.digest,
            report.session,
            report.passes,
            report.datagrams,
            report.symbol_size + airlock_transfer::packet::HEADER_LEN,
            report.size as f64 / 1e6,
            report.seconds,
            report.wire_bytes as f64 * 8.0 / report.seconds.max(1e-9) / 1e6,
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn receive(args: DiodeReceiveArgs, limits: &Limits, no_sandbox: bool) -> anyhow::Result<ExitCode> {
    let mut options = ReceiveOptions::new(args.out.clone());
    options.max_size = parse_size(&args.max_size)?;
    options.idle_timeout = args.idle_timeout.into();
    options.limits = limits.clone();
    if !args.trust.is_empty() {
        let keys = args
            .trust
            .iter()
            .map(|p| PublicKey::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        options.trust = Some(TrustPolicy::new(keys, args.threshold)?);
    }
    let socket =
        Socket::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    // Confined once bound: it keeps its socket to read from and may send nothing.
    let policy = Policy {
        network: Network::ReceiveOnly,
        paths: Paths {
            write: vec![crate::confinement::made(&args.out)],
            ..Paths::default()
        },
        egress: airlock_confine::AllowList::default(),
    };
    crate::confinement::apply(&policy, None, "diode receive", no_sandbox)?;
    let local = socket.local_addr()?;
    let granted = socket.recv_buffer_size();
    let mut stderr = std::io::stderr();
    writeln!(
        stderr,
        "airlock: receiving on {local} into {}",
        args.out.display()
    )?;
    if granted < 8 << 20 {
        writeln!(
            stderr,
            "airlock: warning: the kernel granted a {} KiB receive buffer; raise net.core.rmem_max for fast links",
            granted >> 10
        )?;
    }
    loop {
        let report = receiver::receive(&socket, &options, &Bars::new());
        match report {
            Ok(report) => {
                if args.json {
                    output::json(&serde_json::to_value(&report)?)?;
                } else {
                    output::out(&format!(
                        "received {} (sha256:{}), verified: {} blocks ({} kept from an earlier run, {} repaired by RaptorQ) in {:.2}s ({:.0} MB/s)\n",
                        report
                            .bundle
                            .as_ref()
                            .map_or(String::new(), |p| p.display().to_string()),
                        report.digest.as_deref().unwrap_or(""),
                        report.blocks,
                        report.resumed_blocks,
                        report.repaired_blocks,
                        report.seconds,
                        report.size as f64 / report.seconds.max(1e-9) / 1e6,
                    ))?;
                }
            }
            Err(e) if args.forever && !matches!(e, airlock_transfer::Error::Net { .. }) => {
                output::error_line(&anyhow::Error::new(e));
            }
            Err(e) => return Err(e.into()),
        }
        if !args.forever {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn relay(args: DiodeRelayArgs) -> anyhow::Result<ExitCode> {
    let impairments = Impairments {
        loss: parse_share(&args.loss, "--loss")?,
        burst: args.burst_at.zip(args.burst_len),
        duplicate: parse_share(&args.duplicate, "--duplicate")?,
        reorder: parse_share(&args.reorder, "--reorder")?,
        reorder_depth: args.reorder_depth,
        corrupt: parse_share(&args.corrupt, "--corrupt")?,
        seed: args.seed,
    };
    for (name, p) in [
        ("--loss", impairments.loss),
        ("--duplicate", impairments.duplicate),
        ("--reorder", impairments.reorder),
        ("--corrupt", impairments.corrupt),
    ] {
        if p > 1.0 {
            bail!("{name} cannot be over 100%");
        }
    }
    let bounds = Bounds {
        max_datagrams: args.max_datagrams,
        max_time: args.max_time.into(),
        idle: args.idle.into(),
    };
    let socket =
        Socket::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    writeln!(
        std::io::stderr(),
        "airlock: relay listening on {} forwarding to {}",
        socket.local_addr()?,
        args.to
    )?;
    let report = relay::relay(&socket, args.to, args.from, &impairments, &bounds)?;
    if args.json {
        output::json(&serde_json::to_value(&report)?)?;
    } else {
        output::out(&format!(
            "relay stopped ({}): {} in, {} out; lost {} at random and {} in the burst; {} duplicated, {} reordered, {} corrupted\n",
            report.stopped,
            report.received,
            report.forwarded,
            report.lost_random,
            report.lost_burst,
            report.duplicated,
            report.reordered,
            report.corrupted
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve(text: &str) -> anyhow::Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("--to {text:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("--to {text:?} resolves to no address"))
}

/// `800M`, `1G`, `9.5G`, `100k` bits per second, or `max` for unpaced.
fn parse_rate(text: &str) -> anyhow::Result<Option<u64>> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .with_context(|| format!("rate {text:?} does not start with a number"))?;
    let factor = match unit.trim_end_matches("bit/s").trim_end_matches("bps") {
        "" => 1.0,
        "k" | "K" => 1e3,
        "m" | "M" => 1e6,
        "g" | "G" => 1e9,
        _ => bail!("rate {text:?}: unknown unit {unit:?} (use k, M, G, or max)"),
    };
    let bits = n * factor;
    if !(1e3..=1e12).contains(&bits) {
        bail!("rate {text:?} is outside 1k..1000G bits per second");
    }
    Ok(Some(bits as u64))
}

/// `5%` or `0.05`.
fn parse_share(text: &str, what: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (t, 1.0),
    };
    let v: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("{what} {text:?} is not a number or percentage"))?;
    if !(v >= 0.0 && v.is_finite()) {
        bail!("{what} {text:?} must be zero or more");
    }
    Ok(v / scale)
}

#[cfg(test)]
mod tests {
    use super::{parse_rate, parse_share};

    #[test]
    fn rates_parse_in_bits_per_second() {
        assert_eq!(parse_rate("800M").unwrap(), Some(800_000_000));
        assert_eq!(parse_rate("9.5G").unwrap(), Some(9_500_000_000));
        assert_eq!(parse_rate("max").unwrap(), None);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn shares_parse_as_percent_or_fraction() {
        assert_eq!(parse_share("5%", "x").unwrap(), 0.05);
        assert_eq!(parse_share("0.2", "x").unwrap(), 0.2);
        assert!(parse_share("-1%", "x").is_err());
        assert!(parse_share("lots", "x").is_err());
    }
}
