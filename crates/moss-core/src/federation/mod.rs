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
pub mod query;
pub mod rooms;
pub mod sender;
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
        })
    }
}
