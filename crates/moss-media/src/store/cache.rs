//! A bounded local disk cache in front of a (slow or remote) store.
//!
//! Reads of cached objects never touch the store behind, so they keep working while it is
//! down. Whole-object reads that miss are copied into the cache as they stream to the caller;
//! writes go through to the store and, once it has them, into the cache. The least recently
//! used objects are evicted when the cache grows past its size; recency survives restarts
//! through the files' modification times.

use std::{
    collections::HashMap,
    io::SeekFrom,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use bytes::Bytes;
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{valid_key, BlobStore, ByteStream, ObjectInfo, Range};
use crate::{MediaError, Result};

struct Entry {
    size: u64,
    used: u64,
}

struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

/// Records an object of `size` bytes as just used, then evicts the least recently used objects
/// until the cache fits in `max_bytes` again.
fn admit_into(index: &Mutex<Index>, dir: &std::path::Path, max_bytes: u64, key: Option<(&str, u64)>) {
    let victims = {
        let mut idx = index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, size)) = key {
            idx.clock += 1;
            let used = idx.clock;
            if let Some(old) = idx.entries.insert(key.to_owned(), Entry { size, used }) {
                idx.total -= old.size;
            }
            idx.total += size;
        }
        let mut by_age: Vec<(u64, String, u64)> =
            idx.entries.iter().map(|(k, e)| (e.used, k.clone(), e.size)).collect();
        by_age.sort();
        let mut victims = Vec::new();
        for (_, k, size) in by_age {
            if idx.total <= max_bytes {
                break;
            }
            idx.entries.remove(&k);
            idx.total -= size;
            victims.push(k);
        }
        victims
    };
    for k in victims {
        let _ = std::fs::remove_file(dir.join(k));
    }
}

pub struct CacheStore {
    inner: Arc<dyn BlobStore>,
    dir: PathBuf,
    max_bytes: u64,
    index: Arc<Mutex<Index>>,
}

impl CacheStore {
    /// Opens the cache in `dir`, indexing what an earlier run left there (oldest first).
    pub fn open(inner: Arc<dyn BlobStore>, dir: impl Into<PathBuf>, max_bytes: u64) -> Result<CacheStore> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join(".tmp"))?;
        for e in std::fs::read_dir(dir.join(".tmp"))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(m) = e.metadata() {
                found.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), name, m.len()));
            }
        }
        found.sort();
        let mut index = Index { entries: HashMap::new(), total: 0, clock: 0 };
        for (_, name, size) in found {
            index.clock += 1;
            index.total += size;
            index.entries.insert(name, Entry { size, used: index.clock });
        }
        let cache = CacheStore { inner, dir, max_bytes, index: Arc::new(Mutex::new(index)) };
        cache.evict();
        Ok(cache)
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if !valid_key(key) {
            return Err(MediaError::Other(format!("invalid object key {key:?}")));
        }
        Ok(self.dir.join(key))
    }

    fn touch(&self, key: &str) -> bool {
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        idx.clock += 1;
        let now = idx.clock;
        match idx.entries.get_mut(key) {
            Some(e) => {
                e.used = now;
                true
            }
            None => false,
        }
    }

    fn admit(&self, key: &str, size: u64) {
        admit_into(&self.index, &self.dir, self.max_bytes, Some((key, size)));
    }

    fn forget(&self, key: &str) {
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = idx.entries.remove(key) {
            idx.total -= old.size;
        }
    }

    fn evict(&self) {
        admit_into(&self.index, &self.dir, self.max_bytes, None);
    }

    /// Whether `key` is in the cache (for tests and diagnostics).
    pub fn contains(&self, key: &str) -> bool {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).entries.contains_key(key)
    }

    async fn read_cached(&self, key: &str, range: Option<Range>) -> Result<Option<ByteStream>> {
        if !self.touch(key) {
            return Ok(None);
        }
        let path = self.path(key)?;
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(_) => {
                self.forget(key);
                return Ok(None);
            }
        };
        let size = f.metadata().await?.len();
        // The modification time carries recency across restarts.
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(f) = std::fs::File::options().write(true).open(&p) {
                let _ = f.set_modified(SystemTime::now());
            }
        });
        let range = range.unwrap_or(Range { start: 0, end: size });
        if range.start > range.end || range.end > size {
            return Err(MediaError::BadRange);
        }
        f.seek(SeekFrom::Start(range.start)).await?;
        let stream = futures_util::stream::unfold((f, range.len()), |(mut f, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let want = remaining.min(256 * 1024) as usize;
            let mut buf = vec![0u8; want];
            match f.read_exact(&mut buf).await {
                Ok(_) => Some((Ok(Bytes::from(buf)), (f, remaining - want as u64))),
                Err(e) => Some((Err(e), (f, 0))),
            }
        });
        Ok(Some(Box::pin(stream)))
    }
}

/// Copies a stream into a temporary file as it passes; renames it into the cache when the
/// stream ends cleanly with the expected size.
fn tee(
    source: ByteStream,
    tmp: PathBuf,
    dest: PathBuf,
    expected: Option<u64>,
    on_done: impl FnOnce(u64) + Send + 'static,
) -> ByteStream {
    struct St {
        source: ByteStream,
        file: Option<tokio::fs::File>,
        written: u64,
        tmp: PathBuf,
        dest: PathBuf,
    }
    let on_done = Arc::new(Mutex::new(Some(on_done)));
    let st = St { source, file: None, written: 0, tmp, dest };
    Box::pin(futures_util::stream::unfold((st, false), move |(mut st, started)| {
        let on_done = on_done.clone();
        async move {
            if !started {
                st.file = tokio::fs::File::create(&st.tmp).await.ok();
            }
            match st.source.next().await {
                Some(Ok(chunk)) => {
                    if let Some(f) = st.file.as_mut() {
                        if f.write_all(&chunk).await.is_err() {
                            st.file = None;
                            let _ = tokio::fs::remove_file(&st.tmp).await;
                        }
                    }
                    st.written += chunk.len() as u64;
                    Some((Ok(chunk), (st, true)))
                }
                Some(Err(e)) => {
                    st.file = None;
                    let _ = tokio::fs::remove_file(&st.tmp).await;
                    Some((Err(e), (st, true)))
                }
                None => {
                    if let Some(mut f) = st.file.take() {
                        let complete = expected.is_none_or(|n| n == st.written);
                        if complete && f.flush().await.is_ok() && tokio::fs::rename(&st.tmp, &st.dest).await.is_ok() {
                            if let Some(done) = on_done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                                done(st.written);
                            }
                        } else {
                            let _ = tokio::fs::remove_file(&st.tmp).await;
                        }
                    }
                    None
                }
            }
        }
    }))
}

impl BlobStore for CacheStore {
    fn describe(&self) -> String {
        format!("cache({}, {} MiB)+{}", self.dir.display(), self.max_bytes / (1024 * 1024), self.inner.describe())
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, data: ByteStream) -> BoxFuture<'a, Result<()>> {
        async move {
            let dest = self.path(key)?;
            if size > self.max_bytes {
                return self.inner.put(key, size, data).await;
            }
            let tmp = self.dir.join(".tmp").join(format!("{key}-{}", rand::random::<u64>()));
            let admitted = Arc::new(Mutex::new(None));
            let a = admitted.clone();
            // The copy lands in the cache only after the store below has the object.
            let staged = self.dir.join(".tmp").join(format!("{key}-{}.staged", rand::random::<u64>()));
            let teed = tee(data, tmp, staged.clone(), Some(size), move |n| {
                *a.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
            });
            let result = self.inner.put(key, size, teed).await;
            let staged_size = *admitted.lock().unwrap_or_else(|p| p.into_inner());
            match (&result, staged_size) {
                (Ok(()), Some(n)) if tokio::fs::rename(&staged, &dest).await.is_ok() => self.admit(key, n),
                _ => {
                    let _ = tokio::fs::remove_file(&staged).await;
                    self.forget(key);
                    let _ = tokio::fs::remove_file(&dest).await;
                }
            }
            result
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            if let Some(s) = self.read_cached(key, range).await? {
                return Ok(s);
            }
            if range.is_some() {
                // Ranged misses go straight through: caching them would read the whole object.
                return self.inner.get(key, range).await;
            }
            let stream = self.inner.get(key, None).await?;
            let size = self.inner.head(key).await.ok().flatten().map(|i| i.size);
            if size.is_none_or(|s| s > self.max_bytes) {
                return Ok(stream);
            }
            let tmp = self.dir.join(".tmp").join(format!("{key}-{}", rand::random::<u64>()));
            let index = self.index.clone();
            let (k, max, dir) = (key.to_owned(), self.max_bytes, self.dir.clone());
            Ok(tee(stream, tmp, self.path(key)?, size, move |n| admit_into(&index, &dir, max, Some((&k, n)))))
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            let cached = self.index.lock().unwrap_or_else(|p| p.into_inner()).entries.get(key).map(|e| e.size);
            match cached {
                Some(size) => Ok(Some(ObjectInfo { size })),
                None => self.inner.head(key).await,
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.inner.delete(key).await?;
            self.forget(key);
            let _ = tokio::fs::remove_file(self.path(key)?).await;
            Ok(())
        }
        .boxed()
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        self.inner.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{fs::FsStore, once, read_all};

    fn dirs() -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("moss-cache-{}", rand::random::<u64>()));
        (base.join("store"), base.join("cache"))
    }

    #[tokio::test]
    async fn serves_from_cache_after_the_store_is_gone_and_evicts_lru() {
        let (sdir, cdir) = dirs();
        let inner: Arc<dyn BlobStore> = Arc::new(FsStore::open(&sdir).unwrap());
        let cache = CacheStore::open(inner.clone(), &cdir, 2500).unwrap();
        let a = vec![1u8; 1000];
        cache.put("c-a", 1000, once(a.clone())).await.unwrap();
        assert!(cache.contains("c-a"), "write-through populates the cache");
        // Written directly to the store: a miss that fills the cache on a whole read.
        inner.put("c-b", 1000, once(vec![2u8; 1000])).await.unwrap();
        assert!(!cache.contains("c-b"));
        assert_eq!(read_all(cache.get("c-b", None).await.unwrap()).await.unwrap(), vec![2u8; 1000]);
        assert!(cache.contains("c-b"));
        // Use a, then add c: b is now the least recently used and goes.
        read_all(cache.get("c-a", Some(Range { start: 10, end: 20 })).await.unwrap()).await.unwrap();
        cache.put("c-c", 1000, once(vec![3u8; 1000])).await.unwrap();
        assert!(cache.contains("c-a") && cache.contains("c-c") && !cache.contains("c-b"));

        // The store disappears: cached objects still read, whole and ranged.
        std::fs::remove_dir_all(&sdir).unwrap();
        assert_eq!(read_all(cache.get("c-a", None).await.unwrap()).await.unwrap(), a);
        assert_eq!(
            read_all(cache.get("c-c", Some(Range { start: 5, end: 9 })).await.unwrap()).await.unwrap(),
            vec![3u8; 4]
        );
        assert!(cache.get("c-b", None).await.is_err());

        // A restart keeps the cache.
        drop(cache);
        let again = CacheStore::open(inner, &cdir, 2500).unwrap();
        assert!(again.contains("c-a") && again.contains("c-c"));
        let _ = std::fs::remove_dir_all(cdir.parent().unwrap());
    }

    #[tokio::test]
    async fn a_failed_write_caches_nothing() {
        let (sdir, cdir) = dirs();
        let inner: Arc<dyn BlobStore> = Arc::new(FsStore::open(&sdir).unwrap());
        let cache = CacheStore::open(inner, &cdir, 1 << 20).unwrap();
        assert!(cache.put("c-x", 100, once(vec![0u8; 50])).await.is_err());
        assert!(!cache.contains("c-x"));
        assert!(!cdir.join("c-x").exists());
        assert_eq!(std::fs::read_dir(cdir.join(".tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(cdir.parent().unwrap());
    }
}
