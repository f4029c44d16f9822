//! The access middleware: who is calling, may they, and not too often;
//! and the CORS middleware in front of it, for browsers.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ApiError;
use crate::access::{AccessPolicy, Decision, Permission};
use crate::client_token::ClientTokenVerifier;
use crate::config::AccessConfig;
use crate::cors::{CorsDecision, CorsPolicy};

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

/// A [`Guard`] with the permission table of one server's routes: the state
/// of the [`guard`] middleware.
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

    /// The origins [`cors`] lets browsers read answers from, from now on.
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

fn bearer(request: &Request) -> Option<&str> {
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
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
        .collect()
}

/// With CORS off nothing on the API is meant for pages: a state-changing
/// request that a browser marks as coming from a page (`Origin`, or
/// `Sec-Fetch-Site` other than `none`) is cross-site by construction.
fn is_browser_write(request: &Request) -> bool {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let headers = request.headers();
    let from_a_page = headers.contains_key(header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes() != b"none");
    !safe && from_a_page
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

/// CORS, in front of the access guard: a preflight from an allowed origin
/// is answered here (it carries no credentials), a request from an origin
/// not allowed is refused before anything is checked, counted or minted,
/// and answers to an allowed origin name it, errors included. With no
/// origins configured, requests pass untouched.
pub async fn cors(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let policy = guard.cors.load();
    if !policy.is_enabled() {
        if is_browser_write(&request) {
            // A page on any site can make a browser on an allowed address
            // POST a form here without a preflight; the role comes from the
            // address, so the write would run with the victim's rights.
            return ApiError::Forbidden(
                "a browser may not send this request: set api.cors_origins to let a page use this API"
                    .into(),
            )
            .into_response();
        }
        return next.run(request).await;
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
    let mut response = match &decision {
        CorsDecision::Refused => {
            ApiError::Forbidden("this origin may not use this API".into()).into_response()
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
            response
        }
        CorsDecision::Allowed(_) | CorsDecision::NotCors => next.run(request).await,
    };
    let headers = response.headers_mut();
    if let CorsDecision::Allowed(origin) = &decision {
        // Normalised from a header value, so it is one again.
        if let Ok(origin) = HeaderValue::from_str(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after"),
            );
        }
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

pub async fn guard(
    State(route_guard): State<RouteGuard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(permission) = (route_guard.required)(request.uri().path()) else {
        return Ok(next.run(request).await);
    };
    let guard = route_guard.guard.rules.load();
    let forwarded = forwarded_for_lines(request.headers());
    let client = guard.policy.client(peer.ip(), &forwarded);
    let bearer_token = bearer(&request);
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
    Ok(next.run(request).await)
}
