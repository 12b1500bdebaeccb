//! Creating, listing and revoking API keys, each change audited.

use std::time::{Duration, SystemTime};

use airlock_audit::{Entry, Outcome};
use rusqlite::{OptionalExtension as _, params};

use super::{Registry, now};
use crate::keys::{self, KEY_COLUMNS, KeyInfo, KeyRole, NewKey, row_to_key};
use crate::reference::check_name;
use crate::{Error, Result};

impl Registry {
    /// Creates a key named `name` with `role` and `clearance`, valid for `lifetime` if
    /// given. The secret is in the result and nowhere else.
    pub fn create_key(
        &mut self,
        name: &str,
        role: KeyRole,
        clearance: &str,
        lifetime: Option<Duration>,
    ) -> Result<NewKey> {
        check_name("key name", name)?;
        check_name("clearance", clearance)?;
        let expires_at = lifetime
            .map(|d| {
                SystemTime::now()
                    .checked_add(d)
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .ok_or_else(|| Error::Usage(format!("expiry {d:?} is too far away")))
            })
            .transpose()?;
        let (id, secret) = keys::generate();
        let info = KeyInfo {
            id: id.clone(),
            name: name.to_owned(),
            role,
            clearance: clearance.to_owned(),
            created_at: now(),
            expires_at,
            revoked_at: None,
        };
        let actor = self.actor.clone();
        let hash = keys::key_hash(&secret);
        let stored = info.clone();
        self.commit_audited(|tx| {
            tx.execute(
                "INSERT INTO api_keys (id, name, role, clearance, hash, created_at, created_by, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    stored.id,
                    stored.name,
                    stored.role.as_str(),
                    stored.clearance,
                    hash,
                    stored.created_at,
                    actor,
                    stored.expires_at
                ],
            )?;
            let mut entry = Entry::new(actor.clone(), "key.create", Outcome::Ok)
                .subject(format!("apikey:{}", stored.id))
                .detail("name", stored.name.clone())
                .detail("role", stored.role.as_str())
                .detail("clearance", stored.clearance.clone());
            if let Some(expires) = &stored.expires_at {
                entry = entry.detail("expires_at", expires.clone());
            }
            Ok(((), entry))
        })?;
        Ok(NewKey { info, secret })
    }

    /// Every key, newest first, revoked and expired ones included.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id"
        ))?;
        let keys = stmt
            .query_map([], row_to_key)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(keys)
    }

    /// Revokes the key with this id (or unique id prefix, or unique name). Takes effect at
    /// the server's next request with it.
    pub fn revoke_key(&mut self, id_or_name: &str) -> Result<KeyInfo> {
        let found = self.find_key(id_or_name)?;
        if found.revoked_at.is_some() {
            return Err(Error::Usage(format!(
                "key {} ({}) is already revoked",
                found.id, found.name
            )));
        }
        let actor = self.actor.clone();
        let at = now();
        let revoked = KeyInfo {
            revoked_at: Some(at.clone()),
            ..found
        };
        let entry_key = revoked.clone();
        self.commit_audited(|tx| {
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2",
                params![at, entry_key.id],
            )?;
            let entry = Entry::new(actor, "key.revoke", Outcome::Ok)
                .subject(format!("apikey:{}", entry_key.id))
                .detail("name", entry_key.name.clone());
            Ok(((), entry))
        })?;
        Ok(revoked)
    }

    fn find_key(&self, id_or_name: &str) -> Result<KeyInfo> {
        if let Some(key) = self
            .conn
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"),
                params![id_or_name],
                row_to_key,
            )
            .optional()?
        {
            return Ok(key);
        }
        let matches: Vec<KeyInfo> = self
            .list_keys()?
            .into_iter()
            .filter(|k| {
                k.name == id_or_name || (id_or_name.len() >= 4 && k.id.starts_with(id_or_name))
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::NotFound(format!(
                "no API key with id or name {id_or_name:?}"
            ))),
            many => Err(Error::Usage(format!(
                "{id_or_name:?} matches {} keys; give the full id",
                many.len()
            ))),
        }
    }
}
