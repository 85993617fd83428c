//! Token-bucket rate limits per user or IP, answering 429 M_LIMIT_EXCEEDED with a retry hint.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use moss_core::{config::Bucket, Moss};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Login,
    Register,
    Message,
    Join,
    MediaUpload,
    Federation,
}

struct Tokens {
    level: f64,
    at: Instant,
}

fn buckets() -> &'static Mutex<HashMap<(Class, String), Tokens>> {
    static B: OnceLock<Mutex<HashMap<(Class, String), Tokens>>> = OnceLock::new();
    B.get_or_init(Default::default)
}

/// The address a request comes from: the peer, or, when the peer is a trusted reverse proxy
/// (`http.trusted_proxies`), the last address in `X-Forwarded-For` that is not a trusted proxy
/// itself (the leftmost entries are whatever the client chose to send).
pub fn client_addr(moss: &Moss, peer: Option<IpAddr>, headers: &http::HeaderMap) -> Option<IpAddr> {
    let trusted = &moss.config.http.trusted_proxies;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = peer?;
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect();
    Some(forwarded.into_iter().rev().find(|ip| !is_trusted(*ip)).unwrap_or(peer))
}

/// Takes one token for `key` in `class`, or fails with the time until one is available.
/// [`check`] for a user's request, keyed by the user; application services registered with
/// `rate_limited: false` (and the users they act as) are not limited.
pub fn check_session(moss: &Moss, class: Class, session: &moss_core::accounts::Session) -> Result<(), ApiError> {
    if session.appservice.as_ref().is_some_and(|s| !s.rate_limited()) {
        return Ok(());
    }
    // An admin's override of a user's message rate (`/_synapse/admin/v1/users/{id}/override_ratelimit`):
    // 0/0 means not limited.
    if class == Class::Message {
        if let Some((per_second, burst)) = moss.ratelimit_override(session.user_id.as_str()) {
            if per_second == 0 && burst == 0 {
                return Ok(());
            }
            if !moss.config.rate_limits.enabled {
                return Ok(());
            }
            let bucket = Bucket { per_second: per_second as f64, burst: burst.clamp(1, u32::MAX as i64) as u32 };
            return take(class, session.user_id.as_str(), bucket);
        }
    }
    check(moss, class, session.user_id.as_str())
}

pub fn check(moss: &Moss, class: Class, key: &str) -> Result<(), ApiError> {
    let cfg = &moss.config.rate_limits;
    if !cfg.enabled {
        return Ok(());
    }
    let bucket = match class {
        Class::Login => cfg.login,
        Class::Register => cfg.register,
        Class::Message => cfg.message,
        Class::Join => cfg.join,
        Class::MediaUpload => cfg.media_upload,
        Class::Federation => cfg.federation,
    };
    take(class, key, bucket)
}

fn take(class: Class, key: &str, Bucket { per_second, burst }: Bucket) -> Result<(), ApiError> {
    let mut map = buckets().lock().unwrap_or_else(|p| p.into_inner());
    if map.len() > 100_000 {
        map.retain(|_, t| t.at.elapsed().as_secs() < 3600);
    }
    let now = Instant::now();
    let t = map.entry((class, key.to_owned())).or_insert(Tokens { level: burst as f64, at: now });
    t.level = (t.level + now.duration_since(t.at).as_secs_f64() * per_second).min(burst as f64);
    t.at = now;
    if t.level >= 1.0 {
        t.level -= 1.0;
        Ok(())
    } else {
        let wait = ((1.0 - t.level) / per_second.max(1e-6) * 1000.0).ceil() as u64;
        Err(ApiError::limit_exceeded(wait))
    }
}
