//! Queries for application services: each service's delivery cursor and the transaction in flight.

use crate::params;

use crate::{presence_row, receipt_row, PresenceRow, Reader, ReceiptRow, Result, Writer, RECEIPT_COLS};

/// A to-device message with its recipient, for services that receive them (MSC2409).
#[derive(Debug, Clone)]
pub struct AddressedToDevice {
    pub stream: i64,
    pub user_id: String,
    pub device_id: String,
    pub sender: String,
    pub kind: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppserviceState {
    /// Every event up to here was delivered (or concerned the service not).
    pub last_stream: i64,
    /// The last transaction id used.
    pub txn_id: i64,
    /// The transaction being sent covers the events up to here.
    pub pending_upto: Option<i64>,
}

impl Reader<'_> {
    pub fn appservice_state(&self, service_id: &str) -> Result<Option<AppserviceState>> {
        self.one(
            "SELECT last_stream, txn_id, pending_upto FROM appservice_state WHERE service_id = ?1",
            [service_id],
            |r| Ok(AppserviceState { last_stream: r.get(0)?, txn_id: r.get(1)?, pending_upto: r.get(2)? }),
        )
    }

    /// Public receipts (not `m.read.private`) written in `(from, to]`, oldest first, at most `limit`.
    pub fn public_receipts_between(&self, from: i64, to: i64, limit: i64) -> Result<Vec<ReceiptRow>> {
        self.collect(
            &format!(
                "SELECT {RECEIPT_COLS} FROM receipts \
                 WHERE stream > ?1 AND stream <= ?2 AND receipt_type != 'm.read.private' ORDER BY stream LIMIT ?3"
            ),
            params![from, to, limit],
            receipt_row,
        )
    }

    /// Presence changes in `(from, to]`, oldest first, at most `limit`.
    pub fn presence_between(&self, from: i64, to: i64, limit: i64) -> Result<Vec<PresenceRow>> {
        self.collect(
            "SELECT user_id, state, status_msg, last_active_ts, stream FROM presence \
             WHERE stream > ?1 AND stream <= ?2 ORDER BY stream LIMIT ?3",
            params![from, to, limit],
            presence_row,
        )
    }

    /// To-device messages queued in `(from, to]` for any device, oldest first, at most `limit`.
    pub fn to_device_between(&self, from: i64, to: i64, limit: i64) -> Result<Vec<AddressedToDevice>> {
        self.collect(
            "SELECT stream, user_id, device_id, sender, type, content FROM to_device \
             WHERE stream > ?1 AND stream <= ?2 ORDER BY stream, rowid LIMIT ?3",
            params![from, to, limit],
            |r| {
                Ok(AddressedToDevice {
                    stream: r.get(0)?,
                    user_id: r.get(1)?,
                    device_id: r.get(2)?,
                    sender: r.get(3)?,
                    kind: r.get(4)?,
                    content: r.get(5)?,
                })
            },
        )
    }

    /// Rooms a service published in one of its networks' lists (`None`: every network's).
    pub fn network_rooms(&self, network: Option<(&str, &str)>) -> Result<Vec<String>> {
        match network {
            Some((service, net)) => self.collect(
                "SELECT room_id FROM appservice_room_list WHERE appservice_id = ?1 AND network_id = ?2",
                [service, net],
                |r| r.get(0),
            ),
            None => self.collect("SELECT DISTINCT room_id FROM appservice_room_list", [], |r| r.get(0)),
        }
    }

    /// The rooms `user_id` is joined to.
    pub fn rooms_joined_by(&self, user_id: &str) -> Result<Vec<String>> {
        self.collect("SELECT room_id FROM memberships WHERE user_id = ?1 AND membership = 'join'", [user_id], |r| {
            r.get(0)
        })
    }
}

impl Writer<'_> {
    /// Starts a service's cursor at `stream` unless it has one (a new bridge gets no history).
    pub fn init_appservice_state(&self, service_id: &str, stream: i64) -> Result<()> {
        self.exec(
            "INSERT INTO appservice_state (service_id, last_stream, txn_id) VALUES (?1, ?2, 0) ON CONFLICT DO NOTHING",
            params![service_id, stream],
        )?;
        Ok(())
    }

    /// Drops to-device messages a service took delivery of (its users' devices do not sync).
    pub fn delete_to_device_upto(&self, user_id: &str, device_id: &str, stream: i64) -> Result<()> {
        self.exec(
            "DELETE FROM to_device WHERE user_id = ?1 AND device_id = ?2 AND stream <= ?3",
            params![user_id, device_id, stream],
        )?;
        Ok(())
    }

    pub fn set_network_room(&self, service: &str, network: &str, room_id: &str, published: bool) -> Result<()> {
        if published {
            self.exec(
                "INSERT INTO appservice_room_list (appservice_id, network_id, room_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
                [service, network, room_id],
            )?;
        } else {
            self.exec(
                "DELETE FROM appservice_room_list WHERE appservice_id = ?1 AND network_id = ?2 AND room_id = ?3",
                [service, network, room_id],
            )?;
        }
        Ok(())
    }

    pub fn set_appservice_state(&self, service_id: &str, s: &AppserviceState) -> Result<()> {
        self.exec(
            "UPDATE appservice_state SET last_stream = ?2, txn_id = ?3, pending_upto = ?4 WHERE service_id = ?1",
            params![service_id, s.last_stream, s.txn_id, s.pending_upto],
        )?;
        Ok(())
    }
}
