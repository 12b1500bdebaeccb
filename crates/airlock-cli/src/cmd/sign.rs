//! `airlock sign`.

use std::process::ExitCode;

use airlock_bundle::Limits;
use anyhow::Context as _;
use serde_json::json;

use crate::cli::SignArgs;
use crate::output::{self, Bars};

pub(crate) fn run(args: SignArgs, limits: &Limits) -> anyhow::Result<ExitCode> {
    let key = super::load_private_key(&args.key)?;
    let verified = airlock_bundle::cosign(&args.bundle, &key, limits, &Bars::new())
        .with_context(|| format!("cannot sign {}", args.bundle.display()))?;
    let id = key.public().id().to_hex();
    let digest = format!("sha256:{}", verified.manifest.digest);
    if args.json {
        output::json(&json!({"bundle": args.bundle, "digest": digest, "added_signer": id}))?;
    } else {
        output::out(&format!(
            "co-signed {} with key {id}\n  digest      {digest} (unchanged)\n",
            args.bundle.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
