//! One room of a response: everything on the first time the connection sees it (`initial`), else
//! what changed since the position it was last sent at — new timeline events (with `limited`
//! when more happened than `timeline_limit`), state changes the `required_state` asks for, and
//! state it newly asks for. A room the user left is shown as it was when they left.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use moss_storage::{Direction, EventRow, Reader, StateMap};
use ruma::{events::room::member::MembershipState, serde::Raw, OwnedMxcUri, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::{connections::RoomSent, lists::Candidate, required::RequiredState, wire};
use crate::{
    error::Error,
    push::RulesCache,
    rooms::{read::client_event, read::token, relations::served_event},
    sync::state_before,
    Result,
};

/// Most timeline events one room may ask for.
pub const MAX_TIMELINE_LIMIT: u64 = 500;
/// Heroes sent for a room without a name.
const HEROES: i64 = 5;

/// What the request asks of one room (the union over the lists and subscriptions holding it).
#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub timeline_limit: u64,
    pub required: Arc<RequiredState>,
}

impl RoomConfig {
    pub fn merge(&mut self, other: &RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        if !other.required.is_empty() {
            Arc::make_mut(&mut self.required).union(&other.required);
        }
    }
}

/// What a request shares across its rooms.
pub struct Ctx<'a> {
    pub r: &'a Reader<'a>,
    pub user: &'a UserId,
    pub device: &'a str,
    /// The connection's stream position before this response (`None` on a new connection).
    pub from: Option<i64>,
    pub current: i64,
    /// Where unread counts are taken (read once for all rooms).
    pub counts_at: crate::push::counts::CountsAt,
    pub rules: &'a RulesCache,
    pub ignored: &'a HashSet<String>,
    /// Rooms with events after `from`.
    pub rooms_with_events: &'a HashSet<String>,
    /// Rooms where the user moved a receipt after `from`.
    pub rooms_with_own_receipts: &'a HashSet<String>,
}

pub struct Built {
    pub room: Option<wire::Room>,
    pub sent: RoomSent,
    /// The room was sent whole (the extensions then send its receipts and account data whole).
    pub initial: bool,
    /// Ids of the timeline events sent.
    pub timeline_ids: Vec<String>,
}

pub fn build(ctx: &Ctx<'_>, c: &Candidate, cfg: &RoomConfig, sent: Option<&RoomSent>) -> Result<Built> {
    let membership = c.membership();
    let state = MembershipState::from(membership);
    let sent_now = |upto: i64| RoomSent {
        upto,
        membership: state.clone(),
        timeline_limit: cfg.timeline_limit,
        required: cfg.required.clone(),
    };
    let unchanged = |upto: i64| Built { room: None, sent: sent_now(upto), initial: false, timeline_ids: vec![] };

    if membership == "invite" || membership == "knock" {
        let upto = c.row.membership_stream;
        if sent.is_some_and(|s| s.membership == state && s.upto >= upto) {
            return Ok(unchanged(upto));
        }
        return Ok(Built { room: Some(invited_room(c)?), sent: sent_now(upto), initial: true, timeline_ids: vec![] });
    }

    let r = ctx.r;
    let room = c.row.room_id.as_str();
    let joined = membership == "join";
    let upper = if joined { ctx.current } else { c.row.membership_stream };
    let initial = sent.is_none_or(|s| matches!(s.membership, MembershipState::Invite | MembershipState::Knock));
    let expanded = !initial && sent.is_some_and(|s| cfg.timeline_limit > s.timeline_limit);
    let required_grew = !initial && sent.is_some_and(|s| s.required != cfg.required);
    let last = sent.map(|s| s.upto);
    if let (false, Some(s), Some(l)) = (initial, sent, last) {
        let news = if l >= upper {
            false
        } else if Some(l) == ctx.from && joined {
            ctx.rooms_with_events.contains(room)
        } else {
            !r.room_events(room, upper, Some(l), Direction::Backward, 1)?.is_empty()
        };
        let counts_moved = joined && ctx.rooms_with_own_receipts.contains(room);
        if !news && !expanded && !required_grew && !counts_moved && s.membership == state {
            return Ok(unchanged(upper.max(l)));
        }
    }

    // Timeline: the newest events, down to what the connection already has.
    let lower = if initial || expanded { -1 } else { last.unwrap_or(-1) };
    let limit = cfg.timeline_limit.min(MAX_TIMELINE_LIMIT) as usize;
    let mut rows = r.room_events(room, upper, Some(lower), Direction::Backward, limit as i64 + 1)?;
    let limited = rows.len() > limit;
    rows.truncate(limit);
    rows.reverse();
    let rows: Vec<EventRow> =
        rows.into_iter().filter(|row| row.state_key.is_some() || !ctx.ignored.contains(&row.sender)).collect();
    let mut timeline = Vec::with_capacity(rows.len());
    for row in &rows {
        timeline.push(raw(&served_event(r, row, ctx.user.as_str(), Some(ctx.device))?)?);
    }
    let num_live = match (initial || expanded, ctx.from) {
        (false, Some(from)) => rows.iter().filter(|e| e.stream > from).count() as u64,
        _ => 0,
    };
    let prev_batch = match rows.first() {
        Some(e) => token(e.stream - 1),
        None => token(upper),
    };

    // State the client asked for: all of it the first time, else what changed and what it
    // newly asks for; the senders' memberships when it asks for them lazily.
    let now = state_at(r, c, upper)?;
    let mut state_ids: Vec<&String> = Vec::new();
    let mut seen: HashSet<&String> = HashSet::new();
    let required = &cfg.required;
    if initial {
        state_ids.extend(now.iter().filter(|((t, k), _)| required.matches(t, k)).map(|(_, id)| id));
    } else {
        let before = state_before(r, room, last.unwrap_or(-1))?;
        let old_required = sent.map(|s| s.required.clone()).unwrap_or_default();
        for ((t, k), id) in &now {
            if !required.matches(t, k) {
                continue;
            }
            if before.get(&(t.clone(), k.clone())) != Some(id) || !old_required.matches(t, k) {
                state_ids.push(id);
            }
        }
    }
    if required.lazy_members() {
        for row in &rows {
            if let Some(id) = now.get(&("m.room.member".to_owned(), row.sender.clone())) {
                state_ids.push(id);
            }
        }
    }
    let mut required_state = Vec::new();
    for id in state_ids {
        if !seen.insert(id) {
            continue;
        }
        if let Some(row) = r.event(id)? {
            required_state.push(raw(&client_event(&row, ctx.user.as_str(), None)?)?);
        }
    }

    let name = state_content(r, &now, "m.room.name")?
        .and_then(|c| c["name"].as_str().map(str::to_owned))
        .filter(|n| !n.is_empty());
    let avatar = state_content(r, &now, "m.room.avatar")?.and_then(|c| mxc(&c["url"]));
    let heroes = if name.is_none() { heroes(r, room, ctx.user.as_str())? } else { vec![] };
    let (joined_count, invited_count) = r.member_counts(room)?;
    let (notification_count, highlight_count) = if joined {
        let room_id = RoomId::parse(room).map_err(|e| Error::internal(e.to_string()))?;
        let counts = crate::push::counts::room_counts(r, ctx.rules, ctx.user, &room_id, ctx.counts_at)?.total();
        (counts.notify, counts.highlight)
    } else {
        (0, 0)
    };

    let timeline_ids = rows.iter().map(|e| e.event_id.clone()).collect();
    Ok(Built {
        room: Some(wire::Room {
            notification_count,
            highlight_count,
            bump_stamp: Some(c.bump.max(0) as u64),
            joined_count: Some(joined_count.max(0) as u64),
            invited_count: Some(invited_count.max(0) as u64),
            name,
            avatar,
            heroes,
            initial,
            unstable_expanded_timeline: expanded,
            required_state,
            timeline,
            limited: Some(limited),
            prev_batch: Some(prev_batch),
            num_live: Some(num_live),
            is_dm: c.is_dm,
            invite_state: None,
        }),
        sent: sent_now(upper),
        initial,
        timeline_ids,
    })
}

fn invited_room(c: &Candidate) -> Result<wire::Room> {
    let stripped = c.stripped.clone().unwrap_or_default();
    let mut by_type: HashMap<&str, &Value> = HashMap::new();
    for e in &stripped {
        if let (Some(t), Some("")) = (e["type"].as_str(), e["state_key"].as_str()) {
            by_type.insert(t, &e["content"]);
        }
    }
    let name = by_type.get("m.room.name").and_then(|c| c["name"].as_str()).filter(|n| !n.is_empty()).map(str::to_owned);
    let avatar = by_type.get("m.room.avatar").and_then(|c| mxc(&c["url"]));
    Ok(wire::Room {
        bump_stamp: Some(c.bump.max(0) as u64),
        name,
        avatar,
        initial: true,
        is_dm: c.is_dm,
        invite_state: Some(stripped.iter().map(raw).collect::<Result<_>>()?),
        ..Default::default()
    })
}

/// The room's state as the user may see it: now if joined, else as it was after their
/// membership changed.
fn state_at(r: &Reader<'_>, c: &Candidate, upper: i64) -> Result<StateMap> {
    if c.membership() == "join" {
        return Ok(r.current_state(&c.row.room_id)?);
    }
    match r.event(&c.row.membership_event)? {
        Some(ev) => Ok(r.state_group(ev.state_group)?),
        None => state_before(r, &c.row.room_id, upper),
    }
}

fn state_content(r: &Reader<'_>, state: &StateMap, kind: &str) -> Result<Option<Value>> {
    let Some(id) = state.get(&(kind.to_owned(), String::new())) else {
        return Ok(None);
    };
    let Some(row) = r.event(id)? else {
        return Ok(None);
    };
    let mut pdu: Value = serde_json::from_str(&row.pdu)?;
    Ok(Some(pdu["content"].take()))
}

fn mxc(v: &Value) -> Option<OwnedMxcUri> {
    v.as_str().filter(|s| s.starts_with("mxc://")).map(OwnedMxcUri::from)
}

fn heroes(r: &Reader<'_>, room: &str, user: &str) -> Result<Vec<wire::Hero>> {
    let mut out = Vec::new();
    for (uid, event_id) in r.hero_members(room, user, HEROES)? {
        let Ok(user_id) = OwnedUserId::try_from(uid.as_str()) else { continue };
        let content = match r.event(&event_id)? {
            Some(row) => serde_json::from_str::<Value>(&row.pdu)?["content"].take(),
            None => Value::Null,
        };
        out.push(wire::Hero {
            user_id,
            displayname: content["displayname"].as_str().map(str::to_owned),
            avatar_url: mxc(&content["avatar_url"]),
        });
    }
    Ok(out)
}

pub fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(v)?))
}
