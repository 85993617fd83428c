-- Schema version 21: OpenID tokens (`POST /user/{userId}/openid/request_token`), which another
-- service (an integration manager, a widget, Element Call's SFU authoriser) presents to
-- `GET /_matrix/federation/v1/openid/userinfo` to learn which user sent it. Short-lived.
CREATE TABLE openid_tokens (
    token      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts INTEGER NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
