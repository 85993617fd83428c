//! Pushing events to application services (`PUT /_matrix/app/v1/transactions/{txnId}`).
//!
//! One task per service with a `url`. Its queue is the room events after its cursor
//! (`appservice_state.last_stream`), filtered to those it is interested in: sent by or about a
//! user of its namespaces, in a room of its room namespace, in a room with an alias of its alias
//! namespace, or in a room where one of its users is joined. Before a transaction is sent its id
//! and the last event it covers are written, so a retry — after a failure or a restart — sends
//! the same events under the same id. Failures back off from 1 s to 5 min for that service only:
//! a slow or dead bridge delays nothing else. Requests go through the outbound guard (any address:
//! the operator chose the URL), without redirects, 60 s each.

use std::{
    collections::BTreeMap,
    sync::{Arc, Weak},
    time::Duration,
};

use moss_storage::AppserviceState;
use ruma::{api::OutgoingRequestExt, serde::Raw, OwnedDeviceId, OwnedUserId, UInt};
use serde_json::Value;

use super::{batch, AppService};
use crate::{
    error::Result,
    net::{AddressPolicy, ClientOptions, GuardedClient, RedirectRule},
    Error, Moss,
};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The client for application services: through the guard, any address (the operator wrote
/// the URL), no redirects, `timeout` per request.
pub(super) fn service_client(timeout: Duration) -> Result<GuardedClient> {
    let mut options = ClientOptions::new("application services");
    options.redirects = RedirectRule::None;
    options.total_timeout = Some(timeout);
    options.connect_timeout = timeout.min(Duration::from_secs(10));
    GuardedClient::new(Arc::new(AddressPolicy { deny: vec![], allow: vec![] }), options)
}

impl Moss {
    /// `POST /_matrix/client/v1/appservice/{id}/ping`: the service asks the homeserver to call
    /// its `POST /_matrix/app/v1/ping` and says how long the round trip took.
    pub async fn ping_appservice(
        &self,
        session: &crate::accounts::Session,
        appservice_id: &str,
        transaction_id: Option<ruma::OwnedTransactionId>,
    ) -> Result<Duration> {
        use ruma::api::{appservice::ping::send_ping::v1::Request, error::ErrorKind};
        let service = session
            .appservice
            .clone()
            .filter(|s| s.id() == appservice_id)
            .ok_or_else(|| Error::forbidden("only the application service itself may ping it"))?;
        let url = service
            .registration
            .url
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::UrlNotSet, 400, "the application service has no url"))?;
        let mut request = Request::new();
        request.transaction_id = transaction_id;
        let request = request
            .try_into_http_request::<Vec<u8>>(url.trim_end_matches('/'), &service.registration.hs_token, ())
            .map_err(|e| Error::internal(format!("building the ping: {e}")))?;
        let (parts, body) = request.into_parts();
        let started = std::time::Instant::now();
        let sent = service_client(Duration::from_secs(15))?
            .request(parts.method, &parts.uri.to_string())?
            .headers(parts.headers)
            .body(body)
            .send()
            .await;
        let res = match sent {
            Ok(res) => res,
            Err(e) if e.is_timeout() => {
                return Err(Error::hidden(
                    ErrorKind::ConnectionTimeout,
                    504,
                    "the application service did not answer in time",
                    crate::net::error_chain(&e),
                ))
            }
            Err(e) => {
                return Err(Error::hidden(
                    ErrorKind::ConnectionFailed,
                    502,
                    "the application service could not be reached",
                    crate::net::error_chain(&e),
                ))
            }
        };
        let duration = started.elapsed();
        let status = res.status();
        if !status.is_success() {
            let body = crate::net::read_limited(res, 4096).await.ok().map(|b| String::from_utf8_lossy(&b).into_owned());
            let mut data = ruma::api::error::BadStatusErrorData::new();
            data.status = Some(status);
            data.body = body;
            return Err(Error::new(
                ErrorKind::BadStatus(data),
                502,
                format!("the application service answered {status}"),
            ));
        }
        // It answered: if its transactions were failing, try again now rather than after the backoff.
        service.reachable_again.notify_waiters();
        Ok(duration)
    }

    /// Starts a delivery task for every service with a URL.
    pub(crate) fn spawn_appservice_senders(self: &Arc<Self>) {
        let client = match service_client(Duration::from_secs(60)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("application services: {e}");
                return;
            }
        };
        for service in self.appservices.all() {
            if service.registration.url.is_none() {
                continue;
            }
            let (moss, service, client) = (Arc::downgrade(self), service.clone(), client.clone());
            tokio::spawn(async move { run(moss, service, client).await });
        }
    }
}

async fn run(moss: Weak<Moss>, service: Arc<AppService>, client: GuardedClient) {
    let (mut wake, mut wake_all) = match moss.upgrade() {
        Some(m) => {
            let id = service.id().to_owned();
            if let Err(e) =
                m.db.write(move |w| {
                    let now = w.current_stream()?;
                    Ok::<_, Error>(w.init_appservice_state(&id, now)?)
                })
                .await
            {
                tracing::error!(appservice = service.id(), "cannot start delivery: {e}");
                return;
            }
            (m.appservices.wake.subscribe(), m.notifier.subscribe_all())
        }
        None => return,
    };
    let mut mem = Memory { typing_sent: 0, skipped_to: None, persisted_at: std::time::Instant::now() };
    let wants_all = service.receive_ephemeral || service.msc3202;
    let mut backoff = Duration::ZERO;
    loop {
        let Some(m) = moss.upgrade() else { return };
        let outcome = round(&m, &service, &client, &mut mem).await;
        drop(m);
        match outcome {
            Ok(true) => backoff = Duration::ZERO,
            Ok(false) => {
                backoff = Duration::ZERO;
                let idle = tokio::time::sleep(Duration::from_secs(5));
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = wake_all.changed(), if wants_all => {}
                    _ = idle => {}
                }
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                tracing::warn!(appservice = service.id(), retry_in = ?backoff, "transaction not delivered: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = service.reachable_again.notified() => {
                        tracing::info!(appservice = service.id(), "the service answered a ping: retrying now");
                    }
                }
            }
        }
    }
}

/// What a delivery task keeps in memory between rounds.
struct Memory {
    /// Typing lives in memory: the serial this task last sent.
    typing_sent: u64,
    /// Stretches of no interest are skipped in memory and written at most every
    /// [`PERSIST_SKIP`] (a restart looks at them again and finds nothing): no write, and no
    /// fsync, per event of rooms the service does not care about.
    skipped_to: Option<i64>,
    persisted_at: std::time::Instant,
}

const PERSIST_SKIP: Duration = Duration::from_secs(5);

/// One transaction (or a skip over a stretch of no interest); true if there may be more.
async fn round(moss: &Arc<Moss>, service: &Arc<AppService>, client: &GuardedClient, mem: &mut Memory) -> Result<bool> {
    let (id, s) = (service.id().to_owned(), service.clone());
    let typing_serial = moss.typing.serial();
    let typing = if service.receive_ephemeral && typing_serial > mem.typing_sent {
        moss.typing.rooms_changed_since(mem.typing_sent)
    } else {
        Vec::new()
    };
    let skipped_to = mem.skipped_to;
    let (state, batch) = moss
        .db
        .read(move |r| {
            let mut state = r.appservice_state(&id)?.ok_or_else(|| Error::internal("no appservice state"))?;
            if let Some(skip) = skipped_to.filter(|s| *s > state.last_stream && state.pending_upto.is_none()) {
                state.last_stream = skip;
            }
            let batch = batch::collect(r, &s, &state, &typing)?;
            Ok::<_, Error>((state, batch))
        })
        .await?;
    let id = service.id().to_owned();
    if batch.is_empty() {
        mem.typing_sent = typing_serial;
        if batch.upto > state.last_stream {
            mem.skipped_to = Some(batch.upto);
            if batch.more || mem.persisted_at.elapsed() >= PERSIST_SKIP {
                let next = AppserviceState { last_stream: batch.upto, txn_id: state.txn_id, pending_upto: None };
                moss.db.write(move |w| Ok::<_, Error>(w.set_appservice_state(&id, &next)?)).await?;
                mem.persisted_at = std::time::Instant::now();
            }
        }
        return Ok(batch.more);
    }
    let txn_id = match state.pending_upto {
        Some(_) => state.txn_id,
        None => {
            let pending = AppserviceState {
                last_stream: state.last_stream,
                txn_id: state.txn_id + 1,
                pending_upto: Some(batch.upto),
            };
            let i = id.clone();
            moss.db.write(move |w| Ok::<_, Error>(w.set_appservice_state(&i, &pending)?)).await?;
            state.txn_id + 1
        }
    };
    let (upto, taken) = (batch.upto, batch.to_device_taken.clone());
    send(service, client, txn_id, batch).await?;
    mem.typing_sent = typing_serial;
    mem.persisted_at = std::time::Instant::now();
    let done = AppserviceState { last_stream: upto, txn_id, pending_upto: None };
    moss.db
        .write(move |w| {
            w.set_appservice_state(&id, &done)?;
            for ((user, device), stream) in &taken {
                w.delete_to_device_upto(user, device, *stream)?;
            }
            Ok::<_, Error>(())
        })
        .await?;
    Ok(true)
}

async fn send(service: &AppService, client: &GuardedClient, txn_id: i64, batch: batch::Batch) -> Result<()> {
    use ruma::api::appservice::event::push_events::v1::{DeviceLists, Request};
    let url = service.registration.url.as_deref().unwrap_or_default().trim_end_matches('/').to_owned();
    let events = batch.events.iter().map(raw).collect::<std::result::Result<Vec<_>, _>>()?;
    let mut request = Request::new(txn_id.to_string().into(), events);
    request.ephemeral = batch.ephemeral.iter().map(raw).collect::<std::result::Result<Vec<_>, _>>()?;
    request.to_device = batch.to_device.into_iter().map(Raw::from_json).collect();
    let mut lists = DeviceLists::new();
    lists.changed = batch.changed.iter().filter_map(|u| u.parse().ok()).collect();
    lists.left = batch.left.iter().filter_map(|u| u.parse().ok()).collect();
    request.device_lists = lists;
    request.device_one_time_keys_count = typed_per_device(batch.otk_counts, |counts| {
        counts.into_iter().map(|(alg, n)| (alg.as_str().into(), UInt::new_saturating(n))).collect()
    });
    request.device_unused_fallback_key_types =
        typed_per_device(batch.fallback_types, |types| types.iter().map(|t| t.as_str().into()).collect());
    let request = request
        .try_into_http_request::<Vec<u8>>(&url, &service.registration.hs_token, ())
        .map_err(|e| Error::internal(format!("building the transaction: {e}")))?;
    let (parts, mut body) = request.into_parts();
    if !batch.ephemeral.is_empty() {
        // Bridges written before MSC2409 was merged (v1.13) read the unstable key.
        let mut map: serde_json::Map<String, Value> = serde_json::from_slice(&body)?;
        if let Some(e) = map.get("ephemeral").cloned() {
            map.insert("de.sorunome.msc2409.ephemeral".into(), e);
        }
        body = serde_json::to_vec(&map)?;
    }
    let res = client
        .request(parts.method, &parts.uri.to_string())?
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| Error::upstream("the application service is unreachable", crate::net::error_chain(&e)))?;
    if !res.status().is_success() {
        return Err(Error::upstream("the application service refused", format!("answered {}", res.status())));
    }
    Ok(())
}

fn raw<T>(v: &Value) -> serde_json::Result<Raw<T>> {
    serde_json::value::to_raw_value(v).map(Raw::from_json)
}

/// Per-user, per-device maps keyed by strings, as ruma's typed ids (invalid ids dropped).
fn typed_per_device<T, U>(
    map: batch::PerDevice<T>,
    f: impl Fn(T) -> U,
) -> BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, U>> {
    map.into_iter()
        .filter_map(|(user, devices)| {
            let user: OwnedUserId = user.parse().ok()?;
            Some((user, devices.into_iter().map(|(d, v)| (OwnedDeviceId::from(d), f(v))).collect()))
        })
        .collect()
}
