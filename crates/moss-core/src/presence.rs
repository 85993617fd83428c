//! Presence: whether users are online, shared with the people they share rooms with.
//!
//! State changes get a stream position (so /sync reports them and wakes watchers); mere activity
//! only refreshes `last_active_ts`, at most once a minute per user, without waking anyone.
//!
//! Nobody stays online by accident: a background tick ([`Moss::expire_presence`]) takes local
//! users offline when they have had no /sync in progress for `presence.offline_after_ms`,
//! idle (`unavailable`) when they have not acted for `presence.idle_after_ms`, and other
//! servers' users offline when their server has said nothing for 30 minutes; for the same
//! reason, our online users' presence is sent again to other servers every 25 minutes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moss_storage::{PresenceRow, Reader};
use ruma::UserId;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    now_ms, Moss,
};

const STATES: [&str; 3] = ["online", "unavailable", "offline"];
/// A user counts as "currently active" this long after their last activity.
const ACTIVE_MS: i64 = 5 * 60 * 1000;
/// Activity is written at most this often per user.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Longest status message kept.
const MAX_STATUS_MSG: usize = 1024;
/// Other servers' users with no news for this long are offline (as Synapse does)...
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// ...so ours are re-sent this often while they are not offline.
const REMOTE_REFRESH: Duration = Duration::from_secs(25 * 60);

/// What presence remembers between requests, in memory only (a restart forgets it: everyone
/// gets `offline_after_ms` from the start to sync again).
pub struct PresenceTracker {
    state: Mutex<Tracker>,
    started: Instant,
}

#[derive(Default)]
struct Tracker {
    /// When each user's presence was last checked on /sync.
    synced: HashMap<String, Instant>,
    /// When each user's action was last written.
    acted: HashMap<String, Instant>,
    /// Local users' /syncs: how many are in progress, and when the last one ended.
    syncs: HashMap<String, (u32, Instant)>,
    /// When another server last told us of its user.
    heard: HashMap<String, Instant>,
    /// When our user's presence was last sent to other servers.
    sent: HashMap<String, Instant>,
}

impl Default for PresenceTracker {
    fn default() -> Self {
        PresenceTracker { state: Mutex::new(Tracker::default()), started: Instant::now() }
    }
}

impl PresenceTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Another server told us of `user`'s presence.
    pub(crate) fn heard_from(&self, user: &str) {
        self.lock().heard.insert(user.to_owned(), Instant::now());
    }

    /// Local users with a /sync in progress here, or one that ended within `recent`: what this
    /// process tells the others (crate::cluster).
    pub(crate) fn syncing(&self, recent: Duration) -> Vec<String> {
        let t = self.lock();
        t.syncs.iter().filter(|(_, (n, ended))| *n > 0 || ended.elapsed() < recent).map(|(u, _)| u.clone()).collect()
    }

    /// Another process has these users syncing: they count as connected as if a /sync of
    /// theirs had just ended here.
    pub(crate) fn syncing_elsewhere(&self, users: &[String]) {
        let mut t = self.lock();
        for u in users {
            let entry = t.syncs.entry(u.clone()).or_insert((0, Instant::now()));
            entry.1 = Instant::now();
        }
    }
}

/// Held for the length of one /sync: the user counts as connected while it lives.
pub struct Syncing {
    tracker: Arc<PresenceTracker>,
    user: String,
}

impl Drop for Syncing {
    fn drop(&mut self) {
        let mut t = self.tracker.lock();
        let entry = t.syncs.entry(std::mem::take(&mut self.user)).or_insert((1, Instant::now()));
        *entry = (entry.0.saturating_sub(1), Instant::now());
    }
}

pub(crate) fn content(p: &PresenceRow, now: i64) -> Value {
    let ago = (now - p.last_active_ts).max(0);
    let mut c = json!({
        "presence": p.state,
        "last_active_ago": ago,
        "currently_active": p.state == "online" && ago < ACTIVE_MS,
    });
    if let Some(m) = &p.status_msg {
        c["status_msg"] = json!(m);
    }
    c
}

/// Presence events for /sync: changes after `since` of the user and everyone sharing a room.
pub(crate) fn sync_events(r: &Reader<'_>, user: &str, since: i64) -> Result<Vec<Value>> {
    let now = now_ms() as i64;
    Ok(r.presence_since(user, since)?
        .iter()
        .map(|p| json!({"type": "m.presence", "sender": p.user_id, "content": content(p, now)}))
        .collect())
}

impl Moss {
    /// `PUT /presence/{userId}/status`.
    pub async fn set_presence(&self, user: &UserId, state: &str, status_msg: Option<String>) -> Result<()> {
        if !STATES.contains(&state) {
            return Err(Error::invalid_param(format!("presence must be one of {STATES:?}")));
        }
        if status_msg.as_ref().is_some_and(|m| m.len() > MAX_STATUS_MSG) {
            return Err(Error::invalid_param(format!("status_msg is longer than {MAX_STATUS_MSG} bytes")));
        }
        if !self.config.presence.enabled {
            return Ok(());
        }
        // Setting one's presence is a sign of life, like a /sync.
        self.presence_tracker.lock().syncs.entry(user.to_string()).or_insert((0, Instant::now())).1 = Instant::now();
        self.write_presence(user, state, Some(status_msg), true).await
    }

    /// `GET /presence/{userId}/status`: allowed for oneself and for people sharing a room.
    pub async fn get_presence(&self, requester: &UserId, user: &UserId) -> Result<Value> {
        let (me, u) = (requester.to_string(), user.to_string());
        let enabled = self.config.presence.enabled;
        let server = self.server_name.clone();
        self.db
            .read(move |r| {
                let local = UserId::parse(&u).is_ok_and(|id| id.server_name() == server);
                if local && r.user(&u)?.is_none() {
                    return Err(Error::not_found("unknown user"));
                }
                if me != u && !r.share_a_room(&me, &u)? {
                    return Err(Error::forbidden("you do not share a room with this user"));
                }
                let row = if enabled { r.presence(&u)? } else { None };
                Ok(match row {
                    Some(p) => content(&p, now_ms() as i64),
                    None => json!({"presence": "offline"}),
                })
            })
            .await
    }

    /// Called on every /sync: the user is connected while the returned guard lives, and comes
    /// online (or as `set_presence` says) if they were offline. Syncing alone is not activity:
    /// an idle user stays idle.
    pub async fn note_sync_presence(&self, user: &UserId, set_presence: &str) -> Result<Option<Syncing>> {
        if !self.config.presence.enabled || set_presence == "offline" || !STATES.contains(&set_presence) {
            return Ok(None);
        }
        let guard = Syncing { tracker: self.presence_tracker.clone(), user: user.to_string() };
        {
            let mut t = self.presence_tracker.lock();
            t.syncs.entry(user.to_string()).or_insert((0, Instant::now())).0 += 1;
            if t.synced.get(user.as_str()).is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
                return Ok(Some(guard));
            }
            if t.synced.len() > 100_000 {
                t.synced.clear();
            }
            t.synced.insert(user.to_string(), Instant::now());
        }
        let u = user.to_string();
        let current = self.db.read(move |r| Ok::<_, Error>(r.presence(&u)?)).await?;
        match current.as_ref().map(|p| p.state.as_str()) {
            None | Some("offline") => self.write_presence(user, set_presence, None, true).await?,
            Some("online") if set_presence == "unavailable" => {
                self.write_presence(user, set_presence, None, false).await?
            }
            _ => {}
        }
        Ok(Some(guard))
    }

    /// The user did something (sent, typed, read): an idle user is online again, and
    /// `last_active_ago` restarts. Never fails the action it accompanies.
    pub async fn note_user_action(&self, user: &UserId) {
        let presence = &self.config.presence;
        if !presence.enabled {
            return;
        }
        // Often enough that an idle user comes back well within the idle time.
        let every = TOUCH_EVERY.min(Duration::from_millis(presence.idle_after_ms / 2));
        {
            let mut t = self.presence_tracker.lock();
            if t.acted.get(user.as_str()).is_some_and(|at| at.elapsed() < every) {
                return;
            }
            if t.acted.len() > 100_000 {
                t.acted.clear();
            }
            t.acted.insert(user.to_string(), Instant::now());
        }
        let u = user.to_string();
        let Ok(Some(current)) = self.db.read(move |r| Ok::<_, Error>(r.presence(&u)?)).await else { return };
        let idle_for = now_ms() as i64 - current.last_active_ts;
        let res = match current.state.as_str() {
            // Idle, not "away" set a moment ago by the user.
            "unavailable" if idle_for >= presence.idle_after_ms as i64 => {
                self.write_presence(user, "online", None, true).await
            }
            "online" => self.write_presence(user, "online", None, true).await,
            _ => Ok(()),
        };
        if let Err(e) = res {
            tracing::warn!(%user, "presence: {e}");
        }
    }

    /// One tick of the presence timeouts (see the module's comment).
    pub(crate) async fn expire_presence(&self) -> Result<()> {
        let presence = &self.config.presence;
        if !presence.enabled {
            return Ok(());
        }
        let offline_after = Duration::from_millis(presence.offline_after_ms);
        let rows = self.db.read(|r| Ok::<_, Error>(r.presence_not_offline()?)).await?;
        let now = now_ms() as i64;
        let (mut offline, mut idle, mut refresh) = (Vec::new(), Vec::new(), Vec::new());
        {
            let mut t = self.presence_tracker.lock();
            t.syncs.retain(|_, (n, ended)| *n > 0 || ended.elapsed() < offline_after);
            for row in rows {
                let Ok(user) = UserId::parse(&row.user_id) else { continue };
                if user.server_name() != self.server_name {
                    if t.heard.entry(row.user_id.clone()).or_insert_with(Instant::now).elapsed() >= REMOTE_TIMEOUT {
                        t.heard.remove(&row.user_id);
                        offline.push(user);
                    }
                    continue;
                }
                let connected = match t.syncs.get(user.as_str()) {
                    Some(_) => true,
                    None => self.presence_tracker.started.elapsed() < offline_after,
                };
                if !connected {
                    t.synced.remove(user.as_str());
                    t.sent.remove(user.as_str());
                    offline.push(user);
                    continue;
                }
                if row.state == "online" && now - row.last_active_ts >= presence.idle_after_ms as i64 {
                    idle.push(user.clone());
                }
                if self.federation.is_some()
                    && t.sent.entry(row.user_id.clone()).or_insert_with(Instant::now).elapsed() >= REMOTE_REFRESH
                {
                    t.sent.insert(row.user_id.clone(), Instant::now());
                    refresh.push(row);
                }
            }
        }
        for user in offline {
            self.write_presence(&user, "offline", None, false).await?;
        }
        for user in idle {
            self.write_presence(&user, "unavailable", None, false).await?;
        }
        for row in refresh {
            self.send_presence_edu(&row).await?;
        }
        Ok(())
    }

    /// Writes a new state (`status_msg: None` keeps the old message; `active` restarts
    /// `last_active_ago`); only a change of state or message moves the stream and wakes others.
    async fn write_presence(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<Option<String>>,
        active: bool,
    ) -> Result<()> {
        let (u, state) = (user.to_string(), state.to_owned());
        // Only our own users' presence is ours to tell other servers.
        let federates = self.federation.is_some() && user.server_name() == self.server_name;
        let us = self.server_name.clone();
        let changed = self
            .db
            .write(move |w| {
                let now = now_ms() as i64;
                let old = w.presence(&u)?;
                let msg = match status_msg {
                    Some(m) => m,
                    None => old.as_ref().and_then(|o| o.status_msg.clone()),
                };
                if let Some(o) = &old {
                    if o.state == state && o.status_msg == msg {
                        if active {
                            w.touch_presence(&u, now)?;
                        }
                        return Ok::<_, Error>(None);
                    }
                }
                let last_active_ts = match &old {
                    Some(o) if !active => o.last_active_ts,
                    _ => now,
                };
                let row = PresenceRow { user_id: u, state, status_msg: msg, last_active_ts, stream: w.next_stream()? };
                w.set_presence(&row)?;
                let dests = if federates { queue_presence_edu(w, &row, &us)? } else { Default::default() };
                Ok(Some(dests))
            })
            .await?;
        if let Some(dests) = changed {
            if federates {
                self.presence_tracker.lock().sent.insert(user.to_string(), Instant::now());
            }
            self.wake_destinations(dests.iter().map(String::as_str));
            self.notify_sharing_users(user).await;
        }
        Ok(())
    }

    /// Tells other servers again what they already know, before they time it out.
    async fn send_presence_edu(&self, row: &PresenceRow) -> Result<()> {
        let (row, us) = (row.clone(), self.server_name.clone());
        let dests = self.db.write(move |w| queue_presence_edu(w, &row, &us)).await?;
        self.wake_destinations(dests.iter().map(String::as_str));
        Ok(())
    }
}

/// Queues `row` as an m.presence EDU for every other server sharing a room with its user.
fn queue_presence_edu(
    w: &moss_storage::Writer<'_>,
    row: &PresenceRow,
    us: &ruma::ServerName,
) -> Result<std::collections::BTreeSet<String>> {
    let mut dests = std::collections::BTreeSet::new();
    for other in w.users_sharing_rooms(&row.user_id)? {
        if let Ok(o) = UserId::parse(&other) {
            if o.server_name() != us {
                dests.insert(o.server_name().to_string());
            }
        }
    }
    let mut push = content(row, now_ms() as i64);
    push["user_id"] = json!(row.user_id);
    let edu = json!({"edu_type": "m.presence", "content": {"push": [push]}});
    crate::federation::sender::queue_edu(w, dests.iter().map(String::as_str), &edu)?;
    Ok(dests)
}
