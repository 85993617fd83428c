//! Jump to date across servers. Served: `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`
//! for servers in the room. Asked: a user's `timestamp_to_event` answers from this server's copy
//! of the room, unless that copy may not reach the date (nothing stored in that direction, or
//! the event found is the oldest stored while older history exists elsewhere, as after joining
//! a room with a long past). Then the other servers are asked, and if one has an event there,
//! older history is fetched (`/backfill`) until it is here, so the client can open it.

use moss_storage::Direction;
use ruma::{RoomId, ServerName, UserId};
use serde::Deserialize;

use super::rooms::{remote_servers, require_server_in_room};
use crate::{error::Error, Moss, Result};

/// Servers asked, in the room's order, before giving up.
const SERVERS_ASKED: usize = 3;
/// Backfill batches fetched to bring a remote answer here: 1,000 events at most.
const BACKFILL_ROUNDS: usize = 10;
const BACKFILL_BATCH: usize = 100;

#[derive(Deserialize)]
struct RemoteAnswer {
    event_id: String,
}

fn dir_param(dir: Direction) -> &'static str {
    match dir {
        Direction::Forward => "f",
        Direction::Backward => "b",
    }
}

impl Moss {
    /// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=`: the event closest to
    /// `ts` in that direction, for a server with a member in the room (or a world-readable one).
    pub async fn serve_timestamp_to_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        ts: u64,
        dir: Direction,
    ) -> Result<(String, u64)> {
        let (room, origin) = (room_id.to_string(), origin.to_owned());
        self.db
            .read(move |r| {
                require_server_in_room(r, &room, &origin)?;
                match r.event_near_ts(&room, ts as i64, dir)? {
                    Some(row) => Ok((row.event_id, row.origin_server_ts as u64)),
                    None => Err(Error::not_found("no event found in that direction")),
                }
            })
            .await
    }

    /// A user's `timestamp_to_event`, reaching other servers' history when ours may not
    /// cover the date (see the module's header).
    pub async fn timestamp_to_event_anywhere(
        &self,
        user: &UserId,
        room_id: &RoomId,
        ts: u64,
        dir: Direction,
    ) -> Result<(String, u64)> {
        let local = self.timestamp_to_event(user, room_id, ts, dir).await;
        if self.federation.is_none() || matches!(&local, Err(e) if !matches!(e, Error::Matrix { status: 404, .. })) {
            return local;
        }
        // History before our oldest stored event exists elsewhere: if the date falls before
        // it, the answer may be in that part (the state from the join, also stored, is older
        // still and would be a wrong answer going backwards).
        let Some(oldest) = self.history_continues_before(room_id).await else { return local };
        let oldest_ts = self.db.read(move |r| Ok::<_, Error>(r.event(&oldest)?.map(|e| e.origin_server_ts))).await?;
        if oldest_ts.is_some_and(|o| (ts as i64) >= o) {
            return local;
        }
        let Some(event_id) = self.ask_timestamp_to_event(room_id, ts, dir).await else { return local };
        for _ in 0..BACKFILL_ROUNDS {
            let id = event_id.clone();
            if self.db.read(move |r| Ok::<_, Error>(r.event(&id)?.is_some())).await? {
                break;
            }
            if self.backfill_older(room_id, BACKFILL_BATCH).await == 0 {
                break;
            }
        }
        self.timestamp_to_event(user, room_id, ts, dir).await
    }

    /// The first answer of the room's other servers, if any has an event in that direction.
    async fn ask_timestamp_to_event(&self, room_id: &RoomId, ts: u64, dir: Direction) -> Option<String> {
        let (room, us) = (room_id.to_string(), self.server_name.clone());
        let servers = self.db.read(move |r| remote_servers(r, &room, &us)).await.ok()?;
        let path = format!(
            "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir={}",
            super::query::urlencode(room_id.as_str()),
            dir_param(dir)
        );
        for server in servers.iter().take(SERVERS_ASKED) {
            let Ok(server) = ServerName::parse(server) else { continue };
            match self.federation_request(&server, http::Method::GET, &path, None).await {
                Ok(v) => match serde_json::from_value::<RemoteAnswer>(v) {
                    Ok(a) => return Some(a.event_id),
                    Err(e) => tracing::info!(%server, error = %e, "a bad timestamp_to_event answer"),
                },
                Err(e) => tracing::debug!(%server, room = %room_id, error = %e, "timestamp_to_event elsewhere"),
            }
        }
        None
    }
}
