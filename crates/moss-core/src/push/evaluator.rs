//! The push evaluator: one background task that walks every room event after its watermark (local
//! sends and federation alike, in stream order), evaluates each local recipient's push rules
//! and records the notifying ones in `push_actions`, moving the watermark in the same
//! transaction. Nothing of this runs on the sender's request; sync counts events above the
//! watermark itself (`counts.rs`), so a count still arrives with its event.
//!
//! Cost per event: one read of the room's joined members and power levels (shared by the
//! events of a batch in the same room), then pure CPU per member: rules come from the in-memory
//! cache, the event is flattened once. No per-member database round trip, except the display
//! name for users whose own rules still use the legacy `contains_display_name` condition.

use std::{collections::HashMap, sync::Arc, time::Duration};

use moss_storage::{PushActionRow, Reader};
use ruma::{push::PushConditionRoomCtx, OwnedUserId, RoomId, UserId};

use super::rules::{display_name, evaluate, room_ctx, stored_actions, thread_of, PreparedEvent};
use crate::{error::Result, now_ms, rooms::read::client_event, Error, Moss};

/// Events evaluated per transaction.
const BATCH: i64 = 200;

/// One batch's outcome.
struct Evaluated {
    rows: Vec<PushActionRow>,
    upto: i64,
}

struct RoomMembers {
    /// Local joined members with the stream of their join.
    local: Vec<(OwnedUserId, i64)>,
    ctx: PushConditionRoomCtx,
}

impl Moss {
    /// Runs the evaluator until shutdown: on every wake-up (new events) and every few seconds.
    pub(crate) fn spawn_push_evaluator(self: &Arc<Self>) {
        let moss = Arc::downgrade(self);
        let wake = self.push.evaluate.clone();
        tokio::spawn(async move {
            loop {
                let Some(m) = moss.upgrade() else { break };
                match m.evaluate_pending().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::warn!("push evaluation: {e}"),
                }
                drop(m);
                let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
            }
        });
    }

    /// Evaluates one batch of events after the watermark; true if there may be more.
    pub(crate) async fn evaluate_pending(&self) -> Result<bool> {
        let cache = self.push.rules.clone();
        let server = self.server_name.clone();
        let batch = self
            .db
            .read(move |r| {
                let upto = r.push_evaluated_upto()?;
                let events = r.events_after(upto, BATCH)?;
                let Some(last) = events.last().map(|e| e.stream) else {
                    // Everything up to the snapshot's position is evaluated.
                    return Ok::<_, Error>(Err(r.current_stream()?.max(upto)));
                };
                let mut rows = Vec::new();
                let mut rooms: HashMap<String, RoomMembers> = HashMap::new();
                for row in &events {
                    if row.redacted_by.is_some() {
                        continue;
                    }
                    let Ok(room_id) = RoomId::parse(&row.room_id) else { continue };
                    let Ok(sender) = UserId::parse(&row.sender) else { continue };
                    let members = match rooms.get_mut(row.room_id.as_str()) {
                        Some(m) => m,
                        None => {
                            let m = room_members(r, &room_id, &server, &sender)?;
                            rooms.entry(row.room_id.clone()).or_insert(m)
                        }
                    };
                    // Membership events concern their target only (Synapse does the same): the
                    // default rules never notify anyone else of them, and an invitee is not yet
                    // among the joined members.
                    let recipients: Vec<OwnedUserId> = if row.kind == "m.room.member" {
                        match row.state_key.as_deref().map(UserId::parse) {
                            Some(Ok(t)) if t.server_name() == server && t != sender => vec![t],
                            _ => vec![],
                        }
                    } else {
                        members
                            .local
                            .iter()
                            .filter(|(u, joined)| *joined < row.stream && *u != sender)
                            .map(|(u, _)| u.clone())
                            .collect()
                    };
                    if recipients.is_empty() {
                        continue;
                    }
                    let event = client_event(row, row.sender.as_str(), None)?;
                    let Some(prepared) = PreparedEvent::new(&event) else { continue };
                    let thread = thread_of(&event);
                    for user in recipients {
                        let push = cache.get(r, &user)?;
                        members.ctx.user_id = user.clone();
                        members.ctx.user_display_name =
                            if push.needs_display_name { display_name(r, &row.room_id, &user)? } else { String::new() };
                        if let Some(n) = evaluate(&push, &prepared, &members.ctx) {
                            rows.push(PushActionRow {
                                user_id: user.to_string(),
                                room_id: row.room_id.clone(),
                                stream: row.stream,
                                event_id: row.event_id.clone(),
                                thread_id: thread.clone(),
                                highlight: n.highlight,
                                actions: stored_actions(&n.actions)?,
                                ts: now_ms() as i64,
                            });
                        }
                    }
                    // A state change may change the members or power levels of later events.
                    if row.state_key.is_some() {
                        rooms.remove(row.room_id.as_str());
                    }
                }
                Ok(Ok(Evaluated { rows, upto: last }))
            })
            .await?;
        let Evaluated { rows, upto } = match batch {
            Ok(b) => b,
            Err(upto) => {
                self.push.evaluated.send_if_modified(|e| std::mem::replace(e, upto) != upto);
                return Ok(false);
            }
        };
        let users: Vec<String> = {
            let mut u: Vec<String> = rows.iter().map(|r| r.user_id.clone()).collect();
            u.sort();
            u.dedup();
            u
        };
        // Derived data: after a power loss the evaluator redoes what was lost from its durable
        // watermark (pushes may then go out twice), so its commits need not wait for the disk.
        self.db
            .write_relaxed(move |w| {
                for row in &rows {
                    w.insert_push_action(row)?;
                }
                w.set_push_evaluated_upto(upto)?;
                Ok::<_, Error>(())
            })
            .await?;
        self.push.evaluated.send_if_modified(|e| std::mem::replace(e, upto) != upto);
        self.push.wake_pushers(users);
        Ok(true)
    }
}

/// Records the push of an invite that arrived over federation for a room this server is not in
/// (it never enters the events table, so the evaluator does not see it). Returns whether it
/// notifies.
pub(crate) fn evaluate_remote_invite(
    w: &moss_storage::Writer<'_>,
    rules: &super::RulesCache,
    room_id: &RoomId,
    invitee: &UserId,
    event: &serde_json::Value,
    stream: i64,
) -> Result<bool> {
    let Some(prepared) = PreparedEvent::new(event) else { return Ok(false) };
    let push = rules.get(w, invitee)?;
    let ctx = PushConditionRoomCtx::new(room_id.to_owned(), ruma::UInt::MIN, invitee.to_owned(), String::new());
    let Some(n) = evaluate(&push, &prepared, &ctx) else { return Ok(false) };
    w.insert_push_action(&PushActionRow {
        user_id: invitee.to_string(),
        room_id: room_id.to_string(),
        stream,
        event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
        thread_id: super::rules::MAIN_THREAD.to_owned(),
        highlight: n.highlight,
        actions: stored_actions(&n.actions)?,
        ts: now_ms() as i64,
    })?;
    Ok(true)
}

fn room_members(r: &Reader<'_>, room_id: &RoomId, server: &ruma::ServerName, anyone: &UserId) -> Result<RoomMembers> {
    let joined = r.joined_members_since(room_id.as_str())?;
    let count = joined.len() as u64;
    let local = joined
        .into_iter()
        .filter_map(|(u, s)| UserId::parse(u).ok().filter(|u| u.server_name() == server).map(|u| (u, s)))
        .collect();
    Ok(RoomMembers { local, ctx: room_ctx(r, room_id, count, anyone.to_owned())? })
}
