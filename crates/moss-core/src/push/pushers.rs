//! `/pushers` and `/pushers/set`: each pusher belongs to the device that set it (and goes with
//! it), and starts at the current stream position, so nothing from before it is pushed.

use ruma::{DeviceId, UserId};
use serde_json::Value;

use moss_storage::PusherRow;

use crate::{
    error::{Error, Result},
    now_ms, Moss,
};

/// The one path a gateway URL may have (spec: Push Gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
const MAX_APP_ID: usize = 64;
const MAX_PUSHKEY: usize = 512;
/// Largest pusher (all its fields as JSON) stored.
const MAX_PUSHER_JSON: usize = 8 * 1024;

impl Moss {
    pub async fn pushers(&self, user: &UserId) -> Result<Vec<Value>> {
        let u = user.to_string();
        let rows = self.db.read(move |r| Ok::<_, Error>(r.pushers(&u)?)).await?;
        rows.iter().map(|p| Ok(serde_json::from_str(&p.pusher)?)).collect()
    }

    /// Stores (or with `kind: null`, deletes) a pusher given in the spec's JSON form.
    pub async fn set_pusher(&self, user: &UserId, device: &DeviceId, pusher: Value) -> Result<()> {
        let s = |k: &str| pusher[k].as_str().map(str::to_owned);
        let app_id = s("app_id").ok_or_else(|| Error::missing_param("app_id is required"))?;
        let pushkey = s("pushkey").ok_or_else(|| Error::missing_param("pushkey is required"))?;
        let delete = pusher.get("kind").is_none_or(Value::is_null);
        let append = pusher["append"].as_bool().unwrap_or(false);
        if !delete {
            self.check_pusher(&pusher, &app_id, &pushkey)?;
        }
        let mut stored = pusher.clone();
        if let Some(m) = stored.as_object_mut() {
            m.remove("append");
        }
        let text = serde_json::to_string(&stored)?;
        let (u, d) = (user.to_string(), device.to_string());
        self.db
            .write(move |w| {
                if delete {
                    w.delete_pusher(&u, &app_id, &pushkey)?;
                } else {
                    if !append {
                        w.delete_pushkey_elsewhere(&u, &app_id, &pushkey)?;
                    }
                    let last_stream = w.current_stream()?;
                    w.put_pusher(&PusherRow {
                        user_id: u,
                        app_id,
                        pushkey,
                        pusher: text,
                        device_id: Some(d),
                        created_ts: now_ms() as i64,
                        last_stream,
                        failing_since: None,
                    })?;
                }
                Ok::<_, Error>(())
            })
            .await
    }

    fn check_pusher(&self, pusher: &Value, app_id: &str, pushkey: &str) -> Result<()> {
        for key in ["app_display_name", "device_display_name", "lang"] {
            if !pusher[key].is_string() {
                return Err(Error::missing_param(format!("{key} is required")));
            }
        }
        if !pusher["data"].is_object() {
            return Err(Error::missing_param("data is required"));
        }
        if app_id.chars().count() > MAX_APP_ID || app_id.is_empty() {
            return Err(Error::invalid_param(format!("app_id must be 1 to {MAX_APP_ID} characters")));
        }
        if pushkey.len() > MAX_PUSHKEY || pushkey.is_empty() {
            return Err(Error::invalid_param(format!("pushkey must be 1 to {MAX_PUSHKEY} bytes")));
        }
        if pusher.to_string().len() > MAX_PUSHER_JSON {
            return Err(Error::invalid_param(format!("a pusher may take at most {MAX_PUSHER_JSON} bytes")));
        }
        match pusher["kind"].as_str() {
            Some("http") => {}
            Some("email") => {
                return Err(Error::invalid_param("email pushers are not supported: this server sends no email"))
            }
            _ => return Err(Error::invalid_param("kind must be \"http\", \"email\" or null")),
        }
        let data = &pusher["data"];
        if let Some(f) = data.get("format") {
            if f != "event_id_only" {
                return Err(Error::invalid_param("data.format may only be \"event_id_only\""));
            }
        }
        let url = data["url"].as_str().ok_or_else(|| Error::missing_param("data.url is required for http pushers"))?;
        let parsed = reqwest::Url::parse(url).map_err(|_| Error::invalid_param("data.url is not a valid URL"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.config.push.allow_http => {}
            _ => return Err(Error::invalid_param("data.url must be an https URL")),
        }
        if parsed.path() != NOTIFY_PATH {
            return Err(Error::invalid_param(format!("data.url must have the path {NOTIFY_PATH}")));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(Error::invalid_param("data.url has no host"));
        }
        Ok(())
    }
}
