//! Media maintenance for operators: statistics, purging old media, and sweeping objects no
//! record points to (left by a crash between storing an object and recording it).

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt;
use moss_storage::MediaStats;

use super::MediaMeta;
use crate::{
    error::{Error, Result},
    now_ms, Moss,
};

/// In-flight uploads younger than this are never swept.
const INFLIGHT_GRACE_MS: u64 = 60 * 60 * 1000;

/// How often uploads recorded ahead of their content are checked, and how many at a time.
const RECONCILE_EVERY: Duration = Duration::from_secs(10 * 60);
const RECONCILE_BATCH: i64 = 100;

/// What checking uploads left unconfirmed found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Their content had arrived: kept.
    pub kept: u64,
    /// It had not: the record is gone.
    pub dropped: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PurgeReport {
    pub examined: u64,
    pub deleted: u64,
}

impl Moss {
    /// Checks, now and every few minutes, the uploads recorded while their content was written
    /// that no confirmation followed (a crash in between, `EarlyRecord` in `media`). Alone on
    /// its database, this process knows that every such record from before it started belongs
    /// to an upload that died with the last run; on a shared database another process may
    /// still be writing one, so only those older than the in-flight grace are decided.
    pub fn spawn_media_reconcile(self: &Arc<Self>) {
        let moss = Arc::downgrade(self);
        let started = now_ms();
        let alone = !self.db.is_shared();
        tokio::spawn(async move {
            let mut first = true;
            let mut tick = tokio::time::interval(RECONCILE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(moss) = moss.upgrade() else { break };
                let grace_cutoff = now_ms().saturating_sub(INFLIGHT_GRACE_MS);
                let cutoff = if first && alone { started.max(grace_cutoff) } else { grace_cutoff };
                first = false;
                match moss.reconcile_unconfirmed_media(cutoff).await {
                    Ok(r) if r != Reconciled::default() => tracing::info!(
                        kept = r.kept,
                        dropped = r.dropped,
                        "checked uploads a crash left unconfirmed: kept those the store has, dropped the others"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("checking unconfirmed uploads: {e}"),
                }
            }
        });
    }

    /// Decides the unconfirmed uploads recorded before `cutoff_ms`: a record whose content the
    /// store has is confirmed, one whose content never arrived is deleted (no client was told
    /// its id). Those the store cannot answer for now are left for the next time.
    pub async fn reconcile_unconfirmed_media(&self, cutoff_ms: u64) -> Result<Reconciled> {
        let mut done = Reconciled::default();
        loop {
            let batch =
                self.db.read(move |r| Ok::<_, Error>(r.unconfirmed_media(cutoff_ms as i64, RECONCILE_BATCH)?)).await?;
            let more = batch.len() as i64 == RECONCILE_BATCH;
            for row in batch {
                match self.media.store.head(&row.content_key).await {
                    Ok(Some(info)) if info.size as i64 == row.size => {
                        // The content arrived; the metadata record beside it may not have.
                        let record = serde_json::to_vec(&MediaMeta {
                            media_id: row.media_id.clone(),
                            server_name: self.server_name.to_string(),
                            user_id: row.user_id,
                            content_key: row.content_key,
                            content_type: row.content_type,
                            filename: row.filename,
                            size: row.size as u64,
                            sha256: row.sha256.unwrap_or_default(),
                            created_ts: row.created_ts as u64,
                        })?;
                        let (key, len) = (self.media.meta_key(&row.media_id), record.len() as u64);
                        let written = match self.media.store.head(&key).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => self.media.store.put(&key, len, moss_media::store::once(record)).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = written {
                            tracing::warn!(error = %e, "cannot write unconfirmed uploads' records now");
                            return Ok(done);
                        }
                        let id = row.media_id;
                        self.db.write(move |w| Ok::<_, Error>(w.confirm_media(&id)?)).await?;
                        done.kept += 1;
                    }
                    Ok(_) => {
                        tracing::warn!(media_id = %row.media_id, "an upload's content never reached the store: its record goes");
                        self.delete_media_ids(vec![row.media_id]).await?;
                        done.dropped += 1;
                    }
                    Err(e) => {
                        // The store is not answering: all of it waits for the next round.
                        tracing::warn!(media_id = %row.media_id, error = %e, "cannot check unconfirmed uploads now");
                        return Ok(done);
                    }
                }
            }
            if !more {
                return Ok(done);
            }
        }
    }

    pub async fn media_stats(&self) -> Result<MediaStats> {
        self.db.read(|r| Ok::<_, Error>(r.media_stats()?)).await
    }

    /// Deletes objects in the store that no database record references.
    pub async fn purge_orphans(&self, dry_run: bool, progress: impl Fn(u64)) -> Result<PurgeReport> {
        let has_media = self.db.read(|r| Ok::<_, Error>(r.has_media()?)).await?;
        if !has_media {
            // A lost or fresh database would make every object look orphaned.
            return Err(Error::internal(
                "the database records no media, so every object would look orphaned; restore the database \
                 (or recover files with `moss media decrypt`) before purging",
            ));
        }
        // List first, then read what is referenced: an object listed was written before the
        // listing, so its upload had marked it in flight (or recorded it) before that, and the
        // read that follows sees the mark or the record. (Read the other way round, an upload
        // finishing in between would look orphaned.)
        let names: Vec<String> = self.media.store.list().filter_map(|k| async move { k.ok() }).collect().await;
        let cutoff = now_ms().saturating_sub(INFLIGHT_GRACE_MS) as i64;
        let (mut keep, ids) = self.db.read(move |r| Ok::<_, Error>(r.referenced_media(cutoff)?)).await?;
        keep.extend(ids.iter().map(|id| self.media.meta_key(id)));
        let keep: HashSet<String> = keep;
        let mut report = PurgeReport::default();
        for name in names {
            report.examined += 1;
            progress(report.examined);
            if keep.contains(&name) {
                continue;
            }
            if !dry_run {
                self.media.store.delete(&name).await.map_err(|e| Error::internal(format!("deleting {name}: {e}")))?;
            }
            report.deleted += 1;
        }
        if !dry_run {
            self.db.write(move |w| Ok::<_, Error>(w.clear_stale_inflight(cutoff)?)).await?;
        }
        Ok(report)
    }

    /// Deletes media uploaded before `cutoff_ms` (records and, when unshared, their objects).
    pub async fn purge_older_than(&self, cutoff_ms: u64, dry_run: bool) -> Result<PurgeReport> {
        let ids = self.db.read(move |r| Ok::<_, Error>(r.media_older_than(cutoff_ms as i64)?)).await?;
        self.purge_media(ids, dry_run).await
    }

    /// Deletes media neither uploaded nor served since `cutoff_ms`.
    pub async fn purge_unused_since(&self, cutoff_ms: u64, dry_run: bool) -> Result<PurgeReport> {
        let ids = self.db.read(move |r| Ok::<_, Error>(r.media_unused_since(cutoff_ms as i64)?)).await?;
        self.purge_media(ids, dry_run).await
    }

    async fn purge_media(&self, ids: Vec<String>, dry_run: bool) -> Result<PurgeReport> {
        let mut report = PurgeReport { examined: ids.len() as u64, deleted: 0 };
        if dry_run {
            report.deleted = report.examined;
            return Ok(report);
        }
        report.deleted = self.delete_media_ids(ids).await?;
        Ok(report)
    }

    /// Deletes media records and, when no other record shares their content, the objects.
    pub(crate) async fn delete_media_ids(&self, ids: Vec<String>) -> Result<u64> {
        let mut deleted = 0;
        for id in ids {
            let i = id.clone();
            let content = self.db.read(move |r| Ok::<_, Error>(r.media_content_key(&i)?)).await?;
            // Held from the decision to the deletion, so an upload of the same content either
            // marked itself in flight before (and the object stays) or writes it again after.
            let _guard = match &content {
                Some(k) => Some(self.media.content_lock(k).await),
                None => None,
            };
            let i = id.clone();
            let mut gone = self.db.write(move |w| Ok::<_, Error>(w.delete_media(&i)?)).await?;
            gone.push(self.media.meta_key(&id));
            for key in gone {
                self.media.store.delete(&key).await.map_err(|e| Error::internal(format!("deleting {key}: {e}")))?;
            }
            deleted += 1;
        }
        Ok(deleted)
    }
}

impl Moss {
    /// Deletes other servers' media kept here and not served since `before_ms` (Synapse's
    /// `purge_media_cache`); it is fetched again if someone asks. Returns how many items.
    pub async fn purge_remote_media_before(&self, before_ms: i64) -> Result<u64> {
        let items = self.db.read(move |r| Ok::<_, Error>(r.remote_media_unused_since(before_ms)?)).await?;
        let mut deleted = 0;
        for (origin, media_id, key) in items {
            // Held from the decision to the deletion, as for local media.
            let _guard = self.media.content_lock(&key).await;
            let (o, id, k) = (origin.clone(), media_id.clone(), key.clone());
            let mut gone = self.db.write(move |w| Ok::<_, Error>(w.delete_remote_media(&o, &id, &k)?)).await?;
            gone.push(self.media.meta_key(&format!("{origin}/{media_id}")));
            for key in gone {
                self.media.store.delete(&key).await.map_err(|e| Error::internal(format!("deleting {key}: {e}")))?;
            }
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Stops serving media (one `mxc://` URI, or everything a user uploaded); the content stays.
    pub async fn quarantine(&self, mxc: Option<&str>, user: Option<&ruma::UserId>) -> Result<usize> {
        let id = match mxc {
            Some(uri) => {
                let rest = uri.strip_prefix("mxc://").ok_or_else(|| Error::invalid_param("expected an mxc:// URI"))?;
                let (server, id) =
                    rest.split_once('/').ok_or_else(|| Error::invalid_param("expected mxc://server/id"))?;
                if server != self.server_name.as_str() {
                    return Err(Error::invalid_param("that media belongs to another server"));
                }
                Some(id.to_owned())
            }
            None => None,
        };
        let user = user.map(|u| u.to_string());
        self.db.write(move |w| Ok::<_, Error>(w.quarantine_media(id.as_deref(), user.as_deref())?)).await
    }
}
