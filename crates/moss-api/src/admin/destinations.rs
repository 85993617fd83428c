//! `/_synapse/admin/v1/federation/destinations` (list, one, its rooms, reset), and the
//! background-updates endpoints (moss migrates its schema at start and has none running).

use std::sync::Arc;

use axum::{extract::State, Json};
use moss_core::{admin::destinations::Destination, Moss};
use serde::{Deserialize, Serialize};

use super::{optional_body, unknown_order, Admin, Body, Empty, ListParams};
use crate::{
    error::ApiError,
    extract::{Path, Query},
};

#[derive(Serialize)]
pub(super) struct DestinationOut {
    destination: String,
    retry_last_ts: i64,
    retry_interval: i64,
    failure_ts: Option<i64>,
    last_successful_stream_ordering: Option<i64>,
}

impl From<Destination> for DestinationOut {
    fn from(d: Destination) -> Self {
        DestinationOut {
            destination: d.name,
            retry_last_ts: d.delivery.retry_last_ts,
            retry_interval: d.delivery.retry_interval_ms,
            failure_ts: d.delivery.failure_ts,
            last_successful_stream_ordering: d.delivery.last_successful_stream,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct DestinationParams {
    #[serde(flatten)]
    list: ListParams,
    destination: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Destinations {
    destinations: Vec<DestinationOut>,
    total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// `GET /_synapse/admin/v1/federation/destinations`
pub(super) async fn list(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<DestinationParams>,
) -> Result<Json<Destinations>, ApiError> {
    let page = q.list.page(true)?;
    let mut all: Vec<DestinationOut> =
        moss.admin_destinations(q.destination.as_deref()).await?.into_iter().map(DestinationOut::from).collect();
    match q.list.order_by.as_deref().unwrap_or("destination") {
        "destination" => {}
        "retry_last_ts" => all.sort_by_key(|d| d.retry_last_ts),
        "retry_interval" => all.sort_by_key(|d| d.retry_interval),
        "failure_ts" => all.sort_by_key(|d| d.failure_ts),
        "last_successful_stream_ordering" => all.sort_by_key(|d| d.last_successful_stream_ordering),
        _ => return Err(unknown_order()),
    }
    if !page.forward {
        all.reverse();
    }
    let total = all.len();
    let destinations: Vec<DestinationOut> =
        all.into_iter().skip(page.from as usize).take(page.limit as usize).collect();
    let next_token = q.list.next(&page, destinations.len(), total as i64).map(|n| n.to_string());
    Ok(Json(Destinations { destinations, total, next_token }))
}

/// `GET /_synapse/admin/v1/federation/destinations/{destination}`
pub(super) async fn show(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<DestinationOut>, ApiError> {
    Ok(Json(moss.admin_destination(&name).await?.into()))
}

#[derive(Serialize)]
pub(super) struct DestinationRoom {
    room_id: String,
    stream_ordering: i64,
}

#[derive(Serialize)]
pub(super) struct DestinationRooms {
    rooms: Vec<DestinationRoom>,
    total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// `GET /_synapse/admin/v1/federation/destinations/{destination}/rooms`
pub(super) async fn rooms(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(name): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Json<DestinationRooms>, ApiError> {
    let page = q.page(true)?;
    let mut all = moss.admin_destination_rooms(&name).await?;
    if !page.forward {
        all.reverse();
    }
    let total = all.len();
    let rooms: Vec<DestinationRoom> = all
        .into_iter()
        .skip(page.from as usize)
        .take(page.limit as usize)
        .map(|(room_id, stream_ordering)| DestinationRoom { room_id, stream_ordering })
        .collect();
    let next_token = q.next(&page, rooms.len(), total as i64).map(|n| n.to_string());
    Ok(Json(DestinationRooms { rooms, total, next_token }))
}

/// `POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection`
pub(super) async fn reset(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    moss.admin_reset_destination(&name).await?;
    Ok(Json(Empty {}))
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct Enabled {
    enabled: Option<bool>,
}

/// `GET /_synapse/admin/v1/background_updates/enabled`: always on (there are none to pause).
pub(super) async fn updates_enabled(_: Admin) -> Json<Enabled> {
    Json(Enabled { enabled: Some(true) })
}

/// `POST /_synapse/admin/v1/background_updates/enabled`: accepted; moss has no background
/// updates to pause (schema changes run at start).
pub(super) async fn set_updates_enabled(_: Admin, Body(bytes): Body) -> Result<Json<Enabled>, ApiError> {
    let b: Enabled = optional_body(&bytes)?;
    if b.enabled.is_none() {
        return Err(moss_core::Error::missing_param("Missing param enabled").into());
    }
    Ok(Json(Enabled { enabled: Some(true) }))
}

#[derive(Serialize)]
pub(super) struct UpdatesStatus {
    enabled: bool,
    current_updates: serde_json::Map<String, serde_json::Value>,
}

/// `GET /_synapse/admin/v1/background_updates/status`
pub(super) async fn updates_status(_: Admin) -> Json<UpdatesStatus> {
    Json(UpdatesStatus { enabled: true, current_updates: serde_json::Map::new() })
}
