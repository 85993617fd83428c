//! Two stores kept identical: every write goes to both (an upload succeeds only when both have
//! it), reads come from the first that answers. For example Storj plus a local disk, or two
//! providers, so losing either loses nothing.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::{BlobStore, ByteStream, ObjectInfo, Range};
use crate::{MediaError, Result};

pub struct MirrorStore {
    primary: Arc<dyn BlobStore>,
    secondary: Arc<dyn BlobStore>,
}

impl MirrorStore {
    pub fn new(primary: Arc<dyn BlobStore>, secondary: Arc<dyn BlobStore>) -> MirrorStore {
        MirrorStore { primary, secondary }
    }
}

fn channel_stream(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// Whether a failure of the first store should send the read to the second.
fn worth_retrying(e: &MediaError) -> bool {
    !matches!(e, MediaError::BadRange)
}

impl BlobStore for MirrorStore {
    fn streams_writes(&self) -> bool {
        self.primary.streams_writes()
    }

    fn describe(&self) -> String {
        format!("mirror({} | {})", self.primary.describe(), self.secondary.describe())
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, mut data: ByteStream) -> BoxFuture<'a, Result<()>> {
        async move {
            // Fan the one stream out to both stores; small channels keep memory bounded and the
            // slower store sets the pace.
            let (tx1, rx1) = mpsc::channel(4);
            let (tx2, rx2) = mpsc::channel(4);
            let feed = async move {
                while let Some(item) = data.next().await {
                    let (a, b) = match &item {
                        Ok(bytes) => (Ok(bytes.clone()), Ok(bytes.clone())),
                        Err(e) => (
                            Err(std::io::Error::new(e.kind(), e.to_string())),
                            Err(std::io::Error::new(e.kind(), e.to_string())),
                        ),
                    };
                    let sent1 = tx1.send(a).await.is_ok();
                    let sent2 = tx2.send(b).await.is_ok();
                    if !sent1 && !sent2 {
                        break;
                    }
                }
            };
            let (_, r1, r2) = tokio::join!(
                feed,
                self.primary.put(key, size, channel_stream(rx1)),
                self.secondary.put(key, size, channel_stream(rx2))
            );
            match (r1, r2) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) => {
                    // Do not leave the mirrors disagreeing about an object the caller was told failed.
                    let _ = self.secondary.delete(key).await;
                    Err(e)
                }
                (Ok(()), Err(e)) => {
                    let _ = self.primary.delete(key).await;
                    Err(e)
                }
                (Err(e), Err(_)) => Err(e),
            }
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            match self.primary.get(key, range).await {
                Ok(s) => Ok(s),
                Err(e) if worth_retrying(&e) => {
                    tracing::debug!(key, error = %e, "primary mirror failed; reading the secondary");
                    self.secondary.get(key, range).await
                }
                Err(e) => Err(e),
            }
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            match self.primary.head(key).await {
                Ok(Some(i)) => Ok(Some(i)),
                Ok(None) | Err(_) => self.secondary.head(key).await,
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let (a, b) = tokio::join!(self.primary.delete(key), self.secondary.delete(key));
            a.and(b)
        }
        .boxed()
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        // The union of both, each key once.
        let mut seen = std::collections::HashSet::new();
        Box::pin(self.primary.list().chain(self.secondary.list()).filter(move |k| {
            let keep = match k {
                Ok(k) => seen.insert(k.clone()),
                Err(_) => true,
            };
            async move { keep }
        }))
    }

    /// Both must answer: an upload succeeds only when both stores take it.
    fn check(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.primary.check().await?;
            self.secondary.check().await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{fs::FsStore, once, read_all};

    #[tokio::test]
    async fn writes_both_and_reads_whichever_survives() {
        let base = std::env::temp_dir().join(format!("moss-mirror-{}", rand::random::<u64>()));
        let a: Arc<dyn BlobStore> = Arc::new(FsStore::open(base.join("a")).unwrap());
        let b: Arc<dyn BlobStore> = Arc::new(FsStore::open(base.join("b")).unwrap());
        let m = MirrorStore::new(a.clone(), b.clone());
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 97) as u8).collect();
        m.put("c-x", data.len() as u64, once(data.clone())).await.unwrap();
        assert_eq!(read_all(a.get("c-x", None).await.unwrap()).await.unwrap(), data);
        assert_eq!(read_all(b.get("c-x", None).await.unwrap()).await.unwrap(), data);
        a.delete("c-x").await.unwrap();
        assert_eq!(
            read_all(m.get("c-x", Some(Range { start: 10, end: 20 })).await.unwrap()).await.unwrap(),
            data[10..20]
        );
        assert_eq!(m.head("c-x").await.unwrap(), Some(ObjectInfo { size: 700_000 }));
        let keys: Vec<String> = m.list().map(|k| k.unwrap()).collect().await;
        assert_eq!(keys, vec!["c-x".to_owned()]);
        // A failed write leaves neither side holding the object.
        assert!(m.put("c-y", 10, once(vec![1u8; 5])).await.is_err());
        assert_eq!(a.head("c-y").await.unwrap(), None);
        assert_eq!(b.head("c-y").await.unwrap(), None);
        let _ = std::fs::remove_dir_all(base);
    }
}
