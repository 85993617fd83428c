//! Queries about stored content shared by media records (local and other servers').

use crate::params;

use crate::{Reader, Result};

impl Reader<'_> {
    /// The object of content with this SHA-256 (hex) and size that a media record already refers
    /// to, other than `except`: an upload stored under a fresh name shares it instead.
    pub fn content_with_hash(&self, sha256: &str, size: i64, except: &str) -> Result<Option<String>> {
        let local = self.one(
            "SELECT content_key FROM media WHERE sha256 = ?1 AND size = ?2 AND content_key IS NOT NULL \
             AND content_key <> ?3 LIMIT 1",
            params![sha256, size, except],
            |r| r.get(0),
        )?;
        if local.is_some() {
            return Ok(local);
        }
        self.one(
            "SELECT content_key FROM remote_media WHERE sha256 = ?1 AND size = ?2 AND content_key <> ?3 LIMIT 1",
            params![sha256, size, except],
            |r| r.get(0),
        )
    }
}

impl Reader<'_> {
    /// Whether the object `content_key` may have readers or another writer: a record refers to
    /// it, or an upload other than the one holding the in-flight mark `own_mark` is writing it.
    pub fn content_in_use(&self, content_key: &str, own_mark: i64) -> Result<bool> {
        Ok(self
            .one(
                "SELECT EXISTS (SELECT 1 FROM media WHERE content_key = ?1) \
                   OR EXISTS (SELECT 1 FROM remote_media WHERE content_key = ?1) \
                   OR EXISTS (SELECT 1 FROM media_inflight WHERE content_key = ?1 AND rowid <> ?2)",
                params![content_key, own_mark],
                |r| r.get::<_, bool>(0),
            )?
            .unwrap_or(false))
    }
}
