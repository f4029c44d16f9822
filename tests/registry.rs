//! The ZooKeeper registry against a real ZooKeeper, checked through an
//! independent client session (and ZooKeeper's own `dump`).

mod common;

use std::time::Duration;

use common::zookeeper::{four_letter, Reader, ZooKeeper};
use common::*;
use nix::sys::signal::Signal;
use tokio::time::Instant;

const BASE: &str = "/turn/servers";

fn options(zookeeper: &ZooKeeper, zookeeper_extra: &str, turnserver_extra: &str) -> AgentOptions {
    AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\npath = \"{BASE}\"\nnode = \"host-a\"\n{zookeeper_extra}\n\
             [traffic]\ninterface = \"lo\"\ncapacity_mbps = 1000.0\n",
            zookeeper.connect_string()
        ),
        turnserver_extra: turnserver_extra.to_string(),
        ..AgentOptions::default()
    }
}

fn node() -> String {
    format!("{BASE}/host-a")
}

async fn wait_present(
    reader: &Reader,
    timeout: Duration,
    what: &str,
) -> (serde_json::Value, zookeeper_client::Stat) {
    let path = node();
    wait_for(timeout, what, || reader.node(&path)).await
}

async fn wait_absent(reader: &Reader, timeout: Duration, what: &str) {
    wait_for(timeout, what, || async {
        (reader.exists(&node()).await == Some(false)).then_some(())
    })
    .await
}

#[tokio::test]
async fn node_is_published_with_a_valid_payload_and_deleted_on_sigterm() {
    let zookeeper = ZooKeeper::start(2000).await;
    let mut agent = Agent::start(options(&zookeeper, "", ""));
    let reader = Reader::connect(&zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    let ready_at = Instant::now();
    let (payload, stat) = wait_present(
        &reader,
        Duration::from_secs(1),
        "the node within 1 s of ready",
    )
    .await;
    eprintln!("ready -> node visible: {:?}", ready_at.elapsed());

    assert_ne!(stat.ephemeral_owner, 0, "the node must be EPHEMERAL");
    assert_eq!(payload["restAddr"], agent.files.api.to_string());
    let free = payload["freeTraffic"].as_f64().unwrap();
    assert!((0.0..=1000.0).contains(&free), "{payload}");
    assert_eq!(free, (free * 10.0).round() / 10.0, "one decimal");
    assert_eq!(payload["capacityMbps"], 1000.0);
    assert_eq!(payload["realm"], agent.files.realm);
    assert_eq!(
        payload["turnUris"][0],
        format!("turn:127.0.0.1:{}?transport=udp", agent.files.turn_port)
    );
    assert_eq!(payload["version"], env!("CARGO_PKG_VERSION"));
    assert!(humantime::parse_rfc3339(payload["updatedAt"].as_str().unwrap()).is_ok());
    // ZooKeeper itself lists the node under the agent's session.
    let dump = four_letter(zookeeper.port, "dump").unwrap();
    assert!(dump.contains(&node()), "{dump}");
    let (_, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(body["registry"]["published"], true, "{body}");

    agent.signal(Signal::SIGTERM);
    let stopped = Instant::now();
    wait_absent(
        &reader,
        Duration::from_secs(1),
        "the node to go within 1 s of SIGTERM",
    )
    .await;
    eprintln!("SIGTERM -> node gone: {:?}", stopped.elapsed());
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn sigkill_of_the_agent_removes_the_node_with_its_session() {
    let zookeeper = ZooKeeper::start(200).await;
    let mut agent = Agent::start(options(&zookeeper, "session_timeout = \"2s\"", ""));
    let reader = Reader::connect(&zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    wait_present(&reader, Duration::from_secs(2), "the node").await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(2)).await;
    let killed = Instant::now();
    // Session timeout plus one tick, plus a little for the reader.
    wait_absent(
        &reader,
        Duration::from_millis(2000 + 200 + 300),
        "the node to expire",
    )
    .await;
    eprintln!("agent SIGKILL -> node gone: {:?}", killed.elapsed());
}

#[tokio::test]
async fn node_is_withdrawn_while_turnserver_is_down() {
    let zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(options(
        &zookeeper,
        "",
        "restart_delay_min = \"2s\"\nrestart_delay_max = \"2s\"",
    ));
    let reader = Reader::connect(&zookeeper).await;
    let pid = agent.wait_ready(Duration::from_secs(5)).await;
    wait_present(&reader, Duration::from_secs(2), "the node").await;

    signal_pid(pid, Signal::SIGKILL);
    let killed = Instant::now();
    wait_absent(
        &reader,
        Duration::from_secs(1),
        "the node to be withdrawn within 1 s",
    )
    .await;
    eprintln!(
        "turnserver SIGKILL -> node withdrawn: {:?}",
        killed.elapsed()
    );
    let new_pid = agent.wait_ready(Duration::from_secs(5)).await;
    assert_ne!(new_pid, pid);
    let ready_again = Instant::now();
    let (payload, _) = wait_present(
        &reader,
        Duration::from_secs(1),
        "the node after turnserver is back",
    )
    .await;
    eprintln!("ready again -> node back: {:?}", ready_again.elapsed());
    assert_eq!(payload["restarts"], 1);
}

#[tokio::test]
async fn short_zookeeper_outage_keeps_the_node() {
    let mut zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(options(&zookeeper, "session_timeout = \"10s\"", ""));
    agent.wait_ready(Duration::from_secs(5)).await;
    {
        let reader = Reader::connect(&zookeeper).await;
        wait_present(&reader, Duration::from_secs(2), "the node").await;
    }
    zookeeper.restart().await;
    let reader = Reader::connect(&zookeeper).await;
    let (payload, _) = wait_present(
        &reader,
        Duration::from_secs(5),
        "the node after a short outage",
    )
    .await;
    assert_eq!(payload["restAddr"], agent.files.api.to_string());
}

#[tokio::test]
async fn long_zookeeper_outage_has_the_node_back_within_two_seconds_of_its_return() {
    let mut zookeeper = ZooKeeper::start(200).await;
    let agent = Agent::start(options(&zookeeper, "session_timeout = \"2s\"", ""));
    agent.wait_ready(Duration::from_secs(5)).await;
    let first_owner = {
        let reader = Reader::connect(&zookeeper).await;
        wait_present(&reader, Duration::from_secs(2), "the node")
            .await
            .1
            .ephemeral_owner
    };
    zookeeper.stop();
    // The outage itself: longer than the session timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(
        body["status"], "ready",
        "a ZooKeeper outage does not make the host unready"
    );
    zookeeper.spawn().await;
    let back = Instant::now();
    let reader = Reader::connect(&zookeeper).await;
    // The restarted server restores its sessions with a fresh timeout, and
    // only its answer expires a session (patched zookeeper-client): the
    // agent takes its session back, so the node is there at once; had the
    // server expired it, a new session re-creates the node.
    let (_, stat) = wait_present(
        &reader,
        Duration::from_secs(2),
        "the node back after the outage",
    )
    .await;
    eprintln!(
        "ZooKeeper back after the outage -> node back: {:?}, same session: {}",
        back.elapsed(),
        stat.ephemeral_owner == first_owner
    );
}

#[tokio::test]
async fn agent_started_while_zookeeper_is_down_serves_and_publishes_later() {
    let mut zookeeper = ZooKeeper::prepare(2000);
    let agent = Agent::start(options(&zookeeper, "", ""));
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;
    let (_, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(body["registry"]["connected"], false, "{body}");
    assert!(
        body["registry"]["last_error"]
            .as_str()
            .unwrap()
            .contains("ZooKeeper"),
        "{body}"
    );

    zookeeper.spawn().await;
    let reader = Reader::connect(&zookeeper).await;
    wait_present(
        &reader,
        Duration::from_secs(3),
        "the node once ZooKeeper is up",
    )
    .await;
}

#[tokio::test]
async fn steady_traffic_writes_at_most_once_per_max_silence() {
    let zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\npath = \"{BASE}\"\nnode = \"host-a\"\npublish_interval = \"100ms\"\nmax_silence = \"1s\"\n\
             [traffic]\ninterface = \"lo\"\ncapacity_mbps = 100000.0\nhysteresis_percent = 50.0\n",
            zookeeper.connect_string()
        ),
        ..AgentOptions::default()
    });
    let reader = Reader::connect(&zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    let (_, first) = wait_present(&reader, Duration::from_secs(2), "the node").await;
    let started = Instant::now();
    let window = Duration::from_millis(3500);
    tokio::time::sleep_until(started + window).await;
    let (payload, last) = reader.node(&node()).await.unwrap();
    let writes = last.version - first.version;
    eprintln!("{writes} writes in {window:?} with max_silence 1s and publish_interval 100ms");
    // One per max_silence, plus one for a window boundary.
    assert!((3..=4).contains(&writes), "{writes} writes: {payload}");
}

/// lo's received bytes (on lo, rx always equals tx).
#[tokio::test]
async fn relayed_traffic_lowers_free_traffic_by_the_measured_amount() {
    let zookeeper = ZooKeeper::start(2000).await;
    let capacity = 100.0;
    let agent = Agent::start(AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\npath = \"{BASE}\"\nnode = \"host-a\"\npublish_interval = \"1s\"\nmax_silence = \"1s\"\n\
             [traffic]\ninterface = \"lo\"\ncapacity_mbps = {capacity:.1}\nhysteresis_percent = 0.0\n",
            zookeeper.connect_string()
        ),
        ..AgentOptions::default()
    });
    let reader = Reader::connect(&zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    wait_present(&reader, Duration::from_secs(2), "the node").await;
    let served = agent.wait_credential(Duration::from_secs(5)).await;

    // coturn's own client relays a steady ~10 Mbps through turnserver.
    let _traffic = uclient_relaying(
        agent.files.turn_port,
        &served.userid,
        &served.password,
        3000,
    );
    let mut last = (Instant::now(), lo_bytes());
    wait_for(Duration::from_secs(15), "relayed traffic to flow", || {
        let now = (Instant::now(), lo_bytes());
        let seconds = (now.0 - last.0).as_secs_f64();
        let mbps = (now.1 - last.1) as f64 * 8.0 / 1e6 / seconds;
        let flowing = seconds >= 0.5 && mbps > 4.0;
        if seconds >= 0.5 {
            last = now;
        }
        async move { flowing.then_some(()) }
    })
    .await;

    // Over the same six seconds: what lo carried, and what the agent published.
    let window_start = (Instant::now(), lo_bytes());
    let mut published_used = Vec::new();
    let mut last_version = None;
    while window_start.0.elapsed() < Duration::from_secs(6) {
        if let Some((payload, stat)) = reader.node(&node()).await {
            if last_version != Some(stat.version) {
                last_version = Some(stat.version);
                published_used.push(capacity - payload["freeTraffic"].as_f64().unwrap());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let measured =
        (lo_bytes() - window_start.1) as f64 * 8.0 / 1e6 / window_start.0.elapsed().as_secs_f64();
    // The first value read describes the second before the window.
    let samples = &published_used[1..];
    let published = samples.iter().sum::<f64>() / samples.len() as f64;
    eprintln!(
        "lo carried {measured:.2} Mbps; the agent published {published:.2} Mbps used ({samples:?})"
    );
    assert!(samples.len() >= 4, "{published_used:?}");
    assert!(measured > 4.0);
    assert!(
        (published - measured).abs() <= measured * 0.2,
        "published {published:.2} Mbps used, lo carried {measured:.2} Mbps"
    );
}

#[tokio::test]
async fn killing_the_ensemble_leader_keeps_the_node_published() {
    use common::zookeeper::Ensemble;
    let mut ensemble = Ensemble::start(3).await;
    let agent = Agent::start(AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\npath = \"{BASE}\"\nnode = \"host-a\"\nsession_timeout = \"4s\"\n\
             [traffic]\ninterface = \"lo\"\n",
            ensemble.connect_string()
        ),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(5)).await;
    let reader = Reader::connect_to(ensemble.connect_string()).await;
    let (_, before) =
        wait_present(&reader, Duration::from_secs(5), "the node on the ensemble").await;

    let leader = ensemble.leader().expect("a leader");
    ensemble.kill(leader);
    let killed = Instant::now();
    wait_for(Duration::from_secs(10), "a new leader", || {
        let elected = ensemble.leader().is_some();
        async move { elected.then_some(()) }
    })
    .await;
    eprintln!("new leader after {:?}", killed.elapsed());
    // Watch for a while past the election: the node must stay, owned by the
    // same session.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        if let Some((_, stat)) = reader.node(&node()).await {
            assert_eq!(stat.czxid, before.czxid, "the node was re-created");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, after) = wait_present(
        &reader,
        Duration::from_secs(2),
        "the node after the election",
    )
    .await;
    assert_eq!(
        (after.czxid, after.ephemeral_owner),
        (before.czxid, before.ephemeral_owner)
    );
}

#[tokio::test]
async fn a_fast_restart_replaces_the_node_left_by_the_previous_session() {
    let zookeeper = ZooKeeper::start(2000).await;
    let options = options(&zookeeper, "session_timeout = \"20s\"", "");
    let mut agent = Agent::start(options_clone(&options));
    let reader = Reader::connect(&zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    let (_, old) = wait_present(&reader, Duration::from_secs(2), "the node").await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(2)).await;

    // The old session lives on for 20 s; the new agent must not wait for it.
    let agent = Agent::start_with(agent.take_files(), &options);
    agent.wait_ready(Duration::from_secs(5)).await;
    let (_, new) = wait_for(
        Duration::from_secs(5),
        "the node owned by the new session",
        || async {
            reader
                .node(&node())
                .await
                .filter(|(_, stat)| stat.ephemeral_owner != old.ephemeral_owner)
        },
    )
    .await;
    assert_ne!(new.czxid, old.czxid);
}

fn options_clone(options: &AgentOptions) -> AgentOptions {
    AgentOptions {
        extra: options.extra.clone(),
        turnserver_extra: options.turnserver_extra.clone(),
        ..AgentOptions::default()
    }
}

#[tokio::test]
async fn a_node_held_by_another_live_host_is_never_overwritten() {
    let zookeeper = ZooKeeper::start(2000).await;
    let other = Reader::connect(&zookeeper).await;
    let options =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    other.client.mkdir(BASE, &options).await.unwrap();
    let theirs = br#"{"freeTraffic":1.0,"restAddr":"192.0.2.99:8086"}"#;
    let ephemeral =
        zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
    other
        .client
        .create(&node(), theirs, &ephemeral)
        .await
        .unwrap();

    let agent = Agent::start(options_for_conflict(&zookeeper));
    agent.wait_ready(Duration::from_secs(5)).await;
    wait_for(
        Duration::from_secs(5),
        "a loud log line about the conflict",
        || {
            let logged = agent.log().contains("another live session");
            async move { logged.then_some(()) }
        },
    )
    .await;
    let (data, _) = other.client.get_data(&node()).await.unwrap();
    assert_eq!(data, theirs, "the other host's node was overwritten");

    // Once the other host's node goes, the agent publishes.
    other.client.delete(&node(), None).await.unwrap();
    let reader = Reader::connect(&zookeeper).await;
    let (payload, _) = wait_present(&reader, Duration::from_secs(3), "the agent's node").await;
    assert_eq!(payload["restAddr"], agent.files.api.to_string());
}

fn options_for_conflict(zookeeper: &ZooKeeper) -> AgentOptions {
    options(zookeeper, "publish_interval = \"200ms\"", "")
}

#[tokio::test]
async fn with_an_auth_file_only_the_agent_writes_and_anyone_reads() {
    let zookeeper = ZooKeeper::start(2000).await;
    let secret_dir = tempfile::tempdir().unwrap();
    let auth_file = secret_dir.path().join("zookeeper.auth");
    std::fs::write(&auth_file, "turn-agent:s3cret\n").unwrap();
    let agent = Agent::start(options(
        &zookeeper,
        &format!("auth_file = \"{}\"", auth_file.display()),
        "",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    let reader = Reader::connect(&zookeeper).await;
    wait_present(&reader, Duration::from_secs(3), "the node").await;

    let (acls, _) = reader.client.get_acl(&node()).await.unwrap();
    let described: Vec<String> = acls
        .iter()
        .map(|acl| format!("{}:{}:{}", acl.scheme(), acl.id(), acl.permission()))
        .collect();
    assert!(
        described
            .iter()
            .any(|acl| acl.starts_with("digest:turn-agent:")),
        "{described:?}"
    );
    assert!(
        described.iter().any(|acl| acl.starts_with("world:anyone:")),
        "{described:?}"
    );
    let denied = reader.client.set_data(&node(), b"{}", None).await;
    assert!(
        matches!(denied, Err(zookeeper_client::Error::NoAuth)),
        "{denied:?}"
    );
    assert!(!agent.log().contains("s3cret"));
}

#[tokio::test]
async fn a_stale_node_is_replaced_in_one_transaction_so_readers_never_see_it_missing() {
    let zookeeper = ZooKeeper::start(2000).await;
    let options = options(&zookeeper, "session_timeout = \"20s\"", "");
    let mut agent = Agent::start(options_clone(&options));
    let reader = Reader::connect(&zookeeper).await;
    agent.wait_ready(Duration::from_secs(5)).await;
    let (_, old) = wait_present(&reader, Duration::from_secs(2), "the node").await;
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(2)).await;

    // Two independent readers: one reads the node the moment a watch says
    // it changed (ZooKeeper delivers the event before any later state), the
    // other polls it without pause. Neither may ever find it missing.
    let watching = Reader::connect(&zookeeper).await;
    let polling = Reader::connect(&zookeeper).await;
    let mut watcher = watching
        .client
        .watch(&node(), zookeeper_client::AddWatchMode::Persistent)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut reads, mut missing) = (0u64, 0u64);
            while !stop.is_cancelled() {
                match polling.exists(&node()).await {
                    Some(false) => missing += 1,
                    Some(true) => {}
                    None => continue,
                }
                reads += 1;
            }
            (reads, missing)
        })
    };

    // The old session lives on for 20 s, so the new agent replaces its node.
    let agent = Agent::start_with(agent.take_files(), &options);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_missing_after_event = 0;
    loop {
        let event = tokio::time::timeout_at(deadline, watcher.changed())
            .await
            .expect("the node to be replaced within 10 s");
        if event.event_type == zookeeper_client::EventType::Session {
            continue;
        }
        if watching.exists(&node()).await == Some(false) {
            seen_missing_after_event += 1;
        }
        if event.event_type == zookeeper_client::EventType::NodeCreated {
            break;
        }
    }
    // Let the poller run past the replacement.
    let (_, new) = wait_present(&reader, Duration::from_secs(1), "the new node").await;
    assert_ne!(new.ephemeral_owner, old.ephemeral_owner);
    stop.cancel();
    let (reads, missing) = poller.await.unwrap();
    assert!(reads > 0);
    assert_eq!(
        (seen_missing_after_event, missing),
        (0, 0),
        "a reader saw the host missing while its node was replaced ({reads} polls)"
    );
    drop(agent);
}
