//! Token-bucket rate limits per user or IP, answering 429 M_LIMIT_EXCEEDED with a retry hint.

use std::{
    collections::HashMap,
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

/// Takes one token for `key` in `class`, or fails with the time until one is available.
pub fn check(moss: &Moss, class: Class, key: &str) -> Result<(), ApiError> {
    let cfg = &moss.config.rate_limits;
    if !cfg.enabled {
        return Ok(());
    }
    let Bucket { per_second, burst } = match class {
        Class::Login => cfg.login,
        Class::Register => cfg.register,
        Class::Message => cfg.message,
        Class::Join => cfg.join,
        Class::MediaUpload => cfg.media_upload,
        Class::Federation => cfg.federation,
    };
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
