//! Simplified sliding sync (MSC4186) over HTTP: lists ordered by recency with windows and counts,
//! incremental positions and long-polls, filters, room subscriptions, required_state wildcards,
//! extensions, invites and leaves, and the request budgets.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{enc, errcode, Server, User};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn ss(s: &Server, u: &User, pos: Option<&str>, timeout_ms: u64, body: Value) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={p}"));
    }
    s.post(&path, u, body).await
}

async fn ok(s: &Server, u: &User, pos: Option<&str>, timeout_ms: u64, body: Value) -> Value {
    let (st, v) = ss(s, u, pos, timeout_ms, body).await;
    assert_eq!(st, 200, "sliding sync: {v}");
    v
}

fn pos(v: &Value) -> String {
    v["pos"].as_str().expect("pos").to_owned()
}

fn window(v: &Value, list: &str) -> Vec<String> {
    v["lists"][list]["ops"][0]["room_ids"]
        .as_array()
        .map(|a| a.iter().map(|r| r.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn state_of<'a>(room: &'a Value, kind: &str) -> Vec<&'a Value> {
    room["required_state"].as_array().map(|a| a.iter().filter(|e| e["type"] == kind).collect()).unwrap_or_default()
}

#[tokio::test]
async fn lists_are_ordered_by_recency_windowed_and_counted() {
    let s = Server::start().await;
    let (_, versions) = s.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true, "{versions}");
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let room = s.create_room(&bob, json!({"name": format!("room {i}"), "invite": [alice.id]})).await;
        s.join(&alice, &room).await;
        rooms.push(room);
    }
    // Recency: 3, 1, 4, 0, 2 (the last message decides; joins and state do not bump).
    for i in [2, 0, 4, 1, 3] {
        s.send_text(&bob, &rooms[i], &format!("hello {i}")).await;
    }
    s.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", rooms[1]), &bob, json!({"topic": "t"})).await;
    let expected: Vec<String> = [3, 1, 4, 0, 2].iter().map(|i| rooms[*i].clone()).collect();

    let v = ok(
        &s,
        &alice,
        None,
        0,
        json!({"lists": {"all": {"ranges": [[0, 2]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}}}),
    )
    .await;
    assert_eq!(v["lists"]["all"]["count"], 5, "{v}");
    assert_eq!(window(&v, "all"), expected[..3].to_vec(), "{v}");
    let got: Vec<&String> = v["rooms"].as_object().unwrap().keys().collect();
    assert_eq!(got.len(), 3, "only the window's rooms are sent: {got:?}");
    let top = &v["rooms"][&expected[0]];
    assert_eq!(top["initial"], true);
    assert_eq!(top["name"], "room 3");
    assert_eq!(bodies(top), vec!["hello 3"], "timeline_limit 1 gives the last event: {top}");
    assert_eq!(top["limited"], true);
    assert!(top["prev_batch"].is_string());
    assert_eq!(top["joined_count"], 2);
    assert_eq!(top["notification_count"], 1, "bob's message notifies alice: {top}");
    assert_eq!(state_of(top, "m.room.name").len(), 1, "{top}");
    assert!(state_of(top, "m.room.create").is_empty(), "only the required state: {top}");
    let stamps: Vec<u64> = expected[..3].iter().map(|r| v["rooms"][r]["bump_stamp"].as_u64().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] > w[1]), "bump stamps fall down the list: {stamps:?}");

    // Growing the window sends only the rooms the connection has not seen.
    let v2 = ok(
        &s,
        &alice,
        Some(&pos(&v)),
        0,
        json!({"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}}}),
    )
    .await;
    assert_eq!(window(&v2, "all"), expected, "{v2}");
    let mut sent: Vec<String> = v2["rooms"].as_object().unwrap().keys().cloned().collect();
    sent.sort();
    let mut rest = expected[3..].to_vec();
    rest.sort();
    assert_eq!(sent, rest, "{v2}");

    // A message moves its room to the top.
    s.send_text(&bob, &rooms[2], "bump").await;
    let v3 = ok(
        &s,
        &alice,
        Some(&pos(&v2)),
        0,
        json!({"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}}}),
    )
    .await;
    assert_eq!(window(&v3, "all")[0], rooms[2], "{v3}");
    let moved = &v3["rooms"][&rooms[2]];
    assert_eq!(bodies(moved), vec!["bump"]);
    assert!(moved.get("initial").is_none(), "{moved}");
    assert_eq!(moved["num_live"], 1);
    assert_eq!(moved["limited"], false);
    assert_eq!(v3["rooms"].as_object().unwrap().len(), 1, "nothing else changed: {v3}");
}

#[tokio::test]
async fn incremental_requests_long_poll_and_positions_expire() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"invite": [alice.id]})).await;
    s.join(&alice, &room).await;
    let body = json!({"conn_id": "main", "lists": {"l": {"ranges": [[0, 9]], "timeline_limit": 5}}});
    let first = ok(&s, &alice, None, 0, body.clone()).await;
    let p1 = pos(&first);

    // Nothing new: the request waits for the timeout.
    let t = Instant::now();
    let idle = ok(&s, &alice, Some(&p1), 400, body.clone()).await;
    assert!(t.elapsed() >= Duration::from_millis(350), "returned after {:?}", t.elapsed());
    assert!(idle["rooms"].as_object().unwrap().is_empty(), "{idle}");

    // A message wakes it at once.
    let p2 = pos(&idle);
    let poll = {
        let (s2, alice2, body2, p2) = (s.base.clone(), alice.token.clone(), body.clone(), p2.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let res = reqwest::Client::new()
                .post(format!("{s2}{PATH}?timeout=20000&pos={p2}"))
                .bearer_auth(alice2)
                .json(&body2)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap();
            (t.elapsed(), res)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_text(&bob, &room, "wake up").await;
    let (took, woke) = poll.await.unwrap();
    assert!(took < Duration::from_secs(3), "woken after {took:?}");
    assert_eq!(bodies(&woke["rooms"][&room]), vec!["wake up"], "{woke}");

    // The same position again (a lost response) gives the same answer.
    let again = ok(&s, &alice, Some(&p2), 0, body.clone()).await;
    assert_eq!(bodies(&again["rooms"][&room]), vec!["wake up"], "{again}");

    // Unknown, malformed and other connections' positions.
    for bad in ["nonsense", "abc_99999", &p2] {
        let other = if bad == p2 { json!({"conn_id": "other"}) } else { body.clone() };
        let (st, v) = ss(&s, &alice, Some(bad), 0, other).await;
        assert_eq!((st, errcode(&v)), (400, "M_UNKNOWN_POS"), "{bad}: {v}");
    }
    // Another device cannot continue alice's connection.
    let token2 = s.login("alice").await;
    let (st, v) = s.call("POST", &format!("{PATH}?pos={}", pos(&woke)), Some(&token2), Some(body.clone())).await;
    assert_eq!((st, errcode(&v)), (400, "M_UNKNOWN_POS"), "{v}");

    // Positions kept in memory do not survive a restart; kept in PostgreSQL (processes that
    // share a database) they do. Either way a new connection works at once.
    let p = pos(&woke);
    let in_database = !crate::common::database_env(s.data_dir()).is_empty();
    let s = s.restart().await;
    let (st, v) = ss(&s, &alice, Some(&p), 0, body.clone()).await;
    if in_database {
        assert_eq!(st, 200, "{v}");
    } else {
        assert_eq!((st, errcode(&v)), (400, "M_UNKNOWN_POS"), "{v}");
    }
    let fresh = ok(&s, &alice, None, 0, body).await;
    assert_eq!(fresh["rooms"][&room]["initial"], true, "{fresh}");
}

#[tokio::test]
async fn filters_subscriptions_and_required_state() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let plain = s.create_room(&alice, json!({"name": "plain"})).await;
    let dm = s.create_room(&alice, json!({"is_direct": true, "invite": [bob.id]})).await;
    s.put(
        &format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&alice.id)),
        &alice,
        json!({bob.id.clone(): [dm]}),
    )
    .await;
    let encrypted = s
        .create_room(
            &alice,
            json!({"initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
        )
        .await;
    let space = s.create_room(&alice, json!({"creation_content": {"type": "m.space"}, "name": "space"})).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{}", enc(&plain)),
        &alice,
        json!({"via": ["localhost"]}),
    )
    .await;
    let invited = s.create_room(&bob, json!({"name": "an invite", "invite": [alice.id]})).await;

    let list = |filters: Value| json!({"ranges": [[0, 20]], "timeline_limit": 0, "filters": filters});
    let v = ok(
        &s,
        &alice,
        None,
        0,
        json!({"lists": {
            "dm": list(json!({"is_dm": true})),
            "not_dm": list(json!({"is_dm": false, "is_invite": false})),
            "encrypted": list(json!({"is_encrypted": true})),
            "invites": list(json!({"is_invite": true})),
            "spaces": list(json!({"room_types": ["m.space"]})),
            "no_spaces": list(json!({"not_room_types": ["m.space"], "is_invite": false})),
            "in_space": list(json!({"spaces": [space]})),
        }}),
    )
    .await;
    let set = |name: &str| {
        let mut w = window(&v, name);
        w.sort();
        w
    };
    let sorted = |mut x: Vec<String>| {
        x.sort();
        x
    };
    assert_eq!(set("dm"), vec![dm.clone()], "{v}");
    assert_eq!(set("not_dm"), sorted(vec![plain.clone(), encrypted.clone(), space.clone()]));
    assert_eq!(set("encrypted"), vec![encrypted.clone()]);
    assert_eq!(set("invites"), vec![invited.clone()]);
    assert_eq!(set("spaces"), vec![space.clone()]);
    assert_eq!(set("no_spaces"), sorted(vec![plain.clone(), dm.clone(), encrypted.clone()]));
    assert_eq!(set("in_space"), vec![plain.clone()]);
    assert_eq!(v["rooms"][&dm]["is_dm"], true);
    let inv = &v["rooms"][&invited];
    assert!(inv["invite_state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"), "{inv}");
    assert!(inv.get("timeline").is_none(), "{inv}");

    // A subscription with its own required_state and timeline; $ME, $LAZY and wildcards.
    s.join(&bob, &dm).await;
    s.send_text(&bob, &dm, "from bob").await;
    let sub = |required: Value, limit: u64| json!({"room_subscriptions": {dm.clone(): {"required_state": required, "timeline_limit": limit}}});
    let a = ok(&s, &alice, None, 0, sub(json!([["m.room.member", "$ME"]]), 1)).await;
    let room = &a["rooms"][&dm];
    let members: Vec<&str> = state_of(room, "m.room.member").iter().map(|e| e["state_key"].as_str().unwrap()).collect();
    assert_eq!(members, vec![alice.id.as_str()], "{room}");
    let b = ok(&s, &alice, None, 0, sub(json!([["m.room.member", "$LAZY"]]), 1)).await;
    let members: Vec<&str> =
        state_of(&b["rooms"][&dm], "m.room.member").iter().map(|e| e["state_key"].as_str().unwrap()).collect();
    assert_eq!(members, vec![bob.id.as_str()], "the timeline's sender only: {b}");
    let c = ok(&s, &alice, None, 0, sub(json!([["*", "*"]]), 1)).await;
    assert!(
        state_of(&c["rooms"][&dm], "m.room.create").len() == 1
            && state_of(&c["rooms"][&dm], "m.room.member").len() == 2
    );
    let d = ok(&s, &alice, None, 0, sub(json!([["m.room.member", "*"]]), 1)).await;
    assert!(
        state_of(&d["rooms"][&dm], "m.room.create").is_empty()
            && state_of(&d["rooms"][&dm], "m.room.member").len() == 2
    );

    // Asking for more: the newly required state and a longer timeline (expanded).
    let p = pos(&a);
    let more = ok(&s, &alice, Some(&p), 0, sub(json!([["m.room.member", "$ME"], ["m.room.create", ""]]), 10)).await;
    let room = &more["rooms"][&dm];
    assert_eq!(state_of(room, "m.room.create").len(), 1, "{room}");
    assert!(state_of(room, "m.room.member").is_empty(), "already sent: {room}");
    assert_eq!(room["unstable_expanded_timeline"], true, "{room}");
    assert!(room["timeline"].as_array().unwrap().len() > 1, "{room}");

    // Unsubscribing (leaving the room out) stops its updates.
    let p = pos(&more);
    let none = ok(&s, &alice, Some(&p), 0, json!({})).await;
    s.send_text(&bob, &dm, "unseen").await;
    let after = ok(&s, &alice, Some(&pos(&none)), 0, json!({})).await;
    assert!(after["rooms"].as_object().unwrap().is_empty(), "{after}");
    // …and subscribing again sends what was missed since.
    let back =
        ok(&s, &alice, Some(&pos(&after)), 0, sub(json!([["m.room.member", "$ME"], ["m.room.create", ""]]), 10)).await;
    assert_eq!(bodies(&back["rooms"][&dm]), vec!["unseen"], "{back}");

    // A room the user is not in cannot be subscribed to.
    let secret = s.create_room(&bob, json!({})).await;
    let x = ok(&s, &alice, None, 0, json!({"room_subscriptions": {secret.clone(): {"timeline_limit": 5}}})).await;
    assert!(x["rooms"].get(&secret).is_none(), "{x}");
}

#[tokio::test]
async fn invites_joins_kicks_and_leaves() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"name": "r", "invite": [alice.id]})).await;
    let body =
        json!({"lists": {"l": {"ranges": [[0, 9]], "timeline_limit": 3, "required_state": [["m.room.name", ""]]}}});
    let v = ok(&s, &alice, None, 0, body.clone()).await;
    assert!(v["rooms"][&room]["invite_state"].is_array(), "{v}");
    s.join(&alice, &room).await;
    let v = ok(&s, &alice, Some(&pos(&v)), 0, body.clone()).await;
    let joined = &v["rooms"][&room];
    assert_eq!(joined["initial"], true, "a joined invite is sent whole: {joined}");
    assert!(joined.get("invite_state").is_none());
    assert_eq!(state_of(joined, "m.room.name").len(), 1);

    // Kicked: the room stays in the list, with the kick as its last event.
    s.post(&format!("/_matrix/client/v3/rooms/{room}/kick"), &bob, json!({"user_id": alice.id})).await;
    s.send_text(&bob, &room, "after the kick").await;
    let v = ok(&s, &alice, Some(&pos(&v)), 0, body.clone()).await;
    let kicked = &v["rooms"][&room];
    let last = kicked["timeline"].as_array().unwrap().last().unwrap();
    assert_eq!((last["type"].as_str(), last["content"]["membership"].as_str()), (Some("m.room.member"), Some("leave")));
    assert!(!bodies(kicked).contains(&"after the kick".to_owned()), "nothing after the kick: {kicked}");

    // Left by herself: shown once on the connection it happens on, not on a new one.
    let other = s.create_room(&alice, json!({})).await;
    let v = ok(&s, &alice, Some(&pos(&v)), 0, body.clone()).await;
    s.post(&format!("/_matrix/client/v3/rooms/{other}/leave"), &alice, json!({})).await;
    let v = ok(&s, &alice, Some(&pos(&v)), 0, body.clone()).await;
    assert!(v["rooms"].get(&other).is_some(), "{v}");
    let fresh = ok(&s, &alice, None, 0, body).await;
    assert!(fresh["rooms"].get(&other).is_none() && fresh["rooms"].get(&room).is_some(), "{fresh}");
}

#[tokio::test]
async fn extensions_to_device_e2ee_account_data_receipts_typing() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"invite": [alice.id]})).await;
    s.join(&alice, &room).await;
    let ev = s.send_text(&bob, &room, "read me").await;
    s.put(&format!("/_matrix/client/v3/user/{}/account_data/org.example.g", enc(&alice.id)), &alice, json!({"g": 1}))
        .await;
    s.put(
        &format!("/_matrix/client/v3/user/{}/rooms/{room}/account_data/org.example.r", enc(&alice.id)),
        &alice,
        json!({"r": 1}),
    )
    .await;
    s.put(
        "/_matrix/client/v3/sendToDevice/org.example.hello/t1",
        &bob,
        json!({"messages": {alice.id.clone(): {alice.device.clone(): {"n": 1}}}}),
    )
    .await;
    let all = json!({"to_device": {"enabled": true}, "e2ee": {"enabled": true}, "account_data": {"enabled": true},
                     "receipts": {"enabled": true}, "typing": {"enabled": true}});
    let body = json!({"lists": {"l": {"ranges": [[0, 9]], "timeline_limit": 1}}, "extensions": all});
    let v = ok(&s, &alice, None, 0, body.clone()).await;
    let e = &v["extensions"];
    assert_eq!(e["to_device"]["events"][0]["content"]["n"], 1, "{e}");
    assert_eq!(e["to_device"]["events"][0]["sender"], bob.id.as_str());
    let next = e["to_device"]["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(e["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0, "{e}");
    assert!(e["e2ee"]["device_unused_fallback_key_types"].is_array());
    assert!(e["account_data"]["global"].as_array().unwrap().iter().any(|a| a["type"] == "org.example.g"), "{e}");
    assert!(e["account_data"]["global"].as_array().unwrap().iter().any(|a| a["type"] == "m.push_rules"));
    assert_eq!(e["account_data"]["rooms"][&room][0]["type"], "org.example.r", "{e}");
    assert_eq!(v["rooms"][&room]["notification_count"], 1);

    // Alice reads: her receipt comes back in the extension and the count drops to 0; bob types
    // and uploads keys; another to-device message (the first one acknowledged by `since`).
    s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", enc(&ev)), &alice, json!({})).await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(&bob.id)),
        &bob,
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    let key = crate::e2ee::Key::new(Some(&bob.device));
    let (st, up) = s
        .post("/_matrix/client/v3/keys/upload", &bob, json!({"device_keys": crate::e2ee::device_keys(&bob, &key)}))
        .await;
    assert_eq!(st, 200, "{up}");
    s.put(
        "/_matrix/client/v3/sendToDevice/org.example.hello/t2",
        &bob,
        json!({"messages": {alice.id.clone(): {alice.device.clone(): {"n": 2}}}}),
    )
    .await;
    let mut body2 = body.clone();
    body2["extensions"]["to_device"]["since"] = json!(next);
    let v2 = ok(&s, &alice, Some(&pos(&v)), 0, body2).await;
    let e = &v2["extensions"];
    let n: Vec<i64> =
        e["to_device"]["events"].as_array().unwrap().iter().map(|m| m["content"]["n"].as_i64().unwrap()).collect();
    assert_eq!(n, vec![2], "{e}");
    assert!(e["receipts"]["rooms"][&room]["content"][&ev]["m.read"][&alice.id]["ts"].is_u64(), "{e}");
    assert_eq!(e["typing"]["rooms"][&room]["content"]["user_ids"], json!([bob.id]), "{e}");
    assert!(e["e2ee"]["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == bob.id.as_str()), "{e}");
    assert_eq!(v2["rooms"][&room]["notification_count"], 0, "{v2}");

    // Extensions are sticky: a request that leaves them out keeps them (to-device continues).
    s.put(
        "/_matrix/client/v3/sendToDevice/org.example.hello/t3",
        &bob,
        json!({"messages": {alice.id.clone(): {alice.device.clone(): {"n": 3}}}}),
    )
    .await;
    let v3 = ok(&s, &alice, Some(&pos(&v2)), 0, json!({"lists": body["lists"]})).await;
    let n: Vec<i64> = v3["extensions"]["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(n, vec![3], "{v3}");

    // Scoping: receipts only for a named room that is not alice's.
    let other = s.create_room(&bob, json!({"invite": [alice.id]})).await;
    s.join(&alice, &other).await;
    let ev2 = s.send_text(&bob, &other, "x").await;
    s.post(&format!("/_matrix/client/v3/rooms/{other}/receipt/m.read/{}", enc(&ev2)), &bob, json!({})).await;
    s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", enc(&ev)), &bob, json!({})).await;
    let scoped = ok(
        &s,
        &alice,
        Some(&pos(&v3)),
        0,
        json!({"lists": body["lists"], "extensions": {"receipts": {"enabled": true, "lists": [], "rooms": [other]}}}),
    )
    .await;
    let rooms = scoped["extensions"]["receipts"]["rooms"].as_object().unwrap();
    assert_eq!(rooms.keys().collect::<Vec<_>>(), vec![&other], "{scoped}");
}

#[tokio::test]
async fn request_budgets_are_enforced() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let many_lists: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("l{i}"), json!({"ranges": [[0, 1]], "timeline_limit": 1}))).collect();
    let cases = [
        json!({"lists": many_lists}),
        json!({"conn_id": "x".repeat(65)}),
        json!({"lists": {"l": {"ranges": [[5, 1]], "timeline_limit": 1}}}),
        json!({"lists": {"l": {"ranges": vec![[0, 1]; 65], "timeline_limit": 1}}}),
        json!({"lists": {"l": {"ranges": [[0, 1]], "timeline_limit": 1, "required_state": vec![["a", "b"]; 257]}}}),
    ];
    for body in cases {
        let (st, v) = ss(&s, &alice, None, 0, body).await;
        assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
    }
    // Huge numbers are clamped, not allocated.
    let room = s.create_room(&alice, json!({})).await;
    let v = ok(
        &s,
        &alice,
        None,
        0,
        json!({"lists": {"l": {"ranges": [[0, 9007199254740991u64]], "timeline_limit": 9007199254740991u64}}}),
    )
    .await;
    assert_eq!(window(&v, "l"), vec![room.clone()]);
    assert!(!v["rooms"][&room]["timeline"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn rooms_over_federation_invites_and_knocks() {
    use crate::federation::fed_server_with;
    let env = [("MOSS_FEDERATION__MAX_RETRY_DELAY_MS", "1000")];
    let (a, b) = (fed_server_with(&env).await, fed_server_with(&env).await);
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = a.server.create_room(&alice, json!({"name": "Across", "invite": [bob.id]})).await;
    a.server.send_text(&alice, &room, "before bob").await;
    let body = json!({"lists": {"l": {"ranges": [[0, 9]], "timeline_limit": 5, "required_state": [["m.room.name", ""]],
                                      "filters": {}}}});

    // The invite arrives over federation: a long-poll on B wakes with it.
    let first = ok(&b.server, &bob, None, 0, body.clone()).await;
    let mut v = first.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while v["rooms"].get(&room).is_none() && Instant::now() < deadline {
        v = ok(&b.server, &bob, Some(&pos(&v)), 5000, body.clone()).await;
    }
    let inv = &v["rooms"][&room];
    assert!(
        inv["invite_state"].as_array().is_some_and(|s| s.iter().any(|e| e["content"]["name"] == "Across")),
        "a remote invite with the room's stripped state: {v}\n--- A ---\n{}\n--- B ---\n{}",
        a.server.log(),
        b.server.log()
    );
    assert_eq!(inv["name"], "Across");

    // Joined over federation: sent whole, with the state and history the join brought.
    let (st, j) = b.server.join(&bob, &enc(&room)).await;
    assert_eq!(st, 200, "{j}");
    let v = ok(&b.server, &bob, Some(&pos(&v)), 0, body.clone()).await;
    let joined = &v["rooms"][&room];
    assert_eq!(joined["initial"], true, "{v}");
    assert_eq!(state_of(joined, "m.room.name")[0]["content"]["name"], "Across", "{joined}");
    assert_eq!(joined["joined_count"], 2, "{joined}");
    // A message from A wakes B's long-poll.
    let p = pos(&v);
    let poll = {
        let (base, token, body, p) = (b.server.base.clone(), bob.token.clone(), body.clone(), p.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut p = p;
            loop {
                let v: Value = client
                    .post(format!("{base}{PATH}?timeout=20000&pos={p}"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                p = pos(&v);
                let room = v["rooms"].as_object().and_then(|r| r.values().next().cloned()).unwrap_or_default();
                if bodies(&room).contains(&"from A".to_owned()) {
                    return room;
                }
            }
        })
    };
    a.server.send_text(&alice, &room, "from A").await;
    let got = tokio::time::timeout(Duration::from_secs(20), poll).await.expect("B's long-poll woke").unwrap();
    assert_eq!(got["num_live"], 1, "{got}");

    // A knock over federation shows with the stripped state the room's server sent.
    let knock_room = a.server.create_room(&alice, json!({"preset": "private_chat", "name": "Knock knock"})).await;
    a.server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(&knock_room)),
            &alice,
            json!({"join_rule": "knock"}),
        )
        .await;
    let (st, k) = b
        .server
        .post(&format!("/_matrix/client/v3/knock/{}?via={}", enc(&knock_room), enc(a.name.as_str())), &bob, json!({}))
        .await;
    assert_eq!(st, 200, "{k}");
    let v = ok(&b.server, &bob, None, 0, body).await;
    let knocked = &v["rooms"][&knock_room];
    assert!(
        knocked["invite_state"].as_array().is_some_and(|s| s.iter().any(|e| e["content"]["name"] == "Knock knock")),
        "{v}"
    );
    assert!(knocked.get("timeline").is_none(), "{knocked}");
}
