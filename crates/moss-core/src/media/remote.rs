//! Other servers' media: fetched over federation the first time a local user asks for it
//! (`/_matrix/federation/v1/media/download`, multipart/mixed, X-Matrix signed; the legacy
//! unauthenticated path for servers that predate it), then kept in our store like local media
//! (content-addressed, deduplicated, encrypted if configured) and served from there.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use moss_storage::MediaRow;
use ruma::ServerName;

use crate::{
    error::{Error, Result},
    Moss,
};

/// `origin` failed us; why (which can name addresses and URLs) goes to the log only.
fn bad_gateway(origin: &ServerName, why: impl std::fmt::Display) -> Error {
    Error::upstream(format!("could not fetch media from {origin}"), why)
}

/// The headers of one multipart part, lower-cased names.
fn parse_headers(block: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(block)
        .split("\r\n")
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `filename` from a Content-Disposition value (RFC 6266 `filename*` preferred).
pub(crate) fn disposition_filename(v: &str) -> Option<String> {
    let mut plain = None;
    for param in v.split(';').map(str::trim) {
        if let Some(ext) = param.strip_prefix("filename*=") {
            let enc = ext.split_once("''").map(|(_, e)| e).unwrap_or(ext);
            let mut out = Vec::new();
            let b = enc.as_bytes();
            let mut i = 0;
            while let Some(&byte) = b.get(i) {
                // Hex digits are ASCII: anything else after '%' (even a multi-byte character,
                // which must not be sliced) is kept as it is.
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                if byte == b'%' {
                    if let Some(x) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                }
                out.push(byte);
                i += 1;
            }
            return String::from_utf8(out).ok();
        }
        if let Some(p) = param.strip_prefix("filename=") {
            plain = Some(p.trim_matches('"').to_owned());
        }
    }
    plain
}

type Upstream = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads a multipart/mixed body up to the start of the second part's content; returns that
/// part's headers and a stream of its content (the closing boundary stripped), never holding
/// more than a chunk in memory.
async fn second_part(
    mut up: Upstream,
    boundary: &str,
) -> std::result::Result<(Vec<(String, String)>, impl Stream<Item = std::io::Result<Bytes>>), String> {
    let delim = format!("--{boundary}").into_bytes();
    let mut buf = BytesMut::new();
    // Skip the preamble and the first part (the JSON metadata), then read the second part's headers.
    let mut seen_delims = 0;
    let headers = loop {
        if seen_delims < 2 {
            if let Some(i) = find(&buf, &delim) {
                let _ = buf.split_to(i + delim.len());
                seen_delims += 1;
                continue;
            }
        } else if let Some(i) = find(&buf, b"\r\n\r\n") {
            let block = buf.split_to(i + 4);
            break parse_headers(&block);
        }
        if buf.len() > 64 * 1024 {
            return Err("malformed multipart response".into());
        }
        match up.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the multipart response ended early".into()),
        }
    };
    let close = [b"\r\n".as_slice(), &delim].concat();
    let keep = close.len();
    let stream = futures_util::stream::unfold((up, buf, false), move |(mut up, mut buf, done)| {
        let close = close.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if let Some(i) = find(&buf, &close) {
                    let out = buf.split_to(i).freeze();
                    return Some((Ok(out), (up, BytesMut::new(), true)));
                }
                if buf.len() > keep + 64 * 1024 {
                    let out = buf.split_to(buf.len() - keep).freeze();
                    return Some((Ok(out), (up, buf, false)));
                }
                match up.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(std::io::Error::other(e)), (up, buf, true))),
                    None => {
                        return Some((
                            Err(std::io::Error::other("the multipart response has no closing boundary")),
                            (up, buf, true),
                        ))
                    }
                }
            }
        }
    });
    Ok((headers, stream))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl Moss {
    /// Fetches `mxc://origin/media_id` and keeps it. Concurrent requests for the same media wait
    /// for one fetch.
    pub(crate) async fn fetch_remote_media(&self, origin: &ServerName, media_id: &str) -> Result<MediaRow> {
        let key = format!("{origin}/{media_id}");
        let lock = {
            let mut f = self.media.fetching.lock().unwrap_or_else(|p| p.into_inner());
            f.entry(key.clone()).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(()))).clone()
        };
        let result = async {
            let _guard = lock.lock().await;
            let (o, id) = (origin.to_string(), media_id.to_owned());
            if let Some(row) = self.db.read(move |r| Ok::<_, Error>(r.remote_media(&o, &id)?)).await? {
                return Ok(row); // another request fetched it while we waited
            }
            self.fetch_and_store(origin, media_id).await?;
            let (o, id) = (origin.to_string(), media_id.to_owned());
            self.db
                .read(move |r| Ok::<_, Error>(r.remote_media(&o, &id)?))
                .await?
                .ok_or_else(|| Error::internal("fetched media vanished"))
        }
        .await;
        self.media.fetching.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        result
    }

    async fn fetch_and_store(&self, origin: &ServerName, media_id: &str) -> Result<()> {
        let fed = self.federation()?;
        let path = format!("/_matrix/federation/v1/media/download/{media_id}");
        let res = self.federation_get_raw(origin, &path).await?;
        let max = self.config.media.max_upload_size;
        let too_big = |len: Option<u64>| len.is_some_and(|l| l > max);
        let (content_type, filename, body): (Option<String>, Option<String>, moss_media::ByteStream) =
            if res.status().is_success() {
                let ctype = res
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let boundary = ctype
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("boundary="))
                    .map(|b| b.trim_matches('"').to_owned())
                    .ok_or_else(|| bad_gateway(origin, "the answer is not multipart/mixed"))?;
                let (headers, stream) =
                    second_part(Box::pin(res.bytes_stream()), &boundary).await.map_err(|e| bad_gateway(origin, e))?;
                if let Some(location) = header(&headers, "location") {
                    // The content lives elsewhere (a CDN); fetch it without credentials, over
                    // https only, through the same address guard (redirects included).
                    let req = fed.clients.media_redirect.get(location).map_err(|e| bad_gateway(origin, e))?;
                    let res = req.send().await.map_err(|e| bad_gateway(origin, crate::net::error_chain(&e)))?;
                    if !res.status().is_success() {
                        return Err(bad_gateway(origin, format!("redirected fetch answered {}", res.status())));
                    }
                    if too_big(res.content_length()) {
                        return Err(Error::too_large("remote media is larger than this server accepts"));
                    }
                    let ct =
                        res.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    (ct, None, Box::pin(res.bytes_stream().map(|r| r.map_err(std::io::Error::other))))
                } else {
                    let ct = header(&headers, "content-type").map(str::to_owned);
                    let name = header(&headers, "content-disposition").and_then(disposition_filename);
                    (ct, name, Box::pin(stream))
                }
            } else if matches!(res.status().as_u16(), 404 | 400 | 405) && !is_not_found_media(res).await {
                // A server that predates authenticated federation media: its legacy public path.
                let url = format!("/_matrix/media/v3/download/{origin}/{media_id}?allow_remote=false");
                let res = self.federation_get_raw(origin, &url).await?;
                if !res.status().is_success() {
                    return Err(if res.status().as_u16() == 404 {
                        Error::not_found("media not found")
                    } else {
                        bad_gateway(origin, format!("answered {}", res.status()))
                    });
                }
                if too_big(res.content_length()) {
                    return Err(Error::too_large("remote media is larger than this server accepts"));
                }
                let ct = res.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let name = res
                    .headers()
                    .get(http::header::CONTENT_DISPOSITION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(disposition_filename);
                (ct, name, Box::pin(res.bytes_stream().map(|r| r.map_err(std::io::Error::other))))
            } else {
                return Err(Error::not_found("media not found"));
            };
        // Enforce the size limit while streaming: the remote side cannot be trusted to say.
        let mut seen = 0u64;
        let limited = body.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > max {
                return Err(std::io::Error::other("remote media is larger than this server accepts"));
            }
            Ok(chunk)
        });
        self.store_remote_media(
            origin.as_str(),
            media_id,
            content_type,
            filename,
            crate::now_ms() as i64,
            false,
            Box::pin(limited),
        )
        .await?;
        Ok(())
    }
}

/// Whether a 404 is the media endpoint saying "no such media" (as opposed to "no such endpoint").
async fn is_not_found_media(res: reqwest::Response) -> bool {
    let Ok(body) = crate::net::read_limited(res, 64 * 1024).await else { return false };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["errcode"] == "M_NOT_FOUND"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_second_part_streams_without_its_boundary() {
        let body = "preamble\r\n--XyZ\r\nContent-Type: application/json\r\n\r\n{}\r\n--XyZ\r\n\
                    Content-Type: text/plain\r\nContent-Disposition: attachment; filename*=utf-8''caf%C3%A9.txt\r\n\r\n\
                    hello\r\n--not the boundary\r\nworld\r\n--XyZ--\r\n";
        // Split into awkward chunks so boundaries straddle them.
        let chunks: Vec<reqwest::Result<Bytes>> =
            body.as_bytes().chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let (headers, stream) = second_part(Box::pin(futures_util::stream::iter(chunks)), "XyZ").await.unwrap();
        assert_eq!(header(&headers, "content-type"), Some("text/plain"));
        assert_eq!(header(&headers, "content-disposition").and_then(disposition_filename).as_deref(), Some("café.txt"));
        let content: Vec<u8> =
            stream.map(|c| c.unwrap().to_vec()).collect::<Vec<_>>().await.into_iter().flatten().collect();
        assert_eq!(String::from_utf8(content).unwrap(), "hello\r\n--not the boundary\r\nworld");
    }

    #[test]
    fn broken_percent_encoding_in_filenames_is_kept_not_fatal() {
        for bad in ["%", "%4", "%é1", "a%zz", "%\u{1F600}x", "x%C3"] {
            // No panic; a result (or None for invalid UTF-8) either way.
            let _ = disposition_filename(&format!("attachment; filename*=utf-8''{bad}"));
        }
        assert_eq!(disposition_filename("attachment; filename*=utf-8''%é1").as_deref(), Some("%é1"));
        assert_eq!(disposition_filename("attachment; filename*=utf-8''50%25").as_deref(), Some("50%"));
    }
}
