//! Registration tokens as an admin manages them (`/_synapse/admin/v1/registration_tokens`).

use moss_storage::RegistrationTokenRow;

use crate::{error::Error, now_ms, Moss, Result};

/// A change to a token's limits: `None` leaves one as it is, `Some(None)` removes it.
#[derive(Debug, Clone, Default)]
pub struct TokenChange {
    pub uses_allowed: Option<Option<i64>>,
    pub expiry_time: Option<Option<i64>>,
}

impl Moss {
    pub async fn admin_registration_token(&self, token: &str) -> Result<RegistrationTokenRow> {
        let t = token.to_owned();
        self.db
            .read(move |r| Ok::<_, Error>(r.registration_token(&t)?))
            .await?
            .ok_or_else(|| Error::not_found(format!("No such registration token: {token}")))
    }

    /// Creates a token (random of `length` characters when none is given), checking limits as
    /// Synapse: `uses_allowed` ≥ 0, `expiry_time` in the future.
    pub async fn admin_create_registration_token(
        &self,
        token: Option<String>,
        length: Option<i64>,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<RegistrationTokenRow> {
        check_limits(uses_allowed, expiry_time)?;
        let token = match (token, length) {
            (Some(t), _) => Some(t),
            (None, Some(n)) if !(1..=64).contains(&n) => {
                return Err(Error::invalid_param("length must be an integer > 0 and <= 64"))
            }
            (None, Some(n)) => Some(crate::accounts::random_string(n as usize)),
            (None, None) => None,
        };
        let token = self.create_registration_token(token, uses_allowed, expiry_time).await?;
        self.admin_registration_token(&token).await
    }

    pub async fn admin_update_registration_token(
        &self,
        token: &str,
        change: TokenChange,
    ) -> Result<RegistrationTokenRow> {
        let old = self.admin_registration_token(token).await?;
        let uses = change.uses_allowed.unwrap_or(old.uses_allowed);
        let expiry = change.expiry_time.unwrap_or(old.expiry_ts);
        check_limits(change.uses_allowed.flatten(), change.expiry_time.flatten())?;
        let t = token.to_owned();
        self.db.write(move |w| Ok::<_, Error>(w.update_registration_token(&t, uses, expiry)?)).await?;
        self.admin_registration_token(token).await
    }
}

fn check_limits(uses_allowed: Option<i64>, expiry_time: Option<i64>) -> Result<()> {
    if uses_allowed.is_some_and(|u| u < 0) {
        return Err(Error::invalid_param("uses_allowed must be a non-negative integer or null"));
    }
    if expiry_time.is_some_and(|e| e < now_ms() as i64) {
        return Err(Error::invalid_param("expiry_time must not be in the past"));
    }
    Ok(())
}
