//! Presence endpoints.

use std::sync::Arc;

use axum::Json;
use moss_core::Moss;
use ruma::api::client::presence::{get_presence, set_presence};
use serde_json::Value;

use crate::{
    error::ApiError,
    ruma_wrapper::{HandlerResult, Ruma, RumaResponse},
};

pub async fn set(moss: Arc<Moss>, req: Ruma<set_presence::v3::Request>) -> HandlerResult<set_presence::v3::Request> {
    let user = &req.session()?.user_id;
    if req.body.user_id != *user {
        return Err(ApiError::forbidden("you can only set your own presence"));
    }
    moss.set_presence(user, req.body.presence.as_str(), req.body.status_msg.clone()).await?;
    Ok(RumaResponse(set_presence::v3::Response::new()))
}

/// Plain JSON: ruma's response type cannot leave out `last_active_ago` for a user never seen.
pub async fn get(moss: Arc<Moss>, req: Ruma<get_presence::v3::Request>) -> Result<Json<Value>, ApiError> {
    Ok(Json(moss.get_presence(&req.session()?.user_id, &req.body.user_id).await?))
}
