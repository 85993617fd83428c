//! Several moss processes on one PostgreSQL database: what one process tells the others, and
//! which of them does the background work.
//!
//! Entry points: [`Moss::start_cluster`] (from `spawn_background`) and [`Moss::publish`].
//!
//! - **Signals** go over PostgreSQL's `NOTIFY`/`LISTEN` (channel `moss_cluster`), as JSON with
//!   the sender's process id: `wake` (new data for some users: their long-polls answer, the
//!   push evaluator and application-service senders look), `typing` (typing is kept in memory:
//!   each process applies every change), `federation` (outbox rows for these destinations),
//!   `pushers` (pushes to send). A process that loses its listening connection wakes everything
//!   locally when it is back, since messages in between are lost.
//! - **Background work** (federation delivery, push evaluation and delivery, application-service
//!   transactions, presence timeouts) runs in one process at a time: the one holding the
//!   PostgreSQL advisory lock [`LEADER_LOCK`]. When it dies, PostgreSQL releases the lock with
//!   its connection and another process takes over; every queue is in the database, so the new
//!   holder resumes where the old one stopped.
//! - Writes are serialized across processes by a transaction-scoped advisory lock (moss-storage),
//!   so stream positions are handed out and committed in one order, as with SQLite.
//!
//! On SQLite there is one process: it leads at once and publishes nothing.

use std::sync::{Arc, OnceLock};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Moss;

const CHANNEL: &str = "moss_cluster";
/// The advisory lock whose holder runs the background work.
pub const LEADER_LOCK: i64 = 0x6d6f_736c; // "mosl"
/// A NOTIFY payload is limited to 8,000 bytes; user lists are split below this.
const MAX_PAYLOAD: usize = 7_000;

/// What one process tells the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    Wake {
        users: Vec<String>,
    },
    /// A typing change, with the serial and end time it was made with (crate::typing).
    Typing {
        room: OwnedRoomId,
        user: OwnedUserId,
        serial: u64,
        until_us: Option<u64>,
    },
    Federation {
        destinations: Vec<String>,
        reset: bool,
    },
    Pushers {
        users: Vec<String>,
    },
    /// These users' read receipts moved: the process running push sends their pushers a new
    /// badge (counts only).
    Badges {
        users: Vec<String>,
    },
    /// A user's push rules or ignore list changed: cached rules are stale.
    PushRules {
        user: String,
    },
    /// These users have a /sync open (or just ended one) on the sender: for presence, which the
    /// process running the background work times out.
    Syncing {
        users: Vec<String>,
    },
    /// An admin set (`Some`) or removed a user's message rate limit.
    RateLimit {
        user: String,
        limit: Option<(i64, i64)>,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    signal: Signal,
}

/// This process's side of the cluster.
pub struct Cluster {
    /// Random per process: a process ignores what it sent itself.
    id: String,
    outbox: OnceLock<mpsc::UnboundedSender<Signal>>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { id: crate::accounts::random_string(16), outbox: OnceLock::new() }
    }
}

impl Cluster {
    /// Queues a signal for the other processes (nothing when there are none).
    pub fn publish(&self, signal: Signal) {
        if let Some(tx) = self.outbox.get() {
            let _ = tx.send(signal);
        }
    }

    /// Whether other processes may be listening.
    pub fn is_shared(&self) -> bool {
        self.outbox.get().is_some()
    }
}

/// Splits a list of names into signals whose JSON stays under the payload limit.
fn chunks(names: Vec<String>, make: impl Fn(Vec<String>) -> Signal) -> Vec<Signal> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for n in names {
        if size + n.len() + 3 > MAX_PAYLOAD && !cur.is_empty() {
            out.push(make(std::mem::take(&mut cur)));
            size = 0;
        }
        size += n.len() + 3;
        cur.push(n);
    }
    if !cur.is_empty() {
        out.push(make(cur));
    }
    out
}

impl Moss {
    /// Tells the other processes (if any) about `signal`.
    pub fn publish(&self, signal: Signal) {
        self.cluster.publish(signal);
    }

    /// On a shared database: starts publishing and listening, and runs the background work
    /// (`start_work`) once this process holds the leader lock. Alone (SQLite): runs it now.
    pub(crate) fn start_cluster(self: &Arc<Self>, start_work: impl FnOnce(&Arc<Moss>) + Send + 'static) {
        if !self.db.is_shared() {
            start_work(self);
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
        let _ = self.cluster.outbox.set(tx);
        self.notifier.publish_to(self.cluster.outbox.get().cloned());
        // Publisher: sends queued signals, merging what queued up meanwhile.
        let moss = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let Some(moss) = moss.upgrade() else { break };
                for signal in merge(batch) {
                    let payload = match serde_json::to_string(&Envelope { from: moss.cluster.id.clone(), signal }) {
                        Ok(p) => p,
                        Err(_) => continue,
                    };
                    if let Err(e) = moss.db.notify(CHANNEL, payload).await {
                        tracing::warn!("cannot tell the other moss processes: {e}");
                    }
                }
            }
        });
        // Listener: applies what the others say.
        if let Some(mut heard) = self.db.listen(CHANNEL) {
            let moss = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(h) = heard.recv().await {
                    let Some(moss) = moss.upgrade() else { break };
                    match h {
                        moss_storage::cluster::Heard::Message(text) => match serde_json::from_str::<Envelope>(&text) {
                            Ok(env) if env.from != moss.cluster.id => moss.apply(env.signal).await,
                            Ok(_) => {}
                            Err(e) => tracing::warn!("unreadable message from another moss process: {e}"),
                        },
                        moss_storage::cluster::Heard::Reconnected => moss.wake_everything().await,
                    }
                }
            });
        }
        // Presence: who syncs here, told to the others a few times per offline timeout.
        let moss = Arc::downgrade(self);
        let every = std::time::Duration::from_millis(self.config.presence.offline_after_ms / 3)
            .clamp(std::time::Duration::from_millis(500), std::time::Duration::from_secs(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(moss) = moss.upgrade() else { break };
                let users = moss.presence_tracker.syncing(every * 2);
                for signal in chunks(users, |users| Signal::Syncing { users }) {
                    moss.publish(signal);
                }
            }
        });
        // Leadership: the background work starts once this process holds the lock.
        let moss = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut start_work = Some(start_work);
            let mut delay = std::time::Duration::from_millis(200);
            loop {
                let Some(db) = moss.upgrade().map(|m| m.db.clone()) else { break };
                match db.lead(LEADER_LOCK).await {
                    Ok(mut leadership) => {
                        let Some(m) = moss.upgrade() else { break };
                        if let Some(start) = start_work.take() {
                            tracing::info!(
                                "this process runs the background work (federation, push, bridges, presence)"
                            );
                            start(&m);
                        } else {
                            tracing::info!("this process holds the background work again");
                        }
                        drop(m);
                        leadership.lost().await;
                        // The work keeps running here; another process may take the lock
                        // meanwhile. Its queues are in the database, so double work is
                        // repeated sends, which receivers deduplicate.
                        tracing::error!("lost the leader lock's connection to PostgreSQL; taking it again");
                    }
                    Err(e) => tracing::warn!("cannot take the leader lock: {e}"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        });
    }

    async fn apply(&self, signal: Signal) {
        match signal {
            Signal::Wake { users } => {
                let ids: Vec<OwnedUserId> = users.iter().filter_map(|u| UserId::parse(u).ok()).collect();
                self.notifier.notify_local(ids.iter().map(|u| u.as_ref()));
                self.events_stored();
            }
            Signal::Typing { room, user, serial, until_us } => {
                if self.typing.apply(&room, &user, crate::typing::TypingChange { serial, until_us }) {
                    self.notify_room_local(&room).await;
                }
            }
            Signal::Federation { destinations, reset } => {
                if reset {
                    for d in &destinations {
                        if let Ok(s) = ServerName::parse(d) {
                            self.destination_is_back_local(&s);
                        }
                    }
                } else {
                    self.wake_destinations_local(destinations.iter().map(String::as_str));
                }
            }
            Signal::Pushers { users } => self.push.wake_pushers(users),
            Signal::Badges { users } => {
                for user in &users {
                    self.push.receipt_moved(user);
                }
            }
            Signal::PushRules { user } => self.push.invalidate_rules(&user),
            Signal::Syncing { users } => self.presence_tracker.syncing_elsewhere(&users),
            Signal::RateLimit { user, limit } => self.set_ratelimit_override_local(&user, limit),
        }
    }

    /// Waits (at most `limit`) until the push evaluator, in whichever process runs it, has gone
    /// past `stream`.
    pub(crate) async fn push_evaluated(&self, stream: i64, limit: std::time::Duration) {
        if !self.cluster.is_shared() {
            self.push.evaluated(stream, limit).await;
            return;
        }
        self.publish(Signal::Wake { users: vec![] });
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            match self.db.read(|r| Ok::<_, crate::Error>(r.push_evaluated_upto()?)).await {
                Ok(done) if done >= stream => return,
                Ok(_) => {}
                Err(_) => return,
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// After messages may have been lost: every long-poll here answers, every queue is looked at.
    async fn wake_everything(&self) {
        self.notifier.notify_all_local();
        self.events_stored();
        if let Ok(dests) = self.db.read(|r| Ok::<_, crate::Error>(r.outbox_destinations()?)).await {
            self.wake_destinations_local(dests.iter().map(String::as_str));
        }
    }

    /// Wakes this process's long-polls of a room's members (a change another process announced).
    async fn notify_room_local(&self, room: &RoomId) {
        let room = room.to_string();
        let members = self.db.read(move |r| Ok::<_, crate::Error>(r.room_members(&room)?)).await.unwrap_or_default();
        let ids: Vec<OwnedUserId> = members
            .into_iter()
            .filter(|m| m.membership == "join")
            .filter_map(|m| UserId::parse(m.user_id).ok())
            .collect();
        self.notifier.notify_local(ids.iter().map(|u| u.as_ref()));
    }
}

/// Fewer, larger signals: wakes and destinations merged, then split under the payload limit.
fn merge(batch: Vec<Signal>) -> Vec<Signal> {
    let mut users = std::collections::BTreeSet::new();
    let mut dests = std::collections::BTreeSet::new();
    let mut pushers = std::collections::BTreeSet::new();
    let mut badges = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for s in batch {
        match s {
            Signal::Wake { users: u } => users.extend(u),
            Signal::Federation { destinations, reset: false } => dests.extend(destinations),
            Signal::Pushers { users: u } => pushers.extend(u),
            Signal::Badges { users: u } => badges.extend(u),
            other => out.push(other),
        }
    }
    // An empty wake still matters: it wakes the push evaluator and the bridges' senders.
    if !users.is_empty() || out.is_empty() && dests.is_empty() && pushers.is_empty() && badges.is_empty() {
        out.extend(chunks(users.into_iter().collect(), |users| Signal::Wake { users }));
        if out.is_empty() {
            out.push(Signal::Wake { users: vec![] });
        }
    }
    out.extend(chunks(dests.into_iter().collect(), |destinations| Signal::Federation { destinations, reset: false }));
    out.extend(chunks(pushers.into_iter().collect(), |users| Signal::Pushers { users }));
    out.extend(chunks(badges.into_iter().collect(), |users| Signal::Badges { users }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_merge_and_stay_under_the_payload_limit() {
        let many: Vec<String> = (0..2_000).map(|i| format!("@user{i}:example.org")).collect();
        let merged = merge(vec![
            Signal::Wake { users: many[..1_000].to_vec() },
            Signal::Federation { destinations: vec!["a.org".into()], reset: false },
            Signal::Wake { users: many[1_000..].to_vec() },
            Signal::Federation { destinations: vec!["a.org".into(), "b.org".into()], reset: false },
        ]);
        let wakes: Vec<&Signal> = merged.iter().filter(|s| matches!(s, Signal::Wake { .. })).collect();
        assert!(wakes.len() > 1, "split");
        let total: usize = wakes.iter().map(|s| if let Signal::Wake { users } = s { users.len() } else { 0 }).sum();
        assert_eq!(total, 2_000);
        for s in &merged {
            let json = serde_json::to_string(&Envelope { from: "0123456789abcdef".into(), signal: s.clone() }).unwrap();
            assert!(json.len() < 8_000, "{}", json.len());
        }
        assert!(
            merged.contains(&Signal::Federation { destinations: vec!["a.org".into(), "b.org".into()], reset: false })
        );
        assert_eq!(merge(vec![Signal::Wake { users: vec![] }]), vec![Signal::Wake { users: vec![] }]);
        // Badges merge like pushers, and alone need no wake.
        assert_eq!(
            merge(vec![
                Signal::Badges { users: vec!["@b:x".into()] },
                Signal::Badges { users: vec!["@a:x".into(), "@b:x".into()] }
            ]),
            vec![Signal::Badges { users: vec!["@a:x".into(), "@b:x".into()] }]
        );
    }
}
