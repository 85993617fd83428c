//! `moss media import-synapse`: bring a Synapse media store over, keeping every `mxc://` URI.

use std::path::Path;

use moss_storage::synapse::{
    synapse_local_media, synapse_media_postgres, synapse_remote_media, SynapseLocalMedia, SynapseRemoteMedia,
};
use ruma::UserId;

use crate::{
    error::{Error, Result},
    Moss,
};

#[derive(Debug, Default, Clone, Copy)]
pub struct ImportReport {
    pub rows: u64,
    pub imported: u64,
    /// Of `imported`: other servers' media from Synapse's remote cache.
    pub remote: u64,
    pub already: u64,
    pub missing_files: u64,
    pub skipped: u64,
}

/// Where Synapse keeps a cached remote file: `remote_content/<origin>/ab/cd/efgh…`, named by its
/// filesystem id.
fn remote_path(store: &Path, origin: &str, filesystem_id: &str) -> Option<std::path::PathBuf> {
    let safe = |s: &str| !s.is_empty() && !s.contains('/') && !s.contains("..");
    (filesystem_id.len() > 4 && filesystem_id.is_ascii() && safe(origin) && safe(filesystem_id)).then(|| {
        store
            .join("remote_content")
            .join(origin)
            .join(&filesystem_id[..2])
            .join(&filesystem_id[2..4])
            .join(&filesystem_id[4..])
    })
}

/// Where Synapse keeps a local upload: `local_content/ab/cd/efgh…`.
fn local_path(store: &Path, media_id: &str) -> Option<std::path::PathBuf> {
    (media_id.len() > 4 && media_id.is_ascii())
        .then(|| store.join("local_content").join(&media_id[..2]).join(&media_id[2..4]).join(&media_id[4..]))
}

impl Moss {
    /// `database` is the path of Synapse's SQLite file or a `postgres://` URL.
    pub async fn import_synapse(
        &self,
        media_store: &Path,
        database: &str,
        progress: impl Fn(ImportReport),
    ) -> Result<ImportReport> {
        let read_error = |e: moss_storage::StorageError| Error::internal(format!("reading the Synapse database: {e}"));
        let (rows, remote): (Vec<SynapseLocalMedia>, Vec<SynapseRemoteMedia>) =
            if database.starts_with("postgres://") || database.starts_with("postgresql://") {
                synapse_media_postgres(database).await.map_err(read_error)?
            } else {
                let db = std::path::PathBuf::from(database);
                tokio::task::spawn_blocking(move || {
                    Ok::<_, moss_storage::StorageError>((synapse_local_media(&db)?, synapse_remote_media(&db)?))
                })
                .await
                .map_err(|e| Error::internal(e.to_string()))?
                .map_err(read_error)?
            };
        let mut report = ImportReport { rows: (rows.len() + remote.len()) as u64, ..Default::default() };
        for row in rows {
            progress(report);
            // URL-preview caches are not user media; moss makes its own.
            if row.url_cache || !crate::media::valid_media_id(&row.media_id) {
                report.skipped += 1;
                continue;
            }
            let id = row.media_id.clone();
            if self.db.read(move |r| Ok::<_, Error>(r.media(&id)?)).await?.is_some() {
                report.already += 1;
                continue;
            }
            let Some(path) = local_path(media_store, &row.media_id).filter(|p| p.is_file()) else {
                report.missing_files += 1;
                continue;
            };
            let owner = row.user_id.as_deref().and_then(|u| UserId::parse(u).ok()).unwrap_or_else(|| {
                UserId::parse(format!("@synapse-import:{}", self.server_name)).expect("valid user id")
            });
            let body = crate::media::file_stream(path).await?;
            // Reserve the original id, then fill it, so the upload keeps its mxc:// URI.
            let (id, u, now) = (row.media_id.clone(), owner.to_string(), crate::now_ms() as i64);
            self.db.write(move |w| Ok::<_, Error>(w.create_pending_media(&id, &u, now, i64::MAX)?)).await?;
            self.upload_media_unchecked(&owner, &row.media_id, row.media_type.clone(), row.upload_name.clone(), body)
                .await?;
            let (id, created, legacy, quarantined) =
                (row.media_id.clone(), row.created_ts.unwrap_or(now), !row.authenticated, row.quarantined);
            self.db.write(move |w| Ok::<_, Error>(w.mark_imported_media(&id, created, legacy, quarantined)?)).await?;
            report.imported += 1;
        }
        for row in remote {
            progress(report);
            if !crate::media::valid_media_id(&row.media_id) || ruma::ServerName::parse(&row.origin).is_err() {
                report.skipped += 1;
                continue;
            }
            let (o, id) = (row.origin.clone(), row.media_id.clone());
            if self.db.read(move |r| Ok::<_, Error>(r.remote_media(&o, &id)?)).await?.is_some() {
                report.already += 1;
                continue;
            }
            let Some(path) = remote_path(media_store, &row.origin, &row.filesystem_id).filter(|p| p.is_file()) else {
                report.missing_files += 1;
                continue;
            };
            let body = crate::media::file_stream(path).await?;
            let created = row.created_ts.unwrap_or_else(|| crate::now_ms() as i64);
            self.store_remote_media(
                &row.origin,
                &row.media_id,
                row.media_type.clone(),
                row.upload_name.clone(),
                created,
                row.quarantined,
                body,
            )
            .await?;
            report.imported += 1;
            report.remote += 1;
        }
        progress(report);
        Ok(report)
    }
}
