use std::time::Duration;

use serde_json::json;

use crate::common::{errcode, Server, User};

pub async fn upload(s: &Server, u: &User, bytes: Vec<u8>, ctype: &str, name: Option<&str>) -> (u16, serde_json::Value) {
    let mut url = format!("{}/_matrix/media/v3/upload", s.base);
    if let Some(n) = name {
        url.push_str(&format!("?filename={n}"));
    }
    let res = reqwest::Client::new()
        .post(url)
        .bearer_auth(&u.token)
        .header("content-type", ctype)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let st = res.status().as_u16();
    (st, res.json().await.unwrap_or_default())
}

pub fn media_path(mxc: &str) -> String {
    mxc.trim_start_matches("mxc://").to_owned()
}

pub async fn download(s: &Server, u: Option<&User>, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{}{}", s.base, path));
    if let Some(u) = u {
        req = req.bearer_auth(&u.token);
    }
    if let Some(r) = range {
        req = req.header("range", r);
    }
    req.send().await.unwrap()
}

/// Downloads `mxc://…` (a content URI) through the authenticated endpoint.
pub async fn download_uri(s: &Server, u: Option<&User>, content_uri: &str) -> reqwest::Response {
    download(s, u, &format!("/_matrix/client/v1/media/download/{}", media_path(content_uri)), None).await
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// Every file under `dir`, recursively.
/// The files under `dir`, but not those of an fs store's writes under way (`.tmp`).
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name() == ".tmp" {
            continue;
        }
        if e.path().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// The metadata records an fs store holds (not the temporary files of writes under way).
pub fn stored_records(media_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files(media_dir).into_iter().filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("m-")).collect()
}

pub async fn round_trips(s: &Server) {
    let a = s.register("alice").await;
    for n in [0usize, 1, 5 * 1024 * 1024 + 3] {
        let data = pattern(n);
        let (st, v) = upload(s, &a, data.clone(), "application/octet-stream", Some("blob.bin")).await;
        assert_eq!(st, 200, "{v}");
        let mxc = v["content_uri"].as_str().unwrap();
        assert!(mxc.starts_with("mxc://localhost/"), "{mxc}");
        let res = download_uri(s, Some(&a), mxc).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-length"], n.to_string().as_str());
        assert_eq!(res.bytes().await.unwrap().to_vec(), data, "size {n}");
        if n > 100_000 {
            // Ranges across the encryption layer's 64 KiB chunk boundaries.
            for (a0, b0) in [(65_535usize, 65_537usize), (0, 0), (131_072, 262_143), (n - 10, n - 1)] {
                let res = download(
                    s,
                    Some(&a),
                    &format!("/_matrix/client/v1/media/download/{}", media_path(mxc)),
                    Some(&format!("bytes={a0}-{b0}")),
                )
                .await;
                assert_eq!(res.status(), 206);
                assert_eq!(res.headers()["content-range"], format!("bytes {a0}-{b0}/{n}").as_str());
                assert_eq!(res.bytes().await.unwrap().to_vec(), data[a0..=b0]);
            }
            let res = download(
                s,
                Some(&a),
                &format!("/_matrix/client/v1/media/download/{}", media_path(mxc)),
                Some(&format!("bytes={}-", n + 5)),
            )
            .await;
            assert_eq!(res.status(), 416);
        }
    }
}

#[tokio::test]
async fn uploads_round_trip_byte_exact_with_ranges_on_fs() {
    let s = Server::start().await;
    round_trips(&s).await;
}

#[tokio::test]
async fn encrypted_media_round_trips_and_the_store_holds_no_plaintext() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true"),
    ])
    .await;
    round_trips(&s).await;
    let a = s.register("marker").await;
    let marker = b"MOSS-PLAINTEXT-MARKER ".repeat(5000);
    let (st, _) = upload(&s, &a, marker, "text/plain", None).await;
    assert_eq!(st, 200);
    let needle = b"MOSS-PLAINTEXT-MARKER";
    // Four uploads, each with its metadata record (written right after the answer).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored_records(&s.data_dir().join("media")).len() < 4 {
        assert!(std::time::Instant::now() < deadline, "the records were written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for f in files(&s.data_dir().join("media")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "plaintext found in {}", f.display());
    }
    assert!(s.data_dir().join("media-master.key").exists(), "the master key is generated on first start");
}

#[tokio::test]
async fn identical_uploads_are_stored_once_with_their_own_names() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let contents = || {
        files(&s.data_dir().join("media"))
            .iter()
            .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("c-"))
            .count()
    };
    let before = contents();
    let data = pattern(200_000);
    let (_, v1) = upload(&s, &a, data.clone(), "image/png", Some("one.png")).await;
    let (_, v2) = upload(&s, &a, data.clone(), "application/pdf", Some("two.pdf")).await;
    assert_ne!(v1["content_uri"], v2["content_uri"]);
    assert_eq!(contents(), before + 1, "one object for identical content");
    let r1 = download_uri(&s, Some(&a), v1["content_uri"].as_str().unwrap()).await;
    assert_eq!(r1.headers()["content-type"], "image/png");
    assert_eq!(r1.headers()["content-disposition"], "inline; filename=\"one.png\"; filename*=utf-8''one.png");
    let r2 = download(
        &s,
        Some(&a),
        &format!("/_matrix/client/v1/media/download/{}/renamed.pdf", media_path(v2["content_uri"].as_str().unwrap())),
        None,
    )
    .await;
    assert_eq!(r2.headers()["content-type"], "application/pdf");
    assert!(r2.headers()["content-disposition"].to_str().unwrap().starts_with("attachment; filename=\"renamed.pdf\""));
}

#[tokio::test]
async fn security_headers_and_dangerous_types() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    for ctype in ["text/html", "image/svg+xml", "application/javascript"] {
        let (_, v) = upload(&s, &a, b"<script>alert(1)</script>".to_vec(), ctype, Some("x")).await;
        let res = download_uri(&s, Some(&a), v["content_uri"].as_str().unwrap()).await;
        let h = res.headers();
        assert!(h["content-disposition"].to_str().unwrap().starts_with("attachment"), "{ctype} must not be inline");
        assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox;"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
    }
    let (st, v) = s.get("/_matrix/client/v1/media/config", &a).await;
    assert_eq!(st, 200);
    assert_eq!(v["m.upload.size"], 100 * 1024 * 1024);
    // Authenticated media needs a token; unknown ids are 404.
    let (_, v) = upload(&s, &a, b"x".to_vec(), "text/plain", None).await;
    let path = media_path(v["content_uri"].as_str().unwrap());
    assert_eq!(download(&s, None, &format!("/_matrix/client/v1/media/download/{path}"), None).await.status(), 401);
    let res = download(&s, Some(&a), "/_matrix/client/v1/media/download/localhost/doesnotexist", None).await;
    assert_eq!(res.status(), 404);
    // The legacy endpoint is frozen: media uploaded to moss is only served authenticated.
    let res = download(&s, None, &format!("/_matrix/media/v3/download/{path}"), None).await;
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(errcode(&body), "M_NOT_FOUND");
}

#[tokio::test]
async fn legacy_downloads_follow_the_setting() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__LEGACY_MEDIA", "on"),
    ])
    .await;
    let a = s.register("alice").await;
    let (_, v) = upload(&s, &a, b"legacy".to_vec(), "text/plain", None).await;
    let res = download(
        &s,
        None,
        &format!("/_matrix/media/v3/download/{}", media_path(v["content_uri"].as_str().unwrap())),
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"legacy");
}

#[tokio::test]
async fn asynchronous_uploads_and_limits() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__MAX_PENDING_UPLOADS", "2"),
        ("MOSS_MEDIA__MAX_UPLOAD_SIZE", "100000"),
    ])
    .await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let (st, v) = s.post("/_matrix/media/v1/create", &a, json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["unused_expires_at"].as_u64().unwrap() > 0);
    let path = media_path(v["content_uri"].as_str().unwrap());
    let res = download(&s, Some(&a), &format!("/_matrix/client/v1/media/download/{path}?timeout_ms=200"), None).await;
    assert_eq!(res.status(), 504);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(errcode(&body), "M_NOT_YET_UPLOADED");

    let put = |u: &User, data: &'static [u8]| {
        reqwest::Client::new()
            .put(format!("{}/_matrix/media/v3/upload/{path}?filename=late.txt", s.base))
            .bearer_auth(&u.token)
            .header("content-type", "text/plain")
            .body(data)
            .send()
    };
    assert_eq!(put(&b, b"not yours").await.unwrap().status(), 403);
    // A download waiting for the upload gets it as soon as it lands.
    let waiting_path = format!("/_matrix/client/v1/media/download/{path}?timeout_ms=10000");
    let waiting = download(&s, Some(&b), &waiting_path, None);
    let (res, up) = tokio::join!(waiting, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        put(&a, b"arrived").await.unwrap().status()
    });
    assert_eq!(up, 200);
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"arrived");
    let res = put(&a, b"again").await.unwrap();
    assert_eq!(res.status(), 409);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(errcode(&body), "M_CANNOT_OVERWRITE_MEDIA");

    assert_eq!(s.post("/_matrix/media/v1/create", &a, json!({})).await.0, 200);
    assert_eq!(s.post("/_matrix/media/v1/create", &a, json!({})).await.0, 200);
    let (st, v) = s.post("/_matrix/media/v1/create", &a, json!({})).await;
    assert_eq!((st, errcode(&v)), (429, "M_LIMIT_EXCEEDED"));

    let (st, v) = upload(&s, &a, vec![0u8; 100_001], "application/octet-stream", None).await;
    assert_eq!((st, errcode(&v)), (413, "M_TOO_LARGE"));
    assert_eq!(std::fs::read_dir(s.data_dir().join("tmp")).unwrap().count(), 0, "no spool file left behind");
}

#[tokio::test]
async fn kill_9_during_an_upload_leaves_a_consistent_store() {
    let mut s = Server::start().await;
    let a = s.register("alice").await;
    let (_, v) = upload(&s, &a, b"before".to_vec(), "text/plain", None).await;
    let kept = media_path(v["content_uri"].as_str().unwrap());

    // A slow upload: 64 chunks of 1 MiB, 20 ms apart.
    use futures_util::StreamExt;
    let stream =
        futures_util::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 1 << 20]))))
            .then(|c| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                c
            });
    let url = format!("{}/_matrix/media/v3/upload", s.base);
    let token = a.token.clone();
    let up = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.kill9();
    assert!(up.await.unwrap().map(|st| st != 200).unwrap_or(true), "the upload cannot have succeeded");

    let s = s.restart().await;
    let a = crate::common::User { token: s.login("alice").await, ..a };
    assert_eq!(std::fs::read_dir(s.data_dir().join("tmp")).unwrap().count(), 0, "interrupted spool files are cleared");
    assert_eq!(std::fs::read_dir(s.data_dir().join("media").join(".tmp")).unwrap().count(), 0);
    let res = download(&s, Some(&a), &format!("/_matrix/client/v1/media/download/{kept}"), None).await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"before");
}

fn image_bytes(w: u32, h: u32, fmt: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255]));
    let img = if fmt == image::ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(image::DynamicImage::ImageRgba8(img).to_rgb8())
    } else {
        image::DynamicImage::ImageRgba8(img)
    };
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), fmt).unwrap();
    out
}

/// A JPEG whose EXIF data says "rotate 90° clockwise to display".
fn rotated_jpeg(w: u32, h: u32) -> Vec<u8> {
    let jpeg = image_bytes(w, h, image::ImageFormat::Jpeg);
    let tiff: Vec<u8> = [
        &b"MM\0\x2a\0\0\0\x08"[..],                  // big-endian TIFF header, first IFD at 8
        &[0, 1],                                     // one entry
        &[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0], // Orientation (SHORT) = 6
        &[0, 0, 0, 0],                               // no next IFD
    ]
    .concat();
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

async fn thumb(s: &Server, u: &User, mxc: &str, q: &str) -> reqwest::Response {
    download(s, Some(u), &format!("/_matrix/client/v1/media/thumbnail/{}?{q}", media_path(mxc)), None).await
}

#[tokio::test]
async fn thumbnails_for_each_format_size_and_orientation() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true"),
    ])
    .await;
    let a = s.register("alice").await;
    for (fmt, ctype, out) in [
        (image::ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (image::ImageFormat::Png, "image/png", "image/png"),
        (image::ImageFormat::Gif, "image/gif", "image/png"),
        (image::ImageFormat::WebP, "image/webp", "image/png"),
    ] {
        let (_, v) = upload(&s, &a, image_bytes(1000, 750, fmt), ctype, None).await;
        let mxc = v["content_uri"].as_str().unwrap().to_owned();
        for (q, want) in [
            ("width=32&height=32&method=crop", (32, 32)),
            ("width=96&height=96&method=crop", (96, 96)),
            ("width=300&height=200&method=scale", (320, 240)),
            ("width=640&height=480", (640, 480)),
            ("width=2000&height=2000", (800, 600)),
        ] {
            let res = thumb(&s, &a, &mxc, q).await;
            assert_eq!(res.status(), 200, "{ctype} {q}");
            assert_eq!(res.headers()["content-type"], out);
            let img = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
            assert_eq!((img.width(), img.height()), want, "{ctype} {q}");
        }
    }
    let (_, v) = upload(&s, &a, rotated_jpeg(200, 100), "image/jpeg", None).await;
    let res = thumb(&s, &a, v["content_uri"].as_str().unwrap(), "width=320&height=240&method=scale").await;
    let img = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (100, 200), "EXIF orientation must be applied");

    let (_, v) = upload(&s, &a, b"not an image".to_vec(), "text/plain", None).await;
    let mxc = v["content_uri"].as_str().unwrap().to_owned();
    assert_eq!(thumb(&s, &a, &mxc, "width=32&height=32").await.status(), 400);
    assert_eq!(thumb(&s, &a, &mxc, "height=32").await.status(), 400);
    assert_eq!(thumb(&s, &a, &mxc, "width=0&height=32").await.status(), 400);
    assert_eq!(thumb(&s, &a, &mxc, "width=32&height=32&method=stretch").await.status(), 400);
}

#[tokio::test]
async fn decompression_bombs_are_not_decoded() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__THUMBNAILS__MAX_IMAGE_PIXELS", "10000"),
    ])
    .await;
    let a = s.register("alice").await;
    let (_, v) = upload(&s, &a, image_bytes(400, 400, image::ImageFormat::Png), "image/png", None).await;
    let res = thumb(&s, &a, v["content_uri"].as_str().unwrap(), "width=32&height=32").await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(errcode(&body), "M_TOO_LARGE");
}

/// A deterministic pseudo-random stream of `len` bytes, generated as it is sent: one random
/// 1 MiB block, stamped with the chunk number so no two chunks are alike.
pub fn big_stream(
    len: u64,
    seed: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use futures_util::StreamExt;
    let chunk = 1u64 << 20;
    let mut x = seed | 1;
    let mut block = Vec::with_capacity(chunk as usize);
    while block.len() < chunk as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend_from_slice(&x.to_le_bytes());
    }
    let block = bytes::Bytes::from(block);
    futures_util::stream::iter(0..len.div_ceil(chunk)).map(move |i| {
        let n = chunk.min(len - i * chunk) as usize;
        let mut buf = block.slice(..n).to_vec();
        let stamp = i.to_le_bytes();
        let k = stamp.len().min(n);
        buf[..k].copy_from_slice(&stamp[..k]);
        Ok(bytes::Bytes::from(buf))
    })
}

async fn sha256_of_stream(s: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>>) -> (u64, Vec<u8>) {
    use futures_util::StreamExt;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    let mut s = std::pin::pin!(s);
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        h.update(&c);
    }
    (n, h.finalize().to_vec())
}

/// Uploads and downloads `len` streamed bytes, checks them byte-exact by hash, and returns the
/// growth of the server's peak memory during the transfers.
/// Uploads `len` generated bytes and downloads them again; returns how much moss's peak memory
/// grew. `declared`: the request says its length (as clients sending a file do); otherwise the
/// body is chunked.
pub async fn big_round_trip(s: &Server, u: &User, len: u64, declared: bool) -> u64 {
    use futures_util::TryStreamExt;
    let before = s.peak_rss();
    let mut req = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&u.token)
        .header("content-type", "application/octet-stream");
    if declared {
        req = req.header("content-length", len);
    }
    let res = req.body(reqwest::Body::wrap_stream(big_stream(len, 42))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    let res = download_uri(s, Some(u), v["content_uri"].as_str().unwrap()).await;
    assert_eq!(res.status(), 200);
    let got = sha256_of_stream(res.bytes_stream().map_err(std::io::Error::other)).await;
    let want = sha256_of_stream(big_stream(len, 42)).await;
    assert_eq!(got, want, "the download must equal the upload");
    s.peak_rss().saturating_sub(before)
}

#[tokio::test]
async fn a_200_mib_upload_round_trips_with_flat_memory() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true"),
        ("MOSS_MEDIA__MAX_UPLOAD_SIZE", "1073741824"),
    ])
    .await;
    let a = s.register("alice").await;
    let growth = big_round_trip(&s, &a, 200 << 20, false).await;
    assert!(growth < 64 << 20, "peak memory grew by {} MiB for a 200 MiB file", growth >> 20);
}

#[tokio::test]
async fn the_store_and_master_key_alone_restore_every_file() {
    let mut s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true"),
    ])
    .await;
    let a = s.register("alice").await;
    let files = [
        ("holiday.jpg", "image/jpeg", pattern(70_000)),
        ("notes.txt", "text/plain", b"remember the milk".to_vec()),
        ("dup.bin", "application/octet-stream", pattern(70_000)),
    ];
    let mut ids = Vec::new();
    for (name, ctype, data) in &files {
        let (st, v) = upload(&s, &a, data.clone(), ctype, Some(name)).await;
        assert_eq!(st, 200);
        ids.push(media_path(v["content_uri"].as_str().unwrap()));
    }
    // Each upload's metadata record is written right after its answer.
    let media_dir = s.data_dir().join("media");
    let records = || stored_records(&media_dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while records().len() < files.len() {
        assert!(std::time::Instant::now() < deadline, "records written: {:?}", records());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.kill9();
    // Lose everything but the media store and the master key.
    let data = s.data_dir();
    for f in ["moss.db", "moss.db-wal", "moss.db-shm", "media-naming.key", "signing.key"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let decrypt = |out: &std::path::Path| {
        std::process::Command::new(crate::common::moss_bin())
            .args(["media", "decrypt", "--out"])
            .arg(out)
            // No database at all: with PostgreSQL too, the command gets none (a fresh SQLite file).
            .env("MOSS_DATA_DIR", &data)
            .env("MOSS_MEDIA__ENCRYPTION__ENABLED", "true")
            .output()
            .unwrap()
    };
    let out = s.dir.join("restored");
    let res = decrypt(&out);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(String::from_utf8_lossy(&res.stdout).contains("restored 3 file(s)"));
    for ((name, ctype, bytes), id) in files.iter().zip(&ids) {
        let dir = out.join(id);
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["content_type"], *ctype);
        assert_eq!(meta["user_id"], a.id);
    }
    // Content whose record is lost too (a crash right after an answer, with the database
    // gone): restored without a name, byte for byte.
    for r in records() {
        std::fs::remove_file(r).unwrap();
    }
    let unnamed = s.dir.join("unnamed-restore");
    let res = decrypt(&unnamed);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let said = String::from_utf8_lossy(&res.stdout);
    assert!(said.contains("restored 0 file(s)") && said.contains("2 without a record"), "{said}");
    let mut got: Vec<Vec<u8>> = std::fs::read_dir(unnamed.join("unnamed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    got.sort();
    let mut want = vec![files[0].2.clone(), files[1].2.clone()];
    want.sort();
    assert!(got == want, "the two distinct contents, decrypted");

    // Without the master key nothing decrypts.
    std::fs::remove_file(data.join("media-master.key")).unwrap();
    let res = std::process::Command::new(crate::common::moss_bin())
        .args(["media", "decrypt", "--out"])
        .arg(s.dir.join("again"))
        .env("MOSS_DATA_DIR", &data)
        .envs(crate::common::database_env(&data))
        .env("MOSS_MEDIA__ENCRYPTION__ENABLED", "true")
        .output()
        .unwrap();
    assert!(!res.status.success());
}

/// An object named like a metadata record but megabytes long (a damaged or foreign bucket) is
/// refused by `moss media decrypt` after its budget, not read into memory; the real files are
/// restored all the same.
#[tokio::test]
async fn a_huge_object_posing_as_a_record_is_refused_within_its_budget() {
    use base64::Engine;
    let mut s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true"),
    ])
    .await;
    let a = s.register("alice").await;
    assert_eq!(upload(&s, &a, pattern(5000), "image/png", Some("a.png")).await.0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored_records(&s.data_dir().join("media")).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the record was written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.kill9();
    let data = s.data_dir();
    let key = std::fs::read_to_string(data.join("media-master.key")).unwrap();
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(key.trim()).unwrap().try_into().unwrap();
    let fs = std::sync::Arc::new(moss_media::store::fs::FsStore::open(data.join("media")).unwrap());
    let enc =
        moss_media::store::encrypt::EncryptedStore::new(fs, moss_media::store::encrypt::MasterKey::from_bytes(key));
    let huge = vec![b'{'; 8 << 20];
    let name = format!("m-{}", "f".repeat(64));
    moss_media::BlobStore::put(&enc, &name, huge.len() as u64, moss_media::store::once(huge)).await.unwrap();
    let res = std::process::Command::new(crate::common::moss_bin())
        .args(["media", "decrypt", "--out"])
        .arg(s.dir.join("restored"))
        .env("MOSS_DATA_DIR", &data)
        .env("MOSS_MEDIA__ENCRYPTION__ENABLED", "true")
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(!res.status.success(), "{out}");
    assert!(out.contains("restored 1 file(s)") && out.contains("1 failed"), "{out}");
    assert!(err.contains(&name) && err.contains("larger than the 65536 bytes"), "{err}");
}

#[tokio::test]
async fn a_lost_master_key_stops_the_server_instead_of_replacing_the_key() {
    let mut s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true"),
    ])
    .await;
    let a = s.register("alice").await;
    upload(&s, &a, b"precious".to_vec(), "text/plain", None).await;
    s.kill9();
    std::fs::remove_file(s.data_dir().join("media-master.key")).unwrap();
    let out = std::process::Command::new(crate::common::moss_bin())
        .args(["config", "check"])
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(crate::common::moss_bin())
        .args(["user", "list"])
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .env("MOSS_MEDIA__ENCRYPTION__ENABLED", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.data_dir().join("media-master.key").exists(), "no replacement key may be generated");
}

#[tokio::test]
async fn a_lost_naming_key_stops_the_server_and_cli_commands_leave_the_spool_alone() {
    let mut s = Server::start().await;
    let a = s.register("alice").await;
    upload(&s, &a, b"named".to_vec(), "text/plain", None).await;
    // An upload in progress (its spool file), while an operator runs a command beside the server.
    let spooled = s.data_dir().join("tmp").join("upload-inprogress");
    std::fs::write(&spooled, b"half an upload").unwrap();
    let out = std::process::Command::new(crate::common::moss_bin())
        .args(["media", "stats"])
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(spooled.exists(), "a command run beside the server must not clear its spool");

    s.kill9();
    std::fs::remove_file(s.data_dir().join("media-naming.key")).unwrap();
    let out = std::process::Command::new(crate::common::moss_bin())
        .args(["user", "list"])
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("naming key"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.data_dir().join("media-naming.key").exists(), "no replacement key may be generated");
}

#[tokio::test]
async fn rotating_the_master_key_reseals_keys_and_keeps_media_readable() {
    let mut s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true"),
    ])
    .await;
    let a = s.register("alice").await;
    let data = pattern(150_000);
    let (_, v) = upload(&s, &a, data.clone(), "application/octet-stream", None).await;
    let path = format!("/_matrix/client/v1/media/download/{}", media_path(v["content_uri"].as_str().unwrap()));
    let key_path = s.data_dir().join("media-master.key");
    let old_key = std::fs::read_to_string(&key_path).unwrap();
    // The upload's metadata record follows its answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored_records(&s.data_dir().join("media")).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the record was written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let content_files: Vec<_> = files(&s.data_dir().join("media"))
        .into_iter()
        .filter(|f| {
            let n = f.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("c-") && !n.ends_with(".k")
        })
        .collect();
    let before: Vec<Vec<u8>> = content_files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    s.kill9();

    let out = std::process::Command::new(crate::common::moss_bin())
        .args(["media", "rotate-key"])
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .env("MOSS_MEDIA__ENCRYPTION__ENABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 object key(s) re-sealed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(std::fs::read_to_string(&key_path).unwrap(), old_key);
    // The file's key travels in front of its data (a small object): the header is sealed
    // anew, the ciphertext behind it stays as it was.
    let after: Vec<Vec<u8>> = content_files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].len(), after[0].len());
    assert_ne!(before[0][..116], after[0][..116], "the key header is sealed anew");
    assert!(before[0][116..] == after[0][116..], "the ciphertext must not be rewritten");

    // Without the old key the media still opens: every key object was re-sealed.
    for e in std::fs::read_dir(s.data_dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().contains(".previous-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let s = s.restart().await;
    let a = crate::common::User { token: s.login("alice").await, ..a };
    let res = download(&s, Some(&a), &path, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().to_vec(), data);
}

#[tokio::test]
async fn quotas_and_upload_rate_limits() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__LOGIN", "{ per_second = 100, burst = 100 }"),
        ("MOSS_RATE_LIMITS__REGISTER", "{ per_second = 100, burst = 100 }"),
        ("MOSS_RATE_LIMITS__MEDIA_UPLOAD", "{ per_second = 0.01, burst = 3 }"),
        ("MOSS_MEDIA__QUOTA_PER_USER", "250000"),
    ])
    .await;
    let a = s.register("alice").await;
    let (st, _) = upload(&s, &a, pattern(200_000), "application/octet-stream", None).await;
    assert_eq!(st, 200);
    let (st, v) = upload(&s, &a, pattern(100_000), "application/octet-stream", None).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("quota"), "{v}");
    let (st, _) = upload(&s, &a, pattern(10_000), "application/octet-stream", None).await;
    assert_eq!(st, 200, "within the quota");
    let (st, v) = upload(&s, &a, pattern(10), "application/octet-stream", None).await;
    assert_eq!((st, errcode(&v)), (429, "M_LIMIT_EXCEEDED"), "the fourth upload in a burst of three: {v}");
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
    // Another user has their own quota and bucket.
    let b = s.register("bob").await;
    assert_eq!(upload(&s, &b, pattern(100_000), "application/octet-stream", None).await.0, 200);
}

fn moss_cli(s: &Server, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(crate::common::moss_bin())
        .args(args)
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn stats_and_purges_delete_exactly_what_they_should() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let mut paths = Vec::new();
    for data in [pattern(50_000), pattern(50_000), pattern(60_000)] {
        let (_, v) = upload(&s, &a, data, "application/octet-stream", None).await;
        paths.push(format!("/_matrix/client/v1/media/download/{}", media_path(v["content_uri"].as_str().unwrap())));
    }
    let (_, v) = upload(&s, &a, image_bytes(300, 200, image::ImageFormat::Png), "image/png", None).await;
    let img = v["content_uri"].as_str().unwrap().to_owned();
    assert_eq!(thumb(&s, &a, &img, "width=32&height=32&method=crop").await.status(), 200);
    paths.push(format!("/_matrix/client/v1/media/download/{}", media_path(&img)));

    // An object no record points to, as a crash between store and database would leave.
    let raw = moss_media::store::fs::FsStore::open(s.data_dir().join("media")).unwrap();
    moss_media::BlobStore::put(&raw, "c-0rphan", 5, moss_media::store::once(b"stray".to_vec())).await.unwrap();

    let (ok, out) = moss_cli(&s, &["media", "stats"]);
    assert!(ok, "{out}");
    assert!(out.contains("media            4"), "{out}");
    assert!(out.contains("stored contents  3"), "dedup: {out}");
    assert!(out.contains("thumbnails       1"), "{out}");

    let (ok, out) = moss_cli(&s, &["media", "purge", "--orphans", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("would delete 1 orphan(s)"), "{out}");
    assert!(moss_media::BlobStore::head(&raw, "c-0rphan").await.unwrap().is_some());
    let (ok, out) = moss_cli(&s, &["media", "purge", "--orphans"]);
    assert!(ok && out.contains("deleted 1 orphan(s)"), "{out}");
    assert!(moss_media::BlobStore::head(&raw, "c-0rphan").await.unwrap().is_none());
    for p in &paths {
        assert_eq!(download(&s, Some(&a), p, None).await.status(), 200, "purging orphans must keep {p}");
    }

    let (ok, out) = moss_cli(&s, &["media", "purge", "--older-than", "0"]);
    assert!(ok && out.contains("deleted 4 media"), "{out}");
    for p in &paths {
        assert_eq!(download(&s, Some(&a), p, None).await.status(), 404);
    }
    let left =
        files(&s.data_dir().join("media")).into_iter().filter(|f| !f.to_string_lossy().contains("/.tmp/")).count();
    assert_eq!(left, 0, "content, thumbnails and records are all gone from the store");
    let (ok, out) = moss_cli(&s, &["media", "purge", "--orphans"]);
    assert!(!ok && out.contains("records no media"), "an empty database must not purge the store: {out}");
}

#[tokio::test]
async fn purge_unused_for_keeps_what_was_served_recently() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let mut paths = Vec::new();
    for data in [pattern(1000), pattern(2000)] {
        let (_, v) = upload(&s, &a, data, "application/octet-stream", None).await;
        paths.push(format!("/_matrix/client/v1/media/download/{}", media_path(v["content_uri"].as_str().unwrap())));
    }
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(download(&s, Some(&a), &paths[0], None).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the access is written in the background

    let (ok, out) = moss_cli(&s, &["media", "purge", "--unused-for", "2s", "--dry-run"]);
    assert!(ok && out.contains("would delete 1 media not served for 2 second(s)"), "{out}");
    let (ok, out) = moss_cli(&s, &["media", "purge", "--unused-for", "2s"]);
    assert!(ok && out.contains("deleted 1 media"), "{out}");
    assert_eq!(download(&s, Some(&a), &paths[0], None).await.status(), 200, "served a moment ago: kept");
    assert_eq!(download(&s, Some(&a), &paths[1], None).await.status(), 404, "never served: purged");
    let (ok, out) = moss_cli(&s, &["media", "purge", "--unused-for", "soon"]);
    assert!(!ok && out.contains("is not an age"), "{out}");
}

#[tokio::test]
async fn quarantined_media_is_no_longer_served() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let (_, v) = upload(&s, &a, b"bad".to_vec(), "text/plain", None).await;
    let bad = v["content_uri"].as_str().unwrap().to_owned();
    let (_, v) = upload(&s, &a, b"fine".to_vec(), "text/plain", None).await;
    let fine = v["content_uri"].as_str().unwrap().to_owned();
    let (_, v) = upload(&s, &b, b"bob's".to_vec(), "text/plain", None).await;
    let bobs = v["content_uri"].as_str().unwrap().to_owned();
    let status = |mxc: String| {
        let s = &s;
        let a = &a;
        async move { download_uri(s, Some(a), &mxc).await.status() }
    };
    let (ok, out) = moss_cli(&s, &["media", "quarantine", &bad]);
    assert!(ok && out.contains("quarantined 1 media"), "{out}");
    assert_eq!(status(bad.clone()).await, 404);
    assert_eq!(status(fine.clone()).await, 200);
    let (ok, out) = moss_cli(&s, &["media", "quarantine", "--user", &b.id]);
    assert!(ok && out.contains("quarantined 1 media"), "{out}");
    assert_eq!(status(bobs).await, 404);
    assert_eq!(status(fine).await, 200);
}

#[tokio::test]
async fn animated_gifs_get_animated_thumbnails_when_asked() {
    use image::AnimationDecoder;
    let s = Server::start().await;
    let a = s.register("alice").await;
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        for i in 0..4u32 {
            let img = image::RgbaImage::from_fn(300, 200, |x, _| image::Rgba([(x + i * 50) as u8, 30, 60, 255]));
            enc.encode_frame(image::Frame::from_parts(img, 0, 0, image::Delay::from_numer_denom_ms(80, 1))).unwrap();
        }
    }
    let (_, v) = upload(&s, &a, gif, "image/gif", None).await;
    let mxc = v["content_uri"].as_str().unwrap().to_owned();
    let res = thumb(&s, &a, &mxc, "width=96&height=96&method=crop&animated=true").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/gif");
    let body = res.bytes().await.unwrap();
    let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&body)).unwrap().into_frames().count();
    assert_eq!(frames, 4);
    let res = thumb(&s, &a, &mxc, "width=96&height=96&method=crop").await;
    assert_eq!(res.headers()["content-type"], "image/png", "without animated=true a still thumbnail");
}

#[tokio::test]
async fn dynamic_thumbnails_have_the_size_asked() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__THUMBNAILS__DYNAMIC", "true"),
    ])
    .await;
    let a = s.register("alice").await;
    let (_, v) = upload(&s, &a, image_bytes(1000, 800, image::ImageFormat::Png), "image/png", None).await;
    let mxc = v["content_uri"].as_str().unwrap().to_owned();
    let res = thumb(&s, &a, &mxc, "width=123&height=45&method=crop").await;
    let img = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (123, 45));
    let res = thumb(&s, &a, &mxc, "width=200&height=200&method=scale").await;
    let img = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (200, 160));

    // Sizes are the client's choice, but not without end: past 32 per content and method, the
    // nearest thumbnail made already is served and nothing new is stored.
    for i in 0..31u32 {
        let res = thumb(&s, &a, &mxc, &format!("width={}&height={}&method=crop", 10 + i, 10 + i)).await;
        assert_eq!(res.status(), 200);
    }
    // Thumbnail objects in the fs store (sharded one directory deep).
    let count = || {
        let shards = std::fs::read_dir(s.data_dir().join("media")).unwrap().flatten();
        shards
            .filter(|d| d.path().is_dir())
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with("t-"))
            .count()
    };
    let stored = count();
    assert!(stored >= 33, "{stored} thumbnails stored before the limit");
    let res = thumb(&s, &a, &mxc, "width=15&height=16&method=crop").await;
    let img = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16), "the smallest one made that covers 15x16");
    let res = thumb(&s, &a, &mxc, "width=900&height=700&method=crop").await;
    let img = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (123, 45), "none covers it: the largest");
    assert_eq!(count(), stored, "no new thumbnail was stored");
}

#[tokio::test]
async fn many_small_uploads_at_once_all_land_whether_held_in_memory_or_spooled() {
    // Small bodies are held in memory within a 64 MiB budget shared by all uploads. 96 uploads
    // of 1 MiB each send 700 KiB and wait for one another before sending the rest: 67 MiB held
    // at once overruns the budget, so some must go to the spool. Every one must land intact.
    const N: usize = 96;
    const FIRST: usize = 700 * 1024;
    let s = Server::start().await;
    let a = s.register("alice").await;
    let all_sent_first = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (s_base, token, barrier) = (s.base.clone(), a.token.clone(), all_sent_first.clone());
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..1024 * 1024).map(|j| ((j * 13 + i * 7) % 251) as u8).collect();
            let (first, rest) =
                (bytes::Bytes::copy_from_slice(&data[..FIRST]), bytes::Bytes::copy_from_slice(&data[FIRST..]));
            let body = futures_util::StreamExt::then(
                futures_util::stream::iter([Some(first), None, Some(rest)]),
                move |part| {
                    let barrier = barrier.clone();
                    async move {
                        match part {
                            Some(b) => Ok::<_, std::io::Error>(b),
                            None => {
                                barrier.wait().await;
                                Ok(bytes::Bytes::new())
                            }
                        }
                    }
                },
            );
            let res = reqwest::Client::new()
                .post(format!("{s_base}/_matrix/media/v3/upload"))
                .bearer_auth(&token)
                .header("content-type", "application/octet-stream")
                .header("content-length", data.len())
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let v: serde_json::Value = res.json().await.unwrap();
            (v["content_uri"].as_str().unwrap().to_owned(), data)
        }));
    }
    for t in tasks {
        let (mxc, data) = t.await.unwrap();
        let got = download_uri(&s, Some(&a), &mxc).await;
        assert_eq!(got.status(), 200);
        assert!(got.bytes().await.unwrap().as_ref() == data.as_slice(), "{mxc} came back different");
    }
    // Nothing is left behind in the spool.
    let spool: Vec<_> = files(&s.data_dir().join("tmp"));
    assert!(spool.iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with("upload-")), "{spool:?}");
}
