//! The HTTP server loop, hardened: a slow, idle or abusive client cannot
//! stall others.
//!
//! - HTTP/1.1 only. A client that opens with the HTTP/2 preface is refused
//!   at once (hyper answers nothing and closes); TLS offers only
//!   `http/1.1` in ALPN. Serving HTTP/2 would need its own deadlines for
//!   preface-only and ping-answering idle sockets, and nothing needs it.
//! - Every request head, the first included, must arrive within
//!   `header_read_timeout` from the moment the server waits for it: a
//!   socket that sends nothing at all, or stays idle between keep-alive
//!   requests, is closed after that long.
//! - Each request gets `request_timeout` (408 after it).
//! - Open connections are capped in total and per client address (an IPv6
//!   client by its /64), so one address cannot take the pool; refusals are
//!   logged at most once per [`REFUSAL_LOG_INTERVAL`] with a count.
//! - The request head is bounded: beyond `max_header_bytes` a JSON 431
//!   (see `api::error`). Every error the stack produces in the router
//!   (404, 405, 408, ...) is rendered in the API's JSON shape by
//!   `error::json_errors`; the answers hyper writes by itself for
//!   requests it cannot parse (400, 414, 431 beyond twice the limit) are
//!   rewritten into the same shape on their way out ([`JsonErrorWrites`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use super::tls::TlsReloader;
use crate::config::ServerLimits;

/// At most one "connection refused" line per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The IPv6 prefix that counts as one address for the connection cap.
const CONNECTION_KEY_IPV6_PREFIX: u8 = 64;

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Full,
    /// This address holds `max_connections_per_address`.
    AddressFull,
}

/// Open connections, in total and per address (pure bookkeeping).
#[derive(Debug)]
pub struct ConnectionSlots {
    limits: ServerLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One taken slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    key: IpAddr,
}

impl ConnectionSlots {
    pub fn new(limits: ServerLimits) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn try_take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let key = crate::access::rate_limit_key(peer, CONNECTION_KEY_IPV6_PREFIX);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (total, per_address) = &mut *open;
        if *total >= self.limits.max_connections {
            return Err(Refusal::Full);
        }
        let count = per_address.entry(key).or_insert(0);
        if *count >= self.limits.max_connections_per_address {
            return Err(Refusal::AddressFull);
        }
        *count += 1;
        *total += 1;
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Open connections in total and from `peer`'s address.
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let key = crate::access::rate_limit_key(peer, CONNECTION_KEY_IPV6_PREFIX);
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (open.0, open.1.get(&key).copied().unwrap_or(0))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (total, per_address) = &mut *open;
        *total -= 1;
        if let Some(count) = per_address.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&self.key);
            }
        }
    }
}

/// Turns a stream of refusals into at most one log line per interval
/// (pure: driven by the instants it is given).
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    last_line: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    pub fn new(interval: Duration) -> RefusalLog {
        RefusalLog {
            interval,
            last_line: None,
            unreported: 0,
        }
    }

    /// Records one refusal; returns how many to report when a line is due.
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unreported))
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
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            limits.max_header_bytes,
            super::error::limit_header_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::from_fn(super::error::json_errors));
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let slots = ConnectionSlots::new(limits);
    let mut refusals = RefusalLog::new(REFUSAL_LOG_INTERVAL);
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Room above the limit so that the JSON 431 of
        // `limit_header_bytes` answers; hyper's minimum buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.saturating_mul(2).max(8192));
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
        let slot = match slots.try_take(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                drop(stream);
                if let Some(refused) = refusals.refused(Instant::now()) {
                    let (open, from_peer) = slots.open(peer.ip());
                    tracing::warn!(
                        %peer,
                        reason = ?refusal,
                        refused,
                        open,
                        from_peer,
                        max = limits.max_connections,
                        max_per_address = limits.max_connections_per_address,
                        "connection limit reached; closing new connections (refused counts every refusal since the last line)"
                    );
                }
                continue;
            }
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
                    let connection = builder
                        .serve_connection(TokioIo::new(JsonErrorWrites::new(stream)), service);
                    let _ = watcher.watch(connection).await;
                }
                Some(acceptor) => {
                    // The handshake gets the same deadline as a request head.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection = builder.serve_connection(
                                TokioIo::new(JsonErrorWrites::new(stream)),
                                service,
                            );
                            let _ = watcher.watch(connection).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection's stream that renders hyper's own bare error answers
/// (written before any router runs) in the API's JSON shape; everything
/// else passes through. Vectored writes are off so that hyper hands over a
/// whole answer in one write.
pub struct JsonErrorWrites<S> {
    inner: S,
    /// A rewritten answer being written: bytes, how many are out, and the
    /// length of hyper's original to report once all are.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonErrorWrites<S> {
    pub fn new(inner: S) -> Self {
        JsonErrorWrites {
            inner,
            pending: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrorWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrorWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            match super::error::render_bare_error_head(buf) {
                Some(rendered) => this.pending = Some((rendered, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let Some((rendered, written, original)) = this.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *written < rendered.len() {
            match ready!(Pin::new(&mut this.inner).poll_write(cx, &rendered[*written..])) {
                Ok(0) => {
                    this.pending = None;
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Ok(count) => *written += count,
                Err(error) => {
                    this.pending = None;
                    return Poll::Ready(Err(error));
                }
            }
        }
        let original = *original;
        this.pending = None;
        Poll::Ready(Ok(original))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn limits(total: usize, per_address: usize) -> ServerLimits {
        ServerLimits {
            max_connections: total,
            max_connections_per_address: per_address,
            ..ServerLimits::default()
        }
    }

    #[test]
    fn one_address_cannot_take_the_pool() {
        let slots = ConnectionSlots::new(limits(5, 2));
        let a1 = slots.try_take(ip("192.0.2.1")).unwrap();
        let _a2 = slots.try_take(ip("192.0.2.1")).unwrap();
        assert_eq!(
            slots.try_take(ip("192.0.2.1")).unwrap_err(),
            Refusal::AddressFull
        );
        // The same /64 is the same address; another /64 is not.
        let _b1 = slots.try_take(ip("2001:db8:0:1::1")).unwrap();
        let _b2 = slots.try_take(ip("2001:db8:0:1::2")).unwrap();
        assert_eq!(
            slots.try_take(ip("2001:db8:0:1::3")).unwrap_err(),
            Refusal::AddressFull
        );
        let _c1 = slots.try_take(ip("2001:db8:0:2::1")).unwrap();
        assert_eq!(slots.try_take(ip("192.0.2.9")).unwrap_err(), Refusal::Full);
        assert_eq!(slots.open(ip("192.0.2.1")), (5, 2));
        drop(a1);
        assert_eq!(slots.open(ip("192.0.2.1")), (4, 1));
        let _a3 = slots.try_take(ip("192.0.2.1")).unwrap();
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_a_count() {
        let start = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10));
        assert_eq!(log.refused(start), Some(1));
        for second in 1..10 {
            assert_eq!(log.refused(start + Duration::from_secs(second)), None);
        }
        assert_eq!(log.refused(start + Duration::from_secs(10)), Some(10));
        assert_eq!(log.refused(start + Duration::from_secs(11)), None);
        assert_eq!(log.refused(start + Duration::from_secs(25)), Some(2));
    }
}
