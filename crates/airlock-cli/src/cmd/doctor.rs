//! `airlock doctor`: what confinement is in force here, and proof that the seal holds.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use airlock_audit::{Entry, Outcome};
use airlock_confine::{Fenced, Network, Probe, Report};
use airlock_registry::Layout;
use serde_json::{Value, json};

use crate::cli::JsonArgs;
use crate::output;

/// Where the probe tries to connect: TEST-NET-1 (RFC 5737), an address that routes nowhere,
/// so that even an unsealed machine sends nothing that anyone receives.
const PROBE_ADDRESS: &str = "192.0.2.1:443";

pub(crate) fn run(
    args: &JsonArgs,
    data: &Path,
    report: Option<&Report>,
) -> anyhow::Result<ExitCode> {
    let seal = match report.and_then(|r| r.seal) {
        Some(Network::Sealed) => json!({"active": true, "mode": "sealed",
            "detail": "seccomp filter: no socket but AF_UNIX and TCP; connect, bind, listen and addressed sends checked; what would leave the machine refused and logged"}),
        Some(other) => json!({"active": true, "mode": format!("{other:?}").to_lowercase()}),
        None if report.is_none() => json!({"active": false, "reason": "--dangerous-no-sandbox"}),
        None => json!({"active": false, "reason": "not asked for"}),
    };
    let fence = match report.map(|r| &r.fence) {
        Some(Fenced::Full) => {
            json!({"active": true, "mode": "full", "detail": "Landlock: files beneath the data directory and system libraries only; TCP bind refused, and TCP connect but to the egress allow-list's ports"})
        }
        Some(Fenced::Partial) => {
            json!({"active": true, "mode": "partial", "reason": "this kernel's Landlock ABI lacks some rights (TCP rules need ABI 4, Linux 6.7)"})
        }
        Some(Fenced::Unsupported) => {
            json!({"active": false, "mode": "unsupported", "reason": "this kernel has no Landlock, or it is not enabled (lsm= boot parameter)"})
        }
        None => json!({"active": false, "reason": "--dangerous-no-sandbox"}),
    };
    let seccomp_status = airlock_confine::status_field("Seccomp").unwrap_or_default();
    let no_new_privs = airlock_confine::status_field("NoNewPrivs").as_deref() == Some("1");
    let blocked_before = airlock_confine::blocked_total();
    let address: SocketAddr = PROBE_ADDRESS.parse()?;
    let probe = airlock_confine::probe(address);
    let (probe_ok, probe_detail) = match &probe {
        Probe::Refused(why) => (true, why.clone()),
        Probe::NotRefused(why) => (false, why.clone()),
    };
    let logged = airlock_confine::blocked_total() > blocked_before;
    let (egress, egress_ok) = try_allow_list(data, report.is_some());
    let permissions = owner_only(data);
    let permissions_ok = permissions.iter().all(|p| p["owner_only"] != false);
    let listening = listening_addresses();
    let offline: serde_json::Map<String, Value> = airlock_upstream::OFFLINE_ENVIRONMENT
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let ok = probe_ok && seccomp_status == "2" && no_new_privs && permissions_ok && egress_ok;
    let result = json!({
        "ok": ok,
        "seal": seal,
        "fence": fence,
        "seccomp_status": seccomp_status,
        "no_new_privs": no_new_privs,
        "probe": {"address": PROBE_ADDRESS, "refused": probe_ok, "logged": logged, "detail": probe_detail},
        "egress": egress,
        "listening": listening,
        "engine_offline_environment": offline,
        "permissions": permissions,
    });
    if data.join("audit").exists()
        && let Ok(registry) = super::open_registry(data)
    {
        registry.audit_log().append(
            Entry::new(
                registry.actor(),
                "doctor",
                if ok { Outcome::Ok } else { Outcome::Failed },
            )
            .detail("seal", result["seal"]["active"].clone())
            .detail("fence", result["fence"]["mode"].clone())
            .detail("probe_refused", probe_ok)
            .detail("permissions_ok", permissions_ok),
        )?;
    }
    if args.json {
        output::json(&result)?;
    } else {
        output::out(&text(&result))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn text(r: &Value) -> String {
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let mut out = String::new();
    let seal_on = r["seal"]["active"] == true;
    out.push_str(&format!(
        "{} network seal (seccomp, status {}): {}\n",
        mark(seal_on),
        r["seccomp_status"].as_str().unwrap_or("?"),
        r["seal"]["detail"]
            .as_str()
            .or(r["seal"]["reason"].as_str())
            .unwrap_or("")
    ));
    let fence_full = r["fence"]["mode"] == "full";
    out.push_str(&format!(
        "{} file fence (Landlock {}): {}\n",
        if fence_full { "ok  " } else { "warn" },
        r["fence"]["mode"].as_str().unwrap_or("off"),
        r["fence"]["detail"]
            .as_str()
            .or(r["fence"]["reason"].as_str())
            .unwrap_or("")
    ));
    out.push_str(&format!(
        "{} no_new_privs\n",
        mark(r["no_new_privs"] == true)
    ));
    out.push_str(&format!(
        "{} outbound connect to {} refused by the kernel{}: {}\n",
        mark(r["probe"]["refused"] == true),
        r["probe"]["address"].as_str().unwrap_or(""),
        if r["probe"]["logged"] == true {
            " and logged"
        } else {
            ""
        },
        r["probe"]["detail"].as_str().unwrap_or("")
    ));
    let entries = r["egress"].as_array().map_or(&[][..], Vec::as_slice);
    if entries.is_empty() {
        out.push_str("info egress allow-list: empty (policy.toml [egress]); nothing leaves\n");
    }
    for e in entries {
        let mark = match e["state"].as_str() {
            Some("reached" | "expired, refused") => "ok  ",
            Some("unreachable") => "warn",
            _ => "FAIL",
        };
        out.push_str(&format!(
            "{mark} egress {} ({}, owner {}, until {}): {}{}\n",
            e["to"].as_str().unwrap_or(""),
            e["purpose"].as_str().unwrap_or(""),
            e["owner"].as_str().unwrap_or(""),
            e["until"].as_str().unwrap_or("no end"),
            e["state"].as_str().unwrap_or(""),
            e["detail"]
                .as_str()
                .map_or(String::new(), |d| format!(" ({d})"))
        ));
    }
    for p in r["permissions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{} {} mode {} {}\n",
            mark(p["owner_only"] != false),
            p["path"].as_str().unwrap_or(""),
            p["mode"].as_str().unwrap_or("?"),
            if p["owner_only"] == false {
                "(readable by others)"
            } else {
                "(owner only)"
            }
        ));
    }
    let listening: Vec<&str> = r["listening"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    out.push_str(&format!(
        "info listening on this machine: {}\n",
        if listening.is_empty() {
            "nothing".to_owned()
        } else {
            listening.join(", ")
        }
    ));
    let offline: Vec<String> = r["engine_offline_environment"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    out.push_str(&format!(
        "info engine processes start with: {}\n",
        offline.join(" ")
    ));
    out
}

/// Each entry of the egress allow-list, tried: an entry in force must get through the seal
/// (a destination that does not answer is a warning: the seal let it through), a lapsed one
/// must be refused. Returns the entries and whether the list is in force as written.
fn try_allow_list(data: &Path, sealed: bool) -> (Vec<Value>, bool) {
    let path = Layout::new(data).policy();
    let Ok(policy) = airlock_registry::Policy::load(&path) else {
        return (Vec::new(), true);
    };
    let now = std::time::SystemTime::now();
    let mut ok = true;
    let entries = policy
        .egress
        .iter()
        .map(|grant| {
            let allowed = &grant.allowed;
            let expired = allowed.expired(now);
            let (state, detail) = match (airlock_confine::probe(allowed.to.first()), expired) {
                (Probe::NotRefused(d), false) if d.starts_with("connected") => ("reached", d),
                (Probe::NotRefused(d), false) => ("unreachable", d),
                (Probe::Refused(d), true) => ("expired, refused", d),
                (Probe::Refused(d), false) => {
                    ok &= !sealed;
                    ("refused though allowed", d)
                }
                (Probe::NotRefused(d), true) => {
                    ok &= !sealed;
                    ("expired but not refused", d)
                }
            };
            json!({
                "to": allowed.to.to_string(), "purpose": allowed.purpose,
                "owner": grant.owner, "until": grant.until_text, "expired": expired,
                "tried": allowed.to.first().to_string(), "state": state, "detail": detail,
            })
        })
        .collect();
    (entries, ok)
}

/// The data directory, its keys and its audit log, with whether others can read them.
fn owner_only(data: &Path) -> Vec<Value> {
    use std::os::unix::fs::PermissionsExt as _;
    let layout = Layout::new(data);
    [data.to_owned(), data.join("keys"), layout.audit_key(), layout.audit()]
        .into_iter()
        .filter_map(|path| {
            let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
            Some(json!({"path": path.display().to_string(), "mode": format!("{mode:03o}"), "owner_only": mode & 0o077 == 0}))
        })
        .collect()
}

/// Listening TCP sockets of this network namespace (`/proc/net/tcp`, `tcp6`).
fn listening_addresses() -> Vec<String> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/self/net/tcp", false), ("/proc/self/net/tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN.
            if fields.get(3) != Some(&"0A") {
                continue;
            }
            if let Some(address) = fields.get(1).and_then(|a| decode(a, v6)) {
                out.push(address);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `0100007F:1F90` (little-endian words) → `127.0.0.1:8080`.
fn decode(field: &str, v6: bool) -> Option<String> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes = hex::decode(address).ok()?;
    let mut octets = Vec::with_capacity(bytes.len());
    for word in bytes.chunks_exact(4) {
        octets.extend(word.iter().rev());
    }
    let ip: std::net::IpAddr = if v6 {
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(octets).ok()?).into()
    } else {
        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(octets).ok()?).into()
    };
    Some(SocketAddr::new(ip, port).to_string())
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn proc_net_addresses_are_decoded() {
        assert_eq!(
            decode("0100007F:1F90", false).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            decode("00000000000000000000000001000000:0035", true).as_deref(),
            Some("[::1]:53")
        );
        assert_eq!(decode("zz:1", false), None);
    }
}
