//! Attacks on a running moss (issue: "safe to expose"): each one is made the way an ordinary
//! account or a remote server could make it, while a watchdog asks `/versions` every 100 ms.
//! The server must keep answering within a second throughout, stay under a memory ceiling
//! (peak RSS, Linux `VmHWM`), and answer the attack itself with a 4xx (or a harmless 200)
//! within two seconds, without reaching any address its policy denies.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    common::{enc, errcode, free_port, Server},
    media::upload,
};

/// The memory ceiling every attack must stay under.
const CEILING: u64 = 300 * 1024 * 1024;

/// Asks `/versions` every 100 ms and remembers the slowest answer (or that one failed).
struct Watchdog {
    stop: Arc<AtomicBool>,
    slowest_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    fn start(s: &Server) -> Watchdog {
        let (stop, slowest_ms) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let url = format!("{}/_matrix/client/versions", s.base);
        let (st, sl) = (stop.clone(), slowest_ms.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            while !st.load(Ordering::SeqCst) {
                let t = Instant::now();
                let ok = matches!(http.get(&url).send().await, Ok(r) if r.status() == 200);
                let ms = if ok { t.elapsed().as_millis() as u64 } else { u64::MAX };
                sl.fetch_max(ms, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Watchdog { stop, slowest_ms, task }
    }

    /// Stops and asserts `/versions` always answered within a second.
    async fn finish(self, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let ms = self.slowest_ms.load(Ordering::SeqCst);
        assert!(ms < 1000, "{what}: /versions took {ms} ms (u64::MAX: failed) during the attack");
    }
}

fn assert_under_ceiling(s: &Server, what: &str) {
    let peak = s.peak_rss();
    assert!(peak > 0 && peak < CEILING, "{what}: peak RSS {} MiB", peak >> 20);
}

/// A GIF with a `w`×`h` logical screen and `frames` one-pixel frames: a few hundred bytes that
/// a decoder compositing every frame onto a full canvas turns into `frames` × `w`×`h`×4 bytes.
fn gif_bomb(w: u16, h: u16, frames: usize) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    // Global colour table of 2 entries, background 0, no aspect ratio.
    g.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
    // Loop forever (NETSCAPE2.0), so decoders treat it as an animation.
    g.extend_from_slice(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00");
    for i in 0..frames {
        // Graphic control: 10 ms delay, no disposal; then a 1×1 image at a moving spot.
        g.extend_from_slice(&[0x21, 0xf9, 0x04, 0x04, 0x01, 0x00, 0x00, 0x00]);
        let (x, y) = ((i as u16 * 7) % w, (i as u16 * 13) % h);
        g.push(0x2c);
        g.extend_from_slice(&x.to_le_bytes());
        g.extend_from_slice(&y.to_le_bytes());
        g.extend_from_slice(&[1, 0, 1, 0, 0]);
        // LZW, minimum code size 2: clear, index 0, end.
        g.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    g.push(0x3b);
    g
}

#[test]
fn the_bomb_is_a_real_gif() {
    use image::AnimationDecoder;
    let bomb = gif_bomb(64, 48, 5);
    let decoder = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bomb)).unwrap();
    let frames: Vec<_> = decoder.into_frames().collect::<Result<_, _>>().unwrap();
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[0].buffer().dimensions(), (64, 48));
}

async fn get_timed(s: &Server, path: &str, token: &str) -> (u16, Value, Duration) {
    let t = Instant::now();
    let (st, v) = s.call("GET", path, Some(token), None).await;
    (st, v, t.elapsed())
}

#[tokio::test]
async fn image_bombs_neither_kill_nor_bloat_the_server() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let watchdog = Watchdog::start(&s);

    // The reproduction: 5600×5600 (under max_image_pixels), 300 frames, a few KB.
    let bomb = gif_bomb(5600, 5600, 300);
    assert!(bomb.len() < 8 * 1024);
    let (st, v) = upload(&s, &a, bomb, "image/gif", Some("bomb.gif")).await;
    assert_eq!(st, 200, "{v}");
    let path = crate::media::media_path(v["content_uri"].as_str().unwrap());
    for q in ["width=96&height=96&method=crop&animated=true", "width=320&height=240&method=scale", "width=32&height=32"]
    {
        let (st, v, took) = get_timed(&s, &format!("/_matrix/client/v1/media/thumbnail/{path}?{q}"), &a.token).await;
        assert!((400..500).contains(&st), "{q}: {st} {v}");
        assert_eq!(errcode(&v), "M_TOO_LARGE", "{q}: {v}");
        assert!(took < Duration::from_secs(2), "{q}: answered in {took:?}");
    }

    // A canvas that fits the budget: the animation is made, cut short (canvas × frames is
    // bounded), while eight requests at once share the decode budget.
    let (st, v) = upload(&s, &a, gif_bomb(2000, 2000, 300), "image/gif", Some("long.gif")).await;
    assert_eq!(st, 200, "{v}");
    let path = crate::media::media_path(v["content_uri"].as_str().unwrap());
    let sizes = ["32&height=32", "96&height=96", "320&height=240", "640&height=480", "800&height=600"];
    let requests = (0..8).map(|i| {
        let url = format!(
            "{}/_matrix/client/v1/media/thumbnail/{path}?width={}&animated={}",
            s.base,
            sizes[i % sizes.len()],
            i % 2 == 0
        );
        let token = a.token.clone();
        async move {
            let res = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
            let st = res.status().as_u16();
            let ctype = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let body = res.bytes().await.unwrap();
            (st, ctype, body)
        }
    });
    for (st, ctype, body) in futures_util::future::join_all(requests).await {
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        let ctype = ctype.unwrap();
        if ctype == "image/gif" {
            use image::AnimationDecoder;
            let frames =
                image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&body)).unwrap().into_frames().count();
            // 4 × 32 Mpx / 4 Mpx per frame.
            assert!((2..=32).contains(&frames), "{frames} frames");
        } else {
            assert_eq!(ctype, "image/png");
        }
    }
    watchdog.finish("image bombs").await;
    assert_under_ceiling(&s, "image bombs");
}

#[tokio::test]
async fn pathological_filters_answer_at_once_and_long_scans_stop_with_a_token() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let room = s.create_room(&a, json!({})).await;
    let kind = "a".repeat(255);
    let (st, v) = s.put(&format!("/_matrix/client/v3/rooms/{room}/send/{kind}/1"), &a, json!({"x": 1})).await;
    assert_eq!(st, 200, "{v}");
    let watchdog = Watchdog::start(&s);

    let evil = json!({"types": [format!("{}b", "*a".repeat(12))]}).to_string();
    let (st, v, took) =
        get_timed(&s, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&filter={}", enc(&evil)), &a.token).await;
    assert_eq!(st, 200, "{v}");
    assert!(took < Duration::from_secs(2), "/messages took {took:?}");
    assert!(v["chunk"].as_array().unwrap().is_empty());

    let (st, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), &a).await;
    assert_eq!(st, 200);
    let event_id = v["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let (st, v, took) = get_timed(
        &s,
        &format!("/_matrix/client/v3/rooms/{room}/context/{}?filter={}", enc(&event_id), enc(&evil)),
        &a.token,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(took < Duration::from_secs(2), "/context took {took:?}");

    let sync_filter = json!({"room": {"timeline": {"types": [format!("{}b", "*a".repeat(12))]}}}).to_string();
    let (st, v, took) = get_timed(&s, &format!("/_matrix/client/v3/sync?filter={}", enc(&sync_filter)), &a.token).await;
    assert_eq!(st, 200, "{v}");
    assert!(took < Duration::from_secs(2), "/sync took {took:?}");

    // Lists and patterns past the limits are refused rather than checked against every event.
    let too_many = json!({"types": vec!["m.room.message"; 1001]}).to_string();
    let (st, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&filter={}", enc(&too_many)), &a).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
    let (st, v) = s
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&a.id)),
            &a,
            json!({"room": {"timeline": {"not_types": ["x".repeat(2000)]}}}),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");

    // A filter that matches nothing reads a bounded part of a long room per request and says
    // where to go on (`end`), instead of scanning the whole room in one request.
    let sends = (0..2100).map(|i| {
        let (url, token) =
            (format!("{}/_matrix/client/v3/rooms/{room}/send/m.room.message/m{i}", s.base), a.token.clone());
        async move {
            let res =
                reqwest::Client::new().put(url).bearer_auth(token).json(&json!({"msgtype": "m.text", "body": "x"}));
            res.send().await.unwrap().status().as_u16()
        }
    });
    let mut sends = futures_util::stream::iter(sends).buffer_unordered(8);
    while let Some(st) = sends.next().await {
        assert_eq!(st, 200);
    }
    let nothing = json!({"types": ["no.such.type"]}).to_string();
    let (st, v, took) =
        get_timed(&s, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&filter={}", enc(&nothing)), &a.token)
            .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["chunk"].as_array().unwrap().is_empty());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let end = v["end"].as_str().expect("a scan cut short gives an end token to go on from").to_owned();
    // Going on from there reaches the start of the room.
    let (st, v) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={end}&filter={}", enc(&nothing)), &a).await;
    assert_eq!(st, 200);
    assert!(v["chunk"].as_array().unwrap().is_empty());
    assert!(v.get("end").is_none_or(Value::is_null), "the room's start ends the paging: {v}");

    watchdog.finish("filters").await;
    assert_under_ceiling(&s, "filters");
}

/// A federating moss with the default deny list, allowed only to reach 127.0.0.2 (where the
/// tests put the servers it may talk to), listening for federation on `fed_port`.
async fn federating(fed_port: u16) -> Server {
    Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_FEDERATION__ENABLED", "true"),
        ("MOSS_FEDERATION__BIND", &format!("127.0.0.1:{fed_port}")),
        ("MOSS_FEDERATION__VERIFY_CERTIFICATES", "false"),
        ("MOSS_FEDERATION__IP_RANGE_ALLOWLIST", "[\"127.0.0.2/32\"]"),
    ])
    .await
}

/// A plain TCP listener that counts every connection made to it: the "internal" service.
async fn counting_listener(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let body = "internal-secret";
                let res =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(res.as_bytes()).await;
            });
        }
    });
    (addr, hits)
}

/// TLS with a fresh self-signed certificate for `localhost`/127.0.0.1 (written into `dir`).
fn test_tls_acceptor(dir: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    crate::federation::self_signed(dir);
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("fed.crt")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("fed.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A hostile TLS "federation server" on `ip` answering every request with `head` and then
/// `body_len` bytes made by repeating `chunk` (after `start`): huge, deep or plain wrong JSON.
async fn hostile_federation(
    ip: &str,
    dir: &std::path::Path,
    start: &'static [u8],
    chunk: &'static [u8],
    body_len: usize,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor = test_tls_acceptor(dir);
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\nconnection: close\r\n\r\n"
                );
                if tls.write_all(head.as_bytes()).await.is_err() || tls.write_all(start).await.is_err() {
                    return;
                }
                let mut sent = start.len();
                while sent < body_len {
                    let n = chunk.len().min(body_len - sent);
                    if tls.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    sent += n;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, asked)
}

/// A TLS "federation server" on `ip` whose media answers point elsewhere (`Location`), chosen by
/// media id: `/_matrix/federation/v1/media/download/{id}` → `locations[id]`, or the content
/// "hello" inline for any other id. Records the paths asked for.
async fn fake_federation(
    ip: &str,
    dir: &std::path::Path,
    locations: Vec<(String, String)>,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let acceptor = test_tls_acceptor(dir);
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen2, locations) = (seen.clone(), Arc::new(locations));
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (acceptor, seen, locations) = (acceptor.clone(), seen2.clone(), locations.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                seen.lock().unwrap().push(path.clone());
                let id = path.rsplit('/').next().unwrap_or("").split('?').next().unwrap_or("").to_owned();
                let second = match locations.iter().find(|(k, _)| *k == id) {
                    Some((_, loc)) => format!("Location: {loc}\r\n\r\n"),
                    None => "Content-Type: text/plain\r\n\r\nhello".to_owned(),
                };
                let body = format!("--b\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--b\r\n{second}\r\n--b--\r\n");
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: multipart/mixed; boundary=b\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(res.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn remote_media_never_reaches_denied_addresses() {
    // The "internal" service moss must never reach, and a second one on an allowed address that
    // is only reachable over plain http.
    let (internal, internal_hits) = counting_listener("127.0.0.1").await;
    let (plain, plain_hits) = counting_listener("127.0.0.2").await;
    let dir = std::env::temp_dir().join(format!("moss-fake-fed-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (fed, seen) = fake_federation(
        "127.0.0.2",
        &dir,
        vec![
            ("to-internal".into(), format!("https://{internal}/internal-secret")),
            ("to-plain-http".into(), format!("http://{plain}/internal-secret")),
        ],
    )
    .await;

    let s = federating(free_port()).await;
    let a = s.register("alice").await;
    let watchdog = Watchdog::start(&s);
    let check_clean = |v: &Value| {
        let text = v.to_string();
        for leak in ["internal-secret", &internal.to_string(), &plain.to_string(), "127.0.0.1"] {
            assert!(!text.contains(leak), "the error body leaks {leak:?}: {text}");
        }
    };

    // The path itself works: inline content from the allowed server is fetched and served.
    let (st, v, _) = get_timed(&s, &format!("/_matrix/client/v1/media/download/{fed}/fine"), &a.token).await;
    assert_eq!(st, 200, "{v}");

    // A server name that is a denied IP literal is never connected to.
    let (st, v, took) = get_timed(&s, &format!("/_matrix/client/v1/media/download/{internal}/x"), &a.token).await;
    assert_eq!(st, 502, "{v}");
    assert!(took < Duration::from_secs(2));
    // (It may name the server the client asked for; nothing more.)
    assert!(!v.to_string().contains("internal-secret"), "{v}");

    // A Location pointing at a denied address, or at plain http, is not followed.
    for id in ["to-internal", "to-plain-http"] {
        let (st, v, took) = get_timed(&s, &format!("/_matrix/client/v1/media/download/{fed}/{id}"), &a.token).await;
        assert_eq!(st, 502, "{id}: {v}");
        assert!(took < Duration::from_secs(2));
        check_clean(&v);
    }

    // An unauthenticated request never makes moss reach out.
    let (st, v) = s.call("GET", &format!("/_matrix/media/v3/download/{fed}/anonymous"), None, None).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"), "{v}");
    let (st, _) =
        s.call("GET", &format!("/_matrix/media/v3/thumbnail/{fed}/anonymous2?width=32&height=32"), None, None).await;
    assert_eq!(st, 404);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(internal_hits.load(Ordering::SeqCst), 0, "moss connected to the denied address");
    assert_eq!(plain_hits.load(Ordering::SeqCst), 0, "moss followed a Location over plain http");
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|p| p.contains("anonymous")), "an anonymous request reached out: {seen:?}");
    assert!(seen.iter().any(|p| p.ends_with("/fine")), "{seen:?}");
    watchdog.finish("remote media").await;
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[tokio::test]
async fn malformed_login_bodies_are_refused_not_crashed_on() {
    let s = Server::start().await;
    s.register("alice").await;
    for body in [
        json!({}),
        json!({"identifier": {"type": "m.id.user", "user": "alice"}, "password": "password123"}),
        json!({"type": 5}),
        json!({"type": null}),
        json!({"type": "m.login.password"}),
        json!({"type": "m.login.token"}),
        json!({"type": "org.example.unknown", "x": 1}),
    ] {
        let (st, v) = s.call("POST", "/_matrix/client/v3/login", None, Some(body.clone())).await;
        assert!((400..500).contains(&st), "{body}: {st} {v}");
        assert!(!errcode(&v).is_empty(), "{body}: {v}");
    }
    // Still serving, and a good login still works.
    s.login("alice").await;
}

#[tokio::test]
async fn dead_servers_and_notary_queries_cost_a_bounded_number_of_connections() {
    // Twenty "servers" on an allowed address that accept a connection and hang up at once.
    let hits = Arc::new(AtomicUsize::new(0));
    let mut names = Vec::new();
    for _ in 0..20 {
        let l = tokio::net::TcpListener::bind(("127.0.0.2", 0)).await.unwrap();
        names.push(format!("127.0.0.2:{}", l.local_addr().unwrap().port()));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                drop(sock);
            }
        });
    }
    let fed_port = free_port();
    let s = federating(fed_port).await;
    let a = s.register("alice").await;

    // A user asking again and again about a dead server: one connection, then fast failures.
    for _ in 0..10 {
        let (st, v, took) =
            get_timed(&s, &format!("/_matrix/client/v3/profile/{}", enc(&format!("@bob:{}", names[0]))), &a.token)
                .await;
        assert_eq!(st, 502, "{v}");
        assert!(took < Duration::from_secs(2));
    }
    assert_eq!(hits.swap(0, Ordering::SeqCst), 1, "a failed server is not asked again at once");

    // Anyone may ask our notary about any servers: one query fetches at most ten afresh, and
    // servers whose keys just failed are not asked again by the next query.
    let query =
        json!({"server_keys": names[1..].iter().map(|n| (n.clone(), json!({}))).collect::<serde_json::Map<_, _>>()});
    for round in 0..2 {
        let res = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{fed_port}/_matrix/key/v2/query"))
            .header("content-type", "application/json")
            .body(query.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "round {round}");
        let n = hits.swap(0, Ordering::SeqCst);
        assert!(n <= 10, "round {round}: {n} connections for one notary query");
        if round == 0 {
            assert!(n >= 1, "the notary does fetch");
        }
    }
}

#[tokio::test]
async fn push_rules_cannot_be_turned_against_the_server() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let b = s.register("bob").await;
    let room = s.create_room(&a, json!({"preset": "public_chat"})).await;
    let (st, _) = s.join(&b, &room).await;
    assert_eq!(st, 200);
    // A keyword rule (Element's "keywords") whose word appears only inside other words.
    let (st, v) = s
        .put(
            "/_matrix/client/v3/pushrules/global/content/kw",
            &a,
            json!({"pattern": "b", "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Patterns past the limit are refused (ruma compiles wildcard patterns to a regex that
    // panics past its size limit).
    let (st, v) = s
        .put(
            "/_matrix/client/v3/pushrules/global/content/huge",
            &a,
            json!({"pattern": "?".repeat(5000), "actions": ["notify"]}),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
    let watchdog = Watchdog::start(&s);
    // A message of 20,000 words that each contain the keyword without being it.
    let body = "ab ".repeat(20_000);
    let (st, v) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/long"),
            &b,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v, took) = get_timed(&s, "/_matrix/client/v3/sync", &a.token).await;
    assert_eq!(st, 200, "{v}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The rule still works: the word alone is a highlight; the long message (evaluated first,
    // with every word a near miss) is not.
    s.send_text(&b, &room, "a b c").await;
    let (st, v, took) = get_timed(&s, "/_matrix/client/v3/notifications", &a.token).await;
    assert_eq!(st, 200, "{v}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let highlights: Vec<&str> = v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["actions"].to_string().contains("highlight"))
        .filter_map(|n| n["event"]["content"]["body"].as_str())
        .collect();
    assert_eq!(highlights, ["a b c"], "{v}");
    watchdog.finish("push rules").await;
}

#[tokio::test]
async fn hostile_space_summaries_from_other_servers_are_bounded() {
    // A local space whose children live on servers that answer `/hierarchy` with 64 MiB, with
    // JSON nested 100,000 deep, and with 200,000 children: the user's space view shows the
    // space alone, promptly, and the server stays small.
    let dir = std::env::temp_dir().join(format!("moss-hostile-spaces-{}", free_port()));
    for d in ["huge", "deep", "many"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let huge =
        hostile_federation("127.0.0.2", &dir.join("huge"), b"{\"room\":{\"room_id\":\"", b"aaaaaaaaaaaaaaaa", 64 << 20)
            .await;
    let deep = hostile_federation("127.0.0.2", &dir.join("deep"), b"{\"room\":", b"[[[[[[[[[[[[[[[[", 100_000).await;
    let many_child = b"{\"room_id\":\"!c:x\",\"children_state\":[]},";
    let many =
        hostile_federation("127.0.0.2", &dir.join("many"), b"{\"children\":[", many_child, 200_000 * many_child.len())
            .await;
    let fed_port = free_port();
    let s = federating(fed_port).await;
    let alice = s.register("alice").await;
    let space = s.create_room(&alice, json!({"preset": "public_chat", "creation_content": {"type": "m.space"}})).await;
    for (addr, _) in [&huge, &deep, &many] {
        let server = format!("127.0.0.2:{}", addr.port());
        let child = format!("!room:{server}");
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.space.child/{}", enc(&space), enc(&child));
        let (st, v) = s.put(&path, &alice, json!({"via": [server]})).await;
        assert_eq!(st, 200, "{v}");
    }
    let started = Instant::now();
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&space)), &alice).await;
    assert_eq!(st, 200, "{v}");
    let ids: Vec<&str> = v["rooms"].as_array().unwrap().iter().filter_map(|r| r["room_id"].as_str()).collect();
    assert_eq!(ids, [space.as_str()], "nothing taken from the hostile answers: {v}");
    assert!(started.elapsed() < Duration::from_secs(20), "answered in {:?}", started.elapsed());
    for (name, (_, asked)) in [("huge", &huge), ("deep", &deep), ("many", &many)] {
        assert!(asked.load(Ordering::SeqCst) >= 1, "the {name} server was asked");
    }
    assert_under_ceiling(&s, "hostile space summaries");
    let (st, _) = s.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(st, 200);
}
