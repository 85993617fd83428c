use std::net::SocketAddr;

use axum::{response::IntoResponse, routing::get, Router};

use crate::common::{errcode, Server, User};

/// A small web site on loopback for the previewer to fetch.
async fn site() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let png = {
        let img = image::RgbImage::from_fn(120, 80, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let port = addr.port();
    let app = Router::new()
        .route(
            "/page",
            get(|| async {
                (
                    [("content-type", "text/html; charset=utf-8")],
                    r#"<html><head><title>ignored</title><meta property="og:title" content="Moss &amp; friends">
                    <meta property="og:description" content="A homeserver"><meta property="og:image" content="/img.png"></head></html>"#,
                )
            }),
        )
        .route("/img.png", get(move || async move { ([("content-type", "image/png")], png.clone()).into_response() }))
        .route(
            "/to-v6",
            get(move || async move { (axum::http::StatusCode::FOUND, [("location", format!("http://[::1]:{port}/page"))]).into_response() }),
        )
        .route(
            "/big",
            get(|| async { ([("content-type", "text/html")], format!("<title>Big page</title>{}", "x".repeat(5 << 20))) }),
        );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                rx.await.ok();
            })
            .await
            .unwrap();
    });
    (addr, tx)
}

async fn preview(s: &Server, u: &User, url: &str) -> (u16, serde_json::Value) {
    let q = url.replace(':', "%3A").replace('/', "%2F").replace('[', "%5B").replace(']', "%5D");
    s.get(&format!("/_matrix/client/v1/media/preview_url?url={q}"), u).await
}

#[tokio::test]
async fn previews_are_off_by_default_and_never_reach_private_addresses() {
    let (addr, _stop) = site().await;
    let s = Server::start().await;
    let a = s.register("alice").await;
    let (st, v) = preview(&s, &a, &format!("http://{addr}/page")).await;
    assert_eq!((st, errcode(&v)), (404, "M_UNRECOGNIZED"));

    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__URL_PREVIEW__ENABLED", "true"),
    ])
    .await;
    let a = s.register("alice").await;
    for url in [
        format!("http://{addr}/page"),
        format!("http://localhost:{}/page", addr.port()),
        format!("http://[::1]:{}/page", addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/page", addr.port()),
    ] {
        let (st, v) = preview(&s, &a, &url).await;
        assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{url}: {v}");
    }
    let (st, v) = preview(&s, &a, "file:///etc/passwd").await;
    assert_eq!((st, errcode(&v)), (400, "M_INVALID_PARAM"));
    let (st, v) = s.get("/_matrix/client/v1/media/preview_url", &a).await;
    assert_eq!((st, errcode(&v)), (400, "M_MISSING_PARAM"));
}

#[tokio::test]
async fn previews_read_opengraph_store_the_image_and_recheck_redirects() {
    let (addr, stop) = site().await;
    let s = Server::start_with(&[
        ("MOSS_REGISTRATION", "open"),
        ("MOSS_RATE_LIMITS__ENABLED", "false"),
        ("MOSS_MEDIA__URL_PREVIEW__ENABLED", "true"),
        // The test site lives on loopback: allow exactly that address, nothing else.
        ("MOSS_MEDIA__URL_PREVIEW__IP_RANGE_ALLOWLIST", "[\"127.0.0.1/32\"]"),
    ])
    .await;
    let a = s.register("alice").await;
    let page = format!("http://{addr}/page");
    let (st, v) = preview(&s, &a, &page).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["og:title"], "Moss & friends");
    assert_eq!(v["og:description"], "A homeserver");
    assert_eq!(v["og:image:type"], "image/png");
    assert_eq!((v["og:image:width"].as_u64(), v["og:image:height"].as_u64()), (Some(120), Some(80)));
    let mxc = v["og:image"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let (st, _) = s.get(&format!("/_matrix/client/v1/media/download/{mxc}"), &a).await;
    assert_eq!(st, 200, "the preview image is served as media");

    // A redirect to an address outside the allowance is refused, not followed.
    let (st, v) = preview(&s, &a, &format!("http://{addr}/to-v6")).await;
    assert_eq!((st, errcode(&v)), (403, "M_FORBIDDEN"), "{v}");
    // Huge pages are read only as far as needed.
    let (st, v) = preview(&s, &a, &format!("http://{addr}/big")).await;
    assert_eq!((st, v["og:title"].as_str()), (200, Some("Big page")));
    // Cached: the site can go away.
    stop.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (st, v) = preview(&s, &a, &page).await;
    assert_eq!((st, v["og:title"].as_str()), (200, Some("Moss & friends")));
}
