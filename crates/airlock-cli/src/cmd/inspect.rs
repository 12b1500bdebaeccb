//! `airlock inspect`.

use std::process::ExitCode;

use airlock_bundle::{Bundle, Limits, Manifest};
use anyhow::Context as _;
use serde_json::json;

use crate::cli::InspectArgs;
use crate::output;

pub(crate) fn run(args: InspectArgs, limits: &Limits) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.bundle, limits)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let signature = bundle.signature(limits)?;
    let manifest = Manifest::parse(signature.payload()?, limits)?;
    let signers = signature.signer_ids();
    let sizes: std::collections::BTreeMap<&str, u64> =
        bundle.entries().map(|(p, s)| (p.as_str(), s)).collect();
    let files: Vec<(String, u64)> = manifest
        .files
        .keys()
        .map(|p| (p.to_string(), sizes.get(p.as_str()).copied().unwrap_or(0)))
        .collect();
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    let digest = format!("sha256:{}", manifest.digest);
    let airlock = manifest.airlock();
    if args.json {
        output::json(&json!({
            "bundle": args.bundle,
            "verified": false,
            "digest": digest,
            "name": airlock.map_or(manifest.statement.subject[0].name.as_str(), |a| a.name.as_str()),
            "version": airlock.map(|a| &a.version),
            "kind": airlock.map(|a| &a.kind),
            "license": airlock.and_then(|a| a.license.as_ref()),
            "created": airlock.map(|a| &a.created),
            "source": airlock.and_then(|a| a.source.as_ref()),
            "revision": airlock.and_then(|a| a.revision.as_ref()),
            "parent": airlock.and_then(|a| a.parent.as_ref()),
            "derivation": airlock.and_then(|a| a.derivation.as_ref()),
            "model": airlock.map(|a| &a.model),
            "evals": airlock.map(|a| &a.evals),
            "signers": signers,
            "files": files.iter().map(|(p, s)| json!({"path": p, "size": s})).collect::<Vec<_>>(),
            "size": total,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    let line = |text: &mut String, k: &str, v: &str| text.push_str(&format!("{k:<16}{v}\n"));
    match airlock {
        Some(a) => {
            line(&mut text, "name", &a.name);
            line(&mut text, "version", &a.version);
            line(&mut text, "kind", &a.kind);
            line(&mut text, "digest", &digest);
            line(
                &mut text,
                "license",
                a.license.as_deref().unwrap_or("(none given)"),
            );
            line(&mut text, "created", &a.created);
            if let Some(s) = &a.source {
                line(&mut text, "source", s);
            }
            if let Some(r) = &a.revision {
                line(&mut text, "revision", r);
            }
            if let Some(p) = &a.parent {
                line(&mut text, "parent", p);
            }
            if let Some(d) = &a.derivation {
                let from = d.parent_quantization.as_deref().unwrap_or("?");
                line(
                    &mut text,
                    "derived",
                    &format!(
                        "{} {from} → {} ({} → {} bytes of weights)",
                        d.method, d.quantization, d.parent_weights_bytes, d.weights_bytes
                    ),
                );
            }
            let m = &a.model;
            line(&mut text, "format", &m.format);
            line(
                &mut text,
                "architecture",
                m.architecture.as_deref().unwrap_or("unknown"),
            );
            line(&mut text, "parameters", &m.parameters.to_string());
            line(
                &mut text,
                "quantization",
                m.quantization.as_deref().unwrap_or("unknown"),
            );
            line(
                &mut text,
                "context length",
                &m.context_length.map_or("unknown".into(), |c| c.to_string()),
            );
            line(
                &mut text,
                "chat template",
                &m.chat_template_sha256
                    .as_ref()
                    .map_or("none".into(), |h| format!("sha256:{h}")),
            );
            for e in &a.evals {
                line(
                    &mut text,
                    "eval suite",
                    &format!("{} ({} cases)", e.path, e.cases),
                );
            }
        }
        None => {
            line(&mut text, "name", &manifest.statement.subject[0].name);
            line(&mut text, "digest", &digest);
            line(
                &mut text,
                "format",
                "OpenSSF Model Signing (no airlock metadata)",
            );
        }
    }
    line(
        &mut text,
        "signers",
        &format!(
            "{} (claimed, not verified: run `airlock verify`)",
            signers.join(", ")
        ),
    );
    line(
        &mut text,
        "files",
        &format!("{} files, {total} bytes", files.len()),
    );
    for (p, s) in &files {
        text.push_str(&format!("  {s:>14}  {p}\n"));
    }
    output::out(&text)?;
    Ok(ExitCode::SUCCESS)
}
