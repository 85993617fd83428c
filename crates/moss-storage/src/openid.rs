//! OpenID tokens: which user a token names, until it expires.

use crate::params;

use crate::{Reader, Result, Writer};

impl Reader<'_> {
    /// The active (not deactivated) user an unexpired token belongs to.
    pub fn openid_user(&self, token: &str, now: i64) -> Result<Option<String>> {
        self.one(
            "SELECT t.user_id FROM openid_tokens t JOIN users u ON u.user_id = t.user_id \
             WHERE t.token = ?1 AND t.expires_ts > ?2 AND u.deactivated = 0",
            params![token, now],
            |r| r.get(0),
        )
    }
}

impl Writer<'_> {
    /// Records a token, and forgets the expired ones.
    pub fn add_openid_token(&self, token: &str, user_id: &str, expires_ts: i64, now: i64) -> Result<()> {
        self.exec("DELETE FROM openid_tokens WHERE expires_ts <= ?1", [now])?;
        self.exec(
            "INSERT INTO openid_tokens (token, user_id, expires_ts) VALUES (?1, ?2, ?3)",
            params![token, user_id, expires_ts],
        )?;
        Ok(())
    }
}
