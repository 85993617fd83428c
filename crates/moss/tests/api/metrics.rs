//! Metrics and health: `/metrics` on its own listener (off by default) with the numbers of what
//! the test did, a real Prometheus scraping it and answering PromQL, and `/health` telling a
//! working server from one whose media store is gone.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::common::{free_port, Server};

/// One sample's value from the text exposition: the line `name{labels} value` whose name and
/// labels contain every part of `want`, summed over matching lines.
fn sample(text: &str, name: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_what_happened_on_their_own_listener() {
    // Off by default: nothing listens, and the client API does not serve them.
    let s = Server::start().await;
    let (st, _) = s.call("GET", "/metrics", None, None).await;
    assert_eq!(st, 404);
    drop(s);

    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_METRICS__BIND", &bind),
    ])
    .await;
    let before = scrape(port).await;
    let events_before = sample(&before, "moss_events_persisted_total", &[]);
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..5 {
        s.send_text(&alice, &room, &format!("m{i}")).await;
    }
    let (st, _) = s.call_raw("POST", "/_matrix/media/v3/upload", Some(&alice.token), Some(vec![7u8; 3000])).await;
    assert_eq!(st, 200);
    // A long-poll waiting shows as a waiter.
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let waiting = {
        let (base, token) = (s.base.clone(), alice.token.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{base}/_matrix/client/v3/sync?since={since}&timeout=3000"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = scrape(port).await;
    assert_eq!(sample(&text, "moss_sync_waiters", &[]), 1.0, "one long-poll waiting");
    assert_eq!(waiting.await.unwrap(), 200);

    let text = scrape(port).await;
    let send = r#"route="/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}""#;
    assert_eq!(sample(&text, "moss_http_requests_total", &[send, r#"status="200""#, r#"method="PUT""#]), 5.0, "{text}");
    assert_eq!(sample(&text, "moss_http_request_duration_seconds_count", &[send]), 5.0);
    // Route templates, never raw room ids, as labels.
    assert!(!text.contains(&room), "a room id leaked into a label");
    // createRoom's state events and the 5 messages.
    assert!(sample(&text, "moss_events_persisted_total", &[]) - events_before >= 11.0, "{text}");
    // The upload and its small record object.
    let written = sample(&text, "moss_media_store_bytes_total", &[r#"layer="fs""#, r#"op="write""#]);
    assert!((3000.0..4000.0).contains(&written), "{written}: {text}");
    assert!(sample(&text, "moss_db_write_transaction_seconds_count", &[]) >= 7.0);
    assert!(sample(&text, "moss_process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample(&text, "moss_process_open_fds", &[]) > 3.0);
    assert_eq!(sample(&text, "moss_sync_waiters", &[]), 0.0);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_bin() -> Option<String> {
    if let Ok(p) = std::env::var("MOSS_TEST_PROMETHEUS") {
        return Some(p);
    }
    let default = "/usr/bin/prometheus";
    if std::path::Path::new(default).exists() {
        return Some(default.into());
    }
    assert!(
        std::env::var("MOSS_REQUIRE_PROMETHEUS").is_err(),
        "MOSS_REQUIRE_PROMETHEUS is set but no Prometheus binary was found (scripts/setup-prometheus.sh)"
    );
    None
}

#[tokio::test]
async fn a_real_prometheus_scrapes_moss_and_answers_promql() {
    let Some(bin) = prometheus_bin() else {
        eprintln!("skipping: no Prometheus (run scripts/setup-prometheus.sh)");
        return;
    };
    let metrics_port = free_port();
    let bind = format!("127.0.0.1:{metrics_port}");
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_METRICS__BIND", &bind),
    ])
    .await;
    let dir = s.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: moss\n    \
             static_configs:\n      - targets: ['{bind}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prom = Prometheus(
        Command::new(bin)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let http = reqwest::Client::new();
    let query = |q: &str| {
        let url = format!("http://127.0.0.1:{web}/api/v1/query");
        let req = http.get(url).query(&[("query", q)]);
        async move {
            let v: Value = req.send().await.ok()?.json().await.ok()?;
            v["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok()
        }
    };
    // Traffic while Prometheus scrapes every second, until it reports a request rate.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let rate = loop {
        s.send_text(&alice, &room, &format!("m{i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(r) = query(r#"sum(rate(moss_http_requests_total{route=~".*/send/.*"}[10s]))"#).await {
            if r > 0.0 {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus reported no request rate: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
    };
    assert!(rate > 0.0);
    let up = query(r#"up{job="moss"}"#).await;
    assert_eq!(up, Some(1.0), "the target is up");
    let events = query("moss_events_persisted_total").await.unwrap_or(0.0);
    assert!(events >= 1.0, "events counted: {events}");
}

#[tokio::test]
async fn health_says_ok_and_503_when_the_media_store_is_gone() {
    let s = Server::start().await;
    let (st, body) = s.call_raw("GET", "/health", None, None).await;
    assert_eq!(st, 200, "{body}");

    // The media directory gone (an unmounted disk): a lookup of a missing object would still
    // answer "not found", so the check must notice the directory itself. Back when it returns.
    let media = s.dir.join("data/media");
    let moved = s.dir.join("data/media-away");
    std::fs::rename(&media, &moved).unwrap();
    let res = reqwest::get(format!("{}/health", s.base)).await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let body = res.text().await.unwrap();
    assert!(body.starts_with("media store"), "{body}");
    assert!(!body.contains("data/media"), "no paths: {body}");
    std::fs::rename(&moved, &media).unwrap();
    let (st, body) = s.call_raw("GET", "/health", None, None).await;
    assert_eq!(st, 200, "{body}");

    // A media store nobody answers for (a closed port): 503 with the reason, while the
    // client API's versions still answer.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let metrics_port = free_port();
    let metrics_bind = format!("127.0.0.1:{metrics_port}");
    let s = Server::start_with(&[
        ("MOSS_METRICS__BIND", &metrics_bind),
        ("MOSS_MEDIA__STORE", "s3"),
        ("MOSS_MEDIA__S3__ENDPOINT", &dead),
        ("MOSS_MEDIA__S3__BUCKET", "nowhere"),
        ("MOSS_MEDIA__S3__REGION", "garage"),
        ("MOSS_MEDIA__S3__ACCESS_KEY_ID", "GK0000"),
        ("MOSS_MEDIA__S3__SECRET_ACCESS_KEY", "0000"),
        ("MOSS_MEDIA__S3__REQUEST_TIMEOUT_MS", "1000"),
    ])
    .await;
    let started = Instant::now();
    let res = reqwest::get(format!("{}/health", s.base)).await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let text = res.text().await.unwrap();
    assert!(text.starts_with("media store"), "{text}");
    assert!(!text.contains(&dead) && !text.contains("nowhere"), "no addresses or buckets: {text}");
    assert!(started.elapsed() < Duration::from_secs(8), "answered within the health check's limit");
    let (st, _) = s.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(st, 200);

    // Every HTTP request to the store is counted, the S3 client's retries included: the health
    // check's lookup was tried more than once before it gave up.
    let text = scrape(metrics_port).await;
    let transport = sample(&text, "moss_media_s3_requests_total", &[r#"outcome="transport""#]);
    assert!(transport >= 2.0, "a retried lookup: {transport}\n{text}");
    assert_eq!(sample(&text, "moss_media_s3_requests_total", &[r#"outcome="answered""#]), 0.0);
}
