//! The access middleware: who is calling, may they, and not too often.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ApiError;
use crate::access::{AccessPolicy, Decision, Permission};
use crate::config::AccessConfig;

/// Keys kept by the rate limiter before idle ones are dropped.
const LIMITER_KEYS_BEFORE_SWEEP: usize = 10_000;

/// Cheap to clone; every clone sees a [`Guard::replace`].
#[derive(Clone)]
pub struct Guard {
    rules: Arc<ArcSwap<Rules>>,
}

struct Rules {
    policy: AccessPolicy,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ipv6_prefix: u8,
}

impl Guard {
    pub fn new(access: &AccessConfig) -> Guard {
        Guard {
            rules: Arc::new(ArcSwap::from_pointee(Rules::new(access))),
        }
    }

    /// New rules from a reloaded configuration, for every request from now
    /// on. The rate limiter starts afresh.
    pub fn replace(&self, access: &AccessConfig) {
        self.rules.store(Arc::new(Rules::new(access)));
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
        Rules {
            policy: access.policy.clone(),
            limiter,
            ipv6_prefix: access.rate_limit_ipv6_prefix,
        }
    }
}

/// The permission a path needs; `None` for the open liveness probe.
fn required_permission(path: &str) -> Option<Permission> {
    match path {
        "/healthz" => None,
        "/turncredential" => Some(Permission::Credential),
        // The allocator service's /allocate hands out a host for /ice.
        "/ice" | "/allocate" => Some(Permission::Ice),
        "/rotate" | "/drain" => Some(Permission::Rotate),
        "/metrics" => Some(Permission::Metrics),
        // /readyz and anything unknown: only callers who may see status
        // learn even that a path does not exist.
        _ => Some(Permission::Status),
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

pub async fn guard(
    State(guard): State<Guard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(permission) = required_permission(request.uri().path()) else {
        return Ok(next.run(request).await);
    };
    let guard = guard.rules.load();
    let forwarded = forwarded_for_lines(request.headers());
    let client = guard.policy.client_address(peer.ip(), &forwarded);
    match guard.policy.decide(client, bearer(&request), permission) {
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
    if matches!(permission, Permission::Credential | Permission::Ice) {
        if let Some(limiter) = &guard.limiter {
            let key = crate::access::rate_limit_key(client, guard.ipv6_prefix);
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::TooManyRequests {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                });
            }
            if limiter.len() > LIMITER_KEYS_BEFORE_SWEEP {
                limiter.retain_recent();
            }
        }
    }
    Ok(next.run(request).await)
}
