//! `airlock trust add|ls|rm`.

use std::path::Path;
use std::process::ExitCode;

use airlock_bundle::PublicKey;
use airlock_registry::Role;

use crate::cli::TrustCommand;
use crate::output;

pub(crate) fn run(command: TrustCommand, data: &Path) -> anyhow::Result<ExitCode> {
    let mut registry = super::open_registry(data)?;
    match command {
        TrustCommand::Add(args) => {
            let key = PublicKey::read(&args.key)?;
            let role = if args.publisher {
                Role::Publisher
            } else {
                Role::Approver
            };
            let id = registry.trust_add(role, &key, args.label.as_deref())?;
            output::out(&format!("trusted {id} as {}\n", role.table()))?;
        }
        TrustCommand::Ls(args) => {
            let keys = registry.trust_list();
            if args.json {
                output::json(&serde_json::to_value(&keys)?)?;
            } else {
                let policy = registry.policy();
                let mut text = format!(
                    "threshold: {} publisher signature(s); rollback protection {}\n",
                    policy.threshold,
                    if policy.rollback_protection {
                        "on"
                    } else {
                        "off"
                    }
                );
                for k in keys {
                    text.push_str(&format!(
                        "{:<10} {}  {}\n",
                        k.role,
                        k.id,
                        k.label.unwrap_or_default()
                    ));
                }
                output::out(&text)?;
            }
        }
        TrustCommand::Rm(args) => {
            let (id, roles) = registry.trust_remove(&args.id)?;
            let roles: Vec<&str> = roles.iter().map(|r| r.table()).collect();
            output::out(&format!("no longer trusted: {id} ({})\n", roles.join(", ")))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
