//! Events made by other servers: the spec's checks on receipt of a PDU, then their place in the
//! room graph.
//!
//! Signatures and hashes need other servers' keys, so they are checked first, outside the write
//! transaction ([`Moss::verify_pdu`]). Everything after that runs inside it ([`accept`]): the
//! auth rules against the event's auth events, against the state before it, and (soft-fail)
//! against the room's current state; then the event is stored with its state and the room's
//! forward extremities and current state follow, through state resolution when branches meet.

use std::collections::{BTreeMap, HashMap, HashSet};

use moss_storage::{Reader, StateMap, Writer};
use ruma::{
    canonical_json::redact,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    signatures::{reference_hash, verify_event, Verified},
    state_res::{
        check_pdu_format, check_state_dependent_auth_rules, check_state_independent_auth_rules,
        utils::event_id_set::EventIdSet,
    },
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomVersionId,
};
use serde_json::{json, Value};

use super::{
    pdu::Pdu,
    timeline::{load_pdu, rules_for, set_current, store_event, Appended},
};
use crate::{
    error::{Error, Result},
    Moss,
};

/// A PDU whose format, signatures and event id have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedPdu {
    pub pdu: Pdu,
    pub canon: CanonicalJsonObject,
}

/// Where an accepted event goes.
#[derive(Debug, Clone)]
pub enum Place {
    /// At the front of the room: it may move the forward extremities and the current state.
    Live,
    /// Live, with the state before it given (a join's `send_join` answer).
    LiveWithState(StateMap),
    /// Live, after a gap in the graph: the state before it as its sender told us (`/state_ids`).
    AfterGap(StateMap),
    /// History older than anything sync has handed out (backfill), placed in the given state.
    History(StateMap),
}

#[derive(Debug)]
pub enum Outcome {
    Accepted(Box<Appended>),
    /// Kept for the room graph but hidden from clients: it fails the rules against current state.
    SoftFailed,
    Rejected(String),
    AlreadyKnown,
}

/// The event as it goes out over federation: the stored PDU without our `unsigned` additions.
pub fn federation_form(stored: &str) -> Result<Value> {
    let mut v: Value = serde_json::from_str(stored)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("unsigned");
    }
    Ok(v)
}

/// The event id of an event in this room version (a reference hash since room v3).
pub fn event_id_of(canon: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId> {
    let hash = reference_hash(canon, rules).map_err(|e| Error::bad_json(format!("cannot hash the event: {e}")))?;
    EventId::parse(format!("${hash}")).map_err(|e| Error::internal(e.to_string()))
}

/// The checks of a PDU from another server that need nothing but its bytes: a canonical JSON
/// object, the room version's format and size limits; and which servers must have signed it.
pub(crate) fn parse_pdu(
    rules: &RoomVersionRules,
    raw: &Value,
) -> Result<(CanonicalJsonObject, std::collections::BTreeSet<ruma::OwnedServerName>)> {
    let mut canon: CanonicalJsonObject = match serde_json::from_value::<CanonicalJsonValue>(raw.clone()) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => return Err(Error::bad_json("a PDU must be a canonical JSON object")),
    };
    canon.remove("unsigned");
    check_pdu_format(&canon, &rules.event_format).map_err(|e| Error::bad_json(format!("malformed PDU: {e}")))?;
    let servers = ruma::signatures::required_server_signatures_to_verify_event(&canon, &rules.signatures)
        .map_err(|e| Error::bad_json(format!("PDU: {e}")))?;
    Ok((canon, servers))
}

impl Moss {
    /// Format, event id, signatures and content hash of a PDU from another server. An event whose
    /// signatures hold but whose content hash does not is kept in its redacted form, as the spec
    /// says; anything worse is an error.
    pub async fn verify_pdu(&self, version: &RoomVersionId, raw: &Value) -> Result<VerifiedPdu> {
        let rules = rules_for(version)?;
        let (mut canon, servers) = parse_pdu(&rules, raw)?;
        let mut keys = ruma::signatures::PublicKeyMap::new();
        for server in servers {
            let found = self.server_verify_keys(&server).await?;
            let mut set = BTreeMap::new();
            for (id, key) in found {
                let key = ruma::serde::Base64::parse(&key).map_err(|e| Error::internal(format!("stored key: {e}")))?;
                set.insert(id, key);
            }
            keys.insert(server.to_string(), set);
        }
        let verified = verify_event(&keys, &canon, &rules)
            .map_err(|e| Error::forbidden(format!("PDU signature check failed: {e}")))?;
        let event_id = event_id_of(&canon, &rules)?;
        if verified == Verified::Signatures {
            tracing::warn!(%event_id, "content hash mismatch: keeping the redacted event");
            canon = redact(canon, &rules.redaction, None).map_err(|e| Error::bad_json(e.to_string()))?;
        }
        let pdu = Pdu::from_stored(event_id.as_str(), &serde_json::to_string(&canon)?)
            .map_err(|e| Error::bad_json(format!("PDU: {e}")))?;
        Ok(VerifiedPdu { pdu, canon })
    }
}

fn state_key_of(kind: &StateEventType, sk: &str) -> (String, String) {
    (kind.to_string(), sk.to_owned())
}

/// The auth rules against the event's own auth events.
fn check_against_auth_events(w: &Reader<'_>, rules: &RoomVersionRules, pdu: &Pdu) -> std::result::Result<(), String> {
    let fetch = |id: &EventId| load_pdu(w, id.as_str()).ok().flatten();
    check_state_independent_auth_rules(&rules.authorization, pdu, fetch).map_err(|e| e.to_string())?;
    let mut by_key: HashMap<(String, String), Pdu> = HashMap::new();
    for id in &pdu.auth_events {
        let Some(ev) = load_pdu(w, id.as_str()).ok().flatten() else {
            return Err(format!("auth event {id} is unknown"));
        };
        if let Some(sk) = &ev.state_key {
            by_key.insert((ev.kind.to_string(), sk.clone()), ev);
        }
    }
    // Since room v12 the create event is implied by the room id rather than listed.
    if let Some(room) = &pdu.room_id {
        let create_id = format!("${}", room.as_str().trim_start_matches('!'));
        if let Some(create) = load_pdu(w, &create_id).ok().flatten() {
            if create.kind == TimelineEventType::RoomCreate {
                by_key.entry(("m.room.create".to_owned(), String::new())).or_insert(create);
            }
        }
    }
    check_state_dependent_auth_rules(&rules.authorization, pdu, |k: &StateEventType, sk: &str| {
        by_key.get(&state_key_of(k, sk)).cloned()
    })
    .map_err(|e| e.to_string())
}

fn check_against_state(
    w: &Reader<'_>,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
) -> std::result::Result<(), String> {
    check_state_dependent_auth_rules(&rules.authorization, pdu, |k: &StateEventType, sk: &str| {
        state.get(&state_key_of(k, sk)).and_then(|id| load_pdu(w, id).ok().flatten())
    })
    .map_err(|e| e.to_string())
}

/// The auth rules against the event's auth events alone (for events outside the timeline).
pub(crate) fn check_auth_events_only(
    w: &Reader<'_>,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> std::result::Result<(), String> {
    check_against_auth_events(w, rules, pdu)
}

/// The state before an event: after its known prev events, resolved when there are several.
pub(crate) fn state_before_pdu(w: &Reader<'_>, rules: &RoomVersionRules, pdu: &Pdu) -> Result<Option<StateMap>> {
    state_before(w, rules, pdu)
}

/// The state after each known prev event, resolved when there are several.
fn state_before(w: &Reader<'_>, rules: &RoomVersionRules, pdu: &Pdu) -> Result<Option<StateMap>> {
    let mut states = Vec::new();
    for prev in &pdu.prev_events {
        if let Some(row) = w.event(prev.as_str())? {
            states.push(w.state_group(row.state_group)?);
        }
    }
    match states.len() {
        0 => Ok(None),
        1 => Ok(states.pop()),
        _ => resolve(w, rules, &states).map(Some),
    }
}

/// State resolutions for an event worked out before the write transaction, on a reader, so the
/// single writer is not held while they run. Each says which inputs it was made from; inside
/// the transaction it is used only when those inputs are still what they are there (the
/// graph moves on between the two), else the resolution runs again.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The prev events that were known, and the state before the event resolved from theirs.
    before: Option<(Vec<String>, StateMap)>,
    /// The forward extremities the event would leave (sorted), and the room state resolved
    /// from them.
    current: Option<(Vec<String>, StateMap)>,
}

/// The prev events of `pdu` the database knows, in order.
fn known_prevs(r: &Reader<'_>, pdu: &Pdu) -> Result<Vec<String>> {
    let mut known = Vec::new();
    for prev in &pdu.prev_events {
        if r.event(prev.as_str())?.is_some() {
            known.push(prev.to_string());
        }
    }
    Ok(known)
}

/// The forward extremities of `room` once `pdu` is in (sorted).
fn extremities_after(r: &Reader<'_>, room: &str, pdu: &Pdu) -> Result<Vec<String>> {
    let mut set: HashSet<String> = r.forward_extremities(room)?.into_iter().collect();
    for p in &pdu.prev_events {
        set.remove(p.as_str());
    }
    set.insert(pdu.event_id.to_string());
    let mut list: Vec<String> = set.into_iter().collect();
    list.sort();
    Ok(list)
}

/// Works out, on a reader, the state resolutions [`accept`] would otherwise run inside the
/// write transaction (only the expensive ones: several prev events, several extremities).
pub fn prepare(r: &Reader<'_>, version: &RoomVersionId, v: &VerifiedPdu, place: &Place) -> Result<Prepared> {
    let rules = rules_for(version)?;
    let pdu = &v.pdu;
    let mut prepared = Prepared::default();
    let before = match place {
        Place::Live => {
            let known = known_prevs(r, pdu)?;
            if known.len() < 2 {
                return Ok(prepared);
            }
            let Some(state) = state_before(r, &rules, pdu)? else { return Ok(prepared) };
            prepared.before = Some((known, state.clone()));
            state
        }
        Place::AfterGap(s) => s.clone(),
        Place::LiveWithState(_) | Place::History(_) => return Ok(prepared),
    };
    let room = room_of(pdu);
    let extremities = extremities_after(r, &room, pdu)?;
    if extremities.len() > 1 {
        let mut after = before;
        if let Some(sk) = &pdu.state_key {
            after.insert((pdu.kind.to_string(), sk.clone()), pdu.event_id.to_string());
        }
        let mut states = Vec::new();
        for e in &extremities {
            if e == pdu.event_id.as_str() {
                states.push(after.clone());
            } else if let Some(row) = r.event(e)? {
                states.push(r.state_group(row.state_group)?);
            }
        }
        prepared.current = Some((extremities, resolve(r, &rules, &states)?));
    }
    Ok(prepared)
}

/// Checks an event already verified by [`Moss::verify_pdu`] and stores it where `place` says.
pub fn accept(w: &Writer<'_>, version: &RoomVersionId, v: VerifiedPdu, place: Place) -> Result<Outcome> {
    accept_prepared(w, version, v, place, Prepared::default())
}

/// [`accept`], using resolutions [`prepare`] worked out beforehand where they still apply.
pub fn accept_prepared(
    w: &Writer<'_>,
    version: &RoomVersionId,
    v: VerifiedPdu,
    place: Place,
    prepared: Prepared,
) -> Result<Outcome> {
    let rules = rules_for(version)?;
    let VerifiedPdu { pdu, mut canon } = v;
    let id = pdu.event_id.as_str();
    if w.event(id)?.is_some() {
        return Ok(Outcome::AlreadyKnown);
    }
    let room = room_of(&pdu);
    if let Some((_, _, status)) = w.outlier(id)? {
        if status == "rejected" || status == "soft_failed" {
            return Ok(Outcome::AlreadyKnown);
        }
    }
    let stored_plain = serde_json::to_string(&canon)?;
    let reject = |why: String| -> Result<Outcome> {
        tracing::info!(event_id = %id, %why, "rejected a PDU");
        w.insert_outlier(id, &room, &stored_plain, "rejected")?;
        Ok(Outcome::Rejected(why))
    };
    if let Err(why) = check_against_auth_events(w, &rules, &pdu) {
        return reject(format!("fails the auth rules against its auth events: {why}"));
    }
    // A gap we could not fill leaves the auth events as the best state we know.
    // A join's state comes from the room's server; our own view of the room is stale or empty, so
    // there is nothing to soft-fail against.
    let soft_fail_check = !matches!(place, Place::LiveWithState(_));
    let (before, live, check_before) = match place {
        Place::LiveWithState(s) | Place::AfterGap(s) => (s, true, true),
        Place::Live => {
            let ready = match prepared.before {
                Some((known, state)) if known == known_prevs(w, &pdu)? => Some(state),
                _ => None,
            };
            let resolved = match ready {
                Some(s) => Some(s),
                None => state_before(w, &rules, &pdu)?,
            };
            match resolved {
                Some(s) => (s, true, true),
                None => (auth_state(w, &pdu)?, true, true),
            }
        }
        // History is checked against its auth events only: the state before it is not known
        // here, and the approximation `state` only places it for visibility.
        Place::History(s) => (s, false, false),
    };
    if check_before {
        if let Err(why) = check_against_state(w, &rules, &pdu, &before) {
            return reject(format!("fails the auth rules against the state before it: {why}"));
        }
    }
    if live && soft_fail_check && pdu.kind != TimelineEventType::RoomCreate {
        let current = w.current_state(&room)?;
        if !current.is_empty() {
            if let Err(why) = check_against_state(w, &rules, &pdu, &current) {
                tracing::info!(event_id = %id, %why, "soft-failed a PDU");
                w.insert_outlier(id, &room, &stored_plain, "soft_failed")?;
                return Ok(Outcome::SoftFailed);
            }
        }
    }

    // What a state event replaced, for clients.
    let kind = pdu.kind.to_string();
    if let Some(sk) = &pdu.state_key {
        if let Some(prev_id) = before.get(&(kind.clone(), sk.clone())) {
            if let Some(prev) = load_pdu(w, prev_id)? {
                let unsigned = json!({
                    "replaces_state": prev.event_id,
                    "prev_content": prev.content_value(),
                    "prev_sender": prev.sender,
                });
                if let Ok(u) = serde_json::from_value(unsigned) {
                    canon.insert("unsigned".into(), u);
                }
            }
        }
    }
    let pdu = Pdu::from_stored(id, &serde_json::to_string(&canon)?)?;
    let depth = i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX / 2);
    let stream = if live { w.next_stream()? } else { w.next_history_position(false)? };
    let mut after = before.clone();
    if let Some(sk) = &pdu.state_key {
        after.insert((kind.clone(), sk.clone()), id.to_owned());
    }
    let entries: Vec<(&str, &str, &str)> =
        after.iter().map(|((k, sk), ev)| (k.as_str(), sk.as_str(), ev.as_str())).collect();
    let state_group = w.new_state_group(&room, None, &entries)?;
    store_event(w, &rules, &pdu, &canon, depth, stream, state_group, None)?;
    // An event arriving after one that follows it (a gap filled late) is history, not a front
    // of the room: the extremities and the current state stay as they are.
    if live && !w.is_prev_referenced(id)? {
        let mut extremities: HashSet<String> = w.forward_extremities(&room)?.into_iter().collect();
        for p in &pdu.prev_events {
            extremities.remove(p.as_str());
        }
        extremities.insert(id.to_owned());
        let list: Vec<&str> = extremities.iter().map(String::as_str).collect();
        w.set_forward_extremities(&room, &list)?;
        let mut sorted: Vec<String> = extremities.iter().cloned().collect();
        sorted.sort();
        let new_state = if extremities.len() == 1 {
            after
        } else if let Some((_, state)) = prepared.current.filter(|(ex, _)| *ex == sorted) {
            state
        } else {
            let mut states = Vec::new();
            for e in &extremities {
                if let Some(row) = w.event(e)? {
                    states.push(w.state_group(row.state_group)?);
                }
            }
            resolve(w, &rules, &states)?
        };
        apply_current_state(w, &room, &new_state, stream)?;
    }
    let room_id = ruma::RoomId::parse(&room).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Outcome::Accepted(Box::new(Appended { pdu, room_id, stream })))
}

/// The state the event's auth events describe.
fn auth_state(w: &Reader<'_>, pdu: &Pdu) -> Result<StateMap> {
    let mut s = StateMap::new();
    for a in &pdu.auth_events {
        if let Some(ev) = load_pdu(w, a.as_str())? {
            if let Some(sk) = &ev.state_key {
                s.insert((ev.kind.to_string(), sk.clone()), a.to_string());
            }
        }
    }
    Ok(s)
}

pub(crate) fn room_of(pdu: &Pdu) -> String {
    match &pdu.room_id {
        Some(r) => r.to_string(),
        None => format!("!{}", pdu.event_id.as_str().trim_start_matches('$')),
    }
}

/// Brings the `current_state` table (and memberships) to `new`, recording changes at `stream`.
pub(crate) fn apply_current_state(w: &Writer<'_>, room: &str, new: &StateMap, stream: i64) -> Result<()> {
    let old = w.current_state(room)?;
    for ((k, sk), ev) in new {
        if old.get(&(k.clone(), sk.clone())) == Some(ev) {
            continue;
        }
        if let Some(pdu) = load_pdu(w, ev)? {
            set_current(w, room, k, sk, &pdu, stream)?;
        }
    }
    for (k, sk) in old.keys() {
        if !new.contains_key(&(k.clone(), sk.clone())) {
            w.delete_current_state_entry(room, k, sk)?;
        }
    }
    Ok(())
}

/// Every event reachable from `ids` through auth events (the ids themselves excluded).
pub(crate) fn auth_chain(w: &Reader<'_>, ids: impl IntoIterator<Item = String>) -> Result<HashSet<String>> {
    let mut seen = HashSet::new();
    let mut todo: Vec<String> = Vec::new();
    for id in ids {
        if let Some(p) = load_pdu(w, &id)? {
            todo.extend(p.auth_events.iter().map(|a| a.to_string()));
        }
    }
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(p) = load_pdu(w, &id)? {
            todo.extend(p.auth_events.iter().map(|a| a.to_string()).filter(|a| !seen.contains(a)));
        }
    }
    Ok(seen)
}

/// State resolution (v2, with v12's conflicted subgraph) over several states of one room.
pub(crate) fn resolve(w: &Reader<'_>, rules: &RoomVersionRules, states: &[StateMap]) -> Result<StateMap> {
    let Some(state_rules) = rules.state_res.v2_rules() else {
        return Err(Error::internal("room version without state resolution v2"));
    };
    let to_ruma = |s: &StateMap| -> ruma::state_res::StateMap<OwnedEventId> {
        s.iter()
            .filter_map(|((k, sk), ev)| {
                Some(((StateEventType::from(k.as_str()), sk.clone()), EventId::parse(ev).ok()?))
            })
            .collect()
    };
    let maps: Vec<_> = states.iter().map(to_ruma).collect();
    let mut chains = Vec::new();
    for s in states {
        let chain = auth_chain(w, s.values().cloned())?;
        chains.push(chain.into_iter().filter_map(|id| EventId::parse(id).ok()).collect::<EventIdSet<OwnedEventId>>());
    }
    let fetch = |id: &EventId| load_pdu(w, id.as_str()).ok().flatten();
    let subgraph = |conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>| -> Option<EventIdSet<OwnedEventId>> {
        conflicted_subgraph(w, conflicted.values().flatten().map(|e| e.to_string()).collect()).ok()
    };
    let resolved = ruma::state_res::resolve(&rules.authorization, state_rules, maps.iter(), chains, fetch, subgraph)
        .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
    Ok(resolved.into_iter().map(|((k, sk), ev)| ((k.to_string(), sk), ev.to_string())).collect())
}

/// Room v12's conflicted state subgraph: events on an auth path from one conflicted event to
/// another (the conflicted events included).
fn conflicted_subgraph(w: &Reader<'_>, conflicted: HashSet<String>) -> Result<EventIdSet<OwnedEventId>> {
    // Everything the conflicted events reach, then keep what itself reaches a conflicted event.
    let mut reachable: HashMap<String, Vec<String>> = HashMap::new();
    let mut todo: Vec<String> = conflicted.iter().cloned().collect();
    while let Some(id) = todo.pop() {
        if reachable.contains_key(&id) {
            continue;
        }
        let parents: Vec<String> = match load_pdu(w, &id)? {
            Some(p) => p.auth_events.iter().map(|a| a.to_string()).collect(),
            None => vec![],
        };
        todo.extend(parents.iter().cloned());
        reachable.insert(id, parents);
    }
    let mut memo: HashMap<String, bool> = HashMap::new();
    fn reaches(
        id: &str,
        graph: &HashMap<String, Vec<String>>,
        conflicted: &HashSet<String>,
        memo: &mut HashMap<String, bool>,
    ) -> bool {
        if let Some(v) = memo.get(id) {
            return *v;
        }
        memo.insert(id.to_owned(), false);
        let v = graph
            .get(id)
            .map(|ps| ps.iter().any(|p| conflicted.contains(p) || reaches(p, graph, conflicted, memo)))
            .unwrap_or(false);
        memo.insert(id.to_owned(), v);
        v
    }
    let mut out = EventIdSet::new();
    for id in reachable.keys() {
        if conflicted.contains(id) || reaches(id, &reachable, &conflicted, &mut memo) {
            if let Ok(e) = EventId::parse(id) {
                out.insert(e);
            }
        }
    }
    Ok(out)
}
