//! What each sliding sync connection has been sent, kept in memory per position.
//!
//! A connection is (user, device, `conn_id`). Each response gets a new position (`pos`), and
//! with it a snapshot of what the client has after reading it: per room, up to which stream
//! position its timeline and state were sent and with which `required_state` and
//! `timeline_limit`. The next request names the position it continues from, so a retried
//! request (its response lost) is answered again from the same snapshot. The last
//! [`KEPT_POSITIONS`] positions of a connection are kept; an older or unknown one (or any after
//! a restart: positions carry a per-process nonce) is `M_UNKNOWN_POS`, and the client starts a
//! new connection, as the MSC intends.
//!
//! Memory is bounded: [`MAX_PER_DEVICE`] connections per device and [`MAX_CONNECTIONS`] in all,
//! the least recently used going first, and connections idle for [`IDLE_EXPIRY`] are dropped.
//!
//! Processes sharing a database (crate::cluster) keep the positions in it instead (table
//! `sliding_positions`, positions `db_<n>`), with the same limits, so that a client's next
//! request may reach any of them: [`Moss::sliding_resume`] and [`Moss::sliding_store`].

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    api::{client::sync::sync_events::v5::request, error::ErrorKind},
    events::room::member::MembershipState,
    OwnedDeviceId, OwnedRoomId, OwnedUserId,
};

use super::{required::RequiredState, wire};
use crate::{error::Error, sync::SyncToken, Result};

pub const KEPT_POSITIONS: usize = 3;
pub const MAX_PER_DEVICE: usize = 16;
pub const MAX_CONNECTIONS: usize = 20_000;
pub const IDLE_EXPIRY: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: OwnedUserId,
    device: OwnedDeviceId,
    conn_id: String,
}

/// How a room stood with the client after a response.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomSent {
    /// The room's timeline and state were sent up to this stream position.
    pub upto: i64,
    pub membership: MembershipState,
    pub timeline_limit: u64,
    pub required: Arc<RequiredState>,
}

/// Everything the client has after reading the response at one position.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// Where the response left the streams; `None` before the first response.
    pub token: Option<SyncToken>,
    pub rooms: HashMap<OwnedRoomId, RoomSent>,
    /// List counts and windows last sent, so an unchanged list does not end a long-poll.
    pub lists: BTreeMap<String, wire::List>,
    /// The extensions last asked for: a request that leaves one out keeps it as it was.
    pub extensions: request::Extensions,
    /// The to-device position the last response gave (`extensions.to_device.next_batch`).
    pub to_device_next: Option<String>,
}

struct Conn {
    next: u64,
    positions: VecDeque<(u64, Arc<ConnState>)>,
    used: Instant,
}

pub struct Connections {
    nonce: String,
    conns: Mutex<HashMap<Key, Conn>>,
}

impl Default for Connections {
    fn default() -> Self {
        let nonce: String = (0..6).map(|_| char::from(b'a' + (rand::random::<u8>() % 26))).collect();
        Connections { nonce, conns: Mutex::default() }
    }
}

fn unknown_pos() -> Error {
    Error::new(ErrorKind::UnknownPos, 400, "unknown or expired pos: start a new sliding sync connection")
}

impl Connections {
    /// The snapshot a request continues from: a fresh one without `pos`.
    pub fn resume(
        &self,
        user: &OwnedUserId,
        device: &OwnedDeviceId,
        conn_id: &str,
        pos: Option<&str>,
    ) -> Result<Arc<ConnState>> {
        let Some(pos) = pos else {
            return Ok(Arc::new(ConnState::default()));
        };
        let (nonce, n) = pos.split_once('_').ok_or_else(unknown_pos)?;
        let n: u64 = n.parse().map_err(|_| unknown_pos())?;
        if nonce != self.nonce {
            return Err(unknown_pos());
        }
        let key = Key { user: user.clone(), device: device.clone(), conn_id: conn_id.to_owned() };
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let conn = conns.get_mut(&key).ok_or_else(unknown_pos)?;
        if conn.used.elapsed() > IDLE_EXPIRY {
            conns.remove(&key);
            return Err(unknown_pos());
        }
        conn.used = Instant::now();
        conn.positions.iter().find(|(p, _)| *p == n).map(|(_, s)| s.clone()).ok_or_else(unknown_pos)
    }

    /// Records the snapshot after a response and returns its `pos`. `continued` is whether the
    /// request named a position (without one the connection starts over).
    pub fn store(
        &self,
        user: &OwnedUserId,
        device: &OwnedDeviceId,
        conn_id: &str,
        continued: bool,
        state: ConnState,
    ) -> String {
        let key = Key { user: user.clone(), device: device.clone(), conn_id: conn_id.to_owned() };
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if !continued || !conns.contains_key(&key) {
            make_room(&mut conns, &key);
            conns.insert(key.clone(), Conn { next: 1, positions: VecDeque::new(), used: Instant::now() });
        }
        let Some(conn) = conns.get_mut(&key) else {
            return String::new(); // just inserted
        };
        let n = conn.next;
        conn.next += 1;
        conn.used = Instant::now();
        conn.positions.push_back((n, Arc::new(state)));
        while conn.positions.len() > KEPT_POSITIONS {
            conn.positions.pop_front();
        }
        format!("{}_{n}", self.nonce)
    }

    /// Open connections (for the benchmark and tests).
    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes space for one more connection of `key`'s device: drops idle connections, then the
/// device's least recently used beyond its share, then the least recently used overall.
fn make_room(conns: &mut HashMap<Key, Conn>, key: &Key) {
    if conns.len() >= MAX_CONNECTIONS {
        conns.retain(|_, c| c.used.elapsed() <= IDLE_EXPIRY);
    }
    let mut same_device: Vec<(Instant, Key)> = conns
        .iter()
        .filter(|(k, _)| k.user == key.user && k.device == key.device && k.conn_id != key.conn_id)
        .map(|(k, c)| (c.used, k.clone()))
        .collect();
    if same_device.len() >= MAX_PER_DEVICE {
        same_device.sort_by_key(|(used, _)| *used);
        for (_, k) in same_device.iter().take(same_device.len() + 1 - MAX_PER_DEVICE) {
            conns.remove(k);
        }
    }
    while conns.len() >= MAX_CONNECTIONS {
        let Some(oldest) = conns.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone()) else { break };
        conns.remove(&oldest);
    }
}

/// A [`ConnState`] as stored in the database: each distinct `required_state` once.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    token: Option<SyncToken>,
    required: Vec<RequiredState>,
    /// (room, upto, membership, timeline_limit, index into `required`)
    rooms: Vec<(OwnedRoomId, i64, MembershipState, u64, usize)>,
    lists: BTreeMap<String, wire::List>,
    extensions: request::Extensions,
    to_device_next: Option<String>,
}

impl Stored {
    fn of(state: &ConnState) -> Stored {
        let mut required: Vec<Arc<RequiredState>> = Vec::new();
        let mut rooms = Vec::with_capacity(state.rooms.len());
        for (room, sent) in &state.rooms {
            let idx = match required.iter().position(|r| Arc::ptr_eq(r, &sent.required) || **r == *sent.required) {
                Some(i) => i,
                None => {
                    required.push(sent.required.clone());
                    required.len() - 1
                }
            };
            rooms.push((room.clone(), sent.upto, sent.membership.clone(), sent.timeline_limit, idx));
        }
        Stored {
            token: state.token,
            required: required.iter().map(|r| (**r).clone()).collect(),
            rooms,
            lists: state.lists.clone(),
            extensions: state.extensions.clone(),
            to_device_next: state.to_device_next.clone(),
        }
    }

    fn into_state(self) -> ConnState {
        let required: Vec<Arc<RequiredState>> = self.required.into_iter().map(Arc::new).collect();
        let rooms = self
            .rooms
            .into_iter()
            .filter_map(|(room, upto, membership, timeline_limit, idx)| {
                let required = required.get(idx)?.clone();
                Some((room, RoomSent { upto, membership, timeline_limit, required }))
            })
            .collect();
        ConnState {
            token: self.token,
            rooms,
            lists: self.lists,
            extensions: self.extensions,
            to_device_next: self.to_device_next,
        }
    }
}

const SHARED_PREFIX: &str = "db_";

impl crate::Moss {
    /// [`Connections::resume`], from the database when processes share it.
    pub(crate) async fn sliding_resume(
        &self,
        user: &OwnedUserId,
        device: &OwnedDeviceId,
        conn_id: &str,
        pos: Option<&str>,
    ) -> Result<Arc<ConnState>> {
        if !self.db.is_shared() {
            return self.sliding.resume(user, device, conn_id, pos);
        }
        let Some(pos) = pos else {
            return Ok(Arc::new(ConnState::default()));
        };
        let n: i64 = pos.strip_prefix(SHARED_PREFIX).and_then(|n| n.parse().ok()).ok_or_else(unknown_pos)?;
        let (u, d, c) = (user.to_string(), device.to_string(), conn_id.to_owned());
        let row =
            self.db.read(move |r| Ok::<_, Error>(r.sliding_position(&u, &d, &c, n)?)).await?.ok_or_else(unknown_pos)?;
        if crate::now_ms() as i64 - row.used_ts > IDLE_EXPIRY.as_millis() as i64 {
            return Err(unknown_pos());
        }
        let stored: Stored = serde_json::from_str(&row.state).map_err(|_| unknown_pos())?;
        Ok(Arc::new(stored.into_state()))
    }

    /// [`Connections::store`], into the database when processes share it.
    pub(crate) async fn sliding_store(
        &self,
        user: &OwnedUserId,
        device: &OwnedDeviceId,
        conn_id: &str,
        continued: bool,
        state: ConnState,
    ) -> Result<String> {
        if !self.db.is_shared() {
            return Ok(self.sliding.store(user, device, conn_id, continued, state));
        }
        let json = serde_json::to_string(&Stored::of(&state)).map_err(|e| Error::internal(e.to_string()))?;
        let (u, d, c) = (user.to_string(), device.to_string(), conn_id.to_owned());
        let now = crate::now_ms() as i64;
        let idle_before = now - IDLE_EXPIRY.as_millis() as i64;
        let n = self
            .db
            .write(move |w| {
                Ok::<_, Error>(w.store_sliding_position(
                    &u,
                    &d,
                    &c,
                    continued,
                    &json,
                    now,
                    KEPT_POSITIONS as i64,
                    MAX_PER_DEVICE as i64,
                    idle_before,
                )?)
            })
            .await?;
        Ok(format!("{SHARED_PREFIX}{n}"))
    }
}
