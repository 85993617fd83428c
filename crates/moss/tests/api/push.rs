//! Push notifications: a real moss pushing to a Push Gateway API receiver started by the test
//! (the spec's `POST /_matrix/push/v1/notify`, answering `{"rejected": [...]}`), and the counts
//! clients read.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, routing::post, Json, Router};
use serde_json::{json, Value};

use crate::common::{errcode, Server, User};

/// The receiver: records every notification; can fail (500) or reject pushkeys.
#[derive(Clone, Default)]
struct Gateway {
    got: Arc<Mutex<Vec<Value>>>,
    failing: Arc<AtomicBool>,
    rejected: Arc<Mutex<HashSet<String>>>,
    hits: Arc<AtomicUsize>,
}

impl Gateway {
    async fn start() -> (Gateway, SocketAddr) {
        let gw = Gateway::default();
        let app = Router::new().route("/_matrix/push/v1/notify", post(notify)).with_state(gw.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (gw, addr)
    }

    fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a notification matching `f`.
    async fn wait_for(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(n) = self.all().into_iter().find(|n| f(n)) {
                return n;
            }
            assert!(Instant::now() < deadline, "no push for {what}; got {:#?}", self.all());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn for_event(&self, event_id: &str) -> Vec<Value> {
        self.all().into_iter().filter(|n| n["notification"]["event_id"] == event_id).collect()
    }
}

async fn notify(State(gw): State<Gateway>, Json(body): Json<Value>) -> (axum::http::StatusCode, Json<Value>) {
    gw.hits.fetch_add(1, Ordering::SeqCst);
    if gw.failing.load(Ordering::SeqCst) {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    }
    let rejected = gw.rejected.lock().unwrap().clone();
    let keys: Vec<String> = body["notification"]["devices"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["pushkey"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    gw.got.lock().unwrap().push(body);
    let rejected: Vec<String> = keys.into_iter().filter(|k| rejected.contains(k)).collect();
    (axum::http::StatusCode::OK, Json(json!({ "rejected": rejected })))
}

const PUSH_ENV: &[(&str, &str)] = &[
    ("MOSS_REGISTRATION", "open"),
    ("MOSS_RATE_LIMITS__ENABLED", "false"),
    ("MOSS_PUSH__ALLOW_HTTP", "true"),
    ("MOSS_PUSH__IP_RANGE_ALLOWLIST", "[\"127.0.0.1\"]"),
];

fn pusher(addr: SocketAddr, pushkey: &str, extra: Value) -> Value {
    let mut data = json!({"url": format!("http://{addr}/_matrix/push/v1/notify"), "custom": "kept"});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            data[k] = v;
        }
    }
    json!({"kind": "http", "app_id": "org.example.app", "pushkey": pushkey, "app_display_name": "App",
           "device_display_name": "Phone", "lang": "en", "data": data})
}

async fn set_pusher(s: &Server, u: &User, body: Value) {
    let (st, v) = s.post("/_matrix/client/v3/pushers/set", u, body).await;
    assert_eq!(st, 200, "{v}");
}

async fn send(s: &Server, u: &User, room: &str, content: Value) -> String {
    let txn = format!("p{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let (st, v) = s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"), u, content).await;
    assert_eq!(st, 200, "{v}");
    v["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn pushes_carry_what_the_rules_decided_in_the_spec_format() {
    let (gw, addr) = Gateway::start().await;
    let s = Server::start_with(PUSH_ENV).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.id),
            &alice,
            json!({"displayname": "Alice A."}),
        )
        .await;
    assert_eq!(st, 200);
    set_pusher(&s, &bob, pusher(addr, "bob-key", json!({}))).await;
    set_pusher(&s, &carol, pusher(addr, "carol-key", json!({"format": "event_id_only"}))).await;

    // A one-to-one room: sound, high priority, the full event.
    let dm = s.create_room(&alice, json!({"invite": [bob.id], "is_direct": true, "name": "Chat"})).await;
    assert_eq!(s.join(&bob, &dm).await.0, 200);
    let sent = Instant::now();
    let hello = send(&s, &alice, &dm, json!({"msgtype": "m.text", "body": "hello bob"})).await;
    let n = gw.wait_for("the DM", |n| n["notification"]["event_id"] == hello.as_str()).await;
    // At once, not at the evaluator's next periodic look (every 5 s).
    assert!(sent.elapsed() < Duration::from_secs(2), "the push took {:?}", sent.elapsed());
    let n = &n["notification"];
    assert_eq!(n["room_id"], dm.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.id.as_str());
    assert_eq!(n["sender_display_name"], "Alice A.");
    assert_eq!(n["room_name"], "Chat");
    assert_eq!(n["content"]["body"], "hello bob");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1, "one room with unread messages: {n}");
    let d = &n["devices"][0];
    assert_eq!((d["app_id"].as_str(), d["pushkey"].as_str()), (Some("org.example.app"), Some("bob-key")));
    assert!(d["pushkey_ts"].as_u64().is_some_and(|t| t > 1_600_000_000 && t < 100_000_000_000), "seconds: {d}");
    assert_eq!(d["data"], json!({"custom": "kept"}), "data without the url");
    assert_eq!(d["tweaks"]["sound"], "default");

    // A group: a plain message is low priority without tweaks; a mention highlights.
    let group = s.create_room(&alice, json!({"preset": "public_chat", "name": "Group"})).await;
    for u in [&bob, &carol] {
        assert_eq!(s.join(u, &group).await.0, 200);
    }
    let plain = send(&s, &alice, &group, json!({"msgtype": "m.text", "body": "hi all"})).await;
    let n = gw
        .wait_for("the group message", |n| {
            n["notification"]["event_id"] == plain.as_str() && n["notification"]["devices"][0]["pushkey"] == "bob-key"
        })
        .await;
    assert_eq!(n["notification"]["prio"], "low", "{n}");
    assert!(n["notification"]["devices"][0].get("tweaks").is_none(), "{n}");
    assert_eq!(n["notification"]["counts"]["unread"], 2, "two rooms with unread messages");
    let mention = send(
        &s,
        &alice,
        &group,
        json!({"msgtype": "m.text", "body": "bob: look", "m.mentions": {"user_ids": [bob.id]}}),
    )
    .await;
    let n = gw
        .wait_for("the mention", |n| {
            n["notification"]["event_id"] == mention.as_str() && n["notification"]["devices"][0]["pushkey"] == "bob-key"
        })
        .await;
    assert_eq!(n["notification"]["devices"][0]["tweaks"], json!({"sound": "default", "highlight": true}));
    assert_eq!(n["notification"]["prio"], "high");

    // event_id_only: ids, priority and counts, no content, sender or tweaks.
    let n = gw
        .wait_for("carol's", |n| {
            n["notification"]["event_id"] == plain.as_str() && n["notification"]["devices"][0]["pushkey"] == "carol-key"
        })
        .await;
    let n = &n["notification"];
    for absent in ["content", "sender", "type", "sender_display_name", "room_name"] {
        assert!(n.get(absent).is_none(), "{absent} in an event_id_only push: {n}");
    }
    assert!(n["devices"][0].get("tweaks").is_none());
    assert_eq!(n["devices"][0]["data"], json!({"custom": "kept", "format": "event_id_only"}));
    assert_eq!(n["room_id"], group.as_str());

    // Nobody is pushed their own messages; each event reaches each pusher once.
    let own = send(&s, &bob, &group, json!({"msgtype": "m.text", "body": "mine"})).await;
    gw.wait_for("carol's push of bob's message", |n| n["notification"]["event_id"] == own.as_str()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gw.for_event(&own).iter().all(|n| n["notification"]["devices"][0]["pushkey"] != "bob-key"));
    assert_eq!(gw.for_event(&hello).len(), 1);

    // Reading everything in the DM: a badge-only push with the new count (0 rooms left? the group is unread still).
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{dm}/receipt/m.read/{hello}"), &bob, json!({})).await;
    assert_eq!(st, 200);
    let badge = gw
        .wait_for("the badge update", |n| {
            n["notification"].get("event_id").is_none() && n["notification"]["devices"][0]["pushkey"] == "bob-key"
        })
        .await;
    assert_eq!(badge["notification"]["counts"]["unread"], 1, "only the group is unread now: {badge}");
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{group}/receipt/m.read/{own}"), &bob, json!({})).await;
    assert_eq!(st, 200);
    gw.wait_for("the badge going to zero", |n| {
        n["notification"].get("event_id").is_none() && n["notification"]["counts"]["unread"] == 0
    })
    .await;

    // A muted room (room rule without actions) pushes nothing.
    let (st, v) = s
        .put(&format!("/_matrix/client/v3/pushrules/global/room/{}", urlencode(&group)), &bob, json!({"actions": []}))
        .await;
    assert_eq!(st, 200, "{v}");
    let muted = send(&s, &alice, &group, json!({"msgtype": "m.text", "body": "shh"})).await;
    gw.wait_for("carol still gets it", |n| n["notification"]["event_id"] == muted.as_str()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.for_event(&muted).len(), 1, "only carol's: {:#?}", gw.for_event(&muted));
}

fn urlencode(s: &str) -> String {
    s.replace('!', "%21").replace(':', "%3A")
}

#[tokio::test]
async fn room_mentions_need_power_and_keywords_highlight() {
    let (gw, addr) = Gateway::start().await;
    let s = Server::start_with(PUSH_ENV).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    set_pusher(&s, &bob, pusher(addr, "bob-key", json!({}))).await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    for u in [&bob, &carol] {
        assert_eq!(s.join(u, &room).await.0, 200);
    }
    let highlight = |n: &Value| n["notification"]["devices"][0]["tweaks"]["highlight"] == true;
    // @room from the room's creator (power 100 ≥ notifications.room 50) highlights; from carol (0) it is a plain message.
    let by_admin =
        send(&s, &alice, &room, json!({"msgtype": "m.text", "body": "@room meeting", "m.mentions": {"room": true}}))
            .await;
    let by_member =
        send(&s, &carol, &room, json!({"msgtype": "m.text", "body": "@room party", "m.mentions": {"room": true}}))
            .await;
    let n = gw.wait_for("@room by the admin", |n| n["notification"]["event_id"] == by_admin.as_str()).await;
    assert!(highlight(&n), "{n}");
    let n = gw.wait_for("@room by a member", |n| n["notification"]["event_id"] == by_member.as_str()).await;
    assert!(!highlight(&n), "{n}");

    // A keyword rule.
    let (st, v) = s
        .put(
            "/_matrix/client/v3/pushrules/global/content/cake",
            &bob,
            json!({"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let cake = send(&s, &carol, &room, json!({"msgtype": "m.text", "body": "who wants Cake?"})).await;
    let n = gw.wait_for("the keyword", |n| n["notification"]["event_id"] == cake.as_str()).await;
    assert!(highlight(&n), "{n}");

    // Encrypted events notify (high priority: the server cannot tell what they say).
    let enc = {
        let (st, v) = s
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/e1"),
                &carol,
                json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "sender_key": "k", "session_id": "s", "device_id": "D"}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["event_id"].as_str().unwrap().to_owned()
    };
    let n = gw.wait_for("the encrypted event", |n| n["notification"]["event_id"] == enc.as_str()).await;
    assert_eq!(n["notification"]["prio"], "high");

    // Counts agree: four notifying events, two highlights (the admin's @room and the keyword).
    let v = s.sync(&bob, None, 0).await;
    let counts = &v["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(
        (counts["notification_count"].as_u64(), counts["highlight_count"].as_u64()),
        (Some(4), Some(2)),
        "{counts}"
    );
    // /notifications lists them, highlights apart.
    let (_, v) = s.get("/_matrix/client/v3/notifications?only=highlight", &bob).await;
    let ids: Vec<&str> =
        v["notifications"].as_array().unwrap().iter().filter_map(|n| n["event"]["event_id"].as_str()).collect();
    assert_eq!(ids, [cake.as_str(), by_admin.as_str()], "{v}");
}

#[tokio::test]
async fn a_push_queued_while_the_gateway_fails_survives_a_crash() {
    let (gw, addr) = Gateway::start().await;
    let s = Server::start_with(PUSH_ENV).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    set_pusher(&s, &bob, pusher(addr, "bob-key", json!({}))).await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);

    gw.failing.store(true, Ordering::SeqCst);
    let first = send(&s, &alice, &room, json!({"msgtype": "m.text", "body": "one"})).await;
    // moss tried (and failed) at least once: the push is queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.hits.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "moss never tried the gateway: {}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = send(&s, &alice, &room, json!({"msgtype": "m.text", "body": "two"})).await;
    let mut s = s;
    s.kill9();
    let s = s.restart().await;
    gw.failing.store(false, Ordering::SeqCst);
    gw.wait_for("the first push after the restart", |n| n["notification"]["event_id"] == first.as_str()).await;
    gw.wait_for("the second", |n| n["notification"]["event_id"] == second.as_str()).await;
    // In order.
    let order: Vec<String> =
        gw.all().iter().filter_map(|n| n["notification"]["event_id"].as_str().map(str::to_owned)).collect();
    let (i, j) = (order.iter().position(|e| *e == first).unwrap(), order.iter().position(|e| *e == second).unwrap());
    assert!(i < j, "{order:?}");
    drop(s);
}

#[tokio::test]
async fn pushers_are_checked_rejected_keys_removed_and_private_gateways_refused() {
    let (gw, addr) = Gateway::start().await;
    let s = Server::start_with(PUSH_ENV).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;

    for (body, code) in [
        (
            json!({"kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "A", "device_display_name": "D", "lang": "en",
                "data": {"url": format!("http://{addr}/elsewhere")}}),
            "M_INVALID_PARAM",
        ),
        (
            json!({"kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "A", "device_display_name": "D", "lang": "en",
                "data": {}}),
            "M_BAD_JSON",
        ),
        (
            json!({"kind": "email", "app_id": "m.email", "pushkey": "bob@example.org", "app_display_name": "Email",
                "device_display_name": "bob@example.org", "lang": "en", "data": {}}),
            "M_INVALID_PARAM",
        ),
        (
            json!({"kind": "http", "app_id": "a", "pushkey": "k", "lang": "en", "data": {"url": format!("http://{addr}/_matrix/push/v1/notify")}}),
            "M_BAD_JSON",
        ),
    ] {
        let (st, v) = s.post("/_matrix/client/v3/pushers/set", &bob, body.clone()).await;
        assert_eq!((st, errcode(&v)), (400, code), "{body}: {v}");
    }

    // A rejected pushkey loses its pusher.
    set_pusher(&s, &bob, pusher(addr, "stale-key", json!({}))).await;
    gw.rejected.lock().unwrap().insert("stale-key".into());
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let ev = send(&s, &alice, &room, json!({"msgtype": "m.text", "body": "x"})).await;
    gw.wait_for("the push of the rejected key", |n| n["notification"]["event_id"] == ev.as_str()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = s.get("/_matrix/client/v3/pushers", &bob).await;
        if v["pushers"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the rejected pusher is still there: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deleting the device that set a pusher deletes the pusher.
    set_pusher(&s, &bob, pusher(addr, "phone", json!({}))).await;
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/delete_devices", Some(&bob.token), Some(json!({"devices": [bob.device],
            "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "password123"}})))
        .await;
    assert_eq!(st, 200, "{v}");
    let token = s.login("bob").await;
    let (_, v) = s.call("GET", "/_matrix/client/v3/pushers", Some(&token), None).await;
    assert_eq!(v["pushers"], json!([]), "{v}");

    // Without the allow-list exception, a gateway on loopback is never contacted.
    let strict = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_PUSH__ALLOW_HTTP", "true"),
    ])
    .await;
    let (gw2, addr2) = Gateway::start().await;
    let a = strict.register("alice").await;
    let b = strict.register("bob").await;
    set_pusher(&strict, &b, pusher(addr2, "k", json!({}))).await;
    let room = strict.create_room(&a, json!({"preset": "public_chat"})).await;
    assert_eq!(strict.join(&b, &room).await.0, 200);
    send(&strict, &a, &room, json!({"msgtype": "m.text", "body": "to a private address"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw2.hits.load(Ordering::SeqCst), 0, "a push reached a private address");
    // And https is the default: http gateway URLs are refused at /pushers/set.
    let https_only = Server::start().await;
    let c = https_only.register("carol").await;
    let (st, v) = https_only.post("/_matrix/client/v3/pushers/set", &c, pusher(addr, "k", json!({}))).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
}

#[tokio::test]
async fn thread_counts_come_apart_when_asked_and_threaded_receipts_clear_them() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let root = send(&s, &alice, &room, json!({"msgtype": "m.text", "body": "root"})).await;
    let mut replies = Vec::new();
    for i in 0..2 {
        replies.push(
            send(
                &s,
                &alice,
                &room,
                json!({"msgtype": "m.text", "body": format!("reply {i}"),
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
            )
            .await,
        );
    }
    let filter = json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string();
    let path = format!(
        "/_matrix/client/v3/sync?filter={}",
        filter.replace('{', "%7B").replace('}', "%7D").replace('"', "%22").replace(':', "%3A")
    );
    let v = threaded(&s, &bob, &path).await;
    let r = &v["rooms"]["join"][&room];
    assert_eq!(r["unread_notifications"]["notification_count"], 1, "the root only: {r}");
    assert_eq!(r["unread_thread_notifications"][&root]["notification_count"], 2, "{r}");
    // Without the filter flag, one number for everything.
    let v = s.sync(&bob, None, 0).await;
    assert_eq!(v["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 3);
    assert!(v["rooms"]["join"][&room].get("unread_thread_notifications").is_none());

    // A threaded receipt reads its thread only; a main-timeline one the rest.
    let (st, v) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", replies[0]),
            &bob,
            json!({"thread_id": root}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let v = threaded(&s, &bob, &path).await;
    let r = &v["rooms"]["join"][&room];
    assert_eq!(r["unread_thread_notifications"][&root]["notification_count"], 1, "{r}");
    assert_eq!(r["unread_notifications"]["notification_count"], 1, "{r}");
    let (st, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{root}"), &bob, json!({"thread_id": "main"}))
        .await;
    assert_eq!(st, 200);
    let v = threaded(&s, &bob, &path).await;
    let r = &v["rooms"]["join"][&room];
    assert_eq!(r["unread_notifications"]["notification_count"], 0, "{r}");
    assert_eq!(r["unread_thread_notifications"][&root]["notification_count"], 1, "{r}");
    // An unthreaded receipt on the last reply reads everything.
    let (st, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{}", replies[1]), &bob, json!({}))
        .await;
    assert_eq!(st, 200);
    let v = s.sync(&bob, None, 0).await;
    assert_eq!(v["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
}

async fn threaded(s: &Server, u: &User, path: &str) -> Value {
    let (st, v) = s.get(path, u).await;
    assert_eq!(st, 200, "{v}");
    v
}

#[tokio::test]
async fn invites_and_messages_from_another_server_are_pushed() {
    let (gw, addr) = Gateway::start().await;
    let env = [("MOSS_PUSH__ALLOW_HTTP", "true"), ("MOSS_PUSH__IP_RANGE_ALLOWLIST", "[\"127.0.0.1\"]")];
    let a = crate::federation::fed_server_with(&env).await;
    let b = crate::federation::fed_server_with(&env).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    set_pusher(&b.server, &bob, pusher(addr, "bob-key", json!({}))).await;
    let room = a.server.create_room(&alice, json!({"preset": "private_chat", "name": "Remote room"})).await;
    let (st, v) =
        a.server.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &alice, json!({"user_id": bob.id})).await;
    assert_eq!(st, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.all().iter().any(|n| n["notification"]["type"] == "m.room.member") {
        assert!(Instant::now() < deadline, "no push of the invite: {}", b.server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = gw.wait_for("the invite", |n| n["notification"]["type"] == "m.room.member").await;
    let n = &n["notification"];
    assert_eq!(n["membership"], "invite", "{n}");
    assert_eq!(n["user_is_target"], true);
    assert_eq!(n["room_name"], "Remote room", "from the invite's state: {n}");
    assert_eq!(n["sender"], alice.id.as_str());
    assert_eq!(n["counts"]["unread"], 1, "an invite counts on the badge");

    assert_eq!(b.server.join(&bob, &room).await.0, 200);
    let ev = send(&a.server, &alice, &room, json!({"msgtype": "m.text", "body": "over federation"})).await;
    let n = gw.wait_for("the federated message", |n| n["notification"]["event_id"] == ev.as_str()).await;
    assert_eq!(n["notification"]["content"]["body"], "over federation");
    assert_eq!(n["notification"]["room_name"], "Remote room");
}

/// A hostile gateway: it answers every push with an endless body. moss stops reading past its
/// 64 KiB answer budget, counts the push as failed and retries it; nothing else waits.
#[tokio::test]
async fn a_gateway_answering_without_end_costs_one_failed_attempt() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
                    )
                    .await;
                let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
                for _ in 0..100_000 {
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let s = Server::start_with(PUSH_ENV).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    set_pusher(&s, &bob, pusher(addr, "bob-key", json!({}))).await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    send(&s, &alice, &room, json!({"msgtype": "m.text", "body": "to a hostile gateway"})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while attempts.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the failed push was not retried: {}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.log().contains("larger than 65536 bytes"), "{}", s.log());
    let started = Instant::now();
    let (st, _) = s.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(st, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(s.peak_rss() < 200 << 20, "peak RSS {} MiB", s.peak_rss() >> 20);
}
