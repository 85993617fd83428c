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
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use moss_storage::{AppserviceState, EventRow, Reader};
use ruma::{api::OutgoingRequestExt, serde::Raw};
use serde_json::Value;

use super::AppService;
use crate::{
    error::Result,
    net::{AddressPolicy, ClientOptions, GuardedClient, RedirectRule},
    rooms::read::client_event,
    Error, Moss,
};

/// Events looked at per round, and most events in one transaction.
const SCAN: i64 = 1000;
const MAX_EVENTS: usize = 100;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The client for application services: through the guard, any address (the operator wrote
/// the URL), no redirects, `timeout` per request.
fn service_client(timeout: Duration) -> Result<GuardedClient> {
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
    let mut wake = match moss.upgrade() {
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
            m.appservices.wake.subscribe()
        }
        None => return,
    };
    let mut backoff = Duration::ZERO;
    loop {
        let Some(m) = moss.upgrade() else { return };
        let outcome = round(&m, &service, &client).await;
        drop(m);
        match outcome {
            Ok(true) => backoff = Duration::ZERO,
            Ok(false) => {
                backoff = Duration::ZERO;
                let _ = tokio::time::timeout(Duration::from_secs(5), wake.changed()).await;
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                tracing::warn!(appservice = service.id(), retry_in = ?backoff, "transaction not delivered: {e}");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// One transaction (or a skip over events of no interest); true if there may be more.
async fn round(moss: &Arc<Moss>, service: &Arc<AppService>, client: &GuardedClient) -> Result<bool> {
    let (id, s) = (service.id().to_owned(), service.clone());
    let (state, upto, events, full) = moss
        .db
        .read(move |r| {
            let state = r.appservice_state(&id)?.ok_or_else(|| Error::internal("no appservice state"))?;
            let rows = r.events_after(state.last_stream, SCAN)?;
            let full = rows.len() as i64 == SCAN;
            let mut rooms = HashMap::new();
            let mut events = Vec::new();
            let mut upto = rows.last().map_or(state.last_stream, |e| e.stream);
            for row in &rows {
                if state.pending_upto.is_some_and(|p| row.stream > p) {
                    break;
                }
                if interested(r, &s, row, &mut rooms)? {
                    events.push(client_event(row, "", None)?);
                    if events.len() == MAX_EVENTS && state.pending_upto.is_none() {
                        upto = row.stream;
                        break;
                    }
                }
            }
            if let Some(p) = state.pending_upto {
                upto = p;
            }
            Ok::<_, Error>((state, upto, events, full))
        })
        .await?;
    let id = service.id().to_owned();
    if events.is_empty() {
        if upto > state.last_stream {
            let next = AppserviceState { last_stream: upto, txn_id: state.txn_id, pending_upto: None };
            moss.db.write(move |w| Ok::<_, Error>(w.set_appservice_state(&id, &next)?)).await?;
        }
        return Ok(full);
    }
    let txn_id = match state.pending_upto {
        Some(_) => state.txn_id,
        None => {
            let pending =
                AppserviceState { last_stream: state.last_stream, txn_id: state.txn_id + 1, pending_upto: Some(upto) };
            let i = id.clone();
            moss.db.write(move |w| Ok::<_, Error>(w.set_appservice_state(&i, &pending)?)).await?;
            state.txn_id + 1
        }
    };
    send(service, client, txn_id, events).await?;
    let done = AppserviceState { last_stream: upto, txn_id, pending_upto: None };
    moss.db.write(move |w| Ok::<_, Error>(w.set_appservice_state(&id, &done)?)).await?;
    Ok(true)
}

async fn send(service: &AppService, client: &GuardedClient, txn_id: i64, events: Vec<Value>) -> Result<()> {
    use ruma::api::appservice::event::push_events::v1::Request;
    let url = service.registration.url.as_deref().unwrap_or_default().trim_end_matches('/').to_owned();
    let events = events
        .iter()
        .map(|e| Ok(Raw::from_json(serde_json::value::to_raw_value(e)?)))
        .collect::<std::result::Result<Vec<_>, serde_json::Error>>()?;
    let request = Request::new(txn_id.to_string().into(), events)
        .try_into_http_request::<Vec<u8>>(&url, &service.registration.hs_token, ())
        .map_err(|e| Error::internal(format!("building the transaction: {e}")))?;
    let (parts, body) = request.into_parts();
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

/// Per round: a room's joined members and aliases, read once.
struct RoomFacts {
    members: Vec<String>,
    aliases: Vec<String>,
}

fn interested(r: &Reader<'_>, s: &AppService, row: &EventRow, rooms: &mut HashMap<String, RoomFacts>) -> Result<bool> {
    if s.owns_user(&row.sender)
        || row.kind == "m.room.member" && row.state_key.as_deref().is_some_and(|k| s.owns_user(k))
    {
        return Ok(true);
    }
    if s.owns_room(&row.room_id) {
        return Ok(true);
    }
    if !rooms.contains_key(&row.room_id) {
        let members = r.joined_members_since(&row.room_id)?.into_iter().map(|(u, _)| u).collect();
        let aliases = r.room_aliases(&row.room_id)?;
        rooms.insert(row.room_id.clone(), RoomFacts { members, aliases });
    }
    let facts = rooms.get(&row.room_id).ok_or_else(|| Error::internal("room facts"))?;
    let hit = facts.members.iter().any(|m| s.owns_user(m)) || facts.aliases.iter().any(|a| s.owns_alias(a));
    // A membership change may change who is in the room for the events after it.
    if row.kind == "m.room.member" {
        rooms.remove(&row.room_id);
    }
    Ok(hit)
}
