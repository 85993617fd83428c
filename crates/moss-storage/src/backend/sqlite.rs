//! SQLite through rusqlite: cached prepared statements, values bound and read without copies.

use rusqlite::{
    types::{ToSqlOutput, ValueRef},
    Connection,
};

use super::{Row, Value};
use crate::{Result, StorageError};

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(f) => ValueRef::Real(f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

pub(super) fn column<T>(r: &rusqlite::Row<'_>, idx: usize, f: impl FnOnce(Value<'_>) -> Result<T>) -> Result<T> {
    let v = match r.get_ref(idx)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) => Value::Text(std::str::from_utf8(t).map_err(|e| StorageError::Type(e.to_string()))?),
        ValueRef::Blob(b) => Value::Blob(b),
    };
    f(v)
}

pub(super) fn collect<T>(
    c: &Connection,
    sql: &str,
    params: &[Value<'_>],
    f: &mut dyn FnMut(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(&Row::Sqlite(r))?);
    }
    Ok(out)
}

pub(super) fn one<T>(
    c: &Connection,
    sql: &str,
    params: &[Value<'_>],
    f: impl FnOnce(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    match rows.next()? {
        Some(r) => f(&Row::Sqlite(r)).map(Some),
        None => Ok(None),
    }
}

pub(super) fn exec(c: &Connection, sql: &str, params: &[Value<'_>]) -> Result<usize> {
    Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params.iter()))?)
}
