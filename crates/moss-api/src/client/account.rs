//! Registration, login, logout, refresh, whoami, password change and deactivation.

use std::{sync::Arc, time::Duration};

use moss_core::{
    config::RegistrationMode,
    uiaa::{password_flow, UiaaRequest},
    Moss,
};
use ruma::api::client::{
    account::{
        change_password, deactivate, get_username_availability, register, request_openid_token, whoami,
        ThirdPartyIdRemovalStatus,
    },
    appservice::request_ping,
    session::{get_login_token, get_login_types, login, logout, logout_all, refresh_token},
    uiaa::{AuthType, UserIdentifier},
};

use crate::{
    error::ApiError,
    rate_limit::Class,
    ruma_wrapper::{HandlerResult, Ruma, RumaResponse},
};

pub async fn register(moss: Arc<Moss>, req: Ruma<register::v3::Request>) -> HandlerResult<register::v3::Request> {
    if req.body.login_type == Some(register::LoginType::ApplicationService) {
        return register_appservice_user(&moss, req).await;
    }
    crate::rate_limit::check(&moss, Class::Register, &req.ip.map(|i| i.to_string()).unwrap_or_default())?;
    let body = req.body;
    if body.kind == register::RegistrationKind::Guest {
        return Err(ApiError::forbidden("guest access is not enabled"));
    }
    let flows = match moss.config.registration {
        RegistrationMode::Disabled => return Err(ApiError::forbidden("registration is disabled on this server")),
        RegistrationMode::Open => vec![vec![AuthType::Dummy]],
        RegistrationMode::Token => vec![vec![AuthType::RegistrationToken]],
    };
    // Validate what we can before asking for auth, so clients learn about a taken name early.
    let localpart = match &body.username {
        Some(u) => u.clone(),
        None => moss_core::accounts::random_string(12).to_lowercase(),
    };
    let user_id = moss.new_user_id(&localpart)?;
    if !moss.username_available(&localpart).await? {
        return Err(moss_core::Error::new(ruma::api::error::ErrorKind::UserInUse, 400, "user id already taken").into());
    }
    reserved_for_appservice(&moss, user_id.as_str())?;
    let password = body.password.clone().ok_or_else(|| ApiError::bad_json("password is required"))?;
    moss.validate_password(&password)?;
    let outcome =
        moss.uiaa(UiaaRequest { flows, purpose: format!("register:{user_id}"), user: None }, body.auth.clone()).await?;
    moss.create_user(&user_id, Some(&password), false, outcome.registration_token).await?;
    tracing::info!(%user_id, "registered");

    registered(&moss, user_id, body, req.ip.map(|i| i.to_string())).await
}

/// The answer to a registration: with a new device and its tokens unless `inhibit_login`.
async fn registered(
    moss: &Moss,
    user_id: ruma::OwnedUserId,
    body: register::v3::Request,
    ip: Option<String>,
) -> HandlerResult<register::v3::Request> {
    let mut res = register::v3::Response::new(user_id.clone());
    if !body.inhibit_login {
        let s = moss
            .create_session(&user_id, body.device_id, body.initial_device_display_name, body.refresh_token, ip)
            .await?;
        res.access_token = Some(s.access_token);
        res.device_id = Some(s.device_id);
        res.refresh_token = s.refresh_token;
        res.expires_in = s.expires_in_ms.map(Duration::from_millis);
    }
    Ok(RumaResponse(res))
}

/// A user id in an application service's exclusive namespace is the service's to register.
fn reserved_for_appservice(moss: &Moss, user_id: &str) -> Result<(), ApiError> {
    match moss.appservices.exclusive_user_owner(user_id) {
        Some(_) => Err(moss_core::Error::new(
            ruma::api::error::ErrorKind::Exclusive,
            400,
            "this user id is reserved by an application service",
        )
        .into()),
        None => Ok(()),
    }
}

/// `POST /register` with `type: m.login.application_service`: an application service creates
/// one of its users (no password, no rate limit); `inhibit_login` leaves it without a device.
async fn register_appservice_user(
    moss: &Arc<Moss>,
    req: Ruma<register::v3::Request>,
) -> HandlerResult<register::v3::Request> {
    let service = req
        .session
        .as_ref()
        .and_then(|s| s.appservice.clone())
        .ok_or_else(|| ApiError::forbidden("m.login.application_service needs an application service's token"))?;
    let body = req.body;
    if let Some(e) = service.login_unsupported().filter(|_| !body.inhibit_login) {
        return Err(e.into());
    }
    let localpart = body.username.clone().ok_or_else(|| ApiError::bad_json("username is required"))?;
    let user_id = moss.new_user_id(&localpart)?;
    let exclusive = |msg: &str| moss_core::Error::new(ruma::api::error::ErrorKind::Exclusive, 400, msg.to_owned());
    if !service.owns_user(user_id.as_str()) {
        return Err(exclusive("this user id is not in the application service's namespaces").into());
    }
    if moss.appservices.exclusive_user_owner(user_id.as_str()).is_some_and(|o| o.id() != service.id()) {
        return Err(exclusive("this user id is reserved by another application service").into());
    }
    moss.create_user(&user_id, None, false, None).await?;
    tracing::info!(%user_id, appservice = service.id(), "registered by an application service");
    registered(moss, user_id, body, None).await
}

pub async fn available(
    moss: Arc<Moss>,
    req: Ruma<get_username_availability::v3::Request>,
) -> HandlerResult<get_username_availability::v3::Request> {
    if !moss.registration_enabled() {
        return Err(ApiError::forbidden("registration is disabled on this server"));
    }
    if let Ok(user_id) = moss.new_user_id(&req.body.username) {
        reserved_for_appservice(&moss, user_id.as_str())?;
    }
    if moss.username_available(&req.body.username).await? {
        Ok(RumaResponse(get_username_availability::v3::Response::new(true)))
    } else {
        Err(moss_core::Error::new(ruma::api::error::ErrorKind::UserInUse, 400, "user id already taken").into())
    }
}

pub async fn login_types(
    moss: Arc<Moss>,
    _req: Ruma<get_login_types::v3::Request>,
) -> HandlerResult<get_login_types::v3::Request> {
    use get_login_types::v3::{LoginType, PasswordLoginType, TokenLoginType};
    let mut types = vec![LoginType::Password(PasswordLoginType::new())];
    if !moss.appservices.is_empty() {
        types.push(LoginType::ApplicationService(get_login_types::v3::ApplicationServiceLoginType::new()));
    }
    if moss.config.auth.login_token_enabled {
        let mut token = TokenLoginType::new();
        token.get_login_token = true;
        types.push(LoginType::Token(token));
    }
    Ok(RumaResponse(get_login_types::v3::Response::new(types)))
}

pub async fn get_login_token(
    moss: Arc<Moss>,
    req: Ruma<get_login_token::v1::Request>,
) -> HandlerResult<get_login_token::v1::Request> {
    let user = req.session()?.user_id.clone();
    if !moss.config.auth.login_token_enabled {
        return Err(ApiError::unrecognized());
    }
    moss.uiaa(password_flow("get_login_token", &user), req.body.auth.clone()).await?;
    let (token, ms) = moss.create_login_token(&user).await?;
    Ok(RumaResponse(get_login_token::v1::Response::new(Duration::from_millis(ms), token)))
}

pub async fn login(moss: Arc<Moss>, req: Ruma<login::v3::Request>) -> HandlerResult<login::v3::Request> {
    let service = req.session.as_ref().and_then(|s| s.appservice.clone());
    if service.as_ref().is_none_or(|s| s.rate_limited()) {
        crate::rate_limit::check(&moss, Class::Login, &req.ip.map(|i| i.to_string()).unwrap_or_default())?;
    }
    let body = req.body;
    let user_id = match &body.login_info {
        login::v3::LoginInfo::ApplicationService(a) => {
            let service = service.ok_or_else(|| {
                ApiError::forbidden("m.login.application_service needs an application service's token")
            })?;
            if let Some(e) = service.login_unsupported() {
                return Err(e.into());
            }
            #[allow(deprecated)] // the old `user` field, still sent by some bridges
            let input = match (&a.identifier, &a.user) {
                (Some(UserIdentifier::Matrix(m)), _) => m.user.clone(),
                (None, Some(u)) => u.clone(),
                _ => return Err(ApiError::invalid_param("a user identifier is required")),
            };
            let user_id = moss.resolve_login_user(&input)?;
            if !service.owns_user(user_id.as_str()) {
                return Err(moss_core::Error::new(
                    ruma::api::error::ErrorKind::Exclusive,
                    403,
                    "this user is not in the application service's namespaces",
                )
                .into());
            }
            if !moss.is_local_user_active(&user_id).await? {
                return Err(ApiError::forbidden("no such user"));
            }
            user_id
        }
        login::v3::LoginInfo::Password(p) => {
            let input = match &p.identifier {
                Some(UserIdentifier::Matrix(m)) => m.user.clone(),
                _ => return Err(ApiError::forbidden("only user identifiers are supported")),
            };
            moss.login_password(&input, &p.password).await?
        }
        login::v3::LoginInfo::Token(t) if moss.config.auth.login_token_enabled => {
            moss.login_with_token(&t.token).await?
        }
        _ => {
            return Err(
                moss_core::Error::new(ruma::api::error::ErrorKind::Unknown, 400, "unsupported login type").into()
            )
        }
    };
    let s = moss
        .create_session(
            &user_id,
            body.device_id,
            body.initial_device_display_name,
            body.refresh_token,
            req.ip.map(|i| i.to_string()),
        )
        .await?;
    let mut res = login::v3::Response::new(s.user_id, s.access_token, s.device_id);
    // Deprecated in the spec, but synapse-admin builds user ids and media paths from it.
    #[allow(deprecated)]
    {
        res.home_server = Some(moss.server_name.clone());
    }
    res.refresh_token = s.refresh_token;
    res.expires_in = s.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(res))
}

pub async fn refresh(
    moss: Arc<Moss>,
    req: Ruma<refresh_token::v3::Request>,
) -> HandlerResult<refresh_token::v3::Request> {
    let s = moss.refresh(&req.body.refresh_token).await?;
    let mut res = refresh_token::v3::Response::new(s.access_token);
    res.refresh_token = s.refresh_token;
    res.expires_in_ms = s.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(res))
}

pub async fn logout(moss: Arc<Moss>, req: Ruma<logout::v3::Request>) -> HandlerResult<logout::v3::Request> {
    moss.logout(req.session()?).await?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

pub async fn logout_all(moss: Arc<Moss>, req: Ruma<logout_all::v3::Request>) -> HandlerResult<logout_all::v3::Request> {
    moss.logout_all(&req.session()?.user_id).await?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}

/// `POST /user/{userId}/openid/request_token`: a token another service can check with this
/// server's `/_matrix/federation/v1/openid/userinfo`, for the caller's own id only.
pub async fn request_openid_token(
    moss: Arc<Moss>,
    req: Ruma<request_openid_token::v3::Request>,
) -> HandlerResult<request_openid_token::v3::Request> {
    let s = req.session()?;
    if req.body.user_id != s.user_id {
        return Err(moss_core::Error::forbidden("you may only request a token for yourself").into());
    }
    let (token, lifetime) = moss.create_openid_token(&s.user_id).await?;
    Ok(RumaResponse(request_openid_token::v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        moss.server_name.clone(),
        lifetime,
    )))
}

pub async fn whoami(_moss: Arc<Moss>, req: Ruma<whoami::v3::Request>) -> HandlerResult<whoami::v3::Request> {
    let s = req.session()?;
    let mut res = whoami::v3::Response::new(s.user_id.clone(), false);
    res.device_id = Some(s.device_id.clone());
    Ok(RumaResponse(res))
}

/// The session of an endpoint whose token the spec makes optional (password change and
/// deactivation, for flows like e-mail that prove who the user is without one). moss has no
/// such flow: without a token it answers user-interactive auth with no flows to follow.
fn session_or_no_flows<R>(req: &Ruma<R>) -> Result<moss_core::accounts::Session, ApiError> {
    match &req.session {
        Some(s) => Ok(s.clone()),
        None => {
            let mut info = ruma::api::client::uiaa::UiaaInfo::new(Vec::new());
            info.params = serde_json::value::to_raw_value(&serde_json::json!({})).ok();
            info.auth_error = Some(Box::new(ruma::api::error::StandardErrorBody::new(
                ruma::api::error::ErrorKind::MissingToken,
                "an access token is required: this server has no other way to prove who you are".into(),
            )));
            Err(moss_core::Error::Uiaa(Box::new(info)).into())
        }
    }
}

pub async fn change_password(
    moss: Arc<Moss>,
    req: Ruma<change_password::v3::Request>,
) -> HandlerResult<change_password::v3::Request> {
    let s = session_or_no_flows(&req)?;
    moss.validate_password(&req.body.new_password)?;
    moss.uiaa(password_flow("password", &s.user_id), req.body.auth.clone()).await?;
    moss.set_password(&s.user_id, &req.body.new_password, req.body.logout_devices.then_some(&s)).await?;
    Ok(RumaResponse(change_password::v3::Response::new()))
}

pub async fn deactivate(moss: Arc<Moss>, req: Ruma<deactivate::v3::Request>) -> HandlerResult<deactivate::v3::Request> {
    let s = session_or_no_flows(&req)?;
    moss.uiaa(password_flow("deactivate", &s.user_id), req.body.auth.clone()).await?;
    moss.deactivate(&s.user_id).await?;
    Ok(RumaResponse(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::Success)))
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`.
pub async fn appservice_ping(
    moss: Arc<Moss>,
    req: Ruma<request_ping::v1::Request>,
) -> HandlerResult<request_ping::v1::Request> {
    let session = req.session()?;
    let duration = moss.ping_appservice(session, &req.body.appservice_id, req.body.transaction_id.clone()).await?;
    Ok(RumaResponse(request_ping::v1::Response::new(duration)))
}
