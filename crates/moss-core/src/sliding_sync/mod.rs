//! Simplified sliding sync (MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`),
//! what Element X and every client on matrix-rust-sdk's UI crate sync with.
//!
//! Entry point: [`Moss::sliding_sync`]. One request:
//! 1. resumes the connection's snapshot at `pos` ([`connections`]; unknown → `M_UNKNOWN_POS`);
//! 2. lists every room the user may see, filters and orders it per list by bump stamp and
//!    windows it by the list's ranges ([`lists`]); room subscriptions add rooms by id;
//! 3. builds each windowed or subscribed room that is new to the connection or changed since it
//!    was last sent ([`room`]), with the union of the `required_state` and the largest
//!    `timeline_limit` asking for it ([`required`]);
//! 4. adds the extensions ([`extensions`]), then stores the new snapshot under a new `pos`.
//!
//! An incremental request with nothing new waits (long-polls) on the same per-user wake-up as
//! `/sync` until something arrives or `timeout` passes. Everything but typing is read in one
//! database snapshot, at one stream position.

pub mod connections;
mod extensions;
mod lists;
mod required;
mod room;
pub mod wire;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use moss_storage::Reader;
use ruma::{
    api::client::sync::sync_events::v5::{self, request},
    OwnedRoomId, RoomId, UserId,
};

use connections::ConnState;
pub use connections::Connections;
use extensions::enabled;
use lists::{Candidate, SpaceChildren};
use required::RequiredState;
use room::RoomConfig;

use crate::{accounts::Session, error::Error, sync::SyncToken, Moss, Result};

/// Most room subscriptions one request may carry, and the longest `conn_id` and `txn_id`.
pub const MAX_SUBSCRIPTIONS: usize = 512;
const MAX_ID_LEN: usize = 64;
const MAX_TXN_ID_LEN: usize = 256;

pub struct SlidingRequest {
    pub body: v5::Request,
    /// Each list's `filters.spaces` (ruma 0.17's `ListFilters` has no field for it).
    pub list_spaces: BTreeMap<String, Vec<String>>,
}

impl SlidingRequest {
    fn check(&self) -> Result<()> {
        let b = &self.body;
        let bad = |m: String| Err(Error::invalid_param(m));
        if b.conn_id.as_ref().is_some_and(|c| c.len() > MAX_ID_LEN) {
            return bad(format!("conn_id is longer than {MAX_ID_LEN} bytes"));
        }
        if b.txn_id.as_ref().is_some_and(|t| t.len() > MAX_TXN_ID_LEN) {
            return bad(format!("txn_id is longer than {MAX_TXN_ID_LEN} bytes"));
        }
        if b.lists.len() > lists::MAX_LISTS {
            return bad(format!("more than {} lists", lists::MAX_LISTS));
        }
        if b.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
            return bad(format!("more than {MAX_SUBSCRIPTIONS} room subscriptions"));
        }
        for (name, list) in &b.lists {
            if name.len() > MAX_ID_LEN {
                return bad(format!("list name longer than {MAX_ID_LEN} bytes"));
            }
            if list.ranges.len() > lists::MAX_RANGES {
                return bad(format!("list {name:?} has more than {} ranges", lists::MAX_RANGES));
            }
            if list.ranges.iter().any(|(s, e)| s > e) {
                return bad(format!("list {name:?} has a range whose start is after its end"));
            }
            if list.room_details.required_state.len() > required::MAX_ENTRIES {
                return bad(format!("list {name:?} has more than {} required_state entries", required::MAX_ENTRIES));
            }
        }
        for (room, sub) in &b.room_subscriptions {
            if sub.required_state.len() > required::MAX_ENTRIES {
                return bad(format!(
                    "subscription to {room} has more than {} required_state entries",
                    required::MAX_ENTRIES
                ));
            }
        }
        if self.list_spaces.values().any(|s| s.len() > MAX_SUBSCRIPTIONS) {
            return bad(format!("a spaces filter names more than {MAX_SUBSCRIPTIONS} spaces"));
        }
        Ok(())
    }
}

/// The extensions in force: those the request names, and for those it leaves out, what the
/// connection last asked (to-device then continues where the last response left it).
fn sticky(asked: &request::Extensions, prev: &ConnState) -> request::Extensions {
    let last = &prev.extensions;
    let mut e = asked.clone();
    if e.to_device.is_empty() {
        e.to_device = last.to_device.clone();
        if prev.to_device_next.is_some() {
            e.to_device.since = prev.to_device_next.clone();
        }
    }
    if e.e2ee.is_empty() {
        e.e2ee = last.e2ee.clone();
    }
    if e.account_data.is_empty() {
        e.account_data = last.account_data.clone();
    }
    if e.receipts.is_empty() {
        e.receipts = last.receipts.clone();
    }
    if e.typing.is_empty() {
        e.typing = last.typing.clone();
    }
    e
}

struct Output {
    response: wire::Response,
    state: ConnState,
    /// Joined rooms the typing extension covers, and whether each was sent whole.
    typing_rooms: Vec<(OwnedRoomId, bool)>,
}

impl Moss {
    pub async fn sliding_sync(&self, session: &Session, req: SlidingRequest) -> Result<wire::Response> {
        req.check()?;
        let conn_id = req.body.conn_id.clone().unwrap_or_default();
        let continued = req.body.pos.is_some();
        let prev = self.sliding_resume(&session.user_id, &session.device_id, &conn_id, req.body.pos.as_deref()).await?;
        let ext = sticky(&req.body.extensions, &prev);
        let timeout = req.body.timeout.unwrap_or(Duration::ZERO);
        let deadline =
            tokio::time::Instant::now() + timeout.min(Duration::from_millis(self.config.http.max_sync_timeout_ms));
        let mut rx = self.notifier.subscribe(&session.user_id);
        let mut shutdown = self.shutdown_signal();
        if enabled(ext.to_device.enabled) {
            let since = extensions::to_device_since(&ext.to_device);
            if since >= 0 {
                self.ack_to_device(session, since).await?;
            }
        }
        let _connected = self.note_sync_presence(&session.user_id, req.body.set_presence.as_str()).await?;
        let req = Arc::new(req);
        let ext = Arc::new(ext);
        loop {
            rx.borrow_and_update();
            let typing_serial = self.typing.serial();
            let (user, device) = (session.user_id.clone(), session.device_id.to_string());
            let (req2, prev2, ext2, rules) = (req.clone(), prev.clone(), ext.clone(), self.push.rules.clone());
            let mut out = self.db.read(move |r| build(r, &user, &device, &req2, &prev2, &ext2, &rules)).await?;
            if enabled(ext.typing.enabled) {
                out.response.extensions.typing = Some(self.typing_extension(&out.typing_rooms, &prev));
            }
            let stream = out.state.token.map_or(0, |t| t.stream);
            out.state.token = Some(SyncToken { stream, typing: typing_serial, to_device: stream });
            let news = !out.response.rooms.is_empty()
                || !out.response.extensions.is_news_free()
                || out.state.lists != prev.lists;
            let done =
                prev.token.is_none() || news || tokio::time::Instant::now() >= deadline || self.is_shutting_down();
            if done {
                out.state.to_device_next = out.response.extensions.to_device.as_ref().map(|t| t.next_batch.clone());
                out.response.pos =
                    self.sliding_store(&session.user_id, &session.device_id, &conn_id, continued, out.state).await?;
                out.response.txn_id = req.body.txn_id.clone();
                return Ok(out.response);
            }
            let _waiting = self.metrics.waiting();
            tokio::select! {
                _ = rx.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn typing_extension(&self, rooms: &[(OwnedRoomId, bool)], prev: &ConnState) -> wire::Typing {
        let since = prev.token.map(|t| t.typing);
        let mut out = wire::Typing::default();
        for (room, initial) in rooms {
            let users = match since {
                Some(s) if !initial => self.typing.changed_since(room, s),
                _ => self.typing.changed_since(room, 0).filter(|u| !u.is_empty()),
            };
            if let Some(user_ids) = users {
                out.rooms.insert(
                    room.clone(),
                    wire::TypingEvent { kind: "m.typing", content: wire::TypingContent { user_ids } },
                );
            }
        }
        out
    }
}

fn build(
    r: &Reader<'_>,
    user: &UserId,
    device: &str,
    req: &SlidingRequest,
    prev: &ConnState,
    ext: &request::Extensions,
    rules: &crate::push::RulesCache,
) -> Result<Output> {
    let u = user.as_str();
    let current = r.current_stream()?;
    let from = prev.token.map(|t| t.stream);
    let candidates = lists::candidates(r, user, from)?;
    let by_id: HashMap<&RoomId, &Candidate> = candidates.iter().map(|c| (&*c.room_id, c)).collect();

    // Lists: filter, order (candidates come sorted), window.
    let mut configs: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
    let mut windows: BTreeMap<String, Vec<OwnedRoomId>> = BTreeMap::new();
    let mut lists_out = BTreeMap::new();
    let mut spaces = SpaceChildren::default();
    for (name, list) in &req.body.lists {
        let cfg = RoomConfig {
            timeline_limit: u64::from(list.room_details.timeline_limit).min(room::MAX_TIMELINE_LIMIT),
            required: Arc::new(RequiredState::new(&list.room_details.required_state, user)),
        };
        let in_spaces = req.list_spaces.get(name).map(Vec::as_slice);
        let mut filtered: Vec<&Candidate> = Vec::new();
        for c in &candidates {
            let pass = match &list.filters {
                Some(f) => lists::passes(r, c, f, in_spaces, &mut spaces)?,
                None => true,
            };
            if pass {
                filtered.push(c);
            }
        }
        let count = filtered.len() as u64;
        let mut ops = Vec::new();
        let mut window = Vec::new();
        for (start, end) in &list.ranges {
            let (s, e) = (u64::from(*start), u64::from(*end));
            let mut ids = Vec::new();
            if s < count {
                for c in &filtered[s as usize..=(e.min(count - 1) as usize)] {
                    ids.push(c.room_id.clone());
                    configs.entry(c.room_id.clone()).and_modify(|x| x.merge(&cfg)).or_insert_with(|| cfg.clone());
                }
            }
            window.extend(ids.iter().cloned());
            ops.push(wire::ListOp { op: wire::ListOpKind::Sync, range: (s, e), room_ids: ids });
        }
        windows.insert(name.clone(), window);
        lists_out.insert(name.clone(), wire::List { count, ops });
    }
    // Subscriptions: rooms by id, if the user may see them.
    let mut subscribed = Vec::new();
    for (room_id, sub) in &req.body.room_subscriptions {
        if !by_id.contains_key(&**room_id) {
            continue;
        }
        let cfg = RoomConfig {
            timeline_limit: u64::from(sub.timeline_limit).min(room::MAX_TIMELINE_LIMIT),
            required: Arc::new(RequiredState::new(&sub.required_state, user)),
        };
        configs.entry(room_id.clone()).and_modify(|x| x.merge(&cfg)).or_insert(cfg);
        subscribed.push(room_id.clone());
    }

    // Rooms.
    let ignored = crate::user_data::ignored_users(r, u)?;
    let (rooms_with_events, rooms_with_own_receipts) = match from {
        Some(f) => (r.rooms_with_events_after(f)?, r.rooms_with_own_receipts_after(u, f)?),
        None => Default::default(),
    };
    let ctx = room::Ctx {
        r,
        user,
        device,
        from,
        current,
        counts_at: crate::push::counts::CountsAt::read(r, current)?,
        rules,
        ignored: &ignored,
        rooms_with_events: &rooms_with_events,
        rooms_with_own_receipts: &rooms_with_own_receipts,
    };
    let mut state = ConnState {
        token: Some(SyncToken { stream: current, typing: 0, to_device: current }),
        rooms: prev.rooms.clone(),
        lists: lists_out.clone(),
        extensions: ext.clone(),
        to_device_next: None,
    };
    let mut rooms_out = BTreeMap::new();
    let mut initial_rooms = HashSet::new();
    let mut timeline_ids = HashMap::new();
    for (room_id, cfg) in &configs {
        let Some(c) = by_id.get(&**room_id) else { continue };
        let built = room::build(&ctx, c, cfg, prev.rooms.get(room_id))?;
        state.rooms.insert(room_id.clone(), built.sent);
        if let Some(room) = built.room {
            if built.initial {
                initial_rooms.insert(room_id.clone());
            }
            timeline_ids.insert(room_id.clone(), built.timeline_ids);
            rooms_out.insert(room_id.clone(), room);
        }
    }

    // Extensions.
    let visible = |id: &OwnedRoomId| by_id.contains_key(&**id);
    let not_invited =
        |id: &OwnedRoomId| by_id.get(&**id).is_some_and(|c| !matches!(c.membership(), "invite" | "knock"));
    let mut extensions = wire::Extensions::default();
    if enabled(ext.to_device.enabled) {
        extensions.to_device = Some(extensions::to_device(r, u, device, &ext.to_device, current)?);
    }
    if enabled(ext.e2ee.enabled) {
        extensions.e2ee = Some(extensions::e2ee(r, u, device, from, current)?);
    }
    if enabled(ext.account_data.enabled) {
        let scope = extensions::scope(
            ext.account_data.lists.as_ref(),
            ext.account_data.rooms.as_ref(),
            &windows,
            &subscribed,
            &visible,
        );
        extensions.account_data = Some(extensions::account_data(r, user, from, &scope, &initial_rooms)?);
    }
    if enabled(ext.receipts.enabled) {
        let scope: Vec<(OwnedRoomId, bool)> = extensions::scope(
            ext.receipts.lists.as_ref(),
            ext.receipts.rooms.as_ref(),
            &windows,
            &subscribed,
            &visible,
        )
        .into_iter()
        .filter(|id| not_invited(id))
        .map(|id| {
            let initial = initial_rooms.contains(&id);
            (id, initial)
        })
        .collect();
        extensions.receipts = Some(extensions::receipts(r, u, from, &scope, &timeline_ids)?);
    }
    let typing_rooms = if enabled(ext.typing.enabled) {
        extensions::scope(ext.typing.lists.as_ref(), ext.typing.rooms.as_ref(), &windows, &subscribed, &visible)
            .into_iter()
            .filter(|id| by_id.get(&**id).is_some_and(|c| c.membership() == "join"))
            .map(|id| {
                let initial = initial_rooms.contains(&id);
                (id, initial)
            })
            .collect()
    } else {
        vec![]
    };

    Ok(Output {
        response: wire::Response { txn_id: None, pos: String::new(), lists: lists_out, rooms: rooms_out, extensions },
        state,
        typing_rooms,
    })
}
