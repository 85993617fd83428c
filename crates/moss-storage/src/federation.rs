//! Queries for federation: other servers' signing keys.

use rusqlite::params;

use crate::{Reader, Result, Writer};

impl Reader<'_> {
    /// A server's stored key document and its validity.
    pub fn server_key_doc(&self, server_name: &str) -> Result<Option<(String, i64)>> {
        self.one("SELECT doc, valid_until_ts FROM server_key_docs WHERE server_name = ?1", [server_name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    /// `(key id, public key)` of a server's keys still valid at `now`.
    pub fn server_keys(&self, server_name: &str, now: i64) -> Result<Vec<(String, String)>> {
        self.collect(
            "SELECT key_id, public_key FROM server_keys WHERE server_name = ?1 AND valid_until_ts > ?2 ORDER BY key_id",
            params![server_name, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }
}

impl Writer<'_> {
    pub fn store_server_key_doc(&self, server_name: &str, doc: &str, valid_until_ts: i64) -> Result<()> {
        self.exec(
            "INSERT INTO server_key_docs (server_name, doc, valid_until_ts) VALUES (?1, ?2, ?3) \
             ON CONFLICT (server_name) DO UPDATE SET doc = excluded.doc, valid_until_ts = excluded.valid_until_ts",
            params![server_name, doc, valid_until_ts],
        )?;
        Ok(())
    }

    pub fn store_server_key(
        &self,
        server_name: &str,
        key_id: &str,
        public_key: &str,
        valid_until_ts: i64,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, fetched_ts) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (server_name, key_id) DO UPDATE SET \
               public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts",
            params![server_name, key_id, public_key, valid_until_ts, now],
        )?;
        Ok(())
    }
}
