//! Push notifications: who an event notifies, the unread counts clients show, and the pushes
//! that reach phones through their push gateways.
//!
//! The flow, each step its own file:
//! 1. [`evaluator`]: a background task walks new room events in stream order and evaluates each
//!    local recipient's push rules ([`rules`], ruma's evaluator), recording notifying ones in
//!    `push_actions` together with its watermark. Sends never wait for it.
//! 2. [`counts`]: `/sync`'s `unread_notifications` and `unread_thread_notifications` are those
//!    rows after the user's read receipts, plus the events above the watermark evaluated on the
//!    spot; the badge a push carries comes from the same counts.
//! 3. [`gateway`]: every pusher has a cursor into its user's rows; a dispatcher sends what is
//!    after it to the gateway (`POST /_matrix/push/v1/notify`) through the outbound guard, in
//!    order, with backoff, and moves the cursor.
//! 4. [`pushers`] and [`notifications`]: the client endpoints.
//!
//! Entry points: [`Moss::spawn_push`] at start-up; [`Push::wake_evaluator`] whenever events
//! were stored (the room notification path calls it); [`Push::invalidate_rules`] when a user's
//! push rules or ignore list change; [`Push::receipt_moved`] after a user's receipt.

pub mod counts;
pub(crate) mod evaluator;
pub(crate) mod gateway;
pub mod notifications;
pub mod pushers;
pub(crate) mod rules;

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

use moss_storage::PusherRow;
use tokio::sync::{Notify, Semaphore};

use crate::{
    config::PushConfig,
    error::Result,
    net::{AddressPolicy, ClientOptions, GuardedClient, RedirectRule},
    Error, Moss,
};

pub use rules::RulesCache;

/// Delivery rounds reading the database at once: many pushers woken by one event in a big room
/// queue here rather than each opening a database connection.
const PREPARING: usize = 4;

/// A pusher's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PusherKey {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
}

impl PusherKey {
    fn of(row: &PusherRow) -> PusherKey {
        PusherKey { user_id: row.user_id.clone(), app_id: row.app_id.clone(), pushkey: row.pushkey.clone() }
    }
}

/// Counters for the operators' metrics.
#[derive(Default, Debug)]
pub struct PushStats {
    /// Event pushes the gateways accepted.
    pub sent: AtomicU64,
    /// Attempts that failed (each retried later).
    pub failed: AtomicU64,
    /// Pushkeys a gateway rejected (their pushers were removed).
    pub rejected: AtomicU64,
    /// Badge-only pushes sent after receipts.
    pub badge_updates: AtomicU64,
}

/// The push machinery's shared state.
pub struct Push {
    pub(crate) rules: Arc<RulesCache>,
    evaluate: Arc<Notify>,
    /// The evaluator's watermark, for those who wait for it.
    evaluated: tokio::sync::watch::Sender<i64>,
    dispatch: Arc<Notify>,
    /// Users with new rows since the dispatcher last looked.
    dirty: Mutex<HashSet<String>>,
    /// Users whose receipts moved: their badge may have changed.
    badge_dirty: Mutex<HashSet<String>>,
    /// `None` when `push.enabled` is off.
    client: Option<GuardedClient>,
    state: Mutex<HashMap<PusherKey, gateway::PusherState>>,
    gateways: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_gateway: usize,
    /// Delivery rounds preparing their pushes at once (each holds a database reader).
    preparing: Semaphore,
    /// Cursors moved by sent pushes, not yet written.
    cursors: Mutex<gateway::Cursors>,
    pub stats: PushStats,
}

impl Push {
    pub(crate) fn new(config: &PushConfig) -> Result<Push> {
        let client = if config.enabled {
            let policy =
                AddressPolicy::from_lists(&config.ip_range_denylist, &config.ip_range_allowlist, "push.ip_range")?;
            let mut options = ClientOptions::new("push gateways");
            options.redirects = RedirectRule::None;
            options.https_only = !config.allow_http;
            options.total_timeout = Some(Duration::from_millis(config.request_timeout_ms.max(1)));
            options.connect_timeout = Duration::from_millis(config.request_timeout_ms.clamp(1, 10_000));
            Some(GuardedClient::new(Arc::new(policy), options)?)
        } else {
            None
        };
        Ok(Push {
            rules: Default::default(),
            evaluate: Default::default(),
            evaluated: tokio::sync::watch::channel(0).0,
            dispatch: Default::default(),
            dirty: Default::default(),
            badge_dirty: Default::default(),
            client,
            state: Default::default(),
            gateways: Default::default(),
            per_gateway: config.max_concurrent_per_gateway.max(1),
            preparing: Semaphore::new(PREPARING),
            cursors: Default::default(),
            stats: PushStats::default(),
        })
    }

    /// New events were stored: evaluate them.
    pub fn wake_evaluator(&self) {
        self.evaluate.notify_one();
    }

    /// A user's push rules or ignore list changed.
    pub fn invalidate_rules(&self, user: &str) {
        self.rules.invalidate(user);
    }

    /// Waits (at most `limit`) until the evaluator has gone past `stream`.
    pub async fn evaluated(&self, stream: i64, limit: Duration) {
        let mut rx = self.evaluated.subscribe();
        self.evaluate.notify_one();
        let _ = tokio::time::timeout(limit, rx.wait_for(|e| *e >= stream)).await;
    }

    /// A local user's read receipt moved: their pushers may need a new badge.
    pub fn receipt_moved(&self, user: &str) {
        if self.client.is_none() {
            return;
        }
        self.badge_dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned());
        self.dispatch.notify_one();
    }

    pub(crate) fn wake_pushers(&self, users: Vec<String>) {
        if users.is_empty() || self.client.is_none() {
            return;
        }
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).extend(users);
        self.dispatch.notify_one();
    }
}

impl Moss {
    /// Starts the evaluator and, when pushes are enabled, the delivery to gateways.
    pub fn spawn_push(self: &Arc<Self>) {
        self.spawn_push_evaluator();
        self.spawn_push_dispatcher();
        // Read, non-highlight rows older than a day are only kept for `/notifications`.
        let moss = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let Some(m) = moss.upgrade() else { break };
                let before = crate::now_ms() as i64 - 24 * 3600 * 1000;
                match m.db.write(move |w| Ok::<_, Error>(w.prune_push_actions(before)?)).await {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "pruned read notifications"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("pruning notifications: {e}"),
                }
            }
        });
    }

    /// Notifying rows no pusher has handled yet (the queue-length gauge).
    pub async fn pending_pushes(&self) -> Result<u64> {
        self.db.read(|r| Ok::<_, Error>(r.pending_pushes()?)).await
    }
}
