//! User-interactive authentication: sessions that collect completed stages until one of an
//! endpoint's flows is done.

use std::time::Duration;

use ruma::{
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
    UserId,
};

use crate::{error::Error, now_ms, Moss, Result};

/// Sessions live in the database (every process sharing it, and a restarted one, knows them).
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// What the caller must prove.
pub struct UiaaRequest<'a> {
    pub flows: Vec<Vec<AuthType>>,
    /// Distinguishes endpoints and users, e.g. `"password:@alice:example.org"`.
    pub purpose: String,
    /// The account a `m.login.password` stage must match.
    pub user: Option<&'a UserId>,
}

/// What a completed flow established.
#[derive(Default)]
pub struct UiaaOutcome {
    pub registration_token: Option<String>,
}

impl Moss {
    /// Checks `auth` against the flows; `Ok` when a flow is complete, else `Error::Uiaa` (401).
    pub async fn uiaa(&self, req: UiaaRequest<'_>, auth: Option<AuthData>) -> Result<UiaaOutcome> {
        let mut outcome = UiaaOutcome::default();
        let Some(auth) = auth else {
            return Err(self.uiaa_challenge(&req, self.uiaa_new_session(&req.purpose).await?, vec![], None));
        };
        let session = match auth.session() {
            Some(s) => s.to_owned(),
            // A client may complete a single-stage flow without asking first.
            None => self.uiaa_new_session(&req.purpose).await?,
        };
        let completed = self
            .uiaa_completed(&session, &req.purpose)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Unknown, 400, "unknown or expired user-interactive auth session"))?;

        let stage_result: Result<AuthType, StandardErrorBody> = match &auth {
            AuthData::Dummy(_) => Ok(AuthType::Dummy),
            AuthData::Password(p) => {
                let claimed = match &p.identifier {
                    UserIdentifier::Matrix(m) => Some(m.user.clone()),
                    _ => None,
                };
                match (req.user, claimed) {
                    (Some(user), Some(claimed)) => {
                        let matches = claimed == user.as_str() || claimed == user.localpart();
                        if matches && self.check_password(user, &p.password).await? {
                            Ok(AuthType::Password)
                        } else {
                            Err(StandardErrorBody::new(ErrorKind::Forbidden, "invalid username or password".into()))
                        }
                    }
                    _ => {
                        Err(StandardErrorBody::new(ErrorKind::Forbidden, "password auth is not available here".into()))
                    }
                }
            }
            AuthData::RegistrationToken(t) => match self.registration_token_valid(&t.token).await? {
                true => {
                    outcome.registration_token = Some(t.token.clone());
                    Ok(AuthType::RegistrationToken)
                }
                false => Err(StandardErrorBody::new(ErrorKind::Forbidden, "invalid registration token".into())),
            },
            _ => Err(StandardErrorBody::new(ErrorKind::Unrecognized, "unsupported auth type".into())),
        };

        let mut completed = completed;
        match stage_result {
            Ok(stage) => {
                if !completed.contains(&stage) {
                    completed.push(stage);
                }
            }
            Err(body) => {
                return Err(self.uiaa_challenge(&req, session, completed, Some(body)));
            }
        }
        if req.flows.iter().any(|flow| flow.iter().all(|s| completed.contains(s))) {
            let done = session.clone();
            self.db.write(move |w| Ok::<_, Error>(w.delete_uiaa_session(&done)?)).await?;
            Ok(outcome)
        } else {
            let names: Vec<String> = completed.iter().map(|a| a.to_string()).collect();
            let json = serde_json::to_string(&names).map_err(|e| Error::internal(e.to_string()))?;
            let id = session.clone();
            self.db.write(move |w| Ok::<_, Error>(w.set_uiaa_completed(&id, &json)?)).await?;
            Err(self.uiaa_challenge(&req, session, completed, None))
        }
    }

    fn uiaa_challenge(
        &self,
        req: &UiaaRequest<'_>,
        session: String,
        completed: Vec<AuthType>,
        error: Option<StandardErrorBody>,
    ) -> Error {
        let mut info = UiaaInfo::new(req.flows.iter().map(|f| AuthFlow::new(f.clone())).collect());
        info.session = Some(session);
        info.completed = completed;
        info.auth_error = error.map(Box::new);
        info.params = serde_json::value::to_raw_value(&serde_json::json!({})).ok();
        Error::Uiaa(Box::new(info))
    }
}

impl Moss {
    async fn uiaa_new_session(&self, purpose: &str) -> Result<String> {
        let id = crate::accounts::random_string(24);
        let (session, purpose) = (id.clone(), purpose.to_owned());
        let now = now_ms() as i64;
        let expired = now - SESSION_LIFETIME.as_millis() as i64;
        self.db.write(move |w| Ok::<_, Error>(w.create_uiaa_session(&session, &purpose, now, expired)?)).await?;
        Ok(id)
    }

    /// The stages a live session for `purpose` has completed; `None` for an unknown, expired or
    /// other endpoint's session.
    async fn uiaa_completed(&self, session: &str, purpose: &str) -> Result<Option<Vec<AuthType>>> {
        let id = session.to_owned();
        let Some(row) = self.db.read(move |r| Ok::<_, Error>(r.uiaa_session(&id)?)).await? else { return Ok(None) };
        let live = now_ms() as i64 - row.created_ts < SESSION_LIFETIME.as_millis() as i64;
        if row.purpose != purpose || !live {
            return Ok(None);
        }
        let names: Vec<String> = serde_json::from_str(&row.completed).unwrap_or_default();
        Ok(Some(names.iter().map(|n| AuthType::from(n.as_str())).collect()))
    }
}

/// Convenience: the single-stage password flow used by account management endpoints.
pub fn password_flow<'a>(purpose: &str, user: &'a UserId) -> UiaaRequest<'a> {
    UiaaRequest { flows: vec![vec![AuthType::Password]], purpose: format!("{purpose}:{user}"), user: Some(user) }
}
