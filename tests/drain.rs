//! Draining a running agent: withdrawn at once, credentials still served,
//! stopped once traffic has ended (or the drain times out).

mod common;

use std::time::Duration;

use common::zookeeper::{Reader, ZooKeeper};
use common::*;
use nix::sys::signal::Signal;
use tokio::time::Instant;

fn options(zookeeper: &ZooKeeper, drain: &str) -> AgentOptions {
    AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\nnode = \"draining\"\n[traffic]\ninterface = \"lo\"\n[drain]\n{drain}\n",
            zookeeper.connect_string()
        ),
        ..AgentOptions::default()
    }
}

#[tokio::test]
async fn drain_withdraws_keeps_serving_and_stops_when_quiet() {
    let zookeeper = ZooKeeper::start(2000).await;
    // Other tests relay on lo too: count anything under 100 Gbps as idle.
    let mut agent = Agent::start(options(
        &zookeeper,
        "idle_mbps = 100000.0\nquiet_period = \"1500ms\"\ntimeout = \"30s\"",
    ));
    let reader = Reader::connect(&zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    let node = "/turn/servers/draining";
    wait_for(Duration::from_secs(5), "the node", || reader.node(node)).await;

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
        || async { (reader.exists(node).await == Some(false)).then_some(()) },
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
