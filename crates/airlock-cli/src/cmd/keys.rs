//! `airlock keys create|ls|revoke`.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use airlock_registry::KeyRole;
use serde_json::json;

use crate::cli::KeysCommand;
use crate::output;

pub(crate) fn run(command: KeysCommand, data: &Path) -> anyhow::Result<ExitCode> {
    let mut registry = super::open_registry(data)?;
    match command {
        KeysCommand::Create(args) => {
            let role = KeyRole::parse(&args.role)?;
            let key = registry.create_key(
                &args.name,
                role,
                &args.clearance,
                args.expires.map(Into::into),
            )?;
            if args.json {
                output::json(&json!({"key": key.secret, "info": key.info}))?;
            } else {
                output::out(&format!(
                    "{}\ncreated key {} ({}, role {}, clearance {}{}); this is the only time it is shown\n",
                    key.secret,
                    key.info.id,
                    key.info.name,
                    role.as_str(),
                    key.info.clearance,
                    key.info
                        .expires_at
                        .as_deref()
                        .map(|t| format!(", expires {t}"))
                        .unwrap_or_default(),
                ))?;
            }
        }
        KeysCommand::Ls(args) => {
            let keys = registry.list_keys()?;
            if args.json {
                output::json(&serde_json::to_value(&keys)?)?;
            } else {
                let now = SystemTime::now();
                let mut text = String::new();
                for k in keys {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else if k.is_expired(now) {
                        "expired"
                    } else {
                        "active"
                    };
                    text.push_str(&format!(
                        "{}  {:<7} {:<5} {:<12} {}  expires {}\n",
                        k.id,
                        state,
                        k.role.as_str(),
                        k.clearance,
                        k.name,
                        k.expires_at.as_deref().unwrap_or("never"),
                    ));
                }
                if text.is_empty() {
                    text = "no keys; create one with `airlock keys create --name NAME`\n".into();
                }
                output::out(&text)?;
            }
        }
        KeysCommand::Revoke(args) => {
            let key = registry.revoke_key(&args.key)?;
            if args.json {
                output::json(&serde_json::to_value(&key)?)?;
            } else {
                output::out(&format!("revoked key {} ({})\n", key.id, key.name))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
