//! Per-user data: profile, account data and tags, push rules, pushers, filters, typing and
//! receipts.

use std::time::Duration;

use moss_storage::ReceiptRow;
use ruma::{
    api::{client::filter::FilterDefinition, error::ErrorKind},
    events::TimelineEventType,
    push::{Action, NewPushRule, RuleKind, Ruleset},
    EventId, OwnedRoomId, RoomId, UserId,
};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    now_ms,
    rooms::timeline::NewPdu,
    Moss,
};

pub const PUSH_RULES: &str = "m.push_rules";
pub const IGNORED_USERS: &str = "m.ignored_user_list";

/// The users `user` ignores (`m.ignored_user_list`): their messages and invites are not served.
pub fn ignored_users(
    r: &moss_storage::Reader<'_>,
    user: &str,
) -> crate::error::Result<std::collections::HashSet<String>> {
    let Some(text) = r.account_data(user, "", IGNORED_USERS)? else {
        return Ok(Default::default());
    };
    let v: Value = serde_json::from_str(&text)?;
    Ok(v["ignored_users"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default())
}

impl Moss {
    // ---- profile ----

    pub async fn profile(&self, user: &UserId) -> Result<(Option<String>, Option<String>)> {
        let mut row = self.user(user).await?;
        // A bridge may create users of its namespace on demand.
        if row.is_none() && user.server_name() == self.server_name && self.appservice_user_exists(user).await {
            row = self.user(user).await?;
        }
        let row = row.filter(|u| !u.deactivated).ok_or_else(|| Error::not_found("profile not found"))?;
        Ok((row.displayname, row.avatar_url))
    }

    /// Sets a profile field and carries it into the user's membership in every joined room.
    pub async fn set_profile_field(&self, user: &UserId, field: &str, value: Option<String>) -> Result<()> {
        if value.as_ref().is_some_and(|v| v.len() > 1024) {
            return Err(Error::new(ErrorKind::TooLarge, 400, "profile fields are limited to 1024 bytes"));
        }
        let (u, f, v) = (user.to_string(), field.to_owned(), value.clone());
        let rooms = self
            .db
            .write(move |w| {
                match f.as_str() {
                    "displayname" => w.set_displayname(&u, v.as_deref())?,
                    _ => w.set_avatar_url(&u, v.as_deref())?,
                }
                Ok::<_, Error>(w.rooms_with_membership(&u, "join")?)
            })
            .await?;
        for room in rooms {
            let Ok(room_id) = RoomId::parse(&room) else {
                continue;
            };
            let content = self.member_content(user, "join").await?;
            let new = NewPdu::state(TimelineEventType::RoomMember, user.as_str(), content);
            if let Err(e) = self.append_event(&room_id, user, new, None).await {
                tracing::warn!(%room_id, error = %e, "could not update membership with the new profile");
            }
        }
        Ok(())
    }

    // ---- account data and tags ----

    pub async fn account_data(&self, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Value> {
        let (u, r, k) = (user.to_string(), room.map(|r| r.to_string()).unwrap_or_default(), kind.to_owned());
        let found = self.db.read(move |db| Ok::<_, Error>(db.account_data(&u, &r, &k)?)).await?;
        match found {
            Some(c) => Ok(serde_json::from_str(&c)?),
            None if kind == PUSH_RULES && room.is_none() => Ok(json!({"global": Ruleset::server_default(user)})),
            None => Err(Error::not_found("account data not found")),
        }
    }

    pub async fn set_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::bad_json("account data content must be a JSON object"));
        }
        if kind == "m.fully_read" && room.is_some() {
            return Err(Error::new(ErrorKind::BadJson, 405, "use /read_markers to set m.fully_read"));
        }
        if kind == PUSH_RULES {
            return Err(Error::new(ErrorKind::BadJson, 405, "use the /pushrules API to change push rules"));
        }
        self.write_account_data(user, room, kind, &content).await
    }

    pub(crate) async fn write_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: &Value,
    ) -> Result<()> {
        let text = serde_json::to_string(content)?;
        if text.len() > 1024 * 1024 {
            return Err(Error::too_large("account data is limited to 1 MiB"));
        }
        let (u, r, k) = (user.to_string(), room.map(|r| r.to_string()).unwrap_or_default(), kind.to_owned());
        self.db
            .write(move |w| {
                let s = w.next_stream()?;
                w.set_account_data(&u, &r, &k, &text, s)?;
                Ok::<_, Error>(())
            })
            .await?;
        if kind == IGNORED_USERS || kind == PUSH_RULES {
            self.push.invalidate_rules(user.as_str());
            self.publish(crate::cluster::Signal::PushRules { user: user.to_string() });
        }
        self.notifier.notify([user]);
        Ok(())
    }

    pub async fn tags(&self, user: &UserId, room: &RoomId) -> Result<Value> {
        match self.account_data(user, Some(room), "m.tag").await {
            Ok(v) => Ok(v["tags"].clone()),
            Err(Error::Matrix { kind: ErrorKind::NotFound, .. }) => Ok(json!({})),
            Err(e) => Err(e),
        }
    }

    pub async fn set_tag(&self, user: &UserId, room: &RoomId, tag: &str, info: Option<Value>) -> Result<()> {
        let mut tags = self.tags(user, room).await?;
        if !tags.is_object() {
            tags = json!({});
        }
        match info {
            Some(i) => tags[tag] = i,
            None => {
                tags.as_object_mut().map(|m| m.remove(tag));
            }
        }
        self.write_account_data(user, Some(room), "m.tag", &json!({"tags": tags})).await
    }

    // ---- push rules ----

    pub async fn push_rules(&self, user: &UserId) -> Result<Ruleset> {
        let u = user.to_string();
        let stored = self.db.read(move |r| Ok::<_, Error>(r.account_data(&u, "", PUSH_RULES)?)).await?;
        Ok(crate::push::rules::stored_rules(stored.as_deref(), user))
    }

    async fn save_push_rules(&self, user: &UserId, rules: &Ruleset) -> Result<()> {
        self.write_account_data(user, None, PUSH_RULES, &json!({"global": rules})).await?;
        self.push.invalidate_rules(user.as_str());
        self.publish(crate::cluster::Signal::PushRules { user: user.to_string() });
        Ok(())
    }

    pub async fn put_push_rule(
        &self,
        user: &UserId,
        rule: NewPushRule,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<()> {
        let mut rules = self.push_rules(user).await?;
        rules.insert(rule, after, before).map_err(|e| match e {
            ruma::push::InsertPushRuleError::UnknownRuleId => Error::not_found(e.to_string()),
            e => Error::bad_json(e.to_string()),
        })?;
        check_push_rules(&rules)?;
        self.save_push_rules(user, &rules).await
    }

    pub async fn delete_push_rule(&self, user: &UserId, kind: RuleKind, rule_id: &str) -> Result<()> {
        let mut rules = self.push_rules(user).await?;
        rules.remove(kind, rule_id).map_err(|e| match e {
            ruma::push::RemovePushRuleError::NotFound => Error::not_found("push rule not found"),
            e => Error::bad_json(e.to_string()),
        })?;
        self.save_push_rules(user, &rules).await
    }

    pub async fn set_push_rule_enabled(
        &self,
        user: &UserId,
        kind: RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<()> {
        let mut rules = self.push_rules(user).await?;
        rules.set_enabled(kind, rule_id, enabled).map_err(|_| Error::not_found("push rule not found"))?;
        self.save_push_rules(user, &rules).await
    }

    pub async fn set_push_rule_actions(
        &self,
        user: &UserId,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<()> {
        let mut rules = self.push_rules(user).await?;
        rules.set_actions(kind, rule_id, actions).map_err(|_| Error::not_found("push rule not found"))?;
        self.save_push_rules(user, &rules).await
    }

    // ---- filters ----

    pub async fn create_filter(&self, user: &UserId, filter: &FilterDefinition) -> Result<String> {
        crate::filter::check_filter(filter)?;
        let (u, text) = (user.to_string(), serde_json::to_string(filter)?);
        let id = self.db.write(move |w| Ok::<_, Error>(w.insert_filter(&u, &text)?)).await?;
        Ok(id.to_string())
    }

    pub async fn filter(&self, user: &UserId, filter_id: &str) -> Result<FilterDefinition> {
        let id: i64 = filter_id.parse().map_err(|_| Error::not_found("filter not found"))?;
        let u = user.to_string();
        let text = self.db.read(move |r| Ok::<_, Error>(r.filter(&u, id)?)).await?;
        let text = text.ok_or_else(|| Error::not_found("filter not found"))?;
        serde_json::from_str(&text).map_err(|e| Error::internal(format!("stored filter: {e}")))
    }

    // ---- typing, receipts, read markers ----

    pub async fn set_typing(
        &self,
        user: &UserId,
        room: &RoomId,
        typing: bool,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.require_joined(user, room).await?;
        if typing {
            self.note_user_action(user).await;
        }
        let timeout = typing.then(|| timeout.unwrap_or(Duration::from_secs(30)).min(Duration::from_secs(120)));
        if let Some(change) = self.typing.set(room, user, timeout) {
            self.publish(crate::cluster::Signal::Typing {
                room: room.to_owned(),
                user: user.to_owned(),
                serial: change.serial,
                until_us: change.until_us,
            });
            self.notify_room(room).await;
            let edu = json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": user, "typing": typing}});
            self.send_room_edu(room, edu).await?;
        }
        Ok(())
    }

    /// Queues an EDU for every other server with a member in the room.
    pub(crate) async fn send_room_edu(&self, room: &RoomId, edu: Value) -> Result<()> {
        if self.federation.is_none() {
            return Ok(());
        }
        let (r, us) = (room.to_string(), self.server_name.clone());
        let dests = self
            .db
            .write(move |w| {
                let dests = crate::federation::rooms::remote_servers(w, &r, &us)?;
                crate::federation::sender::queue_edu(w, dests.iter().map(String::as_str), &edu)?;
                Ok::<_, Error>(dests)
            })
            .await?;
        self.wake_destinations(dests.iter().map(String::as_str));
        Ok(())
    }

    /// Records a receipt (`m.read`, `m.read.private`) or the `m.fully_read` marker.
    pub async fn set_receipt(
        &self,
        user: &UserId,
        room: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: Option<String>,
    ) -> Result<()> {
        self.require_joined(user, room).await?;
        let (r, u, e) = (room.to_string(), user.to_string(), event_id.to_string());
        let exists = {
            let (r, e) = (r.clone(), e.clone());
            self.db.read(move |db| Ok::<_, Error>(db.event(&e)?.is_some_and(|row| row.room_id == r))).await?
        };
        if !exists {
            return Err(Error::not_found("event not found in this room"));
        }
        self.note_user_action(user).await;
        if receipt_type == "m.fully_read" {
            return self.write_account_data(user, Some(room), "m.fully_read", &json!({"event_id": event_id})).await;
        }
        if receipt_type != "m.read" && receipt_type != "m.read.private" {
            return Err(Error::invalid_param(format!("unknown receipt type {receipt_type}")));
        }
        let receipt_type = receipt_type.to_owned();
        let thread = thread_id.unwrap_or_default();
        // Public receipts travel to the other servers in the room.
        let edu = (receipt_type == "m.read").then(|| {
            let mut data = json!({"ts": now_ms()});
            if !thread.is_empty() {
                data["thread_id"] = json!(thread);
            }
            json!({"edu_type": "m.receipt", "content": {room.as_str(): {"m.read": {user.as_str(): {
                "event_ids": [event_id], "data": data,
            }}}}})
        });
        self.db
            .write(move |w| {
                let stream = w.next_stream()?;
                w.set_receipt(&ReceiptRow {
                    room_id: r,
                    user_id: u,
                    receipt_type,
                    thread_id: thread,
                    event_id: e,
                    ts: now_ms() as i64,
                    stream,
                })?;
                Ok::<_, Error>(())
            })
            .await?;
        self.push.receipt_moved(user.as_str());
        // The badge goes out from the process running push, which may be another one.
        self.publish(crate::cluster::Signal::Badges { users: vec![user.to_string()] });
        self.notify_room(room).await;
        if let Some(edu) = edu {
            self.send_room_edu(room, edu).await?;
        }
        Ok(())
    }

    pub async fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        let u = user.to_string();
        let rooms = self.db.read(move |r| Ok::<_, Error>(r.rooms_with_membership(&u, "join")?)).await?;
        Ok(rooms.into_iter().filter_map(|r| RoomId::parse(r).ok()).collect())
    }
}

/// Longest glob pattern a push rule may hold, and the most all of a user's rules may take: every pattern is matched
/// against every event in every room of its owner (ruma compiles wildcard patterns to a regex
/// per match, and panics when one outgrows the regex size limit).
pub const MAX_PUSH_PATTERN: usize = 512;
pub const MAX_PUSH_RULES_JSON: usize = 256 * 1024;

/// Refuses a rule set past the limits above (patterns anywhere in it: content rules and
/// `event_match` conditions alike).
fn check_push_rules(rules: &Ruleset) -> Result<()> {
    let v = serde_json::to_value(rules)?;
    if v.to_string().len() > MAX_PUSH_RULES_JSON {
        return Err(Error::invalid_param(format!("push rules may take at most {MAX_PUSH_RULES_JSON} bytes")));
    }
    fn longest_pattern(v: &Value) -> usize {
        match v {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("pattern", Value::String(p)) => p.len(),
                    _ => longest_pattern(v),
                })
                .max()
                .unwrap_or(0),
            Value::Array(a) => a.iter().map(longest_pattern).max().unwrap_or(0),
            _ => 0,
        }
    }
    if longest_pattern(&v) > MAX_PUSH_PATTERN {
        return Err(Error::invalid_param(format!("a push rule pattern may be at most {MAX_PUSH_PATTERN} bytes")));
    }
    Ok(())
}
