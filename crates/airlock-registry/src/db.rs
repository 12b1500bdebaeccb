//! The metadata database: schema and connection settings.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::Result;

/// Sends SQLite's temporary files (large sorts, statement journals) into `dir`, for every
/// connection of this process. Their default places (`/var/tmp`, `/tmp`) lie outside the file
/// fence of a confined command, where SQLite could not open them. Call it before other
/// threads use SQLite: the setting is global.
pub fn keep_temporary_files_in(dir: &Path) -> Result<()> {
    let conn = Connection::open_in_memory()?;
    conn.pragma_update(None, "temp_store_directory", dir.to_string_lossy())?;
    Ok(())
}

/// Schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- One row per imported version. Rows are immutable but for state and reason.
CREATE TABLE IF NOT EXISTS versions (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    digest         TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('quarantined', 'approved', 'rejected')),
    kind           TEXT NOT NULL,
    format         TEXT NOT NULL,
    license        TEXT,
    size           INTEGER NOT NULL,
    signers        TEXT NOT NULL,
    signature_blob TEXT NOT NULL,
    imported_at    TEXT NOT NULL,
    imported_by    TEXT NOT NULL,
    policy_digest  TEXT NOT NULL,
    reason         TEXT,
    UNIQUE (name, version)
) STRICT;

CREATE TABLE IF NOT EXISTS files (
    version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
    path       TEXT NOT NULL,
    blob       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (version_id, path)
) STRICT;
CREATE INDEX IF NOT EXISTS files_by_blob ON files (blob);

CREATE TABLE IF NOT EXISTS approvals (
    version_id  INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
    approver    TEXT NOT NULL,
    record      TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (version_id, approver)
) STRICT;

-- Signed eval records (airlock eval), kept whole: each names the suites it ran and every
-- item's result, and is checked again (signer, digest, age) whenever a gate reads it.
CREATE TABLE IF NOT EXISTS eval_records (
    id         INTEGER PRIMARY KEY,
    version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
    signer     TEXT NOT NULL,
    record     TEXT NOT NULL,
    made_at    TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS tags (
    name       TEXT NOT NULL,
    tag        TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions (id),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, tag)
) STRICT;

-- Every (name, version, digest) ever imported; never deleted, so removing a version can
-- neither lower the rollback floor nor free its version number for different bytes.
CREATE TABLE IF NOT EXISTS history (
    name    TEXT NOT NULL,
    version TEXT NOT NULL,
    digest  TEXT NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;

CREATE TABLE IF NOT EXISTS exceptions (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    approver   TEXT NOT NULL,
    expires    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    record     TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

-- API keys for `airlock serve`: only the SHA-256 of each key is kept.
CREATE TABLE IF NOT EXISTS api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    clearance  TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
) STRICT;

-- Audit entries committed with a state change, written to the audit log right after the
-- commit and then deleted. A crash in between leaves them here for the next command to
-- write, so no change ever goes unaudited.
CREATE TABLE IF NOT EXISTS outbox (
    id    INTEGER PRIMARY KEY,
    entry TEXT NOT NULL
) STRICT;
"#;

/// Opens (creating if asked) the database with WAL, full sync and foreign keys on, and a
/// generous busy timeout so concurrent imports wait for each other instead of failing.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(120))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}
