//! Outbound delivery: every PDU and EDU for another server is queued in the database in the same
//! transaction that made it (so a crash loses nothing), then one task per destination sends the
//! queue as transactions of at most 50 PDUs and 100 EDUs, in order, backing off exponentially
//! while the destination fails. Destinations never wait on each other, and a restart resumes
//! whatever was left in the queue.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use moss_storage::Writer;
use ruma::{OwnedServerName, ServerName};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use crate::{
    error::{Error, Result},
    now_ms,
    rooms::external::federation_form,
    Moss,
};

const MAX_PDUS: i64 = 50;
const MAX_EDUS: i64 = 100;
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Queued typing notifications older than this are dropped, not sent.
const STALE_TYPING_MS: i64 = 30_000;
/// Queued presence updates older than this are dropped, not sent.
const STALE_PRESENCE_MS: i64 = 15 * 60_000;

/// Wakes destination tasks; held by [`super::Federation`].
pub struct Wakeups {
    tx: mpsc::UnboundedSender<(OwnedServerName, bool)>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(OwnedServerName, bool)>>>,
}

impl Default for Wakeups {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Wakeups { tx, rx: std::sync::Mutex::new(Some(rx)) }
    }
}

/// Queues a PDU (by event id) for each destination, inside the caller's transaction.
pub fn queue_pdu<'a>(w: &Writer<'_>, destinations: impl IntoIterator<Item = &'a str>, event_id: &str) -> Result<()> {
    for d in destinations {
        w.enqueue_outbound(d, "pdu", event_id, now_ms() as i64)?;
    }
    Ok(())
}

/// Queues an EDU for each destination, inside the caller's transaction.
pub fn queue_edu<'a>(w: &Writer<'_>, destinations: impl IntoIterator<Item = &'a str>, edu: &Value) -> Result<()> {
    let text = serde_json::to_string(edu)?;
    for d in destinations {
        w.enqueue_outbound(d, "edu", &text, now_ms() as i64)?;
    }
    Ok(())
}

impl Moss {
    /// Records how an attempt to send to `dest` went: delivered (up to a stream position), or
    /// failed with `retry_in` before the next one.
    fn note_delivery(&self, dest: &ServerName, outcome: std::result::Result<Option<i64>, Duration>) {
        let Some(fed) = &self.federation else { return };
        let now = crate::now_ms() as i64;
        let mut all = fed.delivery.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() > 100_000 {
            all.clear();
        }
        let d = all.entry(dest.to_owned()).or_default();
        d.retry_last_ts = now;
        match outcome {
            Ok(stream) => {
                d.failure_ts = None;
                d.retry_interval_ms = 0;
                if stream.is_some() {
                    d.last_successful_stream = stream;
                }
            }
            Err(retry_in) => {
                d.failure_ts.get_or_insert(now);
                d.retry_interval_ms = retry_in.as_millis() as i64;
            }
        }
    }

    /// Tells the destinations' tasks there is something to send (in whichever process runs
    /// them: crate::cluster).
    pub(crate) fn wake_destinations<'a>(&self, destinations: impl IntoIterator<Item = &'a str>) {
        if self.federation.is_none() {
            return;
        }
        let destinations: Vec<&str> = destinations.into_iter().collect();
        if self.cluster.is_shared() && !destinations.is_empty() {
            self.publish(crate::cluster::Signal::Federation {
                destinations: destinations.iter().map(|d| d.to_string()).collect(),
                reset: false,
            });
        }
        self.wake_destinations_local(destinations);
    }

    pub(crate) fn wake_destinations_local<'a>(&self, destinations: impl IntoIterator<Item = &'a str>) {
        let Some(fed) = &self.federation else { return };
        for d in destinations {
            if let Ok(name) = ServerName::parse(d) {
                let _ = fed.wakeups.tx.send((name, false));
            }
        }
    }

    /// A server we had given up on for a while talked to us: retry it now.
    pub fn destination_is_back(&self, server: &ServerName) {
        if self.cluster.is_shared() {
            self.publish(crate::cluster::Signal::Federation { destinations: vec![server.to_string()], reset: true });
        }
        self.destination_is_back_local(server);
    }

    pub(crate) fn destination_is_back_local(&self, server: &ServerName) {
        if let Some(fed) = &self.federation {
            fed.mark_up(server);
            let _ = fed.wakeups.tx.send((server.to_owned(), true));
        }
    }

    /// Starts the dispatcher that owns one task per destination, and resumes every queue left
    /// from before a restart.
    pub(crate) fn spawn_federation_sender(self: &Arc<Self>) {
        let Some(fed) = &self.federation else { return };
        let Some(mut rx) = fed.wakeups.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tasks: HashMap<OwnedServerName, Arc<Notify>> = HashMap::new();
            let mut resets: HashMap<OwnedServerName, Arc<Notify>> = HashMap::new();
            if let Some(moss) = weak.upgrade() {
                let pending = moss.db.read(|r| Ok::<_, Error>(r.outbox_destinations()?)).await.unwrap_or_default();
                for d in pending {
                    if let Ok(name) = ServerName::parse(&d) {
                        let _ = moss.federation.as_ref().map(|f| f.wakeups.tx.send((name, false)));
                    }
                }
            }
            while let Some((dest, reset)) = rx.recv().await {
                let wake = tasks
                    .entry(dest.clone())
                    .or_insert_with(|| {
                        let wake = Arc::new(Notify::new());
                        let retry_now = Arc::new(Notify::new());
                        resets.insert(dest.clone(), retry_now.clone());
                        tokio::spawn(destination_task(weak.clone(), dest.clone(), wake.clone(), retry_now));
                        wake
                    })
                    .clone();
                if reset {
                    if let Some(r) = resets.get(&dest) {
                        r.notify_one();
                    }
                }
                wake.notify_one();
            }
        });
    }
}

/// Sends one destination's queue for as long as the server runs.
async fn destination_task(moss: Weak<Moss>, dest: OwnedServerName, wake: Arc<Notify>, retry_now: Arc<Notify>) {
    let mut delay = FIRST_RETRY;
    loop {
        let Some(m) = moss.upgrade() else { return };
        match send_batch(&m, &dest).await {
            Ok(true) => {
                delay = FIRST_RETRY;
                continue;
            }
            Ok(false) => {
                delay = FIRST_RETRY;
                drop(m);
                wake.notified().await;
            }
            Err(e) => {
                m.note_delivery(&dest, Err(delay));
                let max = Duration::from_millis(m.config.federation.max_retry_delay_ms.max(1000));
                tracing::info!(destination = %dest, error = %e, retry_in = ?delay, "federation send failed");
                drop(m);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = retry_now.notified() => {}
                }
                delay = (delay * 2).min(max);
            }
        }
    }
}

/// Sends the next transaction; `Ok(true)` when more may be queued.
async fn send_batch(moss: &Moss, dest: &ServerName) -> Result<bool> {
    let d = dest.to_string();
    let (pdu_rows, edu_rows, pdus) = moss
        .db
        .read(move |r| {
            let pdu_rows = r.outbox(&d, "pdu", MAX_PDUS)?;
            let edu_rows = r.outbox(&d, "edu", MAX_EDUS)?;
            let mut pdus = Vec::new();
            for row in &pdu_rows {
                let stored = match r.event(&row.payload)? {
                    Some(e) => Some(e.pdu),
                    None => r.outlier(&row.payload)?.map(|(_, pdu, _)| pdu),
                };
                if let Some(stored) = stored {
                    pdus.push(federation_form(&stored)?);
                }
            }
            Ok::<_, Error>((pdu_rows, edu_rows, pdus))
        })
        .await?;
    if pdu_rows.is_empty() && edu_rows.is_empty() {
        return Ok(false);
    }
    // Typing and presence describe a moment: after a long outage they would only mislead, so
    // they are dropped (and acknowledged with the rest) rather than sent late.
    let now = now_ms() as i64;
    let edus: Vec<Value> = edu_rows
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.payload).ok().map(|v| (e, v)))
        .filter(|(row, v)| still_relevant(v, now - row.queued_ts))
        .map(|(_, v)| v)
        .collect();
    if pdu_rows.is_empty() && edus.is_empty() {
        // Only stale EDUs: acknowledge them without a transaction.
        let (d, ids) = (dest.to_string(), edu_rows.iter().map(|r| r.id).collect::<Vec<_>>());
        moss.db.write(move |w| Ok::<_, Error>(w.dequeue_outbound(&d, &ids)?)).await?;
        return Ok(true);
    }
    let ids: Vec<i64> = pdu_rows.iter().chain(edu_rows.iter()).map(|r| r.id).collect();
    // Stable across retries of the same batch, unique per destination.
    let txn_id = format!("{}-{}", ids.iter().min().unwrap_or(&0), ids.iter().max().unwrap_or(&0));
    let body = json!({
        "origin": moss.server_name,
        "origin_server_ts": now_ms(),
        "pdus": pdus,
        "edus": edus,
    });
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    // The outbox keeps its own back-off, so it asks even a server marked down.
    let answer = match moss.federation_request_with(dest, http::Method::PUT, &path, Some(body), true).await {
        Ok(a) => a,
        Err(e) => {
            moss.metrics.federation_failures.get_or_create(&moss.metrics.destination(dest.as_str())).inc();
            return Err(e);
        }
    };
    moss.metrics.federation_sent.get_or_create(&moss.metrics.destination(dest.as_str())).inc();
    moss.note_delivery(dest, Ok(moss.db.read(|r| Ok::<_, Error>(r.current_stream()?)).await.ok()));
    if let Some(results) = answer["pdus"].as_object() {
        for (id, r) in results {
            if let Some(err) = r.get("error") {
                tracing::info!(destination = %dest, event_id = %id, error = %err, "destination refused a PDU");
            }
        }
    }
    let d = dest.to_string();
    moss.db.write(move |w| Ok::<_, Error>(w.dequeue_outbound(&d, &ids)?)).await?;
    Ok(true)
}

/// Whether an EDU that has waited `age_ms` in the queue is still worth sending.
fn still_relevant(edu: &Value, age_ms: i64) -> bool {
    match edu["edu_type"].as_str() {
        Some("m.typing") => age_ms < STALE_TYPING_MS,
        Some("m.presence") => age_ms < STALE_PRESENCE_MS,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_go_stale_messages_do_not() {
        let typing = json!({"edu_type": "m.typing", "content": {}});
        let presence = json!({"edu_type": "m.presence", "content": {}});
        let to_device = json!({"edu_type": "m.direct_to_device", "content": {}});
        assert!(still_relevant(&typing, 1_000));
        assert!(!still_relevant(&typing, 60_000));
        assert!(still_relevant(&presence, 60_000));
        assert!(!still_relevant(&presence, 3_600_000));
        // To-device messages carry keys: however late, they must arrive.
        assert!(still_relevant(&to_device, 30 * 24 * 3_600_000));
    }
}
