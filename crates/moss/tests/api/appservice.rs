//! Application services: a registration file loaded by a real moss, and the client-server
//! rules for services (as_token, `user_id=` masquerading, registering namespaced users,
//! exclusive namespaces, rate-limit exemption).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{post, put},
    Json, Router,
};
use serde_json::{json, Value};

use crate::common::{enc, errcode, Server};

const REGISTRATION: &str = "id: irc\nurl: null\nas_token: as-token-irc\nhs_token: hs-token-irc\n\
    sender_localpart: ircbot\nrate_limited: false\nnamespaces:\n  users:\n  - regex: '@irc_.*'\n    exclusive: true\n\
    \x20 aliases:\n  - regex: '#irc_.*'\n    exclusive: true\n  rooms: []\n";

async fn server_with_bridge() -> Server {
    server_with_registration(REGISTRATION, true).await
}

async fn server_with_registration(registration: &str, limits: bool) -> Server {
    let dir = std::env::temp_dir().join(format!("moss-as-{}-{}", std::process::id(), crate::common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("irc.yaml");
    std::fs::write(&file, registration).unwrap();
    let files = format!("[\"{}\"]", file.display());
    Server::start_in(
        dir,
        &[
            ("MOSS_REGISTRATION", "open"),
            // Limits on, and tight: the service is exempt, people are not.
            ("MOSS_RATE_LIMITS__MESSAGE__BURST", "3"),
            ("MOSS_RATE_LIMITS__MESSAGE__PER_SECOND", "0.01"),
            ("MOSS_APPSERVICE__CONFIG_FILES", &files),
            ("MOSS_RATE_LIMITS__ENABLED", if limits { "true" } else { "false" }),
        ],
    )
    .await
}

#[tokio::test]
async fn a_service_acts_as_its_users_within_its_namespace() {
    let s = server_with_bridge().await;
    let tok = Some("as-token-irc");
    let call = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let s = &s;
        async move { s.call(method, &path, tok, body).await }
    };

    // The service's own user exists from the start and is who the token is.
    let (st, v) = call("GET", "/_matrix/client/v3/account/whoami".into(), None).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@ircbot:localhost")), "{v}");

    // Registering its users: inside the namespace only, once, without a password or login.
    let reg = |name: &str| json!({"type": "m.login.application_service", "username": name, "inhibit_login": true});
    let (st, v) = call("POST", "/_matrix/client/v3/register".into(), Some(reg("irc_alice"))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user_id"], "@irc_alice:localhost");
    assert!(v.get("access_token").is_none(), "inhibit_login: {v}");
    let (st, v) = call("POST", "/_matrix/client/v3/register".into(), Some(reg("irc_alice"))).await;
    assert_eq!((st, errcode(&v)), (400, "M_USER_IN_USE"));
    let (st, v) = call("POST", "/_matrix/client/v3/register".into(), Some(reg("carol"))).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    // Without the service's token, that registration type is refused.
    let (st, _) = s.call("POST", "/_matrix/client/v3/register", None, Some(reg("irc_bob"))).await;
    assert!(st == 401 || st == 403, "{st}");

    let (st, v) = call("POST", "/_matrix/client/v1/appservice/irc/ping".into(), Some(json!({}))).await;
    assert_eq!((st, errcode(&v)), (400, "M_URL_NOT_SET"), "{v}");

    // People cannot take the namespace.
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "irc_mallory", "password": "password123", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    let (st, v) = s.call("GET", "/_matrix/client/v3/register/available?username=irc_mallory", None, None).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    let human = s.register("dave").await;

    // Masquerading: registered users of the namespace only.
    let (st, v) =
        call("GET", format!("/_matrix/client/v3/account/whoami?user_id={}", enc("@irc_alice:localhost")), None).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@irc_alice:localhost")), "{v}");
    let (st, v) = call("GET", format!("/_matrix/client/v3/account/whoami?user_id={}", enc(&human.id)), None).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "outside the namespace: {v}");
    let (st, v) =
        call("GET", format!("/_matrix/client/v3/account/whoami?user_id={}", enc("@irc_ghost:localhost")), None).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "not registered: {v}");
    let (st, v) = call(
        "GET",
        format!("/_matrix/client/v3/account/whoami?user_id={}&device_id=NOPE", enc("@irc_alice:localhost")),
        None,
    )
    .await;
    assert_eq!((st, errcode(&v)), (400, "M_UNKNOWN_DEVICE"), "{v}");

    // A puppet talks in a room, unlimited; a person hits the (tight) message limit.
    let as_alice = format!("user_id={}", enc("@irc_alice:localhost"));
    let (st, v) =
        call("POST", format!("/_matrix/client/v3/createRoom?{as_alice}"), Some(json!({"preset": "public_chat"}))).await;
    assert_eq!(st, 200, "{v}");
    let room = v["room_id"].as_str().unwrap().to_owned();
    assert_eq!(s.join(&human, &room).await.0, 200);
    for i in 0..10 {
        let (st, v) = call(
            "PUT",
            format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}?{as_alice}", enc(&room)),
            Some(json!({"msgtype": "m.text", "body": format!("from IRC {i}")})),
        )
        .await;
        assert_eq!(st, 200, "message {i}: {v}");
    }
    let mut limited = false;
    for i in 0..10 {
        let (st, _) = s
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/h{i}", enc(&room)),
                &human,
                json!({"msgtype": "m.text", "body": "hi"}),
            )
            .await;
        limited |= st == 429;
    }
    assert!(limited, "people are still rate limited");
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=30", enc(&room)), &human).await;
    let from_irc = v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["sender"] == "@irc_alice:localhost" && e["type"] == "m.room.message")
        .count();
    assert_eq!(from_irc, 10, "the messages are the puppet's");

    // Aliases in the exclusive alias namespace: the service's users only, even outside the room.
    let alias = enc("#irc_chan:localhost");
    let (st, v) = s.put(&format!("/_matrix/client/v3/directory/room/{alias}"), &human, json!({"room_id": room})).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    let (st, v) =
        call("PUT", format!("/_matrix/client/v3/directory/room/{alias}"), Some(json!({"room_id": room}))).await;
    assert_eq!(st, 200, "the service's own user, not in the room: {v}");
    let (st, v) =
        s.call("DELETE", &format!("/_matrix/client/v3/directory/room/{alias}"), Some(&human.token), None).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");

    // Logging in as a namespaced user with the service's token gives a device of that user.
    let login =
        |user: &str| json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": user}});
    let (st, v) = call("POST", "/_matrix/client/v3/login".into(), Some(login("irc_alice"))).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@irc_alice:localhost")), "{v}");
    let (st, v) = s.call("GET", "/_matrix/client/v3/account/whoami", v["access_token"].as_str(), None).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@irc_alice:localhost")), "{v}");
    let (st, v) = call("POST", "/_matrix/client/v3/login".into(), Some(login("dave"))).await;
    assert_eq!((st, errcode(&v)), (403, "M_EXCLUSIVE"), "{v}");
    let (st, _) = s.call("POST", "/_matrix/client/v3/login", Some(&human.token), Some(login("irc_alice"))).await;
    assert_eq!(st, 403, "a person's token is not a service's");
    let (_, v) = s.call("GET", "/_matrix/client/v3/login", None, None).await;
    assert!(v["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.application_service"), "{v}");
}

/// One transaction as received: its id, the Authorization header, its events.
type Received = (String, Option<String>, Vec<Value>);
/// One ping as received: the Authorization header and the body.
type Ping = (Option<String>, Value);

/// A small application service: records every transaction; can fail.
#[derive(Clone, Default)]
struct Bridge {
    txns: Arc<Mutex<Vec<Received>>>,
    pings: Arc<Mutex<Vec<Ping>>>,
    failing: Arc<AtomicBool>,
}

async fn transaction(
    State(b): State<Bridge>,
    Path(txn): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    b.txns.lock().unwrap().push((txn, auth, body["events"].as_array().cloned().unwrap_or_default()));
    if b.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({})));
    }
    (StatusCode::OK, Json(json!({})))
}

async fn ping(State(b): State<Bridge>, headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    b.pings.lock().unwrap().push((auth, body));
    if b.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"errcode": "M_UNKNOWN"})));
    }
    (StatusCode::OK, Json(json!({})))
}

impl Bridge {
    async fn start() -> (Bridge, SocketAddr) {
        let b = Bridge::default();
        let app = Router::new()
            .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
            .route("/_matrix/app/v1/ping", post(ping))
            .with_state(b.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (b, addr)
    }

    /// Bodies of the events delivered so far (successful transactions only, each once).
    fn delivered(&self) -> Vec<(String, Value)> {
        let txns = self.txns.lock().unwrap().clone();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (id, _, events) in txns {
            if seen.insert(id.clone()) {
                for e in events {
                    out.push((id.clone(), e));
                }
            }
        }
        out
    }

    async fn wait_for_body(&self, body: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((id, _)) = self.delivered().into_iter().find(|(_, e)| e["content"]["body"] == body) {
                return id;
            }
            assert!(Instant::now() < deadline, "{body:?} never reached the bridge: {:#?}", self.txns.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn events_reach_the_service_in_transactions_that_survive_failures_and_a_crash() {
    let (bridge, addr) = Bridge::start().await;
    let registration = REGISTRATION.replace("url: null", &format!("url: http://{addr}"));
    let s = server_with_registration(&registration, false).await;
    let tok = Some("as-token-irc");
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            tok,
            Some(json!({"type": "m.login.application_service", "username": "irc_alice", "inhibit_login": true})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let human = s.register("dave").await;
    let elsewhere = s.create_room(&human, json!({"preset": "public_chat"})).await;
    let room = s.create_room(&human, json!({"preset": "public_chat"})).await;
    let as_alice = format!("user_id={}", enc("@irc_alice:localhost"));
    let (st, v) =
        s.call("POST", &format!("/_matrix/client/v3/join/{}?{as_alice}", enc(&room)), tok, Some(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    s.send_text(&human, &elsewhere, "not for the bridge").await;
    s.send_text(&human, &room, "hello IRC").await;
    let first = bridge.wait_for_body("hello IRC").await;
    // The join of its user came first; nothing from the room it is not in; the hs_token is sent.
    let delivered = bridge.delivered();
    assert!(delivered.iter().any(|(_, e)| e["type"] == "m.room.member" && e["state_key"] == "@irc_alice:localhost"));
    assert!(!delivered.iter().any(|(_, e)| e["content"]["body"] == "not for the bridge"), "{delivered:#?}");
    assert!(bridge.txns.lock().unwrap().iter().all(|(_, auth, _)| auth.as_deref() == Some("Bearer hs-token-irc")));

    // Ping: the homeserver calls the bridge and times the round trip; only the service may ask.
    let (st, v) =
        s.call("POST", "/_matrix/client/v1/appservice/irc/ping", tok, Some(json!({"transaction_id": "p1"}))).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["duration_ms"].as_u64().is_some(), "{v}");
    assert_eq!(
        bridge.pings.lock().unwrap().last().cloned(),
        Some((Some("Bearer hs-token-irc".to_owned()), json!({"transaction_id": "p1"})))
    );
    let (st, v) = s.call("POST", "/_matrix/client/v1/appservice/irc/ping", Some(&human.token), Some(json!({}))).await;
    assert!(st == 401 || st == 403, "{st} {v}");

    // The bridge fails: the same transaction is retried; moss crashes meanwhile; after the
    // restart the same id carries the same events, then the rest follow in order.
    bridge.failing.store(true, Ordering::SeqCst);
    s.send_text(&human, &room, "during the outage 1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed_id = loop {
        let txns = bridge.txns.lock().unwrap().clone();
        if let Some((id, _, _)) =
            txns.iter().find(|(_, _, ev)| ev.iter().any(|e| e["content"]["body"] == "during the outage 1"))
        {
            break id.clone();
        }
        assert!(Instant::now() < deadline, "no attempt: {}", s.log());
        drop(txns);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(failed_id, first);
    let (st, v) = s.call("POST", "/_matrix/client/v1/appservice/irc/ping", tok, Some(json!({}))).await;
    assert_eq!((st, errcode(&v)), (502, "M_BAD_STATUS"), "{v}");
    s.send_text(&human, &room, "during the outage 2").await;
    let mut s = s;
    s.kill9();
    let s = s.restart().await;
    bridge.failing.store(false, Ordering::SeqCst);
    s.send_text(&human, &room, "after the restart").await;
    bridge.wait_for_body("after the restart").await;
    let txns = bridge.txns.lock().unwrap().clone();
    let ids = |events: &Vec<Value>| events.iter().map(|e| e["event_id"].clone()).collect::<Vec<_>>();
    let attempts: Vec<Vec<Value>> = txns.iter().filter(|(id, _, _)| *id == failed_id).map(|(_, _, e)| ids(e)).collect();
    assert!(attempts.len() >= 2, "retried");
    assert!(attempts.windows(2).all(|w| w[0] == w[1]), "a retry carries the same events: {attempts:?}");
    let bodies: Vec<String> =
        bridge.delivered().iter().filter_map(|(_, e)| e["content"]["body"].as_str().map(str::to_owned)).collect();
    let pos = |b: &str| bodies.iter().position(|x| x == b).unwrap_or_else(|| panic!("{b} missing: {bodies:?}"));
    assert!(pos("hello IRC") < pos("during the outage 1"));
    assert!(pos("during the outage 1") < pos("during the outage 2"));
    assert!(pos("during the outage 2") < pos("after the restart"));
    assert_eq!(bodies.iter().filter(|b| *b == "during the outage 2").count(), 1, "each event once: {bodies:?}");
}
