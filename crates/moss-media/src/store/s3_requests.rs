//! Counts every HTTP request the S3 client makes, retries included, by how it ended: wraps the
//! client's own HTTP connector (same connection pool, timeouts and TLS), adds nothing else.

use std::{future::Future, pin::Pin, sync::Arc};

use object_store::{
    client::{HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector},
    ClientOptions,
};

use super::metered::{S3Outcome, StoreObserver};

/// An [`HttpConnector`] whose clients report each request's outcome to the observer.
#[derive(Clone)]
pub(crate) struct CountingConnector {
    pub observer: Arc<dyn StoreObserver>,
}

impl std::fmt::Debug for CountingConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountingConnector")
    }
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Counting { inner, observer: self.observer.clone() }))
    }
}

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

// `HttpService` is an `async_trait`: this is the signature that attribute would write.
impl HttpService for Counting {
    fn call<'life0, 'async_trait>(
        &'life0 self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let result = self.inner.execute(req).await;
            self.observer.s3_request(outcome(&result));
            result
        })
    }
}
