//! `[api]`: where the API listens, its limits, TLS files and CORS.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Validator;
use super::{default_host_name, ConfigProblem, TurnserverConfig};
use crate::cors::CorsPolicy;
use crate::file_checks::MAX_PEM_BYTES;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// What other hosts use to reach the API; `None` means `listen` is
    /// reachable as it is.
    pub advertise: Option<SocketAddr>,
    /// TURN URIs handed to clients in `/ice` and published in ZooKeeper.
    pub turn_uris: Vec<String>,
    pub limits: ServerLimits,
    /// Serve HTTPS with these files; read where they are used (the API's
    /// TLS and `check-config`), not here.
    pub tls: Option<TlsFiles>,
    /// Browser origins that may read the API's answers (off when empty).
    pub cors: crate::cors::CorsPolicy,
}

/// Limits applied to every connection of an HTTP server (the agent's API
/// and the allocator service).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64).
    pub max_connections_per_address: usize,
    /// Upper bound on the request head; 431 beyond it.
    pub max_header_bytes: usize,
    /// Deadline for a request head, also the idle keep-alive timeout and
    /// the TLS handshake deadline.
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
}

/// Where the certificate chain and key live (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    pub turn_uris: Vec<String>,
    pub max_connections: i64,
    pub max_header_bytes: i64,
    pub header_read_timeout: String,
    pub request_timeout: String,
    pub max_connections_per_address: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    pub cors_origins: Vec<String>,
    pub cors_max_age: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

/// `api.listen` and `api.advertise`, checked before the turnserver section
/// so problems keep file order.
pub(super) fn api_addresses(v: &mut Validator, raw: &RawApi) -> (SocketAddr, Option<SocketAddr>) {
    let listen = v.socket_addr("api.listen", &raw.listen);
    let advertise = raw
        .advertise
        .as_deref()
        .map(|text| v.socket_addr("api.advertise", text));
    if let Some(advertise) = advertise {
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            v.problem(
                "api.advertise",
                "must be a concrete ip:port other hosts can reach",
            );
        }
    }
    (listen, advertise)
}

/// The rest of `[api]`; the TURN URIs default from the turnserver section.
pub(super) fn validate_api(
    v: &mut Validator,
    raw: &RawApi,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    turnserver: &TurnserverConfig,
) -> ApiConfig {
    for uri in &raw.turn_uris {
        let scheme_ok = ["turn:", "turns:", "stun:", "stuns:"]
            .iter()
            .any(|scheme| uri.starts_with(scheme));
        if !scheme_ok || uri.contains(char::is_whitespace) {
            v.problem(
                "api.turn_uris",
                format!("`{uri}` is not a turn:, turns:, stun: or stuns: URI"),
            );
        }
    }
    let turn_uris = if raw.turn_uris.is_empty() {
        default_turn_uris(turnserver, advertise)
    } else {
        raw.turn_uris.clone()
    };
    let limits = server_limits(
        v,
        "api",
        RawServerLimits {
            max_connections: raw.max_connections,
            max_connections_per_address: raw.max_connections_per_address,
            max_header_bytes: raw.max_header_bytes,
            header_read_timeout: &raw.header_read_timeout,
            request_timeout: &raw.request_timeout,
        },
    );
    // Only that the files are there and readable: their PEM is parsed
    // where it is used (`api::tls`), once.
    let tls = raw.tls.as_ref().map(|raw_tls| TlsFiles {
        cert: v.readable_file("api.tls.cert", &raw_tls.cert, MAX_PEM_BYTES),
        key: v.readable_file("api.tls.key", &raw_tls.key, MAX_PEM_BYTES),
    });
    let cors_max_age = v.duration("api.cors_max_age", &raw.cors_max_age);
    let cors = CorsPolicy::new(&raw.cors_origins, cors_max_age).unwrap_or_else(|error| {
        v.problem("api.cors_origins", error.to_string());
        CorsPolicy::disabled()
    });
    ApiConfig {
        listen,
        advertise,
        turn_uris,
        limits,
        tls,
        cors,
    }
}
/// `turn:HOST:PORT?transport=udp|tcp` for the address clients reach
/// turnserver on: its listening address when concrete, else the advertised
/// API address, else the relay address, else the host name.
fn default_turn_uris(turnserver: &TurnserverConfig, advertise: Option<SocketAddr>) -> Vec<String> {
    let concrete = |ip: Option<IpAddr>| ip.filter(|ip| !ip.is_unspecified());
    let host = concrete(turnserver.listening_ip)
        .or(concrete(advertise.map(|a| a.ip())))
        .or(concrete(turnserver.relay_ip))
        .map(|ip| match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        })
        .unwrap_or_else(default_host_name);
    let port = turnserver.listening_port;
    vec![
        format!("turn:{host}:{port}?transport=udp"),
        format!("turn:{host}:{port}?transport=tcp"),
    ]
}

/// [`ServerLimits`]' keys as a file writes them: `[api]`'s, and the
/// allocator service's `[allocator]`.
#[derive(Debug, Clone, Copy)]
pub struct RawServerLimits<'a> {
    pub max_connections: i64,
    pub max_connections_per_address: i64,
    pub max_header_bytes: i64,
    pub header_read_timeout: &'a str,
    pub request_timeout: &'a str,
}

/// [`ServerLimits`] from `section`'s keys; problems are named `section.key`.
fn server_limits(v: &mut Validator, section: &str, raw: RawServerLimits<'_>) -> ServerLimits {
    let key = |name: &str| format!("{section}.{name}");
    let max_connections: usize = v.at_least_one(&key("max_connections"), raw.max_connections);
    let max_header_bytes = match usize::try_from(raw.max_header_bytes) {
        Ok(bytes) if (8192..=1 << 20).contains(&bytes) => bytes,
        _ => {
            v.problem(&key("max_header_bytes"), "must be between 8192 and 1048576");
            8192
        }
    };
    ServerLimits {
        max_connections,
        max_header_bytes,
        header_read_timeout: v
            .positive_duration(&key("header_read_timeout"), raw.header_read_timeout),
        request_timeout: v.positive_duration(&key("request_timeout"), raw.request_timeout),
        max_connections_per_address: v.at_least_one(
            &key("max_connections_per_address"),
            raw.max_connections_per_address,
        ),
    }
}

/// The `[api]` checks of [`ServerLimits`] for a file of its own (the
/// allocator service's `[allocator]`).
pub fn validate_server_limits(
    section: &str,
    raw: RawServerLimits<'_>,
) -> Result<ServerLimits, Vec<ConfigProblem>> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    let limits = server_limits(&mut v, section, raw);
    if v.problems.is_empty() {
        Ok(limits)
    } else {
        Err(v.problems)
    }
}
