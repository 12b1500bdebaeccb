//! Approve, reject, tag, untag, downgrade exceptions, list, show, remove.

use std::time::SystemTime;

use airlock_audit::{Entry, Outcome};
use airlock_bundle::{PrivateKey, Sha256Digest};
use rusqlite::{OptionalExtension as _, params};

use super::{ApprovalInfo, FileInfo, Registry, VersionDetail, VersionRow, VersionSummary, now};
use crate::records::{self, APPROVAL_TYPE, Approval, DowngradeException, EXCEPTION_TYPE};
use crate::reference::{self, Reference, Selector};
use crate::replay::VersionState;
use crate::{Error, Result};

impl Registry {
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
            self.check_evals(&row, &self.tagged_versions(&row.name)?)?;
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
        check().map_err(|e| {
            self.refuse_as(&format!("key:{approver}"), "approve", Some(&subject), e)
        })?;
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

    /// Checks a version's approval again: approved in the audit log as in the database, and
    /// a stored, signed record (the one the log recorded) by an approver the policy still
    /// trusts, bound to this digest, by a key that did not sign the bundle.
    pub(super) fn check_approved(&self, row: &VersionRow) -> Result<String> {
        if row.state != "approved" {
            return Err(Error::refused(
                "not_approved",
                format!(
                    "{}:{} is {}; only approved versions can be used",
                    row.name, row.version, row.state
                ),
            ));
        }
        let logged = self.log_state()?;
        let label = format!("{}:{}", row.name, row.version);
        let approvals_logged = match logged
            .versions
            .get(&(row.name.clone(), row.version.clone()))
        {
            None => {
                return Err(Error::refused(
                    "not_in_log",
                    format!(
                        "{label} is approved in the database, but the audit log records no import of it; run `airlock fsck`"
                    ),
                ));
            }
            Some(v) if v.digest != row.digest => {
                return Err(Error::refused(
                    "not_in_log",
                    format!(
                        "{label} is sha256:{} in the database, but the audit log records sha256:{}; run `airlock fsck`",
                        row.digest, v.digest
                    ),
                ));
            }
            Some(v) if v.state != VersionState::Approved => {
                return Err(Error::refused(
                    "not_in_log",
                    format!(
                        "{label} is approved in the database, but the audit log says it is {}; run `airlock fsck`",
                        v.state.as_str()
                    ),
                ));
            }
            Some(v) => v.approvals.clone(),
        };
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
            let logged_record = approvals_logged.get(&approver);
            let envelope_sha256 = Sha256Digest::of(envelope.as_bytes()).to_hex();
            if logged_record.is_none_or(|sha| sha.as_ref().is_some_and(|s| *s != envelope_sha256)) {
                continue;
            }
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

    /// Refuses a reference by tag whose tag the audit log does not back: it must point where
    /// the log last pointed it.
    pub(super) fn check_tag_logged(&self, reference: &Reference, row: &VersionRow) -> Result<()> {
        let Selector::Tag(tag) = &reference.selector else {
            return Ok(());
        };
        let logged = self.log_state()?;
        match logged.tags.get(&(row.name.clone(), tag.clone())) {
            Some(version) if *version == row.version => Ok(()),
            Some(version) => Err(Error::refused(
                "not_in_log",
                format!(
                    "tag {}:{tag} points at {} in the database, but the audit log says it points at {version}; run `airlock fsck`",
                    row.name, row.version
                ),
            )),
            None => Err(Error::refused(
                "not_in_log",
                format!(
                    "tag {}:{tag} points at {} in the database, but the audit log records no such tag; run `airlock fsck`",
                    row.name, row.version
                ),
            )),
        }
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
            .and_then(|approver| {
                let now_tagged = Reference::parse(&format!("{}:{tag}", row.name))
                    .ok()
                    .and_then(|r| self.resolve(&r).ok());
                self.check_evals(&row, now_tagged.as_slice())?;
                Ok(approver)
            })
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
                Some(&subject),
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
                .detail("user", actor)
                .detail("record_sha256", Sha256Digest::of(envelope.as_bytes()).to_hex());
            Ok(((), entry))
        })?;
        Ok(out)
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
        let evals = self.eval_records_of(&row)?;
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
            evals,
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
}
