//! Registry commands: init, import, approve, reject, tag, untag, ls, show, rm, gc, fsck,
//! export, allow-downgrade.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use airlock_registry::{Reference, Registry};
use anyhow::Context as _;
use serde_json::json;

use crate::cli::Command;
use crate::output::{self, Bars};

pub(crate) fn run(command: Command, data: &Path) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init(args) => {
            let report = Registry::init(data, &super::actor())?;
            if args.json {
                output::json(&serde_json::to_value(&report)?)?;
            } else {
                output::out(&format!(
                    "initialised {}\n  policy       {}  (trust keys with `airlock trust add`)\n  audit key    {}\n               (auditors verify the log with this key; keep a copy outside the registry)\n",
                    report.data.display(),
                    report.policy.display(),
                    report.audit_verifier,
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import(args) => {
            let result = super::open_registry(data).and_then(|mut r| {
                r.import(&args.bundle, &Bars::new())
                    .with_context(|| format!("cannot import {}", args.bundle.display()))
            });
            let report = match result {
                Ok(r) => r,
                Err(e) => return output::json_failure(args.json, e),
            };
            if args.json {
                let mut v = serde_json::to_value(&report)?;
                v["ok"] = json!(true);
                output::json(&v)?;
            } else if report.already_present {
                output::out(&format!(
                    "{}:{} is already in the registry ({}), {}\n",
                    report.name, report.version, report.digest, report.state
                ))?;
            } else {
                output::out(&format!(
                    "imported {}:{} {}\n  {} files, {} bytes, {} new blob(s)\n  signed by {}\n  state: quarantined (a second person approves it with `airlock approve {}:{} --key APPROVER.key`)\n",
                    report.name,
                    report.version,
                    report.digest,
                    report.files,
                    report.bytes,
                    report.new_blobs,
                    report.signers.join(", "),
                    report.name,
                    report.version,
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve(args) => {
            let (name, version) = Reference::parse_exact(&args.reference)?;
            let key = super::load_private_key(&args.key)?;
            let mut registry = super::open_registry(data)?;
            let result = registry
                .approve(&name, &version.to_string(), &key)
                .with_context(|| format!("cannot approve {}", args.reference));
            let approver = match result {
                Ok(a) => a,
                Err(e) => return output::json_failure(args.json, e),
            };
            if args.json {
                output::json(
                    &json!({"ok": true, "name": name, "version": version.to_string(), "approver": approver, "state": "approved"}),
                )?;
            } else {
                output::out(&format!("approved {name}:{version} by key {approver}\n"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reject(args) => {
            let (name, version) = Reference::parse_exact(&args.reference)?;
            super::open_registry(data)?
                .reject(&name, &version.to_string(), &args.reason)
                .with_context(|| format!("cannot reject {}", args.reference))?;
            output::out(&format!("rejected {name}:{version}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tag(args) => {
            let (name, version) = Reference::parse_exact(&args.reference)?;
            let previous = super::open_registry(data)?
                .tag(&name, &version.to_string(), &args.tag)
                .with_context(|| format!("cannot tag {} as {}", args.reference, args.tag))?;
            let moved = previous.map_or(String::new(), |p| format!(" (was {p})"));
            output::out(&format!("{name}:{} -> {version}{moved}\n", args.tag))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Untag(args) => {
            let reference = Reference::parse(&args.reference)?;
            let airlock_registry::Selector::Tag(tag) = &reference.selector else {
                anyhow::bail!("{} is not NAME:TAG", args.reference);
            };
            let version = super::open_registry(data)?.untag(&reference.name, tag)?;
            output::out(&format!("removed tag {reference} (was {version})\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls(args) => {
            let list = super::open_registry(data)?.list()?;
            if args.json {
                output::json(&serde_json::to_value(&list)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut text = format!(
                "{:<24} {:<12} {:<12} {:<16} {:>12}  {}\n",
                "NAME", "VERSION", "STATE", "TAGS", "SIZE", "DIGEST"
            );
            for v in list {
                text.push_str(&format!(
                    "{:<24} {:<12} {:<12} {:<16} {:>12}  {}\n",
                    v.name,
                    v.version,
                    v.state,
                    v.tags.join(","),
                    v.size,
                    &v.digest[..19.min(v.digest.len())]
                ));
            }
            output::out(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show(args) => {
            let reference = Reference::parse(&args.reference)?;
            let detail = super::open_registry(data)?.show(&reference)?;
            if args.json {
                output::json(&serde_json::to_value(&detail)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let s = &detail.summary;
            let mut text = format!(
                "{}:{}\n  state       {}\n  tags        {}\n  digest      {}\n  kind        {} ({})\n  licence     {}\n  size        {} bytes\n  signed by   {}\n  imported    {} by {}\n  policy      sha256:{}\n",
                s.name,
                s.version,
                s.state,
                if s.tags.is_empty() {
                    "-".into()
                } else {
                    s.tags.join(", ")
                },
                s.digest,
                s.kind,
                detail.format,
                detail.license.as_deref().unwrap_or("-"),
                s.size,
                detail.signers.join(", "),
                detail.imported_at,
                detail.imported_by,
                detail.policy_digest,
            );
            for a in &detail.approvals {
                text.push_str(&format!(
                    "  approved    {} by {}{}\n",
                    a.time,
                    a.approver,
                    a.label
                        .as_ref()
                        .map_or(String::new(), |l| format!(" ({l})"))
                ));
            }
            for e in &detail.evals {
                let scores: Vec<String> = e
                    .suites
                    .iter()
                    .map(|(name, passed, total)| format!("{name} {passed}/{total}"))
                    .collect();
                text.push_str(&format!(
                    "  evaluated   {} by {}: {}{}\n",
                    e.time,
                    e.signer,
                    scores.join(", "),
                    if e.trusted {
                        ""
                    } else {
                        " (no longer verifies)"
                    }
                ));
            }
            if let Some(r) = &detail.reason {
                text.push_str(&format!("  rejected    {r}\n"));
            }
            text.push_str("  files\n");
            for f in &detail.files {
                text.push_str(&format!("    {:>12}  {}  {}\n", f.size, f.sha256, f.path));
            }
            output::out(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm(args) => {
            let reference = Reference::parse(&args.reference)?;
            let removed = super::open_registry(data)?
                .remove(&reference)
                .with_context(|| format!("cannot remove {reference}"))?;
            output::out(&format!(
                "removed {removed} (blobs are reclaimed by `airlock gc`)\n"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc(args) => {
            let report = super::open_registry(data)?.gc()?;
            if args.json {
                output::json(&serde_json::to_value(&report)?)?;
            } else {
                output::out(&format!(
                    "removed {} blob(s) ({} bytes) and {} abandoned staging dir(s) ({} bytes)\n",
                    report.blobs, report.blob_bytes, report.staging, report.staging_bytes
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fsck(args) => {
            let mut report = super::open_registry(data)?.fsck(args.quick, &Bars::new())?;
            check_collections(data, &mut report);
            let clean = report.problems.is_empty();
            if args.json {
                let mut v = serde_json::to_value(&report)?;
                v["clean"] = json!(clean);
                output::json(&v)?;
            } else {
                let mut text = format!(
                    "{}: {} version(s), {} blob(s), {} bytes rehashed, {} audit entries verified\n",
                    if clean { "clean" } else { "PROBLEMS FOUND" },
                    report.versions,
                    report.blobs,
                    report.bytes_hashed,
                    report.audit_entries
                );
                for p in &report.problems {
                    text.push_str(&format!("  problem: {p}\n"));
                }
                for n in &report.notes {
                    text.push_str(&format!("  note: {n}\n"));
                }
                output::out(&text)?;
            }
            Ok(ExitCode::from(if clean { 0 } else { 1 }))
        }
        Command::Export(args) => {
            let reference = Reference::parse(&args.reference)?;
            let files = super::open_registry(data)?
                .export(&reference, &args.out)
                .with_context(|| format!("cannot export {reference}"))?;
            output::out(&format!(
                "exported {reference} to {} ({files} read-only files, model.sig included)\n",
                args.out.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AllowDowngrade(args) => {
            let (name, version) = Reference::parse_exact(&args.reference)?;
            let expires = parse_expiry(&args.expires)?;
            let key = super::load_private_key(&args.key)?;
            let exception = super::open_registry(data)?
                .allow_downgrade(&name, &version.to_string(), &key, expires, &args.reason)
                .with_context(|| format!("cannot allow a downgrade to {}", args.reference))?;
            output::out(&format!(
                "{name}:{version} may be imported despite rollback protection until {} (approver {})\n",
                exception.expires, exception.approver
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!("not a registry command"),
    }
}

/// An RFC 3339 time, or a duration from now (`24h`, `7days`).
fn parse_expiry(text: &str) -> anyhow::Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let d: Duration = humantime::parse_duration(text).with_context(|| {
        format!("--expires {text:?} is neither an RFC 3339 time nor a duration like 7days")
    })?;
    Ok(SystemTime::now() + d)
}

/// Checks every collection's classes, documents' classes and groups, and live chunks against
/// the state fsck replayed from the audit log (when the log verified): each row that
/// disagrees is a problem.
fn check_collections(data: &Path, report: &mut airlock_registry::FsckReport) {
    let Some(state) = report.log_state.clone() else {
        return;
    };
    let names = match airlock_rag::Collection::names(data) {
        Ok(names) => names,
        Err(e) => {
            report.problems.push(format!("collections: {e}"));
            return;
        }
    };
    for name in names {
        let observed = airlock_rag::Collection::open(data, &name)
            .and_then(|c| airlock_server::collections::observe(&c));
        match observed {
            Ok(observed) => report.problems.extend(
                airlock_registry::replay::compare_collection(&state, &observed)
                    .iter()
                    .map(ToString::to_string),
            ),
            Err(e) => report
                .problems
                .push(format!("collection {name}: cannot be read: {e}")),
        }
    }
}
