//! Outbound network policy shared by everything that makes the server reach out on someone
//! else's behalf (URL previews, federation): which addresses it may connect to.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use reqwest::{dns::Resolve, Url};

/// An address range in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
