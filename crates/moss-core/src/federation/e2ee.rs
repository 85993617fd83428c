//! End-to-end encryption across servers: asking other servers for their users' device keys and
//! one-time keys (`/user/keys/query`, `/user/keys/claim`), and answering theirs
//! (`/user/devices/{userId}` too). A server that does not answer in time is reported in
//! `failures`, as the spec asks, and never holds the client's request up for long.

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::join_all;
use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId, UserId};
use serde_json::{json, Value};

use crate::{
    e2ee::device_keys::{KeysClaimResult, KeysQueryResult},
    error::{Error, Result},
    Moss,
};

/// How long a client's keys/query or keys/claim waits for other servers.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

fn by_server<T>(wanted: BTreeMap<OwnedUserId, T>) -> BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> {
    let mut out: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
    for (user, v) in wanted {
        out.entry(user.server_name().to_owned()).or_default().insert(user, v);
    }
    out
}

fn failure(e: &Error) -> Value {
    json!({"status": 503, "message": e.to_string()})
}

/// Entries of a remote answer that belong to users of that server (a server speaks only for its
/// own users).
fn own_users(server: &OwnedServerName, v: &Value) -> Vec<(OwnedUserId, Value)> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(u, keys)| UserId::parse(u).ok().filter(|u| u.server_name() == server).map(|u| (u, keys.clone())))
        .collect()
}

impl Moss {
    async fn ask_servers<T: serde::Serialize + Send>(
        &self,
        path: &str,
        field: &str,
        wanted: BTreeMap<OwnedUserId, T>,
    ) -> Vec<(OwnedServerName, Result<Value>)> {
        let asks = by_server(wanted).into_iter().map(|(server, users)| async move {
            let res = match self.federation.is_some() {
                false => Err(Error::forbidden("federation is disabled on this server")),
                true => match tokio::time::timeout(
                    REMOTE_TIMEOUT,
                    self.federation_request(&server, http::Method::POST, path, Some(json!({ field: users }))),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(Error::internal(format!("{server} did not answer in time"))),
                },
            };
            (server, res)
        });
        join_all(asks).await
    }

    pub(crate) async fn query_remote_keys(
        &self,
        out: &mut KeysQueryResult,
        remote: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) {
        for (server, res) in self.ask_servers("/_matrix/federation/v1/user/keys/query", "device_keys", remote).await {
            let v = match res {
                Ok(v) => v,
                Err(e) => {
                    out.failures.insert(server.to_string(), failure(&e));
                    continue;
                }
            };
            for (user, devices) in own_users(&server, &v["device_keys"]) {
                let devices = devices
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(d, k)| (OwnedDeviceId::from(d.as_str()), k.clone()))
                    .collect();
                out.device_keys.insert(user, devices);
            }
            for (user, key) in own_users(&server, &v["master_keys"]) {
                out.master_keys.insert(user, key);
            }
            for (user, key) in own_users(&server, &v["self_signing_keys"]) {
                out.self_signing_keys.insert(user, key);
            }
        }
    }

    pub(crate) async fn claim_remote_keys(
        &self,
        out: &mut KeysClaimResult,
        remote: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) {
        for (server, res) in self.ask_servers("/_matrix/federation/v1/user/keys/claim", "one_time_keys", remote).await {
            let v = match res {
                Ok(v) => v,
                Err(e) => {
                    out.failures.insert(server.to_string(), failure(&e));
                    continue;
                }
            };
            for (user, devices) in own_users(&server, &v["one_time_keys"]) {
                let devices = devices
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(d, keys)| {
                        let keys =
                            keys.as_object().into_iter().flatten().map(|(id, k)| (id.clone(), k.clone())).collect();
                        (OwnedDeviceId::from(d.as_str()), keys)
                    })
                    .collect();
                out.one_time_keys.insert(user, devices);
            }
        }
    }

    /// `GET /_matrix/federation/v1/user/devices/{userId}`: a local user's devices with their keys.
    pub async fn serve_user_devices(&self, user: &UserId) -> Result<Value> {
        if user.server_name() != self.server_name {
            return Err(Error::invalid_param("that user is not on this server"));
        }
        let keys = self.query_keys(None, BTreeMap::from([(user.to_owned(), vec![])])).await?;
        let (u, uu) = (user.to_string(), user.to_owned());
        let (names, stream) = self
            .db
            .read(move |r| {
                let names: BTreeMap<String, Option<String>> =
                    r.devices(&u)?.into_iter().map(|d| (d.device_id, d.display_name)).collect();
                Ok::<_, Error>((names, r.current_stream()?))
            })
            .await?;
        let mut devices = Vec::new();
        for (device_id, name) in names {
            let mut d = json!({"device_id": device_id});
            if let Some(k) = keys.device_keys.get(&uu).and_then(|m| m.get(device_id.as_str())) {
                d["keys"] = k.clone();
            }
            if let Some(n) = name {
                d["device_display_name"] = json!(n);
            }
            devices.push(d);
        }
        let mut v = json!({"user_id": user, "stream_id": stream, "devices": devices});
        if let Some(k) = keys.master_keys.get(&uu) {
            v["master_key"] = k.clone();
        }
        if let Some(k) = keys.self_signing_keys.get(&uu) {
            v["self_signing_key"] = k.clone();
        }
        Ok(v)
    }
}
