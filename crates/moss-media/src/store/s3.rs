//! Any S3-compatible object store (Storj gateway, Garage, MinIO, AWS, Backblaze B2), through the
//! `object_store` crate: request signing, retries and multipart uploads are its business.
//!
//! Kept within the Storj gateway's limits: plain PUT or multipart upload (never UploadPartCopy),
//! the STANDARD storage class, no checksum headers, and listing without a delimiter.
//!
//! Writes: objects up to [`BUFFERED_PUT_MAX`] are gathered and sent in one PUT that object_store
//! retries; larger ones, up to S3's single-PUT limit, are one PUT whose body streams as it is
//! produced (to a presigned URL, see `s3_http::StreamingPut`), so an upload reaches the store
//! while it still arrives; only objects beyond that limit are multipart uploads.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt, TryStreamExt};
use object_store::{
    aws::{AmazonS3, AmazonS3Builder},
    path::Path,
    signer::{SignedUrlOptions, Signer},
    BackoffConfig, ClientOptions, GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{
    metered::StoreObserver,
    s3_http::{PutFailure, StoreConnector, StreamingPut, Timeouts},
    valid_key, BlobStore, ByteStream, ObjectInfo, Range,
};
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
    /// Multipart part size, for objects beyond a single PUT's 5 GiB.
    pub part_size: usize,
    /// Upper bound on one request, retries included: a backstop for a store that trickles
    /// (a 64 MiB part must fit in it at the slowest rate you accept).
    pub request_timeout: Duration,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on silence: a request fails when nothing arrives for this long, however large
    /// its object.
    pub idle_timeout: Duration,
    /// Reads are ranged GETs of this many bytes...
    pub read_segment: u64,
    /// ...up to this many in flight for one reader...
    pub read_ahead: usize,
    /// ...while the segments read ahead of all readers together hold at most this many bytes.
    pub read_ahead_memory: u64,
}

pub struct S3Store {
    store: Arc<AmazonS3>,
    config: S3Config,
    plan: ReadPlan,
    streaming: StreamingPut,
    single_put_max: u64,
}

/// Objects up to this size are gathered in memory and sent in one retried PUT.
pub const BUFFERED_PUT_MAX: u64 = 256 * 1024;

/// S3's limit on one PUT; larger objects are multipart uploads.
pub const SINGLE_PUT_MAX: u64 = 5 * 1024 * 1024 * 1024;

/// Attempts at a streamed PUT whose body can be read again (a file).
const FILE_PUT_ATTEMPTS: u32 = 4;

fn map_err(e: object_store::Error) -> MediaError {
    match e {
        object_store::Error::NotFound { .. } => MediaError::NotFound,
        other => MediaError::Unavailable(error_chain(&other)),
    }
}

fn get_err(e: object_store::Error) -> MediaError {
    match e {
        object_store::Error::NotFound { .. } => MediaError::NotFound,
        other => {
            let text = error_chain(&other);
            // The store's 416, or object_store's own check of the range against the object's
            // size. (Matched on these phrases only: a bare "416" also turns up in port numbers.)
            if [
                "status code: 416",
                "Range Not Satisfiable",
                "InvalidRange",
                "Wanted range starting at",
                "Range started at",
            ]
            .iter()
            .any(|p| text.contains(p))
            {
                MediaError::BadRange
            } else {
                MediaError::Unavailable(text)
            }
        }
    }
}

/// A GET of bytes `r` of an object.
fn ranged(r: std::ops::Range<u64>) -> GetOptions {
    GetOptions { range: Some(GetRange::Bounded(r)), ..Default::default() }
}

/// Read-ahead memory is counted in units of this many bytes.
const BUDGET_UNIT: u64 = 64 * 1024;

/// How a large read is cut up: `segment` bytes per ranged GET, up to `ahead` GETs in flight for
/// one reader, and what read-ahead may hold in memory across all readers.
#[derive(Clone)]
struct ReadPlan {
    segment: u64,
    ahead: usize,
    budget: Arc<Semaphore>,
}

impl ReadPlan {
    /// Where the segment starting at `start` ends: a remainder under half a segment joins the
    /// last one rather than going as a tiny GET of its own (a small response is the one most
    /// likely to wait out a delayed ACK: ≈ 40 ms when the store does not set TCP_NODELAY).
    fn segment_end(&self, start: u64, end: u64) -> u64 {
        let cut = start.saturating_add(self.segment);
        if cut >= end || end - cut < self.segment / 2 {
            end
        } else {
            cut
        }
    }
}

/// One ranged GET, drained by its own task into a channel.
struct Segment {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    task: tokio::task::JoinHandle<()>,
    /// Held while the segment's bytes may sit in memory; `None` for a segment read at the pace of
    /// its reader.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        // A reader that went away (client disconnected) stops its GETs.
        self.task.abort();
    }
}

impl Segment {
    /// `first` is a response already received for `r`. With a read-ahead permit the task reads
    /// as fast as the store sends; without one, a few chunks ahead of the reader.
    fn spawn(
        store: Arc<AmazonS3>,
        path: Path,
        r: std::ops::Range<u64>,
        first: Option<GetResult>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Segment {
        // The bound is the segment itself when it may be held in memory whole.
        let (tx, rx) = mpsc::channel(if permit.is_some() { 1 << 16 } else { 8 });
        let task = tokio::spawn(async move {
            let res = match first {
                Some(res) => res,
                None => match store.get_opts(&path, ranged(r.clone())).await {
                    Ok(res) => res,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(error_chain(&e)))).await;
                        return;
                    }
                },
            };
            let mut body = res.into_stream();
            let mut got = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| std::io::Error::other(error_chain(&e)));
                let failed = chunk.is_err();
                got += chunk.as_ref().map_or(0, |b| b.len() as u64);
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
            if got != r.end - r.start {
                let e = format!("{path}: expected {} bytes at {}, got {got}", r.end - r.start, r.start);
                let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e))).await;
            }
        });
        Segment { rx, task, _permit: permit }
    }
}

/// The body of `res`, the response for all of `r`; an error at its end if it was cut short.
fn one_response(res: GetResult, path: Path, r: std::ops::Range<u64>) -> ByteStream {
    let body = res.into_stream();
    Box::pin(futures_util::stream::unfold(Some((body, 0u64)), move |state| {
        let (path, r) = (path.clone(), r.clone());
        async move {
            let (mut body, got) = state?;
            match body.next().await {
                Some(Ok(b)) => {
                    let got = got + b.len() as u64;
                    Some((Ok(b), Some((body, got))))
                }
                Some(Err(e)) => Some((Err(std::io::Error::other(error_chain(&e))), None)),
                None if got != r.end - r.start => {
                    let e = format!("{path}: expected {} bytes at {}, got {got}", r.end - r.start, r.start);
                    Some((Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e)), None))
                }
                None => None,
            }
        }
    }))
}

/// Reads `start..end` of an object as consecutive ranged GETs of `plan.segment` bytes, `first`
/// being the response for the first one. Several GETs in flight at once are what lets a store
/// deliver at its full rate to one reader (one GET is bound by the store's per-request pipeline:
/// about 70% of the rate here for Garage, far less over a long link to Storj or AWS). Segments
/// ahead of the one being read are read whole into memory, within the shared budget; when the
/// budget is spent, a reader falls back to one GET at a time at its own pace.
fn segmented(
    store: Arc<AmazonS3>,
    path: Path,
    first: GetResult,
    first_range: std::ops::Range<u64>,
    end: u64,
    plan: ReadPlan,
) -> ByteStream {
    struct St {
        store: Arc<AmazonS3>,
        path: Path,
        next: u64,
        end: u64,
        queue: VecDeque<Segment>,
        plan: ReadPlan,
        started: u64,
        /// The final segment, asked for right away (see below), with where it starts.
        last: Option<(u64, Segment)>,
    }
    impl Drop for St {
        fn drop(&mut self) {
            // Read-ahead held several segments' buffers: after a large read, give them back.
            if self.next - self.started > 2 * self.plan.segment {
                super::release_memory();
            }
        }
    }
    let mut queue = VecDeque::new();
    let next = first_range.end;
    queue.push_back(Segment::spawn(store.clone(), path.clone(), first_range, Some(first), None));
    let started = next;
    // The final segment goes first along with the others: it usually ends in a short write from
    // the store (the object's last, partial block), which a store without TCP_NODELAY holds
    // until our delayed ACK (≈ 40 ms). Asked for at the start, that wait overlaps the transfer
    // instead of ending it. Only with read-ahead memory: it may wait whole in memory.
    let mut last = None;
    if end - next > plan.segment {
        let mut cut = next;
        while plan.segment_end(cut, end) < end {
            cut = plan.segment_end(cut, end);
        }
        let units = (end - cut).div_ceil(BUDGET_UNIT) as u32;
        if let Ok(permit) = plan.budget.clone().try_acquire_many_owned(units) {
            last = Some((cut, Segment::spawn(store.clone(), path.clone(), cut..end, None, Some(permit))));
        }
    }
    let st = St { store, path, next, end, queue, plan, started, last };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        loop {
            while st.next < st.end && st.queue.len() < st.plan.ahead {
                let r = st.next..st.plan.segment_end(st.next, st.end);
                if st.last.as_ref().is_some_and(|(at, _)| *at == r.start) {
                    let (_, seg) = st.last.take().expect("checked");
                    st.next = r.end;
                    st.queue.push_back(seg);
                    continue;
                }
                let units = (r.end - r.start).div_ceil(BUDGET_UNIT) as u32;
                let permit = st.plan.budget.clone().try_acquire_many_owned(units).ok();
                if permit.is_none() && !st.queue.is_empty() {
                    break;
                }
                st.next = r.end;
                st.queue.push_back(Segment::spawn(st.store.clone(), st.path.clone(), r, None, permit));
            }
            let front = st.queue.front_mut()?;
            match front.rx.recv().await {
                Some(Ok(b)) => return Some((Ok(b), st)),
                Some(Err(e)) => {
                    st.queue.clear();
                    st.last = None;
                    st.next = st.end;
                    return Some((Err(e), st));
                }
                None => {
                    st.queue.pop_front();
                }
            }
        }
    }))
}

/// The error with all its causes: the root cause ("Connection refused") is what explains it.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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
        S3Store::observed(config, None)
    }

    /// A store whose every HTTP request (retries included) is reported to `observer`.
    pub fn observed(config: S3Config, observer: Option<Arc<dyn StoreObserver>>) -> Result<S3Store> {
        let client = ClientOptions::new()
            .with_allow_http(config.endpoint.starts_with("http://"))
            .with_connect_timeout(config.connect_timeout)
            .with_read_timeout(config.idle_timeout)
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
        // Plain-HTTP endpoints get the quick-acknowledging client (see `s3_http`).
        let plain = config.endpoint.starts_with("http://").then_some(Timeouts {
            connect: config.connect_timeout,
            request: config.request_timeout,
            idle: config.idle_timeout,
        });
        let timeouts =
            Timeouts { connect: config.connect_timeout, request: config.request_timeout, idle: config.idle_timeout };
        let streaming = StreamingPut::new(plain.is_some(), timeouts, observer.clone()).map_err(MediaError::Other)?;
        let store = AmazonS3Builder::new()
            .with_http_connector(StoreConnector { plain, observer })
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
        let units = (config.read_ahead_memory / BUDGET_UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        let plan = ReadPlan {
            segment: config.read_segment.max(BUDGET_UNIT),
            ahead: config.read_ahead.max(1),
            budget: Arc::new(Semaphore::new(units)),
        };
        Ok(S3Store { store: Arc::new(store), config, plan, streaming, single_put_max: SINGLE_PUT_MAX })
    }

    /// Sends objects larger than `max` bytes as multipart uploads, rather than those beyond
    /// [`SINGLE_PUT_MAX`] (to try multipart uploads on small objects).
    pub fn with_single_put_max(mut self, max: u64) -> S3Store {
        self.single_put_max = max.min(SINGLE_PUT_MAX);
        self
    }

    /// Bytes of read-ahead memory not in use right now.
    pub fn read_ahead_free(&self) -> u64 {
        self.plan.budget.available_permits() as u64 * BUDGET_UNIT
    }

    async fn get_range(&self, path: &Path, r: std::ops::Range<u64>) -> Result<GetResult> {
        self.store.get_opts(path, ranged(r)).await.map_err(get_err)
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

    /// One PUT of `size` bytes streamed from `data` to a presigned URL (see the module header).
    async fn streamed_put(&self, path: &Path, size: u64, data: ByteStream) -> Result<(), PutFailure> {
        // Valid for as long as the request may take, and a little: signed once per attempt.
        let expires = self.config.request_timeout + Duration::from_secs(60);
        let url = self
            .store
            .signed_url(http::Method::PUT, path, expires)
            .await
            .map_err(|e| PutFailure { retryable: false, message: error_chain(&e) })?;
        self.streaming.put(url.as_str(), size, data).await
    }

    fn put_failed(&self, f: PutFailure) -> MediaError {
        if f.message.contains("NoSuchBucket") {
            return MediaError::Unavailable(format!("NoSuchBucket: the bucket {} does not exist", self.config.bucket));
        }
        MediaError::Unavailable(f.message)
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
            if size > BUFFERED_PUT_MAX && size <= self.single_put_max {
                return self.streamed_put(&path, size, data).await.map_err(|f| self.put_failed(f));
            }
            if size <= BUFFERED_PUT_MAX {
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
            super::release_memory();
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

    /// A file can be sent again: a streamed PUT of it is retried as object_store retries (a
    /// broken connection, a 5xx, throttling), with the same backoff.
    fn put_file<'a>(&'a self, key: &'a str, size: u64, file: &'a std::path::Path) -> BoxFuture<'a, Result<()>> {
        async move {
            if size <= BUFFERED_PUT_MAX || size > self.single_put_max {
                return self.put(key, size, super::file_stream(file).await?).await;
            }
            let path = self.path(key)?;
            let mut backoff = Duration::from_millis(100);
            let mut attempt = 1;
            loop {
                match self.streamed_put(&path, size, super::file_stream(file).await?).await {
                    Ok(()) => return Ok(()),
                    Err(f) if f.retryable && attempt < FILE_PUT_ATTEMPTS => {
                        tracing::debug!(key, attempt, error = %f.message, "retrying a PUT");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        attempt += 1;
                    }
                    Err(f) => return Err(self.put_failed(f)),
                }
            }
        }
        .boxed()
    }

    fn streams_writes(&self) -> bool {
        true
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
            let seg = self.plan.segment;
            // The first segment is asked for here, so that a missing object or a bad range is an
            // error of `get` rather than of the stream; its answer also tells the object's size.
            let start = range.map_or(0, |r| r.start);
            let first_end = range.map_or(start + seg, |r| self.plan.segment_end(start, r.end));
            let first = match self.get_range(&path, start..first_end).await {
                // An empty object has no byte 0 to ask for.
                Err(MediaError::BadRange) if range.is_none() => {
                    let res = self.store.get_opts(&path, GetOptions::default()).await.map_err(get_err)?;
                    return Ok(
                        Box::pin(res.into_stream().map_err(|e| std::io::Error::other(e.to_string()))) as ByteStream
                    );
                }
                other => other?,
            };
            let size = first.meta.size;
            let end = range.map_or(size, |r| r.end);
            if end > size {
                return Err(MediaError::BadRange);
            }
            if first_end >= end {
                // One response holds the whole read (most media: one segment): streamed as it
                // arrives, without a task and channel in between.
                return Ok(one_response(first, path, start..end));
            }
            Ok(segmented(self.store.clone(), path, first, start..first_end.min(end), end, self.plan.clone()))
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

    fn presigned_get<'a>(
        &'a self,
        key: &'a str,
        expires: Duration,
        overrides: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<Option<String>>> {
        async move {
            let path = self.path(key)?;
            let options = SignedUrlOptions::new().with_query(overrides.iter().map(|(k, v)| (*k, v.as_str())));
            let url = self.store.signed_url_opts(http::Method::GET, &path, expires, &options).await.map_err(map_err)?;
            Ok(Some(url.to_string()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_never_end_in_a_sliver() {
        let plan = ReadPlan { segment: 8, ahead: 4, budget: Arc::new(Semaphore::new(0)) };
        assert_eq!(plan.segment_end(0, 100), 8);
        assert_eq!(plan.segment_end(88, 100), 96);
        // 4 bytes would be left over: they join this segment.
        assert_eq!(plan.segment_end(92, 100), 100);
        assert_eq!(plan.segment_end(0, 11), 11);
        assert_eq!(plan.segment_end(0, 12), 8);
        assert_eq!(plan.segment_end(0, 5), 5);
        assert_eq!(plan.segment_end(u64::MAX - 3, u64::MAX), u64::MAX);
    }

    #[test]
    fn only_a_range_error_is_a_bad_range() {
        let refused = object_store::Error::Generic {
            store: "S3",
            source: "error sending request for url (http://127.0.0.1:41653/b/k): Connection refused".into(),
        };
        assert!(matches!(get_err(refused), MediaError::Unavailable(_)));
        let status = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 416 Range Not Satisfiable: ".into(),
        };
        assert!(matches!(get_err(status), MediaError::BadRange));
    }
}
