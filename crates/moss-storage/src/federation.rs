//! Queries for federation: other servers' signing keys, events held outside the timeline, the
//! outbound queue, inbound transactions and invites to rooms elsewhere.

use crate::params;

use crate::{Reader, Result, Writer};

/// One queued PDU or EDU for a destination.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub queued_ts: i64,
}

#[derive(Debug, Clone)]
pub struct RemoteInviteRow {
    pub room_id: String,
    pub event_id: String,
    pub room_version: String,
    pub invite_state: String,
}

impl Reader<'_> {
    /// An event held outside the timeline: `(room id, pdu, status)`.
    pub fn outlier(&self, event_id: &str) -> Result<Option<(String, String, String)>> {
        self.one("SELECT room_id, pdu, status FROM outliers WHERE event_id = ?1", [event_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    }

    /// The next queued PDUs and EDUs for one destination, oldest first.
    pub fn outbox(&self, destination: &str, kind: &str, limit: i64) -> Result<Vec<OutboxRow>> {
        self.collect(
            "SELECT id, kind, payload, queued_ts FROM federation_outbox WHERE destination = ?1 AND kind = ?2 \
             ORDER BY id LIMIT ?3",
            params![destination, kind, limit],
            |r| Ok(OutboxRow { id: r.get(0)?, kind: r.get(1)?, payload: r.get(2)?, queued_ts: r.get(3)? }),
        )
    }

    /// Every destination something is queued for.
    /// Queued outbox rows per destination.
    pub fn outbox_depth(&self) -> Result<Vec<(String, i64)>> {
        self.collect("SELECT destination, COUNT(*) FROM federation_outbox GROUP BY destination", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    pub fn outbox_destinations(&self) -> Result<Vec<String>> {
        self.collect("SELECT DISTINCT destination FROM federation_outbox", [], |r| r.get(0))
    }

    pub fn inbound_txn(&self, origin: &str, txn_id: &str) -> Result<Option<String>> {
        self.one(
            "SELECT response FROM federation_inbound_txns WHERE origin = ?1 AND txn_id = ?2",
            [origin, txn_id],
            |r| r.get(0),
        )
    }

    pub fn remote_invite(&self, room_id: &str, user_id: &str) -> Result<Option<RemoteInviteRow>> {
        self.one(
            "SELECT room_id, event_id, room_version, invite_state FROM remote_invites WHERE room_id = ?1 AND user_id = ?2",
            [room_id, user_id],
            |r| Ok(RemoteInviteRow { room_id: r.get(0)?, event_id: r.get(1)?, room_version: r.get(2)?, invite_state: r.get(3)? }),
        )
    }

    /// The room's oldest event above position `above` (below it sits the state a join brought):
    /// `(event id, type, state group, depth)`.
    pub fn oldest_event_above(&self, room_id: &str, above: i64) -> Result<Option<(String, String, i64, i64)>> {
        self.one(
            "SELECT event_id, type, state_group, depth FROM events WHERE room_id = ?1 AND stream > ?2 \
             ORDER BY stream ASC LIMIT 1",
            params![room_id, above],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// Whether at least `n` of a room's events lie in `(above, upto]` (stops at the n-th: this
    /// runs before every backward page, and counting a long history would not).
    pub fn has_events_between(&self, room_id: &str, above: i64, upto: i64, n: i64) -> Result<bool> {
        Ok(self
            .one(
                "SELECT 1 FROM events WHERE room_id = ?1 AND stream > ?2 AND stream <= ?3 \
                 ORDER BY stream DESC LIMIT 1 OFFSET ?4",
                params![room_id, above, upto, n.max(1) - 1],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Whether a stored event names `event_id` among its prev_events.
    pub fn is_prev_referenced(&self, event_id: &str) -> Result<bool> {
        Ok(self.one("SELECT 1 FROM event_prev_refs WHERE event_id = ?1", [event_id], |_| Ok(()))?.is_some())
    }

    /// The lowest stream position of a room's events (its earliest known event).
    pub fn earliest_stream(&self, room_id: &str) -> Result<Option<i64>> {
        self.one("SELECT MIN(stream) FROM events WHERE room_id = ?1", [room_id], |r| r.get::<_, Option<i64>>(0))
            .map(Option::flatten)
    }

    /// A server's stored key document and its validity.
    pub fn server_key_doc(&self, server_name: &str) -> Result<Option<(String, i64)>> {
        self.one("SELECT doc, valid_until_ts FROM server_key_docs WHERE server_name = ?1", [server_name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    /// `(key id, public key)` of a server's keys still valid at `now`.
    pub fn server_keys(&self, server_name: &str, now: i64) -> Result<Vec<(String, String)>> {
        self.collect(
            "SELECT key_id, public_key FROM server_keys WHERE server_name = ?1 AND valid_until_ts > ?2 ORDER BY key_id",
            params![server_name, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }
}

impl Writer<'_> {
    pub fn note_prev_refs(&self, prev_events: &[&str]) -> Result<()> {
        for p in prev_events {
            self.exec("INSERT INTO event_prev_refs (event_id) VALUES (?1) ON CONFLICT DO NOTHING", [p])?;
        }
        Ok(())
    }

    /// Keeps an event outside the timeline (ignored if already held).
    pub fn insert_outlier(&self, event_id: &str, room_id: &str, pdu: &str, status: &str) -> Result<()> {
        self.exec(
            "INSERT INTO outliers (event_id, room_id, pdu, status) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![event_id, room_id, pdu, status],
        )?;
        Ok(())
    }

    /// A position before everything sync has handed out: `state` ones (for the state a join
    /// brings) sort before `history` ones (backfilled events, newest first).
    pub fn next_history_position(&self, state: bool) -> Result<i64> {
        let sql = if state {
            "UPDATE history_counter SET state = state + 1 WHERE id = 0 RETURNING state"
        } else {
            "UPDATE history_counter SET history = history - 1 WHERE id = 0 RETURNING history"
        };
        self.returning(sql, [])
    }

    pub fn enqueue_outbound(&self, destination: &str, kind: &str, payload: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO federation_outbox (destination, kind, payload, queued_ts) VALUES (?1, ?2, ?3, ?4)",
            params![destination, kind, payload, now],
        )?;
        Ok(())
    }

    /// Drops what a destination acknowledged.
    pub fn dequeue_outbound(&self, destination: &str, ids: &[i64]) -> Result<()> {
        for id in ids {
            self.exec("DELETE FROM federation_outbox WHERE destination = ?1 AND id = ?2", params![destination, id])?;
        }
        Ok(())
    }

    pub fn store_inbound_txn(&self, origin: &str, txn_id: &str, response: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO federation_inbound_txns (origin, txn_id, response, ts) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING",
            params![origin, txn_id, response, now],
        )?;
        // A day of history is plenty for retries.
        self.exec("DELETE FROM federation_inbound_txns WHERE ts < ?1", params![now - 24 * 3600 * 1000])?;
        Ok(())
    }

    pub fn store_remote_invite(
        &self,
        room_id: &str,
        user_id: &str,
        event_id: &str,
        room_version: &str,
        invite_state: &str,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO remote_invites (room_id, user_id, event_id, room_version, invite_state) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET event_id = excluded.event_id, \
               room_version = excluded.room_version, invite_state = excluded.invite_state",
            params![room_id, user_id, event_id, room_version, invite_state],
        )?;
        Ok(())
    }

    pub fn delete_remote_invite(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.exec("DELETE FROM remote_invites WHERE room_id = ?1 AND user_id = ?2", params![room_id, user_id])?;
        Ok(())
    }

    /// Replaces a room's current state wholesale (after state resolution).
    pub fn delete_current_state_entry(&self, room_id: &str, kind: &str, state_key: &str) -> Result<()> {
        self.exec(
            "DELETE FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3",
            params![room_id, kind, state_key],
        )?;
        Ok(())
    }

    pub fn store_server_key_doc(&self, server_name: &str, doc: &str, valid_until_ts: i64) -> Result<()> {
        self.exec(
            "INSERT INTO server_key_docs (server_name, doc, valid_until_ts) VALUES (?1, ?2, ?3) \
             ON CONFLICT (server_name) DO UPDATE SET doc = excluded.doc, valid_until_ts = excluded.valid_until_ts",
            params![server_name, doc, valid_until_ts],
        )?;
        Ok(())
    }

    pub fn store_server_key(
        &self,
        server_name: &str,
        key_id: &str,
        public_key: &str,
        valid_until_ts: i64,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, fetched_ts) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (server_name, key_id) DO UPDATE SET \
               public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts",
            params![server_name, key_id, public_key, valid_until_ts, now],
        )?;
        Ok(())
    }
}
