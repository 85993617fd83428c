//! Local media as an admin manages it (`/_synapse/admin/v1/media`, a user's media, statistics):
//! deleting uploads (records and, when no other record shares them, the stored objects),
//! protecting them from quarantine, quarantining one.

use moss_storage::{AdminMediaRow, MediaOrder, MediaStatsOrder, Page, UserMediaStats};
use ruma::UserId;

use crate::{error::Error, Moss, Result};

impl Moss {
    pub async fn admin_user_media(
        &self,
        user: &UserId,
        order: MediaOrder,
        page: Page,
    ) -> Result<(Vec<AdminMediaRow>, i64)> {
        let u = user.to_string();
        self.db.read(move |r| Ok::<_, Error>(r.admin_user_media(&u, order, page)?)).await
    }

    pub async fn admin_media(&self, media_id: &str) -> Result<AdminMediaRow> {
        let id = media_id.to_owned();
        self.db
            .read(move |r| Ok::<_, Error>(r.admin_media(&id)?))
            .await?
            .ok_or_else(|| Error::not_found("Unknown media"))
    }

    /// An upload of this server, or another server's item kept here.
    pub async fn admin_media_info(&self, server: &str, media_id: &str) -> Result<AdminMediaRow> {
        if server == self.server_name.as_str() {
            return self.admin_media(media_id).await;
        }
        let (origin, id) = (server.to_owned(), media_id.to_owned());
        self.db
            .read(move |r| Ok::<_, Error>(r.admin_remote_media(&origin, &id)?))
            .await?
            .ok_or_else(|| Error::not_found("Unknown media"))
    }

    /// Deletes local uploads by id (a missing one is not an error); returns those deleted.
    pub async fn admin_delete_media(&self, ids: Vec<String>) -> Result<Vec<String>> {
        let mut known = Vec::new();
        for id in ids {
            let i = id.clone();
            if self.db.read(move |r| Ok::<_, Error>(r.admin_media(&i)?)).await?.is_some() {
                known.push(id);
            }
        }
        self.delete_media_ids(known.clone()).await?;
        Ok(known)
    }

    /// Deletes local uploads made before `before_ts` and larger than `size_gt` bytes, sparing
    /// protected ones and, with `keep_profiles`, any used as an avatar.
    pub async fn admin_delete_media_before(
        &self,
        before_ts: i64,
        size_gt: i64,
        keep_profiles: bool,
    ) -> Result<Vec<String>> {
        let server = self.server_name.to_string();
        let ids = self
            .db
            .read(move |r| Ok::<_, Error>(r.media_to_delete(&server, before_ts, size_gt, keep_profiles)?))
            .await?;
        self.delete_media_ids(ids.clone()).await?;
        Ok(ids)
    }

    pub async fn admin_protect_media(&self, media_id: &str, protected: bool) -> Result<()> {
        let id = media_id.to_owned();
        if self.db.write(move |w| Ok::<_, Error>(w.set_media_protected(&id, protected)?)).await? {
            Ok(())
        } else {
            Err(Error::not_found("Unknown media"))
        }
    }

    pub async fn admin_media_stats(
        &self,
        search: Option<String>,
        order: MediaStatsOrder,
        page: Page,
    ) -> Result<(Vec<UserMediaStats>, i64)> {
        self.db.read(move |r| Ok::<_, Error>(r.media_stats_by_user(search.as_deref(), order, page)?)).await
    }
}

impl Moss {
    /// Serves a quarantined upload again.
    pub async fn unquarantine(&self, media_id: &str) -> Result<()> {
        let id = media_id.to_owned();
        self.db.write(move |w| Ok::<_, Error>(w.unquarantine_media(&id)?)).await?;
        Ok(())
    }
}
