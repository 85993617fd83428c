//! Reading through to an old store during a migration: writes go to the new store only, reads
//! that miss there are served from the old one, so nothing is unavailable while objects move.
//! A read that misses in both looks in the new store once more: the migration copies an object
//! before deleting it from the old store, so an object that moved between the two looks is in
//! the new store by the second.

use std::sync::Arc;

use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};

use super::{BlobStore, ByteStream, ObjectInfo, Range};
use crate::{MediaError, Result};

pub struct FallbackStore {
    new: Arc<dyn BlobStore>,
    old: Arc<dyn BlobStore>,
}

impl FallbackStore {
    pub fn new(new: Arc<dyn BlobStore>, old: Arc<dyn BlobStore>) -> FallbackStore {
        FallbackStore { new, old }
    }
}

impl BlobStore for FallbackStore {
    fn streams_writes(&self) -> bool {
        self.new.streams_writes()
    }

    fn describe(&self) -> String {
        format!("{} (reading through to {} while migrating)", self.new.describe(), self.old.describe())
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, data: ByteStream) -> BoxFuture<'a, Result<()>> {
        self.new.put(key, size, data)
    }

    fn put_file<'a>(&'a self, key: &'a str, size: u64, path: &'a std::path::Path) -> BoxFuture<'a, Result<()>> {
        self.new.put_file(key, size, path)
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            match self.new.get(key, range).await {
                Err(MediaError::NotFound) => match self.old.get(key, range).await {
                    Err(MediaError::NotFound) => self.new.get(key, range).await,
                    other => other,
                },
                other => other,
            }
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            match self.new.head(key).await? {
                Some(i) => Ok(Some(i)),
                None => match self.old.head(key).await? {
                    Some(i) => Ok(Some(i)),
                    None => self.new.head(key).await,
                },
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.new.delete(key).await?;
            self.old.delete(key).await
        }
        .boxed()
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        let mut seen = std::collections::HashSet::new();
        Box::pin(self.new.list().chain(self.old.list()).filter(move |k| {
            let keep = match k {
                Ok(k) => seen.insert(k.clone()),
                Err(_) => true,
            };
            async move { keep }
        }))
    }

    /// Both must answer: writes go to the new store, reads still depend on the old one.
    fn check(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.new.check().await?;
            self.old.check().await
        }
        .boxed()
    }
}

/// Result of copying one store into another.
#[derive(Debug, Default, Clone, Copy)]
pub struct MigrateReport {
    pub objects: u64,
    pub copied: u64,
    pub already_there: u64,
    pub bytes: u64,
    pub deleted_from_source: u64,
}

/// Copies every object of `from` into `to`, `parallel` at a time. Objects already in `to` with
/// the same size are skipped, so an interrupted run resumes where it stopped. Each copy is
/// verified (size read back) before the source is deleted (`delete_source`).
pub async fn migrate(
    from: Arc<dyn BlobStore>,
    to: Arc<dyn BlobStore>,
    parallel: usize,
    delete_source: bool,
    progress: impl Fn(MigrateReport) + Send + Sync,
) -> Result<MigrateReport> {
    let keys: Vec<String> = from.list().filter_map(|k| async move { k.ok() }).collect().await;
    let report = std::sync::Mutex::new(MigrateReport { objects: keys.len() as u64, ..Default::default() });
    let results: Vec<Result<()>> = futures_util::stream::iter(keys)
        .map(|key| {
            let (from, to, report, progress) = (from.clone(), to.clone(), &report, &progress);
            async move {
                let size = match from.head(&key).await? {
                    Some(i) => i.size,
                    None => return Ok(()), // deleted meanwhile
                };
                let present = to.head(&key).await?.is_some_and(|i| i.size == size);
                if !present {
                    to.put(&key, size, from.get(&key, None).await?).await?;
                    match to.head(&key).await? {
                        Some(i) if i.size == size => {}
                        other => {
                            return Err(MediaError::Corrupt(format!(
                                "{key}: copy has {:?} bytes, source {size}",
                                other.map(|i| i.size)
                            )))
                        }
                    }
                }
                if delete_source {
                    from.delete(&key).await?;
                }
                let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                if present {
                    r.already_there += 1;
                } else {
                    r.copied += 1;
                    r.bytes += size;
                }
                if delete_source {
                    r.deleted_from_source += 1;
                }
                progress(*r);
                Ok(())
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let failures: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| e.to_string())).collect();
    if !failures.is_empty() {
        return Err(MediaError::Other(format!("{} object(s) failed, e.g. {}", failures.len(), failures[0])));
    }
    Ok(report.into_inner().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{fs::FsStore, once, read_all};

    #[tokio::test]
    async fn migration_copies_resumes_and_reads_through() {
        let base = std::env::temp_dir().join(format!("moss-migrate-{}", rand::random::<u64>()));
        let old: Arc<dyn BlobStore> = Arc::new(FsStore::open(base.join("old")).unwrap());
        let new: Arc<dyn BlobStore> = Arc::new(FsStore::open(base.join("new")).unwrap());
        for i in 0..20u8 {
            old.put(&format!("c-{i}"), 1000, once(vec![i; 1000])).await.unwrap();
        }
        let through = FallbackStore::new(new.clone(), old.clone());
        assert_eq!(read_all(through.get("c-7", None).await.unwrap()).await.unwrap(), vec![7u8; 1000]);
        // Pretend an earlier run got half way.
        for i in 0..10u8 {
            new.put(&format!("c-{i}"), 1000, once(vec![i; 1000])).await.unwrap();
        }
        let r = migrate(old.clone(), new.clone(), 4, true, |_| {}).await.unwrap();
        assert_eq!((r.objects, r.copied, r.already_there, r.deleted_from_source), (20, 10, 10, 20));
        assert_eq!(old.list().count().await, 0);
        for i in 0..20u8 {
            assert_eq!(read_all(through.get(&format!("c-{i}"), None).await.unwrap()).await.unwrap(), vec![i; 1000]);
        }
        let _ = std::fs::remove_dir_all(base);
    }
}
