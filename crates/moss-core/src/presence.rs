//! Presence: whether users are online, shared with the people they share rooms with.
//!
//! State changes get a stream position (so /sync reports them and wakes watchers); mere activity
//! only refreshes `last_active_ts`, at most once a minute per user, without waking anyone.

use std::{collections::HashMap, sync::Mutex, time::Instant};

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
const TOUCH_EVERY_SECS: u64 = 60;
/// Longest status message kept.
const MAX_STATUS_MSG: usize = 1024;

/// When each user's activity was last written.
#[derive(Default)]
pub struct PresenceActivity(Mutex<HashMap<String, Instant>>);

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
        self.write_presence(user, state, Some(status_msg)).await
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

    /// Called on every /sync: marks the user online (or as `set_presence` says) and active.
    pub async fn note_sync_presence(&self, user: &UserId, set_presence: &str) -> Result<()> {
        if !self.config.presence.enabled || set_presence == "offline" || !STATES.contains(&set_presence) {
            return Ok(());
        }
        {
            let mut seen = self.presence_activity.0.lock().unwrap_or_else(|p| p.into_inner());
            if seen.get(user.as_str()).is_some_and(|t| t.elapsed().as_secs() < TOUCH_EVERY_SECS) {
                return Ok(());
            }
            if seen.len() > 100_000 {
                seen.clear();
            }
            seen.insert(user.to_string(), Instant::now());
        }
        self.write_presence(user, set_presence, None).await
    }

    /// Writes a new state (`status_msg: None` keeps the old message); only a change of state or
    /// message moves the stream and wakes others.
    async fn write_presence(&self, user: &UserId, state: &str, status_msg: Option<Option<String>>) -> Result<()> {
        let (u, state) = (user.to_string(), state.to_owned());
        let (us, federates) = (self.server_name.clone(), self.federation.is_some());
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
                        w.touch_presence(&u, now)?;
                        return Ok::<_, Error>(None);
                    }
                }
                let stream = w.next_stream()?;
                // Other servers sharing a room with the user hear of it as an m.presence EDU.
                let mut dests = std::collections::BTreeSet::new();
                if federates {
                    for other in w.users_sharing_rooms(&u)? {
                        if let Ok(o) = UserId::parse(&other) {
                            if o.server_name() != us {
                                dests.insert(o.server_name().to_string());
                            }
                        }
                    }
                    let mut push = json!({"user_id": u, "presence": state, "last_active_ago": 0, "currently_active": state == "online"});
                    if let Some(m) = &msg {
                        push["status_msg"] = json!(m);
                    }
                    let edu = json!({"edu_type": "m.presence", "content": {"push": [push]}});
                    crate::federation::sender::queue_edu(w, dests.iter().map(String::as_str), &edu)?;
                }
                w.set_presence(&PresenceRow { user_id: u, state, status_msg: msg, last_active_ts: now, stream })?;
                Ok(Some(dests))
            })
            .await?;
        if let Some(dests) = changed {
            self.wake_destinations(dests.iter().map(String::as_str));
            self.notify_sharing_users(user).await;
        }
        Ok(())
    }
}
