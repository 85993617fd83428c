//! Loading configuration: TOML file (optional), then `MOSS_…` environment overrides, then strict
//! deserialization so unknown keys and wrong types are errors that name the key.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use moss_core::Config;
use toml::Value;

/// The default config file, used when present and no `--config` is given.
pub const DEFAULT_PATH: &str = "moss.toml";

pub fn load(path: Option<&Path>) -> Result<Config> {
    let (text, origin) = match path {
        Some(p) => {
            (std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?, p.display().to_string())
        }
        None if Path::new(DEFAULT_PATH).exists() => (std::fs::read_to_string(DEFAULT_PATH)?, DEFAULT_PATH.to_owned()),
        None => (String::new(), "defaults".to_owned()),
    };
    let mut table: toml::Table = text.parse().with_context(|| format!("{origin} is not valid TOML"))?;
    let overridden = apply_env(&mut table, std::env::vars())?;
    // Deserializing from text (rather than a value tree) keeps the error's line and key snippet.
    let text = if overridden { toml::to_string(&table)? } else { text };
    let config: Config = toml::from_str(&text).map_err(|e| {
        let source = if overridden { format!("{origin} with MOSS_ environment overrides") } else { origin.clone() };
        anyhow::anyhow!("{source}: {e}")
    })?;
    Ok(config)
}

/// The top-level keys of [`Config`]. Only `MOSS_` variables that start with one of them are
/// configuration; others (`MOSS_PASSWORD` for the CLI, `MOSS_BIN` in test harnesses) are not.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server_name",
    "data_dir",
    "public_baseurl",
    "registration",
    "registration_shared_secret",
    "default_room_version",
    "http",
    "database",
    "auth",
    "rate_limits",
    "media",
    "presence",
    "voip",
    "federation",
    "push",
    "appservice",
    "metrics",
    "server_notices",
    "log",
    "media_repo",
];

/// `MOSS_HTTP__BIND=…` sets `http.bind`: double underscores separate sections.
pub fn apply_env(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> Result<bool> {
    let mut changed = false;
    for (key, raw) in vars {
        let Some(rest) = key.strip_prefix("MOSS_") else {
            continue;
        };
        // An empty value overrides nothing (compose files pass `${VAR:-}` for optional keys).
        if rest.is_empty() || raw.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_lowercase()).collect();
        if !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
            continue;
        }
        // A value that parses as TOML (number, bool, array) is taken as such; anything else is a string.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(Value::String(raw.clone()));
        let mut cur = &mut *table;
        for (i, part) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cur.insert(part.clone(), value.clone());
                changed = true;
            } else {
                let entry = cur.entry(part.clone()).or_insert_with(|| Value::Table(Default::default()));
                cur = match entry {
                    Value::Table(t) => t,
                    _ => bail!("{key}: {part} is not a section"),
                };
            }
        }
    }
    Ok(changed)
}

/// Checks beyond types: paths that must be usable.
pub fn check(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if ruma::ServerName::parse(&config.server_name).is_err() {
        problems.push(format!("server_name {:?} is not a valid server name", config.server_name));
    }
    let dir: PathBuf = config.data_dir.clone();
    match std::fs::metadata(&dir) {
        Ok(m) if !m.is_dir() => problems.push(format!("data_dir {} is not a directory", dir.display())),
        Ok(m) if m.permissions().readonly() => problems.push(format!("data_dir {} is read-only", dir.display())),
        Ok(_) => {}
        Err(_) => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.exists() {
                problems.push(format!(
                    "data_dir {} cannot be created: {} does not exist",
                    dir.display(),
                    parent.display()
                ));
            }
        }
    }
    if moss_core::rooms::room_version(&config.default_room_version).is_none() {
        problems.push(format!(
            "default_room_version {:?} is not one this server supports ({})",
            config.default_room_version,
            moss_core::rooms::SUPPORTED_VERSIONS.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if let Err(e) = moss_core::appservice::AppServices::load(&config.appservice.config_files, &config.server_name) {
        problems.push(format!("appservice.config_files: {e}"));
    }
    if let Some(url) = &config.public_baseurl {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.push(format!("public_baseurl {url:?} must start with http:// or https://"));
        }
    }
    // `moss media-repo`'s section, when it is filled in.
    let repo = &config.media_repo;
    if repo.synapse_url.is_some() || repo.signing_key_path.is_some() {
        if let Err(e) = moss_core::media_repo::MediaRepo::new(repo) {
            problems.push(e.to_string());
        }
        match &repo.signing_key_path {
            Some(path) => {
                if let Err(e) = moss_core::keys::load(path) {
                    problems.push(format!("media_repo.signing_key_path: {e}"));
                }
            }
            None => problems.push("media_repo.signing_key_path is required with media_repo.synapse_url".into()),
        }
    }
    problems
}

/// A commented config file listing every option at its default.
pub fn template() -> String {
    let d = Config::default();
    format!(
        r#"# moss configuration. Every key is shown with its default; delete what you do not change.
# Any key can be overridden by an environment variable: MOSS_SERVER_NAME, MOSS_HTTP__BIND, ...
# (double underscores separate sections).

# The name in user ids (@alice:<server_name>). Cannot change once users exist.
server_name = "{server_name}"
# Database, signing key and media live here.
data_dir = "{data_dir}"
# The URL clients use to reach this server (advertised in /.well-known/matrix/client).
# public_baseurl = "https://matrix.example.org/"
# "disabled", "token" (needs a token from `moss registration-token create`) or "open".
registration = "disabled"
# Enables Synapse's shared-secret registration (register_new_matrix_user, playbooks).
# registration_shared_secret = "a long random string"
# Room version of new rooms. Bridges built on mautrix-python 0.20 (heisenbridge 1.15) cannot set
# state in version 12 rooms they create; "11" suits them.
default_room_version = "12"

[http]
# Address of the client-server API listener.
bind = "{bind}"
# Largest request body accepted, in bytes.
max_request_bytes = {max_request_bytes}
# Longest time a /sync long-poll is held, in milliseconds.
max_sync_timeout_ms = {max_sync}
# Reverse proxies whose X-Forwarded-For is believed (rate limits key on the client behind them),
# e.g. ["127.0.0.1/32", "::1/128"] when nginx or Caddy runs on this machine.
trusted_proxies = []

[database]
# SQLite file, relative to data_dir.
path = "moss.db"
# "full": every commit is fsynced (survives power loss). "normal": faster, survives a crash of moss only.
synchronous = "full"
# PostgreSQL instead of the SQLite file (several moss processes may share it; docs/scaling.md):
# url = "postgres://moss:password@127.0.0.1:5432/moss"

[auth]
# Lifetime of access tokens issued together with a refresh token, in milliseconds.
access_token_lifetime_ms = {lifetime}
min_password_length = {min_pw}
# Let a signed-in device mint a one-time login token for a new one (login/get_token).
login_token_enabled = false

[rate_limits]
# Set to false for benchmarks and test setups.
enabled = true
login = {{ per_second = {lps}, burst = {lb} }}
register = {{ per_second = {rps}, burst = {rb} }}
message = {{ per_second = {mps}, burst = {mb} }}
join = {{ per_second = {jps}, burst = {jb} }}
media_upload = {{ per_second = {ups}, burst = {ub} }}
federation = {{ per_second = {fps}, burst = {fb} }}

[media]
# Largest upload accepted, in bytes.
max_upload_size = {max_upload}
# Bytes of uploads each user may keep in total; 0 means no limit.
quota_per_user = 0
# Where media lives: "fs" (a directory under data_dir) or "s3" (any S3-compatible store).
store = "fs"
# Directory of the fs store, relative to data_dir.
path = "media"
# Unauthenticated /_matrix/media/v3/download: "frozen" (only media imported from before the
# spec's freeze), "on" or "off". The authenticated /_matrix/client/v1/media endpoints always work.
legacy_media = "frozen"
# Asynchronous uploads (/_matrix/media/v1/create) a user may have pending, and how long an
# unused media id stays valid (milliseconds).
max_pending_uploads = {max_pending}
pending_expiry_ms = {pending_expiry}

[media.encryption]
# Encrypt media before it reaches the store (XChaCha20-Poly1305, 64 KiB chunks, a key per file).
enabled = false
# The master key: 32 bytes as base64, generated on first start if missing. Back it up:
# the bucket plus this key recover every file; without it the media is gone.
key_file = "media-master.key"
# Old master keys still accepted for reading while `moss media rotate-key` runs.
previous_key_files = []

[media.s3]
# Storj gateway: "http://localhost:7777"; Garage: "http://127.0.0.1:3900";
# Backblaze B2: "https://s3.<region>.backblazeb2.com"; AWS: "https://s3.<region>.amazonaws.com".
endpoint = ""
region = "us-east-1"
bucket = ""
access_key_id = ""
secret_access_key = ""
# Path-style addressing (endpoint/bucket/key), which most non-AWS stores want.
path_style = true
# Prepended to every object name.
prefix = ""
# Multipart part size in bytes: 64 MiB is one Storj segment.
part_size = {part_size}
# Upper bound on one S3 request including retries, in milliseconds: a backstop for a store
# that trickles (a 64 MiB part must fit in it). Connecting and silence have their own bounds.
request_timeout_ms = {s3_timeout}
connect_timeout_ms = {s3_connect}
idle_timeout_ms = {s3_idle}
# Downloads are read as ranged GETs of read_segment bytes, read_ahead of them at once (one GET
# alone is bound by the store's per-request pace), within read_ahead_memory bytes across all
# downloads; past that, downloads read one segment at a time.
read_segment = {read_segment}
read_ahead = {read_ahead}
read_ahead_memory = {read_ahead_memory}
# Answer downloads with a 307 to a presigned URL of the object (valid redirect_expiry_secs), so
# the bytes go from the store, or a CDN in front of it (public_url, e.g.
# "https://media.example.org"), straight to the client. Not with encryption, a mirror or a
# migration: moss refuses to start if asked.
redirect_downloads = false
redirect_expiry_secs = {redirect_expiry}
public_url = ""

[media.mirror]
# Keep a second copy of every object in another store (e.g. Storj plus a local disk, or two
# providers). An upload succeeds only once both have it; reads use whichever answers.
enabled = false
# The second store: "fs" (a directory under data_dir) or "s3" (configured in [media.mirror.s3],
# which takes the same keys as [media.s3]).
store = "fs"
path = "media-mirror"

[media.mirror.s3]
endpoint = ""
region = "us-east-1"
bucket = ""
access_key_id = ""
secret_access_key = ""
path_style = true
prefix = ""
part_size = {part_size}
request_timeout_ms = {s3_timeout}
connect_timeout_ms = {s3_connect}
idle_timeout_ms = {s3_idle}
read_segment = {read_segment}
read_ahead = {read_ahead}
read_ahead_memory = {read_ahead_memory}

# Other stores by name, for `moss media migrate --to NAME` / `--from NAME`. For example the
# local directory you are moving away from:
#   [media.stores.old]
#   store = "fs"
#   path = "media"
# While moving from such a store into the one configured above, read what is not copied yet
# from it (remove once `moss media migrate --from old` has finished):
#   migrate_from = "old"   (a key of the [media] section)

[media.cache]
# Keep recently used media on local disk in front of the store: downloads of cached media
# keep working while the store is down, and small media avoids S3 round trips.
enabled = false
# Directory, relative to data_dir, and its size bound in bytes (least recently used goes first).
path = "media-cache"
max_size = {cache_size}

[media.thumbnails]
# The sizes served (as Synapse's defaults); a request gets the closest one at least as large.
sizes = [
    {{ width = 32, height = 32, method = "crop" }},
    {{ width = 96, height = 96, method = "crop" }},
    {{ width = 320, height = 240, method = "scale" }},
    {{ width = 640, height = 480, method = "scale" }},
    {{ width = 800, height = 600, method = "scale" }},
]
# Make thumbnails of exactly the size asked (up to 1600x1600) instead of the closest one above.
dynamic = false
# Images with more pixels than this are not decoded (decompression bombs).
max_image_pixels = {max_pixels}
# Images larger than this many bytes are not thumbnailed.
max_source_bytes = {max_source}
# Bytes all thumbnail jobs together may hold (sources and decoded pixels), reserved from each
# image's header before decoding; an image that alone needs more is not thumbnailed.
max_decode_memory = {max_decode}

[media.url_preview]
# Fetch pages users link to and serve their OpenGraph title, description and image.
enabled = false
# Addresses the fetcher never connects to, checked for every resolved address at connect time
# and for every redirect, so previews cannot reach into the server's own network.
ip_range_denylist = [{denylist}]
# Exceptions to the deny list, e.g. ["192.168.1.10/32"].
ip_range_allowlist = []
# Largest page read (longer pages are previewed from their start) and largest image fetched.
max_page_bytes = {max_page}
max_image_bytes = {max_image}
# Time limit for one fetch, and how long a preview is reused (milliseconds).
timeout_ms = {preview_timeout}
cache_ttl_ms = {preview_ttl}

[presence]
# Share online/offline status with people in the same rooms.
enabled = true
# Offline when a user has had no /sync in progress for this long (milliseconds)...
offline_after_ms = 30000
# ...and "unavailable" (idle) after this long without sending, typing or reading.
idle_after_ms = 300000

[voip]
# TURN servers for calls; clients get credentials derived from the secret shared with the TURN
# server (coturn: use-auth-secret, static-auth-secret). Empty: no TURN.
turn_uris = []
turn_shared_secret = ""
# turn_user_lifetime_ms = 86400000

[push]
# Notifications to phones: pushes to the gateways clients register (Sygnal, ntfy/UnifiedPush...).
enabled = true
# Gateway URLs must be https unless this is true.
allow_http = false
# Pushes never go to loopback, private or link-local addresses unless allowed here,
# e.g. ip_range_allowlist = ["10.0.0.5/32"] for a gateway on the local network.
ip_range_allowlist = []
# Send the event's content to the gateway (off: ids, names and counts only).
include_content = true
# The app badge counts rooms with unread notifications (false: the notifications).
group_unread_count_by_room = true
# Requests in flight to one gateway at a time, and the time limit of one (milliseconds).
max_concurrent_per_gateway = 16
request_timeout_ms = 30000

[appservice]
# Registration files of bridges (YAML or JSON, as the bridge generates them), e.g.
# config_files = ["/etc/moss/heisenbridge.yaml"]. `moss appservice list` shows what is loaded.
config_files = []

[metrics]
# Prometheus metrics at http://BIND/metrics on a listener of their own (docs/metrics.md).
# Off unless set; keep it on loopback or a private network.
# bind = "127.0.0.1:9000"

[server_notices]
# Messages from the operators to users (POST /_synapse/admin/v1/send_server_notice,
# `moss admin notice`), in a room per user owned by a system account. Off unless set:
# system_mxid_localpart = "notices"
system_mxid_display_name = "Server Notices"
room_name = "Server Notices"
# room_topic = "..."
# Join users to the notices room directly instead of inviting them.
auto_join = false

[federation]
# Talk to other Matrix servers: join their rooms, serve ours, exchange keys, media and EDUs
# (docs/federation.md).
enabled = false
bind = "0.0.0.0:8448"
# PEM files (relative to data_dir); without them the listener is plain HTTP for a TLS proxy.
# tls_certificate = "federation.crt"
# tls_private_key = "federation.key"
verify_certificates = true
# Outbound federation never connects to these ranges (loopback, private, link-local, ...)
# unless allowed here, e.g. ip_range_allowlist = ["127.0.0.1/32"] for two servers on one machine.
ip_range_allowlist = []
request_timeout_ms = 30000
# host:port other servers should connect to, served at /.well-known/matrix/server
# (default: the server name with the listener's port).
# public_address = "matrix.example.org:443"
# Retries to a server that keeps failing back off from 2 s up to this (milliseconds).
max_retry_delay_ms = 600000
# Notaries asked for a server's keys when it cannot be reached itself, e.g. ["matrix.org"].
trusted_key_servers = []
# Ask this DNS server (ip:port) for SRV records instead of the system's resolvers.
# dns_server = "127.0.0.1:53"

[log]
# "pretty" or "json".
format = "pretty"
# A tracing filter, e.g. "info" or "moss_core=debug,info".
level = "info"

[media_repo]
# Only for `moss media-repo`: moss serving the media of a Synapse homeserver, which keeps
# everything else (docs/media-repo.md). server_name must then be Synapse's.
# Synapse's client API, asked whose an access token is:
# synapse_url = "http://127.0.0.1:8008"
# Synapse's signing key (homeserver.yaml's signing_key_path), to fetch other servers' media:
# signing_key_path = "/etc/matrix-synapse/homeserver.signing.key"
# Synapse's media_store_path and database: its media is imported when first asked for.
# synapse_media_store = "/var/lib/matrix-synapse/media_store"
# synapse_database = "postgres://synapse:password@127.0.0.1:5432/synapse"
# Seconds a token's owner is remembered (a token logged out on Synapse works this long here).
token_cache_secs = {token_cache}
"#,
        server_name = d.server_name,
        token_cache = d.media_repo.token_cache_secs,
        data_dir = d.data_dir.display(),
        bind = d.http.bind,
        max_request_bytes = d.http.max_request_bytes,
        max_sync = d.http.max_sync_timeout_ms,
        lifetime = d.auth.access_token_lifetime_ms,
        min_pw = d.auth.min_password_length,
        lps = d.rate_limits.login.per_second,
        lb = d.rate_limits.login.burst,
        rps = d.rate_limits.register.per_second,
        rb = d.rate_limits.register.burst,
        mps = d.rate_limits.message.per_second,
        mb = d.rate_limits.message.burst,
        jps = d.rate_limits.join.per_second,
        jb = d.rate_limits.join.burst,
        ups = d.rate_limits.media_upload.per_second,
        ub = d.rate_limits.media_upload.burst,
        fps = d.rate_limits.federation.per_second,
        fb = d.rate_limits.federation.burst,
        max_upload = d.media.max_upload_size,
        max_pending = d.media.max_pending_uploads,
        pending_expiry = d.media.pending_expiry_ms,
        part_size = d.media.s3.part_size,
        s3_timeout = d.media.s3.request_timeout_ms,
        s3_connect = d.media.s3.connect_timeout_ms,
        s3_idle = d.media.s3.idle_timeout_ms,
        read_segment = d.media.s3.read_segment,
        read_ahead = d.media.s3.read_ahead,
        read_ahead_memory = d.media.s3.read_ahead_memory,
        redirect_expiry = d.media.s3.redirect_expiry_secs,
        max_pixels = d.media.thumbnails.max_image_pixels,
        max_decode = d.media.thumbnails.max_decode_memory,
        cache_size = d.media.cache.max_size,
        denylist =
            d.media.url_preview.ip_range_denylist.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", "),
        max_page = d.media.url_preview.max_page_bytes,
        max_image = d.media.url_preview.max_image_bytes,
        preview_timeout = d.media.url_preview.timeout_ms,
        preview_ttl = d.media.url_preview.cache_ttl_ms,
        max_source = d.media.thumbnails.max_source_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_the_defaults() {
        let c: Config = toml::from_str(&template()).expect("template parses");
        let d = Config::default();
        assert_eq!(c.server_name, d.server_name);
        assert_eq!(c.http.bind, d.http.bind);
        assert_eq!(c.rate_limits.message.burst, d.rate_limits.message.burst);
        assert_eq!(c.media.s3.part_size, d.media.s3.part_size);
        assert_eq!(c.media.max_upload_size, d.media.max_upload_size);
        // Every option appears in the template: serialising both must give the same document.
        assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&d).unwrap());
    }

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let mut t = toml::Table::new();
        let vars = vec![
            ("MOSS_HTTP__BIND".to_owned(), "127.0.0.1:9999".to_owned()),
            ("MOSS_RATE_LIMITS__ENABLED".to_owned(), "false".to_owned()),
            ("MOSS_SERVER_NAME".to_owned(), "example.org".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        apply_env(&mut t, vars.into_iter()).unwrap();
        let c: Config = Value::Table(t).try_into().unwrap();
        assert_eq!(c.http.bind.port(), 9999);
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.server_name, "example.org");
    }

    #[test]
    fn top_level_keys_match_the_config_struct() {
        let c = Config {
            public_baseurl: Some("https://x/".into()),
            registration_shared_secret: Some("s".into()),
            ..Default::default()
        };
        let t = toml::Table::try_from(&c).unwrap();
        let mut keys: Vec<&str> = t.keys().map(String::as_str).collect();
        keys.sort();
        let mut known = TOP_LEVEL_KEYS.to_vec();
        known.sort();
        assert_eq!(keys, known);
    }

    #[test]
    fn a_room_version_may_be_written_as_a_number() {
        let c: Config = toml::from_str("default_room_version = 11").unwrap();
        assert_eq!(c.default_room_version, "11");
        let c: Config = toml::from_str("default_room_version = \"10\"").unwrap();
        assert_eq!(c.default_room_version, "10");
        assert!(check(&Config { default_room_version: "9".into(), ..Default::default() })
            .iter()
            .any(|p| p.contains("default_room_version")));
    }

    #[test]
    fn unrelated_moss_variables_are_not_configuration() {
        let mut t = toml::Table::new();
        let vars = vec![("MOSS_BIN".to_owned(), "/x/moss".to_owned()), ("MOSS_PASSWORD".to_owned(), "p".to_owned())];
        assert!(!apply_env(&mut t, vars.into_iter()).unwrap());
        assert!(t.is_empty());
    }

    #[test]
    fn empty_variables_leave_the_key_alone() {
        let mut t: toml::Table = "public_baseurl = \"https://m.example.org/\"".parse().unwrap();
        let vars =
            vec![("MOSS_PUBLIC_BASEURL".to_owned(), String::new()), ("MOSS_REGISTRATION".to_owned(), String::new())];
        assert!(!apply_env(&mut t, vars.into_iter()).unwrap());
        let c: Config = Value::Table(t).try_into().unwrap();
        assert_eq!(c.public_baseurl.as_deref(), Some("https://m.example.org/"));
        assert_eq!(c.registration, Config::default().registration);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("server_nam = \"x\"").unwrap_err();
        assert!(err.to_string().contains("server_nam"), "{err}");
        let err = toml::from_str::<Config>("[http]\nbind = 5").unwrap_err();
        assert!(err.to_string().contains("bind"), "{err}");
    }
}
