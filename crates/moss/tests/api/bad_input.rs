use serde_json::json;

use crate::common::{errcode, Server};

#[tokio::test]
async fn every_kind_of_bad_input_gets_its_errcode_and_changes_nothing() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_HTTP__MAX_REQUEST_BYTES", "100000"),
    ])
    .await;
    let a = s.register("alice").await;
    let room = s.create_room(&a, json!({})).await;
    let count_rooms =
        || async { s.get("/_matrix/client/v3/joined_rooms", &a).await.1["joined_rooms"].as_array().unwrap().len() };

    let (st, v) =
        s.call_raw("POST", "/_matrix/client/v3/createRoom", Some(&a.token), Some(b"{not json".to_vec())).await;
    assert_eq!((st, errcode(&v)), (400, "M_NOT_JSON"));
    let (st, v) = s.call("POST", "/_matrix/client/v3/createRoom", Some(&a.token), Some(json!({"name": 5}))).await;
    assert_eq!((st, errcode(&v)), (400, "M_BAD_JSON"));
    let (st, v) = s.call("POST", "/_matrix/client/v3/createRoom", Some(&a.token), Some(json!(["array"]))).await;
    assert_eq!((st, errcode(&v)), (400, "M_BAD_JSON"));
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/createRoom", Some(&a.token), Some(json!({"invite": ["not-a-user-id"]})))
        .await;
    assert!(st == 400 && (errcode(&v) == "M_INVALID_PARAM" || errcode(&v) == "M_BAD_JSON"), "{st} {v}");
    assert_eq!(count_rooms().await, 1, "failed createRoom calls must not create rooms");

    let (st, v) = s.get("/_matrix/client/v3/rooms/not-a-room-id/state", &a).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let (st, v) = s.call("GET", "/_matrix/client/v3/joined_rooms", None, None).await;
    assert_eq!((st, errcode(&v)), (401, "M_MISSING_TOKEN"));
    let (st, v) = s.call("GET", "/_matrix/client/v3/joined_rooms", Some("mat_bogus"), None).await;
    assert_eq!((st, errcode(&v)), (401, "M_UNKNOWN_TOKEN"));
    let (st, v) = s.call("GET", "/_matrix/client/v3/joined_rooms?access_token=mat_bogus", None, None).await;
    assert_eq!((st, errcode(&v)), (401, "M_UNKNOWN_TOKEN"), "query-string tokens are read too");
    let (st, v) = s.call("GET", "/_matrix/client/v3/no/such/endpoint", None, None).await;
    assert_eq!((st, errcode(&v)), (404, "M_UNRECOGNIZED"));
    let (st, v) = s.call("DELETE", "/_matrix/client/v3/joined_rooms", Some(&a.token), None).await;
    assert_eq!((st, errcode(&v)), (405, "M_UNRECOGNIZED"));

    let huge = format!("{{\"msgtype\":\"m.text\",\"body\":\"{}\"}}", "x".repeat(200_000));
    let (st, v) = s
        .call_raw(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big"),
            Some(&a.token),
            Some(huge.into_bytes()),
        )
        .await;
    assert_eq!((st, errcode(&v)), (413, "M_TOO_LARGE"));
    let event = json!({"msgtype": "m.text", "body": "y".repeat(70_000)});
    let (st, v) = s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big2"), &a, event).await;
    assert_eq!((st, errcode(&v)), (413, "M_TOO_LARGE"), "events over 65536 bytes are refused");

    let (st, v) =
        s.put("/_matrix/client/v3/rooms/!unknown:localhost/send/m.room.message/x", &a, json!({"body": "x"})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"));
    let (st, v) = s.get("/_matrix/client/v3/sync?since=garbage", &a).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let (st, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from=zzz"), &a).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let (st, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=sideways"), &a).await;
    assert_eq!(st, 400, "{v}");

    // Nothing above reached the timeline.
    let (_, msgs) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), &a).await;
    assert!(!msgs["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.message"));
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[tokio::test]
async fn cors_preflight_allows_authorization() {
    let s = Server::start().await;
    let res = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/_matrix/client/v3/sync", s.base))
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    // The legacy r0 paths still answer.
    let (st, _) = s.call("GET", "/_matrix/client/r0/login", None, None).await;
    assert_eq!(st, 200);
}

/// What a schemathesis run over the spec found (5xx and schema mismatches), one by one.
#[tokio::test]
async fn what_the_spec_fuzzer_found_stays_fixed() {
    let s = Server::start().await;
    let a = s.register("alice").await;
    s.create_room(&a, json!({"name": "a room"})).await;

    // Endpoints whose token the spec makes optional, but which need one here: 401, not a panic.
    for (path, body) in [
        ("/_matrix/client/v3/account/password", json!({"new_password": ""})),
        ("/_matrix/client/v3/account/deactivate", json!({})),
    ] {
        let (st, v) = s.call("POST", path, None, Some(body)).await;
        assert_eq!((st, errcode(&v)), (401, "M_MISSING_TOKEN"), "{path}: {v}");
        assert_eq!(v["flows"], json!([]), "user-interactive auth with no flow to follow: {v}");
    }
    // A login body without a type (ruma's parser panicked on it).
    let (st, v) = s.call_raw("POST", "/_matrix/client/v3/login", None, Some(Vec::new())).await;
    assert_eq!(st, 400, "{v}");

    // Control characters in a search term.
    let body = json!({"search_categories": {"room_events": {"search_term": "a\u{0}b \u{0}"}}});
    let (st, v) = s.post("/_matrix/client/v3/search", &a, body).await;
    assert_eq!(st, 200, "{v}");

    // A device without a name has no `display_name` at all (the schema has no null).
    let (st, v) = s.get("/_matrix/client/v3/devices", &a).await;
    assert_eq!(st, 200);
    for d in v["devices"].as_array().unwrap() {
        for (k, val) in d.as_object().unwrap() {
            assert!(!val.is_null(), "{k} is null in {d}");
        }
    }
    let (st, v) = s.get(&format!("/_matrix/client/v3/devices/{}", a.device), &a).await;
    assert_eq!(st, 200);
    assert!(v.as_object().unwrap().values().all(|x| !x.is_null()), "{v}");

    // Key backup versions only of the spec's algorithm (they are echoed back).
    let (st, v) =
        s.post("/_matrix/client/v3/room_keys/version", &a, json!({"algorithm": "AAA", "auth_data": {}})).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");

    // Bad query strings and paths are Matrix errors, not axum's plain text.
    let res = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v1/media/thumbnail/localhost/abc?width=32&height=32&animated=2", s.base))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(errcode(&v), "M_INVALID_PARAM", "{v}");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
