//! The HTTP server loop, hardened: a slow or abusive client cannot stall
//! others. Bounded header size (431 beyond it), a deadline for headers to
//! arrive, a deadline per request, and a cap on open connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use super::tls::TlsReloader;

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    pub max_connections: usize,
    /// Upper bound on the request head; hyper answers 431 beyond it.
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests
/// finish (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<TlsReloader>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's minimum buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off a moment
                    // instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let Ok(tower_service) = make_service
            .call(peer)
            .await
            .map_err(|never: Infallible| never);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            tower_service.clone().oneshot(request)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(TlsReloader::acceptor);
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
                Some(acceptor) => {
                    // The handshake gets the same deadline as a request head.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            let _ = watcher.watch(connection.into_owned()).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
