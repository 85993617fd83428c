//! Rooms across servers: joining, leaving and inviting through another server, and the
//! endpoints other servers use to join our rooms and to fill gaps in their copy of a room's graph.

use std::collections::{BTreeMap, HashSet};

use moss_storage::{Reader, StateMap, Writer};
use ruma::{
    events::TimelineEventType, room_version_rules::RoomVersionRules, signatures::hash_and_sign_event,
    state_res::check_state_dependent_auth_rules, CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedRoomId,
    OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{json, Value};

use super::{prejoin::prejoin_state_pdus, sender::queue_pdu};
use crate::{
    error::{Error, Result},
    now_ms,
    rooms::{
        external::{self, accept, event_id_of, federation_form, room_of, Outcome, Place, VerifiedPdu},
        pdu::Pdu,
        room_info,
        timeline::{current_state_pdu, load_pdu, rules_for, store_event, template, NewPdu},
        SUPPORTED_VERSIONS,
    },
    Moss,
};

/// Positions below this hold the state a join brought (see the history counter in storage).
const JOIN_STATE_FLOOR: i64 = -(1 << 49);

/// Most events one backfill or get_missing_events answer carries.
const MAX_EVENTS_PER_REQUEST: usize = 100;

fn enc(s: &str) -> String {
    super::query::urlencode(s)
}

fn incompatible(version: &str) -> Error {
    Error::new(
        ruma::api::error::ErrorKind::IncompatibleRoomVersion(ruma::api::error::IncompatibleRoomVersionErrorData::new(
            RoomVersionId::try_from(version).unwrap_or(RoomVersionId::V12),
        )),
        400,
        format!("this server does not support room version {version}"),
    )
}

/// The other servers with a joined member in the room (the destinations of its events).
pub(crate) fn remote_servers(r: &Reader<'_>, room: &str, us: &ServerName) -> Result<Vec<String>> {
    let mut servers = std::collections::BTreeSet::new();
    for m in r.room_members(room)? {
        if m.membership != "join" {
            continue;
        }
        if let Ok(u) = UserId::parse(&m.user_id) {
            if u.server_name() != us {
                servers.insert(u.server_name().to_string());
            }
        }
    }
    Ok(servers.into_iter().collect())
}

/// The room's `m.room.server_acl`: a server it denies is refused everything about the room.
pub(crate) fn require_acl(r: &Reader<'_>, room: &str, server: &ServerName) -> Result<()> {
    let Some(acl) = r.current_state_event(room, "m.room.server_acl", "")? else { return Ok(()) };
    let content = serde_json::from_str::<Value>(&acl.pdu)?["content"].clone();
    // Content that does not parse denies nobody (as if there were no ACL), like other servers do.
    let Ok(acl) = serde_json::from_value::<ruma::events::room::server_acl::RoomServerAclEventContent>(content) else {
        return Ok(());
    };
    if acl.is_allowed(server) {
        Ok(())
    } else {
        Err(Error::forbidden(format!("{server} is denied by the room's server ACL")))
    }
}

/// Whether `server` may see the room's events: one of its users is joined (or the room is
/// world-readable), and the room's ACL does not deny it.
pub(crate) fn require_server_in_room(r: &Reader<'_>, room: &str, server: &ServerName) -> Result<()> {
    if r.room(room)?.is_none() {
        return Err(Error::not_found("unknown room"));
    }
    require_acl(r, room, server)?;
    let joined = r
        .room_members(room)?
        .into_iter()
        .any(|m| m.membership == "join" && UserId::parse(&m.user_id).is_ok_and(|u| u.server_name() == server));
    let world_readable = r
        .current_state_event(room, "m.room.history_visibility", "")?
        .and_then(|e| serde_json::from_str::<Value>(&e.pdu).ok())
        .is_some_and(|v| v["content"]["history_visibility"] == "world_readable");
    if joined || world_readable {
        Ok(())
    } else {
        Err(Error::forbidden(format!("{server} has no member in this room")))
    }
}

/// Any event we hold, in the form other servers receive it.
fn fed_event(r: &Reader<'_>, id: &str) -> Result<Option<(String, Value)>> {
    if let Some(row) = r.event(id)? {
        return Ok(Some((row.room_id, federation_form(&row.pdu)?)));
    }
    match r.outlier(id)? {
        Some((room, pdu, status)) if status != "rejected" => Ok(Some((room, federation_form(&pdu)?))),
        _ => Ok(None),
    }
}

/// Adds our signature to an event another server made (invites to our users, restricted joins
/// we authorise). Signatures cover the redacted event.
fn countersign(moss: &Moss, canon: &mut CanonicalJsonObject, rules: &RoomVersionRules) -> Result<()> {
    let mut redacted = ruma::canonical_json::redact(canon.clone(), &rules.redaction, None)
        .map_err(|e| Error::bad_json(e.to_string()))?;
    redacted.remove("signatures");
    redacted.remove("unsigned");
    ruma::signatures::sign_json(moss.server_name.as_str(), moss.signer.key.as_ref(), &mut redacted)
        .map_err(|e| Error::internal(format!("signing: {e}")))?;
    let Some(CanonicalJsonValue::Object(ours)) = redacted.remove("signatures") else {
        return Err(Error::internal("signing produced no signatures"));
    };
    let sigs = canon.entry("signatures".into()).or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
    if let CanonicalJsonValue::Object(map) = sigs {
        for (server, s) in ours {
            map.insert(server, s);
        }
    }
    Ok(())
}

impl Moss {
    fn room_version_of(r: &Reader<'_>, room: &str) -> Result<RoomVersionId> {
        let info = room_info(r, room)?.ok_or_else(|| Error::not_found("unknown room"))?;
        Ok(info.version)
    }

    pub(crate) async fn check_acl(&self, room: &str, server: &ServerName) -> Result<()> {
        let (room, server) = (room.to_owned(), server.to_owned());
        self.db.read(move |r| require_acl(r, &room, &server)).await
    }

    /// The rooms a transaction's events belong to must be ones we are in.
    pub(crate) async fn known_room_version(&self, room: &str) -> Result<RoomVersionId> {
        let room = room.to_owned();
        self.db.read(move |r| Self::room_version_of(r, &room)).await
    }

    // ---- serving other servers ----

    /// `GET /make_join` and `/make_leave`: an unsigned membership event for the caller to sign.
    pub async fn serve_make_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        versions: Vec<String>,
    ) -> Result<Value> {
        if user.server_name() != origin {
            return Err(Error::forbidden("the user does not belong to the requesting server"));
        }
        let (room, u, server, signer) =
            (room_id.to_owned(), user.to_owned(), self.server_name.clone(), self.signer.clone());
        let membership = membership.to_owned();
        // A write transaction, though nothing is kept: the template may snapshot state.
        self.db
            .write(move |w| {
                let info = room_info(w, room.as_str())?.ok_or_else(|| Error::not_found("unknown room"))?;
                require_acl(w, room.as_str(), u.server_name())?;
                let v = info.version.to_string();
                if membership != "leave" && !versions.is_empty() && !versions.contains(&v) {
                    return Err(incompatible(&v));
                }
                if remote_servers(w, room.as_str(), &signer.server_name)?.len()
                    == w.room_members(room.as_str())?.iter().filter(|m| m.membership == "join").count()
                {
                    return Err(Error::not_found("no user of this server is in the room"));
                }
                let mut content = json!({"membership": membership});
                if membership == "join" {
                    if let Some(a) =
                        crate::rooms::membership::restricted_join_authoriser(w, room.as_str(), u.as_str(), &server)?
                    {
                        content["join_authorised_via_users_server"] = json!(a);
                    }
                }
                let new = NewPdu::state(TimelineEventType::RoomMember, u.as_str(), content);
                let view = crate::rooms::timeline::StateView::new(w, room.as_str());
                let t = template(w, &view, &info.rules, Some(&room), &u, new, now_ms())?;
                // Refuse now what the auth rules would refuse later (bans, invite-only rooms).
                let mut obj = t.obj;
                let probe = Pdu::from_stored("$probe", &serde_json::to_string(&obj)?)?;
                check_state_dependent_auth_rules(
                    &info.rules.authorization,
                    &probe,
                    |k: &ruma::events::StateEventType, sk: &str| {
                        current_state_pdu(w, room.as_str(), &k.to_string(), sk).ok().flatten()
                    },
                )
                .map_err(|e| Error::forbidden(format!("you may not {membership} this room: {e}")))?;
                obj["origin"] = json!(signer.server_name);
                Ok(json!({"room_version": v, "event": obj}))
            })
            .await
    }

    /// `PUT /send_join` and `/send_leave` (v2): accepts a membership event the caller signed and,
    /// for joins, answers with the room's state and auth chain.
    pub async fn serve_send_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        membership: &str,
        event: Value,
    ) -> Result<Value> {
        let version = self.known_room_version(room_id.as_str()).await?;
        self.check_acl(room_id.as_str(), origin).await?;
        let rules = rules_for(&version)?;
        // A restricted join names one of our users as its authoriser: we vouch for it with our
        // signature, which its verification then requires.
        let mut event = event;
        let authorised_here = event["content"]["join_authorised_via_users_server"]
            .as_str()
            .and_then(|a| UserId::parse(a).ok())
            .is_some_and(|u| u.server_name() == self.server_name);
        if authorised_here && membership == "join" {
            let mut canon: CanonicalJsonObject =
                serde_json::from_value(event).map_err(|e| Error::bad_json(format!("the event: {e}")))?;
            countersign(self, &mut canon, &rules)?;
            event = serde_json::to_value(canon)?;
        }
        let v = self.verify_pdu(&version, &event).await?;
        if v.pdu.event_id != event_id {
            return Err(Error::bad_json("the event id does not match the event"));
        }
        let content = v.pdu.content_value();
        if v.pdu.kind != TimelineEventType::RoomMember
            || v.pdu.state_key.as_deref() != Some(v.pdu.sender.as_str())
            || content["membership"] != membership
            || v.pdu.sender.server_name() != origin
            || room_of(&v.pdu) != room_id.as_str()
        {
            return Err(Error::bad_json(format!("not a {membership} event of a user of {origin} in this room")));
        }
        let signed = serde_json::to_value(&v.canon)?;
        let (room, us) = (room_id.to_string(), self.server_name.clone());
        let origin_s = origin.to_string();
        let (outcome, answer, dests) = self
            .db
            .write(move |w| {
                let before = external::state_before_pdu(w, &rules, &v.pdu)?;
                let outcome = accept(w, &version, v, Place::Live)?;
                let Outcome::Accepted(a) = &outcome else {
                    return Ok::<_, Error>((outcome, Value::Null, vec![]));
                };
                let dests: Vec<String> =
                    remote_servers(w, &room, &us)?.into_iter().filter(|d| *d != origin_s).collect();
                queue_pdu(w, dests.iter().map(String::as_str), a.pdu.event_id.as_str())?;
                let state = before.unwrap_or_default();
                let mut pdus = Vec::new();
                for id in state.values() {
                    if let Some((_, p)) = fed_event(w, id)? {
                        pdus.push(p);
                    }
                }
                let mut chain_ids: HashSet<String> = external::auth_chain(w, state.values().cloned())?;
                chain_ids.extend(a.pdu.auth_events.iter().map(|e| e.to_string()));
                let mut chain = Vec::new();
                for id in chain_ids {
                    if let Some((_, p)) = fed_event(w, &id)? {
                        chain.push(p);
                    }
                }
                Ok((outcome, json!({"state": pdus, "auth_chain": chain}), dests))
            })
            .await?;
        match outcome {
            Outcome::Accepted(a) => {
                self.wake_destinations(dests.iter().map(String::as_str));
                self.notify_appended(&a).await;
            }
            Outcome::AlreadyKnown => {}
            Outcome::SoftFailed | Outcome::Rejected(_) => {
                return Err(Error::forbidden(format!("the {membership} event is not allowed in this room")));
            }
        }
        if membership == "knock" {
            // The knocker sees the room as an invitee would.
            let room = room_id.to_string();
            let state = self.db.read(move |r| prejoin_state_pdus(r, &room, None)).await?;
            return Ok(json!({"knock_room_state": state}));
        }
        if membership != "join" {
            return Ok(json!({}));
        }
        let mut answer = answer;
        if answer.is_null() {
            // A retry of a join we already accepted: the state now includes it, which is harmless.
            let room = room_id.to_string();
            answer = self
                .db
                .read(move |r| {
                    let state = r.current_state(&room)?;
                    let pdus: Vec<Value> =
                        state.values().filter_map(|id| fed_event(r, id).ok().flatten().map(|(_, p)| p)).collect();
                    Ok::<_, Error>(json!({"state": pdus, "auth_chain": []}))
                })
                .await?;
        }
        answer["origin"] = json!(self.server_name);
        answer["event"] = signed;
        answer["members_omitted"] = json!(false);
        Ok(answer)
    }

    /// `PUT /invite` (v2): another server invites one of our users.
    /// `PUT /_matrix/federation/v1/invite`: only for rooms of version 1 or 2 (the spec: a v1
    /// invite is for one of those), which this server does not support. Answered as such, so
    /// that the inviting server tells its user why rather than that an endpoint is missing.
    pub fn serve_invite_v1(&self, origin: &ServerName, room_id: &RoomId) -> Error {
        tracing::info!(%origin, %room_id, "refused a v1 invite: room versions 1 and 2 are not supported");
        incompatible("1")
    }

    pub async fn serve_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        body: Value,
    ) -> Result<Value> {
        let version_s = body["room_version"].as_str().unwrap_or("1").to_owned();
        let version = RoomVersionId::try_from(version_s.as_str()).map_err(|_| incompatible(&version_s))?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(incompatible(&version_s));
        }
        let rules = rules_for(&version)?;
        let mut v = self.verify_pdu(&version, &body["event"]).await?;
        if v.pdu.event_id != event_id || room_of(&v.pdu) != room_id.as_str() {
            return Err(Error::bad_json("the event does not match the request"));
        }
        let target = v.pdu.state_key.clone().unwrap_or_default();
        let target = UserId::parse(&target).map_err(|_| Error::bad_json("the invite's state_key is not a user id"))?;
        if v.pdu.kind != TimelineEventType::RoomMember
            || v.pdu.content_value()["membership"] != "invite"
            || v.pdu.sender.server_name() != origin
        {
            return Err(Error::bad_json("not an invite from a user of the requesting server"));
        }
        if target.server_name() != self.server_name || !self.is_local_user_active(&target).await? {
            return Err(Error::not_found(format!("unknown user {target}")));
        }
        countersign(self, &mut v.canon, &rules)?;
        let signed = serde_json::to_value(&v.canon)?;
        let invite_state =
            self.prejoin_state_for_clients(room_id, &version, &body["invite_room_state"], "invite_room_state").await;
        let (room, user, us) = (room_id.to_string(), target.to_string(), self.server_name.clone());
        let stored = serde_json::to_string(&v.canon)?;
        let push_rules = self.push.rules.clone();
        let (room_for_push, target_for_push) = (room_id.to_owned(), target.clone());
        let pushed = self
            .db
            .write(move |w| {
                let we_are_in = w.room(&room)?.is_some()
                    && remote_servers(w, &room, &us)?.len()
                        < w.room_members(&room)?.iter().filter(|m| m.membership == "join").count();
                if we_are_in {
                    return match accept(w, &version, v, Place::Live)? {
                        Outcome::Rejected(why) => Err(Error::forbidden(format!("the invite is not allowed: {why}"))),
                        Outcome::SoftFailed => Err(Error::forbidden("the invite is not allowed now")),
                        _ => Ok::<_, Error>(false),
                    };
                }
                let id = v.pdu.event_id.to_string();
                w.insert_outlier(&id, &room, &stored, "outlier")?;
                let mut state = invite_state;
                state.push(v.pdu.to_stripped());
                w.store_remote_invite(&room, &user, &id, version.as_str(), &serde_json::to_string(&state)?)?;
                let stream = w.next_stream()?;
                w.set_membership(&room, &user, "invite", &id, stream)?;
                let event = v.pdu.to_client(&room_for_push, ruma::MilliSecondsSinceUnixEpoch::now(), None);
                crate::push::evaluator::evaluate_remote_invite(
                    w,
                    &push_rules,
                    &room_for_push,
                    &target_for_push,
                    &event,
                    stream,
                )
            })
            .await?;
        if pushed {
            self.publish(crate::cluster::Signal::Pushers { users: vec![target.to_string()] });
            self.push.wake_pushers(vec![target.to_string()]);
        }
        self.notifier.notify([target.as_ref()]);
        Ok(json!({"event": signed}))
    }

    /// `GET /event/{eventId}`.
    pub async fn serve_event(&self, origin: &ServerName, event_id: &EventId) -> Result<Value> {
        let (id, origin_s) = (event_id.to_string(), origin.to_owned());
        let pdu = self
            .db
            .read(move |r| {
                let (room, pdu) = fed_event(r, &id)?.ok_or_else(|| Error::not_found("unknown event"))?;
                require_server_in_room(r, &room, &origin_s)?;
                match r.event(&id)? {
                    Some(row) => form_for_server(r, &row, &origin_s),
                    None => Ok::<_, Error>(pdu),
                }
            })
            .await?;
        Ok(json!({"origin": self.server_name, "origin_server_ts": now_ms(), "pdus": [pdu]}))
    }

    /// `GET /state_ids` and `/state`: the room's state before an event, and its auth chain.
    pub async fn serve_state(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        ids_only: bool,
    ) -> Result<Value> {
        let (room, id, origin_s) = (room_id.to_string(), event_id.to_string(), origin.to_owned());
        self.db
            .read(move |w| {
                require_server_in_room(w, &room, &origin_s)?;
                let row =
                    w.event(&id)?.filter(|e| e.room_id == room).ok_or_else(|| Error::not_found("unknown event"))?;
                let rules = rules_for(&Self::room_version_of(w, &room)?)?;
                let pdu = Pdu::from_stored(&row.event_id, &row.pdu)?;
                let state = external::state_before_pdu(w, &rules, &pdu)?.unwrap_or_default();
                let chain = external::auth_chain(w, state.values().cloned())?;
                if ids_only {
                    return Ok::<_, Error>(
                        json!({"pdu_ids": state.values().collect::<Vec<_>>(), "auth_chain_ids": chain}),
                    );
                }
                let pdus: Vec<Value> =
                    state.values().filter_map(|i| fed_event(w, i).ok().flatten().map(|(_, p)| p)).collect();
                let chain: Vec<Value> =
                    chain.iter().filter_map(|i| fed_event(w, i).ok().flatten().map(|(_, p)| p)).collect();
                Ok(json!({"pdus": pdus, "auth_chain": chain}))
            })
            .await
    }

    /// `GET /event_auth/{roomId}/{eventId}`: the event's full auth chain.
    pub async fn serve_event_auth(&self, origin: &ServerName, room_id: &RoomId, event_id: &EventId) -> Result<Value> {
        let (room, id, origin_s) = (room_id.to_string(), event_id.to_string(), origin.to_owned());
        self.db
            .read(move |w| {
                require_server_in_room(w, &room, &origin_s)?;
                if fed_event(w, &id)?.is_none_or(|(r, _)| r != room) {
                    return Err(Error::not_found("unknown event"));
                }
                let chain = external::auth_chain(w, [id])?;
                let pdus: Vec<Value> =
                    chain.iter().filter_map(|i| fed_event(w, i).ok().flatten().map(|(_, p)| p)).collect();
                Ok::<_, Error>(json!({"auth_chain": pdus}))
            })
            .await
    }

    /// `GET /backfill/{roomId}`: the given events and those before them, newest first.
    pub async fn serve_backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: Vec<String>,
        limit: usize,
    ) -> Result<Value> {
        let (room, origin_s) = (room_id.to_string(), origin.to_owned());
        let limit = limit.clamp(1, MAX_EVENTS_PER_REQUEST);
        let pdus = self
            .db
            .read(move |r| {
                require_server_in_room(r, &room, &origin_s)?;
                walk_back(r, &room, from, &HashSet::new(), limit, 0, &origin_s)
            })
            .await?;
        Ok(json!({"origin": self.server_name, "origin_server_ts": now_ms(), "pdus": pdus}))
    }

    /// `POST /get_missing_events/{roomId}`: events between what the caller has and what it saw.
    pub async fn serve_missing_events(&self, origin: &ServerName, room_id: &RoomId, body: Value) -> Result<Value> {
        let ids = |k: &str| -> Vec<String> {
            body[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        };
        let (earliest, latest) = (ids("earliest_events"), ids("latest_events"));
        let limit = body["limit"].as_u64().unwrap_or(10) as usize;
        let min_depth = body["min_depth"].as_i64().unwrap_or(0);
        let (room, origin_s) = (room_id.to_string(), origin.to_owned());
        let events = self
            .db
            .read(move |r| {
                require_server_in_room(r, &room, &origin_s)?;
                // The latest events themselves are what the caller has; start from their parents.
                let mut starts = Vec::new();
                for id in &latest {
                    if let Some(row) = r.event(id)? {
                        starts.extend(
                            Pdu::from_stored(&row.event_id, &row.pdu)?.prev_events.iter().map(|e| e.to_string()),
                        );
                    }
                }
                let stop: HashSet<String> = earliest.into_iter().chain(latest).collect();
                let mut events =
                    walk_back(r, &room, starts, &stop, limit.clamp(1, MAX_EVENTS_PER_REQUEST), min_depth, &origin_s)?;
                events.reverse();
                Ok::<_, Error>(events)
            })
            .await?;
        Ok(json!({"events": events}))
    }

    // ---- acting through other servers ----

    /// The servers to try, in order: those given, then the one in the room id (room versions
    /// before 12 name one), each once, never ourselves.
    fn candidates(&self, room_id: &RoomId, servers: &[OwnedServerName]) -> Vec<OwnedServerName> {
        let mut seen = HashSet::new();
        servers
            .iter()
            .cloned()
            .chain(room_id.server_name().map(ToOwned::to_owned))
            .filter(|s| *s != self.server_name && seen.insert(s.clone()))
            .collect()
    }

    /// Joins a room this server is not in, through the first of `servers` that answers.
    pub(crate) async fn join_remote(&self, user: &UserId, room_id: &RoomId, servers: &[OwnedServerName]) -> Result<()> {
        let mut last = Error::not_found("no known server to join this room through");
        for server in self.candidates(room_id, servers) {
            let server = &server;
            match self.join_via(user, room_id, server).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%server, room = %room_id, error = %e, "remote join failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_via(&self, user: &UserId, room_id: &RoomId, server: &ServerName) -> Result<()> {
        let (canon, event_id, version) = self.signed_membership_event(server, room_id, user, "join", None).await?;
        let path = format!("/_matrix/federation/v2/send_join/{}/{}", enc(room_id.as_str()), enc(event_id.as_str()));
        let answer =
            self.federation_request(server, http::Method::PUT, &path, Some(serde_json::to_value(&canon)?)).await?;
        let join_json =
            if answer["event"].is_object() { answer["event"].clone() } else { serde_json::to_value(&canon)? };

        // Check every event the answer carries; drop what fails.
        let mut state_ids = Vec::new();
        let mut verified: BTreeMap<String, VerifiedPdu> = BTreeMap::new();
        for (list, is_state) in [(&answer["auth_chain"], false), (&answer["state"], true)] {
            for raw in list.as_array().into_iter().flatten() {
                match self.verify_pdu(&version, raw).await {
                    Ok(v) => {
                        if room_of(&v.pdu) != room_id.as_str() {
                            continue;
                        }
                        if is_state {
                            state_ids.push(v.pdu.event_id.to_string());
                        }
                        verified.insert(v.pdu.event_id.to_string(), v);
                    }
                    Err(e) => tracing::warn!(%server, error = %e, "dropping an event of a send_join answer"),
                }
            }
        }
        let join = self.verify_pdu(&version, &join_json).await?;
        if join.pdu.event_id != event_id {
            return Err(Error::new(
                ruma::api::error::ErrorKind::Unknown,
                502,
                format!("{server} changed our join event"),
            ));
        }
        let (room, u) = (room_id.to_owned(), user.to_owned());
        let prev_events: Vec<String> = join.pdu.prev_events.iter().map(|e| e.to_string()).collect();
        let before = self.db.write(move |w| persist_join(w, &version, &room, &u, verified, &state_ids, join)).await?;
        self.notifier.notify([user]);
        self.notify_room(room_id).await;
        // History before the join, best effort: the room works without it.
        if let Err(e) = self.backfill(server, room_id, prev_events, before, 50).await {
            tracing::info!(%server, room = %room_id, error = %e, "backfill after join failed");
        }
        Ok(())
    }

    /// Before a backward page that would run out of stored history: fetch older events from a
    /// server in the room. Stops for good once the room's create event is reached or a server
    /// has nothing older.
    pub(crate) async fn backfill_for_page(&self, room_id: &RoomId, from: i64, limit: usize) {
        if self.federation.is_none() {
            return;
        }
        let room = room_id.to_string();
        let enough = self
            .db
            .read(move |r| Ok::<_, Error>(r.has_events_between(&room, JOIN_STATE_FLOOR, from, limit as i64)?))
            .await
            .unwrap_or(true);
        if !enough {
            self.backfill_older(room_id, limit).await;
        }
    }

    /// Whether the room's stored history may continue further back on other servers: its
    /// oldest stored event is not the create event, and no server said it had nothing older.
    /// Returns that oldest event's id.
    pub(crate) async fn history_continues_before(&self, room_id: &RoomId) -> Option<String> {
        let room = room_id.to_string();
        let oldest = self
            .db
            .read(move |r| Ok::<_, Error>(r.oldest_event_above(&room, JOIN_STATE_FLOOR)?))
            .await
            .ok()
            .flatten()?;
        let (id, kind, _, depth) = oldest;
        let done = self
            .federation
            .as_ref()
            .is_some_and(|f| f.backfill_done.lock().unwrap_or_else(|p| p.into_inner()).contains(&id));
        (kind != "m.room.create" && depth > 1 && !done).then_some(id)
    }

    /// Fetches up to `limit` events older than the oldest one stored, from the first server in
    /// the room that answers; how many were stored (0: none of them has anything older, or the
    /// room's start is here already).
    pub(crate) async fn backfill_older(&self, room_id: &RoomId, limit: usize) -> usize {
        if self.federation.is_none() || self.history_continues_before(room_id).await.is_none() {
            return 0;
        }
        let (room, us) = (room_id.to_string(), self.server_name.clone());
        let plan = self
            .db
            .read(move |r| {
                let Some((oldest, _, group, _)) = r.oldest_event_above(&room, JOIN_STATE_FLOOR)? else {
                    return Ok::<_, Error>(None);
                };
                let servers = remote_servers(r, &room, &us)?;
                Ok(Some((oldest, r.state_group(group)?, servers)))
            })
            .await
            .ok()
            .flatten();
        let Some((oldest, state, servers)) = plan else { return 0 };
        for server in servers {
            let Ok(server) = ServerName::parse(&server) else { continue };
            match self.backfill(&server, room_id, vec![oldest.clone()], state.clone(), limit.clamp(10, 100)).await {
                Ok(n) => {
                    if n == 0 {
                        if let Some(f) = &self.federation {
                            f.backfill_done.lock().unwrap_or_else(|p| p.into_inner()).insert(oldest);
                        }
                    }
                    return n;
                }
                Err(e) => tracing::info!(%server, room = %room_id, error = %e, "backfill failed"),
            }
        }
        0
    }

    /// `make_join`/`make_leave`/`make_knock` through `server`, then the template filled in
    /// (profile, reason, time) and signed by us: the event, its id and the room's version.
    async fn signed_membership_event(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        reason: Option<String>,
    ) -> Result<(CanonicalJsonObject, ruma::OwnedEventId, RoomVersionId)> {
        let versions: String = SUPPORTED_VERSIONS.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&");
        let path = format!(
            "/_matrix/federation/v1/make_{membership}/{}/{}?{versions}",
            enc(room_id.as_str()),
            enc(user.as_str())
        );
        let made = self.federation_request(server, http::Method::GET, &path, None).await?;
        let version_s = made["room_version"].as_str().unwrap_or("1");
        let version = RoomVersionId::try_from(version_s).map_err(|_| incompatible(version_s))?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(incompatible(version_s));
        }
        let rules = rules_for(&version)?;
        let bad = |why: &str| Error::new(ruma::api::error::ErrorKind::Unknown, 502, format!("{server}: {why}"));
        let mut event = made["event"].clone();
        if !event.is_object()
            || event["type"] != "m.room.member"
            || event["state_key"] != user.as_str()
            || event["content"]["membership"] != membership
        {
            return Err(bad(&format!("a bad {membership} template")));
        }
        if membership != "leave" {
            let profile = self.member_content(user, membership).await?;
            for key in ["displayname", "avatar_url"] {
                if let Some(v) = profile.get(key) {
                    event["content"][key] = v.clone();
                }
            }
        }
        if let Some(r) = reason {
            event["content"]["reason"] = json!(r);
        }
        event["origin_server_ts"] = json!(now_ms());
        event["origin"] = json!(self.server_name);
        let mut canon = match serde_json::from_value::<CanonicalJsonValue>(event) {
            Ok(CanonicalJsonValue::Object(o)) => o,
            _ => return Err(bad(&format!("the {membership} template is not canonical JSON"))),
        };
        canon.remove("signatures");
        canon.remove("hashes");
        canon.remove("unsigned");
        hash_and_sign_event(self.server_name.as_str(), &*self.signer.key, &mut canon, &rules.redaction)
            .map_err(|e| Error::internal(format!("signing the {membership}: {e}")))?;
        let event_id = event_id_of(&canon, &rules)?;
        Ok((canon, event_id, version))
    }

    /// Fetches up to `limit` events before `from` and stores them as history.
    pub(crate) async fn backfill(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        from: Vec<String>,
        state: StateMap,
        limit: usize,
    ) -> Result<usize> {
        if from.is_empty() {
            return Ok(0);
        }
        let version = self.known_room_version(room_id.as_str()).await?;
        let v: String = from.iter().map(|e| format!("v={}", enc(e))).collect::<Vec<_>>().join("&");
        let path = format!("/_matrix/federation/v1/backfill/{}?{v}&limit={limit}", enc(room_id.as_str()));
        let answer = self.federation_request(server, http::Method::GET, &path, None).await?;
        let mut events = Vec::new();
        for raw in answer["pdus"].as_array().into_iter().flatten().take(MAX_EVENTS_PER_REQUEST) {
            match self.verify_pdu(&version, raw).await {
                Ok(v) if room_of(&v.pdu) == room_id.as_str() => events.push(v),
                Ok(_) => {}
                Err(e) => tracing::info!(%server, error = %e, "dropping a backfilled event"),
            }
        }
        let room = room_id.to_string();
        let stored = self
            .db
            .write(move |w| {
                // Oldest first into the outlier store so each finds its auth events, then newest
                // first into history so positions count down in the room's order.
                events.sort_by_key(|v| u64::from(v.pdu.depth));
                for v in &events {
                    if load_pdu(w, v.pdu.event_id.as_str())?.is_none() {
                        w.insert_outlier(v.pdu.event_id.as_str(), &room, &serde_json::to_string(&v.canon)?, "outlier")?;
                    }
                }
                let mut n = 0;
                for v in events.into_iter().rev() {
                    if let Outcome::Accepted(_) = accept(w, &version, v, Place::History(state.clone()))? {
                        n += 1;
                    }
                }
                Ok::<_, Error>(n)
            })
            .await?;
        Ok(stored)
    }

    /// Invites a user of another server: their server countersigns the invite, then it is ours
    /// to store and send to the room.
    pub(crate) async fn invite_remote(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        content: Value,
    ) -> Result<()> {
        let (room, s, t, signer) = (room_id.to_owned(), sender.to_owned(), target.to_owned(), self.signer.clone());
        let (built_json, version, stripped) = self
            .db
            .write(move |w| {
                let info = room_info(w, room.as_str())?.ok_or_else(|| Error::not_found("unknown room"))?;
                let new = NewPdu::state(TimelineEventType::RoomMember, t.as_str(), content);
                let built = crate::rooms::timeline::build(w, &signer, &info.version, Some(&room), &s, new, now_ms())?;
                let stripped = prejoin_state_pdus(w, room.as_str(), Some(s.as_str()))?;
                Ok::<_, Error>((built.federation_json(), info.version, stripped))
            })
            .await?;
        let rules = rules_for(&version)?;
        let canon: CanonicalJsonObject = serde_json::from_value(built_json.clone())?;
        let event_id = event_id_of(&canon, &rules)?;
        let path = format!("/_matrix/federation/v2/invite/{}/{}", enc(room_id.as_str()), enc(event_id.as_str()));
        let body = json!({"event": built_json, "invite_room_state": stripped, "room_version": version});
        let answer = self.federation_request(target.server_name(), http::Method::PUT, &path, Some(body)).await?;
        let v = self.verify_pdu(&version, &answer["event"]).await?;
        if v.pdu.event_id != event_id {
            return Err(Error::new(ruma::api::error::ErrorKind::Unknown, 502, "the invited server changed the invite"));
        }
        let (room, us) = (room_id.to_string(), self.server_name.clone());
        let dests = self
            .db
            .write(move |w| match accept(w, &version, v, Place::Live)? {
                Outcome::Accepted(a) => {
                    let dests = remote_servers(w, &room, &us)?;
                    queue_pdu(w, dests.iter().map(String::as_str), a.pdu.event_id.as_str())?;
                    Ok::<_, Error>(dests)
                }
                Outcome::AlreadyKnown => Ok(vec![]),
                Outcome::SoftFailed | Outcome::Rejected(_) => Err(Error::forbidden("the invite is not allowed")),
            })
            .await?;
        self.wake_destinations(dests.iter().map(String::as_str));
        self.notify_room(room_id).await;
        Ok(())
    }

    /// Leaves (or rejects an invite to) a room this server is not in, through `server`.
    pub(crate) async fn leave_remote(&self, user: &UserId, room_id: &RoomId, server: &ServerName) -> Result<()> {
        self.remote_membership(user, room_id, server, "leave", None).await
    }

    /// Knocks on a room this server is not in, through the first of `servers` that answers.
    pub(crate) async fn knock_remote(
        &self,
        user: &UserId,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        reason: Option<String>,
    ) -> Result<()> {
        let mut last = Error::not_found("no known server to knock through");
        for server in self.candidates(room_id, servers) {
            let server = &server;
            match self.remote_membership(user, room_id, server, "knock", reason.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// make_X / send_X through `server` for a membership we cannot make ourselves (leave or knock
    /// in a room we are not in); the event is kept outside the timeline.
    async fn remote_membership(
        &self,
        user: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        membership: &str,
        reason: Option<String>,
    ) -> Result<()> {
        let (canon, event_id, version) =
            self.signed_membership_event(server, room_id, user, membership, reason).await?;
        let send = if membership == "knock" { "v1/send_knock" } else { "v2/send_leave" };
        let path = format!("/_matrix/federation/{send}/{}/{}", enc(room_id.as_str()), enc(event_id.as_str()));
        let answer =
            self.federation_request(server, http::Method::PUT, &path, Some(serde_json::to_value(&canon)?)).await?;
        let (room, u, stored) = (room_id.to_string(), user.to_string(), serde_json::to_string(&canon)?);
        let membership_s = membership.to_owned();
        let own = Pdu::from_stored(event_id.as_str(), &stored)?.to_stripped();
        let knock_state = if membership == "knock" {
            self.prejoin_state_for_clients(room_id, &version, &answer["knock_room_state"], "knock_room_state").await
        } else {
            Vec::new()
        };
        self.db
            .write(move |w| {
                w.insert_outlier(event_id.as_str(), &room, &stored, "outlier")?;
                if membership_s == "knock" {
                    let mut state = knock_state;
                    state.push(own);
                    let state = serde_json::to_string(&state)?;
                    w.store_remote_invite(&room, &u, event_id.as_str(), version.as_str(), &state)?;
                } else {
                    w.delete_remote_invite(&room, &u)?;
                }
                let stream = w.next_stream()?;
                w.set_membership(&room, &u, &membership_s, event_id.as_str(), stream)?;
                Ok::<_, Error>(())
            })
            .await?;
        self.notifier.notify([user]);
        Ok(())
    }
}

/// An event as `server` may see it: whole if the room's history visibility at the event lets
/// one of its users see it (world_readable and shared always; invited/joined if one of them was
/// invited or joined then), else redacted (still signed, so its place in the graph checks out).
fn form_for_server(r: &Reader<'_>, row: &moss_storage::EventRow, server: &ServerName) -> Result<Value> {
    let full = federation_form(&row.pdu)?;
    let state = r.state_group(row.state_group)?;
    let content_of = |key: (&str, &str)| -> Option<Value> {
        let id = state.get(&(key.0.to_owned(), key.1.to_owned()))?;
        let pdu = load_pdu(r, id).ok().flatten()?;
        Some(pdu.content_value())
    };
    let visibility = content_of(("m.room.history_visibility", ""))
        .and_then(|c| c["history_visibility"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "shared".into());
    let allowed: &[&str] = match visibility.as_str() {
        "invited" => &["invite", "join"],
        "joined" => &["join"],
        _ => return Ok(full),
    };
    let visible = state.iter().any(|((kind, sk), _)| {
        kind == "m.room.member"
            && UserId::parse(sk).is_ok_and(|u| u.server_name() == server)
            && content_of(("m.room.member", sk))
                .is_some_and(|c| c["membership"].as_str().is_some_and(|m| allowed.contains(&m)))
    });
    if visible {
        return Ok(full);
    }
    let info = room_info(r, &row.room_id)?.ok_or_else(|| Error::not_found("unknown room"))?;
    let canon: CanonicalJsonObject = serde_json::from_value(full)?;
    let redacted = ruma::canonical_json::redact(canon, &info.rules.redaction, None)
        .map_err(|e| Error::internal(format!("redacting for another server: {e}")))?;
    Ok(serde_json::to_value(redacted)?)
}

/// Walks prev_events back from `start`, newest first, stopping at `stop`, `limit` events or
/// below `min_depth`.
#[allow(clippy::too_many_arguments)]
fn walk_back(
    r: &Reader<'_>,
    room: &str,
    start: Vec<String>,
    stop: &HashSet<String>,
    limit: usize,
    min_depth: i64,
    server: &ServerName,
) -> Result<Vec<Value>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier: BTreeMap<(i64, String), ()> = BTreeMap::new();
    let mut out = Vec::new();
    let push = |frontier: &mut BTreeMap<(i64, String), ()>, id: String| -> Result<()> {
        if let Some(d) = r.event_depth(&id)? {
            frontier.insert((d, id), ());
        }
        Ok(())
    };
    for id in start {
        if !stop.contains(&id) && seen.insert(id.clone()) {
            push(&mut frontier, id)?;
        }
    }
    while out.len() < limit {
        let Some(((depth, id), ())) = frontier.pop_last() else { break };
        if depth < min_depth {
            break;
        }
        let Some(row) = r.event(&id)? else { continue };
        if row.room_id != room {
            continue;
        }
        let pdu = Pdu::from_stored(&row.event_id, &row.pdu)?;
        out.push(form_for_server(r, &row, server)?);
        for p in &pdu.prev_events {
            let p = p.to_string();
            if !stop.contains(&p) && seen.insert(p.clone()) {
                push(&mut frontier, p)?;
            }
        }
    }
    Ok(out)
}

/// Stores what a join brought: the room, its auth chain (outside the timeline), its state (as
/// history before the join) and the join itself. Returns the state before the join.
fn persist_join(
    w: &Writer<'_>,
    version: &RoomVersionId,
    room: &OwnedRoomId,
    user: &UserId,
    mut events: BTreeMap<String, VerifiedPdu>,
    state_ids: &[String],
    join: VerifiedPdu,
) -> Result<StateMap> {
    let rules = rules_for(version)?;
    let room_s = room.as_str();
    let create = events
        .values()
        .find(|v| v.pdu.kind == TimelineEventType::RoomCreate)
        .map(|v| v.pdu.sender.to_string())
        .ok_or_else(|| Error::new(ruma::api::error::ErrorKind::Unknown, 502, "the join answer has no create event"))?;
    if w.room(room_s)?.is_none() {
        w.insert_room(room_s, version.as_str(), &create, now_ms() as i64)?;
    }
    // Oldest first, so each event's auth events are checked before it.
    let mut order: Vec<VerifiedPdu> = std::mem::take(&mut events).into_values().collect();
    order.sort_by_key(|v| u64::from(v.pdu.depth));
    let state_set: HashSet<&String> = state_ids.iter().collect();
    let mut state = StateMap::new();
    let mut accepted_state = Vec::new();
    for v in order {
        let id = v.pdu.event_id.to_string();
        if load_pdu(w, &id)?.is_none() {
            w.insert_outlier(&id, room_s, &serde_json::to_string(&v.canon)?, "outlier")?;
        }
        if let Err(why) = external::check_auth_events_only(w, &rules, &v.pdu) {
            tracing::warn!(event_id = %id, %why, "dropping an event of a send_join answer that fails auth");
            continue;
        }
        if state_set.contains(&id) {
            if let Some(sk) = &v.pdu.state_key {
                state.insert((v.pdu.kind.to_string(), sk.clone()), id.clone());
                accepted_state.push(v);
            }
        }
    }
    let entries: Vec<(&str, &str, &str)> =
        state.iter().map(|((k, sk), e)| (k.as_str(), sk.as_str(), e.as_str())).collect();
    let group = w.new_state_group(room_s, None, &entries)?;
    for v in &accepted_state {
        if w.event(v.pdu.event_id.as_str())?.is_some() {
            continue;
        }
        let depth = i64::try_from(u64::from(v.pdu.depth)).unwrap_or(0);
        let pos = w.next_history_position(true)?;
        store_event(w, &rules, &v.pdu, &v.canon, depth, pos, group, None)?;
    }
    // A rejoin: the extremities we had are long stale.
    w.set_forward_extremities(room_s, &[])?;
    w.delete_remote_invite(room_s, user.as_str())?;
    match accept(w, version, join, Place::LiveWithState(state.clone()))? {
        Outcome::Accepted(_) | Outcome::AlreadyKnown => Ok(state),
        Outcome::SoftFailed => Err(Error::forbidden("the join was soft-failed")),
        Outcome::Rejected(why) => Err(Error::forbidden(format!("the join is not allowed: {why}"))),
    }
}
