//! The allocator's HTTP front and one-shot CLI, for signalling servers not
//! written in Rust: `turn-agent allocator --config FILE` and
//! `turn-agent allocate --zookeeper CONNECT --path P`.
//!
//! Host records and the hosts' answers are hostile input: anyone who can
//! write a znode chooses a host's `restAddr`. `/ice` therefore calls only a
//! unicast `ip:port` that is not this service ([`rest_target`]), never
//! follows a redirect, reads at most [`ice_answer::MAX_BODY_BYTES`] within
//! `ice_timeout`, and hands back only the typed RTCConfiguration fields
//! ([`ice_answer`]). Its own requests carry [`rest_target::HOP_HEADER`],
//! and a request carrying it is refused, so no chain of allocators loops.

pub mod ice_answer;
pub mod rest_target;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::strategy::Selector;
use super::{AllocError, Allocator, AllocatorSettings, Host, Preference, Strategy};
use crate::access::{AccessPolicy, Permission};
use crate::config::{
    positive_duration, validate_server_limits, AccessConfig, ConfigError, ConfigProblem, RawAccess,
    RawServerLimits, ServerLimits,
};
use crate::http::guard::{AccessLayer, ClientSubject, Guard};
use crate::http::{gauge, ApiError};
use crate::log_safe::LogSafe;
use crate::znode::{LogBudget, PayloadLimits};
use ice_answer::{IceAnswer, IceAnswerError, MAX_BODY_BYTES};
use rest_target::{TargetError, HOP_HEADER};

/// `[allocator]` of the allocator service's file.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub listen: SocketAddr,
    pub settings: AllocatorSettings,
    /// Hosts tried by `/ice` before giving up.
    pub ice_attempts: usize,
    pub ice_timeout: Duration,
    pub log_level: String,
    pub access: AccessConfig,
    /// Checked at start for loose permissions, like the agent's secrets.
    pub auth_file: Option<std::path::PathBuf>,
    /// Origins whose pages may call `/allocate` and `/ice` (as the agent's
    /// `api.cors_origins`).
    pub cors: crate::cors::CorsPolicy,
    /// Connection caps, header size and deadlines, as the agent's `[api]`.
    pub limits: ServerLimits,
    /// How long open requests may finish after SIGTERM or SIGINT.
    pub drain_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    allocator: RawService,
    /// Same format as the agent's; the default admits loopback only. Read
    /// as a table first so the service's own rate-limit defaults apply.
    #[serde(default)]
    access: toml::Table,
}

/// The service's per-address rate limit when `[access]` does not set one.
/// Its callers are a few signalling servers, each sending every session's
/// pick from one address, so the agent's 20/s (burst 40) would throttle
/// them; this still stops a runaway loop.
pub const DEFAULT_RATE_LIMIT_PER_SECOND: f64 = 1000.0;
/// Burst of [`DEFAULT_RATE_LIMIT_PER_SECOND`].
pub const DEFAULT_RATE_LIMIT_BURST: i64 = 2000;

/// `[access]` with the service's defaults for the keys it leaves out.
fn service_access(mut table: toml::Table) -> Result<RawAccess, toml::de::Error> {
    table
        .entry("rate_limit_per_second")
        .or_insert(toml::Value::Float(DEFAULT_RATE_LIMIT_PER_SECOND));
    table
        .entry("rate_limit_burst")
        .or_insert(toml::Value::Integer(DEFAULT_RATE_LIMIT_BURST));
    toml::Value::Table(table).try_into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawService {
    listen: String,
    connect: String,
    path: String,
    auth_file: Option<String>,
    session_timeout: String,
    strategy: String,
    min_free_mbps: f64,
    max_staleness: String,
    ice_attempts: i64,
    ice_timeout: String,
    log_level: String,
    max_payload_bytes: i64,
    max_string_chars: i64,
    max_list_items: i64,
    max_hosts: i64,
    cors_origins: Vec<String>,
    cors_max_age: String,
    max_connections: i64,
    max_connections_per_address: i64,
    max_header_bytes: i64,
    header_read_timeout: String,
    request_timeout: String,
    drain_timeout: String,
}

impl Default for RawService {
    fn default() -> Self {
        // The HTTP limits default to the agent's `[api]` defaults.
        let limits = ServerLimits::default();
        RawService {
            listen: "127.0.0.1:8087".into(),
            connect: String::new(),
            path: "/turn/servers".into(),
            auth_file: None,
            session_timeout: "10s".into(),
            strategy: "weighted".into(),
            min_free_mbps: 1.0,
            max_staleness: "60s".into(),
            ice_attempts: 3,
            ice_timeout: "2s".into(),
            log_level: "info".into(),
            max_payload_bytes: PayloadLimits::default().max_payload_bytes as i64,
            max_string_chars: PayloadLimits::default().max_string_chars as i64,
            max_list_items: PayloadLimits::default().max_list_items as i64,
            max_hosts: PayloadLimits::default().max_hosts as i64,
            cors_origins: Vec::new(),
            cors_max_age: "10m".into(),
            max_connections: limits.max_connections as i64,
            max_connections_per_address: limits.max_connections_per_address as i64,
            max_header_bytes: limits.max_header_bytes as i64,
            header_read_timeout: humantime::format_duration(limits.header_read_timeout).to_string(),
            request_timeout: humantime::format_duration(limits.request_timeout).to_string(),
            drain_timeout: "5s".into(),
        }
    }
}

/// Reads and validates the allocator service's file.
pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
    let problem = |key: &str, message: String| ConfigProblem {
        key: key.to_string(),
        message,
    };
    // A FIFO, a device or a huge file is refused before it is read.
    let text = crate::file_checks::read_limited_text(path, crate::file_checks::MAX_CONFIG_BYTES)
        .map_err(|error| ConfigError {
            problems: vec![problem(&path.display().to_string(), error.to_string())],
        })?;
    let raw: RawFile = toml::from_str(&text).map_err(|error| ConfigError {
        problems: vec![problem(
            &path.display().to_string(),
            error
                .message()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )],
    })?;
    let mut problems = Vec::new();
    let access = match service_access(raw.access) {
        Ok(access) => match crate::config::validate_access_section(&access) {
            Ok(access) => Some(access),
            Err(access_problems) => {
                problems.extend(access_problems);
                None
            }
        },
        Err(error) => {
            problems.push(problem(
                "access",
                error
                    .message()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            ));
            None
        }
    };
    let raw = raw.allocator;
    // The agent's duration parser and check, so both files read alike.
    let mut duration = |key: &str, text: &str| {
        positive_duration(key, text).unwrap_or_else(|error| {
            problems.push(error);
            Duration::from_secs(1)
        })
    };
    let session_timeout = duration("allocator.session_timeout", &raw.session_timeout);
    let max_staleness = duration("allocator.max_staleness", &raw.max_staleness);
    let ice_timeout = duration("allocator.ice_timeout", &raw.ice_timeout);
    let cors_max_age = duration("allocator.cors_max_age", &raw.cors_max_age);
    let drain_timeout = duration("allocator.drain_timeout", &raw.drain_timeout);
    let cors =
        crate::cors::CorsPolicy::new(&raw.cors_origins, cors_max_age).unwrap_or_else(|error| {
            problems.push(problem("allocator.cors_origins", error.to_string()));
            crate::cors::CorsPolicy::disabled()
        });
    let listen = raw.listen.parse().unwrap_or_else(|_| {
        problems.push(problem(
            "allocator.listen",
            format!("`{}` is not an ip:port address", raw.listen),
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    if let Err(error) = crate::zookeeper::parse_connect_string(&raw.connect) {
        problems.push(problem("allocator.connect", error.to_string()));
    }
    if let Err(error) = crate::zookeeper::validate_path(&raw.path) {
        problems.push(problem("allocator.path", error.to_string()));
    }
    let strategy: Strategy = raw.strategy.parse().unwrap_or_else(|message| {
        problems.push(problem("allocator.strategy", message));
        Strategy::RoundRobin
    });
    if !(raw.min_free_mbps.is_finite() && raw.min_free_mbps >= 0.0) {
        problems.push(problem(
            "allocator.min_free_mbps",
            "must be a number of at least 0".into(),
        ));
    }
    let ice_attempts = usize::try_from(raw.ice_attempts).unwrap_or(0);
    if !(1..=100).contains(&ice_attempts) {
        problems.push(problem(
            "allocator.ice_attempts",
            "must be between 1 and 100".into(),
        ));
    }
    let mut cap = |key: &str, value: i64, max: i64| match usize::try_from(value) {
        Ok(value) if value >= 1 && value as i64 <= max => value,
        _ => {
            problems.push(problem(key, format!("must be between 1 and {max}")));
            1
        }
    };
    let limits = PayloadLimits {
        // ZooKeeper's own cap on a node's data is 1 MiB (jute.maxbuffer).
        max_payload_bytes: cap(
            "allocator.max_payload_bytes",
            raw.max_payload_bytes,
            1 << 20,
        ),
        max_string_chars: cap("allocator.max_string_chars", raw.max_string_chars, 1 << 16),
        max_list_items: cap("allocator.max_list_items", raw.max_list_items, 1 << 12),
        max_hosts: cap("allocator.max_hosts", raw.max_hosts, 10_000_000),
    };
    let server_limits = validate_server_limits(
        "allocator",
        RawServerLimits {
            max_connections: raw.max_connections,
            max_connections_per_address: raw.max_connections_per_address,
            max_header_bytes: raw.max_header_bytes,
            header_read_timeout: &raw.header_read_timeout,
            request_timeout: &raw.request_timeout,
        },
    )
    .unwrap_or_else(|limit_problems| {
        problems.extend(limit_problems);
        ServerLimits::default()
    });
    let digest = match &raw.auth_file {
        Some(file) => match crate::file_checks::read_limited_text(
            Path::new(file),
            crate::file_checks::MAX_SECRET_FILE_BYTES,
        ) {
            Ok(text) => Some(text.trim().to_string()),
            Err(error) => {
                let file = crate::log_safe::LogSafe::new(file);
                problems.push(problem("allocator.auth_file", format!("`{file}` {error}")));
                None
            }
        },
        None => None,
    };
    let Some(access) = access.filter(|_| problems.is_empty()) else {
        return Err(ConfigError { problems });
    };
    Ok(ServiceConfig {
        access,
        listen,
        settings: AllocatorSettings {
            connect: raw.connect,
            path: raw.path,
            digest,
            session_timeout,
            strategy,
            min_free_mbps: raw.min_free_mbps,
            max_staleness,
            limits,
        },
        ice_attempts,
        ice_timeout,
        log_level: raw.log_level,
        auth_file: raw.auth_file.map(std::path::PathBuf::from),
        cors,
        limits: server_limits,
        drain_timeout,
    })
}

/// How `/ice` reaches the hosts.
#[derive(Debug, Clone)]
pub struct IceFetch {
    /// Hosts tried before giving up, never the same one twice.
    pub attempts: usize,
    /// Deadline for one host's whole answer.
    pub timeout: Duration,
    /// The service's bound address: a host listed there is the service.
    pub listener: SocketAddr,
    /// The service's access policy, for the caller's address behind
    /// trusted proxies, which `/ice` forwards in `X-Forwarded-For`.
    pub policy: AccessPolicy,
}

#[derive(Clone)]
struct ServiceState {
    allocator: Arc<Allocator>,
    http: reqwest::Client,
    ice: Arc<IceFetch>,
    /// Picks among the hosts not yet tried by one `/ice` call.
    retry_selector: Arc<Selector>,
    picks: Family<PickLabels, Counter>,
    fetches: Family<FetchLabels, Counter>,
    metrics: Arc<prometheus_client::registry::Registry>,
}

/// `/ice` fetches from hosts by outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    outcome: &'static str,
}

/// Why a host's `/ice` was not handed out. Nothing of the host's answer is
/// kept: only its status code and our own description.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("answered {0}; redirects are not followed")]
    Redirect(reqwest::StatusCode),
    #[error("answered {0}: busy")]
    Busy(reqwest::StatusCode),
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
    #[error("answered more than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Answer(#[from] IceAnswerError),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot fetch: {0}")]
    Transport(reqwest::Error),
}

impl FetchError {
    fn outcome(&self) -> &'static str {
        match self {
            FetchError::Target(TargetError::OwnListener) => "own_listener",
            FetchError::Target(TargetError::NotUnicast) => "bad_target",
            FetchError::Redirect(_) => "redirect",
            FetchError::Busy(_) => "busy",
            FetchError::Status(_) => "status",
            FetchError::TooLarge => "too_large",
            FetchError::Answer(_) => "bad_answer",
            FetchError::Timeout(_) => "timeout",
            FetchError::Transport(_) => "unreachable",
        }
    }
}

/// Warnings about hosts that failed an `/ice` fetch: callers drive them,
/// so they are rate-limited.
static FETCH_WARNINGS: Mutex<LogBudget> = Mutex::new(LogBudget::new(10, Duration::from_secs(10)));
/// Warnings about refused hop requests.
static HOP_WARNINGS: Mutex<LogBudget> = Mutex::new(LogBudget::new(1, Duration::from_secs(10)));

fn admit(budget: &Mutex<LogBudget>) -> Option<u64> {
    budget
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .admit(std::time::Instant::now())
}

/// Picks by endpoint and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PickLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

impl ServiceState {
    /// Picks and counts the outcome.
    fn pick(&self, endpoint: &'static str, preference: &Preference) -> Result<Host, ApiError> {
        let result = self.allocator.pick(preference);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(AllocError::NoView) => "no_view",
            Err(AllocError::Stale { .. }) => "stale",
            Err(AllocError::NoHost { .. }) => "no_host",
            Err(AllocError::NoSuchPath { .. }) => "no_path",
        };
        self.picks
            .get_or_create(&PickLabels { endpoint, outcome })
            .inc();
        result.map_err(|error| ApiError::Unavailable(error.to_string()))
    }

    /// Picks among the hosts this call has not tried yet (`None` when none
    /// is left), with the configured strategy.
    fn pick_untried(&self, preference: &Preference, tried: &[String]) -> Option<Host> {
        let view = self.allocator.snapshot();
        let untried: Vec<_> = view
            .hosts
            .iter()
            .filter(|host| !tried.contains(&host.node))
            .cloned()
            .collect();
        let settings = self.allocator.settings();
        let picked = self
            .retry_selector
            .select(
                settings.strategy,
                &untried,
                preference,
                settings.min_free_mbps,
            )
            .map(|index| Host::clone(&untried[index]));
        let outcome = if picked.is_some() { "ok" } else { "no_host" };
        self.picks
            .get_or_create(&PickLabels {
                endpoint: "ice",
                outcome,
            })
            .inc();
        picked
    }

    /// One host's `/ice`, as typed fields, within the deadline.
    async fn fetch_ice(
        &self,
        host: &Host,
        username: Option<&str>,
        client: IpAddr,
    ) -> Result<IceAnswer, FetchError> {
        let target = host
            .payload
            .rest_socket_addr()
            .ok_or(TargetError::NotUnicast)?;
        let target = rest_target::check(target, self.ice.listener, rest_target::is_local_address)?;
        let mut url = format!("http://{target}/ice");
        if let Some(user) = username {
            url.push_str("?username=");
            url.push_str(user);
        }
        let fetch = async {
            let mut response = self
                .http
                .get(&url)
                .header(HOP_HEADER, "1")
                .header("x-forwarded-for", client.to_string())
                .send()
                .await
                .map_err(|error| FetchError::Transport(error.without_url()))?;
            let status = response.status();
            if status.is_redirection() {
                return Err(FetchError::Redirect(status));
            }
            if matches!(
                status,
                reqwest::StatusCode::TOO_MANY_REQUESTS | reqwest::StatusCode::SERVICE_UNAVAILABLE
            ) {
                return Err(FetchError::Busy(status));
            }
            if !status.is_success() {
                return Err(FetchError::Status(status));
            }
            if response
                .content_length()
                .is_some_and(|length| length > MAX_BODY_BYTES as u64)
            {
                return Err(FetchError::TooLarge);
            }
            // Read incrementally; stop at the cap instead of buffering it all.
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|error| FetchError::Transport(error.without_url()))?
            {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(FetchError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(IceAnswer::parse(&body)?)
        };
        tokio::time::timeout(self.ice.timeout, fetch)
            .await
            .map_err(|_| FetchError::Timeout(self.ice.timeout))?
    }
}

/// View size and age, read from the allocator at scrape time.
#[derive(Debug)]
struct ViewCollector(Arc<Allocator>);

impl Collector for ViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let view = self.0.snapshot();
        gauge(
            &mut encoder,
            "turn_allocator_view_hosts",
            "hosts in the allocator's view",
            view.hosts.len() as f64,
        )?;
        gauge(
            &mut encoder,
            "turn_allocator_view_age_seconds",
            "time since ZooKeeper last confirmed the view (a listing, watch event or probe on an armed watch)",
            view.age().as_secs_f64(),
        )
    }
}

/// What answers a route: the router maps each to its handler function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Healthz,
    Allocate,
    Ice,
    Hosts,
    FleetPage,
    Metrics,
}

impl Handler {
    /// Every handler, for the check that each is routed exactly once.
    pub const ALL: [Handler; 6] = [
        Handler::Healthz,
        Handler::Allocate,
        Handler::Ice,
        Handler::Hosts,
        Handler::FleetPage,
        Handler::Metrics,
    ];
}

/// One route of the service.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: MethodFilter,
    pub path: &'static str,
    /// What the caller's role needs; `None` is open to everyone.
    pub permission: Option<Permission>,
    pub handler: Handler,
}

/// The service's routes and the permission each needs: the one table both
/// the router ([`router`]) and the access guard read.
pub const ROUTES: [Route; 6] = [
    Route {
        method: MethodFilter::GET,
        path: "/healthz",
        permission: None,
        handler: Handler::Healthz,
    },
    Route {
        method: MethodFilter::GET,
        path: "/allocate",
        permission: Some(Permission::Ice),
        handler: Handler::Allocate,
    },
    Route {
        method: MethodFilter::GET,
        path: "/ice",
        permission: Some(Permission::Ice),
        handler: Handler::Ice,
    },
    Route {
        method: MethodFilter::GET,
        path: "/hosts",
        permission: Some(Permission::Status),
        handler: Handler::Hosts,
    },
    Route {
        method: MethodFilter::GET,
        path: "/",
        permission: Some(Permission::Status),
        handler: Handler::FleetPage,
    },
    Route {
        method: MethodFilter::GET,
        path: "/metrics",
        permission: Some(Permission::Metrics),
        handler: Handler::Metrics,
    },
];

/// The permission a path needs: its route's from [`ROUTES`]. A path that
/// is not routed needs `status`, so only callers who may see status learn
/// even that it does not exist.
pub fn required_permission(path: &str) -> Option<Permission> {
    ROUTES
        .iter()
        .find(|route| route.path == path)
        .map_or(Some(Permission::Status), |route| route.permission)
}

/// The handler function behind a route.
fn method_router(route: &Route) -> MethodRouter<ServiceState> {
    let method = route.method;
    match route.handler {
        Handler::Healthz => on(method, || async { Json(json!({ "status": "ok" })) }),
        Handler::Allocate => on(method, allocate),
        Handler::Ice => on(method, ice),
        Handler::Hosts => on(method, hosts),
        Handler::FleetPage => on(method, fleet_page),
        Handler::Metrics => on(method, metrics_text),
    }
}

/// How long the client to the hosts keeps an idle connection for reuse.
/// An agent closes a keep-alive connection that stays idle for its
/// `header_read_timeout` (5 s by default), and a request sent on it at that
/// moment is reset. Reusing only connections idle for less than this keeps
/// clear of that race for any `header_read_timeout` above it; under steady
/// traffic connections are still reused.
pub const HOST_CONNECTION_IDLE: Duration = Duration::from_secs(1);

/// The client `/ice` asks hosts with: `timeout` for a whole answer, no
/// redirects followed, idle connections reused for [`HOST_CONNECTION_IDLE`].
fn host_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(HOST_CONNECTION_IDLE)
        .build()
        .unwrap_or_default()
}

/// The allocator's routes ([`ROUTES`]) behind the same access guard as the
/// agent's, with the permissions of the same table. In front of the guard,
/// a request carrying the hop header is refused.
pub fn router(allocator: Arc<Allocator>, ice_fetch: IceFetch, guard: Guard) -> Router {
    let http = host_client(ice_fetch.timeout);
    let picks = Family::<PickLabels, Counter>::default();
    let fetches = Family::<FetchLabels, Counter>::default();
    let loops_refused = Counter::default();
    let mut metrics = prometheus_client::registry::Registry::default();
    metrics.register(
        "turn_allocator_picks",
        "picks by endpoint and outcome",
        picks.clone(),
    );
    metrics.register(
        "turn_allocator_ice_fetches",
        "/ice fetches from hosts by outcome",
        fetches.clone(),
    );
    metrics.register(
        "turn_allocator_hop_requests_refused",
        "requests refused because they came from an allocator",
        loops_refused.clone(),
    );
    metrics.register_collector(Box::new(ViewCollector(allocator.clone())));
    ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, method_router(route))
        })
        .with_state(ServiceState {
            allocator,
            http,
            ice: Arc::new(ice_fetch),
            retry_selector: Arc::new(Selector::default()),
            picks,
            fetches,
            metrics: Arc::new(metrics),
        })
        // CORS then the guard, as on the agent (no request metrics here).
        .layer(AccessLayer::new(guard.for_routes(required_permission), ()))
        .layer(axum::middleware::from_fn_with_state(
            loops_refused,
            refuse_hops,
        ))
}

/// An allocator never serves another allocator (nor itself): that is how
/// a `restAddr` pointing at an allocator ends after one request.
async fn refuse_hops(
    State(refused): State<Counter>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !request.headers().contains_key(HOP_HEADER) {
        return Ok(next.run(request).await);
    }
    refused.inc();
    if let Some(suppressed) = admit(&HOP_WARNINGS) {
        tracing::warn!(
            suppressed,
            "refused a request from an allocator: some host's restAddr points at an allocator"
        );
    }
    Err(ApiError::Forbidden(
        "this is an allocator: requests from an allocator are refused".into(),
    ))
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: ServiceConfig) -> anyhow::Result<()> {
    let mut signals = crate::shutdown::Signals::install()?;
    crate::file_checks::warn_if_readable_by_others(
        config
            .access
            .token_files
            .iter()
            .enumerate()
            .map(|(index, path)| (format!("access.tokens[{index}].token_file"), path.as_path()))
            .chain(
                config
                    .auth_file
                    .as_deref()
                    .map(|path| ("allocator.auth_file".to_string(), path)),
            ),
    );
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "allocator listening");
    // A bad path or a path that does not exist stops the service here;
    // an unreachable ZooKeeper does not (the view shows why, and the
    // allocator keeps trying).
    let allocator = Arc::new(Allocator::start(config.settings.clone()).await?);
    let stop = CancellationToken::new();
    let ice = IceFetch {
        attempts: config.ice_attempts,
        timeout: config.ice_timeout,
        listener: listener.local_addr()?,
        policy: config.access.policy.clone(),
    };
    let server = tokio::spawn(crate::http::serve(
        listener,
        router(allocator.clone(), ice, {
            let guard = Guard::new(&config.access);
            guard.set_cors(&config.cors);
            guard
        }),
        config.limits,
        None,
        stop.clone(),
        config.drain_timeout,
    ));
    loop {
        if let crate::shutdown::AgentSignal::Terminate(_) = signals.next().await {
            break;
        }
    }
    stop.cancel();
    // serve itself ends within the drain (it closes what is still open).
    if let Ok(Err(error)) = server.await {
        tracing::warn!(%error, "HTTP server ended with an error");
    }
    // The watcher ends and drops its ZooKeeper session before we exit.
    allocator.close().await;
    Ok(())
}

/// `turn-agent allocate`: one pick, printed as JSON.
pub async fn allocate_once(
    settings: AllocatorSettings,
    preference: Preference,
) -> anyhow::Result<String> {
    let allocator = Allocator::start(settings).await?;
    if !allocator.wait_synced(Duration::from_secs(10)).await {
        let why = allocator
            .status()
            .problem
            .map_or_else(String::new, |problem| format!(": {problem}"));
        anyhow::bail!("cannot read the host list from ZooKeeper within 10 s{why}");
    }
    let host = allocator.pick(&preference)?;
    Ok(serde_json::to_string(&Allocated::from(&host))?)
}

#[derive(Debug, Default, Deserialize)]
struct PickQuery {
    isp: Option<String>,
    region: Option<String>,
    username: Option<String>,
}

impl PickQuery {
    fn preference(&self) -> Preference {
        let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        Preference {
            isp: non_empty(&self.isp),
            region: non_empty(&self.region),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Allocated<'a> {
    node: &'a str,
    rest_addr: &'a str,
    turn_uris: &'a [String],
    free_traffic: f64,
}

impl<'a> From<&'a Host> for Allocated<'a> {
    fn from(host: &'a Host) -> Self {
        Allocated {
            node: &host.node,
            rest_addr: &host.payload.rest_addr,
            turn_uris: &host.payload.turn_uris,
            free_traffic: host.payload.free_traffic,
        }
    }
}

async fn allocate(
    State(state): State<ServiceState>,
    raw: Result<Query<PickQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(request) = raw?;
    let host = state.pick("allocate", &request.preference())?;
    Ok(Json(Allocated::from(&host)).into_response())
}

/// Picks a host and returns its `/ice`, trying the next untried host when
/// one does not answer, is busy (429/503) or answers something else.
async fn ice(
    State(state): State<ServiceState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    subject: Option<axum::Extension<ClientSubject>>,
    raw: Result<Query<PickQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(request) = raw?;
    let preference = request.preference();
    // A client token's `sub` names the caller and wins over `?username=`,
    // as on the agent, so a token holder cannot claim another's name.
    let username = match &subject {
        Some(axum::Extension(ClientSubject(subject))) => Some(subject.as_str()),
        None => request
            .username
            .as_deref()
            .filter(|user| crate::turn_user::is_safe_user(user)),
    };
    let client = state.ice.policy.client_address(
        peer.ip(),
        &crate::http::guard::forwarded_for_lines(&headers),
    );
    let mut tried: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    for attempt in 0..state.ice.attempts {
        let host = if attempt == 0 {
            state.pick("ice", &preference)?
        } else {
            match state.pick_untried(&preference, &tried) {
                Some(host) => host,
                None => break,
            }
        };
        let result = state.fetch_ice(&host, username, client).await;
        let outcome = result.as_ref().map_or_else(FetchError::outcome, |_| "ok");
        state.fetches.get_or_create(&FetchLabels { outcome }).inc();
        match result {
            Ok(answer) => {
                let mut response = Json(answer).into_response();
                response.headers_mut().insert(
                    axum::http::header::CACHE_CONTROL,
                    axum::http::HeaderValue::from_static("no-store"),
                );
                return Ok(response);
            }
            Err(error) => {
                let node = LogSafe::new(&host.node).truncated_at(64);
                if let Some(suppressed) = admit(&FETCH_WARNINGS) {
                    tracing::warn!(%node, %error, suppressed, "host did not hand out ICE servers; trying the next");
                }
                failures.push(format!("{node}: {error}"));
                tried.push(host.node);
            }
        }
    }
    Err(ApiError::Unavailable(format!(
        "no host answered /ice: {}",
        failures.join("; ")
    )))
}

/// The fleet page (permission `status`).
async fn fleet_page(State(state): State<ServiceState>) -> Response {
    let html = super::fleet_page::render(
        &state.allocator.snapshot(),
        state.allocator.settings().min_free_mbps,
        std::time::SystemTime::now(),
    );
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::response::Html(html),
    )
        .into_response()
}

/// Prometheus text (permission `metrics`).
async fn metrics_text(State(state): State<ServiceState>) -> Response {
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &state.metrics);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn hosts(State(state): State<ServiceState>) -> Json<serde_json::Value> {
    let view = state.allocator.snapshot();
    Json(json!({
        "synced": view.synced(),
        "viewAgeMs": view.age().as_millis() as u64,
        "problem": view.problem.as_ref().map(ToString::to_string),
        "hosts": view.hosts.iter().map(|host| json!({
            "node": host.node,
            "payload": host.payload,
        })).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<ServiceConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocator.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    /// A host that answers every request on a connection and counts the
    /// connections it accepted.
    async fn counting_host() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    // One answer per request head, however the reads split it.
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        head.extend_from_slice(&buffer[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn the_host_client_reuses_a_connection_only_while_it_is_freshly_idle() {
        let (addr, accepted) = counting_host().await;
        let client = host_client(Duration::from_secs(2));
        let url = format!("http://{addr}/ice");
        for _ in 0..2 {
            let answer = client.get(&url).send().await.unwrap();
            assert_eq!(answer.text().await.unwrap(), "{}");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Idle for longer than HOST_CONNECTION_IDLE: an agent with a short
        // header_read_timeout may be closing it right now, so a new one.
        // (On real time: the test's network is real too.)
        tokio::time::sleep(HOST_CONNECTION_IDLE + Duration::from_millis(200)).await;
        client.get(&url).send().await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn the_http_limits_and_drain_default_to_what_the_service_always_used() {
        let config = load_text("[allocator]\nconnect = \"127.0.0.1:2181\"\n").unwrap();
        assert_eq!(config.limits, ServerLimits::default());
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_http_limits_and_drain_come_from_the_file() {
        let config = load_text(
            "[allocator]\nconnect = \"127.0.0.1:2181\"\nmax_connections = 7\n\
             max_connections_per_address = 3\nmax_header_bytes = 9000\n\
             header_read_timeout = \"1500ms\"\nrequest_timeout = \"3s\"\ndrain_timeout = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(
            config.limits,
            ServerLimits {
                max_connections: 7,
                max_connections_per_address: 3,
                max_header_bytes: 9000,
                header_read_timeout: Duration::from_millis(1500),
                request_timeout: Duration::from_secs(3),
            }
        );
        assert_eq!(config.drain_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_http_limits_name_their_keys() {
        let error = load_text(
            "[allocator]\nconnect = \"127.0.0.1:2181\"\nmax_connections = 0\n\
             max_connections_per_address = -1\nmax_header_bytes = 100\n\
             header_read_timeout = \"soon\"\nrequest_timeout = \"0s\"\ndrain_timeout = \"0s\"\n",
        )
        .unwrap_err();
        let keys: Vec<_> = error
            .problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        for key in [
            "allocator.max_connections",
            "allocator.max_connections_per_address",
            "allocator.max_header_bytes",
            "allocator.header_read_timeout",
            "allocator.request_timeout",
            "allocator.drain_timeout",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn every_routed_path_has_its_permission_and_every_handler_one_route() {
        for route in &ROUTES {
            assert_eq!(
                required_permission(route.path),
                route.permission,
                "{}",
                route.path
            );
            let same_path = ROUTES.iter().filter(|other| other.path == route.path);
            assert_eq!(same_path.count(), 1, "{} routed twice", route.path);
        }
        for handler in Handler::ALL {
            let routes = ROUTES.iter().filter(|route| route.handler == handler);
            assert_eq!(routes.count(), 1, "{handler:?}");
        }
        // Only the liveness probe is open; what is not routed needs status.
        let open: Vec<_> = ROUTES
            .iter()
            .filter(|route| route.permission.is_none())
            .map(|route| route.path)
            .collect();
        assert_eq!(open, ["/healthz"]);
        for unrouted in ["/nope", "/allocate/", "/healthz/x", "/rotate", ""] {
            assert_eq!(required_permission(unrouted), Some(Permission::Status));
        }
    }

    #[test]
    fn the_permissions_are_the_documented_ones() {
        let needs = |path| required_permission(path);
        assert_eq!(needs("/allocate"), Some(Permission::Ice));
        assert_eq!(needs("/ice"), Some(Permission::Ice));
        assert_eq!(needs("/hosts"), Some(Permission::Status));
        assert_eq!(needs("/"), Some(Permission::Status));
        assert_eq!(needs("/metrics"), Some(Permission::Metrics));
        assert_eq!(needs("/healthz"), None);
    }
}
