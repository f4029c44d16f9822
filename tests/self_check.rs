//! The allocation self-check inside a running agent: detection, repair,
//! withdrawal and recovery, judged through /readyz, ZooKeeper and coturn's
//! own client.

mod common;

use std::time::Duration;

use common::zookeeper::{Reader, ZooKeeper};
use common::*;

fn options(zookeeper: Option<&ZooKeeper>) -> AgentOptions {
    let mut extra = "[health]\nself_check_interval = \"300ms\"\nself_check_failures = 2\nself_check_timeout = \"1s\"\n".to_string();
    if let Some(zookeeper) = zookeeper {
        extra.push_str(&format!(
            "[zookeeper]\nconnect = \"{}\"\nnode = \"checked\"\n[traffic]\ninterface = \"lo\"\n",
            zookeeper.connect_string()
        ));
    }
    AgentOptions {
        extra,
        ..AgentOptions::default()
    }
}

#[tokio::test]
async fn a_served_user_deleted_by_hand_is_detected_and_repaired_by_a_rotation() {
    let agent = Agent::start(options(None));
    agent.wait_ready(Duration::from_secs(5)).await;
    let served = agent.wait_credential(Duration::from_secs(5)).await;
    agent.wait_self_check_passes(Duration::from_secs(5)).await;

    agent.delete_user_by_hand(&served.userid);
    let repaired = wait_for(Duration::from_secs(5), "a repair rotation", || async {
        agent
            .credential("")
            .await
            .filter(|now| now.userid != served.userid)
    })
    .await;
    // Logged once the repair rotation returns, which is just after the new
    // credential is served: waited for, not read at once.
    agent
        .wait_log(
            "rotated to repair a rejected credential",
            Duration::from_secs(5),
        )
        .await;
    let metrics = agent.metrics().await;
    assert!(
        metrics.contains("turn_agent_self_check_runs_total"),
        "{metrics}"
    );
    assert!(uclient_allocates(agent.files.turn_port, &repaired.userid, &repaired.password).await);
    wait_for(
        Duration::from_secs(5),
        "the check to pass again",
        || async {
            let (status, body) = agent.get("/readyz").await?;
            (status == 200 && body["health"]["consecutive_failures"] == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_corrupt_user_database_withdraws_the_host_until_it_is_restored() {
    let zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(options(Some(&zookeeper)));
    let reader = Reader::connect(&zookeeper).await;
    let pid = agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;
    let node = "/turn/servers/checked";
    wait_for(Duration::from_secs(5), "the node", || reader.node(node)).await;

    // Overwrite the database in place (same inodes, so turnserver sees
    // it). The agent keeps it in WAL mode, where recent pages are read from
    // the -wal file through the -shm index, so those are overwritten too:
    // with the index intact some reads still find good pages.
    let db = agent.userdb();
    let files = [
        db.clone(),
        std::path::PathBuf::from(format!("{}-wal", db.display())),
        std::path::PathBuf::from(format!("{}-shm", db.display())),
    ];
    let originals: Vec<Option<Vec<u8>>> = files.iter().map(|f| std::fs::read(f).ok()).collect();
    for (file, original) in files.iter().zip(&originals) {
        if let Some(original) = original {
            std::fs::write(file, vec![0x5a_u8; original.len()]).unwrap();
        }
    }
    let corrupted = tokio::time::Instant::now();
    let body = wait_for(Duration::from_secs(5), "/readyz to say why", || async {
        match agent.get("/readyz").await? {
            (503, body) if body["reason"].as_str()?.contains("self-check failing") => Some(body),
            _ => None,
        }
    })
    .await;
    eprintln!(
        "corrupt database -> not ready after {:?}: {}",
        corrupted.elapsed(),
        body["reason"]
    );
    wait_for(
        Duration::from_secs(2),
        "the node to be withdrawn",
        || async { (reader.exists(node).await == Some(false)).then_some(()) },
    )
    .await;

    for (file, original) in files.iter().zip(&originals) {
        if let Some(original) = original {
            std::fs::write(file, original).unwrap();
        }
    }
    wait_for(Duration::from_secs(10), "the host to come back", || async {
        match agent.get("/readyz").await? {
            (200, _) => reader.node(node).await.map(|_| ()),
            _ => None,
        }
    })
    .await;
    let served = agent.credential("").await.unwrap();
    assert!(uclient_allocates(agent.files.turn_port, &served.userid, &served.password).await);
    // A restart does not fix a database: the same turnserver ran throughout.
    assert_eq!(agent.turnservers(), vec![pid]);
    let (_, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(body["turnserver"]["restarts"], 0);
}

#[tokio::test]
async fn a_hung_turnserver_fails_its_probes_and_is_replaced() {
    let agent = Agent::start(options(None));
    let hung = agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_self_check_passes(Duration::from_secs(5)).await;

    // Alive but silent: STUN probes and allocations both time out.
    signal_pid(hung, nix::sys::signal::Signal::SIGSTOP);
    let (status, _) = wait_for(Duration::from_secs(2), "not ready", || async {
        agent
            .get("/readyz")
            .await
            .filter(|(status, _)| *status == 503)
    })
    .await;
    assert_eq!(status, 503);
    let checks_before = wait_for(Duration::from_secs(5), "a new turnserver", || async {
        match agent.get("/readyz").await? {
            (200, body) if body["turnserver"]["pid"].as_u64() != Some(hung.into()) => {
                body["health"]["checks"].as_u64()
            }
            _ => None,
        }
    })
    .await;
    assert!(!agent.turnservers().contains(&hung), "the hung one is gone");
    wait_for(
        Duration::from_secs(5),
        "a self-check on the new turnserver",
        || async {
            let (_, body) = agent.get("/readyz").await?;
            (body["health"]["checks"].as_u64()? > checks_before
                && body["health"]["consecutive_failures"] == 0)
                .then_some(())
        },
    )
    .await;
    assert!(
        agent.log().contains("turnserver is hung"),
        "{}",
        agent.log()
    );
}
