//! Device identity keys, one-time keys and fallback keys: `keys/upload`, `keys/query`,
//! `keys/claim`.

use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{json, Map, Value};

use super::{key_object, signed_part, verify_signature};
use crate::{
    accounts::Session,
    error::{Error, Result},
    Moss,
};

/// Most one-time keys one upload may carry (clients send 50 or so at a time).
const MAX_OTKS_PER_UPLOAD: usize = 1000;
/// Most devices one claim or query may name.
const MAX_DEVICES_PER_REQUEST: usize = 10_000;

/// What `keys/query` answers, as JSON objects keyed by user id.
#[derive(Debug, Default)]
pub struct KeysQueryResult {
    pub failures: BTreeMap<String, Value>,
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>,
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    pub user_signing_keys: BTreeMap<OwnedUserId, Value>,
}

/// What `keys/claim` answers: user -> device -> key id -> key.
#[derive(Debug, Default)]
pub struct KeysClaimResult {
    pub failures: BTreeMap<String, Value>,
    pub one_time_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<String, Value>>>,
}

fn check_key_id(id: &str) -> Result<()> {
    match id.split_once(':') {
        Some((alg, key)) if !alg.is_empty() && !key.is_empty() && id.len() <= 255 => Ok(()),
        _ => Err(Error::invalid_param(format!("key id {id:?} is not of the form <algorithm>:<id>"))),
    }
}

fn check_one_time_key(id: &str, key: &Value) -> Result<()> {
    check_key_id(id)?;
    match key {
        Value::String(s) if !s.is_empty() && s.len() <= 1024 => Ok(()),
        Value::Object(_) => {
            key_object(key, "one-time key")?;
            if key["key"].as_str().is_none_or(str::is_empty) {
                return Err(Error::bad_json(format!("one-time key {id:?} has no \"key\"")));
            }
            Ok(())
        }
        _ => Err(Error::bad_json(format!("one-time key {id:?} must be a string or an object"))),
    }
}

/// Validates a device_keys object for the session's own device.
pub(crate) fn check_device_keys(session: &Session, keys: &Value) -> Result<()> {
    key_object(keys, "device_keys")?;
    if keys["user_id"].as_str() != Some(session.user_id.as_str()) {
        return Err(Error::invalid_param("device_keys.user_id must be the user's own id"));
    }
    if keys["device_id"].as_str() != Some(session.device_id.as_str()) {
        return Err(Error::invalid_param("device_keys.device_id must be the id of the device uploading them"));
    }
    if !keys["algorithms"].as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
        return Err(Error::bad_json("device_keys.algorithms must be a list of strings"));
    }
    let Some(map) = keys["keys"].as_object() else {
        return Err(Error::bad_json("device_keys.keys must be an object"));
    };
    for (id, v) in map {
        check_key_id(id)?;
        if !v.is_string() {
            return Err(Error::bad_json(format!("device_keys.keys[{id:?}] must be a string")));
        }
    }
    let ed_id = format!("ed25519:{}", session.device_id);
    let ed = map.get(&ed_id).and_then(Value::as_str).ok_or_else(|| {
        Error::invalid_param(format!("device_keys.keys has no {ed_id:?}: the device's signing key is required"))
    })?;
    verify_signature(keys, session.user_id.as_str(), &ed_id, ed)
        .map_err(|e| Error::invalid_param(format!("device_keys are not self-signed: {e}")))
}

impl Moss {
    /// `POST /keys/upload`. Returns the device's unclaimed one-time key counts per algorithm.
    pub async fn upload_keys(
        &self,
        session: &Session,
        device_keys: Option<Value>,
        one_time_keys: BTreeMap<String, Value>,
        fallback_keys: BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, u64>> {
        if let Some(k) = &device_keys {
            check_device_keys(session, k)?;
        }
        if one_time_keys.len() > MAX_OTKS_PER_UPLOAD {
            return Err(Error::invalid_param(format!("at most {MAX_OTKS_PER_UPLOAD} one-time keys per upload")));
        }
        for (id, key) in one_time_keys.iter().chain(&fallback_keys) {
            check_one_time_key(id, key)?;
        }
        let (u, d) = (session.user_id.to_string(), session.device_id.to_string());
        let (counts, changed) = self
            .db
            .write(move |w| {
                let mut changed = false;
                if let Some(keys) = device_keys {
                    let old = w.device_keys(&u, &d)?.map(|s| serde_json::from_str::<Value>(&s)).transpose()?;
                    if old.as_ref() != Some(&keys) {
                        w.set_device_keys(&u, &d, &serde_json::to_string(&keys)?)?;
                        // A re-upload that only adds signatures is not news to other users.
                        changed = old.as_ref().map(signed_part) != Some(signed_part(&keys));
                    }
                }
                for (id, key) in &one_time_keys {
                    let text = serde_json::to_string(key)?;
                    match w.one_time_key(&u, &d, id)? {
                        Some(old) if old != text => {
                            return Err(Error::invalid_param(format!(
                                "one-time key {id} already exists with different content"
                            )));
                        }
                        Some(_) => {}
                        None => w.add_one_time_key(&u, &d, id, &text)?,
                    }
                }
                for (id, key) in &fallback_keys {
                    w.set_fallback_key(&u, &d, id, &serde_json::to_string(key)?)?;
                }
                if changed {
                    let stream = w.next_stream()?;
                    w.mark_device_list_changed(&u, stream)?;
                }
                let counts: BTreeMap<String, u64> =
                    w.one_time_key_counts(&u, &d)?.into_iter().map(|(a, n)| (a, n as u64)).collect();
                Ok::<_, Error>((counts, changed))
            })
            .await?;
        if changed {
            self.notify_sharing_users(&session.user_id).await;
            self.announce_device_list_change(&session.user_id, session.device_id.as_str()).await;
        }
        Ok(counts)
    }

    /// `POST /keys/query`: device keys and cross-signing keys of the named users.
    /// `POST /keys/query`; `requester` is `None` when another server asks (over federation),
    /// which then sees no user-signing keys and only signatures made by the keys' owners.
    pub async fn query_keys(
        &self,
        requester: Option<&UserId>,
        wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<KeysQueryResult> {
        if wanted.values().map(|d| d.len().max(1)).sum::<usize>() > MAX_DEVICES_PER_REQUEST {
            return Err(Error::invalid_param(format!("at most {MAX_DEVICES_PER_REQUEST} devices per query")));
        }
        let (local, remote): (BTreeMap<_, _>, BTreeMap<_, _>) =
            wanted.into_iter().partition(|(u, _)| u.server_name() == self.server_name);
        let me = requester.map(|r| r.to_string()).unwrap_or_default();
        let mut out = self
            .db
            .read(move |r| {
                let mut out = KeysQueryResult::default();
                for (user, devices) in local {
                    let u = user.as_str();
                    let names: BTreeMap<String, Option<String>> =
                        r.devices(u)?.into_iter().map(|d| (d.device_id, d.display_name)).collect();
                    let mut found = BTreeMap::new();
                    for (device_id, keys) in r.all_device_keys(u)? {
                        if !devices.is_empty() && !devices.iter().any(|d| d.as_str() == device_id) {
                            continue;
                        }
                        let mut keys: Value = serde_json::from_str(&keys)?;
                        merge_signatures(r, &mut keys, u, &device_id, &me)?;
                        let name = names.get(&device_id).cloned().flatten();
                        if let Some(o) = keys.as_object_mut() {
                            let unsigned = o.entry("unsigned").or_insert_with(|| json!({}));
                            if let (Some(un), Some(name)) = (unsigned.as_object_mut(), name) {
                                un.insert("device_display_name".into(), json!(name));
                            }
                        }
                        found.insert(OwnedDeviceId::from(device_id), keys);
                    }
                    out.device_keys.insert(user.clone(), found);
                    for (kind, slot) in [("master", &mut out.master_keys), ("self_signing", &mut out.self_signing_keys)]
                    {
                        if let Some((public, json)) = r.cross_signing_key(u, kind)? {
                            let mut key: Value = serde_json::from_str(&json)?;
                            merge_signatures(r, &mut key, u, &public, &me)?;
                            slot.insert(user.clone(), key);
                        }
                    }
                    if u == me {
                        if let Some((_, json)) = r.cross_signing_key(u, "user_signing")? {
                            out.user_signing_keys.insert(user.clone(), serde_json::from_str(&json)?);
                        }
                    }
                }
                Ok::<_, Error>(out)
            })
            .await?;
        if !remote.is_empty() {
            self.query_remote_keys(&mut out, remote).await;
        }
        Ok(out)
    }

    /// `POST /keys/claim`: takes one one-time key (or the fallback key) per named device.
    pub async fn claim_keys(
        &self,
        wanted: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<KeysClaimResult> {
        if wanted.values().map(BTreeMap::len).sum::<usize>() > MAX_DEVICES_PER_REQUEST {
            return Err(Error::invalid_param(format!("at most {MAX_DEVICES_PER_REQUEST} devices per claim")));
        }
        let (local, remote): (BTreeMap<_, _>, BTreeMap<_, _>) =
            wanted.into_iter().partition(|(u, _)| u.server_name() == self.server_name);
        let mut out = self
            .db
            .write(move |w| {
                let mut out = KeysClaimResult::default();
                for (user, devices) in local {
                    let mut per_user = BTreeMap::new();
                    for (device, algorithm) in devices {
                        if let Some((key_id, key)) = w.claim_key(user.as_str(), device.as_str(), &algorithm)? {
                            let mut m = BTreeMap::new();
                            m.insert(key_id, serde_json::from_str::<Value>(&key)?);
                            per_user.insert(device, m);
                        }
                    }
                    if !per_user.is_empty() {
                        out.one_time_keys.insert(user, per_user);
                    }
                }
                Ok::<_, Error>(out)
            })
            .await?;
        if !remote.is_empty() {
            self.claim_remote_keys(&mut out, remote).await;
        }
        Ok(out)
    }
}

/// Adds the stored signatures on `target_key` of `target_user` that `requester` may see: those by
/// the key's owner, and those the requester made.
pub(crate) fn merge_signatures(
    r: &moss_storage::Reader<'_>,
    obj: &mut Value,
    target_user: &str,
    target_key: &str,
    requester: &str,
) -> Result<()> {
    let sigs = r.key_signatures(target_user, target_key)?;
    if sigs.is_empty() {
        return Ok(());
    }
    let Some(o) = obj.as_object_mut() else { return Ok(()) };
    let all = o.entry("signatures").or_insert_with(|| Value::Object(Map::new()));
    for s in sigs {
        if s.signer_user != target_user && s.signer_user != requester {
            continue;
        }
        if let Some(all) = all.as_object_mut() {
            let per = all.entry(s.signer_user).or_insert_with(|| Value::Object(Map::new()));
            if let Some(per) = per.as_object_mut() {
                per.insert(s.signer_key, Value::String(s.signature));
            }
        }
    }
    Ok(())
}
