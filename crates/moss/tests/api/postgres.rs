//! moss on PostgreSQL beyond running the whole suite on it (`MOSS_TEST_DB=postgres`): moving an
//! existing SQLite server over with `moss db migrate`.

use std::process::Command;

use serde_json::json;

use crate::common::{create_postgres_database, enc, moss_bin, Server};

fn pg_or_skip() -> Option<String> {
    match create_postgres_database() {
        Some(url) => Some(url),
        None => {
            assert!(std::env::var("MOSS_REQUIRE_PG").is_err(), "PostgreSQL is required (MOSS_TEST_PG_*)");
            eprintln!("skipping: no PostgreSQL test instance (scripts/postgres-start.sh)");
            None
        }
    }
}

/// A server used on SQLite, copied with `moss db migrate` (interrupted once, then resumed),
/// starts on PostgreSQL with everything there: accounts, rooms, history, search, relations,
/// redactions, media, receipts, account data; and it goes on (new events, rooms, reports).
#[tokio::test]
async fn a_sqlite_server_moves_to_postgresql_and_carries_on() {
    let Some(url) = pg_or_skip() else { return };
    // SQLite whatever MOSS_TEST_DB says: an empty value overrides nothing.
    let sqlite = [("MOSS_DATABASE__URL", ""), ("MOSS_REGISTRATION", "open"), ("MOSS_RATE_LIMITS__ENABLED", "false")];
    let s = Server::start_with(&sqlite).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"name": "Before the move", "preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(s.send_text(&alice, &room, &format!("message {i} about pelicans")).await);
    }
    let (st, v) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r1"),
            &bob,
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": sent[0], "key": "👍"}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let redacted = s.send_text(&bob, &room, "a secret pelican").await;
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{}/x1", enc(&redacted)), &bob, json!({})).await;
    assert_eq!(st, 200);
    let (st, v) =
        s.call_raw("POST", "/_matrix/media/v3/upload", Some(&alice.token), Some(b"moved bytes".to_vec())).await;
    assert_eq!(st, 200, "{v}");
    let mxc = v["content_uri"].as_str().unwrap().to_owned();
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/org.example.moved", enc(&alice.id)),
            &alice,
            json!({"yes": 1}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", enc(&sent[24])), &bob, json!({})).await;
    assert_eq!(st, 200);
    let data_dir = s.data_dir();
    let dir = s.dir.clone();
    let mut s = s;
    assert_eq!(s.terminate(), Some(0), "moss stops before its database is copied");

    let migrate = |extra: &[&str]| {
        let out = Command::new(moss_bin())
            .args(["db", "migrate", "--to", &url, "--batch", "7"])
            .args(extra)
            .env("MOSS_DATA_DIR", &data_dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = migrate(&["--stop-after-batches", "5"]);
    assert!(!ok && out.contains("stopped after 5 batches") && out.contains("run the same command again"), "{out}");
    let (ok, out) = migrate(&[]);
    assert!(ok && out.contains("verified"), "{out}");
    for table in ["events", "users", "event_relations", "event_search", "room_list_info", "media"] {
        assert!(out.lines().any(|l| l.starts_with(table)), "{table} in the report: {out}");
    }
    let (ok, out) = migrate(&[]);
    assert!(ok && out.contains("verified"), "a finished copy verifies again: {out}");
    // A database that has a server in it, not from a copy, is refused.
    let other = create_postgres_database().unwrap();
    let busy = Server::start_with(&[("MOSS_DATABASE__URL", other.as_str()), ("MOSS_REGISTRATION", "open")]).await;
    busy.register("someone").await;
    let out = Command::new(moss_bin())
        .args(["db", "migrate", "--to", &other])
        .env("MOSS_DATA_DIR", &data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("empty database"), "{text}");
    drop(busy);

    std::mem::forget(s); // its directory is the new server's
    let s = Server::start_in(
        dir,
        &[("MOSS_DATABASE__URL", url.as_str()), ("MOSS_REGISTRATION", "open"), ("MOSS_RATE_LIMITS__ENABLED", "false")],
    )
    .await;
    let alice_token = s.login("alice").await;
    let alice = crate::common::User { token: alice_token, ..alice };
    let (st, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), &alice).await;
    assert_eq!(st, 200, "{v}");
    let bodies: Vec<&str> =
        v["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies.iter().filter(|b| b.contains("about pelicans")).count(), 25, "{bodies:?}");
    assert!(!bodies.iter().any(|b| b.contains("secret")), "the redaction stays: {bodies:?}");
    let (st, v) = s
        .post(
            "/_matrix/client/v3/search",
            &alice,
            json!({"search_categories": {"room_events": {"search_term": "pelicans"}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["search_categories"]["room_events"]["count"], 25,
        "search finds the copied messages, not the redacted one: {v}"
    );
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{}", enc(&sent[0])), &alice).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["chunk"].as_array().unwrap().len(), 1, "the reaction: {v}");
    let res = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v1/media/download/{}", s.base, mxc.trim_start_matches("mxc://")))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(&res.bytes().await.unwrap()[..], b"moved bytes", "media served after the move");
    let (st, v) =
        s.get(&format!("/_matrix/client/v3/user/{}/account_data/org.example.moved", enc(&alice.id)), &alice).await;
    assert_eq!((st, v), (200, json!({"yes": 1})));
    // It carries on: new events after the old ones, a new room (state group ids continue), a report.
    let newer = s.send_text(&alice, &room, "after the move").await;
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), &alice).await;
    assert_eq!(v["chunk"][0]["event_id"], newer.as_str());
    let room2 = s.create_room(&alice, json!({"name": "After the move"})).await;
    s.send_text(&alice, &room2, "new room, new state groups").await;
    let (st, v) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/report/{}", enc(&newer)), &alice, json!({"reason": "test"}))
        .await;
    assert_eq!(st, 200, "{v}");
    let sync = s.sync(&alice, None, 0).await;
    assert!(sync["rooms"]["join"][&room2].is_object() && sync["rooms"]["join"][&room].is_object(), "{sync}");
}

/// A /sync long-poll (20 s) on `s` from `since`, in the background: how long it took, and its body.
fn long_poll(
    s: &Server,
    u: &crate::common::User,
    since: &str,
) -> tokio::task::JoinHandle<(std::time::Duration, serde_json::Value)> {
    let (base, token, since) = (s.base.clone(), u.token.clone(), since.to_owned());
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/_matrix/client/v3/sync?timeout=20000&since={since}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (started.elapsed(), v)
    })
}

/// Two moss processes on one PostgreSQL database and one data directory, a client's requests
/// alternating between them: a two-step registration that starts on one and ends on the other,
/// a long-poll on one woken by a message and by typing sent through the other, unread counts
/// from the push evaluator that only one of them runs; then that one is killed and the other
/// takes the background work over.
#[tokio::test]
async fn two_processes_share_one_database() {
    let Some(url) = pg_or_skip() else { return };
    let env = [
        ("MOSS_DATABASE__URL", url.as_str()),
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_PRESENCE__OFFLINE_AFTER_MS", "1500"),
    ];
    let a = Server::start_with(&env).await;
    let shared = a.data_dir().to_string_lossy().into_owned();
    let dir_b = std::env::temp_dir().join(format!("moss-test-b-{}", crate::common::free_port()));
    std::fs::create_dir_all(&dir_b).unwrap();
    let mut env_b = env.to_vec();
    env_b.push(("MOSS_DATA_DIR", shared.as_str()));
    let b = Server::start_in(dir_b, &env_b).await;

    // Registration in two steps, one on each process.
    let (st, v) = a
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "alice", "password": "password123"})),
        )
        .await;
    assert_eq!(st, 401, "{v}");
    let session = v["session"].as_str().unwrap().to_owned();
    let (st, v) = b
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "alice", "password": "password123", "auth": {"type": "m.login.dummy", "session": session}})),
        )
        .await;
    assert_eq!(st, 200, "the session begun on A is known to B: {v}");
    let alice = crate::common::User {
        id: v["user_id"].as_str().unwrap().into(),
        token: v["access_token"].as_str().unwrap().into(),
        device: v["device_id"].as_str().unwrap().into(),
    };
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(b.join(&bob, &room).await.0, 200);

    // Bob long-polls on A; Alice writes on B.
    let first = a.sync(&bob, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let poll = long_poll(&a, &bob, &since);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = b.send_text(&alice, &room, "written on B, read on A").await;
    let (took, v) = poll.await.unwrap();
    let events = &v["rooms"]["join"][&room]["timeline"]["events"];
    assert!(events.as_array().unwrap().iter().any(|e| e["event_id"] == sent.as_str()), "{v}");
    assert!(took < std::time::Duration::from_secs(5), "woken across processes in {took:?}");

    // Typing through B reaches a long-poll on A.
    let since = v["next_batch"].as_str().unwrap().to_owned();
    let poll = long_poll(&a, &bob, &since);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (st, _) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(&alice.id)),
            &alice,
            json!({"typing": true, "timeout": 10000}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = poll.await.unwrap();
    let ephemeral = &v["rooms"]["join"][&room]["ephemeral"]["events"];
    assert!(
        ephemeral
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.typing" && e["content"]["user_ids"][0] == alice.id.as_str()),
        "{v}"
    );

    // A sliding sync connection (Element X) continues on the other process: its positions are
    // in the database.
    const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let body = json!({"conn_id": "room-list", "lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}}});
    let (st, v) = a.post(&format!("{SLIDING}?timeout=0"), &bob, body.clone()).await;
    assert_eq!(st, 200, "{v}");
    let pos = v["pos"].as_str().unwrap().to_owned();
    assert!(v["rooms"][&room].is_object(), "{v}");
    let latest = a.send_text(&alice, &room, "for the room list").await;
    let (st, v) = b.post(&format!("{SLIDING}?timeout=5000&pos={pos}"), &bob, body.clone()).await;
    assert_eq!(st, 200, "a position from A continues on B: {v}");
    let timeline = v["rooms"][&room]["timeline"].as_array().cloned().unwrap_or_default();
    assert!(timeline.iter().any(|e| e["event_id"] == latest.as_str()), "only what is new: {v}");
    assert!(v["rooms"][&room]["initial"].is_null(), "not sent again from scratch: {v}");
    let pos_b = v["pos"].as_str().unwrap().to_owned();
    let (st, v) = a.post(&format!("{SLIDING}?timeout=0&pos={pos}"), &bob, body.clone()).await;
    assert_eq!(st, 200, "an older position is still answered (a retried request): {v}");
    let (st, v) = a.post(&format!("{SLIDING}?timeout=0&pos=db_999"), &bob, body).await;
    assert_eq!((st, v["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{v}");
    assert_ne!(pos_b, pos);

    // One of the two runs the background work: the push evaluator counts Bob's unread message
    // whichever process stored it.
    let leads = |s: &Server| s.log().contains("runs the background work");
    assert!(leads(&a) ^ leads(&b), "exactly one leads: A {} B {}", leads(&a), leads(&b));
    // Presence: Bob syncs only on the process that does not run the background work; the one
    // that times presence out hears of it and keeps him online past the offline timeout.
    let (other, leader_now) = if leads(&a) { (&b, &a) } else { (&a, &b) };
    let since = other.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let holding = {
        let (base, token) = (other.base.clone(), bob.token.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{base}/_matrix/client/v3/sync?timeout=4500&since={since}&set_presence=online"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let (st, v) = leader_now.get(&format!("/_matrix/client/v3/presence/{}/status", enc(&bob.id)), &alice).await;
    assert_eq!(
        (st, v["presence"].as_str()),
        (200, Some("online")),
        "Bob's sync on the other process keeps him online: {v}"
    );
    let _ = holding.await;

    let unread =
        |v: &serde_json::Value| v["rooms"]["join"][&room]["unread_notifications"]["notification_count"].as_i64();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = b.sync(&bob, None, 0).await;
        if unread(&v) == Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "unread count never reached 2: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The leader dies; the other takes over and counts the next message.
    let (mut leader, survivor) = if leads(&a) { (a, b) } else { (b, a) };
    // Eight clients keep sending to the leader while it is killed: every send it acknowledged
    // is stored (kill -9 loses nothing acknowledged), as the survivor shows.
    let (acked, senders) = crate::common::spawn_senders(&leader.base, &room, vec![alice.token.clone(); 8]);
    while acked.lock().unwrap().len() < 30 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    leader.kill9();
    for s in senders {
        let _ = s.await;
    }
    let acknowledged: Vec<String> = acked.lock().unwrap().iter().map(|a| a.event_id.clone()).collect();
    for id in &acknowledged {
        let (st, v) = survivor.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(id)), &alice).await;
        assert_eq!(st, 200, "acknowledged {id} before the kill, missing after: {v}");
    }
    eprintln!("{} sends were acknowledged before the kill; all of them are stored", acknowledged.len());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !survivor.log().contains("runs the background work") {
        assert!(std::time::Instant::now() < deadline, "no takeover: {}", survivor.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    survivor.send_text(&alice, &room, "after the takeover").await;
    // Every message of Alice's since Bob joined notifies him: the ones before the kill, the
    // acknowledged ones (and any stored but unanswered when it died), this one.
    let (_, v) = survivor.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=200"), &bob).await;
    let messages = v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message" && e["sender"] == alice.id.as_str())
        .count() as i64;
    assert!(messages >= acknowledged.len() as i64 + 3, "{messages}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = survivor.sync(&bob, None, 0).await;
        if unread(&v) == Some(messages) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "unread count never reached {messages} after the takeover: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(leader);
    drop(survivor);
}
