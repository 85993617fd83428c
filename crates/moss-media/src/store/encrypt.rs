//! Client-side encryption in front of any store: the provider only ever sees ciphertext.
//!
//! Every object gets its own random data key. The data is split into chunks (64 KiB by default)
//! sealed with AES-256-GCM where the CPU has AES instructions (format 2) or XChaCha20-Poly1305
//! elsewhere (format 1; both are always readable), so a ranged read decrypts only the chunks it
//! touches. The data key, wrapped by the master key, lives in a small companion object
//! `<key>.k`; rotating the master key rewrites only those. The format is documented in
//! `docs/media.md`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::{Bytes, BytesMut};
use chacha20poly1305::{
    aead::{AeadInPlace, KeyInit},
    Key, XChaCha20Poly1305, XNonce,
};
use futures_util::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{read_all, BlobStore, ByteStream, ObjectInfo, Range};
use crate::{MediaError, Result};

pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
const TAG: u64 = 16;
/// Format 1: chunks sealed with XChaCha20-Poly1305.
const KEY_MAGIC: &[u8; 8] = b"MOSSKEY1";
/// Format 2: chunks sealed with AES-256-GCM (the data key is wrapped the same way).
const KEY_MAGIC_AES: &[u8; 8] = b"MOSSKEY2";
/// magic, master key id, chunk size, plaintext length, nonce prefix
const KEY_HEADER_LEN: usize = 8 + 8 + 4 + 8 + 16;
const KEY_OBJECT_LEN: usize = KEY_HEADER_LEN + 24 + 32 + 16;
const KEY_SUFFIX: &str = ".k";

/// The key that wraps every object's data key.
#[derive(Clone)]
pub struct MasterKey {
    id: [u8; 8],
    key: Key,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        MasterKey { id, key: *Key::from_slice(&bytes) }
    }

    pub fn generate() -> [u8; 32] {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        k
    }

    /// A short public fingerprint, to tell keys apart in logs and tools.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// How an object's chunks are sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkCipher {
    XChaCha20Poly1305,
    Aes256Gcm,
}

impl ChunkCipher {
    /// AES-256-GCM where the CPU accelerates it (several GB/s), XChaCha20-Poly1305 elsewhere
    /// (software AES would be slow and not constant-time).
    pub fn best() -> ChunkCipher {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq") {
            return ChunkCipher::Aes256Gcm;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull") {
            return ChunkCipher::Aes256Gcm;
        }
        ChunkCipher::XChaCha20Poly1305
    }

    fn magic(self) -> &'static [u8; 8] {
        match self {
            ChunkCipher::XChaCha20Poly1305 => KEY_MAGIC,
            ChunkCipher::Aes256Gcm => KEY_MAGIC_AES,
        }
    }
}

/// A data key ready to seal or open chunks.
#[derive(Clone)]
enum DataCipher {
    XChaCha(XChaCha20Poly1305),
    Aes(Arc<aws_lc_rs::aead::LessSafeKey>),
}

impl DataCipher {
    fn new(kind: ChunkCipher, dek: &[u8]) -> Result<DataCipher> {
        Ok(match kind {
            ChunkCipher::XChaCha20Poly1305 => DataCipher::XChaCha(XChaCha20Poly1305::new(Key::from_slice(dek))),
            ChunkCipher::Aes256Gcm => {
                let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, dek)
                    .map_err(|_| MediaError::Other("AES-256-GCM key setup failed".into()))?;
                DataCipher::Aes(Arc::new(aws_lc_rs::aead::LessSafeKey::new(key)))
            }
        })
    }
}

/// The parsed companion object of one encrypted object.
#[derive(Clone)]
struct ObjectKey {
    chunk_size: u64,
    len: u64,
    nonce_prefix: [u8; 16],
    kind: ChunkCipher,
    cipher: DataCipher,
}

impl ObjectKey {
    fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk_size).max(1)
    }
    fn ciphertext_len(&self) -> u64 {
        self.len + self.chunks() * TAG
    }
    /// Chunk `i`'s nonce is the prefix then `i`: all 16 prefix bytes for XChaCha20's 24-byte
    /// nonce, the first 4 for AES-GCM's 12-byte one. The data key is the object's own, so a
    /// nonce never repeats under a key.
    fn seal(&self, i: u64, aad: &[u8], buf: &mut [u8]) -> std::result::Result<[u8; 16], ()> {
        match &self.cipher {
            DataCipher::XChaCha(c) => {
                let mut n = [0u8; 24];
                n[..16].copy_from_slice(&self.nonce_prefix);
                n[16..].copy_from_slice(&i.to_be_bytes());
                c.encrypt_in_place_detached(XNonce::from_slice(&n), aad, buf).map(Into::into).map_err(|_| ())
            }
            DataCipher::Aes(c) => {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(self.aes_nonce(i));
                let tag = c.seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::from(aad), buf).map_err(|_| ())?;
                tag.as_ref().try_into().map_err(|_| ())
            }
        }
    }

    fn open(&self, i: u64, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> std::result::Result<(), ()> {
        match &self.cipher {
            DataCipher::XChaCha(c) => {
                let mut n = [0u8; 24];
                n[..16].copy_from_slice(&self.nonce_prefix);
                n[16..].copy_from_slice(&i.to_be_bytes());
                c.decrypt_in_place_detached(XNonce::from_slice(&n), aad, buf, tag.into()).map_err(|_| ())
            }
            DataCipher::Aes(c) => {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(self.aes_nonce(i));
                c.open_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::from(aad), tag, buf)
                    .map(|_| ())
                    .map_err(|_| ())
            }
        }
    }

    fn aes_nonce(&self, i: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.nonce_prefix[..4]);
        n[4..].copy_from_slice(&i.to_be_bytes());
        n
    }
}

fn chunk_aad(object: &str, i: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(object.len() + 10);
    aad.extend_from_slice(object.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&i.to_be_bytes());
    aad.push(last as u8);
    aad
}

fn header_bytes(kind: ChunkCipher, master_id: &[u8; 8], chunk_size: u64, len: u64, nonce_prefix: &[u8; 16]) -> Vec<u8> {
    let mut h = Vec::with_capacity(KEY_HEADER_LEN);
    h.extend_from_slice(kind.magic());
    h.extend_from_slice(master_id);
    h.extend_from_slice(&(chunk_size as u32).to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(nonce_prefix);
    h
}

fn wrap_aad(header: &[u8], object: &str) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(object.as_bytes());
    aad
}

/// Seals a data key for `object` under `master`; the header fields are authenticated with it.
#[allow(clippy::too_many_arguments)]
fn seal_key(
    master: &MasterKey,
    object: &str,
    kind: ChunkCipher,
    chunk_size: u64,
    len: u64,
    nonce_prefix: &[u8; 16],
    dek: &[u8; 32],
) -> Result<Vec<u8>> {
    // The magic (and with it the chunk cipher) is in the authenticated header: no downgrade.
    let header = header_bytes(kind, &master.id, chunk_size, len, nonce_prefix);
    let mut wrap_nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut wrap_nonce);
    let mut sealed = dek.to_vec();
    let tag = XChaCha20Poly1305::new(&master.key)
        .encrypt_in_place_detached(XNonce::from_slice(&wrap_nonce), &wrap_aad(&header, object), &mut sealed)
        .map_err(|_| MediaError::Other("sealing data key failed".into()))?;
    let mut out = header;
    out.extend_from_slice(&wrap_nonce);
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a key object with whichever of `masters` it was sealed under.
fn open_key(masters: &[MasterKey], object: &str, bytes: &[u8]) -> Result<(ObjectKey, [u8; 8])> {
    let kind = match bytes.get(..8) {
        _ if bytes.len() != KEY_OBJECT_LEN => None,
        Some(m) if m == KEY_MAGIC => Some(ChunkCipher::XChaCha20Poly1305),
        Some(m) if m == KEY_MAGIC_AES => Some(ChunkCipher::Aes256Gcm),
        _ => None,
    };
    let Some(kind) = kind else {
        return Err(MediaError::Corrupt(format!("{object}{KEY_SUFFIX} is not a moss key object")));
    };
    let mut master_id = [0u8; 8];
    master_id.copy_from_slice(&bytes[8..16]);
    let master = masters.iter().find(|m| m.id == master_id).ok_or_else(|| {
        MediaError::Corrupt(format!("{object} was encrypted under unknown master key {}", hex::encode(master_id)))
    })?;
    let chunk_size = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as u64;
    let len = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
    let mut nonce_prefix = [0u8; 16];
    nonce_prefix.copy_from_slice(&bytes[28..44]);
    if chunk_size == 0 {
        return Err(MediaError::Corrupt(format!("{object}: zero chunk size")));
    }
    let header = &bytes[..KEY_HEADER_LEN];
    let wrap_nonce = XNonce::from_slice(&bytes[KEY_HEADER_LEN..KEY_HEADER_LEN + 24]);
    let mut dek = bytes[KEY_HEADER_LEN + 24..KEY_HEADER_LEN + 56].to_vec();
    let tag = &bytes[KEY_HEADER_LEN + 56..];
    XChaCha20Poly1305::new(&master.key)
        .decrypt_in_place_detached(wrap_nonce, &wrap_aad(header, object), &mut dek, tag.into())
        .map_err(|_| MediaError::Corrupt(format!("{object}: data key does not authenticate")))?;
    let cipher = DataCipher::new(kind, &dek)?;
    Ok((ObjectKey { chunk_size, len, nonce_prefix, kind, cipher }, master_id))
}

pub struct EncryptedStore {
    inner: Arc<dyn BlobStore>,
    master: MasterKey,
    /// Older master keys still accepted for reading (during and after a rotation).
    previous: Vec<MasterKey>,
    chunk_size: u32,
    /// How new objects are sealed.
    cipher: ChunkCipher,
    keys: Mutex<HashMap<String, ObjectKey>>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn BlobStore>, master: MasterKey) -> EncryptedStore {
        EncryptedStore {
            inner,
            master,
            previous: Vec::new(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            cipher: ChunkCipher::best(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Seals new objects with `cipher` (objects of either format are always readable).
    pub fn with_cipher(mut self, cipher: ChunkCipher) -> Self {
        self.cipher = cipher;
        self
    }

    pub fn with_chunk_size(mut self, chunk_size: u32) -> Self {
        assert!(chunk_size >= 16, "chunks must be at least 16 bytes");
        self.chunk_size = chunk_size;
        self
    }

    pub fn with_previous_keys(mut self, previous: Vec<MasterKey>) -> Self {
        self.previous = previous;
        self
    }

    fn masters(&self) -> Vec<MasterKey> {
        let mut all = vec![self.master.clone()];
        all.extend(self.previous.iter().cloned());
        all
    }

    async fn object_key(&self, key: &str) -> Result<ObjectKey> {
        if let Some(k) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(k.clone());
        }
        let bytes = read_all(self.inner.get(&format!("{key}{KEY_SUFFIX}"), None).await?).await?;
        let (k, _) = open_key(&self.masters(), key, &bytes)?;
        self.remember(key, k.clone());
        Ok(k)
    }

    fn remember(&self, key: &str, k: ObjectKey) {
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key.to_owned(), k);
    }

    /// Re-seals every data key under the current master key (after configuring the old one as
    /// a previous key). Object data is not touched. Returns how many key objects changed.
    pub async fn rewrap_all(&self) -> Result<u64> {
        self.rewrap_all_with_progress(|_| {}).await
    }

    /// [`EncryptedStore::rewrap_all`], reporting each key object examined.
    pub async fn rewrap_all_with_progress(&self, progress: impl Fn(u64) + Send + Sync) -> Result<u64> {
        let mut changed = 0;
        let mut seen = 0;
        let keys: Vec<String> = self.inner.list().filter_map(|k| async move { k.ok() }).collect().await;
        for name in keys {
            let Some(object) = name.strip_suffix(KEY_SUFFIX) else {
                continue;
            };
            seen += 1;
            progress(seen);
            let bytes = read_all(self.inner.get(&name, None).await?).await?;
            let (k, master_id) = open_key(&self.masters(), object, &bytes)?;
            if master_id == self.master.id {
                continue;
            }
            let dek = recover_dek(&self.masters(), object, &bytes)?;
            let sealed = seal_key(&self.master, object, k.kind, k.chunk_size, k.len, &k.nonce_prefix, &dek)?;
            self.inner.put(&name, sealed.len() as u64, super::once(sealed)).await?;
            changed += 1;
        }
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(changed)
    }
}

fn recover_dek(masters: &[MasterKey], object: &str, bytes: &[u8]) -> Result<[u8; 32]> {
    let master = masters
        .iter()
        .find(|m| m.id[..] == bytes[8..16])
        .ok_or_else(|| MediaError::Corrupt("unknown master key".into()))?;
    let header = &bytes[..KEY_HEADER_LEN];
    let mut dek = bytes[KEY_HEADER_LEN + 24..KEY_HEADER_LEN + 56].to_vec();
    XChaCha20Poly1305::new(&master.key)
        .decrypt_in_place_detached(
            XNonce::from_slice(&bytes[KEY_HEADER_LEN..KEY_HEADER_LEN + 24]),
            &wrap_aad(header, object),
            &mut dek,
            bytes[KEY_HEADER_LEN + 56..].into(),
        )
        .map_err(|_| MediaError::Corrupt(format!("{object}: data key does not authenticate")))?;
    Ok(dek.try_into().expect("32 bytes"))
}

/// Turns plaintext into sealed chunks as it streams through.
fn encrypt_stream(input: ByteStream, key: ObjectKey, object: String) -> ByteStream {
    struct St {
        input: ByteStream,
        buf: BytesMut,
        index: u64,
        done: bool,
    }
    let total = key.chunks();
    let cs = key.chunk_size as usize;
    let st = St { input, buf: BytesMut::new(), index: 0, done: false };
    Box::pin(futures_util::stream::unfold((st, key, object), move |(mut st, key, object)| async move {
        if st.index >= total {
            return None;
        }
        let last = st.index + 1 == total;
        // Fill one chunk (or, for the last, everything that remains).
        while !st.done && (st.buf.len() < cs || last) {
            match st.input.next().await {
                Some(Ok(b)) => st.buf.extend_from_slice(&b),
                Some(Err(e)) => return Some((Err(e), (St { done: true, index: total, ..st }, key, object))),
                None => st.done = true,
            }
        }
        let take = if last { (key.len - st.index * key.chunk_size) as usize } else { cs };
        if st.buf.len() < take || (last && st.buf.len() != take) {
            let e =
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "stream length differs from the declared size");
            return Some((Err(e), (St { index: total, ..st }, key, object)));
        }
        let mut chunk = st.buf.split_to(take).to_vec();
        let aad = chunk_aad(&object, st.index, last);
        let tag = match key.seal(st.index, &aad, &mut chunk) {
            Ok(t) => t,
            Err(_) => {
                return Some((
                    Err(std::io::Error::other("encryption failed")),
                    (St { index: total, ..st }, key, object),
                ))
            }
        };
        chunk.extend_from_slice(&tag);
        st.index += 1;
        Some((Ok(Bytes::from(chunk)), (st, key, object)))
    }))
}

/// Opens sealed chunks `first..` from `input`, yielding the plaintext of `range`.
fn decrypt_stream(input: ByteStream, key: ObjectKey, object: String, first: u64, range: Range) -> ByteStream {
    let cs = key.chunk_size;
    let total = key.chunks();
    let last_chunk = if range.is_empty() { first } else { (range.end - 1) / cs };
    struct St {
        input: ByteStream,
        buf: BytesMut,
        index: u64,
    }
    let st = St { input, buf: BytesMut::new(), index: first };
    Box::pin(futures_util::stream::unfold((st, key, object), move |(mut st, key, object)| async move {
        if range.is_empty() || st.index > last_chunk {
            return None;
        }
        let is_last = st.index + 1 == total;
        let plain_len = if is_last { key.len - st.index * cs } else { cs };
        let want = (plain_len + TAG) as usize;
        st.buf.reserve(want.saturating_sub(st.buf.len()));
        while st.buf.len() < want {
            match st.input.next().await {
                Some(Ok(b)) => st.buf.extend_from_slice(&b),
                Some(Err(e)) => return Some((Err(e), (St { index: u64::MAX, ..st }, key, object))),
                None => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{object}: ciphertext is truncated"),
                    );
                    return Some((Err(e), (St { index: u64::MAX, ..st }, key, object)));
                }
            }
        }
        // Decrypted where it lies: the chunk leaves as a view of the same buffer, no copy.
        let mut chunk = st.buf.split_to(want);
        let tag = chunk.split_off(plain_len as usize);
        let aad = chunk_aad(&object, st.index, is_last);
        if key.open(st.index, &aad, &mut chunk[..], &tag[..]).is_err() {
            let e = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{object}: chunk {} does not authenticate", st.index),
            );
            return Some((Err(e), (St { index: u64::MAX, ..st }, key, object)));
        }
        // Trim to the requested range.
        let chunk_start = st.index * cs;
        let from = range.start.saturating_sub(chunk_start) as usize;
        let to = (range.end - chunk_start).min(plain_len) as usize;
        st.index += 1;
        Some((Ok(chunk.freeze().slice(from..to)), (st, key, object)))
    }))
}

impl BlobStore for EncryptedStore {
    fn streams_writes(&self) -> bool {
        self.inner.streams_writes()
    }

    fn describe(&self) -> String {
        format!("encrypt(key {})+{}", self.master.id_hex(), self.inner.describe())
    }

    fn put<'a>(&'a self, key: &'a str, size: u64, data: ByteStream) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut dek = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut dek);
            let mut nonce_prefix = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut nonce_prefix);
            let chunk_size = self.chunk_size as u64;
            let kind = self.cipher;
            let sealed = seal_key(&self.master, key, kind, chunk_size, size, &nonce_prefix, &dek)?;
            let object_key =
                ObjectKey { chunk_size, len: size, nonce_prefix, kind, cipher: DataCipher::new(kind, &dek)? };
            // The key object and the data at the same time (one round trip, not two): the put
            // succeeds only once both are stored, and whoever writes objects records them only
            // after that, so data whose key failed to arrive is an unreferenced orphan.
            self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            let key_name = format!("{key}{KEY_SUFFIX}");
            let csize = object_key.ciphertext_len();
            tokio::try_join!(
                self.inner.put(&key_name, sealed.len() as u64, super::once(sealed)),
                self.inner.put(key, csize, encrypt_stream(data, object_key.clone(), key.to_owned())),
            )?;
            // Whoever uploads is often followed by readers: they need not fetch the key again.
            self.remember(key, object_key);
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            let k = self.object_key(key).await?;
            let range = range.unwrap_or(Range { start: 0, end: k.len });
            if range.start > range.end || range.end > k.len {
                return Err(MediaError::BadRange);
            }
            let cs = k.chunk_size;
            let first = if range.is_empty() { 0 } else { range.start / cs };
            let last = if range.is_empty() { 0 } else { (range.end - 1) / cs };
            let c_start = first * (cs + TAG);
            let c_end = ((last + 1) * (cs + TAG)).min(k.ciphertext_len());
            let inner = if range.is_empty() {
                super::once(Bytes::new())
            } else {
                self.inner.get(key, Some(Range { start: c_start, end: c_end })).await?
            };
            Ok(decrypt_stream(inner, k, key.to_owned(), first, range))
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            if self.inner.head(key).await?.is_none() {
                return Ok(None);
            }
            match self.object_key(key).await {
                Ok(k) => Ok(Some(ObjectInfo { size: k.len })),
                Err(MediaError::NotFound) => Ok(None),
                Err(e) => Err(e),
            }
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            // Data first: a key without data is harmless, data without a key is lost.
            self.inner.delete(key).await?;
            self.inner.delete(&format!("{key}{KEY_SUFFIX}")).await?;
            self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            Ok(())
        }
        .boxed()
    }

    fn list(&self) -> BoxStream<'_, Result<String>> {
        Box::pin(self.inner.list().filter(|k| {
            let keep = !matches!(k, Ok(name) if name.ends_with(KEY_SUFFIX));
            async move { keep }
        }))
    }

    fn check(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{fs::FsStore, once, read_all};

    fn setup(chunk: u32) -> (Arc<FsStore>, EncryptedStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("moss-enc-{}", rand::random::<u64>()));
        let fs = Arc::new(FsStore::open(&dir).unwrap());
        let enc = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32])).with_chunk_size(chunk);
        (fs, enc, dir)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[tokio::test]
    async fn round_trips_every_size_and_range_at_chunk_boundaries() {
        let (_fs, enc, dir) = setup(64);
        for n in [0usize, 1, 63, 64, 65, 128, 1000] {
            let d = data(n);
            let key = format!("c-{n}");
            enc.put(&key, n as u64, once(d.clone())).await.unwrap();
            assert_eq!(read_all(enc.get(&key, None).await.unwrap()).await.unwrap(), d, "size {n}");
            assert_eq!(enc.head(&key).await.unwrap(), Some(ObjectInfo { size: n as u64 }));
            for (s, e) in [(0, 0), (0, 1), (63, 65), (64, 128), (1, n), (n / 2, n)] {
                if s > e || e > n {
                    continue;
                }
                let got = read_all(enc.get(&key, Some(Range { start: s as u64, end: e as u64 })).await.unwrap())
                    .await
                    .unwrap();
                assert_eq!(got, d[s..e], "size {n} range {s}..{e}");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn both_chunk_ciphers_round_trip_and_stay_readable() {
        let (fs, enc, dir) = setup(64);
        let d = data(1000);
        for (name, cipher, magic) in
            [("c-chacha", ChunkCipher::XChaCha20Poly1305, KEY_MAGIC), ("c-aes", ChunkCipher::Aes256Gcm, KEY_MAGIC_AES)]
        {
            let writer = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]))
                .with_chunk_size(64)
                .with_cipher(cipher);
            writer.put(name, d.len() as u64, once(d.clone())).await.unwrap();
            let k = read_all(fs.get(&format!("{name}.k"), None).await.unwrap()).await.unwrap();
            assert_eq!(&k[..8], magic);
            // Any store with the master key reads either format, whole and ranged.
            assert_eq!(read_all(enc.get(name, None).await.unwrap()).await.unwrap(), d);
            let got = read_all(enc.get(name, Some(Range { start: 63, end: 641 })).await.unwrap()).await.unwrap();
            assert_eq!(got, d[63..641]);
        }
        // The magic is authenticated with the data key: relabelling an AES object as format 1
        // (a downgrade) makes its key object fail to open.
        let mut k = read_all(fs.get("c-aes.k", None).await.unwrap()).await.unwrap();
        k[..8].copy_from_slice(KEY_MAGIC);
        fs.put("c-aes.k", k.len() as u64, once(k)).await.unwrap();
        let fresh = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32])).with_chunk_size(64);
        assert!(matches!(fresh.get("c-aes", None).await, Err(MediaError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_inner_store_sees_no_plaintext_and_tampering_is_caught() {
        let (fs, enc, dir) = setup(DEFAULT_CHUNK_SIZE);
        let marker = b"PLAINTEXT-MARKER-0123456789".repeat(10_000);
        enc.put("c-m", marker.len() as u64, once(marker.clone())).await.unwrap();
        let raw = read_all(fs.get("c-m", None).await.unwrap()).await.unwrap();
        assert!(!raw.windows(16).any(|w| w == &b"PLAINTEXT-MARKER"[..]));
        // Flip one byte of the ciphertext: the read must fail, not return wrong data.
        let mut bad = raw.clone();
        bad[100] ^= 1;
        fs.put("c-m", bad.len() as u64, once(bad)).await.unwrap();
        assert!(read_all(enc.get("c-m", None).await.unwrap()).await.is_err());
        // Data moved under another name does not decrypt either.
        fs.put("c-other", raw.len() as u64, once(raw)).await.unwrap();
        let k = read_all(fs.get("c-m.k", None).await.unwrap()).await.unwrap();
        fs.put("c-other.k", k.len() as u64, once(k)).await.unwrap();
        assert!(enc.get("c-other", None).await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn rotation_rewraps_keys_without_touching_data() {
        let (fs, enc, dir) = setup(64);
        let d = data(500);
        enc.put("c-r", 500, once(d.clone())).await.unwrap();
        let before = read_all(fs.get("c-r", None).await.unwrap()).await.unwrap();
        let old = MasterKey::from_bytes([7u8; 32]);
        let new = MasterKey::from_bytes([9u8; 32]);
        let rotated = EncryptedStore::new(fs.clone(), new.clone()).with_chunk_size(64).with_previous_keys(vec![old]);
        assert_eq!(rotated.rewrap_all().await.unwrap(), 1);
        assert_eq!(read_all(fs.get("c-r", None).await.unwrap()).await.unwrap(), before, "data untouched");
        let only_new = EncryptedStore::new(fs.clone(), new);
        assert_eq!(read_all(only_new.get("c-r", None).await.unwrap()).await.unwrap(), d);
        let only_old = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
        assert!(only_old.get("c-r", None).await.is_err(), "the old key alone no longer opens it");
        let keys: Vec<String> = only_new.list().map(|k| k.unwrap()).collect().await;
        assert_eq!(keys, vec!["c-r".to_owned()]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_short_stream_is_refused() {
        let (_fs, enc, dir) = setup(64);
        assert!(enc.put("c-s", 100, once(data(50))).await.is_err());
        assert!(enc.put("c-l", 10, once(data(50))).await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
