//! Federation between two moss servers on loopback, over TLS with self-signed certificates and
//! explicit-port server names: keys, signed requests, profile queries; forged requests refused.

use std::{path::Path, process::Command};

use ruma::{
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    signatures::Ed25519KeyPair,
    OwnedServerName,
};
use serde_json::{json, Value};

use crate::common::{errcode, free_port, Server};

/// A self-signed certificate for `localhost` (the openssl CLI; scripts/test installs it).
fn self_signed(dir: &Path) {
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

struct FedServer {
    server: Server,
    name: OwnedServerName,
    fed_port: u16,
}

async fn fed_server() -> FedServer {
    let dir = std::env::temp_dir().join(format!("moss-fed-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    self_signed(&dir);
    let fed_port = free_port();
    let name = format!("localhost:{fed_port}");
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
        ],
    )
    .await;
    FedServer { server, name: name.try_into().unwrap(), fed_port }
}

fn tls_client() -> reqwest_tls::Client {
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
