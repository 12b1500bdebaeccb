//! The state the signed audit log vouches for, and every row of the databases that says
//! otherwise.
//!
//! Each row that decides what may run or who may read something is made by an action that
//! writes an audit entry, and the entry carries what the row holds:
//!
//! | rows | entries |
//! |---|---|
//! | `api_keys`: name, role, clearance, expiry, revocation | `key.create`, `key.revoke` |
//! | `versions`: digest, state | `import`, `approve`, `reject`, `rm` |
//! | `approvals`: approver, SHA-256 of the signed record | `approve` |
//! | `tags` | `tag`, `untag` |
//! | `history` (rollback protection, version immutability) | `import` (with `highest`) |
//! | `exceptions`: approver, expiry, SHA-256 of the signed record | `allow_downgrade` |
//! | a collection's classes | `collection.create` |
//! | a collection's documents' classes and groups | `collection.classes`, `collection.rm_doc` |
//!
//! [`LogState::apply`] replays those entries into a small typed state; [`compare`] (the
//! registry database), [`compare_keys`] and [`compare_collection`] (a collection database,
//! read by the caller) name each row that disagrees with it as a [`Discrepancy`]. `fsck`
//! reports them; commands and the server refuse to act on a row the log does not back. A
//! [`Binding`] keeps the state of a long-running process up to date with what others append,
//! reading only the new end of the log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use airlock_audit::{Entry, Follower, Outcome, Record};
use serde_json::{Map, Value, json};

use crate::keys::KeyInfo;
use crate::store::Layout;
use crate::{Registry, Result};

/// The actions whose entries carry state; every other entry is skipped unparsed.
pub const STATE_ACTIONS: [&str; 12] = [
    "import",
    "approve",
    "reject",
    "tag",
    "untag",
    "rm",
    "allow_downgrade",
    "key.create",
    "key.revoke",
    "collection.create",
    "collection.classes",
    "collection.rm_doc",
];

/// Whether entries of `action` carry state.
pub fn carries_state(action: &str) -> bool {
    STATE_ACTIONS.contains(&action)
}

/// A version's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Imported, not yet approved.
    Quarantined,
    /// Approved by a trusted approver.
    Approved,
    /// Rejected.
    Rejected,
}

impl VersionState {
    /// `quarantined`, `approved` or `rejected`, as the database writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quarantined => "quarantined",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

/// A version as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedVersion {
    /// Hex SHA-256 of the bundle.
    pub digest: String,
    /// Its state.
    pub state: VersionState,
    /// Approver key id → hex SHA-256 of the signed approval record.
    pub approvals: BTreeMap<String, Option<String>>,
}

/// An API key as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedKey {
    /// Its name.
    pub name: String,
    /// `user` or `admin`.
    pub role: String,
    /// Highest data class its holder may read.
    pub clearance: String,
    /// RFC 3339 expiry, if any.
    pub expires_at: Option<String>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A downgrade exception as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedException {
    /// Model name.
    pub name: String,
    /// The older version it lets in.
    pub version: String,
    /// Approver key id.
    pub approver: String,
    /// RFC 3339 expiry.
    pub expires: String,
    /// Hex SHA-256 of the signed record (entries written before it was recorded lack it).
    pub record_sha256: Option<String>,
}

/// A document's class and access groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocumentClass {
    /// Its class.
    pub class: String,
    /// Its access groups (empty: open to every group).
    pub groups: Vec<String>,
}

impl DocumentClass {
    fn same_as(&self, class: &str, groups: &[String]) -> bool {
        self.class == class && same_groups(&self.groups, groups)
    }
}

fn same_groups(a: &[String], b: &[String]) -> bool {
    let a: BTreeSet<&String> = a.iter().collect();
    let b: BTreeSet<&String> = b.iter().collect();
    a == b
}

fn describe_class(class: &str, groups: &[String], with_groups: bool) -> String {
    if with_groups {
        let groups = if groups.is_empty() {
            "(none)".to_owned()
        } else {
            groups.join(",")
        };
        format!("class {class}, groups {groups}")
    } else {
        format!("class {class}")
    }
}

/// A collection as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoggedCollection {
    /// Its classes, least sensitive first.
    pub classes: Vec<String>,
    /// Document id → its class and groups.
    pub documents: BTreeMap<String, DocumentClass>,
}

/// Everything the audit log vouches for.
#[derive(Debug, Clone, Default)]
pub struct LogState {
    /// (name, version) → the version.
    pub versions: BTreeMap<(String, String), LoggedVersion>,
    /// (name, version) → hex digest of every version ever imported.
    pub history: BTreeMap<(String, String), String>,
    /// (name, tag) → version.
    pub tags: BTreeMap<(String, String), String>,
    /// Every downgrade exception granted.
    pub exceptions: Vec<LoggedException>,
    /// Key id → the key.
    pub keys: BTreeMap<String, LoggedKey>,
    /// Collection name → the collection.
    pub collections: BTreeMap<String, LoggedCollection>,
}

fn text<'a>(details: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    details.get(key).and_then(Value::as_str)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl LogState {
    /// Applies one entry. Entries that carry no state, refusals and failures change nothing;
    /// so does an entry that lacks what its action needs (it then backs no row).
    pub fn apply(&mut self, record: &Record) {
        if record.outcome != Outcome::Ok || !carries_state(&record.action) {
            return;
        }
        let d = &record.details;
        let version_key = || Some((text(d, "name")?.to_owned(), text(d, "version")?.to_owned()));
        let subject = record.subject.as_deref().unwrap_or_default();
        let digest = subject.strip_prefix("sha256:");
        let approver = record.actor.strip_prefix("key:");
        match record.action.as_str() {
            "import" => {
                if d.get("already_present").and_then(Value::as_bool) == Some(true) {
                    return;
                }
                let (Some(key), Some(digest)) = (version_key(), digest) else {
                    return;
                };
                self.history
                    .entry(key.clone())
                    .or_insert_with(|| digest.to_owned());
                // An entry written twice (a crash between the log and the outbox) does not
                // undo what came between: a present version stays as it is.
                if self.versions.get(&key).is_none_or(|v| v.digest != digest) {
                    self.versions.insert(
                        key,
                        LoggedVersion {
                            digest: digest.to_owned(),
                            state: VersionState::Quarantined,
                            approvals: BTreeMap::new(),
                        },
                    );
                }
            }
            "approve" => {
                let (Some(key), Some(digest), Some(approver)) = (version_key(), digest, approver)
                else {
                    return;
                };
                if let Some(v) = self.versions.get_mut(&key)
                    && v.digest == digest
                {
                    v.state = VersionState::Approved;
                    v.approvals.insert(
                        approver.to_owned(),
                        text(d, "record_sha256").map(str::to_owned),
                    );
                }
            }
            "reject" => {
                if let Some(key) = version_key()
                    && let Some(v) = self.versions.get_mut(&key)
                {
                    v.state = VersionState::Rejected;
                }
            }
            "rm" => {
                if let Some(key) = version_key() {
                    self.versions.remove(&key);
                }
            }
            "tag" => {
                if let (Some(name), Some(version), Some(tag)) =
                    (text(d, "name"), text(d, "version"), text(d, "tag"))
                {
                    self.tags
                        .insert((name.to_owned(), tag.to_owned()), version.to_owned());
                }
            }
            "untag" => {
                if let (Some(name), Some(tag)) = (text(d, "name"), text(d, "tag")) {
                    self.tags.remove(&(name.to_owned(), tag.to_owned()));
                }
            }
            "allow_downgrade" => {
                let (Some((name, version)), Some(approver), Some(expires)) =
                    (subject.split_once(':'), approver, text(d, "expires"))
                else {
                    return;
                };
                self.exceptions.push(LoggedException {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    approver: approver.to_owned(),
                    expires: expires.to_owned(),
                    record_sha256: text(d, "record_sha256").map(str::to_owned),
                });
            }
            "key.create" => {
                let (Some(id), Some(name), Some(role), Some(clearance)) = (
                    subject.strip_prefix("apikey:"),
                    text(d, "name"),
                    text(d, "role"),
                    text(d, "clearance"),
                ) else {
                    return;
                };
                // Ids are never reused; an entry written twice changes nothing.
                self.keys.entry(id.to_owned()).or_insert_with(|| LoggedKey {
                    name: name.to_owned(),
                    role: role.to_owned(),
                    clearance: clearance.to_owned(),
                    expires_at: text(d, "expires_at").map(str::to_owned),
                    revoked: false,
                });
            }
            "key.revoke" => {
                if let Some(key) = subject
                    .strip_prefix("apikey:")
                    .and_then(|id| self.keys.get_mut(id))
                {
                    key.revoked = true;
                }
            }
            "collection.create" => {
                let (Some(name), Some(classes)) =
                    (subject.strip_prefix("collection:"), text(d, "classes"))
                else {
                    return;
                };
                // A collection made again under an old name starts empty.
                self.collections.insert(
                    name.to_owned(),
                    LoggedCollection {
                        classes: classes.split(',').map(str::to_owned).collect(),
                        documents: BTreeMap::new(),
                    },
                );
            }
            "collection.classes" => {
                let Some(collection) = subject
                    .strip_prefix("collection:")
                    .and_then(|name| self.collections.get_mut(name))
                else {
                    return;
                };
                for set in d.get("set").and_then(Value::as_array).into_iter().flatten() {
                    let (Some(id), Some(class)) = (
                        set.get("id").and_then(Value::as_str),
                        set.get("class").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    collection.documents.insert(
                        id.to_owned(),
                        DocumentClass {
                            class: class.to_owned(),
                            groups: strings(set.get("groups")),
                        },
                    );
                }
                for id in strings(d.get("removed")) {
                    collection.documents.remove(&id);
                }
            }
            "collection.rm_doc" => {
                if let (Some(collection), Some(document)) = (
                    subject
                        .strip_prefix("collection:")
                        .and_then(|name| self.collections.get_mut(name)),
                    text(d, "document"),
                ) {
                    collection.documents.remove(document);
                }
            }
            _ => {}
        }
    }

    /// The highest version of `name` ever imported: the rollback high-water mark.
    pub fn highest(&self, name: &str) -> Option<semver::Version> {
        highest_of(
            self.history.keys().map(|(n, v)| (n.as_str(), v.as_str())),
            name,
        )
    }
}

fn highest_of<'a>(
    rows: impl Iterator<Item = (&'a str, &'a str)>,
    name: &str,
) -> Option<semver::Version> {
    rows.filter(|(n, _)| *n == name)
        .filter_map(|(_, v)| semver::Version::parse(v).ok())
        .max()
}

/// A row of a database that the log does not back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discrepancy {
    /// The database has a row the log never made.
    Unlogged {
        /// Which table (`api_keys`, `versions`, `collection kb documents`, ...).
        table: String,
        /// Which row.
        row: String,
        /// What the database says.
        database: String,
    },
    /// The log made a row the database lacks.
    Missing {
        /// Which table.
        table: String,
        /// Which row.
        row: String,
        /// What the log says.
        log: String,
    },
    /// Both have the row, with different values.
    Differs {
        /// Which table.
        table: String,
        /// Which row.
        row: String,
        /// What the database says.
        database: String,
        /// What the log says.
        log: String,
    },
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unlogged {
                table,
                row,
                database,
            } => write!(
                f,
                "{table} {row}: the database says {database}; the log has no record of it"
            ),
            Self::Missing { table, row, log } => write!(
                f,
                "{table} {row}: the database has no such row; the log says {log}"
            ),
            Self::Differs {
                table,
                row,
                database,
                log,
            } => write!(
                f,
                "{table} {row}: the database says {database}; the log says {log}"
            ),
        }
    }
}

fn unlogged(table: &str, row: String, database: String) -> Discrepancy {
    Discrepancy::Unlogged {
        table: table.to_owned(),
        row,
        database,
    }
}

fn missing(table: &str, row: String, log: String) -> Discrepancy {
    Discrepancy::Missing {
        table: table.to_owned(),
        row,
        log,
    }
}

fn differs(table: &str, row: String, database: String, log: String) -> Discrepancy {
    Discrepancy::Differs {
        table: table.to_owned(),
        row,
        database,
        log,
    }
}

/// The rows of the registry database that the log binds.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// API keys.
    pub keys: Vec<KeyInfo>,
    /// (name, version, hex digest, state).
    pub versions: Vec<(String, String, String, String)>,
    /// (name, version, approver, hex SHA-256 of the record).
    pub approvals: Vec<(String, String, String, String)>,
    /// (name, tag, version).
    pub tags: Vec<(String, String, String)>,
    /// (name, version, hex digest).
    pub history: Vec<(String, String, String)>,
    /// (name, version, approver, expires, hex SHA-256 of the record).
    pub exceptions: Vec<(String, String, String, String, String)>,
}

fn sha256_hex(text: &str) -> String {
    airlock_bundle::Sha256Digest::of(text.as_bytes()).to_hex()
}

impl Observed {
    /// Reads them.
    pub(crate) fn read(conn: &rusqlite::Connection) -> Result<Self> {
        fn all<T>(
            conn: &rusqlite::Connection,
            sql: &str,
            map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        ) -> Result<Vec<T>> {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], map)?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        }
        Ok(Self {
            keys: all(
                conn,
                &format!(
                    "SELECT {} FROM api_keys ORDER BY id",
                    crate::keys::KEY_COLUMNS
                ),
                crate::keys::row_to_key,
            )?,
            versions: all(
                conn,
                "SELECT name, version, digest, state FROM versions ORDER BY name, version",
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?,
            approvals: all(
                conn,
                "SELECT v.name, v.version, a.approver, a.record FROM approvals a
                 JOIN versions v ON v.id = a.version_id ORDER BY v.name, v.version, a.approver",
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        sha256_hex(&r.get::<_, String>(3)?),
                    ))
                },
            )?,
            tags: all(
                conn,
                "SELECT t.name, t.tag, v.version FROM tags t JOIN versions v ON v.id = t.version_id
                 ORDER BY t.name, t.tag",
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?,
            history: all(
                conn,
                "SELECT name, version, digest FROM history ORDER BY name, version",
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?,
            exceptions: all(
                conn,
                "SELECT name, version, approver, expires, record FROM exceptions ORDER BY id",
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        sha256_hex(&r.get::<_, String>(4)?),
                    ))
                },
            )?,
        })
    }
}

/// Whether the log backs `key` as the database holds it: the key the log made, or why not.
pub fn key_backed<'s>(state: &'s LogState, key: &KeyInfo) -> Result<&'s LoggedKey, Discrepancy> {
    let row = format!("{} ({})", key.id, key.name);
    let Some(logged) = state.keys.get(&key.id) else {
        return Err(unlogged("api_keys", row, describe_key(key, &Fields::ALL)));
    };
    let db = LoggedKey {
        name: key.name.clone(),
        role: key.role.as_str().to_owned(),
        clearance: key.clearance.clone(),
        expires_at: key.expires_at.clone(),
        revoked: key.revoked_at.is_some(),
    };
    let fields = Fields {
        name: db.name != logged.name,
        role: db.role != logged.role,
        clearance: db.clearance != logged.clearance,
        expires: db.expires_at != logged.expires_at,
        revoked: db.revoked != logged.revoked,
    };
    if fields == Fields::NONE {
        return Ok(logged);
    }
    Err(differs(
        "api_keys",
        row,
        describe_logged_key(&db, &fields),
        describe_logged_key(logged, &fields),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    name: bool,
    role: bool,
    clearance: bool,
    expires: bool,
    revoked: bool,
}

impl Fields {
    const ALL: Self = Self {
        name: false,
        role: true,
        clearance: true,
        expires: true,
        revoked: true,
    };
    const NONE: Self = Self {
        name: false,
        role: false,
        clearance: false,
        expires: false,
        revoked: false,
    };
}

fn describe_key(key: &KeyInfo, fields: &Fields) -> String {
    describe_logged_key(
        &LoggedKey {
            name: key.name.clone(),
            role: key.role.as_str().to_owned(),
            clearance: key.clearance.clone(),
            expires_at: key.expires_at.clone(),
            revoked: key.revoked_at.is_some(),
        },
        fields,
    )
}

fn describe_logged_key(key: &LoggedKey, fields: &Fields) -> String {
    let mut parts = Vec::new();
    if fields.name {
        parts.push(format!("name {}", key.name));
    }
    if fields.role {
        parts.push(format!("role {}", key.role));
    }
    if fields.clearance {
        parts.push(format!("clearance {}", key.clearance));
    }
    if fields.expires {
        parts.push(format!(
            "expires {}",
            key.expires_at.as_deref().unwrap_or("never")
        ));
    }
    if fields.revoked {
        parts.push(
            if key.revoked {
                "revoked"
            } else {
                "not revoked"
            }
            .to_owned(),
        );
    }
    parts.join(", ")
}

/// Every API key row that disagrees with the log, and every key the log made that the
/// database lacks.
pub fn compare_keys(state: &LogState, keys: &[KeyInfo]) -> Vec<Discrepancy> {
    let mut out: Vec<Discrepancy> = keys
        .iter()
        .filter_map(|k| key_backed(state, k).err())
        .collect();
    let present: BTreeSet<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    for (id, logged) in &state.keys {
        if !present.contains(id.as_str()) {
            out.push(missing(
                "api_keys",
                format!("{id} ({})", logged.name),
                describe_logged_key(logged, &Fields::ALL),
            ));
        }
    }
    out
}

/// Every row of the registry database that disagrees with the log: keys, versions,
/// approvals, tags, history (and each model's rollback high-water mark) and exceptions.
pub fn compare(state: &LogState, observed: &Observed) -> Vec<Discrepancy> {
    let mut out = compare_keys(state, &observed.keys);

    let mut seen = BTreeSet::new();
    for (name, version, digest, db_state) in &observed.versions {
        let key = (name.clone(), version.clone());
        let row = format!("{name}:{version}");
        seen.insert(key.clone());
        match state.versions.get(&key) {
            None => out.push(unlogged(
                "versions",
                row,
                format!("{db_state}, sha256:{digest}"),
            )),
            Some(logged) if logged.digest != *digest => out.push(differs(
                "versions",
                row,
                format!("sha256:{digest}"),
                format!("sha256:{}", logged.digest),
            )),
            Some(logged) if logged.state.as_str() != db_state => out.push(differs(
                "versions",
                row,
                db_state.clone(),
                logged.state.as_str().to_owned(),
            )),
            Some(_) => {}
        }
    }
    for ((name, version), logged) in &state.versions {
        if !seen.contains(&(name.clone(), version.clone())) {
            out.push(missing(
                "versions",
                format!("{name}:{version}"),
                format!("{}, sha256:{}", logged.state.as_str(), logged.digest),
            ));
        }
    }

    let mut seen = BTreeSet::new();
    for (name, version, approver, record) in &observed.approvals {
        let row = format!("{name}:{version} by {approver}");
        seen.insert((name.clone(), version.clone(), approver.clone()));
        let logged = state
            .versions
            .get(&(name.clone(), version.clone()))
            .and_then(|v| v.approvals.get(approver));
        match logged {
            None => out.push(unlogged(
                "approvals",
                row,
                format!("an approval, record sha256:{record}"),
            )),
            Some(Some(sha)) if sha != record => out.push(differs(
                "approvals",
                row,
                format!("record sha256:{record}"),
                format!("record sha256:{sha}"),
            )),
            Some(_) => {}
        }
    }
    for ((name, version), logged) in &state.versions {
        for (approver, sha) in &logged.approvals {
            if !seen.contains(&(name.clone(), version.clone(), approver.clone())) {
                out.push(missing(
                    "approvals",
                    format!("{name}:{version} by {approver}"),
                    sha.as_ref().map_or_else(
                        || "an approval".to_owned(),
                        |s| format!("an approval, record sha256:{s}"),
                    ),
                ));
            }
        }
    }

    let mut seen = BTreeSet::new();
    for (name, tag, version) in &observed.tags {
        let row = format!("{name}:{tag}");
        seen.insert((name.clone(), tag.clone()));
        match state.tags.get(&(name.clone(), tag.clone())) {
            None => out.push(unlogged("tags", row, format!("it points at {version}"))),
            Some(logged) if logged != version => out.push(differs(
                "tags",
                row,
                format!("it points at {version}"),
                format!("it points at {logged}"),
            )),
            Some(_) => {}
        }
    }
    for ((name, tag), version) in &state.tags {
        if !seen.contains(&(name.clone(), tag.clone())) {
            out.push(missing(
                "tags",
                format!("{name}:{tag}"),
                format!("it points at {version}"),
            ));
        }
    }

    let mut seen = BTreeSet::new();
    for (name, version, digest) in &observed.history {
        let row = format!("{name}:{version}");
        seen.insert((name.clone(), version.clone()));
        match state.history.get(&(name.clone(), version.clone())) {
            None => out.push(unlogged(
                "history",
                row,
                format!("imported as sha256:{digest}"),
            )),
            Some(logged) if logged != digest => out.push(differs(
                "history",
                row,
                format!("imported as sha256:{digest}"),
                format!("imported as sha256:{logged}"),
            )),
            Some(_) => {}
        }
    }
    for ((name, version), digest) in &state.history {
        if !seen.contains(&(name.clone(), version.clone())) {
            out.push(missing(
                "history",
                format!("{name}:{version}"),
                format!("imported as sha256:{digest}"),
            ));
        }
    }
    let names: BTreeSet<&str> = state
        .history
        .keys()
        .map(|(n, _)| n.as_str())
        .chain(observed.history.iter().map(|(n, _, _)| n.as_str()))
        .collect();
    for name in names {
        let db = highest_of(
            observed
                .history
                .iter()
                .map(|(n, v, _)| (n.as_str(), v.as_str())),
            name,
        );
        let logged = state.highest(name);
        if db != logged {
            let show =
                |v: Option<semver::Version>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
            out.push(differs(
                "history",
                format!("{name} (rollback high-water mark)"),
                show(db),
                show(logged),
            ));
        }
    }

    let mut matched = vec![false; state.exceptions.len()];
    for (name, version, approver, expires, record) in &observed.exceptions {
        let row = format!("{name}:{version} by {approver}");
        let found = state.exceptions.iter().position(|e| {
            e.name == *name
                && e.version == *version
                && e.approver == *approver
                && e.expires == *expires
                && e.record_sha256.as_ref().is_none_or(|s| s == record)
        });
        match found {
            Some(i) => matched[i] = true,
            None => out.push(unlogged(
                "exceptions",
                row,
                format!("until {expires}, record sha256:{record}"),
            )),
        }
    }
    for (e, matched) in state.exceptions.iter().zip(matched) {
        if !matched {
            out.push(missing(
                "exceptions",
                format!("{}:{} by {}", e.name, e.version, e.approver),
                format!("until {}", e.expires),
            ));
        }
    }
    out
}

/// A collection's classes as its database holds them, for [`compare_collection`].
#[derive(Debug, Clone, Default)]
pub struct ObservedCollection {
    /// Its name.
    pub name: String,
    /// Its classes, least sensitive first.
    pub classes: Vec<String>,
    /// Its documents table: id, class, groups.
    pub documents: Vec<(String, String, Vec<String>)>,
    /// Its live chunks, counted by document, class rank and groups.
    pub chunks: Vec<ObservedChunks>,
}

/// Live chunks of one document that share a class rank and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedChunks {
    /// The document they belong to.
    pub document: String,
    /// Their class rank.
    pub rank: u32,
    /// Their access groups.
    pub groups: Vec<String>,
    /// How many.
    pub count: u64,
}

/// Every row of a collection's database that disagrees with the log: its classes, each
/// document's class and groups, and the class and groups of every live chunk (what
/// searches filter on).
pub fn compare_collection(state: &LogState, observed: &ObservedCollection) -> Vec<Discrepancy> {
    let name = &observed.name;
    let Some(logged) = state.collections.get(name) else {
        return vec![unlogged(
            "collections",
            name.clone(),
            format!("classes {}", observed.classes.join("<")),
        )];
    };
    let mut out = Vec::new();
    if logged.classes != observed.classes {
        out.push(differs(
            &format!("collection {name}"),
            "classes".into(),
            observed.classes.join("<"),
            logged.classes.join("<"),
        ));
    }
    let table = format!("collection {name} documents");
    let mut seen = BTreeSet::new();
    for (id, class, groups) in &observed.documents {
        seen.insert(id.as_str());
        match logged.documents.get(id) {
            None => out.push(unlogged(
                &table,
                id.clone(),
                describe_class(class, groups, !groups.is_empty()),
            )),
            Some(expected) if !expected.same_as(class, groups) => {
                let with_groups = !same_groups(&expected.groups, groups);
                out.push(differs(
                    &table,
                    id.clone(),
                    describe_class(class, groups, with_groups),
                    describe_class(&expected.class, &expected.groups, with_groups),
                ));
            }
            Some(_) => {}
        }
    }
    for (id, expected) in &logged.documents {
        if !seen.contains(id.as_str()) {
            out.push(missing(
                &table,
                id.clone(),
                describe_class(
                    &expected.class,
                    &expected.groups,
                    !expected.groups.is_empty(),
                ),
            ));
        }
    }
    let table = format!("collection {name} chunks of");
    let class_name = |rank: u32| {
        logged
            .classes
            .get(rank as usize)
            .cloned()
            .unwrap_or_else(|| format!("rank {rank}"))
    };
    for chunks in &observed.chunks {
        let count = if chunks.count == 1 {
            "1 live chunk".to_owned()
        } else {
            format!("{} live chunks", chunks.count)
        };
        let class = class_name(chunks.rank);
        match logged.documents.get(&chunks.document) {
            None => out.push(unlogged(
                &table,
                chunks.document.clone(),
                format!(
                    "{count} of {}",
                    describe_class(&class, &chunks.groups, !chunks.groups.is_empty())
                ),
            )),
            Some(expected) if !expected.same_as(&class, &chunks.groups) => {
                let with_groups = !same_groups(&expected.groups, &chunks.groups);
                out.push(differs(
                    &table,
                    chunks.document.clone(),
                    format!(
                        "{count} of {}",
                        describe_class(&class, &chunks.groups, with_groups)
                    ),
                    describe_class(&expected.class, &expected.groups, with_groups),
                ));
            }
            Some(_) => {}
        }
    }
    out
}

/// Most bytes of document lists in one `collection.classes` entry, well under the log's
/// 64 KiB entry limit.
const CLASSES_ENTRY_BYTES: usize = 48 << 10;

/// The `collection.classes` entries that record `set` (document id, class, groups) and
/// `removed` documents of collection `name`: as many as it takes to keep each entry small.
/// An ingest writes them with its own entry, so that every document's class is derivable
/// from the log.
pub fn collection_classes_entries(
    actor: &str,
    name: &str,
    set: &[(String, String, Vec<String>)],
    removed: &[String],
) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut current: (Vec<Value>, Vec<Value>, usize) = (Vec::new(), Vec::new(), 0);
    let flush = |current: &mut (Vec<Value>, Vec<Value>, usize), entries: &mut Vec<Entry>| {
        if current.0.is_empty() && current.1.is_empty() {
            return;
        }
        let (set, removed, _) = std::mem::take(current);
        let mut entry = Entry::new(actor, "collection.classes", Outcome::Ok)
            .subject(format!("collection:{name}"));
        if !set.is_empty() {
            entry = entry.detail("set", set);
        }
        if !removed.is_empty() {
            entry = entry.detail("removed", removed);
        }
        entries.push(entry);
    };
    for (id, class, groups) in set {
        let item = json!({"id": id, "class": class, "groups": groups});
        let size = item.to_string().len();
        if current.2 + size > CLASSES_ENTRY_BYTES {
            flush(&mut current, &mut entries);
        }
        current.0.push(item);
        current.2 += size + 1;
    }
    for id in removed {
        let size = id.len() + 3;
        if current.2 + size > CLASSES_ENTRY_BYTES {
            flush(&mut current, &mut entries);
        }
        current.1.push(Value::from(id.clone()));
        current.2 += size;
    }
    flush(&mut current, &mut entries);
    entries
}

/// The log's state for a long-running reader, kept up to date by reading what is appended
/// after what it has read (only sealed entries count; see [`Follower`]).
#[derive(Debug)]
pub struct Binding {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    follower: Follower,
    state: Arc<LogState>,
    read_at: Instant,
}

impl Binding {
    /// Replays the audit log of the data directory at `layout`.
    pub fn open(layout: &Layout) -> Result<Self> {
        let verifier = Registry::audit_verifier(layout.root())?;
        let mut inner = Inner {
            follower: Follower::new(&layout.audit(), verifier),
            state: Arc::new(LogState::default()),
            read_at: Instant::now(),
        };
        inner.catch_up()?;
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    /// A binding that goes on from a follower that has read (and verified) up to where
    /// `state` stands.
    pub fn from_replayed(follower: Follower, state: Arc<LogState>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                follower,
                state,
                read_at: Instant::now(),
            }),
        }
    }

    /// The state with everything sealed until now.
    pub fn state(&self) -> Result<Arc<LogState>> {
        self.state_within(Duration::ZERO)
    }

    /// The state as read at most `max_age` ago (reading the end of the log if older). The
    /// same `Arc` comes back for as long as no state-carrying entry has been read.
    pub fn state_within(&self, max_age: Duration) -> Result<Arc<LogState>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if max_age.is_zero() || inner.read_at.elapsed() > max_age {
            inner.catch_up()?;
        }
        Ok(Arc::clone(&inner.state))
    }
}

impl Inner {
    fn catch_up(&mut self) -> Result<()> {
        let mut records = Vec::new();
        self.follower
            .advance(&carries_state, &mut |r| records.push(r))?;
        if !records.is_empty() {
            let state = Arc::make_mut(&mut self.state);
            for record in &records {
                state.apply(record);
            }
        }
        self.read_at = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyRole;

    fn record(action: &str, actor: &str, subject: &str, details: Value) -> Record {
        Record {
            index: 0,
            time: "2026-01-01T00:00:00.000Z".into(),
            actor: actor.into(),
            action: action.into(),
            outcome: Outcome::Ok,
            subject: Some(subject.into()),
            reason: None,
            details: details.as_object().cloned().unwrap_or_default(),
        }
    }

    fn digest(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// tiny 1.0.0 imported, approved and tagged prod; 1.1.0 imported then removed; a key.
    fn replayed() -> LogState {
        let mut state = LogState::default();
        for r in [
            record(
                "import",
                "user:a",
                &format!("sha256:{}", digest('a')),
                json!({"name": "tiny", "version": "1.0.0"}),
            ),
            record(
                "approve",
                "key:bob",
                &format!("sha256:{}", digest('a')),
                json!({"name": "tiny", "version": "1.0.0", "record_sha256": digest('r')}),
            ),
            record(
                "tag",
                "user:a",
                &format!("sha256:{}", digest('a')),
                json!({"name": "tiny", "version": "1.0.0", "tag": "prod"}),
            ),
            record(
                "import",
                "user:a",
                &format!("sha256:{}", digest('b')),
                json!({"name": "tiny", "version": "1.1.0"}),
            ),
            record(
                "rm",
                "user:a",
                &format!("sha256:{}", digest('b')),
                json!({"name": "tiny", "version": "1.1.0"}),
            ),
            record(
                "key.create",
                "user:a",
                "apikey:00000000000000k1",
                json!({"name": "app", "role": "user", "clearance": "internal"}),
            ),
        ] {
            state.apply(&r);
        }
        state
    }

    #[test]
    fn each_state_carrying_entry_replays_into_the_rows_it_made() {
        let state = replayed();
        let v = &state.versions[&("tiny".into(), "1.0.0".into())];
        assert_eq!(v.state, VersionState::Approved);
        assert_eq!(v.approvals.get("bob"), Some(&Some(digest('r'))));
        assert!(
            !state
                .versions
                .contains_key(&("tiny".into(), "1.1.0".into()))
        );
        assert_eq!(
            state.history.get(&("tiny".into(), "1.1.0".into())),
            Some(&digest('b')),
            "removal never takes a version out of the history"
        );
        assert_eq!(state.highest("tiny").unwrap().to_string(), "1.1.0");
        assert_eq!(
            state.tags.get(&("tiny".into(), "prod".into())).unwrap(),
            "1.0.0"
        );
        assert_eq!(state.keys["00000000000000k1"].clearance, "internal");

        // Refusals and kinds without state change nothing.
        let mut refused = record(
            "key.create",
            "user:a",
            "apikey:00000000000000k2",
            json!({"name": "x", "role": "admin", "clearance": "secret"}),
        );
        refused.outcome = Outcome::Refused;
        let mut again = state.clone();
        again.apply(&refused);
        again.apply(&record(
            "api.request",
            "apikey:00000000000000k1",
            "x",
            json!({}),
        ));
        assert_eq!(again.keys.len(), 1);
    }

    #[test]
    fn compare_names_each_row_that_disagrees_in_one_line() {
        let state = replayed();
        let key = KeyInfo {
            id: "00000000000000k1".into(),
            name: "app".into(),
            role: KeyRole::Admin,
            clearance: "secret".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            revoked_at: None,
        };
        let observed = Observed {
            keys: vec![key],
            versions: vec![(
                "tiny".into(),
                "1.0.0".into(),
                digest('a'),
                "approved".into(),
            )],
            approvals: vec![("tiny".into(), "1.0.0".into(), "bob".into(), digest('r'))],
            tags: vec![("tiny".into(), "prod".into(), "1.0.0".into())],
            history: vec![("tiny".into(), "1.0.0".into(), digest('a'))],
            exceptions: vec![],
        };
        let lines: Vec<String> = compare(&state, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "api_keys 00000000000000k1 (app): the database says role admin, clearance secret; the log says role user, clearance internal".to_owned(),
                format!("history tiny:1.1.0: the database has no such row; the log says imported as sha256:{}", digest('b')),
                "history tiny (rollback high-water mark): the database says 1.0.0; the log says 1.1.0".to_owned(),
            ]
        );
        let mut hand_approved = observed.clone();
        hand_approved.keys.clear();
        hand_approved
            .history
            .push(("tiny".into(), "1.1.0".into(), digest('b')));
        hand_approved.versions.push((
            "tiny".into(),
            "1.1.0".into(),
            digest('b'),
            "approved".into(),
        ));
        let lines: Vec<String> = compare(&state, &hand_approved)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "api_keys 00000000000000k1 (app): the database has no such row; the log says role user, clearance internal, expires never, not revoked".to_owned(),
                format!("versions tiny:1.1.0: the database says approved, sha256:{}; the log has no record of it", digest('b')),
            ]
        );
    }

    #[test]
    fn a_collections_rows_are_compared_with_the_classes_the_log_records() {
        let mut state = LogState::default();
        state.apply(&record(
            "collection.create",
            "user:a",
            "collection:kb",
            json!({"classes": "public,internal,secret", "default_class": "internal"}),
        ));
        let set = vec![
            ("/d/a.md".to_owned(), "secret".to_owned(), vec![]),
            (
                "/d/b.md".to_owned(),
                "internal".to_owned(),
                vec!["hr".to_owned()],
            ),
        ];
        for entry in collection_classes_entries("user:a", "kb", &set, &[]) {
            state.apply(&record(
                &entry.action,
                &entry.actor,
                entry.subject.as_deref().unwrap(),
                Value::Object(entry.details),
            ));
        }
        let observed = ObservedCollection {
            name: "kb".into(),
            classes: vec!["public".into(), "internal".into(), "secret".into()],
            documents: vec![
                ("/d/a.md".into(), "secret".into(), vec![]),
                ("/d/b.md".into(), "internal".into(), vec![]),
            ],
            chunks: vec![
                ObservedChunks {
                    document: "/d/a.md".into(),
                    rank: 0,
                    groups: vec![],
                    count: 3,
                },
                ObservedChunks {
                    document: "/d/c.md".into(),
                    rank: 0,
                    groups: vec![],
                    count: 1,
                },
            ],
        };
        let lines: Vec<String> = compare_collection(&state, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "collection kb documents /d/b.md: the database says class internal, groups (none); the log says class internal, groups hr",
                "collection kb chunks of /d/a.md: the database says 3 live chunks of class public; the log says class secret",
                "collection kb chunks of /d/c.md: the database says 1 live chunk of class public; the log has no record of it",
            ]
        );
        // Removal, by rm_doc or by a pruning ingest.
        state.apply(&record(
            "collection.rm_doc",
            "user:a",
            "collection:kb",
            json!({"document": "/d/a.md"}),
        ));
        for entry in collection_classes_entries("user:a", "kb", &[], &["/d/b.md".to_owned()]) {
            state.apply(&record(
                &entry.action,
                &entry.actor,
                entry.subject.as_deref().unwrap(),
                Value::Object(entry.details),
            ));
        }
        assert!(state.collections["kb"].documents.is_empty());
    }

    #[test]
    fn many_documents_are_recorded_in_entries_that_each_fit_the_log() {
        let set: Vec<(String, String, Vec<String>)> = (0..5000)
            .map(|n| {
                (
                    format!("/srv/docs/department-{n:05}/a-rather-long-file-name.md"),
                    "internal".to_owned(),
                    vec!["hr".to_owned()],
                )
            })
            .collect();
        let entries = collection_classes_entries("user:a", "kb", &set, &[]);
        assert!(entries.len() > 1);
        let mut state = LogState::default();
        state.apply(&record(
            "collection.create",
            "user:a",
            "collection:kb",
            json!({"classes": "public,internal"}),
        ));
        for entry in entries {
            let line = serde_json::to_vec(&entry.details).unwrap();
            assert!(line.len() < airlock_audit::MAX_ENTRY_BYTES - 1024);
            state.apply(&record(
                &entry.action,
                &entry.actor,
                entry.subject.as_deref().unwrap(),
                Value::Object(entry.details),
            ));
        }
        assert_eq!(state.collections["kb"].documents.len(), 5000);
    }

    #[test]
    fn a_key_store_refuses_a_key_raised_by_hand_and_honours_one_made_after_it_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        Registry::init(&root, "user:test").unwrap();
        let mut registry = Registry::open(&root, "user:test").unwrap();
        let raised = registry
            .create_key("app", KeyRole::User, "internal", None)
            .unwrap();
        let store = crate::KeyStore::open(&root).unwrap();
        assert!(store.authenticate(&raised.secret).unwrap().is_ok());
        let conn = rusqlite::Connection::open(Layout::new(&root).db()).unwrap();
        conn.execute(
            "UPDATE api_keys SET role = 'admin', clearance = 'secret' WHERE id = ?1",
            [&raised.info.id],
        )
        .unwrap();
        let line = format!(
            "api_keys {} (app): the database says role admin, clearance secret; the log says role user, clearance internal",
            raised.info.id
        );
        assert_eq!(
            store.authenticate(&raised.secret).unwrap(),
            Err(crate::KeyRejection::Unbacked {
                id: raised.info.id.clone(),
                reason: line.clone(),
            })
        );
        let unbacked: Vec<String> = store
            .unbacked()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(unbacked, [line]);
        let later = registry
            .create_key("later", KeyRole::User, "public", None)
            .unwrap();
        assert_eq!(
            store.authenticate(&later.secret).unwrap().unwrap().name,
            "later"
        );
        // A revocation undone by hand does not bring the key back (once the state is
        // older than the store's freshness bound, at most a second).
        registry.revoke_key("later").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        conn.execute(
            "UPDATE api_keys SET revoked_at = NULL WHERE id = ?1",
            [&later.info.id],
        )
        .unwrap();
        assert!(matches!(
            store.authenticate(&later.secret).unwrap(),
            Err(crate::KeyRejection::Unbacked { .. })
        ));
    }
}
