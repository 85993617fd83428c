//! A bounded local disk cache in front of a (slow or remote) store.
//!
//! Reads of cached objects never touch the store behind, so they keep working while it is
//! down. Whole-object reads that miss are copied into the cache as they stream to the caller;
//! writes go through to the store and, once it has them, into the cache. The least recently
//! used objects are evicted when the cache grows past its size; recency survives restarts
//! through the files' modification times.
//!
//! What it serves it verifies: each cached file has a record beside it (`.sums/<key>`: its
//! length and a CRC32 of every 256 KiB block), written and synced before the file, itself
//! synced, is renamed into place. A file whose record is missing or whose length differs is
//! dropped when the cache opens; every block is checked as it is read, and a file that fails
//! is dropped (before anything is sent when its first block fails, so the read goes to the
//! store behind instead; mid-stream the read fails). Copies cut short (a client that went
//! away, a store that failed) leave nothing behind.

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

/// Bytes covered by one checksum.
const BLOCK: u64 = 256 * 1024;
const SUMS_MAGIC: &[u8; 8] = b"MOSSSUM1";

/// A cached file's length and block checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    size: u64,
    crcs: Vec<u32>,
}

impl Sums {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.crcs.len() * 4);
        out.extend_from_slice(SUMS_MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Sums> {
        let rest = b.strip_prefix(SUMS_MAGIC.as_slice())?;
        let (size, crcs) = rest.split_first_chunk::<8>()?;
        let size = u64::from_le_bytes(*size);
        if crcs.len() % 4 != 0 || (crcs.len() / 4) as u64 != size.div_ceil(BLOCK) {
            return None;
        }
        let crcs = crcs.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Some(Sums { size, crcs })
    }
}

/// Block checksums computed as bytes pass.
struct Summer {
    crcs: Vec<u32>,
    block: crc32fast::Hasher,
    fill: u64,
    total: u64,
}

impl Summer {
    fn new() -> Summer {
        Summer { crcs: Vec::new(), block: crc32fast::Hasher::new(), fill: 0, total: 0 }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((BLOCK - self.fill) as usize).min(data.len());
            let (now, later) = data.split_at(take);
            self.block.update(now);
            self.fill += take as u64;
            self.total += take as u64;
            data = later;
            if self.fill == BLOCK {
                let done = std::mem::replace(&mut self.block, crc32fast::Hasher::new());
                self.crcs.push(done.finalize());
                self.fill = 0;
            }
        }
    }

    fn finish(mut self) -> Sums {
        if self.fill > 0 {
            self.crcs.push(self.block.finalize());
        }
        Sums { size: self.total, crcs: self.crcs }
    }
}

fn sums_path(dir: &std::path::Path, key: &str) -> PathBuf {
    dir.join(".sums").join(key)
}

/// Writes a file's record: to a temporary name, synced, then renamed.
async fn write_sums(dir: &std::path::Path, key: &str, sums: &Sums) -> std::io::Result<()> {
    let tmp = dir.join(".tmp").join(format!("{key}-{}.sums", rand::random::<u64>()));
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(&sums.encode()).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, sums_path(dir, key)).await
}

/// Removes a cached file and its record.
fn remove_cached(dir: &std::path::Path, key: &str) {
    let _ = std::fs::remove_file(dir.join(key));
    let _ = std::fs::remove_file(sums_path(dir, key));
}

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
        remove_cached(dir, &k);
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
        std::fs::create_dir_all(dir.join(".sums"))?;
        for e in std::fs::read_dir(dir.join(".tmp"))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            // Only files whose record agrees on their length are kept.
            let recorded = std::fs::read(sums_path(&dir, &name)).ok().and_then(|b| Sums::decode(&b));
            if recorded.is_none_or(|s| s.size != m.len()) {
                remove_cached(&dir, &name);
                continue;
            }
            found.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), name, m.len()));
        }
        // Records whose file is gone.
        for e in std::fs::read_dir(dir.join(".sums"))?.flatten() {
            if !dir.join(e.file_name()).exists() {
                let _ = std::fs::remove_file(e.path());
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

    /// Drops a cached file that failed its check.
    fn drop_corrupt(&self, key: &str, why: &str) {
        tracing::warn!(key, why, "cached file failed its check; dropped");
        self.forget(key);
        remove_cached(&self.dir, key);
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
        let sums = match tokio::fs::read(sums_path(&self.dir, key)).await.ok().and_then(|b| Sums::decode(&b)) {
            Some(s) if s.size == size => Arc::new(s),
            _ => {
                self.drop_corrupt(key, "length or record wrong");
                return Ok(None);
            }
        };
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
        if range.is_empty() {
            return Ok(Some(Box::pin(futures_util::stream::empty())));
        }
        // Whole blocks are read and checked; the range is cut out of them.
        let first = range.start / BLOCK;
        f.seek(SeekFrom::Start(first * BLOCK)).await?;
        let head = match read_block(&mut f, &sums, first, range).await {
            Ok(b) => b,
            Err(e) => {
                self.drop_corrupt(key, &e.to_string());
                return Ok(None);
            }
        };
        let (index, dir, key) = (self.index.clone(), self.dir.clone(), key.to_owned());
        let rest = futures_util::stream::unfold((f, first + 1), move |(mut f, block)| {
            let (sums, index, dir, key) = (sums.clone(), index.clone(), dir.clone(), key.clone());
            async move {
                if block * BLOCK >= range.end {
                    return None;
                }
                match read_block(&mut f, &sums, block, range).await {
                    Ok(b) => Some((Ok(b), (f, block + 1))),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "cached file failed its check mid-read; dropped");
                        let mut idx = index.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(old) = idx.entries.remove(&key) {
                            idx.total -= old.size;
                        }
                        drop(idx);
                        remove_cached(&dir, &key);
                        Some((Err(e), (f, u64::MAX / BLOCK)))
                    }
                }
            }
        });
        Ok(Some(Box::pin(futures_util::stream::once(async move { Ok(head) }).chain(rest))))
    }
}

/// Reads block `block` (the file is positioned at its start), checks it against its CRC, and
/// returns the part of it inside `range`.
async fn read_block(f: &mut tokio::fs::File, sums: &Sums, block: u64, range: Range) -> std::io::Result<Bytes> {
    let start = block * BLOCK;
    let len = BLOCK.min(sums.size - start) as usize;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).await?;
    let expected = sums.crcs.get(block as usize).copied();
    if expected != Some(crc32fast::hash(&buf)) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("block {block} checksum mismatch")));
    }
    let from = range.start.saturating_sub(start) as usize;
    let to = (range.end - start).min(len as u64) as usize;
    Ok(Bytes::from(buf).slice(from..to))
}

/// Copies a stream into a temporary file as it passes, with block checksums; when the stream
/// ends cleanly with the expected size, the file is synced, its record (`.sums/<sums_key>`)
/// written, and the file renamed to `dest`. However it ends otherwise (an error, the reader
/// dropping the stream midway), the temporary file is removed.
fn tee(
    source: ByteStream,
    dir: PathBuf,
    sums_key: String,
    dest: PathBuf,
    expected: Option<u64>,
    on_done: impl FnOnce(u64) + Send + 'static,
) -> ByteStream {
    /// Removes the temporary file unless the copy completed.
    struct Tmp(Option<PathBuf>);
    impl Drop for Tmp {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    struct St {
        source: ByteStream,
        file: Option<tokio::fs::File>,
        summer: Summer,
        tmp: Tmp,
    }
    let tmp = dir.join(".tmp").join(format!("{sums_key}-{}", rand::random::<u64>()));
    let on_done = Arc::new(Mutex::new(Some(on_done)));
    let st = St { source, file: None, summer: Summer::new(), tmp: Tmp(Some(tmp)) };
    Box::pin(futures_util::stream::unfold((st, false), move |(mut st, started)| {
        let (on_done, dir, sums_key, dest) = (on_done.clone(), dir.clone(), sums_key.clone(), dest.clone());
        async move {
            if !started {
                if let Some(p) = &st.tmp.0 {
                    st.file = tokio::fs::File::create(p).await.ok();
                }
            }
            match st.source.next().await {
                Some(Ok(chunk)) => {
                    if let Some(f) = st.file.as_mut() {
                        if f.write_all(&chunk).await.is_err() {
                            st.file = None;
                        }
                    }
                    st.summer.update(&chunk);
                    Some((Ok(chunk), (st, true)))
                }
                Some(Err(e)) => {
                    st.file = None;
                    Some((Err(e), (st, true)))
                }
                None => {
                    if let (Some(mut f), Some(tmp)) = (st.file.take(), st.tmp.0.clone()) {
                        let sums = std::mem::replace(&mut st.summer, Summer::new()).finish();
                        let complete = expected.is_none_or(|n| n == sums.size);
                        let size = sums.size;
                        let kept = complete
                            && f.flush().await.is_ok()
                            && f.sync_all().await.is_ok()
                            && write_sums(&dir, &sums_key, &sums).await.is_ok()
                            && tokio::fs::rename(&tmp, &dest).await.is_ok();
                        if kept {
                            // Renamed into place: nothing for the guard to remove.
                            let _renamed = st.tmp.0.take();
                            if let Some(done) = on_done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                                done(size);
                            }
                        }
                    }
                    None
                }
            }
        }
    }))
}

impl BlobStore for CacheStore {
    fn streams_writes(&self) -> bool {
        self.inner.streams_writes()
    }

    fn describe(&self) -> String {
        format!("cache({}, {} MiB)+{}", self.dir.display(), self.max_bytes / (1024 * 1024), self.inner.describe())
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, data: ByteStream) -> BoxFuture<'a, Result<()>> {
        async move {
            let dest = self.path(key)?;
            if size > self.max_bytes {
                return self.inner.put(key, size, data).await;
            }
            let admitted = Arc::new(Mutex::new(None));
            let a = admitted.clone();
            // The copy lands in the cache only after the store below has the object.
            let staged = self.dir.join(".tmp").join(format!("{key}-{}.staged", rand::random::<u64>()));
            let teed = tee(data, self.dir.clone(), key.to_owned(), staged.clone(), Some(size), move |n| {
                *a.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
            });
            let result = self.inner.put(key, size, teed).await;
            let staged_size = *admitted.lock().unwrap_or_else(|p| p.into_inner());
            match (&result, staged_size) {
                (Ok(()), Some(n)) if tokio::fs::rename(&staged, &dest).await.is_ok() => self.admit(key, n),
                _ => {
                    let _ = tokio::fs::remove_file(&staged).await;
                    self.forget(key);
                    remove_cached(&self.dir, key);
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
            let index = self.index.clone();
            let (k, max, dir) = (key.to_owned(), self.max_bytes, self.dir.clone());
            let dest = self.path(key)?;
            Ok(tee(stream, dir.clone(), k.clone(), dest, size, move |n| admit_into(&index, &dir, max, Some((&k, n)))))
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
            self.path(key)?;
            remove_cached(&self.dir, key);
            Ok(())
        }
        .boxed()
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        self.inner.list()
    }

    /// The backing store must answer; the local cache is an optimisation and is not checked.
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
    async fn damaged_or_unrecorded_files_are_never_served() {
        let (sdir, cdir) = dirs();
        let inner: Arc<dyn BlobStore> = Arc::new(FsStore::open(&sdir).unwrap());
        let cache = CacheStore::open(inner.clone(), &cdir, 16 << 20).unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        cache.put("c-d", data.len() as u64, once(data.clone())).await.unwrap();
        assert!(cdir.join(".sums").join("c-d").exists(), "a record beside the file");

        // A bit flipped in the third block: the first two still serve, the read fails there,
        // and the file is dropped (the store behind serves the next read).
        let mut on_disk = std::fs::read(cdir.join("c-d")).unwrap();
        on_disk[2 * BLOCK as usize + 5] ^= 1;
        std::fs::write(cdir.join("c-d"), &on_disk).unwrap();
        let mut s = cache.get("c-d", None).await.unwrap();
        let mut got = Vec::new();
        let mut failed = false;
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(c) => got.extend_from_slice(&c),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed && got == data[..2 * BLOCK as usize], "served {} bytes, failed {failed}", got.len());
        assert!(!cache.contains("c-d") && !cdir.join("c-d").exists());
        assert_eq!(read_all(cache.get("c-d", None).await.unwrap()).await.unwrap(), data, "from the store");

        // Now cached again (whole read). Damage in the first block: the read goes to the store.
        assert!(cache.contains("c-d"));
        let mut on_disk = std::fs::read(cdir.join("c-d")).unwrap();
        on_disk[7] ^= 1;
        std::fs::write(cdir.join("c-d"), &on_disk).unwrap();
        let r = Range { start: 3, end: 20 };
        assert_eq!(read_all(cache.get("c-d", Some(r)).await.unwrap()).await.unwrap(), data[3..20]);
        assert!(!cache.contains("c-d"));

        // Truncated behind our back, or without a record: dropped when the cache opens.
        read_all(cache.get("c-d", None).await.unwrap()).await.unwrap();
        cache.put("c-e", 10, once(vec![5u8; 10])).await.unwrap();
        drop(cache);
        std::fs::write(cdir.join("c-d"), &data[..1000]).unwrap();
        std::fs::remove_file(cdir.join(".sums").join("c-e")).unwrap();
        let again = CacheStore::open(inner, &cdir, 16 << 20).unwrap();
        assert!(!again.contains("c-d") && !again.contains("c-e"));
        assert!(!cdir.join("c-d").exists() && !cdir.join("c-e").exists());
        let _ = std::fs::remove_dir_all(cdir.parent().unwrap());
    }

    #[tokio::test]
    async fn a_read_abandoned_midway_leaves_nothing_behind() {
        let (sdir, cdir) = dirs();
        let inner: Arc<dyn BlobStore> = Arc::new(FsStore::open(&sdir).unwrap());
        inner.put("c-big", 1 << 20, once(vec![9u8; 1 << 20])).await.unwrap();
        let cache = CacheStore::open(inner, &cdir, 16 << 20).unwrap();
        let mut s = cache.get("c-big", None).await.unwrap();
        s.next().await.unwrap().unwrap();
        drop(s);
        assert_eq!(std::fs::read_dir(cdir.join(".tmp")).unwrap().count(), 0, "the partial copy is removed");
        assert!(!cache.contains("c-big"));
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
