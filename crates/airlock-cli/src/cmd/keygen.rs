//! `airlock keygen`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use airlock_bundle::PrivateKey;
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::cli::KeygenArgs;
use crate::output;

pub(crate) fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    if args.name.is_empty() || args.name.contains('/') || args.name.starts_with('.') {
        bail!("invalid key name {:?}: use a plain file name", args.name);
    }
    let passphrase = if args.encrypt {
        let first = super::passphrase("New passphrase: ")?;
        if first.is_empty() {
            bail!("empty passphrase");
        }
        if std::env::var(super::PASSPHRASE_ENV).is_err()
            && rpassword::prompt_password("Repeat passphrase: ")? != first
        {
            bail!("passphrases do not match");
        }
        Some(first)
    } else {
        None
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let key_path = args.out.join(format!("{}.key", args.name));
    let pub_path = args.out.join(format!("{}.pub", args.name));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let key = PrivateKey::generate()?;
    write_new(
        &key_path,
        key.to_pem(passphrase.as_deref())?.as_bytes(),
        0o600,
    )?;
    write_new(&pub_path, key.public().pem().as_bytes(), 0o644)?;
    let id = key.public().id().to_hex();
    if args.json {
        output::json(
            &json!({"key_id": id, "private_key": key_path, "public_key": pub_path, "encrypted": args.encrypt}),
        )?;
    } else {
        output::out(&format!("{id}\n"))?;
        eprintln!(
            "wrote {} (private, mode 0600{}) and {}",
            key_path.display(),
            if args.encrypt { ", encrypted" } else { "" },
            pub_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` with `mode`, failing if it exists; synced before returning.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
