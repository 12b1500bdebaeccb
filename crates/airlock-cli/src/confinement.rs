//! What each command may touch once it has confined itself, and where refused attempts go.
//!
//! Every command confines itself before it reads untrusted input: a network seal (nothing
//! leaves the machine; the diode sender and relay alone keep their UDP) and a file fence (the
//! data directory, the paths named on the command line, the system's libraries). `serve` and
//! `diode receive` confine themselves after binding their listening sockets; the parse
//! worker inherits its parent's confinement and gives up writing files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_audit::{Entry, Outcome};
use airlock_confine::{
    AllowList, Attempt, Connection, EgressLog, Network, Paths, Policy, Report, Summary, parent_of,
};
use airlock_server::config::{Config, EngineChoice};
use airlock_upstream::ProcessKind;
use anyhow::Context as _;

use crate::cli::{AuditCommand, CollectionCommand, Command, DiodeCommand, TrustCommand};

/// What a command is confined to, or `None` when it confines itself later (after binding
/// its sockets) or inherits confinement.
pub(crate) fn policy_for(command: &Command, data: &Option<PathBuf>) -> Option<Policy> {
    let sealed = |read: Vec<PathBuf>, write: Vec<PathBuf>| Policy {
        network: Network::Sealed,
        paths: Paths {
            read,
            write,
            ..Paths::default()
        },
        egress: AllowList::default(),
    };
    // An output file is written beside itself and renamed: its directory gets plain file
    // creation, not every right beneath it.
    let creating = |mut policy: Policy, dirs: Vec<PathBuf>| {
        policy.paths.create = dirs;
        policy
    };
    let data = || data.clone().or_else(airlock_registry::default_data_dir);
    let with_data = |mut read: Vec<PathBuf>, mut write: Vec<PathBuf>| {
        write.extend(data());
        // The parse worker is this binary, started again.
        read.extend(std::env::current_exe().ok());
        let mut policy = sealed(read, write);
        policy.egress = data().map_or_else(AllowList::default, |d| registry_allow_list(&d));
        policy.paths.exec.extend(std::env::current_exe().ok());
        policy
    };
    let cwd = || PathBuf::from(".");
    Some(match command {
        Command::Keygen(a) => sealed(vec![], vec![made(&a.out)]),
        Command::Pack(a) => {
            let mut read = vec![a.src.clone()];
            read.extend(a.keys.iter().cloned());
            read.extend(a.card.iter().cloned());
            read.extend(a.evals.iter().cloned());
            let out = a.out.as_deref().map_or_else(cwd, parent_of);
            creating(sealed(read, vec![]), vec![out])
        }
        Command::Sign(a) => creating(
            sealed(vec![a.key.clone()], vec![a.bundle.clone()]),
            vec![parent_of(&a.bundle)],
        ),
        Command::Verify(a) => {
            let mut read = vec![a.bundle.clone()];
            read.extend(a.trust.iter().cloned());
            sealed(read, vec![])
        }
        Command::Inspect(a) => sealed(vec![a.bundle.clone()], vec![]),
        Command::Split(a) => sealed(vec![a.bundle.clone()], vec![made(&a.out)]),
        Command::Join(a) => creating(sealed(vec![a.dir.clone()], vec![]), vec![parent_of(&a.out)]),
        Command::Diode(DiodeCommand::Send(a)) => Policy {
            network: Network::Open,
            paths: Paths {
                read: vec![a.bundle.clone()],
                ..Paths::default()
            },
            egress: AllowList::default(),
        },
        Command::Diode(DiodeCommand::Relay(_)) => Policy {
            network: Network::Open,
            paths: Paths::default(),
            egress: AllowList::default(),
        },
        Command::Diode(DiodeCommand::Receive(_))
        | Command::Serve(_)
        | Command::Config(_)
        | Command::ParseWorker => {
            return None;
        }
        // Init makes the directory beside where it will be, then renames it into place.
        Command::Init(_) => creating(
            with_data(vec![], vec![]),
            data().map(|d| parent_of(&d)).into_iter().collect(),
        ),
        // A bundle is unpacked into a temporary directory to be loaded; a registry version is
        // loaded from the registry's blobs.
        Command::Eval(a) => {
            let mut read: Vec<PathBuf> = a.key.iter().cloned().collect();
            let outputs: Vec<PathBuf> = a.output.iter().map(|o| parent_of(o)).collect();
            let policy = if Path::new(&a.target).exists() {
                read.push(PathBuf::from(&a.target));
                sealed(read, vec![std::env::temp_dir()])
            } else {
                with_data(read, vec![])
            };
            creating(policy, outputs)
        }
        Command::Quantize(a) => {
            let mut read = vec![a.bundle.clone(), a.key.clone()];
            read.extend(a.gate_policy.iter().cloned());
            creating(
                sealed(read, vec![std::env::temp_dir()]),
                vec![parent_of(&a.output)],
            )
        }
        Command::Import(a) => with_data(vec![a.bundle.clone()], vec![]),
        Command::Approve(a) => with_data(vec![a.key.clone()], vec![]),
        Command::AllowDowngrade(a) => with_data(vec![a.key.clone()], vec![]),
        Command::Export(a) => creating(with_data(vec![], vec![]), vec![parent_of(&a.out)]),
        Command::Trust(TrustCommand::Add(a)) => with_data(vec![a.key.clone()], vec![]),
        Command::Audit(AuditCommand::Verify(a)) => {
            let mut read: Vec<PathBuf> = a.witness.iter().cloned().collect();
            // --key is a key string or a file holding one.
            read.extend(a.key.iter().map(PathBuf::from).filter(|p| p.is_file()));
            with_data(read, vec![])
        }
        Command::Ingest(a) => {
            let mut read = a.paths.clone();
            read.extend(a.rules.iter().cloned());
            with_data(read, vec![])
        }
        Command::Ask(a) => with_data(a.config.iter().cloned().collect(), vec![]),
        Command::Collection(
            CollectionCommand::Create(_)
            | CollectionCommand::Ls(_)
            | CollectionCommand::Show(_)
            | CollectionCommand::RmDoc(_)
            | CollectionCommand::Rebuild(_),
        )
        | Command::Doctor(_)
        | Command::Reject(_)
        | Command::Tag(_)
        | Command::Untag(_)
        | Command::Ls(_)
        | Command::Show(_)
        | Command::Rm(_)
        | Command::Gc(_)
        | Command::Fsck(_)
        | Command::Trust(_)
        | Command::Audit(_)
        | Command::Egress(_)
        | Command::Run(_)
        | Command::Embed(_)
        | Command::Keys(_)
        | Command::Search(_) => with_data(vec![], vec![]),
    })
}

/// `dir`, made if missing (the commands that write into it make it anyway): the fence can
/// only keep a directory that exists, and then keeps the command to it alone.
pub(crate) fn made(dir: &Path) -> PathBuf {
    // A failure is the command's to report, with its own context.
    let _ = std::fs::create_dir_all(dir);
    dir.to_owned()
}

/// The egress allow-list of the registry policy in `data`; empty where there is none or it
/// does not parse (the command then fails on it, naming the problem, when it opens the
/// registry).
fn registry_allow_list(data: &Path) -> AllowList {
    airlock_registry::Policy::load(&airlock_registry::Layout::new(data).policy())
        .map(|p| p.allow_list())
        .unwrap_or_default()
}

/// The allow-list a server keeps: the registry policy's, narrowed by its configuration's
/// `[egress]`. A policy that does not parse, or a configuration that would widen the list,
/// is an error.
pub(crate) fn server_allow_list(config: &Config) -> anyhow::Result<AllowList> {
    let path = airlock_registry::Layout::new(&config.data_dir).policy();
    let policy = if path.exists() {
        Some(airlock_registry::Policy::load(&path)?)
    } else {
        None
    };
    match (&config.egress, policy) {
        (None, None) => Ok(AllowList::default()),
        (None, Some(policy)) => Ok(policy.allow_list()),
        (Some(wanted), policy) => {
            let policy = policy.with_context(|| {
                format!(
                    "the configuration's [egress] needs the registry's policy, and {} does not exist",
                    path.display()
                )
            })?;
            policy
                .allow_list_narrowed(wanted)
                .map_err(anyhow::Error::msg)
        }
    }
}

/// What `serve` and `config check` keep: the data directory (the engines' runtime
/// directories are made in its `run/`), the configuration and the files it names (JWKS), the
/// engine binaries' directories (their libraries lie beside them), and the egress
/// allow-list ([`server_allow_list`]).
pub(crate) fn server_policy(config: &Config, file: Option<&Path>) -> anyhow::Result<Policy> {
    let mut paths = Paths {
        read: file.iter().map(|f| f.to_path_buf()).collect(),
        write: vec![config.data_dir.clone()],
        exec: std::env::current_exe().into_iter().collect(),
        ..Paths::default()
    };
    paths
        .read
        .extend(config.oidc.iter().map(|o| o.jwks_file.clone()));
    for model in config.models.values() {
        if let EngineChoice::Process(process) = &model.engine {
            let real =
                std::fs::canonicalize(&process.binary).unwrap_or_else(|_| process.binary.clone());
            for binary in [&process.binary, &real] {
                let dir = parent_of(binary);
                // A Python environment's packages lie beside its bin/ directory.
                if process.kind == ProcessKind::Vllm {
                    paths.exec.push(parent_of(&dir));
                }
                paths.exec.push(dir);
            }
        }
    }
    Ok(Policy {
        network: Network::Sealed,
        paths,
        egress: server_allow_list(config)?,
    })
}

/// Records refused attempts on standard error and, where the command has a registry, in its
/// audit log.
pub(crate) struct AuditedEgress {
    data: Option<PathBuf>,
    command: String,
}

impl AuditedEgress {
    pub(crate) fn new(data: Option<PathBuf>, command: &str) -> Arc<Self> {
        Arc::new(Self {
            data: data.filter(|d| d.join("audit").exists() || d.join("registry.db").exists()),
            command: command.to_owned(),
        })
    }
}

impl AuditedEgress {
    /// Appends an egress entry made by `entry` from the registry's actor; returns whether it
    /// is in the log.
    fn append(&self, entry: impl FnOnce(&str) -> Entry) -> bool {
        let Some(data) = &self.data else {
            return false;
        };
        let appended = crate::cmd::open_registry(data).and_then(|registry| {
            registry
                .audit_log()
                .append(entry(registry.actor()).detail("command", self.command.clone()))?;
            Ok(())
        });
        match appended {
            Ok(()) => true,
            Err(error) => {
                eprintln!("airlock: an egress entry is not in the audit log: {error:#}");
                false
            }
        }
    }
}

impl EgressLog for AuditedEgress {
    fn record(&self, attempt: &Attempt) {
        eprintln!("airlock: {attempt}");
        let _ = self.append(|actor| {
            Entry::new(actor, "egress.refused", Outcome::Refused)
                .detail("pid", attempt.pid)
                .detail("process", attempt.process.clone())
                .detail("syscall", attempt.syscall)
                .detail("destination", attempt.destination.to_string())
                .detail("decision", attempt.decision())
                .detail("count", 1)
        });
    }

    fn allowed(&self, connection: &Connection) -> bool {
        self.append(|actor| {
            Entry::new(actor, "egress.allowed", Outcome::Ok)
                .detail("pid", connection.pid)
                .detail("process", connection.process.clone())
                .detail("syscall", "connect")
                .detail("transport", "tcp")
                .detail("destination", connection.destination.to_string())
                .detail("purpose", connection.purpose.clone())
                .detail("decision", "allowed")
                .detail("count", 1)
        })
    }

    fn summarise(&self, summary: &Summary) {
        let at = |time: std::time::SystemTime| humantime::format_rfc3339_millis(time).to_string();
        eprintln!(
            "airlock: {} more {} to {} by {} {} between {} and {} (counted, not logged one by one)",
            summary.count,
            summary.syscall,
            summary.destination,
            summary.process,
            summary.decision,
            at(summary.first),
            at(summary.last)
        );
        let (action, outcome) = if summary.decision == "allowed" {
            ("egress.allowed", Outcome::Ok)
        } else {
            ("egress.refused", Outcome::Refused)
        };
        let _ = self.append(|actor| {
            Entry::new(actor, action, outcome)
                .detail("process", summary.process.clone())
                .detail("syscall", summary.syscall)
                .detail("destination", summary.destination.clone())
                .detail("decision", summary.decision)
                .detail("count", summary.count)
                .detail("summary", true)
                .detail("first", at(summary.first))
                .detail("last", at(summary.last))
        });
    }
}

/// Confines this process to `policy`, or, with `--dangerous-no-sandbox`, says loudly that it
/// does not and records that in the audit log.
pub(crate) fn apply(
    policy: &Policy,
    data: Option<&Path>,
    command: &str,
    no_sandbox: bool,
) -> anyhow::Result<Option<Report>> {
    if no_sandbox {
        eprintln!(
            "airlock: WARNING: --dangerous-no-sandbox: {command} runs without the kernel's network seal and file fence, and its engine processes without their box"
        );
        airlock_confine::engine_box::dangerous_no_engine_box();
        if let Some(data) = data.filter(|d| d.exists())
            && let Ok(registry) = crate::cmd::open_registry(data)
        {
            registry.audit_log().append(
                Entry::new(registry.actor(), "sandbox.disabled", Outcome::Ok)
                    .detail("command", command.to_owned()),
            )?;
        }
        return Ok(None);
    }
    let log = AuditedEgress::new(data.map(Path::to_owned), command);
    let report = airlock_confine::confine(policy, log).with_context(|| {
        format!("cannot confine {command} (pass --dangerous-no-sandbox to debug without it)")
    })?;
    // SQLite's temporary files would go to /var/tmp, outside the fence: keep them in the
    // registry's own tmp/ instead.
    if let Some(data) = data {
        let tmp = airlock_registry::Layout::new(data).tmp();
        if tmp.is_dir() {
            airlock_registry::keep_sqlite_temporary_files_in(&tmp)
                .context("keeping SQLite's temporary files in the data directory")?;
        }
    }
    Ok(Some(report))
}
