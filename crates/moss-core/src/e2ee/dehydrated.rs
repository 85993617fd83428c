//! Dehydrated devices (MSC3814, as Element and matrix-rust-sdk ship it): one encrypted device per
//! user, parked on the server, that keeps receiving to-device messages (room keys) while all of
//! the user's clients are offline. A new client fetches it, decrypts the pickle with a key only the
//! user has, drains its messages and replaces it.

use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, UserId};
use serde_json::{json, Value};

use super::device_keys::check_device_keys;
use crate::{
    accounts::Session,
    error::{Error, Result},
    now_ms, Moss,
};

/// Most to-device messages one `events` call returns.
const EVENTS_BATCH: i64 = 100;

impl Moss {
    /// `PUT …/dehydrated_device`: replaces the user's dehydrated device with a new one and
    /// publishes its keys.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_dehydrated_device(
        &self,
        user: &UserId,
        device_id: OwnedDeviceId,
        display_name: Option<String>,
        device_data: Value,
        device_keys: Value,
        one_time_keys: BTreeMap<String, Value>,
        fallback_keys: BTreeMap<String, Value>,
    ) -> Result<()> {
        if !device_data.is_object() || serde_json::to_vec(&device_data)?.len() > 256 * 1024 {
            return Err(Error::bad_json("device_data must be an object of at most 256 KiB"));
        }
        let device = Session {
            user_id: user.to_owned(),
            device_id: device_id.clone(),
            access_token: String::new(),
            appservice: None,
        };
        check_device_keys(&device, &device_keys)?;
        let (u, d, data) = (user.to_string(), device_id.to_string(), serde_json::to_string(&device_data)?);
        self.db
            .write(move |w| {
                let old = w.dehydrated_device(&u)?.map(|(id, _)| id);
                if old.as_deref() != Some(d.as_str()) && w.device(&u, &d)?.is_some() {
                    return Err(Error::invalid_param("that device id belongs to one of your devices"));
                }
                if let Some(old) = old.filter(|o| *o != d) {
                    w.delete_device(&u, &old)?;
                }
                w.upsert_device(&u, &d, display_name.as_deref(), now_ms() as i64, None)?;
                w.set_dehydrated_device(&u, &d, &data)?;
                Ok(())
            })
            .await?;
        self.upload_keys(&device, Some(device_keys), one_time_keys, fallback_keys).await?;
        Ok(())
    }

    /// `GET …/dehydrated_device`: `(device id, device data)`.
    pub async fn get_dehydrated_device(&self, user: &UserId) -> Result<(String, Value)> {
        let u = user.to_string();
        let (id, data) = self
            .db
            .read(move |r| Ok::<_, Error>(r.dehydrated_device(&u)?))
            .await?
            .ok_or_else(|| Error::not_found("no dehydrated device"))?;
        Ok((id, serde_json::from_str(&data)?))
    }

    /// `DELETE …/dehydrated_device`: returns the id of the device removed.
    pub async fn delete_dehydrated_device(&self, user: &UserId) -> Result<String> {
        let u = user.to_string();
        let id = self
            .db
            .write(move |w| {
                let (id, _) = w.dehydrated_device(&u)?.ok_or_else(|| Error::not_found("no dehydrated device"))?;
                w.delete_device(&u, &id)?;
                w.delete_dehydrated_device(&u)?;
                Ok::<_, Error>(id)
            })
            .await?;
        self.notify_sharing_users(user).await;
        Ok(id)
    }

    /// `POST …/dehydrated_device/{deviceId}/events`: the device's to-device messages after
    /// `next_batch`, deleting those the token acknowledges. Returns the events and the next token.
    pub async fn dehydrated_device_events(
        &self,
        user: &UserId,
        device_id: &str,
        next_batch: Option<String>,
    ) -> Result<(Vec<Value>, String)> {
        let after = match &next_batch {
            Some(t) => t
                .strip_prefix('d')
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_param(format!("invalid next_batch {t:?}")))?,
            None => -1,
        };
        let (u, d) = (user.to_string(), device_id.to_owned());
        self.db
            .write(move |w| {
                if w.dehydrated_device(&u)?.map(|(id, _)| id).as_deref() != Some(d.as_str()) {
                    return Err(Error::forbidden("that is not your dehydrated device"));
                }
                w.ack_to_device(&u, &d, after)?;
                let messages = w.to_device_messages(&u, &d, after, EVENTS_BATCH)?;
                let next = messages.last().map(|m| m.stream).unwrap_or(after.max(0));
                let events = messages
                    .iter()
                    .map(|m| {
                        Ok(json!({"sender": m.sender, "type": m.kind, "content": serde_json::from_str::<Value>(&m.content)?}))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((events, format!("d{next}")))
            })
            .await
    }
}
