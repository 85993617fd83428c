//! The seam between the queries and the two databases moss runs on: SQLite (embedded, the
//! default) and PostgreSQL (several processes, one database).
//!
//! Queries are written once, in the SQL both accept (`?1` placeholders, `ON CONFLICT`,
//! `RETURNING`, `CAST(… AS BIGINT)`); the few that cannot be (JSON paths, full-text search,
//! row ids) pick their text with [`Conn::dialect`]. Parameters are [`Value`]s, which each driver
//! binds as the type its server expects (PostgreSQL is strict: an `i64` for an `INT4` column is
//! an error there, so the conversion happens here, once); rows are read through [`Row::get`],
//! which converts the driver's column types the same way for both.
//!
//! What each backend guarantees is the same: a [`crate::Writer`] is one transaction that sees
//! its own writes and commits atomically; a [`crate::Reader`] reads one consistent snapshot.

pub(crate) mod pool;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::cell::RefCell;

use crate::{Result, StorageError};

/// One parameter or column value, borrowed where it can be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// Anything a query takes as a parameter.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, i8, u32, u16, u8);

impl ToValue for u64 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for usize {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}
impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        *self
    }
}

/// The parameters of one query: `[]`, `[a]`, `[a, b]` of one type, or `params![a, b, c]`.
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for [&dyn ToValue; 0] {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}
impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl<T: ToValue> Params for Vec<T> {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(&self) -> Vec<Value<'_>> {
                self.iter().map(|v| v.to_value()).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);

/// Parameters of mixed types: `params![user_id, now, limit]`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[&dyn $crate::backend::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::backend::ToValue),+] as &[&dyn $crate::backend::ToValue] };
}

/// A column value converted to a Rust type.
pub trait FromValue: Sized {
    fn from_value(v: Value<'_>) -> Result<Self>;
}

fn mismatch(want: &str, got: Value<'_>) -> StorageError {
    StorageError::Type(format!("expected {want}, found {got:?}"))
}

impl FromValue for i64 {
    fn from_value(v: Value<'_>) -> Result<Self> {
        match v {
            Value::Int(i) => Ok(i),
            other => Err(mismatch("an integer", other)),
        }
    }
}
macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value<'_>) -> Result<Self> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| StorageError::Type(format!("{i} is out of range for {}", stringify!($t))))
            }
        }
    )*};
}
int_from_value!(i32, i16, u32, u16, u8, u64, usize);

impl FromValue for bool {
    fn from_value(v: Value<'_>) -> Result<Self> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: Value<'_>) -> Result<Self> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(mismatch("a number", other)),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value<'_>) -> Result<Self> {
        match v {
            Value::Text(s) => Ok(s.to_owned()),
            Value::Blob(b) => String::from_utf8(b.to_vec()).map_err(|_| mismatch("text", v)),
            other => Err(mismatch("text", other)),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value<'_>) -> Result<Self> {
        match v {
            Value::Blob(b) => Ok(b.to_vec()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(mismatch("bytes", other)),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value<'_>) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column position (rusqlite's `r.get::<_, T>(i)` shape is kept).
pub trait ColumnIndex {
    fn index(&self) -> usize;
}
impl ColumnIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One result row.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Pg(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// The value of column `idx` as `T`.
    pub fn get<I: ColumnIndex, T: FromValue>(&self, idx: I) -> Result<T> {
        match self {
            Row::Sqlite(r) => sqlite::column(r, idx.index(), T::from_value),
            Row::Pg(r) => postgres::column(r, idx.index(), T::from_value),
        }
    }

    /// The raw value of column `idx`, for columns whose type varies by row.
    pub fn get_value<I: ColumnIndex>(&self, idx: I) -> Result<OwnedValue> {
        self.get(idx)
    }
}

/// A column value owned (for the rare reader that inspects the type itself).
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl FromValue for OwnedValue {
    fn from_value(v: Value<'_>) -> Result<Self> {
        Ok(match v {
            Value::Null => OwnedValue::Null,
            Value::Int(i) => OwnedValue::Int(i),
            Value::Real(f) => OwnedValue::Real(f),
            Value::Text(s) => OwnedValue::Text(s.to_owned()),
            Value::Blob(b) => OwnedValue::Blob(b.to_vec()),
        })
    }
}

/// Which SQL a query speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The connection a [`crate::Reader`] or [`crate::Writer`] runs its queries on, inside the
/// transaction [`crate::Db`] opened.
pub(crate) enum Conn<'a> {
    Sqlite(&'a rusqlite::Connection),
    Pg(&'a RefCell<postgres::Session>),
}

impl Conn<'_> {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Pg(_) => Dialect::Postgres,
        }
    }

    /// Every row, each mapped by `f`.
    pub(crate) fn collect<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        match self {
            Conn::Sqlite(c) => sqlite::collect(c, sql, params, &mut f),
            Conn::Pg(s) => s.borrow_mut().collect(sql, params, &mut f),
        }
    }

    /// The first row, if any, mapped by `f`.
    pub(crate) fn one<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self {
            Conn::Sqlite(c) => sqlite::one(c, sql, params, f),
            Conn::Pg(s) => s.borrow_mut().one(sql, params, f),
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) fn exec(&self, sql: &str, params: &[Value<'_>]) -> Result<usize> {
        match self {
            Conn::Sqlite(c) => sqlite::exec(c, sql, params),
            Conn::Pg(s) => s.borrow_mut().exec(sql, params),
        }
    }
}

/// `?1`, `?2`… (and bare `?`, numbered in order) as PostgreSQL's `$1`, `$2`…, outside quoted
/// strings and identifiers; and `LIKE` as `ILIKE`, because SQLite's LIKE ignores (ASCII) case
/// and every LIKE in moss's queries is written for that.
pub(crate) fn pg_placeholders(sql: &str) -> String {
    let sql = like_ignoring_case(sql);
    let sql = sql.as_str();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut next_bare = 1;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                out.push('$');
                let mut digits = false;
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                    digits = true;
                }
                if !digits {
                    out.push_str(&next_bare.to_string());
                    next_bare += 1;
                }
            }
            None => out.push(c),
        }
    }
    out
}

fn like_ignoring_case(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(i) = rest.find(" LIKE ") {
        let (before, after) = rest.split_at(i);
        out.push_str(before);
        // Inside a quoted string the word is text, not the operator.
        let quoted = out.matches('\'').count() % 2 == 1;
        out.push_str(if quoted { " LIKE " } else { " ILIKE " });
        rest = &after[" LIKE ".len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_dollars_outside_strings() {
        assert_eq!(
            pg_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(pg_placeholders("x = ? AND y = ?"), "x = $1 AND y = $2");
        assert_eq!(pg_placeholders("x = '?1' AND \"a?\" = ?2"), "x = '?1' AND \"a?\" = $2");
        assert_eq!(pg_placeholders("a LIKE ?1 AND b = ' LIKE '"), "a ILIKE $1 AND b = ' LIKE '");
    }

    #[test]
    fn params_of_mixed_types_are_values() {
        let name = String::from("alice");
        let p = params![name, 5_i64, true, None::<String>, 3_usize];
        assert_eq!(p.values(), vec![Value::Text("alice"), Value::Int(5), Value::Int(1), Value::Null, Value::Int(3)]);
        assert!([].values().is_empty());
        assert_eq!(["a"].values(), vec![Value::Text("a")]);
    }
}
