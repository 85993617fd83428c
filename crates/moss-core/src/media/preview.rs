//! URL previews: fetch a page (or image) a user linked, read its OpenGraph data, cache it.
//!
//! The fetcher is the server reaching out on a user's behalf, so it must not become a way into
//! the server's own network (SSRF): every address a host name resolves to is checked against
//! the deny list at connect time (so DNS rebinding cannot slip past an earlier check), literal
//! IP addresses and every redirect are checked too, and responses are bounded in size and time.

#![warn(clippy::indexing_slicing)]
use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use reqwest::Url;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

use crate::net::{error_chain, ClientOptions, GuardedClient, RedirectRule};
pub use crate::net::{AddressPolicy, Cidr, DEFAULT_DENY};

pub struct Fetcher {
    client: GuardedClient,
    max_bytes: usize,
}

/// What a fetch brought back.
pub struct Fetched {
    pub url: Url,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Fetcher {
    pub fn new(policy: AddressPolicy, timeout: Duration, max_bytes: usize) -> Result<Fetcher> {
        let mut options = ClientOptions::new("URL previews");
        options.user_agent = "moss URL preview (Matrix homeserver)";
        options.redirects = RedirectRule::Follow(5);
        options.total_timeout = Some(timeout);
        options.connect_timeout = timeout.min(Duration::from_secs(5));
        let client = GuardedClient::new(Arc::new(policy), options)?;
        Ok(Fetcher { client, max_bytes })
    }

    /// Fetches `url`, reading at most `max` bytes of the body (or the fetcher's default).
    pub async fn fetch(&self, url: &str, max: Option<usize>) -> Result<Fetched> {
        let parsed = Url::parse(url).map_err(|e| Error::invalid_param(format!("invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_param("only http and https URLs can be previewed"));
        }
        let res = self.client.get(url)?.send().await.map_err(|e| {
            if crate::net::is_refusal(&e) {
                crate::net::refused("URL previews")
            } else {
                Error::upstream("could not fetch the URL", error_chain(&e))
            }
        })?;
        if !res.status().is_success() {
            return Err(Error::new(
                ruma::api::error::ErrorKind::Unknown,
                502,
                format!("the URL answered {}", res.status()),
            ));
        }
        let final_url = res.url().clone();
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let max = max.unwrap_or(self.max_bytes);
        let mut body = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::upstream("could not read the URL", error_chain(&e)))?;
            let room = max.saturating_sub(body.len());
            body.extend_from_slice(chunk.get(..chunk.len().min(room)).unwrap_or_default());
            if body.len() >= max {
                break;
            }
        }
        Ok(Fetched { url: final_url, content_type, body })
    }
}

fn decode_entities(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The attributes of one tag, as (lowercased name, value) pairs. A byte cursor over untrusted
/// HTML: every look is bounds-checked, every cut lands on an ASCII delimiter (a char boundary).
fn attributes(tag: &str) -> Vec<(String, String)> {
    let b = tag.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let cut = |from: usize, to: usize| tag.get(from..to).unwrap_or_default();
    let skip_while = |mut i: usize, pred: &dyn Fn(u8) -> bool| {
        while at(i).is_some_and(pred) {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        i = skip_while(i, &|c| c.is_ascii_whitespace() || c == b'/');
        let start = i;
        i = skip_while(i, &|c| !c.is_ascii_whitespace() && c != b'=' && c != b'/');
        if start == i {
            i += 1;
            continue;
        }
        let name = cut(start, i).to_ascii_lowercase();
        i = skip_while(i, &|c| c.is_ascii_whitespace());
        if at(i) != Some(b'=') {
            out.push((name, String::new()));
            continue;
        }
        i = skip_while(i + 1, &|c| c.is_ascii_whitespace());
        let value = match at(i) {
            Some(q @ (b'"' | b'\'')) => {
                let from = i + 1;
                i = skip_while(from, &|c| c != q);
                let v = cut(from, i);
                i += 1;
                v
            }
            _ => {
                let from = i;
                i = skip_while(i, &|c| !c.is_ascii_whitespace());
                cut(from, i)
            }
        };
        out.push((name, decode_entities(value)));
    }
    out
}

/// OpenGraph data from HTML: `og:*` meta tags, falling back to `<title>` and the description.
pub fn parse_html(html: &str) -> Map<String, Value> {
    let mut og = Map::new();
    let lower = html.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(off) = lower[pos..].find("<meta") {
        let start = pos + off + 5;
        let Some(end) = lower[start..].find('>') else { break };
        let attrs = attributes(&html[start..start + end]);
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let (Some(key), Some(content)) = (get("property").or_else(|| get("name")), get("content")) {
            let key = key.to_ascii_lowercase();
            if key.starts_with("og:") && !og.contains_key(&key) {
                og.insert(key, json!(content.trim()));
            } else if key == "description" && !og.contains_key("og:description") {
                og.insert("og:description".into(), json!(content.trim()));
            }
        }
        pos = start + end;
    }
    if !og.contains_key("og:title") {
        if let Some(s) = lower.find("<title") {
            if let Some(gt) = lower[s..].find('>') {
                let from = s + gt + 1;
                if let Some(e) = lower[from..].find("</title>") {
                    let t = decode_entities(html[from..from + e].trim());
                    if !t.is_empty() {
                        og.insert("og:title".into(), json!(t));
                    }
                }
            }
        }
    }
    og
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let policy = AddressPolicy { deny: DEFAULT_DENY.iter().map(|s| s.parse().unwrap()).collect(), allow: vec![] };
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            assert!(!policy.permits(bad.parse().unwrap()), "{bad} must be denied");
        }
        for good in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "1.1.1.1"] {
            assert!(policy.permits(good.parse().unwrap()), "{good} must be allowed");
        }
        let mut with_exception = policy.clone();
        with_exception.allow.push("127.0.0.1/32".parse().unwrap());
        assert!(with_exception.permits("127.0.0.1".parse().unwrap()));
        assert!(!with_exception.permits("127.0.0.2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn opengraph() {
        let html = r#"<html><head><title>Fallback &amp; title</title>
            <meta property="og:title" content="The &quot;real&quot; title">
            <META name='description' content='A page'>
            <meta property=og:image content=/img.png />
            </head></html>"#;
        let og = parse_html(html);
        assert_eq!(og["og:title"], "The \"real\" title");
        assert_eq!(og["og:description"], "A page");
        assert_eq!(og["og:image"], "/img.png");
        let og = parse_html("<title>Only a title</title>");
        assert_eq!(og["og:title"], "Only a title");
        // Hostile markup: unterminated quotes and tags, multi-byte text at every cut.
        for html in [
            "<meta property=\"og:title content='x",
            "<meta property='og:title' content=\"é",
            "<meta é=é content=\u{1F600}>",
            "<meta",
            "<meta =>",
            "<title>",
            "<meta property=og:title content=ok/><meta/ / =>",
        ] {
            let _ = parse_html(html);
        }
        assert_eq!(parse_html("<meta property=og:title content=ok/>")["og:title"], "ok/");
    }
}
