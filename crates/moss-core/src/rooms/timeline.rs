//! Appending local events to a room: build the PDU, hash and sign it, run it through the room
//! version's authorization rules, then persist it with its state.
//!
//! Everything here runs inside one write transaction, so an event that fails any step leaves
//! nothing behind.

use std::sync::Arc;

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
}

impl NewPdu {
    pub fn state(kind: impl Into<TimelineEventType>, state_key: impl Into<String>, content: Value) -> Self {
        NewPdu { kind: kind.into(), content, state_key: Some(state_key.into()), redacts: None }
    }
    pub fn message(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        NewPdu { kind: kind.into(), content, state_key: None, redacts: None }
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

pub fn load_pdu(w: &moss_storage::Reader<'_>, event_id: &str) -> Result<Option<Pdu>> {
    match w.event(event_id)? {
        Some(row) => Ok(Some(Pdu::from_stored(&row.event_id, &row.pdu)?)),
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
    let rules = rules_for(version)?;
    let room_str = room_id.map(|r| r.as_str().to_owned()).unwrap_or_default();

    // Where the event goes in the room graph.
    let extremities = if room_id.is_some() { w.forward_extremities(&room_str)? } else { Vec::new() };
    let mut depth = 0i64;
    let mut parent_group = None;
    let mut best_stream = -1;
    for e in &extremities {
        if let Some(row) = w.event(e)? {
            let d = w.event_depth(e)?.unwrap_or(0);
            depth = depth.max(d);
            if row.stream > best_stream {
                best_stream = row.stream;
                parent_group = Some(row.state_group);
            }
        }
    }
    let depth = (depth + 1).min(i64::MAX / 2);

    // The auth events: the state the rules say this event depends on.
    let content_raw = serde_json::value::to_raw_value(&new.content)?;
    let auth_types =
        auth_types_for_event(&new.kind, sender, new.state_key.as_deref(), &content_raw, &rules.authorization)
            .map_err(|e| Error::bad_json(format!("invalid event content: {e}")))?;
    let mut auth_events = Vec::new();
    if room_id.is_some() {
        for (kind, sk) in &auth_types {
            if let Some(row) = w.current_state_event(&room_str, &kind.to_string(), sk)? {
                auth_events.push(row.event_id);
            }
        }
    }

    // Tell clients what a state event replaced.
    let mut unsigned = serde_json::Map::new();
    if let (Some(sk), Some(_)) = (&new.state_key, room_id) {
        if let Some(prev) = current_state_pdu(w, &room_str, &new.kind.to_string(), sk)? {
            unsigned.insert("replaces_state".into(), json!(prev.event_id));
            unsigned.insert("prev_content".into(), prev.content_value());
            unsigned.insert("prev_sender".into(), json!(prev.sender));
        }
    }

    let mut obj = json!({
        "auth_events": auth_events,
        "content": new.content,
        "depth": depth,
        "origin_server_ts": now,
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
    let fetch_event = |id: &EventId| load_pdu(w, id.as_str()).ok().flatten();
    check_state_independent_auth_rules(&rules.authorization, &pdu, fetch_event)
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;
    let fetch_state =
        |kind: &StateEventType, sk: &str| current_state_pdu(w, &room_str, &kind.to_string(), sk).ok().flatten();
    check_state_dependent_auth_rules(&rules.authorization, &pdu, fetch_state)
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;

    // Persist.
    let stream = w.next_stream()?;
    let kind = pdu.kind.to_string();
    let state_group = match &pdu.state_key {
        Some(sk) => w.new_state_group(&room_str, parent_group, &[(&kind, sk, event_id.as_str())])?,
        None => match parent_group {
            Some(g) => g,
            None => w.new_state_group(&room_str, None, &[])?,
        },
    };
    w.insert_event(&NewEvent {
        stream,
        event_id: event_id.as_str(),
        room_id: &room_str,
        kind: &kind,
        state_key: pdu.state_key.as_deref(),
        sender: pdu.sender.as_str(),
        origin_server_ts: now as i64,
        depth,
        pdu: &stored,
        state_group,
        txn,
    })?;
    w.set_forward_extremities(&room_str, &[event_id.as_str()])?;
    if let Some(sk) = &pdu.state_key {
        w.set_current_state(&room_str, &kind, sk, event_id.as_str(), stream)?;
        if pdu.kind == TimelineEventType::RoomMember {
            let membership = pdu.content_value()["membership"].as_str().unwrap_or("leave").to_owned();
            w.set_membership(&room_str, sk, &membership, event_id.as_str(), stream)?;
        }
    }
    if pdu.kind == TimelineEventType::RoomRedaction {
        if let Some(target) = pdu.redacts_id() {
            if let Some(row) = w.event(target.as_str())? {
                if row.room_id == room_str && row.redacted_by.is_none() {
                    let red = pdu::redacted(&row.pdu, &rules, &canon)?;
                    w.redact_event(target.as_str(), event_id.as_str(), &red)?;
                }
            }
        }
    }
    Ok(Appended { pdu, room_id, stream })
}
