//! `airlock audit verify|tail|prove|consistency|checkpoint|repair`.

use std::path::Path;
use std::process::ExitCode;

use airlock_audit::{LogView, NoteVerifier, merkle};
use airlock_registry::{Layout, Registry};
use anyhow::Context as _;
use serde_json::json;

use crate::cli::AuditCommand;
use crate::output;

pub(crate) fn run(command: AuditCommand, data: &Path) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(data);
    match command {
        AuditCommand::Verify(args) => {
            let verifier = match &args.key {
                Some(k) => {
                    let text = std::fs::read_to_string(k).unwrap_or_else(|_| k.clone());
                    NoteVerifier::parse(&text)?
                }
                None => Registry::audit_verifier(data)?,
            };
            let result = verify(&layout, &verifier, args.witness.as_deref());
            match result {
                Ok((view, witnessed)) => {
                    if args.json {
                        output::json(&json!({
                            "ok": true,
                            "entries": view.size(),
                            "checkpoints": view.checkpoint_count(),
                            "root": hex::encode(view.root_at(view.size())?),
                            "origin": view.origin(),
                            "witness_size": witnessed,
                        }))?;
                    } else {
                        output::out(&format!(
                            "OK audit log {}: {} entries, {} signed checkpoints, root {}{}\n",
                            view.origin().unwrap_or("-"),
                            view.size(),
                            view.checkpoint_count(),
                            hex::encode(view.root_at(view.size())?),
                            witnessed.map_or(String::new(), |s| format!(
                                "; extends the witnessed checkpoint of {s} entries"
                            )),
                        ))?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    output::json_failure(args.json, e.context("audit log failed verification"))
                }
            }
        }
        AuditCommand::Tail(args) => {
            let (records, torn) = airlock_audit::tail(&layout.audit(), args.count)?;
            let mut text = String::new();
            for r in &records {
                if args.json {
                    text.push_str(&String::from_utf8(r.to_canonical()?)?);
                    text.push('\n');
                } else {
                    text.push_str(&format!(
                        "{:>6} {} {:<8} {:<16} {}{}{}\n",
                        r.index,
                        r.time,
                        format!("{:?}", r.outcome).to_lowercase(),
                        r.action,
                        r.actor,
                        r.subject
                            .as_ref()
                            .map_or(String::new(), |s| format!(" {s}")),
                        r.reason
                            .as_ref()
                            .map_or(String::new(), |s| format!(" -- {s}")),
                    ));
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
        AuditCommand::Prove(args) => {
            let verifier = Registry::audit_verifier(data)?;
            let view = LogView::load(&layout.audit(), &verifier)?;
            let size = args.size.unwrap_or_else(|| view.size());
            let proof = view.inclusion_proof(args.index, size)?;
            let root = view.root_at(size)?;
            let leaf = *view
                .leaves()
                .get(args.index as usize)
                .context("entry index out of range")?;
            anyhow::ensure!(
                merkle::verify_inclusion(&leaf, args.index, size, &proof, &root),
                "internal error: the proof does not verify"
            );
            output::json(&json!({
                "index": args.index,
                "tree_size": size,
                "leaf_hash": hex::encode(leaf),
                "root": hex::encode(root),
                "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
                "checkpoint": view.checkpoint(size)?,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Consistency(args) => {
            let verifier = Registry::audit_verifier(data)?;
            let view = LogView::load(&layout.audit(), &verifier)?;
            let proof = view.consistency_proof(args.old, args.new)?;
            let (old_root, new_root) = (view.root_at(args.old)?, view.root_at(args.new)?);
            anyhow::ensure!(
                merkle::verify_consistency(args.old, args.new, &old_root, &new_root, &proof),
                "internal error: the proof does not verify"
            );
            output::json(&json!({
                "old_size": args.old,
                "new_size": args.new,
                "old_root": hex::encode(old_root),
                "new_root": hex::encode(new_root),
                "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
                "old_checkpoint": view.checkpoint(args.old)?,
                "new_checkpoint": view.checkpoint(args.new)?,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint => {
            let verifier = Registry::audit_verifier(data)?;
            let view = LogView::load(&layout.audit(), &verifier)?;
            let note = view
                .latest_checkpoint()?
                .context("the audit log has no checkpoint")?;
            output::out(&note)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Repair(args) => {
            let report = Registry::repair_audit(data, &super::actor())?;
            match report {
                None => output::out("the audit log needs no repair\n")?,
                Some(r) if args.json => output::json(&json!({
                    "offset": r.offset, "bytes": r.bytes, "sha256": r.sha256, "saved_to": r.saved_to,
                }))?,
                Some(r) => output::out(&format!(
                    "set aside {} bytes from offset {} into {} (sha256:{}); recorded as an audit entry\n",
                    r.bytes,
                    r.offset,
                    r.saved_to.display(),
                    r.sha256
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Verifies the log (with its `head` copy of the latest checkpoint) and, if given, a
/// witnessed checkpoint. Returns the view and the witnessed size.
fn verify(
    layout: &Layout,
    verifier: &NoteVerifier,
    witness: Option<&Path>,
) -> anyhow::Result<(LogView, Option<u64>)> {
    let view = LogView::load(&layout.audit(), verifier)?;
    let witnessed = match witness {
        Some(path) => {
            let note = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(view.check_checkpoint(verifier, &note)?.size)
        }
        None => None,
    };
    Ok((view, witnessed))
}
