//! Garbage collection, consistency checks and export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_audit::{Entry, Outcome};
use airlock_bundle::{Progress, Sha256Digest};
use rusqlite::params;

use super::{ApprovedModel, FsckReport, GcReport, Registry, VersionRow, row_to_version};
use crate::reference::Reference;
use crate::replay::{self, Binding, LogState};
use crate::store::{self, DirLock};
use crate::{Error, Result};

impl Registry {
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
                let actual = hash_blob(path, None, progress)?;
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
        // The log first: its state then backs the approval checks of the versions.
        self.fsck_audit(&mut report)?;
        self.fsck_versions(&mut report)?;
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
            // An approval the log records whose approver the policy no longer trusts is
            // a fact worth knowing; an approval the log does not record is a problem,
            // reported with the other rows the log does not back.
            if row.state == "approved"
                && report.log_state.is_some()
                && let Err(e) = self.check_approved(&row)
                && e.kind() == "approval_invalid"
            {
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

    /// Verifies the audit log as `audit verify` does and, in the same pass, replays the
    /// entries that carry state; then names every row of the database the log does not
    /// back (see [`crate::replay`]). The replayed state is kept for what follows.
    fn fsck_audit(&self, report: &mut FsckReport) -> Result<()> {
        let verifier = Self::audit_verifier(self.layout.root())?;
        let mut state = LogState::default();
        let verified = airlock_audit::verify_and_replay(
            &self.layout.audit(),
            &verifier,
            &replay::carries_state,
            &mut |record| state.apply(&record),
        );
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                report.problems.push(format!("audit log: {e}"));
                return Ok(());
            }
        };
        report.audit_entries = verified.entries;
        for discrepancy in self.discrepancies(&state)? {
            report.problems.push(discrepancy.to_string());
        }
        let state = Arc::new(state);
        // Later checks in this process go on from here instead of reading the log again.
        let _ = self.binding.set(Arc::new(Binding::from_replayed(
            verified.follower,
            Arc::clone(&state),
        )));
        report.log_state = Some(state);
        Ok(())
    }

    /// Writes an approved version's files (and `model.sig`) to a new directory as
    /// read-only files, re-hashing each as it is copied, for an external engine.
    pub fn export(&self, reference: &Reference, out: &Path) -> Result<usize> {
        let row = self.resolve(reference)?;
        let subject = format!("sha256:{}", row.digest);
        self.check_tag_logged(reference, &row)
            .and_then(|()| self.check_approved(&row))
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

    /// An approved version's files for an engine to load, each blob re-hashed against its
    /// recorded digest just now. Refuses (and audits the refusal) a version that is not
    /// approved, whose approval no longer verifies, or whose blobs were altered on disk.
    /// `purpose` says who loads it (e.g. `run`, `serve`) in the audit entry.
    pub fn open_approved(&self, reference: &Reference, purpose: &str) -> Result<ApprovedModel> {
        let row = self.resolve(reference)?;
        let subject = format!("sha256:{}", row.digest);
        let opened = self
            .check_tag_logged(reference, &row)
            .and_then(|()| self.check_approved(&row))
            .and_then(|_| self.approved_files(&row))
            .map_err(|e| self.refuse("load", Some(&subject), e))?;
        self.audit.append(
            Entry::new(&self.actor, "load", Outcome::Ok)
                .subject(subject.clone())
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("purpose", purpose.to_owned()),
        )?;
        Ok(opened)
    }

    pub(super) fn approved_files(&self, row: &VersionRow) -> Result<ApprovedModel> {
        let (kind, format): (String, String) = self.conn.query_row(
            "SELECT kind, format FROM versions WHERE id = ?1",
            params![row.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut stmt = self
            .conn
            .prepare("SELECT path, blob FROM files WHERE version_id = ?1 ORDER BY path")?;
        let rows: Vec<(String, String)> = stmt
            .query_map(params![row.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut files = BTreeMap::new();
        for (path, blob) in rows {
            let digest = Sha256Digest::from_hex(&blob)
                .ok_or_else(|| Error::Usage(format!("corrupt blob name {blob}")))?;
            let file = self.layout.blob(&digest);
            let actual = hash_blob(&file, None, &airlock_bundle::NoProgress)?;
            if actual != digest {
                return Err(Error::refused(
                    "blob_altered",
                    format!(
                        "{path} of {}:{} has been altered on disk (blob sha256:{digest} hashes to sha256:{actual}); run `airlock fsck`",
                        row.name, row.version
                    ),
                ));
            }
            files.insert(path, file);
        }
        Ok(ApprovedModel {
            name: row.name.clone(),
            version: row.version.clone(),
            digest: format!("sha256:{}", row.digest),
            kind,
            format,
            files,
        })
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
}

/// Reads a blob front to back, hashing it and, if `copy_to` is given, writing each block
/// to that new file as it goes (so what is written is exactly what was hashed).
fn hash_blob(
    path: &Path,
    mut copy_to: Option<&mut std::fs::File>,
    progress: &dyn Progress,
) -> Result<Sha256Digest> {
    use sha2::Digest as _;
    use std::io::{Read as _, Write as _};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(out) = copy_to.as_deref_mut() {
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("exported file", e))?;
        }
        progress.advance(n as u64);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// Copies a blob to `dest`, hashing as it goes; refuses if the blob no longer matches its
/// name. The copy is made read-only and synced.
fn copy_checked(blob: &Path, dest: &Path, digest: &Sha256Digest) -> Result<()> {
    let mut out = std::fs::File::create_new(dest).map_err(|e| Error::io(dest, e))?;
    let actual = hash_blob(blob, Some(&mut out), &airlock_bundle::NoProgress)?;
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
