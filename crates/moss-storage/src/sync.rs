//! Queries for `/sync`: which rooms an incremental sync has to look at.

use std::collections::HashSet;

use crate::{Reader, Result};

impl Reader<'_> {
    /// The rooms with an event or a receipt after stream position `since`: an incremental
    /// sync looks only at these (and at rooms whose membership changed), so one that finds
    /// nothing new costs a statement, not a few per room.
    pub fn rooms_changed_since(&self, since: i64) -> Result<HashSet<String>> {
        let rooms = self.collect(
            "SELECT room_id FROM events WHERE stream > ?1 UNION SELECT room_id FROM receipts WHERE stream > ?1",
            [since],
            |r| r.get::<_, String>(0),
        )?;
        Ok(rooms.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::{conformance::test_dbs, NewEvent, ReceiptRow};

    #[test]
    fn rooms_changed_since_sees_events_and_receipts_after_the_position() {
        for (name, db) in test_dbs() {
            db.write_blocking(|w| {
                for (i, room) in ["!a:x", "!b:x", "!a:x"].into_iter().enumerate() {
                    let stream = w.next_stream()?;
                    w.insert_event(&NewEvent {
                        stream,
                        event_id: &format!("$e{i}"),
                        room_id: room,
                        kind: "m.room.message",
                        state_key: None,
                        sender: "@u:x",
                        origin_server_ts: 0,
                        depth: 1,
                        pdu: "{}",
                        state_group: 0,
                        txn: None,
                    })?;
                }
                let stream = w.next_stream()?;
                w.set_receipt(&ReceiptRow {
                    room_id: "!c:x".into(),
                    user_id: "@u:x".into(),
                    receipt_type: "m.read".into(),
                    thread_id: String::new(),
                    event_id: "$e0".into(),
                    ts: 0,
                    stream,
                })
            })
            .unwrap();
            let changed = |since| db.read_blocking(|r| r.rooms_changed_since(since)).unwrap();
            let sorted = |s: std::collections::HashSet<String>| {
                let mut v: Vec<String> = s.into_iter().collect();
                v.sort();
                v
            };
            assert_eq!(sorted(changed(0)), ["!a:x", "!b:x", "!c:x"], "{name}");
            assert_eq!(sorted(changed(2)), ["!a:x", "!c:x"], "{name}");
            assert_eq!(sorted(changed(3)), ["!c:x"], "{name}");
            assert!(changed(4).is_empty(), "{name}");
        }
    }

    /// A group's state follows its delta chain, newer deltas winning; one entry is the newest.
    #[test]
    fn state_groups_resolve_along_their_chain() {
        for (name, db) in test_dbs() {
            let (g1, g2, g3) = db
                .write_blocking(|w| {
                    let g1 =
                        w.new_state_group("!r:x", None, &[("m.room.create", "", "$c"), ("m.room.name", "", "$n1")])?;
                    let g2 = w.new_state_group("!r:x", Some(g1), &[("m.room.name", "", "$n2")])?;
                    let g3 = w.new_state_group("!r:x", Some(g2), &[("m.room.member", "@u:x", "$m")])?;
                    Ok::<_, crate::StorageError>((g1, g2, g3))
                })
                .unwrap();
            let (s1, s3, name3, create3, missing) = db
                .read_blocking(|r| {
                    Ok::<_, crate::StorageError>((
                        r.state_group(g1)?,
                        r.state_group(g3)?,
                        r.state_group_entry(g3, "m.room.name", "")?,
                        r.state_group_entry(g3, "m.room.create", "")?,
                        r.state_group_entry(g2, "m.room.member", "@u:x")?,
                    ))
                })
                .unwrap();
            assert_eq!(s1.len(), 2, "{name}");
            assert_eq!(s1[&("m.room.name".to_owned(), String::new())], "$n1", "{name}");
            assert_eq!(s3.len(), 3, "{name}");
            assert_eq!(s3[&("m.room.name".to_owned(), String::new())], "$n2", "{name}");
            assert_eq!(name3.as_deref(), Some("$n2"), "{name}");
            assert_eq!(create3.as_deref(), Some("$c"), "{name}");
            assert_eq!(missing, None, "{name}: not yet in the older group");
        }
    }
}
