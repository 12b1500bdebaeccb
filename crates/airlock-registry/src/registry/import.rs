//! `import`: verify against the policy, copy once while hashing, commit as quarantined.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use airlock_audit::{Entry, Outcome};
use airlock_bundle::{Bundle, Progress, Sha256Digest};
use rusqlite::{OptionalExtension as _, params};

use super::{ImportReport, Registry, VersionRow, highest_in, history_digest, now};
use crate::records::{self, DowngradeException, EXCEPTION_TYPE};
use crate::reference;
use crate::replay::LogState;
use airlock_bundle::manifest::SIGNATURE_FILE;

use crate::store::{self, DirLock, Staging, fault_point};
use crate::{Error, Result, copy};

impl Registry {
    /// Imports a bundle (tar or directory): verify signatures against the policy before
    /// reading any payload, check policy rules, then copy every file once into staging while
    /// checking its signed hashes, move the blobs into the store, and make the version
    /// visible as `quarantined` in one transaction.
    pub fn import(&mut self, path: &Path, progress: &dyn Progress) -> Result<ImportReport> {
        let _lock = DirLock::shared(&self.layout)?;
        fault_point("import.locked");
        store::abandoned_staging(&self.layout, true)?;
        let bundle = Bundle::open(path, &self.limits).map_err(|e| self.refuse_import(None, e))?;
        let signature = bundle
            .signature(&self.limits)
            .map_err(|e| self.refuse_import(None, e))?;
        // The digest of what the signature covers, trusted or not, names the subject of
        // any refusal.
        let claimed = signature
            .payload()
            .ok()
            .map(|p| format!("sha256:{}", Sha256Digest::of(&p)));
        let subject = claimed.as_deref();
        let trust = self
            .policy
            .trust()
            .map_err(|e| self.refuse("import", subject, e))?;
        let (manifest, signers) = signature
            .verify(&trust, &self.limits)
            .map_err(|e| self.refuse_import(subject, e))?;
        fault_point("import.signature_verified");
        let digest = format!("sha256:{}", manifest.digest);
        let subject = Some(digest.as_str());
        let facts = self
            .check_policy(&manifest, &bundle)
            .map_err(|e| self.refuse("import", subject, e))?;
        let version = facts.version.to_string();
        let rollback_allowed = !self.policy.rollback_protection
            || self.valid_exception(&facts.name, &version)?.is_some();
        // The history the audit log records counts as much as the database's: rows deleted
        // by hand neither lower the rollback floor nor free a version number.
        let logged = self.log_state()?;
        // Checked now to refuse before copying, and again under the write lock below.
        let seen = history_rule(
            &self.conn,
            &logged,
            &facts.name,
            &facts.version,
            &manifest.digest,
            rollback_allowed,
        )
        .map_err(|e| self.refuse("import", subject, e))?;
        if seen && let Some(existing) = self.find_version(&facts.name, &version)? {
            return self.already_present(existing, &manifest, &signers);
        }

        let staging = Staging::create(&self.layout)?;
        fault_point("import.staging_created");
        progress.begin("importing", facts.bytes);
        let mut staged = Vec::with_capacity(manifest.files.len() + 1);
        let copied = (|| {
            for (n, (file, expected)) in manifest.files.iter().enumerate() {
                let dest = staging.path(n);
                let (source, offset, size) = bundle.file_range(file).ok_or_else(|| {
                    Error::refused("missing_file", format!("{file} is not in the bundle"))
                })?;
                copy::copy_verified(
                    source,
                    offset,
                    size,
                    file.as_str(),
                    expected,
                    &dest,
                    &|e| bundle.explain_mismatch(e),
                    progress,
                )?;
                fault_point("import.file_staged");
                staged.push((dest, expected.sha256, file.to_string(), size));
            }
            Ok(())
        })();
        progress.end();
        copied.map_err(|e| self.refuse("import", subject, e))?;
        // The signature file exactly as signed and shipped, so `export` gives it back as is.
        let sig_bytes = bundle
            .read_small(SIGNATURE_FILE, self.limits.max_signature_bytes)?
            .ok_or(airlock_bundle::Error::Unsigned)?;
        let sig_digest = Sha256Digest::of(&sig_bytes);
        let sig_path = staging.path(manifest.files.len());
        store::write_secret(&sig_path, &sig_bytes)?;
        staged.push((sig_path, sig_digest, String::new(), sig_bytes.len() as u64));

        let mut new_blobs = 0;
        let mut shards = BTreeSet::new();
        for (path, blob, _, _) in &staged {
            if store::install_blob(&self.layout, path, blob)? {
                new_blobs += 1;
            }
            if let Some(shard) = self.layout.blob(blob).parent() {
                shards.insert(shard.to_owned());
            }
            fault_point("import.blob_installed");
        }
        for shard in &shards {
            store::sync_dir(shard)?;
        }
        fault_point("import.blobs_synced");

        let signer_ids: Vec<String> = signers.iter().map(|k| k.to_hex()).collect();
        let (name, policy_digest) = (facts.name.clone(), self.policy.digest.to_hex());
        let actor = self.actor.clone();
        let manifest_digest = manifest.digest;
        let result = self.commit_audited(|tx| {
            // Re-checked under the write lock: another import may have committed meanwhile.
            if history_rule(
                tx,
                &logged,
                &name,
                &facts.version,
                &manifest_digest,
                rollback_allowed,
            )? {
                let state: Option<String> = tx
                    .query_row(
                        "SELECT state FROM versions WHERE name = ?1 AND version = ?2",
                        params![name, version],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(state) = state {
                    // The same bundle, imported by another process while this one copied.
                    let entry = Entry::new(&actor, "import", Outcome::Ok)
                        .subject(format!("sha256:{manifest_digest}"))
                        .detail("name", name.clone())
                        .detail("version", version.clone())
                        .detail("already_present", true);
                    return Ok((Some(state), entry));
                }
            }
            tx.execute(
                "INSERT INTO versions (name, version, digest, state, kind, format, license, size,
                    signers, signature_blob, imported_at, imported_by, policy_digest)
                 VALUES (?1, ?2, ?3, 'quarantined', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    name,
                    version,
                    manifest_digest.to_hex(),
                    facts.kind,
                    facts.format,
                    facts.license,
                    facts.bytes as i64,
                    serde_json::to_string(&signer_ids).unwrap_or_default(),
                    sig_digest.to_hex(),
                    now(),
                    actor,
                    policy_digest,
                ],
            )?;
            let id = tx.last_insert_rowid();
            for (_, blob, file, size) in &staged {
                if file.is_empty() {
                    continue;
                }
                tx.execute(
                    "INSERT INTO files (version_id, path, blob, size) VALUES (?1, ?2, ?3, ?4)",
                    params![id, file, blob.to_hex(), *size as i64],
                )?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO history (name, version, digest) VALUES (?1, ?2, ?3)",
                params![name, version, manifest_digest.to_hex()],
            )?;
            // The rollback high-water mark after this import, so the log states it.
            let highest = highest_in(tx, &name)?
                .into_iter()
                .chain(logged.highest(&name))
                .max()
                .map_or_else(|| version.clone(), |v| v.to_string());
            let entry = Entry::new(&actor, "import", Outcome::Ok)
                .subject(format!("sha256:{manifest_digest}"))
                .detail("name", name.clone())
                .detail("version", version.clone())
                .detail("signers", signer_ids.clone())
                .detail("bytes", facts.bytes)
                .detail("state", "quarantined")
                .detail("highest", highest)
                .detail("policy_sha256", policy_digest.clone());
            Ok((None, entry))
        });
        let existing = match result {
            Ok(existing) => existing,
            Err(e) => return Err(self.refuse("import", subject, e)),
        };
        drop(staging);
        Ok(ImportReport {
            name: facts.name,
            version,
            digest,
            already_present: existing.is_some(),
            state: existing.unwrap_or_else(|| "quarantined".into()),
            files: manifest.files.len(),
            bytes: facts.bytes,
            new_blobs,
            signers: signers.iter().map(|k| k.to_hex()).collect(),
        })
    }

    fn refuse_import(&self, subject: Option<&str>, err: airlock_bundle::Error) -> Error {
        self.refuse("import", subject, err.into())
    }

    fn already_present(
        &self,
        row: VersionRow,
        manifest: &airlock_bundle::Manifest,
        signers: &[airlock_bundle::KeyId],
    ) -> Result<ImportReport> {
        self.audit.append(
            Entry::new(&self.actor, "import", Outcome::Ok)
                .subject(format!("sha256:{}", row.digest))
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("already_present", true),
        )?;
        let bytes = manifest
            .statement
            .predicate
            .airlock
            .as_ref()
            .map_or(0, |a| a.files.iter().map(|f| f.size).sum());
        Ok(ImportReport {
            name: row.name,
            version: row.version,
            digest: format!("sha256:{}", row.digest),
            state: row.state,
            files: manifest.files.len(),
            bytes,
            new_blobs: 0,
            already_present: true,
            signers: signers.iter().map(|k| k.to_hex()).collect(),
        })
    }

    fn check_policy(&self, manifest: &airlock_bundle::Manifest, bundle: &Bundle) -> Result<Facts> {
        let Some(a) = manifest.airlock() else {
            return Err(Error::refused(
                "not_airlock_bundle",
                "the signed manifest has no airlock section (name, version); pack it with `airlock pack`",
            ));
        };
        reference::check_name("model name", &a.name)
            .map_err(|e| Error::refused("invalid_name", e.to_string()))?;
        let version = reference::parse_version(&a.version)
            .map_err(|e| Error::refused("invalid_version", e.to_string()))?;
        if !self.policy.license_allowed(a.license.as_deref()) {
            return Err(Error::refused(
                "license",
                format!(
                    "licence {} is not allowed by policy.toml (allowed: {})",
                    a.license.as_deref().unwrap_or("(none)"),
                    self.policy
                        .allowed_licenses
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let format = a.model.format.to_ascii_lowercase();
        if self.policy.refused_formats.contains(&format) {
            return Err(Error::refused(
                "format",
                format!("weight format {format} is refused by policy.toml"),
            ));
        }
        let bytes: u64 = a.files.iter().map(|f| f.size).sum();
        if bytes > self.policy.max_bundle_bytes {
            return Err(Error::refused(
                "size_limit",
                format!(
                    "bundle holds {bytes} bytes, over the policy limit of {}",
                    self.policy.max_bundle_bytes
                ),
            ));
        }
        // The exact file set, before anything is copied.
        for path in manifest.files.keys() {
            if bundle.file_range(path).is_none() {
                return Err(airlock_bundle::Error::MissingFile {
                    path: path.to_string(),
                }
                .into());
            }
        }
        for (path, _) in bundle.entries() {
            if path.as_str() != airlock_bundle::manifest::SIGNATURE_FILE
                && !manifest.files.contains_key(path)
            {
                return Err(airlock_bundle::Error::ExtraFile {
                    path: path.to_string(),
                }
                .into());
            }
        }
        Ok(Facts {
            name: a.name.clone(),
            version,
            kind: a.kind.clone(),
            format,
            license: a.license.clone(),
            bytes,
        })
    }

    /// An unexpired exception for `name:version` whose signature verifies with an approver
    /// the policy still trusts.
    pub(super) fn valid_exception(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<DowngradeException>> {
        let mut stmt = self
            .conn
            .prepare("SELECT approver, record FROM exceptions WHERE name = ?1 AND version = ?2")?;
        let rows: Vec<(String, String)> = stmt
            .query_map(params![name, version], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let now = SystemTime::now();
        let logged = self.log_state()?;
        for (approver, record) in rows {
            let Some(key) = self.policy.approver(&approver) else {
                continue;
            };
            // Only an exception the audit log recorded being granted.
            let record_sha256 = Sha256Digest::of(record.as_bytes()).to_hex();
            let granted = logged.exceptions.iter().any(|e| {
                e.name == name
                    && e.version == version
                    && e.approver == approver
                    && e.record_sha256.as_ref().is_none_or(|s| *s == record_sha256)
            });
            if !granted {
                continue;
            }
            let Ok(ex) = records::open::<DowngradeException>(&record, EXCEPTION_TYPE, &key.key)
            else {
                continue;
            };
            let unexpired = humantime::parse_rfc3339(&ex.expires).is_ok_and(|t| t > now);
            if unexpired && ex.name == name && ex.version == version {
                return Ok(Some(ex));
            }
        }
        Ok(None)
    }
}

struct Facts {
    name: String,
    version: semver::Version,
    kind: String,
    format: String,
    license: Option<String>,
    bytes: u64,
}

/// Immutability and rollback protection, against the version history: `Ok(true)` if this
/// exact bundle's version was imported before (it may have been removed since), `Ok(false)`
/// for a new version that may go in, and a refusal for a version number already used by
/// other bytes, or an older version than the highest ever imported unless
/// `rollback_allowed`.
fn history_rule(
    conn: &rusqlite::Connection,
    logged: &LogState,
    name: &str,
    version: &semver::Version,
    digest: &Sha256Digest,
    rollback_allowed: bool,
) -> Result<bool> {
    let text = version.to_string();
    let existing = match history_digest(conn, name, &text)? {
        Some(existing) => Some(existing),
        None => logged
            .history
            .get(&(name.to_owned(), text.clone()))
            .cloned(),
    };
    if let Some(existing) = existing {
        if existing != digest.to_hex() {
            return Err(Error::refused(
                "version_conflict",
                format!(
                    "{name}:{text} was imported as sha256:{existing}; a version is never reused for different bytes"
                ),
            ));
        }
        return Ok(true);
    }
    if !rollback_allowed
        && let Some(highest) = highest_in(conn, name)?
            .into_iter()
            .chain(logged.highest(name))
            .max()
        && *version < highest
    {
        return Err(Error::refused(
            "rollback",
            format!(
                "{name}:{text} is older than {highest}, the highest version imported; a downgrade needs an approver's `airlock allow-downgrade {name}:{text}`"
            ),
        ));
    }
    Ok(false)
}
