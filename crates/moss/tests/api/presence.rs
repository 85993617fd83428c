//! Presence: set, get, visibility to room-mates only, delivery in /sync.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{errcode, Server};

#[tokio::test]
async fn presence_is_shared_with_room_mates() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let eve = s.register("eve").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);

    // Syncing marks a user online.
    let first = s.sync(&bob, None, 0).await;
    s.sync(&alice, None, 0).await;
    let seen = s.sync(&bob, Some(first["next_batch"].as_str().unwrap()), 0).await;
    let online = seen["presence"]["events"].as_array().unwrap().iter().find(|e| e["sender"] == alice.id.as_str());
    assert_eq!(online.map(|e| &e["content"]["presence"]), Some(&json!("online")), "{seen}");
    let t0 = seen["next_batch"].as_str().unwrap().to_owned();
    let (st, v) = s.get(&format!("/_matrix/client/v3/presence/{}/status", alice.id), &bob).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["presence"], "online");
    assert_eq!(v["currently_active"], true);
    assert!(v["last_active_ago"].as_u64().unwrap() < 60_000);

    // A status change reaches Bob's long-poll promptly.
    let started = Instant::now();
    let (v, (st, _)) = tokio::join!(s.sync(&bob, Some(&t0), 10_000), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.put(
            &format!("/_matrix/client/v3/presence/{}/status", alice.id),
            &alice,
            json!({"presence": "unavailable", "status_msg": "lunch"}),
        )
        .await
    });
    assert_eq!(st, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    let events = v["presence"]["events"].as_array().unwrap();
    let mine = events.iter().find(|e| e["sender"] == alice.id.as_str()).unwrap_or_else(|| panic!("{v}"));
    assert_eq!(mine["type"], "m.presence");
    assert_eq!(mine["content"]["presence"], "unavailable");
    assert_eq!(mine["content"]["status_msg"], "lunch");

    // Strangers may not look; nobody may set someone else's; bad states are refused.
    let (st, v) = s.get(&format!("/_matrix/client/v3/presence/{}/status", alice.id), &eve).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"));
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/presence/{}/status", alice.id), &bob, json!({"presence": "online"})).await;
    assert_eq!(st, 403);
    let (st, v) =
        s.put(&format!("/_matrix/client/v3/presence/{}/status", bob.id), &bob, json!({"presence": "asleep"})).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.get("/_matrix/client/v3/presence/@nobody:localhost/status", &bob).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
    // Eve's syncs never carry Alice's presence.
    let v = s.sync(&eve, None, 0).await;
    assert!(!v["presence"]["events"].as_array().unwrap().iter().any(|e| e["sender"] == alice.id.as_str()), "{v}");
}

#[tokio::test]
async fn closed_clients_go_offline_and_quiet_ones_go_idle_until_they_act() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_PRESENCE__OFFLINE_AFTER_MS", "1500"),
        ("MOSS_PRESENCE__IDLE_AFTER_MS", "3000"),
    ])
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let presence_of = |u: &crate::common::User| format!("/_matrix/client/v3/presence/{}/status", u.id);

    // Both come online by syncing; then Alice closes her client while Bob keeps long-polling
    // without doing anything.
    let mut since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.sync(&alice, None, 0).await;
    let started = Instant::now();
    assert_eq!(s.get(&presence_of(&alice), &bob).await.1["presence"], "online");
    let (mut alice_offline, mut bob_idle) = (None, None);
    while started.elapsed() < Duration::from_secs(15) && (alice_offline.is_none() || bob_idle.is_none()) {
        let v = s.sync(&bob, Some(&since), 500).await;
        since = v["next_batch"].as_str().unwrap().to_owned();
        for e in v["presence"]["events"].as_array().unwrap() {
            match (e["sender"].as_str(), e["content"]["presence"].as_str()) {
                (Some(u), Some("offline")) if u == alice.id => alice_offline = Some(started.elapsed()),
                (Some(u), Some("unavailable")) if u == bob.id => bob_idle = Some(started.elapsed()),
                (Some(u), Some(p)) if u == bob.id => panic!("Bob, syncing all along, became {p}"),
                _ => {}
            }
        }
    }
    let alice_offline = alice_offline.expect("Alice's presence never went offline");
    let bob_idle = bob_idle.expect("Bob never went idle");
    assert!(alice_offline >= Duration::from_millis(1200), "offline too early: {alice_offline:?}");
    assert!(bob_idle >= Duration::from_millis(2500), "idle too early: {bob_idle:?}");
    let (_, v) = s.get(&presence_of(&bob), &alice).await;
    assert_eq!((v["presence"].as_str(), v["currently_active"].as_bool()), (Some("unavailable"), Some(false)), "{v}");
    assert!(v["last_active_ago"].as_u64().unwrap() >= 3000, "idle time is kept: {v}");

    // Bob's next action makes him online and active again; Alice's next sync brings her back.
    s.send_text(&bob, &room, "back").await;
    let (_, v) = s.get(&presence_of(&bob), &alice).await;
    assert_eq!((v["presence"].as_str(), v["currently_active"].as_bool()), (Some("online"), Some(true)), "{v}");
    assert!(v["last_active_ago"].as_u64().unwrap() < 1000, "{v}");
    s.sync(&alice, None, 0).await;
    assert_eq!(s.get(&presence_of(&alice), &bob).await.1["presence"], "online");
    // A client that syncs with set_presence=offline is not kept online by it: Alice goes
    // offline while such a long-poll of hers is still in progress (had it kept her online, she
    // would stay so until 1.5 s after its end, past the deadline).
    let v = s.sync(&alice, None, 0).await;
    let since = v["next_batch"].as_str().unwrap().to_owned();
    let offline_sync = format!("/_matrix/client/v3/sync?set_presence=offline&timeout=8000&since={since}");
    let poll = s.get(&offline_sync, &alice);
    let went_offline = async {
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            if s.get(&presence_of(&alice), &bob).await.1["presence"] == "offline" {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ((st, _), went_offline) = tokio::join!(poll, went_offline);
    assert_eq!(st, 200);
    assert!(went_offline, "Alice stayed online while syncing with set_presence=offline");
}
