//! The HTTP server loop, hardened: a slow, idle or abusive client cannot
//! stall others.
//!
//! - HTTP/1.1 only. A client that opens with the HTTP/2 preface is refused
//!   at once (hyper answers nothing and closes); TLS offers only
//!   `http/1.1` in ALPN. Serving HTTP/2 would need its own deadlines for
//!   preface-only and ping-answering idle sockets, and nothing needs it.
//! - A socket that sends nothing is closed after `header_read_timeout`;
//!   from its first byte every request head, the first included, must
//!   arrive within `header_read_timeout` from the moment the server waits
//!   for it, so an idle keep-alive connection is closed after that long
//!   (`connection::Served`, one timer per connection).
//! - Until its first byte a connection holds no hyper or TLS state (hyper
//!   allocates an 8 KiB read buffer on its first read, and its connection
//!   future is about 3.5 KiB). The first bytes are waited for with
//!   `readable()` and a read that finds nothing when tokio reported a
//!   socket readable that nothing has arrived on (a fresh one is, at once;
//!   every silent socket then went on to hyper, which kept its buffer:
//!   about 13 KB of RSS per idle socket, now about 1 KB). That read is the
//!   request's own: hyper reads its bytes first ([`AcceptedSocket`]). A
//!   client that closes before sending anything is closed without hyper.
//! - Each request gets `request_timeout` (408 after it).
//! - Open connections are capped in total and per client address (an IPv6
//!   client by its /64), so one address cannot take the pool. At the total
//!   cap the server stops accepting: new clients wait in the listen backlog
//!   and are served when a connection ends. Beyond an address's cap a new
//!   connection is accepted and closed at once. Both are logged at most
//!   once per [`REFUSAL_LOG_INTERVAL`] with a count.
//! - The request head is bounded: beyond `max_header_bytes` a JSON 431
//!   (see `edge`). Every error the stack produces in the router
//!   (404, 405, 408, ...) is rendered in the API's JSON shape by
//!   `edge::Edge`; the answers hyper writes by itself for
//!   requests it cannot parse (400, 414, 431 beyond twice the limit) are
//!   rewritten into the same shape on their way out ([`JsonErrorWrites`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;

use super::connection::{Ended, HeadClock, NotesAnswer, Served};
use super::edge::{EdgeFuture, EdgeLayer};
use super::tls::TlsReloader;
use crate::config::ServerLimits;

/// What a server answers requests with: a router, or a service with a
/// router behind it. Called for each request with the connection's peer,
/// by reference: nothing is cloned per request unless the answer needs it.
pub trait Routes: Send + Sync + 'static {
    type Answer: Future<Output = Result<Response, Infallible>> + Send + 'static;

    /// The answer to `request` from `peer`, under the server's `edge`
    /// (head limit, request timeout, JSON errors).
    fn answer(
        &self,
        request: hyper::Request<Incoming>,
        peer: SocketAddr,
        edge: &EdgeLayer,
    ) -> Self::Answer;
}

/// A router gets the peer as axum's `ConnectInfo` and the edge around it
/// (around the router, not with `Router::layer`: a router layer wraps every
/// route in one more boxed service, cloned for every request).
impl Routes for Router {
    type Answer = EdgeFuture<<Router as tower::Service<Request>>::Future>;

    fn answer(
        &self,
        mut request: hyper::Request<Incoming>,
        peer: SocketAddr,
        edge: &EdgeLayer,
    ) -> Self::Answer {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        // A router is always ready.
        tower::Service::call(
            &mut tower::Layer::layer(edge, self.clone()),
            request.map(axum::body::Body::new),
        )
    }
}

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

/// Open connections, in total and per address (bookkeeping, no I/O).
///
/// The total is a semaphore: the accept loop waits for a free slot before
/// it accepts, so at the cap new clients wait in the listen backlog and are
/// served when a connection ends, instead of being accepted and closed.
#[derive(Debug)]
pub struct ConnectionSlots {
    limits: ServerLimits,
    free: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// The most connections open at once since [`ConnectionSlots::take_peak`]:
    /// a burst that comes and goes between two looks is still seen.
    peak: AtomicUsize,
}

/// Room for one more connection, not yet given to an address.
#[derive(Debug)]
pub struct Reservation {
    slots: Arc<ConnectionSlots>,
    permit: OwnedSemaphorePermit,
}

/// One taken slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    key: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl ConnectionSlots {
    pub fn new(limits: ServerLimits) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots {
            limits,
            free: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            per_address: Mutex::new(HashMap::new()),
            peak: AtomicUsize::new(0),
        })
    }

    /// Waits until fewer than `max_connections` are open.
    pub async fn reserve(self: &Arc<Self>) -> Reservation {
        let permit = self
            .free
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Reservation {
            slots: self.clone(),
            permit,
        }
    }

    /// A reservation if a slot is free now.
    pub fn try_reserve(self: &Arc<Self>) -> Result<Reservation, Refusal> {
        let permit = self
            .free
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        Ok(Reservation {
            slots: self.clone(),
            permit,
        })
    }

    pub fn try_take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        self.try_reserve()?.assign(peer)
    }

    /// Open connections in total.
    pub fn open_total(&self) -> usize {
        self.limits.max_connections.min(Semaphore::MAX_PERMITS) - self.free.available_permits()
    }

    /// The most connections open at once since the last call (at least
    /// those open now); the count starts again from those open now.
    pub fn take_peak(&self) -> usize {
        let open = self.open_total();
        self.peak.swap(open, Ordering::Relaxed).max(open)
    }

    /// Open connections in total and from `peer`'s address.
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let key = crate::access::rate_limit_key(peer, CONNECTION_KEY_IPV6_PREFIX);
        let per_address = self.lock();
        (
            self.open_total(),
            per_address.get(&key).copied().unwrap_or(0),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Reservation {
    /// Gives the slot to `peer` unless its address already holds
    /// `max_connections_per_address`; a refused reservation is freed.
    pub fn assign(self, peer: IpAddr) -> Result<Slot, Refusal> {
        let key = crate::access::rate_limit_key(peer, CONNECTION_KEY_IPV6_PREFIX);
        let mut per_address = self.slots.lock();
        let count = per_address.entry(key).or_insert(0);
        if *count >= self.slots.limits.max_connections_per_address {
            return Err(Refusal::AddressFull);
        }
        *count += 1;
        drop(per_address);
        // This reservation's permit is taken: it is counted.
        self.slots
            .peak
            .fetch_max(self.slots.open_total(), Ordering::Relaxed);
        Ok(Slot {
            slots: self.slots,
            key,
            _permit: self.permit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_address = self.slots.lock();
        if let Some(count) = per_address.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&self.key);
            }
        }
        // The permit goes back after this, when the field is dropped.
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

/// Serves `routes` (a router, or a service with a router behind it) on
/// `listener` until `shutdown`, then lets open requests
/// finish for at most `drain`; connections still open then are closed, and
/// serve returns once every connection task has ended.
pub async fn serve<R: Routes>(
    listener: TcpListener,
    routes: R,
    limits: ServerLimits,
    tls: Option<TlsReloader>,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let routes = Arc::new(routes);
    let edge = EdgeLayer::new(limits.max_header_bytes, limits.request_timeout);
    let slots = ConnectionSlots::new(limits);
    // The trimmer and every connection task: closed and waited for before
    // serve returns, so none outlives the server (the caller bounds the
    // wait with its drain deadline).
    let tasks = tokio_util::task::TaskTracker::new();
    // Cancelled when the drain is over: the connections still open end.
    let close_connections = CancellationToken::new();
    tasks.spawn(super::trim::run(slots.clone(), shutdown.clone()));
    let mut refusals = RefusalLog::new(REFUSAL_LOG_INTERVAL);
    let mut full_log = RefusalLog::new(REFUSAL_LOG_INTERVAL);
    let mut builder = http1::Builder::new();
    builder
        // The head deadline is `connection::Served`'s: one timer per
        // connection instead of hyper's one per request.
        .header_read_timeout(None)
        // Room above the limit so that the JSON 431 of
        // `edge::Edge` answers; hyper's minimum buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.saturating_mul(2).max(8192));
    let builder = Arc::new(builder);
    loop {
        let reservation = match slots.try_reserve() {
            Ok(reservation) => reservation,
            Err(_) => {
                if let Some(times) = full_log.refused(Instant::now()) {
                    tracing::warn!(
                        max = limits.max_connections,
                        times,
                        "all connection slots are taken; new connections wait in the listen backlog until one ends (times counts since the last line)"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    reservation = slots.reserve() => reservation,
                }
            }
        };
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
        let slot = match reservation.assign(peer.ip()) {
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
        let routes = routes.clone();
        let connection = Connection {
            stream,
            peer,
            service: move |clock: Arc<HeadClock>| {
                hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                    clock.head_arrived();
                    NotesAnswer::new(routes.answer(request, peer, &edge), clock.clone())
                })
            },
            builder: builder.clone(),
            tls: tls.as_ref().map(TlsReloader::acceptor),
            header_read_timeout: limits.header_read_timeout,
            shutdown: shutdown.clone(),
            close: close_connections.clone(),
        };
        tasks.spawn(async move {
            // Until its first byte a socket costs only this small future:
            // hyper's buffers and TLS state are made once there is
            // something to read, in their own allocation.
            let first = tokio::select! {
                _ = connection.shutdown.cancelled() => None,
                _ = connection.close.cancelled() => None,
                first = tokio::time::timeout(connection.header_read_timeout, first_bytes(&connection.stream)) => {
                    first.ok().flatten()
                }
            };
            if let Some(first) = first {
                Box::pin(connection.serve(first)).await;
            }
            drop(slot);
        });
    }
    drop(listener);
    // The trimmer ends with the shutdown, each connection after its
    // answer in hand (`connection::Served`); those still open when the
    // drain is over are closed.
    tasks.close();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "requests still open after the drain; closing their connections"
        );
        close_connections.cancel();
    }
    tasks.wait().await;
    Ok(())
}

/// The most a connection's first read takes (the rest of a longer head is
/// read by hyper).
const FIRST_READ_BYTES: usize = 4096;

/// The first bytes `stream` sends, once they arrive; `None` at EOF or on
/// an error. tokio may report a socket readable that nothing has arrived
/// on (a fresh one is, at once): the read then finds nothing, which clears
/// that readiness, and the wait goes on. The read is the request's own
/// (not a `peek` and a read again): one system call less per connection.
async fn first_bytes(stream: &TcpStream) -> Option<Vec<u8>> {
    loop {
        stream.readable().await.ok()?;
        match try_first_read(stream) {
            Ok(first) => return first,
            Err(()) => continue,
        }
    }
}

/// One read into a buffer on the stack (never held across an await, so a
/// silent socket's future stays small), copied into an allocation of its
/// size. `Err` when nothing had arrived after all.
fn try_first_read(stream: &TcpStream) -> Result<Option<Vec<u8>>, ()> {
    let mut buffer = [0u8; FIRST_READ_BYTES];
    match stream.try_read(&mut buffer) {
        Ok(0) => Ok(None),
        Ok(read) => Ok(Some(buffer[..read].to_vec())),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Err(()),
        Err(_) => Ok(None),
    }
}

/// An accepted socket as TLS and hyper read and write it: the bytes of
/// its first read come first. Its shutdown is left to closing it, which
/// sends the same FIN: a `shutdown` call first would be one more system
/// call per connection.
pub struct AcceptedSocket {
    first: Vec<u8>,
    /// How many of `first` were read.
    taken: usize,
    stream: TcpStream,
}

impl AcceptedSocket {
    pub fn new(first: Vec<u8>, stream: TcpStream) -> AcceptedSocket {
        AcceptedSocket {
            first,
            taken: 0,
            stream,
        }
    }
}

impl AsyncRead for AcceptedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.first.len() {
            let rest = &this.first[this.taken..];
            let count = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..count]);
            this.taken += count;
            if this.taken == this.first.len() {
                // Given back once read.
                this.first = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AcceptedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An accepted connection with what serving it takes.
struct Connection<M> {
    stream: TcpStream,
    peer: SocketAddr,
    /// Makes the connection's service, given its head clock.
    service: M,
    builder: Arc<http1::Builder>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
    close: CancellationToken,
}

impl<M, S> Connection<M>
where
    M: FnOnce(Arc<HeadClock>) -> S,
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn serve(self, first: Vec<u8>) {
        let Connection {
            stream,
            peer,
            service,
            builder,
            tls,
            header_read_timeout,
            shutdown,
            close,
        } = self;
        let stream = AcceptedSocket::new(first, stream);
        let stream = match tls {
            None => Either::Left(stream),
            Some(acceptor) => {
                // The handshake gets the same deadline as a request head.
                let handshake = tokio::select! {
                    _ = close.cancelled() => return,
                    handshake = tokio::time::timeout(header_read_timeout, acceptor.accept(stream)) => handshake,
                };
                match handshake {
                    Ok(Ok(stream)) => Either::Right(stream),
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let clock = HeadClock::new();
        let connection = builder.serve_connection(
            TokioIo::new(JsonErrorWrites::new(stream)),
            service(clock.clone()),
        );
        let ended = Served::new(connection, clock, header_read_timeout, shutdown, close).await;
        if ended == Ended::HeadTimedOut {
            tracing::debug!(%peer, "no request head within the deadline; connection closed");
        }
    }
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
    fn the_peak_sees_a_burst_that_ended_between_two_looks() {
        let slots = ConnectionSlots::new(limits(100, 100));
        let _held = slots.try_take(ip("192.0.2.1")).unwrap();
        assert_eq!(slots.take_peak(), 1);
        let burst: Vec<Slot> = (0..40)
            .map(|_| slots.try_take(ip("192.0.2.2")).unwrap())
            .collect();
        drop(burst);
        assert_eq!(slots.open_total(), 1);
        assert_eq!(slots.take_peak(), 41);
        // Counted once: the next look starts from those open then.
        assert_eq!(slots.take_peak(), 1);
    }

    /// A server with one route answering `ok`, on a loopback port.
    async fn ok_server(limits: ServerLimits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(
            listener,
            router,
            limits,
            None,
            shutdown.clone(),
            Duration::from_secs(5),
        ));
        (addr, shutdown)
    }

    #[tokio::test]
    async fn a_request_held_open_does_not_keep_serve_from_returning_after_the_drain() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (started, handler_started) = tokio::sync::mpsc::channel::<()>(1);
        let router = Router::new().route(
            "/hold",
            axum::routing::get(move || {
                let started = started.clone();
                async move {
                    let _ = started.send(()).await;
                    std::future::pending::<&'static str>().await
                }
            }),
        );
        let drain = Duration::from_millis(200);
        let server = tokio::spawn(serve(
            listener,
            router,
            ServerLimits {
                request_timeout: Duration::from_secs(600),
                ..limits(4, 4)
            },
            None,
            shutdown.clone(),
            drain,
        ));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut handler_started = handler_started;
        tokio::time::timeout(Duration::from_secs(10), handler_started.recv())
            .await
            .expect("the handler did not start");
        let cancelled = std::time::Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve did not return after the drain")
            .unwrap()
            .unwrap();
        assert!(cancelled.elapsed() >= drain, "returned before the drain");
        // The held connection was closed, not left open.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .expect("the held connection stayed open");
        assert!(read.is_ok() || rest.is_empty());
    }

    /// Sends a GET and reads until the answer's body (`ok`) or EOF.
    async fn get(stream: &mut TcpStream, close: bool) -> String {
        let connection = if close { "close" } else { "keep-alive" };
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n");
        get_rest(stream, head.as_bytes()).await
    }

    #[tokio::test]
    async fn at_the_cap_a_new_client_waits_and_is_served_when_a_slot_frees() {
        let (addr, shutdown) = ok_server(ServerLimits {
            header_read_timeout: Duration::from_secs(30),
            ..limits(2, 2)
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut first, false).await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut second, false).await.starts_with("HTTP/1.1 200"));
        // The third connects (the listen backlog holds it) and is neither
        // answered nor reset while both slots are taken.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(async move { (get(&mut third, true).await, third) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served or reset while full");
        drop(first);
        let (answer, _third) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once a slot freed")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        // The second is still served on its keep-alive connection.
        assert!(get(&mut second, false).await.starts_with("HTTP/1.1 200"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn idle_slots_still_time_out_and_let_waiting_clients_in() {
        use tokio::io::AsyncReadExt;
        let (addr, shutdown) = ok_server(ServerLimits {
            header_read_timeout: Duration::from_millis(300),
            ..limits(1, 1)
        })
        .await;
        // One socket that never sends, one that went idle after a request.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), get(&mut waiting, false))
            .await
            .expect("served once the silent socket timed out");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "the silent socket was kept: {closed:?}"
        );
        // The idle keep-alive one is closed after the deadline too, and a
        // new client is served after it.
        let closed =
            tokio::time::timeout(Duration::from_secs(5), waiting.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the idle keep-alive socket was kept");
        let mut next = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut next, true).await.starts_with("HTTP/1.1 200"));
        shutdown.cancel();
    }

    /// The first read takes part of a head or the first 4 KiB of a long
    /// one; hyper gets those bytes first and reads the rest itself.
    #[tokio::test]
    async fn a_head_split_across_the_first_read_and_later_ones_is_served() {
        use tokio::io::AsyncWriteExt;
        let (addr, shutdown) = ok_server(limits(4, 4)).await;
        let mut split = TcpStream::connect(addr).await.unwrap();
        split.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(get_rest(&mut split, b"st: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200"));
        // Longer than the first read: 6,000 bytes of header.
        let mut long = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nx-padding: {}\r\n\r\n",
            "a".repeat(6000)
        );
        assert!(get_rest(&mut long, head.as_bytes())
            .await
            .starts_with("HTTP/1.1 200"));
        // Both connections stay usable.
        assert!(get(&mut split, false).await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut long, true).await.starts_with("HTTP/1.1 200"));
        shutdown.cancel();
    }

    /// Writes `rest` and reads until the answer's body (`ok`) or EOF.
    async fn get_rest(stream: &mut TcpStream, rest: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(rest).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        while !answer.ends_with(b"ok") {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
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
