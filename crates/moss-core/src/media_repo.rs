//! `moss media-repo`: moss as the media repository of a Synapse homeserver, which keeps serving
//! everything else. The reverse proxy sends `/_matrix/media/*`, `/_matrix/client/v1/media/*`
//! and `/_matrix/federation/v1/media/*` here (docs/media-repo.md). Entry points:
//! [`Moss::open_media_repo`], [`Moss::authenticate_request`] (which lands in
//! [`MediaRepo::session`]) and the import-on-first-use hooks called by `media::media_row_of`.
//!
//! What it guarantees:
//! - A request acts as whoever Synapse says its access token belongs to
//!   (`GET /_matrix/client/v3/account/whoami`, an application service's `user_id` passed on),
//!   remembered for `media_repo.token_cache_secs`. A token Synapse refuses is refused; when
//!   Synapse cannot be asked the request fails (503) rather than passing unauthenticated.
//! - Requests for other servers' media are signed as the homeserver, with Synapse's own key (as
//!   Synapse's media workers do): the other server checks them against the keys Synapse
//!   publishes.
//! - Media Synapse stored before moss took over is imported the first time it is asked for,
//!   under its own mxc:// URI, from Synapse's media store and database (read only); one import
//!   runs at a time, and ids Synapse does not have are remembered for a minute so that made-up
//!   ids cannot each cost a query of Synapse's database.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moss_storage::synapse::SynapseMediaFilter;
use ruma::{OwnedDeviceId, OwnedUserId};
use serde::Deserialize;

use crate::{
    accounts::Session,
    config::{Config, MediaRepoConfig},
    error::{Error, Result},
    media::import::{read_synapse_media, RowImport},
    net::{AddressPolicy, ClientOptions, GuardedClient, RedirectRule},
    Moss,
};

/// Tokens (or misses) remembered at most; past it, expired entries go, then everything.
const CACHE_ENTRIES: usize = 10_000;
/// A whoami answer is a few hundred bytes.
const WHOAMI_MAX_BYTES: usize = 64 * 1024;
/// How long an id Synapse does not have is not asked for again.
const MISS_TTL: Duration = Duration::from_secs(60);

pub struct MediaRepo {
    synapse: GuardedClient,
    whoami_url: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Owner, Instant)>>,
    import: Option<SynapseMedia>,
}

#[derive(Clone)]
struct Owner {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
}

/// Synapse's media from before the switch: where its files and rows are.
struct SynapseMedia {
    media_store: PathBuf,
    database: String,
    misses: Mutex<HashMap<String, ((), Instant)>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// `GET /_matrix/client/v3/account/whoami`'s answer, as far as it matters here.
#[derive(Deserialize)]
struct WhoAmI {
    user_id: OwnedUserId,
    device_id: Option<OwnedDeviceId>,
}

/// Synapse's error body.
#[derive(Deserialize)]
struct MatrixError {
    errcode: Option<String>,
    error: Option<String>,
}

fn remember<V>(map: &Mutex<HashMap<String, (V, Instant)>>, key: String, value: V, ttl: Duration) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= CACHE_ENTRIES {
        map.retain(|_, (_, at)| at.elapsed() < ttl);
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
    }
    map.insert(key, (value, Instant::now()));
}

impl MediaRepo {
    /// Checks `[media_repo]` and builds the Synapse client.
    pub fn new(config: &MediaRepoConfig) -> Result<MediaRepo> {
        let url = config
            .synapse_url
            .as_deref()
            .ok_or_else(|| Error::internal("media_repo.synapse_url is required (Synapse's client API)"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::internal(format!("media_repo.synapse_url {url:?} must start with http:// or https://")));
        }
        let import = match (&config.synapse_media_store, &config.synapse_database) {
            (Some(store), Some(db)) => Some(SynapseMedia {
                media_store: store.clone(),
                database: db.clone(),
                misses: Mutex::new(HashMap::new()),
                one_at_a_time: tokio::sync::Mutex::new(()),
            }),
            (None, None) => None,
            _ => {
                return Err(Error::internal(
                    "media_repo.synapse_media_store and media_repo.synapse_database go together",
                ))
            }
        };
        // Through the one outbound guard, to the address the operator wrote (usually loopback).
        let mut options = ClientOptions::new("Synapse");
        options.redirects = RedirectRule::None;
        options.total_timeout = Some(Duration::from_secs(10));
        options.connect_timeout = Duration::from_secs(5);
        let synapse = GuardedClient::new(Arc::new(AddressPolicy { deny: vec![], allow: vec![] }), options)?;
        Ok(MediaRepo {
            synapse,
            whoami_url: format!("{}/_matrix/client/v3/account/whoami", url.trim_end_matches('/')),
            ttl: Duration::from_secs(config.token_cache_secs),
            tokens: Mutex::new(HashMap::new()),
            import,
        })
    }

    /// Whose token this is, as Synapse says. `query` is the request's query string: an
    /// application service's `user_id` (and device) are passed on for Synapse to check.
    /// Only users of `server_name` are accepted (a `synapse_url` pointing at another homeserver
    /// would name its users).
    pub(crate) async fn session(
        &self,
        server_name: &ruma::ServerName,
        token: &str,
        query: Option<&str>,
    ) -> Result<Session> {
        let pass_on: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .filter(|(k, _)| matches!(k.as_ref(), "user_id" | "device_id" | "org.matrix.msc3202.device_id"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let key = format!("{token}|{}", pass_on.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
        let cached = {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens.get(&key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(o, _)| o.clone())
        };
        let owner = match cached {
            Some(o) => o,
            None => {
                let owner = self.ask_synapse(token, &pass_on).await?;
                remember(&self.tokens, key, owner.clone(), self.ttl);
                owner
            }
        };
        if owner.user_id.server_name() != server_name {
            tracing::warn!(user = %owner.user_id, "media repository: Synapse named a user of another server; check media_repo.synapse_url");
            return Err(Error::forbidden("this token belongs to a user of another server"));
        }
        Ok(Session {
            user_id: owner.user_id,
            device_id: owner.device_id,
            access_token: token.to_owned(),
            appservice: None,
        })
    }

    async fn ask_synapse(&self, token: &str, pass_on: &[(String, String)]) -> Result<Owner> {
        let unreachable = |detail: String| {
            tracing::warn!(%detail, "media repository: Synapse could not be asked whose a token is");
            Error::new(ruma::api::error::ErrorKind::Unknown, 503, "the homeserver could not be asked; try again")
        };
        let url = if pass_on.is_empty() {
            self.whoami_url.clone()
        } else {
            let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pass_on).finish();
            format!("{}?{query}", self.whoami_url)
        };
        let res = self
            .synapse
            .get(&url)?
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unreachable(crate::net::error_chain(&e)))?;
        let status = res.status().as_u16();
        let body = crate::net::read_limited(res, WHOAMI_MAX_BYTES).await.map_err(unreachable)?;
        match status {
            200 => {
                let who: WhoAmI = serde_json::from_slice(&body)
                    .map_err(|e| unreachable(format!("whoami answered something else: {e}")))?;
                let device_id = who.device_id.unwrap_or_else(|| "synapse".into());
                Ok(Owner { user_id: who.user_id, device_id })
            }
            401 | 403 => {
                let e: MatrixError =
                    serde_json::from_slice(&body).unwrap_or(MatrixError { errcode: None, error: None });
                let message = e.error.unwrap_or_else(|| "the access token was refused".into());
                match (status, e.errcode.as_deref()) {
                    (401, _) | (_, Some("M_UNKNOWN_TOKEN")) => Err(Error::unknown_token(message)),
                    _ => Err(Error::forbidden(message)),
                }
            }
            other => Err(unreachable(format!("whoami answered {other}"))),
        }
    }
}

impl Moss {
    /// Opens moss as the media repository of the Synapse named by `[media_repo]`: its data
    /// directory holds only media, requests for other servers' media are signed with Synapse's
    /// key, and no federation listener runs (the federation media endpoints are served with
    /// the client ones).
    pub fn open_media_repo(mut config: Config) -> Result<Arc<Moss>> {
        let repo = MediaRepo::new(&config.media_repo)?;
        let key_path = config
            .media_repo
            .signing_key_path
            .clone()
            .ok_or_else(|| Error::internal("media_repo.signing_key_path is required (Synapse's signing key)"))?;
        let key = crate::keys::load(&key_path)?;
        // The federation client fetches other servers' media and checks the signatures of
        // servers asking for ours; nothing else of federation runs.
        config.federation.enabled = true;
        Moss::open_with(config, Some(key), Some(repo))
    }

    /// Whether this process is `moss media-repo`.
    pub fn is_media_repo(&self) -> bool {
        self.media_repo.is_some()
    }

    /// In media-repository mode, imports Synapse's local upload `media_id` if Synapse has it
    /// and moss does not yet. `true` when it is here now.
    pub(crate) async fn import_from_synapse(&self, media_id: &str) -> Result<bool> {
        let Some(source) = self.media_repo.as_ref().and_then(|r| r.import.as_ref()) else { return Ok(false) };
        self.import_one(source, SynapseMediaFilter::Local(media_id), format!("local|{media_id}")).await
    }

    /// The same for another server's media that Synapse had cached.
    pub(crate) async fn import_remote_from_synapse(&self, origin: &str, media_id: &str) -> Result<bool> {
        let Some(source) = self.media_repo.as_ref().and_then(|r| r.import.as_ref()) else { return Ok(false) };
        self.import_one(source, SynapseMediaFilter::Remote { origin, media_id }, format!("{origin}|{media_id}")).await
    }

    async fn import_one(&self, source: &SynapseMedia, filter: SynapseMediaFilter<'_>, key: String) -> Result<bool> {
        let missed = {
            let misses = source.misses.lock().unwrap_or_else(|p| p.into_inner());
            misses.get(&key).is_some_and(|(_, at)| at.elapsed() < MISS_TTL)
        };
        if missed {
            return Ok(false);
        }
        let _one = source.one_at_a_time.lock().await;
        let (local, remote) = read_synapse_media(&source.database, filter).await?;
        let outcome = match (local.into_iter().next(), remote.into_iter().next()) {
            (Some(row), _) => self.import_synapse_local_row(&source.media_store, row).await?,
            (None, Some(row)) => self.import_synapse_remote_row(&source.media_store, row).await?,
            (None, None) => RowImport::Skipped,
        };
        match outcome {
            RowImport::Imported | RowImport::Already => {
                tracing::info!(media = %key, ?outcome, "media repository: Synapse's media imported on first use");
                Ok(true)
            }
            RowImport::MissingFile | RowImport::Skipped => {
                if outcome == RowImport::MissingFile {
                    tracing::warn!(media = %key, "media repository: Synapse lists this media but its file is missing");
                }
                remember(&source.misses, key, (), MISS_TTL);
                Ok(false)
            }
        }
    }
}
