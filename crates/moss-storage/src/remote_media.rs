//! Queries for media of other servers kept in our store.

use crate::params;

use crate::{MediaRow, Reader, Result, Writer};

/// What `store_remote_media` records.
#[derive(Debug, Clone)]
pub struct NewRemoteMedia<'a> {
    pub origin: &'a str,
    pub media_id: &'a str,
    pub content_key: &'a str,
    pub content_type: Option<&'a str>,
    pub filename: Option<&'a str>,
    pub size: i64,
    pub sha256: &'a str,
    pub created_ts: i64,
    pub quarantined: bool,
}

impl Reader<'_> {
    /// Remote media as a [`MediaRow`] (its `media_id` is `origin/media_id`, `user_id` empty), so
    /// the download and thumbnail paths serve it like local media.
    pub fn remote_media(&self, origin: &str, media_id: &str) -> Result<Option<MediaRow>> {
        self.one(
            "SELECT origin || '/' || media_id, created_ts, content_key, content_type, filename, size, quarantined \
             FROM remote_media WHERE origin = ?1 AND media_id = ?2",
            [origin, media_id],
            |r| {
                Ok(MediaRow {
                    media_id: r.get(0)?,
                    user_id: String::new(),
                    created_ts: r.get(1)?,
                    expires_ts: None,
                    content_key: Some(r.get(2)?),
                    content_type: r.get(3)?,
                    filename: r.get(4)?,
                    size: Some(r.get(5)?),
                    legacy: false,
                    quarantined: r.get(6)?,
                })
            },
        )
    }

    pub fn remote_media_count(&self) -> Result<i64> {
        Ok(self.one("SELECT COUNT(*) FROM remote_media", [], |r| r.get(0))?.unwrap_or(0))
    }
}

impl Writer<'_> {
    /// Returns false if the item was already recorded.
    pub fn store_remote_media(&self, m: &NewRemoteMedia<'_>) -> Result<bool> {
        Ok(self.exec(
            "INSERT INTO remote_media (origin, media_id, content_key, content_type, filename, size, sha256, created_ts, \
               quarantined) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
            params![
                m.origin,
                m.media_id,
                m.content_key,
                m.content_type,
                m.filename,
                m.size,
                m.sha256,
                m.created_ts,
                m.quarantined
            ],
        )? == 1)
    }

    pub fn touch_remote_media(&self, origin: &str, media_id: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE remote_media SET last_access_ts = ?3 WHERE origin = ?1 AND media_id = ?2",
            params![origin, media_id, now],
        )?;
        Ok(())
    }
}

impl Reader<'_> {
    /// Other servers' media kept here and not served since `before` (ms; never served: kept
    /// before it), `(origin, media id, content key)`.
    pub fn remote_media_unused_since(&self, before: i64) -> Result<Vec<(String, String, String)>> {
        self.collect(
            "SELECT origin, media_id, content_key FROM remote_media WHERE COALESCE(last_access_ts, created_ts) < ?1",
            [before],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }
}

impl crate::Writer<'_> {
    /// Forgets a kept remote item; returns the object keys no record points to any more (its
    /// content and thumbnails), to delete from the store.
    pub fn delete_remote_media(&self, origin: &str, media_id: &str, content_key: &str) -> Result<Vec<String>> {
        self.exec("DELETE FROM remote_media WHERE origin = ?1 AND media_id = ?2", [origin, media_id])?;
        let writing = self
            .one("SELECT 1 FROM media_inflight WHERE content_key = ?1 LIMIT 1", [content_key], |r| r.get::<_, i64>(0))?
            .is_some();
        if self.media_referencing(content_key)? > 0 || writing {
            return Ok(Vec::new());
        }
        let mut gone: Vec<String> =
            self.collect("SELECT thumb_key FROM media_thumbnails WHERE content_key = ?1", [content_key], |r| r.get(0))?;
        self.exec("DELETE FROM media_thumbnails WHERE content_key = ?1", [content_key])?;
        gone.push(content_key.to_owned());
        Ok(gone)
    }
}
