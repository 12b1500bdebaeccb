//! One module per subcommand; each only wires library calls to output.

mod ask;
mod audit;
mod diode;
mod doctor;
mod egress;
mod eval;
mod inspect;
mod keygen;
mod keys;
mod pack;
mod rag;
mod registry;
mod run;
mod serve;
mod sign;
mod trust;
mod verify;
mod volumes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_bundle::{Limits, PrivateKey};
use anyhow::Context as _;

use crate::cli::{Cli, Command, EgressCommand};

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    let data = cli.data;
    let no_sandbox = cli.dangerous_no_sandbox;
    let mut confinement = None;
    if let Some(policy) = crate::confinement::policy_for(&cli.command, &data) {
        let data_dir = data.clone().or_else(airlock_registry::default_data_dir);
        confinement =
            crate::confinement::apply(&policy, data_dir.as_deref(), command_name(), no_sandbox)?;
    }
    match cli.command {
        Command::Doctor(args) => doctor::run(&args, &data_dir(data)?, confinement.as_ref()),
        Command::Keygen(args) => keygen::run(args),
        Command::Pack(args) => pack::run(*args, &limits),
        Command::Sign(args) => sign::run(args, &limits),
        Command::Verify(args) => verify::run(args, &limits),
        Command::Inspect(args) => inspect::run(args, &limits),
        Command::Split(args) => volumes::split(args, &limits),
        Command::Join(args) => volumes::join(args),
        Command::Diode(cmd) => diode::run(cmd, &limits, no_sandbox),
        Command::Trust(cmd) => trust::run(cmd, &data_dir(data)?),
        Command::Audit(cmd) => audit::run(cmd, &data_dir(data)?),
        Command::Egress(EgressCommand::Log(args)) => egress::log(&args, &data_dir(data)?),
        Command::Run(args) => run::chat(*args, &data_dir(data)?),
        Command::Eval(args) => eval::eval(*args, data, &limits),
        Command::Quantize(args) => eval::quantize(*args, &limits),
        Command::Embed(args) => run::embed(args, &data_dir(data)?),
        Command::Serve(args) => serve::serve(args, data, no_sandbox),
        Command::Config(cmd) => serve::config(cmd, data, no_sandbox),
        Command::Keys(cmd) => keys::run(cmd, &data_dir(data)?),
        Command::Collection(cmd) => rag::collection(cmd, &data_dir(data)?),
        Command::Ingest(args) => rag::ingest(args, &data_dir(data)?),
        Command::Search(args) => rag::search(args, &data_dir(data)?),
        Command::Ask(args) => ask::ask(args, &data_dir(data)?),
        Command::ParseWorker => {
            // It inherited its parent's seal and fence; it parses hostile documents, so it
            // also gives up writing anything.
            if !no_sandbox {
                airlock_confine::forbid_writes()
                    .map_err(|e| anyhow::anyhow!("cannot confine the parse worker: {e}"))?;
            }
            airlock_rag::parse::worker::serve()?;
            Ok(ExitCode::SUCCESS)
        }
        other => registry::run(other, &data_dir(data)?),
    }
}

/// The subcommand as typed (`airlock import ...` → `import`), for the audit log.
fn command_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut args = std::env::args().skip(1);
        let mut words = Vec::new();
        while let Some(arg) = args.next() {
            if arg == "--data" {
                args.next();
            } else if !arg.starts_with('-') {
                words.push(arg);
            }
        }
        let mut words = words.iter();
        let first = words.next().cloned().unwrap_or_default();
        match first.as_str() {
            "diode" | "trust" | "audit" | "keys" | "collection" | "config" => {
                format!("{first} {}", words.next().map_or("", String::as_str))
            }
            _ => first,
        }
    })
}

/// The data directory: `--data`, else `AIRLOCK_DATA` (clap reads both), else the default.
fn data_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given
        .or_else(airlock_registry::default_data_dir)
        .context("no data directory: pass --data DIR or set AIRLOCK_DATA")
}

/// Who is acting, as recorded in audit entries: the login name, else the numeric uid.
pub(crate) fn actor() -> String {
    if let Ok(name) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"))
        && !name.is_empty()
    {
        return format!("user:{name}");
    }
    use std::os::unix::fs::MetadataExt as _;
    // The owner of our own /proc entry is our real uid, without an unsafe getuid() call.
    std::fs::metadata("/proc/self")
        .map_or_else(|_| "user:unknown".into(), |m| format!("uid:{}", m.uid()))
}

/// Opens the registry in `data` as the current user.
pub(crate) fn open_registry(data: &Path) -> anyhow::Result<airlock_registry::Registry> {
    Ok(airlock_registry::Registry::open(data, &actor())?)
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
