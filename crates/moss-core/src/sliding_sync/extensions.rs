//! The extensions of a response: to-device messages (with their own `since`, MSC3885), end-to-end
//! encryption (device-list changes, one-time-key counts, fallback key types, MSC3884), account
//! data, receipts (MSC3960) and typing. Each per-room extension covers the rooms its `lists` and
//! `rooms` name (by default every list and every subscription); a room sent whole in this
//! response gets its receipts and account data whole too.

use std::collections::{BTreeMap, HashMap, HashSet};

use moss_storage::{Reader, ReceiptRow};
use ruma::{
    api::client::sync::sync_events::{
        v5::request::{self, ExtensionRoomConfig},
        DeviceLists,
    },
    events::receipt::{Receipt, ReceiptEventContent, ReceiptThread, ReceiptType},
    push::Ruleset,
    MilliSecondsSinceUnixEpoch, OneTimeKeyAlgorithm, OwnedEventId, OwnedRoomId, OwnedUserId, UInt, UserId,
};
use serde_json::{json, Value};

use super::{room::raw, wire};
use crate::Result;

/// To-device messages per response when the client names no limit, and the most it may ask.
const TO_DEVICE_DEFAULT: u64 = 100;
const TO_DEVICE_MAX: u64 = 1000;

/// The rooms a per-room extension covers.
pub fn scope(
    lists: Option<&Vec<String>>,
    rooms: Option<&Vec<ExtensionRoomConfig>>,
    windows: &BTreeMap<String, Vec<OwnedRoomId>>,
    subscribed: &[OwnedRoomId],
    visible: &dyn Fn(&OwnedRoomId) -> bool,
) -> Vec<OwnedRoomId> {
    let mut out: Vec<OwnedRoomId> = Vec::new();
    match lists {
        None => out.extend(windows.values().flatten().cloned()),
        Some(names) => {
            for n in names {
                out.extend(windows.get(n).into_iter().flatten().cloned());
            }
        }
    }
    match rooms {
        None => out.extend(subscribed.iter().cloned()),
        Some(configs) => {
            for c in configs {
                match c {
                    ExtensionRoomConfig::AllSubscribed => out.extend(subscribed.iter().cloned()),
                    ExtensionRoomConfig::Room(id) if visible(id) => out.push(id.clone()),
                    _ => {}
                }
            }
        }
    }
    let mut seen = HashSet::new();
    out.retain(|r| seen.insert(r.clone()));
    out
}

pub fn enabled(e: Option<bool>) -> bool {
    e == Some(true)
}

/// The to-device position a request's `since` names (`-1`: from the start of the queue).
pub fn to_device_since(cfg: &request::ToDevice) -> i64 {
    cfg.since.as_deref().and_then(|s| s.parse::<i64>().ok()).filter(|s| *s >= 0).unwrap_or(-1)
}

pub fn to_device(
    r: &Reader<'_>,
    user: &str,
    device: &str,
    cfg: &request::ToDevice,
    current: i64,
) -> Result<wire::ToDevice> {
    let since = to_device_since(cfg).min(current);
    let limit = cfg.limit.map(u64::from).unwrap_or(TO_DEVICE_DEFAULT).clamp(1, TO_DEVICE_MAX);
    let messages = r.to_device_messages(user, device, since, limit as i64)?;
    let next = match messages.last() {
        Some(last) if messages.len() as u64 == limit => last.stream,
        _ => current.max(since),
    };
    let events = messages
        .iter()
        .map(|m| {
            raw(&json!({"sender": m.sender, "type": m.kind, "content": serde_json::from_str::<Value>(&m.content)?}))
        })
        .collect::<Result<_>>()?;
    Ok(wire::ToDevice { next_batch: next.to_string(), events })
}

pub fn e2ee(r: &Reader<'_>, user: &str, device: &str, from: Option<i64>, current: i64) -> Result<wire::E2ee> {
    let mut counts = BTreeMap::new();
    counts.insert(OneTimeKeyAlgorithm::SignedCurve25519, 0);
    for (algorithm, n) in r.one_time_key_counts(user, device)? {
        counts.insert(OneTimeKeyAlgorithm::from(algorithm.as_str()), n.max(0) as u64);
    }
    let fallback =
        r.unused_fallback_key_types(user, device)?.iter().map(|a| OneTimeKeyAlgorithm::from(a.as_str())).collect();
    let mut device_lists = DeviceLists::new();
    if let Some(from) = from {
        let delta = crate::e2ee::device_lists::delta(r, user, from, current)?;
        device_lists.changed = delta.changed.iter().filter_map(|u| OwnedUserId::try_from(u.as_str()).ok()).collect();
        device_lists.left = delta.left.iter().filter_map(|u| OwnedUserId::try_from(u.as_str()).ok()).collect();
    }
    Ok(wire::E2ee { device_one_time_keys_count: counts, device_unused_fallback_key_types: fallback, device_lists })
}

/// Global account data changed since `from` (all of it on a new connection, with the default
/// push rules if the user never set any), and the scoped rooms' (whole for rooms sent whole).
pub fn account_data(
    r: &Reader<'_>,
    user: &UserId,
    from: Option<i64>,
    rooms: &[OwnedRoomId],
    initial_rooms: &HashSet<OwnedRoomId>,
) -> Result<wire::AccountData> {
    let u = user.as_str();
    let since = r.account_data_since(u, from.unwrap_or(-1))?;
    let mut out = wire::AccountData::default();
    let mut saw_push_rules = false;
    for a in since.iter().filter(|a| a.room_id.is_empty()) {
        saw_push_rules |= a.kind == crate::user_data::PUSH_RULES;
        out.global.push(raw(&json!({"type": a.kind, "content": serde_json::from_str::<Value>(&a.content)?}))?);
    }
    if from.is_none() && !saw_push_rules && r.account_data(u, "", crate::user_data::PUSH_RULES)?.is_none() {
        out.global.push(raw(&json!({"type": "m.push_rules", "content": {"global": Ruleset::server_default(user)}}))?);
    }
    let whole = if from.is_some() && rooms.iter().any(|r| initial_rooms.contains(r)) {
        r.account_data_since(u, -1)?
    } else {
        vec![]
    };
    // room -> type -> content, from `whole` for rooms sent whole, else from `since`.
    let mut index: HashMap<(bool, &str), BTreeMap<&str, &str>> = HashMap::new();
    for (is_whole, rows) in [(false, &since), (true, &whole)] {
        for a in rows.iter().filter(|a| !a.room_id.is_empty()) {
            index.entry((is_whole, a.room_id.as_str())).or_default().insert(a.kind.as_str(), a.content.as_str());
        }
    }
    for room in rooms {
        let is_whole = from.is_some() && initial_rooms.contains(room);
        let Some(entries) = index.get(&(is_whole, room.as_str())) else { continue };
        let events = entries
            .iter()
            .map(|(kind, content)| raw(&json!({"type": kind, "content": serde_json::from_str::<Value>(content)?})))
            .collect::<Result<_>>()?;
        out.rooms.insert(room.clone(), events);
    }
    Ok(out)
}

/// Receipts of the scoped rooms: those moved since `from`, and for a room sent whole the ones
/// on its timeline's events plus the user's own.
pub fn receipts(
    r: &Reader<'_>,
    user: &str,
    from: Option<i64>,
    rooms: &[(OwnedRoomId, bool)],
    timeline_ids: &HashMap<OwnedRoomId, Vec<String>>,
) -> Result<wire::Receipts> {
    let moved = match from {
        Some(f) => r.rooms_with_receipts_after(f)?,
        None => HashSet::new(),
    };
    let mut out = wire::Receipts::default();
    for (room, initial) in rooms {
        let rows: Vec<ReceiptRow> = if *initial || from.is_none() {
            let on_timeline: HashSet<&str> = timeline_ids.get(room).into_iter().flatten().map(String::as_str).collect();
            r.receipts_since(room.as_str(), -1)?
                .into_iter()
                .filter(|rc| rc.user_id == user || on_timeline.contains(rc.event_id.as_str()))
                .collect()
        } else if moved.contains(room.as_str()) {
            r.receipts_since(room.as_str(), from.unwrap_or(-1))?
        } else {
            continue;
        };
        let content =
            receipt_content(rows.iter().filter(|rc| rc.receipt_type != "m.read.private" || rc.user_id == user));
        if !content.0.is_empty() {
            out.rooms.insert(room.clone(), wire::ReceiptEvent { kind: "m.receipt", content });
        }
    }
    Ok(out)
}

fn receipt_content<'a>(rows: impl Iterator<Item = &'a ReceiptRow>) -> ReceiptEventContent {
    let mut content = ReceiptEventContent(BTreeMap::new());
    for rc in rows {
        let (Ok(event_id), Ok(user_id)) =
            (OwnedEventId::try_from(rc.event_id.as_str()), OwnedUserId::try_from(rc.user_id.as_str()))
        else {
            continue;
        };
        let mut receipt = Receipt::new(MilliSecondsSinceUnixEpoch(UInt::new(rc.ts.max(0) as u64).unwrap_or_default()));
        receipt.thread = ReceiptThread::try_from(Some(rc.thread_id.as_str()).filter(|t| !t.is_empty()))
            .unwrap_or(ReceiptThread::Unthreaded);
        content
            .0
            .entry(event_id)
            .or_default()
            .entry(ReceiptType::from(rc.receipt_type.as_str()))
            .or_default()
            .insert(user_id, receipt);
    }
    content
}
