//! Optional (`--trace-http FILE`): a small HTTP/1.1 recording proxy between alice's matrix-sdk
//! client and the server. It writes one JSON line per request: method, path, status, duration,
//! and for the sliding sync endpoint the full request and response bodies. It exists to show
//! what the SDK really sends and what it got; the scenario runs the same without it.
//!
//! When the upstream cannot be reached (the server was killed), the proxy closes the client's
//! connection without an answer, as a dead server would.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use matrix_sdk::reqwest;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const SLIDING_SYNC_PATH: &str = "org.matrix.simplified_msc3575/sync";

pub struct Trace {
    file: Mutex<std::fs::File>,
}

impl Trace {
    fn record(&self, line: Value) {
        let mut file = self.file.lock().unwrap();
        let _ = writeln!(file, "{line}");
    }
}

/// Starts the proxy on a free loopback port; returns its base URL.
pub async fn start(upstream: String, trace_path: &std::path::Path) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let trace = Arc::new(Trace { file: Mutex::new(std::fs::File::create(trace_path)?) });
    let http = reqwest::Client::builder().build()?;
    tokio::spawn(async move {
        let mut conn_no = 0u64;
        while let Ok((sock, _)) = listener.accept().await {
            conn_no += 1;
            let (upstream, http, trace) = (upstream.clone(), http.clone(), trace.clone());
            tokio::spawn(async move {
                let _ = serve_connection(sock, conn_no, &upstream, &http, &trace).await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve_connection(
    mut sock: TcpStream,
    conn_no: u64,
    upstream: &str,
    http: &reqwest::Client,
    trace: &Trace,
) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("GET").to_owned();
        let path = parts.next().unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        for line in lines.filter(|l| !l.is_empty()) {
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    // Chunked request bodies are not expected from reqwest for JSON bodies.
                    "transfer-encoding" => anyhow::bail!("chunked request body not supported"),
                    "host" | "connection" | "accept-encoding" | "keep-alive" => {}
                    _ => headers.push((name, value)),
                }
            }
        }
        while buf.len() < head_end + content_length {
            let mut chunk = [0u8; 65536];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + content_length].to_vec();
        buf.drain(..head_end + content_length);

        let started = Instant::now();
        let mut req = http.request(reqwest::Method::from_bytes(method.as_bytes())?, format!("{upstream}{path}"));
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        let is_sliding_sync = path.contains(SLIDING_SYNC_PATH);
        let request_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let resp = match req.body(body).send().await {
            Ok(resp) => resp,
            Err(err) => {
                trace.record(json!({
                    "ts": now_ms(), "conn": conn_no, "method": method, "path": path,
                    "error": err.to_string(), "ms": started.elapsed().as_millis() as u64,
                    "request": if is_sliding_sync { request_json } else { Value::Null },
                }));
                return Ok(()); // drop the connection: the client sees a dead server
            }
        };
        let status = resp.status();
        let resp_headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(n, _)| {
                !matches!(n.as_str(), "content-length" | "transfer-encoding" | "content-encoding" | "connection")
            })
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let resp_body = match resp.bytes().await {
            Ok(b) => b,
            Err(_) => return Ok(()),
        };
        let mut line = json!({
            "ts": now_ms(), "conn": conn_no, "method": method, "path": path,
            "status": status.as_u16(), "ms": started.elapsed().as_millis() as u64,
        });
        if is_sliding_sync {
            line["request"] = request_json;
            line["response"] = serde_json::from_slice(&resp_body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&resp_body).into_owned()));
        }
        trace.record(line);

        let mut out = format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
        for (name, value) in resp_headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n", resp_body.len()));
        sock.write_all(out.as_bytes()).await?;
        sock.write_all(&resp_body).await?;
        sock.flush().await?;
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
