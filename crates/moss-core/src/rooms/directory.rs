//! Room aliases, the public room directory and the user directory.

use ruma::{
    api::error::ErrorKind, directory::RoomNetwork, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, ServerName,
    UserId,
};
use serde_json::{json, Value};

use super::{power_levels, room_info, visibility::world_readable};
use crate::{
    error::{Error, Result},
    Moss,
};

pub struct PublicRoomsPage {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

impl Moss {
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId> {
        Ok(self.resolve_alias_with_servers(alias).await?.0)
    }

    /// An alias's room and servers to join it through: ours, or asked of the alias's server.
    pub async fn resolve_alias_with_servers(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() != self.server_name {
            if self.federation.is_none() {
                return Err(Error::not_found("aliases on other servers need federation, which is disabled"));
            }
            let path = format!(
                "/_matrix/federation/v1/query/directory?room_alias={}",
                crate::federation::query::urlencode(alias.as_str())
            );
            let v = self.federation_request(alias.server_name(), http::Method::GET, &path, None).await?;
            let room = v["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unknown,
                    502,
                    format!("{} answered the alias query without a room id", alias.server_name()),
                )
            })?;
            let servers = v["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().and_then(|s| ServerName::parse(s).ok()))
                .collect();
            return Ok((room, servers));
        }
        let a = alias.to_string();
        let mut found = self.db.read(move |r| Ok::<_, Error>(r.alias(&a)?)).await?;
        // A bridge may create rooms for aliases of its namespace on demand.
        if found.is_none() && self.appservice_alias_exists(alias).await {
            let a = alias.to_string();
            found = self.db.read(move |r| Ok::<_, Error>(r.alias(&a)?)).await?;
        }
        let (room, _) = found.ok_or_else(|| Error::not_found("room alias not found"))?;
        Ok((RoomId::parse(room).map_err(|e| Error::internal(e.to_string()))?, vec![self.server_name.clone()]))
    }

    /// Another server's public room directory.
    pub async fn remote_public_rooms(
        &self,
        server: &ServerName,
        since: Option<&str>,
        limit: Option<usize>,
        search: Option<String>,
    ) -> Result<PublicRoomsPage> {
        if self.federation.is_none() {
            return Err(Error::not_found("other servers' directories need federation, which is disabled"));
        }
        let mut body = json!({});
        if let Some(s) = since {
            body["since"] = json!(s);
        }
        if let Some(l) = limit {
            body["limit"] = json!(l);
        }
        if let Some(term) = search {
            body["filter"] = json!({"generic_search_term": term});
        }
        let v = self
            .federation_request(server, http::Method::POST, "/_matrix/federation/v1/publicRooms", Some(body))
            .await?;
        Ok(PublicRoomsPage {
            chunk: v["chunk"].as_array().cloned().unwrap_or_default(),
            next_batch: v["next_batch"].as_str().map(str::to_owned),
            prev_batch: v["prev_batch"].as_str().map(str::to_owned),
            total: v["total_room_count_estimate"].as_u64().unwrap_or(0) as usize,
        })
    }

    pub async fn put_alias(&self, user: &UserId, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        if alias.server_name() != self.server_name {
            return Err(Error::invalid_param("aliases must be on this server"));
        }
        // An alias in an application service's exclusive namespace is the service's (its
        // users may set it without being in the room, as in Synapse).
        match self.appservices.exclusive_alias_owner(alias.as_str()) {
            Some(owner) if owner.owns_user(user.as_str()) => {}
            Some(_) => {
                return Err(Error::new(ErrorKind::Exclusive, 400, "this alias is reserved by an application service"))
            }
            None => self.require_joined(user, room_id).await?,
        }
        let (a, room, u) = (alias.to_string(), room_id.to_string(), user.to_string());
        let created = self.db.write(move |w| Ok::<_, Error>(w.put_alias(&a, &room, &u)?)).await?;
        if created {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Unknown, 409, "room alias already exists"))
        }
    }

    /// The alias's creator, a server admin or a room moderator may delete it.
    pub async fn delete_alias(&self, user: &UserId, alias: &RoomAliasId) -> Result<()> {
        if self.appservices.exclusive_alias_owner(alias.as_str()).is_some_and(|o| !o.owns_user(user.as_str())) {
            return Err(Error::new(ErrorKind::Exclusive, 400, "this alias is reserved by an application service"));
        }
        let (a, u) = (alias.to_string(), user.to_owned());
        self.db
            .write(move |w| {
                let (room, creator) = w.alias(&a)?.ok_or_else(|| Error::not_found("room alias not found"))?;
                let admin = w.user(u.as_str())?.is_some_and(|x| x.admin);
                let moderator = match room_info(w, &room)? {
                    Some(info) => power_levels(w, &room, &info.rules)?
                        .user_can_send_state(&u, ruma::events::StateEventType::RoomCanonicalAlias),
                    None => false,
                };
                if creator != u.as_str() && !admin && !moderator {
                    return Err(Error::forbidden("you may not delete this alias"));
                }
                w.delete_alias(&a)?;
                Ok(())
            })
            .await
    }

    pub async fn room_aliases(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<String>> {
        let (room, u) = (room_id.to_string(), user.to_string());
        self.db
            .read(move |r| {
                let joined = r.membership(&room, &u)?.is_some_and(|m| m.membership == "join");
                if !joined && !world_readable(r, &room)? {
                    return Err(Error::forbidden("you are not in this room"));
                }
                Ok(r.room_aliases(&room)?)
            })
            .await
    }

    /// A canonical alias event may only name aliases that point at this room.
    pub(crate) async fn check_canonical_alias(&self, room_id: &RoomId, content: &Value) -> Result<()> {
        let mut aliases: Vec<String> = content["alt_aliases"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if let Some(a) = content["alias"].as_str() {
            aliases.push(a.to_owned());
        }
        for a in aliases {
            let alias =
                RoomAliasId::parse(&a).map_err(|e| Error::new(ErrorKind::BadAlias, 400, format!("{a}: {e}")))?;
            match self.resolve_alias(&alias).await {
                Ok(r) if r == room_id => {}
                _ => return Err(Error::new(ErrorKind::BadAlias, 400, format!("{a} does not point to this room"))),
            }
        }
        Ok(())
    }

    pub async fn room_published(&self, room_id: &RoomId) -> Result<bool> {
        let room = room_id.to_string();
        let row = self.db.read(move |r| Ok::<_, Error>(r.room(&room)?)).await?;
        Ok(row.ok_or_else(|| Error::not_found("unknown room"))?.published)
    }

    pub async fn set_room_published(&self, user: &UserId, room_id: &RoomId, published: bool) -> Result<()> {
        let (room, u) = (room_id.to_string(), user.to_owned());
        self.db
            .write(move |w| {
                let info = room_info(w, &room)?.ok_or_else(|| Error::not_found("unknown room"))?;
                let admin = w.user(u.as_str())?.is_some_and(|x| x.admin);
                let allowed = w.membership(&room, u.as_str())?.is_some_and(|m| m.membership == "join")
                    && power_levels(w, &room, &info.rules)?
                        .user_can_send_state(&u, ruma::events::StateEventType::RoomCanonicalAlias);
                if !allowed && !admin {
                    return Err(Error::forbidden("you may not change this room's directory visibility"));
                }
                w.set_room_published(&room, published)?;
                Ok(())
            })
            .await
    }

    /// Publishes (or withdraws) a room in one of a bridge's networks' room lists
    /// (`PUT /directory/list/appservice/{networkId}/{roomId}`): only the bridge itself may.
    pub async fn set_network_room(
        &self,
        session: &crate::accounts::Session,
        network_id: &str,
        room_id: &RoomId,
        published: bool,
    ) -> Result<()> {
        let service = session
            .appservice
            .clone()
            .ok_or_else(|| Error::forbidden("only application services may edit their networks' room lists"))?;
        let (id, net, room) = (service.id().to_owned(), network_id.to_owned(), room_id.to_string());
        self.db
            .write(move |w| {
                if w.room(&room)?.is_none() {
                    return Err(Error::not_found("unknown room"));
                }
                Ok(w.set_network_room(&id, &net, &room, published)?)
            })
            .await
    }

    pub async fn public_rooms(
        &self,
        since: Option<&str>,
        limit: Option<usize>,
        search: Option<String>,
        network: &RoomNetwork,
    ) -> Result<PublicRoomsPage> {
        let offset = match since {
            Some(s) => s
                .strip_prefix('p')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_param("invalid since token"))?,
            None => 0,
        };
        let search = search.map(|s| s.to_lowercase());
        let network = network.clone();
        let mut rooms = self
            .db
            .read(move |r| {
                let mut out = Vec::new();
                let rooms = match &network {
                    RoomNetwork::Matrix => r.published_rooms()?,
                    RoomNetwork::All => {
                        let mut all = r.published_rooms()?;
                        for room in r.network_rooms(None)? {
                            if !all.contains(&room) {
                                all.push(room);
                            }
                        }
                        all
                    }
                    // `instance_id` as /thirdparty/protocols gives it: "{service id}|{network id}".
                    RoomNetwork::ThirdParty(instance) => match instance.split_once('|') {
                        Some((service, net)) => r.network_rooms(Some((service, net)))?,
                        None => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                for room in rooms {
                    let entry = room_chunk(r, &room)?;
                    if let Some(term) = &search {
                        let hit = ["name", "topic", "canonical_alias"]
                            .iter()
                            .any(|f| entry[f].as_str().is_some_and(|v| v.to_lowercase().contains(term)))
                            || room.to_lowercase().contains(term);
                        if !hit {
                            continue;
                        }
                    }
                    out.push(entry);
                }
                Ok::<_, Error>(out)
            })
            .await?;
        // Biggest rooms first, as every other server orders it.
        rooms.sort_by(|a, b| b["num_joined_members"].as_i64().cmp(&a["num_joined_members"].as_i64()));
        let total = rooms.len();
        let limit = limit.unwrap_or(100).clamp(1, 500);
        let chunk: Vec<Value> = rooms.into_iter().skip(offset).take(limit).collect();
        let next = offset + chunk.len();
        Ok(PublicRoomsPage {
            next_batch: (next < total).then(|| format!("p{next}")),
            prev_batch: (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit))),
            chunk,
            total,
        })
    }

    /// User directory: users sharing a room with the searcher, or in a public room.
    pub async fn search_users(&self, searcher: &UserId, term: &str, limit: usize) -> Result<(Vec<Value>, bool)> {
        let (s, t) = (searcher.to_string(), term.to_owned());
        let limit = limit.clamp(1, 100);
        let rows = self.db.read(move |r| Ok::<_, Error>(r.search_users(&s, &t, limit as i64 + 1)?)).await?;
        let limited = rows.len() > limit;
        let results = rows
            .into_iter()
            .take(limit)
            .map(|u| {
                let mut v = json!({"user_id": u.user_id});
                if let Some(n) = u.displayname {
                    v["display_name"] = json!(n);
                }
                if let Some(a) = u.avatar_url {
                    v["avatar_url"] = json!(a);
                }
                v
            })
            .collect();
        Ok((results, limited))
    }
}

/// What directories show of a room: the "public rooms chunk" of `publicRooms` and `/hierarchy`.
pub(crate) fn room_chunk(r: &moss_storage::Reader<'_>, room: &str) -> Result<Value> {
    let state = |k: &str, f: &str| -> Result<Option<String>> {
        Ok(match r.current_state_event(room, k, "")? {
            Some(row) => serde_json::from_str::<Value>(&row.pdu)?["content"][f].as_str().map(str::to_owned),
            None => None,
        })
    };
    let mut entry = json!({
        "room_id": room,
        "num_joined_members": r.joined_member_count(room)?,
        "world_readable": state("m.room.history_visibility", "history_visibility")?.as_deref() == Some("world_readable"),
        "guest_can_join": state("m.room.guest_access", "guest_access")?.as_deref() == Some("can_join"),
        "join_rule": state("m.room.join_rules", "join_rule")?.unwrap_or_else(|| "public".into()),
    });
    for (k, v) in [
        ("name", state("m.room.name", "name")?),
        ("topic", state("m.room.topic", "topic")?),
        ("canonical_alias", state("m.room.canonical_alias", "alias")?),
        ("avatar_url", state("m.room.avatar", "url")?),
        ("room_type", state("m.room.create", "type")?),
    ] {
        if let Some(v) = v {
            entry[k] = json!(v);
        }
    }
    Ok(entry)
}
