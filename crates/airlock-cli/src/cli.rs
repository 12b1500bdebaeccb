//! Command-line structure (clap). Only argument definitions live here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Carry open-weight LLMs across an air gap as signed, verifiable bundles.
///
/// On the connected side: `keygen`, then `pack` a model into a bundle. Anyone can `verify`
/// it against the publisher's public key, on either side of the gap, with no network.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create an ECDSA P-256 signing key pair (NAME.key, NAME.pub) and print its key id.
    Keygen(KeygenArgs),
    /// Pack a model directory or GGUF file into a signed, reproducible bundle.
    Pack(Box<PackArgs>),
    /// Add a co-signature to a bundle (its digest does not change).
    Sign(SignArgs),
    /// Verify a bundle: signatures, exact file set, every chunk hash.
    Verify(VerifyArgs),
    /// Show a bundle's name, version, digest, signers, model facts and files.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Directory to write the key pair into (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Base name of the key files.
    #[arg(long, default_value = "airlock")]
    pub(crate) name: String,
    /// Encrypt the private key with a passphrase (from AIRLOCK_KEY_PASSPHRASE, else prompted).
    #[arg(long)]
    pub(crate) encrypt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PackArgs {
    /// A Hugging Face-style model directory (safetensors, tokenizer.json, config.json, ...)
    /// or a single .gguf file.
    #[arg(value_name = "SRC")]
    pub(crate) src: PathBuf,
    /// Bundle name (lower-case letters, digits, '.', '_', '-').
    #[arg(long)]
    pub(crate) name: String,
    /// Semantic version, X.Y.Z.
    #[arg(long = "version", id = "bundle_version", value_name = "X.Y.Z")]
    pub(crate) version: String,
    /// Signing key (PKCS#8 PEM). The first is the publisher; repeat to co-sign.
    #[arg(long = "key", value_name = "KEY", required = true)]
    pub(crate) keys: Vec<PathBuf>,
    /// SPDX licence expression, e.g. Apache-2.0.
    #[arg(long)]
    pub(crate) license: Option<String>,
    /// Model kind; guessed from the files when omitted.
    #[arg(long, value_parser = ["llm", "embedding"])]
    pub(crate) kind: Option<String>,
    /// Where the model came from (URL, package, path).
    #[arg(long)]
    pub(crate) source: Option<String>,
    /// Source revision (commit or tag).
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// Model card (Markdown); becomes MODEL_CARD.md. Default: SRC/README.md.
    #[arg(long, value_name = "MODEL_CARD.md")]
    pub(crate) card: Option<PathBuf>,
    /// Directory of eval suites (*.jsonl: reference prompts, regression cases), carried and signed.
    #[arg(long, value_name = "DIR")]
    pub(crate) evals: Option<PathBuf>,
    /// Digest of the bundle this one derives from (e.g. before quantisation).
    #[arg(long, value_name = "sha256:HEX")]
    pub(crate) parent: Option<String>,
    /// Output bundle file. Default: NAME_VERSION.airlock.
    #[arg(short, long, value_name = "OUT.airlock")]
    pub(crate) out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// Bundle file or unpacked bundle directory.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// The co-signer's private key.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Bundle file (.airlock) or unpacked bundle directory.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// Trusted public key (SPKI PEM); repeat for several.
    #[arg(long = "trust", value_name = "PUB.pem", required = true, num_args = 1..)]
    pub(crate) trust: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed.
    #[arg(long, default_value_t = 1)]
    pub(crate) threshold: usize,
    /// Print the result as JSON (also on failure).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// Bundle file (.airlock) or unpacked bundle directory.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
