//! Applying client event filters (ruma's filter types) to events.

use ruma::api::client::filter::{FilterDefinition, RoomEventFilter};
use serde_json::Value;

use crate::glob::Glob;

/// Most patterns (types, senders, rooms) one filter list may hold, and the longest pattern:
/// every event a request reads is checked against each of them.
pub const MAX_FILTER_ENTRIES: usize = 1000;
pub const MAX_PATTERN_LEN: usize = 1024;

/// A room event filter with its type patterns compiled once, for matching many events.
pub struct EventFilter<'a> {
    filter: &'a RoomEventFilter,
    types: Option<Vec<Glob>>,
    not_types: Vec<Glob>,
}

impl<'a> EventFilter<'a> {
    pub fn new(filter: &'a RoomEventFilter) -> EventFilter<'a> {
        EventFilter {
            filter,
            types: filter.types.as_ref().map(|t| t.iter().map(|p| Glob::new(p)).collect()),
            not_types: filter.not_types.iter().map(|p| Glob::new(p)).collect(),
        }
    }

    /// Whether an event (in client format) passes.
    pub fn matches(&self, ev: &Value) -> bool {
        let f = self.filter;
        let kind = ev["type"].as_str().unwrap_or_default();
        let sender = ev["sender"].as_str().unwrap_or_default();
        if self.not_types.iter().any(|t| t.matches(kind)) {
            return false;
        }
        if let Some(types) = &self.types {
            if !types.iter().any(|t| t.matches(kind)) {
                return false;
            }
        }
        if f.not_senders.iter().any(|s| s.as_str() == sender) {
            return false;
        }
        if let Some(senders) = &f.senders {
            if !senders.iter().any(|s| s.as_str() == sender) {
                return false;
            }
        }
        if let Some(url) = &f.url_filter {
            let has_url = ev["content"]["url"].is_string();
            let want = matches!(url, ruma::api::client::filter::UrlFilter::EventsWithUrl);
            if has_url != want {
                return false;
            }
        }
        true
    }
}

/// Refuses a filter whose lists are longer or patterns longer than the limits above.
pub fn check_room_event_filter(f: &RoomEventFilter) -> crate::error::Result<()> {
    let lists: [usize; 6] = [
        f.types.as_ref().map_or(0, Vec::len),
        f.not_types.len(),
        f.senders.as_ref().map_or(0, Vec::len),
        f.not_senders.len(),
        f.rooms.as_ref().map_or(0, Vec::len),
        f.not_rooms.len(),
    ];
    if lists.iter().any(|n| *n > MAX_FILTER_ENTRIES) {
        return Err(crate::error::Error::invalid_param(format!(
            "a filter list may hold at most {MAX_FILTER_ENTRIES} entries"
        )));
    }
    let patterns = f.types.iter().flatten().chain(&f.not_types);
    if patterns.into_iter().any(|p| p.len() > MAX_PATTERN_LEN) {
        return Err(crate::error::Error::invalid_param(format!(
            "a filter pattern may be at most {MAX_PATTERN_LEN} bytes long"
        )));
    }
    Ok(())
}

/// [`check_room_event_filter`] for every part of a filter definition.
pub fn check_filter(f: &FilterDefinition) -> crate::error::Result<()> {
    for part in [&f.room.timeline, &f.room.state, &f.room.ephemeral, &f.room.account_data] {
        check_room_event_filter(part)?;
    }
    let lists = [
        f.room.rooms.as_ref().map_or(0, Vec::len),
        f.room.not_rooms.len(),
        f.presence.types.as_ref().map_or(0, Vec::len),
        f.presence.not_types.len(),
        f.account_data.types.as_ref().map_or(0, Vec::len),
        f.account_data.not_types.len(),
        f.event_fields.as_ref().map_or(0, Vec::len),
    ];
    if lists.iter().any(|n| *n > MAX_FILTER_ENTRIES) {
        return Err(crate::error::Error::invalid_param(format!(
            "a filter list may hold at most {MAX_FILTER_ENTRIES} entries"
        )));
    }
    Ok(())
}

pub fn room_allowed(f: &FilterDefinition, room_id: &str) -> bool {
    if f.room.not_rooms.iter().any(|r| r.as_str() == room_id) {
        return false;
    }
    f.room.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == room_id))
}

pub fn lazy_load(f: &RoomEventFilter) -> bool {
    !f.lazy_load_options.is_disabled()
}
