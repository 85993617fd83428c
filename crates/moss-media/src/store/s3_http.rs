//! The HTTP under the S3 client.
//!
//! `http://` endpoints (a gateway or Garage on the same host or network, as most self-hosters
//! run them) get hyper over plain TCP with `TCP_NODELAY`, and `TCP_QUICKACK` re-armed before
//! every read. Why: a server that writes a response's head and its body as two small writes
//! without `TCP_NODELAY` (Garage does) holds the body back until the head is acknowledged
//! (Nagle), and Linux delays that acknowledgement on a reused connection by up to 40 ms; every
//! small object (avatars, thumbnails) took 40+ ms. Acknowledging at once removes the wait
//! (a 4 KiB GET from loopback Garage: 44 ms → 0.5 ms). `https://` endpoints keep object_store's
//! own client (reqwest with rustls).
//!
//! With an observer, every request, retries included, is reported by outcome (see
//! [`S3Outcome`]).
//!
//! Guarantees: the same timeouts as the reqwest client (connect; request head within the
//! request timeout; body with an idle limit and the same overall deadline), connections pooled
//! and reused, errors classified so object_store retries what it would retry.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection, HttpConnector as TcpConnector},
        Client,
    },
    rt::{TokioExecutor, TokioIo},
};
use object_store::{
    client::{
        HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
        HttpResponseBody, HttpService, ReqwestConnector,
    },
    ClientOptions,
};
use tokio::{net::TcpStream, time::Instant};

use super::metered::{S3Outcome, StoreObserver};

/// Timeouts of the plain-HTTP client (those of `[media.s3]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
    pub idle: Duration,
}

/// The connector handed to object_store: quick-acknowledging HTTP for `http://` endpoints
/// (`plain` set), reqwest otherwise; counted when there is an observer.
#[derive(Clone)]
pub(crate) struct StoreConnector {
    pub plain: Option<Timeouts>,
    pub observer: Option<Arc<dyn StoreObserver>>,
}

impl std::fmt::Debug for StoreConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConnector").field("plain", &self.plain).finish()
    }
}

impl HttpConnector for StoreConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let base = match self.plain {
            Some(t) => {
                let mut tcp = TcpConnector::new();
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(Some(t.connect));
                tcp.enforce_http(true);
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build::<_, HttpRequestBody>(QuickAckConnect(tcp));
                HttpClient::new(PlainClient { client, timeouts: t })
            }
            None => ReqwestConnector::default().connect(options)?,
        };
        Ok(match &self.observer {
            Some(observer) => HttpClient::new(Counting { inner: base, observer: observer.clone() }),
            None => base,
        })
    }
}

// ---- quick acknowledgements ----

/// Re-arms quick ACK mode: the next segments that arrive are acknowledged at once. The kernel
/// leaves that mode on its own (when it sees request/response traffic), hence before each read.
fn quickack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor owned by `stream`, and a pointer to a c_int that
        // lives across the call with its size.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// A TCP connection that acknowledges promptly.
struct QuickAck(TokioIo<TcpStream>);

impl Read for QuickAck {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        quickack(self.0.inner());
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for QuickAck {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct QuickAckConnect(TcpConnector);

impl tower_service::Service<http::Uri> for QuickAckConnect {
    type Response = QuickAck;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(QuickAck(connecting.await?)) })
    }
}

// ---- the client ----

struct PlainClient {
    client: Client<QuickAckConnect, HttpRequestBody>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for PlainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlainClient")
    }
}

#[derive(Debug)]
struct TimedOut(&'static str);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} timed out", self.0)
    }
}

impl std::error::Error for TimedOut {}

/// What object_store should make of a failed request: connection failures and requests that
/// broke are retried, as with reqwest.
fn classify(e: hyper_util::client::legacy::Error) -> HttpError {
    let kind = if e.is_connect() { HttpErrorKind::Connect } else { HttpErrorKind::Request };
    HttpError::new(kind, e)
}

impl PlainClient {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let started = Instant::now();
        let deadline = started + self.timeouts.request;
        let res = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Ok(r) => r.map_err(classify)?,
            Err(_) => return Err(HttpError::new(HttpErrorKind::Timeout, TimedOut("the request"))),
        };
        let (parts, body) = res.into_parts();
        let body = Timed {
            inner: body,
            idle: self.timeouts.idle,
            idle_timer: Box::pin(tokio::time::sleep(self.timeouts.idle)),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

#[async_trait::async_trait]
impl HttpService for PlainClient {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.send(req).await
    }
}

/// A response body that fails when no data came for `idle`, or past the request's deadline.
struct Timed {
    inner: hyper::body::Incoming,
    idle: Duration,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Timed {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            let idle = self.idle;
            self.idle_timer.as_mut().reset(Instant::now() + idle);
            return Poll::Ready(frame.map(|f| f.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e))));
        }
        if self.idle_timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::new(HttpErrorKind::Timeout, TimedOut("reading the body")))));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::new(HttpErrorKind::Timeout, TimedOut("the request")))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---- counting ----

struct Counting {
    inner: HttpClient,
    observer: Arc<dyn StoreObserver>,
}

impl std::fmt::Debug for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counting")
    }
}

fn outcome(result: &Result<HttpResponse, HttpError>) -> S3Outcome {
    match result {
        Err(_) => S3Outcome::Transport,
        Ok(r) if r.status().as_u16() == 429 || r.status().as_u16() == 503 => S3Outcome::Throttled,
        Ok(r) if r.status().is_server_error() => S3Outcome::ServerError,
        Ok(_) => S3Outcome::Answered,
    }
}

#[async_trait::async_trait]
impl HttpService for Counting {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let result = self.inner.execute(req).await;
        self.observer.s3_request(outcome(&result));
        result
    }
}

// ---- streamed PUTs ----

/// A PUT whose body is sent while it still arrives, to a presigned URL: object_store's client
/// wants every body whole in memory first, which makes an upload wait for all of its bytes
/// before the first one leaves. Plain-HTTP endpoints get the quick-acknowledging client above,
/// `https://` ones reqwest. One attempt: a stream cannot be sent twice (callers that can
/// replay the body retry, see `S3Store::put_file`).
pub(crate) struct StreamingPut {
    client: PutClient,
    timeouts: Timeouts,
    observer: Option<Arc<dyn StoreObserver>>,
}

enum PutClient {
    Plain(Box<Client<QuickAckConnect, PutBody>>),
    Tls(reqwest::Client),
}

type PutBody = http_body_util::StreamBody<
    futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>,
>;

/// How a streamed PUT failed: whether sending the same bytes again may work.
#[derive(Debug)]
pub(crate) struct PutFailure {
    pub retryable: bool,
    pub message: String,
}

/// Most of an error answer read for the log.
const ERROR_BODY_LIMIT: usize = 4096;

impl StreamingPut {
    pub fn new(
        plain: bool,
        timeouts: Timeouts,
        observer: Option<Arc<dyn StoreObserver>>,
    ) -> Result<StreamingPut, String> {
        let client = if plain {
            let mut tcp = TcpConnector::new();
            tcp.set_nodelay(true);
            tcp.set_connect_timeout(Some(timeouts.connect));
            tcp.enforce_http(true);
            PutClient::Plain(Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build::<_, PutBody>(QuickAckConnect(tcp)),
            ))
        } else {
            // The operator's own store endpoint, as object_store's client reaches it: not a
            // destination anyone else chooses, so not one for the outbound guard (docs/security.md).
            #[allow(clippy::disallowed_methods)]
            PutClient::Tls(
                reqwest::Client::builder()
                    .connect_timeout(timeouts.connect)
                    .read_timeout(timeouts.idle)
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))?,
            )
        };
        Ok(StreamingPut { client, timeouts, observer })
    }

    /// PUTs exactly `size` bytes from `data` to `url`; a stream that ends early or runs long
    /// fails the request (the store never keeps a short object).
    pub async fn put(&self, url: &str, size: u64, data: super::ByteStream) -> Result<(), PutFailure> {
        use futures_util::StreamExt;
        let deadline = Instant::now() + self.timeouts.request;
        let mut sent = 0u64;
        let counted = data.map(move |chunk| {
            let chunk = chunk?;
            sent += chunk.len() as u64;
            if sent > size {
                return Err(std::io::Error::other(format!("body longer than the declared {size} bytes")));
            }
            Ok(chunk)
        });
        let request = async {
            match &self.client {
                PutClient::Plain(client) => {
                    let body: PutBody = http_body_util::StreamBody::new(
                        counted.map(|c| c.map(Frame::data).map_err(|e| Box::new(e) as BoxError)).boxed(),
                    );
                    let req = http::Request::put(url)
                        .header(http::header::CONTENT_LENGTH, size)
                        .body(body)
                        .map_err(|e| PutFailure { retryable: false, message: e.to_string() })?;
                    let res = client
                        .request(req)
                        .await
                        .map_err(|e| PutFailure { retryable: true, message: super::s3::error_chain(&e) })?;
                    let status = res.status();
                    let text = if status.is_success() { String::new() } else { read_limited(res.into_body()).await };
                    Ok((status, text))
                }
                PutClient::Tls(client) => {
                    let res = client
                        .put(url)
                        .header(http::header::CONTENT_LENGTH, size)
                        .body(reqwest::Body::wrap_stream(counted))
                        .send()
                        .await
                        .map_err(|e| PutFailure { retryable: true, message: super::s3::error_chain(&e) })?;
                    let status = res.status();
                    let text = if status.is_success() {
                        String::new()
                    } else {
                        let mut text = String::new();
                        let mut stream = res.bytes_stream();
                        while let Some(Ok(b)) = stream.next().await {
                            text.push_str(&String::from_utf8_lossy(&b));
                            if text.len() >= ERROR_BODY_LIMIT {
                                break;
                            }
                        }
                        text
                    };
                    Ok((status, text))
                }
            }
        };
        let result = match tokio::time::timeout_at(deadline, request).await {
            Ok(r) => r,
            Err(_) => Err(PutFailure { retryable: true, message: "the request timed out".into() }),
        };
        if let Some(observer) = &self.observer {
            observer.s3_request(match &result {
                Err(_) => S3Outcome::Transport,
                Ok((s, _)) if s.as_u16() == 429 || s.as_u16() == 503 => S3Outcome::Throttled,
                Ok((s, _)) if s.is_server_error() => S3Outcome::ServerError,
                Ok(_) => S3Outcome::Answered,
            });
        }
        let (status, text) = result?;
        if status.is_success() {
            return Ok(());
        }
        let text: String = text.chars().take(ERROR_BODY_LIMIT).collect();
        Err(PutFailure {
            retryable: status.is_server_error() || status.as_u16() == 429,
            message: format!("PUT answered {status}: {text}"),
        })
    }
}

/// The start of an error answer's body, at most [`ERROR_BODY_LIMIT`] bytes of it.
async fn read_limited(mut body: hyper::body::Incoming) -> String {
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    while out.len() < ERROR_BODY_LIMIT {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    out.extend_from_slice(d);
                }
            }
            _ => break,
        }
    }
    out.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&out).into_owned()
}
