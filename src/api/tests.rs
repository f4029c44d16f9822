//! Router tests without sockets: `oneshot` requests with a mock peer address.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tokio::sync::watch;
use tower::ServiceExt;

use super::*;
use crate::config::CredentialMode;
use crate::credentials::state_file::LongTermCredential;
use crate::credentials::{rest_api, CredentialStatus};
use crate::readiness::Readiness;
use crate::secret::Secret;
use crate::supervisor::{Phase, SupervisorStatus};

/// What the tests send requests to: the agent's routes, with or without
/// the edge around them.
trait Routes:
    tower::Service<
        Request<Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
{
}

impl<S> Routes for S where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone
        + Send
{
}

struct Fixture {
    app: Api,
    supervisor: watch::Sender<SupervisorStatus>,
    credential_status: watch::Sender<CredentialStatus>,
}

fn status(mode: CredentialMode, available: bool) -> CredentialStatus {
    CredentialStatus {
        available,
        ..CredentialStatus::new(mode)
    }
}

/// The router as `peer` sees it, without a rate limit.
fn fixture(source: CredentialSource, peer: [u8; 4]) -> Fixture {
    let fixture = without_peer(source, 0.0);
    Fixture {
        app: fixture.app.with_mock_peer(SocketAddr::from((peer, 40000))),
        ..fixture
    }
}

/// The router with fixed statuses and the given rate limit; callers add
/// the peer address.
fn without_peer(source: CredentialSource, rate_limit_per_second: f64) -> Fixture {
    with_access(source, access(rate_limit_per_second))
}

/// The router with fixed statuses and the given access rules.
fn with_access(source: CredentialSource, access: crate::config::AccessConfig) -> Fixture {
    with_guard(source, guard::Guard::new(&access))
}

/// The router with fixed statuses behind `guard`.
fn with_guard(source: CredentialSource, guard: guard::Guard) -> Fixture {
    let (supervisor, supervisor_receiver) = watch::channel(SupervisorStatus::default());
    let (credential_status, status_receiver) =
        watch::channel(status(CredentialMode::LongTerm, true));
    let (rotate, mut requests) = RotateHandle::detached();
    tokio::spawn(async move {
        while let Some(reply) = requests.recv().await {
            let _ = reply.send(Ok(crate::credentials::Rotated::to("ta1-9-new")));
        }
    });
    let (_, registry) = watch::channel(crate::registry::RegistryStatus::default());
    let (_, health) = watch::channel(crate::self_check::HealthStatus::default());
    let readiness = Readiness {
        supervisor: supervisor_receiver,
        credentials: status_receiver,
        health,
    };
    let metrics =
        crate::metrics::AgentMetrics::new(readiness.clone(), registry.clone(), Default::default());
    let state = ApiState {
        drain: tokio::sync::mpsc::channel(1).0,
        control: crate::control::ControlHandle::disabled(),
        readiness,
        metrics,
        registry,
        credentials: source,
        rotate,
        turn_uris: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(vec![
            "turn:192.0.2.1:3478?transport=udp".into(),
            "turn:192.0.2.1:3478?transport=tcp".into(),
        ])),
    };
    let app = router(state, guard);
    Fixture {
        app,
        supervisor,
        credential_status,
    }
}

/// Loopback is admin, 10.0.0.0/8 is user; rate limit as given (0 = off).
fn access(rate_limit_per_second: f64) -> crate::config::AccessConfig {
    use crate::access::{builtin_roles, AccessPolicy, AddrPattern};
    crate::config::AccessConfig {
        policy: AccessPolicy {
            allow: vec![
                (AddrPattern::parse("127.0.0.1").unwrap(), 0),
                (AddrPattern::parse("10.0.0.0/8").unwrap(), 1),
            ],
            roles: builtin_roles(),
            tokens: Vec::new(),
            trusted_proxies: Vec::new(),
        },
        rate_limit_per_second,
        rate_limit_burst: 2,
        rate_limit_ipv6_prefix: 64,
        token_files: Vec::new(),
        client_tokens: None,
    }
}

fn long_term(expires_at: u64) -> CredentialSource {
    CredentialSource::fixed_long_term(Some(LongTermCredential {
        username: format!("ta1-{expires_at}-abc"),
        password: Secret::new("p\"w\\d"),
        issued_at: 0,
        expires_at,
    }))
}

async fn call<S: Routes>(
    app: &S,
    method: &str,
    uri: &str,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

fn far_future() -> u64 {
    unix_now().as_secs() + 3600
}

#[tokio::test]
async fn turncredential_has_the_shape_existing_clients_parse() {
    let expires_at = far_future();
    let f = fixture(long_term(expires_at), [127, 0, 0, 1]);
    let (status, headers, body) = call(&f.app, "GET", "/turncredential").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["type"], "result");
    assert_eq!(body["code"], "ok");
    assert_eq!(body["userid"], format!("ta1-{expires_at}-abc"));
    // Quotes and backslashes survive: the body is encoded, not string-built.
    assert_eq!(body["password"], "p\"w\\d");
    assert_eq!(body["expired_time"], expires_at * 1000);
}

#[tokio::test]
async fn no_credential_yet_is_503_in_the_same_shape() {
    let f = fixture(CredentialSource::fixed_long_term(None), [127, 0, 0, 1]);
    let (status, headers, body) = call(&f.app, "GET", "/turncredential").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["type"], "result");
    assert_eq!(body["code"], "unavailable");
    assert!(body["reason"].as_str().unwrap().contains("no credential"));
}

#[tokio::test]
async fn expired_long_term_credential_is_not_served() {
    let f = fixture(long_term(unix_now().as_secs() - 1), [127, 0, 0, 1]);
    let (status, _, _) = call(&f.app, "GET", "/turncredential").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn ice_is_an_rtc_configuration_fragment() {
    let expires_at = far_future();
    let f = fixture(long_term(expires_at), [127, 0, 0, 1]);
    let (status, _, body) = call(&f.app, "GET", "/ice").await;
    assert_eq!(status, StatusCode::OK);
    let server = &body["iceServers"][0];
    assert_eq!(server["urls"][0], "turn:192.0.2.1:3478?transport=udp");
    assert_eq!(server["urls"][1], "turn:192.0.2.1:3478?transport=tcp");
    assert_eq!(server["username"], format!("ta1-{expires_at}-abc"));
    assert_eq!(server["credential"], "p\"w\\d");
    let ttl = body["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "{ttl}");
    let expires = humantime::parse_rfc3339(body["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at)
    );
}

#[tokio::test]
async fn rest_api_credentials_are_minted_per_request_and_capped() {
    let f = fixture(
        CredentialSource::fixed_rest_api("north", 600, 3600),
        [127, 0, 0, 1],
    );
    let now = unix_now().as_secs();
    let (status, _, body) = call(&f.app, "GET", "/turncredential?username=alice&ttl=100").await;
    assert_eq!(status, StatusCode::OK);
    let userid = body["userid"].as_str().unwrap();
    let (expiry, user) = userid.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now + 100..=now + 101).contains(&expiry));
    let (_, expected) = rest_api::mint(&Secret::new("north"), "alice", expiry);
    assert_eq!(body["password"], expected.expose());
    assert_eq!(body["expired_time"], expiry * 1000);

    // Above max_ttl: capped. Unsafe user: replaced by a random one.
    let (_, _, body) = call(&f.app, "GET", "/turncredential?username=a:b&ttl=999999").await;
    let (expiry, user) = body["userid"].as_str().unwrap().split_once(':').unwrap();
    assert!(expiry.parse::<u64>().unwrap() <= now + 3601);
    assert_ne!(user, "a:b");
    assert!(rest_api::is_safe_user(user));
}

#[tokio::test]
async fn bad_query_is_400() {
    let f = fixture(
        CredentialSource::fixed_rest_api("north", 600, 3600),
        [127, 0, 0, 1],
    );
    let (status, _, body) = call(&f.app, "GET", "/turncredential?ttl=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "bad_request");
}

#[tokio::test]
async fn rotate_needs_the_rotate_permission() {
    let f = fixture(long_term(far_future()), [127, 0, 0, 1]);
    let (status, _, body) = call(&f.app, "POST", "/rotate").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["credential"], "ta1-9-new");

    let f = fixture(long_term(far_future()), [10, 1, 2, 3]);
    let (status, _, body) = call(&f.app, "POST", "/rotate").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "forbidden");
    let (status, _, _) = call(&f.app, "GET", "/turncredential").await;
    assert_eq!(status, StatusCode::OK, "a user may fetch credentials");

    let f = fixture(long_term(far_future()), [192, 0, 2, 9]);
    let (status, headers, body) = call(&f.app, "POST", "/rotate").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = call(&f.app, "GET", "/healthz").await;
    assert_eq!(status, StatusCode::OK, "liveness stays open");
}

#[tokio::test]
async fn credential_endpoints_are_rate_limited_per_address() {
    let app = without_peer(long_term(far_future()), 1.0).app;
    let from = |peer: [u8; 4]| app.clone().with_mock_peer(SocketAddr::from((peer, 1)));
    let limited = from([10, 0, 0, 1]);
    for _ in 0..2 {
        assert_eq!(
            call(&limited, "GET", "/turncredential").await.0,
            StatusCode::OK
        );
    }
    let (status, headers, body) = call(&limited, "GET", "/ice").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "too_many_requests");
    assert_eq!(headers["retry-after"], "1");
    // Another address has its own budget.
    assert_eq!(
        call(&from([10, 0, 0, 2]), "GET", "/turncredential").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn readyz_needs_turnserver_and_a_credential() {
    let f = fixture(long_term(far_future()), [127, 0, 0, 1]);
    let (status, _, body) = call(&f.app, "GET", "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "turnserver is starting");

    f.supervisor.send_modify(|s| {
        s.phase = Phase::Ready;
        s.pid = Some(42);
    });
    let (status, _, body) = call(&f.app, "GET", "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["turnserver"]["pid"], 42);

    f.credential_status.send_modify(|s| {
        s.available = false;
        s.last_error = Some("rotation failed: turnadmin add user failed: ERROR: x".into());
    });
    let (status, _, body) = call(&f.app, "GET", "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["reason"].as_str().unwrap().contains("rotation failed"));
    assert_eq!(
        body["credentials"]["last_error"],
        "rotation failed: turnadmin add user failed: ERROR: x"
    );

    let (status, _, body) = call(&f.app, "GET", "/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
}

#[tokio::test]
async fn metrics_and_status_need_their_permissions() {
    let f = fixture(long_term(far_future()), [127, 0, 0, 1]);
    call(&f.app, "GET", "/turncredential").await;
    let response = f
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains("turn_agent_turnserver_up 0"), "{text}");
    assert!(
        text.contains("turn_agent_http_requests_total{route=\"/turncredential\",status=\"200\"} 1"),
        "{text}"
    );
    let (status, _, body) = call(&f.app, "GET", "/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], false);

    let user = fixture(long_term(far_future()), [10, 0, 0, 1]);
    assert_eq!(
        call(&user.app, "GET", "/metrics").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&user.app, "GET", "/status").await.0,
        StatusCode::FORBIDDEN
    );
}

/// The router behind a trusted proxy at 10.9.9.9, with the given rate
/// limit; IPv6 callers of 2001:db8::/32 are users.
fn behind_proxy(rate_limit_per_second: f64) -> Api {
    use crate::access::AddrPattern;
    let mut access = access(rate_limit_per_second);
    access.policy.trusted_proxies = vec![AddrPattern::parse("10.9.9.9").unwrap()];
    access
        .policy
        .allow
        .push((AddrPattern::parse("2001:db8::/32").unwrap(), 1));
    with_access(long_term(far_future()), access)
        .app
        .with_mock_peer(SocketAddr::from(([10, 9, 9, 9], 40000)))
}

async fn call_with<S: Routes>(
    app: &S,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

fn forwarded(method: &str, uri: &str, lines: &[&str]) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    for line in lines {
        request = request.header("x-forwarded-for", *line);
    }
    request.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn a_second_forwarded_for_line_cannot_claim_admin() {
    let app = behind_proxy(0.0);
    // The client's own line says loopback (admin); the proxy's line says
    // who really called: a user, or nobody known.
    let (status, _, body) = call_with(
        &app,
        forwarded("POST", "/rotate", &["127.0.0.1", "10.1.2.3"]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, body) = call_with(
        &app,
        forwarded("POST", "/rotate", &["127.0.0.1", "192.0.2.7"]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Garbage where it matters: nobody named, no role (not the proxy's,
    // which is in 10.0.0.0/8, a user).
    let (status, _, _) = call_with(
        &app,
        forwarded("POST", "/rotate", &["127.0.0.1", "unknown"]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A line that is not text is garbage too.
    let request = Request::post("/rotate")
        .header("x-forwarded-for", "127.0.0.1")
        .header(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff10.1.2.3").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(call_with(&app, request).await.0, StatusCode::UNAUTHORIZED);
    // A loopback address is never taken from a header, not even as the
    // only entry; nor does a proxy that names nobody lend its own role.
    for lines in [&["127.0.0.1"][..], &["::1"][..], &[][..], &["10.9.9.9"][..]] {
        let (status, _, body) = call_with(&app, forwarded("GET", "/turncredential", lines)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{lines:?}: {body}");
        assert!(body.get("password").is_none());
    }
    // A caller the proxy names is served by its own role.
    let (status, _, body) =
        call_with(&app, forwarded("GET", "/turncredential", &["10.1.2.3"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn ipv6_callers_share_a_budget_per_64_and_forwarded_callers_have_their_own() {
    let app = behind_proxy(1.0);
    let mut statuses = std::collections::BTreeMap::new();
    for host in 0..200u32 {
        let client = format!("2001:db8:0:1:{:x}:{:x}::1", host >> 8, host & 0xff);
        let (status, _, _) = call_with(&app, forwarded("GET", "/turncredential", &[&client])).await;
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    // Burst 2, 1/s: the /64 gets about two answers, not 200.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) <= 3,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 197,
        "{statuses:?}"
    );
    // Another /64 has its own budget.
    let (status, _, _) = call_with(
        &app,
        forwarded("GET", "/turncredential", &["2001:db8:0:2::1"]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // 50 IPv4 callers through the one proxy are 50 budgets.
    for caller in 0..50 {
        let client = format!("10.2.0.{caller}");
        let (status, _, body) =
            call_with(&app, forwarded("GET", "/turncredential", &[&client])).await;
        assert_eq!(status, StatusCode::OK, "{client}: {body}");
    }
}

/// The JSON rendering `serve` puts around every router, on a router with
/// routes that answer the way the stack's own layers do.
#[tokio::test]
async fn every_error_the_stack_produces_is_json() {
    let f = fixture(long_term(far_future()), [127, 0, 0, 1]);
    let app = f.app.map_router(|router| {
        router
            .route(
                "/too-large",
                get(|| async { StatusCode::PAYLOAD_TOO_LARGE }),
            )
            .route(
                "/plain",
                get(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "plain words") }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    "late"
                }),
            )
    });
    let app = tower::Layer::layer(
        &crate::http::edge::EdgeLayer::new(8192, std::time::Duration::from_millis(50)),
        app,
    );
    let table = [
        ("GET", "/nowhere", 404, "not_found"),
        ("GET", "/rotate", 405, "method_not_allowed"),
        ("DELETE", "/turncredential", 405, "method_not_allowed"),
        ("GET", "/too-large", 413, "payload_too_large"),
        ("GET", "/plain", 422, "client_error"),
        ("GET", "/slow", 408, "request_timeout"),
        ("GET", "/turncredential?ttl=soon", 400, "bad_request"),
    ];
    for (method, uri, status, code) in table {
        let (got, headers, body) = call(&app, method, uri).await;
        assert_eq!(got.as_u16(), status, "{method} {uri}: {body}");
        assert_eq!(
            headers["content-type"], "application/json",
            "{method} {uri}"
        );
        assert_eq!(body["type"], "result", "{method} {uri}: {body}");
        assert_eq!(body["code"], code, "{method} {uri}: {body}");
        assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let (_, headers, body) = call(&app, "GET", "/rotate").await;
    assert_eq!(headers["allow"], "POST", "{body}");
    let (_, _, body) = call(&app, "GET", "/plain").await;
    assert_eq!(body["reason"], "plain words");
    // A head over the limit: 431 in the same shape.
    let app = tower::Layer::layer(
        &crate::http::edge::EdgeLayer::new(8192, std::time::Duration::from_secs(10)),
        fixture(long_term(far_future()), [127, 0, 0, 1]).app,
    );
    let request = Request::get("/healthz")
        .header("x-padding", "a".repeat(9000))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = call_with(&app, request).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["code"], "request_header_fields_too_large");
}

// ---------------------------------------------------------------------------
// Browsers: CORS, client tokens, /ice filters
// ---------------------------------------------------------------------------

const APP_ORIGIN: &str = "https://app.example";
const AUDIENCE: &str = "turn1.example:8086";
/// Not in the allow list.
const BROWSER: [u8; 4] = [203, 0, 113, 5];

fn cors_policy() -> crate::cors::CorsPolicy {
    crate::cors::CorsPolicy::new(
        &[APP_ORIGIN.to_string()],
        std::time::Duration::from_secs(600),
    )
    .unwrap()
}

/// A REST API source behind a guard with CORS for [`APP_ORIGIN`], client
/// tokens verified with `public_key` (role `user`, 10 min), the given rate
/// limit, seen from `peer`.
fn browser_app(peer: [u8; 4], public_key: Option<Vec<u8>>, rate_limit_per_second: f64) -> Api {
    let mut access = access(rate_limit_per_second);
    access.client_tokens = public_key.map(|public_key| crate::config::ClientTokensConfig {
        public_key_files: Vec::new(),
        public_keys: vec![public_key],
        audience: AUDIENCE.into(),
        role: 1,
        max_lifetime: std::time::Duration::from_secs(600),
    });
    let guard = guard::Guard::new(&access);
    guard.set_cors(&cors_policy());
    with_guard(CredentialSource::fixed_rest_api("north", 600, 3600), guard)
        .app
        .with_mock_peer(SocketAddr::from((peer, 40000)))
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).unwrap()
}

fn varies_by_origin(headers: &axum::http::HeaderMap) -> bool {
    headers.get_all("vary").iter().any(|value| {
        value
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin")
    })
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_before_access_checks() {
    let app = browser_app(BROWSER, None, 0.0);
    for path in ["/ice", "/turncredential"] {
        let (status, headers, _) = call_with(
            &app,
            request(
                "OPTIONS",
                path,
                &[
                    ("origin", APP_ORIGIN),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "authorization"),
                ],
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}");
        assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
        assert!(headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET"));
        assert!(headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization"));
        assert_eq!(headers["access-control-max-age"], "600");
        assert!(varies_by_origin(&headers));
    }
}

#[tokio::test]
async fn a_preflight_from_a_foreign_origin_is_403_without_cors_headers() {
    let app = browser_app([127, 0, 0, 1], None, 0.0);
    let (status, headers, body) = call_with(
        &app,
        request(
            "OPTIONS",
            "/ice",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "forbidden");
    assert!(headers.get("access-control-allow-origin").is_none());
    assert!(headers.get("access-control-allow-methods").is_none());
    assert!(varies_by_origin(&headers));
}

#[tokio::test]
async fn refusals_to_an_allowed_origin_name_it() {
    // 401: not in the allow list.
    let app = browser_app(BROWSER, None, 0.0);
    let (status, headers, body) =
        call_with(&app, request("GET", "/ice", &[("origin", APP_ORIGIN)])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    assert!(varies_by_origin(&headers));
    // 403: a user may not rotate.
    let app = browser_app([10, 0, 0, 1], None, 0.0);
    let (status, headers, _) =
        call_with(&app, request("POST", "/rotate", &[("origin", APP_ORIGIN)])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    // 429, with Retry-After readable by the page.
    let app = browser_app([10, 0, 0, 1], None, 0.001);
    let mut last = None;
    for _ in 0..3 {
        last = Some(call_with(&app, request("GET", "/ice", &[("origin", APP_ORIGIN)])).await);
    }
    let (status, headers, _) = last.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    assert_eq!(headers["access-control-expose-headers"], "retry-after");
    // 404, rewritten into JSON by the server's layer, keeps them too.
    let app = browser_app([127, 0, 0, 1], None, 0.0);
    let (status, headers, _) =
        call_with(&app, request("GET", "/nope", &[("origin", APP_ORIGIN)])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    assert!(varies_by_origin(&headers));
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_anything_is_minted_or_counted() {
    // Burst 2 at a very low rate: a refused request must not use it up.
    let app = browser_app([127, 0, 0, 1], None, 0.001);
    for _ in 0..5 {
        let (status, headers, body) = call_with(
            &app,
            request(
                "GET",
                "/turncredential",
                &[("origin", "https://evil.example")],
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["code"], "forbidden");
        assert!(body.get("password").is_none());
        assert!(headers.get("access-control-allow-origin").is_none());
    }
    for _ in 0..2 {
        let (status, _, body) = call_with(
            &app,
            request("GET", "/turncredential", &[("origin", APP_ORIGIN)]),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Several Origin lines are not a browser's: refused, even if each is allowed.
    let (status, headers, _) = call_with(
        &app,
        request(
            "GET",
            "/healthz",
            &[("origin", APP_ORIGIN), ("origin", APP_ORIGIN)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn requests_without_origin_are_answered_as_without_cors() {
    let expires_at = far_future();
    let plain = fixture(long_term(expires_at), [127, 0, 0, 1]).app;
    let guard = guard::Guard::new(&access(0.0));
    guard.set_cors(&cors_policy());
    let with_cors = with_guard(long_term(expires_at), guard)
        .app
        .with_mock_peer(SocketAddr::from(([127, 0, 0, 1], 40000)));
    for (method, uri) in [
        ("GET", "/turncredential"),
        ("GET", "/nope"),
        ("OPTIONS", "/ice"),
    ] {
        let (status, headers, body) = call(&plain, method, uri).await;
        let (cors_status, cors_headers, cors_body) = call(&with_cors, method, uri).await;
        assert_eq!(status, cors_status, "{method} {uri}");
        assert_eq!(body, cors_body, "{method} {uri}");
        assert!(!varies_by_origin(&headers));
        assert!(varies_by_origin(&cors_headers));
        assert!(cors_headers.get("access-control-allow-origin").is_none());
    }
    // CORS off: an Origin changes nothing.
    let (status, headers, _) = call_with(
        &plain,
        request(
            "GET",
            "/turncredential",
            &[("origin", "https://evil.example")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn with_cors_off_a_browser_cannot_post_on_behalf_of_an_allowed_address() {
    // Loopback is admin; a page elsewhere makes the browser POST a form.
    let f = fixture(long_term(far_future()), [127, 0, 0, 1]);
    for header in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let (status, _, body) = call_with(&f.app, request("POST", "/rotate", &[header])).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{header:?}: {body}");
        assert_eq!(body["code"], "forbidden");
        let (status, _, _) = call_with(&f.app, request("POST", "/drain", &[header])).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{header:?}");
    }
    // Servers and the CLI send neither; a typed URL says `none`.
    let (status, _, body) = call(&f.app, "POST", "/rotate").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = call_with(
        &f.app,
        request("POST", "/rotate", &[("sec-fetch-site", "none")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Reads stay as they were.
    let (status, _, _) = call_with(
        &f.app,
        request(
            "GET",
            "/turncredential",
            &[("origin", "https://evil.example")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

fn token(private: &[u8], claims: serde_json::Value) -> String {
    crate::client_token::test_keys::signed(private, claims)
}

async fn with_bearer<S: Routes>(
    app: &S,
    uri: &str,
    token: &str,
) -> (StatusCode, serde_json::Value) {
    let (status, headers, body) = call_with(
        app,
        request("GET", uri, &[("authorization", &format!("Bearer {token}"))]),
    )
    .await;
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    (status, body)
}

#[tokio::test]
async fn a_valid_client_token_grants_user_from_any_address_and_names_the_caller() {
    let (private, public) = crate::client_token::test_keys::key_pair();
    let app = browser_app(BROWSER, Some(public), 0.0);
    let now = unix_now().as_secs();
    let alice = token(
        &private,
        json!({"exp": now + 300, "aud": AUDIENCE, "sub": "alice"}),
    );
    for uri in ["/turncredential?username=mallory", "/turncredential"] {
        let (status, body) = with_bearer(&app, uri, &alice).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body["userid"].as_str().unwrap().ends_with(":alice"),
            "{body}"
        );
    }
    let (status, body) = with_bearer(&app, "/ice?username=mallory", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .ends_with(":alice"));
    // Without `sub`, ?username= is used as before.
    let anonymous = token(
        &private,
        json!({"exp": now + 300, "aud": [AUDIENCE, "x:1"]}),
    );
    let (status, body) = with_bearer(&app, "/turncredential?username=bob", &anonymous).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["userid"].as_str().unwrap().ends_with(":bob"));
    // The role is `user`: no rotation.
    let (status, _, _) = call_with(
        &app,
        request(
            "POST",
            "/rotate",
            &[("authorization", &format!("Bearer {alice}"))],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn refused_client_tokens_are_401_with_the_reason() {
    let (private, public) = crate::client_token::test_keys::key_pair();
    let (other_private, _) = crate::client_token::test_keys::key_pair();
    let app = browser_app(BROWSER, Some(public), 0.0);
    let now = unix_now().as_secs();
    let cases = [
        (
            token(&private, json!({"exp": now - 3600, "aud": AUDIENCE})),
            "expired",
        ),
        (
            token(
                &private,
                json!({"exp": now + 300, "aud": "turn2.example:8086"}),
            ),
            "another audience",
        ),
        (
            token(&other_private, json!({"exp": now + 300, "aud": AUDIENCE})),
            "signature",
        ),
        (
            token(&private, json!({"exp": now + 7200, "aud": AUDIENCE})),
            "longer",
        ),
        (
            token(
                &private,
                json!({"exp": now + 300, "aud": AUDIENCE, "sub": "a:b"}),
            ),
            "subject",
        ),
        ("a.b.c".to_string(), "malformed"),
    ];
    for (token, reason) in cases {
        let (status, body) = with_bearer(&app, "/turncredential", &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}");
        assert!(
            body["reason"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
        assert!(body.get("password").is_none());
    }
    // Not shaped like a JWT: an unknown static token, as before.
    let (status, body) = with_bearer(&app, "/turncredential", "not-a-jwt-at-all").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["reason"].as_str().unwrap().contains("not allowed"));
    // Client tokens off: a valid one is just an unknown bearer token.
    let off = browser_app(BROWSER, None, 0.0);
    let valid = token(&private, json!({"exp": now + 300, "aud": AUDIENCE}));
    let (status, body) = with_bearer(&off, "/turncredential", &valid).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["reason"].as_str().unwrap().contains("not allowed"));
}

#[tokio::test]
async fn client_token_holders_keep_the_per_address_rate_limit() {
    let (private, public) = crate::client_token::test_keys::key_pair();
    let app = browser_app(BROWSER, Some(public), 0.001);
    let now = unix_now().as_secs();
    let alice = token(
        &private,
        json!({"exp": now + 300, "aud": AUDIENCE, "sub": "alice"}),
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(with_bearer(&app, "/ice", &alice).await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn invalid_client_tokens_spend_the_rate_limit_before_they_are_verified() {
    let (_, public) = crate::client_token::test_keys::key_pair();
    let (other_private, _) = crate::client_token::test_keys::key_pair();
    let app = browser_app(BROWSER, Some(public), 0.001);
    let now = unix_now().as_secs();
    let forged = token(&other_private, json!({"exp": now + 300, "aud": AUDIENCE}));
    let mut statuses = Vec::new();
    for uri in ["/ice", "/turncredential", "/ice", "/turncredential"] {
        statuses.push(with_bearer(&app, uri, &forged).await.0);
    }
    // Burst 2: the third forged token is not even checked.
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn ice_filters_by_transport_and_states_the_relay_policy() {
    let f = fixture(long_term(far_future()), [127, 0, 0, 1]);
    let (status, _, body) = call(&f.app, "GET", "/ice?transport=tcp&policy=relay").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["iceServers"][0]["urls"],
        json!(["turn:192.0.2.1:3478?transport=tcp"])
    );
    assert_eq!(body["iceTransportPolicy"], "relay");
    let (status, _, body) = call(&f.app, "GET", "/ice?transport=udp,tcp&policy=all").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["iceServers"][0]["urls"].as_array().unwrap().len(), 2);
    assert!(body.get("iceTransportPolicy").is_none());
    let (_, _, body) = call(&f.app, "GET", "/ice").await;
    assert!(body.get("iceTransportPolicy").is_none());
    for (uri, reason) in [
        ("/ice?transport=tls", "no configured TURN URI"),
        ("/ice?transport=quic", "unknown transport"),
        ("/ice?transport=", "unknown transport"),
        ("/ice?policy=none", "unknown policy"),
    ] {
        let (status, _, body) = call(&f.app, "GET", uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["code"], "bad_request");
        assert!(
            body["reason"].as_str().unwrap().contains(reason),
            "{uri}: {body}"
        );
        assert!(body.get("iceServers").is_none());
    }
}

#[tokio::test]
async fn a_revoke_that_cannot_end_sessions_is_refused_before_rotating() {
    let f = fixture(long_term(far_future()), [127, 0, 0, 1]);
    for uri in [
        "/rotate?revoke=",
        "/rotate?revoke=1",
        "/rotate?revoke=yes",
        "/rotate?revoke=true%0D%0Ahalt",
    ] {
        let (status, _, body) = call(&f.app, "POST", uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            body["reason"].as_str().unwrap().contains("revoke"),
            "{body}"
        );
    }
    // The control channel is off in this fixture.
    let (status, _, body) = call(&f.app, "POST", "/rotate?revoke=true").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("turnserver.control"), "{reason}");
    assert!(reason.contains("nothing was rotated"), "{reason}");
    // A user of the API may not revoke.
    let user = fixture(long_term(far_future()), [10, 0, 0, 1]);
    let (status, _, _) = call(&user.app, "POST", "/rotate?revoke=true").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // REST API mode has no user to delete.
    f.credential_status
        .send_modify(|s| s.mode = CredentialMode::RestApi);
    let (status, _, body) = call(&f.app, "POST", "/rotate?revoke=true").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("long-term"),
        "{body}"
    );
    // A plain rotation is unchanged.
    let (status, _, body) = call(&f.app, "POST", "/rotate?revoke=false").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["credential"], "ta1-9-new");
}

#[test]
fn route_labels_of_own_routes_are_borrowed_and_others_copied() {
    use std::borrow::Cow;
    for route in ["/turncredential", "/ice", "/sessions/{id}", "/healthz"] {
        assert!(matches!(route_label(Some(route)), Cow::Borrowed(r) if r == route));
    }
    assert!(matches!(route_label(None), Cow::Borrowed("unmatched")));
    assert!(matches!(route_label(Some("/allocate")), Cow::Owned(r) if r == "/allocate"));
}

/// The fast path in front of the router answers `GET /turncredential`
/// and `GET /ice` exactly as the router's own routes do: same status,
/// headers and body, refusals and CORS included, and the same count.
#[tokio::test]
async fn the_fast_path_answers_as_the_router_does() {
    let guard = guard::Guard::new(&access(0.0));
    guard.set_cors(&cors_policy());
    let app = with_guard(long_term(far_future()), guard);
    for (peer, origin, uri) in [
        ([127, 0, 0, 1], None, "/turncredential"),
        ([127, 0, 0, 1], Some(APP_ORIGIN), "/turncredential?ttl=60"),
        (
            [127, 0, 0, 1],
            Some("https://evil.example"),
            "/turncredential",
        ),
        ([127, 0, 0, 1], None, "/turncredential?ttl=soon"),
        ([192, 0, 2, 7], None, "/turncredential"),
        ([127, 0, 0, 1], None, "/ice"),
        (
            [127, 0, 0, 1],
            Some(APP_ORIGIN),
            "/ice?transport=udp&policy=relay",
        ),
        ([127, 0, 0, 1], None, "/ice?transport=tls"),
        ([127, 0, 0, 1], None, "/ice?policy=sometimes"),
        ([10, 1, 2, 3], None, "/ice"),
    ] {
        let peer = SocketAddr::from((peer, 40000));
        let fast = app.app.clone().with_mock_peer(peer);
        let router = tower::Layer::layer(
            &axum::extract::connect_info::MockConnectInfo(peer),
            fast.router_only(),
        );
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let (fast_status, fast_headers, mut fast_body) =
            call_with(&fast, request("GET", uri, &headers)).await;
        let (status, mut router_headers, mut body) =
            call_with(&router, request("GET", uri, &headers)).await;
        // axum's route sets it; hyper writes the same from the body's
        // exact size on the fast path.
        router_headers.remove("content-length");
        // `/ice`'s remaining lifetime may cross a second between the two.
        for body in [&mut fast_body, &mut body] {
            if let Some(object) = body.as_object_mut() {
                object.remove("ttl");
            }
        }
        assert_eq!(fast_status, status, "{uri} from {peer} ({origin:?})");
        assert_eq!(
            fast_headers, router_headers,
            "{uri} from {peer} ({origin:?})"
        );
        assert_eq!(fast_body, body, "{uri} from {peer} ({origin:?})");
    }
    // Both paths count into the same series.
    let (_, _, _) = call(
        &app.app
            .clone()
            .with_mock_peer(SocketAddr::from(([127, 0, 0, 1], 1))),
        "GET",
        "/healthz",
    )
    .await;
    let text = {
        let router = app
            .app
            .clone()
            .with_mock_peer(SocketAddr::from(([127, 0, 0, 1], 1)));
        let response = router
            .oneshot(request("GET", "/metrics", &[]))
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    assert!(
        text.contains("turn_agent_http_requests_total{route=\"/turncredential\",status=\"200\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("turn_agent_http_requests_total{route=\"/ice\",status=\"200\"} 6"),
        "{text}"
    );
}

proptest::proptest! {
    /// The hand-written credential JSON is byte for byte serde's, for any
    /// strings (those that need escaping go through serde) and any time.
    #[test]
    fn the_credential_json_is_serdes(
        userid in "\\PC{0,40}|[ -~]{0,40}",
        password in "\\PC{0,40}|[ -~]{0,40}",
        expired_time: u64,
    ) {
        let body = TurnCredentialBody {
            r#type: "result",
            code: "ok",
            userid: &userid,
            password: &password,
            expired_time,
        };
        proptest::prop_assert_eq!(body.to_json(), serde_json::to_vec(&body).unwrap());
    }
}
