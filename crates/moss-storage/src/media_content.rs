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
