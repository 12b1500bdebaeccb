//! Eval records on the isolated side: kept per version, checked again whenever a gate reads
//! them, and required by approve and tag when policy.toml's `[evals]` says so.

use std::time::{Duration, SystemTime};

use airlock_audit::{Entry, Outcome};
use airlock_bundle::Sha256Digest;
use airlock_eval::{EVAL_RECORD_TYPE, EvalRecord, Violation};
use rusqlite::params;
use serde::Serialize;

use super::{ApprovedModel, Registry, VersionRow, now};
use crate::records;
use crate::reference::Reference;
use crate::{Error, Result};

/// A stored eval record, as `show` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecordInfo {
    /// Key id that signed it.
    pub signer: String,
    /// When the run finished (signed).
    pub time: String,
    /// Per suite: name, passed, total.
    pub suites: Vec<(String, usize, usize)>,
    /// SHA-256 of the stored envelope.
    pub record_sha256: String,
    /// Whether it still verifies against an approver policy.toml trusts now.
    pub trusted: bool,
}

impl Registry {
    /// A version's files for an eval run, each blob re-hashed now. Any version not rejected
    /// may be evaluated: approval may be what the eval decides.
    pub fn open_for_eval(&self, reference: &Reference) -> Result<ApprovedModel> {
        let row = self.resolve(reference)?;
        let subject = format!("sha256:{}", row.digest);
        let opened = if row.state == "rejected" {
            Err(Error::refused(
                "rejected",
                format!("{}:{} was rejected", row.name, row.version),
            ))
        } else {
            self.approved_files(&row)
        }
        .map_err(|e| self.refuse("load", Some(&subject), e))?;
        self.audit.append(
            Entry::new(&self.actor, "load", Outcome::Ok)
                .subject(subject)
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("purpose", "eval"),
        )?;
        Ok(opened)
    }

    /// Stores a signed eval record of `reference`. The signer must be an approver
    /// policy.toml trusts, and the record must be about this version's exact bytes.
    pub fn add_eval_record(&mut self, reference: &Reference, envelope: &str) -> Result<String> {
        let row = self.resolve(reference)?;
        let subject = format!("sha256:{}", row.digest);
        let signer = records::claimed_signer(envelope).unwrap_or_default();
        let record = self
            .open_record(&row, envelope)
            .map_err(|e| self.refuse_as(&format!("key:{signer}"), "eval", Some(&subject), e))?;
        let envelope_sha256 = Sha256Digest::of(envelope.as_bytes()).to_hex();
        let actor = self.actor.clone();
        let (scores, failed) = (record.scores_summary(), record.failed_summary());
        self.commit_audited(|tx| {
            tx.execute(
                "INSERT INTO eval_records (version_id, signer, record, made_at) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, signer, envelope, now()],
            )?;
            let mut entry = Entry::new(format!("key:{signer}"), "eval", Outcome::Ok)
                .subject(subject.clone())
                .detail("name", row.name.clone())
                .detail("version", row.version.clone())
                .detail("user", actor)
                .detail("scores", scores)
                .detail("record_sha256", envelope_sha256.clone());
            if !failed.is_empty() {
                entry = entry.detail("failed", failed);
            }
            Ok(((), entry))
        })?;
        Ok(envelope_sha256)
    }

    /// Audits an eval run whose record was not signed (and so is not kept): what ran and
    /// its scores, so that no run on this side goes unrecorded.
    pub fn audit_unsigned_eval(&self, reference: &Reference, record: &EvalRecord) -> Result<()> {
        let row = self.resolve(reference)?;
        let record_sha256 = Sha256Digest::of(&record.canonical_bytes()).to_hex();
        let failed = record.failed_summary();
        let mut entry = Entry::new(&self.actor, "eval", Outcome::Ok)
            .subject(format!("sha256:{}", row.digest))
            .detail("name", row.name.clone())
            .detail("version", row.version.clone())
            .detail("signed", "false")
            .detail("scores", record.scores_summary())
            .detail("record_sha256", record_sha256);
        if !failed.is_empty() {
            entry = entry.detail("failed", failed);
        }
        self.audit.append(entry)?;
        Ok(())
    }

    /// Opens `envelope` as a record of `row`: signed by a trusted approver, about its digest.
    fn open_record(&self, row: &VersionRow, envelope: &str) -> Result<EvalRecord> {
        let signer = records::claimed_signer(envelope).unwrap_or_default();
        let key = self.policy.approver(&signer).ok_or_else(|| {
            Error::refused(
                "unknown_evaluator",
                format!(
                    "eval records must be signed by a trusted approver; key {signer} is not one"
                ),
            )
        })?;
        let record: EvalRecord = records::open(envelope, EVAL_RECORD_TYPE, &key.key)?;
        if record.model.digest != format!("sha256:{}", row.digest)
            || record.model.name != row.name
            || record.model.version != row.version
        {
            return Err(Error::refused(
                "eval_wrong_model",
                format!(
                    "the eval record is about {}:{} ({}), not {}:{}",
                    record.model.name,
                    record.model.version,
                    record.model.digest,
                    row.name,
                    row.version
                ),
            ));
        }
        Ok(record)
    }

    /// The newest record of `row` that still verifies; with `max_age`, only one made within
    /// it.
    fn newest_record(
        &self,
        row: &VersionRow,
        max_age: Option<Duration>,
    ) -> Result<Option<EvalRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT record FROM eval_records WHERE version_id = ?1 ORDER BY id DESC")?;
        let envelopes: Vec<String> = stmt
            .query_map(params![row.id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let now = SystemTime::now();
        for envelope in envelopes {
            let Ok(record) = self.open_record(row, &envelope) else {
                continue;
            };
            let fresh = max_age.is_none_or(|age| {
                humantime::parse_rfc3339_weak(&record.time)
                    .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d <= age) || t > now)
            });
            if fresh {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Refuses (kind `eval_gate`) unless `row` has a fresh record meeting policy.toml's
    /// `[evals]`, compared with the records of `baselines` (the versions tagged now).
    pub(super) fn check_evals(&self, row: &VersionRow, baselines: &[VersionRow]) -> Result<()> {
        let requirements = &self.policy.evals;
        if !requirements.required {
            return Ok(());
        }
        let max_age = Duration::from_secs(requirements.max_age_hours() * 3600);
        let Some(record) = self.newest_record(row, Some(max_age))? else {
            return Err(Error::refused(
                "eval_missing",
                format!(
                    "{}:{} has no eval record from the last {} hours signed by a trusted approver; run `airlock eval {}:{} --key APPROVER.key`",
                    row.name,
                    row.version,
                    requirements.max_age_hours(),
                    row.name,
                    row.version
                ),
            ));
        };
        let mut violations: Vec<Violation> = requirements.check(&record, None);
        for baseline in baselines.iter().filter(|b| b.id != row.id) {
            if let Some(base) = self.newest_record(baseline, None)? {
                let mut against = requirements.check(&record, Some(&base));
                // The checks without a baseline were already counted.
                against.retain(|v| !violations.contains(v));
                for v in &mut against {
                    v.what = format!("{} against {}:{}", v.what, baseline.name, baseline.version);
                }
                violations.extend(against);
            }
        }
        if violations.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        Err(Error::refused(
            "eval_gate",
            format!(
                "{}:{} does not meet the eval requirements of policy.toml: {}",
                row.name,
                row.version,
                list.join("; ")
            ),
        ))
    }

    /// The versions of `name` that some tag points at now.
    pub(super) fn tagged_versions(&self, name: &str) -> Result<Vec<VersionRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT v.id, v.name, v.version, v.digest, v.state, v.signature_blob
             FROM tags t JOIN versions v ON v.id = t.version_id WHERE t.name = ?1",
        )?;
        let rows = stmt
            .query_map(params![name], super::row_to_version)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Every eval record stored for `row`, newest first.
    pub(super) fn eval_records_of(&self, row: &VersionRow) -> Result<Vec<EvalRecordInfo>> {
        let mut stmt = self.conn.prepare(
            "SELECT signer, record FROM eval_records WHERE version_id = ?1 ORDER BY id DESC",
        )?;
        let rows: Vec<(String, String)> = stmt
            .query_map(params![row.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .into_iter()
            .map(|(signer, envelope)| {
                let opened = self.open_record(row, &envelope);
                let (time, suites) = match &opened {
                    Ok(r) => (
                        r.time.clone(),
                        r.suites
                            .iter()
                            .map(|s| (s.name.clone(), s.passed, s.total))
                            .collect(),
                    ),
                    Err(_) => (String::new(), Vec::new()),
                };
                EvalRecordInfo {
                    signer,
                    time,
                    suites,
                    record_sha256: Sha256Digest::of(envelope.as_bytes()).to_hex(),
                    trusted: opened.is_ok(),
                }
            })
            .collect())
    }
}
