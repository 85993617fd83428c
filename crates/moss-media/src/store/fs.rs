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
            let result: Result<()> = async {
                let mut f = tokio::fs::File::create(&tmp).await?;
                let mut written = 0u64;
                while let Some(chunk) = data.next().await {
                    let chunk = chunk?;
                    written += chunk.len() as u64;
                    f.write_all(&chunk).await?;
                }
                if written != size {
                    return Err(MediaError::Other(format!("expected {size} bytes, got {written}")));
                }
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
