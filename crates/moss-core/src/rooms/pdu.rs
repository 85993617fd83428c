//! Persistent data units: events as rooms store and federate them.
//!
//! The stored form is the signed PDU in canonical JSON without `event_id` (room versions 3+
//! derive it from the reference hash). [`Pdu`] is the parsed view the auth rules and the client
//! APIs work with.

use ruma::{
    canonical_json::{redact, RedactedBecause},
    events::TimelineEventType,
    room_version_rules::RoomVersionRules,
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

use crate::error::{Error, Result};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

#[derive(Debug, Clone, Deserialize)]
pub struct Pdu {
    #[serde(skip_deserializing, default = "placeholder_event_id")]
    pub event_id: OwnedEventId,
    #[serde(default)]
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    #[serde(default)]
    pub state_key: Option<String>,
    #[serde(default)]
    pub prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    pub auth_events: Vec<OwnedEventId>,
    #[serde(default)]
    pub redacts: Option<OwnedEventId>,
    pub depth: UInt,
    #[serde(default)]
    pub unsigned: Option<Box<RawValue>>,
    #[serde(skip)]
    pub rejected: bool,
}

fn placeholder_event_id() -> OwnedEventId {
    EventId::parse("$placeholder").expect("valid literal")
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a stored PDU; `event_id` comes from the row since the JSON does not carry it.
    pub fn from_stored(event_id: &str, json: &str) -> Result<Pdu> {
        let mut pdu: Pdu = serde_json::from_str(json)
            .map_err(|e| Error::internal(format!("stored PDU {event_id} is corrupt: {e}")))?;
        pdu.event_id = EventId::parse(event_id).map_err(|e| Error::internal(e.to_string()))?;
        Ok(pdu)
    }

    /// The event this one redacts: top-level before room v11, in `content` since.
    pub fn redacts_id(&self) -> Option<OwnedEventId> {
        if self.redacts.is_some() {
            return self.redacts.clone();
        }
        if self.kind == TimelineEventType::RoomRedaction {
            return serde_json::from_str::<RedactsInContent>(self.content.get()).ok().and_then(|c| c.redacts);
        }
        None
    }

    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Default::default()))
    }

    /// The event in the client-server API's format.
    pub fn to_client(&self, room_id: &RoomId, now: MilliSecondsSinceUnixEpoch, txn_id: Option<&str>) -> Value {
        let mut unsigned = match &self.unsigned {
            Some(u) => serde_json::from_str::<Value>(u.get()).unwrap_or_else(|_| json!({})),
            None => json!({}),
        };
        if let Value::Object(map) = &mut unsigned {
            map.insert(
                "age".into(),
                json!(u64::from(now.get()).saturating_sub(u64::from(self.origin_server_ts.get()))),
            );
            if let Some(t) = txn_id {
                map.insert("transaction_id".into(), json!(t));
            }
        }
        let mut ev = json!({
            "type": self.kind,
            "content": self.content,
            "event_id": self.event_id,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
            "room_id": room_id,
            "unsigned": unsigned,
        });
        if let Some(sk) = &self.state_key {
            ev["state_key"] = json!(sk);
        }
        if let Some(r) = self.redacts_id() {
            ev["redacts"] = json!(r);
        }
        ev
    }

    /// A stripped state event, as in invites and knocks.
    pub fn to_stripped(&self) -> Value {
        json!({
            "type": self.kind,
            "state_key": self.state_key.clone().unwrap_or_default(),
            "content": self.content,
            "sender": self.sender,
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &OwnedEventId {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&OwnedEventId> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// Parses a stored PDU into canonical JSON, for signing, hashing and redaction.
pub fn canonical(json: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str(json).map_err(|e| Error::internal(format!("PDU is not canonical JSON: {e}")))
}

/// The redacted form of a stored PDU, with `redacted_because` in `unsigned` for clients.
pub fn redacted(json: &str, rules: &RoomVersionRules, because: &CanonicalJsonObject) -> Result<String> {
    let obj = canonical(json)?;
    let because = RedactedBecause::from_json(because.clone());
    let mut red = redact(obj, &rules.redaction, Some(because)).map_err(|e| Error::internal(e.to_string()))?;
    // Unsigned data describing the old content (prev_content) must not outlive the redaction.
    if let Some(CanonicalJsonValue::Object(u)) = red.get_mut("unsigned") {
        u.remove("prev_content");
    }
    Ok(serde_json::to_string(&red)?)
}
