//! moss's service layer: accounts, rooms, state and auth, sync.
//!
//! [`Moss`] holds the server's shared state; the HTTP layer calls its methods, one per use case,
//! and never touches storage itself.

pub mod accounts;
pub mod admin;
pub mod appservice;
pub mod cluster;
pub mod config;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod filter;
pub mod glob;
pub mod keys;
pub mod media;
pub mod media_repo;
pub mod metrics;
pub mod net;
pub mod notifier;
pub mod openid;
#[cfg(test)]
mod parser_props;
pub mod presence;
pub mod push;
pub mod rooms;
mod secret_file;
pub mod sliding_sync;
pub mod sync;
pub mod typing;
pub mod uiaa;
pub mod user_data;
pub mod voip;

use std::{sync::Arc, time::Duration};

use moss_storage::{Db, Synchronous};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName};
use tokio::sync::watch;

pub use crate::{
    config::Config,
    error::{Error, Result},
};
use crate::{notifier::Notifier, rooms::timeline::Signer, typing::Typing};
pub use moss_storage::{DeviceRow, Direction, MediaRow};
/// The storage layer's row and filter types the admin API passes through.
pub mod storage {
    pub use moss_storage::{
        AdminMediaRow, AdminReportRow, AdminRoomRow, AdminUserRow, DeviceRow, MediaOrder, MediaStatsOrder, Page,
        RegistrationTokenRow, ReportFilter, RoomOrder, UserFilter, UserMediaStats, UserOrder,
    };
}

pub struct Moss {
    pub config: Config,
    pub server_name: OwnedServerName,
    pub db: Db,
    pub(crate) signer: Signer,
    pub notifier: Notifier,
    /// The other moss processes on the same database, if any (crate::cluster).
    pub cluster: cluster::Cluster,
    pub typing: Typing,
    pub media: media::Media,
    /// `None` when federation is disabled.
    pub federation: Option<federation::Federation>,
    /// When each device's last-seen time was last written, to write it at most every few minutes.
    pub(crate) last_seen: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    pub(crate) presence_tracker: std::sync::Arc<presence::PresenceTracker>,
    /// Push rule evaluation, unread counts and delivery to push gateways.
    pub push: push::Push,
    /// Application services (bridges) from `appservice.config_files`.
    pub appservices: appservice::AppServices,
    /// What each sliding sync connection was sent (`sliding_sync::connections`).
    pub sliding: sliding_sync::Connections,
    /// Per-user message rate limits set by admins, `(per second, burst)`; `(0, 0)`: none.
    pub(crate) ratelimit_overrides: std::sync::RwLock<std::collections::HashMap<String, (i64, i64)>>,
    /// Prometheus metrics (`metrics`), exposed on `metrics.bind` when set.
    pub metrics: Arc<metrics::Metrics>,
    /// Set when this process is `moss media-repo` for a Synapse (crate::media_repo).
    pub(crate) media_repo: Option<media_repo::MediaRepo>,
    shutdown: watch::Sender<bool>,
}

impl Moss {
    /// Opens the data directory (creating it, the database and the signing key as needed).
    pub fn open(config: Config) -> Result<Arc<Moss>> {
        Moss::open_with(config, None, None)
    }

    /// `key`: a signing key to use instead of the data directory's own.
    fn open_with(
        config: Config,
        key: Option<ruma::signatures::Ed25519KeyPair>,
        media_repo: Option<media_repo::MediaRepo>,
    ) -> Result<Arc<Moss>> {
        let server_name = ServerName::parse(&config.server_name)
            .map_err(|e| Error::internal(format!("server_name {:?} is invalid: {e}", config.server_name)))?;
        if rooms::room_version(&config.default_room_version).is_none() {
            return Err(Error::internal(format!(
                "default_room_version {:?} is not supported",
                config.default_room_version
            )));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::internal(format!("cannot create data directory {}: {e}", config.data_dir.display())))?;
        let db = match &config.database.url {
            Some(url) => Db::open_postgres_with(url, config.database.max_connections)?,
            None => Db::open(
                &config.database_path(),
                match config.database.synchronous {
                    config::SyncMode::Full => Synchronous::Full,
                    config::SyncMode::Normal => Synchronous::Normal,
                },
            )?,
        };
        let key = match key {
            Some(k) => k,
            None => keys::load_or_generate(&config.signing_key_path())?,
        };
        let has_media = db.read_blocking(|r| Ok::<_, Error>(r.has_media()?))?;
        let metrics = Arc::new(metrics::Metrics::new());
        // Timings are taken only when something will read them (`metrics.bind`); counters
        // that cost an atomic add are kept either way.
        let measuring = config.metrics.bind.is_some();
        let observer: Option<Arc<dyn moss_media::store::metered::StoreObserver>> =
            if measuring { Some(metrics.clone()) } else { None };
        let media = media::Media::open(&config, has_media, observer)?;
        let push = push::Push::new(&config.push)?;
        let appservices = appservice::AppServices::load(&config.appservice.config_files, server_name.as_str())
            .map_err(|e| Error::internal(format!("appservice.config_files: {e}")))?;
        let federation =
            if config.federation.enabled { Some(federation::Federation::new(&config.federation)?) } else { None };
        if measuring {
            db.set_observer(metrics.clone());
        }
        let overrides = db.read_blocking(|r| Ok::<_, Error>(r.ratelimit_overrides()?))?;
        let ratelimit_overrides = overrides.into_iter().map(|(u, p, b)| (u, (p, b))).collect();
        Ok(Arc::new(Moss {
            signer: Signer { server_name: server_name.clone(), key: Arc::new(key) },
            server_name,
            db,
            config,
            notifier: Notifier::default(),
            cluster: cluster::Cluster::default(),
            typing: Typing::default(),
            media,
            federation,
            last_seen: Default::default(),
            presence_tracker: Default::default(),
            push,
            appservices,
            sliding: Default::default(),
            metrics,
            ratelimit_overrides: std::sync::RwLock::new(ratelimit_overrides),
            media_repo,
            shutdown: watch::channel(false).0,
        }))
    }

    /// Starts the background tasks (typing expiry, presence timeouts, federation delivery).
    pub fn spawn_background(self: &Arc<Self>) {
        // Queues every process shares: run by one process at a time (crate::cluster).
        self.start_cluster(|moss| {
            moss.spawn_federation_sender();
            moss.spawn_push();
            moss.spawn_appservice_senders();
            moss.spawn_presence_timeouts();
        });
        self.spawn_media_reconcile();
        let moss = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(moss) = moss.upgrade() else { break };
                for room in moss.typing.expire() {
                    moss.notify_room(&room).await;
                }
            }
        });
    }

    fn spawn_presence_timeouts(self: &Arc<Self>) {
        let moss = Arc::downgrade(self);
        let p = &self.config.presence;
        let every = Duration::from_millis(p.offline_after_ms.min(p.idle_after_ms) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(moss) = moss.upgrade() else { break };
                if let Err(e) = moss.expire_presence().await {
                    tracing::warn!("presence timeouts: {e}");
                }
            }
        });
    }

    /// Makes every long-poll return now and refuses new ones to wait.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

pub fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}
