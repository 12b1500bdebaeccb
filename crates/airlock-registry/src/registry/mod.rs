//! The registry: init, open, and the machinery every operation shares (the outbox that
//! ties each change to its audit entry, refusals, lookups). Operations live in the
//! submodules: `import`, `lifecycle` (approve, reject, tag, list, show, remove),
//! `maintenance` (gc, fsck, export) and `trust`.

mod api_keys;
mod evals;
mod import;
mod lifecycle;
mod maintenance;
mod trust;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use airlock_audit::{AuditLog, Entry, NoteSigner, NoteVerifier, Outcome};
use airlock_bundle::signature::SigstoreBundle;
use airlock_bundle::{Limits, Sha256Digest};
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use serde::Serialize;

use crate::policy::{self, Policy};
use crate::reference::{Reference, Selector};
use crate::replay::{Binding, LogState};
use crate::store::{self, Layout, fault_point};
use crate::{Error, Result, db};

/// Name of the audit log's note signing key.
const AUDIT_KEY_NAME: &str = "airlock-audit";
pub(super) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// An open registry.
#[derive(Debug)]
pub struct Registry {
    layout: Layout,
    conn: Connection,
    audit: Arc<AuditLog>,
    policy: Policy,
    limits: Limits,
    actor: String,
    /// The audit log's state, replayed when first needed and kept up to date.
    binding: OnceLock<Arc<Binding>>,
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
    /// Eval records, newest first.
    pub evals: Vec<evals::EvalRecordInfo>,
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

/// An approved version's files, re-hashed when it was opened, for an engine to load.
#[derive(Debug, Clone)]
pub struct ApprovedModel {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `sha256:<hex>` of the bundle.
    pub digest: String,
    /// `llm`, `embedding`.
    pub kind: String,
    /// Weight format (`gguf`, `safetensors`).
    pub format: String,
    /// Bundle path → verified blob on disk.
    pub files: BTreeMap<String, PathBuf>,
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
    /// The state replayed from the verified audit log (none if it failed verification), for
    /// checking what lies outside the registry database (collections) against it.
    #[serde(skip)]
    pub log_state: Option<Arc<LogState>>,
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

pub(super) struct VersionRow {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) version: String,
    pub(super) digest: String,
    pub(super) state: String,
    pub(super) signature_blob: String,
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
        // The directory holds keys, the audit log and API key hashes: its owner's alone.
        for dir in [root.to_owned(), root.join("keys")] {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        }
        for dir in [layout.blobs(), layout.tmp()] {
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
        std::fs::set_permissions(
            layout.audit(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| Error::io(layout.audit(), e))?;
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
        let audit = Arc::new(AuditLog::open(
            &layout.audit(),
            &origin,
            Self::load_signer(&layout)?,
        )?);
        let policy = Policy::load(&layout.policy())?;
        let registry = Self {
            layout,
            conn,
            audit,
            policy,
            limits: Limits::default(),
            actor: actor.to_owned(),
            binding: OnceLock::new(),
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

    /// The audit log, shared: a server appends an entry per request through it while the
    /// registry stays open for reloads.
    pub fn audit_log(&self) -> Arc<AuditLog> {
        Arc::clone(&self.audit)
    }

    /// Who this registry records as the actor of its own entries.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The audit log's state, shared with whoever else reads it in this process (the
    /// server's key store, its collections). Replayed from the log on first use.
    pub fn binding(&self) -> Result<Arc<Binding>> {
        if let Some(binding) = self.binding.get() {
            return Ok(Arc::clone(binding));
        }
        let binding = Arc::new(Binding::open(&self.layout)?);
        Ok(Arc::clone(self.binding.get_or_init(|| binding)))
    }

    /// The audit log's state with everything sealed until now.
    pub fn log_state(&self) -> Result<Arc<LogState>> {
        self.binding()?.state()
    }

    /// Every row of the registry database that disagrees with `state` (see
    /// [`replay::compare`](crate::replay::compare)).
    pub fn discrepancies(&self, state: &LogState) -> Result<Vec<crate::Discrepancy>> {
        Ok(crate::replay::compare(
            state,
            &crate::replay::Observed::read(&self.conn)?,
        ))
    }

    /// The API keys, checked against this registry's audit log state (shared).
    pub fn key_store(&self) -> Result<crate::KeyStore> {
        crate::KeyStore::with_binding(self.layout.root(), self.binding()?)
    }

    /// Appends a refusal to the audit log and returns the error to pass on. If the audit
    /// append itself fails, that failure is returned instead: a refusal is never silent.
    pub(super) fn refuse(&self, action: &str, subject: Option<&str>, err: Error) -> Error {
        self.refuse_as(&self.actor, action, subject, err)
    }

    /// [`Self::refuse`] for an action taken with a key (`key:<id>`): the local user who ran
    /// the command is kept in the entry's details.
    pub(super) fn refuse_as(
        &self,
        actor: &str,
        action: &str,
        subject: Option<&str>,
        err: Error,
    ) -> Error {
        let Error::Refused { kind, reason } = &err else {
            return err;
        };
        let mut entry = Entry::new(actor, action, Outcome::Refused)
            .reason(reason.clone())
            .detail("rule", *kind)
            .detail("policy_sha256", self.policy.digest.to_hex());
        if actor != self.actor {
            entry = entry.detail("user", self.actor.clone());
        }
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
    pub(super) fn commit_audited<T>(
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
        self.record_policy_digest(&current)
    }

    /// Remembers the policy digest last recorded in the audit log.
    pub(super) fn record_policy_digest(&self, digest: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('policy_digest', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![digest],
        )?;
        Ok(())
    }

    pub(super) fn find_version(&self, name: &str, version: &str) -> Result<Option<VersionRow>> {
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

    pub(super) fn resolve(&self, reference: &Reference) -> Result<VersionRow> {
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

    pub(super) fn signature_of(&self, row: &VersionRow) -> Result<SigstoreBundle> {
        let path = self.layout.blob(
            &Sha256Digest::from_hex(&row.signature_blob)
                .ok_or_else(|| Error::Usage("corrupt signature digest".into()))?,
        );
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Ok(SigstoreBundle::parse(&bytes, &self.limits)?)
    }

    pub(super) fn tags_of(&self, version_id: i64) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT tag FROM tags WHERE version_id = ?1 ORDER BY tag")?;
        let tags = stmt
            .query_map(params![version_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(tags)
    }
}

pub(super) fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
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
pub(super) fn highest_in(conn: &Connection, name: &str) -> Result<Option<semver::Version>> {
    let mut stmt = conn.prepare("SELECT version FROM history WHERE name = ?1")?;
    let versions: Vec<String> = stmt
        .query_map(params![name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(versions
        .iter()
        .filter_map(|v| semver::Version::parse(v).ok())
        .max())
}

pub(super) fn history_digest(
    conn: &Connection,
    name: &str,
    version: &str,
) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT digest FROM history WHERE name = ?1 AND version = ?2",
            params![name, version],
            |r| r.get(0),
        )
        .optional()?)
}
