//! Spaces for other servers: `GET /_matrix/federation/v1/hierarchy/{roomId}`, a space and its
//! direct children as the asking server may see them.

use ruma::{RoomId, ServerName};
use serde_json::{json, Value};

use super::rooms::require_acl;
use crate::{
    error::{Error, Result},
    rooms::hierarchy::{children, chunk_for_server, server_can_preview},
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
