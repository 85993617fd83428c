//! What goes into a service's next transaction, read in one database snapshot.
//!
//! Everything a service is sent lives on the global stream — room events, receipts, presence,
//! to-device messages and device-list changes — so one cursor (`appservice_state.last_stream`)
//! covers all of it: a transaction carries what happened in `(last_stream, upto]`. `upto` is the
//! present unless one source has more than a transaction takes, then it is cut where that
//! source's batch ends and every other source is cut there too, so nothing is skipped. A retried
//! transaction (its `upto` recorded before the first attempt) is rebuilt from the same range.
//!
//! Per source (the service's interest, as Synapse's `ApplicationService.is_interested_in_*`):
//! - events: sent by or about one of its users, or in a room it is interested in: a room of its
//!   room namespace, with an alias of its alias namespace, or where one of its users is joined;
//! - ephemeral (only with `receive_ephemeral`, MSC2409): public receipts and typing in those
//!   rooms, presence of its users and of users joined to those rooms;
//! - to-device messages (with `receive_ephemeral`, MSC2409/MSC4203): those sent to its users;
//! - with `org.matrix.msc3202`: users whose devices changed and who are its users or share such a
//!   room (`changed`), users who left such a room and share none any more (`left`), and the
//!   one-time-key counts and unused fallback key types of the devices of its users that appear
//!   in the transaction.
//!
//! Typing is not on the stream (it lives in memory): the caller passes the rooms whose typing
//! changed since its last transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use moss_storage::{AppserviceState, EventRow, Reader};
use ruma::{OwnedRoomId, OwnedUserId};
use serde::Serialize;
use serde_json::{value::RawValue, Value};

use super::AppService;
use crate::{error::Result, rooms::read::client_event};

/// Room events looked at per round, and most in one transaction.
const SCAN: i64 = 1000;
const MAX_EVENTS: usize = 100;
/// Receipts, presence changes and to-device messages read per round (each).
const MAX_EPHEMERAL: i64 = 500;
/// Users whose key counts one transaction carries.
const MAX_KEY_COUNT_USERS: usize = 100;

/// One to-device message as an application service receives it (MSC2409).
#[derive(Debug, Serialize)]
struct ServiceToDevice<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    sender: &'a str,
    to_user_id: &'a str,
    to_device_id: &'a str,
    content: &'a RawValue,
}

/// Per-user, per-device key counts (MSC3202).
pub(super) type PerDevice<T> = BTreeMap<String, BTreeMap<String, T>>;

#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The transaction covers the stream up to here.
    pub upto: i64,
    /// The sources had more than this batch took.
    pub more: bool,
    pub events: Vec<Value>,
    pub ephemeral: Vec<Value>,
    pub to_device: Vec<Box<RawValue>>,
    /// Delivered to-device messages, dropped from the inbox once the service has them.
    pub to_device_taken: BTreeMap<(String, String), i64>,
    pub changed: Vec<String>,
    pub left: Vec<String>,
    pub otk_counts: PerDevice<BTreeMap<String, u64>>,
    pub fallback_types: PerDevice<Vec<String>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.ephemeral.is_empty()
            && self.to_device.is_empty()
            && self.changed.is_empty()
            && self.left.is_empty()
    }
}

/// Per batch: which rooms the service is interested in, asked once each.
struct Rooms<'a, 'r> {
    r: &'a Reader<'r>,
    s: &'a AppService,
    known: HashMap<String, bool>,
}

impl Rooms<'_, '_> {
    fn interested(&mut self, room_id: &str) -> Result<bool> {
        if let Some(hit) = self.known.get(room_id) {
            return Ok(*hit);
        }
        let hit = self.s.owns_room(room_id)
            || self.r.joined_members_since(room_id)?.iter().any(|(u, _)| self.s.owns_user(u))
            || self.r.room_aliases(room_id)?.iter().any(|a| self.s.owns_alias(a));
        self.known.insert(room_id.to_owned(), hit);
        Ok(hit)
    }

    /// Whether `user` is the service's or joined to a room it is interested in.
    fn shares(&mut self, user: &str) -> Result<bool> {
        if self.s.owns_user(user) {
            return Ok(true);
        }
        for room in self.r.rooms_joined_by(user)? {
            if self.interested(&room)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

pub(super) fn collect(
    r: &Reader<'_>,
    s: &AppService,
    state: &AppserviceState,
    typing: &[(OwnedRoomId, Vec<OwnedUserId>)],
) -> Result<Batch> {
    let pending = state.pending_upto.is_some();
    let mut upto = match state.pending_upto {
        Some(p) => p,
        None => r.current_stream()?,
    };
    let from = state.last_stream;
    let mut b = Batch::default();

    // Room events. A membership change can change the room's interest for the events after
    // it, so a room's answer is forgotten after each member event.
    let rows = r.events_after(from, SCAN)?;
    if rows.len() as i64 == SCAN && !pending {
        if let Some(last) = rows.last() {
            upto = upto.min(last.stream);
            b.more = true;
        }
    }
    let mut rooms = Rooms { r, s, known: HashMap::new() };
    let mut events: Vec<(&EventRow, Value)> = Vec::new();
    for row in rows.iter().filter(|e| e.stream <= upto) {
        let hit = s.owns_user(&row.sender)
            || row.kind == "m.room.member" && row.state_key.as_deref().is_some_and(|k| s.owns_user(k))
            || rooms.interested(&row.room_id)?;
        if row.kind == "m.room.member" {
            rooms.known.remove(&row.room_id);
        }
        if hit {
            events.push((row, client_event(row, "", None)?));
            if events.len() == MAX_EVENTS && !pending {
                upto = row.stream;
                b.more = true;
                break;
            }
        }
    }
    let mut rooms = Rooms { r, s, known: HashMap::new() };

    // Ephemeral data and to-device messages: each source may cut `upto` shorter.
    let (mut receipts, mut presence, mut to_device) = (Vec::new(), Vec::new(), Vec::new());
    if s.receive_ephemeral {
        receipts = r.public_receipts_between(from, upto, MAX_EPHEMERAL)?;
        cut(&mut upto, &mut b.more, pending, receipts.len(), receipts.last().map(|x| x.stream));
        presence = r.presence_between(from, upto, MAX_EPHEMERAL)?;
        cut(&mut upto, &mut b.more, pending, presence.len(), presence.last().map(|x| x.stream));
        to_device = r.to_device_between(from, upto, MAX_EPHEMERAL)?;
        cut(&mut upto, &mut b.more, pending, to_device.len(), to_device.last().map(|x| x.stream));
    }
    b.upto = upto;
    b.events = events.iter().filter(|(row, _)| row.stream <= upto).map(|(_, v)| v.clone()).collect();
    // Users of the service who appear in the transaction, for their key counts.
    let mut appearing: BTreeSet<String> = BTreeSet::new();
    for (row, _) in events.iter().filter(|(row, _)| row.stream <= upto) {
        if s.owns_user(&row.sender) {
            appearing.insert(row.sender.clone());
        }
    }

    if s.receive_ephemeral {
        let mut by_room: BTreeMap<&str, BTreeMap<&str, Value>> = BTreeMap::new();
        for rc in receipts.iter().filter(|x| x.stream <= upto) {
            if !rooms.interested(&rc.room_id)? {
                continue;
            }
            let mut entry = serde_json::json!({ "ts": rc.ts });
            if !rc.thread_id.is_empty() {
                entry["thread_id"] = Value::from(rc.thread_id.as_str());
            }
            let slot =
                by_room.entry(&rc.room_id).or_default().entry(&rc.event_id).or_insert_with(|| serde_json::json!({}));
            slot[&rc.receipt_type][&rc.user_id] = entry;
        }
        for (room, content) in by_room {
            b.ephemeral.push(serde_json::json!({ "type": "m.receipt", "room_id": room, "content": content }));
        }
        for (room, users) in typing {
            if rooms.interested(room.as_str())? {
                b.ephemeral.push(serde_json::json!({
                    "type": "m.typing", "room_id": room, "content": { "user_ids": users },
                }));
            }
        }
        let now = crate::now_ms() as i64;
        for p in presence.iter().filter(|x| x.stream <= upto) {
            if rooms.shares(&p.user_id)? {
                b.ephemeral.push(serde_json::json!({
                    "type": "m.presence", "sender": p.user_id, "content": crate::presence::content(p, now),
                }));
            }
        }
        for m in to_device.iter().filter(|x| x.stream <= upto) {
            if !s.owns_user(&m.user_id) {
                continue;
            }
            let content = RawValue::from_string(m.content.clone())?;
            let message = ServiceToDevice {
                kind: &m.kind,
                sender: &m.sender,
                to_user_id: &m.user_id,
                to_device_id: &m.device_id,
                content: &content,
            };
            b.to_device.push(serde_json::value::to_raw_value(&message)?);
            let taken = b.to_device_taken.entry((m.user_id.clone(), m.device_id.clone())).or_default();
            *taken = (*taken).max(m.stream);
            appearing.insert(m.user_id.clone());
        }
    }

    if s.msc3202 {
        for user in r.device_list_changed_between(from, upto)? {
            if rooms.shares(&user)? {
                if s.owns_user(&user) {
                    appearing.insert(user.clone());
                }
                b.changed.push(user);
            }
        }
        let mut left = BTreeSet::new();
        for (room, user, membership) in r.membership_changes_between(from, upto)? {
            if (membership == "leave" || membership == "ban")
                && !s.owns_user(&user)
                && rooms.interested(&room)?
                && !b.changed.contains(&user)
                && !rooms.shares(&user)?
            {
                left.insert(user);
            }
        }
        b.left = left.into_iter().collect();
        for user in appearing.into_iter().take(MAX_KEY_COUNT_USERS) {
            for device in r.devices(&user)? {
                let counts: BTreeMap<String, u64> = r
                    .one_time_key_counts(&user, &device.device_id)?
                    .into_iter()
                    .map(|(alg, n)| (alg, u64::try_from(n).unwrap_or(0)))
                    .collect();
                b.otk_counts.entry(user.clone()).or_default().insert(device.device_id.clone(), counts);
                let fallback = r.unused_fallback_key_types(&user, &device.device_id)?;
                b.fallback_types.entry(user.clone()).or_default().insert(device.device_id, fallback);
            }
        }
    }
    Ok(b)
}

/// A source that filled its read cuts the batch where that read ended (not when retrying:
/// a retried transaction covers exactly its recorded range).
fn cut(upto: &mut i64, more: &mut bool, pending: bool, read: usize, last: Option<i64>) {
    if pending || read as i64 != MAX_EPHEMERAL {
        return;
    }
    if let Some(last) = last {
        if last < *upto {
            *upto = last;
            *more = true;
        }
    }
}
