-- Schema version 13: find a room's state events of one type and key quickly (a user's
-- membership history, for history visibility).
CREATE INDEX events_state_key ON events (room_id, type, state_key) WHERE state_key IS NOT NULL;
