//! Delivery to push gateways (spec: Push Gateway API, `POST /_matrix/push/v1/notify`).
//!
//! The queue is persistent without a queue table: every pusher has a cursor (`last_stream`) into
//! its user's `push_actions` rows, so what is still to send is simply the rows after it — a
//! restart, a crash or a gateway outage loses nothing. Guarantees:
//! - per pusher, pushes go out in stream order, one request at a time; a failure retries the
//!   same push with backoff (1 s doubling to 1 h) and holds back only that pusher; after a day
//!   of failures that one push is given up (as Synapse does), so a dead gateway does not pile up
//!   a backlog forever;
//! - events the user has read by the time their push would go out are skipped;
//! - per gateway (scheme, host, port) at most `push.max_concurrent_per_gateway` requests fly;
//! - every request goes through the outbound guard (`push.ip_range_*`, https unless
//!   `push.allow_http`), without redirects, with a time limit and a 64 KiB answer limit;
//! - pushkeys the gateway lists in `rejected` lose their pusher;
//! - cursors are written in batches (one transaction every 100 ms for all pushers), so a crash
//!   can at worst send the last pushes again, never lose them (at-least-once).
//!
//! Badge-only pushes (counts, no event) go out when a receipt changes a user's badge; like
//! Synapse's, they are not retried.

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc, Weak},
    time::{Duration, Instant},
};

use moss_storage::{PushActionRow, PusherRow, Reader};
use ruma::{RoomId, UserId};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::{
    counts::{badge, read_marks},
    rules::{parse_actions, tweaks},
    PusherKey,
};
use crate::{error::Result, now_ms, rooms::read::client_event, Error, Moss};

/// Pushes read per pusher per round.
const ROUND: i64 = 20;
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// After failing this long, the push at the head of a pusher's queue is given up.
const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Largest gateway answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// How often the dispatcher looks at every pusher, whether woken or not.
const SWEEP: Duration = Duration::from_secs(60);

/// What the dispatcher remembers of a pusher between rounds (in memory only).
#[derive(Default)]
pub(crate) struct PusherState {
    in_flight: bool,
    /// Rows arrived while in flight: look again before stopping.
    again: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The badge last sent, to send a badge-only push only when it changes.
    last_badge: Option<u64>,
}

/// The wire format (spec: `POST /_matrix/push/v1/notify`). Hand-written rather than ruma's
/// type because a badge must be sent even when it is 0 (ruma leaves `counts` out then, and
/// an app would never clear its badge).
#[derive(Serialize)]
struct NotifyBody<'a> {
    notification: Notification<'a>,
}

#[derive(Serialize, Default)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender_display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_is_target: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prio: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a Value>,
    counts: Counts,
    devices: Vec<Device<'a>>,
}

#[derive(Serialize, Default)]
struct Counts {
    unread: u64,
}

#[derive(Serialize)]
struct Device<'a> {
    app_id: &'a str,
    pushkey: &'a str,
    /// Seconds since the epoch, when the pusher was set.
    pushkey_ts: i64,
    data: Map<String, Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    tweaks: Map<String, Value>,
}

#[derive(serde::Deserialize, Default)]
struct Answer {
    #[serde(default)]
    rejected: Vec<String>,
}

/// A pusher as the dispatcher uses it.
struct Target {
    row: PusherRow,
    url: String,
    data: Map<String, Value>,
    event_id_only: bool,
}

impl Target {
    fn new(row: PusherRow) -> Option<Target> {
        let v: Value = serde_json::from_str(&row.pusher).ok()?;
        if v["kind"] != "http" {
            return None;
        }
        let mut data = v["data"].as_object()?.clone();
        let url = data.remove("url")?.as_str()?.to_owned();
        let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
        Some(Target { row, url, data, event_id_only })
    }

    fn device(&self, tweaks: Map<String, Value>) -> Device<'_> {
        Device {
            app_id: &self.row.app_id,
            pushkey: &self.row.pushkey,
            pushkey_ts: self.row.created_ts / 1000,
            data: self.data.clone(),
            tweaks,
        }
    }
}

/// One push ready to go: the body, and what to do once it went.
struct Prepared {
    stream: i64,
    body: Option<Vec<u8>>,
    badge: u64,
}

enum Sent {
    Ok { rejected: bool },
    Failed(String),
}

impl Moss {
    /// Starts the dispatcher and the cursor writer (nothing when `push.enabled` is off).
    pub(crate) fn spawn_push_dispatcher(self: &Arc<Self>) {
        if self.push.client.is_none() {
            return;
        }
        let moss = Arc::downgrade(self);
        let wake = self.push.dispatch.clone();
        tokio::spawn(async move {
            let mut next_sweep = Instant::now();
            loop {
                let Some(m) = moss.upgrade() else { break };
                let sweep = Instant::now() >= next_sweep;
                if sweep {
                    next_sweep = Instant::now() + SWEEP;
                }
                let wait = match m.dispatch_round(sweep).await {
                    Ok(next_retry) => next_retry
                        .map(|t| t.saturating_duration_since(Instant::now()))
                        .unwrap_or(SWEEP)
                        .min(next_sweep.saturating_duration_since(Instant::now())),
                    Err(e) => {
                        tracing::warn!("push dispatch: {e}");
                        Duration::from_secs(1)
                    }
                };
                drop(m);
                let _ = tokio::time::timeout(wait.max(Duration::from_millis(10)), wake.notified()).await;
            }
        });
        let moss = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = moss.upgrade() else { break };
                if let Err(e) = m.flush_push_cursors().await {
                    tracing::warn!("push cursors: {e}");
                }
            }
        });
    }

    /// Starts a delivery task for every pusher with something to send that is not already
    /// sending or waiting out a backoff; returns when the next backoff ends.
    async fn dispatch_round(self: &Arc<Self>, sweep: bool) -> Result<Option<Instant>> {
        let badges = std::mem::take(&mut *self.push.badge_dirty.lock().unwrap_or_else(|p| p.into_inner()));
        for user in badges {
            let Ok(user) = UserId::parse(user) else { continue };
            let moss = self.clone();
            tokio::spawn(async move {
                if let Err(e) = moss.push_badge_update(&user).await {
                    tracing::debug!(%user, "badge update: {e}");
                }
            });
        }
        let users = self.push.take_dirty();
        if users.is_empty() && !sweep && !self.push.retry_due() {
            return Ok(self.push.next_retry());
        }
        let rows = self
            .db
            .read(move |r| {
                if sweep {
                    return Ok::<_, Error>(r.pushers_with_pending()?);
                }
                let mut out = Vec::new();
                for u in &users {
                    out.extend(r.pushers(u)?);
                }
                Ok(out)
            })
            .await?;
        let now = Instant::now();
        let mut start = Vec::new();
        {
            let mut state = self.push.state.lock().unwrap_or_else(|p| p.into_inner());
            for row in rows {
                let key = PusherKey::of(&row);
                let s = state.entry(key.clone()).or_default();
                if s.in_flight {
                    s.again = true;
                    continue;
                }
                if s.retry_at.is_some_and(|t| t > now) {
                    continue;
                }
                s.in_flight = true;
                s.again = false;
                start.push(key);
            }
        }
        // Pushers in backoff whose time has come but who were not in this round's rows.
        let due: Vec<PusherKey> = {
            let mut state = self.push.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .iter_mut()
                .filter(|(_, s)| !s.in_flight && s.retry_at.is_some_and(|t| t <= now))
                .map(|(k, s)| {
                    s.in_flight = true;
                    k.clone()
                })
                .collect()
        };
        for key in start.into_iter().chain(due) {
            let moss = Arc::downgrade(self);
            tokio::spawn(async move { deliver(moss, key).await });
        }
        Ok(self.push.next_retry())
    }

    /// Writes the cursors of the pushes sent since the last call, in one transaction.
    pub(crate) async fn flush_push_cursors(&self) -> Result<()> {
        // Entries stay until written (a delivery round reading the database meanwhile still
        // sees them), then go unless they moved again.
        let cursors = self.push.cursors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if cursors.is_empty() {
            return Ok(());
        }
        let written = cursors.clone();
        self.db
            .write(move |w| {
                for (k, (stream, failing)) in &cursors {
                    w.advance_pusher(&k.user_id, &k.app_id, &k.pushkey, *stream, *failing)?;
                }
                Ok::<_, Error>(())
            })
            .await?;
        let mut c = self.push.cursors.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in written {
            if c.get(&k) == Some(&v) {
                c.remove(&k);
            }
        }
        Ok(())
    }

    /// Badge-only pushes to a user's pushers whose badge changed (after a receipt).
    async fn push_badge_update(self: &Arc<Self>, user: &UserId) -> Result<()> {
        let Some(client) = self.push.client.clone() else { return Ok(()) };
        let (u, rules, by_room) =
            (user.to_owned(), self.push.rules.clone(), self.config.push.group_unread_count_by_room);
        let (rows, count) = self
            .db
            .read(move |r| {
                let rows = r.pushers(u.as_str())?;
                if rows.is_empty() {
                    return Ok::<_, Error>((rows, 0));
                }
                let current = r.current_stream()?;
                Ok((rows, badge(r, &rules, &u, by_room, current)?))
            })
            .await?;
        for row in rows {
            let key = PusherKey::of(&row);
            {
                let mut state = self.push.state.lock().unwrap_or_else(|p| p.into_inner());
                let s = state.entry(key).or_default();
                if s.last_badge == Some(count) {
                    continue;
                }
                s.last_badge = Some(count);
            }
            let Some(target) = Target::new(row) else { continue };
            let body = NotifyBody {
                notification: Notification {
                    counts: Counts { unread: count },
                    devices: vec![target.device(Map::new())],
                    ..Default::default()
                },
            };
            let Ok(bytes) = serde_json::to_vec(&body) else { continue };
            let moss = self.clone();
            let client = client.clone();
            tokio::spawn(async move {
                match moss.post(&client, &target.url, bytes).await {
                    Ok(_) => {
                        moss.push.stats.badge_updates.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(pushkey = %target.row.pushkey, "badge update not delivered: {e}"),
                }
            });
        }
        Ok(())
    }

    /// One request to a gateway, within its concurrency limit.
    async fn post(&self, client: &crate::net::GuardedClient, url: &str, body: Vec<u8>) -> Result<Answer, String> {
        let permit = self.push.gateway_permit(url).await;
        let req = client.request(http::Method::POST, url).map_err(|e| e.to_string())?;
        let res = req
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| crate::net::error_chain(&e))?;
        let status = res.status();
        let bytes = crate::net::read_limited(res, MAX_ANSWER).await?;
        drop(permit);
        if !status.is_success() {
            return Err(format!("gateway answered {status}"));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
    }
}

/// Sends everything pending for one pusher, round after round, until nothing is left or a
/// push fails.
async fn deliver(moss: Weak<Moss>, key: PusherKey) {
    loop {
        let Some(m) = moss.upgrade() else { return };
        let outcome = deliver_round(&m, &key).await;
        let mut state = m.push.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = state.entry(key.clone()).or_default();
        match outcome {
            Ok(true) => continue,
            Ok(false) if s.again => {
                s.again = false;
                continue;
            }
            Ok(false) => {
                s.in_flight = false;
                return;
            }
            Err(e) => {
                tracing::warn!(user = %key.user_id, app_id = %key.app_id, "push delivery: {e}");
                s.in_flight = false;
                s.backoff = (s.backoff * 2).clamp(INITIAL_BACKOFF, MAX_BACKOFF);
                s.retry_at = Some(Instant::now() + s.backoff);
                m.push.dispatch.notify_one();
                return;
            }
        }
    }
}

/// One round: up to [`ROUND`] pushes of one pusher. `Ok(true)` if there may be more; an error
/// when a push failed (the cursor stays before it).
async fn deliver_round(moss: &Arc<Moss>, key: &PusherKey) -> Result<bool, String> {
    let Some(client) = moss.push.client.clone() else { return Ok(false) };
    let (k, rules) = (key.clone(), moss.push.rules.clone());
    let (by_room, include_content) = (moss.config.push.group_unread_count_by_room, moss.config.push.include_content);
    let permit = moss.push.preparing.acquire().await.map_err(|e| e.to_string())?;
    let cursor = moss.push.cursor_of(key);
    let loaded = moss
        .db
        .read(move |r| {
            let Some(row) = r.pusher(&k.user_id, &k.app_id, &k.pushkey)? else {
                return Ok::<_, Error>(None);
            };
            let after = cursor.map_or(row.last_stream, |c| c.max(row.last_stream));
            let pending = r.push_actions_after(&k.user_id, after, ROUND)?;
            if pending.is_empty() {
                return Ok(Some((row, Vec::new())));
            }
            let Some(target) = Target::new(row.clone()) else { return Ok(Some((row, Vec::new()))) };
            let user = UserId::parse(k.user_id.as_str()).map_err(|e| Error::internal(e.to_string()))?;
            let current = r.current_stream()?;
            let count = badge(r, &rules, &user, by_room, current)?;
            let mut out = Vec::new();
            for action in &pending {
                let marks = read_marks(r, &k.user_id, &action.room_id)?;
                let body = if marks.read(action.stream, &action.thread_id) {
                    None
                } else {
                    build_body(r, &target, action, count, include_content)?
                };
                out.push(Prepared { stream: action.stream, body, badge: count });
            }
            Ok(Some((row, out)))
        })
        .await
        .map_err(|e| e.to_string())?;
    drop(permit);
    let Some((row, prepared)) = loaded else { return Ok(false) };
    if prepared.is_empty() {
        return Ok(false);
    }
    let Some(target) = Target::new(row) else {
        // Not an http pusher (nothing to send): move past the rows.
        if let Some(last) = prepared.last() {
            moss.push.set_cursor(key, last.stream, None);
        }
        return Ok(false);
    };
    for p in prepared {
        let Some(body) = p.body else {
            moss.push.set_cursor(key, p.stream, target.row.failing_since);
            continue;
        };
        match send(moss, &client, &target, body).await {
            Sent::Ok { rejected } => {
                moss.push.stats.sent.fetch_add(1, Ordering::Relaxed);
                {
                    let mut state = moss.push.state.lock().unwrap_or_else(|p| p.into_inner());
                    let s = state.entry(key.clone()).or_default();
                    s.backoff = Duration::ZERO;
                    s.retry_at = None;
                    s.last_badge = Some(p.badge);
                }
                moss.push.set_cursor(key, p.stream, None);
                if rejected {
                    moss.push.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    let k = key.clone();
                    moss.db
                        .write(move |w| Ok::<_, Error>(w.delete_pusher(&k.user_id, &k.app_id, &k.pushkey)?))
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::info!(user = %key.user_id, app_id = %key.app_id, "the gateway rejected a pushkey; pusher removed");
                    return Ok(false);
                }
            }
            Sent::Failed(e) => {
                moss.push.stats.failed.fetch_add(1, Ordering::Relaxed);
                let now = now_ms() as i64;
                let since = target.row.failing_since.unwrap_or(now);
                if now - since > GIVE_UP_AFTER_MS {
                    tracing::warn!(user = %key.user_id, app_id = %key.app_id, "gave up one push after a day of failures: {e}");
                    moss.push.set_cursor(key, p.stream, None);
                    return Ok(true);
                }
                moss.push.set_failing(key, since);
                return Err(e);
            }
        }
    }
    Ok(true)
}

async fn send(moss: &Moss, client: &crate::net::GuardedClient, target: &Target, body: Vec<u8>) -> Sent {
    match moss.post(client, &target.url, body).await {
        Ok(answer) => Sent::Ok { rejected: answer.rejected.contains(&target.row.pushkey) },
        Err(e) => Sent::Failed(e),
    }
}

/// The notification for one event, as this pusher wants it; `None` if the event is gone.
fn build_body(
    r: &Reader<'_>,
    target: &Target,
    action: &PushActionRow,
    badge: u64,
    include_content: bool,
) -> Result<Option<Vec<u8>>> {
    let room_id = RoomId::parse(&action.room_id).map_err(|e| Error::internal(e.to_string()))?;
    let event = match r.event(&action.event_id)? {
        Some(row) if row.redacted_by.is_some() => return Ok(None),
        Some(row) => client_event(&row, &action.user_id, None)?,
        // An invite to a room on another server is kept apart from the timeline.
        None => match r.outlier(&action.event_id)? {
            Some((_, pdu, status)) if status != "rejected" => crate::rooms::pdu::Pdu::from_stored(
                &action.event_id,
                &pdu,
            )?
            .to_client(&room_id, ruma::MilliSecondsSinceUnixEpoch::now(), None),
            _ => return Ok(None),
        },
    };
    let (kind, sender) = (event["type"].as_str().unwrap_or_default(), event["sender"].as_str().unwrap_or_default());
    let actions = parse_actions(action.actions.as_deref());
    let tweaks = tweaks(&actions);
    let high = kind == "m.room.encrypted"
        || tweaks.get("highlight") == Some(&Value::Bool(true))
        || tweaks.contains_key("sound");
    let prio = Some(if high { "high" } else { "low" });
    let counts = Counts { unread: badge };
    let notification = if target.event_id_only {
        Notification {
            event_id: Some(&action.event_id),
            room_id: Some(&action.room_id),
            prio,
            counts,
            devices: vec![target.device(Map::new())],
            ..Default::default()
        }
    } else {
        let names = RoomNames::of(r, &room_id, &action.user_id)?;
        let is_member = kind == "m.room.member";
        let content = event.get("content").filter(|c| include_content && c.as_object().is_some_and(|m| !m.is_empty()));
        Notification {
            event_id: Some(&action.event_id),
            room_id: Some(&action.room_id),
            kind: Some(kind),
            sender: Some(sender),
            sender_display_name: if names.current {
                member_name(r, &names.room, sender)?
            } else {
                names.member(sender)
            },
            room_name: names.name,
            room_alias: names.alias,
            membership: if is_member { event["content"]["membership"].as_str() } else { None },
            user_is_target: (is_member && event["state_key"] == action.user_id.as_str()).then_some(true),
            prio,
            content,
            counts,
            devices: vec![target.device(tweaks)],
        }
    };
    Ok(Some(serde_json::to_vec(&NotifyBody { notification })?))
}

/// Names a notification shows: from the room's current state, or for a room the user is only
/// invited to over federation, from the state that came with the invite.
struct RoomNames {
    name: Option<String>,
    alias: Option<String>,
    /// Member display names known from the invite's state.
    invite_members: HashMap<String, String>,
    room: String,
    current: bool,
}

impl RoomNames {
    fn of(r: &Reader<'_>, room_id: &RoomId, user: &str) -> Result<RoomNames> {
        let content = |kind: &str| -> Result<Option<Value>> {
            Ok(r.current_state_event(room_id.as_str(), kind, "")?
                .and_then(|row| serde_json::from_str::<Value>(&row.pdu).ok())
                .map(|v| v["content"].clone()))
        };
        let mut names = RoomNames {
            name: content("m.room.name")?.and_then(|c| c["name"].as_str().map(str::to_owned)),
            alias: content("m.room.canonical_alias")?.and_then(|c| c["alias"].as_str().map(str::to_owned)),
            invite_members: HashMap::new(),
            room: room_id.to_string(),
            current: r.room(room_id.as_str())?.is_some(),
        };
        if !names.current {
            if let Some(inv) = r.remote_invite(room_id.as_str(), user)? {
                for ev in serde_json::from_str::<Vec<Value>>(&inv.invite_state).unwrap_or_default() {
                    match ev["type"].as_str() {
                        Some("m.room.name") => names.name = ev["content"]["name"].as_str().map(str::to_owned),
                        Some("m.room.canonical_alias") => {
                            names.alias = ev["content"]["alias"].as_str().map(str::to_owned)
                        }
                        Some("m.room.member") => {
                            if let (Some(k), Some(n)) =
                                (ev["state_key"].as_str(), ev["content"]["displayname"].as_str())
                            {
                                names.invite_members.insert(k.to_owned(), n.to_owned());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        names.name = names.name.filter(|n| !n.is_empty());
        names.alias = names.alias.filter(|n| !n.is_empty());
        if names.current && names.name.is_none() && names.alias.is_none() {
            names.name = members_name(r, room_id.as_str(), user)?;
        }
        Ok(names)
    }

    fn member(&self, user: &str) -> Option<String> {
        self.invite_members.get(user).cloned().filter(|n| !n.is_empty())
    }
}

/// A name made of members for an unnamed room, as Synapse's pushes give one: "Alice and Bob"
/// with two others, "Alice and 4 others" with more (earliest members first); none for a room
/// with one other member (a DM: the app shows the sender) or while the user is only invited.
fn members_name(r: &Reader<'_>, room: &str, user: &str) -> Result<Option<String>> {
    let members = r.room_members(room)?;
    if members.iter().any(|m| m.user_id == user && m.membership == "invite") {
        return Ok(None);
    }
    let mut others: Vec<_> = members
        .into_iter()
        .filter(|m| m.user_id != user && (m.membership == "join" || m.membership == "invite"))
        .collect();
    if others.len() < 2 {
        return Ok(None);
    }
    others.sort_by_key(|m| m.stream);
    let name = |i: usize| -> Result<String> {
        let id = others.get(i).map(|m| m.user_id.as_str()).unwrap_or_default();
        Ok(member_name(r, room, id)?.unwrap_or_else(|| id.to_owned()))
    };
    Ok(Some(if others.len() == 2 {
        format!("{} and {}", name(0)?, name(1)?)
    } else {
        format!("{} and {} others", name(0)?, others.len() - 1)
    }))
}

fn member_name(r: &Reader<'_>, room: &str, user: &str) -> Result<Option<String>> {
    Ok(r.current_state_event(room, "m.room.member", user)?
        .and_then(|row| serde_json::from_str::<Value>(&row.pdu).ok())
        .and_then(|v| v["content"]["displayname"].as_str().map(str::to_owned))
        .filter(|n| !n.is_empty()))
}

impl super::Push {
    fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn retry_due(&self) -> bool {
        let now = Instant::now();
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| !s.in_flight && s.retry_at.is_some_and(|t| t <= now))
    }

    fn next_retry(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| !s.in_flight)
            .filter_map(|s| s.retry_at)
            .min()
    }

    async fn gateway_permit(&self, url: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let origin = reqwest::Url::parse(url).ok().map(|u| u.origin().ascii_serialization())?;
        let sem = {
            let mut g = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
            g.entry(origin).or_insert_with(|| Arc::new(Semaphore::new(self.per_gateway))).clone()
        };
        sem.acquire_owned().await.ok()
    }

    /// The cursor sent but not yet written, if any.
    fn cursor_of(&self, key: &PusherKey) -> Option<i64> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner()).get(key).map(|c| c.0)
    }

    fn set_cursor(&self, key: &PusherKey, stream: i64, failing_since: Option<i64>) {
        let mut c = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let e = c.entry(key.clone()).or_insert((stream, failing_since));
        e.0 = e.0.max(stream);
        e.1 = failing_since;
    }

    fn set_failing(&self, key: &PusherKey, since: i64) {
        let mut c = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let e = c.entry(key.clone()).or_insert((i64::MIN, None));
        e.1 = Some(since);
    }
}

pub(crate) type Cursors = HashMap<PusherKey, (i64, Option<i64>)>;
