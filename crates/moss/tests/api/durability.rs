//! An acknowledged write survives kill -9: concurrent senders, the process killed without
//! warning, then started again on the same data. Runs on whichever database the suite uses
//! (`MOSS_TEST_DB=postgres` too), with SQLite's `synchronous = full`, the default.
//!
//! A process crash is what can be tested here; a power loss additionally needs the fsync that
//! `synchronous = full` does at every commit (and that group commit shares between requests).

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn acknowledged_events_survive_kill_9_in_order() {
    let mut s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_DATABASE__SYNCHRONOUS", "full"),
    ])
    .await;
    const SENDERS: usize = 8;
    let owner = s.register("owner").await;
    let room = s.create_room(&owner, json!({"preset": "public_chat"})).await;
    let mut users = Vec::new();
    for i in 0..SENDERS {
        let u = s.register(&format!("sender{i}")).await;
        assert_eq!(s.join(&u, &room).await.0, 200);
        users.push(u);
    }

    let (acks, tasks) = spawn_senders(&s.base, &room, users.iter().map(|u| u.token.clone()).collect());
    while acks.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    s.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let s = s.restart().await;

    // The room's whole timeline after the restart, oldest first.
    let mut timeline = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let path = match &from {
            Some(f) => format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=500&from={f}"),
            None => format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=500"),
        };
        let (st, v) = s.get(&path, &owner).await;
        assert_eq!(st, 200, "{v}");
        let chunk = v["chunk"].as_array().unwrap();
        timeline.extend(chunk.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)));
        match v["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    let position: std::collections::HashMap<&str, usize> =
        timeline.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();

    // Every acknowledged event is there.
    let missing: Vec<&str> = acks.iter().map(|a| a.event_id.as_str()).filter(|id| !position.contains_key(id)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged events lost: {missing:?}", missing.len(), acks.len());
    // In order: an event acknowledged before another was sent comes before it in the room, for
    // one sender's own sends and across senders.
    for a in &acks {
        for b in acks.iter().filter(|b| a.answered < b.started) {
            assert!(
                position[a.event_id.as_str()] < position[b.event_id.as_str()],
                "{} (sender {}) was acknowledged before {} (sender {}) was sent, but comes after it",
                a.event_id,
                a.sender,
                b.event_id,
                b.sender
            );
        }
    }
    // The server goes on from there.
    let after = s.send_text(&owner, &room, "after the crash").await;
    let (st, _) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&after)), &owner).await;
    assert_eq!(st, 200);
    eprintln!("{} sends acknowledged before kill -9 ({} senders); all stored, in order", acks.len(), SENDERS);
}
