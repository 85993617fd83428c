//! Account locking and suspension for admins: the spec's (v1.18) `GET`/`PUT
//! /_matrix/client/v1/admin/lock/{userId}` and `.../suspend/{userId}`, and Synapse's
//! `PUT /_synapse/admin/v1/suspend/{userId}`.

use std::sync::Arc;

use axum::{extract::State, Json};
use moss_core::{admin::users::Moderation, Moss};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::{body, Admin, Body};
use crate::{error::ApiError, extract::Path};

fn user(raw: &str) -> Result<OwnedUserId, ApiError> {
    UserId::parse(raw).map_err(|_| ApiError::invalid_param(format!("{raw} is not a valid user id")))
}

#[derive(Serialize, Deserialize)]
pub(super) struct Locked {
    locked: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Suspended {
    suspended: bool,
}

/// `GET /_matrix/client/v1/admin/lock/{userId}`
pub(super) async fn get_lock(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Locked>, ApiError> {
    Ok(Json(Locked { locked: moss.moderation_target(&user(&raw)?).await?.locked }))
}

/// `PUT /_matrix/client/v1/admin/lock/{userId}`
pub(super) async fn put_lock(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Locked>, ApiError> {
    let b: Locked = body(&bytes)?;
    moss.admin_moderate(&session.user_id, &user(&raw)?, Moderation::Lock, b.locked).await?;
    Ok(Json(b))
}

/// `GET /_matrix/client/v1/admin/suspend/{userId}`
pub(super) async fn get_suspend(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Suspended>, ApiError> {
    Ok(Json(Suspended { suspended: moss.moderation_target(&user(&raw)?).await?.suspended }))
}

/// `PUT /_matrix/client/v1/admin/suspend/{userId}`
pub(super) async fn put_suspend(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Suspended>, ApiError> {
    let b: Suspended = body(&bytes)?;
    moss.admin_moderate(&session.user_id, &user(&raw)?, Moderation::Suspend, b.suspended).await?;
    Ok(Json(b))
}

#[derive(Deserialize)]
pub(super) struct SynapseSuspend {
    suspend: bool,
}

/// `PUT /_synapse/admin/v1/suspend/{userId}` (`{"suspend": bool}` → `{"user_@x:y_suspended": bool}`)
pub(super) async fn synapse_suspend(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Body(bytes): Body,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>, ApiError> {
    let b: SynapseSuspend = body(&bytes)?;
    let target = user(&raw)?;
    if target.server_name() != moss.server_name {
        return Err(
            moss_core::Error::new(ruma::api::error::ErrorKind::Unknown, 400, "Can only suspend local users").into()
        );
    }
    moss.admin_moderate(&session.user_id, &target, Moderation::Suspend, b.suspend).await?;
    let mut out = serde_json::Map::new();
    out.insert(format!("user_{target}_suspended"), serde_json::Value::Bool(b.suspend));
    Ok(Json(out))
}
