//! User-interactive authentication: sessions that collect completed stages until one of an
//! endpoint's flows is done.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
    UserId,
};

use crate::{error::Error, Moss, Result};

const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

struct Session {
    created: Instant,
    /// The endpoint (and user) the session was started for: a session cannot be reused elsewhere.
    purpose: String,
    completed: Vec<AuthType>,
}

#[derive(Default)]
pub struct UiaaSessions {
    sessions: Mutex<HashMap<String, Session>>,
}

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
            return Err(self.uiaa_challenge(&req, self.uiaa.new_session(&req.purpose), vec![], None));
        };
        let session = match auth.session() {
            Some(s) => s.to_owned(),
            // A client may complete a single-stage flow without asking first.
            None => self.uiaa.new_session(&req.purpose),
        };
        let completed = self
            .uiaa
            .completed(&session, &req.purpose)
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
            self.uiaa.finish(&session);
            Ok(outcome)
        } else {
            self.uiaa.set_completed(&session, completed.clone());
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

impl UiaaSessions {
    fn new_session(&self, purpose: &str) -> String {
        let id = crate::accounts::random_string(24);
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, v| v.created.elapsed() < SESSION_LIFETIME);
        s.insert(id.clone(), Session { created: Instant::now(), purpose: purpose.to_owned(), completed: vec![] });
        id
    }

    fn completed(&self, session: &str, purpose: &str) -> Option<Vec<AuthType>> {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.get(session)
            .filter(|v| v.purpose == purpose && v.created.elapsed() < SESSION_LIFETIME)
            .map(|v| v.completed.clone())
    }

    fn set_completed(&self, session: &str, completed: Vec<AuthType>) {
        if let Some(v) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get_mut(session) {
            v.completed = completed;
        }
    }

    fn finish(&self, session: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(session);
    }
}

/// Convenience: the single-stage password flow used by account management endpoints.
pub fn password_flow<'a>(purpose: &str, user: &'a UserId) -> UiaaRequest<'a> {
    UiaaRequest { flows: vec![vec![AuthType::Password]], purpose: format!("{purpose}:{user}"), user: Some(user) }
}
