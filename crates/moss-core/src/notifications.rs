//! `GET /notifications`: the events that notified the user (per their push rules), newest first,
//! across the rooms they are in, with whether each was read.
//!
//! Evaluated on request over each room's recent history rather than recorded at send time: push
//! rules can change, and this keeps sends cheap. Only the last `SCAN_PER_ROOM` events of each
//! room before the page are considered.

use moss_storage::Direction;
use ruma::{
    push::{Action, PushConditionRoomCtx, Ruleset},
    serde::Raw,
    RoomId, UInt, UserId,
};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    rooms::read::client_event,
    Moss,
};

const SCAN_PER_ROOM: i64 = 200;

struct Candidate {
    stream: i64,
    room_id: String,
    event: Value,
    read: bool,
    member_count: u64,
    display_name: String,
}

impl Moss {
    pub async fn notifications(
        &self,
        user: &UserId,
        from: Option<String>,
        limit: Option<u64>,
        only_highlight: bool,
    ) -> Result<Value> {
        let before = match &from {
            Some(t) => t
                .strip_prefix('n')
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_param(format!("invalid from token {t:?}")))?,
            None => i64::MAX,
        };
        let limit = limit.unwrap_or(20).clamp(1, 100) as usize;
        let u = user.to_string();
        let candidates = self
            .db
            .read(move |r| {
                let ignored = crate::user_data::ignored_users(r, &u)?;
                let mut out = Vec::new();
                for room in r.rooms_with_membership(&u, "join")? {
                    let joined_at = r.membership(&room, &u)?.map(|m| m.stream).unwrap_or(0);
                    let mut read_up_to = -1;
                    for rc in r.user_receipts(&room, &u)? {
                        if rc.thread_id.is_empty() || rc.thread_id == "main" {
                            if let Some(ev) = r.event(&rc.event_id)? {
                                read_up_to = read_up_to.max(ev.stream);
                            }
                        }
                    }
                    let top = before.saturating_sub(1).min(r.current_stream()?);
                    let rows = r.room_events(&room, top, Some(joined_at), Direction::Backward, SCAN_PER_ROOM)?;
                    let member_count = r.joined_member_count(&room)? as u64;
                    let display_name = r
                        .current_state_event(&room, "m.room.member", &u)?
                        .and_then(|row| serde_json::from_str::<Value>(&row.pdu).ok())
                        .and_then(|v| v["content"]["displayname"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| u.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned());
                    for row in rows {
                        if row.sender == u || ignored.contains(&row.sender) {
                            continue;
                        }
                        out.push(Candidate {
                            stream: row.stream,
                            room_id: room.clone(),
                            event: client_event(&row, &u, None)?,
                            read: row.stream <= read_up_to,
                            member_count,
                            display_name: display_name.clone(),
                        });
                    }
                }
                out.sort_by_key(|n| std::cmp::Reverse(n.stream));
                Ok::<_, Error>(out)
            })
            .await?;

        let rules: Ruleset = self.push_rules(user).await?;
        let mut notifications = Vec::new();
        let mut last = None;
        let mut more = false;
        for c in candidates {
            if notifications.len() == limit {
                more = true;
                break;
            }
            let Ok(room_id) = RoomId::parse(&c.room_id) else { continue };
            let mut ctx = PushConditionRoomCtx::new(
                room_id,
                UInt::new(c.member_count).unwrap_or_default(),
                user.to_owned(),
                c.display_name.clone(),
            );
            ctx.power_levels = None;
            let Ok(raw) = Raw::<Value>::new(&c.event) else { continue };
            let actions = rules.get_actions(&raw, &ctx).await;
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            if only_highlight && !actions.iter().any(Action::is_highlight) {
                continue;
            }
            last = Some(c.stream);
            notifications.push(json!({
                "actions": actions,
                "event": c.event,
                "read": c.read,
                "room_id": c.room_id,
                "ts": c.event["origin_server_ts"],
            }));
        }
        let mut out = json!({ "notifications": notifications });
        if let (true, Some(s)) = (more, last) {
            out["next_token"] = json!(format!("n{s}"));
        }
        Ok(out)
    }
}
