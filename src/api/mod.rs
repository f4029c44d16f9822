//! The HTTP API: router, handlers, and the server loop.
//!
//! The router is built by [`router`] from shared state so tests can drive it
//! with `tower::ServiceExt::oneshot`; [`serve`] takes an already-bound
//! listener and a shutdown token.

pub mod fast_path;
pub mod ice_filter;
mod rotate;
pub mod sessions;

// The HTTP edge the API stands on lives in `crate::http` (shared with the
// allocator service); these names keep the agent's callers unchanged.
pub use crate::http::{guard, server, tls, trim};

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

pub use crate::http::ApiError;

use crate::credentials::{
    unix_now, CredentialRequest, CredentialSource, IssuedCredential, RotateHandle,
};
use crate::metrics::{AgentMetrics, HttpLabels};
use crate::readiness::Readiness;
use crate::registry::RegistryStatus;

/// What the handlers read. The router holds it behind one `Arc`
/// ([`SharedState`]): axum clones the state for every request, and a clone
/// of this struct would touch every field's reference count.
#[derive(Clone)]
pub struct ApiState {
    pub readiness: Readiness,
    pub registry: watch::Receiver<RegistryStatus>,
    pub credentials: CredentialSource,
    pub rotate: RotateHandle,
    /// Swapped whole on a reload.
    pub turn_uris: Arc<ArcSwap<Vec<String>>>,
    pub metrics: AgentMetrics,
    /// Asks the agent to drain and stop.
    pub drain: tokio::sync::mpsc::Sender<()>,
    /// coturn's CLI: sessions and allocations.
    pub control: crate::control::ControlHandle,
}

/// The router's state: one reference count per clone.
pub type SharedState = Arc<ApiState>;

/// Lets a handler take `State<ApiState>` (a full clone); the hot paths take
/// `State<SharedState>`.
impl axum::extract::FromRef<SharedState> for ApiState {
    fn from_ref(state: &SharedState) -> ApiState {
        ApiState::clone(state)
    }
}

pub use fast_path::Api;

/// The agent's routes behind the access guard: the router, with the fast
/// path for `GET /turncredential` and `GET /ice` in front of it.
pub fn router(state: ApiState, guard: guard::Guard) -> Api {
    let state = Arc::new(state);
    // One service around each route: the request count outermost (it
    // counts refusals too), then CORS (preflights carry no credentials,
    // and refusals of the guard must name the origin), then the guard.
    let access = guard::AccessLayer::new(
        guard.for_routes(required_permission),
        RequestCounter::new(state.metrics.clone()),
    );
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/turncredential", answer_route(credential_answer))
        .route("/ice", answer_route(ice_answer))
        .route("/rotate", post(rotate::rotate))
        .route("/drain", post(drain))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route(
            "/sessions",
            get(sessions::list).delete(sessions::end_by_user),
        )
        .route("/sessions/{id}", delete(sessions::end_one))
        .layer(access.clone())
        .with_state(state.clone());
    Api::new(state, access, router)
}

pub use crate::http::{serve, ServerLimits};

/// The permission an agent path needs; `None` for the open liveness probe.
pub fn required_permission(path: &str) -> Option<crate::access::Permission> {
    use crate::access::Permission;
    match path {
        "/healthz" => None,
        "/turncredential" => Some(Permission::Credential),
        "/ice" => Some(Permission::Ice),
        "/rotate" | "/drain" => Some(Permission::Rotate),
        // Users and addresses of every session, and ending them.
        "/sessions" => Some(Permission::Rotate),
        path if path.starts_with("/sessions/") => Some(Permission::Rotate),
        "/metrics" => Some(Permission::Metrics),
        // /readyz and anything unknown: only callers who may see status
        // learn even that a path does not exist.
        _ => Some(Permission::Status),
    }
}

/// 200 while the agent's HTTP server runs: liveness, not readiness.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 only while turnserver answers STUN and a valid credential can be
/// served; 503 with the reason otherwise.
async fn readyz(State(state): State<SharedState>) -> Response {
    let now = state.readiness.snapshot();
    let reason = now.not_ready_reason();
    let body = json!({
        "status": if reason.is_none() { "ready" } else { "not-ready" },
        "reason": reason,
        "turnserver": now.turnserver,
        "credentials": now.credentials,
        "registry": *state.registry.borrow(),
        "health": now.health,
    });
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct CredentialQuery {
    /// Seconds; REST API mode only, capped by `credentials.max_ttl`.
    ttl: Option<u64>,
    /// REST API mode only: the user part of the username.
    username: Option<String>,
}

/// The JSON existing clients parse.
#[derive(Serialize)]
struct TurnCredentialBody<'a> {
    r#type: &'static str,
    code: &'static str,
    userid: &'a str,
    password: &'a str,
    /// Milliseconds since the epoch.
    expired_time: u64,
}

/// `/ice`'s query: a credential's and the filters.
#[derive(Debug, Deserialize)]
struct IceQuery {
    ttl: Option<u64>,
    username: Option<String>,
    /// `udp`, `tcp`, `tls`, comma-separated.
    transport: Option<String>,
    /// `relay` or `all`.
    policy: Option<String>,
}

/// The subject of a client token wins over `?username=`, so a caller
/// cannot claim another's name (REST API mode; long-term mode ignores both).
fn issue(
    state: &ApiState,
    query: CredentialQuery,
    subject: Option<&guard::ClientSubject>,
) -> Result<IssuedCredential, ApiError> {
    let request = CredentialRequest {
        ttl: query.ttl,
        user: match subject {
            Some(guard::ClientSubject(subject)) => Some(subject.clone()),
            None => query.username,
        },
    };
    state
        .credentials
        .issue(&request, unix_now().as_secs())
        .map_err(|unavailable| ApiError::Unavailable(unavailable.0))
}

/// An answer the fast path gives to `GET` ([`credential_answer`],
/// [`ice_answer`]); the router's route for it ([`answer_route`]) gives it
/// to `HEAD`.
type Answer = fn(&ApiState, &Uri, Option<&guard::ClientSubject>) -> Result<Response, ApiError>;

/// The router's route for `answer`.
fn answer_route(answer: Answer) -> axum::routing::MethodRouter<SharedState> {
    get(
        move |State(state): State<SharedState>,
              subject: Option<Extension<guard::ClientSubject>>,
              uri: Uri| async move {
            answer(
                &state,
                &uri,
                subject.as_ref().map(|Extension(subject)| subject),
            )
        },
    )
}

/// The seed's credential answer for a request to `uri`.
fn credential_answer(
    state: &ApiState,
    uri: &Uri,
    subject: Option<&guard::ClientSubject>,
) -> Result<Response, ApiError> {
    let query = match uri.query() {
        // Most callers send none: nothing to parse.
        None => CredentialQuery {
            ttl: None,
            username: None,
        },
        Some(_) => Query::<CredentialQuery>::try_from_uri(uri)?.0,
    };
    let credential = issue(state, query, subject)?;
    let body = TurnCredentialBody {
        r#type: "result",
        code: "ok",
        userid: &credential.username,
        password: credential.password.expose(),
        expired_time: credential.expires_at.saturating_mul(1000),
    };
    Ok(no_store_json_body(body.to_json()))
}

impl TurnCredentialBody<'_> {
    /// The answer's JSON: written by hand into a buffer of its exact size
    /// when both strings need no escaping (every credential the agent
    /// makes), by serde otherwise; the bytes are the same either way.
    fn to_json(&self) -> Vec<u8> {
        fn plain(text: &str) -> bool {
            text.bytes()
                .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\')
        }
        if ![self.r#type, self.code, self.userid, self.password]
            .into_iter()
            .all(plain)
        {
            return serde_json::to_vec(self).unwrap_or_default();
        }
        let mut digits = itoa::Buffer::new();
        let expired_time = digits.format(self.expired_time).as_bytes();
        let parts: [&[u8]; 11] = [
            b"{\"type\":\"",
            self.r#type.as_bytes(),
            b"\",\"code\":\"",
            self.code.as_bytes(),
            b"\",\"userid\":\"",
            self.userid.as_bytes(),
            b"\",\"password\":\"",
            self.password.as_bytes(),
            b"\",\"expired_time\":",
            expired_time,
            b"}",
        ];
        let mut json = Vec::with_capacity(parts.iter().map(|part| part.len()).sum());
        for part in parts {
            json.extend_from_slice(part);
        }
        json
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IceBody<'a> {
    ice_servers: [IceServer<'a>; 1],
    /// `"relay"` for `?policy=relay`; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    ice_transport_policy: Option<&'static str>,
    /// Seconds the credential stays valid.
    ttl: u64,
    expires_at: String,
}

#[derive(Serialize)]
struct IceServer<'a> {
    urls: &'a [String],
    username: &'a str,
    credential: &'a str,
}

/// An RTCConfiguration fragment WebRTC stacks take as is, filtered by
/// transport (see [`ice_filter`]). A bad filter mints nothing.
fn ice_answer(
    state: &ApiState,
    uri: &Uri,
    subject: Option<&guard::ClientSubject>,
) -> Result<Response, ApiError> {
    let Query(query) = Query::<IceQuery>::try_from_uri(uri)?;
    let filter = ice_filter::IceFilter::parse(query.transport.as_deref(), query.policy.as_deref())
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let turn_uris = filter
        .apply(&state.turn_uris.load())
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let credential = issue(
        state,
        CredentialQuery {
            ttl: query.ttl,
            username: query.username,
        },
        subject,
    )?;
    let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(credential.expires_at);
    let body = IceBody {
        ice_transport_policy: filter.ice_transport_policy(),
        ice_servers: [IceServer {
            urls: &turn_uris,
            username: &credential.username,
            credential: credential.password.expose(),
        }],
        ttl: credential.expires_at.saturating_sub(unix_now().as_secs()),
        expires_at: humantime::format_rfc3339_seconds(expires).to_string(),
    };
    Ok(json_no_store(&body))
}

/// Rotation on demand (permission `rotate`).
async fn rotate(State(state): State<SharedState>) -> Result<Response, ApiError> {
    match state.rotate.rotate().await {
        Ok(credential) => Ok(no_store(
            Json(json!({ "rotated": true, "credential": credential })).into_response(),
        )),
        Err(error) => Err(match error.retry_after_secs() {
            Some(retry_after_secs) => ApiError::TooManyRequests { retry_after_secs },
            None => ApiError::Unavailable(error.to_string()),
        }),
    }
}

/// Starts a drain (permission `rotate`, an operator action); the agent
/// exits once traffic has ended.
async fn drain(State(state): State<SharedState>) -> Result<Response, ApiError> {
    match state.drain.try_send(()) {
        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
            Ok(Json(json!({ "draining": true })).into_response())
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => Err(ApiError::Unavailable(
            "the agent is already stopping".into(),
        )),
    }
}

/// Prometheus text exposition (permission `metrics`).
async fn metrics(State(state): State<SharedState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Everything `/readyz` knows, always 200 (permission `status`).
async fn status(State(state): State<SharedState>) -> Json<serde_json::Value> {
    let now = state.readiness.snapshot();
    let reason = now.not_ready_reason();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": reason.is_none(),
        "reason": reason,
        "turnserver": now.turnserver,
        "credentials": now.credentials,
        "registry": *state.registry.borrow(),
        "health": now.health,
        "control": *state.control.status.borrow(),
    }))
}

/// Counts every answered request by route and status, refusals included.
pub struct RequestCounter {
    metrics: AgentMetrics,
    /// The counters of the fast path's answers that went well, found once
    /// (a lookup by labels hashes them under a lock).
    fast_ok: [std::sync::OnceLock<prometheus_client::metrics::counter::Counter>; 2],
}

impl RequestCounter {
    fn new(metrics: AgentMetrics) -> RequestCounter {
        RequestCounter {
            metrics,
            fast_ok: Default::default(),
        }
    }

    fn counter(
        &self,
        route: std::borrow::Cow<'static, str>,
        status: u16,
    ) -> prometheus_client::metrics::counter::Counter {
        self.metrics
            .http_requests
            .get_or_create(&HttpLabels { route, status })
            .clone()
    }
}

impl guard::Observe for RequestCounter {
    type Mark = std::borrow::Cow<'static, str>;

    fn start<B>(&self, request: &axum::http::Request<B>) -> Self::Mark {
        let matched = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(axum::extract::MatchedPath::as_str);
        // The fast path's requests never met the router.
        let path = request.uri().path();
        route_label(matched.or_else(|| {
            let fast = fast_path::FAST_PATHS.iter().any(|(fast, _)| *fast == path);
            fast.then_some(path)
        }))
    }

    fn finish(&self, route: Self::Mark, response: &Response) {
        let status = response.status().as_u16();
        let fast = match &route {
            std::borrow::Cow::Borrowed(route) if status == 200 => fast_path::FAST_PATHS
                .iter()
                .position(|(fast, _)| fast == route),
            _ => None,
        };
        match fast {
            Some(index) => {
                self.fast_ok[index]
                    .get_or_init(|| self.counter(route, status))
                    .inc();
            }
            None => {
                self.counter(route, status).inc();
            }
        }
    }
}

/// The route as a metrics label: the router's own routes (and
/// `unmatched`) without an allocation, any other path copied.
fn route_label(matched: Option<&str>) -> std::borrow::Cow<'static, str> {
    const ROUTES: [&str; 11] = [
        "/healthz",
        "/readyz",
        "/turncredential",
        "/ice",
        "/rotate",
        "/drain",
        "/metrics",
        "/status",
        "/sessions",
        "/sessions/{id}",
        "unmatched",
    ];
    let matched = matched.unwrap_or("unmatched");
    match ROUTES.iter().find(|route| **route == matched) {
        Some(route) => std::borrow::Cow::Borrowed(route),
        None => std::borrow::Cow::Owned(matched.to_owned()),
    }
}

/// Room for a credential answer (about 140 bytes; `/ice` with a few URLs
/// a little more), so serializing it does not grow the buffer.
const CREDENTIAL_BODY_CAPACITY: usize = 512;

/// A credential answer as JSON, not to be cached: written into one buffer
/// sized for it, with static header values (what `Json` and [`no_store`]
/// do, without growing a 128-byte buffer on the way).
fn json_no_store(body: &impl Serialize) -> Response {
    let mut buffer = Vec::with_capacity(CREDENTIAL_BODY_CAPACITY);
    if let Err(error) = serde_json::to_writer(&mut buffer, body) {
        return ApiError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: format!("the answer did not serialize: {error}"),
        }
        .into_response();
    }
    no_store_json_body(buffer)
}

/// `json` as an answer not to be cached. A buffer whose length is its
/// capacity becomes the body without another allocation.
fn no_store_json_body(json: Vec<u8>) -> Response {
    let mut response = Response::new(axum::body::Body::from(json));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Credentials must not sit in any cache.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests;
