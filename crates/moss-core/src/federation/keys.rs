//! Server signing keys: ours, published and self-signed; theirs, fetched from the server itself,
//! checked against its own signature and cached until the validity it states (capped).

use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};
use serde_json::{json, Value};

use super::KEY_VALIDITY;
use crate::{
    error::{Error, Result},
    now_ms, Moss,
};

/// Remote keys are refetched after at most this long, whatever they claim.
const MAX_CACHE_MS: i64 = 24 * 3600 * 1000;
/// Most server names one notary query is answered for.
pub const MAX_NOTARY_NAMES: usize = 100;
/// Most of them fetched afresh (not from our cache) for one query.
pub const MAX_NOTARY_REFETCHES: usize = 10;

impl super::Federation {
    /// Fails at once when `server`'s keys could not be had within the last minute.
    fn check_keys_not_failed(&self, server: &ServerName) -> Result<()> {
        let failed = self.keys_failed.lock().unwrap_or_else(|p| p.into_inner());
        match failed.get(server) {
            Some(at) if at.elapsed() < super::KEYS_FAILED_TTL => Err(Error::new(
                ruma::api::error::ErrorKind::Unauthorized,
                401,
                format!("{server}'s keys could not be fetched lately"),
            )),
            _ => Ok(()),
        }
    }

    /// Remembers a failed key fetch (or forgets an earlier failure) and passes the result on.
    fn note_key_fetch<T>(&self, server: &ServerName, result: Result<T>) -> Result<T> {
        let mut failed = self.keys_failed.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                failed.remove(server);
            }
            Err(_) => {
                if failed.len() > 10_000 {
                    failed.retain(|_, at| at.elapsed() < super::KEYS_FAILED_TTL);
                }
                failed.insert(server.to_owned(), std::time::Instant::now());
            }
        }
        result
    }
}

impl Moss {
    /// Our `/_matrix/key/v2/server` document, signed with our key.
    pub fn server_keys_document(&self) -> Result<Value> {
        let key = &self.signer.key;
        let key_id = format!("ed25519:{}", key.version());
        let doc = json!({
            "server_name": self.server_name,
            "verify_keys": { key_id: { "key": STANDARD_NO_PAD.encode(key.public_key()) } },
            "old_verify_keys": {},
            "valid_until_ts": now_ms() + KEY_VALIDITY.as_millis() as u64,
        });
        let CanonicalJsonValue::Object(mut obj) =
            CanonicalJsonValue::try_from(doc).map_err(|e| Error::internal(e.to_string()))?
        else {
            return Err(Error::internal("key document is not an object"));
        };
        ruma::signatures::sign_json(self.server_name.as_str(), key.as_ref(), &mut obj)
            .map_err(|e| Error::internal(format!("signing the key document: {e}")))?;
        Ok(serde_json::to_value(obj)?)
    }

    /// A server's current verify keys, `key id -> base64 public key`: from the cache, or fetched
    /// from the server and verified.
    pub async fn server_verify_keys(&self, server: &ServerName) -> Result<BTreeMap<String, String>> {
        self.verify_keys_with(server, true).await
    }

    /// `via_notaries`: when the server cannot be reached, ask the configured trusted key servers
    /// (whose own keys are then fetched directly, never through another notary).
    async fn verify_keys_with(&self, server: &ServerName, via_notaries: bool) -> Result<BTreeMap<String, String>> {
        if server == self.server_name {
            let k = &self.signer.key;
            return Ok(BTreeMap::from([(format!("ed25519:{}", k.version()), STANDARD_NO_PAD.encode(k.public_key()))]));
        }
        let s = server.to_string();
        let now = now_ms() as i64;
        let cached = self.db.read(move |r| Ok::<_, Error>(r.server_keys(&s, now)?)).await?;
        if !cached.is_empty() {
            return Ok(cached.into_iter().collect());
        }
        let fed = self.federation()?;
        fed.check_keys_not_failed(server)?;
        let fetched = async {
            let doc = match fed.get_json(server, "/_matrix/key/v2/server").await {
                Ok(doc) => doc,
                Err(direct) if via_notaries && !self.config.federation.trusted_key_servers.is_empty() => {
                    match self.keys_from_notaries(server).await {
                        Some(doc) => doc,
                        None => return Err(direct),
                    }
                }
                Err(direct) => return Err(direct),
            };
            let keys = verify_key_document(server, &doc)?;
            Ok((doc, keys))
        }
        .await;
        let (doc, keys) = fed.note_key_fetch(server, fetched)?;
        let valid_until = doc["valid_until_ts"].as_i64().unwrap_or(0).min(now + MAX_CACHE_MS);
        if valid_until <= now {
            return Err(Error::new(
                ruma::api::error::ErrorKind::Unauthorized,
                401,
                format!("{server}'s key document has expired"),
            ));
        }
        let (s, stored, text) = (server.to_string(), keys.clone(), serde_json::to_string(&doc)?);
        let doc_valid_until = doc["valid_until_ts"].as_i64().unwrap_or(0);
        self.db
            .write(move |w| {
                for (id, key) in &stored {
                    w.store_server_key(&s, id, key, valid_until, now)?;
                }
                w.store_server_key_doc(&s, &text, doc_valid_until)?;
                Ok::<_, Error>(())
            })
            .await?;
        Ok(keys)
    }

    /// `server`'s key document as a trusted key server vouches for it: signed by `server` itself
    /// (checked by the caller) and by the notary (checked here with the notary's own keys).
    async fn keys_from_notaries(&self, server: &ServerName) -> Option<Value> {
        for notary in &self.config.federation.trusted_key_servers {
            let Ok(notary) = ServerName::parse(notary) else { continue };
            if notary == server || notary == self.server_name {
                continue;
            }
            let body = json!({"server_keys": {server.as_str(): {}}});
            let answer =
                match self.federation_request(&notary, http::Method::POST, "/_matrix/key/v2/query", Some(body)).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::info!(%notary, %server, error = %e, "trusted key server did not answer");
                        continue;
                    }
                };
            let Some(doc) = answer["server_keys"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["server_name"].as_str() == Some(server.as_str()))
                .cloned()
            else {
                continue;
            };
            let Ok(notary_keys) = Box::pin(self.verify_keys_with(&notary, false)).await else { continue };
            if countersigned_by(&notary, &notary_keys, &doc) {
                tracing::info!(%server, %notary, "keys vouched for by a trusted key server");
                return Some(doc);
            }
            tracing::warn!(%server, %notary, "a trusted key server's answer is not signed by it");
        }
        None
    }

    /// Notary service (`/_matrix/key/v2/query`): the key documents of `servers` as they signed
    /// them, each countersigned by us. Documents not valid until `min_valid_until` are fetched
    /// anew; servers that cannot be reached are left out.
    pub async fn notary_key_docs(&self, servers: Vec<(OwnedServerName, u64)>) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        // Anyone may ask a notary, so what one request makes us fetch is bounded: at most
        // MAX_NOTARY_NAMES names answered, MAX_NOTARY_REFETCHES of them fetched afresh.
        let mut refetches = 0;
        for (server, min_valid_until) in servers.into_iter().take(MAX_NOTARY_NAMES) {
            let mut doc = if server == self.server_name {
                self.server_keys_document()?
            } else {
                let s = server.to_string();
                let stored = self.db.read(move |r| Ok::<_, Error>(r.server_key_doc(&s)?)).await?;
                match stored {
                    Some((text, until)) if until as u64 >= min_valid_until.max(now_ms()) => {
                        serde_json::from_str(&text)?
                    }
                    _ if refetches >= MAX_NOTARY_REFETCHES => continue,
                    _ => {
                        refetches += 1;
                        if let Err(e) = self.refetch_server_keys(&server).await {
                            tracing::info!(%server, error = %e, "notary: could not fetch keys");
                            continue;
                        }
                        let s = server.to_string();
                        match self.db.read(move |r| Ok::<_, Error>(r.server_key_doc(&s)?)).await? {
                            Some((text, _)) => serde_json::from_str(&text)?,
                            None => continue,
                        }
                    }
                }
            };
            if server != self.server_name {
                let CanonicalJsonValue::Object(mut obj) =
                    CanonicalJsonValue::try_from(doc.clone()).map_err(|e| Error::internal(e.to_string()))?
                else {
                    continue;
                };
                ruma::signatures::sign_json(self.server_name.as_str(), self.signer.key.as_ref(), &mut obj)
                    .map_err(|e| Error::internal(format!("countersigning: {e}")))?;
                doc = serde_json::to_value(obj)?;
            }
            out.push(doc);
        }
        Ok(out)
    }

    async fn refetch_server_keys(&self, server: &ServerName) -> Result<()> {
        let fed = self.federation()?;
        fed.check_keys_not_failed(server)?;
        let fetched = async {
            let doc = fed.get_json(server, "/_matrix/key/v2/server").await?;
            let keys = verify_key_document(server, &doc)?;
            Ok((doc, keys))
        }
        .await;
        let (doc, keys) = fed.note_key_fetch(server, fetched)?;
        let now = now_ms() as i64;
        let valid_until = doc["valid_until_ts"].as_i64().unwrap_or(0);
        let (s, text) = (server.to_string(), serde_json::to_string(&doc)?);
        self.db
            .write(move |w| {
                for (id, key) in &keys {
                    w.store_server_key(&s, id, key, valid_until.min(now + MAX_CACHE_MS), now)?;
                }
                w.store_server_key_doc(&s, &text, valid_until)?;
                Ok::<_, Error>(())
            })
            .await
    }
}

/// Whether one of `keys` (the notary's) signed `doc`.
fn countersigned_by(notary: &ServerName, keys: &BTreeMap<String, String>, doc: &Value) -> bool {
    let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(doc.clone()) else { return false };
    if let Some(CanonicalJsonValue::Object(sigs)) = obj.get_mut("signatures") {
        sigs.retain(|entity, _| entity == notary.as_str());
    }
    keys.iter().any(|(id, key)| {
        let Ok(public) = ruma::serde::Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(key) else {
            return false;
        };
        let mut only_this = obj.clone();
        if let Some(CanonicalJsonValue::Object(sigs)) = only_this.get_mut("signatures") {
            if let Some(CanonicalJsonValue::Object(by)) = sigs.get_mut(notary.as_str()) {
                by.retain(|k, _| k == id);
                if by.is_empty() {
                    return false;
                }
            } else {
                return false;
            }
        }
        let map = BTreeMap::from([(
            notary.to_string(),
            BTreeMap::from([(id.clone(), ruma::serde::Base64::new(public.into_inner()))]),
        )]);
        ruma::signatures::verify_json(&map, &only_this).is_ok()
    })
}

/// Checks a fetched key document: it names the server we asked, and every key it lists signed it.
pub(crate) fn verify_key_document(server: &ServerName, doc: &Value) -> Result<BTreeMap<String, String>> {
    let bad =
        |why: String| Error::new(ruma::api::error::ErrorKind::Unauthorized, 401, format!("{server}'s keys: {why}"));
    if doc["server_name"].as_str() != Some(server.as_str()) {
        return Err(bad("the document names another server".into()));
    }
    let keys: BTreeMap<String, String> = doc["verify_keys"]
        .as_object()
        .map(|m| m.iter().filter_map(|(id, v)| Some((id.clone(), v["key"].as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return Err(bad("no verify keys".into()));
    }
    let CanonicalJsonValue::Object(obj) =
        CanonicalJsonValue::try_from(doc.clone()).map_err(|e| bad(format!("not canonical JSON: {e}")))?
    else {
        return Err(bad("not an object".into()));
    };
    let obj: CanonicalJsonObject = obj;
    for (id, key) in &keys {
        let public = ruma::serde::Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(key)
            .map_err(|e| bad(format!("key {id} is not base64: {e}")))?;
        let map = BTreeMap::from([(
            server.to_string(),
            BTreeMap::from([(id.clone(), ruma::serde::Base64::new(public.into_inner()))]),
        )]);
        let mut only_this = obj.clone();
        // verify_json checks every signing entity listed; keep only this key's signature.
        if let Some(CanonicalJsonValue::Object(sigs)) = only_this.get_mut("signatures") {
            sigs.retain(|entity, _| entity == server.as_str());
            if let Some(CanonicalJsonValue::Object(by_server)) = sigs.get_mut(server.as_str()) {
                by_server.retain(|k, _| k == id);
            }
        }
        ruma::signatures::verify_json(&map, &only_this).map_err(|e| bad(format!("self-signature by {id}: {e}")))?;
    }
    Ok(keys)
}
