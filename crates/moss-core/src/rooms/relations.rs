//! Relations between events: `/relations`, `/threads`, and the bundled aggregations (thread
//! summary, latest edit, reaction counts, references) added to every event the server serves.

use moss_storage::{Direction, EventRow, Reader};
use ruma::{EventId, RoomId, UserId};
use serde_json::{json, Map, Value};

use super::{
    read::{client_event, parse_token, read_access, ReadAccess},
    visibility::Visibility,
};
use crate::{
    error::{Error, Result},
    Moss,
};

/// How far `recurse=true` follows relations of relations (the spec's suggested depth).
const MAX_RECURSION: u64 = 3;

pub struct RelationsPage {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub recursion_depth: Option<u64>,
}

pub struct ThreadsPage {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
}

/// An event as clients receive it, with its bundled aggregations.
pub fn served_event(r: &Reader<'_>, row: &EventRow, user: &str, device: Option<&str>) -> Result<Value> {
    let mut ev = client_event(row, user, device)?;
    bundle(r, row, user, &mut ev)?;
    Ok(ev)
}

/// Several events as clients get them, relations bundled; which of them have any is asked once
/// for all of them.
pub fn served_events<'e>(
    r: &Reader<'_>,
    rows: impl IntoIterator<Item = &'e EventRow>,
    user: &str,
    device: Option<&str>,
) -> Result<Vec<Value>> {
    let rows: Vec<&EventRow> = rows.into_iter().collect();
    let ids: Vec<&str> = rows.iter().filter(|e| e.redacted_by.is_none()).map(|e| e.event_id.as_str()).collect();
    let related = r.events_with_relations(&ids)?;
    rows.into_iter()
        .map(|row| {
            let mut ev = client_event(row, user, device)?;
            if row.redacted_by.is_none() && related.contains(&row.event_id) {
                bundle_related(r, row, user, &mut ev)?;
            }
            Ok(ev)
        })
        .collect()
}

fn bundle(r: &Reader<'_>, row: &EventRow, user: &str, ev: &mut Value) -> Result<()> {
    if row.redacted_by.is_some() || !r.has_relations(&row.event_id)? {
        return Ok(());
    }
    bundle_related(r, row, user, ev)
}

/// Adds the relations of an event that has some.
fn bundle_related(r: &Reader<'_>, row: &EventRow, user: &str, ev: &mut Value) -> Result<()> {
    let mut rel = Map::new();
    if let Some(t) = r.thread_summary(&row.event_id, user)? {
        if let Some(latest) = r.event_at(t.latest_stream)? {
            let mut latest_ev = client_event(&latest, user, None)?;
            add_edit(r, &latest, user, &mut latest_ev)?;
            rel.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest_ev,
                    "count": t.count,
                    "current_user_participated": t.user_participated || row.sender == user,
                }),
            );
        }
    }
    if row.state_key.is_none() {
        if let Some(edit) = r.latest_edit(&row.event_id, &row.sender)? {
            rel.insert("m.replace".into(), client_event(&edit, user, None)?);
        }
    }
    let annotations = r.annotations(&row.event_id)?;
    if !annotations.is_empty() {
        let chunk: Vec<Value> = annotations
            .into_iter()
            .map(|(kind, key, count)| json!({"type": kind, "key": key, "count": count}))
            .collect();
        rel.insert("m.annotation".into(), json!({ "chunk": chunk }));
    }
    let references = r.references(&row.event_id)?;
    if !references.is_empty() {
        let chunk: Vec<Value> = references.into_iter().map(|id| json!({ "event_id": id })).collect();
        rel.insert("m.reference".into(), json!({ "chunk": chunk }));
    }
    if !rel.is_empty() {
        if let Some(o) = ev.as_object_mut() {
            let unsigned = o.entry("unsigned").or_insert_with(|| json!({}));
            unsigned["m.relations"] = Value::Object(rel);
        }
    }
    Ok(())
}

fn add_edit(r: &Reader<'_>, row: &EventRow, user: &str, ev: &mut Value) -> Result<()> {
    if row.redacted_by.is_none() && row.state_key.is_none() {
        if let Some(edit) = r.latest_edit(&row.event_id, &row.sender)? {
            ev["unsigned"]["m.relations"]["m.replace"] = client_event(&edit, user, None)?;
        }
    }
    Ok(())
}

/// A pagination position in a relations or threads listing: `r<stream>` tokens we hand out are
/// exclusive; tokens from /sync or /messages are inclusive positions.
fn position(token: Option<&str>, dir: Direction) -> Result<Option<i64>> {
    let Some(t) = token else { return Ok(None) };
    if let Some(n) = t.strip_prefix('r') {
        return n.parse::<i64>().map(Some).map_err(|_| Error::invalid_param(format!("invalid token {t:?}")));
    }
    let n = parse_token(t)?;
    Ok(Some(match dir {
        Direction::Backward => n + 1,
        Direction::Forward => n,
    }))
}

fn cap_of(access: &ReadAccess) -> i64 {
    match access {
        ReadAccess::Current => i64::MAX,
        ReadAccess::UpTo(s) => *s,
    }
}

impl Moss {
    /// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`.
    #[allow(clippy::too_many_arguments)]
    pub async fn relations(
        &self,
        user: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        rel_type: Option<String>,
        event_type: Option<String>,
        from: Option<String>,
        to: Option<String>,
        dir: Direction,
        limit: Option<u64>,
        recurse: bool,
    ) -> Result<RelationsPage> {
        let (room, u, evid) = (room_id.to_string(), user.to_string(), event_id.to_string());
        let limit = limit.unwrap_or(50).clamp(1, 1000) as i64;
        self.db
            .read(move |r| {
                let access = read_access(r, &room, &u)?;
                let parent =
                    r.event(&evid)?.filter(|e| e.room_id == room).ok_or_else(|| Error::not_found("event not found"))?;
                let mut vis = Visibility::new(r, &room, &u)?;
                if !vis.can_see(&parent)? {
                    return Err(Error::not_found("event not found"));
                }
                let cap = cap_of(&access);
                let mut targets = vec![evid.clone()];
                let mut depth = 0;
                if recurse {
                    let mut frontier = targets.clone();
                    while depth < MAX_RECURSION && !frontier.is_empty() {
                        let children: Vec<String> = r
                            .relating_events(&frontier, None, None, None, None, Direction::Forward, 10_000, cap)?
                            .into_iter()
                            .map(|e| e.event_id)
                            .collect();
                        if children.is_empty() {
                            break;
                        }
                        depth += 1;
                        targets.extend(children.iter().cloned());
                        frontier = children;
                    }
                    // Relations of the deepest level point at events already listed.
                    targets.sort();
                    targets.dedup();
                }
                let from_pos = position(from.as_deref(), dir)?;
                let to_pos = position(to.as_deref(), dir)?;
                let rows = r.relating_events(
                    &targets,
                    rel_type.as_deref(),
                    event_type.as_deref(),
                    from_pos,
                    to_pos,
                    dir,
                    limit + 1,
                    cap,
                )?;
                let more = rows.len() as i64 > limit;
                let mut chunk = Vec::new();
                let mut last = None;
                for row in rows.into_iter().take(limit as usize) {
                    last = Some(row.stream);
                    if vis.can_see(&row)? {
                        chunk.push(served_event(r, &row, &u, None)?);
                    }
                }
                Ok(RelationsPage {
                    chunk,
                    next_batch: if more { last.map(|s| format!("r{s}")) } else { None },
                    prev_batch: from,
                    recursion_depth: recurse.then_some(depth),
                })
            })
            .await
    }

    /// `GET /rooms/{roomId}/threads`: thread roots by latest activity, newest first.
    pub async fn threads(
        &self,
        user: &UserId,
        room_id: &RoomId,
        participated_only: bool,
        from: Option<String>,
        limit: Option<u64>,
    ) -> Result<ThreadsPage> {
        let (room, u) = (room_id.to_string(), user.to_string());
        let limit = limit.unwrap_or(50).clamp(1, 500) as i64;
        self.db
            .read(move |r| {
                let access = read_access(r, &room, &u)?;
                let before = position(from.as_deref(), Direction::Backward)?.unwrap_or(i64::MAX);
                let participant = participated_only.then_some(u.as_str());
                let roots = r.thread_roots(&room, participant, before, cap_of(&access), limit + 1)?;
                let more = roots.len() as i64 > limit;
                let mut vis = Visibility::new(r, &room, &u)?;
                let mut chunk = Vec::new();
                let mut last = None;
                for (root, latest) in roots.into_iter().take(limit as usize) {
                    last = Some(latest);
                    let Some(row) = r.event(&root)?.filter(|e| e.room_id == room) else { continue };
                    if vis.can_see(&row)? {
                        chunk.push(served_event(r, &row, &u, None)?);
                    }
                }
                Ok(ThreadsPage { chunk, next_batch: if more { last.map(|s| format!("r{s}")) } else { None } })
            })
            .await
    }
}
