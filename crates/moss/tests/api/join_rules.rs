//! Knocking and restricted joins (room versions with `knock`, `restricted`, `knock_restricted`).

use serde_json::{json, Value};

use crate::common::{errcode, Server};

fn join_rules(rule: &str, allow: Option<&str>) -> Value {
    let mut content = json!({"join_rule": rule});
    if let Some(room) = allow {
        content["allow"] = json!([{"type": "m.room_membership", "room_id": room}]);
    }
    json!({"type": "m.room.join_rules", "state_key": "", "content": content})
}

#[tokio::test]
async fn knocking_asks_for_an_invite() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room =
        s.create_room(&alice, json!({"initial_state": [join_rules("knock", None)], "name": "Knock knock"})).await;

    let (st, v) = s.post(&format!("/_matrix/client/v3/knock/{room}"), &bob, json!({"reason": "let me in"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["room_id"], room.as_str());
    // Bob sees the room under `knock`, with enough stripped state to show it.
    let v = s.sync(&bob, None, 0).await;
    let state = v["rooms"]["knock"][&room]["knock_state"]["events"].as_array().unwrap_or_else(|| panic!("{v}")).clone();
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock knock"));
    assert!(state.iter().any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "knock"));
    // Alice sees the knock with its reason, and answers with an invite.
    let v = s.sync(&alice, None, 0).await;
    let knock = v["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.id.as_str())
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(knock["content"]["membership"], "knock");
    assert_eq!(knock["content"]["reason"], "let me in");
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &alice, json!({"user_id": bob.id})).await;
    assert_eq!(st, 200);
    assert_eq!(s.join(&bob, &room).await.0, 200);

    // A knock can be withdrawn; knocking where the rule is not knock is refused.
    assert_eq!(s.post(&format!("/_matrix/client/v3/knock/{room}"), &carol, json!({})).await.0, 200);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &carol, json!({})).await.0, 200);
    let public = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let (st, v) = s.post(&format!("/_matrix/client/v3/knock/{public}"), &carol, json!({})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{v}");
    let (st, v) = s.post(&format!("/_matrix/client/v3/knock/{room}"), &bob, json!({})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "already joined: {v}");
    let (st, _) = s.post("/_matrix/client/v3/knock/!nope:localhost", &carol, json!({})).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn restricted_rooms_admit_members_of_allowed_rooms() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let space = s.create_room(&alice, json!({"preset": "public_chat", "creation_content": {"type": "m.space"}})).await;
    let room = s.create_room(&alice, json!({"initial_state": [join_rules("restricted", Some(&space))]})).await;

    let (st, v) = s.join(&bob, &room).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "not in the space yet: {v}");
    assert_eq!(s.join(&bob, &space).await.0, 200);
    let (st, v) = s.join(&bob, &room).await;
    assert_eq!(st, 200, "{v}");
    let (_, member) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", bob.id), &bob).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["join_authorised_via_users_server"], alice.id.as_str(), "{member}");

    // knock_restricted: members of the space join directly, others may knock.
    let both = s.create_room(&alice, json!({"initial_state": [join_rules("knock_restricted", Some(&space))]})).await;
    assert_eq!(s.join(&bob, &both).await.0, 200);
    let (st, _) = s.join(&carol, &both).await;
    assert_eq!(st, 403);
    assert_eq!(s.post(&format!("/_matrix/client/v3/knock/{both}"), &carol, json!({})).await.0, 200);
}
