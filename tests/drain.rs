//! Draining a running agent: withdrawn at once, credentials still served,
//! stopped once traffic has ended (or the drain times out).

mod common;

use std::time::Duration;

use common::zookeeper::{Reader, ZooKeeper};
use common::*;
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// The control channel is off: these tests are about the interface
/// traffic a drain falls back to (tests/control.rs drains by allocations).
fn options(zookeeper: &ZooKeeper, drain: &str) -> AgentOptions {
    AgentOptions {
        turnserver_extra: "control = \"off\"\n".into(),
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\nnode = \"draining\"\n[traffic]\ninterface = \"lo\"\n[drain]\n{drain}\n",
            zookeeper.connect_string()
        ),
        ..AgentOptions::default()
    }
}

const NODE: &str = "/turn/servers/draining";

/// An agent with these `[drain]` lines, ready and listed.
async fn listed(zookeeper: &ZooKeeper, drain: &str) -> (Agent, Reader) {
    let agent = Agent::start(options(zookeeper, drain));
    let reader = Reader::connect(zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    wait_for(Duration::from_secs(5), "the node", || reader.node(NODE)).await;
    (agent, reader)
}

#[tokio::test]
async fn drain_withdraws_keeps_serving_and_stops_when_quiet() {
    let zookeeper = ZooKeeper::start(2000).await;
    // Other tests relay on lo too: count anything under 100 Gbps as idle.
    let (mut agent, reader) = listed(
        &zookeeper,
        "idle_mbps = 100000.0\nquiet_period = \"1500ms\"\ntimeout = \"30s\"",
    )
    .await;

    let config = agent.files.config_path.display().to_string();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_agent_cli(&["drain", "--config", &config], &[]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("draining"));
    let asked = Instant::now();
    wait_for(
        Duration::from_secs(1),
        "the node to be withdrawn",
        || async { (reader.exists(NODE).await == Some(false)).then_some(()) },
    )
    .await;
    let (status, body) = agent.get("/readyz").await.unwrap();
    assert_eq!((status, body["reason"].as_str()), (503, Some("draining")));
    assert!(
        agent.credential("").await.is_some(),
        "clients holding this host still get credentials"
    );

    let exit = agent.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{}", agent.log());
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "stopped before the quiet period"
    );
    assert!(agent.turnservers().is_empty());
    assert!(agent.log().contains("drained"));
}

/// Runs alone (see .config/nextest.toml): lo then carries only this test's
/// relayed traffic, so "idle" means the relay really stopped.
#[tokio::test]
async fn drain_waits_for_live_relayed_traffic_to_end() {
    let zookeeper = ZooKeeper::start(2000).await;
    let (mut agent, reader) = listed(
        &zookeeper,
        "idle_mbps = 1.0\nquiet_period = \"1s\"\ntimeout = \"60s\"",
    )
    .await;
    let served = agent.wait_credential(Duration::from_secs(5)).await;

    // coturn's own client relays ~10 Mbps for a few seconds.
    let mut traffic =
        uclient_relaying(agent.files.turn_port, &served.userid, &served.password, 600);
    wait_for(
        Duration::from_secs(10),
        "relayed traffic to flow",
        || async { (lo_mbps_over(Duration::from_millis(300)).await > 4.0).then_some(()) },
    )
    .await;

    agent.signal(Signal::SIGUSR1);
    let asked = Instant::now();
    wait_for(
        Duration::from_secs(1),
        "the node to be withdrawn",
        || async { (reader.exists(NODE).await == Some(false)).then_some(()) },
    )
    .await;
    let status = tokio::time::timeout(Duration::from_secs(60), traffic.wait())
        .await
        .expect("uclient ends")
        .unwrap();
    let traffic_ended = Instant::now();
    assert!(
        status.success(),
        "uclient relayed through the draining host"
    );
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent stopped while traffic was flowing:\n{}",
        agent.log()
    );
    let exit = agent.wait_exit(Duration::from_secs(10)).await;
    eprintln!(
        "drain asked -> traffic ended {:?}, traffic ended -> agent exited {:?}",
        traffic_ended - asked,
        traffic_ended.elapsed()
    );
    assert_eq!(exit.code(), Some(0), "{}", agent.log());
    assert!(
        traffic_ended.elapsed() < Duration::from_secs(10),
        "the drain ended with the traffic, not at its timeout"
    );
    assert!(agent.log().contains("drained"), "{}", agent.log());
}

/// Bytes through lo over `window`, in Mbps.
async fn lo_mbps_over(window: Duration) -> f64 {
    let before = lo_bytes();
    tokio::time::sleep(window).await;
    (lo_bytes() - before) as f64 * 8.0 / 1e6 / window.as_secs_f64()
}

#[tokio::test]
async fn sigusr1_drain_gives_up_after_the_timeout() {
    let zookeeper = ZooKeeper::start(2000).await;
    // Nothing counts as idle: only the timeout ends this drain.
    let mut agent = Agent::start(options(
        &zookeeper,
        "idle_mbps = 0.0\nquiet_period = \"1h\"\ntimeout = \"2s\"",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.signal(Signal::SIGUSR1);
    let asked = Instant::now();
    let exit = agent.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{}", agent.log());
    assert!(asked.elapsed() >= Duration::from_secs(2));
    assert!(
        agent.log().contains("drain.timeout passed"),
        "{}",
        agent.log()
    );
    assert!(agent.turnservers().is_empty());
}
