//! Starting, killing and restarting the homeserver under test (moss or Synapse) on a loopback
//! port in a temporary directory.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::process::{Child, Command};

pub const SERVER_NAME: &str = "localhost";

#[derive(Clone, Debug)]
pub enum Kind {
    Moss { bin: PathBuf },
    Synapse { python: PathBuf },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Moss { .. } => "moss",
            Kind::Synapse { .. } => "synapse",
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub dir: PathBuf,
    pub port: u16,
    pub base_url: String,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// Synapse: the two `-c` files (generated config, test overrides).
    synapse_configs: Option<(PathBuf, PathBuf)>,
}

/// An unused loopback port (probed, then released), below the kernel's ephemeral range
/// (32768–60999 on Linux): a port handed out for `:0` can be handed out again, before the
/// server binds it, as the source port of an outgoing connection. Never the same one twice.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ =
        NEXT.compare_exchange(u32::MAX, (std::process::id() * 997 + 1_500) % SPAN, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {FIRST}..{}", FIRST + SPAN)
}

impl Server {
    /// Prepares (Synapse: generates the configuration) and starts the server, and waits until
    /// `GET /_matrix/client/versions` answers 200.
    pub async fn start(kind: Kind, dir: &Path) -> Result<Server> {
        let dir = dir.join(kind.name());
        fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let log_path = dir.join(format!("{}.log", kind.name()));
        let mut server = Server {
            kind,
            base_url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            log_path,
            child: None,
            synapse_configs: None,
        };
        if let Kind::Moss { bin } = &server.kind
            && !bin.is_file()
        {
            bail!("moss binary not found at {}: build it first (cargo build -p moss)", bin.display());
        }
        if let Kind::Synapse { python } = &server.kind {
            let python = python.clone();
            server.synapse_configs = Some(server.generate_synapse_config(&python).await?);
        }
        server.spawn_and_wait().await?;
        Ok(server)
    }

    async fn generate_synapse_config(&self, python: &Path) -> Result<(PathBuf, PathBuf)> {
        if !python.exists() {
            bail!(
                "Synapse's python not found at {}: `python3 -m venv .venv-synapse && \
                 .venv-synapse/bin/pip install 'matrix-synapse==1.163.*'`",
                python.display()
            );
        }
        let generated = self.dir.join("homeserver.yaml");
        let out = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "--server-name", SERVER_NAME, "--config-path"])
            .arg(&generated)
            .arg("--data-directory")
            .arg(&self.dir)
            .args(["--generate-config", "--report-stats=no"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running synapse --generate-config")?;
        if !out.status.success() {
            bail!("synapse --generate-config failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }

        // The generated log config buffers lines for seconds: log straight to a file instead.
        let log_config = self.dir.join("log.yaml");
        fs::write(
            &log_config,
            serde_json::to_vec_pretty(&json!({
                "version": 1,
                "formatters": {"precise": {"format":
                    "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                                      "filename": self.log_path, "encoding": "utf8"}},
                "root": {"level": "INFO", "handlers": ["file"]},
                "disable_existing_loggers": false,
            }))?,
        )?;

        // Synapse merges the top-level keys of every `-c` file, later files winning (JSON is
        // YAML): open registration without verification, SQLite (the generated default), no
        // rate limits, one plain-HTTP client listener on loopback, no federation.
        let rate = json!({"per_second": 1000, "burst_count": 1000});
        let mut overrides = json!({
            "listeners": [{"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                           "x_forwarded": false, "tls": false,
                           "resources": [{"names": ["client"], "compress": false}]}],
            "log_config": log_config,
            "enable_registration": true,
            "enable_registration_without_verification": true,
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            "presence": {"enabled": false},
            "rc_login": {"address": rate, "account": rate, "failed_attempts": rate},
            "rc_joins": {"local": rate, "remote": rate},
            "rc_invites": {"per_room": rate, "per_user": rate, "per_issuer": rate},
            "rc_presence": {"per_user": rate},
            "rc_key_requests": rate,
            "rc_3pid_validation": rate,
            "rc_delayed_event_mgmt": rate,
        });
        for name in [
            "rc_message",
            "rc_registration",
            "rc_media_create",
            "rc_joins_per_room",
            "rc_room_creation",
            "rc_admin_redaction",
        ] {
            overrides[name] = rate.clone();
        }
        let extra = self.dir.join("test-overrides.yaml");
        fs::write(&extra, serde_json::to_vec_pretty(&overrides)?)?;
        Ok((generated, extra))
    }

    fn command(&self) -> Command {
        match &self.kind {
            Kind::Moss { bin } => {
                let mut cmd = Command::new(bin);
                cmd.arg("serve");
                // moss reads every MOSS_* variable as configuration and rejects unknown keys.
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("MOSS_") {
                        cmd.env_remove(key);
                    }
                }
                cmd.env("MOSS_DATA_DIR", self.dir.join("data"))
                    .env("MOSS_HTTP__BIND", format!("127.0.0.1:{}", self.port))
                    .env("MOSS_SERVER_NAME", SERVER_NAME)
                    .env("MOSS_REGISTRATION", "open")
                    .env("MOSS_RATE_LIMITS__ENABLED", "false")
                    .env("MOSS_LOG__LEVEL", "info")
                    .env("RUST_BACKTRACE", "1")
                    .env("NO_COLOR", "1");
                cmd
            }
            Kind::Synapse { python } => {
                let (generated, extra) = self.synapse_configs.as_ref().expect("configured");
                let mut cmd = Command::new(python);
                cmd.args(["-m", "synapse.app.homeserver", "-c"]).arg(generated).arg("-c").arg(extra);
                cmd
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        // moss logs to stdout (appended across restarts); Synapse logs to its own file, its
        // stdout/stderr go next to it.
        let out_path = match self.kind {
            Kind::Moss { .. } => self.log_path.clone(),
            Kind::Synapse { .. } => self.dir.join("synapse.stdout"),
        };
        let out = fs::OpenOptions::new().create(true).append(true).open(&out_path)?;
        let err = out.try_clone()?;
        let child = self
            .command()
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.kind.name()))?;
        self.child = Some(child);

        let http = matrix_sdk::reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let timeout = match self.kind {
            Kind::Moss { .. } => Duration::from_secs(30),
            Kind::Synapse { .. } => Duration::from_secs(90),
        };
        let start = Instant::now();
        let url = format!("{}/_matrix/client/versions", self.base_url);
        let mut last;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "{} exited during startup ({status}); dir {}\n{}",
                    self.kind.name(),
                    self.dir.display(),
                    self.log_tail(40)
                );
            }
            match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => last = format!("HTTP {}", resp.status()),
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not answer GET /_matrix/client/versions within {timeout:?} (last: {last}); \
                     dir {}\n{}",
                    self.kind.name(),
                    self.dir.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL (a crash), then start again on the same data directory and port.
    pub async fn kill9_and_restart(&mut self) -> Result<Duration> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().context("SIGKILL")?;
            child.wait().await?;
        }
        let start = Instant::now();
        self.spawn_and_wait().await?;
        Ok(start.elapsed())
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }

    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                format!(
                    "--- last {lines} lines of {} ---\n{}",
                    self.log_path.display(),
                    all[all.len().saturating_sub(lines)..].join("\n")
                )
            }
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }
}
