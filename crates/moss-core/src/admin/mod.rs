//! The operator's side of the server: what Synapse's admin API (`/_synapse/admin`) offers, so
//! that the tools built for it (synapse-admin, the playbook's user tasks, moderation bots) work
//! on moss. Only server admins may call any of it ([`Moss::require_admin`]).
//!
//! - [`users`]: list, show, create/update, deactivate (and erase), lock, whois, devices.
//! - [`rooms`]: list, show, members, state, delete (with purge and block), block.
//! - [`reports`]: event reports.
//! - [`tokens`]: registration tokens.
//! - [`notices`]: server notices to users.
//! - [`destinations`]: federation destinations and their delivery.
//! - [`media`]: an upload's deletion, protection and quarantine; per-user lists and statistics.

pub mod destinations;
pub mod media;
pub mod notices;
pub mod reports;
pub mod rooms;
pub mod tokens;
pub mod users;

use ruma::{api::error::ErrorKind, OwnedUserId, UserId};

use crate::{accounts::Session, error::Error, Moss, Result};

pub use moss_storage::Page;

impl Moss {
    /// Refuses anyone but a server admin (403 `M_FORBIDDEN`, as Synapse).
    pub async fn require_admin(&self, session: &Session) -> Result<()> {
        if session.appservice.is_none() {
            if let Some(u) = self.user(&session.user_id).await? {
                if u.admin && !u.deactivated {
                    return Ok(());
                }
            }
        }
        Err(Error::forbidden("You are not a server admin"))
    }

    /// A user id from an admin request that must name an account of this server: 400
    /// `M_INVALID_PARAM` if it is no user id, 400 `M_UNKNOWN` if it is another server's.
    pub fn local_user_id(&self, raw: &str) -> Result<OwnedUserId> {
        let id = UserId::parse(raw).map_err(|_| Error::invalid_param(format!("{raw} is not a valid user id")))?;
        if id.server_name() != self.server_name {
            return Err(Error::new(ErrorKind::Unknown, 400, "Can only look up local users"));
        }
        Ok(id)
    }
}
