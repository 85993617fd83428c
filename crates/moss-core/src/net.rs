//! The one outbound-connection guard: everything that makes the server reach out on someone
//! else's behalf (federation, remote media and its redirects, URL previews, key servers, and
//! later push gateways and application services) builds its HTTP client here, and only here
//! (clippy's `disallowed-methods` keeps `reqwest::Client::builder` out of every other file).
//!
//! A [`GuardedClient`] checks the address policy (deny list with allow-list exceptions) for
//! - IP literals in the URL, before the request is built ([`GuardedClient::request`]);
//! - host names, at connect time, on every address they resolve to (so DNS rebinding cannot
//!   slip past an earlier check), including federation SRV targets;
//! - every redirect it is allowed to follow (scheme, literal address; names again at connect).
//!
//! It never uses a proxy from the environment, and bounds the time to connect and, per client,
//! either the whole request or the silence between two reads of a streamed body.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use reqwest::{dns::Resolve, Url};

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Cidr, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an IP range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            if p.is_empty() { max } else { p.trim().parse::<u8>().map_err(|_| format!("{s:?}: bad prefix length"))? };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than the address"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Loopback, private, link-local, carrier-grade NAT, multicast, documentation and other
/// special-purpose ranges: nothing a public web page lives in.
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

#[derive(Debug, Clone)]
pub struct AddressPolicy {
    pub deny: Vec<Cidr>,
    /// Exceptions to `deny`.
    pub allow: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip)) || !self.deny.iter().any(|c| c.contains(ip))
    }
}

/// Resolves host names and drops every address the policy forbids, at connect time (so DNS
/// rebinding cannot slip past an earlier check).
pub(crate) struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    /// Who is being kept out, for the error: "URL previews", "federation".
    what: &'static str,
    /// Names whose connections go to another host (a federation SRV target), while TLS and the
    /// Host header keep the original name.
    redirects: Option<Redirects>,
}

pub(crate) type Redirects = Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

impl GuardedResolver {
    pub(crate) fn new(policy: Arc<AddressPolicy>, what: &'static str) -> Self {
        GuardedResolver { policy, what, redirects: None }
    }

    pub(crate) fn with_redirects(policy: Arc<AddressPolicy>, what: &'static str, redirects: Redirects) -> Self {
        GuardedResolver { policy, what, redirects: Some(redirects) }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (policy, what) = (self.policy.clone(), self.what);
        let mut host = name.as_str().to_owned();
        if let Some(r) = &self.redirects {
            if let Some(target) = r.lock().unwrap_or_else(|p| p.into_inner()).get(&host) {
                host = target.clone();
            }
        }
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to addresses {what} may not reach").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub(crate) fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

/// How a guarded client treats redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectRule {
    /// Redirects are answers, not followed (federation: the spec has none).
    None,
    /// Followed, at most this many times, each hop checked like the first request.
    Follow(usize),
}

/// What a guarded client is for and how patient it is.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Who is being kept out, for errors and logs: "federation", "URL previews".
    pub what: &'static str,
    pub user_agent: &'static str,
    pub redirects: RedirectRule,
    /// Only `https` URLs, redirects included.
    pub https_only: bool,
    pub connect_timeout: std::time::Duration,
    /// Bound on a whole request and its body (small JSON answers).
    pub total_timeout: Option<std::time::Duration>,
    /// Bound on the silence between two reads (streamed bodies of any size).
    pub idle_timeout: Option<std::time::Duration>,
    pub accept_invalid_certs: bool,
}

impl ClientOptions {
    pub fn new(what: &'static str) -> ClientOptions {
        ClientOptions {
            what,
            user_agent: concat!("moss/", env!("CARGO_PKG_VERSION")),
            redirects: RedirectRule::None,
            https_only: false,
            connect_timeout: std::time::Duration::from_secs(10),
            total_timeout: Some(std::time::Duration::from_secs(30)),
            idle_timeout: None,
            accept_invalid_certs: false,
        }
    }
}

/// An HTTP client whose every connection passes the address policy. See the module header.
#[derive(Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    what: &'static str,
    https_only: bool,
}

/// Refusal of an address: the client sees that it was refused, never where it pointed.
pub fn refused(what: &str) -> crate::error::Error {
    crate::error::Error::forbidden(format!("{what} may not reach that address"))
}

impl GuardedClient {
    pub fn new(policy: Arc<AddressPolicy>, options: ClientOptions) -> crate::error::Result<GuardedClient> {
        GuardedClient::with_srv(policy, options, None)
    }

    /// A client whose resolver connects some names elsewhere (federation SRV targets), while
    /// TLS and the Host header keep the name.
    pub(crate) fn with_srv(
        policy: Arc<AddressPolicy>,
        options: ClientOptions,
        srv: Option<Redirects>,
    ) -> crate::error::Result<GuardedClient> {
        let what = options.what;
        let resolver = match srv {
            Some(r) => GuardedResolver::with_redirects(policy.clone(), what, r),
            None => GuardedResolver::new(policy.clone(), what),
        };
        let redirect = match options.redirects {
            RedirectRule::None => reqwest::redirect::Policy::none(),
            RedirectRule::Follow(max) => {
                let (p, https_only) = (policy.clone(), options.https_only);
                reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= max {
                        return attempt.error("too many redirects");
                    }
                    let url = attempt.url();
                    let scheme_ok =
                        if https_only { url.scheme() == "https" } else { matches!(url.scheme(), "http" | "https") };
                    if !scheme_ok {
                        return attempt.error("redirect to a URL of a refused scheme");
                    }
                    match literal_ip(url) {
                        Some(ip) if !p.permits(ip) => attempt.error("redirect to an address that may not be reached"),
                        _ => attempt.follow(),
                    }
                })
            }
        };
        #[allow(clippy::disallowed_methods)] // this is the one place clients are made
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            .redirect(redirect)
            .https_only(options.https_only)
            .danger_accept_invalid_certs(options.accept_invalid_certs)
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .user_agent(options.user_agent)
            .no_proxy();
        if let Some(t) = options.total_timeout {
            builder = builder.timeout(t);
        }
        if let Some(t) = options.idle_timeout {
            builder = builder.read_timeout(t);
        }
        let client = builder.build().map_err(|e| crate::error::Error::internal(format!("{what} client: {e}")))?;
        Ok(GuardedClient { client, policy, what, https_only: options.https_only })
    }

    /// A request to `url`, refused when its scheme is not allowed or it names a denied address.
    pub fn request(&self, method: http::Method, url: &str) -> crate::error::Result<reqwest::RequestBuilder> {
        let parsed =
            Url::parse(url).map_err(|_| crate::error::Error::invalid_param(format!("{}: invalid URL", self.what)))?;
        let scheme_ok =
            if self.https_only { parsed.scheme() == "https" } else { matches!(parsed.scheme(), "http" | "https") };
        if !scheme_ok {
            return Err(crate::error::Error::forbidden(format!("{} only uses https", self.what)));
        }
        if let Some(ip) = literal_ip(&parsed) {
            if !self.policy.permits(ip) {
                return Err(refused(self.what));
            }
        }
        Ok(self.client.request(method, parsed))
    }

    pub fn get(&self, url: &str) -> crate::error::Result<reqwest::RequestBuilder> {
        self.request(http::Method::GET, url)
    }
}

/// Reads a response body of at most `max` bytes, chunk by chunk: a peer that sends more (or
/// announces more) is cut off as soon as it passes the limit, never buffered whole first.
pub async fn read_limited(res: reqwest::Response, max: usize) -> std::result::Result<bytes::Bytes, String> {
    use futures_util::StreamExt;
    if res.content_length().is_some_and(|l| l > max as u64) {
        return Err(format!("the response is larger than {max} bytes"));
    }
    let mut body = bytes::BytesMut::new();
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        if body.len() + chunk.len() > max {
            return Err(format!("the response is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An error with its causes, for the log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Whether a reqwest error (or anything in its chain) is the guard refusing an address.
pub fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("may not reach") || text.contains("may not be reached") {
            return true;
        }
        cur = err.source();
    }
    false
}

impl AddressPolicy {
    /// A policy from the configured deny and allow lists (CIDR strings).
    pub fn from_lists(deny: &[String], allow: &[String], what: &str) -> crate::error::Result<AddressPolicy> {
        let parse = |list: &[String]| -> crate::error::Result<Vec<Cidr>> {
            list.iter()
                .map(|s| s.parse().map_err(|e: String| crate::error::Error::internal(format!("{what}: {e}"))))
                .collect()
        };
        Ok(AddressPolicy { deny: parse(deny)?, allow: parse(allow)? })
    }
}
