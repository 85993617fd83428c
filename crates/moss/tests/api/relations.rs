//! Relations, threads, bundled aggregations and full-text search.

use serde_json::{json, Value};

use crate::common::{errcode, Server, User};

async fn send(s: &Server, u: &User, room: &str, kind: &str, content: Value) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let txn = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let (st, v) = s.put(&format!("/_matrix/client/v3/rooms/{room}/send/{kind}/rel{txn}"), u, content).await;
    assert_eq!(st, 200, "{v}");
    v["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn relations_threads_and_bundled_aggregations() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);

    let root = s.send_text(&alice, &room, "root message").await;
    let edit = send(
        &s,
        &alice,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "* edited", "m.new_content": {"msgtype": "m.text", "body": "edited"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    // An edit by someone else is not an edit.
    send(
        &s,
        &bob,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "* hijack", "m.new_content": {"msgtype": "m.text", "body": "hijack"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    for (who, key) in [(&alice, "👍"), (&bob, "👍"), (&bob, "🎉")] {
        send(
            &s,
            who,
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": key}}),
        )
        .await;
    }
    let reply = send(
        &s,
        &bob,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "a reply", "m.relates_to": {"m.in_reply_to": {"event_id": root}}}),
    )
    .await;
    let t1 = send(
        &s,
        &bob,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "in thread 1", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;
    let t2 = send(
        &s,
        &alice,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "in thread 2", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;

    // The root as served carries the bundle: thread summary, latest edit by its sender, reactions.
    let (st, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{root}"), &bob).await;
    assert_eq!(st, 200, "{ev}");
    let rel = &ev["unsigned"]["m.relations"];
    assert_eq!(rel["m.thread"]["count"], 2, "{ev}");
    assert_eq!(rel["m.thread"]["latest_event"]["event_id"], t2.as_str());
    assert_eq!(rel["m.thread"]["current_user_participated"], true);
    assert_eq!(rel["m.replace"]["event_id"], edit.as_str());
    assert_eq!(rel["m.annotation"]["chunk"][0], json!({"type": "m.reaction", "key": "👍", "count": 2}));
    assert_eq!(ev["content"]["body"], "root message", "servers do not apply edits to content");

    // /messages and /sync serve the same bundle.
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), &alice).await;
    let served = v["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == root.as_str()).unwrap().clone();
    assert_eq!(served["unsigned"]["m.relations"]["m.thread"]["count"], 2);
    let sync = s.sync(&alice, None, 0).await;
    let _ = sync; // the root may have scrolled out of the timeline; /messages covers the shape

    // /relations lists all, by type, and by type and event type, newest first, paginated.
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}"), &alice).await;
    assert_eq!(st, 200, "{v}");
    let ids: Vec<&str> = v["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 7, "edit, hijack, 3 reactions, 2 thread events (the reply is not a relation): {v}");
    assert_eq!(ids[0], t2);
    assert!(!ids.contains(&reply.as_str()));
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.thread"), &alice).await;
    let ids: Vec<&str> = v["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [t2.as_str(), t1.as_str()]);
    let (_, v) = s
        .get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.annotation/m.reaction?limit=2"), &alice)
        .await;
    assert_eq!(v["chunk"].as_array().unwrap().len(), 2, "{v}");
    let next = v["next_batch"].as_str().expect("more to come").to_owned();
    let (_, v2) = s
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.annotation/m.reaction?limit=2&from={next}"),
            &alice,
        )
        .await;
    assert_eq!(v2["chunk"].as_array().unwrap().len(), 1, "{v2}");
    assert!(v2.get("next_batch").is_none());
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.thread?dir=f"), &alice).await;
    assert_eq!(v["chunk"][0]["event_id"], t1.as_str());

    // recurse follows relations of relations.
    let reaction_on_t1 = send(
        &s,
        &alice,
        &room,
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": t1, "key": "x"}}),
    )
    .await;
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}?recurse=true"), &alice).await;
    assert_eq!(v["recursion_depth"], 2, "root <- thread event <- reaction: {v}");
    assert!(v["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == reaction_on_t1.as_str()));

    // /threads: the root, for all and for participants; a stranger's participated list is empty.
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/threads"), &alice).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["chunk"][0]["event_id"], root.as_str());
    let carol = s.register("carol").await;
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"), &carol).await;
    assert_eq!(v["chunk"], json!([]), "{v}");
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"), &bob).await;
    assert_eq!(v["chunk"].as_array().unwrap().len(), 1);

    // Redacting the edit removes it from the bundle.
    let (st, _) = s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{edit}/r1"), &alice, json!({})).await;
    assert_eq!(st, 200);
    let (_, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{root}"), &alice).await;
    assert!(ev["unsigned"]["m.relations"].get("m.replace").is_none(), "{ev}");

    // Outsiders and unknown events get clear errors.
    let dave = s.register("dave").await;
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}"), &dave).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{v}");
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/$nope"), &alice).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"), "{v}");
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}?from=garbage"), &alice).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
}

#[tokio::test]
async fn full_text_search() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Gardening club"})).await;
    let other = s.create_room(&bob, json!({"preset": "private_chat"})).await;
    s.send_text(&alice, &room, "the tomatoes are ripe").await;
    s.send_text(&alice, &room, "cucumbers need water").await;
    let hit = s.send_text(&alice, &room, "Tomatoes and basil, tomatoes everywhere").await;
    s.send_text(&bob, &other, "secret tomatoes").await;

    let search = |term: &str, extra: Value| {
        let mut cat = json!({"search_term": term});
        if let (Some(c), Some(e)) = (cat.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        json!({"search_categories": {"room_events": cat}})
    };
    let (st, v) = s.post("/_matrix/client/v3/search", &alice, search("tomatoes", json!({}))).await;
    assert_eq!(st, 200, "{v}");
    let res = &v["search_categories"]["room_events"];
    assert_eq!(res["count"], 2, "Bob's private room is not searched: {v}");
    assert_eq!(res["results"][0]["result"]["event_id"], hit.as_str(), "best rank first");
    assert!(res["highlights"].as_array().unwrap().contains(&json!("tomatoes")));

    // Recent order, words combined, room names, context, pagination.
    let (_, v) =
        s.post("/_matrix/client/v3/search", &alice, search("TOMATOES ripe", json!({"order_by": "recent"}))).await;
    assert_eq!(v["search_categories"]["room_events"]["count"], 1);
    let (_, v) =
        s.post("/_matrix/client/v3/search", &alice, search("gardening", json!({"keys": ["content.name"]}))).await;
    assert_eq!(v["search_categories"]["room_events"]["results"][0]["result"]["type"], "m.room.name", "{v}");
    let (_, v) = s
        .post(
            "/_matrix/client/v3/search",
            &alice,
            search("tomatoes", json!({"order_by": "recent", "filter": {"limit": 1}, "event_context": {"before_limit": 1, "after_limit": 1}})),
        )
        .await;
    let res = &v["search_categories"]["room_events"];
    assert_eq!(res["results"][0]["context"]["events_before"][0]["content"]["body"], "cucumbers need water", "{v}");
    let next = res["next_batch"].as_str().expect("a second page").to_owned();
    let (_, v) = s
        .post(
            &format!("/_matrix/client/v3/search?next_batch={next}"),
            &alice,
            search("tomatoes", json!({"order_by": "recent", "filter": {"limit": 1}})),
        )
        .await;
    assert_eq!(
        v["search_categories"]["room_events"]["results"][0]["result"]["content"]["body"],
        "the tomatoes are ripe"
    );

    // FTS syntax in the term is treated as text, not as a query; bad input is a clear error.
    let (st, _) = s.post("/_matrix/client/v3/search", &alice, search("\"tomatoes OR NEAR(", json!({}))).await;
    assert_eq!(st, 200);
    let (st, v) = s.post("/_matrix/client/v3/search", &alice, search("x", json!({"order_by": "loudest"}))).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let (st, v) = s.post("/_matrix/client/v3/search", &alice, json!({"search_categories": {"room_events": {}}})).await;
    assert_eq!((st, errcode(&v)), (400, "M_BAD_JSON"));
    let (st, v) = s.post("/_matrix/client/v3/search", &alice, search("x", json!({"keys": ["content.secret"]}))).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
}
