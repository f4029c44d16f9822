//! The allocator against a real ZooKeeper: hosts written by a plain
//! ZooKeeper client (or a real agent), picks checked for spread and
//! freshness.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::zookeeper::{Reader, ZooKeeper};
use common::*;
use tokio::time::Instant;
use turn_agent::allocator::{AllocError, Allocator, AllocatorSettings, Preference};
use zookeeper_client as zk;

const BASE: &str = "/turn/servers";

fn payload(free: f64, port: u16) -> Vec<u8> {
    format!(r#"{{"freeTraffic":{free},"restAddr":"127.0.0.1:{port}","turnUris":["turn:127.0.0.1:3478?transport=udp"]}}"#)
        .into_bytes()
}

async fn writer(zookeeper: &ZooKeeper) -> Reader {
    let writer = Reader::connect(zookeeper).await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    writer.client.mkdir(BASE, &persistent).await.unwrap();
    writer
}

async fn put(writer: &Reader, node: &str, data: &[u8]) {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let path = format!("{BASE}/{node}");
    match writer.client.create(&path, data, &persistent).await {
        Ok(_) => {}
        Err(zk::Error::NodeExists) => {
            writer.client.set_data(&path, data, None).await.unwrap();
        }
        Err(error) => panic!("{error}"),
    }
}

fn settings(zookeeper: &ZooKeeper) -> AllocatorSettings {
    let mut settings = AllocatorSettings::new(zookeeper.connect_string(), BASE);
    settings.min_free_mbps = 10.0;
    settings
}

fn nodes(allocator: &Allocator) -> Vec<String> {
    allocator
        .snapshot()
        .hosts
        .iter()
        .map(|host| host.node.clone())
        .collect()
}

/// A running `turn-agent allocator` on a free port, and its address. The
/// temp dir holding its config lives as long as the service.
struct Service {
    listen: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Starts the allocator service on `zookeeper` with extra config lines and
/// waits until its view holds `hosts` hosts; returns it with that view.
async fn start_service(
    zookeeper: &ZooKeeper,
    extra: &str,
    hosts: usize,
) -> (Service, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    let config = dir.path().join("allocator.toml");
    std::fs::write(
        &config,
        format!(
            "[allocator]\nlisten = \"{listen}\"\nconnect = \"{}\"\npath = \"{BASE}\"\n{extra}",
            zookeeper.connect_string()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(AGENT_BIN)
        .args(["allocator", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let view = wait_for(Duration::from_secs(10), "the allocator's view", || async {
        let body: serde_json::Value = http
            .get(format!("http://{listen}/hosts"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["hosts"].as_array()?.len() == hosts).then_some(body)
    })
    .await;
    (
        Service {
            listen,
            _child: child,
            _dir: dir,
        },
        view,
    )
}

#[tokio::test]
async fn picks_spread_within_one_skip_low_and_malformed_hosts_and_follow_changes() {
    let zookeeper = ZooKeeper::start(2000).await;
    let writer = writer(&zookeeper).await;
    for (node, free) in [("a", 100.0), ("b", 200.0), ("c", 300.0), ("low", 5.0)] {
        put(&writer, node, &payload(free, 1)).await;
    }
    put(&writer, "broken", b"{not json").await;
    put(
        &writer,
        "negative",
        br#"{"freeTraffic":-4,"restAddr":"127.0.0.1:1"}"#,
    )
    .await;

    let allocator = Allocator::start(settings(&zookeeper));
    assert!(allocator.wait_synced(Duration::from_secs(10)).await);
    assert_eq!(
        nodes(&allocator),
        vec!["a", "b", "c", "low"],
        "malformed payloads are skipped"
    );

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..3000 {
        let host = allocator.pick(&Preference::default()).unwrap();
        *counts.entry(host.node).or_default() += 1;
    }
    assert!(
        !counts.contains_key("low"),
        "a host below min_free_mbps was picked: {counts:?}"
    );
    let (min, max) = (
        counts.values().min().unwrap(),
        counts.values().max().unwrap(),
    );
    assert!(max - min <= 1, "{counts:?}");

    writer
        .client
        .delete(&format!("{BASE}/b"), None)
        .await
        .unwrap();
    let removed = Instant::now();
    wait_for(Duration::from_secs(1), "b to leave the view", || {
        let gone = !nodes(&allocator).contains(&"b".to_string());
        async move { gone.then_some(()) }
    })
    .await;
    eprintln!("removed host left the view after {:?}", removed.elapsed());
    put(&writer, "d", &payload(400.0, 1)).await;
    let added = Instant::now();
    wait_for(Duration::from_secs(1), "d to join the view", || {
        let joined = nodes(&allocator).contains(&"d".to_string());
        async move { joined.then_some(()) }
    })
    .await;
    eprintln!("added host joined the view after {:?}", added.elapsed());
    // A payload update that drops a host below the minimum takes it out of picks.
    put(&writer, "a", &payload(1.0, 1)).await;
    wait_for(Duration::from_secs(1), "a's new payload", || {
        let updated = allocator
            .snapshot()
            .hosts
            .iter()
            .any(|h| h.node == "a" && h.payload.free_traffic == 1.0);
        async move { updated.then_some(()) }
    })
    .await;
    for _ in 0..30 {
        assert_ne!(allocator.pick(&Preference::default()).unwrap().node, "a");
    }
}

#[tokio::test]
async fn outage_serves_the_last_view_then_fails_after_max_staleness_and_recovers() {
    let mut zookeeper = ZooKeeper::start(200).await;
    {
        let writer = writer(&zookeeper).await;
        put(&writer, "a", &payload(100.0, 1)).await;
    }
    let mut settings = settings(&zookeeper);
    settings.session_timeout = Duration::from_secs(2);
    settings.max_staleness = Duration::from_secs(2);
    let allocator = Allocator::start(settings);
    assert!(allocator.wait_synced(Duration::from_secs(10)).await);

    zookeeper.stop();
    let stopped = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the allocator to notice the outage",
        || {
            let noticed = allocator.snapshot().disconnected_since.is_some();
            async move { noticed.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        allocator.pick(&Preference::default()).unwrap().node,
        "a",
        "the last view keeps serving"
    );
    let error = wait_for(Duration::from_secs(4), "picks to fail as stale", || {
        let result = allocator.pick(&Preference::default());
        async move { result.err() }
    })
    .await;
    assert!(matches!(error, AllocError::Stale { .. }), "{error}");
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "failed before max_staleness"
    );

    // Back after the session expired: a new session re-lists and watches.
    zookeeper.spawn().await;
    wait_for(Duration::from_secs(5), "picks to work again", || {
        let ok = allocator.pick(&Preference::default()).is_ok();
        async move { ok.then_some(()) }
    })
    .await;
    let writer = writer(&zookeeper).await;
    put(&writer, "b", &payload(100.0, 1)).await;
    wait_for(
        Duration::from_secs(1),
        "the watch to work on the new session",
        || {
            let joined = nodes(&allocator).contains(&"b".to_string());
            async move { joined.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn allocator_service_hands_out_ice_servers_that_allocate() {
    let zookeeper = ZooKeeper::start(2000).await;
    let agent = Agent::start(AgentOptions {
        extra: format!(
            "[zookeeper]\nconnect = \"{}\"\npath = \"{BASE}\"\nnode = \"host-a\"\n[traffic]\ninterface = \"lo\"\n",
            zookeeper.connect_string()
        ),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(5)).await;
    {
        // A dead host too: /ice must skip it.
        let writer = writer(&zookeeper).await;
        put(&writer, "host-dead", &payload(500.0, free_tcp_port())).await;
    }

    let (service, hosts) = start_service(
        &zookeeper,
        "ice_attempts = 3\n\
         [access]\nallow = [{ addr = \"127.0.0.1\", role = \"admin\" }, { addr = \"127.0.0.2\" }]\n",
        2,
    )
    .await;
    let listen = service.listen.clone();
    let http = reqwest::Client::new();
    assert_eq!(hosts["synced"], true);

    for _ in 0..2 {
        let response = http
            .get(format!("http://{listen}/ice"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let ice: serde_json::Value = response.json().await.unwrap();
        let server = &ice["iceServers"][0];
        assert!(
            uclient_allocates(
                agent.files.turn_port,
                server["username"].as_str().unwrap(),
                server["credential"].as_str().unwrap()
            )
            .await,
            "the allocator's /ice must yield a credential that allocates: {ice}"
        );
    }
    let allocated: serde_json::Value = http
        .get(format!("http://{listen}/allocate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ["host-a", "host-dead"].contains(&allocated["node"].as_str().unwrap()),
        "{allocated}"
    );
    assert!(allocated["restAddr"].is_string() && allocated["freeTraffic"].is_number());

    // Its own access rules: a user may allocate but not list hosts; an
    // unknown address may do neither.
    let from = |source: &str| {
        reqwest::Client::builder()
            .local_address(source.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let user = from("127.0.0.2");
    assert_eq!(
        user.get(format!("http://{listen}/allocate"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        user.get(format!("http://{listen}/hosts"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let stranger = from("127.0.0.3");
    assert_eq!(
        stranger
            .get(format!("http://{listen}/ice"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let connect = zookeeper.connect_string();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_agent_cli(
            &[
                "allocate",
                "--zookeeper",
                &connect,
                "--path",
                BASE,
                "--strategy",
                "most-free",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let picked: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(picked["node"].is_string(), "{stdout}");
    drop(service);
}

#[tokio::test]
async fn fleet_page_renders_the_view_in_headless_chromium() {
    let zookeeper = ZooKeeper::start(2000).await;
    {
        let writer = writer(&zookeeper).await;
        put(
            &writer,
            "turn-north-1",
            br#"{"freeTraffic":750.0,"restAddr":"127.0.0.1:1","capacityMbps":1000.0,"region":"north","isp":["telecom"]}"#,
        )
        .await;
        put(
            &writer,
            "turn-south-1",
            br#"{"freeTraffic":0.5,"restAddr":"127.0.0.1:2","capacityMbps":1000.0,"region":"south"}"#,
        )
        .await;
    }
    let (service, _) = start_service(&zookeeper, "", 2).await;
    let listen = service.listen.clone();
    let http = reqwest::Client::new();
    let _ = http
        .get(format!("http://{listen}/allocate"))
        .send()
        .await
        .unwrap();
    let metrics = http
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("turn_allocator_view_hosts 2"), "{metrics}");
    assert!(
        metrics.contains("turn_allocator_picks_total{endpoint=\"allocate\",outcome=\"ok\"} 1"),
        "{metrics}"
    );

    // A real browser renders the page.
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("fleet-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = tempfile::tempdir().unwrap();
    let chromium = |extra: &[String]| {
        let mut command = std::process::Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1200,600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(format!("http://{listen}/"));
        command
    };
    let dom = tokio::task::spawn_blocking({
        let mut command = chromium(&["--dump-dom".to_string()]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-node=\"turn-north-1\"") && dom.contains("data-node=\"turn-south-1\""),
        "{dom}"
    );
    assert!(dom.contains("2 hosts, 1 eligible"), "{dom}");
    let status = tokio::task::spawn_blocking({
        let mut command = chromium(&[format!("--screenshot={}", screenshot.display())]);
        move || {
            command
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(status.success());
    let size = std::fs::metadata(&screenshot).unwrap().len();
    assert!(size > 1000, "screenshot too small: {size} bytes");
    eprintln!("fleet page screenshot: {}", screenshot.display());
}
