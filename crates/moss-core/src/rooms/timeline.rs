//! Appending local events to a room: build the PDU, hash and sign it, run it through the room
//! version's authorization rules, then persist it with its state.
//!
//! Everything here runs inside one write transaction, so an event that fails any step leaves
//! nothing behind.

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use moss_storage::{NewEvent, Writer};
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    signatures::{hash_and_sign_event, reference_hash, Ed25519KeyPair},
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId, UserId,
};
use serde_json::{json, Value};

use super::pdu::{self, Pdu, MAX_PDU_BYTES};
use crate::error::{Error, Result};

/// What a caller wants to send; the rest of the PDU is filled in here.
#[derive(Debug, Clone)]
pub struct NewPdu {
    pub kind: TimelineEventType,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
    /// `origin_server_ts` chosen by an application service (`ts=`, timestamp massaging).
    pub ts: Option<u64>,
}

impl NewPdu {
    pub fn state(kind: impl Into<TimelineEventType>, state_key: impl Into<String>, content: Value) -> Self {
        NewPdu { kind: kind.into(), content, state_key: Some(state_key.into()), redacts: None, ts: None }
    }
    pub fn message(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        NewPdu { kind: kind.into(), content, state_key: None, redacts: None, ts: None }
    }
}

/// The server identity events are signed with.
#[derive(Clone)]
pub struct Signer {
    pub server_name: OwnedServerName,
    pub key: Arc<Ed25519KeyPair>,
}

/// An event that has been persisted.
#[derive(Debug, Clone)]
pub struct Appended {
    pub pdu: Pdu,
    pub room_id: OwnedRoomId,
    pub stream: i64,
}

pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| Error::internal(format!("no rules for room version {version}")))
}

/// Any event we hold, in the timeline or outside it (auth chains, soft-failed events); the auth
/// rules need both.
pub fn load_pdu(w: &moss_storage::Reader<'_>, event_id: &str) -> Result<Option<Pdu>> {
    if let Some(row) = w.event(event_id)? {
        return Ok(Some(Pdu::from_stored(&row.event_id, &row.pdu)?));
    }
    match w.outlier(event_id)? {
        Some((_, pdu, status)) => {
            let mut pdu = Pdu::from_stored(event_id, &pdu)?;
            pdu.rejected = status == "rejected";
            Ok(Some(pdu))
        }
        None => Ok(None),
    }
}

pub fn current_state_pdu(
    r: &moss_storage::Reader<'_>,
    room_id: &str,
    kind: &str,
    state_key: &str,
) -> Result<Option<Pdu>> {
    match r.current_state_event(room_id, kind, state_key)? {
        Some(row) => Ok(Some(Pdu::from_stored(&row.event_id, &row.pdu)?)),
        None => Ok(None),
    }
}

/// Builds, signs, authorizes and persists one event. `room_id` is `None` only for the
/// `m.room.create` event of a room version whose room id is the create event's hash.
#[allow(clippy::too_many_arguments)]
pub fn append(
    w: &Writer<'_>,
    signer: &Signer,
    version: &RoomVersionId,
    room_id: Option<&RoomId>,
    sender: &UserId,
    new: NewPdu,
    txn: Option<(&str, &str, &str)>,
    now: u64,
) -> Result<Appended> {
    let built = build(w, signer, version, room_id, sender, new, now)?;
    persist_local(w, version, built, txn)
}

/// A signed, authorized event not yet stored.
pub struct Built {
    pub pdu: Pdu,
    pub canon: CanonicalJsonObject,
    pub room_id: OwnedRoomId,
    pub depth: i64,
    /// The state group the event's state builds on.
    pub parent_group: Option<i64>,
}

impl Built {
    /// The event as other servers receive it: without our `unsigned` annotations.
    pub fn federation_json(&self) -> Value {
        let mut obj = self.canon.clone();
        obj.remove("unsigned");
        serde_json::to_value(obj).unwrap_or(Value::Null)
    }
}

/// The room's current state as building one event sees it. Inside the write transaction it
/// cannot change underneath, so each `(type, state key)` is read at most once, and the auth
/// events the rules name are read together in one statement.
pub(crate) struct StateView<'a, 'w> {
    w: &'a Writer<'w>,
    room: &'a str,
    seen: RefCell<HashMap<(String, String), Option<Pdu>>>,
}

impl<'a, 'w> StateView<'a, 'w> {
    pub(crate) fn new(w: &'a Writer<'w>, room: &'a str) -> Self {
        StateView { w, room, seen: RefCell::default() }
    }

    /// Reads every key not seen yet, in one statement.
    fn load(&self, keys: &[(&str, &str)]) -> Result<()> {
        let missing: Vec<(&str, &str)> = {
            let seen = self.seen.borrow();
            keys.iter().copied().filter(|(k, sk)| !seen.contains_key(&((*k).to_owned(), (*sk).to_owned()))).collect()
        };
        if missing.is_empty() || self.room.is_empty() {
            return Ok(());
        }
        let rows = self.w.current_state_events(self.room, &missing)?;
        let mut seen = self.seen.borrow_mut();
        for (k, sk) in missing {
            seen.insert((k.to_owned(), sk.to_owned()), None);
        }
        for row in rows {
            let pdu = Pdu::from_stored(&row.event_id, &row.pdu)?;
            seen.insert((row.kind, row.state_key.unwrap_or_default()), Some(pdu));
        }
        Ok(())
    }

    fn get(&self, kind: &str, state_key: &str) -> Result<Option<Pdu>> {
        self.load(&[(kind, state_key)])?;
        Ok(self.seen.borrow().get(&(kind.to_owned(), state_key.to_owned())).cloned().flatten())
    }

    /// An event by id: one of the state events read already, else from the database.
    fn event(&self, id: &str) -> Result<Option<Pdu>> {
        let known = self.seen.borrow().values().flatten().find(|p| p.event_id.as_str() == id).cloned();
        match known {
            Some(pdu) => Ok(Some(pdu)),
            None => load_pdu(self.w, id),
        }
    }
}

/// The unsigned event: where it goes in the room graph (prev events, depth), the state it is
/// authorized by (auth events) and what a state event replaces (for clients).
pub(crate) struct Template {
    pub obj: Value,
    pub depth: i64,
    pub parent_group: Option<i64>,
    pub unsigned: serde_json::Map<String, Value>,
}

/// Most `prev_events` an event made here names (the spec's PDU limit is 20).
pub const MAX_PREV_EVENTS: usize = 20;

pub(crate) fn template(
    w: &Writer<'_>,
    view: &StateView<'_, '_>,
    rules: &RoomVersionRules,
    room_id: Option<&RoomId>,
    sender: &UserId,
    new: NewPdu,
    now: u64,
) -> Result<Template> {
    let room_str = room_id.map(|r| r.as_str().to_owned()).unwrap_or_default();

    // Where the event goes in the room graph.
    // At most MAX_PREV_EVENTS of them, the deepest: the rest stay extremities and the next
    // events take them in, so a room another server splintered is merged over a few events.
    let mut tips = Vec::new();
    if room_id.is_some() {
        tips = w.extremities(&room_str)?.into_iter().map(|t| (t.depth, t.event_id, t.state_group)).collect();
    }
    tips.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    tips.truncate(MAX_PREV_EVENTS);
    let depth = tips.iter().map(|t| t.0).max().unwrap_or(0);
    let mut parent_group = tips.first().map(|t| t.2);
    let extremities: Vec<String> = tips.into_iter().map(|t| t.1).collect();
    // With several extremities (a fork another server made) the room's state is their resolved
    // state, which `current_state` holds; build on a snapshot of it.
    if extremities.len() > 1 {
        let current = w.current_state(&room_str)?;
        let entries: Vec<(&str, &str, &str)> =
            current.iter().map(|((k, sk), ev)| (k.as_str(), sk.as_str(), ev.as_str())).collect();
        parent_group = Some(w.new_state_group(&room_str, None, &entries)?);
    }
    let depth = (depth + 1).min(i64::MAX / 2);

    // The auth events: the state the rules say this event depends on.
    let content_raw = serde_json::value::to_raw_value(&new.content)?;
    let auth_types =
        auth_types_for_event(&new.kind, sender, new.state_key.as_deref(), &content_raw, &rules.authorization)
            .map_err(|e| Error::bad_json(format!("invalid event content: {e}")))?;
    let mut auth_events = Vec::new();
    if room_id.is_some() {
        let mut keys: Vec<(String, &str)> = auth_types.iter().map(|(k, sk)| (k.to_string(), sk.as_str())).collect();
        // What a state event replaces, and the sender's membership (the rules check it), in the
        // same statement.
        if let Some(sk) = &new.state_key {
            keys.push((new.kind.to_string(), sk));
        }
        keys.push(("m.room.member".to_owned(), sender.as_str()));
        // The rules always look at the create event, by id where it is not an auth event (room
        // versions whose room id is its hash).
        keys.push(("m.room.create".to_owned(), ""));
        view.load(&keys.iter().map(|(k, sk)| (k.as_str(), *sk)).collect::<Vec<_>>())?;
        for (kind, sk) in &auth_types {
            if let Some(pdu) = view.get(&kind.to_string(), sk)? {
                auth_events.push(pdu.event_id.to_string());
            }
        }
    }

    // Tell clients what a state event replaced.
    let mut unsigned = serde_json::Map::new();
    if let (Some(sk), Some(_)) = (&new.state_key, room_id) {
        if let Some(prev) = view.get(&new.kind.to_string(), sk)? {
            unsigned.insert("replaces_state".into(), json!(prev.event_id));
            unsigned.insert("prev_content".into(), prev.content_value());
            unsigned.insert("prev_sender".into(), json!(prev.sender));
        }
    }

    let mut obj = json!({
        "auth_events": auth_events,
        "content": new.content,
        "depth": depth,
        "origin_server_ts": new.ts.unwrap_or(now),
        "prev_events": extremities,
        "sender": sender,
        "type": new.kind,
    });
    if let Some(r) = room_id {
        obj["room_id"] = json!(r);
    }
    if let Some(sk) = &new.state_key {
        obj["state_key"] = json!(sk);
    }
    if let Some(r) = &new.redacts {
        // Room v11 moved `redacts` into content; older versions keep it at the top level.
        if rules.redaction.content_field_redacts {
            obj["content"]["redacts"] = json!(r);
        } else {
            obj["redacts"] = json!(r);
        }
    }
    Ok(Template { obj, depth, parent_group, unsigned })
}

/// Builds, signs and authorizes an event against the room's current state, without storing it.
#[allow(clippy::too_many_arguments)]
pub fn build(
    w: &Writer<'_>,
    signer: &Signer,
    version: &RoomVersionId,
    room_id: Option<&RoomId>,
    sender: &UserId,
    new: NewPdu,
    now: u64,
) -> Result<Built> {
    let rules = rules_for(version)?;
    let room_for_view = room_id.map(|r| r.as_str()).unwrap_or_default();
    let view = StateView::new(w, room_for_view);
    let Template { obj, depth, parent_group, unsigned } = template(w, &view, &rules, room_id, sender, new, now)?;
    let mut canon: CanonicalJsonObject = match serde_json::from_value(obj) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        Ok(_) => return Err(Error::internal("event is not an object")),
        Err(e) => return Err(Error::bad_json(format!("event content is not canonical JSON: {e}"))),
    };
    // The spec's limit covers the signed event; checking the unsigned form first gives the client
    // a clear error instead of a signing failure.
    if serde_json::to_string(&canon)?.len() > MAX_PDU_BYTES {
        return Err(Error::too_large("event is larger than 65536 bytes"));
    }
    hash_and_sign_event(signer.server_name.as_str(), &*signer.key, &mut canon, &rules.redaction).map_err(
        |e| match e {
            ruma::signatures::JsonError::PduTooLarge => Error::too_large("event is larger than 65536 bytes"),
            e => Error::internal(format!("signing event: {e}")),
        },
    )?;
    let hash = reference_hash(&canon, &rules).map_err(|_| Error::too_large("event is larger than 65536 bytes"))?;
    let event_id = EventId::parse(format!("${hash}")).map_err(|e| Error::internal(e.to_string()))?;
    let room_id: OwnedRoomId = match room_id {
        Some(r) => r.to_owned(),
        None => RoomId::parse(format!("!{hash}")).map_err(|e| Error::internal(e.to_string()))?,
    };
    let room_str = room_id.as_str().to_owned();

    let stored = serde_json::to_string(&canon)?;
    if stored.len() > MAX_PDU_BYTES {
        return Err(Error::too_large("event is larger than 65536 bytes"));
    }
    if !unsigned.is_empty() {
        canon.insert("unsigned".into(), serde_json::from_value(Value::Object(unsigned))?);
    }
    let stored = serde_json::to_string(&canon)?;
    let pdu = Pdu::from_stored(event_id.as_str(), &stored)?;

    // The authorization rules, against the auth events and the current state (for local events
    // they are the same state).
    let fetch_event = |id: &EventId| view.event(id.as_str()).ok().flatten();
    check_state_independent_auth_rules(&rules.authorization, &pdu, fetch_event)
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;
    // The create event of a room whose id is its hash is not stored yet: the view of a room
    // without an id holds nothing, so those lookups go by the new room's id.
    let fetch_state = |kind: &StateEventType, sk: &str| {
        if room_for_view.is_empty() {
            current_state_pdu(w, &room_str, &kind.to_string(), sk).ok().flatten()
        } else {
            view.get(&kind.to_string(), sk).ok().flatten()
        }
    };
    check_state_dependent_auth_rules(&rules.authorization, &pdu, fetch_state)
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;
    Ok(Built { pdu, canon, room_id, depth, parent_group })
}

/// Stores an event built here: it follows every forward extremity, so it becomes the only one
/// and the room's state is the state after it.
pub fn persist_local(
    w: &Writer<'_>,
    version: &RoomVersionId,
    built: Built,
    txn: Option<(&str, &str, &str)>,
) -> Result<Appended> {
    let rules = rules_for(version)?;
    let Built { pdu, canon, room_id, depth, parent_group } = built;
    let room_str = room_id.as_str();
    let stream = w.next_stream()?;
    let kind = pdu.kind.to_string();
    let state_group = match &pdu.state_key {
        Some(sk) => w.new_state_group(room_str, parent_group, &[(&kind, sk, pdu.event_id.as_str())])?,
        None => match parent_group {
            Some(g) => g,
            None => w.new_state_group(room_str, None, &[])?,
        },
    };
    store_event(w, &rules, &pdu, &canon, depth, stream, state_group, txn)?;
    if pdu.prev_events.len() < MAX_PREV_EVENTS {
        w.set_forward_extremities(room_str, &[pdu.event_id.as_str()])?;
    } else {
        // Extremities it could not take in stay for the next event.
        let mut tips: Vec<String> =
            w.forward_extremities(room_str)?.into_iter().filter(|e| !pdu.prev_events.iter().any(|p| p == e)).collect();
        tips.push(pdu.event_id.to_string());
        let tips: Vec<&str> = tips.iter().map(String::as_str).collect();
        w.set_forward_extremities(room_str, &tips)?;
    }
    if let Some(sk) = &pdu.state_key {
        set_current(w, room_str, &kind, sk, &pdu, stream)?;
    }
    Ok(Appended { pdu, room_id, stream })
}

/// Makes `pdu` the current state for its (type, state key), keeping memberships in step.
pub(crate) fn set_current(w: &Writer<'_>, room: &str, kind: &str, sk: &str, pdu: &Pdu, stream: i64) -> Result<()> {
    w.set_current_state(room, kind, sk, pdu.event_id.as_str(), stream)?;
    if pdu.kind == TimelineEventType::RoomMember {
        let membership = pdu.content_value()["membership"].as_str().unwrap_or("leave").to_owned();
        w.set_membership(room, sk, &membership, pdu.event_id.as_str(), stream)?;
    }
    Ok(())
}

/// Inserts an event row at `stream` and applies what it does beyond state (redactions).
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_event(
    w: &Writer<'_>,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    canon: &CanonicalJsonObject,
    depth: i64,
    stream: i64,
    state_group: i64,
    txn: Option<(&str, &str, &str)>,
) -> Result<()> {
    let room_str = pdu.room_id.as_ref().map(|r| r.as_str().to_owned()).unwrap_or_default();
    let room_str = if room_str.is_empty() {
        // Room v12 create events carry no room id: it is their own hash.
        format!("!{}", pdu.event_id.as_str().trim_start_matches('$'))
    } else {
        room_str
    };
    let kind = pdu.kind.to_string();
    let stored = serde_json::to_string(canon)?;
    w.insert_event(&NewEvent {
        stream,
        event_id: pdu.event_id.as_str(),
        room_id: &room_str,
        kind: &kind,
        state_key: pdu.state_key.as_deref(),
        sender: pdu.sender.as_str(),
        origin_server_ts: u64::from(pdu.origin_server_ts.get()) as i64,
        depth,
        pdu: &stored,
        state_group,
        txn,
    })?;
    crate::metrics::EVENTS_PERSISTED.inc();
    let prevs: Vec<&str> = pdu.prev_events.iter().map(|e| e.as_str()).collect();
    w.note_prev_refs(&prevs)?;
    if pdu.kind == TimelineEventType::RoomRedaction {
        if let Some(target) = pdu.redacts_id() {
            if let Some(row) = w.event(target.as_str())? {
                if row.room_id == room_str && row.redacted_by.is_none() {
                    let red = pdu::redacted(&row.pdu, rules, canon)?;
                    w.redact_event(target.as_str(), pdu.event_id.as_str(), &red)?;
                }
            }
        }
    }
    Ok(())
}
