//! Queries for `/sync`.

use std::collections::HashMap;

use crate::{
    params,
    queries::{event_row, EVENT_COLS},
    EventRow, Reader, Result,
};

/// What a room's `/sync` summary says: member counts and a few members to name it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub joined: i64,
    pub invited: i64,
    /// Joined or invited members other than the user, by user id, at most as many as asked.
    pub heroes: Vec<String>,
}

impl Reader<'_> {
    /// The room's summary as `user` sees it, without reading every member.
    pub fn room_summary(&self, room_id: &str, user: &str, heroes: i64) -> Result<RoomSummary> {
        let mut summary = RoomSummary { joined: 0, invited: 0, heroes: Vec::new() };
        for (membership, n) in self.collect(
            "SELECT membership, COUNT(*) FROM memberships \
             WHERE room_id = ?1 AND membership IN ('join', 'invite') GROUP BY membership",
            [room_id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )? {
            match membership.as_str() {
                "join" => summary.joined = n,
                _ => summary.invited = n,
            }
        }
        summary.heroes = self.collect(
            "SELECT user_id FROM memberships WHERE room_id = ?1 AND user_id <> ?2 \
             AND membership IN ('join', 'invite') ORDER BY user_id LIMIT ?3",
            params![room_id, user, heroes],
            |r| r.get(0),
        )?;
        Ok(summary)
    }

    /// The stored events among `event_ids`, by id, in one statement (a room's state for sync).
    pub fn events_by_id(&self, event_ids: &[&str]) -> Result<HashMap<String, EventRow>> {
        if event_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = serde_json::to_string(event_ids)?;
        let each = self.sql("SELECT value FROM json_each(?1)", "SELECT jsonb_array_elements_text(?1::jsonb)");
        let rows =
            self.collect(&format!("SELECT {EVENT_COLS} FROM events WHERE event_id IN ({each})"), [ids], event_row)?;
        Ok(rows.into_iter().map(|e| (e.event_id.clone(), e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::conformance::test_dbs;

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

    /// Counts by membership; heroes are the first joined or invited others by user id.
    #[test]
    fn room_summary_counts_and_names_a_few() {
        for (name, db) in test_dbs() {
            db.write_blocking(|w| {
                for (i, (user, membership)) in [
                    ("@me:x", "join"),
                    ("@a:x", "join"),
                    ("@b:x", "invite"),
                    ("@c:x", "leave"),
                    ("@d:x", "join"),
                    ("@e:x", "ban"),
                ]
                .into_iter()
                .enumerate()
                {
                    w.set_membership("!r:x", user, membership, &format!("$e{i}"), i as i64)?;
                }
                w.set_membership("!other:x", "@z:x", "join", "$z", 9)
            })
            .unwrap();
            let (s, one) = db
                .read_blocking(|r| {
                    Ok::<_, crate::StorageError>((
                        r.room_summary("!r:x", "@me:x", 5)?,
                        r.room_summary("!r:x", "@me:x", 1)?,
                    ))
                })
                .unwrap();
            assert_eq!((s.joined, s.invited), (3, 1), "{name}");
            assert_eq!(s.heroes, ["@a:x", "@b:x", "@d:x"], "{name}");
            assert_eq!(one.heroes, ["@a:x"], "{name}");
        }
    }
}
