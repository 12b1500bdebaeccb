//! `airlock pack`.

use std::path::PathBuf;
use std::process::ExitCode;

use airlock_bundle::{Limits, PackOptions};
use anyhow::Context as _;
use serde_json::json;

use crate::cli::PackArgs;
use crate::output::{self, Bars};

pub(crate) fn run(args: PackArgs, limits: &Limits) -> anyhow::Result<ExitCode> {
    let keys = args
        .keys
        .iter()
        .map(|k| super::load_private_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let source_date_epoch = source_date_epoch()?;
    let opts = PackOptions {
        name: args.name.clone(),
        version: args.version.clone(),
        kind: args.kind,
        license: args.license,
        source: args.source,
        revision: args.revision,
        card: args.card,
        eval_results: if args.run_evals {
            super::eval::pack_time_scores(&args.src, args.evals.as_deref(), args.threads)?
        } else {
            Default::default()
        },
        evals: args.evals,
        parent: args.parent,
        derivation: None,
        source_date_epoch,
    };
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}_{}.airlock", args.name, args.version)));
    let report = airlock_bundle::pack(&args.src, &opts, &keys, &out, limits, &Bars::new())
        .with_context(|| format!("cannot pack {}", args.src.display()))?;
    let info = &report.info;
    let signers: Vec<String> = keys.iter().map(|k| k.public().id().to_hex()).collect();
    if args.json {
        output::json(&json!({
            "bundle": out,
            "name": info.name,
            "version": info.version,
            "kind": info.kind,
            "digest": format!("sha256:{}", report.digest),
            "size": report.bundle_size,
            "signers": signers,
            "model": info.model,
            "files": info.files.iter().map(|f| json!({"path": f.path, "size": f.size})).collect::<Vec<_>>(),
            "skipped": report.skipped,
        }))?;
    } else {
        let m = &info.model;
        output::out(&format!(
            "packed {}:{} ({}) -> {}\n  digest      sha256:{}\n  size        {} bytes, {} files\n  model       {} {}, {} parameters, {}\n  signed by   {}\n",
            info.name,
            info.version,
            info.kind,
            out.display(),
            report.digest,
            report.bundle_size,
            info.files.len() + 1,
            m.format,
            m.architecture.as_deref().unwrap_or("unknown architecture"),
            m.parameters,
            m.quantization.as_deref().unwrap_or("unknown dtype"),
            signers.join(", "),
        ))?;
        for s in &report.skipped {
            eprintln!("skipped {s} (VCS metadata)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `SOURCE_DATE_EPOCH` (seconds), else 0: what every packed timestamp is, for reproducibility.
pub(super) fn source_date_epoch() -> anyhow::Result<u64> {
    Ok(match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => 0,
    })
}
