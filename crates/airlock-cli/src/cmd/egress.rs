//! `airlock egress log`: what left, when, to where, and what was refused, from the audit log.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cli::EgressLogArgs;
use crate::output;

/// One `egress.allowed` or `egress.refused` entry, as reported.
struct Event {
    time: String,
    decision: String,
    destination: String,
    syscall: String,
    process: String,
    purpose: String,
    command: String,
    count: u64,
}

impl Event {
    fn from_record(record: &airlock_audit::Record) -> Option<Self> {
        let decision = match record.action.as_str() {
            "egress.allowed" => "allowed",
            "egress.refused" => "refused",
            _ => return None,
        };
        let text = |key: &str| {
            record
                .details
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned()
        };
        Some(Self {
            time: record.time.clone(),
            decision: decision.to_owned(),
            destination: text("destination"),
            syscall: text("syscall"),
            process: text("process"),
            purpose: text("purpose"),
            command: text("command"),
            count: record
                .details
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(1),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "time": self.time, "decision": self.decision, "destination": self.destination,
            "syscall": self.syscall, "process": self.process, "purpose": self.purpose,
            "command": self.command, "count": self.count,
        })
    }
}

/// What was seen of one destination.
struct Seen {
    count: u64,
    first: String,
    last: String,
}

/// The earliest time `since` names, as the audit log writes times (RFC 3339 UTC, ms).
fn since_time(since: &str) -> anyhow::Result<String> {
    let at = match humantime::parse_duration(since) {
        Ok(ago) => std::time::SystemTime::now()
            .checked_sub(ago)
            .context("--since reaches before 1970")?,
        Err(_) => humantime::parse_rfc3339_weak(since).with_context(|| {
            format!("--since {since:?} is neither a time (2026-12-01T00:00:00Z) nor a duration (24h, 7d)")
        })?,
    };
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

pub(crate) fn log(args: &EgressLogArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(since_time).transpose()?;
    let layout = airlock_registry::Layout::new(data);
    let mut text = String::new();
    let mut destinations: BTreeMap<(String, String), Seen> = BTreeMap::new();
    let mut failed = None;
    let torn = airlock_audit::for_each_record(&layout.audit(), |record| {
        if failed.is_some() {
            return;
        }
        // Times are fixed-width RFC 3339 UTC: text order is time order.
        if since.as_ref().is_some_and(|s| record.time < *s) {
            return;
        }
        let Some(event) = Event::from_record(&record) else {
            return;
        };
        if args.json {
            match serde_json::to_string(&event.to_json()) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(e) => failed = Some(e),
            }
            return;
        }
        let why = if event.decision == "allowed" {
            event.purpose.clone()
        } else {
            event.command.clone()
        };
        text.push_str(&format!(
            "{} {:<7} {:<28} {:<8} {:<20} x{:<5} {}\n",
            event.time,
            event.decision,
            event.destination,
            event.syscall,
            event.process,
            event.count,
            why
        ));
        let seen = destinations
            .entry((event.destination.clone(), event.decision.clone()))
            .or_insert_with(|| Seen {
                count: 0,
                first: event.time.clone(),
                last: event.time.clone(),
            });
        seen.count += event.count;
        seen.last = event.time;
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if !args.json {
        if text.is_empty() {
            text.push_str("no egress entries in the audit log");
            text.push_str(if since.is_some() {
                " since then\n"
            } else {
                "\n"
            });
        } else {
            text.push_str("\ndestination                  decision  count  first seen                last seen\n");
            for ((destination, decision), seen) in &destinations {
                text.push_str(&format!(
                    "{destination:<28} {decision:<8} {:>6}  {}  {}\n",
                    seen.count, seen.first, seen.last
                ));
            }
        }
    }
    output::out(&text)?;
    if let Some(offset) = torn {
        eprintln!(
            "airlock: warning: the log ends in a torn entry at byte {offset}; run `airlock audit verify`"
        );
    }
    Ok(ExitCode::SUCCESS)
}
