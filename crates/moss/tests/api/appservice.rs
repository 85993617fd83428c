//! Application services: a registration file loaded by a real moss, and the client-server
//! rules for services (as_token, `user_id=` masquerading, registering namespaced users,
//! exclusive namespaces, rate-limit exemption).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post, put},
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
    /// Whole transaction bodies, in arrival order.
    bodies: Arc<Mutex<Vec<Value>>>,
    /// moss's base URL, for the query handlers that create what they are asked about.
    moss: Arc<Mutex<Option<String>>>,
    queries: Arc<Mutex<Vec<String>>>,
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
    b.bodies.lock().unwrap().push(body);
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

fn hs_token_ok(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer hs-token-irc")
}

/// `@irc_new` and `#irc_new` are created on demand (as a bridge does); everything else is unknown.
async fn query_user(
    State(b): State<Bridge>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    b.queries.lock().unwrap().push(format!("user {user}"));
    if !hs_token_ok(&headers) || user != "@irc_new:localhost" {
        return (StatusCode::NOT_FOUND, Json(json!({"errcode": "M_NOT_FOUND"})));
    }
    let base = b.moss.lock().unwrap().clone().unwrap();
    let res = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/register"))
        .bearer_auth("as-token-irc")
        .json(&json!({"type": "m.login.application_service", "username": "irc_new", "inhibit_login": true}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    (StatusCode::OK, Json(json!({})))
}

async fn query_alias(
    State(b): State<Bridge>,
    Path(alias): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    b.queries.lock().unwrap().push(format!("alias {alias}"));
    if !hs_token_ok(&headers) || alias != "#irc_new:localhost" {
        return (StatusCode::NOT_FOUND, Json(json!({"errcode": "M_NOT_FOUND"})));
    }
    let base = b.moss.lock().unwrap().clone().unwrap();
    let res = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth("as-token-irc")
        .json(&json!({"room_alias_name": "irc_new", "preset": "public_chat"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    (StatusCode::OK, Json(json!({})))
}

async fn tp_protocol(Path(p): Path<String>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if !hs_token_ok(&headers) || p != "irc" {
        return (StatusCode::NOT_FOUND, Json(json!({"errcode": "M_NOT_FOUND"})));
    }
    (
        StatusCode::OK,
        Json(json!({
            "user_fields": ["network", "nickname"],
            "location_fields": ["network", "channel"],
            "icon": "mxc://localhost/irc",
            "field_types": {
                "network": {"regexp": "([a-z0-9]+\\.)*[a-z0-9]+", "placeholder": "irc.libera.chat"},
                "channel": {"regexp": "#[^\\s]+", "placeholder": "#foobar"},
                "nickname": {"regexp": "[^\\s#]+", "placeholder": "username"},
            },
            "instances": [{"network_id": "libera", "desc": "Libera", "fields": {"network": "irc.libera.chat"}}],
        })),
    )
}

fn location(channel: &str) -> Value {
    json!({"alias": "#irc_new:localhost", "protocol": "irc", "fields": {"network": "irc.libera.chat", "channel": channel}})
}

fn irc_user(nick: &str) -> Value {
    json!({"userid": format!("@irc_{nick}:localhost"), "protocol": "irc", "fields": {"network": "irc.libera.chat", "nickname": nick}})
}

async fn tp_location(Path(p): Path<String>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let channel = q.get("channel").cloned().unwrap_or_default();
    // One result that is not for the asked protocol: moss drops it.
    Json(json!([location(&channel), {"alias": "#x:localhost", "protocol": format!("not-{p}"), "fields": {}}]))
}

async fn tp_location_by_alias(Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    Json(if q.get("alias").map(String::as_str) == Some("#irc_new:localhost") {
        json!([location("#new")])
    } else {
        json!([])
    })
}

async fn tp_user(Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    Json(json!([irc_user(q.get("nickname").map(String::as_str).unwrap_or("x"))]))
}

async fn tp_user_by_id(Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    Json(match q.get("userid").and_then(|u| u.strip_prefix("@irc_")).and_then(|u| u.strip_suffix(":localhost")) {
        Some(nick) => json!([irc_user(nick)]),
        None => json!([]),
    })
}

impl Bridge {
    async fn start() -> (Bridge, SocketAddr) {
        let b = Bridge::default();
        let app = Router::new()
            .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
            .route("/_matrix/app/v1/ping", post(ping))
            .route("/_matrix/app/v1/users/{user}", get(query_user))
            .route("/_matrix/app/v1/rooms/{alias}", get(query_alias))
            .route("/_matrix/app/v1/thirdparty/protocol/{p}", get(tp_protocol))
            .route("/_matrix/app/v1/thirdparty/location/{p}", get(tp_location))
            .route("/_matrix/app/v1/thirdparty/location", get(tp_location_by_alias))
            .route("/_matrix/app/v1/thirdparty/user/{p}", get(tp_user))
            .route("/_matrix/app/v1/thirdparty/user", get(tp_user_by_id))
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
    let typing = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&human.id));
    let (st, _) = s.put(&typing, &human, json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(st, 200);
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
    // A failing service that answers a ping gets its backlog at once, not after its backoff.
    bridge.failing.store(true, Ordering::SeqCst);
    s.send_text(&human, &room, "during the second outage").await;
    let attempts = || {
        bridge
            .txns
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, ev)| ev.iter().any(|e| e["content"]["body"] == "during the second outage"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while attempts() < 4 {
        assert!(Instant::now() < deadline, "retries: {}", attempts());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Four attempts (1 + 1 s + 2 s + 4 s): the next one is 8 s away.
    bridge.failing.store(false, Ordering::SeqCst);
    let pinged = Instant::now();
    let (st, v) = s.call("POST", "/_matrix/client/v1/appservice/irc/ping", tok, Some(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    // The fifth attempt (the first while it answers) follows the ping, not the 8 s backoff.
    while attempts() < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pinged.elapsed() < Duration::from_secs(3), "delivered {:?} after the ping", pinged.elapsed());

    // This service did not ask for ephemeral data (no `receive_ephemeral`): none was sent.
    let all = bridge.bodies.lock().unwrap().clone();
    assert!(
        all.iter().all(|b| b.get("ephemeral").is_none() && b.get("de.sorunome.msc2409.to_device").is_none()),
        "{all:#?}"
    );
}

/// A registration that asks for everything: ephemeral data and to-device messages (MSC2409),
/// device lists and key counts (MSC3202), and an IRC protocol.
fn full_registration(addr: SocketAddr) -> String {
    REGISTRATION.replace("url: null", &format!("url: http://{addr}"))
        + "receive_ephemeral: true\norg.matrix.msc3202: true\nprotocols: [irc]\n"
}

impl Bridge {
    /// Waits for a transaction body that satisfies `pred`, and returns it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(b) = self.bodies.lock().unwrap().iter().find(|b| pred(b)) {
                return b.clone();
            }
            assert!(Instant::now() < deadline, "{what} never reached the bridge: {:#?}", self.bodies.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn has(list: &Value, pred: impl Fn(&Value) -> bool) -> bool {
    list.as_array().is_some_and(|l| l.iter().any(pred))
}

#[tokio::test]
async fn ephemeral_data_to_device_messages_and_device_lists_reach_a_service_that_asks() {
    let (bridge, addr) = Bridge::start().await;
    let s = server_with_registration(&full_registration(addr), false).await;
    let tok = Some("as-token-irc");
    let as_alice = format!("user_id={}", enc("@irc_alice:localhost"));
    let login =
        json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "irc_alice"}});
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            tok,
            Some(json!({"type": "m.login.application_service", "username": "irc_alice", "inhibit_login": true})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.call("POST", "/_matrix/client/v3/login", tok, Some(login)).await;
    assert_eq!(st, 200, "{v}");
    let alice_device = v["device_id"].as_str().unwrap().to_owned();
    let human = s.register("dave").await;
    let outsider = s.register("erin").await;
    let room = s.create_room(&human, json!({"preset": "public_chat"})).await;
    let (st, v) =
        s.call("POST", &format!("/_matrix/client/v3/join/{}?{as_alice}", enc(&room)), tok, Some(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    let other_room = s.create_room(&outsider, json!({"preset": "public_chat"})).await;

    // Typing in the bridged room reaches it; typing elsewhere does not.
    let typing = |user: &str, r: &str| format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(r), enc(user));
    let (st, _) = s.put(&typing(&outsider.id, &other_room), &outsider, json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(st, 200);
    let (st, _) = s.put(&typing(&human.id, &room), &human, json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(st, 200);
    let body = bridge
        .wait_for("typing", |b| {
            has(&b["ephemeral"], |e| e["type"] == "m.typing" && has(&e["content"]["user_ids"], |u| *u == human.id))
        })
        .await;
    assert_eq!(body["ephemeral"], body["de.sorunome.msc2409.ephemeral"], "the unstable key too: {body}");
    let typing_event = body["ephemeral"].as_array().unwrap().iter().find(|e| e["type"] == "m.typing").unwrap();
    assert_eq!(typing_event["room_id"], json!(room));

    // A public read receipt reaches it, a private one does not.
    let event = s.send_text(&human, &room, "read me").await;
    let receipt = |kind: &str| format!("/_matrix/client/v3/rooms/{}/receipt/{kind}/{}", enc(&room), enc(&event));
    let (st, _) = s.call("POST", &receipt("m.read.private"), Some(&human.token), Some(json!({}))).await;
    assert_eq!(st, 200);
    let (st, _) = s.call("POST", &receipt("m.read"), Some(&human.token), Some(json!({}))).await;
    assert_eq!(st, 200);
    let body = bridge
        .wait_for("the receipt", |b| {
            has(&b["ephemeral"], |e| e["type"] == "m.receipt" && !e["content"][&event]["m.read"][&human.id].is_null())
        })
        .await;
    assert!(
        !bridge
            .bodies
            .lock()
            .unwrap()
            .iter()
            .any(|b| has(&b["ephemeral"], |e| !e["content"][&event]["m.read.private"].is_null())),
        "private receipts stay private: {body}"
    );

    // Presence of someone sharing the room.
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&human.id)),
            &human,
            json!({"presence": "online", "status_msg": "on IRC"}),
        )
        .await;
    assert_eq!(st, 200);
    bridge
        .wait_for("presence", |b| {
            has(&b["ephemeral"], |e| {
                e["type"] == "m.presence" && e["sender"] == human.id && e["content"]["status_msg"] == "on IRC"
            })
        })
        .await;

    // MSC3202: the bridge's device has one-time keys (uploaded by the service as that device);
    // a to-device message to it arrives with its key counts.
    let as_device = format!("{as_alice}&device_id={}", enc(&alice_device));
    let (st, v) = s
        .call(
            "POST",
            &format!("/_matrix/client/v3/keys/upload?{as_device}"),
            tok,
            Some(json!({"one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "k1", "signatures": {}}, "signed_curve25519:AAAAAg": {"key": "k2", "signatures": {}}}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s
        .put(
            "/_matrix/client/v3/sendToDevice/m.bridge.test/t1",
            &human,
            json!({"messages": {"@irc_alice:localhost": {alice_device.as_str(): {"hello": "device"}}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let body = bridge
        .wait_for("the to-device message", |b| {
            has(&b["de.sorunome.msc2409.to_device"], |m| m["type"] == "m.bridge.test")
        })
        .await;
    let message = body["de.sorunome.msc2409.to_device"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "m.bridge.test")
        .unwrap();
    assert_eq!(
        (
            message["sender"].as_str(),
            message["to_user_id"].as_str(),
            message["to_device_id"].as_str(),
            &message["content"]
        ),
        (
            Some(human.id.as_str()),
            Some("@irc_alice:localhost"),
            Some(alice_device.as_str()),
            &json!({"hello": "device"})
        ),
        "{body}"
    );
    assert_eq!(
        body["org.matrix.msc3202.device_one_time_keys_count"]["@irc_alice:localhost"][&alice_device]
            ["signed_curve25519"],
        json!(2),
        "{body}"
    );

    // A device list change of a user sharing a room, and a user who leaves the only shared room.
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&human.token),
            Some(json!({"device_keys": crate::e2ee::device_keys(&human, &crate::e2ee::Key::new(Some(&human.device)))})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    bridge
        .wait_for("the device list change", |b| {
            has(&b["org.matrix.msc3202.device_lists"]["changed"], |u| *u == human.id)
        })
        .await;
    let (st, _) = s
        .call("POST", &format!("/_matrix/client/v3/join/{}", enc(&room)), Some(&outsider.token), Some(json!({})))
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call("POST", &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), Some(&outsider.token), Some(json!({})))
        .await;
    assert_eq!(st, 200);
    bridge.wait_for("the leave", |b| has(&b["org.matrix.msc3202.device_lists"]["left"], |u| *u == outsider.id)).await;
    // Nothing was sent twice under different ids, and the outsider's typing never arrived.
    assert!(!bridge.bodies.lock().unwrap().iter().any(|b| has(&b["ephemeral"], |e| e["room_id"] == json!(other_room))));
}

#[tokio::test]
async fn queries_third_party_networks_and_timestamps() {
    let (bridge, addr) = Bridge::start().await;
    let s = server_with_registration(&full_registration(addr), false).await;
    *bridge.moss.lock().unwrap() = Some(s.base.clone());
    let tok = Some("as-token-irc");
    let human = s.register("dave").await;
    let get = |path: String, token: Option<&'static str>| {
        let s = &s;
        let t = token.map(str::to_owned).unwrap_or_else(|| human.token.clone());
        async move { s.call("GET", &path, Some(&t), None).await }
    };

    // A user or alias of the namespace that does not exist yet is asked of the bridge, which
    // creates it; one the bridge does not know stays unknown; outside the namespace nobody is asked.
    let (st, v) = get(format!("/_matrix/client/v3/profile/{}", enc("@irc_new:localhost")), None).await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = get(format!("/_matrix/client/v3/profile/{}", enc("@irc_nobody:localhost")), None).await;
    assert_eq!(st, 404);
    let (st, _) = get(format!("/_matrix/client/v3/profile/{}", enc("@zed:localhost")), None).await;
    assert_eq!(st, 404);
    let (st, v) = get(format!("/_matrix/client/v3/directory/room/{}", enc("#irc_new:localhost")), None).await;
    assert_eq!(st, 200, "{v}");
    let bridged_room = v["room_id"].as_str().unwrap().to_owned();
    let (st, _) = get(format!("/_matrix/client/v3/directory/room/{}", enc("#irc_gone:localhost")), None).await;
    assert_eq!(st, 404);
    let (st, _) = get(format!("/_matrix/client/v3/directory/room/{}", enc("#general:localhost")), None).await;
    assert_eq!(st, 404);
    let queries = bridge.queries.lock().unwrap().clone();
    assert_eq!(
        queries,
        [
            "user @irc_new:localhost",
            "user @irc_nobody:localhost",
            "alias #irc_new:localhost",
            "alias #irc_gone:localhost"
        ],
    );

    // Third-party networks, answered by asking the bridge.
    let (st, v) = get("/_matrix/client/v3/thirdparty/protocols".into(), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["irc"]["instances"][0]["instance_id"], "irc|libera", "{v}");
    assert_eq!(v["irc"]["location_fields"], json!(["network", "channel"]));
    let (st, v) = get("/_matrix/client/v3/thirdparty/protocol/irc".into(), None).await;
    assert_eq!((st, &v["instances"][0]["network_id"]), (200, &json!("libera")), "{v}");
    let (st, v) = get("/_matrix/client/v3/thirdparty/protocol/xmpp".into(), None).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"), "{v}");
    let (st, v) = get(format!("/_matrix/client/v3/thirdparty/location/irc?channel={}", enc("#rust")), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!([location("#rust")]), "the result for another protocol is dropped");
    let (st, v) =
        get(format!("/_matrix/client/v3/thirdparty/location?alias={}", enc("#irc_new:localhost")), None).await;
    assert_eq!((st, v), (200, json!([location("#new")])));
    let (st, v) = get("/_matrix/client/v3/thirdparty/user/irc?nickname=bob".into(), None).await;
    assert_eq!((st, v), (200, json!([irc_user("bob")])));
    let (st, v) = get(format!("/_matrix/client/v3/thirdparty/user?userid={}", enc("@irc_bob:localhost")), None).await;
    assert_eq!((st, v), (200, json!([irc_user("bob")])));
    let (st, _) = s.call("GET", "/_matrix/client/v3/thirdparty/protocols", None, None).await;
    assert_eq!(st, 401);

    // The bridge's own room list per network.
    let list = format!("/_matrix/client/v3/directory/list/appservice/libera/{}", enc(&bridged_room));
    let (st, v) = s.put(&list, &human, json!({"visibility": "public"})).await;
    assert_eq!((st, errcode(&v)), (401, "M_UNKNOWN_TOKEN"), "only the service's token: {v}");
    let (st, v) = s.call("PUT", &list, tok, Some(json!({"visibility": "public"}))).await;
    assert_eq!(st, 200, "{v}");
    let rooms = |filter: Value| {
        let s = &s;
        let t = human.token.clone();
        async move {
            let (st, v) = s.call("POST", "/_matrix/client/v3/publicRooms", Some(&t), Some(filter)).await;
            assert_eq!(st, 200, "{v}");
            v["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert!(rooms(json!({"third_party_instance_id": "irc|libera"})).await.contains(&bridged_room));
    assert!(rooms(json!({"include_all_networks": true})).await.contains(&bridged_room));
    // Public preset rooms are not published in the main list unless asked: only the network's.
    assert!(!rooms(json!({})).await.contains(&bridged_room));
    assert!(rooms(json!({"third_party_instance_id": "irc|other"})).await.is_empty());
    let (st, _) = s.call("PUT", &list, tok, Some(json!({"visibility": "private"}))).await;
    assert_eq!(st, 200);
    assert!(!rooms(json!({"third_party_instance_id": "irc|libera"})).await.contains(&bridged_room));

    // Timestamp massaging: the service's `ts` is the event's origin_server_ts; a person's is ignored.
    let (st, v) = s
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1?ts=1000", enc(&bridged_room)),
            tok,
            Some(json!({"msgtype": "m.text", "body": "from the past"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, ev) = get(
        format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&bridged_room), enc(v["event_id"].as_str().unwrap())),
        tok,
    )
    .await;
    assert_eq!(ev["origin_server_ts"], 1000, "{ev}");
    let (st, v) = s
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/?ts=2000", enc(&bridged_room)),
            tok,
            Some(json!({"topic": "old topic"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, ev) = get(
        format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&bridged_room), enc(v["event_id"].as_str().unwrap())),
        tok,
    )
    .await;
    assert_eq!(ev["origin_server_ts"], 2000, "{ev}");
    let (st, _) = s
        .call("POST", &format!("/_matrix/client/v3/join/{}", enc(&bridged_room)), Some(&human.token), Some(json!({})))
        .await;
    assert_eq!(st, 200);
    let (st, v) = s
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t2?ts=1000", enc(&bridged_room)),
            Some(&human.token),
            Some(json!({"msgtype": "m.text", "body": "now"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, ev) = get(
        format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&bridged_room), enc(v["event_id"].as_str().unwrap())),
        None,
    )
    .await;
    assert!(ev["origin_server_ts"].as_u64().unwrap() > 1_000_000_000_000, "{ev}");
}

/// Federation keeps working for bridged rooms: a person on another server joins a room of the
/// bridge's user; the person's messages reach the bridge, the bridge's messages reach the person.
#[tokio::test]
async fn a_bridged_room_federates_both_ways() {
    let (bridge, addr) = Bridge::start().await;
    let dir = std::env::temp_dir().join(format!("moss-as-fed-{}-{}", std::process::id(), crate::common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("irc.yaml");
    std::fs::write(&file, REGISTRATION.replace("url: null", &format!("url: http://{addr}"))).unwrap();
    let files = format!("[\"{}\"]", file.display());
    let retry = [("MOSS_FEDERATION__MAX_RETRY_DELAY_MS", "1000")];
    let a = crate::federation::fed_server_with(&[("MOSS_APPSERVICE__CONFIG_FILES", files.as_str()), retry[0]]).await;
    let b = crate::federation::fed_server_with(&retry).await;
    let tok = Some("as-token-irc");
    let (st, v) = a
        .server
        .call(
            "POST",
            "/_matrix/client/v3/register",
            tok,
            Some(json!({"type": "m.login.application_service", "username": "irc_alice", "inhibit_login": true})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let as_alice = format!("user_id={}", enc(&format!("@irc_alice:{}", a.name)));
    let (st, v) = a
        .server
        .call(
            "POST",
            &format!("/_matrix/client/v3/createRoom?{as_alice}"),
            tok,
            Some(json!({"preset": "public_chat", "room_alias_name": "irc_lobby"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let room = v["room_id"].as_str().unwrap().to_owned();
    let bob = b.server.register("bob").await;
    let (st, v) = b.server.join(&bob, &enc(&format!("#irc_lobby:{}", a.name))).await;
    assert_eq!(st, 200, "{v}");
    b.server.send_text(&bob, &room, "hello from the other server").await;
    bridge.wait_for_body("hello from the other server").await;
    let delivered = bridge.delivered();
    let (_, event) = delivered.iter().find(|(_, e)| e["content"]["body"] == "hello from the other server").unwrap();
    assert_eq!(event["sender"], json!(bob.id));

    let (st, v) = a
        .server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1?{as_alice}", enc(&room)),
            tok,
            Some(json!({"msgtype": "m.text", "body": "hello from IRC"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) =
            b.server.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(&room)), &bob).await;
        if has(&v["chunk"], |e| {
            e["content"]["body"] == "hello from IRC" && e["sender"] == json!(format!("@irc_alice:{}", a.name))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bridge's message never reached the other server: {v}\n{}",
            a.server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// MSC4190: a service that manages its users' devices creates them with `PUT /devices/{id}`,
/// deletes them without UIA, and may not log in (nor register with a login).
#[tokio::test]
async fn a_service_manages_its_users_devices() {
    let s = server_with_registration(&format!("{REGISTRATION}io.element.msc4190: true\n"), false).await;
    let tok = Some("as-token-irc");
    let unsupported = "IO.ELEMENT.MSC4190.M_APPSERVICE_LOGIN_UNSUPPORTED";
    let register = |inhibit: bool| json!({"type": "m.login.application_service", "username": "irc_alice", "inhibit_login": inhibit});
    let (st, v) = s.call("POST", "/_matrix/client/v3/register", tok, Some(register(false))).await;
    assert_eq!((st, errcode(&v)), (400, unsupported), "{v}");
    let (st, v) = s.call("POST", "/_matrix/client/v3/register", tok, Some(register(true))).await;
    assert_eq!(st, 200, "{v}");
    let login =
        json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "irc_alice"}});
    let (st, v) = s.call("POST", "/_matrix/client/v3/login", tok, Some(login)).await;
    assert_eq!((st, errcode(&v)), (400, unsupported), "{v}");

    let as_alice = format!("user_id={}", enc("@irc_alice:localhost"));
    let device = format!("/_matrix/client/v3/devices/BRIDGEDEV?{as_alice}");
    let (st, v) = s.call("PUT", &device, tok, Some(json!({"display_name": "bridge"}))).await;
    assert_eq!(st, 201, "created: {v}");
    let (st, v) = s.call("PUT", &device, tok, Some(json!({"display_name": "bridge, renamed"}))).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.call("GET", &format!("/_matrix/client/v3/devices?{as_alice}"), tok, None).await;
    assert_eq!(st, 200, "{v}");
    assert!(has(&v["devices"], |d| d["device_id"] == "BRIDGEDEV" && d["display_name"] == "bridge, renamed"), "{v}");
    // The new device is usable with device_id= masquerading.
    let (st, v) = s
        .call(
            "POST",
            &format!("/_matrix/client/v3/keys/upload?{as_alice}&device_id=BRIDGEDEV"),
            tok,
            Some(json!({"one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "k1", "signatures": {}}}})),
        )
        .await;
    assert_eq!((st, &v["one_time_key_counts"]["signed_curve25519"]), (200, &json!(1)), "{v}");
    // Deleting needs no UIA for the service; for a person it still does.
    let (st, v) = s.call("DELETE", &device, tok, Some(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.call("GET", &format!("/_matrix/client/v3/devices?{as_alice}"), tok, None).await;
    assert!(!has(&v["devices"], |d| d["device_id"] == "BRIDGEDEV"), "{v}");
    let human = s.register("dave").await;
    let (st, _) = s.put("/_matrix/client/v3/devices/NEWDEV", &human, json!({"display_name": "x"})).await;
    assert_eq!(st, 404, "people cannot create devices this way");
    let (st, v) = s
        .call("DELETE", &format!("/_matrix/client/v3/devices/{}", human.device), Some(&human.token), Some(json!({})))
        .await;
    assert_eq!(st, 401, "UIA for people: {v}");
}
