//! The allocator's HTTP front and one-shot CLI, for signalling servers not
//! written in Rust: `turn-agent allocator --config FILE` and
//! `turn-agent allocate --zookeeper CONNECT --path P`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::gauge;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{AllocError, Allocator, AllocatorSettings, Host, Preference, Strategy};
use crate::api::ApiError;
use crate::config::{parse_duration, AccessConfig, ConfigError, ConfigProblem, RawAccess};

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    allocator: RawService,
    /// Same format as the agent's; the default admits loopback only.
    #[serde(default)]
    access: RawAccess,
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
}

impl Default for RawService {
    fn default() -> Self {
        RawService {
            listen: "127.0.0.1:8087".into(),
            connect: String::new(),
            path: "/turn/servers".into(),
            auth_file: None,
            session_timeout: "10s".into(),
            strategy: "round-robin".into(),
            min_free_mbps: 1.0,
            max_staleness: "60s".into(),
            ice_attempts: 3,
            ice_timeout: "2s".into(),
            log_level: "info".into(),
        }
    }
}

/// Reads and validates the allocator service's file.
pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
    let problem = |key: &str, message: String| ConfigProblem {
        key: key.to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        problems: vec![problem(
            &path.display().to_string(),
            format!("cannot read: {error}"),
        )],
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
    let access = match crate::config::validate_access_section(&raw.access) {
        Ok(access) => Some(access),
        Err(access_problems) => {
            problems.extend(access_problems);
            None
        }
    };
    let raw = raw.allocator;
    let mut duration = |key: &str, text: &str| match parse_duration(text) {
        Ok(duration) if !duration.is_zero() => duration,
        Ok(_) => {
            problems.push(problem(key, "must be greater than zero".into()));
            Duration::from_secs(1)
        }
        Err(message) => {
            problems.push(problem(key, message));
            Duration::from_secs(1)
        }
    };
    let session_timeout = duration("allocator.session_timeout", &raw.session_timeout);
    let max_staleness = duration("allocator.max_staleness", &raw.max_staleness);
    let ice_timeout = duration("allocator.ice_timeout", &raw.ice_timeout);
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
    let digest = match &raw.auth_file {
        Some(file) => match std::fs::read_to_string(file) {
            Ok(text) => Some(text.trim().to_string()),
            Err(error) => {
                problems.push(problem(
                    "allocator.auth_file",
                    format!("cannot read `{file}`: {error}"),
                ));
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
        },
        ice_attempts,
        ice_timeout,
        log_level: raw.log_level,
    })
}

#[derive(Clone)]
struct ServiceState {
    allocator: Arc<Allocator>,
    http: reqwest::Client,
    ice_attempts: usize,
    picks: Family<PickLabels, Counter>,
    metrics: Arc<prometheus_client::registry::Registry>,
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
        };
        self.picks
            .get_or_create(&PickLabels { endpoint, outcome })
            .inc();
        result.map_err(|error| ApiError::Unavailable(error.to_string()))
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

/// The allocator's routes behind the same access guard as the agent's:
/// `/allocate` and `/ice` need `ice`, `/hosts` needs `status`.
pub fn router(
    allocator: Arc<Allocator>,
    ice_attempts: usize,
    ice_timeout: Duration,
    guard: crate::api::guard::Guard,
) -> Router {
    let http = reqwest::Client::builder()
        .timeout(ice_timeout)
        .build()
        .unwrap_or_default();
    let picks = Family::<PickLabels, Counter>::default();
    let mut metrics = prometheus_client::registry::Registry::default();
    metrics.register(
        "turn_allocator_picks",
        "picks by endpoint and outcome",
        picks.clone(),
    );
    metrics.register_collector(Box::new(ViewCollector(allocator.clone())));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/allocate", get(allocate))
        .route("/ice", get(ice))
        .route("/hosts", get(hosts))
        .route("/", get(fleet_page))
        .route("/metrics", get(metrics_text))
        .with_state(ServiceState {
            allocator,
            http,
            ice_attempts,
            picks,
            metrics: Arc::new(metrics),
        })
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::api::guard::guard,
        ))
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: ServiceConfig) -> anyhow::Result<()> {
    let mut signals = crate::shutdown::Signals::install()?;
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "allocator listening");
    let allocator = Arc::new(Allocator::start(config.settings.clone()));
    let stop = CancellationToken::new();
    let server = tokio::spawn(crate::api::serve(
        listener,
        router(
            allocator,
            config.ice_attempts,
            config.ice_timeout,
            crate::api::guard::Guard::new(&config.access),
        ),
        crate::api::ServerLimits::default(),
        None,
        stop.clone(),
    ));
    loop {
        if let crate::shutdown::AgentSignal::Terminate(_) = signals.next().await {
            break;
        }
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// `turn-agent allocate`: one pick, printed as JSON.
pub async fn allocate_once(
    settings: AllocatorSettings,
    preference: Preference,
) -> anyhow::Result<String> {
    let allocator = Allocator::start(settings);
    if !allocator.wait_synced(Duration::from_secs(10)).await {
        anyhow::bail!("cannot read the host list from ZooKeeper within 10 s");
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

/// Picks a host and returns its `/ice`, trying the next host when one
/// does not answer.
async fn ice(
    State(state): State<ServiceState>,
    raw: Result<Query<PickQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(request) = raw?;
    let preference = request.preference();
    let mut failures = Vec::new();
    for _ in 0..state.ice_attempts {
        let host = state.pick("ice", &preference)?;
        let mut url = format!("http://{}/ice", host.payload.rest_addr);
        if let Some(user) = request
            .username
            .as_deref()
            .filter(|u| crate::credentials::rest_api::is_safe_user(u))
        {
            url.push_str("?username=");
            url.push_str(user);
        }
        match state.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                match response.json::<serde_json::Value>().await {
                    Ok(body) => {
                        let mut response = Json(body).into_response();
                        response.headers_mut().insert(
                            axum::http::header::CACHE_CONTROL,
                            axum::http::HeaderValue::from_static("no-store"),
                        );
                        return Ok(response);
                    }
                    Err(error) => failures.push(format!("{}: {error}", host.node)),
                }
            }
            Ok(response) => failures.push(format!("{}: {}", host.node, response.status())),
            Err(error) => failures.push(format!("{}: {error}", host.node)),
        }
        tracing::warn!(node = %host.node, "host did not hand out ICE servers; trying the next");
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
        "hosts": view.hosts.iter().map(|host| json!({
            "node": host.node,
            "payload": host.payload,
        })).collect::<Vec<_>>(),
    }))
}
