//! Accounts, sessions and devices: registration, login, tokens, passwords, deactivation.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use hmac::{Hmac, Mac};
use moss_storage::{DeviceRow, RegistrationTokenRow, UserRow};
use rand::{distributions::Alphanumeric, Rng};
use ruma::{api::error::ErrorKind, OwnedDeviceId, OwnedUserId, UserId};

use crate::{
    config::RegistrationMode,
    error::{Error, Result},
    now_ms, Moss,
};

pub fn random_string(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// A verified access token.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    /// Set when an application service made the request (its `as_token`), acting as its own
    /// user or, with `user_id=`, as one of its namespace's users.
    pub appservice: Option<std::sync::Arc<crate::appservice::AppService>>,
}

/// The tokens handed out at login or registration.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

pub(crate) async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("hashing password: {e}")))
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?
}

pub fn hash_password_blocking(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("hashing password: {e}")))
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Nonces issued by the shared-secret registration endpoint, valid for a minute.
#[derive(Default)]
pub struct Nonces(Mutex<HashMap<String, Instant>>);

impl Moss {
    /// The user id for a localpart on this server, validated for registration.
    pub fn new_user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        let lower = localpart.to_lowercase();
        if lower.is_empty()
            || lower != localpart
            || !localpart.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
        {
            return Err(Error::new(
                ErrorKind::InvalidUsername,
                400,
                "user names may contain only a-z, 0-9, '.', '_', '=', '-', '/' and '+'",
            ));
        }
        let id = UserId::parse(format!("@{localpart}:{}", self.server_name))
            .map_err(|e| Error::new(ErrorKind::InvalidUsername, 400, e.to_string()))?;
        if id.as_str().len() > 255 {
            return Err(Error::new(ErrorKind::InvalidUsername, 400, "user id is longer than 255 bytes"));
        }
        Ok(id)
    }

    /// Resolves what a client typed at login (localpart or full id) to a local user id.
    pub fn resolve_login_user(&self, input: &str) -> Result<OwnedUserId> {
        let forbidden = || Error::forbidden("invalid username or password");
        let id = if input.starts_with('@') {
            UserId::parse(input.to_lowercase()).map_err(|_| forbidden())?
        } else {
            UserId::parse(format!("@{}:{}", input.to_lowercase(), self.server_name)).map_err(|_| forbidden())?
        };
        if id.server_name() != self.server_name {
            return Err(forbidden());
        }
        Ok(id)
    }

    pub async fn user(&self, user_id: &UserId) -> Result<Option<UserRow>> {
        let u = user_id.to_string();
        self.db.read(move |r| Ok::<_, Error>(r.user(&u)?)).await
    }

    pub async fn is_local_user_active(&self, user_id: &UserId) -> Result<bool> {
        Ok(user_id.server_name() == self.server_name && self.user(user_id).await?.is_some_and(|u| !u.deactivated))
    }

    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let Some(user) = self.user(user_id).await? else {
            return Ok(false);
        };
        if user.deactivated {
            return Ok(false);
        }
        let Some(hash) = user.password_hash else {
            return Ok(false);
        };
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .map_err(|e| Error::internal(e.to_string()))
    }

    pub fn validate_password(&self, password: &str) -> Result<()> {
        if password.chars().count() < self.config.auth.min_password_length {
            return Err(Error::new(
                ErrorKind::WeakPassword,
                400,
                format!("passwords must be at least {} characters", self.config.auth.min_password_length),
            ));
        }
        if password.len() > 512 {
            return Err(Error::new(ErrorKind::WeakPassword, 400, "passwords must be at most 512 bytes"));
        }
        Ok(())
    }

    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        let t = token.to_owned();
        let row = self.db.read(move |r| Ok::<_, Error>(r.registration_token(&t)?)).await?;
        Ok(row.is_some_and(|row| token_usable(&row)))
    }

    pub async fn username_available(&self, localpart: &str) -> Result<bool> {
        let id = self.new_user_id(localpart)?;
        // The server notices account is the server's, even before its first notice.
        if self.notices_user().as_ref() == Some(&id) {
            return Ok(false);
        }
        Ok(self.user(&id).await?.is_none())
    }

    /// Creates an account; the caller has done any user-interactive auth.
    pub async fn create_user(
        &self,
        user_id: &UserId,
        password: Option<&str>,
        admin: bool,
        registration_token: Option<String>,
    ) -> Result<()> {
        let hash = match password {
            Some(p) => Some(hash_password(p.to_owned()).await?),
            None => None,
        };
        let u = user_id.to_string();
        let localpart = user_id.localpart().to_owned();
        self.db
            .write(move |w| {
                if let Some(t) = &registration_token {
                    // Re-checked inside the transaction so a token's last use cannot be taken twice.
                    match w.registration_token(t)? {
                        Some(row) if token_usable(&row) => w.use_registration_token(t)?,
                        _ => return Err(Error::forbidden("invalid registration token")),
                    }
                }
                if !w.create_user(&u, hash.as_deref(), admin, now_ms() as i64)? {
                    return Err(Error::new(ErrorKind::UserInUse, 400, "user id already taken"));
                }
                // The display name starts as the localpart, as in other homeservers.
                w.set_displayname(&u, Some(&localpart))?;
                Ok(())
            })
            .await
    }

    pub fn registration_enabled(&self) -> bool {
        self.config.registration != RegistrationMode::Disabled
    }

    /// Creates a device (if new) and a session on it.
    pub async fn create_session(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        with_refresh: bool,
        ip: Option<String>,
    ) -> Result<NewSession> {
        let device_id = device_id.unwrap_or_else(|| OwnedDeviceId::from(random_string(10).to_uppercase()));
        let access_token = format!("mat_{}", random_string(32));
        let (refresh_token, expires_in_ms) = if with_refresh {
            (Some(format!("mar_{}", random_string(32))), Some(self.config.auth.access_token_lifetime_ms))
        } else {
            (None, None)
        };
        let expires_ts = expires_in_ms.map(|ms| (now_ms() + ms) as i64);
        let (u, d, t, r) = (user_id.to_string(), device_id.to_string(), access_token.clone(), refresh_token.clone());
        self.db
            .write(move |w| {
                // Logging in again with an existing device id replaces its old sessions.
                let existing = w.device(&u, &d)?.is_some();
                if existing {
                    w.delete_device(&u, &d)?;
                }
                w.upsert_device(&u, &d, display_name.as_deref(), now_ms() as i64, ip.as_deref())?;
                w.insert_token(&t, &u, &d, expires_ts, r.as_deref())?;
                Ok::<_, Error>(())
            })
            .await?;
        Ok(NewSession { user_id: user_id.to_owned(), device_id, access_token, refresh_token, expires_in_ms })
    }

    /// `login/get_token`: a one-time token that signs a new device in as `user` for two minutes.
    pub async fn create_login_token(&self, user: &UserId) -> Result<(String, u64)> {
        if !self.config.auth.login_token_enabled {
            return Err(Error::new(ErrorKind::Unrecognized, 404, "login tokens are not enabled on this server"));
        }
        const LIFETIME_MS: u64 = 2 * 60 * 1000;
        let token = random_string(32);
        let (t, u) = (token.clone(), user.to_string());
        self.db.write(move |w| Ok::<_, Error>(w.add_login_token(&t, &u, (now_ms() + LIFETIME_MS) as i64)?)).await?;
        Ok((token, LIFETIME_MS))
    }

    /// `m.login.token` login: consumes the token.
    pub async fn login_with_token(&self, token: &str) -> Result<OwnedUserId> {
        let t = token.to_owned();
        let user = self.db.write(move |w| Ok::<_, Error>(w.take_login_token(&t, now_ms() as i64)?)).await?;
        let user = user.ok_or_else(|| Error::forbidden("invalid or expired login token"))?;
        if self
            .user(&UserId::parse(&user).map_err(|e| Error::internal(e.to_string()))?)
            .await?
            .is_some_and(|u| u.deactivated)
        {
            return Err(Error::new(ErrorKind::UserDeactivated, 403, "this account has been deactivated"));
        }
        UserId::parse(user).map_err(|e| Error::internal(e.to_string()))
    }

    /// Password login. Fails the same way for unknown users and wrong passwords.
    pub async fn login_password(&self, user_input: &str, password: &str) -> Result<OwnedUserId> {
        let user_id = self.resolve_login_user(user_input)?;
        let user = self.user(&user_id).await?;
        if user.as_ref().is_some_and(|u| u.deactivated) {
            return Err(Error::new(ErrorKind::UserDeactivated, 403, "this account has been deactivated"));
        }
        if !self.check_password(&user_id, password).await? {
            return Err(Error::forbidden("invalid username or password"));
        }
        let u = user_id.to_string();
        if self.db.read(move |r| Ok::<_, Error>(r.admin_user(&u)?)).await?.is_some_and(|u| u.locked) {
            return Err(locked());
        }
        Ok(user_id)
    }

    /// Resolves an access token to its session.
    pub async fn authenticate(&self, token: &str) -> Result<Session> {
        let t = token.to_owned();
        let row = self.db.read(move |r| Ok::<_, Error>(r.token(&t)?)).await?;
        let row = row.ok_or_else(|| Error::unknown_token("unknown access token"))?;
        if row.expires_ts.is_some_and(|e| e <= now_ms() as i64) {
            let mut data = ruma::api::error::UnknownTokenErrorData::new();
            data.soft_logout = true;
            return Err(Error::new(ErrorKind::UnknownToken(data), 401, "access token expired"));
        }
        if row.locked {
            return Err(locked());
        }
        Ok(Session {
            user_id: UserId::parse(&row.user_id).map_err(|e| Error::internal(e.to_string()))?,
            device_id: row.device_id.into(),
            access_token: token.to_owned(),
            appservice: None,
        })
    }

    /// Resolves the token of a request: an application service's `as_token` (tried first, as
    /// Synapse does; `query` may name the user it acts as, `user_id=`, and the device,
    /// `device_id=`), else a user's access token.
    pub async fn authenticate_request(&self, token: &str, query: Option<&str>) -> Result<Session> {
        // `moss media-repo`: Synapse knows the tokens.
        if let Some(repo) = &self.media_repo {
            return repo.session(&self.server_name, token, query).await;
        }
        match self.appservices.by_as_token(token) {
            Some(service) => self.appservice_session(service.clone(), token, query).await,
            None => self.authenticate(token).await,
        }
    }

    async fn appservice_session(
        &self,
        service: std::sync::Arc<crate::appservice::AppService>,
        token: &str,
        query: Option<&str>,
    ) -> Result<Session> {
        let param = |name: &str| -> Option<String> {
            url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
        };
        let user = param("user_id").unwrap_or_else(|| service.sender.clone());
        let user_id =
            UserId::parse(&user).map_err(|_| Error::invalid_param(format!("user_id {user:?} is not a user id")))?;
        if user != service.sender {
            if !service.owns_user(&user) {
                return Err(Error::forbidden(format!("the application service may not act as {user}")));
            }
            if user_id.server_name() != self.server_name || !self.is_local_user_active(&user_id).await? {
                return Err(Error::forbidden(format!("the application service has not registered {user}")));
            }
        }
        let device = param("device_id").or_else(|| param("org.matrix.msc3202.device_id"));
        let device_id = match device {
            Some(d) => {
                if self.device(&user_id, &d).await?.is_none() {
                    return Err(Error::new(ErrorKind::UnknownDevice, 400, format!("{user} has no device {d}")));
                }
                d.into()
            }
            // Requests without a device act for the user as a whole; device-scoped endpoints
            // see a device named after the service, which holds nothing.
            None => format!("appservice:{}", service.id()).into(),
        };
        Ok(Session { user_id, device_id, access_token: token.to_owned(), appservice: Some(service) })
    }

    /// Creates each application service's own user if it does not exist yet.
    pub async fn ensure_appservice_users(&self) -> Result<()> {
        for service in self.appservices.all() {
            let user = UserId::parse(&service.sender).map_err(|e| Error::internal(e.to_string()))?;
            if self.user(&user).await?.is_none() {
                self.create_user(&user, None, false, None).await?;
                tracing::info!(appservice = service.id(), %user, "created the application service's user");
            }
        }
        Ok(())
    }

    /// Swaps a refresh token for a new access/refresh pair; the old pair stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<NewSession> {
        let rt = refresh_token.to_owned();
        let access_token = format!("mat_{}", random_string(32));
        let new_refresh = format!("mar_{}", random_string(32));
        let lifetime = self.config.auth.access_token_lifetime_ms;
        let (at, nr) = (access_token.clone(), new_refresh.clone());
        let row = self
            .db
            .write(move |w| {
                let (old, row) = w.refresh_token(&rt)?.ok_or_else(|| Error::unknown_token("unknown refresh token"))?;
                if row.locked {
                    return Err(locked());
                }
                w.delete_token(&old)?;
                w.insert_token(&at, &row.user_id, &row.device_id, Some((now_ms() + lifetime) as i64), Some(&nr))?;
                Ok::<_, Error>(row)
            })
            .await?;
        Ok(NewSession {
            user_id: UserId::parse(&row.user_id).map_err(|e| Error::internal(e.to_string()))?,
            device_id: row.device_id.into(),
            access_token,
            refresh_token: Some(new_refresh),
            expires_in_ms: Some(lifetime),
        })
    }

    /// Logging out deletes the device, as the spec asks.
    pub async fn logout(&self, session: &Session) -> Result<()> {
        let (u, d) = (session.user_id.to_string(), session.device_id.to_string());
        self.db.write(move |w| Ok::<_, Error>(w.delete_device(&u, &d)?)).await
    }

    pub async fn logout_all(&self, user_id: &UserId) -> Result<()> {
        let u = user_id.to_string();
        self.db.write(move |w| Ok::<_, Error>(w.delete_all_devices(&u, None)?)).await
    }

    pub async fn set_password(&self, user_id: &UserId, password: &str, logout_others: Option<&Session>) -> Result<()> {
        let hash = hash_password(password.to_owned()).await?;
        let u = user_id.to_string();
        let keep = logout_others.map(|s| s.device_id.to_string());
        let logout = logout_others.is_some();
        self.db
            .write(move |w| {
                if !w.set_password_hash(&u, Some(&hash))? {
                    return Err(Error::not_found("no such user"));
                }
                if logout {
                    w.delete_all_devices(&u, keep.as_deref())?;
                }
                Ok(())
            })
            .await
    }

    /// Deactivates an account: no more logins, every session gone, every room left.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<()> {
        let u = user_id.to_string();
        let rooms = self
            .db
            .write(move |w| {
                if !w.set_deactivated(&u)? {
                    return Err(Error::not_found("no such user"));
                }
                w.delete_all_devices(&u, None)?;
                let mut rooms = w.rooms_with_membership(&u, "join")?;
                rooms.extend(w.rooms_with_membership(&u, "invite")?);
                rooms.extend(w.rooms_with_membership(&u, "knock")?);
                Ok::<_, Error>(rooms)
            })
            .await?;
        for room in rooms {
            if let Ok(room_id) = ruma::RoomId::parse(&room) {
                if let Err(e) = self.leave_room(user_id, &room_id, None).await {
                    tracing::warn!(%room_id, error = %e, "could not leave room while deactivating");
                }
            }
        }
        Ok(())
    }

    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceRow>> {
        let u = user_id.to_string();
        self.db.read(move |r| Ok::<_, Error>(r.devices(&u)?)).await
    }

    pub async fn device(&self, user_id: &UserId, device_id: &str) -> Result<Option<DeviceRow>> {
        let (u, d) = (user_id.to_string(), device_id.to_owned());
        self.db.read(move |r| Ok::<_, Error>(r.device(&u, &d)?)).await
    }

    pub async fn rename_device(&self, user_id: &UserId, device_id: &str, name: Option<String>) -> Result<()> {
        let (u, d) = (user_id.to_string(), device_id.to_owned());
        let found = self.db.write(move |w| Ok::<_, Error>(w.set_device_name(&u, &d, name.as_deref())?)).await?;
        if found {
            Ok(())
        } else {
            Err(Error::not_found("no such device"))
        }
    }

    /// `PUT /devices/{id}` from an application service that manages its users' devices
    /// (MSC4190): renames the device, or creates it (without an access token: the service uses
    /// `device_id=`). Returns whether it was created.
    pub async fn put_device_as_service(
        &self,
        session: &Session,
        device_id: &str,
        name: Option<String>,
    ) -> Result<bool> {
        let (u, d) = (session.user_id.to_string(), device_id.to_owned());
        let now = crate::now_ms() as i64;
        self.db
            .write(move |w| {
                let created = w.device(&u, &d)?.is_none();
                w.upsert_device(&u, &d, name.as_deref(), now, None)?;
                Ok::<_, Error>(created)
            })
            .await
    }

    pub async fn delete_devices(&self, user_id: &UserId, devices: Vec<String>) -> Result<()> {
        let u = user_id.to_string();
        self.db
            .write(move |w| {
                for d in &devices {
                    w.delete_device(&u, d)?;
                }
                Ok::<_, Error>(())
            })
            .await
    }

    /// Records device activity for `GET /devices`, writing at most once per device every five
    /// minutes so that busy clients do not turn every request into a database write.
    pub fn note_activity(
        self: &std::sync::Arc<Self>,
        session: &Session,
        ip: Option<String>,
        user_agent: Option<String>,
    ) {
        // Synapse keeps its devices' last-seen times; a media repository has no devices.
        if self.media_repo.is_some() {
            return;
        }
        let key = format!("{}|{}", session.user_id, session.device_id);
        {
            let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.get(&key).is_some_and(|t| t.elapsed().as_secs() < 300) {
                return;
            }
            if seen.len() > 100_000 {
                seen.clear();
            }
            seen.insert(key, Instant::now());
        }
        let (moss, session) = (self.clone(), session.clone());
        tokio::spawn(async move {
            if let Err(e) = moss.touch_device(&session, ip, user_agent).await {
                tracing::debug!(error = %e, "could not record device activity");
            }
        });
    }

    /// Records when, from where and with which client a device was last used.
    pub async fn touch_device(&self, session: &Session, ip: Option<String>, user_agent: Option<String>) -> Result<()> {
        let (u, d) = (session.user_id.to_string(), session.device_id.to_string());
        let ua: Option<String> = user_agent.map(|a| a.chars().take(512).collect());
        self.db
            .write(move |w| Ok::<_, Error>(w.touch_device(&u, &d, now_ms() as i64, ip.as_deref(), ua.as_deref())?))
            .await
    }

    // ---- registration tokens (the command line manages them) ----

    pub async fn create_registration_token(
        &self,
        token: Option<String>,
        uses: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<String> {
        let token = token.unwrap_or_else(|| random_string(16));
        if token.is_empty()
            || token.len() > 64
            || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
        {
            return Err(Error::invalid_param("tokens are 1-64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'"));
        }
        let t = token.clone();
        let created = self.db.write(move |w| Ok::<_, Error>(w.create_registration_token(&t, uses, expiry_ts)?)).await?;
        if created {
            Ok(token)
        } else {
            Err(Error::invalid_param("that token already exists"))
        }
    }

    pub async fn registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>> {
        self.db.read(|r| Ok::<_, Error>(r.registration_tokens()?)).await
    }

    pub async fn delete_registration_token(&self, token: &str) -> Result<bool> {
        let t = token.to_owned();
        self.db.write(move |w| Ok::<_, Error>(w.delete_registration_token(&t)?)).await
    }

    // ---- Synapse-compatible shared-secret registration ----

    pub fn shared_secret_nonce(&self, nonces: &Nonces) -> String {
        let nonce = random_string(32);
        let mut map = nonces.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, t| t.elapsed().as_secs() < 60);
        map.insert(nonce.clone(), Instant::now());
        nonce
    }

    /// Checks the HMAC-SHA1 over `nonce\0user\0password\0admin|notadmin` and consumes the nonce.
    pub fn check_shared_secret_mac(
        &self,
        nonces: &Nonces,
        nonce: &str,
        username: &str,
        password: &str,
        admin: bool,
        mac_hex: &str,
    ) -> Result<()> {
        let secret = self
            .config
            .registration_shared_secret
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::Forbidden, 400, "shared secret registration is not enabled"))?;
        let fresh = nonces
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(nonce)
            .is_some_and(|t| t.elapsed().as_secs() < 60);
        if !fresh {
            return Err(Error::new(ErrorKind::Unknown, 400, "unrecognised nonce"));
        }
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).map_err(|e| Error::internal(e.to_string()))?;
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(username.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.update(b"\0");
        mac.update(if admin { b"admin" as &[u8] } else { b"notadmin" });
        let expected = hex::decode(mac_hex).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        mac.verify_slice(&expected).map_err(|_| Error::forbidden("HMAC incorrect"))
    }
}

fn token_usable(row: &RegistrationTokenRow) -> bool {
    row.uses_allowed.is_none_or(|n| row.completed < n) && row.expiry_ts.is_none_or(|e| e > now_ms() as i64)
}

/// A locked account's answer (spec: 401 `M_USER_LOCKED`, the client keeps its session).
fn locked() -> Error {
    Error::new(ErrorKind::UserLocked, 401, "this account has been locked by an administrator")
}
