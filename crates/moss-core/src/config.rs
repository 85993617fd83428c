//! The server's configuration, as read from `moss.toml` (and `MOSS_…` environment variables).
//!
//! Every field has a default, so an empty file (or none) runs the embedded setup. Unknown keys
//! are errors: a typo must not silently fall back to a default.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name: the part after the colon in user ids. Cannot change once users exist.
    pub server_name: String,
    /// Where the database, signing key and media live.
    pub data_dir: PathBuf,
    /// The URL clients reach this server at, advertised in `/.well-known/matrix/client`.
    pub public_baseurl: Option<String>,
    /// `disabled` (default), `token` (needs a registration token) or `open`.
    pub registration: RegistrationMode,
    /// Enables Synapse's `/_synapse/admin/v1/register` for tooling such as `register_new_matrix_user`.
    pub registration_shared_secret: Option<String>,
    /// The room version of new rooms (Synapse's `default_room_version`). "12" by default; some
    /// bridges (mautrix-python ≤ 0.20) misjudge their power in v12 rooms and want "11" or "10".
    /// A bare number (`11`, or `MOSS_DEFAULT_ROOM_VERSION=11`) is read as its name.
    #[serde(deserialize_with = "string_or_number")]
    pub default_room_version: String,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub media: MediaConfig,
    pub presence: PresenceConfig,
    pub voip: VoipConfig,
    pub federation: FederationConfig,
    pub push: PushConfig,
    pub appservice: AppserviceConfig,
    pub metrics: MetricsConfig,
    pub server_notices: ServerNoticesConfig,
    pub log: LogConfig,
    pub media_repo: MediaRepoConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".into(),
            data_dir: PathBuf::from("./moss-data"),
            public_baseurl: None,
            registration: RegistrationMode::Disabled,
            registration_shared_secret: None,
            default_room_version: "12".into(),
            http: HttpConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            rate_limits: RateLimitConfig::default(),
            media: MediaConfig::default(),
            presence: PresenceConfig::default(),
            voip: VoipConfig::default(),
            federation: FederationConfig::default(),
            push: PushConfig::default(),
            appservice: AppserviceConfig::default(),
            metrics: MetricsConfig::default(),
            server_notices: ServerNoticesConfig::default(),
            log: LogConfig::default(),
            media_repo: MediaRepoConfig::default(),
        }
    }
}

/// A string, or a number written without quotes (room versions are names that look like numbers).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(i64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    Disabled,
    Token,
    Open,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the client-server API listener.
    pub bind: SocketAddr,
    /// Largest request body accepted outside media uploads, in bytes.
    pub max_request_bytes: usize,
    /// Longest a /sync long-poll is held, in milliseconds, whatever the client asks.
    pub max_sync_timeout_ms: u64,
    /// Reverse proxies (CIDRs) whose `X-Forwarded-For` is believed: a request from one of them
    /// is treated (rate limits, logs) as coming from the last address in that header that is
    /// not itself a trusted proxy. From any other peer the header is ignored.
    pub trusted_proxies: Vec<crate::net::Cidr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: "127.0.0.1:8008".parse().expect("valid literal"),
            max_request_bytes: 1024 * 1024,
            max_sync_timeout_ms: 60_000,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// SQLite file; relative paths are inside `data_dir`.
    pub path: PathBuf,
    /// `full` fsyncs each commit (survives power loss); `normal` survives only a crash of moss.
    pub synchronous: SyncMode,
    /// PostgreSQL instead of SQLite: `postgres://user:password@host:port/database` (or the
    /// key=value form). Several moss processes may share one database (docs/scaling.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// PostgreSQL only: most read sessions this process keeps open at once (its writer session
    /// and the cluster listener come on top); further reads wait for one. A cluster of N
    /// processes needs N × (this + 3) of PostgreSQL's `max_connections`.
    pub max_connections: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            path: PathBuf::from("moss.db"),
            synchronous: SyncMode::Full,
            url: None,
            max_connections: moss_storage::DEFAULT_PG_READERS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of access tokens issued with a refresh token, in milliseconds.
    pub access_token_lifetime_ms: u64,
    /// Shortest password accepted at registration and password change.
    pub min_password_length: usize,
    /// Lets a signed-in device mint a one-time login token for a new device
    /// (`login/get_token`, e.g. to sign in by QR code).
    pub login_token_enabled: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { access_token_lifetime_ms: 5 * 60 * 1000, min_password_length: 8, login_token_enabled: false }
    }
}

/// Talking to other Matrix servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    pub enabled: bool,
    /// Address of the federation listener (other servers connect here; 8448 by convention).
    pub bind: SocketAddr,
    /// PEM certificate chain and private key: with both, the listener speaks TLS itself;
    /// without, it is plain HTTP for a TLS-terminating reverse proxy in front.
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    /// Check other servers' TLS certificates (turn off only for test setups with self-signed ones).
    pub verify_certificates: bool,
    /// Addresses outbound federation may never connect to (so federation cannot be used to probe
    /// the server's own network); defaults to loopback, private and link-local ranges.
    pub ip_range_denylist: Vec<String>,
    /// Exceptions to the deny list (e.g. `127.0.0.1` for two servers on one test machine).
    pub ip_range_allowlist: Vec<String>,
    /// Upper bound on one outbound request, in milliseconds.
    pub request_timeout_ms: u64,
    /// `host:port` other servers should connect to, advertised in `/.well-known/matrix/server`
    /// (default: the server name with the federation listener's port).
    pub public_address: Option<String>,
    /// Longest wait between retries to a server that keeps failing, in milliseconds (retries
    /// back off exponentially from 2 s up to this; any request from that server retries at once).
    pub max_retry_delay_ms: u64,
    /// Ask this DNS server (`ip:port`) for SRV records instead of the system's resolvers
    /// (test setups, split-horizon DNS).
    pub dns_server: Option<SocketAddr>,
    /// Notaries asked for a server's keys when that server cannot be reached itself
    /// (e.g. `["matrix.org"]`); none by default.
    pub trusted_key_servers: Vec<String>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: false,
            bind: "0.0.0.0:8448".parse().expect("valid address"),
            tls_certificate: None,
            tls_private_key: None,
            verify_certificates: true,
            ip_range_denylist: crate::net::DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
            ip_range_allowlist: Vec::new(),
            request_timeout_ms: 30_000,
            public_address: None,
            max_retry_delay_ms: 10 * 60 * 1000,
            dns_server: None,
            trusted_key_servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Track and share online/offline status. Off saves a write per user per minute.
    pub enabled: bool,
    /// A user with no /sync in progress and none for this long goes offline (milliseconds).
    pub offline_after_ms: u64,
    /// An online user who has done nothing (sent, typed, read) for this long becomes
    /// `unavailable` ("idle"), and online again with their next action (milliseconds).
    pub idle_after_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { enabled: true, offline_after_ms: 30_000, idle_after_ms: 5 * 60 * 1000 }
    }
}

/// Messages from the server's operators to users (Synapse's `server_notices`): sent with
/// `POST /_synapse/admin/v1/send_server_notice` or `moss admin notice`, into a room per user
/// that a system account owns and the user cannot write in. Off unless a localpart is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerNoticesConfig {
    /// The system account's localpart, e.g. `notices` (created when first needed).
    pub system_mxid_localpart: Option<String>,
    pub system_mxid_display_name: Option<String>,
    pub system_mxid_avatar_url: Option<String>,
    pub room_name: String,
    pub room_topic: Option<String>,
    pub room_avatar_url: Option<String>,
    /// Join the user to the notices room directly instead of inviting them.
    pub auto_join: bool,
}

impl Default for ServerNoticesConfig {
    fn default() -> Self {
        ServerNoticesConfig {
            system_mxid_localpart: None,
            system_mxid_display_name: Some("Server Notices".into()),
            system_mxid_avatar_url: None,
            room_name: "Server Notices".into(),
            room_topic: None,
            room_avatar_url: None,
            auto_join: false,
        }
    }
}

/// Application services (bridges).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppserviceConfig {
    /// Registration files (YAML or JSON, as bridges generate them; Synapse's
    /// `app_service_config_files`). Relative paths are relative to the working directory.
    pub config_files: Vec<PathBuf>,
}

/// `moss media-repo`: moss as the media repository of a Synapse homeserver (docs/media-repo.md).
/// Read only by that command; `moss serve` ignores it. `server_name` must be Synapse's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaRepoConfig {
    /// Synapse's client-server API (e.g. `http://127.0.0.1:8008`), asked whose an access token
    /// is (`/_matrix/client/v3/account/whoami`). Required.
    pub synapse_url: Option<String>,
    /// Synapse's signing key file (`signing_key_path` in homeserver.yaml): requests for other
    /// servers' media are signed as the homeserver. Required.
    pub signing_key_path: Option<PathBuf>,
    /// Synapse's `media_store_path`: media uploaded to Synapse before moss took over is imported
    /// (kept under its mxc:// URI) the first time it is asked for. Needs `synapse_database`.
    pub synapse_media_store: Option<PathBuf>,
    /// Synapse's database, for that media's metadata: its SQLite file or a `postgres://` URL
    /// (read only).
    pub synapse_database: Option<String>,
    /// How long a token's owner is remembered, in seconds: a token logged out on Synapse keeps
    /// working here for at most this long.
    pub token_cache_secs: u64,
}

impl Default for MediaRepoConfig {
    fn default() -> Self {
        MediaRepoConfig {
            synapse_url: None,
            signing_key_path: None,
            synapse_media_store: None,
            synapse_database: None,
            token_cache_secs: 60,
        }
    }
}

/// Prometheus metrics (`docs/metrics.md`), on a listener of their own so that they are never
/// exposed with the client API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `/metrics` listener, e.g. `127.0.0.1:9000`; unset (the default): off.
    pub bind: Option<SocketAddr>,
}

/// Notifications to phones: pushes to the push gateways clients register with `/pushers/set`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Send pushes at all (counts and `/notifications` work either way).
    pub enabled: bool,
    /// Accept `http://` gateway URLs (the spec asks for https; for gateways on a private network).
    pub allow_http: bool,
    /// Addresses pushes may never go to (checked at connect time); loopback, private and
    /// link-local ranges by default, so a pusher cannot make the server probe its own network.
    pub ip_range_denylist: Vec<String>,
    /// Exceptions to the deny list (e.g. a gateway on the same machine: `127.0.0.1`).
    pub ip_range_allowlist: Vec<String>,
    /// Send the event's content to the gateway (Synapse's `push.include_content`); off sends
    /// only ids, counts and names.
    pub include_content: bool,
    /// The badge counts rooms with unread notifications (true, as Synapse) or the notifications.
    pub group_unread_count_by_room: bool,
    /// Requests in flight to one gateway (scheme, host and port) at a time.
    pub max_concurrent_per_gateway: usize,
    /// Time limit for one request to a gateway, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            allow_http: false,
            ip_range_denylist: crate::net::DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
            ip_range_allowlist: Vec::new(),
            include_content: true,
            group_unread_count_by_room: true,
            max_concurrent_per_gateway: 16,
            request_timeout_ms: 30_000,
        }
    }
}

/// TURN servers for VoIP calls, handed to clients with time-limited credentials derived from a
/// secret shared with the TURN server (coturn's `use-auth-secret`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoipConfig {
    /// e.g. `["turn:turn.example.com:3478?transport=udp"]`; empty disables VoIP credentials.
    pub turn_uris: Vec<String>,
    pub turn_shared_secret: String,
    /// Lifetime of the credentials, in milliseconds (default one day).
    pub turn_user_lifetime_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Switch every limit off (benchmarks, test setups).
    pub enabled: bool,
    pub login: Bucket,
    pub register: Bucket,
    pub message: Bucket,
    pub join: Bucket,
    /// Per user, for media uploads.
    pub media_upload: Bucket,
    /// Per origin server, for signed federation requests.
    pub federation: Bucket,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            login: Bucket { per_second: 0.17, burst: 3 },
            register: Bucket { per_second: 0.17, burst: 3 },
            message: Bucket { per_second: 10.0, burst: 50 },
            join: Bucket { per_second: 1.0, burst: 10 },
            media_upload: Bucket { per_second: 1.0, burst: 20 },
            federation: Bucket { per_second: 50.0, burst: 300 },
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest upload accepted, in bytes.
    pub max_upload_size: u64,
    /// Where media lives: `fs` (a directory under `data_dir`) or `s3`.
    pub store: StoreKind,
    /// Directory of the `fs` store, relative to `data_dir`.
    pub path: PathBuf,
    /// Unauthenticated `/_matrix/media/v3/download|thumbnail`: `frozen` (only media imported
    /// from before the freeze), `on` or `off`.
    pub legacy_media: LegacyMedia,
    /// Bytes of uploads a user may have in total (0: no limit). Deduplicated files still count.
    pub quota_per_user: u64,
    /// How many asynchronous uploads (`/create`) a user may have pending at once.
    pub max_pending_uploads: u32,
    /// How long a media id from `/create` stays usable, in milliseconds.
    pub pending_expiry_ms: u64,
    pub encryption: MediaEncryptionConfig,
    pub s3: S3Config,
    pub mirror: MirrorConfig,
    /// Other stores, by name, for `moss media migrate` and `migrate_from`.
    pub stores: std::collections::BTreeMap<String, NamedStore>,
    /// While moving media here from the named store: read from it what the store above
    /// does not have yet. Remove once `moss media migrate --from NAME` has finished.
    pub migrate_from: Option<String>,
    pub cache: CacheConfig,
    pub thumbnails: ThumbnailConfig,
    pub url_preview: UrlPreviewConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UrlPreviewConfig {
    /// Fetch pages users link to and serve their OpenGraph data (`/preview_url`).
    pub enabled: bool,
    /// Addresses the fetcher may never connect to (checked at connect time and on redirects).
    pub ip_range_denylist: Vec<String>,
    /// Exceptions to the deny list.
    pub ip_range_allowlist: Vec<String>,
    /// Largest page read, in bytes; longer pages are previewed from their start.
    pub max_page_bytes: u64,
    /// Largest preview image fetched, in bytes.
    pub max_image_bytes: u64,
    /// Time limit for one fetch, in milliseconds.
    pub timeout_ms: u64,
    /// How long a preview is reused, in milliseconds.
    pub cache_ttl_ms: u64,
}

impl Default for UrlPreviewConfig {
    fn default() -> Self {
        UrlPreviewConfig {
            enabled: false,
            ip_range_denylist: crate::net::DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
            ip_range_allowlist: Vec::new(),
            max_page_bytes: 1024 * 1024,
            max_image_bytes: 10 * 1024 * 1024,
            timeout_ms: 10_000,
            cache_ttl_ms: 60 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamedStore {
    /// `fs` or `s3`.
    pub store: StoreKind,
    /// Directory of an `fs` store, relative to `data_dir`.
    pub path: PathBuf,
    pub s3: S3Config,
}

impl Default for NamedStore {
    fn default() -> Self {
        NamedStore { store: StoreKind::Fs, path: PathBuf::from("media"), s3: S3Config::default() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// Keep a second copy of every object in another store; reads use whichever answers.
    pub enabled: bool,
    /// The second store: `fs` or `s3`.
    pub store: StoreKind,
    /// Directory of a second `fs` store, relative to `data_dir`.
    pub path: PathBuf,
    /// A second S3 store.
    pub s3: S3Config,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            enabled: false,
            store: StoreKind::Fs,
            path: PathBuf::from("media-mirror"),
            s3: S3Config::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Keep recently used media on local disk in front of the store (useful with `s3`).
    pub enabled: bool,
    /// Directory, relative to `data_dir`.
    pub path: PathBuf,
    /// Size bound in bytes; the least recently used media is evicted beyond it.
    pub max_size: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { enabled: false, path: PathBuf::from("media-cache"), max_size: 1024 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThumbnailConfig {
    /// The sizes served; a request gets the closest one at least as large.
    pub sizes: Vec<ThumbnailSize>,
    /// Make thumbnails of exactly the size asked (up to 1600×1600) instead of the closest
    /// configured one. Costs more CPU and storage.
    pub dynamic: bool,
    /// Images with more pixels are not decoded (decompression bombs).
    pub max_image_pixels: u64,
    /// Images larger than this (bytes) are not thumbnailed.
    pub max_source_bytes: u64,
    /// Bytes all thumbnail jobs together may hold (sources and decoded pixels), estimated from
    /// each image's header before it is decoded; jobs wait their turn beyond it, and an image
    /// that alone needs more is not thumbnailed (an animated one gets a still thumbnail).
    pub max_decode_memory: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailSize {
    pub width: u32,
    pub height: u32,
    /// `crop` or `scale`.
    pub method: String,
}

impl Default for ThumbnailConfig {
    fn default() -> Self {
        let size = |width, height, method: &str| ThumbnailSize { width, height, method: method.into() };
        ThumbnailConfig {
            sizes: vec![
                size(32, 32, "crop"),
                size(96, 96, "crop"),
                size(320, 240, "scale"),
                size(640, 480, "scale"),
                size(800, 600, "scale"),
            ],
            dynamic: false,
            max_image_pixels: 32_000_000,
            max_source_bytes: 50 * 1024 * 1024,
            max_decode_memory: 192 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Fs,
    S3,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// e.g. `http://localhost:7777` (Storj gateway), `http://127.0.0.1:3900` (Garage),
    /// `https://s3.us-west-004.backblazeb2.com`, `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style addressing (`endpoint/bucket/key`); set false for virtual-host style.
    pub path_style: bool,
    /// Prepended to every object name.
    pub prefix: String,
    /// Multipart part size in bytes (64 MiB is one Storj segment), for objects beyond a single
    /// PUT's 5 GiB.
    pub part_size: u64,
    /// Upper bound on one S3 request including retries, in milliseconds: a backstop for a
    /// store that trickles. An upload's PUT streams as the client sends, so a slow client's
    /// upload must fit in it (past it the upload is sent again from moss's copy).
    pub request_timeout_ms: u64,
    /// Bound on connecting to the store, in milliseconds.
    pub connect_timeout_ms: u64,
    /// A request fails when the store sends nothing for this long (milliseconds), whatever
    /// the object's size.
    pub idle_timeout_ms: u64,
    /// Downloads are read as ranged GETs of this many bytes each...
    pub read_segment: u64,
    /// ...up to this many at once for one download...
    pub read_ahead: u32,
    /// ...and the segments read ahead of all downloads together hold at most this many bytes
    /// in memory (beyond it, downloads read one segment at a time).
    pub read_ahead_memory: u64,
    /// Answer downloads with a 307 to a short-lived presigned URL of the object, so the bytes
    /// go from the store (or a CDN in front of it) to the client without passing through moss.
    /// Only for the main store, unencrypted, without mirror or migration (checked at start).
    pub redirect_downloads: bool,
    /// How long a presigned download URL works, in seconds.
    pub redirect_expiry_secs: u64,
    /// The base URL clients are sent to instead of `endpoint` (a CDN or public name of the
    /// store, e.g. `https://media.example.org`); empty: `endpoint`.
    pub public_url: String,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            path_style: true,
            prefix: String::new(),
            part_size: 64 * 1024 * 1024,
            request_timeout_ms: 600_000,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            read_segment: 8 * 1024 * 1024,
            read_ahead: 4,
            read_ahead_memory: 128 * 1024 * 1024,
            redirect_downloads: false,
            redirect_expiry_secs: 300,
            public_url: String::new(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_upload_size: 100 * 1024 * 1024,
            quota_per_user: 0,
            store: StoreKind::Fs,
            path: PathBuf::from("media"),
            legacy_media: LegacyMedia::Frozen,
            max_pending_uploads: 10,
            pending_expiry_ms: 24 * 60 * 60 * 1000,
            encryption: MediaEncryptionConfig::default(),
            s3: S3Config::default(),
            mirror: MirrorConfig::default(),
            stores: Default::default(),
            migrate_from: None,
            cache: CacheConfig::default(),
            thumbnails: ThumbnailConfig::default(),
            url_preview: UrlPreviewConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LegacyMedia {
    Frozen,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaEncryptionConfig {
    /// Encrypt media before it reaches the store.
    pub enabled: bool,
    /// File holding the 32-byte master key (base64 or 64 hex digits), relative to `data_dir`.
    /// Generated on first start if missing. Keep a copy elsewhere: without it the media is lost.
    pub key_file: PathBuf,
    /// Older master keys still accepted for reading, during a rotation.
    pub previous_key_files: Vec<PathBuf>,
}

impl Default for MediaEncryptionConfig {
    fn default() -> Self {
        MediaEncryptionConfig {
            enabled: false,
            key_file: PathBuf::from("media-master.key"),
            previous_key_files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `moss=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Pretty, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Config {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(&self.database.path)
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.data_dir.join("signing.key")
    }

    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(u) => u.trim_end_matches('/').to_owned() + "/",
            None => format!("http://{}/", self.http.bind),
        }
    }
}
