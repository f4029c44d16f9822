//! CORS for browser clients (pure): which origins may read the API's
//! answers, and what a preflight is told.
//!
//! Origins are compared exactly (scheme, host and port as the browser sends
//! them; no wildcards, no `null`). With no origins configured the API
//! behaves as before CORS existed: no CORS headers, and `Origin` is ignored.
//! Once origins are configured, a request that carries an `Origin` not in
//! the list is refused before anything is minted, and every answer says
//! `Vary: Origin` so caches keep answers per origin.

use std::time::Duration;

/// Methods a preflight may ask for.
pub const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";
/// Request headers a page may send: the bearer token.
pub const ALLOWED_HEADERS: &str = "authorization";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("`{0}` is not an origin: expected scheme://host[:port] with no path")]
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    origins: Vec<String>,
    max_age: Duration,
}

/// What to do with one request's `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// CORS is off, or the request has no `Origin` (servers, same-origin
    /// GETs): serve exactly as without CORS.
    NotCors,
    /// An allowed origin: serve, and name it in `Access-Control-Allow-Origin`.
    Allowed(String),
    /// An origin not in the list: 403, no CORS headers, nothing minted.
    Refused,
}

impl CorsPolicy {
    /// Checks and normalises the configured origins (lowercase scheme and
    /// host, no trailing slash).
    pub fn new(origins: &[String], max_age: Duration) -> Result<CorsPolicy, OriginError> {
        let origins = origins
            .iter()
            .map(|origin| normalise(origin).ok_or_else(|| OriginError::Malformed(origin.clone())))
            .collect::<Result<_, _>>()?;
        Ok(CorsPolicy { origins, max_age })
    }

    pub fn disabled() -> CorsPolicy {
        CorsPolicy {
            origins: Vec::new(),
            max_age: Duration::ZERO,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// `origin` is the raw header value, when the request had one. Several
    /// `Origin` headers are the caller's to refuse (a browser sends one).
    pub fn decide(&self, origin: Option<&[u8]>) -> CorsDecision {
        if !self.is_enabled() {
            return CorsDecision::NotCors;
        }
        let Some(origin) = origin else {
            return CorsDecision::NotCors;
        };
        let allowed = std::str::from_utf8(origin)
            .ok()
            .and_then(normalise)
            .filter(|origin| self.origins.contains(origin));
        match allowed {
            Some(origin) => CorsDecision::Allowed(origin),
            None => CorsDecision::Refused,
        }
    }
}

/// `https://App.Example:8443/` -> `https://app.example:8443`; `None` for
/// anything that is not a plain http(s) origin.
fn normalise(origin: &str) -> Option<String> {
    let origin = origin.strip_suffix('/').unwrap_or(origin);
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (address, port) = bracketed.split_once(']')?;
            address.parse::<std::net::Ipv6Addr>().ok()?;
            (&authority[..address.len() + 2], port)
        }
        None => match authority.split_once(':') {
            Some((host, _)) => (host, &authority[host.len()..]),
            None => (authority, ""),
        },
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|port| port.parse::<u16>().is_ok());
    (host_ok && port_ok).then(|| format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(origins: &[&str]) -> CorsPolicy {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        CorsPolicy::new(&origins, Duration::from_secs(600)).unwrap()
    }

    #[test]
    fn without_origins_nothing_changes() {
        let off = CorsPolicy::disabled();
        assert_eq!(
            off.decide(Some(b"https://evil.example")),
            CorsDecision::NotCors
        );
        assert_eq!(off.decide(None), CorsDecision::NotCors);
    }

    #[test]
    fn exact_origins_only() {
        let cors = policy(&["https://app.example", "http://localhost:8080"]);
        assert_eq!(
            cors.decide(Some(b"https://app.example")),
            CorsDecision::Allowed("https://app.example".into())
        );
        assert_eq!(
            cors.decide(Some(b"HTTPS://APP.example")),
            CorsDecision::Allowed("https://app.example".into())
        );
        assert_eq!(
            cors.decide(Some(b"http://localhost:8080")),
            CorsDecision::Allowed("http://localhost:8080".into())
        );
        for refused in [
            &b"https://app.example.evil"[..],
            b"https://evil.app.example",
            b"http://app.example",
            b"https://app.example:444",
            b"null",
            b"",
            b"https://app.example\r\nX: y",
            b"\xff\xfe",
        ] {
            assert_eq!(
                cors.decide(Some(refused)),
                CorsDecision::Refused,
                "{refused:?}"
            );
        }
        assert_eq!(cors.decide(None), CorsDecision::NotCors);
    }

    #[test]
    fn malformed_configured_origins_are_refused() {
        for bad in [
            "app.example",
            "https://app.example/path",
            "ftp://x",
            "*",
            "null",
            "https://",
        ] {
            assert!(
                CorsPolicy::new(&[bad.to_string()], Duration::ZERO).is_err(),
                "{bad}"
            );
        }
        assert!(CorsPolicy::new(&["https://[::1]:8443".to_string()], Duration::ZERO).is_ok());
    }

    proptest! {
        /// Only a listed origin is ever allowed, and it is echoed as listed.
        #[test]
        fn only_listed_origins_are_allowed(origin in proptest::collection::vec(any::<u8>(), 0..40)) {
            let cors = policy(&["https://app.example"]);
            match cors.decide(Some(&origin)) {
                CorsDecision::Allowed(echoed) => prop_assert_eq!(echoed, "https://app.example"),
                CorsDecision::Refused => {}
                CorsDecision::NotCors => prop_assert!(false, "an Origin with CORS on is decided"),
            }
        }
    }
}
