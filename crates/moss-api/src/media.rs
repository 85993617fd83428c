//! Media endpoints: uploads (plain and asynchronous), authenticated and legacy downloads, config.
//! Bodies stream in and out; nothing here holds a whole file in memory.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::Response,
    routing::{get, post, put},
    Json, Router,
};
use futures_util::TryStreamExt;
use moss_core::{config::LegacyMedia, Moss};
use serde::Deserialize;
use serde_json::json;

use crate::{
    error::ApiError,
    extract::{Path, Query},
    ruma_wrapper::Authed,
};

/// Types a browser may render inline (the spec's list); everything else is an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Every client media endpoint: `/_matrix/client/v1/media/*` and the legacy `/_matrix/media/*`.
pub fn routes() -> Router<Arc<Moss>> {
    Router::new()
        .route("/_matrix/media/v3/upload", post(upload))
        .route("/_matrix/media/r0/upload", post(upload))
        .route("/_matrix/media/v1/create", post(create))
        .route("/_matrix/media/v3/upload/{server}/{media_id}", put(upload_to))
        .route("/_matrix/client/v1/media/config", get(config))
        .route("/_matrix/media/v3/config", get(config))
        .route("/_matrix/media/r0/config", get(config))
        .route("/_matrix/client/v1/media/download/{server}/{media_id}", get(download))
        .route("/_matrix/client/v1/media/download/{server}/{media_id}/{filename}", get(download_named))
        .route("/_matrix/media/v3/download/{server}/{media_id}", get(legacy_download))
        .route("/_matrix/media/v3/download/{server}/{media_id}/{filename}", get(legacy_download_named))
        .route("/_matrix/media/r0/download/{server}/{media_id}", get(legacy_download))
        .route("/_matrix/media/r0/download/{server}/{media_id}/{filename}", get(legacy_download_named))
        .route("/_matrix/client/v1/media/thumbnail/{server}/{media_id}", get(thumbnail))
        .route("/_matrix/media/v3/thumbnail/{server}/{media_id}", get(legacy_thumbnail))
        .route("/_matrix/media/r0/thumbnail/{server}/{media_id}", get(legacy_thumbnail))
        .route("/_matrix/client/v1/media/preview_url", get(preview_url))
        .route("/_matrix/media/v3/preview_url", get(preview_url))
        .route("/_matrix/media/r0/preview_url", get(preview_url))
}

#[derive(Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// What the request says about an upload: its type, name and (hyper holds the body to it) length.
fn upload_info(headers: &HeaderMap, filename: Option<String>) -> moss_core::media::UploadInfo {
    let declared_len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    moss_core::media::UploadInfo { content_type: content_type(headers), filename, declared_len }
}

fn body_stream(body: Body) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin {
    body.into_data_stream().map_err(std::io::Error::other)
}

pub async fn upload(
    State(moss): State<Arc<Moss>>,
    Authed(session): Authed,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::rate_limit::check_session(&moss, crate::rate_limit::Class::MediaUpload, &session)?;
    let id = moss.upload_media(&session.user_id, None, upload_info(&headers, q.filename), body_stream(body)).await?;
    Ok(Json(json!({"content_uri": format!("mxc://{}/{id}", moss.server_name)})))
}

pub async fn create(
    State(moss): State<Arc<Moss>>,
    Authed(session): Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, expires) = moss.create_media_id(&session.user_id).await?;
    Ok(Json(json!({"content_uri": format!("mxc://{}/{id}", moss.server_name), "unused_expires_at": expires})))
}

pub async fn upload_to(
    State(moss): State<Arc<Moss>>,
    Authed(session): Authed,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    if server != moss.server_name.as_str() {
        return Err(ApiError::forbidden("media ids of other servers cannot be uploaded to here"));
    }
    crate::rate_limit::check_session(&moss, crate::rate_limit::Class::MediaUpload, &session)?;
    moss.upload_media(&session.user_id, Some(&media_id), upload_info(&headers, q.filename), body_stream(body)).await?;
    Ok(Json(json!({})))
}

pub async fn config(State(moss): State<Arc<Moss>>, Authed(_): Authed) -> Json<serde_json::Value> {
    Json(json!({"m.upload.size": moss.config.media.max_upload_size}))
}

#[derive(Deserialize)]
pub struct DownloadQuery {
    timeout_ms: Option<u64>,
}

/// `/_matrix/client/v1/media/download/{server}/{id}`
pub async fn download(
    State(moss): State<Arc<Moss>>,
    Authed(_): Authed,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&moss, &server, &media_id, None, q.timeout_ms, &headers, false).await
}

pub async fn download_named(
    State(moss): State<Arc<Moss>>,
    Authed(_): Authed,
    Path((server, media_id, filename)): Path<(String, String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&moss, &server, &media_id, Some(filename), q.timeout_ms, &headers, false).await
}

/// `/_matrix/media/v3/download/{server}/{id}`: unauthenticated, served per `legacy_media`.
pub async fn legacy_download(
    State(moss): State<Arc<Moss>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&moss, &server, &media_id, None, q.timeout_ms, &headers, true).await
}

pub async fn legacy_download_named(
    State(moss): State<Arc<Moss>>,
    Path((server, media_id, filename)): Path<(String, String, String)>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&moss, &server, &media_id, Some(filename), q.timeout_ms, &headers, true).await
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n`; anything else (several ranges included) is ignored.
fn parse_range(headers: &HeaderMap, size: u64) -> Option<(u64, Option<u64>)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if v.contains(',') {
        return None;
    }
    let (a, b) = v.split_once('-')?;
    match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            Some((size.saturating_sub(n), None))
        }
        (a, "") => Some((a.parse().ok()?, None)),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, Some(b)))
        }
    }
}

/// RFC 6266: a plain ASCII `filename` where possible, always an RFC 8187 `filename*`.
pub(crate) fn disposition(kind: &str, filename: Option<&str>) -> String {
    let Some(name) = filename.filter(|n| !n.is_empty()) else {
        return kind.to_owned();
    };
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=utf-8''{encoded}")
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    moss: &Moss,
    server: &str,
    media_id: &str,
    filename: Option<String>,
    timeout_ms: Option<u64>,
    headers: &HeaderMap,
    legacy: bool,
) -> Result<Response, ApiError> {
    let wait = Duration::from_millis(timeout_ms.unwrap_or(20_000).min(120_000));
    let row = moss.media_row_of(server, media_id, wait, !legacy).await?;
    if legacy && !legacy_allowed(moss, &row) {
        return Err(moss_core::Error::not_found(
            "media not found: use the authenticated /_matrix/client/v1/media endpoints",
        )
        .into());
    }
    // Downloads redirected to the store: the same type, disposition and caching, set by the
    // store through S3's response overrides.
    if moss.download_redirect_expiry().is_some() {
        let name = filename.clone().or(row.filename.clone());
        let (ctype, disposition) = presentation(row.content_type.as_deref(), name.as_deref());
        let overrides = [
            ("response-content-type", ctype),
            ("response-content-disposition", disposition),
            ("response-cache-control", CACHE_FOREVER.to_owned()),
        ];
        if let Some(url) = moss.download_redirect(&row, &overrides).await? {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            if let Ok(v) = HeaderValue::from_str(&url) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            // The link expires: never kept by a cache.
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            return Ok(res);
        }
    }
    let size = row.size.unwrap_or(0) as u64;
    let range = parse_range(headers, size);
    let dl = moss.download_media(&row, range).await?;
    let name = filename.or(dl.filename.clone());
    Ok(respond(dl, name))
}

/// Media ids are never reused for other content, so clients may cache for long.
const CACHE_FOREVER: &str = "private, max-age=31536000, immutable";

/// The `Content-Type` and `Content-Disposition` media is served with: inline only for types
/// that cannot run script, as an attachment otherwise.
fn presentation(content_type: Option<&str>, name: Option<&str>) -> (String, String) {
    let ctype = content_type.unwrap_or("application/octet-stream").to_owned();
    let essence = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) { "inline" } else { "attachment" };
    (ctype, disposition(kind, name))
}

/// Streams a download with the headers that keep browsers from treating media as a page.
fn respond(dl: moss_core::media::Download, name: Option<String>) -> Response {
    let (ctype, content_disposition) = presentation(dl.content_type.as_deref(), name.as_deref());

    let mut res = Response::new(Body::from_stream(dl.body));
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, ctype);
    set(h, header::CONTENT_DISPOSITION, content_disposition);
    set(h, header::CONTENT_SECURITY_POLICY, CSP.to_owned());
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_FOREVER));
    match dl.range {
        Some(r) => {
            *res.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(res.headers_mut(), header::CONTENT_LENGTH, r.len().to_string());
            set(res.headers_mut(), header::CONTENT_RANGE, format!("bytes {}-{}/{}", r.start, r.end - 1, dl.size));
        }
        None => set(res.headers_mut(), header::CONTENT_LENGTH, dl.size.to_string()),
    }
    res
}

#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: Option<String>,
    height: Option<String>,
    method: Option<String>,
    animated: Option<bool>,
    timeout_ms: Option<u64>,
}

/// `/_matrix/client/v1/media/thumbnail/{server}/{id}`
pub async fn thumbnail(
    State(moss): State<Arc<Moss>>,
    Authed(_): Authed,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
) -> Result<Response, ApiError> {
    serve_thumbnail(&moss, &server, &media_id, q, false).await
}

/// `/_matrix/media/v3/thumbnail/{server}/{id}`: unauthenticated, served per `legacy_media`.
pub async fn legacy_thumbnail(
    State(moss): State<Arc<Moss>>,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
) -> Result<Response, ApiError> {
    serve_thumbnail(&moss, &server, &media_id, q, true).await
}

async fn serve_thumbnail(
    moss: &Moss,
    server: &str,
    media_id: &str,
    q: ThumbnailQuery,
    legacy: bool,
) -> Result<Response, ApiError> {
    let dim = |v: Option<String>, name: &str| -> Result<u32, ApiError> {
        let v = v.ok_or_else(|| ApiError::from(moss_core::Error::missing_param(format!("{name} is required"))))?;
        v.parse::<u32>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::invalid_param(format!("{name} must be a positive integer")))
    };
    let (width, height) = (dim(q.width, "width")?, dim(q.height, "height")?);
    let method = match q.method.as_deref() {
        None | Some("scale") => moss_core::media::thumbnail::Method::Scale,
        Some("crop") => moss_core::media::thumbnail::Method::Crop,
        Some(other) => return Err(ApiError::invalid_param(format!("unknown method {other:?}"))),
    };
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(20_000).min(120_000));
    let row = moss.media_row_of(server, media_id, wait, !legacy).await?;
    if legacy && !legacy_allowed(moss, &row) {
        return Err(moss_core::Error::not_found(
            "media not found: use the authenticated /_matrix/client/v1/media endpoints",
        )
        .into());
    }
    let dl = moss.thumbnail(&row, width, height, method, q.animated.unwrap_or(false)).await?;
    Ok(respond(dl, None))
}

fn legacy_allowed(moss: &Moss, row: &moss_core::MediaRow) -> bool {
    match moss.config.media.legacy_media {
        LegacyMedia::On => true,
        LegacyMedia::Off => false,
        LegacyMedia::Frozen => row.legacy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let mut h = HeaderMap::new();
        let mut with = |v: &str| {
            h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            parse_range(&h, 1000)
        };
        assert_eq!(with("bytes=0-99"), Some((0, Some(99))));
        assert_eq!(with("bytes=500-"), Some((500, None)));
        assert_eq!(with("bytes=-100"), Some((900, None)));
        assert_eq!(with("bytes=5-1"), None);
        assert_eq!(with("bytes=0-1,5-6"), None);
        assert_eq!(with("items=0-1"), None);
    }

    #[test]
    fn dispositions() {
        assert_eq!(disposition("inline", None), "inline");
        assert_eq!(
            disposition("attachment", Some("a b.txt")),
            "attachment; filename=\"a b.txt\"; filename*=utf-8''a%20b.txt"
        );
        assert_eq!(
            disposition("inline", Some("ü\".png")),
            "inline; filename=\"__.png\"; filename*=utf-8''%C3%BC%22.png"
        );
    }
}

#[derive(Deserialize)]
pub struct PreviewQuery {
    url: Option<String>,
}

/// `/_matrix/client/v1/media/preview_url`
pub async fn preview_url(
    State(moss): State<Arc<Moss>>,
    Authed(session): Authed,
    Query(q): Query<PreviewQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let url = q.url.ok_or_else(|| ApiError::from(moss_core::Error::missing_param("url is required")))?;
    crate::rate_limit::check_session(&moss, crate::rate_limit::Class::MediaUpload, &session)?;
    Ok(Json(moss.preview_url(&url).await?))
}
