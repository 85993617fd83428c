//! A layer that measures the layer below it: bytes read and written, how long each operation
//! took (a read until its stream ends or is dropped, a write until it is durable) and which
//! failed, told to a [`StoreObserver`] under a layer name (`fs`, `s3`, `encrypt`, `cache`).
//!
//! Guarantees: nothing changes for the caller — same results, same errors, the same stream
//! chunk by chunk; the observer is called once per operation, after it finished.
//!
//! Put one above each layer of interest: the difference between two layers' numbers is what the
//! upper one added (encryption time), and reads that reach the layer under a cache are its
//! misses.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, Stream, StreamExt};

use super::{BlobStore, ByteStream, ObjectInfo, Range};
use crate::Result;

/// What a store operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// How one HTTP request to an S3 store ended. The S3 client retries an operation after a
/// `Throttled`, `ServerError` or `Transport` outcome (a few times, with backoff), so those count
/// its retries plus the final failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Outcome {
    /// A response other than the two below (success, not found, precondition failed…).
    Answered,
    /// 429 or 503 Slow Down.
    Throttled,
    /// Any other 5xx.
    ServerError,
    /// No response: connection refused or reset, timeout.
    Transport,
}

impl S3Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            S3Outcome::Answered => "answered",
            S3Outcome::Throttled => "throttled",
            S3Outcome::ServerError => "server_error",
            S3Outcome::Transport => "transport",
        }
    }
}

/// Told of every measured operation.
pub trait StoreObserver: Send + Sync + 'static {
    fn op(&self, layer: &'static str, op: Op, bytes: u64, took: Duration, ok: bool);

    /// One HTTP request to an S3 store (see [`S3Outcome`]).
    fn s3_request(&self, outcome: S3Outcome) {
        let _ = outcome;
    }
}

pub struct MeteredStore {
    inner: Arc<dyn BlobStore>,
    layer: &'static str,
    observer: Arc<dyn StoreObserver>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn BlobStore>, layer: &'static str, observer: Arc<dyn StoreObserver>) -> MeteredStore {
        MeteredStore { inner, layer, observer }
    }
}

/// Counts what flows through a stream and reports when it ends, fails or is dropped.
struct Counted {
    inner: ByteStream,
    bytes: u64,
    ok: bool,
    started: Instant,
    report: Option<(Arc<dyn StoreObserver>, &'static str, Op)>,
}

impl Counted {
    fn finish(&mut self) {
        if let Some((observer, layer, op)) = self.report.take() {
            observer.op(layer, op, self.bytes, self.started.elapsed(), self.ok);
        }
    }
}

impl Stream for Counted {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => self.bytes += chunk.len() as u64,
            Poll::Ready(Some(Err(_))) => {
                self.ok = false;
                self.finish();
            }
            Poll::Ready(None) => self.finish(),
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

impl BlobStore for MeteredStore {
    fn streams_writes(&self) -> bool {
        self.inner.streams_writes()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, data: ByteStream) -> BoxFuture<'a, Result<()>> {
        async move {
            let started = Instant::now();
            let out = self.inner.put(key, size, data).await;
            self.observer.op(self.layer, Op::Write, size, started.elapsed(), out.is_ok());
            out
        }
        .boxed()
    }

    fn put_file<'a>(&'a self, key: &'a str, size: u64, path: &'a std::path::Path) -> BoxFuture<'a, Result<()>> {
        async move {
            let started = Instant::now();
            let out = self.inner.put_file(key, size, path).await;
            self.observer.op(self.layer, Op::Write, size, started.elapsed(), out.is_ok());
            out
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            let started = Instant::now();
            match self.inner.get(key, range).await {
                Ok(inner) => {
                    let report = Some((self.observer.clone(), self.layer, Op::Read));
                    let counted = Counted { inner, bytes: 0, ok: true, started, report };
                    Ok(counted.boxed())
                }
                Err(e) => {
                    // A missing object is an answer, not a failure of the store.
                    let ok = matches!(e, crate::MediaError::NotFound);
                    self.observer.op(self.layer, Op::Read, 0, started.elapsed(), ok);
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        self.inner.head(key)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        self.inner.delete(key)
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        self.inner.list()
    }

    fn check(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.check()
    }

    fn presigned_get<'a>(
        &'a self,
        key: &'a str,
        expires: std::time::Duration,
        overrides: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<Option<String>>> {
        self.inner.presigned_get(key, expires, overrides)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::{fs::FsStore, once, read_all};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(&'static str, Op, u64, bool)>>);

    impl StoreObserver for Seen {
        fn op(&self, layer: &'static str, op: Op, bytes: u64, _took: Duration, ok: bool) {
            self.0.lock().unwrap().push((layer, op, bytes, ok));
        }
    }

    #[tokio::test]
    async fn reports_each_operation_once_with_its_bytes() {
        let dir = std::env::temp_dir().join(format!("moss-metered-{}", std::process::id()));
        let seen = Arc::new(Seen::default());
        let store = MeteredStore::new(Arc::new(FsStore::open(&dir).unwrap()), "fs", seen.clone());
        store.put("k1", 11, once(&b"hello world"[..])).await.unwrap();
        let data = read_all(store.get("k1", None).await.unwrap()).await.unwrap();
        assert_eq!(data, b"hello world");
        let part = read_all(store.get("k1", Some(Range { start: 0, end: 5 })).await.unwrap()).await.unwrap();
        assert_eq!(part, b"hello");
        // A read dropped half-way reports what was read.
        drop(store.get("k1", None).await.unwrap());
        assert!(store.get("missing", None).await.is_err());
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                ("fs", Op::Write, 11, true),
                ("fs", Op::Read, 11, true),
                ("fs", Op::Read, 5, true),
                ("fs", Op::Read, 0, true),
                ("fs", Op::Read, 0, true),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
