//! `airlock verify`.

use std::process::ExitCode;
use std::time::Instant;

use airlock_bundle::{Bundle, Limits, PublicKey, TrustPolicy};
use serde_json::json;

use crate::cli::VerifyArgs;
use crate::output::{self, Bars};

pub(crate) fn run(args: VerifyArgs, limits: &Limits) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let keys = args
        .trust
        .iter()
        .map(|p| PublicKey::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let trust = TrustPolicy::new(keys, args.threshold)?;
    let result =
        Bundle::open(&args.bundle, limits).and_then(|b| b.verify(&trust, limits, &Bars::new()));
    let verified = match result {
        Ok(v) => v,
        Err(e) if args.json => {
            output::json(
                &json!({"ok": false, "bundle": args.bundle, "kind": e.kind(), "error": e.to_string()}),
            )?;
            let code = if e.is_verification_failure() { 1 } else { 2 };
            output::error_line(&anyhow::Error::new(e));
            return Ok(ExitCode::from(code));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("{} failed verification", args.bundle.display())));
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let digest = format!("sha256:{}", verified.manifest.digest);
    let signers: Vec<String> = verified.signers.iter().map(|k| k.to_hex()).collect();
    let (name, version) = verified.manifest.airlock().map_or(
        (verified.manifest.statement.subject[0].name.clone(), None),
        |a| (a.name.clone(), Some(a.version.clone())),
    );
    if args.json {
        output::json(&json!({
            "ok": true,
            "bundle": args.bundle,
            "name": name,
            "version": version,
            "digest": digest,
            "signers": signers,
            "threshold": trust.threshold(),
            "files": verified.files,
            "bytes": verified.bytes,
            "ignored": verified.ignored,
            "seconds": seconds,
        }))?;
    } else {
        let label = version.map_or(name.clone(), |v| format!("{name}:{v}"));
        output::out(&format!(
            "OK {label} {digest}\n  {} files, {} bytes hashed in {seconds:.2}s ({:.0} MB/s)\n  signed by {} of {} required trusted key(s): {}\n",
            verified.files,
            verified.bytes,
            verified.bytes as f64 / seconds.max(1e-9) / 1e6,
            signers.len(),
            trust.threshold(),
            signers.join(", ")
        ))?;
        if !verified.ignored.is_empty() {
            output::out(&format!(
                "  not covered by the signature (signer's ignore_paths): {}\n",
                verified.ignored.join(", ")
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
