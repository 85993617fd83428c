//! Every query moss runs, as methods on [`Reader`] and [`Writer`].
//!
//! Identifiers are plain strings here: validation belongs to the service layer, and keeping ruma
//! out of this crate keeps the SQL readable and a second backend straightforward.

use std::collections::BTreeMap;

use crate::{backend::Row, params};

use crate::{Reader, Result, Writer};

/// `(event type, state key) -> event id`
pub type StateMap = BTreeMap<(String, String), String>;

/// Snapshot a state group fully once its delta chain is this long.
const MAX_STATE_CHAIN: i64 = 64;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub admin: bool,
    pub deactivated: bool,
    pub created_ts: i64,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
    pub last_seen_user_agent: Option<String>,
}

fn device_row(r: &Row<'_>) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device_id: r.get(0)?,
        display_name: r.get(1)?,
        last_seen_ts: r.get(2)?,
        last_seen_ip: r.get(3)?,
        last_seen_user_agent: r.get(4)?,
    })
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
    /// An admin locked the account: its sessions stay but may not be used.
    pub locked: bool,
}

#[derive(Debug, Clone)]
pub struct RegistrationTokenRow {
    pub token: String,
    pub uses_allowed: Option<i64>,
    pub completed: i64,
    pub expiry_ts: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct RoomRow {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub published: bool,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub stream: i64,
    pub event_id: String,
    pub room_id: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: i64,
    pub pdu: String,
    pub state_group: i64,
    pub redacted_by: Option<String>,
    pub txn_user: Option<String>,
    pub txn_device: Option<String>,
    pub txn_id: Option<String>,
}

/// What the service hands over to persist one event.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub stream: i64,
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub kind: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub origin_server_ts: i64,
    pub depth: i64,
    pub pdu: &'a str,
    pub state_group: i64,
    pub txn: Option<(&'a str, &'a str, &'a str)>,
}

#[derive(Debug, Clone)]
pub struct MembershipRow {
    pub room_id: String,
    pub user_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream: i64,
    pub forgotten: bool,
}

#[derive(Debug, Clone)]
pub struct AccountDataRow {
    pub room_id: String,
    pub kind: String,
    pub content: String,
    pub stream: i64,
}

#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
    pub stream: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

fn user_row(r: &Row<'_>) -> Result<UserRow> {
    Ok(UserRow {
        user_id: r.get(0)?,
        password_hash: r.get(1)?,
        admin: r.get(2)?,
        deactivated: r.get(3)?,
        created_ts: r.get(4)?,
        displayname: r.get(5)?,
        avatar_url: r.get(6)?,
    })
}
const USER_COLS: &str = "user_id, password_hash, admin, deactivated, created_ts, displayname, avatar_url";

pub(crate) fn event_row(r: &Row<'_>) -> Result<EventRow> {
    Ok(EventRow {
        stream: r.get(0)?,
        event_id: r.get(1)?,
        room_id: r.get(2)?,
        kind: r.get(3)?,
        state_key: r.get(4)?,
        sender: r.get(5)?,
        origin_server_ts: r.get(6)?,
        pdu: r.get(7)?,
        state_group: r.get(8)?,
        redacted_by: r.get(9)?,
        txn_user: r.get(10)?,
        txn_device: r.get(11)?,
        txn_id: r.get(12)?,
    })
}
pub(crate) const EVENT_COLS: &str = "stream, event_id, room_id, type, state_key, sender, origin_server_ts, pdu, \
                          state_group, redacted_by, txn_user, txn_device, txn_id";

fn membership_row(r: &Row<'_>) -> Result<MembershipRow> {
    Ok(MembershipRow {
        room_id: r.get(0)?,
        user_id: r.get(1)?,
        membership: r.get(2)?,
        event_id: r.get(3)?,
        stream: r.get(4)?,
        forgotten: r.get(5)?,
    })
}
const MEMBERSHIP_COLS: &str = "room_id, user_id, membership, event_id, stream, forgotten";

pub(crate) fn receipt_row(r: &Row<'_>) -> Result<ReceiptRow> {
    Ok(ReceiptRow {
        room_id: r.get(0)?,
        user_id: r.get(1)?,
        receipt_type: r.get(2)?,
        thread_id: r.get(3)?,
        event_id: r.get(4)?,
        ts: r.get(5)?,
        stream: r.get(6)?,
    })
}
pub(crate) const RECEIPT_COLS: &str = "room_id, user_id, receipt_type, thread_id, event_id, ts, stream";

/// The delta chain of state group `?1` as `chain(id, depth)`, depth 0 being the group itself.
const STATE_CHAIN: &str = "WITH RECURSIVE chain(id, parent, depth) AS ( \
     SELECT id, parent, 0 FROM state_groups WHERE id = ?1 \
     UNION ALL SELECT g.id, g.parent, c.depth + 1 FROM state_groups g JOIN chain c ON g.id = c.parent)";

impl Reader<'_> {
    // ---- stream ----

    pub fn current_stream(&self) -> Result<i64> {
        Ok(self.one("SELECT pos FROM stream_counter WHERE id = 0", [], |r| r.get(0))?.unwrap_or(0))
    }

    // ---- users ----

    pub fn user(&self, user_id: &str) -> Result<Option<UserRow>> {
        self.one(&format!("SELECT {USER_COLS} FROM users WHERE user_id = ?1"), [user_id], user_row)
    }

    pub fn users(&self) -> Result<Vec<UserRow>> {
        self.collect(&format!("SELECT {USER_COLS} FROM users ORDER BY user_id"), [], user_row)
    }

    /// Users whose id or display name contains `term`, who share a room with `searcher` or sit in
    /// a published room.
    pub fn search_users(&self, searcher: &str, term: &str, limit: i64) -> Result<Vec<UserRow>> {
        let pattern = format!("%{}%", term.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        self.collect(
            &format!(
                "SELECT {USER_COLS} FROM users u WHERE u.deactivated = 0 AND \
                 (u.user_id LIKE ?2 ESCAPE '\\' OR u.displayname LIKE ?2 ESCAPE '\\') AND \
                 (u.user_id = ?1 OR EXISTS (SELECT 1 FROM memberships a JOIN memberships b ON a.room_id = b.room_id \
                    WHERE a.user_id = ?1 AND b.user_id = u.user_id AND a.membership = 'join' AND b.membership = 'join') \
                  OR EXISTS (SELECT 1 FROM memberships m JOIN rooms r ON r.room_id = m.room_id \
                    WHERE m.user_id = u.user_id AND m.membership = 'join' AND r.published = 1)) \
                 ORDER BY u.user_id LIMIT ?3"
            ),
            params![searcher, pattern, limit],
            user_row,
        )
    }

    // ---- devices and tokens ----

    pub fn devices(&self, user_id: &str) -> Result<Vec<DeviceRow>> {
        self.collect(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices \
             WHERE user_id = ?1 ORDER BY device_id",
            [user_id],
            device_row,
        )
    }

    pub fn device(&self, user_id: &str, device_id: &str) -> Result<Option<DeviceRow>> {
        self.one(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices \
             WHERE user_id = ?1 AND device_id = ?2",
            [user_id, device_id],
            device_row,
        )
    }

    pub fn token(&self, token: &str) -> Result<Option<TokenRow>> {
        self.one(
            "SELECT t.user_id, t.device_id, t.expires_ts, COALESCE(u.locked, 0) FROM access_tokens t \
             LEFT JOIN users u ON u.user_id = t.user_id WHERE t.token = ?1",
            [token],
            |r| Ok(TokenRow { user_id: r.get(0)?, device_id: r.get(1)?, expires_ts: r.get(2)?, locked: r.get(3)? }),
        )
    }

    /// The access token a refresh token belongs to, with its session.
    pub fn refresh_token(&self, refresh: &str) -> Result<Option<(String, TokenRow)>> {
        self.one(
            "SELECT t.token, t.user_id, t.device_id, t.expires_ts, COALESCE(u.locked, 0) FROM access_tokens t \
             LEFT JOIN users u ON u.user_id = t.user_id WHERE t.refresh_token = ?1",
            [refresh],
            |r| {
                let row =
                    TokenRow { user_id: r.get(1)?, device_id: r.get(2)?, expires_ts: r.get(3)?, locked: r.get(4)? };
                Ok((r.get(0)?, row))
            },
        )
    }

    pub fn registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>> {
        self.collect(
            "SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens ORDER BY token",
            [],
            |r| {
                Ok(RegistrationTokenRow {
                    token: r.get(0)?,
                    uses_allowed: r.get(1)?,
                    completed: r.get(2)?,
                    expiry_ts: r.get(3)?,
                })
            },
        )
    }

    pub fn registration_token(&self, token: &str) -> Result<Option<RegistrationTokenRow>> {
        self.one(
            "SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens WHERE token = ?1",
            [token],
            |r| {
                Ok(RegistrationTokenRow {
                    token: r.get(0)?,
                    uses_allowed: r.get(1)?,
                    completed: r.get(2)?,
                    expiry_ts: r.get(3)?,
                })
            },
        )
    }

    // ---- rooms ----

    pub fn room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        self.one("SELECT room_id, room_version, creator, published FROM rooms WHERE room_id = ?1", [room_id], |r| {
            Ok(RoomRow { room_id: r.get(0)?, room_version: r.get(1)?, creator: r.get(2)?, published: r.get(3)? })
        })
    }

    pub fn published_rooms(&self) -> Result<Vec<String>> {
        self.collect("SELECT room_id FROM rooms WHERE published = 1 ORDER BY created_ts", [], |r| r.get(0))
    }

    // ---- events ----

    pub fn event(&self, event_id: &str) -> Result<Option<EventRow>> {
        self.one(&format!("SELECT {EVENT_COLS} FROM events WHERE event_id = ?1"), [event_id], event_row)
    }

    pub fn event_by_txn(&self, user_id: &str, device_id: &str, txn_id: &str) -> Result<Option<String>> {
        self.one(
            "SELECT event_id FROM events WHERE txn_user = ?1 AND txn_device = ?2 AND txn_id = ?3",
            [user_id, device_id, txn_id],
            |r| r.get(0),
        )
    }

    /// Events of a room with `stream` strictly after `from` (forward) or strictly before it
    /// (backward), bounded by `to` (exclusive on the far side), in the order of travel.
    pub fn room_events(
        &self,
        room_id: &str,
        from: i64,
        to: Option<i64>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        match dir {
            Direction::Forward => self.collect(
                &format!(
                    "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND stream > ?2 AND stream <= ?3 \
                     ORDER BY stream ASC LIMIT ?4"
                ),
                params![room_id, from, to.unwrap_or(i64::MAX), limit],
                event_row,
            ),
            Direction::Backward => self.collect(
                &format!(
                    "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND stream <= ?2 AND stream > ?3 \
                     ORDER BY stream DESC LIMIT ?4"
                ),
                params![room_id, from, to.unwrap_or(i64::MIN), limit],
                event_row,
            ),
        }
    }

    /// The latest event of a room at or before `stream`.
    pub fn last_event_at(&self, room_id: &str, stream: i64) -> Result<Option<EventRow>> {
        self.one(
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND stream <= ?2 ORDER BY stream DESC LIMIT 1"
            ),
            params![room_id, stream],
            event_row,
        )
    }

    /// The event closest to `ts`: the first at or after it (forward) or the last at or before it.
    pub fn event_near_ts(&self, room_id: &str, ts: i64, dir: Direction) -> Result<Option<EventRow>> {
        let sql = match dir {
            Direction::Forward => format!(
                "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND origin_server_ts >= ?2 ORDER BY origin_server_ts ASC, stream ASC LIMIT 1"
            ),
            Direction::Backward => format!(
                "SELECT {EVENT_COLS} FROM events WHERE room_id = ?1 AND origin_server_ts <= ?2 ORDER BY origin_server_ts DESC, stream DESC LIMIT 1"
            ),
        };
        self.one(&sql, params![room_id, ts], event_row)
    }

    pub fn forward_extremities(&self, room_id: &str) -> Result<Vec<String>> {
        self.collect("SELECT event_id FROM forward_extremities WHERE room_id = ?1 ORDER BY event_id", [room_id], |r| {
            r.get(0)
        })
    }

    pub fn event_depth(&self, event_id: &str) -> Result<Option<i64>> {
        self.one("SELECT depth FROM events WHERE event_id = ?1", [event_id], |r| r.get(0))
    }

    // ---- state ----

    /// The full state of a state group, following its delta chain (one statement: the chain
    /// and its entries, oldest delta first so that newer ones overwrite).
    pub fn state_group(&self, group: i64) -> Result<StateMap> {
        let rows = self.collect(
            &format!(
                "{STATE_CHAIN} SELECT e.type, e.state_key, e.event_id FROM chain c \
                 JOIN state_group_entries e ON e.group_id = c.id ORDER BY c.depth DESC"
            ),
            [group],
            |r| Ok(((r.get::<_, String>(0)?, r.get::<_, String>(1)?), r.get::<_, String>(2)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    pub fn current_state(&self, room_id: &str) -> Result<StateMap> {
        let rows =
            self.collect("SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1", [room_id], |r| {
                Ok(((r.get::<_, String>(0)?, r.get::<_, String>(1)?), r.get::<_, String>(2)?))
            })?;
        Ok(rows.into_iter().collect())
    }

    pub fn current_state_event(&self, room_id: &str, kind: &str, state_key: &str) -> Result<Option<EventRow>> {
        self.one(
            &format!(
                "SELECT {} FROM current_state c JOIN events e ON e.event_id = c.event_id \
                 WHERE c.room_id = ?1 AND c.type = ?2 AND c.state_key = ?3",
                EVENT_COLS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
            ),
            [room_id, kind, state_key],
            event_row,
        )
    }

    // ---- memberships ----

    pub fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<MembershipRow>> {
        self.one(
            &format!("SELECT {MEMBERSHIP_COLS} FROM memberships WHERE room_id = ?1 AND user_id = ?2"),
            [room_id, user_id],
            membership_row,
        )
    }

    /// Every room the user has a membership in, with the latest change first.
    pub fn user_memberships(&self, user_id: &str) -> Result<Vec<MembershipRow>> {
        self.collect(
            &format!("SELECT {MEMBERSHIP_COLS} FROM memberships WHERE user_id = ?1 ORDER BY stream DESC"),
            [user_id],
            membership_row,
        )
    }

    pub fn rooms_with_membership(&self, user_id: &str, membership: &str) -> Result<Vec<String>> {
        self.collect(
            "SELECT room_id FROM memberships WHERE user_id = ?1 AND membership = ?2 ORDER BY room_id",
            [user_id, membership],
            |r| r.get(0),
        )
    }

    /// The stream position of the user's latest `join` membership event in the room.
    pub fn last_join_stream(&self, room_id: &str, user_id: &str) -> Result<Option<i64>> {
        Ok(self
            .one(
                "SELECT MAX(stream) FROM events WHERE room_id = ?1 AND type = 'm.room.member' AND state_key = ?2 \
                 AND json_extract(pdu, '$.content.membership') = 'join'",
                [room_id, user_id],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .flatten())
    }

    pub fn room_members(&self, room_id: &str) -> Result<Vec<MembershipRow>> {
        self.collect(
            &format!("SELECT {MEMBERSHIP_COLS} FROM memberships WHERE room_id = ?1 ORDER BY user_id"),
            [room_id],
            membership_row,
        )
    }

    pub fn joined_member_count(&self, room_id: &str) -> Result<i64> {
        Ok(self
            .one("SELECT COUNT(*) FROM memberships WHERE room_id = ?1 AND membership = 'join'", [room_id], |r| {
                r.get(0)
            })?
            .unwrap_or(0))
    }

    /// Users joined to any room that `user_id` is joined to (including the user).
    pub fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        self.collect(
            "SELECT DISTINCT b.user_id FROM memberships a JOIN memberships b ON a.room_id = b.room_id \
             WHERE a.user_id = ?1 AND a.membership = 'join' AND b.membership = 'join'",
            [user_id],
            |r| r.get(0),
        )
    }

    // ---- aliases ----

    pub fn alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        self.one("SELECT room_id, creator FROM room_aliases WHERE alias = ?1", [alias], |r| Ok((r.get(0)?, r.get(1)?)))
    }

    pub fn room_aliases(&self, room_id: &str) -> Result<Vec<String>> {
        self.collect("SELECT alias FROM room_aliases WHERE room_id = ?1 ORDER BY alias", [room_id], |r| r.get(0))
    }

    // ---- account data, filters, receipts, pushers ----

    pub fn account_data(&self, user_id: &str, room_id: &str, kind: &str) -> Result<Option<String>> {
        self.one(
            "SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND type = ?3",
            [user_id, room_id, kind],
            |r| r.get(0),
        )
    }

    /// Account data changed after `since` (everything for `since = 0`), global and per room.
    pub fn account_data_since(&self, user_id: &str, since: i64) -> Result<Vec<AccountDataRow>> {
        self.collect(
            "SELECT room_id, type, content, stream FROM account_data WHERE user_id = ?1 AND stream > ?2 ORDER BY stream",
            params![user_id, since],
            |r| Ok(AccountDataRow { room_id: r.get(0)?, kind: r.get(1)?, content: r.get(2)?, stream: r.get(3)? }),
        )
    }

    pub fn filter(&self, user_id: &str, filter_id: i64) -> Result<Option<String>> {
        self.one("SELECT filter FROM filters WHERE user_id = ?1 AND filter_id = ?2", params![user_id, filter_id], |r| {
            r.get(0)
        })
    }

    pub fn receipts_since(&self, room_id: &str, since: i64) -> Result<Vec<ReceiptRow>> {
        self.collect(
            &format!("SELECT {RECEIPT_COLS} FROM receipts WHERE room_id = ?1 AND stream > ?2 ORDER BY stream"),
            params![room_id, since],
            receipt_row,
        )
    }

    pub fn user_receipts(&self, room_id: &str, user_id: &str) -> Result<Vec<ReceiptRow>> {
        self.collect(
            &format!("SELECT {RECEIPT_COLS} FROM receipts WHERE room_id = ?1 AND user_id = ?2"),
            params![room_id, user_id],
            receipt_row,
        )
    }
}

impl Writer<'_> {
    /// Allocates the next position of the global stream.
    pub fn next_stream(&self) -> Result<i64> {
        self.returning("UPDATE stream_counter SET pos = pos + 1 WHERE id = 0 RETURNING pos", [])
    }

    /// Runs a statement whose `RETURNING` gives one integer.
    pub(crate) fn returning(&self, sql: &str, params: impl crate::backend::Params) -> Result<i64> {
        self.one(sql, params, |r| r.get(0))?.ok_or(crate::StorageError::Type(format!("no row returned by {sql}")))
    }

    // ---- users ----

    /// Returns false if the user id is taken.
    pub fn create_user(&self, user_id: &str, password_hash: Option<&str>, admin: bool, now: i64) -> Result<bool> {
        Ok(self.exec(
            "INSERT INTO users (user_id, password_hash, admin, created_ts) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![user_id, password_hash, admin, now],
        )? == 1)
    }

    pub fn set_password_hash(&self, user_id: &str, hash: Option<&str>) -> Result<bool> {
        Ok(self.exec("UPDATE users SET password_hash = ?2 WHERE user_id = ?1", params![user_id, hash])? == 1)
    }

    pub fn set_admin(&self, user_id: &str, admin: bool) -> Result<bool> {
        Ok(self.exec("UPDATE users SET admin = ?2 WHERE user_id = ?1", params![user_id, admin])? == 1)
    }

    /// Deactivates an account (and removes its pushers: nothing is pushed to it any more).
    pub fn set_deactivated(&self, user_id: &str) -> Result<bool> {
        self.delete_user_pushers(user_id)?;
        Ok(self.exec(
            "UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL, avatar_url = NULL WHERE user_id = ?1",
            [user_id],
        )? == 1)
    }

    pub fn set_displayname(&self, user_id: &str, name: Option<&str>) -> Result<()> {
        self.exec("UPDATE users SET displayname = ?2 WHERE user_id = ?1", params![user_id, name])?;
        Ok(())
    }

    pub fn set_avatar_url(&self, user_id: &str, url: Option<&str>) -> Result<()> {
        self.exec("UPDATE users SET avatar_url = ?2 WHERE user_id = ?1", params![user_id, url])?;
        Ok(())
    }

    // ---- devices and tokens ----

    pub fn upsert_device(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        now: i64,
        ip: Option<&str>,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET \
               display_name = COALESCE(excluded.display_name, devices.display_name), last_seen_ts = excluded.last_seen_ts, \
               last_seen_ip = COALESCE(excluded.last_seen_ip, devices.last_seen_ip)",
            params![user_id, device_id, display_name, now, ip],
        )?;
        Ok(())
    }

    pub fn set_device_name(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<bool> {
        Ok(self.exec(
            "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
            params![user_id, device_id, name],
        )? == 1)
    }

    /// Removes a device and every session on it.
    pub fn delete_device(&self, user_id: &str, device_id: &str) -> Result<()> {
        self.exec("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2", [user_id, device_id])?;
        self.exec("DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2", [user_id, device_id])?;
        self.delete_device_e2ee(user_id, device_id)?;
        self.delete_device_pushers(user_id, device_id)?;
        let stream = self.next_stream()?;
        self.mark_device_list_changed(user_id, stream)?;
        Ok(())
    }

    pub fn insert_token(
        &self,
        token: &str,
        user_id: &str,
        device_id: &str,
        expires_ts: Option<i64>,
        refresh: Option<&str>,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO access_tokens (token, user_id, device_id, expires_ts, refresh_token) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token, user_id, device_id, expires_ts, refresh],
        )?;
        Ok(())
    }

    pub fn delete_token(&self, token: &str) -> Result<()> {
        self.exec("DELETE FROM access_tokens WHERE token = ?1", [token])?;
        Ok(())
    }

    /// Deletes every device of a user (and so every session), except `keep` if given.
    pub fn delete_all_devices(&self, user_id: &str, keep: Option<&str>) -> Result<()> {
        let keep = keep.unwrap_or("");
        self.exec("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id != ?2", [user_id, keep])?;
        let gone: Vec<String> = self.collect(
            "SELECT device_id FROM devices WHERE user_id = ?1 AND device_id != ?2",
            [user_id, keep],
            |r| r.get(0),
        )?;
        self.exec("DELETE FROM devices WHERE user_id = ?1 AND device_id != ?2", [user_id, keep])?;
        for device_id in &gone {
            self.delete_device_e2ee(user_id, device_id)?;
        }
        if !gone.is_empty() {
            let stream = self.next_stream()?;
            self.mark_device_list_changed(user_id, stream)?;
        }
        Ok(())
    }

    pub fn delete_other_tokens(&self, user_id: &str, keep_token: &str) -> Result<()> {
        self.exec("DELETE FROM access_tokens WHERE user_id = ?1 AND token != ?2", [user_id, keep_token])?;
        Ok(())
    }

    pub fn create_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<bool> {
        Ok(self.exec(
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_ts) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![token, uses_allowed, expiry_ts],
        )? == 1)
    }

    pub fn delete_registration_token(&self, token: &str) -> Result<bool> {
        Ok(self.exec("DELETE FROM registration_tokens WHERE token = ?1", [token])? == 1)
    }

    pub fn use_registration_token(&self, token: &str) -> Result<()> {
        self.exec("UPDATE registration_tokens SET completed = completed + 1 WHERE token = ?1", [token])?;
        Ok(())
    }

    // ---- rooms and events ----

    pub fn insert_room(&self, room_id: &str, version: &str, creator: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?1, ?2, ?3, ?4)",
            params![room_id, version, creator, now],
        )?;
        Ok(())
    }

    pub fn set_room_published(&self, room_id: &str, published: bool) -> Result<()> {
        self.exec("UPDATE rooms SET published = ?2 WHERE room_id = ?1", params![room_id, published])?;
        Ok(())
    }

    pub fn insert_event(&self, e: &NewEvent<'_>) -> Result<()> {
        let (tu, td, ti) = match e.txn {
            Some((u, d, t)) => (Some(u), Some(d), Some(t)),
            None => (None, None, None),
        };
        self.exec(
            "INSERT INTO events (stream, event_id, room_id, type, state_key, sender, origin_server_ts, depth, pdu, \
             state_group, txn_user, txn_device, txn_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                e.stream, e.event_id, e.room_id, e.kind, e.state_key, e.sender, e.origin_server_ts, e.depth, e.pdu,
                e.state_group, tu, td, ti
            ],
        )?;
        Ok(())
    }

    /// Replaces an event's PDU with its redacted form.
    pub fn redact_event(&self, event_id: &str, redacted_by: &str, redacted_pdu: &str) -> Result<()> {
        self.exec(
            "UPDATE events SET pdu = ?2, redacted_by = ?3 WHERE event_id = ?1",
            params![event_id, redacted_pdu, redacted_by],
        )?;
        Ok(())
    }

    pub fn set_forward_extremities(&self, room_id: &str, events: &[&str]) -> Result<()> {
        self.exec("DELETE FROM forward_extremities WHERE room_id = ?1", [room_id])?;
        for e in events {
            self.exec("INSERT INTO forward_extremities (room_id, event_id) VALUES (?1, ?2)", [room_id, e])?;
        }
        Ok(())
    }

    /// Stores the state after a state event as a new group on top of `parent`.
    pub fn new_state_group(&self, room_id: &str, parent: Option<i64>, changes: &[(&str, &str, &str)]) -> Result<i64> {
        let parent_len = match parent {
            Some(p) => self.one("SELECT chain_len FROM state_groups WHERE id = ?1", [p], |r| r.get::<_, i64>(0))?,
            None => None,
        };
        let (parent, chain_len, full) = match (parent, parent_len) {
            (Some(p), Some(len)) if len < MAX_STATE_CHAIN => (Some(p), len + 1, None),
            (Some(p), _) => (None, 0, Some(self.state_group(p)?)),
            (None, _) => (None, 0, None),
        };
        let id = self.returning(
            "INSERT INTO state_groups (room_id, parent, chain_len) VALUES (?1, ?2, ?3) RETURNING id",
            params![room_id, parent, chain_len],
        )?;
        let mut entries: StateMap = full.unwrap_or_default();
        for (k, sk, ev) in changes {
            entries.insert(((*k).to_owned(), (*sk).to_owned()), (*ev).to_owned());
        }
        for ((k, sk), ev) in &entries {
            self.exec(
                "INSERT INTO state_group_entries (group_id, type, state_key, event_id) VALUES (?1, ?2, ?3, ?4)",
                params![id, k, sk, ev],
            )?;
        }
        Ok(id)
    }

    pub fn set_current_state(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
        event_id: &str,
        stream: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO current_state (room_id, type, state_key, event_id, stream) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id, stream = excluded.stream",
            params![room_id, kind, state_key, event_id, stream],
        )?;
        Ok(())
    }

    pub fn set_membership(
        &self,
        room_id: &str,
        user_id: &str,
        membership: &str,
        event_id: &str,
        stream: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO memberships (room_id, user_id, membership, event_id, stream) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, \
               event_id = excluded.event_id, stream = excluded.stream, forgotten = 0",
            params![room_id, user_id, membership, event_id, stream],
        )?;
        Ok(())
    }

    pub fn forget_room(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.exec("UPDATE memberships SET forgotten = 1 WHERE room_id = ?1 AND user_id = ?2", [room_id, user_id])?;
        Ok(())
    }

    // ---- aliases ----

    pub fn put_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<bool> {
        Ok(self.exec(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            [alias, room_id, creator],
        )? == 1)
    }

    pub fn delete_alias(&self, alias: &str) -> Result<bool> {
        Ok(self.exec("DELETE FROM room_aliases WHERE alias = ?1", [alias])? == 1)
    }

    // ---- account data, filters, receipts, pushers ----

    pub fn set_account_data(&self, user_id: &str, room_id: &str, kind: &str, content: &str, stream: i64) -> Result<()> {
        self.exec(
            "INSERT INTO account_data (user_id, room_id, type, content, stream) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream = excluded.stream",
            params![user_id, room_id, kind, content, stream],
        )?;
        Ok(())
    }

    pub fn insert_filter(&self, user_id: &str, filter: &str) -> Result<i64> {
        let next: i64 = self
            .one("SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?1", [user_id], |r| r.get(0))?
            .unwrap_or(0);
        self.exec(
            "INSERT INTO filters (user_id, filter_id, filter) VALUES (?1, ?2, ?3)",
            params![user_id, next, filter],
        )?;
        Ok(next)
    }

    pub fn set_receipt(&self, r: &ReceiptRow) -> Result<()> {
        self.exec(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream, event_stream) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT stream FROM events WHERE event_id = ?5)) \
             ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = excluded.event_id, \
             ts = excluded.ts, stream = excluded.stream, event_stream = excluded.event_stream",
            params![r.room_id, r.user_id, r.receipt_type, r.thread_id, r.event_id, r.ts, r.stream],
        )?;
        Ok(())
    }

    pub fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
        self.exec(
            "DELETE FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
            [user_id, app_id, pushkey],
        )?;
        Ok(())
    }

    /// Removes a pushkey for every other user (the spec's default unless `append` is set).
    pub fn delete_pushkey_elsewhere(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
        self.exec(
            "DELETE FROM pushers WHERE user_id != ?1 AND app_id = ?2 AND pushkey = ?3",
            [user_id, app_id, pushkey],
        )?;
        Ok(())
    }
}

impl Reader<'_> {
    /// One entry of a state group: the newest delta of its chain that has it.
    pub fn state_group_entry(&self, group: i64, kind: &str, state_key: &str) -> Result<Option<String>> {
        self.one(
            &format!(
                "{STATE_CHAIN} SELECT e.event_id FROM chain c JOIN state_group_entries e ON e.group_id = c.id \
                 WHERE e.type = ?2 AND e.state_key = ?3 ORDER BY c.depth LIMIT 1"
            ),
            params![group, kind, state_key],
            |r| r.get::<_, String>(0),
        )
    }
}

impl Writer<'_> {
    /// Points every alias of `from` at `to` (room upgrades move aliases along).
    pub fn move_aliases(&self, from: &str, to: &str) -> Result<usize> {
        self.exec("UPDATE room_aliases SET room_id = ?2 WHERE room_id = ?1", [from, to])
    }
}

impl Writer<'_> {
    /// Updates a device's last-seen time, address and client; never creates the device.
    pub fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        now: i64,
        ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<()> {
        self.exec(
            "UPDATE devices SET last_seen_ts = ?3, last_seen_ip = COALESCE(?4, last_seen_ip), \
             last_seen_user_agent = COALESCE(?5, last_seen_user_agent) WHERE user_id = ?1 AND device_id = ?2",
            params![user_id, device_id, now, ip, user_agent],
        )?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct MediaRow {
    pub media_id: String,
    pub user_id: String,
    pub created_ts: i64,
    pub expires_ts: Option<i64>,
    pub content_key: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: Option<i64>,
    pub legacy: bool,
    pub quarantined: bool,
}

pub(crate) const MEDIA_COLS: &str =
    "media_id, user_id, created_ts, expires_ts, content_key, content_type, filename, size, legacy, quarantined";

pub(crate) fn media_row(r: &Row<'_>) -> Result<MediaRow> {
    Ok(MediaRow {
        media_id: r.get(0)?,
        user_id: r.get(1)?,
        created_ts: r.get(2)?,
        expires_ts: r.get(3)?,
        content_key: r.get(4)?,
        content_type: r.get(5)?,
        filename: r.get(6)?,
        size: r.get(7)?,
        legacy: r.get(8)?,
        quarantined: r.get(9)?,
    })
}

impl Reader<'_> {
    pub fn media(&self, media_id: &str) -> Result<Option<MediaRow>> {
        self.one(&format!("SELECT {MEDIA_COLS} FROM media WHERE media_id = ?1"), [media_id], media_row)
    }

    /// Pending (created, not yet uploaded) media ids of a user that have not expired.
    pub fn pending_media_count(&self, user_id: &str, now: i64) -> Result<i64> {
        Ok(self
            .one(
                "SELECT COUNT(*) FROM media WHERE user_id = ?1 AND content_key IS NULL AND (expires_ts IS NULL OR expires_ts > ?2)",
                params![user_id, now],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }

    pub fn media_referencing(&self, content_key: &str) -> Result<i64> {
        Ok(self
            .one(
                "SELECT (SELECT COUNT(*) FROM media WHERE content_key = ?1) \
                      + (SELECT COUNT(*) FROM remote_media WHERE content_key = ?1)",
                [content_key],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }
}

impl Writer<'_> {
    /// Reserves a media id for an asynchronous upload.
    pub fn create_pending_media(&self, media_id: &str, user_id: &str, now: i64, expires_ts: i64) -> Result<()> {
        self.exec(
            "INSERT INTO media (media_id, user_id, created_ts, expires_ts) VALUES (?1, ?2, ?3, ?4)",
            params![media_id, user_id, now, expires_ts],
        )?;
        Ok(())
    }

    /// Records uploaded content: inserts a new row or fills a pending one. Returns false if
    /// the row already had content (media cannot be overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn store_media(
        &self,
        media_id: &str,
        user_id: &str,
        now: i64,
        content_key: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        size: i64,
        sha256: &str,
    ) -> Result<bool> {
        let n = self.exec(
            "INSERT INTO media (media_id, user_id, created_ts, content_key, content_type, filename, size, sha256) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (media_id) DO UPDATE SET content_key = excluded.content_key, content_type = excluded.content_type, \
               filename = excluded.filename, size = excluded.size, sha256 = excluded.sha256, expires_ts = NULL \
             WHERE media.content_key IS NULL",
            params![media_id, user_id, now, content_key, content_type, filename, size, sha256],
        )?;
        Ok(n == 1)
    }

    /// Drops pending ids nobody uploaded to in time.
    pub fn expire_pending_media(&self, now: i64) -> Result<usize> {
        self.exec("DELETE FROM media WHERE content_key IS NULL AND expires_ts IS NOT NULL AND expires_ts <= ?1", [now])
    }
}

#[derive(Debug, Clone)]
pub struct ThumbnailRow {
    pub thumb_key: String,
    pub content_type: String,
    pub size: i64,
}

impl Reader<'_> {
    pub fn thumbnail(
        &self,
        content_key: &str,
        width: i64,
        height: i64,
        method: &str,
        animated: bool,
    ) -> Result<Option<ThumbnailRow>> {
        self.one(
            "SELECT thumb_key, content_type, size FROM media_thumbnails \
             WHERE content_key = ?1 AND width = ?2 AND height = ?3 AND method = ?4 AND animated = ?5",
            params![content_key, width, height, method, animated],
            |r| Ok(ThumbnailRow { thumb_key: r.get(0)?, content_type: r.get(1)?, size: r.get(2)? }),
        )
    }

    /// The sizes (width, height) of the thumbnails made of some content with one method.
    pub fn thumbnail_sizes(&self, content_key: &str, method: &str, animated: bool) -> Result<Vec<(i64, i64)>> {
        self.collect(
            "SELECT width, height FROM media_thumbnails WHERE content_key = ?1 AND method = ?2 AND animated = ?3",
            params![content_key, method, animated],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }
}

impl Writer<'_> {
    #[allow(clippy::too_many_arguments)]
    pub fn store_thumbnail(
        &self,
        content_key: &str,
        width: i64,
        height: i64,
        method: &str,
        animated: bool,
        thumb_key: &str,
        content_type: &str,
        size: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO media_thumbnails (content_key, width, height, method, animated, thumb_key, content_type, size) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            params![content_key, width, height, method, animated, thumb_key, content_type, size],
        )?;
        Ok(())
    }
}

impl Reader<'_> {
    /// Whether any upload has been recorded.
    pub fn has_media(&self) -> Result<bool> {
        Ok(self
            .one(
                "SELECT EXISTS (SELECT 1 FROM media WHERE content_key IS NOT NULL) OR EXISTS (SELECT 1 FROM remote_media)",
                [],
                |r| r.get(0),
            )?
            .unwrap_or(false))
    }
}

impl Reader<'_> {
    /// Total bytes of a user's uploads.
    pub fn user_media_bytes(&self, user_id: &str) -> Result<i64> {
        Ok(self
            .one("SELECT COALESCE(SUM(size), 0) FROM media WHERE user_id = ?1", [user_id], |r| r.get(0))?
            .unwrap_or(0))
    }
}

impl Reader<'_> {
    pub fn url_preview(&self, url: &str) -> Result<Option<(i64, String)>> {
        self.one("SELECT fetched_ts, preview FROM url_previews WHERE url = ?1", [url], |r| Ok((r.get(0)?, r.get(1)?)))
    }
}

impl Writer<'_> {
    pub fn store_url_preview(&self, url: &str, fetched_ts: i64, preview: &str) -> Result<()> {
        self.exec(
            "INSERT INTO url_previews (url, fetched_ts, preview) VALUES (?1, ?2, ?3) \
             ON CONFLICT (url) DO UPDATE SET fetched_ts = excluded.fetched_ts, preview = excluded.preview",
            params![url, fetched_ts, preview],
        )?;
        Ok(())
    }
}

/// Figures for `moss media stats`.
#[derive(Debug, Clone, Default)]
pub struct MediaStats {
    pub media: i64,
    pub media_bytes: i64,
    pub contents: i64,
    pub content_bytes: i64,
    pub pending: i64,
    pub thumbnails: i64,
    pub thumbnail_bytes: i64,
}

impl Reader<'_> {
    pub fn media_stats(&self) -> Result<MediaStats> {
        let (media, media_bytes) = self
            .one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM media WHERE content_key IS NOT NULL", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .unwrap_or((0, 0));
        let (contents, content_bytes) = self
            .one(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM (SELECT content_key, MAX(size) AS size FROM media \
                 WHERE content_key IS NOT NULL GROUP BY content_key) AS contents",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .unwrap_or((0, 0));
        let pending = self.one("SELECT COUNT(*) FROM media WHERE content_key IS NULL", [], |r| r.get(0))?.unwrap_or(0);
        let (thumbnails, thumbnail_bytes) = self
            .one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM media_thumbnails", [], |r| Ok((r.get(0)?, r.get(1)?)))?
            .unwrap_or((0, 0));
        Ok(MediaStats { media, media_bytes, contents, content_bytes, pending, thumbnails, thumbnail_bytes })
    }

    /// Every object name the database still needs: content, thumbnails, and the media ids whose
    /// metadata records must stay. In-flight content younger than `inflight_after` counts too.
    /// The content a media row points to, if it is uploaded.
    pub fn media_content_key(&self, media_id: &str) -> Result<Option<String>> {
        Ok(self.one("SELECT content_key FROM media WHERE media_id = ?1", [media_id], |r| r.get(0))?.flatten())
    }

    pub fn referenced_media(&self, inflight_after: i64) -> Result<(std::collections::HashSet<String>, Vec<String>)> {
        let mut keys = std::collections::HashSet::new();
        for k in self.collect("SELECT DISTINCT content_key FROM media WHERE content_key IS NOT NULL", [], |r| {
            r.get::<_, String>(0)
        })? {
            keys.insert(k);
        }
        for k in self.collect("SELECT DISTINCT content_key FROM remote_media", [], |r| r.get::<_, String>(0))? {
            keys.insert(k);
        }
        for k in self.collect("SELECT thumb_key FROM media_thumbnails", [], |r| r.get::<_, String>(0))? {
            keys.insert(k);
        }
        for k in
            self.collect("SELECT content_key FROM media_inflight WHERE started_ts > ?1", [inflight_after], |r| {
                r.get::<_, String>(0)
            })?
        {
            keys.insert(k);
        }
        // Remote media's metadata records are named after `origin/media_id`.
        let ids = self.collect(
            "SELECT media_id FROM media UNION ALL SELECT origin || '/' || media_id FROM remote_media",
            [],
            |r| r.get::<_, String>(0),
        )?;
        Ok((keys, ids))
    }

    /// Local media recorded before `cutoff_ts`.
    pub fn media_older_than(&self, cutoff_ts: i64) -> Result<Vec<String>> {
        self.collect("SELECT media_id FROM media WHERE created_ts < ?1 AND content_key IS NOT NULL", [cutoff_ts], |r| {
            r.get(0)
        })
    }

    /// Media neither uploaded nor served since `cutoff_ts`.
    pub fn media_unused_since(&self, cutoff_ts: i64) -> Result<Vec<String>> {
        self.collect(
            "SELECT media_id FROM media WHERE content_key IS NOT NULL AND CASE WHEN created_ts > COALESCE(last_access_ts, 0) THEN created_ts ELSE COALESCE(last_access_ts, 0) END < ?1",
            [cutoff_ts],
            |r| r.get(0),
        )
    }
}

impl Writer<'_> {
    pub fn touch_media(&self, media_id: &str, now: i64) -> Result<()> {
        self.exec("UPDATE media SET last_access_ts = ?2 WHERE media_id = ?1", params![media_id, now])?;
        Ok(())
    }

    pub fn begin_inflight(&self, content_key: &str, now: i64) -> Result<i64> {
        self.returning(
            "INSERT INTO media_inflight (content_key, started_ts) VALUES (?1, ?2) RETURNING rowid",
            params![content_key, now],
        )
    }

    pub fn end_inflight(&self, rowid: i64) -> Result<()> {
        self.exec("DELETE FROM media_inflight WHERE rowid = ?1", [rowid])?;
        Ok(())
    }

    pub fn clear_stale_inflight(&self, before_ts: i64) -> Result<usize> {
        self.exec("DELETE FROM media_inflight WHERE started_ts <= ?1", [before_ts])
    }

    /// Deletes a media row. Returns the objects nothing references any more: its content and
    /// that content's thumbnails, unless another row shares the content or an upload of the
    /// same content is under way (it may have found the object present and not written it).
    pub fn delete_media(&self, media_id: &str) -> Result<Vec<String>> {
        let key = self.media_content_key(media_id)?;
        self.exec("DELETE FROM media WHERE media_id = ?1", [media_id])?;
        self.exec("DELETE FROM media_unconfirmed WHERE media_id = ?1", [media_id])?;
        let writing = |k: &str| -> Result<bool> {
            Ok(self
                .one("SELECT 1 FROM media_inflight WHERE content_key = ?1 LIMIT 1", [k], |r| r.get::<_, i64>(0))?
                .is_some())
        };
        match key {
            Some(k) if self.media_referencing(&k)? == 0 && !writing(&k)? => {
                let mut gone =
                    self.collect("SELECT thumb_key FROM media_thumbnails WHERE content_key = ?1", [&k], |r| r.get(0))?;
                self.exec("DELETE FROM media_thumbnails WHERE content_key = ?1", [&k])?;
                gone.push(k);
                Ok(gone)
            }
            _ => Ok(Vec::new()),
        }
    }
}

impl Writer<'_> {
    /// Quarantines one media id, or every upload of a user; returns how many rows changed.
    pub fn quarantine_media(&self, media_id: Option<&str>, user_id: Option<&str>) -> Result<usize> {
        match (media_id, user_id) {
            // Media an admin protected stays served.
            (Some(id), _) => self.exec("UPDATE media SET quarantined = 1 WHERE media_id = ?1 AND protected = 0", [id]),
            (None, Some(u)) => self.exec("UPDATE media SET quarantined = 1 WHERE user_id = ?1 AND protected = 0", [u]),
            (None, None) => Ok(0),
        }
    }

    pub fn unquarantine_media(&self, media_id: &str) -> Result<usize> {
        self.exec("UPDATE media SET quarantined = 0 WHERE media_id = ?1", [media_id])
    }
}

impl Writer<'_> {
    /// Marks imported media: its original upload time, whether the legacy unauthenticated
    /// endpoints may serve it, and quarantine.
    pub fn mark_imported_media(&self, media_id: &str, created_ts: i64, legacy: bool, quarantined: bool) -> Result<()> {
        self.exec(
            "UPDATE media SET created_ts = ?2, legacy = ?3, quarantined = ?4 WHERE media_id = ?1",
            params![media_id, created_ts, legacy, quarantined],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod media_tests {
    use crate::StorageError;

    /// A purge that races an upload of the same content keeps the object the upload relies on.
    #[test]
    fn deleting_media_keeps_content_an_upload_is_writing() {
        for (_backend, db) in crate::conformance::test_dbs() {
            db.write_blocking(|w| {
                w.store_media("a", "@u:x", 1, "c-1", None, None, 3, "s")?;
                w.store_media("b", "@u:x", 1, "c-2", None, None, 3, "s")?;
                w.store_thumbnail("c-1", 32, 32, "crop", false, "t-1", "image/png", 10)?;
                let mark = w.begin_inflight("c-1", 2)?;
                assert_eq!(w.delete_media("a")?, Vec::<String>::new(), "in flight: nothing to delete");
                w.end_inflight(mark)?;
                assert_eq!(w.delete_media("b")?, vec!["c-2".to_owned()]);
                Ok::<_, StorageError>(())
            })
            .unwrap();
        }
    }
}
