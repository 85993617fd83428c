//! The matrix-js-sdk peer (js-peer.mjs): a Node child process that speaks JSON lines.

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
};

pub struct JsPeer {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<Value>>>,
    pub log_path: std::path::PathBuf,
}

impl JsPeer {
    pub async fn spawn(
        node: &str,
        script: &Path,
        base_url: &str,
        user_id: &str,
        password: &str,
        log_path: &Path,
    ) -> Result<Self> {
        if !script.exists() {
            bail!("js peer script not found at {}", script.display());
        }
        let log = std::fs::File::create(log_path)?;
        let mut child = Command::new(node)
            .arg(script)
            .args(["--base-url", base_url, "--user-id", user_id, "--password", password])
            .arg("--auto-join")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {node} {}", script.display()))?;
        let stdin = child.stdin.take().context("peer stdin")?;
        let stdout = child.stdout.take().context("peer stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"type": "unparsed", "line": line}));
                sink.lock().unwrap().push(value);
            }
        });
        Ok(Self { child, stdin, lines, log_path: log_path.to_owned() })
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Everything the peer printed, for failure messages.
    pub fn describe(&self) -> String {
        let lines: Vec<String> = self.lines().iter().map(|v| v.to_string()).collect();
        let stderr = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().collect();
        format!(
            "js peer said: [{}]; stderr tail:\n{}",
            lines.join(", "),
            tail[tail.len().saturating_sub(15)..].join("\n")
        )
    }

    /// Waits for the first line matching `pred`.
    pub async fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let start = Instant::now();
        loop {
            if let Some(v) = self.lines().into_iter().find(|v| pred(v)) {
                return Ok(v);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("js peer exited ({status}) while waiting for {what}; {}", self.describe());
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for the js peer: {what}; {}", self.describe());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn command(&mut self, cmd: Value) -> Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.command(serde_json::json!({"cmd": "stop"})).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}
