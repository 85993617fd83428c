//! `moss media import-synapse`: bring a Synapse media store over, keeping every `mxc://` URI.

use std::path::Path;

use moss_storage::synapse::{
    synapse_media_postgres, synapse_media_sqlite, SynapseLocalMedia, SynapseMediaFilter, SynapseRemoteMedia,
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

/// What importing one row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowImport {
    Imported,
    Already,
    MissingFile,
    Skipped,
}

/// Reads Synapse's media rows named by `filter` from `database`: the path of its SQLite file or
/// a `postgres://` URL.
pub(crate) async fn read_synapse_media(
    database: &str,
    filter: SynapseMediaFilter<'_>,
) -> Result<(Vec<SynapseLocalMedia>, Vec<SynapseRemoteMedia>)> {
    let read_error = |e: moss_storage::StorageError| Error::internal(format!("reading the Synapse database: {e}"));
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        return synapse_media_postgres(database, filter).await.map_err(read_error);
    }
    let db = std::path::PathBuf::from(database);
    let filter = match filter {
        SynapseMediaFilter::All => OwnedFilter::All,
        SynapseMediaFilter::Local(id) => OwnedFilter::Local(id.to_owned()),
        SynapseMediaFilter::Remote { origin, media_id } => OwnedFilter::Remote(origin.to_owned(), media_id.to_owned()),
    };
    tokio::task::spawn_blocking(move || {
        let filter = match &filter {
            OwnedFilter::All => SynapseMediaFilter::All,
            OwnedFilter::Local(id) => SynapseMediaFilter::Local(id),
            OwnedFilter::Remote(origin, media_id) => SynapseMediaFilter::Remote { origin, media_id },
        };
        synapse_media_sqlite(&db, filter)
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?
    .map_err(read_error)
}

/// [`SynapseMediaFilter`] moved onto a blocking thread.
enum OwnedFilter {
    All,
    Local(String),
    Remote(String, String),
}

impl Moss {
    /// `database` is the path of Synapse's SQLite file or a `postgres://` URL.
    pub async fn import_synapse(
        &self,
        media_store: &Path,
        database: &str,
        progress: impl Fn(ImportReport),
    ) -> Result<ImportReport> {
        let (rows, remote) = read_synapse_media(database, SynapseMediaFilter::All).await?;
        let mut report = ImportReport { rows: (rows.len() + remote.len()) as u64, ..Default::default() };
        for row in rows {
            progress(report);
            match self.import_synapse_local_row(media_store, row).await? {
                RowImport::Imported => report.imported += 1,
                RowImport::Already => report.already += 1,
                RowImport::MissingFile => report.missing_files += 1,
                RowImport::Skipped => report.skipped += 1,
            }
        }
        for row in remote {
            progress(report);
            match self.import_synapse_remote_row(media_store, row).await? {
                RowImport::Imported => {
                    report.imported += 1;
                    report.remote += 1;
                }
                RowImport::Already => report.already += 1,
                RowImport::MissingFile => report.missing_files += 1,
                RowImport::Skipped => report.skipped += 1,
            }
        }
        progress(report);
        Ok(report)
    }

    /// Imports one of Synapse's local uploads under its own media id.
    pub(crate) async fn import_synapse_local_row(
        &self,
        media_store: &Path,
        row: SynapseLocalMedia,
    ) -> Result<RowImport> {
        // URL-preview caches are not user media; moss makes its own.
        if row.url_cache || !crate::media::valid_media_id(&row.media_id) {
            return Ok(RowImport::Skipped);
        }
        let id = row.media_id.clone();
        if self.db.read(move |r| Ok::<_, Error>(r.media(&id)?)).await?.is_some() {
            return Ok(RowImport::Already);
        }
        let Some(path) = local_path(media_store, &row.media_id).filter(|p| p.is_file()) else {
            return Ok(RowImport::MissingFile);
        };
        let owner =
            row.user_id.as_deref().and_then(|u| UserId::parse(u).ok()).unwrap_or_else(|| {
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
        Ok(RowImport::Imported)
    }

    /// Imports one item of Synapse's cache of other servers' media.
    pub(crate) async fn import_synapse_remote_row(
        &self,
        media_store: &Path,
        row: SynapseRemoteMedia,
    ) -> Result<RowImport> {
        if !crate::media::valid_media_id(&row.media_id) || ruma::ServerName::parse(&row.origin).is_err() {
            return Ok(RowImport::Skipped);
        }
        let (o, id) = (row.origin.clone(), row.media_id.clone());
        if self.db.read(move |r| Ok::<_, Error>(r.remote_media(&o, &id)?)).await?.is_some() {
            return Ok(RowImport::Already);
        }
        let Some(path) = remote_path(media_store, &row.origin, &row.filesystem_id).filter(|p| p.is_file()) else {
            return Ok(RowImport::MissingFile);
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
        Ok(RowImport::Imported)
    }
}
