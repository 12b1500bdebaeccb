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

    /// Whether `license` (an SPDX id or `None`) is allowed.
    pub fn license_allowed(&self, license: Option<&str>) -> bool {
        let id = license.unwrap_or("NOASSERTION").to_ascii_lowercase();
        self.allowed_licenses.contains(&id)
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
