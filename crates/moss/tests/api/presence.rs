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
