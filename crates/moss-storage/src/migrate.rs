//! `moss db migrate --to postgres://…`: copies a SQLite database into an empty PostgreSQL one.
//!
//! Guarantees: every row of every table arrives (tables kept by triggers are rebuilt by
//! PostgreSQL's triggers as the rows they derive from arrive, then compared like the rest); the
//! copy is verified at the end, table by table, by row count and an order-independent checksum
//! of the rows' values read back from both databases; it is resumable: each batch commits
//! together with the table's progress (`moss_db_migration`), so a copy that stops (crash, ^C,
//! lost connection) continues where it was when run again. The source is only read; moss must
//! not be running on it meanwhile (a changed source shows up as a failed verification).

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::Path,
};

use rusqlite::{types::ValueRef, Connection, OpenFlags};

use crate::{
    backend::{postgres::Session, Value},
    Result, StorageError, MIGRATIONS,
};

/// Tables whose rows PostgreSQL's triggers derive from other tables: not copied, verified.
const DERIVED: &[&str] = &["event_relations", "event_search", "room_list_info"];
/// SQLite's own and full-text search's internal tables.
fn internal(table: &str) -> bool {
    table.starts_with("sqlite_") || (table.starts_with("event_search_") && table != "event_search")
}
/// Copied before the tables whose triggers read them.
const FIRST: &[&str] = &["events"];

/// One table's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub rows: u64,
    pub checksum: u64,
    pub derived: bool,
}

/// What the caller is told while copying: `(table, rows copied so far, rows in all)`.
pub trait Progress {
    fn table(&mut self, table: &str, copied: u64, total: u64);
    fn verifying(&mut self, table: &str);
}

struct Column {
    name: String,
}

fn table_columns(src: &Connection, table: &str) -> Result<Vec<Column>> {
    let mut stmt = src.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let cols = stmt.query_map([], |r| r.get::<_, String>(1))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cols.into_iter().map(|name| Column { name }).collect())
}

fn has_rowid(src: &Connection, table: &str) -> Result<bool> {
    Ok(src.prepare(&format!("SELECT rowid FROM \"{table}\" LIMIT 0")).is_ok())
}

/// The order tables are copied in: events first (current_state's trigger reads them), the
/// rest by name.
fn tables(src: &Connection) -> Result<Vec<String>> {
    let mut stmt = src.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
    let mut names: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|t| !internal(t))
        .collect();
    names.sort_by_key(|t| (!FIRST.contains(&t.as_str()), t.clone()));
    Ok(names)
}

fn value_ref(v: ValueRef<'_>) -> Result<Value<'_>> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(std::str::from_utf8(t).map_err(|e| StorageError::Type(e.to_string()))?),
        ValueRef::Blob(b) => Value::Blob(b),
    })
}

fn hash_value(h: &mut DefaultHasher, v: Value<'_>) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Int(i) => (1u8, i).hash(h),
        Value::Real(f) => (2u8, f.to_bits()).hash(h),
        Value::Text(s) => (3u8, s.as_bytes()).hash(h),
        Value::Blob(b) => (3u8, b).hash(h),
    }
}

/// Copies the SQLite database at `sqlite` into the PostgreSQL database at `url`, then verifies.
pub fn migrate_sqlite_to_postgres(
    sqlite: &Path,
    url: &str,
    batch: usize,
    stop_after_batches: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<Vec<TableReport>> {
    let src = Connection::open_with_flags(sqlite, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 = src.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != MIGRATIONS.len() as i64 {
        return Err(StorageError::Migrate(format!(
            "the SQLite database is at schema version {version}; start this moss on it once (it migrates at \
             start) so that it is at version {}, then copy",
            MIGRATIONS.len()
        )));
    }
    // Creates PostgreSQL's schema when the database is new.
    drop(crate::Db::open_postgres(url)?);
    let mut pg = Session::connect(url)?;
    pg.batch(
        "CREATE TABLE IF NOT EXISTS moss_db_migration (\
             name TEXT PRIMARY KEY, last_key BIGINT NOT NULL, copied BIGINT NOT NULL, done BIGINT NOT NULL)",
    )?;
    let started = pg.scalar_i64("SELECT COUNT(*) FROM moss_db_migration")?.unwrap_or(0) > 0;
    if !started {
        let users = pg.scalar_i64("SELECT COUNT(*) FROM users")?.unwrap_or(0);
        let events = pg.scalar_i64("SELECT COUNT(*) FROM events")?.unwrap_or(0);
        if users > 0 || events > 0 {
            return Err(StorageError::Migrate(
                "the PostgreSQL database already has users or events: copy into an empty database".into(),
            ));
        }
    }
    let mut batches = 0u64;
    // PostgreSQL takes at most 65,535 parameters per statement.
    let batch = batch.max(1);
    for table in tables(&src)? {
        if DERIVED.contains(&table.as_str()) {
            continue;
        }
        let cols = table_columns(&src, &table)?;
        let rowid = has_rowid(&src, &table)?;
        // PostgreSQL keeps SQLite's rowid as a column where queries order or delete by it.
        let pg_rowid = pg
            .scalar_i64(&format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = '{table}' AND column_name = 'rowid'"
            ))?
            .unwrap_or(0)
            > 0;
        let total: u64 =
            src.query_row(&format!("SELECT COUNT(*) FROM \"{table}\""), [], |r| r.get::<_, i64>(0))? as u64;
        let (mut last_key, mut copied, done) = pg
            .one_row3(&format!("SELECT last_key, copied, done FROM moss_db_migration WHERE name = '{table}'"))?
            .unwrap_or((i64::MIN, 0, 0));
        if done == 1 {
            progress.table(&table, total, total);
            continue;
        }
        if copied == 0 {
            // Seed rows (the stream counters) give way to the source's.
            pg.batch(&format!("DELETE FROM \"{table}\""))?;
        }
        let mut names: Vec<String> = cols.iter().map(|c| format!("\"{}\"", c.name)).collect();
        if pg_rowid {
            names.insert(0, "rowid".into());
        }
        let select_cols = if rowid {
            format!("rowid, {}", cols.iter().map(|c| format!("\"{}\"", c.name)).collect::<Vec<_>>().join(", "))
        } else {
            names.join(", ")
        };
        progress.table(&table, copied as u64, total);
        let batch = batch.min(60_000 / names.len().max(1)).max(1);
        loop {
            let sql = if rowid {
                format!("SELECT {select_cols} FROM \"{table}\" WHERE rowid > ?1 ORDER BY rowid LIMIT {batch}")
            } else {
                format!(
                    "SELECT {select_cols} FROM \"{table}\" ORDER BY {} LIMIT {batch} OFFSET ?1",
                    (1..=names.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                )
            };
            let mut stmt = src.prepare_cached(&sql)?;
            let key = if rowid { last_key } else { copied };
            let mut rows = stmt.query([key])?;
            let mut owned: Vec<OwnedRow> = Vec::new();
            let mut n = 0usize;
            while let Some(r) = rows.next()? {
                let mut row = OwnedRow::default();
                let skip = usize::from(rowid && !pg_rowid);
                let width = if rowid { cols.len() + 1 } else { names.len() };
                for i in 0..width {
                    if rowid && i == 0 {
                        last_key = r.get::<_, i64>(0)?;
                    }
                    if i < skip {
                        continue;
                    }
                    row.0.push(OwnedValue::from(value_ref(r.get_ref(i)?)?));
                }
                owned.push(row);
                n += 1;
            }
            drop(rows);
            if n == 0 {
                break;
            }
            copied += n as i64;
            let placeholders_per_row = names.len();
            let mut sql = format!("INSERT INTO \"{table}\" ({}) VALUES ", names.join(", "));
            let mut p = 1;
            for (i, _) in owned.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for c in 0..placeholders_per_row {
                    if c > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${p}"));
                    p += 1;
                }
                sql.push(')');
            }
            let params: Vec<Value<'_>> = owned.iter().flat_map(|r| r.0.iter().map(OwnedValue::as_value)).collect();
            let key_now = if rowid { last_key } else { copied };
            pg.transaction(|s| {
                s.exec_raw(&sql, &params)?;
                s.exec_raw(
                    "INSERT INTO moss_db_migration (name, last_key, copied, done) VALUES ($1, $2, $3, 0) \
                     ON CONFLICT (name) DO UPDATE SET last_key = excluded.last_key, copied = excluded.copied",
                    &[Value::Text(&table), Value::Int(key_now), Value::Int(copied)],
                )?;
                Ok(())
            })?;
            progress.table(&table, copied as u64, total);
            batches += 1;
            if stop_after_batches.is_some_and(|max| batches >= max) {
                return Err(StorageError::Migrate(format!("stopped after {batches} batches, as asked")));
            }
        }
        pg.batch(&format!("UPDATE moss_db_migration SET done = 1 WHERE name = '{table}'"))?;
        if copied == 0 {
            pg.batch(&format!(
                "INSERT INTO moss_db_migration (name, last_key, copied, done) VALUES ('{table}', 0, 0, 1) \
                 ON CONFLICT (name) DO UPDATE SET done = 1"
            ))?;
        }
    }
    // Sequences continue after the copied ids.
    for (table, column) in [
        ("state_groups", "id"),
        ("reports", "id"),
        ("federation_outbox", "id"),
        ("to_device", "rowid"),
        ("one_time_keys", "rowid"),
        ("media_inflight", "rowid"),
    ] {
        pg.batch(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
        ))?;
    }
    verify(&src, &mut pg, progress)
}

/// Row count and checksum of every table on both sides; an error names the first difference.
fn verify(src: &Connection, pg: &mut Session, progress: &mut dyn Progress) -> Result<Vec<TableReport>> {
    let mut reports = Vec::new();
    for table in tables(src)? {
        progress.verifying(&table);
        let cols = table_columns(src, &table)?;
        let list = cols.iter().map(|c| format!("\"{}\"", c.name)).collect::<Vec<_>>().join(", ");
        let (mut count, mut sum) = (0u64, 0u64);
        {
            let mut stmt = src.prepare(&format!("SELECT {list} FROM \"{table}\""))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let mut h = DefaultHasher::new();
                for i in 0..cols.len() {
                    hash_value(&mut h, value_ref(r.get_ref(i)?)?);
                }
                sum = sum.wrapping_add(h.finish());
                count += 1;
            }
        }
        let (pg_count, pg_sum) = pg.checksum(&format!("SELECT {list} FROM \"{table}\""), cols.len(), hash_value)?;
        if (count, sum) != (pg_count, pg_sum) {
            return Err(StorageError::Migrate(format!(
                "table {table} differs after the copy: SQLite {count} rows (checksum {sum:016x}), PostgreSQL \
                 {pg_count} rows (checksum {pg_sum:016x})"
            )));
        }
        reports.push(TableReport {
            table: table.clone(),
            rows: count,
            checksum: sum,
            derived: DERIVED.contains(&table.as_str()),
        });
    }
    pg.batch("UPDATE moss_db_migration SET done = 2")?;
    Ok(reports)
}

#[derive(Default)]
struct OwnedRow(Vec<OwnedValue>);

enum OwnedValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<Value<'_>> for OwnedValue {
    fn from(v: Value<'_>) -> Self {
        match v {
            Value::Null => OwnedValue::Null,
            Value::Int(i) => OwnedValue::Int(i),
            Value::Real(f) => OwnedValue::Real(f),
            Value::Text(s) => OwnedValue::Text(s.to_owned()),
            Value::Blob(b) => OwnedValue::Blob(b.to_vec()),
        }
    }
}

impl OwnedValue {
    fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Null => Value::Null,
            OwnedValue::Int(i) => Value::Int(*i),
            OwnedValue::Real(f) => Value::Real(*f),
            OwnedValue::Text(s) => Value::Text(s),
            OwnedValue::Blob(b) => Value::Blob(b),
        }
    }
}
