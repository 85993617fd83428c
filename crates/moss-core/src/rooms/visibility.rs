//! History visibility: which events a user may see, per the room's `m.room.history_visibility`
//! and the user's membership at each event.

use std::collections::HashMap;

use moss_storage::{EventRow, Reader};

use crate::error::Result;

pub struct Visibility<'a, 'r> {
    r: &'a Reader<'r>,
    user: String,
    currently_joined: bool,
    /// Events at or after this stream position are visible without looking (the user has been
    /// joined since).
    joined_since: Option<i64>,
    /// The user's latest join, for "shared" history: a user who joined at any point after an
    /// event may see it, even after leaving.
    last_join: Option<i64>,
    by_group: HashMap<i64, bool>,
}

impl<'a, 'r> Visibility<'a, 'r> {
    pub fn new(r: &'a Reader<'r>, room_id: &str, user: &str) -> Result<Self> {
        let m = r.membership(room_id, user)?;
        let currently_joined = m.as_ref().is_some_and(|m| m.membership == "join");
        let last_join = if currently_joined { None } else { r.last_join_stream(room_id, user)? };
        Ok(Visibility {
            r,
            user: user.to_owned(),
            currently_joined,
            last_join,
            joined_since: m.filter(|m| m.membership == "join").map(|m| m.stream),
            by_group: HashMap::new(),
        })
    }

    pub fn can_see(&mut self, ev: &EventRow) -> Result<bool> {
        if self.joined_since.is_some_and(|s| ev.stream >= s) {
            return Ok(true);
        }
        if let Some(v) = self.by_group.get(&ev.state_group) {
            return Ok(*v);
        }
        let visibility = self.state_content(ev.state_group, "m.room.history_visibility", "", "history_visibility")?;
        let membership = self.state_content(ev.state_group, "m.room.member", &self.user.clone(), "membership")?;
        let visible = match (visibility.as_deref().unwrap_or("shared"), membership.as_deref()) {
            ("world_readable", _) => true,
            (_, Some("join")) => true,
            ("shared", _) => self.currently_joined || self.last_join.is_some_and(|j| j > ev.stream),
            ("invited", Some("invite")) => true,
            _ => false,
        };
        self.by_group.insert(ev.state_group, visible);
        Ok(visible)
    }

    fn state_content(&self, group: i64, kind: &str, state_key: &str, field: &str) -> Result<Option<String>> {
        let Some(event_id) = self.r.state_group_entry(group, kind, state_key)? else {
            return Ok(None);
        };
        let Some(row) = self.r.event(&event_id)? else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_str(&row.pdu)?;
        Ok(v["content"][field].as_str().map(str::to_owned))
    }
}

/// Whether anyone, member or not, may read the room (`world_readable`).
pub fn world_readable(r: &Reader<'_>, room_id: &str) -> Result<bool> {
    let Some(row) = r.current_state_event(room_id, "m.room.history_visibility", "")? else {
        return Ok(false);
    };
    let v: serde_json::Value = serde_json::from_str(&row.pdu)?;
    Ok(v["content"]["history_visibility"] == "world_readable")
}
