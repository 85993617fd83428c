use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{enc, Server};

fn timeline<'a>(sync: &'a Value, room: &str) -> Vec<&'a Value> {
    sync["rooms"]["join"][room]["timeline"]["events"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

#[tokio::test]
async fn initial_and_incremental_sync_carry_timeline_state_and_invites() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"name": "Lobby", "invite": [bob.id]})).await;

    let initial = s.sync(&bob, None, 0).await;
    let invite = &initial["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        invite.as_array().unwrap().iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Lobby"),
        "{invite}"
    );
    assert!(invite
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.id && e["content"]["membership"] == "invite"));
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    s.join(&bob, &room).await;
    let after_join = s.sync(&bob, Some(&since), 0).await;
    let joined = &after_join["rooms"]["join"][&room];
    assert!(
        joined["state"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"),
        "a new room comes with its state: {joined}"
    );
    assert!(timeline(&after_join, &room).iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.id));
    let since = after_join["next_batch"].as_str().unwrap().to_owned();

    let id = s.send_text(&alice, &room, "hi bob").await;
    let inc = s.sync(&bob, Some(&since), 0).await;
    let tl = timeline(&inc, &room);
    assert_eq!(tl.len(), 1, "{inc}");
    assert_eq!(tl[0]["event_id"], id);
    assert_eq!(tl[0]["content"]["body"], "hi bob");
    assert_eq!(inc["rooms"]["join"][&room]["state"]["events"].as_array().unwrap().len(), 0);
    assert_eq!(inc["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 1);
    let since = inc["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: an empty incremental sync with no rooms.
    let empty = s.sync(&bob, Some(&since), 0).await;
    assert!(empty["rooms"]["join"].as_object().unwrap().is_empty(), "{empty}");

    // Leaving puts the room in the leave section.
    s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &bob, json!({})).await;
    let left = s.sync(&bob, Some(&since), 0).await;
    assert!(left["rooms"]["leave"][&room].is_object(), "{left}");
}

#[tokio::test]
async fn long_poll_wakes_on_a_new_message_not_on_its_timeout() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let started = Instant::now();
    let (sync, _) = tokio::join!(s.sync(&bob, Some(&since), 20_000), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.send_text(&alice, &room, "wake up").await
    });
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "sync took {took:?}");
    assert_eq!(timeline(&sync, &room)[0]["content"]["body"], "wake up");

    // And an idle long-poll returns empty after its timeout.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let idle = s.sync(&bob, Some(&since), 600).await;
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert!(idle["rooms"]["join"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn typing_receipts_and_limited_timelines() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(&bob.id)),
            &bob,
            json!({"typing": true, "timeout": 10000}),
        )
        .await;
    assert_eq!(st, 200);
    let v = s.sync(&alice, Some(&since), 5000).await;
    let eph = &v["rooms"]["join"][&room]["ephemeral"]["events"];
    assert!(
        eph.as_array().unwrap().iter().any(|e| e["type"] == "m.typing" && e["content"]["user_ids"] == json!([bob.id])),
        "{v}"
    );
    let since = v["next_batch"].as_str().unwrap().to_owned();

    let ev = s.send_text(&alice, &room, "read me").await;
    let (st, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", enc(&ev)), &bob, json!({})).await;
    assert_eq!(st, 200);
    let v = s.sync(&alice, Some(&since), 0).await;
    let eph = &v["rooms"]["join"][&room]["ephemeral"]["events"];
    let receipt = eph.as_array().unwrap().iter().find(|e| e["type"] == "m.receipt").expect("receipt in sync");
    assert!(receipt["content"][&ev]["m.read"][&bob.id]["ts"].as_u64().is_some(), "{receipt}");
    let since = v["next_batch"].as_str().unwrap().to_owned();

    for i in 0..15 {
        s.send_text(&alice, &room, &format!("burst {i}")).await;
    }
    let v = s.sync(&bob, Some(&since), 0).await;
    let r = &v["rooms"]["join"][&room]["timeline"];
    assert_eq!(r["limited"], true);
    assert_eq!(r["events"].as_array().unwrap().len(), 10);
    assert_eq!(r["events"][9]["content"]["body"], "burst 14");
    // prev_batch continues exactly where the timeline starts.
    let prev = r["prev_batch"].as_str().unwrap();
    let (_, back) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={prev}"), &bob).await;
    assert_eq!(back["chunk"][0]["content"]["body"], "burst 4");
}

#[tokio::test]
async fn sigterm_ends_long_polls_and_exits_cleanly() {
    let mut s = Server::start().await;
    let alice = s.register("alice").await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let url = format!("{}/_matrix/client/v3/sync?timeout=30000&since={since}", s.base);
    let token = alice.token.clone();
    let poll = tokio::spawn(async move {
        reqwest::Client::new().get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || s.terminate()).await.unwrap();
    assert_eq!(code, Some(0), "moss must exit cleanly on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(poll.await.unwrap().expect("the long-poll gets an answer"), 200);
}

#[tokio::test]
async fn sync_filters_by_id_and_inline_lazy_members_and_highlights() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let keep = s.create_room(&alice, json!({"preset": "public_chat", "name": "keep"})).await;
    let skip = s.create_room(&alice, json!({"preset": "public_chat", "name": "skip"})).await;
    s.join(&bob, &keep).await;
    s.join(&bob, &skip).await;
    s.send_text(&alice, &keep, "plain").await;
    // A mention of bob highlights for bob.
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{keep}/send/m.room.message/mention"),
            &alice,
            json!({"msgtype": "m.text", "body": "hey bob", "m.mentions": {"user_ids": [bob.id]}}),
        )
        .await;
    assert_eq!(st, 200);
    let uid = enc(&bob.id);
    s.put(&format!("/_matrix/client/v3/user/{uid}/account_data/org.example.pref"), &bob, json!({"theme": "dark"}))
        .await;

    let filter = json!({
        "room": {
            "not_rooms": [skip],
            "timeline": {"limit": 2, "types": ["m.room.message"]},
            "state": {"lazy_load_members": true},
        }
    });
    let (st, v) = s.post(&format!("/_matrix/client/v3/user/{uid}/filter"), &bob, filter.clone()).await;
    assert_eq!(st, 200);
    let fid = v["filter_id"].as_str().unwrap().to_owned();
    let inline = filter
        .to_string()
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace('[', "%5B")
        .replace(']', "%5D")
        .replace('!', "%21")
        .replace(':', "%3A")
        .replace(',', "%2C");
    for f in [fid, inline] {
        let (st, v) = s.get(&format!("/_matrix/client/v3/sync?filter={f}"), &bob).await;
        assert_eq!(st, 200, "{v}");
        let join = v["rooms"]["join"].as_object().unwrap();
        assert!(join.contains_key(&keep) && !join.contains_key(&skip), "not_rooms: {:?}", join.keys());
        let tl = join[&keep]["timeline"]["events"].as_array().unwrap();
        assert_eq!(tl.len(), 2, "{tl:?}");
        assert!(tl.iter().all(|e| e["type"] == "m.room.message"));
        let members: Vec<&str> = join[&keep]["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap())
            .collect();
        assert!(members.contains(&alice.id.as_str()) && members.contains(&bob.id.as_str()), "{members:?}");
        let counts = &join[&keep]["unread_notifications"];
        assert_eq!(counts["highlight_count"], 1, "{counts}");
        assert_eq!(counts["notification_count"], 2, "{counts}");
        assert!(v["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "org.example.pref" && e["content"]["theme"] == "dark"));
    }

    // Reading up to the newest event clears the counts.
    let (_, msgs) = s.get(&format!("/_matrix/client/v3/rooms/{keep}/messages?dir=b&limit=1"), &bob).await;
    let newest = msgs["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{keep}/read_markers"),
            &bob,
            json!({"m.fully_read": newest, "m.read": newest}),
        )
        .await;
    assert_eq!(st, 200);
    let v = s.sync(&bob, None, 0).await;
    assert_eq!(v["rooms"]["join"][&keep]["unread_notifications"]["notification_count"], 0);
    let fully_read = v["rooms"]["join"][&keep]["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.fully_read")
        .cloned();
    assert_eq!(fully_read.expect("m.fully_read in room account data")["content"]["event_id"], newest);
}

#[tokio::test]
async fn private_receipts_stay_private() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let ev = s.send_text(&alice, &room, "secret read").await;
    let (st, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{}", enc(&ev)), &bob, json!({})).await;
    assert_eq!(st, 200);
    let a = s.sync(&alice, None, 0).await;
    let eph = a["rooms"]["join"][&room]["ephemeral"]["events"].to_string();
    assert!(!eph.contains("m.read.private"), "alice must not see bob's private receipt: {eph}");
    let b = s.sync(&bob, None, 0).await;
    let eph = b["rooms"]["join"][&room]["ephemeral"]["events"].to_string();
    assert!(eph.contains("m.read.private"), "bob sees his own private receipt: {eph}");
}

#[tokio::test]
async fn notification_counts_stay_right_as_they_are_counted_incrementally() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let count = |v: &serde_json::Value| v["rooms"]["join"][&room]["unread_notifications"]["notification_count"].clone();

    for i in 0..3 {
        s.send_text(&bob, &room, &format!("m{i}")).await;
    }
    let first = s.sync(&alice, None, 0).await;
    assert_eq!(count(&first), 3, "{first}");
    let mut ids = Vec::new();
    for i in 3..5 {
        ids.push(s.send_text(&bob, &room, &format!("m{i}")).await);
    }
    let inc = s.sync(&alice, first["next_batch"].as_str(), 0).await;
    assert_eq!(count(&inc), 5, "new events add to the earlier count: {inc}");
    assert_eq!(count(&s.sync(&alice, None, 0).await), 5, "an initial sync agrees");

    // A read receipt moves the starting point: only what follows it counts.
    let (st, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", ids[0]), &alice, json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(count(&s.sync(&alice, None, 0).await), 1);

    // Changing push rules applies to what comes next (as in Synapse): with ordinary (and
    // one-to-one) messages switched off, a new message does not count; the one before still does.
    for rule in [".m.rule.message", ".m.rule.room_one_to_one"] {
        let (st, _) = s
            .put(
                &format!("/_matrix/client/v3/pushrules/global/underride/{rule}/enabled"),
                &alice,
                json!({"enabled": false}),
            )
            .await;
        assert_eq!(st, 200);
    }
    s.send_text(&bob, &room, "m5").await;
    assert_eq!(count(&s.sync(&alice, None, 0).await), 1);
}

#[tokio::test]
async fn lazy_loading_brings_each_new_senders_membership_with_their_message() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    // Messages only in the timeline: a join is not shown there, so only `state` can carry it.
    let filter =
        json!({"room": {"timeline": {"types": ["m.room.message"]}, "state": {"lazy_load_members": true}}}).to_string();
    let sync = |since: Option<String>| {
        let f = filter.clone();
        let bob = &bob;
        let s = &s;
        async move {
            let mut path = format!("/_matrix/client/v3/sync?filter={}", enc(&f));
            if let Some(t) = since {
                path.push_str(&format!("&since={t}"));
            }
            let (st, v) = s.get(&path, bob).await;
            assert_eq!(st, 200, "{v}");
            v
        }
    };
    let first = sync(None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let members = |v: &Value| -> Vec<String> {
        v["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(!members(&first).contains(&carol.id), "carol is not in the room yet");

    s.join(&carol, &room).await;
    s.send_text(&carol, &room, "hello from carol").await;
    let v = sync(Some(since)).await;
    let timeline = v["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(timeline.iter().any(|e| e["sender"] == carol.id.as_str()), "{v}");
    let m = members(&v);
    assert!(m.contains(&carol.id), "carol's membership comes with her message: {v}");
    assert!(!m.contains(&alice.id), "members who said nothing stay lazy: {m:?}");

    // A sync with nothing new returns nothing for the room (it does not re-send members).
    let since = v["next_batch"].as_str().unwrap().to_owned();
    let quiet = sync(Some(since)).await;
    assert!(quiet["rooms"]["join"].get(&room).is_none(), "{quiet}");
}

/// The room summary (heroes, member counts) comes with a new room and with every membership
/// change, counted right; an incremental sync without one leaves it out (unchanged).
#[tokio::test]
async fn room_summary_follows_membership() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let (st, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &alice, json!({"user_id": carol.id})).await;
    assert_eq!(st, 200);

    let first = s.sync(&alice, None, 0).await;
    let summary = &first["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 2, "{summary}");
    assert_eq!(summary["m.invited_member_count"], 1, "{summary}");
    assert_eq!(summary["m.heroes"], json!([bob.id, carol.id]), "{summary}");

    // A message changes no membership: the summary is left out.
    s.send_text(&bob, &room, "hello").await;
    let next = s.sync(&alice, first["next_batch"].as_str(), 0).await;
    assert_eq!(timeline(&next, &room).len(), 1, "{next}");
    assert!(next["rooms"]["join"][&room].get("summary").is_none_or(|v| v.is_null()), "{next}");

    // Carol accepts: the counts move, and the summary says so.
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let after = s.sync(&alice, next["next_batch"].as_str(), 0).await;
    let summary = &after["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 3, "{after}");
    assert_eq!(summary["m.invited_member_count"], 0, "{after}");
}
