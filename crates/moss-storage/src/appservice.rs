//! Queries for application services: each service's delivery cursor and the transaction in flight.

use rusqlite::params;

use crate::{Reader, Result, Writer};

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

    pub fn set_appservice_state(&self, service_id: &str, s: &AppserviceState) -> Result<()> {
        self.exec(
            "UPDATE appservice_state SET last_stream = ?2, txn_id = ?3, pending_upto = ?4 WHERE service_id = ?1",
            params![service_id, s.last_stream, s.txn_id, s.pending_upto],
        )?;
        Ok(())
    }
}
