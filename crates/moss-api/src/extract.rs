//! Query-string and path extractors whose refusals are Matrix errors (`M_INVALID_PARAM`, JSON)
//! rather than axum's plain-text 400s. Use these instead of `axum::extract::{Query, Path}`.

use axum::extract::FromRequestParts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::extract::Query`, refusing with `M_INVALID_PARAM`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::invalid_param(format!("invalid query string: {}", e.body_text())))
    }
}

/// `axum::extract::Path`, refusing with `M_INVALID_PARAM`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::invalid_param(format!("invalid path: {}", e.body_text())))
    }
}
