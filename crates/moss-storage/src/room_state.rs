//! Queries that build a new event on a room's current state in few statements: its forward
//! extremities with what the new event takes from them, and several current state events at once.

use crate::{
    backend::ToValue,
    queries::{event_row, EVENT_COLS},
    EventRow, Reader, Result,
};

/// A forward extremity as a new event builds on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extremity {
    pub event_id: String,
    pub depth: i64,
    /// The state group of the state after it.
    pub state_group: i64,
}

impl Reader<'_> {
    /// The room's forward extremities that are stored events, with their depth and state group.
    pub fn extremities(&self, room_id: &str) -> Result<Vec<Extremity>> {
        self.collect(
            "SELECT f.event_id, e.depth, e.state_group FROM forward_extremities f \
             JOIN events e ON e.event_id = f.event_id WHERE f.room_id = ?1 ORDER BY f.event_id",
            [room_id],
            |r| Ok(Extremity { event_id: r.get(0)?, depth: r.get(1)?, state_group: r.get(2)? }),
        )
    }

    /// The current state events of a room for each `(type, state key)` asked (those it has), in
    /// one statement.
    pub fn current_state_events(&self, room_id: &str, keys: &[(&str, &str)]) -> Result<Vec<EventRow>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cols = EVENT_COLS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
        let wanted = (0..keys.len())
            .map(|i| format!("(c.type = ?{} AND c.state_key = ?{})", 2 + 2 * i, 3 + 2 * i))
            .collect::<Vec<_>>()
            .join(" OR ");
        let mut params: Vec<&dyn ToValue> = vec![&room_id];
        for (kind, state_key) in keys {
            params.push(kind);
            params.push(state_key);
        }
        self.collect(
            &format!(
                "SELECT {cols} FROM current_state c JOIN events e ON e.event_id = c.event_id \
                 WHERE c.room_id = ?1 AND ({wanted})"
            ),
            params.as_slice(),
            event_row,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::{conformance::test_dbs, NewEvent};

    #[test]
    fn extremities_and_several_state_events_in_one_statement() {
        for (name, db) in test_dbs() {
            db.write_blocking(|w| {
                for (i, (kind, sk)) in
                    [("m.room.create", Some("")), ("m.room.member", Some("@u:x")), ("m.room.message", None)]
                        .into_iter()
                        .enumerate()
                {
                    let stream = w.next_stream()?;
                    let id = format!("$e{i}");
                    w.insert_event(&NewEvent {
                        stream,
                        event_id: &id,
                        room_id: "!r:x",
                        kind,
                        state_key: sk,
                        sender: "@u:x",
                        origin_server_ts: 0,
                        depth: i as i64 + 1,
                        pdu: "{}",
                        state_group: 7,
                        txn: None,
                    })?;
                    if let Some(sk) = sk {
                        w.set_current_state("!r:x", kind, sk, &id, stream)?;
                    }
                }
                w.set_forward_extremities("!r:x", &["$e2", "$missing"])
            })
            .unwrap();
            let (tips, found, none, by_id) = db
                .read_blocking(|r| {
                    Ok::<_, crate::StorageError>((
                        r.extremities("!r:x")?,
                        r.current_state_events(
                            "!r:x",
                            &[("m.room.create", ""), ("m.room.member", "@u:x"), ("m.room.power_levels", "")],
                        )?,
                        r.current_state_events("!r:x", &[])?,
                        r.events_by_id(&["$e0", "$e2", "$nope"])?,
                    ))
                })
                .unwrap();
            assert_eq!(tips, [super::Extremity { event_id: "$e2".into(), depth: 3, state_group: 7 }], "{name}");
            let mut ids: Vec<&str> = found.iter().map(|e| e.event_id.as_str()).collect();
            ids.sort();
            assert_eq!(ids, ["$e0", "$e1"], "{name}");
            assert!(none.is_empty(), "{name}");
            let mut ids: Vec<&String> = by_id.keys().collect();
            ids.sort();
            assert_eq!(ids, ["$e0", "$e2"], "{name}");
            assert_eq!(by_id["$e2"].kind, "m.room.message", "{name}");
        }
    }
}
