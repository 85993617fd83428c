//! The room state an invitee or a knocker is shown before joining ("stripped state"), as it
//! crosses servers: `invite_room_state` of `PUT /invite` and `knock_room_state` of
//! `PUT /send_knock`.
//!
//! Since spec v1.16 (MSC4311) these are full signed PDUs, the `m.room.create` event included,
//! so the receiving server can check them; clients still get the stripped form (`type`,
//! `state_key`, `content`, `sender`). Outgoing, moss sends full PDUs. Incoming, each PDU's
//! signatures and room are checked and failures are dropped; entries in the older stripped
//! form (servers that predate MSC4311) are kept, sanitised, as Synapse does until the
//! ecosystem has moved (it plans to refuse them in version 12+ rooms after 2027-06).

use moss_storage::Reader;
use ruma::{RoomId, RoomVersionId};
use serde_json::{json, Value};

use crate::{
    error::Result,
    rooms::{
        external::{federation_form, room_of},
        STRIPPED_STATE_TYPES,
    },
    Moss,
};

/// At most this many entries are looked at (the spec's recommended set is seven events).
const MAX_ENTRIES: usize = 64;

/// The room's prejoin state as full PDUs in their federation form, plus the member event of
/// `member` if given (the inviter's).
pub(crate) fn prejoin_state_pdus(r: &Reader<'_>, room: &str, member: Option<&str>) -> Result<Vec<Value>> {
    let keys = STRIPPED_STATE_TYPES.iter().map(|kind| (*kind, "")).chain(member.map(|m| ("m.room.member", m)));
    let mut pdus = Vec::new();
    for (kind, state_key) in keys {
        if let Some(row) = r.current_state_event(room, kind, state_key)? {
            pdus.push(federation_form(&row.pdu)?);
        }
    }
    Ok(pdus)
}

/// A stripped event with exactly the four fields clients get, if `v` has them with the right
/// types.
fn stripped(v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let (kind, state_key, sender) =
        (o.get("type")?.as_str()?, o.get("state_key")?.as_str()?, o.get("sender")?.as_str()?);
    let content = o.get("content")?.as_object()?;
    Some(json!({"type": kind, "state_key": state_key, "content": Value::Object(content.clone()), "sender": sender}))
}

/// Whether `v` claims to be a PDU rather than an old-style stripped event.
fn looks_like_pdu(v: &Value) -> bool {
    ["signatures", "hashes", "auth_events", "prev_events"].iter().any(|k| v.get(k).is_some())
}

impl Moss {
    /// The stripped state to show the user from what another server sent with an invite or in
    /// a knock's answer (`what` names it in logs). PDUs that fail their signature check or
    /// belong to another room are left out; old-style stripped entries are kept.
    pub(crate) async fn prejoin_state_for_clients(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        raw: &Value,
        what: &str,
    ) -> Vec<Value> {
        let entries = raw.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut shown = Vec::new();
        let (mut dropped, mut old_style, mut has_create) = (0usize, 0usize, false);
        for entry in entries.iter().take(MAX_ENTRIES) {
            let kept = if looks_like_pdu(entry) {
                match self.verify_pdu(version, entry).await {
                    Ok(v) if room_of(&v.pdu) == room_id.as_str() => stripped(&v.pdu.to_stripped()),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(room = %room_id, error = %e, "{what}: an entry failed its checks");
                        None
                    }
                }
            } else {
                old_style += 1;
                stripped(entry)
            };
            match kept {
                Some(s) => {
                    has_create |= s["type"] == "m.room.create" && s["state_key"] == "";
                    shown.push(s);
                }
                None => dropped += 1,
            }
        }
        dropped += entries.len().saturating_sub(MAX_ENTRIES);
        if dropped > 0 || old_style > 0 || !has_create {
            tracing::info!(
                room = %room_id,
                dropped,
                old_style,
                has_create,
                "{what} is not the spec's signed PDUs (MSC4311); showing what passed"
            );
        }
        shown
    }
}
