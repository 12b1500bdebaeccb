//! How an engine process is started: its private runtime directory, its command line and its
//! environment, for each kind.
//!
//! The process sees the approved files through read-only links in a directory only airlock's
//! user can enter (no copy of the weights), listens on a unix socket in the same directory,
//! and gets a fresh random secret at every start. Its environment is emptied and rebuilt with
//! every offline switch set and no proxy, so nothing inherited from airlock's environment
//! (`LLAMA_ARG_*`, `HF_ENDPOINT`, `HTTPS_PROXY`, ...) reaches it.
//!
//! It runs in a box of its own ([`airlock_confine::engine_box`]): namespaces whose every
//! process dies with it, a Landlock domain that reads only the model files and writes only
//! the runtime directory, and a seccomp layer that refuses what an escape needs. The only
//! unix sockets it (or airlock) may connect to are those of engine runtime directories.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use airlock_engine::ModelFiles;
use rand_core::RngCore as _;

use crate::{ProcessKind, ProcessSpec};

/// The variables every engine process gets, whatever its kind: each hub, telemetry and
/// usage-statistics switch its runtimes are known to read, set to offline.
pub const OFFLINE_ENVIRONMENT: [(&str, &str); 8] = [
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("VLLM_NO_USAGE_STATS", "1"),
    ("VLLM_DO_NOT_TRACK", "1"),
    ("DO_NOT_TRACK", "1"),
    ("LANG", "C.UTF-8"),
];

/// Runtime directories are named `airlock-engine-PID-RANDOM`, PID being the airlock process
/// that made them.
const RUNTIME_PREFIX: &str = "airlock-engine-";

/// Removes the runtime directories (links and a dead socket, never data) of airlock processes
/// that no longer run: one killed outright cannot remove its own.
fn remove_orphaned_runtime_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUNTIME_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let owned_by_us = entry.metadata().is_ok_and(|m| {
            m.is_dir()
                && std::os::unix::fs::MetadataExt::uid(&m) == rustix::process::geteuid().as_raw()
        });
        if owned_by_us && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A prepared start: the runtime directory (removed when this is dropped), the socket and
/// the secret, and the command.
pub(crate) struct Launch {
    /// Lets the engine's socket be connected to while the start lasts.
    _sockets: airlock_confine::EngineSockets,
    /// Names the engine's own process id once it has started.
    pub(crate) contained: airlock_confine::Contained,
    /// Holds the socket and the model links; removed on drop.
    _dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) secret: String,
    pub(crate) command: Command,
}

/// Prepares a start of `spec` on `files`.
pub(crate) fn prepare(spec: &ProcessSpec, files: &ModelFiles) -> Result<Launch, String> {
    let runtime_root = spec.runtime_root.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&runtime_root)
        .map_err(|e| format!("cannot create {}: {e}", runtime_root.display()))?;
    remove_orphaned_runtime_dirs(&runtime_root);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{RUNTIME_PREFIX}{}-", std::process::id()))
        .tempdir_in(&runtime_root)
        .map_err(|e| format!("cannot create a runtime directory: {e}"))?;
    let socket = dir.path().join("engine.sock");
    // sun_path holds 107 bytes and a NUL.
    if socket.as_os_str().len() > 107 {
        return Err(format!(
            "the engine's socket path {} is longer than a unix socket's 107 bytes: use a data directory with a shorter path",
            socket.display()
        ));
    }
    let model = link_files(spec.kind, files, &dir.path().join("model"))?;
    let mut secret = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let args = arguments(spec, &model, &socket);
    let mut command = Command::new(&spec.binary);
    let contained = airlock_confine::contain(&mut command, &box_spec(spec, files, dir.path()))
        .map_err(|e| format!("cannot prepare the engine's box: {e}"))?;
    let sockets = airlock_confine::allow_engine_sockets(dir.path())
        .map_err(|e| format!("{}: {e}", dir.path().display()))?;
    command
        .args(args)
        .env_clear()
        .envs(OFFLINE_ENVIRONMENT)
        .env("HOME", dir.path())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env(secret_variable(spec.kind), &secret)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let ProcessKind::Vllm = spec.kind {
        command
            .env("HF_HOME", dir.path().join("hf"))
            .env("VLLM_CACHE_ROOT", dir.path().join("vllm-cache"));
    }
    Ok(Launch {
        _sockets: sockets,
        contained,
        _dir: dir,
        socket,
        secret,
        command,
    })
}

/// What the engine may touch: the model files (the blobs its links point to), its program's
/// directory (and for vLLM, the Python environment above it), its runtime directory.
fn box_spec(spec: &ProcessSpec, files: &ModelFiles, runtime: &Path) -> airlock_confine::BoxSpec {
    let real = std::fs::canonicalize(&spec.binary).unwrap_or_else(|_| spec.binary.clone());
    let mut exec = Vec::new();
    for binary in [&spec.binary, &real] {
        if let Some(dir) = binary.parent() {
            if spec.kind == ProcessKind::Vllm {
                exec.extend(dir.parent().map(Path::to_owned));
            }
            exec.push(dir.to_owned());
        }
    }
    airlock_confine::BoxSpec {
        read: files
            .iter()
            .map(|(_, blob)| std::fs::canonicalize(blob).unwrap_or_else(|_| blob.to_owned()))
            .collect(),
        exec,
        runtime: runtime.to_owned(),
    }
}

/// The variable each kind reads its API key from (never the command line, which every user
/// of the machine can read in `/proc`).
fn secret_variable(kind: ProcessKind) -> &'static str {
    match kind {
        ProcessKind::LlamaServer => "LLAMA_API_KEY",
        ProcessKind::Vllm => "VLLM_API_KEY",
    }
}

/// Links the approved files into `dir` (read-only blobs; the links are all the process gets)
/// and returns what to name as the model: the GGUF file, or the directory.
fn link_files(kind: ProcessKind, files: &ModelFiles, dir: &Path) -> Result<PathBuf, String> {
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::create_dir(dir).map_err(|e| io(dir, e))?;
    let mut gguf = None;
    for (bundle_path, blob) in files.iter() {
        // Bundle paths were validated at import (relative, no `..`); keep them that way.
        let relative = Path::new(bundle_path);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "bundle path {bundle_path:?} is not a plain relative path"
            ));
        }
        let link = dir.join(relative);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::os::unix::fs::symlink(blob, &link).map_err(|e| io(&link, e))?;
        if bundle_path.ends_with(".gguf") {
            gguf = Some(link);
        }
    }
    match kind {
        ProcessKind::LlamaServer => gguf.ok_or_else(|| "the model has no .gguf file".to_owned()),
        ProcessKind::Vllm => Ok(dir.to_owned()),
    }
}

/// The command line, after the binary.
fn arguments(spec: &ProcessSpec, model: &Path, socket: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    match spec.kind {
        ProcessKind::LlamaServer => {
            push(&["--model"]);
            args.push(model.into());
            // A host ending in `.sock` makes llama-server listen on that unix socket.
            args.push("--host".into());
            args.push(socket.into());
            let total_context = (spec.context_per_slot * spec.slots).to_string();
            let slots = spec.slots.to_string();
            let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
            push(&[
                "--ctx-size",
                &total_context,
                "--parallel",
                &slots,
                "--offline",
                "--no-webui",
                "--no-slots",
            ]);
            if let Some(threads) = spec.threads {
                let threads = threads.to_string();
                push(&["--threads", &threads, "--threads-batch", &threads]);
            }
        }
        ProcessKind::Vllm => {
            push(&["serve"]);
            args.push(model.into());
            args.push("--uds".into());
            args.push(socket.into());
            let context = spec.context_per_slot.to_string();
            let slots = spec.slots.to_string();
            let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
            push(&[
                "--served-model-name",
                crate::protocol::SERVED_NAME,
                "--max-model-len",
                &context,
                "--max-num-seqs",
                &slots,
            ]);
        }
    }
    args
}

/// The binary to run: `configured`, else the kind's environment variable
/// (`AIRLOCK_LLAMA_SERVER`, `AIRLOCK_VLLM`), else the kind's name on `PATH`.
pub fn resolve_binary(
    kind: ProcessKind,
    configured: Option<&Path>,
    environment: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, String> {
    let (variable, name) = match kind {
        ProcessKind::LlamaServer => ("AIRLOCK_LLAMA_SERVER", "llama-server"),
        ProcessKind::Vllm => ("AIRLOCK_VLLM", "vllm"),
    };
    let chosen = configured
        .map(Path::to_owned)
        .or_else(|| environment(variable).map(PathBuf::from));
    let found = match chosen {
        Some(path) => path,
        None => environment("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            })
            .ok_or_else(|| {
                format!("{name} not found: set binary in the model's config, or {variable}, or put it on PATH")
            })?,
    };
    if !found.is_file() {
        return Err(format!("{}: no such file", found.display()));
    }
    found
        .canonicalize()
        .map_err(|e| format!("{}: {e}", found.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn spec(kind: ProcessKind) -> ProcessSpec {
        ProcessSpec {
            kind,
            binary: PathBuf::from("/opt/engine/bin/llama-server"),
            slots: 4,
            context_per_slot: 2048,
            threads: Some(2),
            startup_timeout: Duration::from_secs(60),
            share_prompt_cache: false,
            runtime_root: None,
        }
    }

    #[test]
    fn llama_server_gets_a_socket_its_context_and_every_network_feature_off() {
        let args: Vec<String> = arguments(
            &spec(ProcessKind::LlamaServer),
            Path::new("/run/m/model.gguf"),
            Path::new("/run/engine.sock"),
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--host /run/engine.sock"), "{joined}");
        assert!(joined.contains("--ctx-size 8192 --parallel 4"), "{joined}");
        for flag in ["--offline", "--no-webui", "--no-slots"] {
            assert!(args.iter().any(|a| a == flag), "{flag} in {joined}");
        }
        assert!(!joined.contains("http"), "{joined}");
    }

    #[test]
    fn the_environment_is_rebuilt_from_nothing_with_the_secret_out_of_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("blob");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let files = ModelFiles::new("m:1", BTreeMap::from([("m.gguf".to_owned(), gguf.clone())]));
        let launch = prepare(&spec(ProcessKind::LlamaServer), &files).unwrap();
        let envs: BTreeMap<String, Option<String>> = launch
            .command
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(envs["HF_HUB_OFFLINE"].as_deref(), Some("1"));
        assert_eq!(
            envs["LLAMA_API_KEY"].as_deref(),
            Some(launch.secret.as_str())
        );
        assert_eq!(launch.secret.len(), 64);
        assert!(!envs.contains_key("HTTPS_PROXY"));
        let args: Vec<String> = launch
            .command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.iter().any(|a| a.contains(&launch.secret)));
        let link = launch.socket.parent().unwrap().join("model/m.gguf");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            gguf,
            "a link, not a copy"
        );
    }

    #[test]
    fn runtime_dirs_of_dead_processes_are_removed_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let orphan = root.path().join(format!("{RUNTIME_PREFIX}{dead_pid}-abc"));
        let live = root
            .path()
            .join(format!("{RUNTIME_PREFIX}{}-def", std::process::id()));
        let unrelated = root.path().join("airlock-engine-notapid");
        for dir in [&orphan, &live, &unrelated] {
            std::fs::create_dir_all(dir.join("model")).unwrap();
        }
        remove_orphaned_runtime_dirs(root.path());
        assert!(!orphan.exists());
        assert!(live.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn bundle_paths_that_climb_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = ModelFiles::new(
            "m:1",
            BTreeMap::from([("../escape.gguf".to_owned(), dir.path().join("x"))]),
        );
        assert!(link_files(ProcessKind::LlamaServer, &files, &dir.path().join("model")).is_err());
    }

    #[test]
    fn the_binary_comes_from_config_then_environment_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("llama-server");
        std::fs::write(&bin, b"").unwrap();
        let none = |_: &str| None;
        let path = |v: &str| (v == "PATH").then(|| dir.path().as_os_str().to_owned());
        let variable = |v: &str| (v == "AIRLOCK_LLAMA_SERVER").then(|| bin.as_os_str().to_owned());
        let found = bin.canonicalize().unwrap();
        assert_eq!(
            resolve_binary(ProcessKind::LlamaServer, Some(&bin), none),
            Ok(found.clone())
        );
        assert_eq!(
            resolve_binary(ProcessKind::LlamaServer, None, variable),
            Ok(found.clone())
        );
        assert_eq!(
            resolve_binary(ProcessKind::LlamaServer, None, path),
            Ok(found)
        );
        let missing = resolve_binary(ProcessKind::Vllm, None, none).unwrap_err();
        assert!(missing.contains("AIRLOCK_VLLM"), "{missing}");
        assert!(resolve_binary(ProcessKind::LlamaServer, Some(Path::new("/nope")), none).is_err());
    }
}
