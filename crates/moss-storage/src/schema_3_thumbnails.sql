-- Schema version 3: thumbnails, keyed by the content they were made from (so deduplicated
-- uploads share them) and the size and method asked for.
CREATE TABLE media_thumbnails (
    content_key  TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    method       TEXT NOT NULL,
    animated     INTEGER NOT NULL,
    thumb_key    TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    PRIMARY KEY (content_key, width, height, method, animated)
);
