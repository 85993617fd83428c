//! Cross-signing: `keys/device_signing/upload` (the user's master, self-signing and user-signing
//! keys) and `keys/signatures/upload` (signatures on devices and on other users' master keys).

use std::collections::BTreeMap;

use ruma::{api::client::uiaa::AuthData, OwnedUserId};
use serde_json::{json, Value};

use super::{key_object, signed_part, verify_signature};
use crate::{
    accounts::Session,
    error::{Error, Result},
    uiaa::password_flow,
    Moss,
};

/// A cross-signing key as uploaded, with its one ed25519 public key pulled out.
struct CrossSigningKey {
    json: Value,
    public: String,
}

fn parse_key(v: Value, user: &str, usage: &str) -> Result<CrossSigningKey> {
    key_object(&v, &format!("{usage} key"))?;
    if v["user_id"].as_str() != Some(user) {
        return Err(Error::invalid_param(format!("{usage} key: user_id must be {user}")));
    }
    if !v["usage"].as_array().is_some_and(|a| a.iter().any(|u| u.as_str() == Some(usage))) {
        return Err(Error::invalid_param(format!("{usage} key: usage must include {usage:?}")));
    }
    let keys = v["keys"].as_object().ok_or_else(|| Error::bad_json(format!("{usage} key: keys must be an object")))?;
    if keys.len() != 1 {
        return Err(Error::invalid_param(format!("{usage} key: keys must hold exactly one key")));
    }
    let (id, public) = keys.iter().next().expect("one key");
    let public = public.as_str().ok_or_else(|| Error::bad_json(format!("{usage} key: key must be a string")))?;
    if id.strip_prefix("ed25519:") != Some(public) {
        return Err(Error::invalid_param(format!("{usage} key: key id must be ed25519:<public key>")));
    }
    Ok(CrossSigningKey { public: public.to_owned(), json: v })
}

fn invalid_signature(message: String) -> Error {
    Error::custom("M_INVALID_SIGNATURE", 400, message)
}

impl Moss {
    /// `POST /keys/device_signing/upload`. User-interactive auth is needed unless the user has no
    /// master key yet or the request only repeats the stored keys.
    pub async fn upload_signing_keys(
        &self,
        session: &Session,
        auth: Option<AuthData>,
        master: Option<Value>,
        self_signing: Option<Value>,
        user_signing: Option<Value>,
    ) -> Result<()> {
        let user = session.user_id.clone();
        let u = user.to_string();
        let master = master.map(|v| parse_key(v, &u, "master")).transpose()?;
        let self_signing = self_signing.map(|v| parse_key(v, &u, "self_signing")).transpose()?;
        let user_signing = user_signing.map(|v| parse_key(v, &u, "user_signing")).transpose()?;

        let uu = u.clone();
        let (stored, devices) = self
            .db
            .read(move |r| {
                let mut stored = BTreeMap::new();
                for kind in ["master", "self_signing", "user_signing"] {
                    if let Some((_, json)) = r.cross_signing_key(&uu, kind)? {
                        stored.insert(kind, serde_json::from_str::<Value>(&json)?);
                    }
                }
                let devices: Vec<String> = r.devices(&uu)?.into_iter().map(|d| d.device_id).collect();
                Ok::<_, Error>((stored, devices))
            })
            .await?;
        let new = [("master", &master), ("self_signing", &self_signing), ("user_signing", &user_signing)];
        let repeats_stored = new.iter().all(|(kind, k)| k.as_ref().is_none_or(|k| stored.get(kind) == Some(&k.json)));
        // Application services replace their users' keys without UIA (MSC4190).
        if stored.contains_key("master") && !repeats_stored && session.appservice.is_none() {
            self.uiaa(password_flow("device_signing_upload", &user), auth).await?;
        }

        let master_public = match (&master, stored.get("master")) {
            (Some(m), _) => m.public.clone(),
            (None, Some(m)) => parse_key(m.clone(), &u, "master")?.public,
            (None, None) => return Err(Error::missing_param("no master signing key is available")),
        };
        for k in [&master, &self_signing, &user_signing].into_iter().flatten() {
            if devices.contains(&k.public) {
                return Err(Error::forbidden("a cross-signing public key must not equal one of the user's device ids"));
            }
        }
        for (usage, k) in [("self_signing", &self_signing), ("user_signing", &user_signing)] {
            if let Some(k) = k {
                verify_signature(&k.json, &u, &format!("ed25519:{master_public}"), &master_public)
                    .map_err(|e| invalid_signature(format!("{usage} key is not signed by the master key: {e}")))?;
            }
        }

        self.db
            .write(move |w| {
                for (kind, k) in [("master", master), ("self_signing", self_signing), ("user_signing", user_signing)] {
                    if let Some(k) = k {
                        w.set_cross_signing_key(&u, kind, &k.public, &serde_json::to_string(&k.json)?)?;
                    }
                }
                let stream = w.next_stream()?;
                w.mark_device_list_changed(&u, stream)?;
                Ok::<_, Error>(())
            })
            .await?;
        self.notify_sharing_users(&user).await;
        self.announce_device_list_change(&user, "").await;
        Ok(())
    }

    /// `POST /keys/signatures/upload`: stores each signature the uploader made that verifies;
    /// every other one is reported in the returned failures (user -> key id -> error).
    pub async fn upload_signatures(
        &self,
        session: &Session,
        signed: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, Value>>> {
        let me = session.user_id.to_string();
        let (failures, changed) = self
            .db
            .write(move |w| {
                let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
                let mut changed = false;
                for (target, keys) in signed {
                    for (key_id, obj) in keys {
                        match check_signature(w, &me, target.as_str(), &key_id, &obj) {
                            Ok(accepted) => {
                                for (signer_key, sig) in accepted {
                                    w.add_key_signature(target.as_str(), &key_id, &me, &signer_key, &sig)?;
                                    changed = true;
                                }
                            }
                            Err((errcode, error)) => {
                                failures
                                    .entry(target.clone())
                                    .or_default()
                                    .insert(key_id, json!({"errcode": errcode, "error": error}));
                            }
                        }
                    }
                }
                if changed {
                    // Signatures on one's own keys concern everyone; a signature on another
                    // user's master key is visible to the signer only, so only they refetch.
                    let stream = w.next_stream()?;
                    w.mark_device_list_changed(&me, stream)?;
                }
                Ok::<_, Error>((failures, changed))
            })
            .await?;
        if changed {
            self.notify_sharing_users(&session.user_id).await;
            self.announce_device_list_change(&session.user_id, session.device_id.as_str()).await;
        }
        Ok(failures)
    }
}

/// Decides which of the signatures `signer` put on `obj` (the key `key_id` of `target`) to keep:
/// `(signing key id, signature)` pairs, or an `(errcode, message)` failure.
fn check_signature(
    r: &moss_storage::Reader<'_>,
    signer: &str,
    target: &str,
    key_id: &str,
    obj: &Value,
) -> Result<Vec<(String, String)>, (&'static str, String)> {
    let db = |e: moss_storage::StorageError| ("M_UNKNOWN", e.to_string());
    if key_object(obj, "signed key").is_err() {
        return Err(("M_BAD_JSON", "the signed key must be a JSON object of reasonable size".into()));
    }
    // The stored object the signature is about, and the keys allowed to sign it.
    let (stored, signers): (Value, Vec<(String, String)>) = if target == signer {
        if let Some(keys) = r.device_keys(target, key_id).map_err(db)? {
            // One's own device, signed by one's self-signing key.
            let ssk = r.cross_signing_key(target, "self_signing").map_err(db)?;
            let Some((public, _)) = ssk else {
                return Err(("M_MISSING_PARAM", "no self-signing key is uploaded".into()));
            };
            (
                serde_json::from_str(&keys).map_err(|e| ("M_UNKNOWN", e.to_string()))?,
                vec![(format!("ed25519:{public}"), public)],
            )
        } else if let Some((public, json)) =
            r.cross_signing_key(target, "master").map_err(db)?.filter(|(p, _)| p == key_id)
        {
            // One's own master key, signed by one of one's devices.
            let _ = public;
            let mut signers = Vec::new();
            for (device_id, keys) in r.all_device_keys(target).map_err(db)? {
                let keys: Value = serde_json::from_str(&keys).map_err(|e| ("M_UNKNOWN", e.to_string()))?;
                let id = format!("ed25519:{device_id}");
                if let Some(k) = keys["keys"][&id].as_str() {
                    signers.push((id, k.to_owned()));
                }
            }
            (serde_json::from_str(&json).map_err(|e| ("M_UNKNOWN", e.to_string()))?, signers)
        } else {
            return Err(("M_NOT_FOUND", format!("{key_id} is neither a device nor the master key of {target}")));
        }
    } else {
        // Another user's master key, signed by one's user-signing key.
        let master = r.cross_signing_key(target, "master").map_err(db)?.filter(|(p, _)| p == key_id);
        let Some((_, json)) = master else {
            return Err(("M_NOT_FOUND", format!("{key_id} is not the master key of {target}")));
        };
        let usk = r.cross_signing_key(signer, "user_signing").map_err(db)?;
        let Some((public, _)) = usk else {
            return Err(("M_MISSING_PARAM", "no user-signing key is uploaded".into()));
        };
        (
            serde_json::from_str(&json).map_err(|e| ("M_UNKNOWN", e.to_string()))?,
            vec![(format!("ed25519:{public}"), public)],
        )
    };
    if signed_part(&stored) != signed_part(obj) {
        return Err(("M_INVALID_SIGNATURE", "the signed object differs from the stored key".into()));
    }
    let mut accepted = Vec::new();
    let mut last_error = format!("no signature by {signer} with a key allowed to sign {key_id}");
    for (signer_key, public) in signers {
        let Some(sig) = obj["signatures"][signer][&signer_key].as_str() else { continue };
        match verify_signature(obj, signer, &signer_key, &public) {
            Ok(()) => accepted.push((signer_key, sig.to_owned())),
            Err(e) => last_error = e,
        }
    }
    if accepted.is_empty() {
        return Err(("M_INVALID_SIGNATURE", last_error));
    }
    Ok(accepted)
}
