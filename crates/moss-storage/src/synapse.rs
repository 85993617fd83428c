//! Reading a Synapse database's media tables (SQLite or PostgreSQL), read only: all of them for
//! `moss media import-synapse`, one item at a time for `moss media-repo`'s import on first use.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::Result;

/// One row of Synapse's `local_media_repository`.
#[derive(Debug, Clone)]
pub struct SynapseLocalMedia {
    pub media_id: String,
    pub media_type: Option<String>,
    pub media_length: Option<i64>,
    pub created_ts: Option<i64>,
    pub upload_name: Option<String>,
    pub user_id: Option<String>,
    pub quarantined: bool,
    /// Uploaded while authenticated media was on: never served unauthenticated.
    pub authenticated: bool,
    /// Cached URL-preview content rather than a user upload.
    pub url_cache: bool,
}

/// Which media rows to read.
#[derive(Debug, Clone, Copy)]
pub enum SynapseMediaFilter<'a> {
    All,
    /// One local upload.
    Local(&'a str),
    /// One cached item of another server.
    Remote {
        origin: &'a str,
        media_id: &'a str,
    },
}

impl SynapseMediaFilter<'_> {
    fn wants_local(&self) -> bool {
        matches!(self, SynapseMediaFilter::All | SynapseMediaFilter::Local(_))
    }
    fn wants_remote(&self) -> bool {
        matches!(self, SynapseMediaFilter::All | SynapseMediaFilter::Remote { .. })
    }
    /// `(origin, media_id)` to match, `None` for every row.
    fn keys(&self) -> (Option<&str>, Option<&str>) {
        match *self {
            SynapseMediaFilter::All => (None, None),
            SynapseMediaFilter::Local(id) => (None, Some(id)),
            SynapseMediaFilter::Remote { origin, media_id } => (Some(origin), Some(media_id)),
        }
    }
}

/// Local media rows of the Synapse SQLite database at `path` (opened read-only).
pub fn synapse_local_media(path: &Path) -> Result<Vec<SynapseLocalMedia>> {
    synapse_media_sqlite(path, SynapseMediaFilter::All).map(|(local, _)| local)
}

/// Remote media rows of the Synapse SQLite database at `path` (opened read-only).
pub fn synapse_remote_media(path: &Path) -> Result<Vec<SynapseRemoteMedia>> {
    synapse_media_sqlite(path, SynapseMediaFilter::All).map(|(_, remote)| remote)
}

/// The media rows `filter` names from the Synapse SQLite database at `path` (opened read-only).
pub fn synapse_media_sqlite(
    path: &Path,
    filter: SynapseMediaFilter<'_>,
) -> Result<(Vec<SynapseLocalMedia>, Vec<SynapseRemoteMedia>)> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let local = if filter.wants_local() { local_sqlite(&conn, filter.keys().1)? } else { Vec::new() };
    let remote = if filter.wants_remote() { remote_sqlite(&conn, filter.keys())? } else { Vec::new() };
    Ok((local, remote))
}

fn local_sqlite(conn: &Connection, media_id: Option<&str>) -> Result<Vec<SynapseLocalMedia>> {
    let has_authenticated: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('local_media_repository') WHERE name = 'authenticated'")?
        .exists([])?;
    let sql = format!(
        "SELECT media_id, media_type, media_length, created_ts, upload_name, user_id, quarantined_by IS NOT NULL, {}, \
         url_cache IS NOT NULL FROM local_media_repository WHERE ?1 IS NULL OR media_id = ?1 ORDER BY created_ts",
        if has_authenticated { "authenticated" } else { "0" }
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([media_id], |r| {
        Ok(SynapseLocalMedia {
            media_id: r.get(0)?,
            media_type: r.get(1)?,
            media_length: r.get(2)?,
            created_ts: r.get(3)?,
            upload_name: r.get(4)?,
            user_id: r.get(5)?,
            quarantined: r.get(6)?,
            authenticated: r.get(7)?,
            url_cache: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// One row of Synapse's `remote_media_cache`: another server's media Synapse fetched and kept.
#[derive(Debug, Clone)]
pub struct SynapseRemoteMedia {
    pub origin: String,
    pub media_id: String,
    pub media_type: Option<String>,
    pub created_ts: Option<i64>,
    pub upload_name: Option<String>,
    /// Names the file under `remote_content/<origin>/`, instead of the media id.
    pub filesystem_id: String,
    pub quarantined: bool,
}

fn remote_sqlite(
    conn: &Connection,
    (origin, media_id): (Option<&str>, Option<&str>),
) -> Result<Vec<SynapseRemoteMedia>> {
    let mut stmt = conn.prepare(
        "SELECT media_origin, media_id, media_type, created_ts, upload_name, filesystem_id, quarantined_by IS NOT NULL \
         FROM remote_media_cache WHERE ?1 IS NULL OR (media_origin = ?1 AND media_id = ?2) ORDER BY created_ts",
    )?;
    let rows = stmt.query_map([origin, media_id], |r| {
        Ok(SynapseRemoteMedia {
            origin: r.get(0)?,
            media_id: r.get(1)?,
            media_type: r.get(2)?,
            created_ts: r.get(3)?,
            upload_name: r.get(4)?,
            filesystem_id: r.get(5)?,
            quarantined: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The media rows `filter` names from a Synapse database on PostgreSQL, given a connection URL
/// (`postgres://user:password@host:port/database`; no TLS: run moss next to the database).
pub async fn synapse_media_postgres(
    url: &str,
    filter: SynapseMediaFilter<'_>,
) -> Result<(Vec<SynapseLocalMedia>, Vec<SynapseRemoteMedia>)> {
    let (origin, media_id) = filter.keys();
    let pg = |e: tokio_postgres::Error| crate::StorageError::Postgres(e.to_string());
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(pg)?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "Synapse PostgreSQL connection ended");
        }
    });
    let has_authenticated = !client
        .query(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'local_media_repository' \
             AND column_name = 'authenticated'",
            &[],
        )
        .await
        .map_err(pg)?
        .is_empty();
    let local = if !filter.wants_local() {
        Vec::new()
    } else {
        client
            .query(
                &format!(
                    "SELECT media_id, media_type, media_length::BIGINT, created_ts, upload_name, user_id, \
                 quarantined_by IS NOT NULL, {}, url_cache IS NOT NULL FROM local_media_repository \
                 WHERE $1::TEXT IS NULL OR media_id = $1 ORDER BY created_ts",
                    if has_authenticated { "authenticated" } else { "FALSE" }
                ),
                &[&media_id],
            )
            .await
            .map_err(pg)?
            .into_iter()
            .map(|r| SynapseLocalMedia {
                media_id: r.get(0),
                media_type: r.get(1),
                media_length: r.get(2),
                created_ts: r.get(3),
                upload_name: r.get(4),
                user_id: r.get(5),
                quarantined: r.get(6),
                authenticated: r.get(7),
                url_cache: r.get(8),
            })
            .collect()
    };
    let remote = if !filter.wants_remote() {
        Vec::new()
    } else {
        client
            .query(
                "SELECT media_origin, media_id, media_type, created_ts, upload_name, filesystem_id, \
             quarantined_by IS NOT NULL FROM remote_media_cache \
             WHERE $1::TEXT IS NULL OR (media_origin = $1 AND media_id = $2) ORDER BY created_ts",
                &[&origin, &media_id],
            )
            .await
            .map_err(pg)?
            .into_iter()
            .map(|r| SynapseRemoteMedia {
                origin: r.get(0),
                media_id: r.get(1),
                media_type: r.get(2),
                created_ts: r.get(3),
                upload_name: r.get(4),
                filesystem_id: r.get(5),
                quarantined: r.get(6),
            })
            .collect()
    };
    drop(client);
    let _ = conn.await;
    Ok((local, remote))
}
