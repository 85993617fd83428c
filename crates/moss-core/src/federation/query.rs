//! Queries between servers: profiles (`/_matrix/federation/v1/query/profile`) and room aliases
//! (`/query/directory`), served to other servers and asked of them when a local user looks up a
//! remote user or alias.

use ruma::UserId;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    Moss,
};

impl Moss {
    /// Answers another server's profile query about one of our users.
    pub async fn serve_profile_query(&self, user: &UserId, field: Option<&str>) -> Result<Value> {
        if user.server_name() != self.server_name {
            return Err(Error::invalid_param("that user is not on this server"));
        }
        let (name, avatar) = self.profile(user).await?;
        if self.user(user).await?.is_none() {
            return Err(Error::not_found("no such user"));
        }
        let mut v = json!({});
        if field.is_none_or(|f| f == "displayname") {
            if let Some(n) = name {
                v["displayname"] = json!(n);
            }
        }
        if field.is_none_or(|f| f == "avatar_url") {
            if let Some(a) = avatar {
                v["avatar_url"] = json!(a);
            }
        }
        Ok(v)
    }

    /// A remote user's profile, asked of their server.
    pub async fn remote_profile(&self, user: &UserId) -> Result<Value> {
        let path = format!("/_matrix/federation/v1/query/profile?user_id={}", urlencode(user.as_str()));
        self.federation_request(user.server_name(), http::Method::GET, &path, None).await
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Moss {
    /// Answers another server's alias query about one of our aliases.
    pub async fn serve_directory_query(&self, alias: &ruma::RoomAliasId) -> Result<Value> {
        if alias.server_name() != self.server_name {
            return Err(Error::not_found("that alias is not on this server"));
        }
        let (room, servers) = self.resolve_alias_with_servers(alias).await?;
        Ok(json!({"room_id": room, "servers": servers}))
    }
}
