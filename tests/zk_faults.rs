//! ZooKeeper faults against real servers: a short freeze of the server,
//! and a 3-node ensemble with two real agents and the allocator losing a
//! follower every client is pinned to, its leader, then its quorum. No
//! pick, no credential fetch and no session may be lost; the allocator's
//! view must follow every change made after the fault, and must never
//! claim a freshness the server did not confirm.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::wait_for;
use common::zookeeper::{Ensemble, Reader, ZooKeeper};
use common::{http_client_builder, Agent, AgentOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
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
async fn a_test_server_is_never_mistaken_for_another_on_a_taken_port() {
    // The fixture behind every ZooKeeper test: when another test's server
    // took the port picked for this one, this one must not go on talking to
    // that server (two agents would then fight over one node).
    let first = ZooKeeper::start(2000).await;
    let mut second = ZooKeeper::prepare_on(2000, first.port);
    assert!(
        !second.try_spawn().await,
        "the taken port was reported as ours"
    );
    let third = ZooKeeper::start(2000).await;
    assert_ne!(third.port, first.port);
    let conf = common::zookeeper::four_letter(third.port, "conf").unwrap();
    assert!(conf.contains(&format!(
        "dataDir={}/",
        third.dir.path().join("data").display()
    )));
}

#[tokio::test]
async fn a_freeze_shorter_than_the_session_timeout_does_not_blind_the_allocator() {
    // Ticks of 300 ms allow sessions up to 6 s; the client gives up on a
    // silent connection after its read timeout, 2/3 of its session timeout
    // (2.67 s), so a 3.4 s freeze disconnects it without expiring any
    // session.
    let zookeeper = ZooKeeper::start(300).await;
    let writer = Reader::connect(&zookeeper).await;
    put(&writer, "a", &payload(100.0, 1)).await;
    let mut settings = AllocatorSettings::new(zookeeper.connect_string(), BASE);
    settings.session_timeout = Duration::from_secs(4);
    let allocator = Allocator::start(settings).await.unwrap();
    assert!(allocator.wait_synced(Duration::from_secs(10)).await);
    assert_eq!(hosts(&allocator.snapshot()), vec![("a".to_string(), 100.0)]);

    zookeeper.freeze();
    let frozen = Instant::now();
    wait_for(
        Duration::from_millis(3300),
        "the allocator to notice the frozen server",
        || {
            let noticed = !allocator.snapshot().live;
            async move { noticed.then_some(()) }
        },
    )
    .await;
    // The fault lasts 3.4 s in all: its length, not a wait for a condition.
    tokio::time::sleep_until(frozen + Duration::from_millis(3400)).await;
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
        "after a 3.4 s freeze: changes reached the view {} ms after they began",
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

/// The agent's publishing cadence: no host may be missing from the
/// allocator's view for longer than this.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// A real agent (turnserver, credentials, registry) publishing `node`.
fn start_agent(connect: &str, node: &str) -> Agent {
    Agent::start(AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{connect}\"\npath = \"{BASE}\"\nnode = \"{node}\"\n\
             session_timeout = \"2s\"\npublish_interval = \"{}s\"\n\
             [traffic]\ninterface = \"lo\"\n\
             [access]\nrate_limit_per_second = 0.0\n",
            PUBLISH_INTERVAL.as_secs()
        ),
        ..AgentOptions::default()
    })
}

/// The agent's registry as `/readyz` shows it: (session, connected and
/// published).
async fn registry(agent: &Agent) -> Option<(String, bool)> {
    let (_, body) = agent.get("/readyz").await?;
    let registry = &body["registry"];
    Some((
        registry["session"].as_str()?.to_string(),
        registry["connected"] == true && registry["published"] == true,
    ))
}

/// What a client saw through a fault, sampled every 10 ms.
#[derive(Debug, Default)]
struct Observed {
    picks: u64,
    failed_picks: u64,
    /// Per host, the longest time it was missing from the allocator's view.
    longest_gap: Vec<Duration>,
    /// The longest time the allocator's view was not live (no server).
    longest_offline: Duration,
}

/// Samples the allocator until `stop`: picks, and how long each of
/// `nodes` is missing from its view.
async fn observe(
    allocator: Arc<Allocator>,
    nodes: Vec<String>,
    stop: CancellationToken,
) -> Observed {
    let mut observed = Observed {
        longest_gap: vec![Duration::ZERO; nodes.len()],
        ..Observed::default()
    };
    let mut missing_since: Vec<Option<Instant>> = vec![None; nodes.len()];
    let mut offline = Offline::default();
    while !stop.is_cancelled() {
        observed.picks += 1;
        if allocator
            .pick(&turn_agent::allocator::Preference::default())
            .is_err()
        {
            observed.failed_picks += 1;
        }
        let view = allocator.snapshot();
        offline.sample(view.live);
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
    observed.longest_offline = offline.longest();
    observed
}

/// The longest run of samples in which a client had no server.
#[derive(Default)]
struct Offline {
    since: Option<Instant>,
    longest: Duration,
}

impl Offline {
    fn sample(&mut self, connected: bool) {
        match (connected, self.since) {
            (false, None) => self.since = Some(Instant::now()),
            (true, Some(since)) => {
                self.longest = self.longest.max(since.elapsed());
                self.since = None;
            }
            _ => {}
        }
    }

    fn longest(&self) -> Duration {
        self.since
            .map_or(self.longest, |since| self.longest.max(since.elapsed()))
    }
}

/// Fetches a credential from every agent in turn until `stop`, and reads
/// whether its registry is connected: (fetches, failed fetches, the
/// longest time an agent was disconnected from ZooKeeper).
async fn fetch_credentials(agents: Vec<String>, stop: CancellationToken) -> (u64, u64, Duration) {
    let http = http_client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (mut fetches, mut failed) = (0, 0);
    let mut offline: Vec<Offline> = agents.iter().map(|_| Offline::default()).collect();
    while !stop.is_cancelled() {
        for (base, offline) in agents.iter().zip(&mut offline) {
            if let Ok(response) = http.get(format!("{base}/readyz")).send().await {
                if let Ok(body) = response.json::<serde_json::Value>().await {
                    offline.sample(body["registry"]["connected"] == true);
                }
            }
            let url = format!("{base}/turncredential");
            fetches += 1;
            let served = match http.get(&url).send().await {
                Ok(response) if response.status() == 200 => response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|body| common::parse_served(&body)),
                _ => None,
            };
            if served.is_none() {
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let longest = offline
        .iter()
        .map(Offline::longest)
        .max()
        .unwrap_or_default();
    (fetches, failed, longest)
}

/// One fault's figures, printed as one `FIGURES` line for the run log.
#[derive(Debug)]
struct Figures {
    fault: &'static str,
    /// From the fault's end (see each fault) until every agent is
    /// connected and published and the allocator's view is live with
    /// every host.
    back: Duration,
    picks: u64,
    failed_picks: u64,
    fetches: u64,
    failed_fetches: u64,
    longest_gap: Duration,
    /// The longest time one client (agent or allocator) had no server.
    longest_offline: Duration,
    sessions_lost: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FIGURES fault={} back_ms={} picks={} failed_picks={} fetches={} failed_fetches={} longest_gap_ms={} longest_offline_ms={} sessions_lost={}",
            self.fault,
            self.back.as_millis(),
            self.picks,
            self.failed_picks,
            self.fetches,
            self.failed_fetches,
            self.longest_gap.as_millis(),
            self.longest_offline.as_millis(),
            self.sessions_lost
        )
    }
}

/// The clients' side of one fault: picks, credential fetches and the
/// agents' sessions, from before the fault until after it.
struct Watched {
    stop: CancellationToken,
    view: tokio::task::JoinHandle<Observed>,
    fetches: tokio::task::JoinHandle<(u64, u64, Duration)>,
    sessions: Vec<String>,
}

impl Watched {
    async fn begin(allocator: &Arc<Allocator>, agents: &[Agent], nodes: &[String]) -> Watched {
        let mut sessions = Vec::new();
        for agent in agents {
            let (session, _) = registry(agent).await.expect("the agent answers /readyz");
            sessions.push(session);
        }
        let stop = CancellationToken::new();
        let view = tokio::spawn(observe(allocator.clone(), nodes.to_vec(), stop.clone()));
        let bases = agents.iter().map(|agent| agent.url("")).collect();
        let fetches = tokio::spawn(fetch_credentials(bases, stop.clone()));
        Watched {
            stop,
            view,
            fetches,
            sessions,
        }
    }

    /// Waits until everything is back (counting from `ended`), writes a
    /// host and waits for it in the view, then stops watching.
    async fn end(
        self,
        fault: &'static str,
        ended: Instant,
        allocator: &Allocator,
        agents: &[Agent],
        nodes: &[String],
        writer: &Reader,
    ) -> Figures {
        wait_for(
            Duration::from_secs(20),
            "every client back",
            || async move {
                let view = allocator.snapshot();
                let mut back = view.live
                    && nodes
                        .iter()
                        .all(|node| view.hosts.iter().any(|host| &host.node == node));
                for agent in agents {
                    back &= matches!(registry(agent).await, Some((_, true)));
                }
                back.then_some(())
            },
        )
        .await;
        let back = ended.elapsed();
        // Changes made after the fault reach the view.
        let probe = format!("probe-{}", fault.replace(' ', "-"));
        retry("a write after the fault", || {
            let probe = probe.clone();
            async move {
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                match writer
                    .client
                    .create(&format!("{BASE}/{probe}"), &payload(1.0, 9), &persistent)
                    .await
                {
                    Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
                    Err(error) => Err(error),
                }
            }
        })
        .await;
        wait_for(Duration::from_secs(5), "the write in the view", || {
            let seen = allocator
                .snapshot()
                .hosts
                .iter()
                .any(|host| host.node == probe);
            async move { seen.then_some(()) }
        })
        .await;
        self.stop.cancel();
        let observed = self.view.await.unwrap();
        let (fetches, failed_fetches, agents_offline) = self.fetches.await.unwrap();
        let mut sessions_lost = 0;
        for (agent, before) in agents.iter().zip(&self.sessions) {
            let (now, _) = registry(agent).await.expect("the agent answers /readyz");
            if &now != before {
                sessions_lost += 1;
            }
        }
        let figures = Figures {
            fault,
            back,
            picks: observed.picks,
            failed_picks: observed.failed_picks,
            fetches,
            failed_fetches,
            longest_gap: observed
                .longest_gap
                .iter()
                .copied()
                .max()
                .unwrap_or_default(),
            longest_offline: observed.longest_offline.max(agents_offline),
            sessions_lost,
        };
        println!("{figures}");
        figures
    }
}

#[tokio::test]
async fn an_ensemble_losing_a_follower_its_leader_then_its_quorum_costs_nothing_a_client_sees() {
    // The leader serves no clients and the third node starts late, so
    // every client's first connection goes to the one follower running:
    // the clients are pinned to it.
    let mut ensemble = Ensemble::start_nodes(3, "leaderServes=no", 2).await;
    let pinned = (0..2)
        .find(|&index| ensemble.is_follower(index))
        .expect("a follower");
    let connect = ensemble.connect_string();
    let nodes = vec!["agent-0".to_string(), "agent-1".to_string()];
    let agents: Vec<Agent> = nodes
        .iter()
        .map(|node| start_agent(&connect, node))
        .collect();
    let mut settings = AllocatorSettings::new(connect.clone(), BASE);
    settings.session_timeout = Duration::from_secs(2);
    // Start refuses a path that does not exist: the agents create it.
    let allocator = wait_for(Duration::from_secs(20), "the agents' path", || {
        let settings = settings.clone();
        async move { Allocator::start(settings).await.ok() }
    })
    .await;
    let allocator = Arc::new(allocator);
    for agent in &agents {
        agent.wait_ready(Duration::from_secs(20)).await;
    }
    wait_for(Duration::from_secs(20), "both hosts in the view", || {
        let view = allocator.snapshot();
        let ok = view.live
            && nodes
                .iter()
                .all(|node| view.hosts.iter().any(|host| &host.node == node));
        async move { ok.then_some(()) }
    })
    .await;
    ensemble.revive(2);
    ensemble.wait_serving(2, "the third node").await;
    let writer = Reader::connect_to(connect.clone()).await;
    let on_pinned = alive_connections(ensemble.client_ports[pinned]);
    assert!(
        on_pinned >= 3,
        "both agents and the allocator are on node {pinned}: {on_pinned} connections"
    );

    // The follower every client is on frozen for longer than the session
    // timeout: each client gives up on it after its read timeout (2/3 of
    // the session timeout), reconnects to another server first and keeps
    // its session. Counted from the thaw.
    let watched = Watched::begin(&allocator, &agents, &nodes).await;
    ensemble.freeze(pinned);
    let frozen = Instant::now();
    // The fault's length, not a wait for a condition.
    tokio::time::sleep_until(frozen + Duration::from_secs(3)).await;
    ensemble.thaw(pinned);
    let freeze = watched
        .end(
            "follower freeze",
            Instant::now(),
            &allocator,
            &agents,
            &nodes,
            &writer,
        )
        .await;

    // The leader killed: the follower elected in its place stops serving
    // clients (leaderServes=no), so the clients on it move again. Counted
    // from the kill.
    let watched = Watched::begin(&allocator, &agents, &nodes).await;
    let leader = ensemble.leader_by_quorum_port().expect("a leader");
    ensemble.kill(leader);
    let killed = Instant::now();
    let kill = watched
        .end("leader kill", killed, &allocator, &agents, &nodes, &writer)
        .await;
    ensemble.revive(leader);
    ensemble.wait_serving(leader, "the old leader back").await;

    // Quorum lost for 5 s, longer than the session timeout: the ensemble
    // keeps the sessions and so must the clients. Counted from the moment
    // a server serves again.
    let watched = Watched::begin(&allocator, &agents, &nodes).await;
    let leader = ensemble.leader_by_quorum_port().expect("a leader");
    let other = (0..3).find(|&index| index != leader).unwrap();
    ensemble.kill(leader);
    ensemble.kill(other);
    let lost = Instant::now();
    tokio::time::sleep_until(lost + Duration::from_secs(5)).await;
    ensemble.revive(leader);
    ensemble.revive(other);
    wait_for(Duration::from_secs(30), "the quorum back", || {
        let back = (0..3).any(|index| ensemble.is_follower(index));
        async move { back.then_some(()) }
    })
    .await;
    let quorum = watched
        .end(
            "quorum loss",
            Instant::now(),
            &allocator,
            &agents,
            &nodes,
            &writer,
        )
        .await;

    for figures in [&freeze, &kill, &quorum] {
        assert_eq!(figures.failed_picks, 0, "{figures}");
        assert_eq!(figures.failed_fetches, 0, "{figures}");
        assert_eq!(figures.sessions_lost, 0, "{figures}");
        assert!(figures.longest_gap <= PUBLISH_INTERVAL, "{figures}");
    }
    assert_eq!(
        quorum.longest_gap,
        Duration::ZERO,
        "no reader may see a host missing after a quorum loss: {quorum}"
    );
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

#[tokio::test]
async fn a_session_the_server_expired_is_replaced_at_once() {
    // Only the server expires a session now; this proves its answer is
    // heard: the agent frozen past its session timeout comes back to an
    // expired session and publishes again through a new one.
    let zookeeper = ZooKeeper::start(200).await;
    let agent = start_agent(&zookeeper.connect_string(), "agent-0");
    agent.wait_ready(Duration::from_secs(20)).await;
    let reader = Reader::connect(&zookeeper).await;
    let path = format!("{BASE}/agent-0");
    let (_, before) = wait_for(Duration::from_secs(10), "the node", || reader.node(&path)).await;

    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_for(
        Duration::from_secs(10),
        "the server to expire the frozen agent's session",
        || {
            let reader = &reader;
            let path = &path;
            async move { (reader.exists(path).await == Some(false)).then_some(()) }
        },
    )
    .await;
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    let thawed = Instant::now();
    let (_, after) = wait_for(
        Duration::from_secs(5),
        "the node published by a new session",
        || {
            let reader = &reader;
            let path = &path;
            async move {
                reader
                    .node(path)
                    .await
                    .filter(|(_, stat)| stat.ephemeral_owner != before.ephemeral_owner)
            }
        },
    )
    .await;
    println!(
        "expired by the server: node back {} ms after the agent resumed",
        thawed.elapsed().as_millis()
    );
    assert_ne!(after.ephemeral_owner, before.ephemeral_owner);
}
