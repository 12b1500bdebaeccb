//! One module per subcommand; each only wires library calls to output.

mod inspect;
mod keygen;
mod pack;
mod sign;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use airlock_bundle::{Limits, PrivateKey};
use anyhow::Context as _;

use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Pack(args) => pack::run(*args, &limits),
        Command::Sign(args) => sign::run(args, &limits),
        Command::Verify(args) => verify::run(args, &limits),
        Command::Inspect(args) => inspect::run(args, &limits),
    }
}

/// Environment variable that supplies the passphrase of encrypted keys non-interactively.
pub(crate) const PASSPHRASE_ENV: &str = "AIRLOCK_KEY_PASSPHRASE";

/// The passphrase for an encrypted key: from [`PASSPHRASE_ENV`], else asked on the terminal.
pub(crate) fn passphrase(prompt: &str) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    rpassword::prompt_password(prompt)
        .with_context(|| format!("no passphrase: set {PASSPHRASE_ENV} or run on a terminal"))
}

/// Loads a private key, asking for its passphrase only if it is encrypted.
pub(crate) fn load_private_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key {}", path.display()))?;
    let pass = if PrivateKey::is_encrypted_pem(&text) {
        Some(passphrase(&format!("Passphrase for {}: ", path.display()))?)
    } else {
        None
    };
    Ok(
        PrivateKey::from_pem(&text, pass.as_deref()).map_err(|reason| {
            airlock_bundle::Error::Key {
                path: path.into(),
                reason,
            }
        })?,
    )
}
