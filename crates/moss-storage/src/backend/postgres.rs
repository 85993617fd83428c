//! PostgreSQL through tokio-postgres, each session driven by a current-thread runtime of its
//! own, so queries run synchronously inside the same blocking closures as SQLite's. Each
//! session keeps its prepared statements by SQL text; placeholders are rewritten once per
//! statement.
//!
//! What a statement costs here is its round trip (a loopback exchange is ≈ 50–70 µs, a point
//! query a few µs of the server's time), so a session saves the ones it can: a transaction's
//! BEGIN travels in the same flight as its first statement (both written before either answer
//! is read), a transaction that issued no statement never begins, and a read transaction's
//! COMMIT is written without waiting for its answer (a read-only COMMIT has nothing to report;
//! the next use of the connection reads the answer and drops it).

use std::{collections::HashMap, error::Error as StdError, future::Future, pin::pin, task::Poll};

use bytes::{BufMut, BytesMut};
use futures_util::TryStreamExt;
use tokio::runtime::Runtime;
use tokio_postgres::{
    types::{to_sql_checked, FromSql, IsNull, ToSql, Type},
    Client, NoTls, Statement,
};

use super::{pg_placeholders, Row, Value};
use crate::{Result, StorageError};

fn pg(e: tokio_postgres::Error) -> StorageError {
    // The server's own message (constraint, syntax, type) says more than the driver's summary.
    match e.as_db_error() {
        Some(db) => StorageError::Postgres(format!("{} ({})", db.message(), db.code().code())),
        None => StorageError::Postgres(e.to_string()),
    }
}

/// Runs a blocking driver call. A session blocks on a runtime of its own, which tokio forbids
/// on a thread that is driving async tasks (moss opens its database from `main`'s runtime, and
/// some reads run inline, and a pool may be dropped there): on a multi-threaded runtime's worker
/// the call is moved off it with `block_in_place`, on a current-thread runtime it runs on a
/// scoped thread of its own. On `spawn_blocking` threads and outside any runtime it just runs.
fn blocking<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}

/// A connection: the client, the runtime that drives it and the task reading its socket.
struct Link {
    client: Client,
    runtime: Runtime,
    connection: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Runs `f` on this connection's runtime (off any async worker).
    fn run<T: Send>(&self, f: impl AsyncFnOnce(&Client) -> T + Send) -> T {
        blocking(|| self.runtime.block_on(f(&self.client)))
    }
}

/// One connection and its statement cache.
pub(crate) struct Session {
    /// Always `Some` until dropped (taken then, to close it off the runtime).
    link: Option<Link>,
    statements: HashMap<String, Statement>,
    /// Simple-query text sent ahead of the next statement, in the same flight: a transaction's
    /// opening, a group commit's savepoints.
    pending: Option<String>,
    /// Whether the open transaction's BEGIN has gone out (if not, ending it has nothing to do).
    begun: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        let statements = std::mem::take(&mut self.statements);
        let Some(Link { client, runtime, connection }) = self.link.take() else { return };
        // Closing blocks on the session's runtime, so not on an async worker: the statements
        // are closed and the client dropped, then the connection says goodbye and ends.
        blocking(move || {
            drop(statements);
            drop(client);
            runtime.block_on(async {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection).await;
            });
        });
    }
}

impl Session {
    pub(crate) fn connect(url: &str) -> Result<Session> {
        let link = blocking(|| -> Result<Link> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StorageError::Postgres(format!("starting the connection's runtime: {e}")))?;
            let (client, connection) = runtime.block_on(tokio_postgres::connect(url, NoTls)).map_err(pg)?;
            let connection = runtime.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok(Link { client, runtime, connection })
        })?;
        Ok(Session { link: Some(link), statements: HashMap::new(), pending: None, begun: false })
    }

    fn link(&self) -> Result<&Link> {
        self.link.as_ref().ok_or(StorageError::Postgres("the connection is closed".into()))
    }

    /// Opens a transaction with `sql` (BEGIN …), sent with the first statement that follows.
    pub(crate) fn begin(&mut self, sql: String) {
        self.pending = Some(sql);
        self.begun = false;
    }

    /// Sends `sql` (simple-query text, e.g. a savepoint) ahead of the next statement, after what
    /// is already pending.
    pub(crate) fn queue(&mut self, sql: &str) {
        self.pending = Some(match self.pending.take() {
            Some(p) => format!("{p}; {sql}"),
            None => sql.to_owned(),
        });
    }

    /// What is pending, taken to be sent now (the transaction has begun once it is).
    fn take_pending(&mut self) -> Option<String> {
        let p = self.pending.take();
        self.begun |= p.is_some();
        p
    }

    /// Ends the transaction [`Session::begin`] opened: `COMMIT` or `ROLLBACK` (after whatever is
    /// pending), waiting for the answer (a write is acknowledged only once committed). Nothing to
    /// do if it never began.
    pub(crate) fn end(&mut self, sql: &str) -> Result<()> {
        if !std::mem::take(&mut self.begun) {
            self.pending = None;
            return Ok(());
        }
        let out = self.batch(sql);
        self.begun = false;
        out
    }

    /// Ends a read-only transaction: COMMIT written to the socket without waiting for its answer.
    pub(crate) fn end_read(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.begun) {
            self.pending = None;
            return Ok(());
        }
        self.link()?.run(async |client| {
            {
                let mut commit = pin!(client.batch_execute("COMMIT"));
                // The first poll hands the message to the connection task; the answer is not
                // awaited (dropping the future tells the connection to discard it).
                std::future::poll_fn(|cx| {
                    let _ = commit.as_mut().poll(cx);
                    Poll::Ready(())
                })
                .await;
            }
            // Lets the connection task write it now, so the snapshot is released at once.
            tokio::task::yield_now().await;
        });
        Ok(())
    }

    /// Runs `f`'s request, preceded in the same flight by a pending transaction opening.
    fn pipelined<T: Send>(
        &mut self,
        f: impl AsyncFnOnce(&Client) -> std::result::Result<T, tokio_postgres::Error> + Send,
    ) -> Result<T> {
        let begin = self.take_pending();
        self.link()?.run(async |client| match begin {
            None => f(client).await.map_err(pg),
            Some(begin) => {
                let (begun, out) = futures_util::future::join(client.batch_execute(&begin), f(client)).await;
                begun.map_err(pg)?;
                out.map_err(pg)
            }
        })
    }

    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        let sql = match self.take_pending() {
            Some(begin) => format!("{begin}; {sql}"),
            None => sql.to_owned(),
        };
        self.link()?.run(async |client| client.batch_execute(&sql).await.map_err(pg))
    }

    /// The first column of the first row of a statement without parameters.
    pub(crate) fn scalar_i64(&mut self, sql: &str) -> Result<Option<i64>> {
        let rows = self.pipelined(async |c| c.query(sql, &[]).await)?;
        rows.first().map(|r| r.try_get::<_, i64>(0)).transpose().map_err(pg)
    }

    /// The three integer columns of the first row of a statement without parameters.
    pub(crate) fn one_row3(&mut self, sql: &str) -> Result<Option<(i64, i64, i64)>> {
        let rows = self.pipelined(async |c| c.query(sql, &[]).await)?;
        rows.first()
            .map(|r| Ok((r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?, r.try_get(2).map_err(pg)?)))
            .transpose()
    }

    /// Runs `f` in a transaction of its own, committed if it returns `Ok`.
    pub(crate) fn transaction(&mut self, f: impl FnOnce(&mut Session) -> Result<()>) -> Result<()> {
        self.begin("BEGIN".into());
        match f(self) {
            Ok(()) => self.end("COMMIT"),
            Err(e) => {
                let _ = self.end("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs a statement written with `$n` placeholders (and no statement cache: bulk inserts
    /// differ in length).
    pub(crate) fn exec_raw(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.pipelined(async |c| c.execute(sql, &refs).await)
    }

    /// Streams a query's rows, hashing each row's `columns` values with `hash`: the row count
    /// and the wrapping sum of the row hashes (independent of row order).
    pub(crate) fn checksum(
        &mut self,
        sql: &str,
        columns: usize,
        hash: fn(&mut std::collections::hash_map::DefaultHasher, Value<'_>),
    ) -> Result<(u64, u64)> {
        use std::hash::Hasher;
        if let Some(begin) = self.take_pending() {
            self.batch(&begin)?;
        }
        self.link()?.run(async |client| {
            let rows = client.query_raw(sql, std::iter::empty::<&(dyn ToSql + Sync)>()).await.map_err(pg)?;
            let mut rows = pin!(rows);
            let (mut count, mut sum) = (0u64, 0u64);
            while let Some(row) = rows.try_next().await.map_err(pg)? {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for i in 0..columns {
                    let raw: Raw<'_> = row.try_get(i).map_err(pg)?;
                    hash(&mut h, raw.0);
                }
                sum = sum.wrapping_add(h.finish());
                count += 1;
            }
            Ok((count, sum))
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.link.as_ref().is_none_or(|l| l.client.is_closed())
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let text = pg_placeholders(sql);
        let stmt = self.link()?.run(async |client| client.prepare(&text).await).map_err(|e| {
            // A statement that does not prepare is a bug in moss's SQL: say which.
            match pg(e) {
                StorageError::Postgres(m) => {
                    StorageError::Postgres(format!("{m} in: {}", sql.chars().take(300).collect::<String>()))
                }
                other => other,
            }
        })?;
        if self.statements.len() >= 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<tokio_postgres::Row>> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.pipelined(async |c| c.query(&stmt, &refs).await)
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
        let n = self.pipelined(async |c| c.execute(&stmt, &refs).await)?;
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
            Type::NUMERIC => numeric(raw)?,
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

/// NUMERIC (what `SUM` of integers gives) from its binary form: digit count, weight, sign,
/// display scale, then base-10000 digits. Whole numbers become integers, others reals.
fn numeric(raw: &[u8]) -> std::result::Result<Value<'static>, BoxError> {
    let word = |i: usize| -> std::result::Result<i16, BoxError> {
        let b = raw.get(i * 2..i * 2 + 2).ok_or("NUMERIC value is truncated")?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    };
    let (ndigits, weight, sign) = (word(0)?, word(1)?, word(2)? as u16);
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut int: i128 = 0;
    let mut real = 0f64;
    let mut whole = true;
    for i in 0..ndigits.max(0) as usize {
        let digit = i128::from(word(4 + i)?);
        let power = i32::from(weight) - i as i32;
        real += digit as f64 * 10000f64.powi(power);
        if power >= 0 {
            int = int.checked_mul(10000).and_then(|v| v.checked_add(digit)).ok_or("NUMERIC out of range")?;
        } else if digit != 0 {
            whole = false;
        }
    }
    // Trailing zero groups of a whole number are not stored: scale up to the weight.
    let stored_int_groups = (i32::from(weight) + 1).min(i32::from(ndigits.max(0)));
    for _ in stored_int_groups..(i32::from(weight) + 1) {
        int = int.checked_mul(10000).ok_or("NUMERIC out of range")?;
    }
    let negative = sign == 0x4000;
    if whole {
        let v = i64::try_from(if negative { -int } else { int })?;
        Ok(Value::Int(v))
    } else {
        Ok(Value::Real(if negative { -real } else { real }))
    }
}

pub(super) fn column<T>(r: &tokio_postgres::Row, idx: usize, f: impl FnOnce(Value<'_>) -> Result<T>) -> Result<T> {
    let raw: Raw<'_> = r.try_get(idx).map_err(|e| StorageError::Type(format!("column {idx}: {e}")))?;
    f(raw.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ndigits: i16, weight: i16, sign: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight, sign as i16, 0] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_sums_decode_as_integers() {
        assert_eq!(numeric(&enc(0, 0, 0, &[])).unwrap(), Value::Int(0));
        assert_eq!(numeric(&enc(1, 0, 0, &[42])).unwrap(), Value::Int(42));
        // 1_2345_6789 = [1, 2345, 6789], weight 2
        assert_eq!(numeric(&enc(3, 2, 0, &[1, 2345, 6789])).unwrap(), Value::Int(123_456_789));
        // 50_000_000 = [5000] weight 1 with the trailing 0000 group not stored
        assert_eq!(numeric(&enc(1, 1, 0, &[5000])).unwrap(), Value::Int(50_000_000));
        assert_eq!(numeric(&enc(1, 0, 0x4000, &[7])).unwrap(), Value::Int(-7));
        assert_eq!(numeric(&enc(2, 0, 0, &[1, 5000])).unwrap(), Value::Real(1.5));
    }
}
