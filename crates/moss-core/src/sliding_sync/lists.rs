//! Which rooms a user's lists hold: every room the user may see in a list (joined, invited,
//! knocked, banned, kicked, and left by themselves only if that is news to the connection),
//! filtered as each list asks, ordered by bump stamp (the stream position of the latest event
//! that moves a room up: messages, not reactions or state), newest first.

use std::collections::{HashMap, HashSet};

use moss_storage::{Reader, SlidingRoomRow};
use ruma::{api::client::sync::sync_events::v5::request::ListFilters, OwnedRoomId, UserId};
use serde_json::Value;

use crate::{sync::stripped_state, Result};

/// Most lists one request may have, ranges per list, and rooms one response may window.
pub const MAX_LISTS: usize = 64;
pub const MAX_RANGES: usize = 64;

pub struct Candidate {
    pub room_id: OwnedRoomId,
    pub row: SlidingRoomRow,
    pub bump: i64,
    pub is_dm: bool,
    pub encrypted: bool,
    pub room_type: Option<String>,
    /// For invites and knocks: the stripped state the user sees of the room.
    pub stripped: Option<Vec<Value>>,
}

impl Candidate {
    pub fn membership(&self) -> &str {
        &self.row.membership
    }
}

/// Every room the user may see in a list. `from` is the stream position the connection was at:
/// a room the user left themselves appears only if they left after it.
pub fn candidates(r: &Reader<'_>, user: &UserId, from: Option<i64>) -> Result<Vec<Candidate>> {
    let u = user.as_str();
    let ignored = crate::user_data::ignored_users(r, u)?;
    let direct = direct_rooms(r, u)?;
    let rows = r.sliding_rooms(u)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(room_id) = OwnedRoomId::try_from(row.room_id.as_str()) else { continue };
        let by_self = row.membership_sender.as_deref() == Some(u);
        let include = match row.membership.as_str() {
            "join" | "ban" => true,
            "invite" => !row.membership_sender.as_ref().is_some_and(|s| ignored.contains(s)),
            "knock" => true,
            "leave" => !by_self || from.is_some_and(|f| row.membership_stream > f),
            _ => false,
        };
        if !include {
            continue;
        }
        let (stripped, bump) = match row.membership.as_str() {
            "invite" | "knock" => (Some(invite_state(r, &row, u)?), row.membership_stream),
            "join" => (None, row.bump_stream.unwrap_or(row.membership_stream)),
            // Someone who left sees the room as it was when they left.
            _ => {
                let bump = match row.bump_stream {
                    Some(b) if b <= row.membership_stream => b,
                    _ => r.bump_stream_at(&row.room_id, row.membership_stream)?.unwrap_or(row.membership_stream),
                };
                (None, bump)
            }
        };
        let mut c = Candidate {
            is_dm: direct.contains(row.room_id.as_str()),
            encrypted: row.encrypted,
            room_type: row.room_type.clone(),
            room_id,
            bump,
            stripped,
            row,
        };
        if let Some(stripped) = &c.stripped {
            let (encrypted, room_type, is_direct) = from_stripped(stripped, u);
            c.encrypted |= encrypted;
            if !c.row.known {
                c.room_type = room_type;
            }
            c.is_dm |= is_direct;
        }
        out.push(c);
    }
    out.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(out)
}

/// The state an invitee or knocker sees: what the room's server sent with a remote invite, or
/// the stripped state of a room known here.
fn invite_state(r: &Reader<'_>, row: &SlidingRoomRow, user: &str) -> Result<Vec<Value>> {
    Ok(match r.remote_invite(&row.room_id, user)? {
        Some(inv) => serde_json::from_str::<Vec<Value>>(&inv.invite_state)?,
        None => stripped_state(r, &row.room_id, &row.membership_event)?,
    })
}

/// `(encrypted, room type, invited as a direct chat)` from stripped state.
fn from_stripped(events: &[Value], user: &str) -> (bool, Option<String>, bool) {
    let mut out = (false, None, false);
    for e in events {
        match (e["type"].as_str(), e["state_key"].as_str()) {
            (Some("m.room.encryption"), Some("")) => out.0 = true,
            (Some("m.room.create"), Some("")) => out.1 = e["content"]["type"].as_str().map(str::to_owned),
            (Some("m.room.member"), Some(k)) if k == user => {
                out.2 = e["content"]["is_direct"].as_bool().unwrap_or(false)
            }
            _ => {}
        }
    }
    out
}

/// Rooms named in the user's `m.direct` account data.
fn direct_rooms(r: &Reader<'_>, user: &str) -> Result<HashSet<String>> {
    let Some(content) = r.account_data(user, "", "m.direct")? else {
        return Ok(HashSet::new());
    };
    let map: HashMap<String, Value> = serde_json::from_str(&content).unwrap_or_default();
    Ok(map.values().filter_map(Value::as_array).flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect())
}

/// Answers `spaces` filters, reading each space's children once per request.
#[derive(Default)]
pub struct SpaceChildren(HashMap<String, HashSet<String>>);

impl SpaceChildren {
    fn of(&mut self, r: &Reader<'_>, space: &str) -> Result<&HashSet<String>> {
        if !self.0.contains_key(space) {
            let children = r.space_children(space)?.into_iter().collect();
            self.0.insert(space.to_owned(), children);
        }
        Ok(self.0.get(space).unwrap_or_else(|| unreachable_empty()))
    }
}

fn unreachable_empty() -> &'static HashSet<String> {
    static EMPTY: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(HashSet::new)
}

/// Whether a room passes a list's filters (all of them: absent ones do not filter).
/// `in_spaces` is the list's `spaces` filter (ruma 0.17's `ListFilters` has no field for it).
pub fn passes(
    r: &Reader<'_>,
    c: &Candidate,
    f: &ListFilters,
    in_spaces: Option<&[String]>,
    spaces: &mut SpaceChildren,
) -> Result<bool> {
    if f.is_dm.is_some_and(|want| want != c.is_dm)
        || f.is_encrypted.is_some_and(|want| want != c.encrypted)
        || f.is_invite.is_some_and(|want| want != (c.membership() == "invite"))
    {
        return Ok(false);
    }
    let ty = c.room_type.as_deref();
    if !f.room_types.is_empty() && !f.room_types.iter().any(|t| t.as_str() == ty) {
        return Ok(false);
    }
    if f.not_room_types.iter().any(|t| t.as_str() == ty) {
        return Ok(false);
    }
    if let Some(list) = in_spaces {
        let mut found = false;
        for space in list {
            if spaces.of(r, space)?.contains(c.room_id.as_str()) {
                found = true;
                break;
            }
        }
        if !found {
            return Ok(false);
        }
    }
    Ok(true)
}
