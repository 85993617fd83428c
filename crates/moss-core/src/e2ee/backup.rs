//! Server-side room key backup (`/room_keys/...`): versions, each holding encrypted session keys
//! the server cannot read. A new session replaces a stored one only if it is "better" per the
//! spec: verified beats unverified, then a lower first message index, then fewer forwards.

use std::collections::BTreeMap;

use moss_storage::BackupKeyRow;
use ruma::UserId;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::Moss;

/// A backup version as `GET /room_keys/version` shows it.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    pub version: String,
    pub algorithm: Value,
    pub count: u64,
    pub etag: String,
}

/// One session of the backup, as the client sent it.
#[derive(Debug, Clone)]
pub struct BackupSession {
    pub room_id: String,
    pub session_id: String,
    pub data: Value,
}

/// `m.megolm_backup.v1.curve25519-aes-sha2`, the spec's only key backup algorithm.
const BACKUP_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn not_found() -> Error {
    Error::not_found("unknown backup version")
}

fn parse_version(v: &str) -> Result<i64> {
    v.parse::<i64>().map_err(|_| not_found())
}

fn check_algorithm(body: &Value) -> Result<(String, String)> {
    let algorithm =
        body["algorithm"].as_str().filter(|a| !a.is_empty()).ok_or_else(|| Error::bad_json("algorithm is required"))?;
    // The one backup algorithm the spec defines; anything else could not be served back as a
    // valid version (and no client could use it).
    if algorithm != BACKUP_ALGORITHM {
        return Err(Error::invalid_param(format!(
            "unsupported backup algorithm {algorithm:?}: only {BACKUP_ALGORITHM}"
        )));
    }
    if !body["auth_data"].is_object() {
        return Err(Error::bad_json("auth_data must be an object"));
    }
    let auth_data = serde_json::to_string(&body["auth_data"])?;
    if auth_data.len() > super::MAX_KEY_JSON {
        return Err(Error::too_large("auth_data is too large"));
    }
    Ok((algorithm.to_owned(), auth_data))
}

fn session_row(s: &BackupSession) -> Result<BackupKeyRow> {
    let d = &s.data;
    let int = |k: &str| {
        d[k].as_i64().filter(|n| *n >= 0).ok_or_else(|| Error::bad_json(format!("{k} must be a non-negative integer")))
    };
    if !d["session_data"].is_object() {
        return Err(Error::bad_json("session_data must be an object"));
    }
    let session_data = serde_json::to_string(&d["session_data"])?;
    if session_data.len() > super::MAX_KEY_JSON {
        return Err(Error::too_large("session_data is too large"));
    }
    Ok(BackupKeyRow {
        room_id: s.room_id.clone(),
        session_id: s.session_id.clone(),
        first_message_index: int("first_message_index")?,
        forwarded_count: int("forwarded_count")?,
        is_verified: d["is_verified"].as_bool().ok_or_else(|| Error::bad_json("is_verified must be a boolean"))?,
        session_data,
    })
}

/// Whether `new` should replace `old`.
fn is_better(new: &BackupKeyRow, old: &BackupKeyRow) -> bool {
    if new.is_verified != old.is_verified {
        return new.is_verified;
    }
    if new.first_message_index != old.first_message_index {
        return new.first_message_index < old.first_message_index;
    }
    new.forwarded_count < old.forwarded_count
}

pub fn session_json(row: &BackupKeyRow) -> Result<Value> {
    Ok(json!({
        "first_message_index": row.first_message_index,
        "forwarded_count": row.forwarded_count,
        "is_verified": row.is_verified,
        "session_data": serde_json::from_str::<Value>(&row.session_data)?,
    }))
}

fn wrong_version(current: Option<i64>) -> Error {
    let current = current.map(|v| v.to_string()).unwrap_or_default();
    let kind = serde_json::from_value(json!({"errcode": "M_WRONG_ROOM_KEYS_VERSION", "current_version": current}))
        .unwrap_or(ruma::api::error::ErrorKind::Unknown);
    Error::new(kind, 403, format!("the current backup version is {current:?}"))
}

impl Moss {
    pub async fn create_backup_version(&self, user: &UserId, body: Value) -> Result<String> {
        let (algorithm, auth_data) = check_algorithm(&body)?;
        let u = user.to_string();
        let v = self.db.write(move |w| Ok::<_, Error>(w.create_backup_version(&u, &algorithm, &auth_data)?)).await?;
        Ok(v.to_string())
    }

    /// The latest backup version, or the given one.
    pub async fn backup_info(&self, user: &UserId, version: Option<&str>) -> Result<BackupInfo> {
        let version = version.map(parse_version).transpose()?;
        let u = user.to_string();
        self.db
            .read(move |r| {
                let row = r.backup_version(&u, version)?.ok_or_else(not_found)?;
                Ok(BackupInfo {
                    version: row.version.to_string(),
                    algorithm: json!({
                        "algorithm": row.algorithm,
                        "auth_data": serde_json::from_str::<Value>(&row.auth_data)?,
                    }),
                    count: r.backup_key_count(&u, row.version)? as u64,
                    etag: row.etag.to_string(),
                })
            })
            .await
    }

    pub async fn update_backup_version(&self, user: &UserId, version: &str, body: Value) -> Result<()> {
        let version = parse_version(version)?;
        let (algorithm, auth_data) = check_algorithm(&body)?;
        let u = user.to_string();
        self.db
            .write(move |w| {
                let row = w.backup_version(&u, Some(version))?.ok_or_else(not_found)?;
                if row.algorithm != algorithm {
                    return Err(Error::invalid_param("the algorithm of a backup version cannot change"));
                }
                w.update_backup_version(&u, version, &auth_data)?;
                Ok(())
            })
            .await
    }

    pub async fn delete_backup_version(&self, user: &UserId, version: &str) -> Result<()> {
        let version = parse_version(version)?;
        let u = user.to_string();
        self.db.write(move |w| if w.delete_backup_version(&u, version)? { Ok(()) } else { Err(not_found()) }).await
    }

    /// Stores sessions into the current version; returns `(etag, count)`.
    pub async fn put_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        sessions: Vec<BackupSession>,
    ) -> Result<(String, u64)> {
        let version = parse_version(version).map_err(|_| wrong_version(None))?;
        let rows = sessions.iter().map(session_row).collect::<Result<Vec<_>>>()?;
        let u = user.to_string();
        self.db
            .write(move |w| {
                let current = w.backup_version(&u, None)?.map(|v| v.version);
                if current != Some(version) {
                    return Err(wrong_version(current));
                }
                let mut changed = false;
                for row in rows {
                    let old = w.backup_keys(&u, version, Some(&row.room_id), Some(&row.session_id))?.pop();
                    if old.as_ref().is_none_or(|old| is_better(&row, old)) {
                        w.put_backup_key(&u, version, &row)?;
                        changed = true;
                    }
                }
                if changed {
                    w.bump_backup_etag(&u, version)?;
                }
                let etag = w.backup_version(&u, Some(version))?.map(|v| v.etag).unwrap_or(0);
                Ok((etag.to_string(), w.backup_key_count(&u, version)? as u64))
            })
            .await
    }

    /// Backed-up sessions: all, one room's, or one session.
    pub async fn backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room_id: Option<String>,
        session_id: Option<String>,
    ) -> Result<Vec<BackupKeyRow>> {
        let version = parse_version(version)?;
        let u = user.to_string();
        self.db
            .read(move |r| {
                r.backup_version(&u, Some(version))?.ok_or_else(not_found)?;
                Ok(r.backup_keys(&u, version, room_id.as_deref(), session_id.as_deref())?)
            })
            .await
    }

    /// Deletes sessions; returns `(etag, count)`.
    pub async fn delete_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room_id: Option<String>,
        session_id: Option<String>,
    ) -> Result<(String, u64)> {
        let version = parse_version(version)?;
        let u = user.to_string();
        self.db
            .write(move |w| {
                w.backup_version(&u, Some(version))?.ok_or_else(not_found)?;
                if w.delete_backup_keys(&u, version, room_id.as_deref(), session_id.as_deref())? > 0 {
                    w.bump_backup_etag(&u, version)?;
                }
                let etag = w.backup_version(&u, Some(version))?.map(|v| v.etag).unwrap_or(0);
                Ok((etag.to_string(), w.backup_key_count(&u, version)? as u64))
            })
            .await
    }
}

/// Groups rows as `room -> session -> data`, the shape `GET /room_keys/keys` answers with.
pub fn group_by_room(rows: &[BackupKeyRow]) -> Result<BTreeMap<String, BTreeMap<String, Value>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for row in rows {
        out.entry(row.room_id.clone()).or_default().insert(row.session_id.clone(), session_json(row)?);
    }
    Ok(out)
}
