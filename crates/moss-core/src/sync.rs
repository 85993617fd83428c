//! `/sync`: initial and incremental, long-polling until something for the user happens.
//!
//! A sync token is `s<stream>_<typing>[_<to-device>]`: the global stream position, the typing
//! serial, and how far the device's to-device queue was delivered when a batch stopped short of
//! the stream (omitted when equal to it). Everything persistent (events, account data, receipts,
//! to-device messages, key changes) is ordered by the stream, so "what changed since the token"
//! is a range query.

use std::{collections::BTreeMap, time::Duration};

use moss_storage::{Direction, Reader, StateMap};
use ruma::{api::client::filter::FilterDefinition, push::Ruleset, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    accounts::Session,
    error::{Error, Result},
    filter,
    rooms::{
        read::{client_event, token},
        relations::served_events,
    },
    Moss,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncToken {
    pub stream: i64,
    pub typing: u64,
    /// To-device messages up to here were delivered (and are deleted once this token is used).
    pub to_device: i64,
}

impl SyncToken {
    pub fn parse(s: &str) -> Result<SyncToken> {
        let bad = || Error::invalid_param(format!("invalid sync token {s:?}"));
        let rest = s.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = rest.split('_');
        let stream: i64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let typing = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let to_device = match parts.next() {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => stream,
        };
        if parts.next().is_some() || stream < 0 || to_device > stream {
            return Err(bad());
        }
        Ok(SyncToken { stream, typing, to_device })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.to_device == self.stream {
            write!(f, "s{}_{}", self.stream, self.typing)
        } else {
            write!(f, "s{}_{}_{}", self.stream, self.typing, self.to_device)
        }
    }
}

pub struct SyncRequest {
    pub since: Option<SyncToken>,
    pub full_state: bool,
    pub timeout: Duration,
    pub filter: FilterDefinition,
    /// `online`, `unavailable` or `offline` (the last leaves presence alone).
    pub set_presence: String,
}

impl Moss {
    pub async fn sync(&self, session: &Session, req: SyncRequest) -> Result<Value> {
        let deadline =
            tokio::time::Instant::now() + req.timeout.min(Duration::from_millis(self.config.http.max_sync_timeout_ms));
        let mut rx = self.notifier.subscribe(&session.user_id);
        let mut shutdown = self.shutdown_signal();
        if let Some(since) = req.since {
            self.ack_to_device(session, since.to_device).await?;
        }
        let _connected = self.note_sync_presence(&session.user_id, &req.set_presence).await?;
        loop {
            rx.borrow_and_update();
            let typing_serial = self.typing.serial();
            let (body, empty) = self.sync_once(session, &req, typing_serial).await?;
            let done = req.since.is_none()
                || req.full_state
                || !empty
                || tokio::time::Instant::now() >= deadline
                || self.is_shutting_down();
            if done {
                return Ok(body);
            }
            let _waiting = self.metrics.waiting();
            tokio::select! {
                _ = rx.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn sync_once(&self, session: &Session, req: &SyncRequest, typing_serial: u64) -> Result<(Value, bool)> {
        let user = session.user_id.clone();
        let device = session.device_id.to_string();
        let since = req.since;
        let full_state = req.full_state;
        let filter = req.filter.clone();
        let rules = self.push.rules.clone();
        let (mut body, empty, typing_rooms, to_device_pos) =
            self.db.read(move |r| build(r, &user, &device, since, full_state, &filter, typing_serial, &rules)).await?;
        // Typing lives in memory, outside the database snapshot.
        let mut empty = empty;
        let since_typing = since.map(|s| s.typing).unwrap_or(0);
        for room in typing_rooms {
            let Ok(room_id) = RoomId::parse(&room) else {
                continue;
            };
            let users = match self.typing.changed_since(&room_id, since_typing) {
                Some(u) => u,
                None => continue,
            };
            if since.is_none() && users.is_empty() {
                continue;
            }
            let entry = &mut body["rooms"]["join"][room.as_str()];
            if entry.is_null() {
                *entry = empty_joined_room();
            }
            if let Some(a) = entry["ephemeral"]["events"].as_array_mut() {
                a.push(json!({"type": "m.typing", "content": {"user_ids": users}}))
            }
            empty = false;
        }
        let stream = body["next_batch"].as_i64().unwrap_or(0);
        body["next_batch"] =
            json!(SyncToken { stream, typing: typing_serial, to_device: to_device_pos.min(stream) }.to_string());
        Ok((body, empty))
    }
}

fn empty_joined_room() -> Value {
    json!({
        "timeline": {"events": [], "limited": false},
        "state": {"events": []},
        "ephemeral": {"events": []},
        "account_data": {"events": []},
        "unread_notifications": {"notification_count": 0, "highlight_count": 0},
    })
}

fn state_events(
    r: &Reader<'_>,
    user: &str,
    ids: impl Iterator<Item = String>,
    f: &ruma::api::client::filter::RoomEventFilter,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let matcher = filter::EventFilter::new(f);
    let ids: Vec<String> = ids.collect();
    let mut rows = r.events_by_id(&ids.iter().map(String::as_str).collect::<Vec<_>>())?;
    for id in ids {
        if let Some(row) = rows.remove(&id) {
            let ev = client_event(&row, user, None)?;
            if matcher.matches(&ev) {
                out.push(ev);
            }
        }
    }
    Ok(out)
}

pub(crate) fn state_before(r: &Reader<'_>, room: &str, stream: i64) -> Result<StateMap> {
    Ok(match r.last_event_at(room, stream)? {
        Some(ev) => r.state_group(ev.state_group)?,
        None => StateMap::new(),
    })
}

type Built = (Value, bool, Vec<String>, i64);

/// Most to-device messages one sync response carries; the rest come with the next one.
const TO_DEVICE_BATCH: usize = 100;

#[allow(clippy::too_many_arguments)]
fn build(
    r: &Reader<'_>,
    user: &UserId,
    device: &str,
    since: Option<SyncToken>,
    full_state: bool,
    filter: &FilterDefinition,
    _typing_serial: u64,
    rules: &crate::push::RulesCache,
) -> Result<Built> {
    let u = user.as_str();
    let current = r.current_stream()?;
    let since_stream = since.map(|s| s.stream);
    let timeline_filter = &filter.room.timeline;
    let limit = timeline_filter.limit.map(|l| u64::from(l) as usize).unwrap_or(10).clamp(1, 500);
    let lazy = filter::lazy_load(&filter.room.state);
    let timeline_matcher = filter::EventFilter::new(timeline_filter);

    let ignored = crate::user_data::ignored_users(r, u)?;
    let mut join = Map::new();
    let mut invite = Map::new();
    let mut knock = Map::new();
    let mut leave = Map::new();
    let mut typing_rooms = Vec::new();
    let mut empty = true;
    // An incremental sync looks only at rooms with an event or a receipt since the token
    // (and those whose membership changed); every other joined room has nothing to say.
    let changed_rooms = match since_stream {
        Some(s) if !full_state => {
            let mut rooms = r.rooms_with_events_after(s)?;
            rooms.extend(r.rooms_with_receipts_after(s)?);
            Some(rooms)
        }
        _ => None,
    };
    // Read at the first room that reports counts.
    let mut counts_at = None;
    let account_data_since = r.account_data_since(u, since_stream.unwrap_or(-1))?;

    for m in r.user_memberships(u)? {
        if !filter::room_allowed(filter, &m.room_id) {
            continue;
        }
        let changed = since_stream.is_none_or(|s| m.stream > s);
        match m.membership.as_str() {
            "join" => {
                typing_rooms.push(m.room_id.clone());
                let newly = since_stream.is_none() || changed;
                if !newly
                    && changed_rooms.as_ref().is_some_and(|c| !c.contains(&m.room_id))
                    && !account_data_since.iter().any(|a| a.room_id == m.room_id)
                {
                    continue;
                }
                let lower = if newly && since_stream.is_none() { -1 } else { since_stream.unwrap_or(-1) };
                let mut rows =
                    r.room_events(&m.room_id, current, Some(lower), Direction::Backward, limit as i64 + 1)?;
                let limited = rows.len() > limit;
                rows.truncate(limit);
                rows.reverse();
                let first_stream = rows.first().map(|e| e.stream).unwrap_or(current + 1);
                let shown = rows.iter().filter(|row| row.state_key.is_some() || !ignored.contains(&row.sender));
                let mut timeline = served_events(r, shown, u, Some(device))?;
                timeline.retain(|ev| timeline_matcher.matches(ev));
                // State: the full state before the timeline for new rooms, else the changes
                // the timeline skipped over.
                // The whole state before the timeline is needed for a new room, a full-state
                // sync or a gap; otherwise only the timeline senders' memberships (lazy
                // loading), looked up one by one rather than reading every member's.
                let before_group = r.last_event_at(&m.room_id, first_stream - 1)?.map(|ev| ev.state_group);
                let whole = newly || full_state || limited;
                let before = match before_group {
                    Some(g) if whole => r.state_group(g)?,
                    _ => StateMap::new(),
                };
                let state_ids: Vec<String> = if newly || full_state {
                    before.values().cloned().collect()
                } else if limited {
                    let at_since = state_before(r, &m.room_id, since_stream.unwrap_or(0))?;
                    before.iter().filter(|(k, v)| at_since.get(*k) != Some(*v)).map(|(_, v)| v.clone()).collect()
                } else {
                    vec![]
                };
                let timeline_ids: std::collections::HashSet<&str> =
                    timeline.iter().filter_map(|e| e["event_id"].as_str()).collect();
                let mut senders: std::collections::HashSet<String> =
                    timeline.iter().filter_map(|e| e["sender"].as_str().map(str::to_owned)).collect();
                senders.insert(u.to_owned());
                let mut state_ids: Vec<String> =
                    state_ids.into_iter().filter(|id| !timeline_ids.contains(id.as_str())).collect();
                if lazy {
                    // Every timeline sender's membership comes with it, so the client can show
                    // who wrote each event; the ones it may have had already are allowed
                    // (`include_redundant_members` permits, not requires, leaving them out).
                    // A sender who joined within the timeline's range (their join filtered out
                    // of it) is found in the state after it.
                    let mut after_group: Option<Option<i64>> = None;
                    let mut looked_up = std::collections::HashSet::new();
                    for sender in timeline.iter().filter_map(|e| e["sender"].as_str()) {
                        if !looked_up.insert(sender) {
                            continue;
                        }
                        let key = ("m.room.member".to_owned(), sender.to_owned());
                        let found = match (whole, before_group) {
                            (true, _) => before.get(&key).cloned(),
                            (false, Some(g)) => r.state_group_entry(g, "m.room.member", sender)?,
                            (false, None) => None,
                        };
                        let id = match found {
                            Some(id) => Some(id),
                            None => {
                                let group = match after_group {
                                    Some(g) => g,
                                    None => {
                                        let last = rows.last().map_or(current, |e| e.stream);
                                        let g = r.last_event_at(&m.room_id, last)?.map(|ev| ev.state_group);
                                        *after_group.insert(g)
                                    }
                                };
                                match group {
                                    Some(g) => r.state_group_entry(g, "m.room.member", sender)?,
                                    None => None,
                                }
                            }
                        };
                        if let Some(id) = id {
                            if !timeline_ids.contains(id.as_str()) && !state_ids.contains(&id) {
                                state_ids.push(id);
                            }
                        }
                    }
                }
                let mut state = state_events(r, u, state_ids.into_iter(), &filter.room.state)?;
                if lazy {
                    state.retain(|e| {
                        e["type"] != "m.room.member" || e["state_key"].as_str().is_some_and(|s| senders.contains(s))
                    });
                }

                // Receipts.
                let receipts = r.receipts_since(
                    &m.room_id,
                    if newly && since.is_none() { -1 } else { since_stream.unwrap_or(-1) },
                )?;
                let mut receipt_content: BTreeMap<String, Value> = BTreeMap::new();
                for rc in receipts {
                    if rc.receipt_type == "m.read.private" && rc.user_id != u {
                        continue;
                    }
                    let mut entry = json!({"ts": rc.ts});
                    if !rc.thread_id.is_empty() {
                        entry["thread_id"] = json!(rc.thread_id);
                    }
                    let slot = receipt_content.entry(rc.event_id).or_insert_with(|| json!({}));
                    slot[&rc.receipt_type][&rc.user_id] = entry;
                }
                let mut ephemeral = Vec::new();
                if !receipt_content.is_empty() {
                    ephemeral.push(json!({"type": "m.receipt", "content": receipt_content}));
                }

                // Room account data.
                let account_data: Vec<Value> = account_data_since
                    .iter()
                    .filter(|a| a.room_id == m.room_id)
                    .map(|a| {
                        Ok::<_, Error>(json!({"type": a.kind, "content": serde_json::from_str::<Value>(&a.content)?}))
                    })
                    .collect::<Result<_>>()?;

                let has_news =
                    !timeline.is_empty() || !state.is_empty() || !ephemeral.is_empty() || !account_data.is_empty();
                if !(has_news || newly || full_state) {
                    continue;
                }
                empty = false;
                let prev_batch = match rows.first() {
                    Some(e) => token(e.stream - 1),
                    None => token(current),
                };
                let mut room = empty_joined_room();
                room["timeline"] = json!({"events": timeline, "limited": limited, "prev_batch": prev_batch});
                room["state"] = json!({"events": state});
                room["ephemeral"] = json!({"events": ephemeral});
                room["account_data"] = json!({"events": account_data});
                // The summary changes only with membership: sent with a new room, a full-state
                // sync, a gap or a membership event in the timeline; omitted as unchanged
                // otherwise (lazy-loaded members in `state` are not changes).
                if newly || full_state || limited || timeline.iter().any(|e| e["type"] == "m.room.member") {
                    room["summary"] = summary(r, &m.room_id, u)?;
                }
                let at = match counts_at {
                    Some(at) => at,
                    None => *counts_at.insert(crate::push::counts::CountsAt::read(r, current)?),
                };
                unread_counts(r, rules, user, &m.room_id, at, timeline_filter.unread_thread_notifications, &mut room)?;
                join.insert(m.room_id.clone(), room);
            }
            "invite" if changed && !invited_by_ignored(r, &m.event_id, &ignored)? => {
                empty = false;
                // An invite to a room on another server: the state its server sent with it.
                let events = match r.remote_invite(&m.room_id, u)? {
                    Some(inv) => serde_json::from_str::<Vec<Value>>(&inv.invite_state)?,
                    None => stripped_state(r, &m.room_id, &m.event_id)?,
                };
                invite.insert(m.room_id.clone(), json!({"invite_state": {"events": events}}));
            }
            "knock" if changed => {
                empty = false;
                let events = match r.remote_invite(&m.room_id, u)? {
                    Some(k) => serde_json::from_str::<Vec<Value>>(&k.invite_state)?,
                    None => stripped_state(r, &m.room_id, &m.event_id)?,
                };
                knock.insert(m.room_id.clone(), json!({"knock_state": {"events": events}}));
            }
            "leave" | "ban" if changed && !m.forgotten && (since.is_some() || filter.room.include_leave) => {
                empty = false;
                let lower = since_stream.unwrap_or(-1);
                let mut rows =
                    r.room_events(&m.room_id, m.stream, Some(lower), Direction::Backward, limit as i64 + 1)?;
                let limited = rows.len() > limit;
                rows.truncate(limit);
                rows.reverse();
                let timeline: Vec<Value> =
                    rows.iter().map(|row| client_event(row, u, Some(device))).collect::<Result<_>>()?;
                let first = rows.first().map(|e| e.stream).unwrap_or(m.stream);
                let state = if since.is_none() || limited {
                    let before = state_before(r, &m.room_id, first - 1)?;
                    state_events(r, u, before.into_values(), &filter.room.state)?
                } else {
                    vec![]
                };
                leave.insert(
                    m.room_id.clone(),
                    json!({
                        "timeline": {"events": timeline, "limited": limited, "prev_batch": token(first - 1)},
                        "state": {"events": state},
                        "account_data": {"events": []},
                    }),
                );
            }
            _ => {}
        }
    }

    let mut global = Vec::new();
    let mut saw_push_rules = false;
    for a in &account_data_since {
        if a.room_id.is_empty() {
            saw_push_rules |= a.kind == crate::user_data::PUSH_RULES;
            global.push(json!({"type": a.kind, "content": serde_json::from_str::<Value>(&a.content)?}));
        }
    }
    if since.is_none() && !saw_push_rules && r.account_data(u, "", crate::user_data::PUSH_RULES)?.is_none() {
        global.push(json!({"type": "m.push_rules", "content": {"global": Ruleset::server_default(user)}}));
    }
    if !global.is_empty() && since.is_some() {
        empty = false;
    }

    // End-to-end encryption: queued to-device messages, whose device lists to refetch, and how
    // many one-time keys the device has left.
    let messages = r.to_device_messages(u, device, since.map(|s| s.to_device).unwrap_or(-1), TO_DEVICE_BATCH as i64)?;
    let to_device_pos = match messages.last() {
        Some(last) if messages.len() == TO_DEVICE_BATCH => last.stream,
        _ => current,
    };
    let to_device: Vec<Value> = messages
        .iter()
        .map(|m| Ok(json!({"sender": m.sender, "type": m.kind, "content": serde_json::from_str::<Value>(&m.content)?})))
        .collect::<Result<_>>()?;
    let lists = match since {
        Some(s) => crate::e2ee::device_lists::delta(r, u, s.stream, current)?,
        None => Default::default(),
    };
    if !to_device.is_empty() || !lists.is_empty() {
        empty = false;
    }
    let mut otk_counts = Map::new();
    otk_counts.insert("signed_curve25519".into(), json!(0));
    for (algorithm, n) in r.one_time_key_counts(u, device)? {
        otk_counts.insert(algorithm, json!(n));
    }

    let presence = if since.is_none_or(|s| s.stream < current) {
        crate::presence::sync_events(r, u, since_stream.unwrap_or(-1))?
    } else {
        vec![]
    };
    if since.is_some() && !presence.is_empty() {
        empty = false;
    }

    let body = json!({
        "next_batch": current,
        "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
        "account_data": {"events": global},
        "presence": {"events": presence},
        "to_device": {"events": to_device},
        "device_lists": {"changed": lists.changed, "left": lists.left},
        "device_one_time_keys_count": otk_counts,
        "device_unused_fallback_key_types": r.unused_fallback_key_types(u, device)?,
    });
    Ok((body, empty, typing_rooms, to_device_pos))
}

/// The stripped state an invitee or knocker sees of a room they are not in, plus their own
/// membership event.
pub(crate) fn stripped_state(r: &Reader<'_>, room: &str, membership_event: &str) -> Result<Vec<Value>> {
    let mut events = Vec::new();
    for kind in crate::rooms::STRIPPED_STATE_TYPES {
        if let Some(row) = r.current_state_event(room, kind, "")? {
            events.push(crate::rooms::pdu::Pdu::from_stored(&row.event_id, &row.pdu)?.to_stripped());
        }
    }
    if let Some(row) = r.event(membership_event)? {
        events.push(crate::rooms::pdu::Pdu::from_stored(&row.event_id, &row.pdu)?.to_stripped());
    }
    Ok(events)
}

fn invited_by_ignored(r: &Reader<'_>, invite_event: &str, ignored: &std::collections::HashSet<String>) -> Result<bool> {
    Ok(!ignored.is_empty() && r.event(invite_event)?.is_some_and(|e| ignored.contains(&e.sender)))
}

/// The room summary clients use to name rooms without a name.
fn summary(r: &Reader<'_>, room: &str, user: &str) -> Result<Value> {
    let s = r.room_summary(room, user, 5)?;
    Ok(json!({"m.heroes": s.heroes, "m.joined_member_count": s.joined, "m.invited_member_count": s.invited}))
}

/// The room's `unread_notifications` (and, when the filter asks for threads apart,
/// `unread_thread_notifications` with the main timeline's counts at room level).
fn unread_counts(
    r: &Reader<'_>,
    rules: &crate::push::RulesCache,
    user: &UserId,
    room: &str,
    at: crate::push::counts::CountsAt,
    by_thread: bool,
    entry: &mut Value,
) -> Result<()> {
    let room_id = RoomId::parse(room).map_err(|e| Error::internal(e.to_string()))?;
    let counts = crate::push::counts::room_counts(r, rules, user, &room_id, at)?;
    let room_level = if by_thread { counts.main() } else { counts.total() };
    entry["unread_notifications"] =
        json!({"notification_count": room_level.notify, "highlight_count": room_level.highlight});
    if by_thread {
        let threads: Map<String, Value> = counts
            .threads()
            .map(|(t, c)| (t.clone(), json!({"notification_count": c.notify, "highlight_count": c.highlight})))
            .collect();
        if !threads.is_empty() {
            entry["unread_thread_notifications"] = Value::Object(threads);
        }
    }
    Ok(())
}
