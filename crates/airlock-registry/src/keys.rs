//! API keys for `airlock serve`: created and revoked through the [`Registry`] (audited),
//! looked up by the server through a [`KeyStore`].
//!
//! A key is `alk-<id>-<secret>`: a 16-hex-digit public id that names it in listings and
//! audit entries, and 32 random bytes. Only the SHA-256 of the whole key is stored. Keys are
//! random and long, so a fast hash is enough: there is nothing to brute-force.
//!
//! [`Registry`]: crate::Registry

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::replay::{self, Binding, Discrepancy};
use crate::store::Layout;
use crate::{Error, Result, db};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Calls the model APIs.
    User,
    /// Also reads server status, metrics and the audit tail.
    Admin,
}

impl KeyRole {
    /// Parses `user` or `admin`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            other => Err(Error::Usage(format!(
                "role {other:?} is not one of: user, admin"
            ))),
        }
    }

    /// `user` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Public id (16 hex digits).
    pub id: String,
    /// Name given at creation (who or what uses it).
    pub name: String,
    /// What it may do.
    pub role: KeyRole,
    /// Highest data class its holder may read.
    pub clearance: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 expiry, if any.
    pub expires_at: Option<String>,
    /// RFC 3339 revocation time, if revoked.
    pub revoked_at: Option<String>,
}

impl KeyInfo {
    /// Whether the key is usable at `now`: not revoked and not expired.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none() && !self.is_expired(now)
    }

    /// Whether the key's expiry has passed at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .is_some_and(|expires| expires <= now)
    }
}

/// A newly created key: the secret exists only here, once.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The stored part.
    pub info: KeyInfo,
    /// The key to hand to its holder (`alk-<id>-<secret>`).
    pub secret: String,
}

/// Longest key accepted for lookup; anything longer is not a key of ours.
const MAX_KEY_LEN: usize = 128;

/// SHA-256 of a presented key, hex.
pub(crate) fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Generates a fresh key and its public id.
pub(crate) fn generate() -> (String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let id = hex::encode(id);
    let key = format!(
        "alk-{id}-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    (id, key)
}

pub(crate) const KEY_COLUMNS: &str =
    "id, name, role, clearance, created_at, expires_at, revoked_at";

pub(crate) fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    let role: String = r.get(2)?;
    Ok(KeyInfo {
        id: r.get(0)?,
        name: r.get(1)?,
        role: if role == "admin" {
            KeyRole::Admin
        } else {
            KeyRole::User
        },
        clearance: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

/// Why a presented key was not accepted. The server answers all of them with the same 401;
/// the distinction goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRejection {
    /// No stored key has this hash.
    Unknown,
    /// The key was revoked.
    Revoked {
        /// Its id.
        id: String,
    },
    /// The key's expiry has passed.
    Expired {
        /// Its id.
        id: String,
    },
    /// The key's row is not what the audit log recorded (made by hand, or its role,
    /// clearance, expiry or revocation changed since).
    Unbacked {
        /// Its id.
        id: String,
        /// The row and what the database and the log say.
        reason: String,
    },
}

fn not_a_data_dir(layout: &Layout) -> Result<()> {
    if layout.db().is_file() {
        return Ok(());
    }
    Err(Error::DataDir {
        path: layout.root().to_owned(),
        reason: "not an airlock data directory; create one with `airlock init`".into(),
    })
}

/// How stale the log state may be before a lookup that agrees with it reads the log's end
/// again (one that disagrees always does): a key revoked by another process, whose
/// revocation someone then undoes in the database, is refused within this long.
const LOG_FRESHNESS: Duration = Duration::from_secs(1);

/// Read access to the key table for a long-running server. Every lookup reads the database,
/// so a key revoked by another process stops working at its next request, and checks the
/// row against the audit log: a key whose row the log does not back is refused.
#[derive(Debug)]
pub struct KeyStore {
    conn: Mutex<Connection>,
    binding: Arc<Binding>,
}

impl KeyStore {
    /// Opens the key table of the data directory at `root`, and replays its audit log.
    pub fn open(root: &Path) -> Result<Self> {
        let layout = Layout::new(root);
        not_a_data_dir(&layout)?;
        Self::with_binding(root, Arc::new(Binding::open(&layout)?))
    }

    /// Opens the key table of the data directory at `root`, checked against `binding`
    /// (the log state of the same data directory, shared with its registry).
    pub fn with_binding(root: &Path, binding: Arc<Binding>) -> Result<Self> {
        let layout = Layout::new(root);
        not_a_data_dir(&layout)?;
        Ok(Self {
            conn: Mutex::new(db::open(&layout.db())?),
            binding,
        })
    }

    /// Every key row that disagrees with the audit log (keys that will be refused), and
    /// every key the log made that the table lacks.
    pub fn unbacked(&self) -> Result<Vec<Discrepancy>> {
        let state = self.binding.state()?;
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = conn
            .prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))?
            .query_map([], row_to_key)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(conn);
        Ok(replay::compare_keys(&state, &keys))
    }

    /// The key that `presented` is, if it is stored, unrevoked and unexpired.
    pub fn authenticate(
        &self,
        presented: &str,
    ) -> Result<std::result::Result<KeyInfo, KeyRejection>> {
        if presented.len() > MAX_KEY_LEN || !presented.starts_with("alk-") {
            return Ok(Err(KeyRejection::Unknown));
        }
        let hash = key_hash(presented);
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let found = conn
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"
            ))?
            .query_row(params![hash], row_to_key)
            .optional()?;
        drop(conn);
        let key = match found {
            None => return Ok(Err(KeyRejection::Unknown)),
            Some(key) if key.revoked_at.is_some() => {
                return Ok(Err(KeyRejection::Revoked { id: key.id }));
            }
            Some(key) => key,
        };
        // The row as the log made it, or why not: a key created since the state was read
        // is found once the log's end is read again.
        let mut state = self.binding.state_within(LOG_FRESHNESS)?;
        if replay::key_backed(&state, &key).is_err() {
            state = self.binding.state()?;
        }
        if let Err(why) = replay::key_backed(&state, &key) {
            return Ok(Err(KeyRejection::Unbacked {
                id: key.id,
                reason: why.to_string(),
            }));
        }
        Ok(if key.is_expired(SystemTime::now()) {
            Err(KeyRejection::Expired { id: key.id })
        } else {
            Ok(key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_carry_their_id() {
        let (id_a, key_a) = generate();
        let (id_b, key_b) = generate();
        assert_ne!(key_a, key_b);
        assert!(key_a.starts_with(&format!("alk-{id_a}-")));
        assert!(key_b.starts_with(&format!("alk-{id_b}-")));
        assert_eq!(id_a.len(), 16);
        assert!(key_a.len() <= MAX_KEY_LEN);
    }

    #[test]
    fn expiry_in_the_past_makes_a_key_inactive() {
        let key = KeyInfo {
            id: "00".into(),
            name: "n".into(),
            role: KeyRole::User,
            clearance: "internal".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: Some("2026-01-02T00:00:00Z".into()),
            revoked_at: None,
        };
        let after =
            humantime::parse_rfc3339("2026-01-03T00:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
        let before =
            humantime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(!key.is_active(after));
        assert!(key.is_active(before));
    }
}
