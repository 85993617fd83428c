//! Application services: a registration file loaded by a real moss, and the client-server
//! rules for services (as_token, `user_id=` masquerading, registering namespaced users,
//! exclusive namespaces, rate-limit exemption).

use serde_json::json;

use crate::common::{enc, errcode, Server};

const REGISTRATION: &str = "id: irc\nurl: null\nas_token: as-token-irc\nhs_token: hs-token-irc\n\
    sender_localpart: ircbot\nrate_limited: false\nnamespaces:\n  users:\n  - regex: '@irc_.*'\n    exclusive: true\n\
    \x20 aliases:\n  - regex: '#irc_.*'\n    exclusive: true\n  rooms: []\n";

async fn server_with_bridge() -> Server {
    let dir = std::env::temp_dir().join(format!("moss-as-{}-{}", std::process::id(), crate::common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("irc.yaml");
    std::fs::write(&file, REGISTRATION).unwrap();
    let files = format!("[\"{}\"]", file.display());
    Server::start_in(
        dir,
        &[
            ("MOSS_REGISTRATION", "open"),
            // Limits on, and tight: the service is exempt, people are not.
            ("MOSS_RATE_LIMITS__MESSAGE__BURST", "3"),
            ("MOSS_RATE_LIMITS__MESSAGE__PER_SECOND", "0.01"),
            ("MOSS_APPSERVICE__CONFIG_FILES", &files),
        ],
    )
    .await
}

#[tokio::test]
async fn a_service_acts_as_its_users_within_its_namespace() {
    let s = server_with_bridge().await;
    let tok = Some("as-token-irc");
    let call = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let s = &s;
        async move { s.call(method, &path, tok, body).await }
    };

    // The service's own user exists from the start and is who the token is.
    let (st, v) = call("GET", "/_matrix/client/v3/account/whoami".into(), None).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@ircbot:localhost")), "{v}");

    // Registering its users: inside the namespace only, once, without a password or login.
    let reg = |name: &str| json!({"type": "m.login.application_service", "username": name, "inhibit_login": true});
    let (st, v) = call("POST", "/_matrix/client/v3/register".into(), Some(reg("irc_alice"))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user_id"], "@irc_alice:localhost");
    assert!(v.get("access_token").is_none(), "inhibit_login: {v}");
    let (st, v) = call("POST", "/_matrix/client/v3/register".into(), Some(reg("irc_alice"))).await;
    assert_eq!((st, errcode(&v)), (400, "M_USER_IN_USE"));
    let (st, v) = call("POST", "/_matrix/client/v3/register".into(), Some(reg("carol"))).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    // Without the service's token, that registration type is refused.
    let (st, _) = s.call("POST", "/_matrix/client/v3/register", None, Some(reg("irc_bob"))).await;
    assert!(st == 401 || st == 403, "{st}");

    // People cannot take the namespace.
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "irc_mallory", "password": "password123", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    let (st, v) = s.call("GET", "/_matrix/client/v3/register/available?username=irc_mallory", None, None).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    let human = s.register("dave").await;

    // Masquerading: registered users of the namespace only.
    let (st, v) =
        call("GET", format!("/_matrix/client/v3/account/whoami?user_id={}", enc("@irc_alice:localhost")), None).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@irc_alice:localhost")), "{v}");
    let (st, v) = call("GET", format!("/_matrix/client/v3/account/whoami?user_id={}", enc(&human.id)), None).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "outside the namespace: {v}");
    let (st, v) =
        call("GET", format!("/_matrix/client/v3/account/whoami?user_id={}", enc("@irc_ghost:localhost")), None).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "not registered: {v}");
    let (st, v) = call(
        "GET",
        format!("/_matrix/client/v3/account/whoami?user_id={}&device_id=NOPE", enc("@irc_alice:localhost")),
        None,
    )
    .await;
    assert_eq!((st, errcode(&v)), (400, "M_UNKNOWN_DEVICE"), "{v}");

    // A puppet talks in a room, unlimited; a person hits the (tight) message limit.
    let as_alice = format!("user_id={}", enc("@irc_alice:localhost"));
    let (st, v) =
        call("POST", format!("/_matrix/client/v3/createRoom?{as_alice}"), Some(json!({"preset": "public_chat"}))).await;
    assert_eq!(st, 200, "{v}");
    let room = v["room_id"].as_str().unwrap().to_owned();
    assert_eq!(s.join(&human, &room).await.0, 200);
    for i in 0..10 {
        let (st, v) = call(
            "PUT",
            format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}?{as_alice}", enc(&room)),
            Some(json!({"msgtype": "m.text", "body": format!("from IRC {i}")})),
        )
        .await;
        assert_eq!(st, 200, "message {i}: {v}");
    }
    let mut limited = false;
    for i in 0..10 {
        let (st, _) = s
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/h{i}", enc(&room)),
                &human,
                json!({"msgtype": "m.text", "body": "hi"}),
            )
            .await;
        limited |= st == 429;
    }
    assert!(limited, "people are still rate limited");
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=30", enc(&room)), &human).await;
    let from_irc = v["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["sender"] == "@irc_alice:localhost" && e["type"] == "m.room.message")
        .count();
    assert_eq!(from_irc, 10, "the messages are the puppet's");

    // Aliases in the exclusive alias namespace: the service's users only, even outside the room.
    let alias = enc("#irc_chan:localhost");
    let (st, v) = s.put(&format!("/_matrix/client/v3/directory/room/{alias}"), &human, json!({"room_id": room})).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");
    let (st, v) =
        call("PUT", format!("/_matrix/client/v3/directory/room/{alias}"), Some(json!({"room_id": room}))).await;
    assert_eq!(st, 200, "the service's own user, not in the room: {v}");
    let (st, v) =
        s.call("DELETE", &format!("/_matrix/client/v3/directory/room/{alias}"), Some(&human.token), None).await;
    assert_eq!((st, errcode(&v)), (400, "M_EXCLUSIVE"), "{v}");

    // Logging in as a namespaced user with the service's token gives a device of that user.
    let login =
        |user: &str| json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": user}});
    let (st, v) = call("POST", "/_matrix/client/v3/login".into(), Some(login("irc_alice"))).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@irc_alice:localhost")), "{v}");
    let (st, v) = s.call("GET", "/_matrix/client/v3/account/whoami", v["access_token"].as_str(), None).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@irc_alice:localhost")), "{v}");
    let (st, v) = call("POST", "/_matrix/client/v3/login".into(), Some(login("dave"))).await;
    assert_eq!((st, errcode(&v)), (403, "M_EXCLUSIVE"), "{v}");
    let (st, _) = s.call("POST", "/_matrix/client/v3/login", Some(&human.token), Some(login("irc_alice"))).await;
    assert_eq!(st, 403, "a person's token is not a service's");
    let (_, v) = s.call("GET", "/_matrix/client/v3/login", None, None).await;
    assert!(v["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.application_service"), "{v}");
}
