//! PostgreSQL through the `postgres` crate (tokio-postgres driven by a runtime of its own), so
//! queries run synchronously inside the same blocking closures as SQLite's. Each session keeps
//! its prepared statements by SQL text; placeholders are rewritten once per statement.

use std::{collections::HashMap, error::Error as StdError};

use bytes::{BufMut, BytesMut};
use postgres::{
    types::{to_sql_checked, FromSql, IsNull, ToSql, Type},
    Client, NoTls, Statement,
};

use super::{pg_placeholders, Row, Value};
use crate::{Result, StorageError};

fn pg(e: postgres::Error) -> StorageError {
    // The server's own message (constraint, syntax, type) says more than the driver's summary.
    match e.as_db_error() {
        Some(db) => StorageError::Postgres(format!("{} ({})", db.message(), db.code().code())),
        None => StorageError::Postgres(e.to_string()),
    }
}

/// One connection and its statement cache.
pub(crate) struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Session {
    pub(crate) fn connect(url: &str) -> Result<Session> {
        let client = Client::connect(url, NoTls).map_err(pg)?;
        Ok(Session { client, statements: HashMap::new() })
    }

    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(pg)
    }

    /// The first column of the first row of a statement without parameters.
    pub(crate) fn scalar_i64(&mut self, sql: &str) -> Result<Option<i64>> {
        let rows = self.client.query(sql, &[]).map_err(pg)?;
        rows.first().map(|r| r.try_get::<_, i64>(0)).transpose().map_err(pg)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(&pg_placeholders(sql)).map_err(pg)?;
        if self.statements.len() >= 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<postgres::Row>> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.client.query(&stmt, &refs).map_err(pg)
    }

    pub(super) fn collect<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        f: &mut dyn FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.query(sql, params)?.iter().map(|r| f(&Row::Pg(r))).collect()
    }

    pub(super) fn one<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.query(sql, params)?.first() {
            Some(r) => f(&Row::Pg(r)).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn exec(&mut self, sql: &str, params: &[Value<'_>]) -> Result<usize> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let n = self.client.execute(&stmt, &refs).map_err(pg)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

/// Values are bound as whatever type the server inferred for the placeholder: integers as
/// INT8/INT4/INT2/BOOL/FLOAT8, text as TEXT/VARCHAR/JSON(B), bytes as BYTEA.
impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::FLOAT4 => (i as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => i.to_string().to_sql(ty, out),
                ref other => Err(format!("an integer cannot be bound as {other}").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                ref other => Err(format!("a real cannot be bound as {other}").into()),
            },
            Value::Text(s) => match *ty {
                Type::JSONB => {
                    out.put_u8(1);
                    out.put_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                _ => s.to_sql(&Type::TEXT, out),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                _ => std::str::from_utf8(b)?.to_sql(&Type::TEXT, out),
            },
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column read as whatever it is, converted to a [`Value`].
struct Raw<'a>(Value<'a>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        Ok(Raw(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::BYTEA => Value::Blob(raw),
            // jsonb's binary form is a version byte, then the text.
            Type::JSONB => Value::Text(std::str::from_utf8(raw.get(1..).unwrap_or_default())?),
            _ => Value::Text(<&str>::from_sql(&Type::TEXT, raw)?),
        }))
    }

    fn from_sql_null(_ty: &Type) -> std::result::Result<Self, BoxError> {
        Ok(Raw(Value::Null))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

pub(super) fn column<T>(r: &postgres::Row, idx: usize, f: impl FnOnce(Value<'_>) -> Result<T>) -> Result<T> {
    let raw: Raw<'_> = r.try_get(idx).map_err(|e| StorageError::Type(format!("column {idx}: {e}")))?;
    f(raw.0)
}
