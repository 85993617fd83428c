//! Federation: talking to other Matrix servers.
//!
//! This first slice has the foundations every later part stands on: our signing keys published
//! (`/_matrix/key/v2/server`), other servers' keys fetched, verified and cached (`keys.rs`),
//! server discovery and signed outbound requests through an SSRF-guarded client (`client.rs`),
//! X-Matrix verification of inbound requests (`auth.rs`), and the first real exchange built on
//! them: profile queries (`query.rs`). Rooms across servers: joins, leaves, invites and the
//! gap-filling endpoints (`rooms.rs`), inbound transactions (`transactions.rs`) and the
//! persistent outbound queue (`sender.rs`).

pub mod auth;
pub mod client;
pub mod e2ee;
pub mod keys;
pub(crate) mod prejoin;
pub mod query;
pub mod rooms;
pub mod sender;
pub mod spaces;
pub mod timestamp;
pub mod transactions;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use ruma::OwnedServerName;

use crate::{config::FederationConfig, error::Result, net::AddressPolicy};

/// How long our published key document says our key is valid.
const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Federation {
    pub(crate) clients: client::Clients,
    pub(crate) dns: hickory_resolver::TokioResolver,
    pub(crate) redirects: crate::net::Redirects,
    /// Events we backfilled from without getting anything older: history ends there.
    pub(crate) backfill_done: Mutex<std::collections::HashSet<String>>,
    /// Where each server name was found to live (`.well-known` delegation), with expiry.
    pub(crate) resolved: Mutex<HashMap<OwnedServerName, (client::Destination, std::time::Instant)>>,
    pub(crate) wakeups: sender::Wakeups,
    /// Servers that could not be reached lately: requests on someone's behalf fail fast
    /// instead of each waiting out a connect timeout (the outbox keeps its own schedule).
    pub(crate) down: Mutex<HashMap<OwnedServerName, Down>>,
    /// Servers whose keys could not be had lately, so a flood of their events cannot make us
    /// ask again for each one.
    pub(crate) keys_failed: Mutex<HashMap<OwnedServerName, std::time::Instant>>,
    /// How sending to each destination went since the start (the admin API's destinations).
    pub(crate) delivery: Mutex<HashMap<OwnedServerName, Delivery>>,
}

/// Sending to one destination, as the admin API shows it (times in ms since the epoch).
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery {
    /// When the current run of failures began (`None`: the last attempt worked).
    pub failure_ts: Option<i64>,
    pub retry_last_ts: i64,
    /// The pause before the next attempt, while failing.
    pub retry_interval_ms: i64,
    /// Stream position of the newest event delivered.
    pub last_successful_stream: Option<i64>,
}

/// A destination that failed: not asked again (except by the outbox) before `until`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Down {
    pub until: std::time::Instant,
    pub failures: u32,
}

/// First pause after a failure; it doubles with each further one up to `MAX_DOWN`.
const FIRST_DOWN: Duration = Duration::from_secs(10);
const MAX_DOWN: Duration = Duration::from_secs(600);
/// How long a failed key fetch is remembered.
pub(crate) const KEYS_FAILED_TTL: Duration = Duration::from_secs(60);

impl Federation {
    /// When a server that failed may be asked again (`None`: it may be asked now).
    pub(crate) fn down_until(&self, server: &ruma::ServerName) -> Option<std::time::Instant> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.get(server).map(|d| d.until).filter(|u| *u > std::time::Instant::now())
    }

    pub(crate) fn mark_down(&self, server: &ruma::ServerName) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.len() > 10_000 {
            let now = std::time::Instant::now();
            down.retain(|_, d| d.until > now);
        }
        let failures = down.get(server).map_or(0, |d| d.failures).saturating_add(1);
        let pause = FIRST_DOWN.saturating_mul(1 << failures.min(16).saturating_sub(1)).min(MAX_DOWN);
        down.insert(server.to_owned(), Down { until: std::time::Instant::now() + pause, failures });
    }

    pub(crate) fn mark_up(&self, server: &ruma::ServerName) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if !down.is_empty() {
            down.remove(server);
        }
    }
}

impl Federation {
    pub fn new(config: &FederationConfig) -> Result<Federation> {
        let policy = AddressPolicy::from_lists(&config.ip_range_denylist, &config.ip_range_allowlist, "federation")?;
        let redirects = crate::net::Redirects::default();
        let dns = match config.dns_server {
            // A fixed name server (tests, split-horizon setups) instead of the system's.
            Some(addr) => {
                use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    Default::default(),
                )
                .build()
            }
            None => hickory_resolver::TokioResolver::builder_tokio()
                .map_err(|e| crate::error::Error::internal(format!("DNS resolver: {e}")))?
                .build(),
        };
        Ok(Federation {
            dns,
            redirects: redirects.clone(),
            backfill_done: Default::default(),
            clients: client::build(config, policy, redirects)?,
            resolved: Mutex::new(HashMap::new()),
            wakeups: Default::default(),
            down: Default::default(),
            keys_failed: Default::default(),
            delivery: Default::default(),
        })
    }
}
