-- Schema version 19: what sliding sync (MSC4186) sorts and filters a user's rooms by, one row per
-- room, kept by triggers so every writer (local sends, federation, state resolution) keeps it
-- right and a user's whole room list is one pass over their memberships:
-- - bump_stream: the stream position of the room's latest event of a type that moves a room up a
--   client's list (messages, not reactions or state); backfilled history (negative stream
--   positions) never bumps;
-- - encrypted: the room has an m.room.encryption state event now;
-- - has_create / room_type: the room's create event is known here, and its content.type.
CREATE TABLE room_list_info (
    room_id     TEXT PRIMARY KEY,
    bump_stream INTEGER,
    encrypted   INTEGER NOT NULL DEFAULT 0,
    has_create  INTEGER NOT NULL DEFAULT 0,
    room_type   TEXT
);

INSERT INTO room_list_info (room_id, bump_stream)
    SELECT room_id, MAX(stream) FROM events
    WHERE stream > 0 AND type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                                  'm.call.invite', 'm.poll.start', 'm.beacon_info')
    GROUP BY room_id;
INSERT OR IGNORE INTO room_list_info (room_id) SELECT DISTINCT room_id FROM current_state;
UPDATE room_list_info SET encrypted = 1 WHERE room_id IN
    (SELECT room_id FROM current_state WHERE type = 'm.room.encryption' AND state_key = '');
UPDATE room_list_info SET has_create = 1, room_type =
    (SELECT CASE WHEN json_type(e.pdu, '$.content.type') = 'text' THEN json_extract(e.pdu, '$.content.type') END
     FROM current_state c JOIN events e ON e.event_id = c.event_id
     WHERE c.room_id = room_list_info.room_id AND c.type = 'm.room.create' AND c.state_key = '')
    WHERE room_id IN (SELECT room_id FROM current_state WHERE type = 'm.room.create' AND state_key = '');

CREATE TRIGGER room_list_info_bump AFTER INSERT ON events
WHEN NEW.stream > 0 AND NEW.type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                                     'm.call.invite', 'm.poll.start', 'm.beacon_info')
BEGIN
    INSERT INTO room_list_info (room_id, bump_stream) VALUES (NEW.room_id, NEW.stream)
    ON CONFLICT (room_id) DO UPDATE SET bump_stream = MAX(COALESCE(bump_stream, 0), excluded.bump_stream);
END;

CREATE TRIGGER room_list_info_encrypted_insert AFTER INSERT ON current_state
WHEN NEW.type = 'm.room.encryption' AND NEW.state_key = ''
BEGIN
    INSERT INTO room_list_info (room_id, encrypted) VALUES (NEW.room_id, 1)
    ON CONFLICT (room_id) DO UPDATE SET encrypted = 1;
END;

CREATE TRIGGER room_list_info_encrypted_delete AFTER DELETE ON current_state
WHEN OLD.type = 'm.room.encryption' AND OLD.state_key = ''
BEGIN
    UPDATE room_list_info SET encrypted = 0 WHERE room_id = OLD.room_id;
END;

CREATE TRIGGER room_list_info_create_insert AFTER INSERT ON current_state
WHEN NEW.type = 'm.room.create' AND NEW.state_key = ''
BEGIN
    INSERT INTO room_list_info (room_id, has_create, room_type) VALUES (NEW.room_id, 1,
        (SELECT CASE WHEN json_type(pdu, '$.content.type') = 'text' THEN json_extract(pdu, '$.content.type') END
         FROM events WHERE event_id = NEW.event_id))
    ON CONFLICT (room_id) DO UPDATE SET has_create = 1, room_type = excluded.room_type;
END;
