//! Glue between axum and ruma: an extractor that parses any ruma request type (path, query,
//! body) and authenticates it, and a router extension that mounts a handler at every path the
//! endpoint has had (so the legacy `r0` paths answer too).

use std::{any::TypeId, future::Future, net::IpAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request, State},
    http::{HeaderMap, Method},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use bytes::BytesMut;
use moss_core::{accounts::Session, Moss};
use ruma::api::{
    auth_scheme::{AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional},
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
    IncomingRequest, IncomingRequestExt, OutgoingResponseExt,
};

use crate::error::ApiError;

/// A parsed ruma request plus who sent it.
pub struct Ruma<R> {
    pub body: R,
    pub session: Option<Session>,
    pub ip: Option<IpAddr>,
    /// The raw JSON body, for endpoints whose ruma type loses information we need.
    pub json: Option<serde_json::Value>,
}

impl<R> Ruma<R> {
    /// The session of an endpoint that needs one. The extractor refuses requests without a
    /// token where the spec requires one; where the spec makes it optional (password change,
    /// deactivation) but moss needs it, its absence is refused here.
    pub fn session(&self) -> Result<&Session, ApiError> {
        self.session.as_ref().ok_or_else(ApiError::missing_token)
    }
}

/// The client's `User-Agent`, for the devices list and whois.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

pub fn access_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(h) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = h.strip_prefix("Bearer ") {
            return Some(t.trim().to_owned());
        }
    }
    query?.split('&').find_map(|kv| kv.strip_prefix("access_token=")).map(|t| t.to_owned())
}

/// The session of a plain (non-ruma) handler that requires authentication.
pub struct Authed(pub Session);

impl FromRequestParts<Arc<Moss>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, moss: &Arc<Moss>) -> Result<Self, ApiError> {
        let token = access_token(&parts.headers, parts.uri.query()).ok_or_else(ApiError::missing_token)?;
        let session = moss.authenticate_request(&token, parts.uri.query()).await?;
        if session.appservice.is_none() {
            let peer = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
            let ip = crate::rate_limit::client_addr(moss, peer, &parts.headers);
            moss.note_activity(&session, ip.map(|i| i.to_string()), user_agent(&parts.headers));
        }
        Ok(Authed(session))
    }
}

fn expected_path_args<R: IncomingRequest>() -> usize {
    R::PATH_BUILDER.all_paths().next().map(|p| p.matches('{').count()).unwrap_or(0)
}

impl<R> FromRequest<Arc<Moss>> for Ruma<R>
where
    R: IncomingRequest + Send + 'static,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, moss: &Arc<Moss>) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let mut path_args: Vec<String> = match RawPathParams::from_request_parts(&mut parts, moss).await {
            Ok(p) => p.iter().map(|(_, v)| v.to_owned()).collect(),
            Err(_) => Vec::new(),
        };
        // Routes for an empty trailing state key have one argument fewer.
        while path_args.len() < expected_path_args::<R>() {
            path_args.push(String::new());
        }
        let peer = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        let ip = crate::rate_limit::client_addr(moss, peer, &parts.headers);

        let limit = moss.config.http.max_request_bytes;
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| ApiError::too_large(format!("request body is larger than {limit} bytes")))?;
        let json = if bytes.is_empty() || parts.method == Method::GET {
            None
        } else {
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => Some(v),
                Err(e) => return Err(ApiError::not_json(format!("request body is not valid JSON: {e}"))),
            }
        };
        if json.as_ref().is_some_and(|v| !v.is_object()) {
            return Err(ApiError::bad_json("request body must be a JSON object"));
        }

        let auth = TypeId::of::<R::Authentication>();
        let token = access_token(&parts.headers, parts.uri.query());
        let session = if auth == TypeId::of::<AccessToken>() || auth == TypeId::of::<AccessTokenOptional>() {
            match token {
                Some(t) => Some(moss.authenticate_request(&t, parts.uri.query()).await?),
                None if auth == TypeId::of::<AccessToken>() => return Err(ApiError::missing_token()),
                None => None,
            }
        } else if auth == TypeId::of::<AppserviceToken>() || auth == TypeId::of::<AppserviceTokenOptional>() {
            // Endpoints an application service may call with its token (registration of its
            // users, login as them, ping): the service's own session; `user_id=` does not
            // apply (the user may not exist yet), as in Synapse.
            match token {
                Some(t) => match moss.appservices.by_as_token(&t) {
                    Some(_) => Some(moss.authenticate_request(&t, None).await?),
                    None if auth == TypeId::of::<AppserviceToken>() => {
                        return Err(moss_core::Error::unknown_token("unknown application service token").into())
                    }
                    // Registration with a user's token is not an application service's.
                    None => None,
                },
                None if auth == TypeId::of::<AppserviceToken>() => return Err(ApiError::missing_token()),
                None => None,
            }
        } else {
            None
        };
        if let Some(s) = session.as_ref().filter(|s| s.appservice.is_none()) {
            moss.note_activity(s, ip.map(|i| i.to_string()), user_agent(&parts.headers));
        }

        // A password given to user-interactive auth is a login attempt: limited like logins,
        // per address and per account, so a stolen session cannot guess the password at speed.
        if json.as_ref().is_some_and(|j| j["auth"]["type"] == "m.login.password") {
            let addr = ip.map(|i| i.to_string()).unwrap_or_default();
            crate::rate_limit::check(moss, crate::rate_limit::Class::Login, &addr)?;
            if let Some(s) = &session {
                crate::rate_limit::check(moss, crate::rate_limit::Class::Login, s.user_id.as_str())?;
            }
        }

        // Clients may send an empty body where the endpoint expects `{}`.
        let body_bytes: &[u8] = if bytes.is_empty() && parts.method != Method::GET { b"{}" } else { &bytes };
        let http_req = http::Request::from_parts(parts, body_bytes);
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        // A request type's deserializer is third-party code run on untrusted bytes; one that
        // panics (ruma's login body without `type` did) refuses the request, never the server.
        // A login body must name its type: ruma's parser indexes it without checking.
        if TypeId::of::<R>() == TypeId::of::<ruma::api::client::session::login::v3::Request>()
            && !json.as_ref().is_some_and(|j| j["type"].is_string())
        {
            return Err(ApiError::bad_json("a login body needs a \"type\" string"));
        }
        let parsed = quiet_catch_unwind(|| R::try_from_http_request(http_req, &args));
        let body = match parsed {
            Ok(result) => result.map_err(request_error)?,
            Err(_) => {
                tracing::warn!(path = %args.join("/"), "a request body made its parser panic; refused");
                return Err(ApiError::bad_json("invalid request body"));
            }
        };
        Ok(Ruma { body, session, ip, json })
    }
}

fn request_error(e: FromHttpRequestError) -> ApiError {
    match e {
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            ApiError::invalid_param(format!("invalid identifier: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            ApiError::invalid_param(format!("invalid parameter: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            ApiError::bad_json(format!("invalid request: {e}"))
        }
        FromHttpRequestError::MethodMismatch { .. } => ApiError::unrecognized_method(),
        other => ApiError::bad_json(format!("invalid request: {other}")),
    }
}

/// Turns a ruma response into an axum one.
pub struct RumaResponse<T>(pub T);

impl<T: ruma::api::OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res.map(|b| Body::from(b.freeze())).into_response(),
            Err(e) => ApiError::from(moss_core::Error::internal(format!("serializing response: {e}"))).into_response(),
        }
    }
}

pub type HandlerResult<R> = Result<RumaResponse<<R as IncomingRequest>::OutgoingResponse>, ApiError>;

pub trait RouterExt {
    /// Mounts `handler` for the ruma endpoint `R` at each of its paths.
    ///
    /// Handlers normally answer with ruma's response type; a few answer with plain JSON where
    /// ruma's type would drop a field clients rely on (any `T: IntoResponse` is accepted).
    fn ruma<R, H, F, T>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        H: Fn(Arc<Moss>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
        T: IntoResponse + 'static;
}

fn method_filter(m: &Method) -> MethodFilter {
    match *m {
        Method::GET => MethodFilter::GET,
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::DELETE => MethodFilter::DELETE,
        Method::PATCH => MethodFilter::PATCH,
        _ => MethodFilter::GET,
    }
}

impl RouterExt for Router<Arc<Moss>> {
    fn ruma<R, H, F, T>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        H: Fn(Arc<Moss>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
        T: IntoResponse + 'static,
    {
        let mut router = self;
        let mut paths: Vec<String> = R::PATH_BUILDER.all_paths().map(str::to_owned).collect();
        // An empty state key is written as a missing (or empty) last path segment.
        for p in paths.clone() {
            if let Some(base) = p.strip_suffix("/{state_key}") {
                paths.push(base.to_owned());
                paths.push(format!("{base}/"));
            }
        }
        paths.sort();
        paths.dedup();
        for path in paths {
            let h = handler.clone();
            router = router.route(
                path.as_str(),
                on(method_filter(&R::METHOD), move |State(moss): State<Arc<Moss>>, req: Ruma<R>| {
                    let h = h.clone();
                    async move { h(moss, req).await }
                }),
            );
        }
        router
    }
}

thread_local! {
    /// Set while third-party parsers run on untrusted input under `quiet_catch_unwind`.
    static PARSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err` without the default hook's message and backtrace on
/// stderr (the caller logs the refusal itself); panics elsewhere are reported as before.
pub(crate) fn quiet_catch_unwind<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PARSING.with(|p| p.get()) {
                previous(info);
            }
        }));
    });
    PARSING.with(|p| p.set(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    PARSING.with(|p| p.set(false));
    out
}
