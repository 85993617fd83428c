//! Queries about stored content shared by media records (local and other servers').

use crate::params;

use crate::{Reader, Result, Writer};

impl Reader<'_> {
    /// The object of content with this SHA-256 (hex) and size that a media record already refers
    /// to, other than `except`: an upload stored under a fresh name shares it instead. Records
    /// still listed as unconfirmed count only where `stored` says (by media id) that their
    /// content has arrived (the process that wrote it knows; otherwise it may never arrive).
    pub fn content_with_hash(
        &self,
        sha256: &str,
        size: i64,
        except: &str,
        stored: &dyn Fn(&str) -> bool,
    ) -> Result<Option<String>> {
        let local: Vec<(String, String, bool)> = self.collect(
            "SELECT content_key, media_id, \
               EXISTS (SELECT 1 FROM media_unconfirmed u WHERE u.media_id = m.media_id) \
             FROM media m WHERE sha256 = ?1 AND size = ?2 AND content_key IS NOT NULL \
             AND content_key <> ?3 LIMIT 16",
            params![sha256, size, except],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if let Some((key, _, _)) = local.into_iter().find(|(_, id, unconfirmed)| !unconfirmed || stored(id)) {
            return Ok(Some(key));
        }
        self.one(
            "SELECT content_key FROM remote_media WHERE sha256 = ?1 AND size = ?2 AND content_key <> ?3 LIMIT 1",
            params![sha256, size, except],
            |r| r.get(0),
        )
    }
}

impl Reader<'_> {
    /// Whether the object `content_key` may have readers or another writer: a record other than
    /// `own_media` (the upload asking, which may be recorded already) refers to it, or an upload
    /// other than the one holding the in-flight mark `own_mark` is writing it.
    pub fn content_in_use(&self, content_key: &str, own_mark: i64, own_media: &str) -> Result<bool> {
        Ok(self
            .one(
                "SELECT EXISTS (SELECT 1 FROM media WHERE content_key = ?1 AND media_id <> ?3) \
                   OR EXISTS (SELECT 1 FROM remote_media WHERE content_key = ?1) \
                   OR EXISTS (SELECT 1 FROM media_inflight WHERE content_key = ?1 AND rowid <> ?2)",
                params![content_key, own_mark, own_media],
                |r| r.get::<_, bool>(0),
            )?
            .unwrap_or(false))
    }
}

/// A local upload recorded while its content was still being written to the store, and not
/// yet known to have arrived there (see `media_unconfirmed` in the schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnconfirmedMedia {
    pub media_id: String,
    pub content_key: String,
    pub size: i64,
    /// The rest of the media row, for the metadata record beside the content.
    pub user_id: String,
    pub created_ts: i64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub sha256: Option<String>,
}

impl Writer<'_> {
    /// Lists a record just written as not yet confirmed by the store.
    pub fn record_unconfirmed(&self, media_id: &str, content_key: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO media_unconfirmed (media_id, content_key, started_ts) VALUES (?1, ?2, ?3)",
            params![media_id, content_key, now],
        )?;
        Ok(())
    }

    /// The store has the record's content.
    pub fn confirm_media(&self, media_id: &str) -> Result<()> {
        self.exec("DELETE FROM media_unconfirmed WHERE media_id = ?1", [media_id])?;
        Ok(())
    }
}

impl Reader<'_> {
    /// Records listed as unconfirmed since before `started_before`, oldest first.
    pub fn unconfirmed_media(&self, started_before: i64, limit: i64) -> Result<Vec<UnconfirmedMedia>> {
        self.collect(
            "SELECT u.media_id, u.content_key, COALESCE(m.size, 0), COALESCE(m.user_id, ''), \
               COALESCE(m.created_ts, 0), m.content_type, m.filename, m.sha256 FROM media_unconfirmed u \
             LEFT JOIN media m ON m.media_id = u.media_id WHERE u.started_ts < ?1 \
             ORDER BY u.started_ts LIMIT ?2",
            params![started_before, limit],
            |r| {
                Ok(UnconfirmedMedia {
                    media_id: r.get(0)?,
                    content_key: r.get(1)?,
                    size: r.get(2)?,
                    user_id: r.get(3)?,
                    created_ts: r.get(4)?,
                    content_type: r.get(5)?,
                    filename: r.get(6)?,
                    sha256: r.get(7)?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::UnconfirmedMedia;
    use crate::conformance::test_dbs;

    /// An upload recorded early is listed until confirmed or deleted, with its size, oldest
    /// first, and only once older than the cutoff; its own record does not make its content
    /// look in use to itself.
    #[test]
    fn unconfirmed_uploads_are_listed_until_confirmed_or_deleted() {
        for (name, db) in test_dbs() {
            db.write_blocking(|w| {
                for (id, key, ts) in [("m1", "c-1", 10), ("m2", "c-2", 20), ("m3", "c-3", 30)] {
                    assert!(w.store_media(id, "@u:x", ts, key, Some("image/png"), None, 4096 + ts, "ab")?);
                    w.record_unconfirmed(id, key, ts)?;
                }
                Ok::<_, crate::StorageError>(())
            })
            .unwrap();
            let listed = |cutoff| db.read_blocking(|r| r.unconfirmed_media(cutoff, 10)).unwrap();
            let ids = |v: Vec<UnconfirmedMedia>| v.into_iter().map(|m| m.media_id).collect::<Vec<_>>();
            assert_eq!(ids(listed(25)), ["m1", "m2"], "{name}: older than the cutoff only");
            let first = &listed(100)[0];
            assert_eq!((first.content_key.as_str(), first.size), ("c-1", 4106), "{name}");
            assert_eq!((first.user_id.as_str(), first.created_ts), ("@u:x", 10), "{name}");
            let described = (first.content_type.as_deref(), first.filename.as_deref(), first.sha256.as_deref());
            assert_eq!(described, (Some("image/png"), None, Some("ab")), "{name}");
            assert_eq!(ids(db.read_blocking(|r| r.unconfirmed_media(100, 1)).unwrap()), ["m1"], "{name}: limit");

            let own = db.read_blocking(|r| r.content_in_use("c-2", -1, "m2")).unwrap();
            let other = db.read_blocking(|r| r.content_in_use("c-2", -1, "m9")).unwrap();
            assert_eq!((own, other), (false, true), "{name}: a record other than the asker's");

            let found = |sha: &str, size| db.read_blocking(|r| r.content_with_hash(sha, size, "", &|_| false)).unwrap();
            assert_eq!(found("ab", 4106), None, "{name}: unconfirmed content is not shared");
            let known = db.read_blocking(|r| r.content_with_hash("ab", 4106, "", &|id| id == "m1")).unwrap();
            assert_eq!(known.as_deref(), Some("c-1"), "{name}: unless its content is known to have arrived");
            db.write_blocking(|w| w.confirm_media("m1")).unwrap();
            assert_eq!(found("ab", 4106).as_deref(), Some("c-1"), "{name}: confirmed content is");
            db.write_blocking(|w| w.delete_media("m2").map(|_| ())).unwrap();
            assert_eq!(ids(listed(100)), ["m3"], "{name}: confirmed and deleted ones gone");
            assert!(db.read_blocking(|r| r.media("m1")).unwrap().is_some(), "{name}: a confirmed record stays");
        }
    }
}
