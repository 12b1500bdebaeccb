//! Controlled exits: `[egress]` in the registry's policy.toml lets a command reach the
//! enclave's own services, and nothing else. The services here are listeners on loopback;
//! what tries to reach them is `airlock doctor`, and an engine process in its box behind
//! `airlock serve` (a stand-in script that connects and reports). Every allowed connection
//! and every refusal is in the audit log, and `airlock egress log` reads them back.

use std::net::{SocketAddr, TcpListener};

use serde_json::Value;

use crate::processes::{script, serve_with_binary};
use crate::registry::Site;
use crate::serve::site_with_models;

/// Writes `entries` as policy.toml's `[egress]` allow-list.
fn allow(site: &Site, entries: &[String]) {
    let path = site.data.join("policy.toml");
    let policy = std::fs::read_to_string(&path).unwrap();
    let table = format!("[egress]\nallow = [\n{}\n]\n\n", entries.join(",\n"));
    // Before the trusted keys' tables, which end the file.
    let at = policy.find("[[publisher]]").unwrap_or(policy.len());
    std::fs::write(&path, format!("{}{table}{}", &policy[..at], &policy[at..])).unwrap();
}

fn entry(to: SocketAddr, purpose: &str, until: Option<&str>) -> String {
    let until = until.map_or(String::new(), |u| format!(", until = {u:?}"));
    format!("{{ to = \"{to}\", purpose = \"{purpose}\", owner = \"it-ops\"{until} }}")
}

/// `egress log --json` of `site`, one object per entry.
fn egress_log(site: &Site) -> Vec<Value> {
    let out = site.cmd(&["egress", "log", "--json"]).ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn logged<'a>(log: &'a [Value], decision: &str, to: SocketAddr) -> Vec<&'a Value> {
    log.iter()
        .filter(|e| e["decision"] == decision && e["destination"] == to.to_string())
        .collect()
}

#[test]
fn an_engine_process_reaches_the_allowed_destination_and_every_other_is_refused_and_audited() {
    let site = site_with_models();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let lapsed = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed = service.local_addr().unwrap();
    let port = allowed.port();
    let other_address = SocketAddr::from(([127, 0, 0, 2], port));
    let other_port = SocketAddr::from(([127, 0, 0, 1], lapsed.local_addr().unwrap().port() + 1));
    let expired = lapsed.local_addr().unwrap();
    allow(
        &site,
        &[
            entry(allowed, "directory", Some("2099-12-31")),
            entry(expired, "retired service", Some("2020-01-01")),
        ],
    );
    // The engine connects to each and says what happened, then exits: its last words are
    // the server's start-up error.
    let try_each = [allowed, other_address, other_port, expired]
        .iter()
        .map(|to| {
            format!(
                "if (exec 3<>/dev/tcp/{}/{}) 2>/dev/null; then echo \"reached {to}\" >&2; else echo \"refused {to}\" >&2; fi",
                to.ip(),
                to.port()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let engine = script(&site, "connecting-engine", &format!("{try_each}\nexit 3"));
    // bash's /dev/tcp: the script runs under bash.
    let text = std::fs::read_to_string(&engine).unwrap();
    std::fs::write(&engine, text.replacen("#!/bin/sh", "#!/bin/bash", 1)).unwrap();
    let failed = serve_with_binary(&site, &engine, "");
    assert_ne!(failed.code, 0);
    for line in [
        format!("reached {allowed}"),
        format!("refused {other_address}"),
        format!("refused {other_port}"),
        format!("refused {expired}"),
    ] {
        assert!(failed.stderr.contains(&line), "{line}: {}", failed.stderr);
    }
    let log = egress_log(&site);
    let reached = logged(&log, "allowed", allowed);
    assert_eq!(reached.len(), 1, "{log:#?}");
    assert_eq!(reached[0]["purpose"], "directory");
    assert_eq!(reached[0]["process"], "started by airlock");
    assert_eq!(reached[0]["syscall"], "connect");
    for to in [other_address, other_port, expired] {
        let refused = logged(&log, "refused", to);
        assert_eq!(refused.len(), 1, "{to}: {log:#?}");
        assert_eq!(refused[0]["command"], "serve");
    }
    // The text form ends with each destination's counts.
    let text = site.cmd(&["egress", "log", "--since", "1h"]).ok().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with(&allowed.to_string()) && l.contains(" allowed ")),
        "{text}"
    );
}

#[test]
fn doctor_tries_each_allowed_destination_and_a_lapsed_one_is_refused() {
    let site = crate::registry::Site::new();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed = service.local_addr().unwrap();
    let expired = SocketAddr::from(([127, 0, 0, 1], allowed.port().wrapping_add(1).max(1)));
    allow(
        &site,
        &[
            entry(allowed, "object store", None),
            entry(expired, "retired", Some("2020-01-01")),
        ],
    );
    let doctor = site.cmd(&["doctor", "--json"]).ok().json();
    let states: Vec<(String, String)> = doctor["egress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["to"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (allowed.to_string(), "reached".to_owned()),
            (expired.to_string(), "expired, refused".to_owned())
        ]
    );
    // And the probe to an address not on the list is refused as ever.
    assert_eq!(doctor["probe"]["refused"], true);
    let log = egress_log(&site);
    assert_eq!(logged(&log, "allowed", allowed).len(), 1, "{log:#?}");
    assert_eq!(logged(&log, "refused", expired).len(), 1, "{log:#?}");
    let text = site.cmd(&["doctor"]).ok().stdout;
    assert!(
        text.contains(&format!(
            "ok   egress {allowed} (object store, owner it-ops, until no end): reached (connected"
        )),
        "{text}"
    );
}

#[test]
fn a_host_name_in_the_allow_list_fails_config_check_and_every_command_with_one_line() {
    let site = crate::registry::Site::new();
    std::fs::write(
        site.ws.path("airlock.toml"),
        "[models.chat]\nref = \"smollm2:prod\"\n",
    )
    .unwrap();
    let config = site.ws.path("airlock.toml");
    site.cmd(&["config", "check", "--config", config.to_str().unwrap()])
        .ok();
    allow(
        &site,
        &[
            "{ to = \"ldap.corp.example:636\", purpose = \"directory\", owner = \"it-ops\" }"
                .into(),
        ],
    );
    for args in [
        vec!["config", "check", "--config", config.to_str().unwrap()],
        vec!["ls"],
    ] {
        let failed = site.cmd(&args);
        assert_ne!(failed.code, 0, "{args:?}");
        let lines: Vec<&str> = failed.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", failed.stderr);
        assert!(
            lines[0].contains("\"ldap.corp.example:636\" is not an IP address or CIDR range: airlock resolves no names"),
            "{args:?}: {}",
            failed.stderr
        );
    }
}

#[test]
fn a_servers_configuration_may_narrow_the_allow_list_and_never_widen_it() {
    let site = crate::registry::Site::new();
    allow(
        &site,
        &["{ to = \"10.0.0.0/24:636\", purpose = \"directory\", owner = \"it-ops\" }".into()],
    );
    let check = |egress: &str| {
        let config = site.ws.path("airlock.toml");
        std::fs::write(
            &config,
            format!("[models.chat]\nref = \"smollm2:prod\"\n\n[egress]\nallow = [{egress}]\n"),
        )
        .unwrap();
        site.cmd(&["config", "check", "--config", config.to_str().unwrap()])
    };
    let narrowed = check("\"10.0.0.5:636\"").ok().stdout;
    assert!(
        narrowed.contains("egress: 10.0.0.5:636 (directory, until no end)"),
        "{narrowed}"
    );
    for wider in ["10.0.0.0/16:636", "10.0.0.5:389", "10.0.1.5:636"] {
        let failed = check(&format!("{wider:?}"));
        assert_ne!(failed.code, 0, "{wider}");
        assert!(
            failed.stderr.contains("never widen"),
            "{wider}: {}",
            failed.stderr
        );
    }
}
