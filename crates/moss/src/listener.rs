//! The federation listener: the server-server API on its own port, over TLS when a certificate
//! is configured (or plain HTTP behind a TLS-terminating reverse proxy).

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context, Result};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use moss_core::Moss;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the federation certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// On SIGHUP, reads the certificate and key again (renewed by certbot or the like) and serves
/// new connections with them; a pair that does not load is logged and the old one kept.
fn reload_on_sighup(
    current: Arc<std::sync::RwLock<tokio_rustls::TlsAcceptor>>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            match tls_config(&cert, &key) {
                Ok(config) => {
                    *current.write().unwrap_or_else(|p| p.into_inner()) =
                        tokio_rustls::TlsAcceptor::from(Arc::new(config));
                    tracing::info!(certificate = %cert.display(), "reloaded the federation TLS certificate");
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: the federation certificate did not load; keeping the old one")
                }
            }
        }
    });
}

/// Binds the federation listener; the returned future serves until `shutdown` fires.
pub async fn federation(moss: Arc<Moss>) -> Result<impl std::future::Future<Output = ()>> {
    let cfg = &moss.config.federation;
    let addr: SocketAddr = cfg.bind;
    let files = match (&cfg.tls_certificate, &cfg.tls_private_key) {
        (Some(c), Some(k)) => Some((moss.config.data_dir.join(c), moss.config.data_dir.join(k))),
        (None, None) => None,
        _ => anyhow::bail!("federation.tls_certificate and federation.tls_private_key go together"),
    };
    let tls = match &files {
        Some((cert, key)) => {
            let current =
                Arc::new(std::sync::RwLock::new(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(cert, key)?))));
            reload_on_sighup(current.clone(), cert.clone(), key.clone());
            Some(current)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, tls = tls.is_some(), "federation listener is up");
    let app = moss_api::federation::router(moss.clone());
    let mut shutdown = moss.shutdown_signal();
    Ok(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "federation accept failed");
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            // The certificate as of this connection (SIGHUP swaps in a renewed one).
            let tls = tls.as_ref().map(|t| t.read().unwrap_or_else(|p| p.into_inner()).clone());
            let app = app.clone();
            tokio::spawn(async move {
                let service = TowerToHyperService::new(app);
                let builder = Builder::new(TokioExecutor::new());
                let served = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => builder.serve_connection(TokioIo::new(s), service).await,
                            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => builder.serve_connection(TokioIo::new(stream), service).await,
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "federation connection ended with an error");
                }
            });
        }
    })
}

/// The Prometheus listener (`metrics.bind`): `GET /metrics` in the text format, nothing else.
/// Bound before the server reports ready, so a wrong address stops the start.
pub async fn metrics(moss: Arc<Moss>, addr: SocketAddr) -> Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding metrics.bind {addr}"))?;
    tracing::info!(%addr, "metrics listener is up");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let moss = moss.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    moss.metrics_text().await,
                )
            }
        }),
    );
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    })
}
