-- Schema version 19: sliding sync (MSC4186) orders a user's rooms by their "bump stamp", the
-- stream position of the latest event of a type that moves a room up a client's list (messages,
-- not reactions or state). One row per room, kept by a trigger so every writer (local sends,
-- federation) keeps it right; backfilled history (negative stream positions) never bumps.
CREATE TABLE room_bump_stamps (
    room_id TEXT PRIMARY KEY,
    stream  INTEGER NOT NULL
);

INSERT INTO room_bump_stamps (room_id, stream)
    SELECT room_id, MAX(stream) FROM events
    WHERE stream > 0 AND type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                                  'm.call.invite', 'm.poll.start', 'm.beacon_info')
    GROUP BY room_id;

CREATE TRIGGER room_bump_stamps_insert AFTER INSERT ON events
WHEN NEW.stream > 0 AND NEW.type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                                     'm.call.invite', 'm.poll.start', 'm.beacon_info')
BEGIN
    INSERT INTO room_bump_stamps (room_id, stream) VALUES (NEW.room_id, NEW.stream)
    ON CONFLICT (room_id) DO UPDATE SET stream = MAX(stream, excluded.stream);
END;
