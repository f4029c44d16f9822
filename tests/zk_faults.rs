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
