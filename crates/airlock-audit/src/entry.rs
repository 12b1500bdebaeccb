//! What the log records: one canonical JSON object per entry.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Longest encoded entry accepted, in bytes. Entries are a few hundred bytes; the ceiling
/// keeps a hostile or broken log from making a reader allocate without bound.
pub const MAX_ENTRY_BYTES: usize = 64 << 10;

/// Canonical JSON writes numbers as IEEE doubles, exact only up to 2^53 - 1.
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action took effect.
    Ok,
    /// Policy or verification refused it; nothing changed.
    Refused,
    /// It was attempted and failed for a reason other than a refusal (an API request the
    /// server could not complete).
    Failed,
}

/// An event to record. The log assigns its index and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Who acted: a key id (`key:<hex>`) or a local identity (`user:<name>`).
    pub actor: String,
    /// What was done (`import`, `approve`, `trust.add`, ...).
    pub action: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it was done to (`sha256:<hex>` of a bundle, a `name:version`, a key id).
    pub subject: Option<String>,
    /// Why, for refusals and reasoned actions.
    pub reason: Option<String>,
    /// Anything else worth keeping, as JSON.
    pub details: Map<String, Value>,
}

impl Entry {
    /// An entry with no subject, reason or details.
    pub fn new(actor: impl Into<String>, action: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            outcome,
            subject: None,
            reason: None,
            details: Map::new(),
        }
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Adds one detail.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// An entry as written: the [`Entry`] with its index and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the log, from 0.
    pub index: u64,
    /// RFC 3339 UTC time of the commit, to the millisecond.
    pub time: String,
    /// See [`Entry::actor`].
    pub actor: String,
    /// See [`Entry::action`].
    pub action: String,
    /// See [`Entry::outcome`].
    pub outcome: Outcome,
    /// See [`Entry::subject`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// See [`Entry::reason`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// See [`Entry::details`].
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl Record {
    #[cfg(test)]
    pub(crate) fn new(index: u64, time: String, entry: Entry) -> Self {
        Self {
            index,
            time,
            actor: entry.actor,
            action: entry.action,
            outcome: entry.outcome,
            subject: entry.subject,
            reason: entry.reason,
            details: entry.details,
        }
    }

    /// The exact bytes of the log line (without its newline): RFC 8785 canonical JSON.
    pub fn to_canonical(&self) -> Result<Vec<u8>> {
        let entry = Entry {
            actor: self.actor.clone(),
            action: self.action.clone(),
            outcome: self.outcome,
            subject: self.subject.clone(),
            reason: self.reason.clone(),
            details: self.details.clone(),
        };
        Prepared::new(&entry)?.line(self.index, &self.time)
    }

    /// Parses a log line and insists it is in canonical form, so that two different byte
    /// strings never describe the same entry.
    pub fn parse_canonical(line: &[u8]) -> std::result::Result<Self, String> {
        let record: Self = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        if record.index > MAX_SAFE_INTEGER {
            return Err("index is beyond what canonical JSON numbers hold exactly".into());
        }
        let again = serde_json_canonicalizer::to_vec(&record).map_err(|e| e.to_string())?;
        if again != line {
            return Err("entry is not in canonical JSON form".into());
        }
        Ok(record)
    }
}

/// An entry encoded ahead of the commit, all but its index and time, so the work is done by
/// the appending thread and not inside the shared commit.
///
/// RFC 8785 orders keys by UTF-16 code units; the keys here are ASCII, so the order is
/// `action, actor, details, index, outcome, reason, subject, time`, and the two
/// commit-time fields split the line into three fixed parts. Strings are escaped by
/// `serde_json`, whose escaping is exactly RFC 8785's (a property test holds it to the
/// reference canonicaliser).
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// `{"action":…,"actor":…[,"details":…],"index":`
    before_index: Vec<u8>,
    /// `,"outcome":…[,"reason":…][,"subject":…],"time":`
    before_time: Vec<u8>,
}

/// True when `serde_json` already writes `value` in RFC 8785 form: object keys are ASCII (so
/// `serde_json`'s sorted map order is RFC 8785's UTF-16 order) and numbers are integers
/// that doubles hold exactly (so no float formatting is involved). Everything else goes
/// through the reference canonicaliser.
fn plainly_canonical(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => n
            .as_u64()
            .map(|u| u <= MAX_SAFE_INTEGER)
            .or_else(|| n.as_i64().map(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER))
            .unwrap_or(false),
        Value::Array(items) => items.iter().all(plainly_canonical),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| k.is_ascii() && plainly_canonical(v)),
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    serde_json::to_writer(out, s).map_err(|e| Error::BadEntry(e.to_string()))
}

impl Prepared {
    pub(crate) fn new(entry: &Entry) -> Result<Self> {
        let mut a = Vec::with_capacity(160);
        a.extend_from_slice(b"{\"action\":");
        push_json_str(&mut a, &entry.action)?;
        a.extend_from_slice(b",\"actor\":");
        push_json_str(&mut a, &entry.actor)?;
        if !entry.details.is_empty() {
            a.extend_from_slice(b",\"details\":");
            let details = &entry.details;
            if details
                .iter()
                .all(|(k, v)| k.is_ascii() && plainly_canonical(v))
            {
                serde_json::to_writer(&mut a, details)
                    .map_err(|e| Error::BadEntry(e.to_string()))?;
            } else {
                let bytes = serde_json_canonicalizer::to_vec(details)
                    .map_err(|e| Error::BadEntry(e.to_string()))?;
                a.extend_from_slice(&bytes);
            }
        }
        a.extend_from_slice(b",\"index\":");
        let mut b = Vec::with_capacity(160);
        b.extend_from_slice(match entry.outcome {
            Outcome::Ok => b",\"outcome\":\"ok\"",
            Outcome::Refused => b",\"outcome\":\"refused\"",
            Outcome::Failed => b",\"outcome\":\"failed\"",
        });
        if let Some(reason) = &entry.reason {
            b.extend_from_slice(b",\"reason\":");
            push_json_str(&mut b, reason)?;
        }
        if let Some(subject) = &entry.subject {
            b.extend_from_slice(b",\"subject\":");
            push_json_str(&mut b, subject)?;
        }
        b.extend_from_slice(b",\"time\":");
        // Room for the index and the time, so an over-long entry is refused now.
        if a.len() + b.len() + 64 > MAX_ENTRY_BYTES {
            return Err(Error::BadEntry(format!(
                "{} bytes encoded, over the {MAX_ENTRY_BYTES}-byte limit",
                a.len() + b.len()
            )));
        }
        Ok(Self {
            before_index: a,
            before_time: b,
        })
    }

    /// The complete line for `index` committed at `time`.
    pub(crate) fn line(&self, index: u64, time: &str) -> Result<Vec<u8>> {
        if index > MAX_SAFE_INTEGER {
            return Err(Error::BadEntry(format!(
                "index {index} is beyond what canonical JSON numbers hold exactly"
            )));
        }
        let mut line = Vec::with_capacity(self.before_index.len() + self.before_time.len() + 64);
        line.extend_from_slice(&self.before_index);
        line.extend_from_slice(index.to_string().as_bytes());
        line.extend_from_slice(&self.before_time);
        push_json_str(&mut line, time)?;
        line.push(b'}');
        if line.len() > MAX_ENTRY_BYTES || line.contains(&b'\n') {
            return Err(Error::BadEntry("entry too long or not one line".into()));
        }
        Ok(line)
    }
}

/// A checkpoint line: `{"checkpoint":"<signed note>"}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointLine {
    pub(crate) checkpoint: String,
}

/// The prefix that tells a checkpoint line from an entry line (keys sort, so entry lines
/// start with `{"action":`).
pub(crate) const CHECKPOINT_PREFIX: &[u8] = b"{\"checkpoint\":";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_is_one_canonical_line_that_parses_back() {
        let entry = Entry::new("key:ab", "import", Outcome::Refused)
            .subject("sha256:00")
            .reason("untrusted signer\nsecond line")
            .detail("size", 12);
        let record = Record::new(3, "2026-11-22T10:00:00.000Z".into(), entry);
        let line = record.to_canonical().unwrap();
        assert!(line.starts_with(b"{\"action\":\"import\""));
        assert!(!line.contains(&b'\n'));
        assert_eq!(Record::parse_canonical(&line).unwrap(), record);
    }

    #[test]
    fn non_canonical_or_unknown_fields_are_refused() {
        assert!(
            Record::parse_canonical(
                br#"{"index":0,"action":"a","actor":"b","outcome":"ok","time":"t"}"#
            )
            .is_err()
        );
        assert!(
            Record::parse_canonical(
                br#"{"action":"a","actor":"b","extra":1,"index":0,"outcome":"ok","time":"t"}"#
            )
            .is_err()
        );
        assert!(
            Record::parse_canonical(
                br#"{"action":"a","actor":"b","index":0,"outcome":"ok","time":"t"}"#
            )
            .is_ok()
        );
    }

    proptest! {
        #[test]
        fn any_record_round_trips(index in 0..=MAX_SAFE_INTEGER, actor in "\\PC{0,40}", reason in proptest::option::of("\\PC{0,80}")) {
            let mut entry = Entry::new(actor, "act", Outcome::Ok);
            entry.reason = reason;
            let record = Record::new(index, "t".into(), entry);
            let line = record.to_canonical().unwrap();
            prop_assert_eq!(Record::parse_canonical(&line).unwrap(), record);
        }

        #[test]
        fn the_fast_encoder_matches_the_reference_canonicaliser(
            actor in "\\PC{0,40}",
            action in "[\\x00-\\x7f]{0,20}",
            subject in proptest::option::of("\\PC{0,40}"),
            reason in proptest::option::of("[\\x00-\\x7f\u{80}-\u{10ffff}]{0,40}"),
            key in "\\PC{0,10}",
            number in any::<f64>().prop_filter("finite", |f| f.is_finite()),
            index in 0..=MAX_SAFE_INTEGER,
        ) {
            let mut entry = Entry::new(actor, action, Outcome::Refused);
            entry.subject = subject;
            entry.reason = reason;
            entry = entry
                .detail(&key, number)
                .detail("n", index)
                .detail("list", vec![Value::from(index), Value::from(-7), Value::from("s")])
                .detail("ascii", serde_json::json!({"b": true, "a": null, "z": [1, 2]}));
            let record = Record::new(index, "2026-11-22T10:00:00.000Z".into(), entry);
            prop_assert_eq!(record.to_canonical().unwrap(), serde_json_canonicalizer::to_vec(&record).unwrap());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::parse_canonical(&bytes);
        }
    }
}
