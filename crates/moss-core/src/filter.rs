//! Applying client event filters (ruma's filter types) to events.

use ruma::api::client::filter::{FilterDefinition, RoomEventFilter};
use serde_json::Value;

/// `*` matches any run of characters, as the spec's filter type patterns allow.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            if !s.starts_with(head) {
                return false;
            }
            let rest = &s[head.len()..];
            (0..=rest.len()).filter(|i| rest.is_char_boundary(*i)).any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// Whether an event (in client format) passes a room event filter.
pub fn matches(f: &RoomEventFilter, ev: &Value) -> bool {
    let kind = ev["type"].as_str().unwrap_or_default();
    let sender = ev["sender"].as_str().unwrap_or_default();
    if f.not_types.iter().any(|t| glob(t, kind)) {
        return false;
    }
    if let Some(types) = &f.types {
        if !types.iter().any(|t| glob(t, kind)) {
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

pub fn room_allowed(f: &FilterDefinition, room_id: &str) -> bool {
    if f.room.not_rooms.iter().any(|r| r.as_str() == room_id) {
        return false;
    }
    f.room.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == room_id))
}

pub fn lazy_load(f: &RoomEventFilter) -> bool {
    !f.lazy_load_options.is_disabled()
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("m.*", "m.room.message"));
        assert!(glob("m.room.message", "m.room.message"));
        assert!(!glob("m.room.message", "m.room.messages"));
        assert!(glob("*", ""));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abcd"));
    }
}
