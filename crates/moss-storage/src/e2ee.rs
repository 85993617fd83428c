//! Queries for end-to-end encryption: device keys, one-time and fallback keys, cross-signing
//! keys and signatures, device-list changes, to-device messages and server-side key backup.

use crate::{backend::Row, params};

use crate::{Reader, Result, Writer};

#[derive(Debug, Clone)]
pub struct ToDeviceRow {
    pub stream: i64,
    pub sender: String,
    pub kind: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct BackupVersionRow {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: String,
    pub etag: i64,
}

#[derive(Debug, Clone)]
pub struct BackupKeyRow {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: String,
}

#[derive(Debug, Clone)]
pub struct SignatureRow {
    pub signer_user: String,
    pub signer_key: String,
    pub signature: String,
}

impl Reader<'_> {
    pub fn device_keys(&self, user_id: &str, device_id: &str) -> Result<Option<String>> {
        self.one("SELECT keys FROM device_keys WHERE user_id = ?1 AND device_id = ?2", [user_id, device_id], |r| {
            r.get(0)
        })
    }

    /// `(device_id, keys)` for every device of the user that uploaded keys.
    pub fn all_device_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        self.collect(
            "SELECT k.device_id, k.keys FROM device_keys k JOIN devices d \
               ON d.user_id = k.user_id AND d.device_id = k.device_id \
             WHERE k.user_id = ?1 ORDER BY k.device_id",
            [user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    pub fn one_time_key(&self, user_id: &str, device_id: &str, key_id: &str) -> Result<Option<String>> {
        self.one(
            "SELECT key_json FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 AND key_id = ?3",
            [user_id, device_id, key_id],
            |r| r.get(0),
        )
    }

    /// `algorithm -> count` of the device's unclaimed one-time keys.
    pub fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> Result<Vec<(String, i64)>> {
        self.collect(
            "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm",
            [user_id, device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    pub fn unused_fallback_key_types(&self, user_id: &str, device_id: &str) -> Result<Vec<String>> {
        self.collect(
            "SELECT algorithm FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND used = 0 ORDER BY algorithm",
            [user_id, device_id],
            |r| r.get(0),
        )
    }

    /// `(key_id, key_json)` of the device's fallback key for `algorithm`.
    pub fn fallback_key(&self, user_id: &str, device_id: &str, algorithm: &str) -> Result<Option<(String, String)>> {
        self.one(
            "SELECT key_id, key_json FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3",
            [user_id, device_id, algorithm],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// `(public key, key_json)` of one of the user's cross-signing keys.
    pub fn cross_signing_key(&self, user_id: &str, key_type: &str) -> Result<Option<(String, String)>> {
        self.one(
            "SELECT public, key_json FROM cross_signing_keys WHERE user_id = ?1 AND key_type = ?2",
            [user_id, key_type],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    pub fn key_signatures(&self, target_user: &str, target_key: &str) -> Result<Vec<SignatureRow>> {
        self.collect(
            "SELECT signer_user, signer_key, signature FROM key_signatures \
             WHERE target_user = ?1 AND target_key = ?2 ORDER BY signer_user, signer_key",
            [target_user, target_key],
            |r| Ok(SignatureRow { signer_user: r.get(0)?, signer_key: r.get(1)?, signature: r.get(2)? }),
        )
    }

    /// Users among `candidates`' whose keys changed in `(from, to]`.
    pub fn device_list_changed_between(&self, from: i64, to: i64) -> Result<Vec<String>> {
        self.collect("SELECT user_id FROM device_list_changes WHERE stream > ?1 AND stream <= ?2", [from, to], |r| {
            r.get(0)
        })
    }

    /// Membership changes in `(from, to]` of rooms `user_id` is or was in: `(room, user, membership)`.
    pub fn membership_changes_between(&self, from: i64, to: i64) -> Result<Vec<(String, String, String)>> {
        self.collect(
            "SELECT room_id, user_id, membership FROM memberships WHERE stream > ?1 AND stream <= ?2",
            [from, to],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Whether two users are both joined to some room.
    pub fn share_a_room(&self, a: &str, b: &str) -> Result<bool> {
        Ok(self
            .one(
                "SELECT 1 FROM memberships x JOIN memberships y ON x.room_id = y.room_id \
                 WHERE x.user_id = ?1 AND y.user_id = ?2 AND x.membership = 'join' AND y.membership = 'join' LIMIT 1",
                [a, b],
                |r| r.get::<_, i64>(0),
            )?
            .is_some())
    }

    /// The device's queued to-device messages after `after`, oldest first.
    pub fn to_device_messages(
        &self,
        user_id: &str,
        device_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ToDeviceRow>> {
        self.collect(
            "SELECT stream, sender, type, content FROM to_device \
             WHERE user_id = ?1 AND device_id = ?2 AND stream > ?3 ORDER BY stream, rowid LIMIT ?4",
            params![user_id, device_id, after, limit],
            |r| Ok(ToDeviceRow { stream: r.get(0)?, sender: r.get(1)?, kind: r.get(2)?, content: r.get(3)? }),
        )
    }

    pub fn has_to_device_txn(&self, user_id: &str, device_id: &str, txn_id: &str) -> Result<bool> {
        Ok(self
            .one(
                "SELECT 1 FROM to_device_txns WHERE user_id = ?1 AND device_id = ?2 AND txn_id = ?3",
                [user_id, device_id, txn_id],
                |r| r.get::<_, i64>(0),
            )?
            .is_some())
    }

    /// The newest live backup version, or the given one.
    pub fn backup_version(&self, user_id: &str, version: Option<i64>) -> Result<Option<BackupVersionRow>> {
        let map = |r: &Row<'_>| {
            Ok(BackupVersionRow { version: r.get(0)?, algorithm: r.get(1)?, auth_data: r.get(2)?, etag: r.get(3)? })
        };
        match version {
            Some(v) => self.one(
                "SELECT version, algorithm, auth_data, etag FROM backup_versions \
                 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, v],
                map,
            ),
            None => self.one(
                "SELECT version, algorithm, auth_data, etag FROM backup_versions \
                 WHERE user_id = ?1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
                params![user_id],
                map,
            ),
        }
    }

    pub fn backup_key_count(&self, user_id: &str, version: i64) -> Result<i64> {
        Ok(self
            .one(
                "SELECT COUNT(*) FROM backup_keys WHERE user_id = ?1 AND version = ?2",
                params![user_id, version],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }

    /// Backed-up sessions of a version, optionally of one room or one session.
    pub fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKeyRow>> {
        self.collect(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data \
             FROM backup_keys WHERE user_id = ?1 AND version = ?2 \
               AND (CAST(?3 AS TEXT) IS NULL OR room_id = ?3) AND (CAST(?4 AS TEXT) IS NULL OR session_id = ?4) \
             ORDER BY room_id, session_id",
            params![user_id, version, room_id, session_id],
            |r| {
                Ok(BackupKeyRow {
                    room_id: r.get(0)?,
                    session_id: r.get(1)?,
                    first_message_index: r.get(2)?,
                    forwarded_count: r.get(3)?,
                    is_verified: r.get(4)?,
                    session_data: r.get(5)?,
                })
            },
        )
    }
}

impl Reader<'_> {
    /// `(device_id, device_data)` of the user's dehydrated device.
    pub fn dehydrated_device(&self, user_id: &str) -> Result<Option<(String, String)>> {
        self.one("SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = ?1", [user_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }
}

impl Writer<'_> {
    pub fn set_dehydrated_device(&self, user_id: &str, device_id: &str, device_data: &str) -> Result<()> {
        self.exec(
            "INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data",
            params![user_id, device_id, device_data],
        )?;
        Ok(())
    }

    pub fn delete_dehydrated_device(&self, user_id: &str) -> Result<()> {
        self.exec("DELETE FROM dehydrated_devices WHERE user_id = ?1", [user_id])?;
        Ok(())
    }

    pub fn set_device_keys(&self, user_id: &str, device_id: &str, keys: &str) -> Result<()> {
        self.exec(
            "INSERT INTO device_keys (user_id, device_id, keys) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET keys = excluded.keys",
            params![user_id, device_id, keys],
        )?;
        Ok(())
    }

    pub fn add_one_time_key(&self, user_id: &str, device_id: &str, key_id: &str, key_json: &str) -> Result<()> {
        let algorithm = key_id.split_once(':').map(|(a, _)| a).unwrap_or(key_id);
        self.exec(
            "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO NOTHING",
            params![user_id, device_id, algorithm, key_id, key_json],
        )?;
        Ok(())
    }

    /// Replaces the device's fallback key for the key's algorithm (a new key is unused).
    pub fn set_fallback_key(&self, user_id: &str, device_id: &str, key_id: &str, key_json: &str) -> Result<()> {
        let algorithm = key_id.split_once(':').map(|(a, _)| a).unwrap_or(key_id);
        self.exec(
            "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
             VALUES (?1, ?2, ?3, ?4, ?5, 0) \
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET \
               used = CASE WHEN fallback_keys.key_id = excluded.key_id AND fallback_keys.key_json = excluded.key_json \
                           THEN fallback_keys.used ELSE 0 END, \
               key_id = excluded.key_id, key_json = excluded.key_json",
            params![user_id, device_id, algorithm, key_id, key_json],
        )?;
        Ok(())
    }

    /// Takes one one-time key of `algorithm` from the device, or else its fallback key (marking it
    /// used). Runs inside the single write transaction, so no two claims get the same key.
    pub fn claim_key(&self, user_id: &str, device_id: &str, algorithm: &str) -> Result<Option<(String, String)>> {
        let otk = self.one(
            "DELETE FROM one_time_keys WHERE rowid = (SELECT rowid FROM one_time_keys \
               WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 ORDER BY key_id LIMIT 1) \
             RETURNING key_id, key_json",
            [user_id, device_id, algorithm],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if otk.is_some() {
            return Ok(otk);
        }
        self.one(
            "UPDATE fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 \
             RETURNING key_id, key_json",
            [user_id, device_id, algorithm],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    pub fn set_cross_signing_key(&self, user_id: &str, key_type: &str, public: &str, key_json: &str) -> Result<()> {
        self.exec(
            "INSERT INTO cross_signing_keys (user_id, key_type, public, key_json) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (user_id, key_type) DO UPDATE SET public = excluded.public, key_json = excluded.key_json",
            params![user_id, key_type, public, key_json],
        )?;
        Ok(())
    }

    pub fn add_key_signature(
        &self,
        target_user: &str,
        target_key: &str,
        signer_user: &str,
        signer_key: &str,
        signature: &str,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO key_signatures (target_user, target_key, signer_user, signer_key, signature) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (target_user, target_key, signer_user, signer_key) DO UPDATE SET signature = excluded.signature",
            params![target_user, target_key, signer_user, signer_key, signature],
        )?;
        Ok(())
    }

    /// Records that the user's devices or cross-signing keys changed at `stream`.
    pub fn mark_device_list_changed(&self, user_id: &str, stream: i64) -> Result<()> {
        self.exec(
            "INSERT INTO device_list_changes (user_id, stream) VALUES (?1, ?2) \
             ON CONFLICT (user_id) DO UPDATE SET stream = excluded.stream",
            params![user_id, stream],
        )?;
        Ok(())
    }

    /// Forgets everything encryption-related about a device that is being deleted.
    pub fn delete_device_e2ee(&self, user_id: &str, device_id: &str) -> Result<()> {
        for table in ["device_keys", "one_time_keys", "fallback_keys", "to_device"] {
            self.exec(&format!("DELETE FROM {table} WHERE user_id = ?1 AND device_id = ?2"), [user_id, device_id])?;
        }
        self.exec("DELETE FROM key_signatures WHERE target_user = ?1 AND target_key = ?2", [user_id, device_id])?;
        Ok(())
    }

    pub fn queue_to_device(
        &self,
        stream: i64,
        user_id: &str,
        device_id: &str,
        sender: &str,
        kind: &str,
        content: &str,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO to_device (stream, user_id, device_id, sender, type, content) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![stream, user_id, device_id, sender, kind, content],
        )?;
        Ok(())
    }

    /// Deletes the messages a device acknowledged by syncing with a token past them.
    pub fn ack_to_device(&self, user_id: &str, device_id: &str, up_to: i64) -> Result<usize> {
        self.exec(
            "DELETE FROM to_device WHERE user_id = ?1 AND device_id = ?2 AND stream <= ?3",
            params![user_id, device_id, up_to],
        )
    }

    /// Returns false if the transaction id was used before.
    pub fn record_to_device_txn(&self, user_id: &str, device_id: &str, txn_id: &str) -> Result<bool> {
        Ok(self.exec(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            [user_id, device_id, txn_id],
        )? == 1)
    }

    pub fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> Result<i64> {
        let next: i64 = self
            .one("SELECT COALESCE(MAX(version), 0) + 1 FROM backup_versions WHERE user_id = ?1", [user_id], |r| {
                r.get(0)
            })?
            .unwrap_or(1);
        self.exec(
            "INSERT INTO backup_versions (user_id, version, algorithm, auth_data) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, next, algorithm, auth_data],
        )?;
        Ok(next)
    }

    pub fn update_backup_version(&self, user_id: &str, version: i64, auth_data: &str) -> Result<bool> {
        Ok(self.exec(
            "UPDATE backup_versions SET auth_data = ?3 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
            params![user_id, version, auth_data],
        )? == 1)
    }

    pub fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<bool> {
        self.exec("DELETE FROM backup_keys WHERE user_id = ?1 AND version = ?2", params![user_id, version])?;
        Ok(self.exec(
            "UPDATE backup_versions SET deleted = 1 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
            params![user_id, version],
        )? == 1)
    }

    pub fn bump_backup_etag(&self, user_id: &str, version: i64) -> Result<()> {
        self.exec(
            "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
            params![user_id, version],
        )?;
        Ok(())
    }

    pub fn put_backup_key(&self, user_id: &str, version: i64, k: &BackupKeyRow) -> Result<()> {
        self.exec(
            "INSERT INTO backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, \
               is_verified, session_data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
               first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count, \
               is_verified = excluded.is_verified, session_data = excluded.session_data",
            params![
                user_id,
                version,
                k.room_id,
                k.session_id,
                k.first_message_index,
                k.forwarded_count,
                k.is_verified,
                k.session_data
            ],
        )?;
        Ok(())
    }

    pub fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<usize> {
        self.exec(
            "DELETE FROM backup_keys WHERE user_id = ?1 AND version = ?2 \
               AND (CAST(?3 AS TEXT) IS NULL OR room_id = ?3) AND (CAST(?4 AS TEXT) IS NULL OR session_id = ?4)",
            params![user_id, version, room_id, session_id],
        )
    }
}
