//! The one trait every blob store and layer implements.

pub mod cache;
pub mod encrypt;
pub mod fallback;
pub mod fs;
pub mod metered;
pub mod mirror;
pub mod s3;
mod s3_http;

use bytes::Bytes;
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt};

use crate::{MediaError, Result};

/// Object content as a stream of chunks.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A byte range, `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size of the object as the layer presents it (plaintext size for the encryption layer).
    pub size: u64,
}

/// A flat key → bytes store. Keys are short ASCII strings without `/`.
///
/// `put` returns only once the object is durable; a reader never sees half an object.
pub trait BlobStore: Send + Sync + 'static {
    /// A name for logs and diagnostics, e.g. `fs:/var/lib/moss/media`.
    fn describe(&self) -> String;

    /// Stores `size` bytes from `data` under `key`, replacing any object there.
    fn put<'a>(&'a self, key: &'a str, size: u64, data: ByteStream) -> BoxFuture<'a, Result<()>>;

    /// Stores the file at `path` (`size` bytes) under `key`. The caller hands the file over: the
    /// store may take it as it is (a store on the same filesystem renames it into place) or
    /// leave it where it is. By default it is streamed through [`BlobStore::put`].
    fn put_file<'a>(&'a self, key: &'a str, size: u64, path: &'a std::path::Path) -> BoxFuture<'a, Result<()>> {
        async move { self.put(key, size, file_stream(path).await?).await }.boxed()
    }

    /// Whether `put` sends the body on while it still arrives (a store across the network)
    /// instead of needing it whole first. An upload is then best handed over as it comes in,
    /// under a name chosen before its content hash is known, so that receiving and storing
    /// overlap. Layers answer for the store they write to.
    fn streams_writes(&self) -> bool {
        false
    }

    /// Reads the object, or `range` of it.
    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>>;

    /// The object's size, or `None` if it does not exist.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>>;

    /// Deletes the object; deleting a missing object is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Every key in the store (order unspecified). For maintenance, never for request paths.
    fn list(&self) -> BoxStream<'_, Result<String>>;

    /// A URL a client can GET the object from directly for `expires`, with the response's
    /// headers set by `overrides` (S3's `response-content-type` and the like), or `None` where
    /// the store cannot hand out such links or must not (encrypted content, a read-through).
    fn presigned_get<'a>(
        &'a self,
        key: &'a str,
        expires: std::time::Duration,
        overrides: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<Option<String>>> {
        let _ = (key, expires, overrides);
        async { Ok(None) }.boxed()
    }

    /// Whether the store can serve requests now (for `/health`): by default, a `head` of a key
    /// that does not exist answers without an error. Layers check every store they depend on.
    fn check(&self) -> BoxFuture<'_, Result<()>> {
        async move { self.head("moss-health-probe").await.map(drop) }.boxed()
    }
}

/// A file's content as a stream of 256 KiB chunks.
pub async fn file_stream(path: &std::path::Path) -> Result<ByteStream> {
    let file = tokio::fs::File::open(path).await?;
    let s = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok(Box::pin(s))
}

/// Collects a stream into memory; for small objects and tests.
pub async fn read_all(s: ByteStream) -> Result<Vec<u8>> {
    read_at_most(s, usize::MAX).await
}

/// Collects a stream into memory, failing (`Corrupt`) as soon as it grows past `max` bytes, so
/// an object larger than its record says never fills memory.
pub async fn read_at_most(mut s: ByteStream, max: usize) -> Result<Vec<u8>> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        if out.len().saturating_add(chunk.len()) > max {
            return Err(MediaError::Corrupt(format!("object larger than the {max} bytes expected")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A stream over one in-memory buffer.
pub fn once(data: impl Into<Bytes>) -> ByteStream {
    let b: Bytes = data.into();
    Box::pin(futures_util::stream::once(async move { Ok(b) }))
}

/// Gives the allocator's free memory back to the system, in the background. Called at the end
/// of large transfers: their buffers end up scattered through the heap, and glibc only returns
/// free memory at the top of it on its own, so RSS would stay tens of MiB above idle after one.
pub(crate) fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        // SAFETY: malloc_trim only returns free pages to the kernel.
        rt.spawn_blocking(|| unsafe { libc::malloc_trim(0) });
    }
}

/// Checks that a key is one the stores accept: flat, short, and safe as a file name.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !key.starts_with('.')
}
