//! The trust policy, `policy.toml`: who may publish, how many must sign, who may approve,
//! which licences, sizes and formats are allowed, and rollback protection.
//!
//! Keys are edited with `airlock trust add/rm`, which keep the file's comments and record
//! each change in the audit log. Hand edits are allowed; the registry notices a changed
//! policy (by digest) and records that too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use airlock_bundle::{PublicKey, Sha256Digest, TrustPolicy};
use serde::Deserialize;

use crate::{Error, Result};

/// The policy written by `airlock init`.
pub const TEMPLATE: &str = r#"# airlock trust policy.
#
# Every import is checked against this file; anything it refuses is recorded in the audit
# log with its reason and never becomes visible. Edit keys with `airlock trust add/rm`
# (audited); after a hand edit the next airlock command records the new policy digest.
version = 1

[signatures]
# How many distinct trusted publisher keys must sign a bundle. Never 0.
threshold = 1

[licenses]
# SPDX licence ids a bundle may carry (matched without regard to case). A bundle that
# names no licence is refused unless "NOASSERTION" is listed.
allowed = ["Apache-2.0", "MIT", "BSD-3-Clause", "BSD-2-Clause"]

[limits]
# Largest bundle accepted: the sum of its file sizes, in bytes (default 512 GiB).
max_bundle_bytes = 549755813888

[formats]
# Weight formats refused at import: "gguf", "safetensors".
refused = []

[rollback]
# A model's versions only go up. An older version than the highest ever imported needs
# an approver-signed exception naming it, with an expiry (`airlock allow-downgrade`).
protect = true

# Eval records approve and tag can require (docs/evals.md); off unless uncommented.
# [evals]
# required = true          # a record from `airlock eval NAME:VERSION --key APPROVER.key`
# max_age_hours = 168
# [evals.min_score]
# knowledge = 0.7          # least score of the suite named `knowledge`
# [evals.regression]
# max_regressed_items = 0  # against the version tagged now, item by item

# Controlled exits (docs/egress.md): the enclave's own services airlock may connect to, for
# every command that uses this data directory. Everything else stays refused by the kernel.
# An IP address or CIDR range and a port (no host names: airlock resolves none), why, who
# answers for it, and until when; `udp = true` lets connected UDP through as well. Each
# allowed connection and each refusal is in the audit log (`airlock egress log`).
# [egress]
# allow = [
#   { to = "10.0.0.5:636", purpose = "directory", owner = "it-ops", until = "2027-06-30" },
# ]

# Trusted keys. Manage them with `airlock trust add --publisher|--approver KEY.pub` and
# `airlock trust rm KEYID`; each entry's id must be the SHA-256 of its PEM.
"#;

/// A key's role in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Signs bundles on the connected side.
    Publisher,
    /// Approves imported versions on the isolated side (four-eyes).
    Approver,
}

impl Role {
    /// The TOML array-of-tables name.
    pub fn table(self) -> &'static str {
        match self {
            Self::Publisher => "publisher",
            Self::Approver => "approver",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    signatures: RawSignatures,
    licenses: RawLicenses,
    limits: RawLimits,
    #[serde(default)]
    formats: RawFormats,
    rollback: RawRollback,
    #[serde(default)]
    publisher: Vec<RawKey>,
    #[serde(default)]
    approver: Vec<RawKey>,
    #[serde(default)]
    evals: Option<airlock_eval::Requirements>,
    #[serde(default)]
    egress: RawEgress,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    allow: Vec<RawAllow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    to: String,
    purpose: String,
    owner: String,
    /// A date (`2027-06-30`, through that day, UTC) or an RFC 3339 UTC time; quoted or not.
    until: Option<toml::Value>,
    /// Refused when true, with the reason (rather than as an unknown field).
    #[serde(default)]
    udp: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignatures {
    threshold: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLicenses {
    allowed: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_bundle_bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFormats {
    refused: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollback {
    protect: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    #[serde(default)]
    label: Option<String>,
    pem: String,
}

/// A trusted key with its optional label.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// A human label (`alice`, `release-team`).
    pub label: Option<String>,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Distinct publisher signatures required (at least 1).
    pub threshold: usize,
    /// Trusted publisher keys.
    pub publishers: Vec<TrustedKey>,
    /// Trusted approver keys.
    pub approvers: Vec<TrustedKey>,
    /// Allowed SPDX licence ids, lower-cased.
    pub allowed_licenses: BTreeSet<String>,
    /// Largest bundle, in bytes.
    pub max_bundle_bytes: u64,
    /// Refused weight formats, lower-cased.
    pub refused_formats: BTreeSet<String>,
    /// Whether versions may only go up.
    pub rollback_protection: bool,
    /// What eval records approve and tag require (`[evals]`).
    pub evals: airlock_eval::Requirements,
    /// The destinations beyond the machine airlock may connect to (`[egress]`).
    pub egress: Vec<EgressGrant>,
    /// SHA-256 of the file's bytes, recorded in audit entries.
    pub digest: Sha256Digest,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &bytes)
    }

    /// Parses and validates policy text; `path` only names the file in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let invalid = |reason: String| Error::Policy {
            path: path.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
        let raw: RawPolicy = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        if raw.version != 1 {
            return Err(invalid(format!(
                "version {} is not supported (this build reads 1)",
                raw.version
            )));
        }
        if raw.signatures.threshold == 0 {
            return Err(invalid(
                "signatures.threshold is 0; at least one publisher signature is always required"
                    .into(),
            ));
        }
        let keys = |raw: Vec<RawKey>, role: &str| -> Result<Vec<TrustedKey>> {
            let mut seen = BTreeSet::new();
            raw.into_iter()
                .map(|k| {
                    let key = PublicKey::from_pem(&k.pem)
                        .map_err(|e| invalid(format!("{role} {}: {e}", k.id)))?;
                    if key.id().to_hex() != k.id {
                        return Err(invalid(format!(
                            "{role} id {} does not match its key (SHA-256 of the PEM is {})",
                            k.id,
                            key.id().to_hex()
                        )));
                    }
                    if !seen.insert(k.id.clone()) {
                        return Err(invalid(format!("{role} {} is listed twice", k.id)));
                    }
                    Ok(TrustedKey {
                        key,
                        label: k.label,
                    })
                })
                .collect()
        };
        let publishers = keys(raw.publisher, "publisher")?;
        let approvers = keys(raw.approver, "approver")?;
        if !publishers.is_empty() && raw.signatures.threshold > publishers.len() {
            return Err(invalid(format!(
                "signatures.threshold is {} but only {} publisher key(s) are trusted",
                raw.signatures.threshold,
                publishers.len()
            )));
        }
        if let Some(evals) = &raw.evals {
            evals.check_values().map_err(invalid)?;
        }
        for f in &raw.formats.refused {
            if !["gguf", "safetensors"].contains(&f.to_ascii_lowercase().as_str()) {
                return Err(invalid(format!(
                    "formats.refused: unknown format {f:?} (gguf, safetensors)"
                )));
            }
        }
        let egress = raw
            .egress
            .allow
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                EgressGrant::parse(raw).map_err(|e| invalid(format!("egress.allow[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if egress.len() > airlock_confine::egress::MAX_ENTRIES {
            return Err(invalid(format!(
                "egress.allow has {} entries; at most {} are kept",
                egress.len(),
                airlock_confine::egress::MAX_ENTRIES
            )));
        }
        Ok(Self {
            threshold: raw.signatures.threshold,
            publishers,
            approvers,
            allowed_licenses: raw
                .licenses
                .allowed
                .iter()
                .map(|l| l.to_ascii_lowercase())
                .collect(),
            max_bundle_bytes: raw.limits.max_bundle_bytes,
            refused_formats: raw
                .formats
                .refused
                .iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            rollback_protection: raw.rollback.protect,
            evals: raw.evals.unwrap_or_default(),
            egress,
            digest: Sha256Digest::of(bytes),
        })
    }

    /// The publisher keys and threshold, as the bundle verifier takes them.
    pub fn trust(&self) -> Result<TrustPolicy> {
        if self.publishers.is_empty() {
            return Err(Error::refused(
                "no_publishers",
                "policy.toml trusts no publisher key; add one with `airlock trust add --publisher KEY.pub`",
            ));
        }
        TrustPolicy::new(
            self.publishers.iter().map(|k| k.key.clone()),
            self.threshold,
        )
        .map_err(|e| Error::refused("invalid_policy", e.to_string()))
    }

    /// The approver key with this id, if trusted.
    pub fn approver(&self, id: &str) -> Option<&TrustedKey> {
        self.approvers.iter().find(|k| k.key.id().to_hex() == id)
    }

    /// The egress allow-list, as the seal takes it (lapsed entries included: the seal
    /// refuses them at the time of each connect).
    pub fn allow_list(&self) -> airlock_confine::AllowList {
        airlock_confine::AllowList::new(self.egress.iter().map(|g| g.allowed.clone()).collect())
            .unwrap_or_default()
    }

    /// The allow-list narrowed to `wanted` (a server's own `[egress]`), each destination
    /// keeping the purpose and expiry of the entry it lies within. A destination within no
    /// entry is refused: a server may narrow the list, never widen it.
    pub fn allow_list_narrowed(
        &self,
        wanted: &[airlock_confine::Destinations],
    ) -> std::result::Result<airlock_confine::AllowList, String> {
        let narrowed = wanted
            .iter()
            .map(|to| {
                // An entry in force before a lapsed one that also covers it.
                let now = std::time::SystemTime::now();
                let covering = || self.egress.iter().filter(|g| g.allowed.to.covers(to));
                let grant = covering()
                    .find(|g| !g.allowed.expired(now))
                    .or_else(|| covering().next())
                    .ok_or_else(|| {
                        format!(
                            "egress.allow {to} lies within no entry of policy.toml's [egress]: a server's configuration may narrow the list, never widen it"
                        )
                    })?;
                Ok(airlock_confine::Allowed {
                    to: *to,
                    ..grant.allowed.clone()
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        airlock_confine::AllowList::new(narrowed).map_err(|e| e.to_string())
    }

    /// Whether `license` (an SPDX id or `None`) is allowed.
    pub fn license_allowed(&self, license: Option<&str>) -> bool {
        let id = license.unwrap_or("NOASSERTION").to_ascii_lowercase();
        self.allowed_licenses.contains(&id)
    }
}

/// One `[egress]` entry: an exception to the seal, who answers for it and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressGrant {
    /// What the seal lets through.
    pub allowed: airlock_confine::Allowed,
    /// Who answers for it.
    pub owner: String,
    /// `until` as written, for reports.
    pub until_text: Option<String>,
}

/// The longest purpose or owner accepted.
const MAX_EGRESS_TEXT: usize = 200;

impl EgressGrant {
    fn parse(raw: RawAllow) -> std::result::Result<Self, String> {
        let to: airlock_confine::Destinations = raw.to.parse().map_err(|e| format!("{e}"))?;
        if raw.udp {
            return Err(format!(
                "{}: udp is not let through: a datagram's every send may name another address, read from memory the sender can change after any check (TCP only)",
                raw.to
            ));
        }
        for (field, value) in [("purpose", &raw.purpose), ("owner", &raw.owner)] {
            if value.trim().is_empty() {
                return Err(format!(
                    "{} has no {field}: every exception says why and who answers for it",
                    raw.to
                ));
            }
            if value.len() > MAX_EGRESS_TEXT {
                return Err(format!("{field} is over {MAX_EGRESS_TEXT} bytes"));
            }
        }
        let until_text = raw.until.map(|v| match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        });
        let until = until_text.as_deref().map(lapses_at).transpose()?;
        let mut allowed = airlock_confine::Allowed::new(to, &raw.purpose);
        allowed.until = until;
        Ok(Self {
            allowed,
            owner: raw.owner,
            until_text,
        })
    }
}

/// When an entry `until` `text` lapses: a date lapses at the end of that day (UTC), a time
/// (RFC 3339, UTC: ending in `Z`) at that time.
fn lapses_at(text: &str) -> std::result::Result<std::time::SystemTime, String> {
    let bad = || {
        format!(
            "until {text:?} is not a date (2027-06-30) or an RFC 3339 UTC time (2027-06-30T18:00:00Z)"
        )
    };
    let is_date = text.len() == 10 && text.as_bytes().get(4) == Some(&b'-');
    if is_date {
        let midnight = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|_| bad())?;
        Ok(midnight + std::time::Duration::from_secs(24 * 3600))
    } else {
        humantime::parse_rfc3339(text).map_err(|_| bad())
    }
}

/// Adds a key to the policy file, keeping its comments and layout; writes atomically.
/// Returns the key id. Refuses a key already present in that role.
pub fn add_key(path: &Path, role: Role, key: &PublicKey, label: Option<&str>) -> Result<String> {
    let mut doc = read_document(path)?;
    let id = key.id().to_hex();
    let tables = doc
        .entry(role.table())
        .or_insert(toml_edit::Item::ArrayOfTables(
            toml_edit::ArrayOfTables::new(),
        ));
    let Some(tables) = tables.as_array_of_tables_mut() else {
        return Err(invalid(
            path,
            format!("{} is not an array of tables", role.table()),
        ));
    };
    if tables
        .iter()
        .any(|t| t.get("id").and_then(|v| v.as_str()) == Some(id.as_str()))
    {
        return Err(Error::Usage(format!(
            "key {id} is already a trusted {}",
            role.table()
        )));
    }
    let mut table = toml_edit::Table::new();
    table.insert("id", toml_edit::value(&id));
    if let Some(label) = label {
        table.insert("label", toml_edit::value(label));
    }
    table.insert("pem", toml_edit::value(key.pem()));
    tables.push(table);
    write_checked(path, &doc.to_string())?;
    Ok(id)
}

/// Removes a key (by id or unique id prefix of at least 8 hex digits) from every role.
/// Refuses a removal that would leave fewer publishers than the threshold.
pub fn remove_key(path: &Path, id_or_prefix: &str) -> Result<(String, Vec<Role>)> {
    if id_or_prefix.len() < 8 {
        return Err(Error::Usage(
            "give at least 8 hex digits of the key id".into(),
        ));
    }
    let mut doc = read_document(path)?;
    let mut removed = Vec::new();
    let mut full_id = None;
    for role in [Role::Publisher, Role::Approver] {
        let Some(tables) = doc
            .get_mut(role.table())
            .and_then(|t| t.as_array_of_tables_mut())
        else {
            continue;
        };
        let before = tables.len();
        let mut matched = None;
        tables.retain(|t| {
            let id = t.get("id").and_then(|v| v.as_str()).unwrap_or_default();
            let hit = id.starts_with(id_or_prefix);
            if hit {
                matched = Some(id.to_owned());
            }
            !hit
        });
        if before - tables.len() > 1 {
            return Err(Error::Usage(format!(
                "{id_or_prefix} matches several keys; give more digits"
            )));
        }
        if let Some(id) = matched {
            full_id = Some(id);
            removed.push(role);
        }
    }
    let Some(id) = full_id else {
        return Err(Error::NotFound(format!("no trusted key {id_or_prefix}")));
    };
    write_checked(path, &doc.to_string())?;
    Ok((id, removed))
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::Policy {
        path: path.to_owned(),
        reason,
    }
}

fn read_document(path: &Path) -> Result<toml_edit::DocumentMut> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.parse()
        .map_err(|e: toml_edit::TomlError| invalid(path, e.message().to_owned()))
}

/// Validates the new text as a policy before it replaces the old one atomically, so a
/// change that would break the policy is refused and the file is never half-written.
fn write_checked(path: &Path, text: &str) -> Result<()> {
    Policy::parse(path, text.as_bytes())?;
    crate::store::write_atomic(path, text.as_bytes())
}

/// The default policy path inside a data directory.
pub(crate) fn path_in(data: &Path) -> PathBuf {
    data.join("policy.toml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_bundle::PrivateKey;

    fn policy_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, TEMPLATE).unwrap();
        (dir, path)
    }

    #[test]
    fn the_template_is_a_valid_policy_that_trusts_nobody_yet() {
        let (_dir, path) = policy_file();
        let policy = Policy::load(&path).unwrap();
        assert_eq!(policy.threshold, 1);
        assert!(policy.publishers.is_empty());
        assert!(matches!(
            policy.trust(),
            Err(Error::Refused {
                kind: "no_publishers",
                ..
            })
        ));
        assert!(policy.license_allowed(Some("apache-2.0")));
        assert!(!policy.license_allowed(None));
    }

    fn with_egress(allow: &str) -> String {
        TEMPLATE.replace(
            "# Trusted keys.",
            &format!("[egress]\nallow = [\n{allow}\n]\n\n# Trusted keys."),
        )
    }

    #[test]
    fn egress_entries_become_the_seals_allow_list_with_purpose_and_expiry() {
        let (_dir, path) = policy_file();
        std::fs::write(
            &path,
            with_egress(
                r#"{ to = "10.0.0.5:636", purpose = "directory", owner = "it-ops", until = "2027-06-30" },
  { to = "10.1.0.0/16:8333", purpose = "object store", owner = "storage", until = 2027-01-01T12:00:00Z },
  { to = "[fd00::53]:8443", purpose = "registry node", owner = "platform" },"#,
            ),
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        assert_eq!(policy.egress.len(), 3);
        assert_eq!(policy.egress[0].owner, "it-ops");
        // A date lapses at the end of that day.
        let end_of_day = humantime::parse_rfc3339("2027-07-01T00:00:00Z").unwrap();
        assert_eq!(policy.egress[0].allowed.until, Some(end_of_day));
        assert_eq!(
            policy.egress[1].allowed.until,
            Some(humantime::parse_rfc3339("2027-01-01T12:00:00Z").unwrap())
        );
        assert!(policy.egress[2].allowed.until.is_none());
        let list = policy.allow_list();
        let before = humantime::parse_rfc3339("2027-06-30T23:59:59Z").unwrap();
        let permits = |to: &str, at| list.permits(to.parse().unwrap(), at).is_some();
        assert!(permits("10.0.0.5:636", before));
        assert!(!permits("10.0.0.5:636", end_of_day));
        assert!(
            !permits("10.1.7.7:8333", before),
            "lapsed at noon on 1 January 2027"
        );
        assert!(permits("[fd00::53]:8443", before));
    }

    #[test]
    fn a_server_may_narrow_the_allow_list_and_never_widen_it() {
        let (_dir, path) = policy_file();
        std::fs::write(
            &path,
            with_egress(r#"{ to = "10.0.0.0/24:636", purpose = "directory", owner = "it-ops" }"#),
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        let narrowed = policy
            .allow_list_narrowed(&["10.0.0.5:636".parse().unwrap()])
            .unwrap();
        assert_eq!(narrowed.entries().len(), 1);
        assert_eq!(narrowed.entries()[0].purpose, "directory");
        assert_eq!(narrowed.entries()[0].to.to_string(), "10.0.0.5:636");
        for wider in ["10.0.0.0/16:636", "10.0.0.5:389", "10.0.1.5:636"] {
            let error = policy
                .allow_list_narrowed(&[wider.parse().unwrap()])
                .unwrap_err();
            assert!(error.contains("never widen"), "{wider}: {error}");
        }
    }

    #[test]
    fn a_host_name_or_an_unexplained_egress_entry_is_refused_with_the_reason() {
        let (_dir, path) = policy_file();
        for (entry, reason) in [
            (
                r#"{ to = "ldap.corp.example:636", purpose = "directory", owner = "it-ops" }"#,
                "egress.allow[0]: \"ldap.corp.example:636\" is not an IP address or CIDR range: airlock resolves no names",
            ),
            (
                r#"{ to = "10.0.0.5:636", purpose = "", owner = "it-ops" }"#,
                "has no purpose",
            ),
            (
                r#"{ to = "10.0.0.5:636", purpose = "directory", owner = "it-ops", until = "next year" }"#,
                "is not a date",
            ),
            (
                r#"{ to = "10.0.0.5:636", purpose = "directory" }"#,
                "missing field `owner`",
            ),
            (
                r#"{ to = "10.0.0.53:53", purpose = "resolver", owner = "net", udp = true }"#,
                "udp is not let through",
            ),
            (
                r#"{ to = "10.0.0.5:636", purpose = "directory", owner = "it-ops", until = "2027-06-30T18:00:00" }"#,
                "RFC 3339 UTC time",
            ),
        ] {
            std::fs::write(&path, with_egress(entry)).unwrap();
            let error = Policy::load(&path).unwrap_err().to_string();
            assert!(error.contains(reason), "{entry}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn keys_are_added_and_removed_with_comments_kept() {
        let (_dir, path) = policy_file();
        let key = PrivateKey::generate().unwrap();
        let id = add_key(&path, Role::Publisher, key.public(), Some("release")).unwrap();
        assert!(add_key(&path, Role::Publisher, key.public(), None).is_err());
        add_key(&path, Role::Approver, key.public(), None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# How many distinct trusted publisher keys"));
        let policy = Policy::load(&path).unwrap();
        assert_eq!(policy.publishers[0].key.id().to_hex(), id);
        assert_eq!(policy.publishers[0].label.as_deref(), Some("release"));
        assert!(policy.approver(&id).is_some());
        let (removed, roles) = remove_key(&path, &id[..12]).unwrap();
        assert_eq!(removed, id);
        assert_eq!(roles, [Role::Publisher, Role::Approver]);
        assert!(Policy::load(&path).unwrap().publishers.is_empty());
    }

    #[test]
    fn a_zero_threshold_or_a_forged_key_id_is_refused() {
        let (_dir, path) = policy_file();
        std::fs::write(&path, TEMPLATE.replace("threshold = 1", "threshold = 0")).unwrap();
        assert!(
            matches!(Policy::load(&path), Err(Error::Policy { reason, .. }) if reason.contains("threshold is 0"))
        );
        std::fs::write(&path, TEMPLATE).unwrap();
        let key = PrivateKey::generate().unwrap();
        add_key(&path, Role::Publisher, key.public(), None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let forged = text.replace(&key.public().id().to_hex(), &"0".repeat(64));
        std::fs::write(&path, forged).unwrap();
        assert!(
            matches!(Policy::load(&path), Err(Error::Policy { reason, .. }) if reason.contains("does not match"))
        );
    }

    #[test]
    fn eval_requirements_are_off_by_default_and_checked_when_given() {
        let (_dir, path) = policy_file();
        assert!(!Policy::load(&path).unwrap().evals.required);
        let uncommented = TEMPLATE
            .replace("# [evals]", "[evals]")
            .replace("# required = true", "required = true")
            .replace("# [evals.min_score]", "[evals.min_score]")
            .replace("# knowledge = 0.7", "knowledge = 0.7")
            .replace("# [evals.regression]", "[evals.regression]")
            .replace("# max_regressed_items = 0", "max_regressed_items = 0");
        std::fs::write(&path, &uncommented).unwrap();
        let evals = Policy::load(&path).unwrap().evals;
        assert!(evals.required);
        assert_eq!(evals.min_score["knowledge"], 0.7);
        assert_eq!(evals.regression.unwrap().max_regressed_items, Some(0));
        for (bad, reason) in [
            ("knowledge = 0.7", "knowledge = 7"),
            ("max_regressed_items = 0", "max_regresed_items = 0"),
        ] {
            std::fs::write(&path, uncommented.replace(bad, reason)).unwrap();
            assert!(
                matches!(Policy::load(&path), Err(Error::Policy { .. })),
                "{reason} was accepted"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_policy_text_is_an_error_never_a_panic(text in "\\PC{0,400}") {
            let _ = Policy::parse(Path::new("p.toml"), text.as_bytes());
        }
    }

    #[test]
    fn removing_a_publisher_below_the_threshold_is_refused_and_leaves_the_file_alone() {
        let (_dir, path) = policy_file();
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        add_key(&path, Role::Publisher, a.public(), None).unwrap();
        add_key(&path, Role::Publisher, b.public(), None).unwrap();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("threshold = 1", "threshold = 2");
        std::fs::write(&path, &text).unwrap();
        let err = remove_key(&path, &a.public().id().to_hex()).unwrap_err();
        assert!(matches!(err, Error::Policy { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
