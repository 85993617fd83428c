-- Schema version 16: push notifications.

-- What each event asks for each local user it notifies, written by the push evaluator (one
-- row per notifying event and user; events that do not notify leave no row). Counts are the
-- rows after the user's read receipts; pushers read their own user's rows after their cursor.
-- `actions` is NULL for the common ["notify"], else the JSON array of actions (tweaks).
CREATE TABLE push_actions (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    stream    INTEGER NOT NULL,
    event_id  TEXT NOT NULL,
    -- 'main', or the root of the thread the event is in
    thread_id TEXT NOT NULL,
    highlight INTEGER NOT NULL,
    actions   TEXT,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, stream)
) WITHOUT ROWID;
CREATE INDEX push_actions_user_stream ON push_actions (user_id, stream);

-- How far the evaluator has gone: every room event with a stream at or below this has its rows.
-- It starts 10,000 events back, so unread counts survive the upgrade for recent history.
CREATE TABLE push_progress (
    id             INTEGER PRIMARY KEY CHECK (id = 0),
    evaluated_upto INTEGER NOT NULL
);
INSERT INTO push_progress (id, evaluated_upto)
    SELECT 0, MAX(0, pos - 10000) FROM stream_counter WHERE id = 0;

-- The stream of the event a receipt points at (NULL when the event is not known here), so that
-- "read up to here" compares with push_actions.stream.
ALTER TABLE receipts ADD COLUMN event_stream INTEGER;
UPDATE receipts SET event_stream = (SELECT e.stream FROM events e WHERE e.event_id = receipts.event_id);

-- Pushers: the device that set it (removed with the device), when (pushkey_ts), the delivery
-- cursor (every notifying row up to last_stream has been handled) and since when the
-- gateway has been failing (to give up on one push after a day, as Synapse does).
ALTER TABLE pushers ADD COLUMN device_id TEXT;
ALTER TABLE pushers ADD COLUMN created_ts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pushers ADD COLUMN last_stream INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pushers ADD COLUMN failing_since INTEGER;
UPDATE pushers SET last_stream = (SELECT pos FROM stream_counter WHERE id = 0);
