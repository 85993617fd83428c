//! The media repository: uploads spooled to disk while hashed, stored once per distinct content
//! under a keyed hash, and served as ranged streams from the configured blob store.

pub mod import;
pub mod maintenance;
pub mod preview;
pub mod remote;
pub mod thumbnail;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use moss_media::{
    store::{
        cache::CacheStore,
        encrypt::{EncryptedStore, MasterKey},
        fallback::FallbackStore,
        fs::FsStore,
        metered::{MeteredStore, StoreObserver},
        mirror::MirrorStore,
        s3::{S3Config as S3Settings, S3Store},
    },
    BlobStore, ByteStream, MediaError, Range,
};
use moss_storage::MediaRow;
use ruma::{api::error::ErrorKind, UserId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    accounts::random_string,
    config::{Config, StoreKind},
    error::{Error, Result},
    now_ms, Moss,
};

/// The media half of the server state.
pub struct Media {
    pub store: Arc<dyn BlobStore>,
    /// Keys the content hash so object names reveal nothing about the content.
    secret: [u8; 32],
    spool: PathBuf,
    /// The URL preview fetcher, when previews are enabled.
    pub preview: Option<preview::Fetcher>,
    /// Serialises writes of the same content so two uploads never interleave one object.
    writing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each media item's last access was last written (at most hourly).
    accessed: Mutex<HashMap<String, std::time::Instant>>,
    /// Remote media being fetched, so concurrent requests for it share one fetch.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held (locked) by the process that cleared the spool at start, for as long as it runs.
    _spool_lock: Option<std::fs::File>,
    /// Memory thumbnail jobs may hold, in MiB permits (`thumbnails.max_decode_memory`).
    decode_budget: Arc<tokio::sync::Semaphore>,
    /// Downloads answered with a presigned URL (`media.s3.redirect_downloads`).
    redirect: Option<Redirect>,
    /// Bytes of small uploads held in memory instead of the spool, across all uploads
    /// ([`IN_MEMORY_TOTAL`]); an upload that cannot get more goes to the spool.
    in_memory: Arc<tokio::sync::Semaphore>,
    /// Uploads answered here whose metadata record is still being written (so still listed as
    /// unconfirmed), by media id: their content is stored, and identical uploads may share it.
    stored_unconfirmed: StoredUnconfirmed,
}

type StoredUnconfirmed = Arc<Mutex<std::collections::HashSet<String>>>;

/// Uploads up to this size are hashed and sent from memory, never written to the spool: a small
/// file then costs the store's round trips alone.
const IN_MEMORY_UPLOAD: usize = 1024 * 1024;

/// Uploads of known length above this go to a store that takes writes as they arrive (S3) while
/// they arrive ([`Moss::store_streamed`]); smaller ones are read whole and named by their hash,
/// which costs less than the duplicate check after the fact.
const STREAM_ABOVE: u64 = 256 * 1024;

/// A new content object's name when it cannot be its hash's: `c-` and 64 random hex digits,
/// shaped like every content name, revealing nothing.
fn fresh_content_name() -> String {
    format!("c-{}", hex::encode(rand::random::<[u8; 32]>()))
}
/// Memory all uploads held that way may take together.
const IN_MEMORY_TOTAL: usize = 64 * 1024 * 1024;

/// How downloads are redirected to the store.
#[derive(Debug, Clone)]
struct Redirect {
    expiry: Duration,
    /// Replaces the scheme, host and port of presigned URLs (a CDN), when set.
    public_url: Option<String>,
}

impl Redirect {
    /// From the configuration, refusing what cannot work: redirects hand the client the stored
    /// object itself, so the store must be S3, hold plaintext, and be the only place objects
    /// live (no mirror, no migration read-through).
    fn from_config(config: &Config) -> Result<Option<Redirect>> {
        let m = &config.media;
        if !m.s3.redirect_downloads {
            return Ok(None);
        }
        let refuse = |why: &str| Err(Error::internal(format!("media.s3.redirect_downloads cannot be used {why}")));
        if m.store != StoreKind::S3 {
            return refuse("unless media.store is \"s3\"");
        }
        if m.encryption.enabled {
            return refuse(
                "with media.encryption.enabled: the store holds ciphertext, which only moss can decrypt \
                 (turn one of them off)",
            );
        }
        if m.mirror.enabled || m.migrate_from.is_some() {
            return refuse("with media.mirror or media.migrate_from: the object may live in the other store");
        }
        let public_url = m.s3.public_url.trim_end_matches('/');
        let web = public_url.starts_with("https://") || public_url.starts_with("http://");
        if !public_url.is_empty() && !web {
            return refuse("with a media.s3.public_url that is not an http(s) URL");
        }
        Ok(Some(Redirect {
            expiry: Duration::from_secs(m.s3.redirect_expiry_secs.clamp(10, 7 * 24 * 3600)),
            public_url: (!public_url.is_empty()).then(|| public_url.to_owned()),
        }))
    }

    /// `url` with its scheme, host and port replaced by the public base, path and query kept.
    fn rebase(&self, url: String) -> String {
        let Some(base) = &self.public_url else { return url };
        let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
        match url[after_scheme..].find('/') {
            Some(i) => format!("{base}{}", &url[after_scheme + i..]),
            None => url,
        }
    }
}

/// What an upload's first write decided: the object's name, its and its record's in-flight
/// marks, and whether the object is to be written (not when identical content is shared).
struct Prepared {
    key: String,
    inflight: [i64; 2],
    write: bool,
}

/// Content put in the store, not yet recorded.
struct StoredContent {
    key: String,
    sha_hex: String,
    size: u64,
    /// In-flight marks of the content and of its metadata record, ended when recorded.
    inflight: [i64; 2],
    recorded: Recorded,
}

/// Whether the media row of stored content is committed.
enum Recorded {
    /// Not yet: the caller records it (the metadata record object is stored already).
    No,
    /// While the content was written ([`EarlyRecord`]); the metadata record object (`record`,
    /// named `key`) is written after the answer, and then the row confirmed.
    Early { key: String, record: Vec<u8> },
}

/// After an upload under a fresh id was answered: writes its metadata record (a few attempts),
/// ends the in-flight marks and confirms the row. A record that cannot be written now leaves
/// the row unconfirmed, for the reconciliation to write it (as after a crash); one whose media
/// was deleted in the meantime is deleted again.
async fn write_record_and_confirm(
    db: moss_storage::Db,
    store: Arc<dyn BlobStore>,
    media_id: String,
    key: String,
    record: Vec<u8>,
    inflight: [i64; 2],
) {
    let record = Bytes::from(record);
    let mut written = Err(moss_media::MediaError::Other("not tried".into()));
    for pause in [0, 200, 2000] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        written = store.put(&key, record.len() as u64, moss_media::store::once(record.clone())).await;
        if written.is_ok() {
            break;
        }
    }
    if let Err(e) = &written {
        tracing::warn!(media_id, error = %e, "could not write an upload's metadata record; the reconciliation will");
    }
    let (confirm, id) = (written.is_ok(), media_id.clone());
    let done = db
        .write_relaxed(move |w| {
            w.end_inflight(inflight[0])?;
            w.end_inflight(inflight[1])?;
            if !confirm {
                return Ok::<_, Error>(true);
            }
            w.confirm_media(&id)?;
            Ok(w.media(&id)?.is_some())
        })
        .await;
    match done {
        Ok(true) => {}
        Ok(false) => {
            if let Err(e) = store.delete(&key).await {
                tracing::warn!(media_id, error = %e, "could not delete the record of media deleted while it was written");
            }
        }
        Err(e) => tracing::warn!(media_id, error = %e, "could not confirm a stored upload; the reconciliation will"),
    }
}

/// The media row of an upload under a fresh id, which no client can know before the answer:
/// it is committed while the content is still being written, so that the commit's fsync and
/// the store's round trip overlap instead of adding up. Until the store has answered for the
/// content and its metadata record, the row is listed as unconfirmed: one a crash left so is
/// checked against the store later (`reconcile_unconfirmed_media`: the row kept and its record
/// written again if the content arrived, the row deleted if not).
struct EarlyRecord {
    user_id: String,
    content_type: Option<String>,
    filename: Option<String>,
}

/// What an upload request says about its body.
#[derive(Debug, Clone, Default)]
pub struct UploadInfo {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// The body's length when the request states it (`Content-Length`; the HTTP server holds
    /// the body to it). Large bodies of known length can be streamed to the store.
    pub declared_len: Option<u64>,
}

/// What the store keeps beside each upload (object `m-…`), enough to rebuild the media table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MediaMeta {
    pub media_id: String,
    pub server_name: String,
    pub user_id: String,
    pub content_key: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub created_ts: u64,
}

/// A media item ready to stream.
pub struct Download {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    pub range: Option<Range>,
    pub body: ByteStream,
}

fn read_key_file(path: &Path) -> Result<[u8; 32]> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            let t = t.trim();
            if t.len() == 64 {
                hex::decode(t).ok()
            } else {
                STANDARD.decode(t).ok()
            }
        })
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::internal(format!("media key {} is missing or unreadable", path.display())))
}

/// Master keys still accepted for reading: those configured, and those a rotation left as
/// `<key_file>.previous-<id>`.
pub fn previous_master_keys(config: &Config) -> Result<Vec<MasterKey>> {
    let enc = &config.media.encryption;
    let mut paths: Vec<PathBuf> = enc.previous_key_files.iter().map(|p| config.data_dir.join(p)).collect();
    let key_path = config.data_dir.join(&enc.key_file);
    if let (Some(dir), Some(name)) = (key_path.parent(), key_path.file_name()) {
        let prefix = format!("{}.previous-", name.to_string_lossy());
        for e in std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                paths.push(e.path());
            }
        }
    }
    paths.sort();
    paths.iter().map(|p| read_key_file(p).map(MasterKey::from_bytes)).collect()
}

/// Replaces the master key: seals every object's data key under a new one (ciphertext is not
/// touched; small objects, whose key header is inline, are rewritten with a new header), keeps
/// the old key as `<key_file>.previous-<id>`, and returns how many objects were re-sealed. Run
/// it again after restarting moss to catch uploads made meanwhile.
pub async fn rotate_master_key(config: &Config, progress: impl Fn(u64) + Send + Sync) -> Result<(String, String, u64)> {
    let enc = &config.media.encryption;
    if !enc.enabled {
        return Err(Error::internal("media encryption is not enabled"));
    }
    let key_path = config.data_dir.join(&enc.key_file);
    let old = read_key_file(&key_path)?;
    let old_key = MasterKey::from_bytes(old);
    let new_path = key_path.with_extension("new");
    // An interrupted rotation resumes with the key it had started with.
    let new = match read_key_file(&new_path) {
        Ok(k) => k,
        Err(_) => {
            let _ = std::fs::remove_file(&new_path);
            read_or_create_secret(&new_path, "new media master key")?
        }
    };
    let new_key = MasterKey::from_bytes(new);
    let mut readable = vec![old_key.clone()];
    readable.extend(previous_master_keys(config)?);
    let store = EncryptedStore::new(base_store(config, None)?, new_key.clone()).with_previous_keys(readable);
    let changed = store.rewrap_all_with_progress(progress).await.map_err(store_error)?;
    let kept = key_path.with_file_name(format!(
        "{}.previous-{}",
        key_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        old_key.id_hex()
    ));
    std::fs::copy(&key_path, &kept).map_err(|e| Error::internal(format!("keeping the old key: {e}")))?;
    std::fs::rename(&new_path, &key_path).map_err(|e| Error::internal(format!("installing the new key: {e}")))?;
    Ok((old_key.id_hex(), new_key.id_hex(), changed))
}

fn read_or_create_secret(path: &Path, what: &str) -> Result<[u8; 32]> {
    let parse = |text: &str| {
        let t = text.trim();
        let bytes = if t.len() == 64 { hex::decode(t).ok() } else { STANDARD.decode(t).ok() };
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| Error::internal(format!("{what} {} must hold 32 bytes as base64 or hex", path.display())))
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        return parse(&text);
    }
    // Processes sharing the data directory and starting together all end up with the first key
    // written (media encrypted under a key another process replaced would be lost).
    let key = MasterKey::generate();
    let created = crate::secret_file::create_once(path, format!("{}\n", STANDARD.encode(key)).as_bytes())
        .map_err(|e| Error::internal(format!("writing {what} {}: {e}", path.display())))?;
    if !created {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::internal(format!("reading {what} {}: {e}", path.display())))?;
        return parse(&text);
    }
    tracing::info!(path = %path.display(), "generated a new {what}");
    Ok(key)
}

/// Held while an object of some content is written or deleted (see [`Media::content_lock`]).
pub(crate) struct ContentGuard<'a> {
    media: &'a Media,
    key: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for ContentGuard<'_> {
    fn drop(&mut self) {
        let mut w = self.media.writing.lock().unwrap_or_else(|p| p.into_inner());
        // The last holder (the map's entry and ours are the only references) removes the entry.
        if w.get(&self.key).is_some_and(|m| Arc::strong_count(m) <= 2) {
            w.remove(&self.key);
        }
    }
}

impl Media {
    /// Serialises everything that writes or deletes the object `key`: two uploads of the same
    /// content never interleave one object, and a purge never deletes an object an upload has
    /// just found present (and so did not write again).
    pub(crate) async fn content_lock(&self, key: &str) -> ContentGuard<'_> {
        let lock = {
            let mut w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            w.entry(key.to_owned()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        ContentGuard { media: self, key: key.to_owned(), _guard: guard }
    }

    /// `has_media`: the database already records uploads, so a missing master key is an error
    /// (a fresh key could not read them), not a first start.
    pub fn open(config: &Config, has_media: bool, observer: Option<Arc<dyn StoreObserver>>) -> Result<Media> {
        let redirect = Redirect::from_config(config)?;
        let base = base_store(config, observer.as_ref())?;
        let kind = match base.describe() {
            d if d.starts_with("s3") => "s3",
            d if d.starts_with("fs") => "fs",
            _ => "store",
        };
        // Each layer measured from above: the difference between two is what the upper one
        // added, and reads that reach the layer under the cache are its misses.
        let metered = |store: Arc<dyn BlobStore>, layer: &'static str| -> Arc<dyn BlobStore> {
            match &observer {
                Some(o) => Arc::new(MeteredStore::new(store, layer, o.clone())),
                None => store,
            }
        };
        let mut store: Arc<dyn BlobStore> = metered(base, kind);
        let enc = &config.media.encryption;
        if enc.enabled {
            let master = MasterKey::from_bytes({
                let path = config.data_dir.join(&enc.key_file);
                if has_media && !path.exists() {
                    return Err(Error::internal(format!(
                        "the media master key {} is missing but media exists: restore the key from your backup \
                             (a new key could not decrypt the existing media)",
                        path.display()
                    )));
                }
                read_or_create_secret(&path, "media master key")?
            });
            let previous = previous_master_keys(config)?;
            tracing::info!(master_key = %master.id_hex(), "media encryption is on");
            store = Arc::new(EncryptedStore::new(store, master).with_previous_keys(previous));
            store = metered(store, "encrypt");
        }
        let cache = &config.media.cache;
        if cache.enabled {
            let dir = config.data_dir.join(&cache.path);
            store = Arc::new(
                CacheStore::open(store, &dir, cache.max_size)
                    .map_err(|e| Error::internal(format!("media cache {}: {e}", dir.display())))?,
            );
            store = metered(store, "cache");
        }
        tracing::info!(store = %store.describe(), "media store");
        let naming = config.data_dir.join("media-naming.key");
        if has_media && !naming.exists() {
            // A new naming key would give new uploads other object names than identical
            // existing content (no deduplication) and break `media decrypt`'s names.
            return Err(Error::internal(format!(
                "the media naming key {} is missing but media exists: restore it from your backup",
                naming.display()
            )));
        }
        let secret = read_or_create_secret(&naming, "media naming key")?;
        let spool = config.data_dir.join("tmp");
        std::fs::create_dir_all(&spool).map_err(|e| Error::internal(format!("{}: {e}", spool.display())))?;
        // Spooled uploads a crash interrupted are worthless now, but only the process that
        // holds the spool's lock may clear it: a CLI command run beside the server must not
        // delete the server's uploads in progress.
        let lock_path = config.data_dir.join("tmp.lock");
        let spool_lock =
            std::fs::File::create(&lock_path).map_err(|e| Error::internal(format!("{}: {e}", lock_path.display())))?;
        let spool_owned = spool_lock.try_lock().is_ok();
        if spool_owned {
            for entry in std::fs::read_dir(&spool).into_iter().flatten().flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let p = &config.media.url_preview;
        let preview = if p.enabled {
            let policy = crate::net::AddressPolicy::from_lists(
                &p.ip_range_denylist,
                &p.ip_range_allowlist,
                "media.url_preview",
            )?;
            Some(preview::Fetcher::new(policy, Duration::from_millis(p.timeout_ms), p.max_page_bytes as usize)?)
        } else {
            None
        };
        Ok(Media {
            store,
            secret,
            spool,
            preview,
            writing: Mutex::new(HashMap::new()),
            accessed: Default::default(),
            fetching: Default::default(),
            _spool_lock: spool_owned.then_some(spool_lock),
            in_memory: Arc::new(tokio::sync::Semaphore::new(IN_MEMORY_TOTAL)),
            decode_budget: Arc::new(tokio::sync::Semaphore::new(
                mib(config.media.thumbnails.max_decode_memory) as usize
            )),
            redirect,
            stored_unconfirmed: Default::default(),
        })
    }

    /// The name of the metadata record of a media id.
    pub fn meta_key(&self, media_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length works");
        mac.update(b"meta|");
        mac.update(media_id.as_bytes());
        format!("m-{}", hex::encode(mac.finalize().into_bytes()))
    }

    fn content_key(&self, sha256: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length works");
        mac.update(sha256);
        format!("c-{}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// The configured backing store (mirrored if asked), before encryption and cache layers.
/// `observer` is told of every HTTP request to an S3 store.
pub fn base_store(config: &Config, observer: Option<&Arc<dyn StoreObserver>>) -> Result<Arc<dyn BlobStore>> {
    let current = current_store(config, observer)?;
    match &config.media.migrate_from {
        Some(name) => Ok(Arc::new(FallbackStore::new(current, named_store(config, name, observer)?))),
        None => Ok(current),
    }
}

/// The configured store (mirrored if asked), without migration read-through or other layers.
pub fn current_store(config: &Config, observer: Option<&Arc<dyn StoreObserver>>) -> Result<Arc<dyn BlobStore>> {
    let m = &config.media;
    let primary = build_store(config, m.store, &m.path, &m.s3, "media.s3", observer)?;
    if !m.mirror.enabled {
        return Ok(primary);
    }
    let secondary = build_store(config, m.mirror.store, &m.mirror.path, &m.mirror.s3, "media.mirror.s3", observer)?;
    Ok(Arc::new(MirrorStore::new(primary, secondary)))
}

/// A store from `[media.stores.NAME]`.
pub fn named_store(
    config: &Config,
    name: &str,
    observer: Option<&Arc<dyn StoreObserver>>,
) -> Result<Arc<dyn BlobStore>> {
    let s = config
        .media
        .stores
        .get(name)
        .ok_or_else(|| Error::internal(format!("no store named {name:?} in [media.stores]")))?;
    build_store(config, s.store, &s.path, &s.s3, &format!("media.stores.{name}.s3"), observer)
}

fn build_store(
    config: &Config,
    kind: StoreKind,
    path: &Path,
    s3: &crate::config::S3Config,
    section: &str,
    observer: Option<&Arc<dyn StoreObserver>>,
) -> Result<Arc<dyn BlobStore>> {
    Ok(match kind {
        StoreKind::Fs => {
            let root = config.data_dir.join(path);
            Arc::new(FsStore::open(&root).map_err(|e| Error::internal(format!("media store {}: {e}", root.display())))?)
        }
        StoreKind::S3 => {
            let c = s3;
            for (name, v) in [
                ("endpoint", &c.endpoint),
                ("bucket", &c.bucket),
                ("access_key_id", &c.access_key_id),
                ("secret_access_key", &c.secret_access_key),
            ] {
                if v.is_empty() {
                    return Err(Error::internal(format!("an s3 media store needs {section}.{name}")));
                }
            }
            Arc::new(
                S3Store::observed(
                    S3Settings {
                        endpoint: c.endpoint.clone(),
                        region: c.region.clone(),
                        bucket: c.bucket.clone(),
                        access_key_id: c.access_key_id.clone(),
                        secret_access_key: c.secret_access_key.clone(),
                        path_style: c.path_style,
                        prefix: c.prefix.clone(),
                        part_size: c.part_size as usize,
                        request_timeout: Duration::from_millis(c.request_timeout_ms),
                        connect_timeout: Duration::from_millis(c.connect_timeout_ms),
                        idle_timeout: Duration::from_millis(c.idle_timeout_ms),
                        read_segment: c.read_segment,
                        read_ahead: c.read_ahead as usize,
                        read_ahead_memory: c.read_ahead_memory,
                    },
                    observer.cloned(),
                )
                .map_err(|e| Error::internal(e.to_string()))?,
            )
        }
    })
}

fn store_error(e: MediaError) -> Error {
    match e {
        MediaError::NotFound => Error::not_found("media not found"),
        // The store's words name its endpoint and objects: the log gets them, the client an id.
        MediaError::Unavailable(m) => Error::upstream("the media store is unavailable", m),
        MediaError::BadRange => Error::new(ErrorKind::Unknown, 416, "requested range is not satisfiable"),
        e => Error::internal(format!("media store: {e}")),
    }
}

/// Deletes the spool file however the upload ends.
struct SpoolFile(PathBuf);
impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An upload's body while it is read: in memory (with its share of [`Media::in_memory`]) until
/// it grows past [`IN_MEMORY_UPLOAD`] or the budget runs out, then in a spool file.
enum Held {
    Memory(Vec<Bytes>, Option<tokio::sync::OwnedSemaphorePermit>),
    /// Written through a large buffer: the body arrives in frames of a few KiB, and each write
    /// to a file is a trip to the blocking pool.
    Spooling(SpoolFile, tokio::io::BufWriter<tokio::fs::File>),
}

/// The spool's write buffer (see [`Held::Spooling`]).
const SPOOL_BUFFER: usize = 1024 * 1024;

/// A body read whole, ready for the store.
enum Ready {
    /// The chunks, and their share of the budget (returned when dropped).
    Memory {
        chunks: Vec<Bytes>,
        _budget: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    Spooled(SpoolFile),
}

impl Held {
    /// Adds `chunk`; `size` counts it already.
    async fn push(self, chunk: Bytes, size: u64, media: &Media) -> Result<Held> {
        let spool_error = |e: std::io::Error| Error::internal(format!("spool: {e}"));
        match self {
            Held::Memory(mut chunks, mut permit) => {
                let fits = size <= IN_MEMORY_UPLOAD as u64
                    && match media.in_memory.clone().try_acquire_many_owned(chunk.len() as u32) {
                        Ok(more) => {
                            match permit.as_mut() {
                                Some(p) => p.merge(more),
                                None => permit = Some(more),
                            }
                            true
                        }
                        Err(_) => false,
                    };
                if fits {
                    chunks.push(chunk);
                    return Ok(Held::Memory(chunks, permit));
                }
                let spool = SpoolFile(media.spool.join(format!("upload-{}", random_string(16))));
                let file = tokio::fs::File::create(&spool.0).await.map_err(spool_error)?;
                let mut file = tokio::io::BufWriter::with_capacity(SPOOL_BUFFER, file);
                for c in chunks.iter().chain(std::iter::once(&chunk)) {
                    file.write_all(c).await.map_err(spool_error)?;
                }
                Ok(Held::Spooling(spool, file))
            }
            Held::Spooling(spool, mut file) => {
                file.write_all(&chunk).await.map_err(spool_error)?;
                Ok(Held::Spooling(spool, file))
            }
        }
    }

    /// The whole body has been read.
    async fn finish(self) -> Result<Ready> {
        match self {
            Held::Memory(chunks, permit) => Ok(Ready::Memory { chunks, _budget: permit }),
            Held::Spooling(spool, mut file) => {
                file.flush().await.map_err(|e| Error::internal(format!("spool: {e}")))?;
                Ok(Ready::Spooled(spool))
            }
        }
    }
}

pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Moss {
    /// Reserves a media id for an asynchronous upload (`POST /_matrix/media/v1/create`).
    pub async fn create_media_id(&self, user: &UserId) -> Result<(String, u64)> {
        let now = now_ms();
        let expires = now + self.config.media.pending_expiry_ms;
        let max = self.config.media.max_pending_uploads as i64;
        let (u, id) = (user.to_string(), random_string(24));
        let media_id = id.clone();
        self.db
            .write(move |w| {
                w.expire_pending_media(now as i64)?;
                if w.pending_media_count(&u, now as i64)? >= max {
                    let mut data = ruma::api::error::LimitExceededErrorData::new();
                    data.retry_after = Some(ruma::api::error::RetryAfter::Delay(Duration::from_secs(60)));
                    return Err(Error::new(ErrorKind::LimitExceeded(data), 429, "too many pending uploads"));
                }
                w.create_pending_media(&id, &u, now as i64, expires as i64)?;
                Ok(())
            })
            .await?;
        Ok((media_id, expires))
    }

    /// Stores an upload. With `media_id` it fills a reserved id (only its creator may, once).
    /// Returns the media id once the content is durable in the store and recorded.
    pub async fn upload_media<S>(
        &self,
        user: &UserId,
        media_id: Option<&str>,
        about: UploadInfo,
        body: S,
    ) -> Result<String>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        // Whether the user is suspended is asked together with the upload's first write (see
        // `Moss::prepare_write`): one trip to the database instead of two before storing.
        self.ingest(user, media_id, about, body, true).await
    }

    /// Fills a reserved media id without the checks meant for clients (quota, size limit,
    /// ownership): for imports by the operator.
    pub(crate) async fn upload_media_unchecked<S>(
        &self,
        user: &UserId,
        media_id: &str,
        content_type: Option<String>,
        filename: Option<String>,
        body: S,
    ) -> Result<String>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        self.ingest(user, Some(media_id), UploadInfo { content_type, filename, declared_len: None }, body, false).await
    }

    async fn ingest<S>(
        &self,
        user: &UserId,
        media_id: Option<&str>,
        about: UploadInfo,
        body: S,
        enforce: bool,
    ) -> Result<String>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let UploadInfo { content_type, filename, declared_len: declared } = about;
        if let (Some(id), true) = (media_id, enforce) {
            let (i, u) = (id.to_owned(), user.to_string());
            let now = now_ms() as i64;
            self.db
                .read(move |r| match r.media(&i)? {
                    None => Err(Error::not_found("unknown media id")),
                    Some(m) if m.content_key.is_some() => {
                        Err(Error::new(ErrorKind::CannotOverwriteMedia, 409, "media already uploaded"))
                    }
                    Some(m) if m.user_id != u => Err(Error::forbidden("this media id belongs to another user")),
                    Some(m) if m.expires_ts.is_some_and(|e| e <= now) => Err(Error::not_found("media id expired")),
                    Some(_) => Ok(()),
                })
                .await?;
        }

        let id = media_id.map(str::to_owned).unwrap_or_else(|| random_string(24));
        // A small record beside the content, so the store alone (plus the master key, when
        // encrypted) can restore every file with its name and type: `moss media decrypt`.
        let meta = MediaMeta {
            media_id: id.clone(),
            server_name: self.server_name.to_string(),
            user_id: user.to_string(),
            content_key: String::new(),
            content_type: content_type.clone(),
            filename: filename.clone(),
            size: 0,
            sha256: String::new(),
            created_ts: now_ms(),
        };
        let early = media_id.is_none().then(|| EarlyRecord {
            user_id: user.to_string(),
            content_type: content_type.clone(),
            filename: filename.clone(),
        });
        let content = self.store_content(body, declared, enforce.then_some(user), &id, meta, early).await?;
        let StoredContent { key, sha_hex, size, inflight, recorded } = content;
        if let Recorded::Early { key: record_key, record } = recorded {
            // Recorded durably and stored: the answer need not wait for the rest (a mark left
            // behind goes stale; a record or a confirmation lost to a crash is reconciled).
            let (db, store, i) = (self.db.clone(), self.media.store.clone(), id.clone());
            let stored = self.media.stored_unconfirmed.clone();
            stored.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
            tokio::spawn(async move {
                write_record_and_confirm(db, store, i.clone(), record_key, record, inflight).await;
                stored.lock().unwrap_or_else(|p| p.into_inner()).remove(&i);
            });
            return Ok(id);
        }
        let (i, u, k) = (id.clone(), user.to_string(), key.clone());
        let stored = self
            .db
            .write(move |w| {
                w.end_inflight(inflight[0])?;
                w.end_inflight(inflight[1])?;
                Ok::<_, Error>(w.store_media(
                    &i,
                    &u,
                    now_ms() as i64,
                    &k,
                    content_type.as_deref(),
                    filename.as_deref(),
                    size as i64,
                    &sha_hex,
                )?)
            })
            .await?;
        if !stored {
            return Err(Error::new(ErrorKind::CannotOverwriteMedia, 409, "media already uploaded"));
        }
        Ok(id)
    }

    /// Stores a body and writes `template` (its content key, size and hash filled in here)
    /// beside it as the record named `meta_name`. With `limits_for`, the size limit and that
    /// user's quota apply. The content and the record are marked in flight until the caller
    /// records them (`end_inflight`), so a concurrent orphan sweep leaves them alone and a purge
    /// of other media with the same content keeps the object (see `purge_media`).
    ///
    /// A body of known length larger than [`STREAM_ABOVE`], on a store that sends writes on
    /// as they arrive (S3), is streamed to it ([`Moss::store_streamed`]); any other is read
    /// whole first, so that it is named by its hash ([`Moss::store_hashed_first`]).
    async fn store_content<S>(
        &self,
        body: S,
        declared: Option<u64>,
        limits_for: Option<&UserId>,
        meta_name: &str,
        template: MediaMeta,
        early: Option<EarlyRecord>,
    ) -> Result<StoredContent>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let max = self.config.media.max_upload_size;
        if let (Some(n), Some(_)) = (declared, limits_for) {
            if n > max {
                return Err(Error::too_large(format!("uploads are limited to {max} bytes")));
            }
        }
        match declared {
            Some(n) if n > STREAM_ABOVE && self.media.store.streams_writes() => {
                if let Some(user) = limits_for {
                    self.check_quota(user, n).await?;
                }
                self.store_streamed(body, n, limits_for, meta_name, template).await
            }
            _ => self.store_hashed_first(body, limits_for, meta_name, template, early).await,
        }
    }

    /// Refuses an upload of `size` bytes that would take `user` past the quota.
    async fn check_quota(&self, user: &UserId, size: u64) -> Result<()> {
        let quota = self.config.media.quota_per_user;
        if quota == 0 {
            return Ok(());
        }
        let u = user.to_string();
        let used = self.db.read(move |r| Ok::<_, Error>(r.user_media_bytes(&u)?)).await? as u64;
        if used + size > quota {
            return Err(Error::forbidden(format!(
                "this upload would exceed your storage quota ({} of {} MiB used)",
                used / (1024 * 1024),
                quota / (1024 * 1024)
            )));
        }
        Ok(())
    }

    /// Reads the body whole while hashing it (small ones in memory within a shared budget,
    /// larger ones spooled to disk so that memory stays flat), then puts it in the store under
    /// the name its hash gives, unless an identical object is there already. With `early`, the
    /// media row (named `meta_name`) is committed at the same time.
    async fn store_hashed_first<S>(
        &self,
        body: S,
        limits_for: Option<&UserId>,
        meta_name: &str,
        template: MediaMeta,
        early: Option<EarlyRecord>,
    ) -> Result<StoredContent>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let max = self.config.media.max_upload_size;
        let mut held = Held::Memory(Vec::new(), None);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::bad_json(format!("upload interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > max && limits_for.is_some() {
                return Err(Error::too_large(format!("uploads are limited to {max} bytes")));
            }
            hasher.update(&chunk);
            held = held.push(chunk, size, &self.media).await?;
        }
        let held = held.finish().await?;
        if let Some(user) = limits_for {
            self.check_quota(user, size).await?;
        }
        let sha = hasher.finalize();
        let sha_hex = hex::encode(sha);
        let record_key = self.media.meta_key(meta_name);
        let encrypted = self.config.media.encryption.enabled;
        // Encrypted, every object is sealed under a data key of its own, so two writers of one
        // name (two processes on a shared database storing the same new file at once) could
        // leave one's data beside the other's wrapped key. New encrypted content therefore gets
        // a fresh name, and identical content is found by its hash in the database instead:
        // shared as it is, never written again (two uploads of the same new file at the same
        // moment may each keep a copy; nothing breaks). Unencrypted, the name is the content
        // (HMAC of its hash): the same bytes under the same name, whoever writes them.
        let name = if encrypted { fresh_content_name() } else { self.media.content_key(&sha) };
        let same = encrypted.then(|| (sha_hex.clone(), size));
        let Prepared { key, inflight, write } = self.prepare_write(name, &record_key, same, limits_for).await?;
        // The content, unless identical content is stored already, and the small record that
        // lets the store alone restore the file (`moss media decrypt`): beside it, so that a
        // small upload costs the store one round trip, not several in a row; or, when the row
        // is committed early, after the answer.
        let record =
            serde_json::to_vec(&MediaMeta { content_key: key.clone(), size, sha256: sha_hex.clone(), ..template })?;
        let content = async {
            if !write {
                return Ok(());
            }
            if encrypted {
                // A fresh name: nobody else writes or reads it yet.
                return self.put_ready(&key, size, &held).await;
            }
            let _guard = self.media.content_lock(&key).await;
            // A small object written again is the same bytes, and one PUT costs less than
            // asking first; large ones are not sent twice. Content no record refers to and no
            // other upload is writing has no copy worth keeping (at most an orphan): the
            // database says so without asking the store.
            let ask_first = size > IN_MEMORY_UPLOAD as u64 && {
                let (k, own, id) = (key.clone(), inflight[0], meta_name.to_owned());
                self.db.read(move |r| Ok::<_, Error>(r.content_in_use(&k, own, &id)?)).await?
            };
            let exists =
                ask_first && self.media.store.head(&key).await.map_err(store_error)?.is_some_and(|i| i.size == size);
            if !exists {
                self.put_ready(&key, size, &held).await?;
            }
            Ok::<_, Error>(())
        };
        let Some(early) = early else {
            let record = async {
                let len = record.len() as u64;
                self.media.store.put(&record_key, len, moss_media::store::once(record)).await.map_err(store_error)
            };
            tokio::try_join!(content, record)?;
            return Ok(StoredContent { key, sha_hex, size, inflight, recorded: Recorded::No });
        };
        let (id, k, sha) = (meta_name.to_owned(), key.clone(), sha_hex.clone());
        let row = self.db.write(move |w| {
            let now = now_ms() as i64;
            let EarlyRecord { user_id, content_type, filename } = early;
            let (ct, name) = (content_type.as_deref(), filename.as_deref());
            if !w.store_media(&id, &user_id, now, &k, ct, name, size as i64, &sha)? {
                return Err(Error::new(ErrorKind::CannotOverwriteMedia, 409, "media already uploaded"));
            }
            Ok(w.record_unconfirmed(&id, &k, now)?)
        });
        // The metadata record (for restoring from the store alone) is written after the
        // answer: the row is durable and listed as unconfirmed until it is.
        let (stored, row) = tokio::join!(content, row);
        if let Err(e) = stored {
            if row.is_ok() {
                // Not stored, so not kept: the row goes (a crash before this is reconciled).
                let id = meta_name.to_owned();
                self.db.write(move |w| Ok::<_, Error>(w.delete_media(&id)?)).await?;
            }
            return Err(e);
        }
        row?;
        Ok(StoredContent { key, sha_hex, size, inflight, recorded: Recorded::Early { key: record_key, record } })
    }

    /// Streams a body of `declared` bytes to the store as it arrives, so that receiving it and
    /// storing it overlap. The content hash that names objects is only known at the end, so the
    /// object gets a fresh random name (`c-` and 64 hex digits, like every content name: it
    /// reveals nothing). A copy goes to the spool as well (small ones stay in memory): a store
    /// request that fails is sent again from it, as a spooled upload's would be retried. Once
    /// stored, content with the same hash that a record already refers to wins: the new object
    /// is deleted and the old one shared, so identical uploads are still kept once.
    async fn store_streamed<S>(
        &self,
        mut body: S,
        declared: u64,
        limits_for: Option<&UserId>,
        meta_name: &str,
        template: MediaMeta,
    ) -> Result<StoredContent>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let fresh = fresh_content_name();
        let record_key = self.media.meta_key(meta_name);
        let marks = self.prepare_write(fresh.clone(), &record_key, None, limits_for).await?.inflight;
        // A few chunks in between: the slower of the client and the store sets the pace.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
        let to_store = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let sending = self.media.store.put(&fresh, declared, Box::pin(to_store));
        let reading = async {
            let mut held = Held::Memory(Vec::new(), None);
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut tx = Some(tx);
            loop {
                let failure = match body.next().await {
                    None => break,
                    Some(Err(e)) => format!("upload interrupted: {e}"),
                    Some(Ok(chunk)) => {
                        size += chunk.len() as u64;
                        if size <= declared {
                            hasher.update(&chunk);
                            held = held.push(chunk.clone(), size, &self.media).await?;
                            // A store request that failed has stopped taking chunks: the spool
                            // still gets them, to send again.
                            if let Some(t) = &tx {
                                if t.send(Ok(chunk)).await.is_err() {
                                    tx = None;
                                }
                            }
                            continue;
                        }
                        format!("the body is longer than its declared {declared} bytes")
                    }
                };
                // The store must not keep a partial object: the request fails with the body.
                if let Some(t) = tx.take() {
                    let _ = t.send(Err(std::io::Error::other(failure.clone()))).await;
                }
                return Err(Error::bad_json(failure));
            }
            drop(tx);
            if size != declared {
                return Err(Error::bad_json(format!("the body ended after {size} of its declared {declared} bytes")));
            }
            Ok::<_, Error>((held.finish().await?, hasher.finalize()))
        };
        // The record beside it at the same time: it names the new object and says the size; the
        // hash, not known yet, is left out (`moss media decrypt` computes it as it restores).
        let first_record =
            serde_json::to_vec(&MediaMeta { content_key: fresh.clone(), size: declared, ..template.clone() })?;
        let recording =
            self.media.store.put(&record_key, first_record.len() as u64, moss_media::store::once(first_record));
        let (sent, read, recorded) = tokio::join!(sending, reading, recording);
        let (held, sha) = read?;
        recorded.map_err(store_error)?;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "a streamed upload did not reach the media store; sending it again");
            self.put_ready(&fresh, declared, &held).await?;
        }
        drop(held);
        let sha_hex = hex::encode(sha);
        let Some((existing, mark)) = self.stored_duplicate(&sha_hex, declared, &fresh).await? else {
            return Ok(StoredContent { key: fresh, sha_hex, size: declared, inflight: marks, recorded: Recorded::No });
        };
        // Identical content is kept already: the record names that object instead, and the new
        // one goes (now, or with the orphan sweep once its mark is stale).
        let record = serde_json::to_vec(&MediaMeta {
            content_key: existing.clone(),
            size: declared,
            sha256: sha_hex.clone(),
            ..template
        })?;
        let len = record.len() as u64;
        self.media.store.put(&record_key, len, moss_media::store::once(record)).await.map_err(store_error)?;
        if let Err(e) = self.media.store.delete(&fresh).await {
            tracing::warn!(error = %e, "could not delete a duplicate upload; the orphan sweep will");
        } else {
            let m = marks[0];
            self.db.write_relaxed(move |w| Ok::<_, Error>(w.end_inflight(m)?)).await?;
        }
        Ok(StoredContent { key: existing, sha_hex, size: declared, inflight: [mark, marks[1]], recorded: Recorded::No })
    }

    /// An upload's first write, before anything is stored, in one trip to the database:
    /// refuses a suspended `user`; with `same` (SHA-256 and size), shares content with that
    /// hash a record already refers to (nothing to write); otherwise the object goes under
    /// `name`. The object and the record are marked in flight (see [`Moss::store_content`]).
    /// One write transaction: a purge that deletes the last record of that content commits
    /// before it (and the content is not found) or after (and sees the mark, keeping it).
    /// Relaxed: the marks keep a running sweep away; after a power loss there is no sweep to
    /// keep away, and an object whose record did not commit is an orphan the sweep may take.
    async fn prepare_write(
        &self,
        name: String,
        record: &str,
        same: Option<(String, u64)>,
        user: Option<&UserId>,
    ) -> Result<Prepared> {
        let record = record.to_owned();
        let user = user.filter(|u| u.server_name() == self.server_name).map(|u| u.to_string());
        let stored = self.media.stored_unconfirmed.clone();
        self.db
            .write_relaxed(move |w| {
                if let Some(u) = user {
                    if w.restrictions(&u)?.0 {
                        return Err(Error::new(ErrorKind::UserSuspended, 403, "this account is suspended"));
                    }
                }
                let now = now_ms() as i64;
                let shared = match same {
                    Some((sha, size)) => w.content_with_hash(&sha, size as i64, "", &|id| {
                        stored.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
                    })?,
                    None => None,
                };
                let (key, write) = match shared {
                    Some(existing) if w.media_referencing(&existing)? > 0 => (existing, false),
                    _ => (name, true),
                };
                let inflight = [w.begin_inflight(&key, now)?, w.begin_inflight(&record, now)?];
                Ok(Prepared { key, inflight, write })
            })
            .await
    }

    /// Content with this hash and size that a record already refers to (other than `except`),
    /// marked in flight so that a purge deciding after this keeps it. Under the content's lock,
    /// so a purge that decided before has deleted the record by then (and it is not found).
    async fn stored_duplicate(&self, sha_hex: &str, size: u64, except: &str) -> Result<Option<(String, i64)>> {
        let (s, e, stored) = (sha_hex.to_owned(), except.to_owned(), self.media.stored_unconfirmed.clone());
        let is_stored = move |id: &str| stored.lock().unwrap_or_else(|p| p.into_inner()).contains(id);
        let Some(existing) =
            self.db.read(move |r| Ok::<_, Error>(r.content_with_hash(&s, size as i64, &e, &is_stored)?)).await?
        else {
            return Ok(None);
        };
        let _guard = self.media.content_lock(&existing).await;
        let k = existing.clone();
        let mark = self
            .db
            .write_relaxed(move |w| {
                if w.media_referencing(&k)? == 0 {
                    return Ok::<_, Error>(None);
                }
                Ok(Some(w.begin_inflight(&k, now_ms() as i64)?))
            })
            .await?;
        Ok(mark.map(|m| (existing, m)))
    }

    /// Puts a body read whole under `key`: from memory, or the spool file (which a store on the
    /// spool's filesystem takes as it is).
    async fn put_ready(&self, key: &str, size: u64, ready: &Ready) -> Result<()> {
        match ready {
            Ready::Memory { chunks, .. } => {
                let stream = futures_util::stream::iter(chunks.clone().into_iter().map(Ok));
                self.media.store.put(key, size, Box::pin(stream)).await.map_err(store_error)
            }
            Ready::Spooled(spool) => self.media.store.put_file(key, size, &spool.0).await.map_err(store_error),
        }
    }

    /// Marks an object as being written: `purge --orphans` leaves it alone until the mark ends
    /// (in the transaction that records the object) or grows stale (an hour).
    async fn begin_inflight(&self, key: &str) -> Result<i64> {
        let k = key.to_owned();
        self.db.write(move |w| Ok::<_, Error>(w.begin_inflight(&k, now_ms() as i64)?)).await
    }

    /// Keeps another server's media (`mxc://origin/media_id`) in our store: for imports now, for
    /// federation later. Returns false if it was already kept.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn store_remote_media<S>(
        &self,
        origin: &str,
        media_id: &str,
        content_type: Option<String>,
        filename: Option<String>,
        created_ts: i64,
        quarantined: bool,
        body: S,
    ) -> Result<bool>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let meta_name = format!("{origin}/{media_id}");
        let meta = MediaMeta {
            media_id: media_id.to_owned(),
            server_name: origin.to_owned(),
            user_id: String::new(),
            content_key: String::new(),
            content_type: content_type.clone(),
            filename: filename.clone(),
            size: 0,
            sha256: String::new(),
            created_ts: created_ts as u64,
        };
        let StoredContent { key, sha_hex, size, inflight, .. } =
            self.store_content(body, None, None, &meta_name, meta, None).await?;
        let (o, id) = (origin.to_owned(), media_id.to_owned());
        self.db
            .write(move |w| {
                w.end_inflight(inflight[0])?;
                w.end_inflight(inflight[1])?;
                Ok::<_, Error>(w.store_remote_media(&moss_storage::NewRemoteMedia {
                    origin: &o,
                    media_id: &id,
                    content_key: &key,
                    content_type: content_type.as_deref(),
                    filename: filename.as_deref(),
                    size: size as i64,
                    sha256: &sha_hex,
                    created_ts,
                    quarantined,
                })?)
            })
            .await
    }

    /// Looks up `mxc://server/media_id`: local media (see [`Moss::media_row`]) or another
    /// server's media kept in our store, fetched first when `fetch` allows (only for
    /// authenticated requests: an anonymous one never makes the server reach out).
    pub async fn media_row_of(&self, server: &str, media_id: &str, wait: Duration, fetch: bool) -> Result<MediaRow> {
        if server == self.server_name.as_str() {
            return self.media_row(media_id, wait).await;
        }
        let (o, id) = (server.to_owned(), media_id.to_owned());
        let mut row = self.db.read(move |r| Ok::<_, Error>(r.remote_media(&o, &id)?)).await?;
        // `moss media-repo`: Synapse may have fetched it before moss took over.
        if row.is_none() && valid_media_id(media_id) && self.import_remote_from_synapse(server, media_id).await? {
            let (o, id) = (server.to_owned(), media_id.to_owned());
            row = self.db.read(move |r| Ok::<_, Error>(r.remote_media(&o, &id)?)).await?;
        }
        match row {
            Some(r) if r.quarantined => Err(Error::not_found("media not found")),
            Some(r) => Ok(r),
            None if fetch && self.federation.is_some() && valid_media_id(media_id) => {
                let origin = ruma::ServerName::parse(server).map_err(|_| Error::not_found("media not found"))?;
                self.fetch_remote_media(&origin, media_id).await
            }
            None => Err(Error::not_found("media not found")),
        }
    }

    /// Looks media up, waiting up to `wait` for a pending upload to arrive.
    pub async fn media_row(&self, media_id: &str, wait: Duration) -> Result<MediaRow> {
        if !valid_media_id(media_id) {
            return Err(Error::not_found("media not found"));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut asked_synapse = false;
        loop {
            let id = media_id.to_owned();
            let row = self.db.read(move |r| Ok::<_, Error>(r.media(&id)?)).await?;
            match row {
                // `moss media-repo`: an upload Synapse stored before moss took over.
                None if !asked_synapse && self.is_media_repo() => {
                    asked_synapse = true;
                    if !self.import_from_synapse(media_id).await? {
                        return Err(Error::not_found("media not found"));
                    }
                }
                None => return Err(Error::not_found("media not found")),
                // Quarantined media looks like no media at all.
                Some(r) if r.quarantined => return Err(Error::not_found("media not found")),
                Some(r) if r.content_key.is_some() => return Ok(r),
                Some(r) if r.expires_ts.is_some_and(|e| e <= now_ms() as i64) => {
                    return Err(Error::not_found("media not found"))
                }
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::new(ErrorKind::NotYetUploaded, 504, "media has not been uploaded yet"));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Opens media for download, optionally a byte range of it (`end` exclusive, clamped).
    pub async fn download_media(&self, row: &MediaRow, range: Option<(u64, Option<u64>)>) -> Result<Download> {
        let key = row.content_key.as_deref().ok_or_else(|| Error::not_found("media not found"))?;
        let size = row.size.unwrap_or(0) as u64;
        let range = match range {
            None => None,
            Some((start, end)) => {
                let end = end.map(|e| e.saturating_add(1)).unwrap_or(size).min(size);
                if start >= end {
                    return Err(Error::new(ErrorKind::Unknown, 416, "requested range is not satisfiable"));
                }
                Some(Range { start, end })
            }
        };
        let body = self.media.store.get(key, range).await.map_err(store_error)?;
        self.note_media_access(&row.media_id);
        Ok(Download { content_type: row.content_type.clone(), filename: row.filename.clone(), size, range, body })
    }

    /// With `media.s3.redirect_downloads`: a short-lived URL of the stored object, whose
    /// response carries `overrides` (S3's `response-content-type`, `…-disposition`,
    /// `…-cache-control`), for the client to be sent to instead of the bytes. `None` when
    /// downloads are not redirected.
    pub async fn download_redirect(
        &self,
        row: &MediaRow,
        overrides: &[(&'static str, String)],
    ) -> Result<Option<String>> {
        let Some(redirect) = &self.media.redirect else { return Ok(None) };
        let key = row.content_key.as_deref().ok_or_else(|| Error::not_found("media not found"))?;
        let url = self.media.store.presigned_get(key, redirect.expiry, overrides).await.map_err(store_error)?;
        if url.is_some() {
            self.note_media_access(&row.media_id);
        }
        Ok(url.map(|u| redirect.rebase(u)))
    }

    /// How long redirect URLs work, when downloads are redirected.
    pub fn download_redirect_expiry(&self) -> Option<Duration> {
        self.media.redirect.as_ref().map(|r| r.expiry)
    }

    /// Records that media was served, for `purge --unused-for`; at most hourly per item, in the
    /// background, so serving never waits on it.
    pub(crate) fn note_media_access(&self, media_id: &str) {
        {
            let mut seen = self.media.accessed.lock().unwrap_or_else(|p| p.into_inner());
            if seen.get(media_id).is_some_and(|t| t.elapsed().as_secs() < 3600) {
                return;
            }
            if seen.len() > 100_000 {
                seen.clear();
            }
            seen.insert(media_id.to_owned(), std::time::Instant::now());
        }
        let (db, id) = (self.db.clone(), media_id.to_owned());
        tokio::spawn(async move {
            let touch = move |w: &moss_storage::Writer<'_>| {
                let now = now_ms() as i64;
                // Remote media rows are named `origin/media_id`.
                match id.split_once('/') {
                    Some((origin, remote_id)) => w.touch_remote_media(origin, remote_id, now),
                    None => w.touch_media(&id, now),
                }
            };
            if let Err(e) = db.write(move |w| Ok::<_, Error>(touch(w)?)).await {
                tracing::debug!(error = %e, "could not record media access");
            }
        });
    }
}

pub(crate) async fn file_stream(path: PathBuf) -> Result<ByteStream> {
    moss_media::store::file_stream(&path).await.map_err(|e| Error::internal(format!("spool: {e}")))
}

impl Moss {
    /// A thumbnail of image media near `width`×`height`, made on first request and kept.
    pub async fn thumbnail(
        &self,
        row: &MediaRow,
        width: u32,
        height: u32,
        method: thumbnail::Method,
        animated: bool,
    ) -> Result<Download> {
        use thumbnail::Method;
        self.note_media_access(&row.media_id);
        let key = row.content_key.clone().ok_or_else(|| Error::not_found("media not found"))?;
        let cfg = &self.config.media.thumbnails;
        let parse = |m: &str| {
            if m == "crop" {
                Method::Crop
            } else {
                Method::Scale
            }
        };
        let mut sizes: Vec<(u32, u32, Method)> =
            cfg.sizes.iter().map(|s| (s.width, s.height, parse(&s.method))).collect();
        if sizes.iter().any(|s| s.2 == method) {
            sizes.retain(|s| s.2 == method);
        }
        sizes.sort_by_key(|s| s.0 as u64 * s.1 as u64);
        let (tw, th, tm) = if cfg.dynamic {
            (width.clamp(1, 1600), height.clamp(1, 1600), method)
        } else {
            sizes
                .iter()
                .find(|s| s.0 >= width && s.1 >= height)
                .or(sizes.last())
                .copied()
                .ok_or_else(|| Error::not_found("thumbnails are not configured"))?
        };

        let (k, m) = (key.clone(), tm.as_str());
        let found = self
            .db
            .read(move |r| {
                if let Some(t) = r.thumbnail(&k, tw as i64, th as i64, m, animated)? {
                    return Ok::<_, Error>(Some(t));
                }
                // Dynamic sizes: at most MAX_DYNAMIC_THUMBNAILS per content and method; past
                // that the nearest one made already is served (the smallest that covers the
                // request, else the largest), so no one can fill the store with sizes.
                let sizes = r.thumbnail_sizes(&k, m, animated)?;
                if sizes.len() < MAX_DYNAMIC_THUMBNAILS {
                    return Ok(None);
                }
                let covering =
                    sizes.iter().filter(|(w, h)| *w >= tw as i64 && *h >= th as i64).min_by_key(|(w, h)| w * h);
                let Some(&(w, h)) = covering.or_else(|| sizes.iter().max_by_key(|(w, h)| w * h)) else {
                    return Ok(None);
                };
                Ok(r.thumbnail(&k, w, h, m, animated)?)
            })
            .await?;
        let found = match found {
            Some(t) => t,
            None => self.make_thumbnail(row, &key, tw, th, tm, animated).await?,
        };
        let body = self.media.store.get(&found.thumb_key, None).await.map_err(store_error)?;
        Ok(Download {
            content_type: Some(found.content_type),
            filename: None,
            size: found.size as u64,
            range: None,
            body,
        })
    }

    async fn make_thumbnail(
        &self,
        row: &MediaRow,
        key: &str,
        width: u32,
        height: u32,
        method: thumbnail::Method,
        animated: bool,
    ) -> Result<moss_storage::ThumbnailRow> {
        let cfg = &self.config.media.thumbnails;
        let size = row.size.unwrap_or(0) as u64;
        if size > cfg.max_source_bytes {
            return Err(Error::new(ErrorKind::TooLarge, 400, "this image is too large to thumbnail"));
        }
        let budget = thumbnail::Budget { max_pixels: cfg.max_image_pixels, max_memory: cfg.max_decode_memory };
        // Memory is reserved before it is used: the source first (its size is known), then what
        // its header says decoding needs. When that is not free at once, everything is given back
        // and the whole amount waited for, so no job waits while holding memory.
        let semaphore = &self.media.decode_budget;
        let acquire = |bytes: u64| {
            futures_util::TryFutureExt::map_err(semaphore.clone().acquire_many_owned(mib(bytes)), |_| {
                Error::internal("thumbnail budget closed")
            })
        };
        let mut permit = acquire(size).await?;
        let mut source = self.read_thumbnail_source(key).await?;
        let cost = thumbnail::cost(&source).map_err(thumbnail_error);
        let needed = match &cost {
            Ok(c) => {
                let decode =
                    if animated { c.animated.filter(|b| *b <= budget.max_memory).unwrap_or(c.still) } else { c.still };
                if c.still > budget.max_memory || c.width as u64 * c.height as u64 > budget.max_pixels {
                    return Err(thumbnail_error(thumbnail::ThumbnailError::TooLarge));
                }
                decode.saturating_add(source.len() as u64)
            }
            Err(_) => 0, // the decoder will say what is wrong
        };
        let held = permit.num_permits() as u32;
        if mib(needed) > held {
            let more = mib(needed) - held;
            match semaphore.clone().try_acquire_many_owned(more) {
                Ok(p) => permit.merge(p),
                Err(_) => {
                    drop((permit, source));
                    permit = acquire(needed).await?;
                    source = self.read_thumbnail_source(key).await?;
                }
            }
        }
        let made = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if animated {
                if let Some(t) = thumbnail::make_animated(&source, width, height, method, budget)? {
                    return Ok(t);
                }
            }
            thumbnail::make(&source, width, height, method, budget)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(thumbnail_error)?;
        let thumb_key = {
            let mut mac = Hmac::<Sha256>::new_from_slice(&self.media.secret).expect("any key length works");
            mac.update(format!("{key}|{width}x{height}|{}|{animated}", method.as_str()).as_bytes());
            format!("t-{}", hex::encode(mac.finalize().into_bytes()))
        };
        let len = made.bytes.len() as u64;
        let inflight = self.begin_inflight(&thumb_key).await?;
        self.media.store.put(&thumb_key, len, moss_media::store::once(made.bytes)).await.map_err(store_error)?;
        let (k, tk, ct, m) = (key.to_owned(), thumb_key.clone(), made.content_type.to_owned(), method.as_str());
        self.db
            .write(move |w| {
                w.end_inflight(inflight)?;
                Ok::<_, Error>(w.store_thumbnail(&k, width as i64, height as i64, m, animated, &tk, &ct, len as i64)?)
            })
            .await?;
        Ok(moss_storage::ThumbnailRow { thumb_key, content_type: made.content_type.to_owned(), size: len as i64 })
    }
}

/// Most thumbnails of one content (per method and animation) made to sizes clients choose
/// (`thumbnails.dynamic`); further sizes are served the nearest existing one.
const MAX_DYNAMIC_THUMBNAILS: usize = 32;

/// Whole MiB (rounded up, at least one) for a byte count: the unit of the thumbnail budget.
fn mib(bytes: u64) -> u32 {
    bytes.div_ceil(1 << 20).clamp(1, u32::MAX as u64) as u32
}

fn thumbnail_error(e: thumbnail::ThumbnailError) -> Error {
    match e {
        thumbnail::ThumbnailError::Unsupported => {
            Error::new(ErrorKind::Unknown, 400, "this media cannot be thumbnailed")
        }
        thumbnail::ThumbnailError::TooLarge => {
            Error::new(ErrorKind::TooLarge, 400, "this image has too many pixels to thumbnail")
        }
        thumbnail::ThumbnailError::Broken(m) => {
            Error::new(ErrorKind::Unknown, 400, format!("the image could not be decoded: {m}"))
        }
    }
}

impl Moss {
    async fn read_thumbnail_source(&self, key: &str) -> Result<Vec<u8>> {
        let max = self.config.media.thumbnails.max_source_bytes as usize;
        moss_media::store::read_at_most(self.media.store.get(key, None).await.map_err(store_error)?, max)
            .await
            .map_err(store_error)
    }

    /// OpenGraph data for a URL a user linked, with its image stored as media. Cached.
    pub async fn preview_url(&self, url: &str) -> Result<serde_json::Value> {
        let fetcher = self
            .media
            .preview
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Unrecognized, 404, "URL previews are disabled on this server"))?;
        let cfg = &self.config.media.url_preview;
        let u = url.to_owned();
        let cached = self.db.read(move |r| Ok::<_, Error>(r.url_preview(&u)?)).await?;
        if let Some((ts, json)) = cached {
            if now_ms().saturating_sub(ts as u64) < cfg.cache_ttl_ms {
                return Ok(serde_json::from_str(&json)?);
            }
        }
        let page = fetcher.fetch(url, None).await?;
        let mut og = serde_json::Map::new();
        let image_url = if page.content_type.starts_with("image/") {
            Some((page.url.clone(), Some(page)))
        } else if page.content_type.starts_with("text/html") || page.content_type.starts_with("application/xhtml") {
            og = preview::parse_html(&String::from_utf8_lossy(&page.body));
            og.remove("og:image").and_then(|v| v.as_str().and_then(|s| page.url.join(s).ok())).map(|u| (u, None))
        } else {
            None
        };
        if let Some((image_url, already)) = image_url {
            let image = match already {
                Some(p) => Ok(p),
                None => fetcher.fetch(image_url.as_str(), Some(cfg.max_image_bytes as usize)).await,
            };
            match image {
                Ok(img) if img.content_type.starts_with("image/") && (img.body.len() as u64) < cfg.max_image_bytes => {
                    if let Err(e) = self.store_preview_image(&mut og, img).await {
                        tracing::debug!(url, error = %e, "preview image not stored");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(url, error = %e, "preview image not fetched"),
            }
        }
        let value = serde_json::Value::Object(og);
        let (u, text) = (url.to_owned(), serde_json::to_string(&value)?);
        self.db.write(move |w| Ok::<_, Error>(w.store_url_preview(&u, now_ms() as i64, &text)?)).await?;
        Ok(value)
    }

    async fn store_preview_image(
        &self,
        og: &mut serde_json::Map<String, serde_json::Value>,
        img: preview::Fetched,
    ) -> Result<()> {
        let dims = image::ImageReader::new(std::io::Cursor::new(&img.body))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok());
        let size = img.body.len();
        let owner = UserId::parse(format!("@moss-url-preview:{}", self.server_name))
            .map_err(|e| Error::internal(e.to_string()))?;
        let ctype = img.content_type.split(';').next().unwrap_or("image/png").trim().to_owned();
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(img.body)) });
        let id = self
            .upload_media(
                &owner,
                None,
                UploadInfo { content_type: Some(ctype.clone()), ..Default::default() },
                Box::pin(body),
            )
            .await?;
        og.insert("og:image".into(), serde_json::json!(format!("mxc://{}/{id}", self.server_name)));
        og.insert("og:image:type".into(), serde_json::json!(ctype));
        og.insert("matrix:image:size".into(), serde_json::json!(size));
        if let Some((w, h)) = dims {
            og.insert("og:image:width".into(), serde_json::json!(w));
            og.insert("og:image:height".into(), serde_json::json!(h));
        }
        Ok(())
    }
}
