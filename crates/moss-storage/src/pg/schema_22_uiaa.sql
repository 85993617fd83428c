-- User-interactive authentication sessions, in the database so that every moss process sharing
-- it (and a restarted one) knows them: the endpoint they are for and the stages completed.
CREATE TABLE uiaa_sessions (
    session    TEXT PRIMARY KEY,
    purpose    TEXT NOT NULL,
    completed  TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX uiaa_sessions_created ON uiaa_sessions (created_ts);
