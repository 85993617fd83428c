//! The Synapse-compatible admin API (`/_synapse/admin`) against a real moss: who may call it,
//! the users, rooms, reports and media endpoints with Synapse's shapes, status codes and
//! parameter checks, and what each operation does to the users concerned.

use std::process::Command;

use serde_json::{json, Value};

use crate::common::{enc, errcode, moss_bin, Server, User};

const A: &str = "/_synapse/admin";

/// An admin made with the command line, as an operator would.
pub(crate) async fn admin(s: &Server, name: &str) -> User {
    let out = Command::new(moss_bin())
        .args(["user", "create", name, "--password", "password123", "--admin"])
        .envs(s.env_vars())
        .env("MOSS_DATA_DIR", s.data_dir())
        .envs(crate::common::database_env(s.data_dir()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = s.login(name).await;
    let (_, who) = s.call("GET", "/_matrix/client/v3/account/whoami", Some(&token), None).await;
    User { id: who["user_id"].as_str().unwrap().to_owned(), token, device: String::new() }
}

fn names(v: &Value) -> Vec<&str> {
    v["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect()
}

async fn login_status(s: &Server, name: &str, password: &str) -> (u16, Value) {
    let body =
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": password});
    s.call("POST", "/_matrix/client/v3/login", None, Some(body)).await
}

#[tokio::test]
async fn only_admins_may_call_it_and_users_are_listed_filtered_and_paged_as_synapse() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let (st, v) = s.get(&format!("{A}/v2/users"), &alice).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{v}");
    let (st, v) = s.call("GET", &format!("{A}/v2/users"), None, None).await;
    assert_eq!((st, errcode(&v)), (401, "M_MISSING_TOKEN"));
    // Open to anyone, as Synapse's (synapse-admin shows it on its login page).
    let (st, v) = s.call("GET", &format!("{A}/v1/server_version"), None, None).await;
    assert_eq!(st, 200);
    assert!(v["server_version"].as_str().unwrap().starts_with("moss "), "{v}");

    let ops = admin(&s, "ops").await;
    let bob = s.register("bob").await;
    s.register("carl").await;
    s.put(&format!("/_matrix/client/v3/profile/{}/displayname", bob.id), &bob, json!({"displayname": "Bobby Tables"}))
        .await;
    // Login answers `home_server` (synapse-admin builds ids from it).
    let (_, v) = login_status(&s, "carl", "password123").await;
    assert_eq!(v["home_server"], "localhost");

    let (st, v) = s.get(&format!("{A}/v2/users"), &ops).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(names(&v), ["@alice:localhost", "@bob:localhost", "@carl:localhost", "@ops:localhost"]);
    assert_eq!(v["total"], 4);
    assert!(v.get("next_token").is_none());
    let ops_row = &v["users"][3];
    assert_eq!((ops_row["admin"].as_bool(), ops_row["is_guest"].as_bool()), (Some(true), Some(false)));
    assert!(ops_row["creation_ts"].as_i64().unwrap() > 1_600_000_000_000, "milliseconds in the list: {ops_row}");

    let (_, v) = s.get(&format!("{A}/v2/users?limit=2&dir=b"), &ops).await;
    assert_eq!(names(&v), ["@ops:localhost", "@carl:localhost"]);
    assert_eq!((v["total"].as_i64(), v["next_token"].as_str()), (Some(4), Some("2")));
    let (_, v) = s.get(&format!("{A}/v2/users?limit=2&from=2&dir=b"), &ops).await;
    assert_eq!(names(&v), ["@bob:localhost", "@alice:localhost"]);
    assert!(v.get("next_token").is_none());
    // `name` matches the localpart or the display name; `user_id` the whole id.
    let (_, v) = s.get(&format!("{A}/v2/users?name=tables"), &ops).await;
    assert_eq!(names(&v), ["@bob:localhost"]);
    let (_, v) = s.get(&format!("{A}/v2/users?name=localhost"), &ops).await;
    assert_eq!(v["total"], 0, "the server part is not the localpart");
    let (_, v) = s.get(&format!("{A}/v2/users?user_id=arl"), &ops).await;
    assert_eq!(names(&v), ["@carl:localhost"]);
    let (_, v) = s.get(&format!("{A}/v2/users?admins=true"), &ops).await;
    assert_eq!(names(&v), ["@ops:localhost"]);
    let (_, v) = s.get(&format!("{A}/v2/users?order_by=displayname&dir=b"), &ops).await;
    let shown: Vec<&str> = v["users"].as_array().unwrap().iter().map(|u| u["displayname"].as_str().unwrap()).collect();
    let mut sorted = shown.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!((shown.len(), &shown), (4, &sorted), "ordered by display name, descending");
    for bad in ["dir=x", "order_by=password", "limit=-1", "from=abc", "deactivated=yes"] {
        let (st, v) = s.get(&format!("{A}/v2/users?{bad}"), &ops).await;
        assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{bad}: {v}");
    }

    // One user: creation in seconds here, as Synapse.
    let (st, v) = s.get(&format!("{A}/v2/users/{}", enc(&bob.id)), &ops).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["displayname"], "Bobby Tables");
    assert!(v["creation_ts"].as_i64().unwrap() < 100_000_000_000, "seconds: {v}");
    assert_eq!(v["threepids"], json!([]));
    let (st, v) = s.get(&format!("{A}/v2/users/{}", enc("@nobody:localhost")), &ops).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
    let (st, _) = s.get(&format!("{A}/v2/users/{}", enc("@x:elsewhere.example")), &ops).await;
    assert_eq!(st, 400);
    let (st, v) = s.get(&format!("{A}/v2/users/not-a-user"), &ops).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
}

#[tokio::test]
async fn admins_create_change_lock_reset_and_deactivate_accounts() {
    let s = Server::start().await;
    let ops = admin(&s, "ops").await;
    let carl = s.register("carl").await;

    // Create: 201, the password works, the display name defaults to the localpart. The raw
    // `@` and `:` in the path are what synapse-admin sends.
    let (st, v) = s.put(&format!("{A}/v2/users/@dave:localhost"), &ops, json!({"password": "dave-pass-1"})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!((v["name"].as_str(), v["displayname"].as_str()), (Some("@dave:localhost"), Some("dave")));
    let (st, _) = login_status(&s, "dave", "dave-pass-1").await;
    assert_eq!(st, 200);
    // Update: 200; the whole record synapse-admin sends back is accepted, unknown keys ignored.
    let (st, v) = s
        .put(
            &format!("{A}/v2/users/{}", enc("@dave:localhost")),
            &ops,
            json!({"name": "@dave:localhost", "displayname": "Dave", "admin": true, "user_type": null,
                   "threepids": [], "external_ids": [], "creation_ts_ms": 1, "erased": false}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["displayname"].as_str(), v["admin"].as_bool()), (Some("Dave"), Some(true)));
    let (st, v) = s.put(&format!("{A}/v2/users/{}", enc("@dave:localhost")), &ops, json!({"admin": "yes"})).await;
    assert_eq!((st, errcode(&v)), (400, "M_BAD_JSON"));
    let (st, _) =
        s.put(&format!("{A}/v2/users/{}", enc("@dave:localhost")), &ops, json!({"user_type": "wizard"})).await;
    assert_eq!(st, 400);
    let (st, _) = s.put(&format!("{A}/v2/users/{}", enc(&ops.id)), &ops, json!({"admin": false})).await;
    assert_eq!(st, 400, "an admin may not demote themselves");

    // Lock: the sessions stay but answer 401 M_USER_LOCKED, logins too; unlocking restores them.
    let (st, _) = s.put(&format!("{A}/v2/users/{}", enc(&carl.id)), &ops, json!({"locked": true})).await;
    assert_eq!(st, 200);
    let (st, v) = s.get("/_matrix/client/v3/account/whoami", &carl).await;
    assert_eq!((st, errcode(&v)), (401, "M_USER_LOCKED"), "{v}");
    let (st, v) = login_status(&s, "carl", "password123").await;
    assert_eq!((st, errcode(&v)), (401, "M_USER_LOCKED"), "{v}");
    let (_, v) = s.get(&format!("{A}/v2/users"), &ops).await;
    assert!(!names(&v).contains(&"@carl:localhost"), "locked users are left out by default");
    let (_, v) = s.get(&format!("{A}/v2/users?locked=true"), &ops).await;
    assert!(names(&v).contains(&"@carl:localhost"));
    s.put(&format!("{A}/v2/users/{}", enc(&carl.id)), &ops, json!({"locked": false})).await;
    let (st, _) = s.get("/_matrix/client/v3/account/whoami", &carl).await;
    assert_eq!(st, 200);

    // Whois: the connection as seen (address, client), under the device key "".
    let (st, v) = s.get(&format!("{A}/v1/whois/{}", enc(&carl.id)), &ops).await;
    assert_eq!(st, 200, "{v}");
    let conn = &v["devices"][""]["sessions"][0]["connections"][0];
    assert_eq!(conn["ip"], "127.0.0.1", "{v}");
    assert!(conn["last_seen"].as_i64().is_some(), "{v}");
    // A user may ask about themselves on the client-server endpoint, not about others.
    let (st, _) = s.get(&format!("/_matrix/client/v3/admin/whois/{}", enc(&carl.id)), &carl).await;
    assert_eq!(st, 200);
    let (st, _) = s.get(&format!("/_matrix/client/v3/admin/whois/{}", enc(&ops.id)), &carl).await;
    assert_eq!(st, 403);
    let (_, v) = s.get(&format!("{A}/v2/users/{}/devices", enc(&carl.id)), &ops).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["devices"][0]["device_id"], carl.device.as_str());

    // Password reset ends the sessions unless told not to.
    let (st, _) =
        s.post(&format!("{A}/v1/reset_password/{}", enc(&carl.id)), &ops, json!({"new_password": "carl-pass-2"})).await;
    assert_eq!(st, 200);
    let (st, _) = s.get("/_matrix/client/v3/account/whoami", &carl).await;
    assert_eq!(st, 401);
    assert_eq!(login_status(&s, "carl", "carl-pass-2").await.0, 200);
    let (st, v) = s.post(&format!("{A}/v1/reset_password/{}", enc(&carl.id)), &ops, json!({})).await;
    assert_eq!((st, errcode(&v)), (400, "M_MISSING_PARAM"));

    // Deactivate with erase: no login, out of the default list, shown erased without a profile.
    let room = s.create_room(&ops, json!({"preset": "public_chat"})).await;
    let dave =
        User { id: "@dave:localhost".into(), token: s.login_with("dave", "dave-pass-1").await, device: String::new() };
    s.join(&dave, &room).await;
    let (st, v) = s.post(&format!("{A}/v1/deactivate/{}", enc(&dave.id)), &ops, json!({"erase": true})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id_server_unbind_result"], "no-support");
    assert_eq!(login_status(&s, "dave", "dave-pass-1").await.0, 403);
    let (_, v) = s.get(&format!("{A}/v2/users"), &ops).await;
    assert!(!names(&v).contains(&"@dave:localhost"));
    let (_, v) = s.get(&format!("{A}/v2/users/{}", enc(&dave.id)), &ops).await;
    assert_eq!((v["deactivated"].as_bool(), v["erased"].as_bool()), (Some(true), Some(true)), "{v}");
    assert!(v["displayname"].is_null(), "{v}");
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), &ops).await;
    assert!(v["joined"].get(&dave.id).is_none(), "a deactivated user leaves their rooms: {v}");
    // Deactivating twice is fine, a body is optional; an unknown user is 404.
    let (st, _) = s.call("POST", &format!("{A}/v1/deactivate/{}", enc(&dave.id)), Some(&ops.token), None).await;
    assert_eq!(st, 200);
    let (st, _) = s.post(&format!("{A}/v1/deactivate/{}", enc("@ghost:localhost")), &ops, json!({})).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn a_deleted_room_is_left_by_everyone_purged_and_blocked() {
    let s = Server::start().await;
    let ops = admin(&s, "ops").await;
    let bob = s.register("bob").await;
    let alice = s.register("alice").await;
    let room =
        s.create_room(&bob, json!({"preset": "public_chat", "name": "Doomed", "room_alias_name": "doomed"})).await;
    s.send_text(&bob, &room, "soon gone").await;
    s.join(&alice, &room).await;
    let kept = s.create_room(&bob, json!({"name": "Kept"})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let (st, v) = s.get(&format!("{A}/v1/rooms?search_term=doom"), &ops).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total_rooms"], 1);
    let r = &v["rooms"][0];
    assert_eq!((r["room_id"].as_str(), r["name"].as_str()), (Some(room.as_str()), Some("Doomed")));
    assert_eq!((r["joined_members"].as_i64(), r["joined_local_members"].as_i64()), (Some(2), Some(2)));
    assert_eq!(r["canonical_alias"], "#doomed:localhost");
    assert_eq!((r["public"].as_bool(), r["federatable"].as_bool()), (Some(false), Some(true)));
    let (_, v) = s.get(&format!("{A}/v1/rooms?order_by=name&dir=b"), &ops).await;
    assert_eq!(v["rooms"][0]["name"], "Kept");
    let (_, v) = s.get(&format!("{A}/v1/rooms/{}/members", enc(&room)), &ops).await;
    assert_eq!(v["total"], 2);
    let (_, v) = s.get(&format!("{A}/v1/rooms/{room}/state"), &ops).await;
    assert!(v["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"), "{v}");
    let (_, v) = s.get(&format!("{A}/v1/rooms/{room}/forward_extremities"), &ops).await;
    assert_eq!(v["count"], 1, "{v}");

    let (st, v) =
        s.call("DELETE", &format!("{A}/v2/rooms/{room}"), Some(&ops.token), Some(json!({"block": true}))).await;
    assert_eq!(st, 200, "{v}");
    let id = v["delete_id"].as_str().unwrap();
    let (_, v) = s.get(&format!("{A}/v2/rooms/delete_status/{id}"), &ops).await;
    assert_eq!(v["status"], "complete", "{v}");
    let mut kicked: Vec<&str> =
        v["shutdown_room"]["kicked_users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    kicked.sort();
    assert_eq!(kicked, [alice.id.as_str(), bob.id.as_str()]);
    assert_eq!(v["room_id"], room.as_str());
    assert_eq!(v["shutdown_room"]["local_aliases"], json!([]), "listed only when moved to a new room");

    // The members' clients learn of it on their next sync, and the room then stays out.
    let v = s.sync(&alice, Some(&since), 0).await;
    assert!(v["rooms"]["leave"].get(&room).is_some(), "the leave reaches the client: {v}");
    let next = v["next_batch"].as_str().unwrap().to_owned();
    s.send_text(&bob, &kept, "life goes on").await;
    let v = s.sync(&alice, Some(&next), 0).await;
    assert!(v["rooms"]["leave"].get(&room).is_none() && v["rooms"]["join"].get(&room).is_none(), "{v}");
    let v = s.sync(&alice, None, 0).await;
    assert!(v["rooms"]["join"].get(&room).is_none(), "not in an initial sync either: {v}");
    let (st, _) = s
        .post(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            &alice,
            json!({"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}}}),
        )
        .await;
    assert_eq!(st, 200, "sliding sync after a purge");
    let (_, v) = s.get("/_matrix/client/v3/joined_rooms", &bob).await;
    assert_eq!(v["joined_rooms"], json!([kept]));

    // Gone for the admin API and the directory; blocked for joins.
    let (_, v) = s.get(&format!("{A}/v1/rooms"), &ops).await;
    assert_eq!(v["total_rooms"], 1, "{v}");
    let (st, _) = s.get(&format!("{A}/v1/rooms/{}", enc(&room)), &ops).await;
    assert_eq!(st, 404);
    let (st, _) = s.get(&format!("/_matrix/client/v3/directory/room/{}", enc("#doomed:localhost")), &alice).await;
    assert_eq!(st, 404);
    let (st, v) = s.join(&alice, &room).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{v}");
    let (_, v) = s.get(&format!("{A}/v1/rooms/{room}/block"), &ops).await;
    assert_eq!((v["block"].as_bool(), v["user_id"].as_str()), (Some(true), Some(ops.id.as_str())));
    let (_, v) =
        s.call("PUT", &format!("{A}/v1/rooms/{room}/block"), Some(&ops.token), Some(json!({"block": false}))).await;
    assert_eq!(v["block"], false);

    // An unknown room: nothing to do but block it, if asked (as Synapse); a body is required.
    let (st, v) = s.call("DELETE", &format!("{A}/v2/rooms/!nope:localhost"), Some(&ops.token), None).await;
    assert_eq!((st, errcode(&v)), (400, "M_NOT_JSON"));
    let (st, _) = s.call("DELETE", &format!("{A}/v2/rooms/!nope:localhost"), Some(&ops.token), Some(json!({}))).await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call("DELETE", &format!("{A}/v2/rooms/!nope:localhost"), Some(&ops.token), Some(json!({"block": true})))
        .await;
    assert_eq!(st, 200);
    // The old delete answers what it did, and may move members into a new room.
    let room2 = s.create_room(&bob, json!({"preset": "public_chat", "name": "Second"})).await;
    let (st, v) = s
        .call(
            "DELETE",
            &format!("{A}/v1/rooms/{room2}"),
            Some(&ops.token),
            Some(json!({"new_room_user_id": ops.id, "message": "moved", "purge": false})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let new_room = v["new_room_id"].as_str().unwrap();
    let (_, v) = s.get("/_matrix/client/v3/joined_rooms", &bob).await;
    let joined: Vec<&str> = v["joined_rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(joined.contains(&new_room) && !joined.contains(&room2.as_str()), "{v}");
}

#[tokio::test]
async fn reports_and_media_are_listed_and_deleted() {
    let s = Server::start().await;
    let ops = admin(&s, "ops").await;
    let bob = s.register("bob").await;
    let rita = s.register("rita").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat", "name": "Lobby"})).await;
    s.join(&rita, &room).await;
    let event = s.send_text(&bob, &room, "spam spam").await;
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/report/{}", enc(&event)),
            &rita,
            json!({"reason": "spam", "score": -100}),
        )
        .await;
    assert_eq!(st, 200);

    let (st, v) = s.get(&format!("{A}/v1/event_reports"), &ops).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 1);
    let r = &v["event_reports"][0];
    assert_eq!(
        (r["reason"].as_str(), r["user_id"].as_str(), r["name"].as_str()),
        (Some("spam"), Some(rita.id.as_str()), Some("Lobby"))
    );
    assert_eq!((r["sender"].as_str(), r["event_id"].as_str()), (Some(bob.id.as_str()), Some(event.as_str())));
    let id = r["id"].as_i64().unwrap();
    let (_, v) = s.get(&format!("{A}/v1/event_reports/{id}"), &ops).await;
    assert_eq!(v["event_json"]["content"]["body"], "spam spam", "{v}");
    let (_, v) = s.get(&format!("{A}/v1/event_reports?user_id=bob"), &ops).await;
    assert_eq!(v["total"], 0, "user_id filters by the reporter");
    let (st, _) =
        s.call("DELETE", &format!("{A}/v1/event_reports/{id}"), Some(&ops.token), Some(json!({"id": id}))).await;
    assert_eq!(st, 200);
    let (st, _) = s.call("DELETE", &format!("{A}/v1/event_reports/{id}"), Some(&ops.token), None).await;
    assert_eq!(st, 404);
    let (st, _) = s.get(&format!("{A}/v1/event_reports/x"), &ops).await;
    assert_eq!(st, 400);

    // Media: bob's uploads, newest first; statistics; protection keeps quarantine away.
    let mut ids = Vec::new();
    for body in ["first upload", "second, longer upload"] {
        let (st, v) = s
            .call_raw(
                "POST",
                "/_matrix/media/v3/upload?filename=a.txt",
                Some(&bob.token),
                Some(body.as_bytes().to_vec()),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        ids.push(v["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (st, v) = s.get(&format!("{A}/v1/users/{}/media", enc(&bob.id)), &ops).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 2);
    assert_eq!(v["media"][0]["media_id"], ids[1].as_str(), "newest first by default: {v}");
    assert_eq!(v["media"][0]["media_length"], 21);
    let (_, v) = s.get(&format!("{A}/v1/statistics/users/media"), &ops).await;
    assert_eq!(
        (v["users"][0]["user_id"].as_str(), v["users"][0]["media_count"].as_i64()),
        (Some(bob.id.as_str()), Some(2))
    );
    assert_eq!(v["users"][0]["media_length"], 33);

    let download = |id: &str| format!("/_matrix/client/v1/media/download/localhost/{id}");
    let (st, _) = s.call("POST", &format!("{A}/v1/media/protect/{}", ids[0]), Some(&ops.token), None).await;
    assert_eq!(st, 200);
    let (st, v) = s.get(&format!("{A}/v1/media/localhost/{}", ids[0]), &ops).await;
    assert_eq!(st, 200, "{v}");
    let info = &v["media_info"];
    assert_eq!((info["media_id"].as_str(), info["user_id"].as_str()), (Some(ids[0].as_str()), Some(bob.id.as_str())));
    assert_eq!((info["media_length"].as_i64(), info["upload_name"].as_str()), (Some(12), Some("a.txt")));
    assert!(info["media_origin"].is_null() && info["safe_from_quarantine"] == true, "{v}");
    assert_eq!(s.get(&format!("{A}/v1/media/localhost/nope"), &ops).await.0, 404);
    assert_eq!(s.get(&format!("{A}/v1/media/elsewhere.example/{}", ids[0]), &ops).await.0, 404);
    s.call("POST", &format!("{A}/v1/media/quarantine/localhost/{}", ids[0]), Some(&ops.token), None).await;
    let (st, _) = s.call_raw("GET", &download(&ids[0]), Some(&rita.token), None).await;
    assert_eq!(st, 200, "protected media is not quarantined");
    s.call("POST", &format!("{A}/v1/media/quarantine/localhost/{}", ids[1]), Some(&ops.token), None).await;
    let (st, _) = s.call_raw("GET", &download(&ids[1]), Some(&rita.token), None).await;
    assert_eq!(st, 404, "quarantined");
    s.call("POST", &format!("{A}/v1/media/unquarantine/localhost/{}", ids[1]), Some(&ops.token), None).await;
    let (st, _) = s.call_raw("GET", &download(&ids[1]), Some(&rita.token), None).await;
    assert_eq!(st, 200);
    let (_, v) = s.get(&format!("{A}/v1/users/{}/media?order_by=media_length&dir=b", enc(&bob.id)), &ops).await;
    assert_eq!(v["media"][0]["safe_from_quarantine"], false);
    assert_eq!(v["media"][1]["safe_from_quarantine"], true);

    let (st, v) = s.call("DELETE", &format!("{A}/v1/media/localhost/{}", ids[1]), Some(&ops.token), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deleted_media"], json!([ids[1]]));
    let (st, _) = s.call_raw("GET", &download(&ids[1]), Some(&rita.token), None).await;
    assert_eq!(st, 404);
    let (st, _) = s.call("DELETE", &format!("{A}/v1/media/localhost/{}", ids[1]), Some(&ops.token), None).await;
    assert_eq!(st, 404);
    // Bulk by age: Synapse's guard against seconds (and synapse-admin's default of 0).
    let (st, v) = s.call("POST", &format!("{A}/v1/media/localhost/delete?before_ts=0"), Some(&ops.token), None).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let far = 4_000_000_000_000i64;
    let (st, v) = s
        .call("POST", &format!("{A}/v1/media/localhost/delete?before_ts={far}&size_gt=0"), Some(&ops.token), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 0, "the protected upload stays: {v}");
    s.call("POST", &format!("{A}/v1/media/unprotect/{}", ids[0]), Some(&ops.token), None).await;
    let (_, v) = s.call("POST", &format!("{A}/v1/media/delete?before_ts={far}"), Some(&ops.token), None).await;
    assert_eq!(v["deleted_media"], json!([ids[0]]), "the form without a server name: {v}");
}

#[tokio::test]
async fn registration_tokens_are_managed_as_synapse() {
    let s = Server::start_with(&[("MOSS_REGISTRATION", "token"), ("MOSS_RATE_LIMITS__ENABLED", "false")]).await;
    let ops = admin(&s, "ops").await;
    let (st, v) =
        s.post(&format!("{A}/v1/registration_tokens/new"), &ops, json!({"token": "abc-1", "uses_allowed": 1})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"token": "abc-1", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null}));
    let (_, v) = s.call("POST", &format!("{A}/v1/registration_tokens/new"), Some(&ops.token), None).await;
    assert_eq!(v["token"].as_str().unwrap().len(), 16, "random, 16 characters: {v}");
    let (_, v) = s.post(&format!("{A}/v1/registration_tokens/new"), &ops, json!({"length": 5})).await;
    assert_eq!(v["token"].as_str().unwrap().len(), 5);
    for bad in [
        json!({"token": "abc-1"}),
        json!({"token": "no spaces"}),
        json!({"uses_allowed": -1}),
        json!({"expiry_time": 1}),
        json!({"length": 65}),
    ] {
        let (st, v) = s.post(&format!("{A}/v1/registration_tokens/new"), &ops, bad.clone()).await;
        assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{bad}: {v}");
    }
    // Used once: no longer valid, and the list says so.
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "newbie", "password": "password123",
                        "auth": {"type": "m.login.registration_token", "token": "abc-1"}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.get(&format!("{A}/v1/registration_tokens/abc-1"), &ops).await;
    assert_eq!(v["completed"], 1);
    let (_, v) = s.get(&format!("{A}/v1/registration_tokens?valid=false"), &ops).await;
    let invalid: Vec<&str> =
        v["registration_tokens"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(invalid, ["abc-1"]);
    let (_, v) = s.get(&format!("{A}/v1/registration_tokens"), &ops).await;
    assert_eq!(v["registration_tokens"].as_array().unwrap().len(), 3);
    // Raising the limit makes it usable again; null removes it.
    let (st, v) =
        s.put(&format!("{A}/v1/registration_tokens/abc-1"), &ops, json!({"uses_allowed": null, "pending": 0})).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["uses_allowed"].is_null());
    let (_, v) = s.get(&format!("{A}/v1/registration_tokens?valid=true"), &ops).await;
    assert_eq!(v["registration_tokens"].as_array().unwrap().len(), 3);
    let (st, _) = s.call("DELETE", &format!("{A}/v1/registration_tokens/abc-1"), Some(&ops.token), None).await;
    assert_eq!(st, 200);
    let (st, v) = s.get(&format!("{A}/v1/registration_tokens/abc-1"), &ops).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
}

#[tokio::test]
async fn the_spec_lock_and_suspend_endpoints_restrict_accounts() {
    let s = Server::start().await;
    let ops = admin(&s, "ops").await;
    let sam = s.register("sam").await;
    let room = s.create_room(&ops, json!({"preset": "public_chat"})).await;
    s.join(&sam, &room).await;
    s.send_text(&sam, &room, "before").await;
    let (_, v) = s.get("/_matrix/client/v3/capabilities", &ops).await;
    assert_eq!(v["capabilities"]["m.account_moderation"], json!({"lock": true, "suspend": true}));
    let (_, v) = s.get("/_matrix/client/v3/capabilities", &sam).await;
    assert_eq!(v["capabilities"]["m.account_moderation"], json!({"lock": false, "suspend": false}));
    let suspend = format!("/_matrix/client/v1/admin/suspend/{}", enc(&sam.id));
    let (st, v) = s.put(&suspend, &sam, json!({"suspended": true})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "only admins");
    let (st, v) = s.put(&suspend, &ops, json!({"suspended": true})).await;
    assert_eq!((st, v), (200, json!({"suspended": true})));
    let (_, v) = s.get(&suspend, &ops).await;
    assert_eq!(v["suspended"], true);

    // Suspended: reads and leaving work; sending, joining, creating rooms, profile and uploads do not.
    let (st, _) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), &sam).await;
    assert_eq!(st, 200);
    let (st, v) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            &sam,
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .await;
    assert_eq!((st, errcode(&v)), (403, "M_USER_SUSPENDED"), "{v}");
    let (st, v) = s.post("/_matrix/client/v3/createRoom", &sam, json!({})).await;
    assert_eq!((st, errcode(&v)), (403, "M_USER_SUSPENDED"));
    let (st, v) =
        s.put(&format!("/_matrix/client/v3/profile/{}/displayname", sam.id), &sam, json!({"displayname": "x"})).await;
    assert_eq!((st, errcode(&v)), (403, "M_USER_SUSPENDED"));
    let (st, v) = s.call_raw("POST", "/_matrix/media/v3/upload", Some(&sam.token), Some(b"x".to_vec())).await;
    assert_eq!((st, errcode(&v)), (403, "M_USER_SUSPENDED"));
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &sam, json!({})).await;
    assert_eq!(st, 200, "a suspended user may leave");
    let (st, v) = s.join(&sam, &room).await;
    assert_eq!((st, errcode(&v)), (403, "M_USER_SUSPENDED"));
    s.put(&suspend, &ops, json!({"suspended": false})).await;
    assert_eq!(s.join(&sam, &room).await.0, 200);

    // Lock through the spec endpoint; admins and oneself cannot be targets; unknown is 404,
    // another server's 400.
    let lock = format!("/_matrix/client/v1/admin/lock/{}", enc(&sam.id));
    let (st, _) = s.put(&lock, &ops, json!({"locked": true})).await;
    assert_eq!(st, 200);
    let (st, v) = s.get("/_matrix/client/v3/account/whoami", &sam).await;
    assert_eq!((st, errcode(&v)), (401, "M_USER_LOCKED"));
    let (_, v) = s.get(&lock, &ops).await;
    assert_eq!(v["locked"], true);
    let (st, _) =
        s.put(&format!("/_matrix/client/v1/admin/lock/{}", enc(&ops.id)), &ops, json!({"locked": true})).await;
    assert_eq!(st, 403);
    let (st, _) = s.get(&format!("/_matrix/client/v1/admin/lock/{}", enc("@ghost:localhost")), &ops).await;
    assert_eq!(st, 404);
    let (st, v) = s.get(&format!("/_matrix/client/v1/admin/lock/{}", enc("@x:elsewhere.example")), &ops).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let (st, v) = s.put(&lock, &ops, json!({})).await;
    assert_eq!((st, errcode(&v)), (400, "M_BAD_JSON"));
}

#[tokio::test]
async fn server_notices_reach_users_in_a_room_they_cannot_write_in() {
    let s = Server::start().await;
    let ops = admin(&s, "ops").await;
    let bob = s.register("bob").await;
    let notice = json!({"user_id": bob.id, "content": {"msgtype": "m.text", "body": "maintenance at 2am"}});
    let (st, v) = s.post(&format!("{A}/v1/send_server_notice"), &ops, notice.clone()).await;
    assert_eq!(st, 400, "not configured: {v}");
    drop(s);

    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_SERVER_NOTICES__SYSTEM_MXID_LOCALPART", "notices"),
    ])
    .await;
    let ops = admin(&s, "ops").await;
    let bob = s.register("bob").await;
    // The system account's name is the server's before its first notice.
    let (st, v) = s
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "notices", "password": "password123", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_USER_IN_USE"), "{v}");
    let notice = json!({"user_id": bob.id, "content": {"msgtype": "m.text", "body": "maintenance at 2am"}});
    let (st, v) = s.post(&format!("{A}/v1/send_server_notice"), &bob, notice.clone()).await;
    assert_eq!(st, 403, "admins only: {v}");
    let (st, v) = s.post(&format!("{A}/v1/send_server_notice"), &ops, notice.clone()).await;
    assert_eq!(st, 200, "{v}");
    let first = v["event_id"].as_str().unwrap().to_owned();
    // The same transaction id twice is one notice.
    let path = format!("{A}/v1/send_server_notice/txn-1");
    let (_, a) = s.put(&path, &ops, notice.clone()).await;
    let (_, b) = s.put(&path, &ops, notice.clone()).await;
    assert_eq!(a["event_id"], b["event_id"], "{a} {b}");

    // Bob is invited to the notices room, tagged for him; after joining he reads the notice and
    // cannot answer.
    let sync = s.sync(&bob, None, 0).await;
    let invites = sync["rooms"]["invite"].as_object().unwrap();
    assert_eq!(invites.len(), 1, "{sync}");
    let room = invites.keys().next().unwrap().clone();
    let (_, tags) = s.get(&format!("/_matrix/client/v3/user/{}/rooms/{room}/tags", bob.id), &bob).await;
    assert!(tags["tags"].get("m.server_notice").is_some(), "{tags}");
    // The invite cannot be rejected (as in Synapse); the room can be left once joined.
    let (st, v) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &bob, json!({})).await;
    assert_eq!((st, errcode(&v)), (403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"), "{v}");
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let (_, msgs) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"), &bob).await;
    let bodies: Vec<&str> =
        msgs["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["maintenance at 2am", "maintenance at 2am"], "two notices, the retry not repeated");
    assert!(msgs["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == first.as_str()));
    assert!(msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["type"] != "m.room.message" || e["sender"] == "@notices:localhost"));
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/x"),
            &bob,
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!(st, 403, "users cannot write in their notices room");
    let (_, v) = s.get(&format!("/_matrix/client/v3/profile/{}", enc("@notices:localhost")), &bob).await;
    assert_eq!(v["displayname"], "Server Notices");

    // Having left, the next notice comes in a new room.
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &bob, json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = s.post(&format!("{A}/v1/send_server_notice"), &ops, notice.clone()).await;
    assert_eq!(st, 200);
    let sync = s.sync(&bob, None, 0).await;
    let invites: Vec<&String> = sync["rooms"]["invite"].as_object().unwrap().keys().collect();
    assert!(invites.len() == 1 && invites[0] != &room, "{sync}");
    let (st, _) = s
        .post(&format!("{A}/v1/send_server_notice"), &ops, json!({"user_id": "@nobody:localhost", "content": {}}))
        .await;
    assert_eq!(st, 404);
    let (st, v) = s.post(&format!("{A}/v1/send_server_notice"), &ops, json!({"content": {}})).await;
    assert_eq!((st, errcode(&v)), (400, "M_MISSING_PARAM"));
}

#[tokio::test]
async fn shadow_bans_rate_limit_overrides_and_logging_in_as_a_user() {
    // Rate limits on, with a low message rate, to see the overrides work.
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__MESSAGE__PER_SECOND", "0.1"),
        ("MOSS_RATE_LIMITS__MESSAGE__BURST", "2"),
    ])
    .await;
    let ops = admin(&s, "ops").await;
    let alice = s.register("alice").await;
    let troll = s.register("troll").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&troll, &room).await;

    // Shadow-banned: sends answer like sends, and nobody sees them.
    let (st, _) = s.post(&format!("{A}/v1/users/{}/shadow_ban", enc(&troll.id)), &ops, json!({})).await;
    assert_eq!(st, 200);
    let (st, v) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            &troll,
            json!({"msgtype": "m.text", "body": "spam"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["event_id"].as_str().unwrap().starts_with('$'));
    let (_, msgs) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), &alice).await;
    assert!(!msgs.to_string().contains("spam"), "{msgs}");
    let (_, v) = s.get(&format!("{A}/v2/users/{}", enc(&troll.id)), &ops).await;
    assert_eq!(v["shadow_banned"], true);
    let (st, _) =
        s.call("DELETE", &format!("{A}/v1/users/{}/shadow_ban", enc(&troll.id)), Some(&ops.token), None).await;
    assert_eq!(st, 200);
    s.send_text(&troll, &room, "visible").await;
    let (_, msgs) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), &alice).await;
    assert!(msgs.to_string().contains("visible"));

    // Rate limit override: 0/0 lifts the limit, a low one applies, deleting restores the default.
    let path = format!("{A}/v1/users/{}/override_ratelimit", enc(&alice.id));
    let (_, v) = s.get(&path, &ops).await;
    assert_eq!(v, json!({}));
    let (st, v) = s.post(&path, &ops, json!({"messages_per_second": 0, "burst_count": 0})).await;
    assert_eq!((st, v), (200, json!({"messages_per_second": 0, "burst_count": 0})));
    for i in 0..6 {
        s.send_text(&alice, &room, &format!("unlimited {i}")).await;
    }
    let (st, v) = s.post(&path, &ops, json!({"messages_per_second": -1})).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    s.post(&path, &ops, json!({"messages_per_second": 1, "burst_count": 1})).await;
    let body = json!({"msgtype": "m.text", "body": "x"});
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/rl1"), &alice, body.clone()).await;
    assert_eq!(st, 200);
    let (st, _) = s.put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/rl2"), &alice, body).await;
    assert_eq!(st, 429, "one message a second, no burst");
    let (st, _) = s.call("DELETE", &path, Some(&ops.token), None).await;
    assert_eq!(st, 200);
    assert_eq!(s.get(&path, &ops).await.1, json!({}));

    // Log in as: a token acting as the user, without a device of theirs.
    let (st, v) = s.post(&format!("{A}/v1/users/{}/login", enc(&alice.id)), &ops, json!({})).await;
    assert_eq!(st, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    let (_, who) = s.call("GET", "/_matrix/client/v3/account/whoami", Some(token), None).await;
    assert_eq!(who["user_id"], alice.id.as_str());
    let (_, devices) = s.get("/_matrix/client/v3/devices", &alice).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "no device added: {devices}");
    let (st, _) = s.post(&format!("{A}/v1/users/{}/login", enc(&ops.id)), &ops, json!({})).await;
    assert_eq!(st, 400, "not as oneself");
    let (st, _) = s.post(&format!("{A}/v1/users/{}/login", enc("@ghost:localhost")), &ops, json!({})).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn joins_messages_memberships_account_data_and_bulk_quarantine() {
    let s = Server::start().await;
    let ops = admin(&s, "ops").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    // Force-join: a public room directly; a private one through an invite from the admin in it.
    let public = s.create_room(&bob, json!({"preset": "public_chat", "name": "Open"})).await;
    let (st, v) = s.post(&format!("{A}/v1/join/{public}"), &ops, json!({"user_id": carol.id})).await;
    assert_eq!((st, v["room_id"].as_str()), (200, Some(public.as_str())), "{v}");
    let private = s.create_room(&ops, json!({"preset": "private_chat"})).await;
    let (st, v) = s.post(&format!("{A}/v1/join/{private}"), &ops, json!({"user_id": carol.id})).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.get("/_matrix/client/v3/joined_rooms", &carol).await;
    assert_eq!(v["joined_rooms"].as_array().unwrap().len(), 2);
    let (st, _) = s.post(&format!("{A}/v1/join/{public}"), &ops, json!({"user_id": "@x:elsewhere.example"})).await;
    assert_eq!(st, 400);

    // Messages: every event of the room, pageable.
    s.send_text(&bob, &public, "one").await;
    s.send_text(&bob, &public, "two").await;
    let (st, v) = s.get(&format!("{A}/v1/rooms/{public}/messages?dir=b&limit=2"), &ops).await;
    assert_eq!(st, 200, "{v}");
    let bodies: Vec<&str> =
        v["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["two", "one"]);
    let (_, older) = s
        .get(&format!("{A}/v1/rooms/{public}/messages?dir=b&limit=50&from={}", v["end"].as_str().unwrap()), &ops)
        .await;
    assert!(older["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{older}");

    let (_, v) = s.get(&format!("{A}/v1/users/{}/memberships", enc(&carol.id)), &ops).await;
    assert_eq!(v["memberships"][&public], "join", "{v}");
    s.put(&format!("/_matrix/client/v3/user/{}/account_data/org.example.pref", carol.id), &carol, json!({"x": 1}))
        .await;
    let (_, v) = s.get(&format!("{A}/v1/users/{}/accountdata", enc(&carol.id)), &ops).await;
    assert_eq!(v["account_data"]["global"]["org.example.pref"], json!({"x": 1}), "{v}");
    let (st, v) = s.get(&format!("{A}/v1/username_available?username=carol"), &ops).await;
    assert_eq!((st, errcode(&v)), (400, "M_USER_IN_USE"));
    let (st, v) = s.get(&format!("{A}/v1/username_available?username=dora"), &ops).await;
    assert_eq!((st, v), (200, json!({"available": true})));
    let (_, v) = s.get(&format!("{A}/v1/statistics/database/rooms"), &ops).await;
    assert!(
        v["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == public.as_str() && r["estimated_size"].as_i64() > Some(0)),
        "{v}"
    );

    // Quarantine what a room points at, and all of a user's uploads; delete a user's uploads.
    let upload =
        |body: &'static [u8]| s.call_raw("POST", "/_matrix/media/v3/upload", Some(&bob.token), Some(body.to_vec()));
    let (_, v) = upload(b"picture").await;
    let posted = v["content_uri"].as_str().unwrap().to_owned();
    let (_, v) = upload(b"other").await;
    let other = v["content_uri"].as_str().unwrap().to_owned();
    s.put(
        &format!("/_matrix/client/v3/rooms/{public}/send/m.room.message/img"),
        &bob,
        json!({"msgtype": "m.image", "body": "pic", "url": posted}),
    )
    .await;
    s.put(
        &format!("/_matrix/client/v3/rooms/{public}/send/m.room.message/remote-img"),
        &bob,
        json!({"msgtype": "m.image", "body": "theirs", "url": "mxc://elsewhere.example/abc",
               "info": {"thumbnail_url": "mxc://elsewhere.example/thumb"}}),
    )
    .await;
    let (st, v) = s.get(&format!("{A}/v1/room/{public}/media"), &ops).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["local"], json!([posted]), "{v}");
    let mut remote: Vec<&str> = v["remote"].as_array().unwrap().iter().filter_map(|m| m.as_str()).collect();
    remote.sort();
    assert_eq!(remote, ["mxc://elsewhere.example/abc", "mxc://elsewhere.example/thumb"], "{v}");
    let download = |mxc: &str| format!("/_matrix/client/v1/media/download/{}", mxc.trim_start_matches("mxc://"));
    let (st, v) = s.call("POST", &format!("{A}/v1/room/{public}/media/quarantine"), Some(&ops.token), None).await;
    assert_eq!((st, v["num_quarantined"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(s.call_raw("GET", &download(&posted), Some(&carol.token), None).await.0, 404);
    assert_eq!(s.call_raw("GET", &download(&other), Some(&carol.token), None).await.0, 200);
    let (_, v) =
        s.call("POST", &format!("{A}/v1/user/{}/media/quarantine", enc(&bob.id)), Some(&ops.token), None).await;
    assert_eq!(v["num_quarantined"], 2);
    assert_eq!(s.call_raw("GET", &download(&other), Some(&carol.token), None).await.0, 404);
    // A page in the order asked for: the largest one ("picture", 7 bytes) first.
    let path = format!("{A}/v1/users/{}/media?order_by=media_length&dir=b&limit=1", enc(&bob.id));
    let (st, v) = s.call("DELETE", &path, Some(&ops.token), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deleted_media"], json!([posted.rsplit('/').next().unwrap()]), "{v}");
    let (st, v) = s.call("DELETE", &format!("{A}/v1/users/{}/media", enc(&bob.id)), Some(&ops.token), None).await;
    assert_eq!((st, v["total"].as_u64()), (200, Some(1)), "{v}");
    let (_, v) = s.get(&format!("{A}/v1/users/{}/media", enc(&bob.id)), &ops).await;
    assert_eq!(v["total"], 0);
}

#[tokio::test]
async fn admin_bodies_are_read_within_a_budget() {
    // Admin endpoints take raw bodies (optional ones included): a huge or deeply nested body is
    // refused with a Matrix error, never read whole into memory or parsed without a limit.
    let s = Server::start().await;
    let ops = admin(&s, "ops").await;
    let path = format!("{A}/v2/users/{}", enc("@big:localhost"));
    let huge = format!("{{\"displayname\": \"{}\"}}", "x".repeat(1024 * 1024 + 1));
    let (st, v) = s.call_raw("PUT", &path, Some(&ops.token), Some(huge.into_bytes())).await;
    assert_eq!((st, errcode(&v)), (413, "M_TOO_LARGE"), "{v}");
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let (st, v) = s.call_raw("PUT", &path, Some(&ops.token), Some(deep.into_bytes())).await;
    assert_eq!((st, errcode(&v)), (400, "M_NOT_JSON"), "{v}");
    let (st, v) = s
        .call_raw(
            "POST",
            &format!("{A}/v1/deactivate/{}", enc(&ops.id)),
            Some(&ops.token),
            Some(b"{\"erase\":".to_vec()),
        )
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_NOT_JSON"), "{v}");
    let (st, _) = s.get(&format!("{A}/v2/users"), &ops).await;
    assert_eq!(st, 200, "the server is unharmed");
}
