//! Outbound federation: finding where a server name lives and sending it signed requests.
//!
//! Discovery follows the spec's order: an IP literal or an explicit port is used as is;
//! otherwise `/.well-known/matrix/server` may delegate (to a name that again may be a literal
//! or carry a port); a name without a port is looked up as SRV `_matrix-fed._tcp`, then the
//! deprecated `_matrix._tcp`, and the default port 8448 applies last. Results are cached for a
//! day. With an SRV record we connect to its target, but TLS and the Host header keep the name.
//! Every connection goes through the address policy, so federation cannot reach the server's own
//! network unless the operator allows it.

use std::{sync::Arc, time::Duration};

use ruma::{api::federation::authentication::XMatrix, ServerName};
use serde_json::Value;

use super::Federation;
use crate::net::error_chain;
use crate::{
    config::FederationConfig,
    error::{Error, Result},
    net::{AddressPolicy, ClientOptions, GuardedClient, RedirectRule},
    Moss,
};

const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest response read from another server.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Where to connect for a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `https://host:port`
    pub base: String,
    /// The Host header to send when it is not the URL's (an SRV-discovered port).
    pub host_header: Option<String>,
}

impl Destination {
    fn plain(base: String) -> Destination {
        Destination { base, host_header: None }
    }
}

/// The clients federation uses, all made by the one outbound guard (`net.rs`).
pub(crate) struct Clients {
    /// Signed JSON requests: a whole request is bounded by `request_timeout_ms`.
    pub json: GuardedClient,
    /// Signed requests whose bodies stream (media): bounded by silence, not by total time.
    pub stream: GuardedClient,
    /// `.well-known` only: it must reach the server name itself, never an SRV target.
    pub well_known: GuardedClient,
    /// Where a federation media answer points (`Location`): https only, redirects followed
    /// through the guard, never with our credentials.
    pub media_redirect: GuardedClient,
}

pub(crate) fn build(config: &FederationConfig, policy: AddressPolicy, srv: crate::net::Redirects) -> Result<Clients> {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let policy = Arc::new(policy);
    let mut base = ClientOptions::new("federation");
    base.accept_invalid_certs = !config.verify_certificates;
    base.connect_timeout = timeout.min(Duration::from_secs(10));
    base.total_timeout = Some(timeout);
    let mut stream = base.clone();
    stream.total_timeout = None;
    stream.idle_timeout = Some(timeout);
    let mut redirect = stream.clone();
    redirect.https_only = true;
    redirect.redirects = RedirectRule::Follow(5);
    Ok(Clients {
        json: GuardedClient::with_srv(policy.clone(), base.clone(), Some(srv.clone()))?,
        stream: GuardedClient::with_srv(policy.clone(), stream, Some(srv))?,
        well_known: GuardedClient::new(policy.clone(), base)?,
        media_redirect: GuardedClient::new(policy, redirect)?,
    })
}

/// Another server failed us. The client learns which; the log learns why (the reason can hold
/// addresses and URLs, which stay out of error bodies).
fn unreachable(server: &ServerName, why: impl std::fmt::Display) -> Error {
    Error::upstream(format!("could not reach {server}"), why)
}

/// A request the guard refused, or a failure to reach the server.
fn send_error(server: &ServerName, e: &reqwest::Error) -> Error {
    if crate::net::is_refusal(e) {
        refused(server)
    } else {
        unreachable(server, error_chain(e))
    }
}

/// The address policy keeps us from `server` (it is, or resolves to, a denied address).
fn refused(server: &ServerName) -> Error {
    Error::new(
        ruma::api::error::ErrorKind::Unknown,
        502,
        format!("could not reach {server}: federation may not reach its address"),
    )
}

/// Largest `.well-known/matrix/server` document read.
const MAX_WELL_KNOWN: usize = 64 * 1024;

/// The host part has an explicit port, or is an IP literal: no discovery needed.
fn literal(server: &str) -> Option<String> {
    let has_port = server.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (!host.contains(':') || host.ends_with(']'))
    });
    let ip = server.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
    match (has_port, ip) {
        (true, _) => Some(format!("https://{server}")),
        (false, true) if server.contains(':') && !server.starts_with('[') => Some(format!("https://[{server}]:8448")),
        (false, true) => Some(format!("https://{server}:8448")),
        _ => None,
    }
}

impl Federation {
    pub(crate) async fn resolve(&self, server: &ServerName) -> Result<Destination> {
        if let Some(base) = literal(server.as_str()) {
            return Ok(Destination::plain(base));
        }
        if let Some((d, at)) = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).get(server) {
            if at.elapsed() < WELL_KNOWN_TTL {
                return Ok(d.clone());
            }
        }
        let delegated = async {
            let url = format!("https://{server}/.well-known/matrix/server");
            let res = self.clients.well_known.get(&url).ok()?.send().await.ok()?;
            if !res.status().is_success() {
                return None;
            }
            let body = crate::net::read_limited(res, MAX_WELL_KNOWN).await.ok()?;
            let v: Value = serde_json::from_slice(&body).ok()?;
            v["m.server"].as_str().map(str::to_owned)
        }
        .await;
        let d = match delegated {
            Some(to) => match literal(&to) {
                Some(base) => Destination::plain(base),
                None => self.srv_or_default(&to).await,
            },
            None => self.srv_or_default(server.as_str()).await,
        };
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server.to_owned(), (d.clone(), std::time::Instant::now()));
        Ok(d)
    }

    /// SRV `_matrix-fed._tcp.<host>`, then `_matrix._tcp.<host>`, else `<host>:8448`.
    async fn srv_or_default(&self, host: &str) -> Destination {
        for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let Ok(found) = self.dns.srv_lookup(format!("{prefix}.{host}.")).await else { continue };
            // Lowest priority first, then the heaviest weight; "." means "no service here".
            let best = found
                .iter()
                .filter(|r| !r.target().is_root())
                .min_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())))
                .map(|r| (r.target().to_utf8().trim_end_matches('.').to_owned(), r.port()));
            if let Some((target, port)) = best {
                tracing::debug!(%host, %target, port, prefix, "federation SRV record");
                self.redirects.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_owned(), target);
                return Destination { base: format!("https://{host}:{port}"), host_header: Some(host.to_owned()) };
            }
        }
        Destination::plain(format!("https://{host}:8448"))
    }

    fn request(
        &self,
        client: &GuardedClient,
        server: &ServerName,
        method: http::Method,
        d: &Destination,
        path: &str,
    ) -> Result<reqwest::RequestBuilder> {
        let mut req = client.request(method, &format!("{}{path}", d.base)).map_err(|_| refused(server))?;
        if let Some(h) = &d.host_header {
            req = req.header(http::header::HOST, h);
        }
        Ok(req)
    }

    /// Fails at once when `server` is paused after failing (see [`Federation::mark_down`]).
    fn check_up(&self, server: &ServerName) -> Result<()> {
        match self.down_until(server) {
            Some(until) => Err(unreachable(
                server,
                format!(
                    "it failed lately; not asked again for {} s",
                    until.saturating_duration_since(std::time::Instant::now()).as_secs()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Records how a request to `server` went: a failure to connect or to get an answer pauses
    /// it, an answer (of any status) clears that.
    fn sent(&self, server: &ServerName, res: reqwest::Result<reqwest::Response>) -> Result<reqwest::Response> {
        match res {
            Ok(r) => {
                self.mark_up(server);
                Ok(r)
            }
            Err(e) => {
                if !crate::net::is_refusal(&e) {
                    self.mark_down(server);
                }
                Err(send_error(server, &e))
            }
        }
    }

    /// An unauthenticated GET (key documents), parsed as JSON.
    pub(crate) async fn get_json(&self, server: &ServerName, path: &str) -> Result<Value> {
        self.check_up(server)?;
        let d = self.resolve(server).await?;
        let res = self.request(&self.clients.json, server, http::Method::GET, &d, path)?.send().await;
        let res = self.sent(server, res)?;
        read_json(server, res).await
    }
}

async fn read_json(server: &ServerName, res: reqwest::Response) -> Result<Value> {
    let status = res.status();
    let bytes = crate::net::read_limited(res, MAX_RESPONSE).await.map_err(|e| unreachable(server, e))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| unreachable(server, format!("not JSON: {e}")))?;
    if !status.is_success() {
        let code = v["errcode"].as_str().unwrap_or("M_UNKNOWN");
        let msg = v["error"].as_str().unwrap_or_default();
        let message = format!("{server} answered {status} {code}: {msg}");
        // "Not found" and "forbidden" are answers the client should see as such; anything else is
        // the other server failing us.
        return Err(match status.as_u16() {
            404 => Error::not_found(message),
            403 => Error::forbidden(message),
            _ => Error::new(ruma::api::error::ErrorKind::Unknown, 502, message),
        });
    }
    Ok(v)
}

impl Moss {
    pub(crate) fn federation(&self) -> Result<&Federation> {
        self.federation.as_ref().ok_or_else(|| Error::forbidden("federation is disabled on this server"))
    }

    /// A signed GET whose answer the caller reads itself (media streams).
    pub(crate) async fn federation_get_raw(&self, destination: &ServerName, path: &str) -> Result<reqwest::Response> {
        let fed = self.federation()?;
        fed.check_up(destination)?;
        let d = fed.resolve(destination).await?;
        let auth = self.sign_request(destination, http::Method::GET, path, &[])?;
        let res = fed
            .request(&fed.clients.stream, destination, http::Method::GET, &d, path)?
            .header(http::header::AUTHORIZATION, auth)
            .send()
            .await;
        fed.sent(destination, res)
    }

    /// The X-Matrix `Authorization` value for a request, signed over method, path and body as
    /// the receiver will see them.
    fn sign_request(&self, destination: &ServerName, method: http::Method, path: &str, body: &[u8]) -> Result<String> {
        let to_sign = http::Request::builder()
            .method(method)
            .uri(path)
            .body(body.to_vec())
            .map_err(|e| Error::internal(format!("federation request: {e}")))?;
        let input = ruma::api::federation::authentication::XMatrixSigningInput::new(
            self.server_name.clone(),
            destination.to_owned(),
            &self.signer.key,
        );
        let auth = XMatrix::sign_http_request(&to_sign, input).map_err(|e| Error::internal(format!("signing: {e}")))?;
        Ok(auth.to_string())
    }

    /// Sends `destination` a request signed with our key (X-Matrix) and returns its JSON answer.
    /// `path` includes the query string. A server that could not be reached lately is not
    /// asked again until its pause ends (see [`Federation::mark_down`]).
    pub async fn federation_request(
        &self,
        destination: &ServerName,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.federation_request_with(destination, method, path, body, false).await
    }

    /// [`Moss::federation_request`], asking even a server marked down when `probe` is set.
    pub(crate) async fn federation_request_with(
        &self,
        destination: &ServerName,
        method: http::Method,
        path: &str,
        body: Option<Value>,
        probe: bool,
    ) -> Result<Value> {
        let fed = self.federation()?;
        if !probe {
            fed.check_up(destination)?;
        }
        let d = fed.resolve(destination).await?;
        let bytes = match &body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let auth = self.sign_request(destination, method.clone(), path, &bytes)?;
        let mut req =
            fed.request(&fed.clients.json, destination, method, &d, path)?.header(http::header::AUTHORIZATION, auth);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json").body(bytes);
        }
        let res = fed.sent(destination, req.send().await)?;
        read_json(destination, res).await
    }
}
