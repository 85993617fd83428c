-- Schema version 5: content being written to the store and not yet recorded, so that the
-- orphan sweeper leaves it alone (rows left by a crash age out and are then swept).
CREATE TABLE media_inflight (
    content_key TEXT NOT NULL,
    started_ts  INTEGER NOT NULL
);
CREATE INDEX media_inflight_key ON media_inflight (content_key);

-- Quarantined media is kept but never served.
ALTER TABLE media ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
