//! End-to-end encryption support: the server stores and relays keys and messages it cannot read.
//!
//! - [`device_keys`]: device identity keys, one-time and fallback keys (upload, query, claim).
//! - [`cross_signing`]: master/self-signing/user-signing keys and signatures on keys.
//! - [`device_lists`]: who must be told that whose devices changed (sync and `keys/changes`).
//! - [`to_device`]: the per-device message queue.
//! - [`backup`]: server-side room key backup.
//! - [`dehydrated`]: a parked device that collects room keys while every client is offline.

pub mod backup;
pub mod cross_signing;
pub mod dehydrated;
pub mod device_keys;
pub mod device_lists;
pub mod to_device;

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, SigningKeyAlgorithm, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    Moss,
};

/// Largest single key object (a device_keys or cross-signing key) accepted, in bytes of JSON.
pub(crate) const MAX_KEY_JSON: usize = 16 * 1024;

/// The object with `signatures` and `unsigned` removed: what a signature covers and what two
/// uploads of "the same key" must agree on.
pub(crate) fn signed_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("signatures");
        m.remove("unsigned");
    }
    v
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    STANDARD_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Checks `obj.signatures[signer][key_id]` against the ed25519 public key `public_b64`.
pub(crate) fn verify_signature(obj: &Value, signer: &str, key_id: &str, public_b64: &str) -> Result<(), String> {
    let sig = obj["signatures"][signer][key_id].as_str().ok_or_else(|| format!("no signature by {signer} {key_id}"))?;
    let sig = decode_b64(sig).ok_or("signature is not base64")?;
    let public = decode_b64(public_b64).ok_or("public key is not base64")?;
    let canonical = CanonicalJsonValue::try_from(obj.clone()).map_err(|e| format!("not canonical JSON: {e}"))?;
    let CanonicalJsonValue::Object(object) = canonical else {
        return Err("not a JSON object".into());
    };
    let text = ruma::signatures::to_canonical_json_string_for_signing(&object).map_err(|e| e.to_string())?;
    ruma::signatures::verify_canonical_json_bytes(&SigningKeyAlgorithm::Ed25519, &public, &sig, text.as_bytes())
        .map_err(|e| format!("signature does not verify: {e}"))
}

/// Parses a JSON object the client sent, with a size limit.
pub(crate) fn key_object(v: &Value, what: &str) -> Result<CanonicalJsonObject> {
    if serde_json::to_vec(v)?.len() > MAX_KEY_JSON {
        return Err(Error::too_large(format!("{what} is larger than {MAX_KEY_JSON} bytes")));
    }
    match CanonicalJsonValue::try_from(v.clone()) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(Error::bad_json(format!("{what} must be a JSON object"))),
        Err(e) => Err(Error::bad_json(format!("{what} is not canonical JSON: {e}"))),
    }
}

impl Moss {
    /// Wakes the syncs of `user` and everyone sharing a room with them (device list, key and
    /// presence changes).
    pub(crate) async fn notify_sharing_users(&self, user: &UserId) {
        let u = user.to_string();
        let users = self
            .db
            .read(move |r| Ok::<_, Error>(r.users_sharing_rooms(&u)?))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect::<Vec<_>>();
        self.notifier.notify(users.iter().map(|u| u.as_ref()).chain([user]));
    }

    /// Tells the other servers sharing a room with `user` that their device list changed
    /// (`m.device_list_update`). No `prev_id`: receivers refetch the whole list, which is also
    /// how they learn new cross-signing keys.
    pub(crate) async fn announce_device_list_change(&self, user: &UserId, device_id: &str) {
        if self.federation.is_none() || user.server_name() != self.server_name {
            return;
        }
        let (u, d, us) = (user.to_string(), device_id.to_owned(), self.server_name.clone());
        let dests = self
            .db
            .write(move |w| {
                let mut dests = std::collections::BTreeSet::new();
                for other in w.users_sharing_rooms(&u)? {
                    if let Ok(o) = UserId::parse(&other) {
                        if o.server_name() != us {
                            dests.insert(o.server_name().to_string());
                        }
                    }
                }
                let stream = w.next_stream()?;
                let edu = serde_json::json!({"edu_type": "m.device_list_update", "content": {
                    "user_id": u, "device_id": d, "stream_id": stream, "prev_id": [], "deleted": false,
                }});
                crate::federation::sender::queue_edu(w, dests.iter().map(String::as_str), &edu)?;
                Ok::<_, Error>(dests)
            })
            .await
            .unwrap_or_default();
        self.wake_destinations(dests.iter().map(String::as_str));
    }
}
