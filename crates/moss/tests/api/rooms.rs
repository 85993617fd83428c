use serde_json::json;

use crate::common::{enc, errcode, Server};

#[tokio::test]
async fn rooms_have_spec_shaped_ids_and_sends_are_idempotent() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    let room = s.create_room(&a, json!({"name": "Ops", "topic": "pager", "preset": "private_chat"})).await;
    // Room version 12: the room id is the create event's hash, with no server part.
    assert!(room.starts_with('!') && !room.contains(':'), "{room}");
    let (_, create) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"), &a).await;
    assert_eq!(create["room_version"], "12");

    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-1");
    let (_, v1) = s.put(&path, &a, json!({"msgtype": "m.text", "body": "once"})).await;
    let (_, v2) = s.put(&path, &a, json!({"msgtype": "m.text", "body": "once"})).await;
    let id = v1["event_id"].as_str().unwrap();
    assert_eq!(v1, v2, "the same transaction id must return the same event");
    // Event ids are the URL-safe base64 of a sha256: 43 characters after the sigil.
    assert_eq!(id.len(), 44, "{id}");
    let (st, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(id)), &a).await;
    assert_eq!(st, 200);
    assert_eq!(ev["content"]["body"], "once");
    assert_eq!(ev["sender"], a.id);
    assert_eq!(ev["unsigned"]["transaction_id"], "txn-1");

    let (_, msgs) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), &a).await;
    let bodies: Vec<_> = msgs["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").collect();
    assert_eq!(bodies.len(), 1, "the retried send must not create a second event");

    let (_, name) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), &a).await;
    assert_eq!(name["name"], "Ops");
    let (_, topic) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"), &a).await;
    assert_eq!(topic["topic"], "pager");
    let (st, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.avatar/"), &a).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
    let (_, state) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), &a).await;
    let types: Vec<&str> = state.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
    ] {
        assert!(types.contains(&t), "missing {t} in {types:?}");
    }
}

#[tokio::test]
async fn messages_paginate_both_ways_without_gaps_or_duplicates() {
    let s = Server::start().await;
    let a = s.register("pager").await;
    let room = s.create_room(&a, json!({})).await;
    for i in 0..25 {
        s.send_text(&a, &room, &format!("m{i}")).await;
    }
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=7&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (st, v) = s.get(&path, &a).await;
        assert_eq!(st, 200, "{v}");
        for e in v["chunk"].as_array().unwrap() {
            seen.push(e["content"]["body"].as_str().unwrap().to_owned());
        }
        match v["end"].as_str() {
            Some(e) => from = Some(e.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);

    // Forwards from the start.
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100"), &a).await;
    let chunk = v["chunk"].as_array().unwrap();
    assert_eq!(chunk[0]["type"], "m.room.create");
    assert_eq!(chunk.last().unwrap()["content"]["body"], "m24");

    // /context around m10.
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=15"), &a).await;
    let m10 = v["chunk"].as_array().unwrap().iter().find(|e| e["content"]["body"] == "m10").unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, c) = s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{}?limit=4", enc(&m10)), &a).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["event"]["content"]["body"], "m10");
    assert_eq!(c["events_before"][0]["content"]["body"], "m9");
    assert_eq!(c["events_after"][0]["content"]["body"], "m11");
    assert!(c["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
}

#[tokio::test]
async fn membership_follows_join_rules_and_bans() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;

    let private = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (st, v) = s.join(&carol, &private).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "invite-only room must refuse an uninvited user");
    let (st, v) =
        s.post(&format!("/_matrix/client/v3/rooms/{private}/invite"), &alice, json!({"user_id": bob.id})).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s
        .post(&format!("/_matrix/client/v3/rooms/{private}/invite"), &alice, json!({"user_id": "@ghost:localhost"}))
        .await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
    let (st, v) =
        s.post(&format!("/_matrix/client/v3/rooms/{private}/invite"), &carol, json!({"user_id": carol.id})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{v}");
    assert_eq!(s.join(&bob, &private).await.0, 200);
    let (_, jm) = s.get(&format!("/_matrix/client/v3/rooms/{private}/joined_members"), &alice).await;
    let joined: Vec<&String> = jm["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined.len(), 2);
    let (_, jr) = s.get("/_matrix/client/v3/joined_rooms", &bob).await;
    assert_eq!(jr["joined_rooms"], json!([private]));
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{private}/leave"), &bob, json!({})).await.0, 200);
    let (_, m) = s.get(&format!("/_matrix/client/v3/rooms/{private}/members?membership=leave"), &alice).await;
    assert_eq!(m["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(m["chunk"][0]["state_key"], bob.id);
    // Having left, bob can no longer send.
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{private}/send/m.room.message/x"),
            &bob,
            json!({"body": "x", "msgtype": "m.text"}),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{private}/forget"), &bob, json!({})).await.0, 200);

    let public = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&carol, &public).await.0, 200);
    // A plain member cannot kick or ban.
    assert_eq!(s.join(&bob, &public).await.0, 200);
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{public}/ban"), &bob, json!({"user_id": carol.id})).await;
    assert_eq!(st, 403);
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{public}/kick"), &bob, json!({"user_id": carol.id})).await;
    assert_eq!(st, 403);
    let (st, v) = s
        .post(&format!("/_matrix/client/v3/rooms/{public}/ban"), &alice, json!({"user_id": carol.id, "reason": "spam"}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.join(&carol, &public).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "a banned user must not rejoin");
    assert_eq!(
        s.post(&format!("/_matrix/client/v3/rooms/{public}/unban"), &alice, json!({"user_id": carol.id})).await.0,
        200
    );
    assert_eq!(s.join(&carol, &public).await.0, 200);
    assert_eq!(
        s.post(&format!("/_matrix/client/v3/rooms/{public}/kick"), &alice, json!({"user_id": carol.id})).await.0,
        200
    );
    let (_, m) =
        s.get(&format!("/_matrix/client/v3/rooms/{public}/state/m.room.member/{}", enc(&carol.id)), &alice).await;
    assert_eq!(m["membership"], "leave");
}

#[tokio::test]
async fn power_levels_guard_state_and_redactions() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let (st, v) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), &bob, json!({"name": "hijack"})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"));
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), &alice, json!({"name": "ok"})).await;
    assert_eq!(st, 200);
    // Raising oneself is refused.
    let (_, mut pl) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), &bob).await;
    pl["users"][&bob.id] = json!(100);
    let (st, _) = s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), &bob, pl.clone()).await;
    assert_eq!(st, 403);

    let mine = s.send_text(&bob, &room, "bob's words").await;
    let theirs = s.send_text(&alice, &room, "alice's words").await;
    let (st, _) = s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", enc(&theirs)), &bob, json!({})).await;
    assert_eq!(st, 403, "a member may not redact others' events");
    let (st, v) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/redact/{}/r2", enc(&mine)), &bob, json!({"reason": "typo"}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&mine)), &alice).await;
    assert_eq!(ev["content"], json!({}), "redacted content must be gone: {ev}");
    assert_eq!(ev["unsigned"]["redacted_because"]["content"]["reason"], "typo");
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{}/r3", enc(&theirs)), &alice, json!({})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn history_visibility_hides_events_from_before_joining() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]})).await;
    let secret = s.send_text(&alice, &room, "before bob").await;
    // Not in the room: no access at all.
    let (st, _) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), &bob).await;
    assert_eq!(st, 403);
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "after bob").await;
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), &bob).await;
    let bodies: Vec<&str> =
        v["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["after bob"]);
    let (st, _) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&secret)), &bob).await;
    assert_eq!(st, 404);

    // With "shared" (the default), a new member reads the earlier history.
    let shared = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.send_text(&alice, &shared, "old news").await;
    s.join(&bob, &shared).await;
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{shared}/messages?dir=b&limit=100"), &bob).await;
    assert!(v["chunk"].as_array().unwrap().iter().any(|e| e["content"]["body"] == "old news"));
    // Having left, Bob still reads what came before his join (he joined after it was sent), but
    // nothing sent after he left.
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{shared}/leave"), &bob, json!({})).await.0, 200);
    s.send_text(&alice, &shared, "after bob left").await;
    let (st, v) = s.get(&format!("/_matrix/client/v3/rooms/{shared}/messages?dir=b&limit=100"), &bob).await;
    assert_eq!(st, 200, "{v}");
    let bodies: Vec<&str> =
        v["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["old news"], "{v}");
}

#[tokio::test]
async fn aliases_directory_and_room_versions() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(
            &alice,
            json!({"room_alias_name": "town", "visibility": "public", "preset": "public_chat", "name": "Town Square"}),
        )
        .await;
    let (st, v) = s.call("GET", "/_matrix/client/v3/directory/room/%23town%3Alocalhost", None, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["room_id"], room);
    let (st, v) = s.post("/_matrix/client/v3/join/%23town%3Alocalhost", &bob, json!({})).await;
    assert_eq!((st, v["room_id"].as_str()), (200, Some(room.as_str())));
    let (st, v) = s.post("/_matrix/client/v3/createRoom", &bob, json!({"room_alias_name": "town"})).await;
    assert_eq!((st, errcode(&v)), (400, "M_ROOM_IN_USE"));
    let (_, v) = s.call("GET", "/_matrix/client/v3/publicRooms", None, None).await;
    assert_eq!(v["chunk"][0]["room_id"], room);
    assert_eq!(v["chunk"][0]["name"], "Town Square");
    assert_eq!(v["chunk"][0]["num_joined_members"], 2);
    let (_, v) = s
        .post("/_matrix/client/v3/publicRooms", &bob, json!({"filter": {"generic_search_term": "nothing-like-it"}}))
        .await;
    assert_eq!(v["chunk"].as_array().unwrap().len(), 0);
    let (st, _) =
        s.call("DELETE", "/_matrix/client/v3/directory/room/%23town%3Alocalhost", Some(&bob.token), None).await;
    assert_eq!(st, 403, "only the creator or a moderator may delete an alias");
    let (st, _) =
        s.call("DELETE", "/_matrix/client/v3/directory/room/%23town%3Alocalhost", Some(&alice.token), None).await;
    assert_eq!(st, 200);
    let (st, v) = s.call("GET", "/_matrix/client/v3/directory/room/%23town%3Alocalhost", None, None).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));

    for version in ["10", "11"] {
        let r = s.create_room(&alice, json!({"room_version": version})).await;
        assert!(r.ends_with(":localhost"), "v{version} room ids carry the server name: {r}");
        s.send_text(&alice, &r, "works").await;
    }
    let (st, v) = s.post("/_matrix/client/v3/createRoom", &alice, json!({"room_version": "1"})).await;
    assert_eq!((st, errcode(&v)), (400, "M_UNSUPPORTED_ROOM_VERSION"));
    let (_, caps) = s.get("/_matrix/client/v3/capabilities", &alice).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
}

#[tokio::test]
async fn profile_changes_reach_memberships_and_account_data_round_trips() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.id)),
            &alice,
            json!({"displayname": "Alice A."}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, p) = s.call("GET", &format!("/_matrix/client/v3/profile/{}", enc(&alice.id)), None, None).await;
    assert_eq!(p["displayname"], "Alice A.");
    let (_, m) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", enc(&alice.id)), &alice).await;
    assert_eq!(m["displayname"], "Alice A.");
    let (st, v) = s.call("GET", "/_matrix/client/v3/profile/%40nobody%3Alocalhost", None, None).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));

    let uid = enc(&alice.id);
    assert_eq!(
        s.put(&format!("/_matrix/client/v3/user/{uid}/account_data/org.example.x"), &alice, json!({"a": 1})).await.0,
        200
    );
    let (_, v) = s.get(&format!("/_matrix/client/v3/user/{uid}/account_data/org.example.x"), &alice).await;
    assert_eq!(v, json!({"a": 1}));
    assert_eq!(
        s.put(&format!("/_matrix/client/v3/user/{uid}/rooms/{room}/tags/u.work"), &alice, json!({"order": 0.5}))
            .await
            .0,
        200
    );
    let (_, v) = s.get(&format!("/_matrix/client/v3/user/{uid}/rooms/{room}/tags"), &alice).await;
    assert_eq!(v["tags"]["u.work"]["order"], 0.5);
    let (st, v) = s
        .post(&format!("/_matrix/client/v3/user/{uid}/filter"), &alice, json!({"room": {"timeline": {"limit": 5}}}))
        .await;
    assert_eq!(st, 200);
    let fid = v["filter_id"].as_str().unwrap().to_owned();
    let (_, v) = s.get(&format!("/_matrix/client/v3/user/{uid}/filter/{fid}"), &alice).await;
    assert_eq!(v["room"]["timeline"]["limit"], 5);

    let (_, rules) = s.get("/_matrix/client/v3/pushrules/", &alice).await;
    assert!(rules["global"]["override"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.master"));
    assert_eq!(
        s.put("/_matrix/client/v3/pushrules/global/underride/custom.rule/enabled", &alice, json!({"enabled": false}))
            .await
            .0,
        404
    );
    let (st, v) = s
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
            &alice,
            json!({"actions": ["notify"]}),
        )
        .await;
    assert_eq!(st, 200, "{v}: {}", s.log());
    assert_eq!(
        s.put("/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled", &alice, json!({"enabled": true}))
            .await
            .0,
        200
    );
    let (_, v) = s.get("/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled", &alice).await;
    assert_eq!(v["enabled"], true);
}

#[tokio::test]
async fn upgrading_a_room_carries_state_and_aliases_and_tombstones_the_old_one() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let old = s
        .create_room(
            &alice,
            json!({"room_version": "11", "preset": "public_chat", "name": "Old Town", "room_alias_name": "old"}),
        )
        .await;
    s.join(&bob, &old).await;
    let (st, v) = s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), &bob, json!({"new_version": "12"})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "a plain member may not upgrade");
    let (st, v) = s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), &alice, json!({"new_version": "9"})).await;
    assert_eq!((st, errcode(&v)), (400, "M_UNSUPPORTED_ROOM_VERSION"));
    let (st, v) =
        s.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), &alice, json!({"new_version": "12"})).await;
    assert_eq!(st, 200, "{v}");
    let new = v["replacement_room"].as_str().unwrap().to_owned();
    let (_, t) = s.get(&format!("/_matrix/client/v3/rooms/{old}/state/m.room.tombstone/"), &alice).await;
    assert_eq!(t["replacement_room"], new);
    let (_, c) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.create/"), &alice).await;
    assert_eq!(c["predecessor"]["room_id"], old);
    assert_eq!(c["room_version"], "12");
    let (_, n) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.name/"), &alice).await;
    assert_eq!(n["name"], "Old Town");
    let (_, j) = s.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.join_rules/"), &alice).await;
    assert_eq!(j["join_rule"], "public");
    let (_, a) = s.call("GET", "/_matrix/client/v3/directory/room/%23old%3Alocalhost", None, None).await;
    assert_eq!(a["room_id"], new, "aliases move to the new room");
    // The old room is closed to plain members; bob can follow into the new one.
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{old}/send/m.room.message/late"),
            &bob,
            json!({"msgtype": "m.text", "body": "late"}),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(s.join(&bob, &new).await.0, 200);
}

#[tokio::test]
async fn timestamps_members_at_and_pushers() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let first = s.send_text(&alice, &room, "first").await;
    let (_, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&first)), &alice).await;
    let ts = ev["origin_server_ts"].as_u64().unwrap();
    let (_, before_bob) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), &alice).await;
    let token = before_bob["start"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;

    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir=f"), &alice).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["origin_server_ts"].as_u64().unwrap(), ts);
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts=1&dir=b"), &alice).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));

    let (_, now) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members"), &alice).await;
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
    let (_, then) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members?at={token}"), &alice).await;
    assert_eq!(then["chunk"].as_array().unwrap().len(), 1, "before bob joined there was one member");

    let pusher = json!({"kind": "http", "app_id": "org.example.app", "pushkey": "key1", "app_display_name": "App", "device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}});
    let (st, v) = s.post("/_matrix/client/v3/pushers/set", &alice, pusher).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.get("/_matrix/client/v3/pushers", &alice).await;
    assert_eq!(v["pushers"][0]["pushkey"], "key1");
    let (st, _) = s
        .post(
            "/_matrix/client/v3/pushers/set",
            &alice,
            json!({"kind": null, "app_id": "org.example.app", "pushkey": "key1"}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = s.get("/_matrix/client/v3/pushers", &alice).await;
    assert_eq!(v["pushers"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn rooms_created_at_once_with_the_same_content_get_distinct_ids() {
    // Room v12 ids are the create event's hash, whose only entropy is its timestamp: concurrent
    // identical requests from one user must still make distinct rooms (a client retrying, a bot
    // creating rooms in bulk).
    let s = Server::start().await;
    let a = s.register("bulk").await;
    let calls = (0..24).map(|_| s.post("/_matrix/client/v3/createRoom", &a, json!({"preset": "public_chat"})));
    let answers = futures_util::future::join_all(calls).await;
    let mut ids = std::collections::HashSet::new();
    for (st, v) in &answers {
        assert_eq!(*st, 200, "{v}");
        ids.insert(v["room_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 24, "every request made its own room");
}
