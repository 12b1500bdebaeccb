//! `airlock serve` and `airlock config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use airlock_server::Server;
use airlock_server::config::{Config, RawConfig};
use anyhow::Context as _;
use serde_json::json;

use crate::cli::{ConfigCommand, ServeArgs, ServeConfigArgs};
use crate::output;

/// Defaults < file < environment < flags (clap folds AIRLOCK_* into the flags).
fn resolve(args: &ServeConfigArgs, data: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    if let Some(listen) = &args.listen {
        raw.listen = Some(listen.clone());
    }
    if let Some(data) = data {
        raw.data_dir = Some(data);
    }
    for model in &args.models {
        raw.set_model(model)?;
    }
    Ok(raw.validate(args.config.as_deref())?)
}

pub(crate) fn serve(
    args: ServeArgs,
    data: Option<PathBuf>,
    no_sandbox: bool,
) -> anyhow::Result<ExitCode> {
    let config = resolve(&args.config, data)?;
    // The listening socket first: once confined, the process can make no new one.
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("listening on {}", config.listen))?;
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    let policy = crate::confinement::server_policy(&config, args.config.config.as_deref())?;
    let data_dir = config.data_dir.clone();
    crate::confinement::apply(&policy, Some(&data_dir), "serve", no_sandbox)?;
    // Warnings and errors (audit failures, llama.cpp) go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let server = Server::start(config, &super::actor())?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).context("serving on the socket")?;
        let addr = listener
            .local_addr()
            .context("reading the listening address")?;
        let app = server.app();
        let mut text = format!("airlock: serving on http://{addr}/v1\n");
        for model in app.models().values() {
            let status = model.status();
            let engine = match status.pid {
                Some(pid) => format!("{} pid {pid}", status.kind.as_str()),
                None => status.kind.as_str().to_owned(),
            };
            text.push_str(&format!(
                "  {} = {}:{} ({}, {engine}, {})\n",
                model.alias,
                model.name,
                model.version,
                model.kind(),
                model.digest
            ));
        }
        for collection in app.collections().values() {
            text.push_str(&format!(
                "  vector store {} (embedding {})\n",
                collection.name, collection.digest
            ));
        }
        output::out(&text)?;
        tokio::spawn(reload_on_hangup(app));
        server.run(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    // Refusals counted in the last interval, on record before the process ends.
    airlock_confine::flush_egress_log();
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP re-admits the configured models (a moved tag deploys its new version); the
/// outcome goes to stdout and the audit log, and a refused reload changes nothing.
async fn reload_on_hangup(app: std::sync::Arc<airlock_server::App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        let reloading = std::sync::Arc::clone(&app);
        let message = match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(models)) => {
                let mut text = String::from("airlock: reloaded\n");
                for m in models {
                    let change = m
                        .previous
                        .map_or_else(|| "unchanged".to_owned(), |p| format!("replaces {p}"));
                    text.push_str(&format!(
                        "  {} = {}:{} ({}, {change})\n",
                        m.alias, m.name, m.version, m.digest
                    ));
                }
                text
            }
            Ok(Err(error)) => {
                format!("airlock: reload refused, still serving the previous models: {error}\n")
            }
            Err(error) => format!("airlock: reload failed: {error}\n"),
        };
        // Stdout, beside the serving banner; a closed stdout does not stop the server.
        let _ = output::out(&message);
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
}

pub(crate) fn config(
    command: ConfigCommand,
    data: Option<PathBuf>,
    no_sandbox: bool,
) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check(args) = command;
    let config = resolve(&args.config, data)?;
    let policy = crate::confinement::server_policy(&config, args.config.config.as_deref())?;
    let data_dir = config.data_dir.clone();
    crate::confinement::apply(&policy, Some(&data_dir), "config check", no_sandbox)?;
    // What this server may reach beyond the machine: the policy's list as narrowed here.
    let egress: Vec<serde_json::Value> = policy
        .egress
        .entries()
        .iter()
        .map(|e| {
            json!({
                "to": e.to.to_string(), "purpose": e.purpose,
                "until": e.until.map(|t| humantime::format_rfc3339(t).to_string()),
            })
        })
        .collect();
    if let Some(oidc) = &config.oidc {
        airlock_server::auth::check_jwks(&oidc.jwks_file)?;
    }
    if args.json {
        let models: serde_json::Map<String, serde_json::Value> = config
            .models
            .iter()
            .map(|(alias, m)| {
                (
                    alias.clone(),
                    json!({
                        "ref": m.reference, "slots": m.slots, "context": m.context,
                        "threads": m.threads, "engine": model_engine(&m.engine),
                    }),
                )
            })
            .collect();
        output::json(&json!({
            "valid": true,
            "listen": config.listen.to_string(),
            "data_dir": config.data_dir,
            "models": models,
            "oidc": config.oidc.as_ref().map(|o| json!({"issuer": o.issuer, "audience": o.audience, "jwks_file": o.jwks_file})),
            "log_bodies": config.log_bodies,
            "egress": egress,
            "limits": {
                "max_body_bytes": config.limits.max_body_bytes,
                "max_tokens": config.limits.max_tokens,
                "per_key_concurrency": config.limits.per_key_concurrency,
                "per_key_per_minute": config.limits.per_key_per_minute,
                "queue": config.limits.queue,
                "max_embedding_inputs": config.limits.max_embedding_inputs,
                "embedding_queue": config.limits.embedding_queue,
                "header_read_timeout_seconds": config.limits.header_read_timeout.as_secs(),
                "max_connections": config.limits.max_connections,
                "max_idle_connections": config.limits.max_idle_connections,
            },
        }))?;
    } else {
        let mut text = format!(
            "configuration is valid: listen {}, {} model(s), OIDC {}\n",
            config.listen,
            config.models.len(),
            if config.oidc.is_some() { "on" } else { "off" }
        );
        for (alias, m) in &config.models {
            let engine = match &m.engine {
                airlock_server::config::EngineChoice::Embedded => m.engine.name().to_owned(),
                airlock_server::config::EngineChoice::Process(p) => {
                    format!("{} {}", m.engine.name(), p.binary.display())
                }
            };
            text.push_str(&format!("  {alias} = {} on {engine}\n", m.reference));
        }
        if egress.is_empty() {
            text.push_str("egress: none (nothing leaves the machine)\n");
        }
        for e in &egress {
            text.push_str(&format!(
                "egress: {} ({}, until {})\n",
                e["to"].as_str().unwrap_or(""),
                e["purpose"].as_str().unwrap_or(""),
                e["until"].as_str().unwrap_or("no end")
            ));
        }
        output::out(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An engine choice as `config check --json` shows it.
fn model_engine(engine: &airlock_server::config::EngineChoice) -> serde_json::Value {
    use airlock_server::config::EngineChoice;
    match engine {
        EngineChoice::Embedded => json!({"kind": engine.name()}),
        EngineChoice::Process(p) => json!({
            "kind": engine.name(),
            "binary": p.binary,
            "startup_timeout_seconds": p.startup_timeout.as_secs(),
            "share_prompt_cache": p.share_prompt_cache,
        }),
    }
}
