use hmac::{Hmac, Mac};
use serde_json::json;

use crate::common::{errcode, Server};

#[tokio::test]
async fn registration_uses_interactive_auth_and_login_accepts_localpart_or_mxid() {
    let s = Server::start().await;
    // First call without auth: 401 with the flows and a session.
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "alice", "password": "password123"})),
        )
        .await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["flows"][0]["stages"][0], "m.login.dummy");
    let session = v["session"].as_str().unwrap().to_owned();
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "alice", "password": "password123", "auth": {"type": "m.login.dummy", "session": session}})))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user_id"], "@alice:localhost");
    let token = v["access_token"].as_str().unwrap().to_owned();

    let (st, v) = s.call("GET", "/_matrix/client/v3/account/whoami", Some(&token), None).await;
    assert_eq!((st, v["user_id"].as_str()), (200, Some("@alice:localhost")));

    for user in ["alice", "@alice:localhost", "ALICE"] {
        let (st, v) = s
            .call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "password123"})))
            .await;
        assert_eq!(st, 200, "login as {user}: {v}");
        assert_eq!(v["user_id"], "@alice:localhost");
    }
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong-password"})))
        .await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"));
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "password123"})))
        .await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"));

    // Taken and invalid names.
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "alice", "password": "password123", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_USER_IN_USE"));
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "Bad Name", "password": "password123", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_USERNAME"));
    let (st, v) = s.call("GET", "/_matrix/client/v3/register/available?username=alice", None, None).await;
    assert_eq!((st, errcode(&v)), (400, "M_USER_IN_USE"));
    let (st, v) = s.call("GET", "/_matrix/client/v3/register/available?username=carol", None, None).await;
    assert_eq!((st, v["available"].as_bool()), (200, Some(true)));

    // Logout kills the token.
    let (st, _) = s.call("POST", "/_matrix/client/v3/logout", Some(&token), Some(json!({}))).await;
    assert_eq!(st, 200);
    let (st, v) = s.call("GET", "/_matrix/client/v3/account/whoami", Some(&token), None).await;
    assert_eq!((st, errcode(&v)), (401, "M_UNKNOWN_TOKEN"));
}

#[tokio::test]
async fn registration_is_disabled_by_default_and_token_mode_counts_uses() {
    let s = Server::start_with(&[]).await;
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "x", "password": "password123", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"));
    drop(s);

    let s = Server::start_with(&[("MOSS_REGISTRATION", "token"), ("MOSS_RATE_LIMITS__ENABLED", "false")]).await;
    let out = std::process::Command::new(crate::common::moss_bin())
        .args(["registration-token", "create", "--token", "invite-1", "--uses", "1"])
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "t1", "password": "password123"})))
        .await;
    assert_eq!(st, 401);
    assert_eq!(v["flows"][0]["stages"][0], "m.login.registration_token");
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "t1", "password": "password123", "auth": {"type": "m.login.registration_token", "token": "wrong"}})))
        .await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(errcode(&v), "M_FORBIDDEN", "the stage's error sits beside the flows: {v}");
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "t1", "password": "password123", "auth": {"type": "m.login.registration_token", "token": "invite-1"}})))
        .await;
    assert_eq!(st, 200, "{v}");
    // The single use is spent.
    let (st, _) = s
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "t2", "password": "password123", "auth": {"type": "m.login.registration_token", "token": "invite-1"}})))
        .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn password_change_and_deactivation_need_the_password() {
    let s = Server::start().await;
    let a = s.register("pw").await;
    let (st, v) = s.post("/_matrix/client/v3/account/password", &a, json!({"new_password": "newpassword1"})).await;
    assert_eq!(st, 401, "{v}");
    let session = v["session"].as_str().unwrap();
    let auth = |pw: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": a.id}, "password": pw, "session": session});
    let (st, v) = s
        .post(
            "/_matrix/client/v3/account/password",
            &a,
            json!({"new_password": "newpassword1", "auth": auth("bad-password")}),
        )
        .await;
    assert_eq!(st, 401);
    assert_eq!(errcode(&v), "M_FORBIDDEN");
    assert!(v["flows"].is_array() && v["session"].is_string(), "{v}");
    let (st, v) = s
        .post(
            "/_matrix/client/v3/account/password",
            &a,
            json!({"new_password": "newpassword1", "logout_devices": false, "auth": auth("password123")}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let login = |pw: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "pw"}, "password": pw});
    assert_eq!(s.call("POST", "/_matrix/client/v3/login", None, Some(login("password123"))).await.0, 403);
    assert_eq!(s.call("POST", "/_matrix/client/v3/login", None, Some(login("newpassword1"))).await.0, 200);

    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "pw"}, "password": "newpassword1"});
    let (st, v) = s.post("/_matrix/client/v3/account/deactivate", &a, json!({"auth": auth})).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.call("POST", "/_matrix/client/v3/login", None, Some(login("newpassword1"))).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", &a).await.0, 401);
}

#[tokio::test]
async fn refresh_tokens_rotate() {
    let s = Server::start().await;
    s.register("ref").await;
    let (st, v) = s
        .call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "ref"}, "password": "password123", "refresh_token": true})))
        .await;
    assert_eq!(st, 200);
    assert!(v["expires_in_ms"].as_u64().unwrap() > 0);
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    let old_access = v["access_token"].as_str().unwrap().to_owned();
    let (st, v) = s.call("POST", "/_matrix/client/v3/refresh", None, Some(json!({"refresh_token": refresh}))).await;
    assert_eq!(st, 200, "{v}");
    let new_access = v["access_token"].as_str().unwrap();
    assert_ne!(new_access, old_access);
    assert_eq!(s.call("GET", "/_matrix/client/v3/account/whoami", Some(new_access), None).await.0, 200);
    assert_eq!(s.call("GET", "/_matrix/client/v3/account/whoami", Some(&old_access), None).await.0, 401);
    let (st, v) = s.call("POST", "/_matrix/client/v3/refresh", None, Some(json!({"refresh_token": refresh}))).await;
    assert_eq!((st, errcode(&v)), (401, "M_UNKNOWN_TOKEN"));
}

#[tokio::test]
async fn devices_can_be_listed_renamed_and_deleted() {
    let s = Server::start().await;
    let a = s.register("dev").await;
    let (st, v) = s.get("/_matrix/client/v3/devices", &a).await;
    assert_eq!(st, 200);
    assert_eq!(v["devices"][0]["device_id"], a.device);
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/devices/{}", a.device), &a, json!({"display_name": "laptop"})).await;
    assert_eq!(st, 200);
    let (_, v) = s.get(&format!("/_matrix/client/v3/devices/{}", a.device), &a).await;
    assert_eq!(v["display_name"], "laptop");
    let (st, v) = s.get("/_matrix/client/v3/devices/NOPE", &a).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
    let (st, _) =
        s.call("DELETE", &format!("/_matrix/client/v3/devices/{}", a.device), Some(&a.token), Some(json!({}))).await;
    assert_eq!(st, 401);
    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dev"}, "password": "password123"});
    let (st, v) = s
        .call(
            "DELETE",
            &format!("/_matrix/client/v3/devices/{}", a.device),
            Some(&a.token),
            Some(json!({"auth": auth})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", &a).await.0, 401);
}

#[tokio::test]
async fn synapse_shared_secret_registration_checks_the_hmac() {
    let s =
        Server::start_with(&[("MOSS_REGISTRATION_SHARED_SECRET", "s3cret"), ("MOSS_RATE_LIMITS__ENABLED", "false")])
            .await;
    let mac = |nonce: &str, user: &str, pw: &str, admin: bool| {
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        m.update(format!("{nonce}\0{user}\0{pw}\0{}", if admin { "admin" } else { "notadmin" }).as_bytes());
        hex::encode(m.finalize().into_bytes())
    };
    let (_, v) = s.call("GET", "/_synapse/admin/v1/register", None, None).await;
    let nonce = v["nonce"].as_str().unwrap().to_owned();
    let (st, v) = s
        .call("POST", "/_synapse/admin/v1/register", None, Some(json!({"nonce": nonce, "username": "ops", "password": "password123", "admin": true, "mac": mac(&nonce, "ops", "password123", false)})))
        .await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "a MAC over other fields must fail");
    let (_, v) = s.call("GET", "/_synapse/admin/v1/register", None, None).await;
    let nonce = v["nonce"].as_str().unwrap().to_owned();
    let body = json!({"nonce": nonce, "username": "ops", "password": "password123", "admin": true, "mac": mac(&nonce, "ops", "password123", true)});
    let (st, v) = s.call("POST", "/_synapse/admin/v1/register", None, Some(body.clone())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user_id"], "@ops:localhost");
    // Nonces are single-use.
    let (st, _) = s.call("POST", "/_synapse/admin/v1/register", None, Some(body)).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn login_is_rate_limited_when_limits_are_on() {
    let s = Server::start_with(&[("MOSS_REGISTRATION", "open")]).await;
    let mut limited = None;
    for _ in 0..10 {
        let (st, v) = s
            .call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "x"}, "password": "password123"})))
            .await;
        if st == 429 {
            limited = Some(v);
            break;
        }
    }
    let v = limited.expect("ten quick logins must hit the limit");
    assert_eq!(errcode(&v), "M_LIMIT_EXCEEDED");
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0, "{v}");
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "x"}, "password": "p"});
    let attempt = |s: &Server, forwarded: &'static str| {
        let (url, body) = (format!("{}/_matrix/client/v3/login", s.base), login.clone());
        async move {
            let res = reqwest::Client::new().post(url).header("x-forwarded-for", forwarded).json(&body).send().await;
            res.unwrap().status().as_u16()
        }
    };
    let limits = ("MOSS_RATE_LIMITS__LOGIN", "{ per_second = 0.01, burst = 3 }");

    // Behind a trusted proxy, each client address has its own budget; the client's own
    // leftmost entries cannot pick a fresh one.
    let s = Server::start_with(&[limits, ("MOSS_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]")]).await;
    for _ in 0..3 {
        assert_eq!(attempt(&s, "203.0.113.5").await, 403);
    }
    assert_eq!(attempt(&s, "203.0.113.5").await, 429);
    assert_eq!(attempt(&s, "198.51.100.1, 203.0.113.5").await, 429, "spoofed leftmost entries are ignored");
    assert_eq!(attempt(&s, "203.0.113.6").await, 403, "another client keeps its own budget");
    drop(s);

    // From an untrusted peer the header means nothing: every request is the peer's.
    let s = Server::start_with(&[limits]).await;
    let mut statuses = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"] {
        statuses.push(attempt(&s, client).await);
    }
    assert_eq!(statuses, [403, 403, 403, 429]);
}

#[tokio::test]
async fn interactive_auth_password_attempts_are_rate_limited_like_logins() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__REGISTER", "{ per_second = 100, burst = 100 }"),
        ("MOSS_RATE_LIMITS__LOGIN", "{ per_second = 0.01, burst = 3 }"),
    ])
    .await;
    let a = s.register("guess").await;
    let auth = |pw: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": a.id}, "password": pw});
    let mut statuses = Vec::new();
    for i in 0..5 {
        let body = json!({"new_password": "newpassword1", "auth": auth(&format!("guess{i}"))});
        let (st, v) = s.post("/_matrix/client/v3/account/password", &a, body).await;
        statuses.push((st, errcode(&v).to_owned()));
    }
    assert_eq!(statuses[..3].iter().map(|s| s.0).collect::<Vec<_>>(), [401, 401, 401], "{statuses:?}");
    assert_eq!(statuses[3], (429, "M_LIMIT_EXCEEDED".to_owned()), "{statuses:?}");
}
