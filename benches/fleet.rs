//! Fleet-scale figures against a real 3-node ZooKeeper ensemble on
//! loopback. Prints measurements; asserts nothing about time.
//!
//! - N simulated agents (the real registry code, synthetic traffic, one
//!   process): ZooKeeper writes per second at steady state without and with
//!   hysteresis;
//! - the allocator's view after 10 % of the agents die at once: time from
//!   their death to the last removal, against the session timeout;
//! - an allocator view of M hosts: memory and time to the first full view.
//!
//! Run: `cargo bench --bench fleet` (`FLEET_AGENTS=1000`, `FLEET_VIEW=10000`,
//! `FLEET_SECONDS=10`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::zookeeper::Ensemble;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use turn_agent::allocator::{Allocator, AllocatorSettings};
use turn_agent::config::{self, CredentialMode};
use turn_agent::credentials::CredentialStatus;
use turn_agent::registry::{Registry, RegistryStatus};
use turn_agent::supervisor::{Phase, SupervisorStatus};
use turn_agent::traffic::CounterSample;
use turn_agent::traffic_sampler::CounterSource;

const PATH: &str = "/turn/servers";
const SESSION_TIMEOUT_SECS: u64 = 4;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct SimulatedAgent {
    stop: CancellationToken,
    task: JoinHandle<()>,
    status: watch::Receiver<RegistryStatus>,
}

/// Synthetic traffic: around `mean_mbps` with ±`wobble_percent` noise per
/// sample, as byte counters.
fn synthetic_traffic(mean_mbps: f64, wobble_percent: f64) -> CounterSource {
    let started = std::time::Instant::now();
    let mut bytes = 0u64;
    let mut last = started;
    CounterSource::Synthetic(Box::new(move || {
        let now = std::time::Instant::now();
        let seconds = (now - last).as_secs_f64();
        last = now;
        let wobble = 1.0 + (rand::random::<f64>() * 2.0 - 1.0) * wobble_percent / 100.0;
        bytes += (mean_mbps * wobble * 1_000_000.0 / 8.0 * seconds) as u64;
        Some(CounterSample {
            rx_bytes: bytes,
            tx_bytes: bytes,
        })
    }))
}

fn start_agent(index: usize, connect: &str, hysteresis_percent: f64) -> SimulatedAgent {
    let text = format!(
        "[api]\nlisten = \"127.0.0.1:1\"\nadvertise = \"127.0.0.{}:{}\"\n\
         [turnserver]\nrealm = \"fleet\"\nuserdb = \"/tmp/fleet-db\"\npidfile = \"/tmp/fleet.pid\"\n\
         [credentials]\nstate_file = \"/tmp/fleet.json\"\n\
         [zookeeper]\nconnect = \"{connect}\"\npath = \"{PATH}\"\nnode = \"agent-{index}\"\n\
         session_timeout = \"{SESSION_TIMEOUT_SECS}s\"\npublish_interval = \"1s\"\nmax_silence = \"60s\"\n\
         [traffic]\ninterface = \"lo\"\ncapacity_mbps = 1000.0\nhysteresis_percent = {hysteresis_percent:.1}\n",
        1 + index / 60000,
        1024 + index % 60000,
    );
    let raw = config::parse_raw(&text, Vec::new()).expect("bench config parses");
    let config = config::validate(&raw).expect("bench config is valid");
    let ready = SupervisorStatus {
        phase: Phase::Ready,
        ..SupervisorStatus::default()
    };
    let (supervisor_tx, supervisor) = watch::channel(ready);
    let (credentials_tx, credentials) = watch::channel(CredentialStatus {
        available: true,
        ..CredentialStatus::new(CredentialMode::LongTerm)
    });
    let (health_tx, health) = watch::channel(turn_agent::self_check::HealthStatus::default());
    // The configuration never changes here: the sender can go at once.
    let config = watch::channel(std::sync::Arc::new(config)).1;
    let readiness = turn_agent::readiness::Readiness {
        supervisor,
        credentials,
        health,
    };
    let (registry, status) = Registry::new(config, readiness);
    let registry = registry
        .expect("zookeeper.connect is set")
        .with_counters(synthetic_traffic(300.0, 20.0));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            // Keep the status senders alive as long as the registry runs.
            let _senders = (supervisor_tx, credentials_tx, health_tx);
            registry.run(stop).await
        }
    });
    SimulatedAgent { stop, task, status }
}

fn total_writes(agents: &[SimulatedAgent]) -> u64 {
    agents
        .iter()
        .map(|agent| agent.status.borrow().writes)
        .sum()
}

async fn wait_all_published(agents: &[SimulatedAgent]) -> Duration {
    let started = Instant::now();
    while agents.iter().any(|agent| !agent.status.borrow().published) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn stop_all(agents: Vec<SimulatedAgent>) {
    for agent in &agents {
        agent.stop.cancel();
    }
    for agent in agents {
        let _ = agent.task.await;
    }
}

/// Writes per second over `seconds` at steady state.
async fn steady_writes(
    connect: &str,
    count: usize,
    hysteresis: f64,
    seconds: u64,
) -> (f64, Duration, Vec<SimulatedAgent>) {
    let agents: Vec<SimulatedAgent> = (0..count)
        .map(|i| start_agent(i, connect, hysteresis))
        .collect();
    let published_in = wait_all_published(&agents).await;
    // Let the first traffic samples settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = total_writes(&agents);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let rate = (total_writes(&agents) - before) as f64 / seconds as f64;
    (rate, published_in, agents)
}

/// Child mode: run agents `start..start+count` until killed, so that their
/// death is a real process death (sessions not closed).
async fn run_child(spec: &str) {
    let mut parts = spec.splitn(3, ':');
    let start: usize = parts.next().and_then(|s| s.parse().ok()).expect("start");
    let count: usize = parts.next().and_then(|s| s.parse().ok()).expect("count");
    let connect = parts.next().expect("connect string");
    let agents: Vec<SimulatedAgent> = (start..start + count)
        .map(|i| start_agent(i, connect, 5.0))
        .collect();
    wait_all_published(&agents).await;
    println!("published");
    std::future::pending::<()>().await;
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var("FLEET_CHILD_AGENTS") {
        return run_child(&spec).await;
    }
    let agents_count = env_number("FLEET_AGENTS", 1000) as usize;
    let view_size = env_number("FLEET_VIEW", 10_000) as usize;
    let seconds = env_number("FLEET_SECONDS", 10);

    let ensemble = Ensemble::start_with(3, "maxClientCnxns=0\nglobalOutstandingLimit=100000").await;
    let connect = ensemble.connect_string();
    println!("3-node ensemble on loopback; {agents_count} simulated agents, publish_interval 1 s, traffic 300 Mbps ±20 %");

    let (without, published_in, agents) = steady_writes(&connect, agents_count, 0.0, seconds).await;
    println!("all {agents_count} nodes published in {published_in:?}");
    println!("writes/s without hysteresis: {without:.0}");
    stop_all(agents).await;

    let (with, _, agents) = steady_writes(&connect, agents_count, 5.0, seconds).await;
    println!(
        "writes/s with 5 % hysteresis: {with:.0} ({:.2}x of without)",
        with / without.max(1.0)
    );
    stop_all(agents).await;

    // Convergence: 10 % of the agents live in a child process that is
    // SIGKILLed, so their sessions are not closed and their nodes go only
    // when ZooKeeper expires the sessions.
    let dying = agents_count / 10;
    let survivors: Vec<SimulatedAgent> = (dying..agents_count)
        .map(|i| start_agent(i, &connect, 5.0))
        .collect();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("FLEET_CHILD_AGENTS", format!("0:{dying}:{connect}"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("child agents");
    let mut settings = AllocatorSettings::new(connect.clone(), PATH);
    settings.min_free_mbps = 0.0;
    // Start refuses a path that does not exist yet: the agents create it.
    let allocator = loop {
        match Allocator::start(settings.clone()).await {
            Ok(allocator) => break allocator,
            Err(turn_agent::allocator::StartError::NoSuchPath { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(error) => panic!("the allocator cannot start: {error}"),
        }
    };
    while allocator.snapshot().hosts.len() < agents_count {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let died_at = Instant::now();
    let _ = child.wait().await;
    while allocator.snapshot().hosts.len() > agents_count - dying {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{dying} agents died: the view dropped them {:?} later (session timeout {SESSION_TIMEOUT_SECS} s)",
        died_at.elapsed()
    );
    stop_all(survivors).await;
    drop(allocator);

    // A large view: plain persistent nodes, then a fresh allocator.
    let writer = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(20))
        .connect(&connect)
        .await
        .expect("writer session");
    let big = "/turn/big";
    let persistent =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    writer.mkdir(big, &persistent).await.unwrap();
    let payload = br#"{"freeTraffic":500.0,"restAddr":"10.0.0.1:8086","turnUris":["turn:10.0.0.1:3478?transport=udp"],"capacityMbps":1000.0}"#;
    let writer = Arc::new(writer);
    let mut creates = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let writer = writer.clone();
        let persistent = persistent.clone();
        creates.spawn(async move {
            for index in (chunk..view_size).step_by(16) {
                let _ = writer
                    .create(&format!("{big}/host-{index}"), payload, &persistent)
                    .await;
            }
        });
    }
    creates.join_all().await;
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut settings = AllocatorSettings::new(connect.clone(), big);
    settings.min_free_mbps = 0.0;
    let allocator = Allocator::start(settings)
        .await
        .expect("the allocator starts");
    while allocator.snapshot().hosts.len() < view_size {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_view = started.elapsed();
    let rss_after = rss_kib();
    println!(
        "view of {view_size} hosts: complete after {first_view:?}, process RSS +{} KiB ({:.0} bytes per host)",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 * 1024.0 / view_size as f64
    );
    drop(ensemble);
}
