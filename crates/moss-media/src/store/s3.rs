//! Any S3-compatible object store (Storj gateway, Garage, MinIO, AWS, Backblaze B2), through the
//! `object_store` crate: request signing, retries and multipart uploads are its business.
//!
//! Kept within the Storj gateway's limits: plain PUT or multipart upload (never UploadPartCopy),
//! the STANDARD storage class, no checksum headers, and listing without a delimiter.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt, TryStreamExt};
use object_store::{
    aws::{AmazonS3, AmazonS3Builder},
    path::Path,
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use super::{valid_key, BlobStore, ByteStream, ObjectInfo, Range};
use crate::{MediaError, Result};

/// Connection settings; mirrors the `[media.s3]` configuration section.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most non-AWS stores want.
    pub path_style: bool,
    /// Prepended to every object key, e.g. `moss-`.
    pub prefix: String,
    /// Multipart part size; objects up to this size are sent in one PUT.
    pub part_size: usize,
    /// Upper bound on one request, retries included.
    pub request_timeout: Duration,
}

pub struct S3Store {
    store: Arc<AmazonS3>,
    config: S3Config,
}

fn map_err(e: object_store::Error) -> MediaError {
    match e {
        object_store::Error::NotFound { .. } => MediaError::NotFound,
        other => MediaError::Unavailable(error_chain(&other)),
    }
}

/// The error with all its causes: the root cause ("Connection refused") is what explains it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

impl S3Store {
    pub fn new(config: S3Config) -> Result<S3Store> {
        let client = ClientOptions::new()
            .with_allow_http(config.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(config.request_timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: config.request_timeout,
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| MediaError::Other(format!("S3 configuration: {e}")))?;
        Ok(S3Store { store: Arc::new(store), config })
    }

    /// A write can only be "not found" when the bucket is missing.
    fn write_err(&self, e: object_store::Error) -> MediaError {
        match e {
            object_store::Error::NotFound { .. } => {
                MediaError::Unavailable(format!("NoSuchBucket: the bucket {} does not exist", self.config.bucket))
            }
            other => map_err(other),
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        if !valid_key(key) {
            return Err(MediaError::Other(format!("invalid object key {key:?}")));
        }
        Ok(Path::from(format!("{}{key}", self.config.prefix)))
    }
}

impl BlobStore for S3Store {
    fn describe(&self) -> String {
        format!("s3:{}/{}/{}", self.config.endpoint.trim_end_matches('/'), self.config.bucket, self.config.prefix)
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, mut data: ByteStream) -> BoxFuture<'a, Result<()>> {
        async move {
            let path = self.path(key)?;
            let part = self.config.part_size.max(5 * 1024 * 1024);
            if size as usize <= part {
                // Small objects: one PUT of a buffer no larger than a part.
                let mut buf = BytesMut::with_capacity(size as usize);
                while let Some(chunk) = data.next().await {
                    buf.extend_from_slice(&chunk?);
                    if buf.len() as u64 > size {
                        return Err(MediaError::Other(format!("stream is longer than the declared {size} bytes")));
                    }
                }
                if buf.len() as u64 != size {
                    return Err(MediaError::Other(format!("expected {size} bytes, got {}", buf.len())));
                }
                self.store.put(&path, PutPayload::from(buf.freeze())).await.map_err(|e| self.write_err(e))?;
                return Ok(());
            }
            let mut upload = self.store.put_multipart(&path).await.map_err(|e| self.write_err(e))?;
            // Parts are filled in one contiguous buffer and uploaded one at a time: memory stays at
            // one part (64 MiB by default) whatever the object's size, and the buffer (large enough
            // to be mmapped) goes back to the system as soon as its part is stored. Uploads come
            // from the spool on local disk, which fills a part far faster than S3 takes it, so
            // uploading parts in parallel would buy little.
            let mut written = 0u64;
            let result: Result<()> = async {
                let mut buf: Vec<u8> = Vec::new();
                while let Some(chunk) = data.next().await {
                    let chunk = chunk?;
                    let mut rest: &[u8] = &chunk;
                    while !rest.is_empty() {
                        if buf.capacity() == 0 {
                            buf = Vec::with_capacity(part);
                        }
                        let take = rest.len().min(part - buf.len());
                        buf.extend_from_slice(&rest[..take]);
                        written += take as u64;
                        rest = &rest[take..];
                        if buf.len() == part {
                            let full = Bytes::from(std::mem::take(&mut buf));
                            upload.put_part(PutPayload::from(full)).await.map_err(map_err)?;
                        }
                    }
                }
                if written != size {
                    return Err(MediaError::Other(format!("expected {size} bytes, got {written}")));
                }
                if !buf.is_empty() {
                    upload.put_part(PutPayload::from(Bytes::from(buf))).await.map_err(map_err)?;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    upload.complete().await.map_err(map_err)?;
                    Ok(())
                }
                Err(e) => {
                    // Abandoned parts cost storage until aborted.
                    let _ = upload.abort().await;
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            let path = self.path(key)?;
            if let Some(r) = range {
                if r.is_empty() {
                    // S3 cannot express an empty range; check existence and return nothing.
                    self.store.head(&path).await.map_err(map_err)?;
                    return Ok(super::once(Bytes::new()));
                }
            }
            let opts = GetOptions { range: range.map(|r| GetRange::Bounded(r.start..r.end)), ..Default::default() };
            let res = self.store.get_opts(&path, opts).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => MediaError::NotFound,
                object_store::Error::Generic { source, .. }
                    if source.to_string().contains("416") || source.to_string().contains("Range") =>
                {
                    MediaError::BadRange
                }
                other => MediaError::Unavailable(other.to_string()),
            })?;
            if let Some(r) = range {
                if r.end > res.meta.size {
                    return Err(MediaError::BadRange);
                }
            }
            Ok(Box::pin(res.into_stream().map_err(|e| std::io::Error::other(e.to_string()))) as ByteStream)
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            match self.store.head(&self.path(key)?).await {
                Ok(meta) => Ok(Some(ObjectInfo { size: meta.size })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            match self.store.delete(&self.path(key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        let prefix = self.config.prefix.clone();
        // Prefixes are part of flat names, not path segments: list everything and filter.
        let listing = self.store.list(None);
        Box::pin(listing.filter_map(move |m| {
            let prefix = prefix.clone();
            async move {
                match m {
                    Ok(meta) => meta.location.as_ref().strip_prefix(prefix.as_str()).map(|k| Ok(k.to_owned())),
                    Err(e) => Some(Err(map_err(e))),
                }
            }
        }))
    }
}
