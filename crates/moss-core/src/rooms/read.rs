//! Reading rooms: single events, state, members, history (`/messages`, `/context`) and
//! `timestamp_to_event`. Every read goes through history visibility.

use moss_storage::{Direction, EventRow, Reader};
use ruma::{api::client::filter::RoomEventFilter, EventId, MilliSecondsSinceUnixEpoch, RoomId, UserId};
use serde_json::Value;

use super::{
    pdu::Pdu,
    relations::served_event,
    visibility::{world_readable, Visibility},
};
use crate::{
    error::{Error, Result},
    filter, Moss,
};

/// Pagination tokens are stream positions: `t<N>` sits just after the event at stream N. Sync
/// tokens (`s<N>_<typing>`) are accepted too.
pub fn parse_token(token: &str) -> Result<i64> {
    // Backfilled history sits at negative positions, so `t` tokens may be negative; sync tokens
    // never are.
    let n = match token.strip_prefix('t') {
        Some(n) => n.parse::<i64>().ok(),
        None => token.strip_prefix('s').and_then(|s| s.split('_').next()).and_then(|n| n.parse::<i64>().ok()),
    }
    .filter(|n| *n >= 0 || token.starts_with('t'));
    n.ok_or_else(|| Error::invalid_param(format!("invalid pagination token {token:?}")))
}

pub fn token(stream: i64) -> String {
    format!("t{stream}")
}

/// An event in client format, with `transaction_id` for the device that sent it.
pub fn client_event(row: &EventRow, user: &str, device: Option<&str>) -> Result<Value> {
    let pdu = Pdu::from_stored(&row.event_id, &row.pdu)?;
    let txn = match (&row.txn_user, &row.txn_device, device) {
        (Some(u), Some(d), Some(dev)) if u == user && d == dev => row.txn_id.as_deref(),
        _ => None,
    };
    let room_id = RoomId::parse(&row.room_id).map_err(|e| Error::internal(e.to_string()))?;
    Ok(pdu.to_client(&room_id, MilliSecondsSinceUnixEpoch::now(), txn))
}

/// How a user may read a room: its current state if joined, the state when they left if they
/// were once in it, or the current state of a world-readable room.
pub(crate) enum ReadAccess {
    Current,
    UpTo(i64),
}

pub(crate) fn read_access(r: &Reader<'_>, room_id: &str, user: &str) -> Result<ReadAccess> {
    if r.room(room_id)?.is_none() {
        return Err(Error::forbidden("unknown room, or you may not read it"));
    }
    match r.membership(room_id, user)? {
        Some(m) if m.membership == "join" => Ok(ReadAccess::Current),
        _ if world_readable(r, room_id)? => Ok(ReadAccess::Current),
        Some(m) if m.membership == "leave" || m.membership == "ban" => Ok(ReadAccess::UpTo(m.stream)),
        _ => Err(Error::forbidden("you are not in this room")),
    }
}

fn state_at(r: &Reader<'_>, room_id: &str, access: &ReadAccess) -> Result<moss_storage::StateMap> {
    match access {
        ReadAccess::Current => Ok(r.current_state(room_id)?),
        ReadAccess::UpTo(stream) => match r.last_event_at(room_id, *stream)? {
            Some(ev) => Ok(r.state_group(ev.state_group)?),
            None => Ok(Default::default()),
        },
    }
}

pub struct MessagesPage {
    pub chunk: Vec<Value>,
    pub start: String,
    pub end: Option<String>,
    pub state: Vec<Value>,
}

pub struct Context {
    pub event: Value,
    pub events_before: Vec<Value>,
    pub events_after: Vec<Value>,
    pub start: String,
    pub end: String,
    pub state: Vec<Value>,
}

impl Moss {
    pub async fn get_event(&self, user: &UserId, device: &str, room_id: &RoomId, event_id: &EventId) -> Result<Value> {
        let (room, u, d, ev) = (room_id.to_string(), user.to_string(), device.to_owned(), event_id.to_string());
        self.db
            .read(move |r| {
                read_access(r, &room, &u)?;
                let row =
                    r.event(&ev)?.filter(|e| e.room_id == room).ok_or_else(|| Error::not_found("event not found"))?;
                if !Visibility::new(r, &room, &u)?.can_see(&row)? {
                    return Err(Error::not_found("event not found"));
                }
                served_event(r, &row, &u, Some(&d))
            })
            .await
    }

    pub async fn room_state(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<Value>> {
        let (room, u) = (room_id.to_string(), user.to_string());
        self.db
            .read(move |r| {
                let access = read_access(r, &room, &u)?;
                let mut out = Vec::new();
                for ev in state_at(r, &room, &access)?.values() {
                    if let Some(row) = r.event(ev)? {
                        out.push(client_event(&row, &u, None)?);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// One state event's content; `M_NOT_FOUND` if unset.
    pub async fn state_event(&self, user: &UserId, room_id: &RoomId, kind: &str, state_key: &str) -> Result<Value> {
        let (room, u, k, sk) = (room_id.to_string(), user.to_string(), kind.to_owned(), state_key.to_owned());
        self.db
            .read(move |r| {
                let access = read_access(r, &room, &u)?;
                let state = state_at(r, &room, &access)?;
                let id = state.get(&(k, sk)).ok_or_else(|| Error::not_found("no such state event"))?;
                let row = r.event(id)?.ok_or_else(|| Error::not_found("no such state event"))?;
                client_event(&row, &u, None)
            })
            .await
    }

    /// `/members`: member events at `at` (a token) or now, filtered by membership.
    pub async fn members(
        &self,
        user: &UserId,
        room_id: &RoomId,
        at: Option<String>,
        membership: Option<String>,
        not_membership: Option<String>,
    ) -> Result<Vec<Value>> {
        let (room, u) = (room_id.to_string(), user.to_string());
        self.db
            .read(move |r| {
                let mut access = read_access(r, &room, &u)?;
                if let Some(at) = at {
                    let pos = parse_token(&at)?;
                    access = match access {
                        ReadAccess::UpTo(s) => ReadAccess::UpTo(s.min(pos)),
                        ReadAccess::Current => ReadAccess::UpTo(pos),
                    };
                }
                let state = state_at(r, &room, &access)?;
                let mut out = Vec::new();
                for ((kind, _), ev) in &state {
                    if kind != "m.room.member" {
                        continue;
                    }
                    let Some(row) = r.event(ev)? else { continue };
                    let ev = client_event(&row, &u, None)?;
                    let m = ev["content"]["membership"].as_str().unwrap_or_default();
                    if membership.as_deref().is_some_and(|want| want != m) || not_membership.as_deref() == Some(m) {
                        continue;
                    }
                    out.push(ev);
                }
                Ok(out)
            })
            .await
    }

    /// `/joined_members`: user id → (display name, avatar url).
    pub async fn joined_members(
        &self,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<Vec<(String, Option<String>, Option<String>)>> {
        self.require_joined(user, room_id).await?;
        let room = room_id.to_string();
        self.db
            .read(move |r| {
                let mut out = Vec::new();
                for m in r.room_members(&room)?.into_iter().filter(|m| m.membership == "join") {
                    let Some(row) = r.event(&m.event_id)? else {
                        continue;
                    };
                    let v: Value = serde_json::from_str(&row.pdu)?;
                    let s = |f: &str| v["content"][f].as_str().map(str::to_owned);
                    out.push((m.user_id, s("displayname"), s("avatar_url")));
                }
                Ok(out)
            })
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn messages(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        from: Option<String>,
        to: Option<String>,
        dir: Direction,
        limit: usize,
        filter: RoomEventFilter,
    ) -> Result<MessagesPage> {
        let (room, u, d) = (room_id.to_string(), user.to_string(), device.to_owned());
        let limit = limit.clamp(1, 1000);
        filter::check_room_event_filter(&filter)?;
        if dir == Direction::Backward {
            // History before this server joined lives on other servers until fetched.
            let at = match &from {
                Some(t) => parse_token(t)?,
                None => i64::MAX,
            };
            self.backfill_for_page(room_id, at, limit).await;
        }
        self.db
            .read(move |r| {
                let access = read_access(r, &room, &u)?;
                let cap = match access {
                    ReadAccess::Current => i64::MAX,
                    ReadAccess::UpTo(s) => s,
                };
                let mut pos = match (&from, dir) {
                    (Some(t), _) => parse_token(t)?,
                    (None, Direction::Backward) => r.current_stream()?,
                    (None, Direction::Forward) => 0,
                };
                let to = to.as_deref().map(parse_token).transpose()?;
                // The spec has `start` echo `from` exactly, whatever form of token it was.
                let start = from.clone().unwrap_or_else(|| token(pos));
                if dir == Direction::Backward {
                    pos = pos.min(cap);
                }
                let mut vis = Visibility::new(r, &room, &u)?;
                let ignored = crate::user_data::ignored_users(r, &u)?;
                let mut chunk = Vec::new();
                let mut exhausted = false;
                let matcher = filter::EventFilter::new(&filter);
                // Filtered-out events still advance the position, so fetch in batches; a page
                // reads at most MAX_SCAN events, and a filter that matches little gets a short
                // (even empty) page with an `end` to go on from.
                let mut scanned = 0;
                while chunk.len() < limit && !exhausted && scanned < MAX_SCAN {
                    let batch = r.room_events(&room, pos, to, dir, (limit * 2).min(MAX_SCAN - scanned) as i64)?;
                    if batch.len() < (limit * 2).min(MAX_SCAN - scanned) {
                        exhausted = true;
                    }
                    scanned += batch.len();
                    for row in batch {
                        if dir == Direction::Forward && row.stream > cap {
                            exhausted = true;
                            break;
                        }
                        pos = match dir {
                            Direction::Backward => row.stream - 1,
                            Direction::Forward => row.stream,
                        };
                        if !vis.can_see(&row)? || (row.state_key.is_none() && ignored.contains(&row.sender)) {
                            continue;
                        }
                        let ev = served_event(r, &row, &u, Some(&d))?;
                        if matcher.matches(&ev) {
                            chunk.push(ev);
                            if chunk.len() == limit {
                                break;
                            }
                        }
                    }
                }
                let end = if exhausted && chunk.len() < limit { None } else { Some(token(pos)) };
                let state = if filter::lazy_load(&filter) { lazy_members(r, &room, &u, &chunk)? } else { vec![] };
                Ok(MessagesPage { chunk, start, end, state })
            })
            .await
    }

    pub async fn context(
        &self,
        user: &UserId,
        device: &str,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: RoomEventFilter,
    ) -> Result<Context> {
        let (room, u, d, evid) = (room_id.to_string(), user.to_string(), device.to_owned(), event_id.to_string());
        let limit = limit.min(100);
        filter::check_room_event_filter(&filter)?;
        self.db
            .read(move |r| {
                read_access(r, &room, &u)?;
                let row =
                    r.event(&evid)?.filter(|e| e.room_id == room).ok_or_else(|| Error::not_found("event not found"))?;
                let mut vis = Visibility::new(r, &room, &u)?;
                if !vis.can_see(&row)? {
                    return Err(Error::not_found("event not found"));
                }
                let matcher = filter::EventFilter::new(&filter);
                let before_n = limit / 2;
                let after_n = limit - before_n;
                let mut before = Vec::new();
                let mut start = row.stream - 1;
                for e in r.room_events(&room, row.stream - 1, None, Direction::Backward, before_n as i64)? {
                    start = e.stream - 1;
                    if vis.can_see(&e)? {
                        let ev = served_event(r, &e, &u, Some(&d))?;
                        if matcher.matches(&ev) {
                            before.push(ev);
                        }
                    }
                }
                let mut after = Vec::new();
                let mut end = row.stream;
                for e in r.room_events(&room, row.stream, None, Direction::Forward, after_n as i64)? {
                    end = e.stream;
                    if vis.can_see(&e)? {
                        let ev = served_event(r, &e, &u, Some(&d))?;
                        if matcher.matches(&ev) {
                            after.push(ev);
                        }
                    }
                }
                let event = served_event(r, &row, &u, Some(&d))?;
                let state = if filter::lazy_load(&filter) {
                    let mut all = before.clone();
                    all.push(event.clone());
                    all.extend(after.iter().cloned());
                    lazy_members(r, &room, &u, &all)?
                } else {
                    let mut state = Vec::new();
                    for id in r.state_group(row.state_group)?.values() {
                        if let Some(s) = r.event(id)? {
                            state.push(client_event(&s, &u, None)?);
                        }
                    }
                    state
                };
                Ok(Context {
                    event,
                    events_before: before,
                    events_after: after,
                    start: token(start),
                    end: token(end),
                    state,
                })
            })
            .await
    }

    pub async fn timestamp_to_event(
        &self,
        user: &UserId,
        room_id: &RoomId,
        ts: u64,
        dir: Direction,
    ) -> Result<(String, u64)> {
        let (room, u) = (room_id.to_string(), user.to_string());
        self.db
            .read(move |r| {
                read_access(r, &room, &u)?;
                let mut vis = Visibility::new(r, &room, &u)?;
                match r.event_near_ts(&room, ts as i64, dir)? {
                    Some(row) if vis.can_see(&row)? => Ok((row.event_id, row.origin_server_ts as u64)),
                    _ => Err(Error::not_found("no event found in that direction")),
                }
            })
            .await
    }
}

/// Most events one `/messages` page reads, whatever its filter lets through.
const MAX_SCAN: usize = 2000;

/// The member events of the senders of `events`, for lazy-loading clients.
pub fn lazy_members(r: &Reader<'_>, room: &str, user: &str, events: &[Value]) -> Result<Vec<Value>> {
    let mut senders: Vec<&str> = events.iter().filter_map(|e| e["sender"].as_str()).collect();
    senders.sort();
    senders.dedup();
    let mut out = Vec::new();
    for s in senders {
        if let Some(row) = r.current_state_event(room, "m.room.member", s)? {
            out.push(client_event(&row, user, None)?);
        }
    }
    Ok(out)
}
