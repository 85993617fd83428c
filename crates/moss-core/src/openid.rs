//! OpenID tokens (client-server `POST /user/{userId}/openid/request_token`, server-server
//! `GET /openid/userinfo`): a user asks for a short-lived token and hands it to another service
//! (an integration manager, a widget, Element Call's authoriser), which asks this server's
//! federation listener whose it is. The token proves only the user's id: it is not an access
//! token and opens nothing here.

use std::time::Duration;

use ruma::{OwnedUserId, UserId};

use crate::{accounts::random_string, error::Error, now_ms, Moss, Result};

/// How long a token answers (Synapse's default too).
pub const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

impl Moss {
    /// A new token naming `user`, and how long it lasts.
    pub async fn create_openid_token(&self, user: &UserId) -> Result<(String, Duration)> {
        let token = random_string(32);
        let (t, u) = (token.clone(), user.to_string());
        let now = now_ms() as i64;
        let expires = now + OPENID_TOKEN_LIFETIME.as_millis() as i64;
        self.db.write(move |w| Ok::<_, Error>(w.add_openid_token(&t, &u, expires, now)?)).await?;
        Ok((token, OPENID_TOKEN_LIFETIME))
    }

    /// The user a token names; 401 `M_UNKNOWN_TOKEN` for an unknown or expired token, or a
    /// user deactivated since.
    pub async fn openid_userinfo(&self, token: &str) -> Result<OwnedUserId> {
        let t = token.to_owned();
        let user = self.db.read(move |r| Ok::<_, Error>(r.openid_user(&t, now_ms() as i64)?)).await?;
        user.and_then(|u| UserId::parse(u).ok()).ok_or_else(|| Error::unknown_token("unknown or expired OpenID token"))
    }
}
