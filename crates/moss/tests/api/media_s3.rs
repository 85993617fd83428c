//! Media on a real S3 server (Garage, started by `scripts/test`). Skipped when no S3 endpoint is
//! configured, unless `MOSS_REQUIRE_S3` is set (CI sets it, so there a missing Garage fails).

use std::time::Duration;

use futures_util::StreamExt;
use moss_media::{
    store::s3::{S3Config, S3Store},
    BlobStore,
};

use crate::{
    common::Server,
    media::{big_round_trip, download, download_uri, media_path, pattern, round_trips, upload},
};

struct S3Env {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

fn s3_env() -> Option<S3Env> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("MOSS_TEST_S3_ENDPOINT"),
        get("MOSS_TEST_S3_BUCKET"),
        get("MOSS_TEST_S3_KEY_ID"),
        get("MOSS_TEST_S3_SECRET"),
    ) {
        (Some(endpoint), Some(bucket), Some(key_id), Some(secret)) => Some(S3Env {
            endpoint,
            region: get("MOSS_TEST_S3_REGION").unwrap_or_else(|| "garage".into()),
            bucket,
            key_id,
            secret,
        }),
        _ => {
            assert!(
                std::env::var("MOSS_REQUIRE_S3").is_err(),
                "MOSS_REQUIRE_S3 is set but no MOSS_TEST_S3_* endpoint is configured"
            );
            eprintln!("skipping: no S3 endpoint (run scripts/test, which starts Garage)");
            None
        }
    }
}

fn prefix() -> String {
    format!(
        "t{}-",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000
    )
}

fn raw_store(env: &S3Env, prefix: &str) -> S3Store {
    raw_store_reading(env, prefix, 1 << 20, 64 << 20)
}

/// A store reading in `segment`-byte GETs (3 per reader) within `memory` bytes of read-ahead.
fn raw_store_reading(env: &S3Env, prefix: &str, segment: u64, memory: u64) -> S3Store {
    S3Store::new(S3Config {
        endpoint: env.endpoint.clone(),
        region: env.region.clone(),
        bucket: env.bucket.clone(),
        access_key_id: env.key_id.clone(),
        secret_access_key: env.secret.clone(),
        path_style: true,
        prefix: prefix.to_owned(),
        part_size: 5 * 1024 * 1024,
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        read_segment: segment,
        read_ahead: 3,
        read_ahead_memory: memory,
    })
    .unwrap()
}

/// Settings for moss on the test bucket (objects under `prefix`), open registration, no limits.
fn s3_vars(env: &S3Env, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MOSS_REGISTRATION", "open".to_owned()),
        ("MOSS_RATE_LIMITS__ENABLED", "false".to_owned()),
        ("MOSS_MEDIA__STORE", "s3".to_owned()),
        ("MOSS_MEDIA__S3__ENDPOINT", env.endpoint.clone()),
        ("MOSS_MEDIA__S3__REGION", env.region.clone()),
        ("MOSS_MEDIA__S3__BUCKET", env.bucket.clone()),
        ("MOSS_MEDIA__S3__ACCESS_KEY_ID", env.key_id.clone()),
        ("MOSS_MEDIA__S3__SECRET_ACCESS_KEY", env.secret.clone()),
        ("MOSS_MEDIA__S3__PREFIX", format!("\"{prefix}\"")),
    ]
}

async fn start(env: &S3Env, prefix: &str, encrypted: bool) -> Server {
    let mut vars = s3_vars(env, prefix);
    vars.extend([
        // Small parts so the 5 MiB upload exercises multipart.
        ("MOSS_MEDIA__S3__PART_SIZE", (5 * 1024 * 1024).to_string()),
        ("MOSS_MEDIA__MAX_UPLOAD_SIZE", (1u64 << 30).to_string()),
    ]);
    if encrypted {
        vars.push(("MOSS_MEDIA__ENCRYPTION__ENABLED", "true".to_owned()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(&vars).await
}

async fn raw_objects(store: &S3Store) -> Vec<(String, Vec<u8>)> {
    let keys: Vec<String> = store.list().map(|k| k.unwrap()).collect().await;
    let mut out = Vec::new();
    for k in keys {
        let bytes = moss_media::store::read_all(store.get(&k, None).await.unwrap()).await.unwrap();
        out.push((k, bytes));
    }
    out
}

#[tokio::test]
async fn media_round_trips_through_s3() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    // With metrics on: every request to the bucket is counted, and answered.
    let metrics_port = crate::common::free_port();
    let mut vars = s3_vars(&env, &p);
    vars.push(("MOSS_METRICS__BIND", format!("127.0.0.1:{metrics_port}")));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with(&vars).await;
    round_trips(&s).await;
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
    let count = |outcome: &str| -> f64 {
        let want = format!("moss_media_s3_requests_total{{outcome=\"{outcome}\"}} ");
        text.lines().filter_map(|l| l.strip_prefix(want.as_str())?.parse::<f64>().ok()).sum()
    };
    assert!(count("answered") >= 3.0, "the three uploads reached the bucket: {text}");
    assert_eq!(count("transport") + count("server_error") + count("throttled"), 0.0, "{text}");
    let objects: Vec<_> =
        raw_objects(&raw_store(&env, &p)).await.into_iter().filter(|(k, _)| k.starts_with("c-")).collect();
    assert_eq!(
        objects.len(),
        3,
        "one object per distinct upload: {:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert!(objects.iter().all(|(k, _)| k.starts_with("c-") && !k.contains('/')), "flat keyed-hash names");
}

#[tokio::test]
async fn reads_are_cut_into_concurrent_ranged_gets_that_join_exactly() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    const SEG: u64 = 1 << 20;
    let len = 3 * SEG + 5;
    // No period: a segment joined at the wrong offset cannot match by chance.
    let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect();
    let writer = raw_store(&env, &p);
    writer.put("obj", len, moss_media::store::once(data.clone())).await.unwrap();
    writer.put("empty", 0, moss_media::store::once(Vec::new())).await.unwrap();
    let ranges =
        [(0, 1), (SEG - 1, SEG + 1), (SEG, 2 * SEG), (5, 3 * SEG + 4), (2 * SEG - 3, len), (len - 1, len), (0, len)];
    // With read-ahead memory, and with none at all (every segment read at the reader's pace).
    for memory in [64 << 20, 0] {
        let store = raw_store_reading(&env, &p, SEG, memory);
        let whole = moss_media::store::read_all(store.get("obj", None).await.unwrap()).await.unwrap();
        assert!(whole == data, "whole object, read-ahead memory {memory}");
        for (a, b) in ranges {
            let r = moss_media::store::Range { start: a, end: b };
            let got = moss_media::store::read_all(store.get("obj", Some(r)).await.unwrap()).await.unwrap();
            assert!(got == data[a as usize..b as usize], "range {a}..{b}, read-ahead memory {memory}");
        }
        let empty = moss_media::store::read_all(store.get("empty", None).await.unwrap()).await.unwrap();
        assert!(empty.is_empty());
        assert!(matches!(store.get("missing", None).await, Err(moss_media::MediaError::NotFound)));
        let past = moss_media::store::Range { start: 2, end: len + 1 };
        assert!(matches!(store.get("obj", Some(past)).await, Err(moss_media::MediaError::BadRange)));
        // Past the end altogether: the store's own 416 is a bad range too.
        let beyond = moss_media::store::Range { start: len + 10, end: len + 20 };
        let res = store.get("obj", Some(beyond)).await;
        assert!(matches!(res, Err(moss_media::MediaError::BadRange)), "{:?}", res.err());
    }

    // A reader that goes away mid-object gives its read-ahead memory back.
    let store = raw_store_reading(&env, &p, SEG, 2 * SEG);
    assert_eq!(store.read_ahead_free(), 2 * SEG);
    let mut body = store.get("obj", None).await.unwrap();
    body.next().await.unwrap().unwrap();
    assert!(store.read_ahead_free() < 2 * SEG, "segments after the first are read ahead");
    drop(body);
    assert_eq!(store.read_ahead_free(), 2 * SEG);
}

#[tokio::test]
async fn encrypted_media_on_s3_leaves_no_plaintext_in_the_bucket() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let s = start(&env, &p, true).await;
    round_trips(&s).await;
    let a = s.register("marker").await;
    let marker = b"MOSS-S3-PLAINTEXT-MARKER ".repeat(4000);
    let (st, v) = upload(&s, &a, marker.clone(), "text/plain", Some("secret-name.txt")).await;
    assert_eq!(st, 200, "{v}");
    // The same file again: deduplicated, still one data object.
    let (_, v2) = upload(&s, &a, marker.clone(), "text/plain", None).await;
    let res = download_uri(&s, Some(&a), v2["content_uri"].as_str().unwrap()).await;
    assert_eq!(res.bytes().await.unwrap().to_vec(), marker);

    let objects = raw_objects(&raw_store(&env, &p)).await;
    let data_objects = objects.iter().filter(|(k, _)| k.starts_with("c-") && !k.ends_with(".k")).count();
    assert_eq!(data_objects, 4, "3 round-trip sizes + 1 marker, deduplicated");
    for (k, bytes) in &objects {
        for needle in [&b"MOSS-S3-PLAINTEXT-MARKER"[..], b"secret-name"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "plaintext in object {k}");
        }
    }
}

#[tokio::test]
async fn an_unreachable_s3_fails_uploads_fast_and_cleanly() {
    let Some(env) = s3_env() else { return };
    // A port nothing listens on stands in for a store that is down.
    let dead = S3Env { endpoint: "http://127.0.0.1:9".into(), ..env };
    let s = start(&dead, "dead-", false).await;
    let a = s.register("alice").await;
    let started = std::time::Instant::now();
    let (st, v) = upload(&s, &a, pattern(1000), "application/octet-stream", None).await;
    assert_eq!(st, 502, "{v}");
    assert_eq!(v["errcode"], "M_UNKNOWN");
    assert!(v["error"].as_str().unwrap().contains("unavailable"), "{v}");
    // The store's endpoint and object names stay in the log (with the id the client sees).
    let text = v["error"].as_str().unwrap();
    assert!(!text.contains("127.0.0.1") && !text.contains("c-") && !text.contains("dead-"), "{v}");
    let id = text.rsplit("id ").next().unwrap().trim_end_matches(')');
    assert!(s.log().contains(id) && s.log().contains("127.0.0.1:9"), "the log has the detail under {id}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(std::fs::read_dir(s.data_dir().join("tmp")).unwrap().count(), 0);
}

/// A Garage of the test's own, on other ports, so stopping it disturbs no other test.
struct OwnGarage {
    dir: std::path::PathBuf,
    env: S3Env,
    pid: u32,
}

impl OwnGarage {
    fn start() -> OwnGarage {
        let dir = std::env::temp_dir().join(format!("moss-garage-{}", std::process::id()));
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/garage-start.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(&dir)
            .env("GARAGE_S3_PORT", "3910")
            .env("GARAGE_RPC_PORT", "3911")
            .output()
            .unwrap();
        assert!(out.status.success(), "garage-start: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(dir.join("env")).unwrap();
        let var = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("export {k}="))).unwrap().to_owned();
        let env = S3Env {
            endpoint: var("MOSS_TEST_S3_ENDPOINT"),
            region: var("MOSS_TEST_S3_REGION"),
            bucket: var("MOSS_TEST_S3_BUCKET"),
            key_id: var("MOSS_TEST_S3_KEY_ID"),
            secret: var("MOSS_TEST_S3_SECRET"),
        };
        let pid = std::fs::read_to_string(dir.join("garage.pid")).unwrap().trim().parse().unwrap();
        OwnGarage { dir, env, pid }
    }

    fn stop(&self) {
        let _ = std::process::Command::new("kill").arg("-9").arg(self.pid.to_string()).status();
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Starts the same node again on its existing data.
    async fn restart(&mut self) {
        let garage = format!("{}/.cargo/bin/garage", std::env::var("HOME").unwrap());
        let garage = std::env::var("CARGO_HOME").map(|h| format!("{h}/bin/garage")).unwrap_or(garage);
        let log = std::fs::File::create(self.dir.join("garage-restart.log")).unwrap();
        let child = std::process::Command::new(garage)
            .arg("server")
            .env("GARAGE_CONFIG_FILE", self.dir.join("garage.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pid = child.id();
        std::mem::forget(child);
        let store = raw_store(&self.env, "probe-");
        for _ in 0..100 {
            if store.head("nothing").await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("garage did not come back");
    }
}

impl Drop for OwnGarage {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn cached_media_is_served_while_s3_is_down_and_everything_recovers() {
    let Some(_) = s3_env() else { return };
    let mut garage = OwnGarage::start();
    let env = &garage.env;
    let mut vars = s3_vars(env, "");
    vars.extend([
        ("MOSS_MEDIA__S3__REQUEST_TIMEOUT_MS", "3000".to_owned()),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true".to_owned()),
        ("MOSS_MEDIA__CACHE__ENABLED", "true".to_owned()),
        ("MOSS_MEDIA__CACHE__MAX_SIZE", "100000".to_owned()),
    ]);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with(&vars).await;
    let a = s.register("alice").await;
    let small = pattern(10_000);
    let big = pattern(300_000);
    let (_, v) = upload(&s, &a, small.clone(), "application/octet-stream", None).await;
    let small_path = format!("/_matrix/client/v1/media/download/{}", media_path(v["content_uri"].as_str().unwrap()));
    let (_, v) = upload(&s, &a, big.clone(), "application/octet-stream", None).await;
    let big_path = format!("/_matrix/client/v1/media/download/{}", media_path(v["content_uri"].as_str().unwrap()));

    garage.stop();
    let res = download(&s, Some(&a), &small_path, None).await;
    assert_eq!(res.status(), 200, "cached media must still be served");
    assert_eq!(res.bytes().await.unwrap().to_vec(), small);
    let started = std::time::Instant::now();
    let res = download(&s, Some(&a), &big_path, None).await;
    assert_eq!(res.status(), 502, "media too large for the cache needs the store");
    let (st, v) = upload(&s, &a, pattern(5000), "application/octet-stream", None).await;
    assert_eq!(st, 502, "{v}");
    assert!(started.elapsed() < Duration::from_secs(20), "failures must be fast: {:?}", started.elapsed());

    garage.restart().await;
    let res = download(&s, Some(&a), &big_path, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().to_vec(), big);
    let (st, v) = upload(&s, &a, pattern(5000), "application/octet-stream", None).await;
    assert_eq!(st, 200, "uploads work again once the store is back: {v}");
}

#[tokio::test]
async fn media_check_diagnoses_a_real_store() {
    let Some(env) = s3_env() else { return };
    let run = |bucket: &str, secret: &str| {
        let out = std::process::Command::new(crate::common::moss_bin())
            .args(["media", "check", "--size", "200000"])
            .current_dir(std::env::temp_dir())
            .env("MOSS_DATA_DIR", std::env::temp_dir().join(format!("moss-check-{}", std::process::id())))
            .env("MOSS_MEDIA__STORE", "s3")
            .env("MOSS_MEDIA__S3__ENDPOINT", &env.endpoint)
            .env("MOSS_MEDIA__S3__REGION", &env.region)
            .env("MOSS_MEDIA__S3__BUCKET", bucket)
            .env("MOSS_MEDIA__S3__ACCESS_KEY_ID", &env.key_id)
            .env("MOSS_MEDIA__S3__SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = run(&env.bucket, &env.secret);
    assert!(ok, "{out}");
    assert_eq!(out.matches("  ok  ").count(), 4, "{out}");
    let (ok, out) = run(&env.bucket, "wrong-secret");
    assert!(!ok);
    assert!(out.contains("secret is wrong"), "{out}");
    let (ok, out) = run("no-such-bucket", &env.secret);
    assert!(!ok);
    assert!(out.contains("bucket does not exist"), "{out}");
}

#[tokio::test]
async fn a_local_mirror_serves_what_the_bucket_lost() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let mut vars = s3_vars(&env, &p);
    vars.extend([
        ("MOSS_MEDIA__MIRROR__ENABLED", "true".to_owned()),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true".to_owned()),
    ]);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with(&vars).await;
    let a = s.register("alice").await;
    let data = pattern(250_000);
    let (st, v) = upload(&s, &a, data.clone(), "application/octet-stream", None).await;
    assert_eq!(st, 200, "{v}");
    let path = format!("/_matrix/client/v1/media/download/{}", media_path(v["content_uri"].as_str().unwrap()));
    // Both copies exist (the record follows the answer); then the bucket loses everything.
    let raw = raw_store(&env, &p);
    let listed = || async { raw.list().map(|k| k.unwrap()).collect::<Vec<String>>().await };
    eventually("the record stored", || async { listed().await.len() >= 2 }).await;
    let keys = listed().await;
    assert_eq!(keys.len(), 2, "content and metadata, each with its key in front, in the bucket: {keys:?}");
    for k in keys {
        raw.delete(&k).await.unwrap();
    }
    let res = download(&s, Some(&a), &path, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().to_vec(), data);
}

#[tokio::test]
async fn a_200_mib_upload_streams_through_encrypted_s3_with_flat_memory() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let s = start(&env, &p, true).await;
    let a = s.register("alice").await;
    // With its length declared, as clients send files: streamed to the store as it arrives.
    let growth = big_round_trip(&s, &a, 200 << 20, true).await;
    assert!(growth < 64 << 20, "peak memory grew by {} MiB", growth >> 20);
    let objects: Vec<String> = raw_store(&env, &p).list().map(|k| k.unwrap()).collect().await;
    assert_eq!(objects.iter().filter(|k| k.starts_with("c-")).count(), 2, "one data object and its key: {objects:?}");
}

#[tokio::test]
async fn migrating_1000_files_from_disk_to_s3_while_they_are_downloaded() {
    let Some(env) = s3_env() else { return };
    let s = Server::start().await;
    let a = s.register("alice").await;
    let mut files = Vec::new();
    for i in 0..1000u32 {
        let data = format!("file {i} ").repeat(50 + (i % 7) as usize).into_bytes();
        let (st, v) = upload(&s, &a, data.clone(), "text/plain", None).await;
        assert_eq!(st, 200);
        files.push((
            format!("/_matrix/client/v1/media/download/{}", media_path(v["content_uri"].as_str().unwrap())),
            data,
        ));
    }
    // Each upload's metadata record follows its answer: all of them on disk before the restart.
    let media_dir = s.data_dir().join("media");
    eventually("every record written", || async { crate::media::stored_records(&media_dir).len() == 1000 }).await;
    let p = prefix();
    let mut vars = s3_vars(&env, &p);
    vars.extend([
        ("MOSS_MEDIA__STORES__OLD__STORE", "fs".to_owned()),
        ("MOSS_MEDIA__STORES__OLD__PATH", "media".to_owned()),
        ("MOSS_MEDIA__MIGRATE_FROM", "old".to_owned()),
    ]);
    let env_refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = s.restart_with(&env_refs).await;
    let a = crate::common::User { token: s.login("alice").await, ..a };

    // A client reads everything, over and over, while the migration runs.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (done, base, token, files) = (done.clone(), s.base.clone(), a.token.clone(), files.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut bad) = (0u64, Vec::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for (path, data) in files.iter().step_by(7) {
                    let res = http.get(format!("{base}{path}")).bearer_auth(&token).send().await.unwrap();
                    let st = res.status().as_u16();
                    if st == 200 && res.bytes().await.unwrap().as_ref() == data.as_slice() {
                        ok += 1;
                    } else {
                        bad.push(format!("{path}: {st}"));
                    }
                }
            }
            (ok, bad)
        })
    };
    let mut cmd = std::process::Command::new(crate::common::moss_bin());
    cmd.args(["media", "migrate", "--from", "old", "--delete-source", "--parallel", "8"])
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()));
    for (k, v) in &vars {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, bad) = reader.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("2000 object(s): 2000 copied"), "1000 contents + 1000 records: {stdout}");
    assert!(bad.is_empty(), "downloads failed during the migration: {:?}", &bad[..bad.len().min(5)]);
    assert!(ok > 0);
    let left_on_disk = std::fs::read_dir(s.data_dir().join("media"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| std::fs::read_dir(e.path()).unwrap().count())
        .sum::<usize>();
    assert_eq!(left_on_disk, 0, "--delete-source empties the old store");

    // Migration over: no more read-through, everything comes from S3.
    let env_refs: Vec<(&str, &str)> = env_refs.into_iter().filter(|(k, _)| *k != "MOSS_MEDIA__MIGRATE_FROM").collect();
    let s = s.restart_with(&env_refs).await;
    let a = crate::common::User { token: s.login("alice").await, ..a };
    for (path, data) in files.iter().step_by(13) {
        let res = download(&s, Some(&a), path, None).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.bytes().await.unwrap().as_ref(), data.as_slice());
    }
}

/// Starts moss on the test bucket with `extra` settings.
async fn start_with_vars(env: &S3Env, prefix: &str, extra: &[(&'static str, &str)]) -> Server {
    let mut vars = s3_vars(env, prefix);
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(&vars).await
}

#[tokio::test]
async fn downloads_redirect_to_short_lived_store_links_when_asked() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let s = start_with_vars(&env, &p, &[("MOSS_MEDIA__S3__REDIRECT_DOWNLOADS", "true")]).await;
    let alice = s.register("alice").await;
    let page = b"<script>alert(1)</script>".to_vec();
    let (st, v) = upload(&s, &alice, page.clone(), "text/html", Some("page.html")).await;
    assert_eq!(st, 200, "{v}");
    let id = v["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = format!("{}/_matrix/client/v1/media/download/localhost/{id}", s.base);
    let res = no_follow.get(&url).bearer_auth(&alice.token).send().await.unwrap();
    assert_eq!(res.status(), 307);
    assert_eq!(res.headers()["cache-control"], "private, no-store");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&env.endpoint) && location.contains("X-Amz-Signature="), "{location}");
    assert!(no_follow.get(&url).send().await.unwrap().status() == 401, "the redirect is for authenticated users");

    // The store answers the link with moss's own type, disposition and caching.
    let res = reqwest::get(&location).await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html");
    assert_eq!(h["content-disposition"], "attachment; filename=\"page.html\"; filename*=utf-8''page.html");
    assert_eq!(h["cache-control"], "private, max-age=31536000, immutable");
    assert_eq!(res.bytes().await.unwrap().to_vec(), page);
    // A client that follows redirects (and sends its range along) gets the bytes.
    let res =
        reqwest::Client::new().get(&url).bearer_auth(&alice.token).header("range", "bytes=0-7").send().await.unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().to_vec(), page[..8].to_vec());
    drop(s);

    // Through a CDN: links point at its public name, path and signature unchanged.
    let s = start_with_vars(
        &env,
        &p,
        &[("MOSS_MEDIA__S3__REDIRECT_DOWNLOADS", "true"), ("MOSS_MEDIA__S3__PUBLIC_URL", "https://cdn.example.org/")],
    )
    .await;
    let alice = s.register("alice").await;
    let (_, v) = upload(&s, &alice, page.clone(), "text/html", Some("page.html")).await;
    let id = v["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let res = no_follow
        .get(format!("{}/_matrix/client/v1/media/download/localhost/{id}", s.base))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let cdn = res.headers()["location"].to_str().unwrap().to_owned();
    let object_path = format!("https://cdn.example.org/{}/{p}c-", env.bucket);
    assert!(cdn.starts_with(&object_path) && cdn.contains("X-Amz-Signature="), "{cdn}");
    drop(s);

    // An encrypted store cannot hand out its objects: moss refuses to start, and says why.
    let dir = std::env::temp_dir().join(format!("moss-redirect-{}", crate::common::free_port()));
    let mut vars = s3_vars(&env, &p);
    vars.extend([
        ("MOSS_MEDIA__S3__REDIRECT_DOWNLOADS", "true".to_owned()),
        ("MOSS_MEDIA__ENCRYPTION__ENABLED", "true".to_owned()),
        ("MOSS_DATA_DIR", dir.display().to_string()),
        ("MOSS_HTTP__BIND", format!("127.0.0.1:{}", crate::common::free_port())),
    ]);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::common::moss_bin()).arg("serve").envs(vars).output()
        }),
    )
    .await
    .expect("moss exits")
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("redirect_downloads cannot be used with media.encryption.enabled"), "{stderr}");
}

/// A TCP relay in front of the store that counts the bytes sent to it, and can break
/// connections: the one carrying the byte at `cut.at`, then (`cut.left` more times) the one
/// carrying the byte `cut.every` bytes later.
struct Relay {
    endpoint: String,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::Mutex<Cut>>,
    swallow: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// With [`Swallow::RequestsFor`]: what the request line contains.
    matching: std::sync::Arc<std::sync::Mutex<String>>,
}

/// What a relay drops instead of passing on ([`Relay::swallow`]).
#[derive(Clone, Copy)]
enum Swallow {
    Nothing = 0,
    /// Requests: the store never hears of them.
    Requests = 1,
    /// Answers: the store does the work, its client never hears back.
    Answers = 2,
    /// Requests whose request line contains [`Relay::swallow_requests_for`]'s text, and
    /// whatever follows them on their connection.
    RequestsFor = 3,
}

struct Cut {
    at: u64,
    every: u64,
    left: u32,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        use std::sync::{atomic::AtomicU64, Arc};
        let target = target.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(std::sync::Mutex::new(Cut { at: u64::MAX, every: 0, left: 0 }));
        let swallow = Arc::new(std::sync::atomic::AtomicU8::new(Swallow::Nothing as u8));
        let matching = Arc::new(std::sync::Mutex::new(String::new()));
        let (s, c, w, m) = (sent.clone(), cut.clone(), swallow.clone(), matching.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (s, c, w, m) = (s.clone(), c.clone(), w.clone(), m.clone());
                tokio::spawn(async move { relay(inbound, outbound, s, c, w, m).await });
            }
        });
        Relay { endpoint, sent, cut, swallow, matching }
    }

    /// From now on, drops the requests whose request line contains `text`.
    fn swallow_requests_for(&self, text: &str) {
        *self.matching.lock().unwrap() = text.to_owned();
        self.swallow(Swallow::RequestsFor);
    }

    /// From now on, drops what `what` says instead of passing it on (connections stay open).
    fn swallow(&self, what: Swallow) {
        self.swallow.store(what as u8, std::sync::atomic::Ordering::SeqCst);
    }

    fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Breaks the connection that carries the byte `n` bytes from now, and then `times - 1`
    /// more, each `n` bytes after the last break.
    fn cut_after(&self, n: u64, times: u32) {
        *self.cut.lock().unwrap() = Cut { at: self.sent() + n, every: n, left: times - 1 };
    }
}

async fn relay(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::Mutex<Cut>>,
    swallow: std::sync::Arc<std::sync::atomic::AtomicU8>,
    matching: std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = outbound.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut swallowing = false;
        loop {
            let n = match in_r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if swallow.load(Ordering::SeqCst) == Swallow::Requests as u8 {
                continue;
            }
            if !swallowing && swallow.load(Ordering::SeqCst) == Swallow::RequestsFor as u8 {
                let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
                let text = matching.lock().unwrap().clone();
                swallowing = String::from_utf8_lossy(line).contains(&text);
            }
            if swallowing {
                continue;
            }
            let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            {
                let mut c = cut.lock().unwrap();
                if total >= c.at {
                    c.at = if c.left > 0 { total + c.every } else { u64::MAX };
                    c.left = c.left.saturating_sub(1);
                    return; // both halves dropped with this task: the connection breaks
                }
            }
            if out_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match out_r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if swallow.load(Ordering::SeqCst) == Swallow::Answers as u8 {
                continue;
            }
            if in_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}

/// Uploads `data`, declaring its length, in two halves with `between` run after the first.
async fn upload_in_halves<F: std::future::Future<Output = ()>>(
    s: &Server,
    u: &crate::common::User,
    data: &[u8],
    between: F,
) -> String {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let request = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&u.token)
        .header("content-type", "application/octet-stream")
        .header("content-length", data.len())
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let half = data.len() / 2;
    let feed = async {
        for c in data[..half].chunks(64 * 1024) {
            tx.send(Ok(c.to_vec())).await.unwrap();
        }
        between.await;
        for c in data[half..].chunks(64 * 1024) {
            tx.send(Ok(c.to_vec())).await.unwrap();
        }
    };
    let (res, ()) = tokio::join!(request, feed);
    let res = res.unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    v["content_uri"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_large_upload_reaches_s3_while_it_still_arrives_and_is_kept_once() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let relay = Relay::start(&env.endpoint).await;
    let via_relay = S3Env { endpoint: relay.endpoint.clone(), ..s3_env().unwrap() };
    let s = start(&via_relay, &p, false).await;
    let a = s.register("alice").await;
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();

    // Half the body sent: most of it is in the store's hands before the rest arrives.
    let before = relay.sent();
    let first = upload_in_halves(&s, &a, &data, async {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while relay.sent() < before + (2 << 20) {
            assert!(
                std::time::Instant::now() < deadline,
                "the store got {} bytes of the first half",
                relay.sent() - before
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // The store's connection breaks mid-object: the upload is sent again from moss's copy, and
    // when that breaks too, once more.
    let other: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let second = upload_in_halves(&s, &a, &other, async {
        relay.cut_after(1 << 20, 2);
    })
    .await;
    assert!(s.log().contains("sending it again"), "the first PUT broke and was retried");

    // The same content again: the new object is dropped and the stored one shared.
    let third = upload_in_halves(&s, &a, &data, async {}).await;
    for (uri, want) in [(&first, &data), (&second, &other), (&third, &data)] {
        let res = download_uri(&s, Some(&a), uri).await;
        assert_eq!(res.status(), 200);
        assert!(res.bytes().await.unwrap().as_ref() == want.as_slice(), "{uri} downloads as uploaded");
    }
    let store = raw_store(&env, &p);
    let mut sizes = Vec::new();
    for k in store.list().map(|k| k.unwrap()).collect::<Vec<_>>().await {
        if k.starts_with("c-") {
            sizes.push(store.head(&k).await.unwrap().unwrap().size);
        }
    }
    assert_eq!(sizes, vec![6 << 20; 2], "two distinct contents, each kept once");
    assert_eq!(std::fs::read_dir(s.data_dir().join("tmp")).unwrap().count(), 0, "the spool is empty");

    // The store alone restores all three: records written before the hash was known (it is
    // computed on the way) and the one that names the content kept before.
    let out = s.dir.join("restored");
    let res = std::process::Command::new(crate::common::moss_bin())
        .args(["media", "decrypt", "--out"])
        .arg(&out)
        .env("MOSS_DATA_DIR", s.dir.join("restore-data"))
        .envs(s3_vars(&env, &p))
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    for (uri, want) in [(&first, &data), (&second, &other), (&third, &data)] {
        let dir = out.join(media_path(uri));
        assert!(std::fs::read(dir.join("content")).unwrap() == *want, "{uri} restored");
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        use sha2::Digest;
        assert_eq!(meta["sha256"], hex::encode(sha2::Sha256::digest(want)), "{uri}");
    }
}

#[tokio::test]
async fn objects_beyond_one_put_are_multipart_uploads_that_join_exactly() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    // 5 MiB parts (S3's smallest) for anything past 6 MiB: a 12 MiB object is three parts.
    let store = raw_store(&env, &p).with_single_put_max(6 << 20);
    let data: Vec<u8> = (0..12u32 << 20).map(|i| (i.wrapping_mul(2246822519) >> 11) as u8).collect();
    let chunks: Vec<std::io::Result<bytes::Bytes>> =
        data.chunks(100_000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    store.put("multi", data.len() as u64, Box::pin(futures_util::stream::iter(chunks))).await.unwrap();
    let file = std::env::temp_dir().join(format!("moss-multipart-{}", std::process::id()));
    std::fs::write(&file, &data[..7 << 20]).unwrap();
    store.put_file("multi-file", 7 << 20, &file).await.unwrap();
    std::fs::remove_file(&file).unwrap();
    let got = moss_media::store::read_all(store.get("multi", None).await.unwrap()).await.unwrap();
    assert!(got == data, "the parts join to the object");
    let got = moss_media::store::read_all(store.get("multi-file", None).await.unwrap()).await.unwrap();
    assert!(got == data[..7 << 20], "the file's parts join to the object");
    // A stream shorter than declared leaves no object.
    let short = futures_util::stream::iter(vec![Ok(bytes::Bytes::from(vec![1u8; 7 << 20]))]);
    assert!(store.put("short", 8 << 20, Box::pin(short)).await.is_err());
    let short = futures_util::stream::iter(vec![Ok(bytes::Bytes::from(vec![1u8; 3 << 20]))]);
    assert!(store.put("short-single", 4 << 20, Box::pin(short)).await.is_err());
    assert_eq!(store.head("short").await.unwrap(), None);
    assert_eq!(store.head("short-single").await.unwrap(), None);
    for k in ["multi", "multi-file"] {
        store.delete(k).await.unwrap();
    }
}

#[tokio::test]
async fn a_new_encrypted_upload_costs_one_round_trip_and_a_repeated_one_rewrites_nothing() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let metrics_port = crate::common::free_port();
    let mut vars = s3_vars(&env, &p);
    vars.push(("MOSS_METRICS__BIND", format!("127.0.0.1:{metrics_port}")));
    vars.push(("MOSS_MEDIA__ENCRYPTION__ENABLED", "true".to_owned()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with(&vars).await;
    let a = s.register("alice").await;
    let requests = || async {
        let text =
            reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
        let want = "moss_media_s3_requests_total{outcome=\"answered\"} ";
        text.lines().filter_map(|l| l.strip_prefix(want)?.parse::<f64>().ok()).sum::<f64>()
    };
    let data = pattern(4096);
    let before = requests().await;
    let (st, v) = upload(&s, &a, data.clone(), "application/octet-stream", None).await;
    assert_eq!(st, 200, "{v}");
    // The data and then, after the answer, the metadata record, each with its wrapped key in
    // front: two PUTs, no question to the store first (the database knows the content is new).
    eventually("the record stored", || async { requests().await - before >= 2.0 }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(requests().await - before, 2.0, "requests for a new upload");
    let objects = raw_objects(&raw_store(&env, &p)).await;

    // The same bytes again: the stored object is kept as it is (not sealed anew under readers).
    let (st, v) = upload(&s, &a, data.clone(), "application/octet-stream", None).await;
    assert_eq!(st, 200, "{v}");
    let after = raw_objects(&raw_store(&env, &p)).await;
    let content = |objs: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        objs.iter().filter(|(k, _)| k.starts_with("c-")).cloned().collect()
    };
    assert!(content(&after) == content(&objects), "the content objects are untouched");
    let res = download_uri(&s, Some(&a), v["content_uri"].as_str().unwrap()).await;
    assert_eq!(res.bytes().await.unwrap().to_vec(), data);

    // A process that has never seen the object reads it with one GET: its key is in front.
    let s = s.restart().await;
    let a = crate::common::User { token: s.login("alice").await, ..a };
    let before = requests().await;
    let res = download_uri(&s, Some(&a), v["content_uri"].as_str().unwrap()).await;
    assert_eq!(res.bytes().await.unwrap().to_vec(), data);
    assert_eq!(requests().await - before, 1.0, "requests for a download after a restart");
}

/// Waits up to 10 s for `check` to hold.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// nginx with TLS on a free port in front of `upstream` (plain HTTP), with a certificate for
/// 127.0.0.1 from a CA of its own: `ca.pem` in `dir`. None (the test skips) without nginx or
/// openssl, unless `MOSS_REQUIRE_NGINX` is set (CI).
struct TlsFront {
    child: std::process::Child,
    endpoint: String,
    ca: std::path::PathBuf,
}

impl TlsFront {
    fn start(dir: &std::path::Path, upstream: &str) -> Option<TlsFront> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
        let openssl = std::process::Command::new("openssl").arg("version").output().is_ok();
        let (Some(nginx), true) = (nginx, openssl) else {
            assert!(
                std::env::var("MOSS_REQUIRE_NGINX").is_err(),
                "MOSS_REQUIRE_NGINX is set but nginx or openssl is missing"
            );
            eprintln!("skipping: no nginx or openssl");
            return None;
        };
        std::fs::create_dir_all(dir).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=moss test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let port = crate::common::free_port();
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
        let d = dir.display();
        // As root, workers would run as nobody and could not read the test's private files
        // (not root, nginx ignores the directive).
        let user = "user root;";
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "daemon off; {user} pid {d}/nginx.pid; error_log {d}/error.log warn; events {{ worker_connections 64; }}
                 http {{ access_log off; client_max_body_size 0;
                   server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;
                     location / {{ proxy_pass http://{upstream}; proxy_set_header Host $http_host;
                                  proxy_request_buffering off; proxy_http_version 1.1; }} }} }}"
            ),
        )
        .unwrap();
        let child = std::process::Command::new(nginx)
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(TlsFront { child, endpoint: format!("https://127.0.0.1:{port}"), ca: dir.join("ca.pem") })
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn uploads_stream_to_an_https_store() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let dir = std::env::temp_dir().join(format!("moss-tls-front-{}-{p}", std::process::id()));
    let Some(front) = TlsFront::start(&dir, &env.endpoint) else { return };
    let via_tls = S3Env { endpoint: front.endpoint.clone(), ..s3_env().unwrap() };
    let mut vars = s3_vars(&via_tls, &p);
    // The store's certificate comes from the test's own CA.
    vars.push(("SSL_CERT_FILE", front.ca.display().to_string()));
    vars.push(("MOSS_MEDIA__ENCRYPTION__ENABLED", "true".to_owned()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with(&vars).await;
    let a = s.register("alice").await;
    for size in [4096usize, 3 << 20] {
        let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
        let (st, v) = upload(&s, &a, data.clone(), "application/octet-stream", None).await;
        assert_eq!(st, 200, "{v}");
        let res = download_uri(&s, Some(&a), v["content_uri"].as_str().unwrap()).await;
        assert_eq!(res.status(), 200);
        assert!(res.bytes().await.unwrap().as_ref() == data.as_slice(), "{size} bytes round trip");
    }
    // The large one went as one streamed PUT over TLS, not again from the spool.
    assert!(!s.log().contains("sending it again"), "{}", s.log());
    let objects: Vec<String> = raw_store(&env, &p).list().map(|k| k.unwrap()).collect().await;
    assert_eq!(objects.iter().filter(|k| k.starts_with("c-") && !k.ends_with(".k")).count(), 2, "{objects:?}");
    drop(front);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Uploads `data` (a small file: the fast path) on a task of its own, for a test that does not
/// wait for the answer.
fn upload_detached(s: &Server, u: &crate::common::User, data: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let request = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&u.token)
        .header("content-type", "application/octet-stream")
        .body(data)
        .send();
    tokio::spawn(async move {
        let _ = request.await;
    })
}

/// The media ids the admin API lists for a user.
async fn listed_media(s: &Server, admin: &crate::common::User, user: &crate::common::User) -> Vec<String> {
    let path = format!("/_synapse/admin/v1/users/{}/media", crate::common::enc(&user.id));
    let (st, v) = s.get(&path, admin).await;
    assert_eq!(st, 200, "{v}");
    v["media"].as_array().unwrap().iter().map(|m| m["media_id"].as_str().unwrap().to_owned()).collect()
}

/// Waits until `user` has `n` media listed.
async fn until_listed(s: &Server, admin: &crate::common::User, user: &crate::common::User, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids = listed_media(s, admin, user).await;
        if ids.len() == n {
            return ids;
        }
        assert!(std::time::Instant::now() < deadline, "{} media listed, waited for {n}", ids.len());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_small_upload_is_recorded_while_it_is_stored_and_a_crash_in_between_is_reconciled() {
    let Some(env) = s3_env() else { return };
    let p = prefix();
    let relay = Relay::start(&env.endpoint).await;
    let via_relay = S3Env { endpoint: relay.endpoint.clone(), ..s3_env().unwrap() };
    let s = start(&via_relay, &p, false).await;
    let postgres = s.dir.join("postgres-url").exists();
    let ops = crate::admin::admin(&s, "ops").await;
    let a = s.register("alice").await;
    let file = |seed: u8| -> Vec<u8> { (0..4096u32).map(|i| (i as u8).wrapping_mul(seed)).collect() };
    let (st, v) = upload(&s, &a, file(3), "application/octet-stream", None).await;
    assert_eq!(st, 200, "{v}");
    let first = v["content_uri"].as_str().unwrap().to_owned();
    until_listed(&s, &ops, &a, 1).await;

    // The store never hears of the next upload: its record is committed while the store
    // request is still waiting (not after it), and the upload does not finish.
    relay.swallow(Swallow::Requests);
    let lost = upload_detached(&s, &a, file(5));
    let ids = until_listed(&s, &ops, &a, 2).await;
    assert!(!lost.is_finished(), "recorded before the store answered");
    let lost_id = ids.into_iter().find(|id| !first.ends_with(id.as_str())).unwrap();

    // A crash now; the store is back at the restart. Alone on its database, moss knows the
    // upload died with it, asks the store, and drops the record of content that never came.
    relay.swallow(Swallow::Nothing);
    let s = s.restart().await;
    let uri = format!("mxc://localhost/{lost_id}");
    if postgres {
        // Another process sharing the database could still be writing it: kept for the grace.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(listed_media(&s, &ops, &a).await.len(), 2, "undecided within the grace on a shared database");
    } else {
        until_listed(&s, &ops, &a, 1).await;
        assert!(s.log().contains("never reached the store"), "{}", s.log());
        assert_eq!(download_uri(&s, Some(&a), &uri).await.status(), 404);
    }
    let baseline = listed_media(&s, &ops, &a).await.len();

    // This time the store stores it but its answer is lost: after the crash the record is kept,
    // and the file downloads as uploaded.
    let store = raw_store(&env, &p);
    let objects = store.list().map(|k| k.unwrap()).collect::<Vec<_>>().await.len();
    relay.swallow(Swallow::Answers);
    let stored = upload_detached(&s, &a, file(7));
    let ids = until_listed(&s, &ops, &a, baseline + 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let count = || async { store.list().map(|k| k.unwrap()).collect::<Vec<_>>().await.len() };
    // The content (its metadata record would follow the answer).
    while count().await < objects + 1 {
        assert!(std::time::Instant::now() < deadline, "the store got the upload");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!stored.is_finished(), "the answer never came");
    relay.swallow(Swallow::Nothing);
    let s = s.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(listed_media(&s, &ops, &a).await, ids, "kept: its content is in the store");
    if !postgres {
        // And the record a restore from the store alone needs is written now.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count().await < objects + 2 {
            assert!(std::time::Instant::now() < deadline, "the reconciliation wrote the record");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    let kept = ids.iter().find(|id| !first.ends_with(id.as_str()) && **id != lost_id).unwrap();
    let res = download_uri(&s, Some(&a), &format!("mxc://localhost/{kept}")).await;
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap().as_ref() == file(7).as_slice());
    if !postgres {
        assert!(s.log().contains("kept=1"), "{}", s.log());
    }

    // The metadata record is written after the answer: an upload whose record the store never
    // hears of is answered all the same, and after a crash its record is written.
    let objects = count().await;
    relay.swallow_requests_for(&format!("{p}m-"));
    let (st, v) = upload(&s, &a, file(11), "application/octet-stream", None).await;
    assert_eq!(st, 200, "answered without the record: {v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await, objects + 1, "only the content arrived");
    relay.swallow(Swallow::Nothing);
    let s = s.restart().await;
    if !postgres {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count().await < objects + 2 {
            assert!(std::time::Instant::now() < deadline, "the reconciliation wrote the record");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let res = download_uri(&s, Some(&a), v["content_uri"].as_str().unwrap()).await;
    assert!(res.bytes().await.unwrap().as_ref() == file(11).as_slice());
}

/// Two processes sharing one PostgreSQL database and one encrypted bucket store the same new
/// file at the same moment, round after round: every copy decrypts on both. (Written under one
/// name, one process's data could end up beside the other's wrapped key.)
#[tokio::test]
async fn two_processes_storing_the_same_new_file_at_once_keep_it_readable() {
    let Some(env) = s3_env() else { return };
    let Some(url) = crate::common::create_postgres_database() else {
        assert!(std::env::var("MOSS_REQUIRE_PG").is_err(), "PostgreSQL is required (MOSS_TEST_PG_*)");
        return;
    };
    let p = prefix();
    let mut vars = s3_vars(&env, &p);
    vars.push(("MOSS_MEDIA__ENCRYPTION__ENABLED", "true".to_owned()));
    vars.push(("MOSS_DATABASE__URL", url));
    let env_a: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Server::start_with(&env_a).await;
    // The second process shares the first one's keys (naming and master) and database.
    let shared = a.data_dir().to_string_lossy().into_owned();
    let mut env_b = env_a.clone();
    env_b.push(("MOSS_DATA_DIR", shared.as_str()));
    let dir_b = std::env::temp_dir().join(format!("moss-test-b-{}", crate::common::free_port()));
    std::fs::create_dir_all(&dir_b).unwrap();
    let b = Server::start_in(dir_b, &env_b).await;
    let alice = a.register("alice").await;

    for round in 0..16u32 {
        let data: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(round * 2 + 7) >> 3) as u8).collect();
        let (on_a, on_b) = tokio::join!(
            upload(&a, &alice, data.clone(), "application/octet-stream", None),
            upload(&b, &alice, data.clone(), "application/octet-stream", None)
        );
        for (st, v) in [&on_a, &on_b] {
            assert_eq!(*st, 200, "round {round}: {v}");
            let uri = v["content_uri"].as_str().unwrap();
            for s in [&a, &b] {
                let res = download_uri(s, Some(&alice), uri).await;
                assert_eq!(res.status(), 200, "round {round}: {uri}");
                assert!(res.bytes().await.unwrap().as_ref() == data.as_slice(), "round {round}: {uri} decrypts");
            }
        }
    }
}
