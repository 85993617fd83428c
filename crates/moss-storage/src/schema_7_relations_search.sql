-- Schema version 7: event relations (threads, edits, reactions, references) and full-text search.

-- One row per event that relates to another through content.m.relates_to (kept in the clear even
-- in encrypted rooms). Filled by insert_event with the statement below, and here for old events.
CREATE TABLE event_relations (
    stream     INTEGER PRIMARY KEY,
    event_id   TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type   TEXT NOT NULL,
    type       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    key        TEXT
);
CREATE INDEX event_relations_target ON event_relations (relates_to, rel_type, stream);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, stream);

INSERT INTO event_relations (stream, event_id, room_id, relates_to, rel_type, type, sender, key)
SELECT stream, event_id, room_id,
       json_extract(pdu, '$.content."m.relates_to".event_id'),
       json_extract(pdu, '$.content."m.relates_to".rel_type'),
       type, sender,
       json_extract(pdu, '$.content."m.relates_to".key')
FROM events
WHERE redacted_by IS NULL
  AND json_type(pdu, '$.content."m.relates_to".event_id') = 'text'
  AND json_type(pdu, '$.content."m.relates_to".rel_type') = 'text';

-- Full-text index over what /search can look in: message bodies, room names and topics. The rowid
-- is the event's stream position.
CREATE VIRTUAL TABLE event_search USING fts5(text, key UNINDEXED, tokenize = 'unicode61 remove_diacritics 2');

INSERT INTO event_search (rowid, text, key)
SELECT stream,
       CASE type WHEN 'm.room.message' THEN json_extract(pdu, '$.content.body')
                 WHEN 'm.room.name' THEN json_extract(pdu, '$.content.name')
                 ELSE json_extract(pdu, '$.content.topic') END,
       CASE type WHEN 'm.room.message' THEN 'content.body'
                 WHEN 'm.room.name' THEN 'content.name'
                 ELSE 'content.topic' END
FROM events
WHERE redacted_by IS NULL
  AND ((type = 'm.room.message' AND json_type(pdu, '$.content.body') = 'text')
    OR (type = 'm.room.name' AND json_type(pdu, '$.content.name') = 'text')
    OR (type = 'm.room.topic' AND json_type(pdu, '$.content.topic') = 'text'));

-- Triggers keep both indexes in step with the events table, whoever writes to it (the timeline,
-- imports, federation later), and drop a redacted event's entries (redaction strips its content).
CREATE TRIGGER events_index_relations AFTER INSERT ON events
WHEN json_type(NEW.pdu, '$.content."m.relates_to".event_id') = 'text'
 AND json_type(NEW.pdu, '$.content."m.relates_to".rel_type') = 'text'
BEGIN
    INSERT OR REPLACE INTO event_relations (stream, event_id, room_id, relates_to, rel_type, type, sender, key)
    VALUES (NEW.stream, NEW.event_id, NEW.room_id,
            json_extract(NEW.pdu, '$.content."m.relates_to".event_id'),
            json_extract(NEW.pdu, '$.content."m.relates_to".rel_type'),
            NEW.type, NEW.sender,
            json_extract(NEW.pdu, '$.content."m.relates_to".key'));
END;

CREATE TRIGGER events_index_search AFTER INSERT ON events
WHEN (NEW.type = 'm.room.message' AND json_type(NEW.pdu, '$.content.body') = 'text')
  OR (NEW.type = 'm.room.name' AND json_type(NEW.pdu, '$.content.name') = 'text')
  OR (NEW.type = 'm.room.topic' AND json_type(NEW.pdu, '$.content.topic') = 'text')
BEGIN
    INSERT INTO event_search (rowid, text, key)
    VALUES (NEW.stream,
            CASE NEW.type WHEN 'm.room.message' THEN json_extract(NEW.pdu, '$.content.body')
                          WHEN 'm.room.name' THEN json_extract(NEW.pdu, '$.content.name')
                          ELSE json_extract(NEW.pdu, '$.content.topic') END,
            CASE NEW.type WHEN 'm.room.message' THEN 'content.body'
                          WHEN 'm.room.name' THEN 'content.name'
                          ELSE 'content.topic' END);
END;

CREATE TRIGGER events_unindex_redacted AFTER UPDATE OF redacted_by ON events
WHEN NEW.redacted_by IS NOT NULL
BEGIN
    DELETE FROM event_relations WHERE stream = NEW.stream;
    DELETE FROM event_search WHERE rowid = NEW.stream;
END;
