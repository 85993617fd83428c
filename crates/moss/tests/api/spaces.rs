//! Space hierarchies.

use serde_json::json;

use crate::common::{errcode, Server};

#[tokio::test]
async fn hierarchy_walks_a_space_breadth_first() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let space = s
        .create_room(&alice, json!({"preset": "public_chat", "name": "Space", "creation_content": {"type": "m.space"}}))
        .await;
    let sub = s
        .create_room(&alice, json!({"preset": "public_chat", "name": "Sub", "creation_content": {"type": "m.space"}}))
        .await;
    let a = s.create_room(&alice, json!({"preset": "public_chat", "name": "A"})).await;
    let b = s.create_room(&alice, json!({"preset": "public_chat", "name": "B"})).await;
    let private = s.create_room(&alice, json!({"preset": "private_chat", "name": "Secret"})).await;
    let child = |parent: &str, kid: &str, order: &str, suggested: bool| {
        let (s, alice) = (&s, &alice);
        let (parent, kid, order) = (parent.to_owned(), kid.to_owned(), order.to_owned());
        async move {
            let (st, v) = s
                .put(
                    &format!("/_matrix/client/v3/rooms/{parent}/state/m.space.child/{kid}"),
                    alice,
                    json!({"via": ["localhost"], "order": order, "suggested": suggested}),
                )
                .await;
            assert_eq!(st, 200, "{v}");
        }
    };
    child(&space, &b, "2", false).await;
    child(&space, &a, "1", true).await;
    child(&space, &sub, "3", false).await;
    child(&space, &private, "4", false).await;
    child(&sub, &a, "1", false).await; // seen once only

    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy"), &bob).await;
    assert_eq!(st, 200, "{v}");
    let names: Vec<&str> = v["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Space", "A", "B", "Sub"], "ordered by `order`, private room hidden from Bob: {v}");
    assert_eq!(v["rooms"][0]["room_type"], "m.space");
    assert_eq!(v["rooms"][0]["children_state"].as_array().unwrap().len(), 4);
    assert_eq!(v["rooms"][0]["children_state"][0]["type"], "m.space.child");

    // Alice, a member of the private room, sees it; paging and depth and suggested_only work.
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy"), &alice).await;
    assert_eq!(v["rooms"].as_array().unwrap().len(), 5);
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy?limit=2"), &bob).await;
    assert_eq!(v["rooms"].as_array().unwrap().len(), 2);
    let next = v["next_batch"].as_str().unwrap().to_owned();
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy?limit=2&from={next}"), &bob).await;
    let names: Vec<&str> = v["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["B", "Sub"]);
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy?max_depth=0"), &bob).await;
    assert_eq!(v["rooms"].as_array().unwrap().len(), 1);
    let (_, v) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy?suggested_only=true"), &bob).await;
    let names: Vec<&str> = v["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Space", "A"]);

    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{private}/hierarchy"), &bob).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"));
    let (st, _) = s.get("/_matrix/client/v1/rooms/!nope:localhost/hierarchy", &bob).await;
    assert_eq!(st, 404);
    let (st, v) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy?from=zzz"), &bob).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
}
