//! The access checks: who is calling, may they, and not too often; and
//! CORS in front of them, for browsers. [`AccessLayer`] applies both.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, Method, Request as HttpRequest, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ApiError;
use crate::access::{AccessPolicy, Decision, Permission};
use crate::client_token::ClientTokenVerifier;
use crate::config::AccessConfig;
use crate::cors::{CorsDecision, CorsPolicy};

/// Header names looked up on every request, made once (a name given as
/// text is parsed and checked on every lookup).
const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

/// Keys kept by the rate limiter before idle ones are dropped.
const LIMITER_KEYS_BEFORE_SWEEP: usize = 10_000;

/// Cheap to clone; every clone sees a [`Guard::replace`].
#[derive(Clone)]
pub struct Guard {
    rules: Arc<ArcSwap<Rules>>,
    cors: Arc<ArcSwap<CorsPolicy>>,
}

struct Rules {
    policy: AccessPolicy,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ipv6_prefix: u8,
    /// The verifier and the index of the role a valid token grants.
    client_tokens: Option<(ClientTokenVerifier, usize)>,
}

/// The `sub` of the valid client token a request carried: the guard puts
/// it in the request's extensions for the credential handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSubject(pub String);

/// The permission a request path needs; `None` for an open path (the
/// liveness probe). Each server passes its own route table's.
pub type RequiredPermission = fn(&str) -> Option<Permission>;

/// A [`Guard`] with the permission table of one server's routes: what an
/// [`AccessLayer`] checks against.
#[derive(Clone)]
pub struct RouteGuard {
    guard: Guard,
    required: RequiredPermission,
}

impl Guard {
    /// This guard for a server whose paths need what `required` says.
    pub fn for_routes(&self, required: RequiredPermission) -> RouteGuard {
        RouteGuard {
            guard: self.clone(),
            required,
        }
    }

    /// Rules from `access`, CORS off until [`Guard::set_cors`].
    pub fn new(access: &AccessConfig) -> Guard {
        Guard {
            rules: Arc::new(ArcSwap::from_pointee(Rules::new(access))),
            cors: Arc::new(ArcSwap::from_pointee(CorsPolicy::disabled())),
        }
    }

    /// New rules from a reloaded configuration, for every request from now
    /// on. The rate limiter starts afresh; client token keys are the ones
    /// `access` read.
    pub fn replace(&self, access: &AccessConfig) {
        self.rules.store(Arc::new(Rules::new(access)));
    }

    /// The origins [`AccessLayer`] lets browsers read answers from, from now on.
    pub fn set_cors(&self, cors: &CorsPolicy) {
        self.cors.store(Arc::new(cors.clone()));
    }
}

impl Rules {
    fn new(access: &AccessConfig) -> Rules {
        let limiter = (access.rate_limit_per_second > 0.0)
            .then(|| {
                Quota::with_period(Duration::from_secs_f64(1.0 / access.rate_limit_per_second))
            })
            .flatten()
            .map(|quota| {
                let burst = NonZeroU32::new(access.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
                RateLimiter::keyed(quota.allow_burst(burst))
            });
        let client_tokens = access.client_tokens.as_ref().and_then(|settings| {
            match ClientTokenVerifier::new(
                &settings.public_keys,
                settings.audience.clone(),
                settings.max_lifetime,
            ) {
                Ok(verifier) => Some((verifier, settings.role)),
                // Validation read the same keys, so this is not expected.
                Err(error) => {
                    tracing::error!(%error, "client tokens are off: the public keys do not load");
                    None
                }
            }
        });
        Rules {
            policy: access.policy.clone(),
            limiter,
            ipv6_prefix: access.rate_limit_ipv6_prefix,
            client_tokens,
        }
    }
}

impl Rules {
    /// One request against `client`'s budget; 429 when it is spent.
    fn check_rate(&self, client: IpAddr) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = crate::access::rate_limit_key(client, self.ipv6_prefix);
        if let Err(not_until) = limiter.check_key(&key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            });
        }
        if limiter.len() > LIMITER_KEYS_BEFORE_SWEEP {
            limiter.retain_recent();
        }
        Ok(())
    }
}

fn bearer<B>(request: &HttpRequest<B>) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Every `X-Forwarded-For` line, in order: a proxy may add its own line
/// after the client's. A line that is not text stays in the list as
/// garbage, so reaching it falls back to the peer.
pub fn forwarded_for_lines(headers: &axum::http::HeaderMap) -> Vec<std::borrow::Cow<'_, str>> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
        .collect()
}

/// With CORS off nothing on the API is meant for pages: a state-changing
/// request that a browser marks as coming from a page (`Origin`, or
/// `Sec-Fetch-Site` other than `none`) is cross-site by construction.
fn is_browser_write<B>(request: &HttpRequest<B>) -> bool {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if safe {
        return false;
    }
    let headers = request.headers();
    headers.contains_key(header::ORIGIN)
        || headers
            .get(SEC_FETCH_SITE)
            .is_some_and(|site| site.as_bytes() != b"none")
}

/// Longest bearer token looked at; longer ones are refused unverified.
const MAX_TOKEN_BYTES: usize = 4096;

/// A bearer token shaped like a JWT: three non-empty dot-separated parts.
fn looks_like_jwt(token: &str) -> bool {
    if token.len() > MAX_TOKEN_BYTES {
        return false;
    }
    let mut parts = token.split('.');
    (0..3).all(|_| parts.next().is_some_and(|part| !part.is_empty())) && parts.next().is_none()
}

/// What CORS adds to an answer that went on to the routes.
#[derive(Debug, Default)]
struct CorsAfter {
    /// `Access-Control-Allow-Origin` for an allowed origin.
    allow_origin: Option<HeaderValue>,
    /// `Vary: Origin`: on every answer while CORS is on.
    vary: bool,
}

impl CorsAfter {
    fn apply(self, response: &mut Response) {
        let headers = response.headers_mut();
        if let Some(origin) = self.allow_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after"),
            );
        }
        if self.vary {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// CORS before the routes: an answer given here (a refusal, a
/// preflight), if any, and what to add to the answer either way.
fn cors_before<B>(guard: &Guard, request: &HttpRequest<B>) -> (Option<Response>, CorsAfter) {
    let policy = guard.cors.load();
    if !policy.is_enabled() {
        if is_browser_write(request) {
            // A page on any site can make a browser on an allowed address
            // POST a form here without a preflight; the role comes from the
            // address, so the write would run with the victim's rights.
            let refusal = ApiError::Forbidden(
                "a browser may not send this request: set api.cors_origins to let a page use this API"
                    .into(),
            )
            .into_response();
            return (Some(refusal), CorsAfter::default());
        }
        return (None, CorsAfter::default());
    }
    let mut origins = request.headers().get_all(header::ORIGIN).iter();
    let first = origins.next();
    // A browser sends one Origin; several are not a browser's request.
    let decision = match origins.next() {
        Some(_) => CorsDecision::Refused,
        None => policy.decide(first.map(HeaderValue::as_bytes)),
    };
    let is_preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let answer = match &decision {
        CorsDecision::Refused => {
            Some(ApiError::Forbidden("this origin may not use this API".into()).into_response())
        }
        CorsDecision::Allowed(_) if is_preflight => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(crate::cors::ALLOWED_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(crate::cors::ALLOWED_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(policy.max_age().as_secs()),
            );
            Some(response)
        }
        CorsDecision::Allowed(_) | CorsDecision::NotCors => None,
    };
    let allow_origin = match &decision {
        // Normalised from a header value, so it is one again.
        CorsDecision::Allowed(origin) => HeaderValue::from_str(origin).ok(),
        _ => None,
    };
    (
        answer,
        CorsAfter {
            allow_origin,
            vary: true,
        },
    )
}

/// The access checks: Ok when the request may go on (with the subject of
/// its client token, if any, in its extensions).
fn check_access<B>(
    route_guard: &RouteGuard,
    peer: SocketAddr,
    request: &mut HttpRequest<B>,
) -> Result<(), ApiError> {
    let Some(permission) = (route_guard.required)(request.uri().path()) else {
        return Ok(());
    };
    let guard = route_guard.guard.rules.load();
    let forwarded = forwarded_for_lines(request.headers());
    let client = guard.policy.client(peer.ip(), &forwarded);
    let bearer_token = bearer(request);
    let mut decision = guard.policy.decide_client(client, bearer_token, permission);
    let mut subject = None;
    let mut rate_checked = false;
    if let (Decision::Unknown, Some(token), Some((verifier, role))) =
        (decision, bearer_token, &guard.client_tokens)
    {
        // Not one of the configured bearer tokens: a client token, when it
        // has the shape of one. The token itself is never logged.
        if looks_like_jwt(token) {
            // A signature check costs more than an answer: the rate limit
            // comes first, so invalid tokens cannot be sent unbounded.
            guard.check_rate(client.address())?;
            rate_checked = true;
            let verified = verifier
                .verify(token, crate::time::unix_now().as_secs())
                .map_err(|refusal| ApiError::Unauthorized(refusal.to_string()))?;
            subject = verified.subject;
            decision = if guard.policy.roles[*role].allows(permission) {
                Decision::Allowed
            } else {
                Decision::Forbidden
            };
        }
    }
    match decision {
        Decision::Allowed => {}
        Decision::Unknown => {
            return Err(ApiError::Unauthorized(format!(
                "{client} is not allowed to use this API"
            )))
        }
        Decision::Forbidden => {
            return Err(ApiError::Forbidden(format!(
                "the caller's role lacks the `{}` permission",
                permission.name()
            )))
        }
    }
    if matches!(permission, Permission::Credential | Permission::Ice) && !rate_checked {
        guard.check_rate(client.address())?;
    }
    if let Some(subject) = subject {
        request.extensions_mut().insert(ClientSubject(subject));
    }
    Ok(())
}

/// Watches every request the [`Access`] service answers, refusals
/// included: a server's request metrics.
pub trait Observe: Send + Sync + 'static {
    /// What is noted of the request before it is answered.
    type Mark: Send + 'static;

    fn start<B>(&self, request: &HttpRequest<B>) -> Self::Mark;

    fn finish(&self, mark: Self::Mark, response: &Response);
}

/// No observation: for a server without request metrics.
impl Observe for () {
    type Mark = ();

    fn start<B>(&self, _request: &HttpRequest<B>) {}

    fn finish(&self, _mark: (), _response: &Response) {}
}

/// Makes [`Access`] services: `observe`, CORS and the access guard of
/// `routes` around each route, as one service. CORS comes first: a
/// preflight from an allowed origin is answered there (it carries no
/// credentials), a request from an origin not allowed is refused before
/// anything is checked, counted or minted, and answers to an allowed
/// origin name it, the guard's refusals included. With no origins
/// configured, CORS lets requests pass untouched.
pub struct AccessLayer<O> {
    shared: Arc<(RouteGuard, O)>,
}

impl<O> AccessLayer<O> {
    pub fn new(routes: RouteGuard, observe: O) -> AccessLayer<O> {
        AccessLayer {
            shared: Arc::new((routes, observe)),
        }
    }
}

impl<O> Clone for AccessLayer<O> {
    fn clone(&self) -> Self {
        AccessLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<O: Observe> AccessLayer<O> {
    /// What [`Access`] does, for an answer made at once by `answer` (no
    /// route service, no future): the observer, CORS and the guard around
    /// it, with the peer given rather than looked up in the extensions.
    pub fn answer_now<B>(
        &self,
        request: &mut HttpRequest<B>,
        peer: Result<SocketAddr, ApiError>,
        answer: impl FnOnce(&HttpRequest<B>) -> Response,
    ) -> Response {
        let (mark, refusal, after) = admit(&self.shared, request, peer);
        let mut response = refusal.unwrap_or_else(|| answer(request));
        conclude(&self.shared.1, mark, after, &mut response);
        response
    }
}

/// The connection's address, where axum's `ConnectInfo` extractor looks
/// for it; a JSON 500 (what that extractor answers) when it is missing.
pub fn connection_peer<B>(request: &HttpRequest<B>) -> Result<SocketAddr, ApiError> {
    let extensions = request.extensions();
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer)
        .or_else(|| {
            extensions
                .get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
                .map(|mock| mock.0)
        })
        .ok_or_else(|| ApiError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "the connection's address is missing".into(),
        })
}

/// Before an answer: the observer's mark, the refusal of CORS or the
/// guard if there is one (a missing `peer` is refused after CORS), and
/// what CORS adds to the answer.
fn admit<B, O: Observe>(
    (routes, observe): &(RouteGuard, O),
    request: &mut HttpRequest<B>,
    peer: Result<SocketAddr, ApiError>,
) -> (O::Mark, Option<Response>, CorsAfter) {
    let mark = observe.start(request);
    let (refusal, after) = cors_before(&routes.guard, request);
    let refusal = refusal.or_else(|| {
        peer.and_then(|peer| check_access(routes, peer, request))
            .err()
            .map(IntoResponse::into_response)
    });
    (mark, refusal, after)
}

/// After an answer: what CORS adds, then the observer sees it.
fn conclude<O: Observe>(observe: &O, mark: O::Mark, after: CorsAfter, response: &mut Response) {
    after.apply(response);
    observe.finish(mark, response);
}

impl<S, O> tower::Layer<S> for AccessLayer<O> {
    type Service = Access<S, O>;

    fn layer(&self, inner: S) -> Access<S, O> {
        Access {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// CORS, the access guard and an [`Observe`] in one service with a
/// concrete future: no boxed future, no `Next`, one
/// reference count per clone (axum clones a route's service for every
/// request).
pub struct Access<S, O> {
    inner: S,
    shared: Arc<(RouteGuard, O)>,
}

impl<S: Clone, O> Clone for Access<S, O> {
    fn clone(&self) -> Self {
        Access {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, O> tower::Service<Request> for Access<S, O>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    O: Observe,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = AccessFuture<S::Future, O>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let peer = connection_peer(&request);
        let (mark, answer, after) = admit(&self.shared, &mut request, peer);
        let inner = match answer {
            Some(_) => None,
            None => Some(self.inner.call(request)),
        };
        AccessFuture {
            inner,
            answer,
            after: Some(after),
            mark: Some(mark),
            shared: self.shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Access`]'s answer.
    pub struct AccessFuture<F, O: Observe> {
        #[pin]
        inner: Option<F>,
        // An answer of CORS or the guard, given without the routes.
        answer: Option<Response>,
        after: Option<CorsAfter>,
        mark: Option<O::Mark>,
        shared: Arc<(RouteGuard, O)>,
    }
}

impl<F, O> std::future::Future for AccessFuture<F, O>
where
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>>,
    O: Observe,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        let mut response = match this.answer.take() {
            Some(answer) => answer,
            None => {
                let inner = this
                    .inner
                    .as_mut()
                    .as_pin_mut()
                    .expect("AccessFuture polled after it completed");
                match std::task::ready!(inner.poll(cx)) {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        };
        this.inner.set(None);
        if let (Some(after), Some(mark)) = (this.after.take(), this.mark.take()) {
            conclude(&this.shared.1, mark, after, &mut response);
        }
        std::task::Poll::Ready(Ok(response))
    }
}
