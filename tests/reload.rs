//! SIGHUP: live keys applied at once, turnserver keys through a drain and a
//! new turnserver, a bad file reported and ignored. Judged by ZooKeeper's
//! state, turnserver's pid and port, and coturn's own clients.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::zookeeper::{Reader, ZooKeeper};
use common::*;

const NODE: &str = "/turn/servers/reloaded";

fn options(zookeeper: &ZooKeeper) -> AgentOptions {
    AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\nnode = \"reloaded\"\n\
             [traffic]\ninterface = \"lo\"\ncapacity_mbps = 1000.0\n\
             [drain]\nidle_mbps = 100000.0\nquiet_period = \"1s\"\ntimeout = \"10s\"\n",
            zookeeper.connect_string()
        ),
        ..AgentOptions::default()
    }
}

/// An agent listed in its own ZooKeeper, serving a credential.
struct Listed {
    zookeeper: ZooKeeper,
    agent: Agent,
    reader: Reader,
    pid: u32,
    credential: Served,
}

impl Listed {
    async fn start() -> Listed {
        let zookeeper = ZooKeeper::start(2000).await;
        let agent = Agent::start(options(&zookeeper));
        let reader = Reader::connect(&zookeeper).await;
        let pid = agent.wait_ready(Duration::from_secs(5)).await;
        let credential = agent.wait_credential(Duration::from_secs(5)).await;
        published(&reader).await;
        Listed {
            zookeeper,
            agent,
            reader,
            pid,
            credential,
        }
    }
}

async fn published(reader: &Reader) -> serde_json::Value {
    wait_for(Duration::from_secs(5), "the node", || async {
        reader.node(NODE).await.map(|(payload, _)| payload)
    })
    .await
}

async fn wait_for_capacity(reader: &Reader, capacity: f64) -> serde_json::Value {
    wait_for(
        Duration::from_secs(5),
        &format!("capacity {capacity} in the node"),
        || async {
            let (payload, _) = reader.node(NODE).await?;
            (payload["capacityMbps"].as_f64() == Some(capacity)).then_some(payload)
        },
    )
    .await
}

#[tokio::test]
async fn capacity_is_applied_live_and_a_bad_file_changes_nothing() {
    let Listed {
        agent,
        reader,
        pid,
        credential: _,
        zookeeper: _zookeeper,
    } = Listed::start().await;
    assert_eq!(
        published(&reader).await["capacityMbps"].as_f64(),
        Some(1000.0)
    );

    agent.reload_with("capacity_mbps = 1000.0", "capacity_mbps = 250.0");
    let asked = tokio::time::Instant::now();
    // Other tests relay on lo too: free traffic is only bounded here.
    let payload = wait_for_capacity(&reader, 250.0).await;
    eprintln!("SIGHUP -> new capacity in ZooKeeper: {:?}", asked.elapsed());
    assert!(payload["freeTraffic"].as_f64().unwrap() <= 250.0);
    agent
        .wait_log("traffic.capacity_mbps", Duration::from_secs(1))
        .await;
    assert_eq!(agent.wait_ready(Duration::from_secs(1)).await, pid);
    assert_eq!(agent.turnservers(), vec![pid]);

    // Valid changes next to an invalid one: none of them is applied.
    let port = agent.files.turn_port;
    let text = std::fs::read_to_string(&agent.files.config_path).unwrap();
    agent.reload_with(
        "capacity_mbps = 250.0",
        "capacity_mbps = 50.0\nhysteresis_percent = 500.0",
    );
    agent
        .wait_log("traffic.hysteresis_percent", Duration::from_secs(5))
        .await;
    assert!(agent.log().contains("keeping the running configuration"));
    std::fs::write(&agent.files.config_path, &text).unwrap();
    agent.reload_with(
        &format!("listening_port = {port}"),
        "listening_port = 99999",
    );
    agent
        .wait_log("turnserver.listening_port", Duration::from_secs(5))
        .await;

    let (payload, _) = reader.node(NODE).await.expect("still listed");
    assert_eq!(payload["capacityMbps"].as_f64(), Some(250.0));
    assert_eq!(agent.wait_ready(Duration::from_secs(1)).await, pid);
    assert_eq!(agent.turnservers(), vec![pid]);
    assert!(!agent.log().contains("need a new turnserver"));
    let metrics = agent.metrics().await;
    for line in [
        "turn_agent_config_reloads_total{outcome=\"applied\"} 1",
        "turn_agent_config_reloads_total{outcome=\"rejected\"} 2",
        "turn_agent_config_last_reload_ok 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn a_new_port_gets_a_new_turnserver_after_a_drain() {
    let Listed {
        agent,
        reader,
        pid: old_pid,
        credential: _,
        zookeeper: _zookeeper,
    } = Listed::start().await;
    let old_port = agent.files.turn_port;
    let new_port = free_port();

    agent.reload_with(
        &format!("listening_port = {old_port}"),
        &format!("listening_port = {new_port}"),
    );
    let asked = tokio::time::Instant::now();
    wait_for(
        Duration::from_secs(2),
        "the node to be withdrawn",
        || async { (reader.exists(NODE).await == Some(false)).then_some(()) },
    )
    .await;
    eprintln!("SIGHUP -> withdrawn: {:?}", asked.elapsed());
    let (status, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("new configuration"),
        "{body}"
    );
    assert!(
        agent.credential("").await.is_some(),
        "credentials are still served while draining"
    );

    let new_pid = wait_for(Duration::from_secs(10), "a new turnserver", || async {
        match agent.get("/readyz").await {
            Some((200, body)) => body["turnserver"]["pid"]
                .as_u64()
                .map(|pid| pid as u32)
                .filter(|pid| *pid != old_pid),
            _ => None,
        }
    })
    .await;
    published(&reader).await;
    eprintln!(
        "SIGHUP -> new turnserver ready and listed again: {:?} (drain.quiet_period 1 s)",
        asked.elapsed()
    );
    assert_eq!(agent.turnservers(), vec![new_pid]);
    assert!(stunclient_answers(new_port).await);
    wait_for(Duration::from_secs(2), "the old port to be closed", || {
        let free = UdpSocket::bind(("127.0.0.1", old_port)).is_ok();
        async move { free.then_some(()) }
    })
    .await;
    let served = agent.credential("").await.unwrap();
    assert!(uclient_allocates(new_port, &served.userid, &served.password).await);
    agent
        .wait_log(
            "turnserver runs the new configuration",
            Duration::from_secs(5),
        )
        .await;
}

#[tokio::test]
async fn a_new_realm_starts_a_fresh_credential_that_coturn_accepts() {
    let Listed {
        agent,
        reader,
        pid: old_pid,
        credential: old,
        zookeeper: _zookeeper,
    } = Listed::start().await;
    let old_realm = agent.files.realm.clone();

    agent.reload_with(
        &format!("realm = \"{old_realm}\""),
        "realm = \"reloaded.turn-agent\"",
    );
    let new = wait_for(
        Duration::from_secs(10),
        "a credential for the new realm",
        || async {
            match agent.get("/readyz").await {
                Some((200, body)) if body["turnserver"]["pid"].as_u64() != Some(old_pid.into()) => {
                    let served = agent.credential("").await?;
                    (served.userid != old.userid).then_some(served)
                }
                _ => None,
            }
        },
    )
    .await;
    let payload = published(&reader).await;
    assert_eq!(payload["realm"].as_str(), Some("reloaded.turn-agent"));
    assert!(uclient_allocates(agent.files.turn_port, &new.userid, &new.password).await);
    let users = agent_users(&agent.userdb(), &old_realm);
    assert!(
        users.is_empty(),
        "the old realm's users are deleted: {users:?}"
    );
}

#[tokio::test]
async fn access_rules_rotation_timing_and_log_level_apply_live() {
    // Appended under [credentials]; loopback may only read status at first.
    let agent = Agent::start(AgentOptions {
        extra: "rotate_interval = \"1h\"\nlifetime = \"3h\"\n\
                [access]\nrate_limit_per_second = 0.0\n\
                allow = [{ addr = \"127.0.0.1\", role = \"watcher\" }]\n\
                roles = [{ name = \"watcher\", permissions = [\"status\"] }]\n"
            .into(),
        ..AgentOptions::default()
    });
    let pid = agent.wait_ready(Duration::from_secs(5)).await;
    let (status, _) = agent.get("/turncredential").await.unwrap();
    assert_eq!(status, 403);
    let (_, body) = agent.get("/readyz").await.unwrap();
    let next_rotation = body["credentials"]["next_rotation_at"].as_u64().unwrap();

    agent.reload_with("role = \"watcher\" }", "role = \"admin\" }");
    agent.wait_credential(Duration::from_secs(5)).await;

    agent.reload_with("rotate_interval = \"1h\"", "rotate_interval = \"2h\"");
    wait_for(Duration::from_secs(5), "the later rotation", || async {
        let (_, body) = agent.get("/readyz").await?;
        let moved = body["credentials"]["next_rotation_at"].as_u64()?;
        (moved == next_rotation + 3600).then_some(())
    })
    .await;
    assert_eq!(agent.wait_ready(Duration::from_secs(1)).await, pid);
    assert!(!agent.log().contains("need a new turnserver"));

    // A quieter log level: a rotation no longer logs at info.
    agent.reload_with(
        "log_level = \"info,turnserver=debug\"",
        "log_level = \"warn\"",
    );
    wait_for(Duration::from_secs(5), "the third reload", || async {
        agent
            .metrics()
            .await
            .contains("turn_agent_config_reloads_total{outcome=\"applied\"} 3")
            .then_some(())
    })
    .await;
    let rotations_logged = agent.log().matches("credential rotated").count();
    let before = agent.credential("").await.unwrap();
    assert_eq!(agent.post_rotate().await, 200);
    assert_ne!(agent.credential("").await.unwrap().userid, before.userid);
    assert_eq!(
        agent.log().matches("credential rotated").count(),
        rotations_logged
    );
}

#[tokio::test]
async fn switching_to_rest_api_mode_restarts_turnserver_with_shared_secrets() {
    let Listed {
        agent,
        reader,
        pid: old_pid,
        credential: old,
        zookeeper: _zookeeper,
    } = Listed::start().await;

    // The fixture's [credentials] header is followed by our extra lines.
    agent.reload_with("[credentials]\n", "[credentials]\nmode = \"rest-api\"\n");
    let minted = wait_for(Duration::from_secs(10), "a REST API credential", || async {
        match agent.get("/readyz").await {
            Some((200, body))
                if body["turnserver"]["pid"].as_u64() != Some(old_pid.into())
                    && body["credentials"]["mode"] == "rest-api" =>
            {
                agent.credential("").await
            }
            _ => None,
        }
    })
    .await;
    // REST API usernames are `<expiry>:<user>`.
    assert!(minted.userid.contains(':'), "{}", minted.userid);
    published(&reader).await;
    assert!(uclient_allocates(agent.files.turn_port, &minted.userid, &minted.password).await);
    let users = agent_users(&agent.userdb(), &agent.files.realm);
    assert!(
        users.iter().all(|(user, _)| *user != old.userid),
        "the long-term users are retired: {users:?}"
    );
}
