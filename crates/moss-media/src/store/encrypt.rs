//! Client-side encryption in front of any store: the provider only ever sees ciphertext.
//!
//! Every object gets its own random data key. The data is split into chunks (64 KiB by default)
//! sealed with AES-256-GCM where the CPU has AES instructions (format 2) or XChaCha20-Poly1305
//! elsewhere (format 1; both are always readable), so a ranged read decrypts only the chunks it
//! touches. The data key, wrapped by the master key, travels in a 116-byte key header: at the
//! start of the object itself for objects up to `inline_max` (1 MiB; format 3: one object, so
//! one PUT to write and one GET to read), in a companion object `<key>.k` for larger ones, so
//! that rotating the master key rewrites only small objects. Readers recognise an inline header
//! by its magic. The format is documented in `docs/media.md`.

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

use super::{read_at_most, BlobStore, ByteStream, ObjectInfo, Range};
use crate::{MediaError, Result};

pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
const TAG: u64 = 16;
/// Format 1: chunks sealed with XChaCha20-Poly1305.
const KEY_MAGIC: &[u8; 8] = b"MOSSKEY1";
/// Format 2: chunks sealed with AES-256-GCM (the data key is wrapped the same way).
const KEY_MAGIC_AES: &[u8; 8] = b"MOSSKEY2";
/// Format 3: either format with its key header at the start of the data object.
const INLINE_MAGIC: &[u8; 8] = b"MOSSINL1";
const INLINE_MAGIC_AES: &[u8; 8] = b"MOSSINL2";
/// Objects up to this size carry their key inline.
pub const DEFAULT_INLINE_MAX: u64 = 1024 * 1024;
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

    fn magic(self, inline: bool) -> &'static [u8; 8] {
        match (self, inline) {
            (ChunkCipher::XChaCha20Poly1305, false) => KEY_MAGIC,
            (ChunkCipher::Aes256Gcm, false) => KEY_MAGIC_AES,
            (ChunkCipher::XChaCha20Poly1305, true) => INLINE_MAGIC,
            (ChunkCipher::Aes256Gcm, true) => INLINE_MAGIC_AES,
        }
    }

    /// The cipher a key header's magic names, and whether the header is inline.
    fn from_magic(magic: &[u8]) -> Option<(ChunkCipher, bool)> {
        [ChunkCipher::XChaCha20Poly1305, ChunkCipher::Aes256Gcm]
            .into_iter()
            .flat_map(|c| [(c, false), (c, true)])
            .find(|(c, inline)| c.magic(*inline) == magic)
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

/// The parsed key header of one encrypted object.
#[derive(Clone)]
struct ObjectKey {
    /// Where the ciphertext starts in the data object: after an inline key header, or at 0.
    offset: u64,
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

/// Whether the data object's first bytes are an inline key header.
fn is_inline(prefix: &[u8]) -> bool {
    prefix.get(..8).and_then(ChunkCipher::from_magic).is_some_and(|(_, inline)| inline)
}

fn header_bytes(
    kind: ChunkCipher,
    inline: bool,
    master_id: &[u8; 8],
    chunk_size: u64,
    len: u64,
    nonce_prefix: &[u8; 16],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(KEY_HEADER_LEN);
    h.extend_from_slice(kind.magic(inline));
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
fn seal_key(master: &MasterKey, object: &str, k: &ObjectKey, dek: &[u8; 32]) -> Result<Vec<u8>> {
    // The magic (and with it the chunk cipher and where the header lives) is in the
    // authenticated header: no downgrade, and an inline header cannot pass for a `.k` object.
    let header = header_bytes(k.kind, k.offset != 0, &master.id, k.chunk_size, k.len, &k.nonce_prefix);
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

/// Opens a key header with whichever of `masters` it was sealed under: a `.k` object, or with
/// `inline` the first bytes of a data object.
fn open_key(masters: &[MasterKey], object: &str, bytes: &[u8], inline: bool) -> Result<(ObjectKey, [u8; 8])> {
    let kind = match bytes.get(..8).and_then(ChunkCipher::from_magic) {
        _ if bytes.len() != KEY_OBJECT_LEN => None,
        Some((kind, i)) if i == inline => Some(kind),
        _ => None,
    };
    let Some(kind) = kind else {
        let what = if inline {
            format!("{object} has no inline key header")
        } else {
            format!("{object}{KEY_SUFFIX} is not a moss key object")
        };
        return Err(MediaError::Corrupt(what));
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
    let offset = if inline { KEY_OBJECT_LEN as u64 } else { 0 };
    Ok((ObjectKey { offset, chunk_size, len, nonce_prefix, kind, cipher }, master_id))
}

pub struct EncryptedStore {
    inner: Arc<dyn BlobStore>,
    master: MasterKey,
    /// Older master keys still accepted for reading (during and after a rotation).
    previous: Vec<MasterKey>,
    chunk_size: u32,
    /// How new objects are sealed.
    cipher: ChunkCipher,
    /// New objects up to this size carry their key header inline (format 3).
    inline_max: Option<u64>,
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
            inline_max: Some(DEFAULT_INLINE_MAX),
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

    /// New objects up to `max` bytes keep their key inline (none with `None`), larger ones in
    /// a `.k` object (objects of either kind are always readable).
    pub fn with_inline_max(mut self, max: Option<u64>) -> Self {
        self.inline_max = max;
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

    fn known_key(&self, key: &str) -> Option<ObjectKey> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// The key in the object's `.k` companion.
    async fn companion_key(&self, key: &str) -> Result<ObjectKey> {
        let bytes = read_at_most(self.inner.get(&format!("{key}{KEY_SUFFIX}"), None).await?, KEY_OBJECT_LEN).await?;
        let (k, _) = open_key(&self.masters(), key, &bytes, false)?;
        self.remember(key, k.clone());
        Ok(k)
    }

    /// The raw key header at the start of the data object, if it has one inline.
    async fn inline_header(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let first = Range { start: 0, end: KEY_OBJECT_LEN as u64 };
        match self.inner.get(key, Some(first)).await {
            Ok(s) => {
                let bytes = read_at_most(s, KEY_OBJECT_LEN).await?;
                Ok(is_inline(&bytes).then_some(bytes))
            }
            // Shorter than a key header: a small object with a companion.
            Err(MediaError::BadRange) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Any object's key: the data object's own header first (an object rewritten inline may
    /// have a stale companion beside it), else the companion.
    async fn object_key(&self, key: &str) -> Result<ObjectKey> {
        if let Some(k) = self.known_key(key) {
            return Ok(k);
        }
        if let Some(header) = self.inline_header(key).await? {
            let (k, _) = open_key(&self.masters(), key, &header, true)?;
            self.remember(key, k.clone());
            return Ok(k);
        }
        self.companion_key(key).await
    }

    fn remember(&self, key: &str, k: ObjectKey) {
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key.to_owned(), k);
    }

    /// Reads `range` of an object whose key is known: only the chunks it touches.
    async fn read_planned(&self, key: &str, k: ObjectKey, range: Option<Range>) -> Result<ByteStream> {
        let range = range.unwrap_or(Range { start: 0, end: k.len });
        if range.start > range.end || range.end > k.len {
            return Err(MediaError::BadRange);
        }
        if range.is_empty() {
            return Ok(decrypt_stream(super::once(Bytes::new()), k, key.to_owned(), 0, range));
        }
        let cs = k.chunk_size;
        let (first, last) = (range.start / cs, (range.end - 1) / cs);
        let c_start = k.offset + first * (cs + TAG);
        let c_end = k.offset + ((last + 1) * (cs + TAG)).min(k.ciphertext_len());
        let inner = self.inner.get(key, Some(Range { start: c_start, end: c_end })).await?;
        Ok(decrypt_stream(inner, k, key.to_owned(), first, range))
    }

    /// Reads a whole object whose key is not known yet in one GET when the key is inline: the
    /// header is read off the front of the data; without one, the companion is fetched while
    /// the data waits.
    async fn read_whole(&self, key: &str) -> Result<ByteStream> {
        let mut body = self.inner.get(key, None).await?;
        let mut front = BytesMut::new();
        while front.len() < KEY_OBJECT_LEN {
            match body.next().await {
                Some(chunk) => front.extend_from_slice(&chunk?),
                None => break,
            }
        }
        let (k, rest) = if front.len() >= KEY_OBJECT_LEN && is_inline(&front) {
            let header = front.split_to(KEY_OBJECT_LEN);
            let (k, _) = open_key(&self.masters(), key, &header, true)?;
            self.remember(key, k.clone());
            (k, front.freeze())
        } else {
            (self.companion_key(key).await?, front.freeze())
        };
        let whole = Range { start: 0, end: k.len };
        let data = Box::pin(futures_util::stream::once(async move { Ok(rest) }).chain(body));
        Ok(decrypt_stream(data, k, key.to_owned(), 0, whole))
    }

    /// Re-seals every data key under the current master key (after configuring the old one as
    /// a previous key): `.k` objects are rewritten, and objects with their key inline are
    /// rewritten whole with a new header (their ciphertext unchanged). Returns how many
    /// objects changed.
    pub async fn rewrap_all(&self) -> Result<u64> {
        self.rewrap_all_with_progress(|_| {}).await
    }

    /// [`EncryptedStore::rewrap_all`], reporting each key examined.
    pub async fn rewrap_all_with_progress(&self, progress: impl Fn(u64) + Send + Sync) -> Result<u64> {
        let mut changed = 0;
        let mut seen = 0;
        let keys: Vec<String> = self.inner.list().filter_map(|k| async move { k.ok() }).collect().await;
        for name in keys {
            let header = match name.strip_suffix(KEY_SUFFIX) {
                Some(_) => read_at_most(self.inner.get(&name, None).await?, KEY_OBJECT_LEN).await?,
                None => match self.inline_header(&name).await {
                    Ok(Some(h)) => h,
                    Ok(None) | Err(MediaError::NotFound) => continue,
                    Err(e) => return Err(e),
                },
            };
            seen += 1;
            progress(seen);
            let inline = !name.ends_with(KEY_SUFFIX);
            let object = name.strip_suffix(KEY_SUFFIX).unwrap_or(&name);
            let (k, master_id) = open_key(&self.masters(), object, &header, inline)?;
            if master_id == self.master.id {
                continue;
            }
            let dek = recover_dek(&self.masters(), object, &header)?;
            let sealed = seal_key(&self.master, object, &k, &dek)?;
            if inline {
                // The whole object again, its header replaced. Read just before the write, so
                // only a rewrite of this very object in between would be undone.
                let whole = self.inner.get(&name, None).await?;
                let mut data = read_at_most(whole, KEY_OBJECT_LEN + k.ciphertext_len() as usize).await?;
                if data.len() < KEY_OBJECT_LEN || data[..KEY_OBJECT_LEN] != header[..] {
                    continue; // rewritten meanwhile, by someone sealing with a current key
                }
                data[..KEY_OBJECT_LEN].copy_from_slice(&sealed);
                self.inner.put(&name, data.len() as u64, super::once(data)).await?;
            } else {
                self.inner.put(&name, sealed.len() as u64, super::once(sealed)).await?;
            }
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
            let kind = self.cipher;
            let inline = self.inline_max.is_some_and(|max| size <= max);
            let k = ObjectKey {
                offset: if inline { KEY_OBJECT_LEN as u64 } else { 0 },
                chunk_size: self.chunk_size as u64,
                len: size,
                nonce_prefix,
                kind,
                cipher: DataCipher::new(kind, &dek)?,
            };
            let sealed = seal_key(&self.master, key, &k, &dek)?;
            self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            let body = encrypt_stream(data, k.clone(), key.to_owned());
            let csize = k.ciphertext_len();
            if inline {
                // One object, the key header in front: one PUT.
                let header = futures_util::stream::once(async move { Ok(Bytes::from(sealed)) });
                self.inner.put(key, KEY_OBJECT_LEN as u64 + csize, Box::pin(header.chain(body))).await?;
            } else {
                // The key object and the data at the same time (one round trip, not two): the
                // put succeeds only once both are stored, and whoever writes objects records
                // them only after that, so data whose key failed to arrive is an unreferenced
                // orphan.
                let key_name = format!("{key}{KEY_SUFFIX}");
                tokio::try_join!(
                    self.inner.put(&key_name, sealed.len() as u64, super::once(sealed)),
                    self.inner.put(key, csize, body),
                )?;
            }
            // Whoever uploads is often followed by readers: they need not fetch the key again.
            self.remember(key, k);
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
        async move {
            if let Some(k) = self.known_key(key) {
                return self.read_planned(key, k, range).await;
            }
            if range.is_none() {
                return self.read_whole(key).await;
            }
            // A ranged read is most often a seek in a large object, whose key is a companion:
            // that first; an object without one has its key inline.
            let k = match self.companion_key(key).await {
                Err(MediaError::NotFound) => self.object_key(key).await?,
                other => other?,
            };
            self.read_planned(key, k, range).await
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
        async move {
            if let Some(k) = self.known_key(key) {
                return Ok(self.inner.head(key).await?.map(|_| ObjectInfo { size: k.len }));
            }
            // Reading the key header says whether the object is there too.
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

    /// Counts the requests reaching the store below.
    struct Counting {
        inner: Arc<FsStore>,
        gets: std::sync::atomic::AtomicU64,
        puts: std::sync::atomic::AtomicU64,
    }

    impl Counting {
        fn new(inner: Arc<FsStore>) -> Arc<Counting> {
            Arc::new(Counting { inner, gets: Default::default(), puts: Default::default() })
        }
        /// (GETs, PUTs) since the last call.
        fn take(&self) -> (u64, u64) {
            use std::sync::atomic::Ordering::SeqCst;
            (self.gets.swap(0, SeqCst), self.puts.swap(0, SeqCst))
        }
    }

    impl BlobStore for Counting {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn put<'a>(&'a self, key: &'a str, size: u64, data: ByteStream) -> BoxFuture<'a, Result<()>> {
            self.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.put(key, size, data)
        }
        fn get<'a>(&'a self, key: &'a str, range: Option<Range>) -> BoxFuture<'a, Result<ByteStream>> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.get(key, range)
        }
        fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectInfo>>> {
            self.inner.head(key)
        }
        fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
            self.inner.delete(key)
        }
        fn list(&self) -> BoxStream<'_, Result<String>> {
            self.inner.list()
        }
    }

    async fn names(fs: &FsStore) -> Vec<String> {
        let mut v: Vec<String> = fs.list().map(|k| k.unwrap()).collect().await;
        v.sort();
        v
    }

    #[tokio::test]
    async fn round_trips_every_size_and_range_at_chunk_boundaries() {
        // With the key inline (the default for small objects) and in a companion object; read
        // by the writer (which knows each key) and by a reader that has to find it.
        for inline_max in [Some(DEFAULT_INLINE_MAX), None] {
            let (fs, enc, dir) = setup(64);
            let enc = enc.with_inline_max(inline_max);
            for n in [0usize, 1, 63, 64, 65, 128, 1000] {
                let d = data(n);
                let key = format!("c-{n}");
                enc.put(&key, n as u64, once(d.clone())).await.unwrap();
                for fresh in [false, true] {
                    let fresh_reader = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
                    let r = if fresh { &fresh_reader } else { &enc };
                    let what = format!("size {n}, inline up to {inline_max:?}, fresh reader {fresh}");
                    assert_eq!(read_all(r.get(&key, None).await.unwrap()).await.unwrap(), d, "{what}");
                    let fresh_reader = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
                    let r = if fresh { &fresh_reader } else { &enc };
                    assert_eq!(r.head(&key).await.unwrap(), Some(ObjectInfo { size: n as u64 }), "{what}");
                    for (s, e) in [(0, 0), (0, 1), (63, 65), (64, 128), (1, n), (n / 2, n)] {
                        if s > e || e > n {
                            continue;
                        }
                        let fresh_reader = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
                        let r = if fresh { &fresh_reader } else { &enc };
                        let got = read_all(r.get(&key, Some(Range { start: s as u64, end: e as u64 })).await.unwrap())
                            .await
                            .unwrap();
                        assert_eq!(got, d[s..e], "{what}, range {s}..{e}");
                    }
                }
                let fresh_reader = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
                assert_eq!(fresh_reader.head(&format!("c-missing-{n}")).await.unwrap(), None);
            }
            let companions = names(&fs).await.iter().filter(|n| n.ends_with(".k")).count();
            assert_eq!(companions, if inline_max.is_none() { 7 } else { 0 }, "inline up to {inline_max:?}");
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[tokio::test]
    async fn a_small_object_is_one_object_written_with_one_put_and_read_with_one_get() {
        let dir = std::env::temp_dir().join(format!("moss-enc-{}", rand::random::<u64>()));
        let fs = Arc::new(FsStore::open(&dir).unwrap());
        let counting = Counting::new(fs.clone());
        let master = || MasterKey::from_bytes([7u8; 32]);
        let writer = EncryptedStore::new(counting.clone(), master()).with_inline_max(Some(4096));
        let (small, large) = (data(4096), data(4097));
        writer.put("c-small", 4096, once(small.clone())).await.unwrap();
        assert_eq!(counting.take(), (0, 1));
        writer.put("c-large", 4097, once(large.clone())).await.unwrap();
        assert_eq!(counting.take(), (0, 2), "data and companion");
        assert_eq!(names(&fs).await, ["c-large", "c-large.k", "c-small"]);
        // The header is on the front of the small object, sealed like a companion object but
        // with its own magic.
        let raw = read_all(fs.get("c-small", None).await.unwrap()).await.unwrap();
        assert!(&raw[..8] == INLINE_MAGIC_AES || &raw[..8] == INLINE_MAGIC, "{:?}", &raw[..8]);
        assert_eq!(raw.len() as u64, KEY_OBJECT_LEN as u64 + 4096 + TAG);

        // A reader that has never seen the object: one GET for the small one, two for the
        // large one (its data and its companion).
        let reader = EncryptedStore::new(counting.clone(), master());
        assert_eq!(read_all(reader.get("c-small", None).await.unwrap()).await.unwrap(), small);
        assert_eq!(counting.take(), (1, 0));
        assert_eq!(read_all(reader.get("c-large", None).await.unwrap()).await.unwrap(), large);
        assert_eq!(counting.take(), (2, 0));
        // Known keys now: a ranged read of either is one GET of just the chunks it needs.
        let r = Range { start: 100, end: 200 };
        assert_eq!(read_all(reader.get("c-small", Some(r)).await.unwrap()).await.unwrap(), small[100..200]);
        assert_eq!(read_all(reader.get("c-large", Some(r)).await.unwrap()).await.unwrap(), large[100..200]);
        assert_eq!(counting.take(), (2, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_object_rewritten_inline_is_read_by_its_own_header_not_a_stale_companion() {
        let (fs, _, dir) = setup(64);
        let master = || MasterKey::from_bytes([7u8; 32]);
        let old = EncryptedStore::new(fs.clone(), master()).with_chunk_size(64).with_inline_max(None);
        old.put("m-rec", 300, once(data(300))).await.unwrap();
        let new = EncryptedStore::new(fs.clone(), master()).with_chunk_size(64);
        let d: Vec<u8> = data(200).into_iter().rev().collect();
        new.put("m-rec", 200, once(d.clone())).await.unwrap();
        assert!(names(&fs).await.contains(&"m-rec.k".to_owned()), "the old companion is still there");
        let reader = EncryptedStore::new(fs.clone(), master());
        assert_eq!(reader.head("m-rec").await.unwrap(), Some(ObjectInfo { size: 200 }));
        let reader = EncryptedStore::new(fs.clone(), master());
        assert_eq!(read_all(reader.get("m-rec", None).await.unwrap()).await.unwrap(), d);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn both_chunk_ciphers_round_trip_and_stay_readable() {
        let (fs, enc, dir) = setup(64);
        let d = data(1000);
        for (name, cipher, magic, inline_max) in [
            ("c-chacha", ChunkCipher::XChaCha20Poly1305, KEY_MAGIC, None),
            ("c-aes", ChunkCipher::Aes256Gcm, KEY_MAGIC_AES, None),
            ("c-chacha-in", ChunkCipher::XChaCha20Poly1305, INLINE_MAGIC, Some(DEFAULT_INLINE_MAX)),
            ("c-aes-in", ChunkCipher::Aes256Gcm, INLINE_MAGIC_AES, Some(DEFAULT_INLINE_MAX)),
        ] {
            let writer = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]))
                .with_chunk_size(64)
                .with_cipher(cipher)
                .with_inline_max(inline_max);
            writer.put(name, d.len() as u64, once(d.clone())).await.unwrap();
            let header = if inline_max.is_none() { format!("{name}.k") } else { name.to_owned() };
            let k = read_all(fs.get(&header, None).await.unwrap()).await.unwrap();
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
        // So is an inline header relabelled to the other cipher, or moved into a companion.
        let raw = read_all(fs.get("c-aes-in", None).await.unwrap()).await.unwrap();
        let mut relabelled = raw.clone();
        relabelled[..8].copy_from_slice(INLINE_MAGIC);
        fs.put("c-aes-in", raw.len() as u64, once(relabelled)).await.unwrap();
        let fresh = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
        assert!(matches!(fresh.get("c-aes-in", None).await, Err(MediaError::Corrupt(_))));
        let mut as_companion = raw[..KEY_OBJECT_LEN].to_vec();
        as_companion[..8].copy_from_slice(KEY_MAGIC_AES);
        fs.put("c-moved.k", KEY_OBJECT_LEN as u64, once(as_companion)).await.unwrap();
        let rest = raw[KEY_OBJECT_LEN..].to_vec();
        fs.put("c-moved", rest.len() as u64, once(rest)).await.unwrap();
        let fresh = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
        assert!(matches!(fresh.get("c-moved", None).await, Err(MediaError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_inner_store_sees_no_plaintext_and_tampering_is_caught() {
        for inline_max in [Some(DEFAULT_INLINE_MAX), None] {
            let (fs, enc, dir) = setup(DEFAULT_CHUNK_SIZE);
            let enc = enc.with_inline_max(inline_max);
            let marker = b"PLAINTEXT-MARKER-0123456789".repeat(10_000);
            enc.put("c-m", marker.len() as u64, once(marker.clone())).await.unwrap();
            let raw = read_all(fs.get("c-m", None).await.unwrap()).await.unwrap();
            assert!(!raw.windows(16).any(|w| w == &b"PLAINTEXT-MARKER"[..]));
            // Flip one byte of the ciphertext: the read must fail, not return wrong data,
            // whether the reader knows the key or not. (An inline header's bytes matter only
            // to a reader that needs the key from it: for it, flipping them fails too.)
            for at in [10, 100, KEY_OBJECT_LEN + 5, raw.len() - 1] {
                let in_header = inline_max.is_some() && at < KEY_OBJECT_LEN;
                let mut bad = raw.clone();
                bad[at] ^= 1;
                fs.put("c-m", bad.len() as u64, once(bad)).await.unwrap();
                let fresh = EncryptedStore::new(fs.clone(), MasterKey::from_bytes([7u8; 32]));
                let readers = if in_header { vec![&fresh] } else { vec![&enc, &fresh] };
                for r in readers {
                    let read = match r.get("c-m", None).await {
                        Ok(s) => read_all(s).await,
                        Err(e) => Err(e),
                    };
                    assert!(read.is_err(), "byte {at} flipped, inline up to {inline_max:?}");
                }
            }
            // Data moved under another name does not decrypt either.
            fs.put("c-other", raw.len() as u64, once(raw)).await.unwrap();
            if inline_max.is_none() {
                let k = read_all(fs.get("c-m.k", None).await.unwrap()).await.unwrap();
                fs.put("c-other.k", k.len() as u64, once(k)).await.unwrap();
            }
            assert!(enc.get("c-other", None).await.is_err());
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[tokio::test]
    async fn rotation_reseals_every_key_and_leaves_ciphertext_as_it_was() {
        let (fs, _, dir) = setup(64);
        let old = MasterKey::from_bytes([7u8; 32]);
        let enc = EncryptedStore::new(fs.clone(), old.clone()).with_chunk_size(64).with_inline_max(Some(500));
        let (small, large) = (data(500), data(501));
        enc.put("c-small", 500, once(small.clone())).await.unwrap();
        enc.put("c-large", 501, once(large.clone())).await.unwrap();
        let raw = |name: &'static str| {
            let fs = fs.clone();
            async move { read_all(fs.get(name, None).await.unwrap()).await.unwrap() }
        };
        let (small_before, large_before) = (raw("c-small").await, raw("c-large").await);
        let new = MasterKey::from_bytes([9u8; 32]);
        let rotated =
            EncryptedStore::new(fs.clone(), new.clone()).with_chunk_size(64).with_previous_keys(vec![old.clone()]);
        assert_eq!(rotated.rewrap_all().await.unwrap(), 2, "a companion and an inline header");
        assert_eq!(raw("c-large").await, large_before, "data untouched");
        let small_after = raw("c-small").await;
        assert_eq!(small_after[KEY_OBJECT_LEN..], small_before[KEY_OBJECT_LEN..], "ciphertext untouched");
        assert_ne!(small_after[..KEY_OBJECT_LEN], small_before[..KEY_OBJECT_LEN], "header re-sealed");
        let only_new = EncryptedStore::new(fs.clone(), new.clone());
        assert_eq!(read_all(only_new.get("c-small", None).await.unwrap()).await.unwrap(), small);
        assert_eq!(read_all(only_new.get("c-large", None).await.unwrap()).await.unwrap(), large);
        for name in ["c-small", "c-large"] {
            let only_old = EncryptedStore::new(fs.clone(), old.clone());
            assert!(only_old.get(name, None).await.is_err(), "the old key alone no longer opens {name}");
        }
        let mut keys: Vec<String> = only_new.list().map(|k| k.unwrap()).collect().await;
        keys.sort();
        assert_eq!(keys, ["c-large", "c-small"]);
        // Nothing left to do the second time.
        let again = EncryptedStore::new(fs.clone(), new).with_previous_keys(vec![old]);
        assert_eq!(again.rewrap_all().await.unwrap(), 0);
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
