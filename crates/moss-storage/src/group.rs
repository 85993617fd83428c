//! Group commit: the write closures queued while the writer was busy run in one transaction,
//! each inside a savepoint, and share its commit.
//!
//! What it guarantees, for each closure:
//! - its effects are kept only if it returned `Ok`: an `Err` (or a panic) rolls back to its
//!   savepoint, leaving the others' writes as they were;
//! - its caller hears back only after the commit that holds its writes has returned (on SQLite
//!   with `synchronous = full`, after the fsync) — or, if that commit failed, gets the error;
//! - closures run one after another in queue order, so the stream order is the order they ran
//!   in, as with one transaction each.
//!
//! A group is whatever was queued when the writer became free (at most [`MAX_JOBS`]): nothing
//! waits to be grouped, so a write on an idle server costs what it did alone. A group of one
//! takes no savepoint.

use std::{
    cell::RefCell,
    collections::VecDeque,
    panic::{catch_unwind, AssertUnwindSafe},
    time::Instant,
};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{backend::postgres::Session, backend::Conn, pg_write_begin, Reader, StorageError, Synchronous, Writer};

/// The most closures one transaction takes (bounds how long the first of them waits for the
/// commit).
pub(crate) const MAX_JOBS: usize = 64;

#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) jobs: VecDeque<Box<dyn Job>>,
    /// A blocking task is running the queue (it takes what arrives until the queue is empty).
    pub(crate) draining: bool,
}

/// One queued write: a closure and the caller waiting for its answer.
pub(crate) trait Job: Send {
    fn queued(&self) -> Instant;
    /// Whether its writes must survive a power loss once acknowledged (see `Db::write_relaxed`).
    fn durable(&self) -> bool;
    /// Runs the closure; true if it returned `Ok` (its writes are to be kept).
    fn run(&mut self, w: &Writer<'_>) -> bool;
    /// Answers the caller once the transaction's fate is known (`committed`: the commit's
    /// outcome, which matters only to a closure that succeeded).
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct Pending<T, E, F> {
    durable: bool,
    f: Option<F>,
    out: Option<Result<T, E>>,
    answer: oneshot::Sender<Result<T, E>>,
    queued: Instant,
}

/// Wraps `f` as a job and hands back where its answer arrives.
pub(crate) fn job<T, E, F>(durable: bool, f: F) -> (Box<dyn Job>, oneshot::Receiver<Result<T, E>>)
where
    T: Send + 'static,
    E: From<StorageError> + Send + 'static,
    F: FnOnce(&Writer<'_>) -> Result<T, E> + Send + 'static,
{
    let (answer, rx) = oneshot::channel();
    (Box::new(Pending { durable, f: Some(f), out: None, answer, queued: Instant::now() }), rx)
}

impl<T, E, F> Job for Pending<T, E, F>
where
    T: Send + 'static,
    E: From<StorageError> + Send + 'static,
    F: FnOnce(&Writer<'_>) -> Result<T, E> + Send + 'static,
{
    fn queued(&self) -> Instant {
        self.queued
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn run(&mut self, w: &Writer<'_>) -> bool {
        let Some(f) = self.f.take() else { return false };
        let out = f(w);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let out = match (self.out, committed) {
            (Some(Ok(_)), Err(e)) => Err(E::from(StorageError::Task(format!("the write was not committed: {e}")))),
            (Some(out), _) => out,
            (None, _) => Err(E::from(StorageError::Task("the write transaction's closure panicked".into()))),
        };
        // The caller may have gone (its request was cancelled): the write stands all the same.
        let _ = self.answer.send(out);
    }
}

/// Runs `job`, a panic counting as a failure.
fn run_one(job: &mut Box<dyn Job>, w: &Writer<'_>) -> bool {
    match catch_unwind(AssertUnwindSafe(|| job.run(w))) {
        Ok(ok) => ok,
        Err(_) => {
            tracing::error!("a write transaction's closure panicked; its writes are rolled back");
            false
        }
    }
}

/// Answers every job with `error`, none of them having run or been committed.
pub(crate) fn fail_all(jobs: Vec<Box<dyn Job>>, error: &StorageError) {
    for job in jobs {
        job.finish(Err(error.to_string()));
    }
}

/// Runs `jobs` on SQLite: BEGIN IMMEDIATE, each in a savepoint (when there are several), one
/// COMMIT.
pub(crate) fn run_sqlite(conn: &mut Connection, jobs: Vec<Box<dyn Job>>, synchronous: Synchronous) {
    // A group of relaxed writes only commits without the fsync; the next durable commit's fsync
    // covers it (the WAL is synced in order).
    if synchronous == Synchronous::Full && !jobs.iter().any(|j| j.durable()) {
        let _ = conn.pragma_update(None, "synchronous", "NORMAL");
        // Back to FULL afterwards, even if the group panics.
        struct Restore<'c>(&'c mut Connection);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if !self.0.is_autocommit() {
                    // Left open by a panic: nothing of it was acknowledged, and the setting
                    // cannot change inside a transaction.
                    let _ = self.0.execute_batch("ROLLBACK");
                }
                let _ = self.0.pragma_update(None, "synchronous", "FULL");
            }
        }
        let restore = Restore(conn);
        run_sqlite_group(restore.0, jobs);
    } else {
        run_sqlite_group(conn, jobs);
    }
}

fn run_sqlite_group(conn: &mut Connection, jobs: Vec<Box<dyn Job>>) {
    if !conn.is_autocommit() {
        // Left open by a group that panicked half-way: nothing of it was acknowledged.
        let _ = conn.execute_batch("ROLLBACK");
    }
    let grouped = jobs.len() > 1;
    let mut kept: Vec<Box<dyn Job>> = Vec::new();
    let mut done: Vec<Box<dyn Job>> = Vec::new();
    let mut open = false;
    for mut job in jobs {
        if !open {
            // (Nothing is kept while no transaction is open: closing one answers its writes.)
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                job.finish(Err(StorageError::from(e).to_string()));
                continue;
            }
            open = true;
        }
        if grouped {
            if let Err(e) = conn.execute_batch("SAVEPOINT w") {
                job.finish(Err(StorageError::from(e).to_string()));
                continue;
            }
        }
        let ok = run_one(&mut job, &Writer { reader: Reader { conn: Conn::Sqlite(conn) } });
        if conn.is_autocommit() {
            // An error (disk full, I/O) made SQLite roll the whole transaction back: the writes
            // of those before this one are gone with it.
            for j in kept.drain(..) {
                j.finish(Err("an error in a write grouped with it rolled the transaction back".into()));
            }
            done.push(job);
            open = false;
            continue;
        }
        if grouped {
            let end = if ok { "RELEASE w" } else { "ROLLBACK TO w; RELEASE w" };
            if let Err(e) = conn.execute_batch(end) {
                tracing::error!(error = %e, "ending a grouped write's savepoint failed");
                let _ = conn.execute_batch("ROLLBACK");
                open = false;
                for j in kept.drain(..) {
                    j.finish(Err(e.to_string()));
                }
                job.finish(Err(e.to_string()));
                continue;
            }
        }
        if ok {
            kept.push(job);
        } else {
            done.push(job);
        }
    }
    if open {
        let committed = if kept.is_empty() {
            conn.execute_batch("ROLLBACK").map_err(|e| e.to_string())
        } else {
            match conn.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    // A failed COMMIT can leave the transaction open.
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    Err(e.to_string())
                }
            }
        };
        for j in kept {
            j.finish(committed.clone());
        }
    }
    for j in done {
        j.finish(Ok(()));
    }
}

/// Runs `jobs` on PostgreSQL in one transaction under the cluster-wide writer lock; savepoints
/// travel in the same flight as the statements after them. Gives the session back.
pub(crate) fn run_postgres(session: Session, jobs: Vec<Box<dyn Job>>) -> Session {
    let grouped = jobs.len() > 1;
    let cell = RefCell::new(session);
    cell.borrow_mut().begin(pg_write_begin()); // sent with the first statement
    if !jobs.iter().any(|j| j.durable()) {
        // Relaxed writes only: the commit returns before the WAL is flushed.
        cell.borrow_mut().queue("SET LOCAL synchronous_commit = off");
    }
    let mut kept: Vec<Box<dyn Job>> = Vec::new();
    let mut done: Vec<Box<dyn Job>> = Vec::new();
    for mut job in jobs {
        if grouped {
            cell.borrow_mut().queue("SAVEPOINT w");
        }
        let ok = run_one(&mut job, &Writer { reader: Reader { conn: Conn::Pg(&cell) } });
        if grouped {
            cell.borrow_mut().queue(if ok {
                "RELEASE SAVEPOINT w"
            } else {
                "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w"
            });
        }
        if ok {
            kept.push(job);
        } else {
            done.push(job);
        }
    }
    let ended = cell.borrow_mut().end(if kept.is_empty() { "ROLLBACK" } else { "COMMIT" });
    let committed = ended.map_err(|e| e.to_string());
    for j in kept {
        j.finish(committed.clone());
    }
    for j in done {
        j.finish(Ok(()));
    }
    cell.into_inner()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::{conformance::test_dbs, params, DbObserver, StorageError};

    #[derive(Default)]
    struct Sizes(Mutex<Vec<usize>>);

    impl DbObserver for Sizes {
        fn write(&self, _: std::time::Duration, _: std::time::Duration) {}
        fn read(&self, _: std::time::Duration) {}
        fn group(&self, size: usize) {
            self.0.lock().unwrap().push(size);
        }
    }

    /// Writes queued behind a slow one share its successor's transaction; each keeps or loses
    /// its own writes by its own outcome (Ok, Err, an SQL error, a panic), and each caller hears
    /// its own answer.
    #[test]
    fn grouped_writes_keep_or_lose_only_their_own() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        for (name, db) in test_dbs() {
            let sizes = Arc::new(Sizes::default());
            db.set_observer(sizes.clone());
            db.write_blocking(|w| w.exec("CREATE TABLE g (k BIGINT PRIMARY KEY)", []).map(|_| ())).unwrap();
            let outcomes = rt.block_on(async {
                // The writer is busy with a slow write while the others queue up behind it.
                let slow = tokio::spawn({
                    let db = db.clone();
                    async move {
                        db.write(|w| {
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            w.exec("INSERT INTO g (k) VALUES (-1)", []).map(|_| ())
                        })
                        .await
                    }
                });
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let writes: Vec<_> = (0..100i64)
                    .map(|k| {
                        let db = db.clone();
                        tokio::spawn(async move {
                            db.write(move |w| {
                                w.exec("INSERT INTO g (k) VALUES (?1)", params![k])?;
                                match k % 10 {
                                    3 => Err(StorageError::Task("refused".into())),
                                    // k = -1 exists: a failing statement after a good one
                                    5 => w.exec("INSERT INTO g (k) VALUES (-1)", []).map(|_| ()),
                                    7 => panic!("a closure panics after writing"),
                                    _ => Ok(()),
                                }
                            })
                            .await
                        })
                    })
                    .collect();
                assert!(slow.await.unwrap().is_ok());
                let mut outcomes = Vec::new();
                for w in writes {
                    outcomes.push(w.await.unwrap().is_ok());
                }
                outcomes
            });
            for (k, ok) in outcomes.iter().enumerate() {
                assert_eq!(*ok, ![3, 5, 7].contains(&(k % 10)), "{name}: write {k}");
            }
            let mut stored: Vec<i64> =
                db.read_blocking(|r| r.collect("SELECT k FROM g ORDER BY k", [], |row| row.get::<_, i64>(0))).unwrap();
            let expected: Vec<i64> =
                std::iter::once(-1).chain((0..100).filter(|k| ![3, 5, 7].contains(&(k % 10)))).collect();
            stored.sort();
            assert_eq!(stored, expected, "{name}");
            let sizes = sizes.0.lock().unwrap().clone();
            assert!(sizes.iter().any(|&n| n > 1), "{name}: the queued writes were never grouped: {sizes:?}");
            assert_eq!(sizes.iter().sum::<usize>(), 101, "{name}: {sizes:?}");
        }
    }
}

#[cfg(test)]
mod relaxed_tests {
    use crate::{params, Db, StorageError, Synchronous};

    /// A relaxed write commits like any other, and the writer goes back to fsyncing every
    /// commit afterwards (`synchronous` 2 = FULL).
    #[test]
    fn relaxed_writes_commit_and_leave_full_sync_in_place() {
        let dir = std::env::temp_dir().join(format!("moss-relaxed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open(&dir.join("t.db"), Synchronous::Full).unwrap();
        db.write_blocking(|w| w.exec("CREATE TABLE r (k BIGINT)", []).map(|_| ())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(db.write_relaxed(|w| w.exec("INSERT INTO r (k) VALUES (?1)", params![1i64]).map(|_| ()))).unwrap();
        let (count, sync) = db
            .write_blocking(|w| {
                let count = w.one("SELECT COUNT(*) FROM r", [], |r| r.get::<_, i64>(0))?;
                let sync = w.one("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?;
                Ok::<_, StorageError>((count, sync))
            })
            .unwrap();
        assert_eq!(count, Some(1));
        assert_eq!(sync, Some(2), "the writer must be back to synchronous = FULL");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
