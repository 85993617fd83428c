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
    pub(crate) client: reqwest::Client,
    /// Where each server name was found to live (`.well-known` delegation), with expiry.
    pub(crate) resolved: Mutex<HashMap<OwnedServerName, (client::Destination, std::time::Instant)>>,
    pub(crate) wakeups: sender::Wakeups,
}

impl Federation {
    pub fn new(config: &FederationConfig) -> Result<Federation> {
        let policy = AddressPolicy::from_lists(&config.ip_range_denylist, &config.ip_range_allowlist, "federation")?;
        Ok(Federation {
            client: client::build(config, policy)?,
            resolved: Mutex::new(HashMap::new()),
            wakeups: Default::default(),
        })
    }
}
