//! Push rule evaluation: each user's rules kept parsed in memory, one room context per event,
//! and the event flattened once for all its recipients (ruma's `Ruleset::get_actions` would
//! flatten it again for every member).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use futures_util::FutureExt;
use moss_storage::Reader;
use ruma::{
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset, Tweak},
    serde::Raw,
    OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::Value;

use crate::{error::Result, user_data::PUSH_RULES, Error};

/// What evaluation needs of one user: their rules (server defaults merged in) and whom they ignore.
pub(crate) struct UserPush {
    pub rules: Ruleset,
    pub ignored: HashSet<String>,
    /// Whether an enabled rule uses the legacy `contains_display_name` condition, so the
    /// member's display name has to be looked up (v1.18's defaults never need it).
    pub needs_display_name: bool,
}

/// Parsed push data per user, dropped when their push rules or ignore list change.
#[derive(Default)]
pub struct RulesCache(Mutex<HashMap<String, Arc<UserPush>>>);

/// Users whose parsed rules stay in memory before the cache starts over.
const CACHE_USERS: usize = 100_000;

impl RulesCache {
    pub fn invalidate(&self, user: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(user);
    }

    /// A user's push data, from memory or read (and kept) through `r`.
    pub(crate) fn get(&self, r: &Reader<'_>, user: &UserId) -> Result<Arc<UserPush>> {
        if let Some(p) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(user.as_str()) {
            return Ok(p.clone());
        }
        let loaded = Arc::new(load(r, user)?);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_USERS {
            map.clear();
        }
        map.insert(user.to_string(), loaded.clone());
        Ok(loaded)
    }
}

/// A user's rule set as stored, with the server's current default rules merged in (so rules
/// added to the defaults later apply to old accounts too).
pub(crate) fn stored_rules(stored: Option<&str>, user: &UserId) -> Ruleset {
    let parsed = stored
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|v| serde_json::from_value::<Ruleset>(v.get("global")?.clone()).ok());
    match parsed {
        Some(mut rules) => {
            rules.update_with_server_default(Ruleset::server_default(user));
            rules
        }
        None => Ruleset::server_default(user),
    }
}

fn load(r: &Reader<'_>, user: &UserId) -> Result<UserPush> {
    let rules = stored_rules(r.account_data(user.as_str(), "", PUSH_RULES)?.as_deref(), user);
    let needs_display_name = uses_display_name(&rules);
    Ok(UserPush { rules, ignored: crate::user_data::ignored_users(r, user.as_str())?, needs_display_name })
}

fn uses_display_name(rules: &Ruleset) -> bool {
    let Ok(v) = serde_json::to_value(rules) else { return false };
    ["override", "underride"].iter().filter_map(|kind| v[kind].as_array()).flatten().any(|rule| {
        rule["enabled"] != Value::Bool(false)
            && rule["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["kind"] == "contains_display_name"))
    })
}

/// An event ready to be evaluated for any number of users.
pub(crate) struct PreparedEvent {
    flat: FlattenedJson,
    pub sender: String,
}

impl PreparedEvent {
    /// Flattens a client-format event; `None` if it cannot be (it then notifies no one).
    pub fn new(event: &Value) -> Option<PreparedEvent> {
        let raw = Raw::<Value>::new(event).ok()?;
        let flat = std::panic::catch_unwind(|| FlattenedJson::from_raw(&raw)).ok()?;
        Some(PreparedEvent { flat, sender: event["sender"].as_str().unwrap_or_default().to_owned() })
    }
}

/// The room's side of the evaluation context: member count and power levels (creators
/// included), built once per event; the user and their display name are set per recipient.
pub(crate) fn room_ctx(
    r: &Reader<'_>,
    room_id: &RoomId,
    member_count: u64,
    anyone: OwnedUserId,
) -> Result<PushConditionRoomCtx> {
    let mut ctx = PushConditionRoomCtx::new(
        room_id.to_owned(),
        UInt::new(member_count).unwrap_or_default(),
        anyone,
        String::new(),
    );
    if let Some(info) = crate::rooms::room_info(r, room_id.as_str())? {
        let pl = crate::rooms::power_levels(r, room_id.as_str(), &info.rules)?;
        ctx.power_levels = Some(PushConditionPowerLevelsCtx::from(pl));
    }
    Ok(ctx)
}

/// The member's display name in the room (their localpart without one), for legacy rules.
pub(crate) fn display_name(r: &Reader<'_>, room_id: &str, user: &UserId) -> Result<String> {
    Ok(r.current_state_event(room_id, "m.room.member", user.as_str())?
        .and_then(|row| serde_json::from_str::<Value>(&row.pdu).ok())
        .and_then(|v| v["content"]["displayname"].as_str().map(str::to_owned))
        .unwrap_or_else(|| user.localpart().to_owned()))
}

/// What an event means for one user: `None` unless it notifies them.
#[derive(Debug, Clone)]
pub(crate) struct Notify {
    pub actions: Vec<Action>,
    pub highlight: bool,
}

/// Evaluates `user`'s rules against the event. `ctx` must already name the user (and their
/// display name when their rules need it).
pub(crate) fn evaluate(push: &UserPush, event: &PreparedEvent, ctx: &PushConditionRoomCtx) -> Option<Notify> {
    if event.sender == ctx.user_id.as_str() || push.ignored.contains(&event.sender) {
        return None;
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for rule in push.rules.iter() {
            // Nothing in a rule's evaluation awaits (thread subscriptions, MSC4306, are off).
            if rule.applies(&event.flat, ctx).now_or_never().unwrap_or(false) {
                return Some(rule.actions().to_vec());
            }
        }
        None
    }));
    let actions = outcome.ok().flatten()?;
    if !actions.iter().any(Action::should_notify) {
        return None;
    }
    let highlight = actions.iter().any(Action::is_highlight);
    Some(Notify { actions, highlight })
}

/// The tweaks of a list of actions as the push gateway wants them (`{"sound": "default",
/// "highlight": true}`); `highlight` without a value means true.
pub(crate) fn tweaks(actions: &[Action]) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for a in actions {
        if let Action::SetTweak(t) = a {
            match t {
                Tweak::Highlight(h) => {
                    out.insert("highlight".into(), Value::Bool(*h == ruma::push::HighlightTweakValue::Yes));
                }
                other => {
                    if let Ok(Value::Object(m)) = serde_json::to_value(other) {
                        if let (Some(Value::String(k)), v) = (m.get("set_tweak"), m.get("value")) {
                            out.insert(k.clone(), v.cloned().unwrap_or(Value::Bool(true)));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The thread an event belongs to for counts and receipts: its thread root, or `main`.
pub(crate) fn thread_of(event: &Value) -> String {
    let rel = &event["content"]["m.relates_to"];
    match (rel["rel_type"].as_str(), rel["event_id"].as_str()) {
        (Some("m.thread"), Some(root)) => root.to_owned(),
        _ => MAIN_THREAD.to_owned(),
    }
}

pub(crate) const MAIN_THREAD: &str = "main";

/// Actions as stored: `None` for the usual `["notify"]`.
pub(crate) fn stored_actions(actions: &[Action]) -> Result<Option<String>> {
    if matches!(actions, [Action::Notify]) {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string(actions).map_err(|e| Error::internal(e.to_string()))?))
}

pub(crate) fn parse_actions(stored: Option<&str>) -> Vec<Action> {
    match stored {
        None => vec![Action::Notify],
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| vec![Action::Notify]),
    }
}
