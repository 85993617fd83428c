//! Federation between two moss servers on loopback, over TLS with self-signed certificates and
//! explicit-port server names: keys, signed requests, profile queries; forged requests refused.

use std::{path::Path, process::Command};

use ruma::{
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    signatures::Ed25519KeyPair,
    OwnedServerName,
};
use serde_json::{json, Value};

use crate::common::{enc, errcode, free_port, Server};

/// A self-signed certificate for `localhost` (the openssl CLI; scripts/test installs it).
pub(crate) fn self_signed(dir: &Path) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("fed.key"))
        .arg("-out")
        .arg(dir.join("fed.crt"))
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) struct FedServer {
    pub server: Server,
    pub name: OwnedServerName,
    pub fed_port: u16,
}

pub(crate) async fn fed_server() -> FedServer {
    fed_server_with(&[]).await
}

pub(crate) async fn fed_server_with(extra: &[(&str, &str)]) -> FedServer {
    let fed_port = free_port();
    fed_server_named(&format!("localhost:{fed_port}"), fed_port, extra).await
}

/// A federating server with its own server name, listening on `fed_port`.
pub(crate) async fn fed_server_named(name: &str, fed_port: u16, extra: &[(&str, &str)]) -> FedServer {
    let dir = std::env::temp_dir().join(format!("moss-fed-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    self_signed(&dir);
    let name = name.to_owned();
    let (cert, key) = (dir.join("fed.crt").display().to_string(), dir.join("fed.key").display().to_string());
    let bind = format!("127.0.0.1:{fed_port}");
    let server = Server::start_in(
        dir.clone(),
        &[
            ("MOSS_REGISTRATION", "open"),
            ("MOSS_RATE_LIMITS__ENABLED", "false"),
            ("MOSS_SERVER_NAME", &name),
            ("MOSS_FEDERATION__ENABLED", "true"),
            ("MOSS_FEDERATION__BIND", &bind),
            ("MOSS_FEDERATION__TLS_CERTIFICATE", &cert),
            ("MOSS_FEDERATION__TLS_PRIVATE_KEY", &key),
            ("MOSS_FEDERATION__VERIFY_CERTIFICATES", "false"),
            ("MOSS_FEDERATION__IP_RANGE_ALLOWLIST", "[\"127.0.0.1/32\", \"::1/128\"]"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    )
    .await;
    FedServer { server, name: name.try_into().unwrap(), fed_port }
}

pub(crate) fn tls_client() -> reqwest_tls::Client {
    reqwest_tls::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
}

async fn json_of(res: reqwest_tls::Response) -> Value {
    serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn two_servers_exchange_keys_and_answer_signed_queries() {
    let a = fed_server().await;
    let b = fed_server().await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let (st, _) = b
        .server
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", bob.id),
            &bob,
            json!({"displayname": "Bob the Builder"}),
        )
        .await;
    assert_eq!(st, 200);

    // B's key document over TLS is self-signed and names B.
    let doc = json_of(
        tls_client().get(format!("https://127.0.0.1:{}/_matrix/key/v2/server", b.fed_port)).send().await.unwrap(),
    )
    .await;
    assert_eq!(doc["server_name"], b.name.as_str());
    assert!(doc["valid_until_ts"].as_u64().unwrap() > 0);
    let key_id = doc["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    assert!(doc["signatures"][b.name.as_str()][&key_id].is_string(), "{doc}");

    // Alice on A asks for Bob's profile: A signs a request to B, B fetches A's key and verifies.
    let (st, v) = a.server.get(&format!("/_matrix/client/v3/profile/{}", bob.id), &alice).await;
    assert_eq!(st, 200, "{v}\n--- A ---\n{}\n--- B ---\n{}", a.server.log(), b.server.log());
    assert_eq!(v["displayname"], "Bob the Builder");
    let (st, v) = a.server.get(&format!("/_matrix/client/v3/profile/{}/displayname", bob.id), &alice).await;
    assert_eq!((st, v["displayname"].as_str()), (200, Some("Bob the Builder")));
    // And the other way round.
    let (st, _) = b.server.get(&format!("/_matrix/client/v3/profile/{}", alice.id), &bob).await;
    assert_eq!(st, 200);
    let (st, v) = a.server.get(&format!("/_matrix/client/v3/profile/@nobody:{}", b.name), &alice).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"), "{v}");

    // Requests B cannot trust are refused with 401: unsigned, signed by a key that is not A's,
    // or addressed to someone else.
    let url = format!(
        "https://127.0.0.1:{}/_matrix/federation/v1/query/profile?user_id={}",
        b.fed_port,
        bob.id.replace('@', "%40").replace(':', "%3A")
    );
    let res = tls_client().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let body = json_of(res).await;
    assert_eq!(errcode(&body), "M_UNAUTHORIZED");

    let forge = |destination: &OwnedServerName| {
        let doc = Ed25519KeyPair::generate();
        let fake = Ed25519KeyPair::from_der(&doc, key_id.trim_start_matches("ed25519:").to_owned()).unwrap();
        let path = url.split_once(&format!(":{}", b.fed_port)).unwrap().1.to_owned();
        let req = http::Request::builder().method("GET").uri(&path).body(Vec::<u8>::new()).unwrap();
        XMatrix::sign_http_request(&req, XMatrixSigningInput::new(a.name.clone(), destination.clone(), &fake))
            .unwrap()
            .to_string()
    };
    for (header, why) in [(forge(&b.name), "a key that is not A's"), (forge(&a.name), "addressed to A, not B")] {
        let res = tls_client().get(&url).header("authorization", header).send().await.unwrap();
        assert_eq!(res.status(), 401, "{why}");
    }
    // B vouches for A's keys as a notary: A's own signature plus B's.
    let v = json_of(
        tls_client()
            .get(format!("https://127.0.0.1:{}/_matrix/key/v2/query/{}", b.fed_port, a.name))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let doc = &v["server_keys"][0];
    assert_eq!(doc["server_name"], a.name.as_str(), "{v}");
    assert!(doc["signatures"][a.name.as_str()].is_object() && doc["signatures"][b.name.as_str()].is_object(), "{doc}");
    let v = json_of(
        tls_client()
            .post(format!("https://127.0.0.1:{}/_matrix/key/v2/query", b.fed_port))
            .header("content-type", "application/json")
            .body(json!({"server_keys": {a.name.as_str(): {}, b.name.as_str(): {}, "localhost:1": {}}}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mut names: Vec<&str> =
        v["server_keys"].as_array().unwrap().iter().map(|d| d["server_name"].as_str().unwrap()).collect();
    names.sort();
    let mut want = [a.name.as_str(), b.name.as_str()];
    want.sort();
    assert_eq!(names, want, "unreachable servers are left out: {v}");

    // The client listener's .well-known points other servers at the federation listener.
    let (_, wk) = b.server.call("GET", "/.well-known/matrix/server", None, None).await;
    assert_eq!(wk["m.server"], format!("localhost:{}", b.fed_port));

    // The federation version endpoint answers without authentication.
    let v = json_of(
        tls_client()
            .get(format!("https://127.0.0.1:{}/_matrix/federation/v1/version", b.fed_port))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["server"]["name"], "moss");
}

#[tokio::test]
async fn federation_refuses_private_addresses_unless_allowed_and_is_off_by_default() {
    // Default policy: loopback is denied, so asking about a user on a loopback server fails
    // cleanly instead of reaching into the local network.
    let b = fed_server().await;
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_FEDERATION__ENABLED", "true"),
        ("MOSS_FEDERATION__BIND", &format!("127.0.0.1:{}", free_port())),
        ("MOSS_FEDERATION__VERIFY_CERTIFICATES", "false"),
    ])
    .await;
    let u = s.register("probe").await;
    let (st, v) = s.get(&format!("/_matrix/client/v3/profile/@bob:{}", b.name), &u).await;
    assert_eq!(st, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("may not reach"), "{v}");
    drop(s);

    // With federation off, remote profiles are simply not found.
    let s = Server::start().await;
    let u = s.register("probe").await;
    let (st, v) = s.get(&format!("/_matrix/client/v3/profile/@bob:{}", b.name), &u).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"), "{v}");
}

#[tokio::test]
async fn remote_media_is_fetched_once_over_federation_and_kept() {
    let a = fed_server().await;
    let mut b = fed_server().await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let res = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload?filename=song.ogg", b.server.base))
        .bearer_auth(&bob.token)
        .header("content-type", "audio/ogg")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let mxc = res.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let path = mxc.trim_start_matches("mxc://").to_owned();
    assert!(path.starts_with(b.name.as_str()));

    // Alice downloads through her server, several requests at once: one fetch from B.
    let url = format!("{}/_matrix/client/v1/media/download/{path}", a.server.base);
    let get = || reqwest::Client::new().get(&url).bearer_auth(&alice.token).send();
    let results = futures_util::future::join_all((0..5).map(|_| get())).await;
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "audio/ogg");
        assert!(r.headers()["content-disposition"].to_str().unwrap().contains("song.ogg"));
        assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    }
    let fetches = b.server.log().matches("serving media over federation").count();
    assert_eq!(fetches, 1, "B served the media {fetches} times; concurrent requests must share one fetch");

    // Once kept, A serves it (and thumbnails of remote images) with B gone.
    let png = {
        let mut buf = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]))
            .write_to(&mut buf, image::ImageFormat::Png)
            .unwrap();
        buf.into_inner()
    };
    let res = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", b.server.base))
        .bearer_auth(&bob.token)
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    let png_path =
        res.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let thumb = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v1/media/thumbnail/{png_path}?width=32&height=32&method=crop", a.server.base))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/png");

    // Unknown media on B is a 404 through A; B's federation media endpoint wants a signature.
    let (st, _) = a.server.get(&format!("/_matrix/client/v1/media/download/{}/NoSuchMedia", b.name), &alice).await;
    assert_eq!(st, 404);
    let media_id = path.split('/').nth(1).unwrap();
    let raw = tls_client()
        .get(format!("https://127.0.0.1:{}/_matrix/federation/v1/media/download/{media_id}", b.fed_port))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);

    b.server.kill9();
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200, "kept in A's store");
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);

    // An admin purges the kept copies (Synapse's purge_media_cache): with B gone, they are gone.
    let ops = crate::admin::admin(&a.server, "ops").await;
    let purge = "/_synapse/admin/v1/purge_media_cache";
    let (st, _) = a.server.call("POST", &format!("{purge}?before_ts=1000"), Some(&ops.token), None).await;
    assert_eq!(st, 400, "seconds, not milliseconds");
    let (st, v) = a.server.call("POST", &format!("{purge}?before_ts=4000000000000"), Some(&ops.token), None).await;
    assert_eq!((st, v["deleted"].as_u64()), (200, Some(2)), "{v}");
    let r = get().await.unwrap();
    assert_ne!(r.status(), 200, "no longer kept, and B cannot be asked");
}

#[tokio::test]
async fn device_and_one_time_keys_cross_servers() {
    let a = fed_server().await;
    let b = fed_server().await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let keys = json!({
        "user_id": bob.id, "device_id": bob.device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {format!("curve25519:{}", bob.device): "Y3VydmU", format!("ed25519:{}", bob.device): "placeholder"},
    });
    // moss checks that device keys are self-signed: sign them as the device would.
    let doc = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&doc, bob.device.clone()).unwrap();
    let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode();
    let mut keys = keys;
    keys["keys"][format!("ed25519:{}", bob.device)] = json!(public);
    let ruma::CanonicalJsonValue::Object(mut obj) = ruma::CanonicalJsonValue::try_from(keys).unwrap() else { panic!() };
    ruma::signatures::sign_json(&bob.id, &pair, &mut obj).unwrap();
    let (st, v) = b
        .server
        .post(
            "/_matrix/client/v3/keys/upload",
            &bob,
            json!({"device_keys": obj, "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "otk1"}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // Alice asks her own server, which asks Bob's.
    let (st, v) = a.server.post("/_matrix/client/v3/keys/query", &alice, json!({"device_keys": {&bob.id: []}})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["device_keys"][&bob.id][&bob.device]["keys"][format!("ed25519:{}", bob.device)],
        public.as_str(),
        "{v}"
    );
    assert_eq!(v["failures"], json!({}));
    let (st, v) = a
        .server
        .post(
            "/_matrix/client/v3/keys/claim",
            &alice,
            json!({"one_time_keys": {&bob.id: {&bob.device: "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["one_time_keys"][&bob.id][&bob.device]["signed_curve25519:AAAAAQ"]["key"], "otk1", "{v}");
    // The key is gone on B now.
    let sync = b.server.sync(&bob, None, 0).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);

    // A server that does not answer is a failure entry, not an error.
    let (st, v) = a
        .server
        .post("/_matrix/client/v3/keys/query", &alice, json!({"device_keys": {"@ghost:localhost:1": []}}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["failures"]["localhost:1"].is_object(), "{v}");

    // B's federation key endpoints want signed requests.
    for path in [format!("/_matrix/federation/v1/user/devices/{}", bob.id)] {
        let res = tls_client().get(format!("https://127.0.0.1:{}{path}", b.fed_port)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn aliases_and_public_rooms_of_other_servers() {
    let a = fed_server().await;
    let b = fed_server().await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = b
        .server
        .create_room(
            &bob,
            json!({"preset": "public_chat", "name": "Gardening", "room_alias_name": "garden", "visibility": "public"}),
        )
        .await;
    let alias = format!("#garden:{}", b.name);

    let (st, v) =
        a.server.get(&format!("/_matrix/client/v3/directory/room/{}", alias.replace('#', "%23")), &alice).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["room_id"], room.as_str());
    assert_eq!(v["servers"], json!([b.name]));
    let (st, v) = a.server.get(&format!("/_matrix/client/v3/directory/room/%23nope:{}", b.name), &alice).await;
    assert_eq!((st, errcode(&v)), (404, "M_NOT_FOUND"), "{v}");

    let (st, v) = a.server.get(&format!("/_matrix/client/v3/publicRooms?server={}", b.name), &alice).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["chunk"][0]["room_id"], room.as_str(), "{v}");
    assert_eq!(v["chunk"][0]["name"], "Gardening");
    let (st, v) = a
        .server
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", b.name),
            &alice,
            json!({"filter": {"generic_search_term": "garden"}}),
        )
        .await;
    assert_eq!((st, v["chunk"].as_array().map(|c| c.len())), (200, Some(1)), "{v}");
    let (_, v) = a
        .server
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", b.name),
            &alice,
            json!({"filter": {"generic_search_term": "knitting"}}),
        )
        .await;
    assert_eq!(v["chunk"], json!([]));
}

#[tokio::test]
async fn inbound_federation_is_rate_limited_per_origin() {
    let a = fed_server().await;
    let b = fed_server_with(&[
        ("MOSS_RATE_LIMITS__ENABLED", "true"),
        ("MOSS_RATE_LIMITS__REGISTER", "{ per_second = 100, burst = 100 }"),
        ("MOSS_RATE_LIMITS__FEDERATION", "{ per_second = 0.01, burst = 2 }"),
    ])
    .await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(a.server.get(&format!("/_matrix/client/v3/profile/{}", bob.id), &alice).await);
    }
    assert_eq!(statuses[0].0, 200);
    assert_eq!(statuses[1].0, 200);
    assert_ne!(statuses[2].0, 200, "the third request within the burst is refused");
    assert!(statuses[2].1["error"].as_str().unwrap_or_default().contains("429"), "{:?}", statuses[2]);
}

#[tokio::test]
async fn openid_tokens_name_their_user_to_any_service_that_asks() {
    // A widget or Element Call's authoriser: it gets a token from the user's client and asks
    // the user's server, on its federation listener and without server signatures, whose it is.
    let a = fed_server().await;
    let alice = a.server.register("alice").await;
    let bob = a.server.register("bob").await;
    let path = |u: &str| format!("/_matrix/client/v3/user/{}/openid/request_token", enc(u));
    let (st, v) = a.server.post(&path(&alice.id), &alice, json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["token_type"].as_str(), v["matrix_server_name"].as_str()), (Some("Bearer"), Some(a.name.as_str())));
    assert_eq!(v["expires_in"], 3600);
    let token = v["access_token"].as_str().unwrap().to_owned();
    let (st, v) = a.server.post(&path(&alice.id), &bob, json!({})).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "only for oneself: {v}");

    let userinfo = |t: &str| {
        let url = format!("https://127.0.0.1:{}/_matrix/federation/v1/openid/userinfo?access_token={t}", a.fed_port);
        async move {
            let res = tls_client().get(url).send().await.unwrap();
            (res.status().as_u16(), json_of(res).await)
        }
    };
    let (st, v) = userinfo(&token).await;
    assert_eq!((st, v["sub"].as_str()), (200, Some(alice.id.as_str())), "{v}");
    let (st, v) = userinfo("not-a-token").await;
    assert_eq!((st, errcode(&v)), (401, "M_UNKNOWN_TOKEN"), "{v}");
    let res = tls_client()
        .get(format!("https://127.0.0.1:{}/_matrix/federation/v1/openid/userinfo", a.fed_port))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "the token is required");

    // The token proves an identity and opens nothing: it is not an access token.
    let (st, _) = a.server.call("GET", "/_matrix/client/v3/account/whoami", Some(&token), None).await;
    assert_eq!(st, 401);

    // A deactivated user's tokens stop answering.
    let (st, v) = a
        .server
        .post(
            "/_matrix/client/v3/account/deactivate",
            &alice,
            json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.id}, "password": "password123"}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = userinfo(&token).await;
    assert_eq!((st, errcode(&v)), (401, "M_UNKNOWN_TOKEN"), "{v}");
}

#[tokio::test]
async fn sighup_swaps_in_a_renewed_certificate_and_keeps_a_broken_one_out() {
    let a = fed_server().await;
    let fingerprint = || {
        let cmd = format!(
            "openssl s_client -connect 127.0.0.1:{} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256",
            a.fed_port
        );
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let first = fingerprint();
    assert!(first.contains("Fingerprint="), "{first}");
    // certbot renews the files in place; nothing changes until moss is told.
    self_signed(&a.server.dir);
    assert_eq!(fingerprint(), first, "the old certificate until SIGHUP");
    a.server.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut second = fingerprint();
    while second == first && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        second = fingerprint();
    }
    assert!(second != first && second.contains("Fingerprint="), "renewed: {second}");
    // A broken file (a half-written renewal): logged, and the working certificate stays.
    std::fs::write(a.server.dir.join("fed.crt"), "not a certificate").unwrap();
    a.server.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(fingerprint(), second);
    assert!(a.server.log().contains("did not load; keeping the old one"), "{}", a.server.log());
    let (st, _) = a.server.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(st, 200, "still serving");
}
