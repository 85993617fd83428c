//! Federation destinations as an admin sees them (`/_synapse/admin/v1/federation/destinations`):
//! every server this one talks to (has queued for, delivered to, or shares a room with), how
//! delivery to it goes, the rooms it is in, and a way to retry a failing one now.

use ruma::{OwnedServerName, ServerName};

use crate::{error::Error, federation::Delivery, Moss, Result};

#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub delivery: Delivery,
}

impl Moss {
    fn delivery_of(&self, name: &str) -> Delivery {
        let Some(fed) = &self.federation else { return Delivery::default() };
        let Ok(server) = ServerName::parse(name) else { return Delivery::default() };
        let all = fed.delivery.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&server).copied().unwrap_or_default()
    }

    /// Every destination, sorted by name, those containing `search` if given.
    pub async fn admin_destinations(&self, search: Option<&str>) -> Result<Vec<Destination>> {
        let local = format!("%:{}", self.server_name);
        let (mut names, queued) = self
            .db
            .read(move |r| Ok::<_, Error>((r.remote_servers_in_rooms(&local)?, r.outbox_destinations()?)))
            .await?;
        names.extend(queued);
        if let Some(fed) = &self.federation {
            let all = fed.delivery.lock().unwrap_or_else(|p| p.into_inner());
            names.extend(all.keys().map(|k| k.to_string()));
        }
        names.sort();
        names.dedup();
        names.retain(|n| n != self.server_name.as_str() && search.is_none_or(|s| n.contains(s)));
        Ok(names.into_iter().map(|name| Destination { delivery: self.delivery_of(&name), name }).collect())
    }

    pub async fn admin_destination(&self, name: &str) -> Result<Destination> {
        self.admin_destinations(None)
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Error::not_found("Unknown destination"))
    }

    /// The rooms `name` has users in, with the newest event's stream position.
    pub async fn admin_destination_rooms(&self, name: &str) -> Result<Vec<(String, i64)>> {
        self.admin_destination(name).await?;
        let n = name.to_owned();
        self.db.read(move |r| Ok::<_, Error>(r.rooms_with_server(&n)?)).await
    }

    /// Retries a failing destination now (400 if it is not failing, as Synapse).
    pub async fn admin_reset_destination(&self, name: &str) -> Result<()> {
        let d = self.admin_destination(name).await?;
        if d.delivery.failure_ts.is_none() {
            return Err(Error::new(
                ruma::api::error::ErrorKind::Unknown,
                400,
                "The retry timing does not need to be reset for this destination.",
            ));
        }
        let server: OwnedServerName = name.try_into().map_err(|_| Error::invalid_param("invalid server name"))?;
        if let Some(fed) = &self.federation {
            fed.delivery.lock().unwrap_or_else(|p| p.into_inner()).remove(&server);
        }
        self.destination_is_back(&server);
        Ok(())
    }
}
