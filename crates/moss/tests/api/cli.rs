use std::process::Command;

use crate::common::{moss_bin, Server};

fn moss(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(moss_bin())
        .args(args)
        .current_dir(dir)
        .env("MOSS_DATA_DIR", dir.join("data"))
        .envs(crate::common::database_env(dir.join("data")))
        .output()
        .unwrap()
}

#[test]
fn init_writes_a_config_that_checks_and_check_names_bad_keys() {
    let dir = std::env::temp_dir().join(format!("moss-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = moss(&dir, &["init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(dir.join("moss.toml")).unwrap();
    assert!(text.contains("server_name = \"localhost\""));
    let out = moss(&dir, &["config", "check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A second init refuses to overwrite.
    assert!(!moss(&dir, &["init"]).status.success());

    std::fs::write(dir.join("bad.toml"), "server_nmae = \"x\"\n").unwrap();
    let out = moss(&dir, &["-c", "bad.toml", "config", "check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server_nmae"));
    std::fs::write(dir.join("bad.toml"), "[http]\nbind = 8008\n").unwrap();
    let out = moss(&dir, &["-c", "bad.toml", "config", "check"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bind"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("bad.toml"), "data_dir = \"/nonexistent/deeper/data\"\n").unwrap();
    let out = Command::new(moss_bin())
        .args(["-c", "bad.toml", "config", "check"])
        .current_dir(&dir)
        .env_remove("MOSS_DATA_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_dir"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn user_commands_work_while_the_server_runs() {
    let s = Server::start().await;
    let run = |args: &[&str]| {
        let out = Command::new(moss_bin())
            .args(args)
            .env("MOSS_DATA_DIR", s.data_dir())
            .envs(crate::common::database_env(s.data_dir()))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&["user", "create", "dora", "--password", "password123", "--admin"]);
    assert!(ok, "{out}");
    let (ok, _) = run(&["user", "create", "dora", "--password", "password123"]);
    assert!(!ok, "duplicate users are refused");
    let (_, list) = run(&["user", "list"]);
    assert!(list.contains("@dora:localhost (admin)"), "{list}");
    let login = serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dora"}, "password": "password123"});
    assert_eq!(s.call("POST", "/_matrix/client/v3/login", None, Some(login.clone())).await.0, 200);
    let (ok, out) = run(&["user", "reset-password", "dora", "--password", "another-pass"]);
    assert!(ok, "{out}");
    assert_eq!(s.call("POST", "/_matrix/client/v3/login", None, Some(login)).await.0, 403);
    let (ok, out) = run(&["user", "deactivate", "dora"]);
    assert!(ok, "{out}");
    let (_, list) = run(&["user", "list"]);
    assert!(list.contains("@dora:localhost (deactivated)"), "{list}");
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let s = Server::start().await;
    s.register("logger").await;
    let log = s.log();
    assert!(log.contains("registered"), "{log}");
    assert!(!log.contains('\u{1b}'), "terminal escape codes in a log file: {log}");
}

#[test]
fn appservice_registrations_are_listed_and_bad_ones_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("moss-cli-as-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The file heisenbridge --generate writes, in its shape.
    std::fs::write(
        dir.join("heisenbridge.yaml"),
        "id: heisenbridge\nurl: http://127.0.0.1:9898\nas_token: at-secret\nhs_token: hs-secret\n\
         rate_limited: false\nsender_localpart: heisenbridge\nnamespaces:\n  users:\n  - regex: '@irc_.*'\n    exclusive: true\n\
         \x20 aliases: []\n  rooms: []\n",
    )
    .unwrap();
    std::fs::write(dir.join("good.toml"), "[appservice]\nconfig_files = [\"heisenbridge.yaml\"]\n").unwrap();
    let out = moss(&dir, &["-c", "good.toml", "appservice", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("heisenbridge") && text.contains("@heisenbridge:localhost"), "{text}");
    assert!(text.contains("users: @irc_.* (exclusive)") && text.contains("rate limited: false"), "{text}");
    assert!(!text.contains("at-secret"), "tokens are not printed: {text}");

    // A second service claiming the same exclusive namespace: `config check` and start-up say where.
    std::fs::write(
        dir.join("copy.yaml"),
        "id: copy\nurl: null\nas_token: a2\nhs_token: h2\nsender_localpart: copybot\n\
         namespaces:\n  users:\n  - regex: '@irc_.*'\n    exclusive: true\n",
    )
    .unwrap();
    std::fs::write(dir.join("bad.toml"), "[appservice]\nconfig_files = [\"heisenbridge.yaml\", \"copy.yaml\"]\n")
        .unwrap();
    let out = moss(&dir, &["-c", "bad.toml", "config", "check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("copy.yaml") && err.contains("namespaces.users[0]"), "{err}");
    let out = moss(&dir, &["-c", "bad.toml", "appservice", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("copy.yaml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn admin_commands_delete_rooms_and_media_and_send_notices() {
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_SERVER_NOTICES__SYSTEM_MXID_LOCALPART", "notices"),
    ])
    .await;
    let run = |args: &[&str]| {
        let out = Command::new(moss_bin())
            .args(args)
            .env("MOSS_DATA_DIR", s.data_dir())
            .envs(crate::common::database_env(s.data_dir()))
            .env("MOSS_SERVER_NOTICES__SYSTEM_MXID_LOCALPART", "notices")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, serde_json::json!({"name": "Gone soon"})).await;
    let (ok, out) = run(&["admin", "delete-room", &room, "--block"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 member(s) removed") && out.contains("blocked"), "{out}");
    let (_, v) = s.get("/_matrix/client/v3/joined_rooms", &bob).await;
    assert_eq!(v["joined_rooms"], serde_json::json!([]));
    assert_eq!(s.join(&bob, &room).await.0, 403, "blocked");

    let (_, v) = s.call_raw("POST", "/_matrix/media/v3/upload", Some(&bob.token), Some(b"bytes".to_vec())).await;
    let mxc = v["content_uri"].as_str().unwrap().to_owned();
    let (ok, out) = run(&["admin", "delete-media", &mxc]);
    assert!(ok, "{out}");
    let id = mxc.rsplit('/').next().unwrap();
    let (st, _) =
        s.call_raw("GET", &format!("/_matrix/client/v1/media/download/localhost/{id}"), Some(&bob.token), None).await;
    assert_eq!(st, 404);
    assert!(!run(&["admin", "delete-media", &mxc]).0, "a second time: no such media");

    let (ok, out) = run(&["admin", "notice", "bob", "hello from the operators"]);
    assert!(ok, "{out}");
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["rooms"]["invite"].as_object().unwrap().len(), 1, "{sync}");
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_a_working_server() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, serde_json::json!({"name": "Archive"})).await;
    for i in 0..3 {
        s.send_text(&alice, &room, &format!("before the backup {i}")).await;
    }
    let (st, v) =
        s.call_raw("POST", "/_matrix/media/v3/upload", Some(&alice.token), Some(b"kept bytes".to_vec())).await;
    assert_eq!(st, 200, "{v}");
    let mxc = v["content_uri"].as_str().unwrap().to_owned();

    let work = std::env::temp_dir().join(format!("moss-backup-{}", crate::common::free_port()));
    std::fs::create_dir_all(&work).unwrap();
    let archive = work.join("moss-backup.tar");
    let data_dir = s.data_dir();
    let run = |args: &[&str]| {
        let out = Command::new(moss_bin())
            .args(args)
            .env("MOSS_DATA_DIR", &data_dir)
            .envs(crate::common::database_env(&data_dir))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    // Taken while the server runs; what is sent afterwards is not in it. On PostgreSQL the
    // database part is pg_dump's, restored with pg_restore into an empty database.
    let on_postgres = !crate::common::database_env(&data_dir).is_empty();
    let (ok, out) = run(&["backup", "--out", archive.to_str().unwrap(), "--with-media"]);
    assert!(ok, "{out}");
    s.send_text(&alice, &room, "after the backup").await;
    // A plain tar: standard tools read it.
    let listing = Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let database = if on_postgres { "data/database.pgdump" } else { "data/moss.db" };
    for want in [database, "data/signing.key", "data/media-naming.key"] {
        assert!(listing.lines().any(|l| l == want), "{want} in:\n{listing}");
    }
    assert!(listing.lines().any(|l| l.starts_with("data/media/")), "{listing}");

    let restored = work.join("restored");
    let target = restored.join("data");
    let (archive_arg, target_arg) = (archive.to_str().unwrap(), target.to_str().unwrap());
    let new_database = on_postgres.then(|| crate::common::create_postgres_database().unwrap());
    if let Some(url) = &new_database {
        // Without a database to restore into, it refuses and leaves nothing behind.
        let (ok, out) = run(&["restore", "--from", archive_arg, "--data-dir", target_arg]);
        assert!(!ok && out.contains("--database-url"), "{out}");
        assert!(!target.exists(), "a refused restore leaves no directory behind");
        let (ok, out) = run(&["restore", "--from", archive_arg, "--data-dir", target_arg, "--database-url", url]);
        assert!(ok, "{out}");
    } else {
        let (ok, out) = run(&["restore", "--from", archive_arg, "--data-dir", target_arg]);
        assert!(ok, "{out}");
    }
    let (ok, out) = run(&["restore", "--from", archive_arg, "--data-dir", target_arg]);
    assert!(!ok && out.contains("is not empty"), "never over existing data: {out}");
    drop(s);

    let mut env = vec![("MOSS_REGISTRATION", "open"), ("MOSS_RATE_LIMITS__ENABLED", "false")];
    if let Some(url) = &new_database {
        env.push(("MOSS_DATABASE__URL", url.as_str()));
    }
    let s = Server::start_in(restored, &env).await;
    let token = s.login("alice").await;
    let alice = crate::common::User { token, ..alice };
    let (_, v) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), &alice).await;
    let bodies: Vec<&str> =
        v["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["before the backup 2", "before the backup 1", "before the backup 0"], "{v}");
    let download = format!("/_matrix/client/v1/media/download/{}", mxc.trim_start_matches("mxc://"));
    let (st, _) = s.call_raw("GET", &download, Some(&alice.token), None).await;
    assert_eq!(st, 200, "the media came back");

    // An archive with anything outside the data directory is refused.
    let evil = work.join("evil.tar");
    let made = Command::new("tar").arg("-cPf").arg(&evil).arg(work.join("moss-backup.tar")).status().unwrap();
    assert!(made.success());
    let (ok, out) = run(&["restore", "--from", evil.to_str().unwrap(), "--data-dir", work.join("x").to_str().unwrap()]);
    assert!(!ok && out.contains("outside the data directory"), "{out}");
}

#[tokio::test]
async fn systemd_is_told_when_moss_is_ready_and_when_it_stops() {
    // The service manager's end of NOTIFY_SOCKET, as systemd would hold it for Type=notify.
    let dir = std::env::temp_dir().join(format!("moss-notify-{}", crate::common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    manager.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let socket = path.to_str().unwrap().to_owned();
    let mut s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("NOTIFY_SOCKET", &socket),
    ])
    .await;
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let (st, _) = s.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(st, 200, "serving once ready");
    // `systemctl reload` (SIGHUP) never stops it, with or without a certificate to reload.
    s.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (st, _) = s.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(st, 200, "still serving after SIGHUP");
    assert_eq!(s.terminate(), Some(0), "a clean exit on SIGTERM");
    let n = manager.recv(&mut buf).expect("STOPPING on SIGTERM");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(std::env::var("MOSS_REQUIRE_SYSTEMD_ANALYZE").is_err(), "systemd-analyze is required");
        eprintln!("skipping: no systemd-analyze");
        return;
    };
    assert!(probe.status.success());
    // The unit as shipped, with ExecStart pointing at the binary under test (verify checks it).
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/systemd/moss.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ProtectSystem=strict"), "{unit}");
    let dir = std::env::temp_dir().join(format!("moss-unit-{}", crate::common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("moss.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/moss", moss_bin())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("moss.service:"), "{text}");
}

#[tokio::test]
async fn healthcheck_exits_zero_only_while_the_server_is_healthy() {
    let s = Server::start().await;
    let bind = s.base.trim_start_matches("http://").to_owned();
    let check = |bind: &str| {
        let out = Command::new(moss_bin())
            .args(["healthcheck", "--timeout", "5"])
            .env("MOSS_DATA_DIR", s.data_dir())
            .envs(crate::common::database_env(s.data_dir()))
            .env("MOSS_HTTP__BIND", bind)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check(&bind);
    assert!(ok && out.contains("healthy"), "{out}");
    // Bound to every address: asked on loopback.
    let port = bind.rsplit(':').next().unwrap();
    let (ok, out) = check(&format!("0.0.0.0:{port}"));
    assert!(ok, "{out}");
    // The media directory gone: /health answers 503 and the check fails.
    std::fs::remove_dir_all(s.data_dir().join("media")).unwrap();
    let (ok, out) = check(&bind);
    assert!(!ok && out.contains("unhealthy") && out.contains("503"), "{out}");
    // Nothing listening.
    let (ok, out) = check(&format!("127.0.0.1:{}", crate::common::free_port()));
    assert!(!ok && out.contains("connecting"), "{out}");
}

#[tokio::test]
async fn a_stop_finishes_an_upload_in_flight_and_takes_no_new_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = Server::start().await;
    let alice = s.register("alice").await;
    let body: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload?filename=big.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        alice.token,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    tcp.write_all(&body[..half]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // systemctl stop: the upload has half its body sent.
    s.signal("TERM");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let fresh = reqwest::Client::new().get(format!("{}/_matrix/client/versions", s.base)).send().await;
    assert!(fresh.is_err(), "a stopping server takes no new connections: {fresh:?}");

    tcp.write_all(&body[half..]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&answer).contains("}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the upload was answered");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json = &answer[answer.find('{').expect("a JSON body")..=answer.rfind('}').unwrap()];
    let mxc: serde_json::Value = serde_json::from_str(json).expect(&answer);
    let mxc = mxc["content_uri"].as_str().expect("content_uri").to_owned();
    drop(tcp);
    assert_eq!(s.terminate(), Some(0), "a clean exit once the upload is done");

    // The upload finished during the stop is there after the next start, byte for byte.
    let s = s.restart().await;
    let download = format!("{}/_matrix/client/v1/media/download/{}", s.base, mxc.trim_start_matches("mxc://"));
    let got = reqwest::Client::new().get(download).bearer_auth(&alice.token).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap().as_ref() == body.as_slice(), "the stored bytes are the uploaded ones");
}

#[test]
fn config_check_reads_the_media_repository_section() {
    let dir = std::env::temp_dir().join(format!("moss-cli-media-repo-{}", crate::common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    // Synapse's signing key format: the bare seed.
    std::fs::write(dir.join("synapse.signing.key"), "ed25519 a_AbCd nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\n")
        .unwrap();
    std::fs::write(
        dir.join("good.toml"),
        "[media_repo]\nsynapse_url = \"http://127.0.0.1:8008\"\nsigning_key_path = \"synapse.signing.key\"\n",
    )
    .unwrap();
    let out = moss(&dir, &["-c", "good.toml", "config", "check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(
        dir.join("bad.toml"),
        "[media_repo]\nsynapse_url = \"ftp://synapse\"\nsynapse_database = \"synapse.db\"\n",
    )
    .unwrap();
    let out = moss(&dir, &["-c", "bad.toml", "config", "check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("must start with http"), "{err}");
    assert!(err.contains("signing_key_path is required"), "{err}");
}
