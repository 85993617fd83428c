//! moss's HTTP surface: the axum router and thin handlers that parse with ruma, call the service
//! layer and answer with ruma's types.

pub mod admin;
pub mod client;
pub mod error;
pub mod extract;
pub mod federation;
pub mod media;
pub mod metrics;
pub mod rate_limit;
pub mod ruma_wrapper;

use std::sync::Arc;

use axum::{
    http::{header, Method},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use moss_core::Moss;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
};

use crate::{
    client::{account, keys, presence, relations, reporting, rooms, server, thirdparty, user},
    error::ApiError,
    ruma_wrapper::RouterExt,
};

/// The whole HTTP application.
pub fn router(moss: Arc<Moss>) -> Router {
    let r: Router<Arc<Moss>> = Router::new()
        .route("/_matrix/client/versions", get(server::versions))
        .route("/.well-known/matrix/client", get(server::well_known_client))
        .route("/.well-known/matrix/server", get(server::well_known_server))
        .route("/_matrix/client/v3/capabilities", get(server::capabilities))
        .route("/_matrix/client/r0/capabilities", get(server::capabilities))
        .route("/_synapse/admin/v1/register", get(server::shared_secret_nonce).post(server::shared_secret_register))
        .merge(admin::routes())
        .route("/_matrix/client/v3/sync", get(server::sync))
        .route("/_matrix/client/v3/search", post(relations::search))
        .route("/_matrix/client/r0/search", post(relations::search))
        .route("/_matrix/client/r0/sync", get(server::sync))
        .ruma(server::sliding_sync)
        .route("/_matrix/client/v3/profile/{user_id}", get(user::get_profile))
        .route("/_matrix/client/r0/profile/{user_id}", get(user::get_profile))
        .route(
            "/_matrix/client/v3/profile/{user_id}/{field}",
            get(user::get_profile_field).put(user::set_profile_field),
        )
        .route(
            "/_matrix/client/r0/profile/{user_id}/{field}",
            get(user::get_profile_field).put(user::set_profile_field),
        )
        .merge(media::routes())
        // accounts and sessions
        .ruma(account::register)
        .ruma(account::available)
        .ruma(account::login_types)
        .ruma(account::login)
        .ruma(account::get_login_token)
        .ruma(account::refresh)
        .ruma(account::logout)
        .ruma(account::logout_all)
        .ruma(account::whoami)
        .ruma(account::request_openid_token)
        .ruma(account::appservice_ping)
        .ruma(account::change_password)
        .ruma(account::deactivate)
        // devices
        .ruma(user::devices)
        .ruma(user::get_device)
        .ruma(user::update_device)
        .ruma(user::delete_device)
        .ruma(user::delete_devices)
        // user data
        .ruma(user::create_filter)
        .ruma(user::get_filter)
        .ruma(user::get_global_data)
        .ruma(user::set_global_data)
        .ruma(user::get_room_data)
        .ruma(user::set_room_data)
        .ruma(user::get_tags)
        .ruma(user::put_tag)
        .ruma(user::delete_tag)
        .ruma(user::push_rules)
        .ruma(user::push_rule)
        .ruma(user::set_push_rule)
        .ruma(user::delete_push_rule)
        .ruma(user::push_rule_enabled)
        .ruma(user::set_push_rule_enabled)
        .ruma(user::push_rule_actions)
        .ruma(user::set_push_rule_actions)
        .ruma(user::pushers)
        .ruma(user::notifications)
        .ruma(user::set_pusher)
        .ruma(user::typing)
        .ruma(user::receipt)
        .ruma(user::read_markers)
        .ruma(user::search_users)
        // end-to-end encryption
        .ruma(keys::upload_keys)
        .ruma(keys::query_keys)
        .ruma(keys::claim_keys)
        .ruma(keys::key_changes)
        .ruma(keys::upload_signing_keys)
        .ruma(keys::upload_signatures)
        .ruma(keys::send_to_device)
        .ruma(keys::put_dehydrated_device)
        .ruma(keys::get_dehydrated_device)
        .ruma(keys::delete_dehydrated_device)
        .ruma(keys::dehydrated_device_events)
        .ruma(keys::create_backup)
        .ruma(keys::latest_backup)
        .ruma(keys::backup)
        .ruma(keys::update_backup)
        .ruma(keys::delete_backup)
        .ruma(keys::put_backup_keys)
        .ruma(keys::put_backup_room_keys)
        .ruma(keys::put_backup_session_key)
        .ruma(keys::get_backup_keys)
        .ruma(keys::get_backup_room_keys)
        .ruma(keys::get_backup_session_key)
        .ruma(keys::delete_backup_keys)
        .ruma(keys::delete_backup_room_keys)
        .ruma(keys::delete_backup_session_key)
        // rooms
        .ruma(rooms::create)
        .ruma(rooms::send_message)
        .ruma(rooms::send_state)
        .ruma(rooms::redact)
        .ruma(rooms::get_event)
        .ruma(rooms::state)
        .ruma(rooms::state_event)
        .ruma(rooms::messages)
        .ruma(rooms::context)
        .ruma(rooms::timestamp_to_event)
        .ruma(rooms::join_by_id)
        .ruma(rooms::join)
        .ruma(rooms::invite)
        .ruma(rooms::knock)
        .ruma(rooms::leave)
        .ruma(rooms::forget)
        .ruma(rooms::kick)
        .ruma(rooms::ban)
        .ruma(rooms::unban)
        .ruma(rooms::joined_rooms)
        .ruma(rooms::members)
        .ruma(rooms::joined_members)
        .ruma(rooms::upgrade)
        .ruma(relations::relating_events)
        .ruma(relations::relating_events_of_type)
        .ruma(relations::relating_events_of_type_and_event_type)
        .ruma(relations::threads)
        .ruma(relations::hierarchy)
        .ruma(reporting::report_event)
        .ruma(reporting::report_room)
        .ruma(presence::get)
        .ruma(presence::set)
        .ruma(server::turn_server)
        .ruma(thirdparty::protocols)
        .ruma(thirdparty::protocol)
        .ruma(thirdparty::location_for_protocol)
        .ruma(thirdparty::location_for_alias)
        .ruma(thirdparty::user_for_protocol)
        .ruma(thirdparty::user_for_id)
        .ruma(thirdparty::set_network_visibility)
        // directory
        .ruma(server::put_alias)
        .ruma(server::get_alias)
        .ruma(server::delete_alias)
        .ruma(server::room_aliases)
        .ruma(server::get_visibility)
        .ruma(server::set_visibility)
        .ruma(server::public_rooms)
        .ruma(server::public_rooms_filtered);
    // Request metrics only when something will read them (`metrics.bind`).
    let r = if moss.config.metrics.bind.is_some() {
        r.route_layer(axum::middleware::from_fn_with_state(moss.clone(), metrics::record))
    } else {
        r
    };
    finish(r, moss)
}

/// `moss media-repo`: the media endpoints alone, client and federation ones on one listener
/// (the reverse proxy in front of Synapse routes those paths here; docs/media-repo.md).
pub fn media_repo_router(moss: Arc<Moss>) -> Router {
    let r: Router<Arc<Moss>> = Router::new().merge(media::routes()).merge(federation::media_routes());
    let r = if moss.config.metrics.bind.is_some() {
        r.route_layer(axum::middleware::from_fn_with_state(moss.clone(), metrics::record))
    } else {
        r
    };
    finish(r, moss)
}

/// `/health`, the error answers for unknown paths and methods, panics answered as errors, CORS.
fn finish(r: Router<Arc<Moss>>, moss: Arc<Moss>) -> Router {
    let r = r
        .route("/health", get(server::health))
        .fallback(|| async { ApiError::unrecognized() })
        .method_not_allowed_fallback(|| async { ApiError::unrecognized_method() });

    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            "x-requested-with".parse().expect("valid header"),
        ]);

    r.with_state(moss).layer(CatchPanicLayer::custom(panic_response)).layer(cors)
}

pub(crate) fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    ApiError(moss_core::Error::internal(format!("handler panicked: {detail}"))).into_response()
}
