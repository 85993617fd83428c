//! Accounts as an admin manages them (Synapse's `/_synapse/admin/v2/users` family).

use moss_storage::{AdminUserRow, DeviceRow, Page, UserChanges, UserFilter, UserOrder};
use ruma::{api::error::ErrorKind, OwnedRoomId, UserId};

use crate::{accounts::hash_password, error::Error, Moss, Result};

/// What `PUT /v2/users/{id}` asks; `None` leaves a field alone (and on creation means the
/// default).
#[derive(Debug, Clone, Default)]
pub struct UserUpsert {
    pub password: Option<String>,
    /// After a password change, end every session (default true).
    pub logout_devices: bool,
    /// `Some(None)` removes the display name.
    pub displayname: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
    pub locked: Option<bool>,
    pub user_type: Option<Option<String>>,
}

/// The user types Synapse knows (`synapse.api.constants.UserTypes`).
pub const USER_TYPES: &[&str] = &["bot", "support"];

/// One way a user was seen connecting (whois).
#[derive(Debug, Clone)]
pub struct Connection {
    pub ip: Option<String>,
    pub last_seen: Option<i64>,
    pub user_agent: Option<String>,
}

impl Moss {
    pub async fn admin_users(
        &self,
        filter: UserFilter,
        order: UserOrder,
        page: Page,
    ) -> Result<(Vec<AdminUserRow>, i64)> {
        self.db.read(move |r| Ok::<_, Error>(r.admin_users(&filter, order, page)?)).await
    }

    pub async fn admin_user(&self, user: &UserId) -> Result<AdminUserRow> {
        let u = user.to_string();
        self.db
            .read(move |r| Ok::<_, Error>(r.admin_user(&u)?))
            .await?
            .ok_or_else(|| Error::not_found("User not found"))
    }

    /// Creates the account if it does not exist (`true`), else changes what `change` names.
    pub async fn admin_upsert_user(
        &self,
        requester: &UserId,
        user: &UserId,
        change: UserUpsert,
    ) -> Result<(AdminUserRow, bool)> {
        if let Some(Some(t)) = &change.user_type {
            if !USER_TYPES.contains(&t.as_str()) {
                return Err(Error::new(ErrorKind::Unknown, 400, "Invalid user type"));
            }
        }
        if let Some(p) = &change.password {
            if p.len() > 512 {
                return Err(Error::new(ErrorKind::Unknown, 400, "Invalid password"));
            }
        }
        if change.deactivated == Some(true) && change.locked == Some(true) {
            return Err(Error::new(ErrorKind::Unknown, 400, "An user can't be deactivated and locked"));
        }
        let u = user.to_string();
        let existing = self.db.read(move |r| Ok::<_, Error>(r.admin_user(&u)?)).await?;
        let Some(old) = existing else {
            self.admin_create_user(user, change).await?;
            return Ok((self.admin_user(user).await?, true));
        };

        if let Some(name) = change.displayname {
            if old.displayname != name {
                self.set_profile_field(user, "displayname", name).await?;
            }
        }
        if let Some(url) = change.avatar_url {
            if old.avatar_url != url {
                self.set_profile_field(user, "avatar_url", url).await?;
            }
        }
        if change.admin == Some(false) && old.admin && requester == user {
            return Err(Error::new(ErrorKind::Unknown, 400, "You may not demote yourself."));
        }
        if let Some(p) = &change.password {
            let hash = hash_password(p.clone()).await?;
            let (u, logout) = (user.to_string(), change.logout_devices);
            self.db
                .write(move |w| {
                    w.set_password_hash(&u, Some(&hash))?;
                    if logout {
                        w.delete_all_devices(&u, None)?;
                    }
                    Ok::<_, Error>(())
                })
                .await?;
        }
        match change.deactivated {
            Some(true) if !old.deactivated => self.deactivate(user).await?,
            Some(false) if old.deactivated => {
                let u = user.to_string();
                self.db.write(move |w| Ok::<_, Error>(w.reactivate(&u)?)).await?;
            }
            _ => {}
        }
        let changes = UserChanges {
            admin: change.admin.filter(|a| *a != old.admin),
            locked: change.locked.filter(|l| *l != old.locked),
            suspended: None,
            shadow_banned: None,
            user_type: change.user_type,
        };
        let u = user.to_string();
        self.db.write(move |w| Ok::<_, Error>(w.update_admin_user(&u, &changes)?)).await?;
        Ok((self.admin_user(user).await?, false))
    }

    async fn admin_create_user(&self, user: &UserId, change: UserUpsert) -> Result<()> {
        // The same rules as registration for the name (an exclusive bridge namespace, say).
        let localpart = user.localpart();
        let checked = self.new_user_id(localpart)?;
        if checked != user {
            return Err(Error::new(ErrorKind::InvalidUsername, 400, "user id must be lowercase"));
        }
        if self.appservices.exclusive_user_owner(user.as_str()).is_some() {
            return Err(Error::new(ErrorKind::Exclusive, 400, "this user id is reserved by an application service"));
        }
        self.create_user(user, change.password.as_deref(), change.admin.unwrap_or(false), None).await?;
        let name = change.displayname.unwrap_or_else(|| Some(localpart.to_owned()));
        if name.is_some() {
            self.set_profile_field(user, "displayname", name).await?;
        }
        if let Some(Some(url)) = change.avatar_url {
            self.set_profile_field(user, "avatar_url", Some(url)).await?;
        }
        if let Some(t) = change.user_type {
            let (u, changes) = (user.to_string(), UserChanges { user_type: Some(t), ..Default::default() });
            self.db.write(move |w| Ok::<_, Error>(w.update_admin_user(&u, &changes)?)).await?;
        }
        Ok(())
    }

    /// Deactivates the account (sessions ended, rooms left); with `erase`, also clears its
    /// profile and marks it erased. Deactivating twice is fine.
    pub async fn admin_deactivate(&self, user: &UserId, erase: bool) -> Result<()> {
        let old = self.admin_user(user).await?;
        if !old.deactivated {
            self.deactivate(user).await?;
        }
        if erase {
            let u = user.to_string();
            self.db.write(move |w| Ok::<_, Error>(w.erase_user(&u)?)).await?;
        }
        Ok(())
    }

    /// How a user has been seen connecting: one entry per device with an address.
    pub async fn whois(&self, user: &UserId) -> Result<Vec<Connection>> {
        let devices: Vec<DeviceRow> = self.devices(user).await?;
        Ok(devices
            .into_iter()
            .filter(|d| d.last_seen_ts.is_some() || d.last_seen_ip.is_some())
            .map(|d| Connection { ip: d.last_seen_ip, last_seen: d.last_seen_ts, user_agent: d.last_seen_user_agent })
            .collect())
    }

    pub async fn admin_joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        let u = user.to_string();
        let rooms = self.db.read(move |r| Ok::<_, Error>(r.rooms_with_membership(&u, "join")?)).await?;
        Ok(rooms.into_iter().filter_map(|r| OwnedRoomId::try_from(r).ok()).collect())
    }

    /// Suspends or lifts a suspension (spec: `PUT /admin/suspend`); locks or unlocks
    /// (`PUT /admin/lock`). The target must be an active local user and not an admin; nobody
    /// suspends or locks themselves.
    pub async fn admin_moderate(&self, requester: &UserId, user: &UserId, what: Moderation, on: bool) -> Result<()> {
        let target = self.moderation_target(user).await?;
        if requester == user {
            return Err(Error::forbidden("you cannot do this to your own account"));
        }
        if target.admin {
            return Err(Error::forbidden("server admins cannot be suspended or locked"));
        }
        let changes = match what {
            Moderation::Lock => UserChanges { locked: Some(on), ..Default::default() },
            Moderation::Suspend => UserChanges { suspended: Some(on), ..Default::default() },
        };
        let u = user.to_string();
        self.db.write(move |w| Ok::<_, Error>(w.update_admin_user(&u, &changes)?)).await
    }

    /// The user a lock or suspension is about: local, existing, not deactivated (404 else).
    pub async fn moderation_target(&self, user: &UserId) -> Result<AdminUserRow> {
        if user.server_name() != self.server_name {
            return Err(Error::invalid_param("the user does not belong to this server"));
        }
        match self.admin_user(user).await {
            Ok(u) if !u.deactivated => Ok(u),
            _ => Err(Error::not_found("no such user")),
        }
    }

    /// Refuses what a suspended account may not do (403 `M_USER_SUSPENDED`).
    pub async fn check_not_suspended(&self, user: &UserId) -> Result<()> {
        self.check_sender(user).await.map(|_| ())
    }

    /// For a local user about to send, invite or join: refused if suspended; `true` if
    /// shadow-banned (the action then answers as done and goes nowhere). One database lookup.
    pub(crate) async fn check_sender(&self, user: &UserId) -> Result<bool> {
        if user.server_name() != self.server_name {
            return Ok(false);
        }
        let u = user.to_string();
        let (suspended, shadow) = self.db.read(move |r| Ok::<_, Error>(r.restrictions(&u)?)).await?;
        if suspended {
            return Err(Error::new(ErrorKind::UserSuspended, 403, "this account is suspended"));
        }
        Ok(shadow)
    }
}

/// What `admin_moderate` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moderation {
    Lock,
    Suspend,
}

impl Moss {
    /// The message rate limit an admin set for `user`: `(per second, burst)`, `(0, 0)` meaning
    /// not limited at all.
    pub fn ratelimit_override(&self, user: &str) -> Option<(i64, i64)> {
        self.ratelimit_overrides.read().unwrap_or_else(|p| p.into_inner()).get(user).copied()
    }

    /// Sets (`Some`) or removes a user's message rate limit.
    pub async fn admin_set_ratelimit(&self, user: &UserId, limit: Option<(i64, i64)>) -> Result<()> {
        if limit.is_some_and(|(p, b)| p < 0 || b < 0) {
            return Err(Error::invalid_param("messages_per_second and burst_count must be non-negative integers"));
        }
        let u = user.to_string();
        self.db
            .write(move |w| {
                match limit {
                    Some((p, b)) => w.set_ratelimit_override(&u, p, b)?,
                    None => w.delete_ratelimit_override(&u)?,
                }
                Ok::<_, Error>(())
            })
            .await?;
        self.set_ratelimit_override_local(user.as_str(), limit);
        self.publish(crate::cluster::Signal::RateLimit { user: user.to_string(), limit });
        Ok(())
    }

    pub(crate) fn set_ratelimit_override_local(&self, user: &str, limit: Option<(i64, i64)>) {
        let mut all = self.ratelimit_overrides.write().unwrap_or_else(|p| p.into_inner());
        match limit {
            Some(l) => all.insert(user.to_owned(), l),
            None => all.remove(user),
        };
    }

    /// Marks (or clears) a shadow ban: the user's messages, state changes and invites answer
    /// as if they worked but go nowhere.
    pub async fn admin_shadow_ban(&self, user: &UserId, banned: bool) -> Result<()> {
        let (u, changes) = (user.to_string(), UserChanges { shadow_banned: Some(banned), ..Default::default() });
        self.db.write(move |w| Ok::<_, Error>(w.update_admin_user(&u, &changes)?)).await
    }

    /// An access token to act as `user` (support, debugging): no new device, valid until
    /// `valid_until_ms` if given; ends with `/logout` on it.
    pub async fn admin_login_as(
        &self,
        requester: &UserId,
        user: &UserId,
        valid_until_ms: Option<i64>,
    ) -> Result<String> {
        if requester == user {
            return Err(Error::new(ErrorKind::Unknown, 400, "Cannot use admin API to login as self"));
        }
        self.admin_user(user).await?;
        let token = format!("mat_{}", crate::accounts::random_string(32));
        let device = format!("PUPPET{}", crate::accounts::random_string(8).to_uppercase());
        let (t, u) = (token.clone(), user.to_string());
        self.db.write(move |w| Ok::<_, Error>(w.insert_token(&t, &u, &device, valid_until_ms, None)?)).await?;
        Ok(token)
    }
}

impl Moss {
    /// Every room the user has a membership in, with it.
    pub async fn admin_memberships(&self, user: &UserId) -> Result<Vec<(String, String)>> {
        let u = user.to_string();
        let mut out = Vec::new();
        for m in ["join", "invite", "leave", "ban", "knock"] {
            let u = u.clone();
            let rooms = self.db.read(move |r| Ok::<_, Error>(r.rooms_with_membership(&u, m)?)).await?;
            out.extend(rooms.into_iter().map(|r| (r, m.to_owned())));
        }
        Ok(out)
    }

    /// All of a user's account data: `(room or "" for global, type, content)`.
    pub async fn admin_account_data(&self, user: &UserId) -> Result<Vec<(String, String, serde_json::Value)>> {
        let u = user.to_string();
        let rows = self.db.read(move |r| Ok::<_, Error>(r.all_account_data(&u)?)).await?;
        rows.into_iter().map(|(room, kind, content)| Ok((room, kind, serde_json::from_str(&content)?))).collect()
    }
}
