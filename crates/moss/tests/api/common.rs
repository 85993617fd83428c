//! A real moss process on a free port with its own data directory, and a small HTTP client.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

pub struct Server {
    pub base: String,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    http: reqwest::Client,
}

pub struct User {
    pub id: String,
    pub token: String,
    pub device: String,
}

/// A port for a server to listen on, taken below the kernel's ephemeral range (32768–60999 on
/// Linux). A port the kernel hands out for `:0` can be handed out again, before the server binds
/// it, as the source port of any outgoing connection (CI once lost a run to exactly that); ports
/// below the range are only ever taken by explicit binds. Each call in this process gets a new
/// one, starting at an offset derived from the process id so parallel test binaries spread out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, (std::process::id() * 997) % SPAN, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

pub fn moss_bin() -> &'static str {
    env!("CARGO_BIN_EXE_moss")
}

fn fresh_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("moss-test-{}-{n}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007
}

impl Server {
    /// Open registration, no rate limits: the usual test setup.
    pub async fn start() -> Server {
        Server::start_with(&[("MOSS_REGISTRATION", "open"), ("MOSS_RATE_LIMITS__ENABLED", "false")]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = fresh_dir();
        Server::start_in(dir, env).await
    }

    pub async fn start_in(dir: PathBuf, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let log = std::fs::File::create(dir.join("moss.log")).unwrap();
        let mut cmd = Command::new(moss_bin());
        cmd.arg("serve")
            .current_dir(&dir)
            .env("MOSS_DATA_DIR", dir.join("data"))
            .env("MOSS_HTTP__BIND", format!("127.0.0.1:{port}"))
            .env("MOSS_DATABASE__SYNCHRONOUS", "normal")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !env.iter().any(|(k, _)| *k == "MOSS_DATABASE__URL") {
            if let Some(url) = postgres_database_for(&dir) {
                cmd.env("MOSS_DATABASE__URL", url);
            }
        }
        let child = cmd.spawn().expect("start moss");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            env,
            child: Some(child),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = server.http.get(format!("{}/_matrix/client/versions", server.base)).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!("moss did not start: {}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Kills the process without warning, as a crash or the OOM killer would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts moss again on the same data directory and settings.
    pub async fn restart(mut self) -> Server {
        self.kill9();
        let dir = std::mem::take(&mut self.dir);
        let env = std::mem::take(&mut self.env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let log = dir.join("moss.log");
        let _ = std::fs::rename(&log, dir.join("moss.before-restart.log"));
        Server::start_in(dir, &env).await
    }

    /// Starts moss again on the same data directory with other settings.
    pub async fn restart_with(mut self, env: &[(&str, &str)]) -> Server {
        self.kill9();
        let dir = std::mem::take(&mut self.dir);
        let log = dir.join("moss.log");
        let _ = std::fs::rename(&log, dir.join("moss.before-restart.log"));
        Server::start_in(dir, env).await
    }

    /// The `MOSS_…` settings the server was started with (for the command line on its data).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    /// Logs in with the test password; returns the access token.
    pub async fn login(&self, name: &str) -> String {
        self.login_with(name, "password123").await
    }

    /// Logs in with a password; returns the access token.
    pub async fn login_with(&self, name: &str, password: &str) -> String {
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": password});
        let (st, v) = self.call("POST", "/_matrix/client/v3/login", None, Some(body)).await;
        assert_eq!(st, 200, "login {name}: {v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// Peak resident memory of the moss process so far, in bytes (Linux `VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("moss.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Sends a signal (`HUP`, `USR1`…) to the running server.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
        }
    }

    /// Sends SIGTERM and waits for the process; returns its exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("moss did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Any request: returns status and JSON body (`null` if the body is not JSON).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.call_raw(method, path, token, body.map(|b| b.to_string().into_bytes())).await
    }

    pub async fn call_raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, u: &User) -> (u16, Value) {
        self.call("GET", path, Some(&u.token), None).await
    }
    pub async fn post(&self, path: &str, u: &User, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(&u.token), Some(body)).await
    }
    pub async fn put(&self, path: &str, u: &User, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(&u.token), Some(body)).await
    }

    /// Registers through the dummy-auth flow and returns the logged-in user.
    pub async fn register(&self, name: &str) -> User {
        let (s, v) = self
            .call(
                "POST",
                "/_matrix/client/v3/register",
                None,
                Some(json!({"username": name, "password": "password123", "auth": {"type": "m.login.dummy"}})),
            )
            .await;
        assert_eq!(s, 200, "register {name}: {v}");
        User {
            id: v["user_id"].as_str().unwrap().into(),
            token: v["access_token"].as_str().unwrap().into(),
            device: v["device_id"].as_str().unwrap().into(),
        }
    }

    pub async fn create_room(&self, u: &User, body: Value) -> String {
        let (s, v) = self.post("/_matrix/client/v3/createRoom", u, body).await;
        assert_eq!(s, 200, "createRoom: {v}");
        v["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn send_text(&self, u: &User, room: &str, body: &str) -> String {
        let txn = format!("t{}", rand_suffix());
        let (s, v) = self
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
                u,
                json!({"msgtype": "m.text", "body": body}),
            )
            .await;
        assert_eq!(s, 200, "send: {v}");
        v["event_id"].as_str().unwrap().to_owned()
    }

    pub async fn join(&self, u: &User, room: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/join/{room}"), u, json!({})).await
    }

    pub async fn sync(&self, u: &User, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        let (s, v) = self.get(&path, u).await;
        assert_eq!(s, 200, "sync: {v}");
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() && !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn enc(s: &str) -> String {
    s.replace('#', "%23").replace('!', "%21").replace('$', "%24").replace(':', "%3A").replace('@', "%40")
}

/// The errcode of an error body.
pub fn errcode(v: &Value) -> &str {
    v["errcode"].as_str().unwrap_or("<none>")
}

/// With `MOSS_TEST_DB=postgres` (and the `MOSS_TEST_PG_*` variables of scripts/postgres-start.sh),
/// each server directory gets a PostgreSQL database of its own, made on first start and kept
/// for restarts on the same directory; otherwise `None` (SQLite in the data directory).
pub fn postgres_database_for(dir: &std::path::Path) -> Option<String> {
    if std::env::var("MOSS_TEST_DB").ok().as_deref() != Some("postgres") {
        return None;
    }
    let file = dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let url = create_postgres_database().expect("MOSS_TEST_DB=postgres needs the MOSS_TEST_PG_* variables");
    std::fs::write(&file, &url).unwrap();
    Some(url)
}

/// A new, empty PostgreSQL database on the test instance (`MOSS_TEST_PG_*` from
/// scripts/postgres-start.sh), as a URL; `None` when there is no test instance.
pub fn create_postgres_database() -> Option<String> {
    std::env::var("MOSS_TEST_PG_PORT").ok()?;
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("PostgreSQL tests need {k}"));
    let (bin, socket, port) = (var("MOSS_TEST_PG_BIN"), var("MOSS_TEST_PG_SOCKET_DIR"), var("MOSS_TEST_PG_PORT"));
    let (user, password) = (var("MOSS_TEST_PG_USER"), var("MOSS_TEST_PG_PASSWORD"));
    let name = format!("moss_{}_{}", std::process::id(), free_port());
    let out = std::process::Command::new(format!("{bin}/psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &socket, "-p", &port, "-U", "postgres", "-d", "postgres"])
        .arg("-c")
        .arg(format!(
            "CREATE DATABASE {name} OWNER \"{user}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .output()
        .expect("run psql");
    assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(format!("postgres://{user}:{password}@127.0.0.1:{port}/{name}"))
}

/// The database settings of the server whose data directory is `data_dir`, for CLI commands
/// run against it: its PostgreSQL URL when it has one (see [`postgres_database_for`]).
pub fn database_env(data_dir: impl AsRef<std::path::Path>) -> Vec<(String, String)> {
    let url = data_dir.as_ref().parent().and_then(|p| std::fs::read_to_string(p.join("postgres-url")).ok());
    url.map(|u| vec![("MOSS_DATABASE__URL".to_owned(), u)]).unwrap_or_default()
}

/// One send that the server acknowledged: which sender (index into the tokens), its event id,
/// when its request started and when its answer arrived.
pub struct Ack {
    pub sender: usize,
    pub event_id: String,
    pub started: Instant,
    pub answered: Instant,
}

/// Senders sending messages into `room` one after another, one task per token, until a send
/// fails (the server died, say); every acknowledged send is recorded as it is answered.
pub fn spawn_senders(
    base: &str,
    room: &str,
    tokens: Vec<String>,
) -> (std::sync::Arc<std::sync::Mutex<Vec<Ack>>>, Vec<tokio::task::JoinHandle<()>>) {
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks = tokens
        .into_iter()
        .enumerate()
        .map(|(n, token)| {
            let (base, room, acks) = (base.to_owned(), room.to_owned(), acks.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in 0.. {
                    let started = Instant::now();
                    let res = http
                        .put(format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/k{n}-{i}"))
                        .bearer_auth(&token)
                        .json(&json!({"msgtype": "m.text", "body": format!("{n}-{i}")}))
                        .send()
                        .await;
                    let Ok(res) = res else { break };
                    let Ok(v) = res.json::<Value>().await else { break };
                    let Some(id) = v["event_id"].as_str() else { break };
                    let answered = Instant::now();
                    acks.lock().unwrap().push(Ack { sender: n, event_id: id.to_owned(), started, answered });
                }
            })
        })
        .collect();
    (acks, tasks)
}
