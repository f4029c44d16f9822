//! `/metrics` and `/status` of a real agent with a real turnserver and
//! ZooKeeper.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::zookeeper::ZooKeeper;
use common::*;
use nix::sys::signal::Signal;

/// `name{labels} value` lines of the text exposition.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(agent: &Agent) -> BTreeMap<String, f64> {
    let response = reqwest::get(agent.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    parse(&text)
}

#[tokio::test]
async fn metrics_and_status_follow_the_agent() {
    let zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\nnode = \"host-m\"\n[traffic]\ninterface = \"lo\"\ncapacity_mbps = 500.0\n",
            zookeeper.connect_string()
        ),
        turnserver_extra: "restart_delay_min = \"1s\"\nrestart_delay_max = \"1s\"".into(),
        ..AgentOptions::default()
    });
    let pid = agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;
    let metrics = wait_for(
        Duration::from_secs(5),
        "the node to be published",
        || async {
            let metrics = scrape(&agent).await;
            (metrics.get("turn_agent_zookeeper_published") == Some(&1.0)).then_some(metrics)
        },
    )
    .await;
    for (name, expected) in [
        ("turn_agent_turnserver_up", 1.0),
        ("turn_agent_turnserver_restarts_total", 0.0),
        ("turn_agent_credential_available", 1.0),
        ("turn_agent_credentials_in_database", 1.0),
        ("turn_agent_zookeeper_connected", 1.0),
    ] {
        assert_eq!(metrics.get(name), Some(&expected), "{name} in {metrics:?}");
    }
    assert!(metrics["turn_agent_turnserver_probe_latency_seconds"] > 0.0);
    assert!(metrics["turn_agent_zookeeper_writes_total"] >= 1.0);
    assert!(metrics["turn_agent_traffic_free_mbps"] <= 500.0);
    assert!(metrics.contains_key("turn_agent_credential_age_seconds"));
    assert!(metrics.contains_key("turn_agent_zookeeper_last_publish_age_seconds"));
    assert!(
        metrics
            .keys()
            .any(|k| k.starts_with("turn_agent_http_requests_total{")
                && k.contains("route=\"/turncredential\"")),
        "{metrics:?}"
    );

    // A turnserver death shows: down, one restart, one withdrawal.
    signal_pid(pid, Signal::SIGKILL);
    let metrics = wait_for(
        Duration::from_secs(5),
        "the restart in the metrics",
        || async {
            let metrics = scrape(&agent).await;
            (metrics.get("turn_agent_turnserver_restarts_total") == Some(&1.0)
                && metrics.get("turn_agent_zookeeper_withdrawals_total") == Some(&1.0))
            .then_some(metrics)
        },
    )
    .await;
    assert_eq!(
        metrics["turn_agent_turnserver_last_exit_code"], 9.0,
        "SIGKILL"
    );

    let (status, body) = agent.get("/status").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["turnserver"]["restarts"].as_u64().unwrap() >= 1);

    let url = format!("http://{}", agent.files.api);
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_agent_cli(&["status", "--url", &url], &[]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("turnserver:") && stdout.contains("credentials: long-term"),
        "{stdout}"
    );
    assert!(stdout.contains("zookeeper:"), "{stdout}");
}
