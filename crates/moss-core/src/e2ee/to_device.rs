//! Send-to-device messaging: a durable queue per device, drained by /sync and emptied only when
//! the device acknowledges a later sync token (so a lost response or a restart loses nothing).

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use crate::{
    accounts::Session,
    error::{Error, Result},
    Moss,
};

/// Most messages one request may carry.
const MAX_MESSAGES_PER_REQUEST: usize = 10_000;
/// Largest content of one message, in bytes of JSON.
const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// Where a message goes: one device or all of them (`*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Device(String),
    AllDevices,
}

impl Moss {
    /// `PUT /sendToDevice/{type}/{txnId}`. Messages to unknown users or devices are dropped, as
    /// the spec says; a repeated transaction id is acknowledged without sending again.
    pub async fn send_to_device(
        &self,
        session: &Session,
        kind: &str,
        txn_id: &str,
        messages: BTreeMap<OwnedUserId, BTreeMap<Target, Value>>,
    ) -> Result<()> {
        if messages.values().map(BTreeMap::len).sum::<usize>() > MAX_MESSAGES_PER_REQUEST {
            return Err(Error::invalid_param(format!("at most {MAX_MESSAGES_PER_REQUEST} messages per request")));
        }
        let mut encoded = Vec::new();
        // Messages for other servers' users travel as one m.direct_to_device EDU per server.
        let mut remote: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
        for (user, targets) in messages {
            if user.server_name() != self.server_name {
                if self.federation.is_none() {
                    continue;
                }
                let mut per_device = serde_json::Map::new();
                for (target, content) in targets {
                    if !content.is_object() {
                        return Err(Error::bad_json("each to-device message must be a JSON object"));
                    }
                    let key = match target {
                        Target::AllDevices => "*".to_owned(),
                        Target::Device(d) => d,
                    };
                    per_device.insert(key, content);
                }
                remote
                    .entry(user.server_name().to_string())
                    .or_default()
                    .insert(user.to_string(), Value::Object(per_device));
                continue;
            }
            for (target, content) in targets {
                if !content.is_object() {
                    return Err(Error::bad_json("each to-device message must be a JSON object"));
                }
                let text = serde_json::to_string(&content)?;
                if text.len() > MAX_CONTENT_BYTES {
                    return Err(Error::too_large(format!(
                        "a to-device message is larger than {MAX_CONTENT_BYTES} bytes"
                    )));
                }
                encoded.push((user.clone(), target, text));
            }
        }
        let (sender, sender_device) = (session.user_id.to_string(), session.device_id.to_string());
        let (kind, txn_id) = (kind.to_owned(), txn_id.to_owned());
        let recipients = self
            .db
            .write(move |w| {
                let mut recipients = Vec::new();
                if !w.record_to_device_txn(&sender, &sender_device, &txn_id)? {
                    return Ok::<_, Error>((recipients, vec![]));
                }
                let mut servers = Vec::new();
                for (server, msgs) in remote {
                    let edu = serde_json::json!({"edu_type": "m.direct_to_device", "content": {
                        "sender": sender, "type": kind,
                        "message_id": format!("{sender_device}-{txn_id}-{server}"),
                        "messages": msgs,
                    }});
                    crate::federation::sender::queue_edu(w, [server.as_str()], &edu)?;
                    servers.push(server);
                }
                for (user, target, content) in encoded {
                    let devices: Vec<String> = match target {
                        Target::AllDevices => w.devices(user.as_str())?.into_iter().map(|d| d.device_id).collect(),
                        Target::Device(d) => w.device(user.as_str(), &d)?.map(|d| d.device_id).into_iter().collect(),
                    };
                    for device in devices {
                        // One stream position per message: sync may stop a batch after any one.
                        let stream = w.next_stream()?;
                        w.queue_to_device(stream, user.as_str(), &device, &sender, &kind, &content)?;
                    }
                    recipients.push(user);
                }
                Ok((recipients, servers))
            })
            .await?;
        let (recipients, servers) = recipients;
        self.wake_destinations(servers.iter().map(String::as_str));
        self.notifier.notify(recipients.iter().map(|u| -> &UserId { u }));
        Ok(())
    }

    /// To-device messages another server sent to our users (`m.direct_to_device`); each entry is
    /// a device id (`None` for all devices) and the message content as JSON text.
    pub(crate) async fn deliver_remote_to_device(
        &self,
        sender: &UserId,
        kind: &str,
        messages: BTreeMap<String, Vec<(Option<String>, String)>>,
    ) -> Result<()> {
        let (sender, kind, us) = (sender.to_string(), kind.to_owned(), self.server_name.clone());
        let recipients = self
            .db
            .write(move |w| {
                let mut recipients = Vec::new();
                for (user, targets) in messages {
                    let Ok(uid) = UserId::parse(&user) else { continue };
                    if uid.server_name() != us {
                        continue;
                    }
                    for (target, content) in targets {
                        if content.len() > MAX_CONTENT_BYTES {
                            continue;
                        }
                        let devices: Vec<String> = match target {
                            None => w.devices(&user)?.into_iter().map(|d| d.device_id).collect(),
                            Some(d) => w.device(&user, &d)?.map(|d| d.device_id).into_iter().collect(),
                        };
                        for device in devices {
                            let stream = w.next_stream()?;
                            w.queue_to_device(stream, &user, &device, &sender, &kind, &content)?;
                        }
                    }
                    recipients.push(uid);
                }
                Ok::<_, Error>(recipients)
            })
            .await?;
        self.notifier.notify(recipients.iter().map(|u| -> &UserId { u }));
        Ok(())
    }
}

impl Moss {
    /// Deletes the device's messages up to `upto`, which a sync token it sent back acknowledged.
    pub(crate) async fn ack_to_device(&self, session: &Session, upto: i64) -> Result<()> {
        let (u, d) = (session.user_id.to_string(), session.device_id.to_string());
        let (u2, d2) = (u.clone(), d.clone());
        // Most syncs acknowledge nothing: check on a reader before taking the write lock.
        let first_is_acked = self
            .db
            .read(move |r| {
                Ok::<_, Error>(r.to_device_messages(&u2, &d2, -1, 1)?.first().is_some_and(|m| m.stream <= upto))
            })
            .await?;
        if first_is_acked {
            self.db.write(move |w| Ok::<_, Error>(w.ack_to_device(&u, &d, upto)?)).await?;
        }
        Ok(())
    }
}
