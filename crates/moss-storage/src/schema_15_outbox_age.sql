-- Schema version 15: when each outbound item was queued, so that ephemeral EDUs (typing,
-- presence) that waited out a long outage are dropped instead of delivered stale.
ALTER TABLE federation_outbox ADD COLUMN queued_ts INTEGER NOT NULL DEFAULT 0;
