//! ZooKeeper faults against real servers: a short freeze of the server,
//! sessions replaced at once, and a 3-node ensemble losing its leader, a
//! follower or its quorum. The allocator's view must follow every change
//! made after the fault, and must never claim a freshness the server did
//! not confirm.

mod common;

use std::time::Duration;

use common::wait_for;
use common::zookeeper::{Reader, ZooKeeper};
use tokio::time::Instant;
use turn_agent::allocator::{Allocator, AllocatorSettings, View};
use zookeeper_client as zk;

const BASE: &str = "/turn/servers";

fn payload(free: f64, port: u16) -> Vec<u8> {
    format!(r#"{{"freeTraffic":{free},"restAddr":"127.0.0.1:{port}"}}"#).into_bytes()
}

async fn put(writer: &Reader, node: &str, data: &[u8]) {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    writer.client.mkdir(BASE, &persistent).await.unwrap();
    let path = format!("{BASE}/{node}");
    match writer.client.create(&path, data, &persistent).await {
        Ok(_) => {}
        Err(zk::Error::NodeExists) => {
            writer.client.set_data(&path, data, None).await.unwrap();
        }
        Err(error) => panic!("{error}"),
    }
}

/// `(node, freeTraffic)` of every host in the view.
fn hosts(view: &View) -> Vec<(String, f64)> {
    view.hosts
        .iter()
        .map(|host| (host.node.clone(), host.payload.free_traffic))
        .collect()
}

/// Retries a write until the writer's session is back.
async fn retry<T, F, Fut>(what: &str, mut operation: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, zk::Error>>,
{
    wait_for(Duration::from_secs(10), what, || {
        let attempt = operation();
        async move { attempt.await.ok() }
    })
    .await
}

#[tokio::test]
async fn a_freeze_shorter_than_the_session_timeout_does_not_blind_the_allocator() {
    // Ticks of 300 ms allow sessions up to 6 s; the client gives up on a
    // silent connection after at most 2/5 of its session timeout, so a 3 s
    // freeze disconnects it without expiring any session.
    let zookeeper = ZooKeeper::start(300).await;
    let writer = Reader::connect(&zookeeper).await;
    put(&writer, "a", &payload(100.0, 1)).await;
    let mut settings = AllocatorSettings::new(zookeeper.connect_string(), BASE);
    settings.session_timeout = Duration::from_secs(4);
    let allocator = Allocator::start(settings);
    assert!(allocator.wait_synced(Duration::from_secs(10)).await);
    assert_eq!(hosts(&allocator.snapshot()), vec![("a".to_string(), 100.0)]);

    zookeeper.freeze();
    let frozen = Instant::now();
    wait_for(
        Duration::from_millis(2900),
        "the allocator to notice the frozen server",
        || {
            let noticed = !allocator.snapshot().live;
            async move { noticed.then_some(()) }
        },
    )
    .await;
    // The fault lasts 3 s in all: its length, not a wait for a condition.
    tokio::time::sleep_until(frozen + Duration::from_secs(3)).await;
    let view = allocator.snapshot();
    assert!(!view.synced(), "a view without its server is not synced");
    assert!(
        view.age() >= Duration::from_secs(2),
        "nothing confirmed the view during the freeze, yet its age is {:?}",
        view.age()
    );
    zookeeper.thaw();
    wait_for(
        Duration::from_secs(5),
        "the allocator to be live again",
        || {
            let live = allocator.snapshot().live;
            async move { live.then_some(()) }
        },
    )
    .await;

    // Changes made after the reconnect must reach the view.
    let changed = Instant::now();
    retry("host a to change", || {
        writer
            .client
            .set_data(&format!("{BASE}/a"), &payload(42.0, 1), None)
    })
    .await;
    wait_for(
        Duration::from_secs(2),
        "the change of a in the view",
        || {
            let seen = hosts(&allocator.snapshot()) == vec![("a".to_string(), 42.0)];
            async move { seen.then_some(()) }
        },
    )
    .await;
    put(&writer, "b", &payload(7.0, 2)).await;
    retry("host a to go", || {
        writer.client.delete(&format!("{BASE}/a"), None)
    })
    .await;
    wait_for(Duration::from_secs(2), "the view to hold only b", || {
        let seen = hosts(&allocator.snapshot()) == vec![("b".to_string(), 7.0)];
        async move { seen.then_some(()) }
    })
    .await;
    println!(
        "after a 3 s freeze: changes reached the view {} ms after they began",
        changed.elapsed().as_millis()
    );
    let view = allocator.snapshot();
    assert!(view.synced(), "a live view reports synced");
    assert!(
        view.age() < Duration::from_secs(1),
        "the age counts from the last confirmation: {:?}",
        view.age()
    );
}

/// The real registry publishing one host, with synthetic traffic and a
/// ready turnserver (no process): the agent's ZooKeeper side alone.
struct SimulatedAgent {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    status: tokio::sync::watch::Receiver<turn_agent::registry::RegistryStatus>,
}

impl SimulatedAgent {
    fn start(node: &str, connect: &str, port: u16) -> SimulatedAgent {
        use turn_agent::config::{self, CredentialMode};
        use turn_agent::credentials::CredentialStatus;
        use turn_agent::registry::{Registry, TrafficSource};
        use turn_agent::supervisor::{Phase, SupervisorStatus};
        use turn_agent::traffic::CounterSample;

        let text = format!(
            "[api]\nlisten = \"127.0.0.1:1\"\nadvertise = \"127.0.0.1:{port}\"\n\
             [turnserver]\nrealm = \"faults\"\nuserdb = \"/tmp/faults-db\"\npidfile = \"/tmp/faults.pid\"\n\
             [credentials]\nstate_file = \"/tmp/faults.json\"\n\
             [zookeeper]\nconnect = \"{connect}\"\npath = \"{BASE}\"\nnode = \"{node}\"\n\
             session_timeout = \"2s\"\npublish_interval = \"1s\"\nmax_silence = \"60s\"\n\
             [traffic]\ninterface = \"lo\"\ncapacity_mbps = 1000.0\n"
        );
        let raw = config::parse_raw(&text, Vec::new()).expect("config parses");
        let config = config::validate(&raw).expect("config is valid");
        let (supervisor_tx, supervisor) = tokio::sync::watch::channel(SupervisorStatus {
            phase: Phase::Ready,
            ..SupervisorStatus::default()
        });
        let (credentials_tx, credentials) = tokio::sync::watch::channel(CredentialStatus {
            available: true,
            ..CredentialStatus::new(CredentialMode::LongTerm)
        });
        let (health_tx, health) =
            tokio::sync::watch::channel(turn_agent::self_check::HealthStatus::default());
        let config = tokio::sync::watch::channel(std::sync::Arc::new(config)).1;
        let readiness = turn_agent::readiness::Readiness {
            supervisor,
            credentials,
            health,
        };
        let (registry, status) = Registry::new(config, readiness);
        let registry = registry
            .expect("zookeeper.connect is set")
            .with_traffic_source(TrafficSource::Synthetic(Box::new(|| {
                Some(CounterSample {
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
            })));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _senders = (supervisor_tx, credentials_tx, health_tx);
                registry.run(stop).await
            }
        });
        SimulatedAgent { stop, task, status }
    }

    fn session(&self) -> Option<String> {
        self.status.borrow().session.clone()
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What a client saw through a fault, sampled every 10 ms.
#[derive(Debug, Default)]
struct Observed {
    picks: u64,
    failed_picks: u64,
    /// Per host, the longest time it was missing from the allocator's view.
    longest_gap: Vec<Duration>,
}

/// Samples the allocator until `stop`: picks, and how long each of
/// `nodes` is missing from its view.
async fn observe(
    allocator: std::sync::Arc<Allocator>,
    nodes: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
) -> Observed {
    let mut observed = Observed {
        longest_gap: vec![Duration::ZERO; nodes.len()],
        ..Observed::default()
    };
    let mut missing_since: Vec<Option<Instant>> = vec![None; nodes.len()];
    while !stop.is_cancelled() {
        observed.picks += 1;
        if allocator
            .pick(&turn_agent::allocator::Preference::default())
            .is_err()
        {
            observed.failed_picks += 1;
        }
        let view = allocator.snapshot();
        for (index, node) in nodes.iter().enumerate() {
            let present = view.hosts.iter().any(|host| &host.node == node);
            match (present, missing_since[index]) {
                (false, None) => missing_since[index] = Some(Instant::now()),
                (true, Some(since)) => {
                    observed.longest_gap[index] = observed.longest_gap[index].max(since.elapsed());
                    missing_since[index] = None;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (index, since) in missing_since.into_iter().enumerate() {
        if let Some(since) = since {
            observed.longest_gap[index] = observed.longest_gap[index].max(since.elapsed());
        }
    }
    observed
}

#[tokio::test]
async fn an_ensemble_losing_its_leader_then_its_quorum_costs_no_pick_and_no_host() {
    let mut ensemble = common::zookeeper::Ensemble::start(3).await;
    let connect = ensemble.connect_string();
    let nodes = vec!["agent-0".to_string(), "agent-1".to_string()];
    let agents: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| SimulatedAgent::start(node, &connect, 4000 + index as u16))
        .collect();
    let mut settings = AllocatorSettings::new(connect.clone(), BASE);
    settings.session_timeout = Duration::from_secs(2);
    let allocator = std::sync::Arc::new(Allocator::start(settings));
    assert!(allocator.wait_synced(Duration::from_secs(10)).await);
    wait_for(Duration::from_secs(10), "both hosts in the view", || {
        let count = allocator.snapshot().hosts.len();
        async move { (count == 2).then_some(()) }
    })
    .await;

    // The follower most clients are on frozen for longer than the session
    // timeout: the clients move to another server and keep their sessions.
    let stop = tokio_util::sync::CancellationToken::new();
    let observer = tokio::spawn(observe(allocator.clone(), nodes.clone(), stop.clone()));
    let sessions: Vec<_> = agents.iter().map(SimulatedAgent::session).collect();
    // A frozen leader stops the ensemble itself (for syncLimit), which is
    // the quorum fault below; this one is about a follower.
    let leader = ensemble.leader();
    let busiest = (0..3)
        .filter(|&index| Some(index) != leader)
        .max_by_key(|&index| alive_connections(ensemble.client_ports[index]))
        .unwrap();
    let role = "follower";
    let clients = alive_connections(ensemble.client_ports[busiest]);
    ensemble.freeze(busiest);
    let frozen = Instant::now();
    tokio::time::sleep_until(frozen + Duration::from_secs(3)).await;
    ensemble.thaw(busiest);
    let writer = Reader::connect_to(connect.clone()).await;
    put(&writer, "freeze", &payload(1.0, 9)).await;
    wait_for(
        Duration::from_secs(5),
        "the write after the freeze in the view",
        || {
            let seen = allocator
                .snapshot()
                .hosts
                .iter()
                .any(|host| host.node == "freeze");
            async move { seen.then_some(()) }
        },
    )
    .await;
    stop.cancel();
    let observed = observer.await.unwrap();
    let kept: Vec<_> = agents.iter().map(SimulatedAgent::session).collect();
    println!(
        "{role} freeze ({clients} clients on it): {observed:?}, agent sessions kept: {}",
        kept == sessions
    );
    assert_eq!(
        kept, sessions,
        "a 3 s freeze of one server must cost no agent session"
    );
    assert_eq!(observed.failed_picks, 0, "{observed:?}");
    assert!(
        observed
            .longest_gap
            .iter()
            .all(|gap| *gap <= Duration::from_secs(1)),
        "{observed:?}"
    );

    // Leader killed (and brought back), then quorum lost for 5 s: longer
    // than the session timeout, so every client replaces its session at
    // the same time.
    let stop = tokio_util::sync::CancellationToken::new();
    let observer = tokio::spawn(observe(allocator.clone(), nodes.clone(), stop.clone()));
    let leader = ensemble.leader().expect("a leader");
    ensemble.kill(leader);
    let killed = Instant::now();
    let writer = Reader::connect_to(connect.clone()).await;
    put(&writer, "probe", &payload(1.0, 9)).await;
    println!(
        "leader kill: writes again after {} ms",
        killed.elapsed().as_millis()
    );
    ensemble.revive(leader);
    // Quorum loss: two of three down.
    let (first, second) = ((leader + 1) % 3, (leader + 2) % 3);
    ensemble.kill(first);
    ensemble.kill(second);
    let lost = Instant::now();
    tokio::time::sleep_until(lost + Duration::from_secs(5)).await;
    ensemble.revive(first);
    ensemble.revive(second);
    let back = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "both hosts live in a confirmed view",
        || {
            let view = allocator.snapshot();
            let ok = view.live
                && nodes
                    .iter()
                    .all(|node| view.hosts.iter().any(|host| &host.node == node));
            async move { ok.then_some(()) }
        },
    )
    .await;
    println!(
        "quorum loss: view live with both hosts {} ms after quorum returned",
        back.elapsed().as_millis()
    );
    // Changes after the fault reach the view.
    let fresh = Reader::connect_to(connect.clone()).await;
    put(&fresh, "after", &payload(3.0, 8)).await;
    wait_for(
        Duration::from_secs(5),
        "a host written after the fault",
        || {
            let seen = allocator
                .snapshot()
                .hosts
                .iter()
                .any(|host| host.node == "after");
            async move { seen.then_some(()) }
        },
    )
    .await;
    stop.cancel();
    let observed = observer.await.unwrap();
    println!("figures: {observed:?}");
    for agent in agents {
        agent.stop().await;
    }
    assert_eq!(observed.failed_picks, 0, "{observed:?}");
    for gap in &observed.longest_gap {
        assert!(
            *gap <= Duration::from_secs(1),
            "a host was missing from the view for longer than a publish interval: {observed:?}"
        );
    }
}

/// Connections a server holds, from its `mntr` answer.
fn alive_connections(port: u16) -> u64 {
    common::zookeeper::four_letter(port, "mntr")
        .and_then(|answer| {
            answer.lines().find_map(|line| {
                line.strip_prefix("zk_num_alive_connections")
                    .and_then(|count| count.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}
