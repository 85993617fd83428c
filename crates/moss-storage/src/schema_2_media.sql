-- Schema version 2: the media repository.

-- One row per mxc:// id. content_key is NULL while an asynchronous upload is pending.
-- Several rows may share one content_key: identical files are stored once.
CREATE TABLE media (
    media_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    created_ts   INTEGER NOT NULL,
    expires_ts   INTEGER,
    content_key  TEXT,
    content_type TEXT,
    filename     TEXT,
    size         INTEGER,
    sha256       TEXT,
    -- served on the unauthenticated legacy endpoints while they are frozen
    legacy       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX media_pending ON media (user_id) WHERE content_key IS NULL;
CREATE INDEX media_content ON media (content_key);
