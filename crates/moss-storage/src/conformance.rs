//! The storage conformance suite: the same tests on every backend this machine has.
//!
//! SQLite always; PostgreSQL too with `MOSS_TEST_DB=postgres` and the `MOSS_TEST_PG_*` variables
//! of `scripts/postgres-start.sh` (each test gets a database of its own). Other modules' storage
//! tests take their databases from [`test_dbs`] as well, so every query test runs on both.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Db, Synchronous};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}_{n}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// A fresh SQLite database in a temporary directory.
pub(crate) fn sqlite_db() -> Db {
    let dir = std::env::temp_dir().join(format!("moss-storage-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    Db::open(&dir.join("t.db"), Synchronous::Normal).unwrap()
}

/// A fresh PostgreSQL database, when the environment asks for PostgreSQL.
pub(crate) fn postgres_db() -> Option<Db> {
    postgres_url().map(|url| Db::open_postgres(&url).unwrap())
}

/// The URL of a fresh, empty PostgreSQL database, when the environment asks for PostgreSQL.
pub(crate) fn postgres_url() -> Option<String> {
    if std::env::var("MOSS_TEST_DB").ok().as_deref() != Some("postgres") {
        return None;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("MOSS_TEST_DB=postgres needs {k}"));
    let (socket, port) = (var("MOSS_TEST_PG_SOCKET_DIR"), var("MOSS_TEST_PG_PORT"));
    let (user, password) = (var("MOSS_TEST_PG_USER"), var("MOSS_TEST_PG_PASSWORD"));
    let name = format!("moss_storage_{}", unique());
    let mut admin =
        crate::backend::postgres::Session::connect(&format!("host={socket} port={port} user=postgres dbname=postgres"))
            .unwrap();
    admin
        .batch(&format!(
            "CREATE DATABASE {name} OWNER \"{user}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .unwrap();
    Some(format!("postgres://{user}:{password}@127.0.0.1:{port}/{name}"))
}

/// Every backend to run a storage test on, named for assertion messages.
pub(crate) fn test_dbs() -> Vec<(&'static str, Db)> {
    let mut dbs = vec![("sqlite", sqlite_db())];
    if let Some(db) = postgres_db() {
        dbs.push(("postgres", db));
    }
    dbs
}

#[cfg(test)]
mod tests {
    use super::test_dbs;
    use crate::{params, StorageError};

    /// Values go in and come back the same on every backend: 64-bit extremes, text beyond
    /// ASCII (and with quotes and placeholders in it), bytes, NULL, booleans as 0/1.
    #[test]
    fn values_round_trip() {
        for (name, db) in test_dbs() {
            let text = "héllo 'quoted' ?1 $1 \u{1F331}";
            db.write_blocking(|w| {
                w.exec(
                    "CREATE TABLE t (i BIGINT, s TEXT, b BYTEA, n BIGINT)"
                        .replace("BYTEA", if w.dialect() == crate::backend::Dialect::Sqlite { "BLOB" } else { "BYTEA" })
                        .as_str(),
                    [],
                )?;
                for i in [i64::MIN, -1, 0, 1, i64::MAX] {
                    w.exec(
                        "INSERT INTO t (i, s, b, n) VALUES (?1, ?2, ?3, ?4)",
                        params![i, text, vec![0u8, 255, 7], None::<i64>],
                    )?;
                }
                w.exec(
                    "INSERT INTO t (i, s, b, n) VALUES (?1, ?2, ?3, ?4)",
                    params![true, "", Vec::<u8>::new(), 3_usize],
                )?;
                Ok::<_, StorageError>(())
            })
            .unwrap();
            let rows = db
                .read_blocking(|r| {
                    r.collect("SELECT i, s, b, n FROM t ORDER BY i", [], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                            row.get::<_, Option<i64>>(3)?,
                        ))
                    })
                })
                .unwrap();
            let ints: Vec<i64> = rows.iter().map(|r| r.0).collect();
            assert_eq!(ints, vec![i64::MIN, -1, 0, 1, 1, i64::MAX], "{name}");
            assert!(rows.iter().filter(|r| r.1 == text).count() == 5 && rows.iter().any(|r| r.1.is_empty()), "{name}");
            assert!(rows.iter().any(|r| r.2 == vec![0, 255, 7] && r.3.is_none()), "{name}");
            assert!(rows.iter().any(|r| r.2.is_empty() && r.3 == Some(3)), "{name}");
            // Aggregates come back as integers (PostgreSQL's SUM is NUMERIC).
            let (count, sum) = db
                .read_blocking(|r| {
                    r.one("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM t", [], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                    })
                })
                .unwrap()
                .unwrap();
            assert_eq!((count, sum), (6, 3), "{name}");
        }
    }

    /// Every SQLite migration has its PostgreSQL twin under the same number.
    #[test]
    fn postgresql_migrations_keep_up_with_sqlite() {
        let last = crate::PG_MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
        assert_eq!(last, crate::MIGRATIONS.len() as i64);
        assert!(crate::PG_MIGRATIONS.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    }

    /// A writer that fails leaves nothing behind; one that succeeds is seen whole.
    #[test]
    fn a_failed_write_leaves_nothing() {
        for (name, db) in test_dbs() {
            let before = db.read_blocking(|r| r.current_stream()).unwrap();
            let failed = db.write_blocking(|w| {
                let s = w.next_stream()?;
                w.create_user("@ghost:x", None, false, s)?;
                Err::<(), _>(StorageError::Task("refused".into()))
            });
            assert!(failed.is_err(), "{name}");
            assert_eq!(db.read_blocking(|r| r.current_stream()).unwrap(), before, "{name}: stream rolled back");
            assert!(db.read_blocking(|r| r.user("@ghost:x")).unwrap().is_none(), "{name}: user rolled back");
            // The writer is usable after a failure.
            db.write_blocking(|w| w.create_user("@real:x", Some("h"), true, 1).map(|_| ())).unwrap();
            let user = db.read_blocking(|r| r.user("@real:x")).unwrap().unwrap();
            assert!(user.admin && user.password_hash.as_deref() == Some("h"), "{name}");
        }
    }

    /// Stream positions are handed out in order, one per call, and survive a reopen of the
    /// pools (the counter lives in the database).
    #[test]
    fn stream_positions_increase_by_one() {
        for (name, db) in test_dbs() {
            let got: Vec<i64> = (0..5).map(|_| db.write_blocking(|w| w.next_stream()).unwrap()).collect();
            assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{name}: {got:?}");
            assert_eq!(db.read_blocking(|r| r.current_stream()).unwrap(), got[4], "{name}");
        }
    }

    /// A reader sees one snapshot: a write committed while it reads is not half-visible.
    #[test]
    fn a_read_is_one_snapshot() {
        for (name, db) in test_dbs() {
            db.write_blocking(|w| w.create_user("@a:x", None, false, 1).map(|_| ())).unwrap();
            let db2 = db.clone();
            let (first, second) = db
                .read_blocking(|r| {
                    let first = r.users()?.len();
                    std::thread::spawn(move || {
                        db2.write_blocking(|w| w.create_user("@b:x", None, false, 2).map(|_| ()))
                    })
                    .join()
                    .unwrap()?;
                    let second = r.users()?.len();
                    Ok::<_, StorageError>((first, second))
                })
                .unwrap();
            assert_eq!((first, second), (1, 1), "{name}: the second read in the same snapshot");
            assert_eq!(db.read_blocking(|r| r.users()).unwrap().len(), 2, "{name}: a new read sees it");
        }
    }
}
