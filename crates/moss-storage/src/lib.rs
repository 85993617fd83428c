//! The storage layer: it owns the SQL schema, its migrations and every query.
//!
//! Callers never see SQL. They run closures against a [`Reader`] (a pooled read-only
//! connection) or a [`Writer`] (the single write transaction), whose methods are the queries.
//! SQLite allows one writer at a time anyway; making that explicit gives every write a
//! serial order, which the global stream ordering relies on.
//!
//! Two backends sit under the same closures ([`backend`]): SQLite (a file, the default) and
//! PostgreSQL (`database.url`). Queries are written once; see the backend module for how.

mod admin;
mod appservice;
pub mod backend;
pub mod cluster;
#[cfg(test)]
mod conformance;
mod e2ee;
mod federation;
mod group;
mod media_content;
mod migrate;
mod openid;
mod presence;
mod push;
mod queries;
mod relations;
mod remote_media;
mod room_state;
mod sliding_sync;
pub mod synapse;
mod sync;
mod uiaa;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use std::cell::RefCell;

use backend::{pool::Pool, postgres::Session, Conn, Dialect, Params};
use rusqlite::{Connection, OpenFlags, Transaction};

pub use admin::*;
pub use appservice::*;
pub use e2ee::*;
pub use federation::*;
pub use media_content::UnconfirmedMedia;
pub use migrate::{migrate_sqlite_to_postgres, Progress as MigrateProgress, TableReport};
pub use presence::*;
pub use push::*;
pub use queries::*;
pub use relations::*;
pub use remote_media::*;
pub use room_state::Extremity;
pub use sliding_sync::*;
pub use uiaa::*;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("unexpected column value: {0}")]
    Type(String),
    #[error("{0}")]
    Migrate(String),
    #[error("database schema version {found} is newer than this moss understands ({known})")]
    TooNew { found: i64, known: i64 },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Versioned migrations, applied in order at start-up inside one transaction each.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_2_media.sql"),
    include_str!("schema_3_thumbnails.sql"),
    include_str!("schema_4_url_previews.sql"),
    include_str!("schema_5_inflight.sql"),
    include_str!("schema_6_e2ee.sql"),
    include_str!("schema_7_relations_search.sql"),
    include_str!("schema_8_presence_reports.sql"),
    include_str!("schema_9_dehydrated_devices.sql"),
    include_str!("schema_10_media_access.sql"),
    include_str!("schema_11_remote_media.sql"),
    include_str!("schema_12_server_keys.sql"),
    include_str!("schema_13_state_event_index.sql"),
    include_str!("schema_14_federation_rooms.sql"),
    include_str!("schema_15_outbox_age.sql"),
    include_str!("schema_16_push.sql"),
    include_str!("schema_17_appservice.sql"),
    include_str!("schema_18_appservice_ephemeral.sql"),
    include_str!("schema_19_sliding_sync.sql"),
    include_str!("schema_20_admin.sql"),
    include_str!("schema_21_openid.sql"),
    include_str!("schema_22_uiaa.sql"),
    include_str!("schema_23_sliding_positions.sql"),
    include_str!("schema_24_media_hash.sql"),
    include_str!("schema_25_media_unconfirmed.sql"),
];

/// PostgreSQL's schema, by the SQLite version it matches: a fresh PostgreSQL database gets the
/// whole schema of that version at once (there were no PostgreSQL databases before it); every
/// later SQLite migration has its PostgreSQL twin here under the same number.
const PG_MIGRATIONS: &[(i64, &str)] = &[
    (21, include_str!("pg/schema_21.sql")),
    (22, include_str!("pg/schema_22_uiaa.sql")),
    (23, include_str!("pg/schema_23_sliding_positions.sql")),
    (24, include_str!("pg/schema_24_media_hash.sql")),
    (25, include_str!("pg/schema_25_media_unconfirmed.sql")),
];

/// Most SQLite read connections open at once: reads beyond wait for one (a fresh connection
/// reads the schema and prepares its statements again, which costs more than the wait).
const SQLITE_READERS: usize = 16;

/// Most PostgreSQL read sessions one process opens by default (`database.max_connections`).
pub const DEFAULT_PG_READERS: usize = 16;

/// The advisory lock every PostgreSQL write transaction takes (see `pg_write_begin`).
const WRITER_LOCK: i64 = 0x6d6f_7377; // "mosw"

/// How a PostgreSQL write transaction opens: one writer at a time across every process on the
/// database, as SQLite has one writer; the transaction-scoped lock goes with the commit or
/// rollback.
fn pg_write_begin() -> String {
    format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITER_LOCK})")
}

/// Applies PostgreSQL migrations under an advisory lock, so processes starting together take
/// turns; the version lives in `moss_schema`.
fn pg_migrate(session: &mut Session) -> Result<()> {
    const LOCK: i64 = 0x6d6f_7373; // "moss"
    session.batch(&format!("SELECT pg_advisory_lock({LOCK})"))?;
    let out = pg_migrate_locked(session);
    let unlocked = session.batch(&format!("SELECT pg_advisory_unlock({LOCK})"));
    out.and(unlocked)
}

fn pg_migrate_locked(session: &mut Session) -> Result<()> {
    session.batch("CREATE TABLE IF NOT EXISTS moss_schema (version BIGINT NOT NULL)")?;
    let version = session.scalar_i64("SELECT version FROM moss_schema")?.unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StorageError::TooNew { found: version, known });
    }
    for (v, sql) in PG_MIGRATIONS.iter().filter(|(v, _)| *v > version) {
        session.batch(&format!(
            "BEGIN; {sql}; DELETE FROM moss_schema; INSERT INTO moss_schema (version) VALUES ({v}); COMMIT;"
        ))?;
        tracing::info!(version = v, "applied PostgreSQL migration");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync the WAL on every commit: an acknowledged write survives power loss.
    Full,
    /// fsync only at checkpoints: survives a crash of moss, not of the machine.
    Normal,
}

/// The database behind a [`Db`].
enum Backend {
    Sqlite { path: PathBuf, writer: Mutex<Connection>, readers: Pool<Connection>, synchronous: Synchronous },
    Postgres { url: String, writer: Box<Mutex<Option<Session>>>, readers: Pool<Session> },
}

struct Inner {
    backend: Backend,
    observer: OnceLock<Arc<dyn DbObserver>>,
    group: Mutex<group::Queue>,
    /// PostgreSQL: the connection NOTIFYs to other processes go out on (`cluster.rs`).
    publisher: cluster::Publisher,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

/// A read-only view: every query that does not write.
pub struct Reader<'a> {
    conn: Conn<'a>,
}

/// The write transaction. Derefs to [`Reader`] so reads see the transaction's own writes.
pub struct Writer<'a> {
    reader: Reader<'a>,
}

impl<'a> std::ops::Deref for Writer<'a> {
    type Target = Reader<'a>;
    fn deref(&self) -> &Reader<'a> {
        &self.reader
    }
}

impl Reader<'_> {
    /// Which SQL this connection speaks, for the few queries written twice.
    pub(crate) fn dialect(&self) -> Dialect {
        self.conn.dialect()
    }

    /// `sqlite` or `postgres`, whichever this connection speaks.
    pub(crate) fn sql<'s>(&self, sqlite: &'s str, postgres: &'s str) -> &'s str {
        match self.dialect() {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    pub(crate) fn collect<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnMut(&backend::Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.conn.collect(sql, &params.values(), f)
    }

    pub(crate) fn one<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&backend::Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        self.conn.one(sql, &params.values(), f)
    }
}

impl Writer<'_> {
    pub(crate) fn exec(&self, sql: &str, params: impl Params) -> Result<usize> {
        self.conn.exec(sql, &params.values())
    }
}

fn configure(conn: &Connection, sync: Synchronous) -> Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(256);
    stable_plans(conn)?;
    Ok(())
}

/// Query plans that do not depend on bound values. Without this, SQLite marks a statement to be
/// compiled again whenever a parameter its planner looked at gets a new value — every `LIMIT ?`
/// is one — so a cached statement called with alternating limits (a timeline of 2, a count scan
/// of 100) was re-prepared on almost every call: 22% of a sliding sync response's time. moss
/// keeps no `sqlite_stat4` samples for value-dependent plans to use anyway.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// Told how long transactions waited and ran (the server's metrics).
pub trait DbObserver: Send + Sync {
    /// A write transaction waited `wait` for the writer, then held it for `held`.
    fn write(&self, wait: Duration, held: Duration);
    /// A read snapshot was held for `held`.
    fn read(&self, held: Duration);
    /// A write transaction committed (or rolled back) `size` queued writes at once.
    fn group(&self, _size: usize) {}
}

impl Db {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        configure(&conn, synchronous)?;
        migrate(&mut conn)?;
        Ok(Db::with(Backend::Sqlite {
            path: path.to_owned(),
            writer: Mutex::new(conn),
            readers: Pool::new(SQLITE_READERS),
            synchronous,
        }))
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host/db`) and
    /// applies pending migrations; at most [`DEFAULT_PG_READERS`] read sessions.
    pub fn open_postgres(url: &str) -> Result<Self> {
        Db::open_postgres_with(url, DEFAULT_PG_READERS)
    }

    /// [`Db::open_postgres`] with at most `readers` read sessions open at once (the writer
    /// session comes on top); reads beyond that wait for a session.
    pub fn open_postgres_with(url: &str, readers: usize) -> Result<Self> {
        let mut session = Session::connect(url)?;
        pg_migrate(&mut session)?;
        Ok(Db::with(Backend::Postgres {
            url: url.to_owned(),
            writer: Box::new(Mutex::new(Some(session))),
            readers: Pool::new(readers),
        }))
    }

    fn with(backend: Backend) -> Db {
        Db {
            inner: Arc::new(Inner {
                backend,
                observer: OnceLock::new(),
                group: Mutex::new(group::Queue::default()),
                publisher: cluster::Publisher::default(),
            }),
        }
    }

    /// The SQLite file, when the database is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Sqlite { path, .. } => Some(path),
            Backend::Postgres { .. } => None,
        }
    }

    /// Which SQL the database speaks.
    pub fn dialect(&self) -> Dialect {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Dialect::Sqlite,
            Backend::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Writes a consistent copy of the database at `from` to `to` (a new file), while a server
    /// may keep reading and writing it: SQLite's `VACUUM INTO` reads one snapshot, so the copy
    /// holds every transaction committed before it started and none after. The database is
    /// only read (no migrations: the server using it may be an older version).
    pub fn snapshot(from: &Path, to: &Path) -> Result<()> {
        let conn = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])?;
        Ok(())
    }

    /// Sets what is told the timing of every transaction (once; later calls are ignored).
    pub fn set_observer(&self, observer: Arc<dyn DbObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    /// Runs `f` in a write transaction on a blocking thread; its effects are committed (and the
    /// call returns) if it returns `Ok`, rolled back if not.
    ///
    /// Group commit: writes that queue up while one transaction runs share the next one, each
    /// inside a savepoint of its own (a failing write rolls back only itself), and one commit —
    /// one fsync — acknowledges them all. Nobody waits for company: a write that finds the
    /// writer idle starts at once, alone.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
        F: FnOnce(&Writer<'_>) -> Result<T, E> + Send + 'static,
    {
        self.enqueue(true, f).await
    }

    /// [`Db::write`] for derived data that is recomputed from durable data after a power loss
    /// (the push evaluator's actions and watermark): acknowledged once committed, but a group
    /// of such writes alone commits without waiting for the disk (SQLite: no fsync; PostgreSQL:
    /// `synchronous_commit = off`). A crash of moss loses nothing; a power loss may lose the
    /// last of them, never a durable write committed after them.
    pub async fn write_relaxed<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
        F: FnOnce(&Writer<'_>) -> Result<T, E> + Send + 'static,
    {
        self.enqueue(false, f).await
    }

    async fn enqueue<T, E, F>(&self, durable: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
        F: FnOnce(&Writer<'_>) -> Result<T, E> + Send + 'static,
    {
        let (job, answer) = group::job(durable, f);
        let lead = {
            let mut queue = self.inner.group.lock().unwrap_or_else(|p| p.into_inner());
            queue.jobs.push_back(job);
            !std::mem::replace(&mut queue.draining, true)
        };
        if lead {
            let db = self.clone();
            tokio::task::spawn_blocking(move || db.drain());
        }
        answer.await.map_err(|_| E::from(StorageError::Task("the write transaction ended without an answer".into())))?
    }

    /// Runs queued writes, a group per transaction, until the queue is empty.
    fn drain(&self) {
        loop {
            let jobs: Vec<_> = {
                let mut queue = self.inner.group.lock().unwrap_or_else(|p| p.into_inner());
                if queue.jobs.is_empty() {
                    queue.draining = false;
                    return;
                }
                let n = queue.jobs.len().min(group::MAX_JOBS);
                queue.jobs.drain(..n).collect()
            };
            let asked: Vec<Instant> = jobs.iter().map(|j| j.queued()).collect();
            if let Some(o) = self.inner.observer.get() {
                o.group(jobs.len());
            }
            // A panic outside the closures (which are caught one by one) must not leave the
            // queue without a drainer: its writes have been answered with an error by then.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_group(jobs)));
            let Ok((got, held)) = ran else {
                tracing::error!("running a group of writes panicked; its writers got an error");
                continue;
            };
            if let Some(o) = self.inner.observer.get() {
                for a in asked {
                    o.write(got.saturating_duration_since(a), held);
                }
            }
        }
    }

    /// Runs one group of queued writes; when the writer was had and for how long.
    fn run_group(&self, jobs: Vec<Box<dyn group::Job>>) -> (Instant, Duration) {
        match &self.inner.backend {
            Backend::Sqlite { writer, synchronous, .. } => {
                let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                let got = Instant::now();
                group::run_sqlite(&mut conn, jobs, *synchronous);
                (got, got.elapsed())
            }
            Backend::Postgres { url, writer, .. } => {
                let mut slot = writer.lock().unwrap_or_else(|p| p.into_inner());
                let got = Instant::now();
                let session = match slot.take() {
                    Some(s) if !s.is_closed() => Ok(s),
                    _ => Session::connect(url),
                };
                match session {
                    Ok(session) => *slot = Some(group::run_postgres(session, jobs)),
                    Err(e) => group::fail_all(jobs, &e),
                }
                (got, got.elapsed())
            }
        }
    }

    /// The synchronous form of [`Db::write`], for the command line and tests: a transaction of
    /// its own, not grouped.
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<StorageError>,
        F: FnOnce(&Writer<'_>) -> Result<T, E>,
    {
        let asked = Instant::now();
        let out = match &self.inner.backend {
            Backend::Sqlite { writer, .. } => {
                let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                let got = Instant::now();
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(StorageError::from)?;
                let out = f(&Writer { reader: Reader { conn: Conn::Sqlite(&tx) } });
                let out = match out {
                    Ok(v) => commit(tx).map(|()| v).map_err(E::from),
                    Err(e) => Err(e),
                };
                (out, got)
            }
            Backend::Postgres { url, writer, .. } => {
                let mut slot = writer.lock().unwrap_or_else(|p| p.into_inner());
                let got = Instant::now();
                let session = match slot.take() {
                    Some(s) if !s.is_closed() => s,
                    _ => Session::connect(url)?,
                };
                let cell = RefCell::new(session);
                cell.borrow_mut().begin(pg_write_begin()); // sent with the first statement
                let out = f(&Writer { reader: Reader { conn: Conn::Pg(&cell) } });
                let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
                let ended = cell.borrow_mut().end(end);
                let out = match (out, ended) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) => Err(E::from(e)),
                    (Err(e), _) => Err(e),
                };
                *slot = Some(cell.into_inner());
                (out, got)
            }
        };
        let (out, got) = out;
        if let Some(o) = self.inner.observer.get() {
            o.write(got - asked, got.elapsed());
        }
        out
    }

    /// Runs `f` against a pooled read connection on a blocking thread.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, E> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read_blocking(f))
            .await
            .map_err(|e| E::from(StorageError::Task(e.to_string())))?
    }

    pub fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<StorageError>,
        F: FnOnce(&Reader<'_>) -> Result<T, E>,
    {
        let began;
        let out = match &self.inner.backend {
            Backend::Sqlite { path, readers, synchronous, .. } => {
                let conn = readers.take(
                    |_| true,
                    || {
                        let c = Connection::open_with_flags(
                            path,
                            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                        )?;
                        configure_reader(&c, *synchronous)?;
                        Ok(c)
                    },
                )?;
                // A read sees one consistent snapshot even across several queries.
                began = Instant::now();
                if let Err(e) = conn.execute_batch("BEGIN") {
                    readers.give(conn);
                    return Err(E::from(StorageError::from(e)));
                }
                let out = f(&Reader { conn: Conn::Sqlite(&conn) });
                let _ = conn.execute_batch("COMMIT");
                readers.give(conn);
                out
            }
            Backend::Postgres { url, readers, .. } => {
                let cell = RefCell::new(readers.take(|s| !s.is_closed(), || Session::connect(url))?);
                began = Instant::now();
                cell.borrow_mut().begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into());
                let out = f(&Reader { conn: Conn::Pg(&cell) });
                let ended = cell.borrow_mut().end_read();
                if ended.is_ok() {
                    readers.give(cell.into_inner());
                } else {
                    readers.lost();
                }
                out
            }
        };
        if let Some(o) = self.inner.observer.get() {
            o.read(began.elapsed());
        }
        out
    }
}

fn configure_reader(conn: &Connection, _sync: Synchronous) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(256);
    stable_plans(conn)?;
    Ok(())
}

fn commit(tx: Transaction<'_>) -> Result<()> {
    tx.commit()?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StorageError::TooNew { found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    Ok(())
}
