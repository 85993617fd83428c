//! Importing a media store made by a real Synapse (from PyPI, installed by scripts/test).

use sha2::Digest;

use crate::{
    common::{moss_bin, Server},
    media::download,
};

fn synapse_python() -> Option<String> {
    match std::env::var("MOSS_TEST_SYNAPSE_PYTHON").ok().filter(|p| !p.is_empty()) {
        Some(p) => Some(p),
        None => {
            assert!(
                std::env::var("MOSS_REQUIRE_SYNAPSE").is_err(),
                "MOSS_REQUIRE_SYNAPSE is set but MOSS_TEST_SYNAPSE_PYTHON is not"
            );
            eprintln!("skipping: no Synapse (run scripts/test, which installs it)");
            None
        }
    }
}

/// Whether a PostgreSQL for tests is running (scripts/test starts one: scripts/postgres-start.sh).
fn postgres_available() -> bool {
    if std::env::var("MOSS_TEST_PG_PORT").is_ok_and(|p| !p.is_empty()) {
        return true;
    }
    assert!(std::env::var("MOSS_REQUIRE_PG").is_err(), "MOSS_REQUIRE_PG is set but MOSS_TEST_PG_* are not");
    eprintln!("skipping: no PostgreSQL (run scripts/test, which starts one)");
    false
}

#[tokio::test]
async fn a_synapse_media_store_imports_with_every_uri_intact() {
    import_round_trip(false).await;
}

#[tokio::test]
async fn a_synapse_on_postgresql_imports_too() {
    if postgres_available() {
        import_round_trip(true).await;
    }
}

async fn import_round_trip(postgres: bool) {
    let Some(python) = synapse_python() else { return };
    let work = std::env::temp_dir().join(format!("moss-synapse-{}-{postgres}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let fixture_script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/synapse_media.py");
    let out = std::process::Command::new(&python)
        .arg(&fixture_script)
        .arg(work.join("synapse"))
        .env("SYNAPSE_FIXTURE_PG", if postgres { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(out.status.success(), "making the Synapse fixture failed: {}", String::from_utf8_lossy(&out.stderr));
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("synapse/fixture.json")).unwrap()).unwrap();

    // Server::start_in keeps its data in DIR/data. moss takes over Synapse's server name (which
    // has a port: the fixture federates two Synapses on loopback to fill the remote cache).
    let data_dir = work.join("data");
    // On PostgreSQL the server's database is made now, so that the import writes into it.
    let _ = crate::common::postgres_database_for(&work);
    let server_name = fixture["server_name"].as_str().unwrap().to_owned();
    let import = || {
        let out = std::process::Command::new(moss_bin())
            .args(["media", "import-synapse", "--media-store"])
            .arg(work.join("synapse/media_store"))
            .arg("--database")
            .arg(fixture["database"].as_str().unwrap())
            .env("MOSS_DATA_DIR", &data_dir)
            .envs(crate::common::database_env(&data_dir))
            .env("MOSS_SERVER_NAME", &server_name)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = import();
    assert!(first.contains("5 Synapse media: 5 imported (2 of them other servers' media"), "{first}");
    let again = import();
    assert!(
        again.contains("0 imported (0 of them other servers' media from the remote cache), 5 already here"),
        "running it again is harmless: {again}"
    );

    let s = Server::start_in(
        work.clone(),
        &[("MOSS_REGISTRATION", "open"), ("MOSS_RATE_LIMITS__ENABLED", "false"), ("MOSS_SERVER_NAME", &server_name)],
    )
    .await;
    let a = s.register("reader").await;
    for m in fixture["media"].as_array().unwrap() {
        let path = m["mxc"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
        for url in [format!("/_matrix/client/v1/media/download/{path}"), format!("/_matrix/media/v3/download/{path}")] {
            // Media from before authenticated media stays reachable on the frozen legacy path.
            let res = download(&s, Some(&a), &url, None).await;
            assert_eq!(res.status(), 200, "{url}");
            assert_eq!(res.headers()["content-type"], m["content_type"].as_str().unwrap());
            assert!(res.headers()["content-disposition"].to_str().unwrap().contains(m["filename"].as_str().unwrap()));
            let body = res.bytes().await.unwrap();
            assert_eq!(hex::encode(sha2::Sha256::digest(&body)), m["sha256"].as_str().unwrap(), "{url}");
        }
    }
    // Other servers' media Synapse had cached keeps its mxc:// URI too, with its type and name.
    for m in fixture["remote_media"].as_array().unwrap() {
        let path = m["mxc"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
        let url = format!("/_matrix/client/v1/media/download/{path}");
        let res = download(&s, Some(&a), &url, None).await;
        assert_eq!(res.status(), 200, "{url}");
        assert_eq!(res.headers()["content-type"], m["content_type"].as_str().unwrap());
        assert!(res.headers()["content-disposition"].to_str().unwrap().contains(m["filename"].as_str().unwrap()));
        let body = res.bytes().await.unwrap();
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), m["sha256"].as_str().unwrap(), "{url}");
    }
    let remote_png = fixture["remote_media"][0]["mxc"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let url = format!("/_matrix/client/v1/media/thumbnail/{remote_png}?width=32&height=32&method=crop");
    assert_eq!(download(&s, Some(&a), &url, None).await.status(), 200, "thumbnails of remote media");
    let url = format!("/_matrix/client/v1/media/download/{}/nosuchmedia", remote_png.split('/').next().unwrap());
    assert_eq!(download(&s, Some(&a), &url, None).await.status(), 404);

    // Purging orphans keeps every imported object (remote ones included).
    let out = std::process::Command::new(moss_bin())
        .args(["media", "purge", "--orphans"])
        .env("MOSS_DATA_DIR", &data_dir)
        .envs(crate::common::database_env(&data_dir))
        .env("MOSS_SERVER_NAME", &server_name)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deleted 0 orphan(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let png = fixture["media"][0]["mxc"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let res = download(
        &s,
        Some(&a),
        &format!("/_matrix/client/v1/media/thumbnail/{png}?width=96&height=96&method=crop"),
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    drop(s);
    let _ = std::fs::remove_dir_all(&work);
}
