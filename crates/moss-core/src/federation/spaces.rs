//! Spaces across servers: `GET /_matrix/federation/v1/hierarchy/{roomId}` served (a space and
//! its direct children as the asking server may see them) and asked, for the rooms of a space
//! that only other servers hold (their answers are trimmed to what clients are shown).

use ruma::{OwnedRoomId, RoomId, ServerName};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::rooms::require_acl;
use crate::{
    error::{Error, Result},
    rooms::hierarchy::{children, chunk_for_server, server_can_preview, RemoteSpaces, MAX_REMOTE_ASKS},
    Moss,
};

impl Moss {
    /// `GET /_matrix/federation/v1/hierarchy/{roomId}`: the space and its direct children as
    /// `origin` may see them (unpaginated, as the spec says); children this server knows but
    /// `origin` may not see are listed as inaccessible, unknown ones left out.
    pub async fn serve_hierarchy(&self, origin: &ServerName, room_id: &RoomId, suggested_only: bool) -> Result<Value> {
        let (room, origin) = (room_id.to_string(), origin.to_owned());
        self.db
            .read(move |r| {
                require_acl(r, &room, &origin)?;
                if !server_can_preview(r, &room, &origin)? {
                    return Err(Error::not_found("Room does not exist."));
                }
                let kids = children(r, &room, suggested_only)?;
                let mut chunk = chunk_for_server(r, &room)?;
                let (mut children_chunks, mut inaccessible) = (Vec::new(), Vec::new());
                for kid in &kids {
                    let Some(id) = kid["state_key"].as_str() else { continue };
                    if r.room(id)?.is_none() {
                        continue;
                    }
                    if server_can_preview(r, id, &origin)? {
                        let mut c = chunk_for_server(r, id)?;
                        c["children_state"] = json!(children(r, id, suggested_only)?);
                        children_chunks.push(c);
                    } else {
                        inaccessible.push(id.to_owned());
                    }
                }
                chunk["children_state"] = json!(kids);
                Ok(json!({"room": chunk, "children": children_chunks, "inaccessible_children": inaccessible}))
            })
            .await
    }
}

/// Children kept from one answer, and child events kept per room.
const MAX_CHILDREN: usize = 200;

/// A room summary as another server sends it, keeping only what clients are shown.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct Summary {
    room_id: OwnedRoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    canonical_alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    avatar_url: Option<String>,
    #[serde(default)]
    num_joined_members: u64,
    #[serde(default)]
    world_readable: bool,
    #[serde(default)]
    guest_can_join: bool,
    #[serde(default = "public")]
    join_rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_room_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room_version: Option<String>,
    #[serde(default)]
    children_state: Vec<ChildEvent>,
}

fn public() -> String {
    "public".into()
}

/// A stripped `m.space.child` event.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct ChildEvent {
    #[serde(rename = "type")]
    kind: String,
    state_key: String,
    content: serde_json::Map<String, Value>,
    sender: String,
    origin_server_ts: u64,
}

#[derive(Deserialize)]
struct FedHierarchy {
    room: Summary,
    #[serde(default)]
    children: Vec<Value>,
    #[serde(default)]
    inaccessible_children: Vec<String>,
}

impl Summary {
    /// The summary as a client gets it: child events that are space children pointing
    /// somewhere (suggested ones only if asked), at most [`MAX_CHILDREN`].
    fn for_client(mut self, suggested_only: bool) -> Value {
        self.children_state.retain(|c| {
            c.kind == "m.space.child"
                && c.content.get("via").and_then(Value::as_array).is_some_and(|v| !v.is_empty())
                && (!suggested_only || c.content.get("suggested") == Some(&Value::Bool(true)))
        });
        self.children_state.truncate(MAX_CHILDREN);
        self.allowed_room_ids.truncate(MAX_CHILDREN);
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Moss {
    /// A room only other servers hold, as the first of `via` that answers describes it (its
    /// summary with `children_state`), remembered with its children's summaries for the rest
    /// of the request. `None` if no server would tell.
    pub(crate) async fn remote_space(
        &self,
        room: &str,
        via: &[String],
        suggested_only: bool,
        known: &mut RemoteSpaces,
    ) -> Option<Value> {
        if let Some(summary) = known.summaries.get(room) {
            return summary.clone();
        }
        self.federation.as_ref()?;
        let path = format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
            super::query::urlencode(room)
        );
        let mut found = None;
        for server in via.iter().take(3) {
            if known.asked >= MAX_REMOTE_ASKS {
                break;
            }
            let Ok(server) = ServerName::parse(server) else { continue };
            if server == self.server_name {
                continue;
            }
            known.asked += 1;
            let answer = match self.federation_request(&server, http::Method::GET, &path, None).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%server, room, error = %e, "space summary elsewhere");
                    continue;
                }
            };
            let Ok(answer) = serde_json::from_value::<FedHierarchy>(answer) else { continue };
            if answer.room.room_id.as_str() != room {
                continue;
            }
            for child in answer.children.into_iter().take(MAX_CHILDREN) {
                // A child's summary is as good as asking for it when it lists its own children.
                if let Ok(s) = serde_json::from_value::<Summary>(child.clone()) {
                    if child.get("children_state").is_some() {
                        known.summaries.entry(s.room_id.to_string()).or_insert(Some(s.for_client(suggested_only)));
                    }
                }
            }
            for id in answer.inaccessible_children.into_iter().take(MAX_CHILDREN) {
                known.summaries.entry(id).or_insert(None);
            }
            found = Some(answer.room.for_client(suggested_only));
            break;
        }
        known.summaries.insert(room.to_owned(), found.clone());
        found
    }
}
