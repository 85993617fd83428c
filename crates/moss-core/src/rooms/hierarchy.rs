//! `GET /rooms/{roomId}/hierarchy`: the rooms of a space, breadth first, as far as the user may
//! see them, rooms held only by other servers included (asked through `federation/spaces.rs`);
//! and the parts other servers' view is built from.

use std::collections::{HashSet, VecDeque};

use moss_storage::Reader;
use ruma::{RoomId, ServerName, UserId};
use serde_json::{json, Value};

use super::{directory::room_chunk, visibility::world_readable};
use crate::{
    error::{Error, Result},
    Moss,
};

/// Upper bounds that keep one request cheap whatever the space looks like.
const MAX_ROOMS: usize = 1000;
const MAX_DEPTH: u64 = 20;
/// Other servers asked per request (each answer also brings its children's summaries).
pub(crate) const MAX_REMOTE_ASKS: usize = 20;

/// What other servers said about rooms during one request: each room's summary (with
/// `children_state`) or `None` when it was not available.
#[derive(Default)]
pub(crate) struct RemoteSpaces {
    pub summaries: std::collections::HashMap<String, Option<Value>>,
    pub asked: usize,
}

pub struct HierarchyPage {
    pub rooms: Vec<Value>,
    pub next_batch: Option<String>,
}

/// Whether `user` may see a room's summary: they are in it (or invited), anyone may read or join
/// it, or its restricted join rule admits them.
fn can_preview(r: &Reader<'_>, room: &str, user: &str) -> Result<bool> {
    if r.room(room)?.is_none() {
        return Ok(false);
    }
    if matches!(r.membership(room, user)?.map(|m| m.membership).as_deref(), Some("join") | Some("invite")) {
        return Ok(true);
    }
    if world_readable(r, room)? {
        return Ok(true);
    }
    let Some(rules) = r.current_state_event(room, "m.room.join_rules", "")? else { return Ok(false) };
    let content = serde_json::from_str::<Value>(&rules.pdu)?["content"].clone();
    Ok(match content["join_rule"].as_str() {
        Some("public") | Some("knock") => true,
        Some("restricted") | Some("knock_restricted") => {
            content["allow"].as_array().into_iter().flatten().any(|a| {
                a["room_id"]
                    .as_str()
                    .is_some_and(|o| r.membership(o, user).ok().flatten().is_some_and(|m| m.membership == "join"))
            }) || content["join_rule"] == "knock_restricted"
        }
        _ => false,
    })
}

/// Whether a user of `server` could see or join the room from outside: anyone may (public,
/// knock, world-readable), the server already has a member in it, or a room its restricted join
/// rule names has one. The requesting server checks its own user's right for restricted rooms
/// with `allowed_room_ids`.
pub(crate) fn server_can_preview(r: &Reader<'_>, room: &str, server: &ServerName) -> Result<bool> {
    if r.room(room)?.is_none() {
        return Ok(false);
    }
    let has_member = |room: &str| -> Result<bool> {
        Ok(r.room_members(room)?
            .iter()
            .any(|m| m.membership == "join" && UserId::parse(&m.user_id).is_ok_and(|u| u.server_name() == server)))
    };
    if world_readable(r, room)? || has_member(room)? {
        return Ok(true);
    }
    let Some(rules) = r.current_state_event(room, "m.room.join_rules", "")? else { return Ok(false) };
    let content = serde_json::from_str::<Value>(&rules.pdu)?["content"].clone();
    Ok(match content["join_rule"].as_str() {
        Some("public") | Some("knock") | Some("knock_restricted") => true,
        Some("restricted") => allowed_rooms(&content).iter().any(|o| has_member(o).unwrap_or(false)),
        _ => false,
    })
}

/// The rooms a restricted join rule admits the members of.
fn allowed_rooms(join_rules: &Value) -> Vec<String> {
    join_rules["allow"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "m.room_membership")
        .filter_map(|a| a["room_id"].as_str().map(str::to_owned))
        .collect()
}

/// A room's summary for another server, with `allowed_room_ids` for a restricted room.
pub(crate) fn chunk_for_server(r: &Reader<'_>, room: &str) -> Result<Value> {
    let mut chunk = room_chunk(r, room)?;
    if let Some(rules) = r.current_state_event(room, "m.room.join_rules", "")? {
        let content = serde_json::from_str::<Value>(&rules.pdu)?["content"].clone();
        if matches!(content["join_rule"].as_str(), Some("restricted") | Some("knock_restricted")) {
            chunk["allowed_room_ids"] = json!(allowed_rooms(&content));
        }
    }
    Ok(chunk)
}

/// The `m.space.child` events of a room that point somewhere (non-empty `via`), stripped.
pub(crate) fn children(r: &Reader<'_>, room: &str, suggested_only: bool) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for ((kind, key), event_id) in r.current_state(room)? {
        if kind != "m.space.child" {
            continue;
        }
        let Some(row) = r.event(&event_id)? else { continue };
        let pdu: Value = serde_json::from_str(&row.pdu)?;
        let content = &pdu["content"];
        if content["via"].as_array().is_none_or(|v| v.is_empty()) || (suggested_only && content["suggested"] != true) {
            continue;
        }
        out.push(json!({
            "type": kind, "state_key": key, "content": content,
            "sender": pdu["sender"], "origin_server_ts": pdu["origin_server_ts"],
        }));
    }
    // Children order by their `order` string, then by room id (the spec's ordering).
    out.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["content"]["order"].as_str().map(str::to_owned).unwrap_or_else(|| "\u{10FFFF}".into()),
                v["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(out)
}

/// What one step of the walk learned about a room this server holds: its summary with
/// `children_state`, or that the user may not see it.
fn local_step(r: &Reader<'_>, room: &str, user: &str, suggested_only: bool) -> Result<Option<Value>> {
    if !can_preview(r, room, user)? {
        return Ok(None);
    }
    let mut chunk = room_chunk(r, room)?;
    chunk["children_state"] = json!(children(r, room, suggested_only)?);
    Ok(Some(chunk))
}

/// Whether the user may see a room only another server holds, from the summary it sent:
/// anyone may peek or join it, or its restricted rule admits members of a room the user is
/// joined to here.
fn may_see_remote(r: &Reader<'_>, chunk: &Value, user: &str) -> Result<bool> {
    if chunk["world_readable"] == true {
        return Ok(true);
    }
    Ok(match chunk["join_rule"].as_str() {
        Some("public") | Some("knock") | Some("knock_restricted") => true,
        Some("restricted") => {
            let mut admitted = false;
            for room in chunk["allowed_room_ids"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                admitted |= r.membership(room, user)?.is_some_and(|m| m.membership == "join");
            }
            admitted
        }
        _ => false,
    })
}

/// The servers a child event names to reach the child through.
fn via_of(child: &Value) -> Vec<String> {
    child["content"]["via"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

impl Moss {
    /// The space's rooms, breadth first. Rooms this server does not hold are asked of the
    /// servers their `m.space.child` event names (`/hierarchy` over federation, at most
    /// [`MAX_REMOTE_ASKS`] per request), and shown when the user could peek or join them.
    pub async fn hierarchy(
        &self,
        user: &UserId,
        root: &RoomId,
        from: Option<String>,
        limit: Option<u64>,
        max_depth: Option<u64>,
        suggested_only: bool,
    ) -> Result<HierarchyPage> {
        let offset = match &from {
            Some(t) => t
                .strip_prefix('h')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_param(format!("invalid from token {t:?}")))?,
            None => 0,
        };
        let limit = limit.unwrap_or(50).clamp(1, 200) as usize;
        let max_depth = max_depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH);
        let (root, u) = (root.to_string(), user.to_string());
        {
            let (root, u) = (root.clone(), u.clone());
            self.db
                .read(move |r| {
                    if r.room(&root)?.is_none() {
                        return Err(Error::not_found("unknown room"));
                    }
                    if !can_preview(r, &root, &u)? {
                        return Err(Error::forbidden("you cannot see this room"));
                    }
                    Ok(())
                })
                .await?;
        }
        let mut remote = RemoteSpaces::default();
        let mut seen = HashSet::from([root.clone()]);
        let mut queue = VecDeque::from([(root, 0u64, Vec::<String>::new())]);
        let mut rooms = Vec::new();
        while let Some((room, depth, via)) = queue.pop_front() {
            if rooms.len() >= offset + limit || rooms.len() >= MAX_ROOMS {
                queue.push_front((room, depth, via));
                break;
            }
            let (rm, u2) = (room.clone(), u.clone());
            let held = self
                .db
                .read(move |r| {
                    if r.room(&rm)?.is_none() {
                        return Ok::<_, Error>(None);
                    }
                    Ok(Some(local_step(r, &rm, &u2, suggested_only)?))
                })
                .await?;
            let chunk = match held {
                Some(Some(chunk)) => chunk,
                Some(None) => continue,
                None => {
                    let Some(chunk) = self.remote_space(&room, &via, suggested_only, &mut remote).await else {
                        continue;
                    };
                    let (c, u2) = (chunk.clone(), u.clone());
                    if !self.db.read(move |r| may_see_remote(r, &c, &u2)).await? {
                        continue;
                    }
                    chunk
                }
            };
            let kids: Vec<Value> = chunk["children_state"].as_array().cloned().unwrap_or_default();
            rooms.push(chunk);
            if depth >= max_depth {
                continue;
            }
            for kid in kids {
                let Some(id) = kid["state_key"].as_str() else { continue };
                if seen.insert(id.to_owned()) {
                    queue.push_back((id.to_owned(), depth + 1, via_of(&kid)));
                }
            }
        }
        let more = !queue.is_empty() && rooms.len() >= offset + limit;
        let page: Vec<Value> = rooms.into_iter().skip(offset).take(limit).collect();
        Ok(HierarchyPage { next_batch: more.then(|| format!("h{}", offset + page.len())), rooms: page })
    }
}
