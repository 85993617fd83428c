//! Objects as files under a directory: the embedded default.
//!
//! Writes go to a temporary file that is fsynced and then renamed into place, so an object is
//! either wholly there or not at all, even across kill -9 or power loss. Files are spread over
//! 256 subdirectories so no directory grows unmanageably large.

use std::{
    io::SeekFrom,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{valid_key, BlobStore, ByteStream, ObjectInfo, Range};
use crate::{MediaError, Result};

/// Below the allocator's mmap threshold (256 KiB, see the binary's `tune_allocator`), so chunk
/// buffers are recycled from the heap instead of being mapped, page-faulted and zeroed afresh.
const READ_CHUNK: usize = 128 * 1024;
/// Ranges this large are served from memory maps of `MAP_WINDOW` bytes at a time: the page cache
/// goes to the socket with one copy instead of two (read, then write), which is most of the cost
/// of a large download. Only a few windows are mapped at once, so memory stays bounded.
const MAP_AT_LEAST: u64 = 1024 * 1024;
const MAP_WINDOW: u64 = 4 * 1024 * 1024;
/// Objects up to this size are gathered in memory and written by one blocking task (create,
/// write, fsync, rename, fsync of the directory), instead of a trip to the blocking pool for
/// each step: for a small file those trips cost as much as the writing.
const WRITE_AT_ONCE: u64 = 1024 * 1024;
/// Larger objects are written through a buffer of this size (each write to a file is a trip to
/// the blocking pool; the chunks of a stream are often a few KiB).
const WRITE_BUFFER: usize = 1024 * 1024;

/// Writes `chunks` to `tmp`, makes it durable and renames it to `path` (see [`FsStore::put`]).
fn write_durably(tmp: &Path, path: &Path, chunks: &[Bytes]) -> std::io::Result<()> {
    use std::io::Write;
    let result = (|| {
        let mut f = std::fs::File::create(tmp)?;
        for c in chunks {
            f.write_all(c)?;
        }
        f.sync_all()?;
        drop(f);
        let dir = path.parent().expect("sharded path has a parent");
        std::fs::create_dir_all(dir)?;
        std::fs::rename(tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Sends `range` of `file` as slices of successive memory maps, each unmapped once the last of
/// its bytes has been written out.
fn send_mapped(file: &std::fs::File, range: Range, tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    const PAGE: u64 = 4096;
    let mut pos = range.start;
    while pos < range.end {
        let len = (range.end - pos).min(MAP_WINDOW);
        let aligned = pos - pos % PAGE;
        let skip = (pos - aligned) as usize;
        // SAFETY: objects in this store are written once to a temporary file and renamed into
        // place; nothing ever writes to or truncates a stored file (deletion unlinks it, which
        // leaves existing mappings valid), so the mapped bytes cannot change under us.
        let map = unsafe { memmap2::MmapOptions::new().offset(aligned).len(skip + len as usize).populate().map(file) };
        let item = map.map(|m| {
            let _ = m.advise(memmap2::Advice::Sequential);
            Bytes::from_owner(m).slice(skip..skip + len as usize)
        });
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
        pos += len;
    }
}

pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens (creating) the store at `root`, clearing temporary files a crash left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<FsStore> {
        let root = root.into();
        std::fs::create_dir_all(root.join(".tmp"))?;
        for entry in std::fs::read_dir(root.join(".tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(FsStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if !valid_key(key) {
            return Err(MediaError::Other(format!("invalid object key {key:?}")));
        }
        let shard = hex::encode(&Sha256::digest(key.as_bytes())[..1]);
        Ok(self.root.join(shard).join(key))
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all()).await.map_err(std::io::Error::other)?
}

impl BlobStore for FsStore {
    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, mut data: ByteStream) -> BoxFuture<'a, Result<()>> {
        async move {
            let path = self.path(key)?;
            let tmp = self.root.join(".tmp").join(format!("{}-{}", key, rand::random::<u64>()));
            if size <= WRITE_AT_ONCE {
                let mut chunks = Vec::new();
                let mut written = 0u64;
                while let Some(chunk) = data.next().await {
                    let chunk = chunk?;
                    written += chunk.len() as u64;
                    if written > size {
                        break;
                    }
                    chunks.push(chunk);
                }
                if written != size {
                    return Err(MediaError::Other(format!("expected {size} bytes, got {written}")));
                }
                let done = tokio::task::spawn_blocking(move || write_durably(&tmp, &path, &chunks)).await;
                return Ok(done.map_err(|e| MediaError::Other(e.to_string()))??);
            }
            let result: Result<()> = async {
                let f = tokio::fs::File::create(&tmp).await?;
                let mut f = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, f);
                let mut written = 0u64;
                while let Some(chunk) = data.next().await {
                    let chunk = chunk?;
                    written += chunk.len() as u64;
                    f.write_all(&chunk).await?;
                }
                if written != size {
                    return Err(MediaError::Other(format!("expected {size} bytes, got {written}")));
                }
                f.flush().await?;
                let f = f.into_inner();
                f.sync_all().await?;
                drop(f);
                let dir = path.parent().expect("sharded path has a parent");
                tokio::fs::create_dir_all(dir).await?;
                tokio::fs::rename(&tmp, &path).await?;
                sync_dir(dir).await?;
                Ok(())
            }
            .await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            result
        }
        .boxed()
    }

    /// Takes the file itself when it is on the store's filesystem: made durable where it is and
    /// renamed into place, so a large upload is written once instead of copied. Elsewhere (or a
    /// file of another size), as `put`.
    fn put_file<'a>(&'a self, key: &'a str, size: u64, file: &'a Path) -> BoxFuture<'a, Result<()>> {
        async move {
            let path = self.path(key)?;
            let f = tokio::fs::File::open(file).await?;
            if f.metadata().await?.len() != size {
                return Err(MediaError::Other(format!("expected a file of {size} bytes")));
            }
            f.sync_all().await?;
            drop(f);
            let dir = path.parent().expect("sharded path has a parent");
            tokio::fs::create_dir_all(dir).await?;
            match tokio::fs::rename(file, &path).await {
                Ok(()) => Ok(sync_dir(dir).await?),
                // Another filesystem (EXDEV) or anything else rename cannot do: copy it.
                Err(_) => self.put(key, size, super::file_stream(file).await?).await,
            }
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            let path = self.path(key)?;
            let mut f = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MediaError::NotFound),
                Err(e) => return Err(e.into()),
            };
            let size = f.metadata().await?.len();
            let range = range.unwrap_or(Range { start: 0, end: size });
            if range.start > range.end || range.end > size {
                return Err(MediaError::BadRange);
            }
            f.seek(SeekFrom::Start(range.start)).await?;
            // One blocking thread reads the whole range in large chunks and hands them over a
            // small bounded channel: far cheaper than a trip to the blocking pool per chunk, and
            // memory stays at a few chunks however large the file.
            let mut f = f.into_std().await;
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
            let mut remaining = range.len();
            if remaining >= MAP_AT_LEAST {
                tokio::task::spawn_blocking(move || send_mapped(&f, range, &tx));
                let stream =
                    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
                return Ok(Box::pin(stream) as ByteStream);
            }
            tokio::task::spawn_blocking(move || {
                use std::io::Read;
                while remaining > 0 {
                    let want = remaining.min(READ_CHUNK as u64) as usize;
                    let mut buf = vec![0u8; want];
                    let item = f.read_exact(&mut buf).map(|_| Bytes::from(buf));
                    let failed = item.is_err();
                    if tx.blocking_send(item).is_err() || failed {
                        break; // the client went away, or the read failed (and was reported)
                    }
                    remaining -= want as u64;
                }
            });
            let stream =
                futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
            Ok(Box::pin(stream) as ByteStream)
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            match tokio::fs::metadata(self.path(key)?).await {
                Ok(m) => Ok(Some(ObjectInfo { size: m.len() })),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        let root = self.root.clone();
        let keys = async move {
            tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                let mut keys = Vec::new();
                for shard in std::fs::read_dir(&root)?.flatten() {
                    let name = shard.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') || !shard.path().is_dir() {
                        continue;
                    }
                    for f in std::fs::read_dir(shard.path())?.flatten() {
                        keys.push(f.file_name().to_string_lossy().into_owned());
                    }
                }
                Ok(keys)
            })
            .await
            .map_err(|e| MediaError::Other(e.to_string()))?
        };
        Box::pin(
            futures_util::stream::once(keys)
                .map(|r| match r {
                    Ok(keys) => futures_util::stream::iter(keys.into_iter().map(Ok)).boxed(),
                    Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
                })
                .flatten(),
        )
    }

    /// The directory exists and takes a new file: a `head` alone would answer "no such object"
    /// for a directory that was unmounted, deleted or remounted read-only.
    fn check(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let probe = self.root.join(".tmp").join(format!("health-{}", rand::random::<u64>()));
            tokio::fs::File::create(&probe).await?;
            tokio::fs::remove_file(&probe).await?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{once, read_all};

    fn store() -> (FsStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("moss-fs-{}", rand::random::<u64>()));
        (FsStore::open(&dir).unwrap(), dir)
    }

    #[tokio::test]
    async fn a_file_on_the_same_filesystem_is_taken_as_it_is() {
        let (s, dir) = store();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let spool = dir.join("spooled-upload");
        std::fs::write(&spool, &data).unwrap();
        // A size that is not the file's is refused, and the file stays.
        assert!(s.put_file("c-moved", 5, &spool).await.is_err());
        assert!(spool.exists());
        s.put_file("c-moved", data.len() as u64, &spool).await.unwrap();
        assert!(!spool.exists(), "renamed into place, not copied");
        assert_eq!(read_all(s.get("c-moved", None).await.unwrap()).await.unwrap(), data);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Small objects, written by one blocking task: whole and durable, or not at all when the
    /// body is shorter or longer than said (no object, no temporary file left).
    #[tokio::test]
    async fn a_small_object_is_written_whole_or_not_at_all() {
        let (s, dir) = store();
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 239) as u8).collect();
        let two = futures_util::stream::iter([
            Ok(Bytes::from(data[..1000].to_vec())),
            Ok(Bytes::from(data[1000..].to_vec())),
        ]);
        s.put("c-small", 4096, Box::pin(two)).await.unwrap();
        assert_eq!(read_all(s.get("c-small", None).await.unwrap()).await.unwrap(), data);
        assert!(s.put("c-short", 4097, once(data.clone())).await.is_err());
        assert!(s.put("c-long", 4095, once(data.clone())).await.is_err());
        assert!(s.head("c-short").await.unwrap().is_none() && s.head("c-long").await.unwrap().is_none());
        assert_eq!(std::fs::read_dir(dir.join(".tmp")).unwrap().count(), 0, "no temporary file left");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn put_get_range_list_delete() {
        let (s, dir) = store();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        s.put("c-abc", data.len() as u64, once(data.clone())).await.unwrap();
        assert_eq!(read_all(s.get("c-abc", None).await.unwrap()).await.unwrap(), data);
        let r = Range { start: 262_143, end: 524_289 };
        assert_eq!(read_all(s.get("c-abc", Some(r)).await.unwrap()).await.unwrap(), data[262_143..524_289]);
        assert_eq!(s.head("c-abc").await.unwrap(), Some(ObjectInfo { size: 1_000_000 }));
        assert!(matches!(s.get("c-abc", Some(Range { start: 5, end: 2_000_000 })).await, Err(MediaError::BadRange)));
        let keys: Vec<String> = s.list().map(|k| k.unwrap()).collect().await;
        assert_eq!(keys, vec!["c-abc".to_owned()]);
        s.delete("c-abc").await.unwrap();
        s.delete("c-abc").await.unwrap();
        assert!(matches!(s.get("c-abc", None).await, Err(MediaError::NotFound)));
        assert_eq!(s.head("c-abc").await.unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn large_ranges_come_from_mapped_windows_byte_exact() {
        let (s, dir) = store();
        // Three windows and a bit, so ranges cross window and page boundaries.
        let len = 3 * MAP_WINDOW as usize + 12_345;
        let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        s.put("c-big", len as u64, once(data.clone())).await.unwrap();
        assert_eq!(read_all(s.get("c-big", None).await.unwrap()).await.unwrap(), data);
        for (start, end) in [
            (1, MAP_AT_LEAST + 1),
            (4095, MAP_WINDOW + 4097),
            (MAP_WINDOW - 1, 3 * MAP_WINDOW + 1),
            (len as u64 - MAP_AT_LEAST - 7, len as u64),
        ] {
            let got = read_all(s.get("c-big", Some(Range { start, end })).await.unwrap()).await.unwrap();
            assert!(got == data[start as usize..end as usize], "range {start}..{end}");
        }
        // Deleting while a download is under way does not disturb it (the mapping outlives the name).
        let mut stream = s.get("c-big", None).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        s.delete("c-big").await.unwrap();
        let mut got = first.to_vec();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert!(got == data);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn short_streams_leave_nothing_behind() {
        let (s, dir) = store();
        let err = s.put("c-short", 10, once(vec![1u8; 5])).await;
        assert!(err.is_err());
        assert_eq!(s.head("c-short").await.unwrap(), None);
        assert_eq!(std::fs::read_dir(dir.join(".tmp")).unwrap().count(), 0);
        assert!(s.put("../escape", 1, once(vec![1u8])).await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
