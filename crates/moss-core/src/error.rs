//! The service layer's one error type. Each variant maps onto a Matrix `errcode` and HTTP status
//! in the HTTP layer; internal failures carry detail for the log, never for the client.

use moss_storage::StorageError;
use ruma::api::{client::uiaa::UiaaInfo, error::ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure the client should see: errcode plus a human-readable message.
    #[error("{kind:?}: {message}")]
    Matrix { kind: ErrorKind, status: u16, message: String },
    /// A failure the client sees only in outline: `message` reaches the client, `detail`
    /// (addresses, URLs, object names, another server's words) only the log, joined by an id.
    #[error("{kind:?}: {message}: {detail}")]
    Hidden { kind: ErrorKind, status: u16, message: String, detail: String },
    /// User-interactive auth must continue (HTTP 401 with the flows).
    #[error("user-interactive authentication required")]
    Uiaa(Box<UiaaInfo>),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, status: u16, message: impl Into<String>) -> Self {
        Error::Matrix { kind, status, message: message.into() }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, 403, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, 404, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadJson, 400, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParam, 400, message)
    }
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::MissingParam, 400, message)
    }
    pub fn unknown_token(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UnknownToken(Default::default()), 401, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, 413, message)
    }
    /// An error whose errcode ruma has no variant for (e.g. `M_INVALID_SIGNATURE`).
    pub fn custom(errcode: &str, status: u16, message: impl Into<String>) -> Self {
        let kind = serde_json::from_value(serde_json::json!({ "errcode": errcode })).unwrap_or(ErrorKind::Unknown);
        Self::new(kind, status, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }
    /// See [`Error::Hidden`].
    pub fn hidden(kind: ErrorKind, status: u16, message: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Hidden { kind, status, message: message.into(), detail: detail.to_string() }
    }
    /// Another service (a server, a store) failed us: 502, details for the log only.
    pub fn upstream(message: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::hidden(ErrorKind::Unknown, 502, message, detail)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("JSON: {e}"))
    }
}
