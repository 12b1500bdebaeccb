//! Trusted keys: add, remove, list. Each change is an audit entry.

use airlock_audit::{Entry, Outcome};
use airlock_bundle::PublicKey;

use super::{Registry, TrustInfo};
use crate::Result;
use crate::policy::{self, Policy, Role};

impl Registry {
    /// Adds a trusted key to the policy and records it.
    pub fn trust_add(
        &mut self,
        role: Role,
        key: &PublicKey,
        label: Option<&str>,
    ) -> Result<String> {
        let id = policy::add_key(&self.layout.policy(), role, key, label)?;
        self.reload_policy(
            Entry::new(&self.actor, "trust.add", Outcome::Ok)
                .subject(format!("key:{id}"))
                .detail("role", role.table())
                .detail("label", label.unwrap_or_default()),
        )?;
        Ok(id)
    }

    /// Removes a trusted key from every role and records it.
    pub fn trust_remove(&mut self, id: &str) -> Result<(String, Vec<Role>)> {
        let (id, roles) = policy::remove_key(&self.layout.policy(), id)?;
        self.reload_policy(
            Entry::new(&self.actor, "trust.rm", Outcome::Ok)
                .subject(format!("key:{id}"))
                .detail("roles", roles.iter().map(|r| r.table()).collect::<Vec<_>>()),
        )?;
        Ok((id, roles))
    }

    fn reload_policy(&mut self, entry: Entry) -> Result<()> {
        self.policy = Policy::load(&self.layout.policy())?;
        let digest = self.policy.digest.to_hex();
        self.audit
            .append(entry.detail("policy_sha256", digest.clone()))?;
        self.record_policy_digest(&digest)
    }

    /// Trusted keys with their roles.
    pub fn trust_list(&self) -> Vec<TrustInfo> {
        let list = |keys: &[policy::TrustedKey], role: Role| {
            keys.iter()
                .map(move |k| TrustInfo {
                    id: k.key.id().to_hex(),
                    role: role.table(),
                    label: k.label.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut out = list(&self.policy.publishers, Role::Publisher);
        out.extend(list(&self.policy.approvers, Role::Approver));
        out
    }
}
