//! The HTTP layer's error: every failure becomes a Matrix error body with the right status.
//! Internal errors are logged with an id and reach the client only as that id.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use moss_core::Error;
use rand::Rng;
use ruma::api::{
    error::{ErrorKind, LimitExceededErrorData, RetryAfter},
    OutgoingResponseExt,
};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    fn matrix(kind: ErrorKind, status: u16, message: impl Into<String>) -> Self {
        ApiError(Error::new(kind, status, message))
    }
    pub fn not_json(m: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::NotJson, 400, m)
    }
    pub fn bad_json(m: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::BadJson, 400, m)
    }
    pub fn invalid_param(m: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::InvalidParam, 400, m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::TooLarge, 413, m)
    }
    pub fn missing_token() -> Self {
        Self::matrix(ErrorKind::MissingToken, 401, "missing access token")
    }
    pub fn unrecognized() -> Self {
        Self::matrix(ErrorKind::Unrecognized, 404, "unrecognized request")
    }
    pub fn unrecognized_method() -> Self {
        Self::matrix(ErrorKind::Unrecognized, 405, "method not allowed on this endpoint")
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Forbidden, 403, m)
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(std::time::Duration::from_millis(retry_after_ms)));
        Self::matrix(ErrorKind::LimitExceeded(data), 429, "too many requests")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.0 {
            Error::Hidden { kind, status, message, detail } => {
                let id: u32 = rand::thread_rng().gen();
                tracing::warn!(request_error_id = format!("{id:08x}"), status, "{message}: {detail}");
                ApiError(Error::Matrix { kind, status, message: format!("{message} (id {id:08x})") }).into_response()
            }
            Error::Matrix { kind, status, message } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                let retry_ms = match &kind {
                    ErrorKind::LimitExceeded(d) => match d.retry_after {
                        Some(RetryAfter::Delay(d)) => Some(d.as_millis() as u64),
                        _ => None,
                    },
                    _ => None,
                };
                let err = ruma::api::error::Error::new(
                    status,
                    ruma::api::error::ErrorBody::Standard(ruma::api::error::StandardErrorBody::new(kind, message)),
                );
                match err.try_into_http_response::<Vec<u8>>() {
                    Ok(res) => {
                        let (mut parts, body) = res.into_parts();
                        // Clients written before v1.10 read retry_after_ms from the body.
                        let body = match (retry_ms, serde_json::from_slice::<serde_json::Value>(&body)) {
                            (Some(ms), Ok(mut v)) => {
                                v["retry_after_ms"] = json!(ms);
                                serde_json::to_vec(&v).unwrap_or(body)
                            }
                            _ => body,
                        };
                        parts.headers.remove(http::header::CONTENT_LENGTH);
                        // A body refused for its size may not have been read to its end: the
                        // connection cannot carry another request, and the client must know.
                        if status == StatusCode::PAYLOAD_TOO_LARGE {
                            parts.headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                        }
                        Response::from_parts(parts, axum::body::Body::from(body))
                    }
                    Err(_) => (status, Json(json!({"errcode": "M_UNKNOWN", "error": "error"}))).into_response(),
                }
            }
            Error::Uiaa(info) => {
                (StatusCode::UNAUTHORIZED, Json(serde_json::to_value(&*info).unwrap_or_default())).into_response()
            }
            Error::Storage(e) => internal(&e.to_string()),
            Error::Internal(e) => internal(&e),
        }
    }
}

fn internal(detail: &str) -> Response {
    let id: u32 = rand::thread_rng().gen();
    tracing::error!(request_error_id = format!("{id:08x}"), "internal error: {detail}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"errcode": "M_UNKNOWN", "error": format!("internal server error (id {id:08x})")})),
    )
        .into_response()
}
