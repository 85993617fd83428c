//! Inbound transactions (`PUT /send/{txnId}`): PDUs go through the receipt checks and into their
//! rooms, filling gaps from the sending server first; EDUs (typing, receipts, presence, to-device
//! messages, device-list changes) go where the client-server API expects them.
//! A transaction is processed once: a retry gets the first answer back.

use std::{collections::BTreeMap, time::Duration};

use moss_storage::{PresenceRow, ReceiptRow, StateMap};
use ruma::{OwnedUserId, RoomId, RoomVersionId, ServerName, UserId};
use serde_json::{json, Map, Value};

use super::query::urlencode;
use crate::{
    error::{Error, Result},
    now_ms,
    rooms::{
        external::{accept_prepared, check_auth_events_only, prepare, room_of, Outcome, Place, VerifiedPdu},
        timeline::load_pdu,
    },
    Moss,
};

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// Longest spent fetching what one event lacks before accepting it with what we have.
const GAP_FILL_BUDGET: Duration = Duration::from_secs(20);
/// Most state and auth events fetched one by one to bridge a gap.
const MAX_GAP_EVENTS: usize = 500;
/// How many missing events one gap may pull in before we stop asking.
const MISSING_EVENTS_LIMIT: u64 = 20;
/// Longest one inbound transaction is worked on (gap filling, auth, state resolution). Past it
/// the rest waits: the sender is told to come back (the events already taken in are known
/// then), so one transaction cannot hold the writer, or its sender's request, for long.
const TXN_BUDGET: Duration = Duration::from_secs(40);

impl Moss {
    pub async fn receive_transaction(&self, origin: &ServerName, txn_id: &str, body: Value) -> Result<Value> {
        let (o, t) = (origin.to_string(), txn_id.to_owned());
        if let Some(done) = self.db.read(move |r| Ok::<_, Error>(r.inbound_txn(&o, &t)?)).await? {
            return Ok(serde_json::from_str(&done)?);
        }
        let pdus = body["pdus"].as_array().cloned().unwrap_or_default();
        let edus = body["edus"].as_array().cloned().unwrap_or_default();
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::bad_json(format!("a transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")));
        }
        if body["origin"].as_str().is_some_and(|o| o != origin.as_str()) {
            return Err(Error::forbidden("the transaction's origin is not the signing server"));
        }
        let mut results = Map::new();
        let started = std::time::Instant::now();
        for raw in pdus {
            if started.elapsed() > TXN_BUDGET {
                tracing::info!(%origin, txn_id, "transaction took too long; the sender will send the rest again");
                return Err(Error::new(
                    ruma::api::error::ErrorKind::Unknown,
                    503,
                    "this transaction took too long to process; send it again",
                ));
            }
            let room = raw["room_id"].as_str().unwrap_or_default().to_owned();
            let outcome = self.receive_pdu(origin, &room, &raw, true).await;
            let id = match &outcome {
                Ok(id) => id.clone(),
                Err((id, _)) => id.clone(),
            };
            let Some(id) = id else { continue };
            results.insert(
                id,
                match outcome {
                    Ok(_) => json!({}),
                    Err((_, e)) => json!({"error": e.to_string()}),
                },
            );
        }
        for edu in edus {
            if let Err(e) = self.receive_edu(origin, &edu).await {
                tracing::debug!(%origin, error = %e, "ignoring an EDU");
            }
        }
        let answer = json!({"pdus": results});
        let (o, t, text) = (origin.to_string(), txn_id.to_owned(), answer.to_string());
        self.db.write(move |w| Ok::<_, Error>(w.store_inbound_txn(&o, &t, &text, now_ms() as i64)?)).await?;
        Ok(answer)
    }

    /// One PDU of a transaction; the event id (when it could be computed) with the result.
    async fn receive_pdu(
        &self,
        origin: &ServerName,
        room: &str,
        raw: &Value,
        fill_gaps: bool,
    ) -> std::result::Result<Option<String>, (Option<String>, Error)> {
        let version = self.known_room_version(room).await.map_err(|e| (None, e))?;
        // The id first, so every refusal below can be reported against it.
        let early_id = crate::rooms::timeline::rules_for(&version)
            .ok()
            .and_then(|rules| {
                let mut canon: ruma::CanonicalJsonObject = serde_json::from_value(raw.clone()).ok()?;
                canon.remove("unsigned");
                crate::rooms::external::event_id_of(&canon, &rules).ok()
            })
            .map(|id| id.to_string());
        self.check_acl(room, origin).await.map_err(|e| (early_id.clone(), e))?;
        let v = self.verify_pdu(&version, raw).await.map_err(|e| (early_id.clone(), e))?;
        let id = v.pdu.event_id.to_string();
        if room_of(&v.pdu) != room {
            return Err((Some(id), Error::bad_json("the event's room is not the one it was sent for")));
        }
        let known = {
            let id = id.clone();
            self.db.read(move |r| Ok::<_, Error>(r.event(&id)?.is_some())).await.map_err(|e| (None, e))?
        };
        if known {
            return Ok(Some(id));
        }
        let mut place = Place::Live;
        // Bounded: a sender that answers slowly must not hold its own transaction past its
        // timeout (it would retry, and we would start over).
        match tokio::time::timeout(GAP_FILL_BUDGET, self.fill_gaps(origin, &version, &v, fill_gaps)).await {
            Ok(Ok(Some(state))) => place = Place::AfterGap(state),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::info!(%origin, event_id = %id, error = %e, "could not fill a gap before an event"),
            Err(_) => tracing::info!(%origin, event_id = %id, "gave up filling a gap before an event (too slow)"),
        }
        // Nothing to relay: every server sends its own events to all the others.
        // The state resolutions it needs run on a reader first; the writer only re-checks that
        // the graph did not move meanwhile (it redoes the work if it did).
        let prepared = {
            let (version, place_copy) = (version.clone(), place.clone());
            let v2 = v.clone();
            self.db.read(move |r| prepare(r, &version, &v2, &place_copy)).await.map_err(|e| (Some(id.clone()), e))?
        };
        let result = self
            .db
            .write(move |w| accept_prepared(w, &version, v, place, prepared))
            .await
            .map_err(|e| (Some(id.clone()), e))?;
        match result {
            Outcome::Accepted(a) => {
                self.notify_appended(&a).await;
                Ok(Some(id))
            }
            Outcome::AlreadyKnown | Outcome::SoftFailed => Ok(Some(id)),
            Outcome::Rejected(why) => Err((Some(id), Error::forbidden(why))),
        }
    }

    /// Before accepting an event: fetch the auth events and (with `walk`) the prev events we
    /// lack from its sender. Returns the state before the event when a hole remains that only
    /// its state can bridge (fetched with `/state_ids`).
    async fn fill_gaps(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        v: &VerifiedPdu,
        walk: bool,
    ) -> Result<Option<StateMap>> {
        let room = room_of(&v.pdu);
        let (auth, prevs): (Vec<String>, Vec<String>) = (
            v.pdu.auth_events.iter().map(|e| e.to_string()).collect(),
            v.pdu.prev_events.iter().map(|e| e.to_string()).collect(),
        );
        let (missing_auth, missing_prev, extremities) = self
            .db
            .read({
                let room = room.clone();
                move |r| {
                    let mut ma = false;
                    for a in &auth {
                        ma |= load_pdu(r, a)?.is_none();
                    }
                    let mut mp = false;
                    for p in &prevs {
                        mp |= r.event(p)?.is_none();
                    }
                    Ok::<_, Error>((ma, mp, r.forward_extremities(&room)?))
                }
            })
            .await?;
        if missing_auth {
            let path = format!(
                "/_matrix/federation/v1/event_auth/{}/{}",
                urlencode(&room),
                urlencode(v.pdu.event_id.as_str())
            );
            let answer = self.federation_request(origin, http::Method::GET, &path, None).await?;
            let mut chain = Vec::new();
            for raw in answer["auth_chain"].as_array().into_iter().flatten() {
                if let Ok(e) = self.verify_pdu(version, raw).await {
                    if room_of(&e.pdu) == room {
                        chain.push(e);
                    }
                }
            }
            chain.sort_by_key(|e| u64::from(e.pdu.depth));
            let version = version.clone();
            let room = room.clone();
            self.db
                .write(move |w| {
                    let rules = crate::rooms::timeline::rules_for(&version)?;
                    for e in chain {
                        let id = e.pdu.event_id.to_string();
                        if load_pdu(w, &id)?.is_some() {
                            continue;
                        }
                        match check_auth_events_only(w, &rules, &e.pdu) {
                            Ok(()) => w.insert_outlier(&id, &room, &serde_json::to_string(&e.canon)?, "outlier")?,
                            Err(why) => tracing::info!(event_id = %id, %why, "auth chain event fails auth"),
                        }
                    }
                    Ok::<_, Error>(())
                })
                .await?;
        }
        if missing_prev && walk {
            let path = format!("/_matrix/federation/v1/get_missing_events/{}", urlencode(&room));
            let body = json!({
                "earliest_events": extremities,
                "latest_events": [v.pdu.event_id],
                "limit": MISSING_EVENTS_LIMIT,
                "min_depth": 0,
            });
            let answer = self.federation_request(origin, http::Method::POST, &path, Some(body)).await?;
            let mut events: Vec<Value> = answer["events"].as_array().cloned().unwrap_or_default();
            events.sort_by_key(|e| e["depth"].as_u64().unwrap_or(0));
            for raw in events.iter().take(MISSING_EVENTS_LIMIT as usize) {
                // One level only: the events a gap brings do not open new gaps.
                if let Err((id, e)) = Box::pin(self.receive_pdu(origin, &room, raw, false)).await {
                    tracing::info!(?id, error = %e, "a missing event was refused");
                }
            }
        }
        if missing_prev {
            // Still a hole (more missed than one request brings): take the state before the event
            // from its sender instead of walking the whole gap.
            let prevs: Vec<String> = v.pdu.prev_events.iter().map(|e| e.to_string()).collect();
            let still_missing = self
                .db
                .read(move |r| {
                    let mut missing = false;
                    for p in &prevs {
                        missing |= r.event(p)?.is_none();
                    }
                    Ok::<_, Error>(missing)
                })
                .await?;
            if still_missing {
                return self.state_across_gap(origin, version, &room, v.pdu.event_id.as_str()).await.map(Some);
            }
        }
        Ok(None)
    }

    /// `/state_ids` at an event, fetching the state and auth events we do not hold.
    async fn state_across_gap(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        room: &str,
        event_id: &str,
    ) -> Result<StateMap> {
        let path = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", urlencode(room), urlencode(event_id));
        let answer = self.federation_request(origin, http::Method::GET, &path, None).await?;
        let ids = |k: &str| -> Vec<String> {
            answer[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        };
        let (state_ids, chain_ids) = (ids("pdu_ids"), ids("auth_chain_ids"));
        let wanted: Vec<String> = chain_ids.iter().chain(state_ids.iter()).cloned().collect();
        let unknown = self
            .db
            .read(move |r| {
                let mut unknown = Vec::new();
                for id in wanted {
                    if load_pdu(r, &id)?.is_none() {
                        unknown.push(id);
                    }
                }
                Ok::<_, Error>(unknown)
            })
            .await?;
        if unknown.len() > MAX_GAP_EVENTS {
            return Err(Error::new(
                ruma::api::error::ErrorKind::Unknown,
                502,
                format!("the gap needs {} events, more than {MAX_GAP_EVENTS}", unknown.len()),
            ));
        }
        let mut fetched = Vec::new();
        for id in unknown {
            let path = format!("/_matrix/federation/v1/event/{}", urlencode(&id));
            let Ok(answer) = self.federation_request(origin, http::Method::GET, &path, None).await else { continue };
            let Some(raw) = answer["pdus"].get(0) else { continue };
            if let Ok(e) = self.verify_pdu(version, raw).await {
                if e.pdu.event_id == id && room_of(&e.pdu) == room {
                    fetched.push(e);
                }
            }
        }
        fetched.sort_by_key(|e| u64::from(e.pdu.depth));
        let (version, room) = (version.clone(), room.to_owned());
        self.db
            .write(move |w| {
                let rules = crate::rooms::timeline::rules_for(&version)?;
                for e in fetched {
                    let id = e.pdu.event_id.to_string();
                    match check_auth_events_only(w, &rules, &e.pdu) {
                        Ok(()) => w.insert_outlier(&id, &room, &serde_json::to_string(&e.canon)?, "outlier")?,
                        Err(why) => tracing::info!(event_id = %id, %why, "gap state event fails auth"),
                    }
                }
                let mut state = StateMap::new();
                for id in &state_ids {
                    if let Some(p) = load_pdu(w, id)? {
                        if let Some(sk) = &p.state_key {
                            state.insert((p.kind.to_string(), sk.clone()), id.clone());
                        }
                    }
                }
                // State events become part of the room's history (the current state refers to
                // them), placed before everything sync has handed out.
                let entries: Vec<(&str, &str, &str)> =
                    state.iter().map(|((k, sk), e)| (k.as_str(), sk.as_str(), e.as_str())).collect();
                let group = w.new_state_group(&room, None, &entries)?;
                for id in state.values() {
                    if w.event(id)?.is_some() {
                        continue;
                    }
                    // Held outside the timeline so far (fetched now, or earlier as an auth event).
                    let Some((_, stored, status)) = w.outlier(id)? else { continue };
                    if status != "outlier" {
                        continue;
                    }
                    let pdu = crate::rooms::pdu::Pdu::from_stored(id, &stored)?;
                    let canon = crate::rooms::pdu::canonical(&stored)?;
                    let depth = i64::try_from(u64::from(pdu.depth)).unwrap_or(0);
                    let pos = w.next_history_position(false)?;
                    crate::rooms::timeline::store_event(w, &rules, &pdu, &canon, depth, pos, group, None)?;
                }
                Ok::<_, Error>(state)
            })
            .await
    }

    async fn receive_edu(&self, origin: &ServerName, edu: &Value) -> Result<()> {
        let content = &edu["content"];
        match edu["edu_type"].as_str().unwrap_or_default() {
            "m.typing" => {
                let room = RoomId::parse(content["room_id"].as_str().unwrap_or_default())
                    .map_err(|_| Error::bad_json("m.typing: room_id"))?;
                let user = self.remote_member(origin, content["user_id"].as_str(), Some(room.as_str())).await?;
                let typing = content["typing"].as_bool().unwrap_or(false);
                let timeout = typing.then_some(Duration::from_secs(30));
                if let Some(change) = self.typing.set(&room, &user, timeout) {
                    self.publish(crate::cluster::Signal::Typing {
                        room: room.clone(),
                        user: user.clone(),
                        serial: change.serial,
                        until_us: change.until_us,
                    });
                    self.notify_room(&room).await;
                }
            }
            "m.receipt" => {
                for (room, by_type) in content.as_object().into_iter().flatten() {
                    let Ok(room_id) = RoomId::parse(room.as_str()) else { continue };
                    for (kind, by_user) in by_type.as_object().into_iter().flatten() {
                        if kind != "m.read" {
                            continue;
                        }
                        for (user, receipt) in by_user.as_object().into_iter().flatten() {
                            let Ok(user) = self.remote_member(origin, Some(user), Some(room)).await else { continue };
                            let Some(event) =
                                receipt["event_ids"].as_array().and_then(|a| a.last()).and_then(Value::as_str)
                            else {
                                continue;
                            };
                            let row = ReceiptRow {
                                room_id: room.clone(),
                                user_id: user.to_string(),
                                receipt_type: kind.clone(),
                                thread_id: receipt["data"]["thread_id"].as_str().unwrap_or_default().to_owned(),
                                event_id: event.to_owned(),
                                ts: receipt["data"]["ts"].as_i64().unwrap_or(now_ms() as i64),
                                stream: 0,
                            };
                            self.db
                                .write(move |w| {
                                    if w.event(&row.event_id)?.is_some_and(|e| e.room_id == row.room_id) {
                                        let stream = w.next_stream()?;
                                        w.set_receipt(&ReceiptRow { stream, ..row })?;
                                    }
                                    Ok::<_, Error>(())
                                })
                                .await?;
                        }
                    }
                    self.notify_room(&room_id).await;
                }
            }
            "m.presence" => {
                if !self.config.presence.enabled {
                    return Ok(());
                }
                for p in content["push"].as_array().into_iter().flatten() {
                    let Ok(user) = self.remote_member(origin, p["user_id"].as_str(), None).await else { continue };
                    let state = p["presence"].as_str().unwrap_or("offline").to_owned();
                    if !["online", "offline", "unavailable"].contains(&state.as_str()) {
                        continue;
                    }
                    self.presence_tracker.heard_from(user.as_str());
                    let ago = p["last_active_ago"].as_i64().unwrap_or(0).max(0);
                    let row = PresenceRow {
                        user_id: user.to_string(),
                        state,
                        status_msg: p["status_msg"].as_str().map(str::to_owned),
                        last_active_ts: now_ms() as i64 - ago,
                        stream: 0,
                    };
                    let sharing = self
                        .db
                        .write(move |w| {
                            let stream = w.next_stream()?;
                            let u = row.user_id.clone();
                            w.set_presence(&PresenceRow { stream, ..row })?;
                            Ok::<_, Error>(w.users_sharing_rooms(&u)?)
                        })
                        .await?;
                    let users: Vec<OwnedUserId> = sharing.into_iter().filter_map(|u| UserId::parse(u).ok()).collect();
                    self.notifier.notify(users.iter().map(|u| u.as_ref()));
                }
            }
            "m.direct_to_device" => {
                let sender = content["sender"].as_str().unwrap_or_default();
                let sender = UserId::parse(sender).map_err(|_| Error::bad_json("m.direct_to_device: sender"))?;
                if sender.server_name() != origin {
                    return Err(Error::forbidden("to-device message from a user of another server"));
                }
                let kind = content["type"].as_str().unwrap_or_default().to_owned();
                let mut messages: BTreeMap<String, Vec<(Option<String>, String)>> = BTreeMap::new();
                for (user, devices) in content["messages"].as_object().into_iter().flatten() {
                    for (device, msg) in devices.as_object().into_iter().flatten() {
                        let target = if device == "*" { None } else { Some(device.clone()) };
                        messages.entry(user.clone()).or_default().push((target, msg.to_string()));
                    }
                }
                self.deliver_remote_to_device(&sender, &kind, messages).await?;
            }
            "m.device_list_update" | "m.signing_key_update" => {
                let user = content["user_id"].as_str().unwrap_or_default();
                let user = UserId::parse(user).map_err(|_| Error::bad_json("device list update: user_id"))?;
                if user.server_name() != origin {
                    return Err(Error::forbidden("device list update for a user of another server"));
                }
                let u = user.to_string();
                let sharing = self
                    .db
                    .write(move |w| {
                        let stream = w.next_stream()?;
                        w.mark_device_list_changed(&u, stream)?;
                        Ok::<_, Error>(w.users_sharing_rooms(&u)?)
                    })
                    .await?;
                let users: Vec<OwnedUserId> = sharing.into_iter().filter_map(|u| UserId::parse(u).ok()).collect();
                self.notifier.notify(users.iter().map(|u| u.as_ref()));
            }
            _ => {}
        }
        Ok(())
    }

    /// A user named in an EDU: must belong to the sending server and, for room EDUs, be joined.
    async fn remote_member(&self, origin: &ServerName, user: Option<&str>, room: Option<&str>) -> Result<OwnedUserId> {
        let user = UserId::parse(user.unwrap_or_default()).map_err(|_| Error::bad_json("EDU: user_id"))?;
        if user.server_name() != origin {
            return Err(Error::forbidden("EDU about a user of another server"));
        }
        if let Some(room) = room {
            self.check_acl(room, origin).await?;
            let (r, u) = (room.to_owned(), user.to_string());
            let joined = self
                .db
                .read(move |db| Ok::<_, Error>(db.membership(&r, &u)?.is_some_and(|m| m.membership == "join")))
                .await?;
            if !joined {
                return Err(Error::forbidden("EDU from a user not in the room"));
            }
        }
        Ok(user)
    }
}
