//! The registry: init, open, and every operation on versions, tags and trust.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use airlock_audit::{AuditLog, Entry, NoteSigner, NoteVerifier, Outcome};
use airlock_bundle::signature::SigstoreBundle;
use airlock_bundle::{Bundle, Limits, PrivateKey, Progress, PublicKey, Sha256Digest};
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use serde::Serialize;

use crate::policy::{self, Policy, Role};
use crate::records::{self, APPROVAL_TYPE, Approval, DowngradeException, EXCEPTION_TYPE};
use crate::reference::{self, Reference, Selector};
use crate::store::{self, DirLock, Layout, Staging, fault_point};
use crate::{Error, Result, copy, db};

/// Name of the audit log's note signing key.
const AUDIT_KEY_NAME: &str = "airlock-audit";

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// An open registry.
#[derive(Debug)]
pub struct Registry {
    layout: Layout,
    conn: Connection,
    audit: AuditLog,
    policy: Policy,
    limits: Limits,
    actor: String,
}

/// What `init` created.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The data directory.
    pub data: PathBuf,
    /// The policy file to edit.
    pub policy: PathBuf,
    /// The audit log's verifier key: give it to auditors.
    pub audit_verifier: String,
    /// The audit log's origin line.
    pub audit_origin: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `sha256:<hex>` bundle digest.
    pub digest: String,
    /// State after import (`quarantined`, or the existing state if already present).
    pub state: String,
    /// Files in the bundle.
    pub files: usize,
    /// Payload bytes.
    pub bytes: u64,
    /// Blobs newly added to the store.
    pub new_blobs: usize,
    /// True if this exact bundle was already imported (nothing changed).
    pub already_present: bool,
    /// Trusted keys whose signatures verified.
    pub signers: Vec<String>,
}

/// One version, as `ls` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `quarantined`, `approved` or `rejected`.
    pub state: String,
    /// Tags pointing at it.
    pub tags: Vec<String>,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Payload bytes.
    pub size: u64,
    /// `llm`, `embedding`.
    pub kind: String,
}

/// Everything about one version, as `show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: VersionSummary,
    /// Weight format.
    pub format: String,
    /// SPDX licence.
    pub license: Option<String>,
    /// Publisher key ids that verified at import.
    pub signers: Vec<String>,
    /// When and by whom it was imported.
    pub imported_at: String,
    /// Local identity that imported it.
    pub imported_by: String,
    /// Digest of the policy it was checked against.
    pub policy_digest: String,
    /// Rejection reason.
    pub reason: Option<String>,
    /// Approvals.
    pub approvals: Vec<ApprovalInfo>,
    /// Files with their blob digests.
    pub files: Vec<FileInfo>,
}

/// An approval, as `show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalInfo {
    /// Approver key id.
    pub approver: String,
    /// Its label in the policy, if still trusted.
    pub label: Option<String>,
    /// When.
    pub time: String,
}

/// A file of a version.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// Path in the bundle.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the blob.
    pub sha256: String,
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Unreferenced blobs deleted.
    pub blobs: usize,
    /// Bytes they held.
    pub blob_bytes: u64,
    /// Abandoned import staging directories deleted.
    pub staging: usize,
    /// Bytes they held.
    pub staging_bytes: u64,
}

/// What `fsck` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// Versions checked.
    pub versions: usize,
    /// Blobs checked.
    pub blobs: usize,
    /// Bytes rehashed.
    pub bytes_hashed: u64,
    /// Audit entries verified.
    pub audit_entries: u64,
    /// Integrity problems: each one line. Empty means clean.
    pub problems: Vec<String>,
    /// Things worth knowing that are not damage (reclaimable space, interrupted imports).
    pub notes: Vec<String>,
}

/// A trusted key, as `trust ls` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct TrustInfo {
    /// Key id.
    pub id: String,
    /// `publisher` or `approver`.
    pub role: &'static str,
    /// Label.
    pub label: Option<String>,
}

struct VersionRow {
    id: i64,
    name: String,
    version: String,
    digest: String,
    state: String,
    signature_blob: String,
}

impl Registry {
    /// Creates a data directory: policy template, database, audit log and its signing key.
    /// Refuses a directory that already holds anything.
    ///
    /// Everything is built in a sibling directory that replaces `root` in one rename, so a
    /// failed init leaves nothing behind.
    pub fn init(root: &Path, actor: &str) -> Result<InitReport> {
        if root.exists() {
            let mut entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
            if entries.next().is_some() {
                return Err(Error::DataDir {
                    path: root.to_owned(),
                    reason: "not empty; airlock init needs a new or empty directory".into(),
                });
            }
        }
        let parent = root
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let name = root
            .file_name()
            .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
        let staging = parent.join(format!(".{name}.init-{}", std::process::id()));
        let built = Self::build(&staging, actor).and_then(|(verifier, origin)| {
            // rename(2) replaces a missing or empty directory atomically.
            std::fs::rename(&staging, root).map_err(|e| Error::io(root, e))?;
            store::sync_dir(parent)?;
            Ok((verifier, origin))
        });
        let (audit_verifier, audit_origin) = match built {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        Ok(InitReport {
            data: root.to_owned(),
            policy: Layout::new(root).policy(),
            audit_verifier,
            audit_origin,
        })
    }

    /// Creates a complete data directory at `root`; returns the audit verifier key and origin.
    fn build(root: &Path, actor: &str) -> Result<(String, String)> {
        let layout = Layout::new(root);
        for dir in [
            root.to_owned(),
            root.join("keys"),
            layout.blobs(),
            layout.tmp(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::write(layout.policy(), policy::TEMPLATE)
            .map_err(|e| Error::io(layout.policy(), e))?;
        let mut origin_id = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut origin_id);
        let origin = format!("airlock.local/{}/audit", hex::encode(origin_id));
        let signer = NoteSigner::generate(AUDIT_KEY_NAME)?;
        let verifier = signer.verifier().to_key_string();
        store::write_secret(&layout.audit_key(), signer.to_key_string().as_bytes())?;
        std::fs::write(layout.audit_verifier(), format!("{verifier}\n"))
            .map_err(|e| Error::io(layout.audit_verifier(), e))?;
        let conn = db::open(&layout.db())?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', ?1), ('audit_origin', ?2)",
            params![db::SCHEMA_VERSION, origin],
        )?;
        let policy = Policy::load(&layout.policy())?;
        let audit = AuditLog::create(&layout.audit(), &origin, signer)?;
        audit.append(
            Entry::new(actor, "registry.init", Outcome::Ok)
                .detail("policy_sha256", policy.digest.to_hex())
                .detail("audit_verifier", verifier.clone()),
        )?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('policy_digest', ?1)",
            params![policy.digest.to_hex()],
        )?;
        store::sync_dir(root)?;
        Ok((verifier, origin))
    }

    /// Opens an initialised data directory as `actor` (recorded in every audit entry).
    ///
    /// Audit entries left in the outbox by a crash are written first; a policy changed by
    /// hand since the last command is recorded.
    pub fn open(root: &Path, actor: &str) -> Result<Self> {
        let layout = Layout::new(root);
        if !layout.db().is_file() {
            return Err(Error::DataDir {
                path: root.to_owned(),
                reason: "not an airlock data directory; create one with `airlock init`".into(),
            });
        }
        let conn = db::open(&layout.db())?;
        let schema: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if schema.as_deref() != Some(db::SCHEMA_VERSION) {
            return Err(Error::DataDir {
                path: root.to_owned(),
                reason: format!(
                    "database schema {schema:?} is not supported (this build reads {})",
                    db::SCHEMA_VERSION
                ),
            });
        }
        let origin: String = conn.query_row(
            "SELECT value FROM meta WHERE key = 'audit_origin'",
            [],
            |r| r.get(0),
        )?;
        let audit = AuditLog::open(&layout.audit(), &origin, Self::load_signer(&layout)?)?;
        let policy = Policy::load(&layout.policy())?;
        let registry = Self {
            layout,
            conn,
            audit,
            policy,
            limits: Limits::default(),
            actor: actor.to_owned(),
        };
        registry.flush_outbox()?;
        registry.note_policy_change()?;
        Ok(registry)
    }

    fn load_signer(layout: &Layout) -> Result<NoteSigner> {
        let path = layout.audit_key();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok(NoteSigner::parse(&text)?)
    }

    /// The audit log's origin, stored at init.
    pub fn audit_origin(root: &Path) -> Result<String> {
        let conn = db::open(&Layout::new(root).db())?;
        Ok(conn.query_row(
            "SELECT value FROM meta WHERE key = 'audit_origin'",
            [],
            |r| r.get(0),
        )?)
    }

    /// The verifier key of the audit log in a data directory.
    pub fn audit_verifier(root: &Path) -> Result<NoteVerifier> {
        let path = Layout::new(root).audit_verifier();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok(NoteVerifier::parse(&text)?)
    }

    /// Sets aside a torn or unsealed end of the audit log (see `AuditLog::repair`).
    pub fn repair_audit(root: &Path, actor: &str) -> Result<Option<airlock_audit::RepairReport>> {
        let layout = Layout::new(root);
        let origin = Self::audit_origin(root)?;
        let log = AuditLog::open_for_repair(&layout.audit(), &origin, Self::load_signer(&layout)?)?;
        Ok(log.repair(actor)?)
    }

    /// The data directory layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Appends a refusal to the audit log and returns the error to pass on. If the audit
    /// append itself fails, that failure is returned instead: a refusal is never silent.
    fn refuse(&self, action: &str, subject: Option<&str>, err: Error) -> Error {
        let Error::Refused { kind, reason } = &err else {
            return err;
        };
        let mut entry = Entry::new(&self.actor, action, Outcome::Refused)
            .reason(reason.clone())
            .detail("rule", *kind)
            .detail("policy_sha256", self.policy.digest.to_hex());
        if let Some(s) = subject {
            entry = entry.subject(s);
        }
        match self.audit.append(entry) {
            Ok(_) => err,
            Err(audit) => Error::Audit(audit),
        }
    }

    /// Runs `change` in one immediate transaction together with queueing `entry` in the
    /// outbox, then writes the entry to the audit log. A crash after the commit leaves the
    /// entry queued; the next `open` writes it.
    fn commit_audited<T>(
        &mut self,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(T, Entry)>,
    ) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (value, entry) = change(&tx)?;
        let json = serde_json::to_string(&entry).map_err(|e| Error::Usage(e.to_string()))?;
        tx.execute("INSERT INTO outbox (entry) VALUES (?1)", params![json])?;
        fault_point("commit.before");
        tx.commit()?;
        fault_point("commit.after");
        self.flush_outbox()?;
        fault_point("commit.audited");
        Ok(value)
    }

    /// Writes queued audit entries to the log, oldest first, removing each once durable.
    fn flush_outbox(&self) -> Result<()> {
        let pending: Vec<(i64, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, entry FROM outbox ORDER BY id")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        for (id, json) in pending {
            let entry: Entry = serde_json::from_str(&json)
                .map_err(|e| Error::Usage(format!("outbox entry {id} is malformed: {e}")))?;
            self.audit.append(entry)?;
            self.conn
                .execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
        }
        Ok(())
    }

    fn note_policy_change(&self) -> Result<()> {
        let recorded: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'policy_digest'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let current = self.policy.digest.to_hex();
        if recorded.as_deref() == Some(current.as_str()) {
            return Ok(());
        }
        self.audit.append(
            Entry::new(&self.actor, "policy.changed", Outcome::Ok)
                .subject(format!("sha256:{current}"))
                .detail("previous_sha256", recorded.unwrap_or_default()),
        )?;
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('policy_digest', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![current],
        )?;
        Ok(())
    }

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
        if let Some(existing) = self
            .check_history(&facts.name, &facts.version, &manifest.digest)
            .map_err(|e| self.refuse("import", subject, e))?
        {
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
                    progress,
                )?;
                fault_point("import.file_staged");
                staged.push((dest, expected.sha256, file.to_string(), size));
            }
            Ok(())
        })();
        progress.end();
        copied.map_err(|e| self.refuse("import", subject, e))?;
        let sig_bytes = signature.to_bytes()?;
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
        let rollback_allowed =
            !self.policy.rollback_protection || self.valid_exception(&name, &version)?.is_some();
        let result = self.commit_audited(|tx| {
            // Re-checked under the write lock: another import may have committed meanwhile.
            if let Some(existing) = history_digest(tx, &name, &version)? {
                if existing != manifest_digest.to_hex() {
                    return Err(Error::refused(
                        "version_conflict",
                        format!("{name}:{version} was imported as sha256:{existing}; a version is never reused for different bytes"),
                    ));
                }
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
            } else if !rollback_allowed
                && let Some(highest) = highest_in(tx, &name)?
                && facts.version < highest
            {
                return Err(Error::refused(
                    "rollback",
                    format!("{name}:{version} is older than {highest}, the highest version imported; a downgrade needs an approver's `airlock allow-downgrade {name}:{version}`"),
                ));
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
            let entry = Entry::new(&actor, "import", Outcome::Ok)
                .subject(format!("sha256:{manifest_digest}"))
                .detail("name", name.clone())
                .detail("version", version.clone())
                .detail("signers", signer_ids.clone())
                .detail("bytes", facts.bytes)
                .detail("state", "quarantined")
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

    /// Rollback and immutability: `Ok(Some(row))` if this exact bundle is already here,
    /// `Ok(None)` to go ahead, a refusal otherwise.
    fn check_history(
        &self,
        name: &str,
        version: &semver::Version,
        digest: &Sha256Digest,
    ) -> Result<Option<VersionRow>> {
        let text = version.to_string();
        if let Some(existing) = history_digest(&self.conn, name, &text)? {
            if existing != digest.to_hex() {
                return Err(Error::refused(
                    "version_conflict",
                    format!(
                        "{name}:{text} was imported as sha256:{existing}; a version is never reused for different bytes"
                    ),
                ));
            }
            return match self.find_version(name, &text)? {
                Some(row) => Ok(Some(row)),
                None => Ok(None),
            };
        }
        if !self.policy.rollback_protection {
            return Ok(None);
        }
        let Some(highest) = highest_in(&self.conn, name)? else {
            return Ok(None);
        };
        if *version >= highest {
            return Ok(None);
        }
        if self.valid_exception(name, &text)?.is_some() {
            return Ok(None);
        }
        Err(Error::refused(
            "rollback",
            format!(
                "{name}:{text} is older than {highest}, the highest version imported; a downgrade needs an approver's `airlock allow-downgrade {name}:{text}`"
            ),
        ))
    }

    /// An unexpired exception for `name:version` whose signature verifies with an approver
    /// the policy still trusts.
    fn valid_exception(&self, name: &str, version: &str) -> Result<Option<DowngradeException>> {
        let mut stmt = self
            .conn
            .prepare("SELECT approver, record FROM exceptions WHERE name = ?1 AND version = ?2")?;
        let rows: Vec<(String, String)> = stmt
            .query_map(params![name, version], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let now = SystemTime::now();
        for (approver, record) in rows {
            let Some(key) = self.policy.approver(&approver) else {
                continue;
            };
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

    fn find_version(&self, name: &str, version: &str) -> Result<Option<VersionRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, version, digest, state, signature_blob FROM versions
                 WHERE name = ?1 AND version = ?2",
                params![name, version],
                row_to_version,
            )
            .optional()?)
    }

    fn resolve(&self, reference: &Reference) -> Result<VersionRow> {
        let row = match &reference.selector {
            Selector::Version(v) => self.find_version(&reference.name, &v.to_string())?,
            Selector::Tag(tag) => self
                .conn
                .query_row(
                    "SELECT v.id, v.name, v.version, v.digest, v.state, v.signature_blob
                     FROM tags t JOIN versions v ON v.id = t.version_id
                     WHERE t.name = ?1 AND t.tag = ?2",
                    params![reference.name, tag],
                    row_to_version,
                )
                .optional()?,
            Selector::Digest(d) => self
                .conn
                .query_row(
                    "SELECT id, name, version, digest, state, signature_blob FROM versions
                     WHERE name = ?1 AND digest = ?2",
                    params![reference.name, d.to_hex()],
                    row_to_version,
                )
                .optional()?,
        };
        row.ok_or_else(|| Error::NotFound(format!("{reference} is not in the registry")))
    }

    fn signature_of(&self, row: &VersionRow) -> Result<SigstoreBundle> {
        let path = self.layout.blob(
            &Sha256Digest::from_hex(&row.signature_blob)
                .ok_or_else(|| Error::Usage("corrupt signature digest".into()))?,
        );
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Ok(SigstoreBundle::parse(&bytes, &self.limits)?)
    }

    /// Records an approver's signed approval of a quarantined version (four-eyes: the
    /// approver must be trusted as one and must not have signed the bundle).
    pub fn approve(&mut self, name: &str, version: &str, key: &PrivateKey) -> Result<String> {
        let reference = Reference::parse(&format!("{name}:{version}"))?;
        let row = self.resolve(&reference)?;
        let subject = format!("sha256:{}", row.digest);
        let approver = key.public().id().to_hex();
        let check = || -> Result<()> {
            if self.policy.approver(&approver).is_none() {
                return Err(Error::refused(
                    "unknown_approver",
                    format!("key {approver} is not a trusted approver in policy.toml"),
                ));
            }
            match row.state.as_str() {
                "rejected" => {
                    return Err(Error::refused(
                        "rejected",
                        format!("{reference} was rejected; import a new version instead"),
                    ));
                }
                "approved" => {
                    return Err(Error::refused(
                        "already_approved",
                        format!("{reference} is already approved"),
                    ));
                }
                _ => {}
            }
            if self.signature_of(&row)?.signed_by(key.public()) {
                return Err(Error::refused(
                    "four_eyes",
                    format!(
                        "approver key {approver} signed this bundle; a second person must approve it"
                    ),
                ));
            }
            Ok(())
        };
        check().map_err(|e| self.refuse_as(&format!("key:{approver}"), "approve", &subject, e))?;
        let record = Approval {
            name: row.name.clone(),
            version: row.version.clone(),
            bundle: subject.clone(),
            approver: approver.clone(),
            time: now(),
        };
        let envelope = records::sign(&record, APPROVAL_TYPE, key)?;
        let actor = self.actor.clone();
        self.commit_audited(|tx| {
            tx.execute(
                "INSERT INTO approvals (version_id, approver, record, approved_at) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, approver, envelope, record.time],
            )?;
            tx.execute(
                "UPDATE versions SET state = 'approved' WHERE id = ?1",
                params![row.id],
            )?;
            let entry = Entry::new(format!("key:{approver}"), "approve", Outcome::Ok)
                .subject(subject.clone())
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("user", actor)
                .detail("record_sha256", Sha256Digest::of(envelope.as_bytes()).to_hex());
            Ok(((), entry))
        })?;
        Ok(approver)
    }

    fn refuse_as(&self, actor: &str, action: &str, subject: &str, err: Error) -> Error {
        let Error::Refused { kind, reason } = &err else {
            return err;
        };
        let entry = Entry::new(actor, action, Outcome::Refused)
            .subject(subject)
            .reason(reason.clone())
            .detail("rule", *kind)
            .detail("user", self.actor.clone());
        match self.audit.append(entry) {
            Ok(_) => err,
            Err(audit) => Error::Audit(audit),
        }
    }

    /// Rejects a version that is not tagged, with a reason.
    pub fn reject(&mut self, name: &str, version: &str, reason: &str) -> Result<()> {
        let reference = Reference::parse(&format!("{name}:{version}"))?;
        let row = self.resolve(&reference)?;
        let subject = format!("sha256:{}", row.digest);
        if let Some(tag) = self.tags_of(row.id)?.first() {
            return Err(self.refuse(
                "reject",
                Some(&subject),
                Error::refused(
                    "tagged",
                    format!("{reference} is tagged {tag}; move the tag first"),
                ),
            ));
        }
        let actor = self.actor.clone();
        self.commit_audited(|tx| {
            tx.execute(
                "UPDATE versions SET state = 'rejected', reason = ?2 WHERE id = ?1",
                params![row.id, reason],
            )?;
            let entry = Entry::new(actor, "reject", Outcome::Ok)
                .subject(subject)
                .reason(reason)
                .detail("name", row.name.clone())
                .detail("version", row.version.clone());
            Ok(((), entry))
        })
    }

    /// Checks a version's approval again: a stored, signed record by an approver the policy
    /// still trusts, bound to this digest, by a key that did not sign the bundle.
    fn check_approved(&self, row: &VersionRow) -> Result<String> {
        if row.state != "approved" {
            return Err(Error::refused(
                "not_approved",
                format!(
                    "{}:{} is {}; only approved versions can be used",
                    row.name, row.version, row.state
                ),
            ));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT approver, record FROM approvals WHERE version_id = ?1")?;
        let approvals: Vec<(String, String)> = stmt
            .query_map(params![row.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let signature = self.signature_of(row)?;
        for (approver, envelope) in approvals {
            let Some(key) = self.policy.approver(&approver) else {
                continue;
            };
            let Ok(record) = records::open::<Approval>(&envelope, APPROVAL_TYPE, &key.key) else {
                continue;
            };
            if record.bundle == format!("sha256:{}", row.digest)
                && record.name == row.name
                && record.version == row.version
                && !signature.signed_by(&key.key)
            {
                return Ok(approver);
            }
        }
        Err(Error::refused(
            "approval_invalid",
            format!(
                "{}:{} has no approval that verifies against the approvers policy.toml trusts now",
                row.name, row.version
            ),
        ))
    }

    /// Points `tag` at an approved version (moving it if it exists).
    pub fn tag(&mut self, name: &str, version: &str, tag: &str) -> Result<Option<String>> {
        reference::check_name("tag", tag)?;
        if semver::Version::parse(tag).is_ok() || tag.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(Error::Usage(format!(
                "tag {tag:?} must not start with a digit (it would read as a version)"
            )));
        }
        let reference = Reference::parse(&format!("{name}:{version}"))?;
        let row = self.resolve(&reference)?;
        let subject = format!("sha256:{}", row.digest);
        let approver = self
            .check_approved(&row)
            .map_err(|e| self.refuse("tag", Some(&subject), e))?;
        let previous: Option<String> = self
            .conn
            .query_row(
                "SELECT v.version FROM tags t JOIN versions v ON v.id = t.version_id
                 WHERE t.name = ?1 AND t.tag = ?2",
                params![row.name, tag],
                |r| r.get(0),
            )
            .optional()?;
        let actor = self.actor.clone();
        let prev = previous.clone();
        self.commit_audited(|tx| {
            tx.execute(
                "INSERT INTO tags (name, tag, version_id, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name, tag) DO UPDATE SET version_id = excluded.version_id,
                    updated_at = excluded.updated_at",
                params![row.name, tag, row.id, now()],
            )?;
            let mut entry = Entry::new(actor, "tag", Outcome::Ok)
                .subject(subject)
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("tag", tag)
                .detail("approver", approver);
            if let Some(p) = prev {
                entry = entry.detail("previous_version", p);
            }
            Ok(((), entry))
        })?;
        Ok(previous)
    }

    /// Removes a tag.
    pub fn untag(&mut self, name: &str, tag: &str) -> Result<String> {
        let reference = Reference {
            name: name.to_owned(),
            selector: Selector::Tag(tag.to_owned()),
        };
        let row = self.resolve(&reference)?;
        let actor = self.actor.clone();
        self.commit_audited(|tx| {
            tx.execute(
                "DELETE FROM tags WHERE name = ?1 AND tag = ?2",
                params![row.name, tag],
            )?;
            let entry = Entry::new(actor, "untag", Outcome::Ok)
                .subject(format!("sha256:{}", row.digest))
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("tag", tag);
            Ok(((), entry))
        })?;
        Ok(row.version)
    }

    /// Records an approver-signed permission to import the older `name:version` until
    /// `expires`.
    pub fn allow_downgrade(
        &mut self,
        name: &str,
        version: &str,
        key: &PrivateKey,
        expires: SystemTime,
        reason: &str,
    ) -> Result<DowngradeException> {
        reference::check_name("model name", name)?;
        reference::parse_version(version)?;
        let approver = key.public().id().to_hex();
        let subject = format!("{name}:{version}");
        if self.policy.approver(&approver).is_none() {
            return Err(self.refuse_as(
                &format!("key:{approver}"),
                "allow_downgrade",
                &subject,
                Error::refused(
                    "unknown_approver",
                    format!("key {approver} is not a trusted approver in policy.toml"),
                ),
            ));
        }
        if expires <= SystemTime::now() {
            return Err(Error::Usage("the expiry is in the past".into()));
        }
        if reason.trim().is_empty() {
            return Err(Error::Usage("give a --reason for the downgrade".into()));
        }
        let record = DowngradeException {
            name: name.to_owned(),
            version: version.to_owned(),
            approver: approver.clone(),
            expires: humantime::format_rfc3339_seconds(expires).to_string(),
            reason: reason.to_owned(),
            time: now(),
        };
        let envelope = records::sign(&record, EXCEPTION_TYPE, key)?;
        let actor = self.actor.clone();
        let out = record.clone();
        self.commit_audited(|tx| {
            tx.execute(
                "INSERT INTO exceptions (name, version, approver, expires, reason, record, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![record.name, record.version, approver, record.expires, record.reason, envelope, record.time],
            )?;
            let entry = Entry::new(format!("key:{approver}"), "allow_downgrade", Outcome::Ok)
                .subject(subject)
                .reason(record.reason.clone())
                .detail("expires", record.expires.clone())
                .detail("user", actor);
            Ok(((), entry))
        })?;
        Ok(out)
    }

    fn tags_of(&self, version_id: i64) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT tag FROM tags WHERE version_id = ?1 ORDER BY tag")?;
        let tags = stmt
            .query_map(params![version_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(tags)
    }

    /// Every version, by name then version order.
    pub fn list(&self) -> Result<Vec<VersionSummary>> {
        let mut stmt = self.conn.prepare(
            "SELECT v.id, v.name, v.version, v.state, v.digest, v.size, v.kind,
                    (SELECT group_concat(tag, ',') FROM (SELECT tag FROM tags WHERE version_id = v.id ORDER BY tag))
             FROM versions v",
        )?;
        let mut rows: Vec<VersionSummary> = stmt
            .query_map([], |r| {
                let tags: Option<String> = r.get(7)?;
                Ok(VersionSummary {
                    name: r.get(1)?,
                    version: r.get(2)?,
                    state: r.get(3)?,
                    digest: format!("sha256:{}", r.get::<_, String>(4)?),
                    size: r.get::<_, i64>(5)? as u64,
                    kind: r.get(6)?,
                    tags: tags
                        .map(|t| t.split(',').map(str::to_owned).collect())
                        .unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.sort_by(|a, b| {
            a.name.cmp(&b.name).then_with(|| {
                match (
                    semver::Version::parse(&a.version),
                    semver::Version::parse(&b.version),
                ) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => a.version.cmp(&b.version),
                }
            })
        });
        Ok(rows)
    }

    /// Everything about one version.
    pub fn show(&self, reference: &Reference) -> Result<VersionDetail> {
        let row = self.resolve(reference)?;
        let detail = self.conn.query_row(
            "SELECT kind, format, license, size, signers, imported_at, imported_by, policy_digest, reason
             FROM versions WHERE id = ?1",
            params![row.id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            },
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT approver, approved_at FROM approvals WHERE version_id = ?1 ORDER BY approved_at",
        )?;
        let approvals = stmt
            .query_map(params![row.id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .map(|(approver, time)| ApprovalInfo {
                label: self
                    .policy
                    .approver(&approver)
                    .and_then(|k| k.label.clone()),
                approver,
                time,
            })
            .collect();
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, blob FROM files WHERE version_id = ?1 ORDER BY path")?;
        let files = stmt
            .query_map(params![row.id], |r| {
                Ok(FileInfo {
                    path: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    sha256: format!("sha256:{}", r.get::<_, String>(2)?),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(VersionDetail {
            summary: VersionSummary {
                tags: self.tags_of(row.id)?,
                name: row.name,
                version: row.version,
                state: row.state,
                digest: format!("sha256:{}", row.digest),
                size: detail.3 as u64,
                kind: detail.0,
            },
            format: detail.1,
            license: detail.2,
            signers: serde_json::from_str(&detail.4).unwrap_or_default(),
            imported_at: detail.5,
            imported_by: detail.6,
            policy_digest: detail.7,
            reason: detail.8,
            approvals,
            files,
        })
    }

    /// Removes a version that no tag points at. Its blobs stay until `gc`; its version
    /// number stays used (rollback protection and immutability outlive removal).
    pub fn remove(&mut self, reference: &Reference) -> Result<String> {
        let row = self.resolve(reference)?;
        let subject = format!("sha256:{}", row.digest);
        if let Some(tag) = self.tags_of(row.id)?.first() {
            return Err(self.refuse(
                "rm",
                Some(&subject),
                Error::refused(
                    "tagged",
                    format!(
                        "{}:{} is tagged {tag}; move or remove the tag first",
                        row.name, row.version
                    ),
                ),
            ));
        }
        let actor = self.actor.clone();
        self.commit_audited(|tx| {
            tx.execute("DELETE FROM versions WHERE id = ?1", params![row.id])?;
            let entry = Entry::new(actor, "rm", Outcome::Ok)
                .subject(subject)
                .detail("name", row.name.clone())
                .detail("version", row.version.clone());
            Ok(((), entry))
        })?;
        Ok(format!("{}:{}", row.name, row.version))
    }

    fn referenced_blobs(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        let mut stmt = self.conn.prepare("SELECT blob, size FROM files")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (blob, size) = row?;
            out.insert(blob, size as u64);
        }
        let mut stmt = self.conn.prepare("SELECT signature_blob FROM versions")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            out.entry(row?).or_insert(u64::MAX);
        }
        Ok(out)
    }

    fn stored_blobs(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        let root = self.layout.blobs();
        for shard in std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
            let shard = shard.map_err(|e| Error::io(&root, e))?.path();
            if !shard.is_dir() {
                continue;
            }
            for blob in std::fs::read_dir(&shard).map_err(|e| Error::io(&shard, e))? {
                let blob = blob.map_err(|e| Error::io(&shard, e))?;
                out.push((blob.file_name().to_string_lossy().into_owned(), blob.path()));
            }
        }
        Ok(out)
    }

    /// Deletes blobs no version references and staging left by interrupted imports.
    pub fn gc(&mut self) -> Result<GcReport> {
        let _lock = DirLock::exclusive(&self.layout)?;
        let referenced = self.referenced_blobs()?;
        let mut report = GcReport::default();
        for (name, path) in self.stored_blobs()? {
            if referenced.contains_key(&name) {
                continue;
            }
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            report.blobs += 1;
            report.blob_bytes += size;
        }
        for (_, bytes) in store::abandoned_staging(&self.layout, true)? {
            report.staging += 1;
            report.staging_bytes += bytes;
        }
        self.audit.append(
            Entry::new(&self.actor, "gc", Outcome::Ok)
                .detail("blobs", report.blobs)
                .detail("blob_bytes", report.blob_bytes)
                .detail("staging", report.staging)
                .detail("staging_bytes", report.staging_bytes),
        )?;
        Ok(report)
    }

    /// Checks everything: database integrity, every referenced blob present, read-only,
    /// the right size and (unless `quick`) the right SHA-256; each version's signature
    /// blob matches its digest and file list; approvals and tags are sound; the audit log
    /// verifies and records every version's import.
    pub fn fsck(&self, quick: bool, progress: &dyn Progress) -> Result<FsckReport> {
        let _lock = DirLock::exclusive(&self.layout)?;
        let mut report = FsckReport::default();
        let integrity: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if integrity != "ok" {
            report.problems.push(format!("database: {integrity}"));
        }
        let referenced = self.referenced_blobs()?;
        let stored: BTreeMap<String, PathBuf> = self.stored_blobs()?.into_iter().collect();
        let total: u64 = referenced.values().filter(|s| **s != u64::MAX).sum();
        if !quick {
            progress.begin("checking", total);
        }
        for (blob, size) in &referenced {
            report.blobs += 1;
            let Some(path) = stored.get(blob) else {
                report
                    .problems
                    .push(format!("blob sha256:{blob} is missing"));
                continue;
            };
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if *size != u64::MAX && meta.len() != *size {
                report.problems.push(format!(
                    "blob sha256:{blob} is {} bytes, expected {size}",
                    meta.len()
                ));
                continue;
            }
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o222 != 0 {
                report
                    .problems
                    .push(format!("blob sha256:{blob} is writable"));
            }
            if !quick {
                let actual = hash_file(path, progress)?;
                report.bytes_hashed += meta.len();
                if actual.to_hex() != *blob {
                    report.problems.push(format!(
                        "blob sha256:{blob} has been altered: its content hashes to sha256:{actual}"
                    ));
                }
            }
        }
        if !quick {
            progress.end();
        }
        let unreferenced: Vec<&String> = stored
            .keys()
            .filter(|b| !referenced.contains_key(*b))
            .collect();
        if !unreferenced.is_empty() {
            report.notes.push(format!(
                "{} unreferenced blob(s) (removed versions or interrupted imports); `airlock gc` reclaims them",
                unreferenced.len()
            ));
        }
        let staging = store::abandoned_staging(&self.layout, false)?;
        if !staging.is_empty() {
            report.notes.push(format!(
                "{} interrupted import(s) left {} staged bytes; `airlock gc` removes them",
                staging.len(),
                staging.iter().map(|s| s.1).sum::<u64>()
            ));
        }
        self.fsck_versions(&mut report)?;
        self.fsck_audit(&mut report)?;
        Ok(report)
    }

    fn fsck_versions(&self, report: &mut FsckReport) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, version, digest, state, signature_blob FROM versions")?;
        let rows: Vec<VersionRow> = stmt
            .query_map([], row_to_version)?
            .collect::<rusqlite::Result<_>>()?;
        for row in rows {
            report.versions += 1;
            let label = format!("{}:{}", row.name, row.version);
            let manifest = match self
                .signature_of(&row)
                .and_then(|s| Ok(airlock_bundle::Manifest::parse(s.payload()?, &self.limits)?))
            {
                Ok(m) => m,
                Err(e) => {
                    report
                        .problems
                        .push(format!("{label}: signature blob unreadable: {e}"));
                    continue;
                }
            };
            if manifest.digest.to_hex() != row.digest {
                report.problems.push(format!(
                    "{label}: signature covers sha256:{}, the registry says sha256:{}",
                    manifest.digest, row.digest
                ));
            }
            let mut stmt = self
                .conn
                .prepare("SELECT path, blob FROM files WHERE version_id = ?1")?;
            let files: BTreeMap<String, String> = stmt
                .query_map(params![row.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let signed: BTreeMap<String, String> = manifest
                .files
                .iter()
                .map(|(p, f)| (p.to_string(), f.sha256.to_hex()))
                .collect();
            if files != signed {
                report.problems.push(format!(
                    "{label}: file list differs from the signed manifest"
                ));
            }
            if row.state == "approved" && self.check_approved(&row).is_err() {
                report.notes.push(format!(
                    "{label}: approved, but no approval verifies against the current approvers"
                ));
            }
        }
        let untagged: i64 = self.conn.query_row(
            "SELECT count(*) FROM tags t JOIN versions v ON v.id = t.version_id WHERE v.state != 'approved'",
            [],
            |r| r.get(0),
        )?;
        if untagged > 0 {
            report.problems.push(format!(
                "{untagged} tag(s) point at versions that are not approved"
            ));
        }
        Ok(())
    }

    fn fsck_audit(&self, report: &mut FsckReport) -> Result<()> {
        let verifier = Self::audit_verifier(self.layout.root())?;
        let view = match airlock_audit::LogView::load(&self.layout.audit(), &verifier) {
            Ok(v) => v,
            Err(e) => {
                report.problems.push(format!("audit log: {e}"));
                return Ok(());
            }
        };
        if let Some(head) = view.head()
            && let Err(e) = view.check_checkpoint(&verifier, head)
        {
            report.problems.push(format!("audit log: {e}"));
        }
        report.audit_entries = view.size();
        let mut imported = BTreeSet::new();
        airlock_audit::for_each_record(&self.layout.audit(), |r| {
            if r.action == "import"
                && r.outcome == Outcome::Ok
                && let Some(subject) = r.subject
            {
                imported.insert(subject);
            }
        })?;
        let mut stmt = self
            .conn
            .prepare("SELECT name, version, digest FROM versions")?;
        let rows: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (name, version, digest) in rows {
            if !imported.contains(&format!("sha256:{digest}")) {
                report.problems.push(format!(
                    "{name}:{version} has no import entry in the audit log"
                ));
            }
        }
        Ok(())
    }

    /// Writes an approved version's files (and `model.sig`) to a new directory as
    /// read-only files, re-hashing each as it is copied, for an external engine.
    pub fn export(&self, reference: &Reference, out: &Path) -> Result<usize> {
        let row = self.resolve(reference)?;
        let subject = format!("sha256:{}", row.digest);
        self.check_approved(&row)
            .map_err(|e| self.refuse("export", Some(&subject), e))?;
        if out.exists() {
            return Err(Error::Usage(format!("{} already exists", out.display())));
        }
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let partial = parent.join(format!(
            ".{}.partial-{}",
            out.file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy()),
            std::process::id()
        ));
        let result = self.export_into(&row, &partial);
        if let Err(e) = result {
            let _ = make_writable(&partial);
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
        store::sync_dir(parent)?;
        let files = result?;
        self.audit.append(
            Entry::new(&self.actor, "export", Outcome::Ok)
                .subject(subject)
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("to", out.display().to_string()),
        )?;
        Ok(files)
    }

    fn export_into(&self, row: &VersionRow, dir: &Path) -> Result<usize> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut stmt = self
            .conn
            .prepare("SELECT path, blob FROM files WHERE version_id = ?1 ORDER BY path")?;
        let mut files: Vec<(String, String)> = stmt
            .query_map(params![row.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        files.push((
            airlock_bundle::manifest::SIGNATURE_FILE.to_owned(),
            row.signature_blob.clone(),
        ));
        for (path, blob) in &files {
            // Paths were validated as bundle paths at import; join cannot escape `dir`.
            let dest = dir.join(path);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
            }
            let digest = Sha256Digest::from_hex(blob)
                .ok_or_else(|| Error::Usage(format!("corrupt blob name {blob}")))?;
            copy_checked(&self.layout.blob(&digest), &dest, &digest)?;
        }
        Ok(files.len())
    }

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
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('policy_digest', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![digest],
        )?;
        Ok(())
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

struct Facts {
    name: String,
    version: semver::Version,
    kind: String,
    format: String,
    license: Option<String>,
    bytes: u64,
}

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        digest: r.get(3)?,
        state: r.get(4)?,
        signature_blob: r.get(5)?,
    })
}

/// The highest version of `name` ever imported.
fn highest_in(conn: &Connection, name: &str) -> Result<Option<semver::Version>> {
    let mut stmt = conn.prepare("SELECT version FROM history WHERE name = ?1")?;
    let versions: Vec<String> = stmt
        .query_map(params![name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(versions
        .iter()
        .filter_map(|v| semver::Version::parse(v).ok())
        .max())
}

fn history_digest(conn: &Connection, name: &str, version: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT digest FROM history WHERE name = ?1 AND version = ?2",
            params![name, version],
            |r| r.get(0),
        )
        .optional()?)
}

fn hash_file(path: &Path, progress: &dyn Progress) -> Result<Sha256Digest> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// Copies a blob to `dest`, hashing as it goes; refuses if the blob no longer matches its
/// name. The copy is made read-only and synced.
fn copy_checked(blob: &Path, dest: &Path, digest: &Sha256Digest) -> Result<()> {
    use sha2::Digest as _;
    use std::io::{Read as _, Write as _};
    let mut src = std::fs::File::open(blob).map_err(|e| Error::io(blob, e))?;
    let mut out = std::fs::File::create_new(dest).map_err(|e| Error::io(dest, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(|e| Error::io(blob, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(dest, e))?;
    }
    let actual = Sha256Digest(hasher.finalize().into());
    if actual != *digest {
        return Err(Error::refused(
            "blob_altered",
            format!(
                "blob sha256:{digest} has been altered (hashes to sha256:{actual}); run `airlock fsck`"
            ),
        ));
    }
    out.sync_all().map_err(|e| Error::io(dest, e))?;
    std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .map_err(|e| Error::io(dest, e))
}

fn make_writable(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            make_writable(&path)?;
        } else {
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        }
    }
    Ok(())
}
