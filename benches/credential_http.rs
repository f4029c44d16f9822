//! `/turncredential` throughput and p99 latency at 64 connections, as ratios
//! against a static JSON response served by the same axum stack in the same
//! run (same process, same runtime, same load generator).
//!
//! Run: `cargo bench --bench credential_http` (optionally
//! `BENCH_SECONDS=10`). Prints figures; asserts nothing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use turn_agent::api::{self, ApiState};
use turn_agent::config::CredentialMode;
use turn_agent::credentials::state_file::LongTermCredential;
use turn_agent::credentials::{CredentialSource, CredentialStatus, RotateHandle};
use turn_agent::secret::Secret;
use turn_agent::supervisor::SupervisorStatus;

const CONNECTIONS: usize = 64;

struct Figures {
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(
        listener,
        router,
        api::ServerLimits::default(),
        None,
        CancellationToken::new(),
    ));
    addr
}

async fn load(url: String, seconds: u64) -> Figures {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let url = url.clone();
        // One client per task: one keep-alive connection each.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let response = client.get(&url).send().await.unwrap();
                assert!(response.status().is_success());
                let _ = response.bytes().await.unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Figures {
        requests_per_second: latencies.len() as f64 / elapsed,
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
    }
}

/// The agent's router with a fixed credential; the receiver must be kept
/// alive for the rotate handle to stay valid.
fn agent_router() -> (
    Router,
    tokio::sync::mpsc::Receiver<turn_agent::credentials::RotateReply>,
) {
    let credential = LongTermCredential {
        username: "ta1-4102444800-0123456789ab".into(),
        password: Secret::new("AAAAAAAAAAAAAAAAAAAAAAAA"),
        issued_at: 0,
        expires_at: 4_102_444_800,
    };
    let (_, supervisor) = watch::channel(SupervisorStatus::default());
    let status = CredentialStatus {
        available: true,
        ..CredentialStatus::new(CredentialMode::LongTerm)
    };
    let (_, credential_status) = watch::channel(status);
    let (rotate, requests) = RotateHandle::detached();
    let (_, registry) = watch::channel(turn_agent::registry::RegistryStatus::default());
    let readiness = turn_agent::readiness::Readiness {
        supervisor,
        credentials: credential_status,
        health: watch::channel(turn_agent::self_check::HealthStatus::default()).1,
    };
    let metrics = turn_agent::metrics::AgentMetrics::new(
        readiness.clone(),
        registry.clone(),
        Default::default(),
    );
    let router = api::router(
        ApiState {
            drain: tokio::sync::mpsc::channel(1).0,
            control: turn_agent::control::ControlHandle::disabled(),
            readiness,
            metrics,
            registry,
            credentials: CredentialSource::fixed_long_term(Some(credential)),
            rotate,
            turn_uris: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(vec![
                "turn:127.0.0.1:3478?transport=udp".into(),
            ])),
        },
        api::guard::Guard::new(&loopback_admin()),
    );
    (router, requests)
}

/// The default access policy (loopback is admin), without a rate limit:
/// the benchmark measures the guard's cost, not its refusals.
fn loopback_admin() -> turn_agent::config::AccessConfig {
    use turn_agent::access::{builtin_roles, AccessPolicy, AddrPattern};
    turn_agent::config::AccessConfig {
        policy: AccessPolicy {
            allow: vec![(AddrPattern::parse("127.0.0.1").unwrap(), 0)],
            roles: builtin_roles(),
            tokens: Vec::new(),
            trusted_proxies: Vec::new(),
        },
        rate_limit_per_second: 0.0,
        rate_limit_burst: 1,
        rate_limit_ipv6_prefix: 64,
        token_files: Vec::new(),
        client_tokens: None,
    }
}

fn baseline_router() -> Router {
    let body = serde_json::json!({
        "type": "result", "code": "ok", "userid": "ta1-4102444800-0123456789ab",
        "password": "AAAAAAAAAAAAAAAAAAAAAAAA", "expired_time": 4_102_444_800_000u64,
    });
    Router::new().route(
        "/static",
        get(move || std::future::ready(Json(body.clone()))),
    )
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let baseline_addr = serve(baseline_router()).await;
    let (router, _rotate_requests) = agent_router();
    let agent_addr = serve(router).await;

    // Warm up both, then measure baseline, agent, baseline again to show drift.
    load(format!("http://{baseline_addr}/static"), 1).await;
    load(format!("http://{agent_addr}/turncredential"), 1).await;
    let baseline = load(format!("http://{baseline_addr}/static"), seconds).await;
    let agent = load(format!("http://{agent_addr}/turncredential"), seconds).await;
    let baseline_again = load(format!("http://{baseline_addr}/static"), seconds).await;

    let print = |name: &str, f: &Figures| {
        println!(
            "{name:<22} {:>10.0} req/s   p50 {:>8.3} ms   p99 {:>8.3} ms",
            f.requests_per_second,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        )
    };
    println!("{CONNECTIONS} connections, {seconds} s per run");
    print("static baseline", &baseline);
    print("/turncredential", &agent);
    print("static baseline again", &baseline_again);
    let base_rps = (baseline.requests_per_second + baseline_again.requests_per_second) / 2.0;
    let base_p99 = (baseline.p99 + baseline_again.p99) / 2;
    println!(
        "ratio /turncredential vs baseline: throughput {:.2}x, p99 {:.2}x",
        agent.requests_per_second / base_rps,
        agent.p99.as_secs_f64() / base_p99.as_secs_f64()
    );
}
