//! `/_synapse/admin/v1/registration_tokens`: list, create, show, change, delete.

use std::sync::Arc;

use axum::{extract::State, Json};
use moss_core::{admin::tokens::TokenChange, now_ms, storage::RegistrationTokenRow, Moss};
use serde::{Deserialize, Deserializer, Serialize};

use super::{body, boolean, optional_body, Admin, Body, Empty};
use crate::{
    error::ApiError,
    extract::{Path, Query},
};

#[derive(Serialize)]
pub(super) struct Token {
    token: String,
    uses_allowed: Option<i64>,
    /// Registrations using the token that have not completed (moss completes them at once).
    pending: i64,
    completed: i64,
    expiry_time: Option<i64>,
}

impl From<RegistrationTokenRow> for Token {
    fn from(t: RegistrationTokenRow) -> Self {
        Token {
            token: t.token,
            uses_allowed: t.uses_allowed,
            pending: 0,
            completed: t.completed,
            expiry_time: t.expiry_ts,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ListParams {
    valid: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Tokens {
    registration_tokens: Vec<Token>,
}

/// `GET /_synapse/admin/v1/registration_tokens` (`valid=true`: still usable; `false`: not)
pub(super) async fn list(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<ListParams>,
) -> Result<Json<Tokens>, ApiError> {
    let valid = match q.valid.as_deref() {
        None => None,
        v => Some(boolean("valid", v, true)?),
    };
    let now = now_ms() as i64;
    let usable = |t: &RegistrationTokenRow| {
        t.uses_allowed.is_none_or(|u| t.completed < u) && t.expiry_ts.is_none_or(|e| e > now)
    };
    let registration_tokens = moss
        .registration_tokens()
        .await?
        .into_iter()
        .filter(|t| valid.is_none_or(|v| usable(t) == v))
        .map(Token::from)
        .collect();
    Ok(Json(Tokens { registration_tokens }))
}

/// A field that may be absent (`None`), null (`Some(None)`) or set.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Ok(Some(Option::<i64>::deserialize(d)?))
}

#[derive(Deserialize, Default)]
pub(super) struct NewToken {
    token: Option<String>,
    length: Option<i64>,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
}

/// `POST /_synapse/admin/v1/registration_tokens/new`
pub(super) async fn create(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Body(bytes): Body,
) -> Result<Json<Token>, ApiError> {
    let b: NewToken = optional_body(&bytes)?;
    let t = moss.admin_create_registration_token(b.token, b.length, b.uses_allowed, b.expiry_time).await?;
    Ok(Json(t.into()))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`
pub(super) async fn show(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(token): Path<String>,
) -> Result<Json<Token>, ApiError> {
    Ok(Json(moss.admin_registration_token(&token).await?.into()))
}

#[derive(Deserialize)]
pub(super) struct TokenUpdate {
    #[serde(default, deserialize_with = "present")]
    uses_allowed: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    expiry_time: Option<Option<i64>>,
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}` (synapse-admin sends the whole record;
/// only `uses_allowed` and `expiry_time` are changed)
pub(super) async fn update(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(token): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Token>, ApiError> {
    let b: TokenUpdate = body(&bytes)?;
    let change = TokenChange { uses_allowed: b.uses_allowed, expiry_time: b.expiry_time };
    Ok(Json(moss.admin_update_registration_token(&token, change).await?.into()))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`
pub(super) async fn delete(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(token): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    if moss.delete_registration_token(&token).await? {
        Ok(Json(Empty {}))
    } else {
        Err(moss_core::Error::not_found(format!("No such registration token: {token}")).into())
    }
}
