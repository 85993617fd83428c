-- Schema version 11: media of other servers kept in our store (imported from Synapse's
-- remote_content now; fetched over federation later). Content is content-addressed and
-- deduplicated with local media: content_key names the same objects.
CREATE TABLE remote_media (
    origin         TEXT NOT NULL,
    media_id       TEXT NOT NULL,
    content_key    TEXT NOT NULL,
    content_type   TEXT,
    filename       TEXT,
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    created_ts     INTEGER NOT NULL,
    last_access_ts INTEGER,
    quarantined    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX remote_media_content ON remote_media (content_key);
