-- Uploads streamed to the store under a fresh name find identical content kept before by its
-- hash (then share that object and drop the new one).
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX remote_media_sha256 ON remote_media (sha256);
