//! Plain client-server API calls (JSON over reqwest) for the users that are not under test:
//! registration, and bob's room creation, invites and messages. Every failure names the
//! request and the server's answer.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use matrix_sdk::reqwest::{self, Method};
use serde_json::{Value, json};

static TXN: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub password: String,
    pub access_token: String,
    #[allow(dead_code)] // kept for debugging output
    pub device_id: String,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
}

/// Percent-encodes a path segment (room ids, event types, transaction ids).
pub fn enc(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Api {
    pub fn new(base_url: &str) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Self { http, base_url: base_url.to_owned() })
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value, String)> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base_url));
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(serde_json::to_vec(body)?);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        let sent = body.map(|b| format!(" {}", truncate(&b.to_string(), 300))).unwrap_or_default();
        let describe = format!("{method} {path}{sent} -> HTTP {status} {}", truncate(&text, 800));
        Ok((status, json, describe))
    }

    /// Calls and requires HTTP 200 with a JSON object.
    pub async fn ok(&self, user: &User, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, json, describe) = self.call(Some(&user.access_token), method, path, body.as_ref()).await?;
        if status != 200 || !json.is_object() {
            bail!("expected HTTP 200 with a JSON object: {describe}");
        }
        Ok(json)
    }

    /// Registers `username` with the m.login.dummy stage (completing it inside the
    /// user-interactive-auth session when the server answers 401 first).
    pub async fn register(&self, username: &str, password: &str) -> Result<User> {
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": format!("moss-sdk-scenario setup ({username})"),
            "auth": {"type": "m.login.dummy"},
        });
        let path = "/_matrix/client/v3/register";
        let (mut status, mut json, mut describe) = self.call(None, Method::POST, path, Some(&body)).await?;
        if status == 401
            && let Some(session) = json.get("session").and_then(Value::as_str)
        {
            body["auth"]["session"] = session.into();
            (status, json, describe) = self.call(None, Method::POST, path, Some(&body)).await?;
        }
        if status != 200 {
            bail!("registering {username} failed: {describe}");
        }
        let field = |name: &str| -> Result<String> {
            json.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("registration answer lacks {name}: {describe}"))
        };
        Ok(User {
            user_id: field("user_id")?,
            password: password.to_owned(),
            access_token: field("access_token")?,
            device_id: field("device_id")?,
        })
    }

    pub async fn create_room(&self, user: &User, body: Value) -> Result<String> {
        let json = self.ok(user, Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await?;
        json.get("room_id").and_then(Value::as_str).map(str::to_owned).context("createRoom: no room_id")
    }

    pub async fn join(&self, user: &User, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/join/{}", enc(room_id));
        self.ok(user, Method::POST, &path, Some(json!({}))).await?;
        Ok(())
    }

    pub async fn send_text(&self, user: &User, room_id: &str, body: &str) -> Result<String> {
        let txn = format!("scenario-{}-{}", std::process::id(), TXN.fetch_add(1, Ordering::Relaxed));
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(room_id), enc(&txn));
        let json = self.ok(user, Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": body}))).await?;
        json.get("event_id").and_then(Value::as_str).map(str::to_owned).context("send: no event_id")
    }
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
