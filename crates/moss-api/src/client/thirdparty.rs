//! Third-party networks (bridges' protocols) and bridges' per-network room lists.

use std::sync::Arc;

use moss_core::Moss;
use ruma::api::client::{
    appservice::set_room_visibility,
    room::Visibility,
    thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
        get_user_for_user_id,
    },
};

use crate::{
    error::ApiError,
    ruma_wrapper::{HandlerResult, Ruma, RumaResponse},
};

pub async fn protocols(
    moss: Arc<Moss>,
    req: Ruma<get_protocols::v3::Request>,
) -> HandlerResult<get_protocols::v3::Request> {
    req.session()?;
    Ok(RumaResponse(get_protocols::v3::Response::new(moss.thirdparty_protocols(None).await?)))
}

pub async fn protocol(
    moss: Arc<Moss>,
    req: Ruma<get_protocol::v3::Request>,
) -> HandlerResult<get_protocol::v3::Request> {
    req.session()?;
    let name = req.body.protocol;
    let protocol = moss
        .thirdparty_protocols(Some(&name))
        .await?
        .remove(&name)
        .ok_or_else(|| ApiError(moss_core::Error::not_found(format!("no bridge handles the protocol {name:?}"))))?;
    Ok(RumaResponse(get_protocol::v3::Response::new(protocol)))
}

pub async fn location_for_protocol(
    moss: Arc<Moss>,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> HandlerResult<get_location_for_protocol::v3::Request> {
    req.session()?;
    let b = req.body;
    Ok(RumaResponse(get_location_for_protocol::v3::Response::new(
        moss.thirdparty_locations(&b.protocol, b.fields).await?,
    )))
}

pub async fn location_for_alias(
    moss: Arc<Moss>,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> HandlerResult<get_location_for_room_alias::v3::Request> {
    req.session()?;
    Ok(RumaResponse(get_location_for_room_alias::v3::Response::new(
        moss.thirdparty_locations_for_alias(&req.body.alias).await?,
    )))
}

pub async fn user_for_protocol(
    moss: Arc<Moss>,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> HandlerResult<get_user_for_protocol::v3::Request> {
    req.session()?;
    let b = req.body;
    Ok(RumaResponse(get_user_for_protocol::v3::Response::new(moss.thirdparty_users(&b.protocol, b.fields).await?)))
}

pub async fn user_for_id(
    moss: Arc<Moss>,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> HandlerResult<get_user_for_user_id::v3::Request> {
    req.session()?;
    Ok(RumaResponse(get_user_for_user_id::v3::Response::new(moss.thirdparty_users_for_id(&req.body.userid).await?)))
}

/// `PUT /directory/list/appservice/{networkId}/{roomId}`.
pub async fn set_network_visibility(
    moss: Arc<Moss>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> HandlerResult<set_room_visibility::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    moss.set_network_room(&s, &b.network_id, &b.room_id, b.visibility == Visibility::Public).await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}
