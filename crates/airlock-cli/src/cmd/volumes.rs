//! `airlock split` and `airlock join`.

use std::process::ExitCode;

use airlock_bundle::volume::{self, VolumeSet};
use airlock_bundle::{Bundle, Layout, Limits};
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::cli::{JoinArgs, SplitArgs};
use crate::output::{self, Bars};

pub(crate) fn split(args: SplitArgs, limits: &Limits) -> anyhow::Result<ExitCode> {
    let size = parse_size(&args.size)?;
    let bundle = Bundle::open(&args.bundle, limits)?;
    if bundle.layout() != Layout::Tar {
        bail!(
            "{} is not a bundle tar; split works on .airlock files",
            args.bundle.display()
        );
    }
    let payload = bundle.signature(limits)?.payload()?;
    let manifest = airlock_bundle::Manifest::parse(payload, limits)?;
    let digest = manifest.digest;
    let stem = match manifest.airlock().and_then(|a| a.file_name()) {
        Some(name) => name,
        None => args.bundle.file_name().map_or_else(
            || "bundle.airlock".into(),
            |n| n.to_string_lossy().into_owned(),
        ),
    };
    drop(bundle);
    let written = volume::split(&args.bundle, digest, &stem, size, &args.out, &Bars::new())
        .with_context(|| format!("cannot split {}", args.bundle.display()))?;
    if args.json {
        output::json(&json!({
            "bundle": args.bundle,
            "digest": format!("sha256:{digest}"),
            "volumes": written,
        }))?;
    } else {
        let mut text = format!(
            "split {} (sha256:{digest}) into {} volume(s) in {}\n",
            args.bundle.display(),
            written.len(),
            args.out.display()
        );
        for w in &written {
            text.push_str(&format!("  {}\n", w.display()));
        }
        output::out(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn join(args: JoinArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        bail!("{} already exists", args.out.display());
    }
    let bars = Bars::new();
    let set = VolumeSet::open(&args.dir, true, &bars)?;
    set.join(&args.out, &bars)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    output::out(&format!(
        "joined {} volume(s) into {} (bundle sha256:{}); check it with `airlock verify`\n",
        set.volumes.len(),
        args.out.display(),
        set.bundle_digest()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `4G` (GiB), `700M` (MiB), `650MB` (10^6), `4GiB`, or plain bytes.
pub(crate) fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .with_context(|| format!("size {text:?} does not start with a number"))?;
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        "T" | "TIB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => bail!("size {text:?}: unknown unit {unit:?} (use K, M, G, T, KB, MB, GB, TB)"),
    };
    n.checked_mul(factor)
        .with_context(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("700MiB").unwrap(), 700 << 20);
        assert_eq!(parse_size("650MB").unwrap(), 650_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("4Q").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
