//! Smaller client features: ignoring users, reporting content, TURN credentials, third-party
//! protocols and login tokens.

use serde_json::json;

use crate::common::{errcode, Server};

#[tokio::test]
async fn ignored_users_messages_and_invites_are_hidden() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", alice.id),
            &alice,
            json!({"ignored_users": {&bob.id: {}}}),
        )
        .await;
    assert_eq!(st, 200);
    s.send_text(&bob, &room, "you cannot see me").await;
    s.send_text(&alice, &room, "talking to myself").await;

    let v = s.sync(&alice, None, 0).await;
    let bodies: Vec<&str> = v["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["talking to myself"], "{v}");
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), &alice).await;
    assert!(!v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["sender"] == bob.id.as_str() && e["type"] == "m.room.message"));
    // Bob's membership (state) is still there: the room's state stays whole.
    assert!(v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["sender"] == bob.id.as_str() && e["type"] == "m.room.member"));

    // An invite from an ignored user does not show up.
    let bobs = s.create_room(&bob, json!({"invite": [alice.id]})).await;
    let v = s.sync(&alice, None, 0).await;
    assert!(v["rooms"]["invite"].get(&bobs).is_none(), "{v}");
}

#[tokio::test]
async fn reporting_events_and_rooms() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let eve = s.register("eve").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let ev = s.send_text(&bob, &room, "spam spam spam").await;

    let (st, v) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/report/{ev}"), &alice, json!({"reason": "spam", "score": -100}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{room}/report"), &alice, json!({"reason": "spam room"})).await;
    assert_eq!(st, 200);
    // Someone outside the room cannot probe for events; unknown ones are 404; scores are checked.
    let (st, v) = s.post(&format!("/_matrix/client/v3/rooms/{room}/report/{ev}"), &eve, json!({"reason": "x"})).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/report/$nope"), &alice, json!({})).await;
    assert_eq!(st, 404);
    let (st, v) = s.post(&format!("/_matrix/client/v3/rooms/{room}/report/{ev}"), &alice, json!({"score": 5})).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let (st, _) = s.post("/_matrix/client/v3/rooms/!nope:localhost/report", &alice, json!({"reason": "x"})).await;
    assert_eq!(st, 404);
    assert!(s.log().contains("content reported"));
    let out = std::process::Command::new(crate::common::moss_bin())
        .arg("reports")
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("reported event {ev} in {room} (score -100): spam")), "{text}");
    assert!(text.contains(&format!("reported room {room}: spam room")), "{text}");
}

#[tokio::test]
async fn turn_credentials_and_thirdparty_protocols() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let (st, v) = s.get("/_matrix/client/v3/voip/turnServer", &alice).await;
    assert_eq!((st, v), (200, json!({})), "no TURN configured");
    let (st, v) = s.get("/_matrix/client/v3/thirdparty/protocols", &alice).await;
    assert_eq!((st, v), (200, json!({})));
    drop(s);

    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_VOIP__TURN_URIS", "[\"turn:turn.example.com:3478?transport=udp\"]"),
        ("MOSS_VOIP__TURN_SHARED_SECRET", "s3cret"),
        ("MOSS_VOIP__TURN_USER_LIFETIME_MS", "60000"),
    ])
    .await;
    let alice = s.register("alice").await;
    let (st, v) = s.get("/_matrix/client/v3/voip/turnServer", &alice).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["uris"], json!(["turn:turn.example.com:3478?transport=udp"]));
    assert_eq!(v["ttl"], 60);
    let username = v["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.id);
    let expiry: u64 = expiry.parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expiry > now && expiry <= now + 61);
    // coturn's check: base64(HMAC-SHA1(secret, username)).
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    let expected = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(mac.finalize().into_bytes().to_vec());
    assert_eq!(v["password"].as_str().unwrap().trim_end_matches('='), expected.encode());
}

#[tokio::test]
async fn login_tokens_sign_in_a_new_device_once() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let (st, v) = s.post("/_matrix/client/v1/login/get_token", &alice, json!({})).await;
    assert_eq!((st, errcode(&v)), (404, "M_UNRECOGNIZED"), "disabled by default: {v}");
    drop(s);

    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_AUTH__LOGIN_TOKEN_ENABLED", "true"),
    ])
    .await;
    let alice = s.register("alice").await;
    let (_, v) = s.call("GET", "/_matrix/client/v3/login", None, None).await;
    assert!(
        v["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.token" && f["get_login_token"] == true),
        "{v}"
    );
    let (_, v) = s.get("/_matrix/client/v3/capabilities", &alice).await;
    assert_eq!(v["capabilities"]["m.get_login_token"]["enabled"], true);

    let (st, v) = s.post("/_matrix/client/v1/login/get_token", &alice, json!({})).await;
    assert_eq!(st, 401, "needs the password first: {v}");
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.id}, "password": "password123"}});
    let (st, v) = s.post("/_matrix/client/v1/login/get_token", &alice, auth).await;
    assert_eq!(st, 200, "{v}");
    let token = v["login_token"].as_str().unwrap().to_owned();
    assert_eq!(v["expires_in_ms"], 120_000);

    let login = json!({"type": "m.login.token", "token": token});
    let (st, v) = s.call("POST", "/_matrix/client/v3/login", None, Some(login.clone())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user_id"], alice.id.as_str());
    assert_ne!(v["device_id"], alice.device.as_str());
    let (st, v) = s.call("POST", "/_matrix/client/v3/login", None, Some(login)).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "a token works once");
}

#[tokio::test]
async fn notifications_list_what_the_push_rules_notified() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let first = s.send_text(&bob, &room, "hello everyone").await;
    let (st, v) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/mention1"),
            &bob,
            json!({"msgtype": "m.text", "body": "hey alice, look", "m.mentions": {"user_ids": [alice.id]}}),
        )
        .await;
    assert_eq!(st, 200);
    let mention = v["event_id"].as_str().unwrap().to_owned();
    s.send_text(&alice, &room, "my own message does not notify me").await;

    let (st, v) = s.get("/_matrix/client/v3/notifications", &alice).await;
    assert_eq!(st, 200, "{v}");
    let ids: Vec<&str> =
        v["notifications"].as_array().unwrap().iter().map(|n| n["event"]["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [mention.as_str(), first.as_str()], "newest first, only others' events: {v}");
    let n = &v["notifications"][0];
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["read"], false);
    assert!(n["actions"].as_array().unwrap().iter().any(|a| a == "notify"), "{n}");

    // Highlights only: the intentional mention.
    let (_, v) = s.get("/_matrix/client/v3/notifications?only=highlight", &alice).await;
    let ids: Vec<&str> =
        v["notifications"].as_array().unwrap().iter().map(|n| n["event"]["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [mention.as_str()], "{v}");

    // Paging, and read once a receipt passes the event.
    let (_, v) = s.get("/_matrix/client/v3/notifications?limit=1", &alice).await;
    let next = v["next_token"].as_str().expect("a next page").to_owned();
    let (_, v) = s.get(&format!("/_matrix/client/v3/notifications?limit=1&from={next}"), &alice).await;
    assert_eq!(v["notifications"][0]["event"]["event_id"], first.as_str());
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{mention}"), &alice, json!({})).await;
    assert_eq!(st, 200);
    let (_, v) = s.get("/_matrix/client/v3/notifications", &alice).await;
    assert!(v["notifications"].as_array().unwrap().iter().all(|n| n["read"] == true), "{v}");
    let (st, v) = s.get("/_matrix/client/v3/notifications?from=bogus", &alice).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
}
