//! `POST /_synapse/admin/v1/send_server_notice` and its idempotent `PUT .../{txnId}`.

use std::sync::Arc;

use axum::{extract::State, Json};
use moss_core::{admin::notices::Notice, Moss};
use ruma::{events::TimelineEventType, OwnedEventId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{body, Admin, Body};
use crate::{error::ApiError, extract::Path};

#[derive(Deserialize)]
pub(super) struct SendNotice {
    user_id: Option<String>,
    content: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    state_key: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Sent {
    event_id: OwnedEventId,
}

async fn send(moss: &Moss, bytes: &[u8], txn_id: Option<String>) -> Result<Json<Sent>, ApiError> {
    let b: SendNotice = body(bytes)?;
    let user = b.user_id.ok_or_else(|| ApiError(moss_core::Error::missing_param("Missing param user_id")))?;
    let content = b.content.ok_or_else(|| ApiError(moss_core::Error::missing_param("Missing param content")))?;
    if !content.is_object() {
        return Err(ApiError::bad_json("content must be an object"));
    }
    let user = ruma::UserId::parse(&user).map_err(|_| ApiError::invalid_param("invalid user_id"))?;
    let kind = TimelineEventType::from(b.kind.as_deref().unwrap_or("m.room.message"));
    let notice = Notice { kind, state_key: b.state_key, content, txn_id };
    Ok(Json(Sent { event_id: moss.send_server_notice(&user, notice).await? }))
}

pub(super) async fn post(State(moss): State<Arc<Moss>>, _: Admin, Body(bytes): Body) -> Result<Json<Sent>, ApiError> {
    send(&moss, &bytes, None).await
}

pub(super) async fn put(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(txn_id): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Sent>, ApiError> {
    send(&moss, &bytes, Some(txn_id)).await
}
