//! End-to-end encryption support over HTTP: keys, cross-signing, to-device, device lists, backup.
//! Keys are real ed25519 keys and signatures are real, so verification is exercised for real.

use std::time::{Duration, Instant};

use ruma::{
    serde::{base64::Standard, Base64},
    signatures::{sign_json, Ed25519KeyPair},
    CanonicalJsonValue,
};
use serde_json::{json, Value};

use crate::common::{errcode, Server, User};

pub(crate) struct Key {
    pair: Ed25519KeyPair,
    public: String,
}

impl Key {
    /// A key whose signatures carry the id `ed25519:<name>`, or `ed25519:<public key>` if none.
    pub(crate) fn new(name: Option<&str>) -> Key {
        let doc = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&doc, "x".into()).unwrap();
        let public = Base64::<Standard, _>::new(probe.public_key().to_vec()).encode();
        let version = name.map(str::to_owned).unwrap_or_else(|| public.clone());
        Key { pair: Ed25519KeyPair::from_der(&doc, version).unwrap(), public }
    }

    fn sign(&self, signer: &str, obj: &Value) -> Value {
        let CanonicalJsonValue::Object(mut o) = CanonicalJsonValue::try_from(obj.clone()).unwrap() else { panic!() };
        sign_json(signer, &self.pair, &mut o).unwrap();
        serde_json::to_value(o).unwrap()
    }
}

pub(crate) fn device_keys(u: &User, key: &Key) -> Value {
    let obj = json!({
        "user_id": u.id, "device_id": u.device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("ed25519:{}", u.device): key.public, format!("curve25519:{}", u.device): "Y3VydmUyNTUxOWtleQ"},
    });
    key.sign(&u.id, &obj)
}

fn cross_signing_key(u: &User, usage: &str, key: &Key) -> Value {
    json!({"user_id": u.id, "usage": [usage], "keys": {format!("ed25519:{}", key.public): key.public}})
}

async fn upload(s: &Server, u: &User, body: Value) -> (u16, Value) {
    s.post("/_matrix/client/v3/keys/upload", u, body).await
}

async fn claim(s: &Server, u: &User, target: &User) -> Value {
    let (st, v) = s
        .post(
            "/_matrix/client/v3/keys/claim",
            u,
            json!({"one_time_keys": {&target.id: {&target.device: "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["one_time_keys"][&target.id][&target.device].clone()
}

async fn query(s: &Server, u: &User, target: &User) -> Value {
    let (st, v) = s.post("/_matrix/client/v3/keys/query", u, json!({"device_keys": {&target.id: []}})).await;
    assert_eq!(st, 200, "{v}");
    v
}

#[tokio::test]
async fn keys_upload_query_claim_and_fallback() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let key = Key::new(Some(&alice.device));

    let (st, v) = upload(
        &s,
        &alice,
        json!({
            "device_keys": device_keys(&alice, &key),
            "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "k1"}, "signed_curve25519:AAAAAg": {"key": "k2"}},
            "fallback_keys": {"signed_curve25519:AAAAAw": {"key": "fb", "fallback": true}},
        }),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["one_time_key_counts"]["signed_curve25519"], 2);

    // Bob sees Alice's device keys as uploaded, with the device's display name unsigned.
    let v = query(&s, &bob, &alice).await;
    let dk = &v["device_keys"][&alice.id][&alice.device];
    assert_eq!(dk["keys"][format!("ed25519:{}", alice.device)], key.public.as_str());
    assert!(dk["signatures"][&alice.id][format!("ed25519:{}", alice.device)].is_string());

    // Re-uploading a one-time key id with different content is refused; the same content is fine.
    let (st, v) = upload(&s, &alice, json!({"one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "other"}}})).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
    let (st, _) = upload(&s, &alice, json!({"one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "k1"}}})).await;
    assert_eq!(st, 200);

    // Device keys for someone else, or not signed by the device, are refused.
    let mut forged = device_keys(&alice, &key);
    forged["user_id"] = json!(bob.id);
    let (st, v) = upload(&s, &alice, json!({"device_keys": forged})).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
    let mut tampered = device_keys(&alice, &key);
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    let (st, v) = upload(&s, &alice, json!({"device_keys": tampered})).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");
    let (st, v) = upload(&s, &alice, json!({"one_time_keys": {"no-colon": "x"}})).await;
    assert_eq!((st, errcode(&v)), (400, "M_BAD_JSON"), "{v}");
    let (st, v) = upload(&s, &alice, json!({"one_time_keys": "not a map"})).await;
    assert_eq!((st, errcode(&v)), (400, "M_BAD_JSON"), "{v}");

    // Two claims take the two one-time keys; after that the fallback key is handed out, repeatedly.
    let mut got = vec![];
    for _ in 0..2 {
        let keys = claim(&s, &bob, &alice).await;
        let (id, k) = keys.as_object().unwrap().iter().next().unwrap();
        got.push((id.clone(), k["key"].as_str().unwrap().to_owned()));
    }
    got.sort();
    assert_eq!(
        got,
        [("signed_curve25519:AAAAAQ".into(), "k1".into()), ("signed_curve25519:AAAAAg".into(), "k2".into())]
    );
    for _ in 0..2 {
        assert_eq!(claim(&s, &bob, &alice).await["signed_curve25519:AAAAAw"]["key"], "fb");
    }

    // Alice's sync shows no keys left and the fallback key used.
    let v = s.sync(&alice, None, 0).await;
    assert_eq!(v["device_one_time_keys_count"]["signed_curve25519"], 0, "{v}");
    assert_eq!(v["device_unused_fallback_key_types"], json!([]));

    // Unknown devices and users give empty results, not errors.
    let (st, v) = s
        .post(
            "/_matrix/client/v3/keys/claim",
            &bob,
            json!({"one_time_keys": {&alice.id: {"NOSUCHDEVICE": "signed_curve25519"}, "@nobody:localhost": {"X": "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["one_time_keys"], json!({}));

    // A new fallback key is unused again.
    let (st, _) =
        upload(&s, &alice, json!({"fallback_keys": {"signed_curve25519:AAAABA": {"key": "fb2", "fallback": true}}}))
            .await;
    assert_eq!(st, 200);
    let v = s.sync(&alice, None, 0).await;
    assert_eq!(v["device_unused_fallback_key_types"], json!(["signed_curve25519"]));
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_the_same_key() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let otks: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("signed_curve25519:K{i:03}"), json!({"key": format!("key{i}")}))).collect();
    let (st, _) = upload(&s, &alice, json!({"one_time_keys": otks})).await;
    assert_eq!(st, 200);

    let claims = (0..40).map(|_| claim(&s, &bob, &alice));
    let results = futures_util::future::join_all(claims).await;
    let mut ids: Vec<String> =
        results.iter().flat_map(|k| k.as_object().into_iter().flat_map(|m| m.keys().cloned())).collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(total, 20, "every key is claimed exactly once and the other claims get nothing");
    assert_eq!(ids.len(), 20, "no key was handed out twice");
}

#[tokio::test]
async fn to_device_messages_are_delivered_until_acknowledged_and_survive_a_crash() {
    let mut s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let first = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let send = |txn: &'static str, to: Value| {
        let s = &s;
        let bob = &bob;
        async move { s.put(&format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"), bob, json!({"messages": to})).await }
    };
    // A long-poll wakes as soon as a message arrives.
    let started = Instant::now();
    let (v, (st, _)) = tokio::join!(s.sync(&alice, Some(&first), 10_000), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send("t1", json!({&alice.id: {&alice.device: {"n": 1}}})).await
    });
    assert_eq!(st, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "sync was not woken");
    let events = v["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(events[0], json!({"sender": bob.id, "type": "m.test", "content": {"n": 1}}));

    // The same transaction id again sends nothing new.
    assert_eq!(send("t1", json!({&alice.id: {&alice.device: {"n": 1}}})).await.0, 200);
    // Until Alice syncs past it, the message is delivered again (her response may have been lost).
    let again = s.sync(&alice, Some(&first), 0).await;
    assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 1, "{again}");
    let next = again["next_batch"].as_str().unwrap().to_owned();
    let after = s.sync(&alice, Some(&next), 0).await;
    assert_eq!(after["to_device"]["events"], json!([]), "{after}");
    let next = after["next_batch"].as_str().unwrap().to_owned();

    // A queued message survives kill -9; unknown users are dropped silently.
    assert_eq!(send("t2", json!({&alice.id: {"*": {"n": 2}}, "@nobody:localhost": {"X": {"n": 0}}})).await.0, 200);
    s.kill9();
    let s = s.restart().await;
    let v = s.sync(&alice, Some(&next), 0).await;
    assert_eq!(v["to_device"]["events"][0]["content"], json!({"n": 2}), "{v}");

    // More messages than one response carries arrive over several syncs, none lost.
    let msgs: serde_json::Map<String, Value> = [(alice.device.clone(), json!({"batch": true}))].into_iter().collect();
    for i in 0..130 {
        let (st, _) = s
            .put(
                &format!("/_matrix/client/v3/sendToDevice/m.test/many{i}"),
                &bob,
                json!({"messages": {&alice.id: msgs}}),
            )
            .await;
        assert_eq!(st, 200);
    }
    let mut since = v["next_batch"].as_str().unwrap().to_owned();
    let mut got = 0;
    for _ in 0..5 {
        let v = s.sync(&alice, Some(&since), 0).await;
        got += v["to_device"]["events"].as_array().unwrap().len();
        since = v["next_batch"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, 130);
}

#[tokio::test]
async fn device_list_changes_reach_room_members() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let t0 = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Bob uploads device keys: Alice's sync and keys/changes name him.
    let (st, _) = upload(&s, &bob, json!({"device_keys": device_keys(&bob, &Key::new(Some(&bob.device)))})).await;
    assert_eq!(st, 200);
    let v = s.sync(&alice, Some(&t0), 5_000).await;
    assert!(v["device_lists"]["changed"].as_array().unwrap().contains(&json!(bob.id)), "{v}");
    let t1 = v["next_batch"].as_str().unwrap().to_owned();
    let (st, v) = s.get(&format!("/_matrix/client/v3/keys/changes?from={t0}&to={t1}"), &alice).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["changed"], json!([bob.id]));

    // Carol, who shares no room, is not reported when her keys change; once she joins, she is.
    let (st, _) = upload(&s, &carol, json!({"device_keys": device_keys(&carol, &Key::new(Some(&carol.device)))})).await;
    assert_eq!(st, 200);
    let v = s.sync(&alice, Some(&t1), 0).await;
    assert!(!v["device_lists"]["changed"].as_array().unwrap().contains(&json!(carol.id)), "{v}");
    let t2 = v["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let v = s.sync(&alice, Some(&t2), 5_000).await;
    assert!(v["device_lists"]["changed"].as_array().unwrap().contains(&json!(carol.id)), "{v}");
    let t3 = v["next_batch"].as_str().unwrap().to_owned();

    // Bob leaves the only room he shared with Alice: he is in `left`.
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &bob, json!({})).await;
    assert_eq!(st, 200);
    let v = s.sync(&alice, Some(&t3), 5_000).await;
    assert_eq!(v["device_lists"]["left"], json!([bob.id]), "{v}");

    // A malformed token is a clear error.
    let (st, v) = s.get("/_matrix/client/v3/keys/changes?from=bogus&to=s1_0", &alice).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
}

#[tokio::test]
async fn cross_signing_and_signatures() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let device_key = Key::new(Some(&alice.device));
    assert_eq!(upload(&s, &alice, json!({"device_keys": device_keys(&alice, &device_key)})).await.0, 200);

    let (master, ssk, usk) = (Key::new(None), Key::new(None), Key::new(None));
    let master_json = cross_signing_key(&alice, "master", &master);
    let ssk_json = master.sign(&alice.id, &cross_signing_key(&alice, "self_signing", &ssk));
    let usk_json = master.sign(&alice.id, &cross_signing_key(&alice, "user_signing", &usk));
    let body = json!({"master_key": master_json, "self_signing_key": ssk_json, "user_signing_key": usk_json});

    // A self-signing key the master did not sign is refused.
    let unsigned =
        json!({"master_key": master_json, "self_signing_key": cross_signing_key(&alice, "self_signing", &ssk)});
    let (st, v) = s.post("/_matrix/client/v3/keys/device_signing/upload", &alice, unsigned).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_SIGNATURE"), "{v}");

    // The first upload needs no password, and repeating it neither; replacing keys does.
    let (st, v) = s.post("/_matrix/client/v3/keys/device_signing/upload", &alice, body.clone()).await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.post("/_matrix/client/v3/keys/device_signing/upload", &alice, body.clone()).await;
    assert_eq!(st, 200);
    let other_master = Key::new(None);
    let replace = json!({"master_key": cross_signing_key(&alice, "master", &other_master)});
    let (st, v) = s.post("/_matrix/client/v3/keys/device_signing/upload", &alice, replace.clone()).await;
    assert_eq!(st, 401, "{v}");
    assert!(v["flows"].is_array() && v["session"].is_string(), "{v}");

    // Bob sees Alice's master and self-signing keys but not her user-signing key.
    let v = query(&s, &bob, &alice).await;
    assert_eq!(v["master_keys"][&alice.id]["keys"][format!("ed25519:{}", master.public)], master.public.as_str());
    assert!(v["self_signing_keys"][&alice.id].is_object());
    assert!(v["user_signing_keys"].get(&alice.id).is_none(), "{v}");
    assert!(query(&s, &alice, &alice).await["user_signing_keys"][&alice.id].is_object());

    // Alice signs her device with her self-signing key; a bad signature is reported, not stored.
    let dk = device_keys(&alice, &device_key);
    let mut unsigned_dk = dk.clone();
    unsigned_dk.as_object_mut().unwrap().remove("signatures");
    let signed_dk = ssk.sign(&alice.id, &unsigned_dk);
    let forged_dk = Key::new(Some(&ssk.public)).sign(&alice.id, &unsigned_dk);
    let (st, v) = s
        .post("/_matrix/client/v3/keys/signatures/upload", &alice, json!({&alice.id: {&alice.device: forged_dk}}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["failures"][&alice.id][&alice.device]["errcode"], "M_INVALID_SIGNATURE", "{v}");
    let ssk_id = format!("ed25519:{}", ssk.public);
    assert!(query(&s, &bob, &alice).await["device_keys"][&alice.id][&alice.device]["signatures"][&alice.id][&ssk_id]
        .is_null());
    let (st, v) = s
        .post("/_matrix/client/v3/keys/signatures/upload", &alice, json!({&alice.id: {&alice.device: signed_dk}}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["failures"].as_object().is_none_or(|f| f.is_empty()), "{v}");
    let v = query(&s, &bob, &alice).await;
    assert!(v["device_keys"][&alice.id][&alice.device]["signatures"][&alice.id][&ssk_id].is_string(), "{v}");

    // Alice signs Bob's master key with her user-signing key: only Alice sees that signature.
    let bob_master = Key::new(None);
    let (st, _) = s
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            &bob,
            json!({"master_key": cross_signing_key(&bob, "master", &bob_master)}),
        )
        .await;
    assert_eq!(st, 200);
    let signed_master = usk.sign(&alice.id, &cross_signing_key(&bob, "master", &bob_master));
    let (st, v) = s
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            &alice,
            json!({&bob.id: {&bob_master.public: signed_master}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["failures"].as_object().is_none_or(|f| f.is_empty()), "{v}");
    let usk_id = format!("ed25519:{}", usk.public);
    assert!(query(&s, &alice, &bob).await["master_keys"][&bob.id]["signatures"][&alice.id][&usk_id].is_string());
    assert!(query(&s, &bob, &bob).await["master_keys"][&bob.id]["signatures"].get(&alice.id).is_none());

    // With the password, Alice may replace her master key.
    let mut with_auth = replace;
    with_auth["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.id}, "password": "password123"});
    let (st, v) = s.post("/_matrix/client/v3/keys/device_signing/upload", &alice, with_auth).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn key_backup_versions_and_the_better_session_rule() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = "!room:localhost";
    let algorithm = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}});

    let (st, v) = s.get("/_matrix/client/v3/room_keys/version", &alice).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));
    let (st, v) = s.post("/_matrix/client/v3/room_keys/version", &alice, algorithm.clone()).await;
    assert_eq!(st, 200, "{v}");
    let version = v["version"].as_str().unwrap().to_owned();
    let (st, v) = s.get("/_matrix/client/v3/room_keys/version", &alice).await;
    assert_eq!(st, 200);
    assert_eq!(
        (v["version"].as_str(), v["count"].as_u64(), v["auth_data"]["public_key"].as_str()),
        (Some(version.as_str()), Some(0), Some("abc"))
    );

    let session = |fmi: u64, fc: u64, verified: bool| {
        json!({"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
               "session_data": {"ephemeral": "e", "ciphertext": format!("c{fmi}"), "mac": "m"}})
    };
    let put = |data: Value| {
        let (s, alice, version) = (&s, &alice, version.clone());
        async move { s.put(&format!("/_matrix/client/v3/room_keys/keys/{room}/sess1?version={version}"), alice, data).await }
    };
    let get_fmi = || async {
        let (st, v) = s.get(&format!("/_matrix/client/v3/room_keys/keys/{room}/sess1?version={version}"), &alice).await;
        assert_eq!(st, 200, "{v}");
        v["first_message_index"].as_u64().unwrap()
    };
    let (st, v) = put(session(5, 0, false)).await;
    assert_eq!((st, v["count"].as_u64()), (200, Some(1)), "{v}");
    let etag1 = v["etag"].clone();
    let (_, v) = put(session(10, 0, false)).await; // worse: kept out
    assert_eq!(v["etag"], etag1);
    assert_eq!(get_fmi().await, 5);
    let (_, v) = put(session(2, 0, false)).await; // lower index wins
    assert_ne!(v["etag"], etag1);
    assert_eq!(get_fmi().await, 2);
    put(session(100, 0, true)).await; // verified beats unverified
    assert_eq!(get_fmi().await, 100);
    put(session(1, 0, false)).await;
    assert_eq!(get_fmi().await, 100);

    let (st, v) = s.get(&format!("/_matrix/client/v3/room_keys/keys?version={version}"), &alice).await;
    assert_eq!(st, 200);
    assert_eq!(v["rooms"][room]["sessions"]["sess1"]["session_data"]["ciphertext"], "c100");
    let (_, v) = s.get(&format!("/_matrix/client/v3/room_keys/keys/{room}?version={version}"), &alice).await;
    assert!(v["sessions"]["sess1"].is_object());

    // Writing to a version that is not the current one is refused with the current version.
    let (st, v) =
        s.put(&format!("/_matrix/client/v3/room_keys/keys/{room}/s2?version=999"), &alice, session(0, 0, false)).await;
    assert_eq!((st, errcode(&v)), (403, "M_WRONG_ROOM_KEYS_VERSION"), "{v}");
    assert_eq!(v["current_version"], version.as_str());
    // Bad session data is a clear error.
    let (st, v) =
        put(json!({"first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {}})).await;
    assert_eq!(st, 400, "{v}");
    // The algorithm of a version cannot change.
    let other = json!({"algorithm": "other", "auth_data": {}});
    let (st, v) = s.put(&format!("/_matrix/client/v3/room_keys/version/{version}"), &alice, other).await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");

    let (st, v) = s
        .call(
            "DELETE",
            &format!("/_matrix/client/v3/room_keys/keys/{room}/sess1?version={version}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!((st, v["count"].as_u64()), (200, Some(0)), "{v}");
    let (st, _) =
        s.call("DELETE", &format!("/_matrix/client/v3/room_keys/version/{version}"), Some(&alice.token), None).await;
    assert_eq!(st, 200);
    let (st, _) = s.get("/_matrix/client/v3/room_keys/version", &alice).await;
    assert_eq!(st, 404);
    let (_, v) = s.post("/_matrix/client/v3/room_keys/version", &alice, algorithm).await;
    assert_ne!(v["version"].as_str().unwrap(), version, "a deleted version number is not reused");
}

#[tokio::test]
async fn dehydrated_device_collects_messages_while_clients_are_offline() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    const PATH: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";
    let (st, v) = s.get(PATH, &alice).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"));

    let parked = User { id: alice.id.clone(), token: String::new(), device: "DEHYDRATED1".into() };
    let key = Key::new(Some("DEHYDRATED1"));
    let body = json!({
        "device_id": "DEHYDRATED1",
        "initial_device_display_name": "Dehydrated device",
        "device_data": {"algorithm": "org.matrix.msc3814.v2", "device_pickle": "opaque", "nonce": "n"},
        "device_keys": device_keys(&parked, &key),
        "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "k1"}},
    });
    let (st, v) = s.put(PATH, &alice, body).await;
    assert_eq!((st, v["device_id"].as_str()), (200, Some("DEHYDRATED1")), "{v}");
    let (st, v) = s.get(PATH, &alice).await;
    assert_eq!(st, 200);
    assert_eq!(v["device_data"]["device_pickle"], "opaque");
    // Others see the device and can claim its keys and message it.
    assert!(query(&s, &bob, &alice).await["device_keys"][&alice.id]["DEHYDRATED1"].is_object());
    assert_eq!(claim(&s, &bob, &parked).await["signed_curve25519:AAAAAQ"]["key"], "k1");
    let (st, _) = s
        .put(
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/d1",
            &bob,
            json!({"messages": {&alice.id: {"*": {"ciphertext": "x"}}}}),
        )
        .await;
    assert_eq!(st, 200);

    // A new client drains the messages; the token acknowledges them.
    let events = format!("{PATH}/DEHYDRATED1/events");
    let (st, v) = s.post(&events, &alice, json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["content"]["ciphertext"], "x");
    let next = v["next_batch"].as_str().unwrap().to_owned();
    let (_, v) = s.post(&events, &alice, json!({"next_batch": next})).await;
    assert_eq!(v["events"], json!([]), "{v}");
    let (st, _) = s.post(&format!("{PATH}/{}/events", alice.device), &alice, json!({})).await;
    assert_eq!(st, 403, "only the dehydrated device's queue can be read this way");
    let (st, _) = s.post(&events, &bob, json!({})).await;
    assert_eq!(st, 403);

    // Bad device data or keys for another device are refused; a real device id cannot be taken.
    let (st, _) = s
        .put(PATH, &alice, json!({"device_id": "D2", "device_data": {}, "device_keys": device_keys(&parked, &key)}))
        .await;
    assert_eq!(st, 400);
    let mine = User { id: alice.id.clone(), token: String::new(), device: alice.device.clone() };
    let (st, v) = s
        .put(PATH, &alice, json!({"device_id": alice.device, "device_data": {}, "device_keys": device_keys(&mine, &Key::new(Some(&alice.device)))}))
        .await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"), "{v}");

    // Deleting it removes the device.
    let (st, v) = s.call("DELETE", PATH, Some(&alice.token), None).await;
    assert_eq!((st, v["device_id"].as_str()), (200, Some("DEHYDRATED1")));
    assert!(query(&s, &bob, &alice).await["device_keys"][&alice.id].get("DEHYDRATED1").is_none());
    assert_eq!(s.get(PATH, &alice).await.0, 404);
}
