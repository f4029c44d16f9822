//! The allocator against a real ZooKeeper: hosts written by a plain
//! ZooKeeper client (or a real agent), picks checked for spread and
//! freshness.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// temp dir holding its config and log lives as long as the service.
struct Service {
    listen: String,
    log: PathBuf,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Service {
    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of one sample of `/metrics`, `name` with its labels.
    async fn metric(&self, name: &str) -> Option<f64> {
        metric_of(&self.listen, name).await
    }
}

async fn metric_of(listen: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The allocator binary under test; `ALLOCATOR_BIN` runs the same test
/// against another build (e.g. main's) to measure it.
fn allocator_bin() -> String {
    std::env::var("ALLOCATOR_BIN").unwrap_or_else(|_| AGENT_BIN.to_string())
}

/// Starts the allocator service on `zookeeper` with extra config lines and
/// waits until its view holds `hosts` hosts; returns it with that view.
async fn start_service(
    zookeeper: &ZooKeeper,
    extra: &str,
    hosts: usize,
) -> (Service, serde_json::Value) {
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    start_service_at(zookeeper, listen, extra, hosts).await
}

async fn start_service_at(
    zookeeper: &ZooKeeper,
    listen: String,
    extra: &str,
    hosts: usize,
) -> (Service, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("allocator.toml");
    std::fs::write(
        &config,
        format!(
            "[allocator]\nlisten = \"{listen}\"\nconnect = \"{}\"\npath = \"{BASE}\"\n{extra}",
            zookeeper.connect_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("allocator.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = tokio::process::Command::new(allocator_bin())
        .args(["allocator", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        // Plain text, so a raw escape in the log can only come from data.
        .env("NO_COLOR", "1")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The metric, not /hosts, so a large view is not re-sent on every poll.
    let gauge = "turn_allocator_view_hosts".to_string();
    wait_for(Duration::from_secs(30), "the allocator's view", || {
        let listen = listen.clone();
        let gauge = gauge.clone();
        async move { (metric_of(&listen, &gauge).await? == hosts as f64).then_some(()) }
    })
    .await;
    let view: serde_json::Value = reqwest::get(format!("http://{listen}/hosts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        Service {
            listen,
            log,
            child,
            _dir: dir,
        },
        view,
    )
}

/// A stand-in for a host's HTTP API on a free loopback port: answers every
/// request with `answer` and records what it was asked.
struct StandIn {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Body bytes written (for the endless answer).
    sent: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
enum Answer {
    /// A complete raw HTTP/1.1 response.
    Raw(String),
    /// 200 with a JSON start and then `bytes` of padding, no length, as
    /// fast as the reader takes it.
    Endless { bytes: u64 },
}

fn ok_json(body: &str) -> Answer {
    Answer::Raw(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

async fn stand_in(answer: Answer) -> StandIn {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let (hits, sent, requests) = (hits.clone(), sent.clone(), requests.clone());
        async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (hits, sent, requests, answer) =
                    (hits.clone(), sent.clone(), requests.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    match answer {
                        Answer::Raw(text) => {
                            let _ = socket.write_all(text.as_bytes()).await;
                        }
                        Answer::Endless { bytes } => {
                            let start = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"iceServers\":[{\"urls\":[\"turn:127.0.0.1:3478\"],\"pad\":\"";
                            if socket.write_all(start.as_bytes()).await.is_err() {
                                return;
                            }
                            let chunk = vec![b'x'; 64 * 1024];
                            while sent.load(Ordering::SeqCst) < bytes {
                                if socket.write_all(&chunk).await.is_err() {
                                    return;
                                }
                                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                            }
                            let _ = socket.write_all(b"\"}]}").await;
                        }
                    }
                    let _ = socket.shutdown().await;
                });
            }
        }
    });
    StandIn {
        addr,
        hits,
        sent,
        requests,
        task,
    }
}

/// A host record for a stand-in that serves only `isp`, so a request with
/// `?isp=` reaches that one host and no other.
fn record(addr: &str, free: f64, isp: &str) -> Vec<u8> {
    format!(r#"{{"freeTraffic":{free},"restAddr":"{addr}","isp":["{isp}"]}}"#).into_bytes()
}

/// Peak and current resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
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

    // Round-robin, not the default weighted: the spread within one is its
    // promise.
    let allocator = Allocator::start(AllocatorSettings {
        strategy: turn_agent::allocator::Strategy::RoundRobin,
        ..settings(&zookeeper)
    })
    .await
    .unwrap();
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
    // pick_map lends the host instead of cloning it: the same rules, the
    // same round-robin cursor (alternating with pick keeps the spread).
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for turn in 0..3000 {
        let node = if turn % 2 == 0 {
            allocator
                .pick_map(&Preference::default(), |host| host.node.clone())
                .unwrap()
        } else {
            allocator.pick(&Preference::default()).unwrap().node
        };
        *counts.entry(node).or_default() += 1;
    }
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["c", "d"],
        "only hosts above min_free_mbps: {counts:?}"
    );
    assert!(counts["c"].abs_diff(counts["d"]) <= 1, "{counts:?}");
    // No host with room: both refuse alike.
    for node in ["c", "d"] {
        put(&writer, node, &payload(1.0, 1)).await;
    }
    wait_for(Duration::from_secs(1), "c and d full", || {
        let full = allocator
            .snapshot()
            .hosts
            .iter()
            .all(|h| h.payload.free_traffic < 10.0);
        async move { full.then_some(()) }
    })
    .await;
    let refused = allocator
        .pick_map(&Preference::default(), |host| host.node.clone())
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        allocator
            .pick(&Preference::default())
            .unwrap_err()
            .to_string()
    );
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
    let allocator = Allocator::start(settings).await.unwrap();
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
    let http = http_client();
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
        http_client_builder()
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
    let http = http_client();
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

#[tokio::test]
async fn ice_hands_out_only_typed_fields_never_follows_a_redirect_and_caps_the_body() {
    let zookeeper = ZooKeeper::start(2000).await;
    let admin = stand_in(ok_json(
        r#"{"iceServers":[{"urls":["turn:admin-secret"],"username":"admin-secret","credential":"x"}]}"#,
    ))
    .await;
    let redirect = stand_in(Answer::Raw(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{}/ice\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        admin.addr
    )))
    .await;
    let huge = stand_in(Answer::Endless {
        bytes: 100 * 1024 * 1024,
    })
    .await;
    let extra = stand_in(ok_json(
        r#"{"iceServers":[{"urls":["turn:127.0.0.1:3478?transport=udp"],"username":"1764400000:bob","credential":"c2VjcmV0","internal":"host-only"}],"ttl":3600,"expiresAt":"2026-11-29T08:00:00Z","pid":4242,"zookeeperSession":"0xdead"}"#,
    ))
    .await;
    {
        let writer = writer(&zookeeper).await;
        put(
            &writer,
            "redirect",
            &record(&redirect.addr.to_string(), 500.0, "redirect"),
        )
        .await;
        put(
            &writer,
            "huge",
            &record(&huge.addr.to_string(), 500.0, "huge"),
        )
        .await;
        put(
            &writer,
            "extra",
            &record(&extra.addr.to_string(), 500.0, "extra"),
        )
        .await;
    }
    let (service, _) = start_service(&zookeeper, "ice_timeout = \"5s\"\n", 3).await;
    let http = http_client();
    let ice = |isp: &str| {
        http.get(format!("http://{}/ice?isp={isp}", service.listen))
            .send()
    };

    // A 302 to an admin URL is a failed host: the admin URL is never fetched.
    let response = ice("redirect").await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("admin-secret"), "{body}");
    assert_eq!(
        admin.hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    assert_eq!(redirect.hits.load(Ordering::SeqCst), 1);

    // Extra fields, at any level, never reach the caller.
    let response = ice("extra").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "credentials must not be cached"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "iceServers": [{
                "urls": ["turn:127.0.0.1:3478?transport=udp"],
                "username": "1764400000:bob",
                "credential": "c2VjcmV0"
            }],
            "ttl": 3600,
            "expiresAt": "2026-11-29T08:00:00Z"
        })
    );
    let request = extra.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert!(request.contains("x-turn-allocator-hop: 1"), "{request}");
    assert!(request.contains("x-forwarded-for: 127.0.0.1"), "{request}");

    // 100 MB of JSON, four callers at once: refused, read only up to the cap.
    let (peak_before, rss_before) = memory_kib(service.pid());
    let started = Instant::now();
    let answers = futures_join4(ice("huge"), ice("huge"), ice("huge"), ice("huge")).await;
    let elapsed = started.elapsed();
    let (peak_after, rss_after) = memory_kib(service.pid());
    let sent = huge.sent.load(Ordering::SeqCst);
    eprintln!(
        "4 x 100 MB answers: refused in {elapsed:?}; stand-in wrote {} KiB in all; \
         allocator peak RSS {peak_before} -> {peak_after} KiB, RSS {rss_before} -> {rss_after} KiB",
        sent / 1024
    );
    for answer in answers {
        let answer = answer.unwrap();
        let status = answer.status();
        let body = answer.text().await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("more than 32768 bytes"), "{body}");
    }
    assert!(
        sent < 32 * 1024 * 1024,
        "the allocator read {sent} bytes of a hostile answer"
    );
    assert!(
        peak_after.saturating_sub(peak_before) < 32 * 1024,
        "peak RSS grew from {peak_before} to {peak_after} KiB"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(
        service
            .metric("turn_allocator_ice_fetches_total{outcome=\"too_large\"}")
            .await,
        Some(4.0)
    );
}

/// Four requests at once without a futures dependency.
async fn futures_join4<F: std::future::Future + Send + 'static>(
    a: F,
    b: F,
    c: F,
    d: F,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles = [
        tokio::spawn(a),
        tokio::spawn(b),
        tokio::spawn(c),
        tokio::spawn(d),
    ];
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

#[tokio::test]
async fn ice_never_calls_itself_or_another_allocator_and_skips_a_busy_host_for_the_next() {
    let zookeeper = ZooKeeper::start(2000).await;
    let own = format!("127.0.0.1:{}", free_tcp_port());
    let other = format!("127.0.0.1:{}", free_tcp_port());
    let busy = stand_in(Answer::Raw(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    ))
    .await;
    let good = stand_in(ok_json(
        r#"{"iceServers":[{"urls":["turn:127.0.0.1:3478"],"username":"u","credential":"p"}]}"#,
    ))
    .await;
    {
        let writer = writer(&zookeeper).await;
        put(&writer, "self", &record(&own, 900.0, "self")).await;
        put(&writer, "other-allocator", &record(&other, 900.0, "loop")).await;
        // most-free would pick the busy host on every attempt.
        put(
            &writer,
            "busy",
            &record(&busy.addr.to_string(), 900.0, "busy"),
        )
        .await;
        put(
            &writer,
            "good",
            &record(&good.addr.to_string(), 100.0, "busy"),
        )
        .await;
    }
    let extra = "strategy = \"most-free\"\nice_attempts = 3\n";
    let (service, _) = start_service_at(&zookeeper, own.clone(), extra, 4).await;
    let (other_service, _) = start_service_at(&zookeeper, other.clone(), extra, 4).await;
    let http = http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Its own address: refused before any request is made.
    let started = Instant::now();
    let response = http
        .get(format!("http://{own}/ice?isp=self"))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(
        service
            .metric("turn_allocator_ice_fetches_total{outcome=\"own_listener\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        service
            .metric("turn_allocator_hop_requests_refused_total")
            .await,
        Some(0.0),
        "the allocator called itself"
    );

    // Another allocator: one request, refused there for its hop header.
    let response = http
        .get(format!("http://{own}/ice?isp=loop"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        other_service
            .metric("turn_allocator_hop_requests_refused_total")
            .await,
        Some(1.0)
    );
    assert_eq!(
        service
            .metric("turn_allocator_hop_requests_refused_total")
            .await,
        Some(0.0)
    );
    let log_lines = service.log().lines().count() + other_service.log().lines().count();
    eprintln!("self and loop calls: {log_lines} log lines in both allocators; self refused in {elapsed:?}");
    assert!(log_lines < 20, "{}{}", service.log(), other_service.log());

    // 429 from the host most-free prefers: the next host, never the same.
    for _ in 0..5 {
        let response = http
            .get(format!("http://{own}/ice?isp=busy"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        busy.hits.load(Ordering::SeqCst),
        5,
        "a busy host was retried"
    );
    assert_eq!(good.hits.load(Ordering::SeqCst), 5);
    assert_eq!(
        service
            .metric("turn_allocator_ice_fetches_total{outcome=\"busy\"}")
            .await,
        Some(5.0)
    );
}

#[tokio::test]
async fn allocator_forwards_the_caller_so_the_agent_limits_each_caller_not_the_allocator() {
    let zookeeper = ZooKeeper::start(2000).await;
    // The agent's default limit (20/s, burst 40 per address) with the
    // allocator, on 127.0.0.1, as its trusted proxy. A trusted proxy that
    // names nobody has no role, so this test watches the agent from
    // 127.0.0.2 (admin).
    let agent = Agent::start(AgentOptions {
        extra: "[access]\ntrusted_proxies = [\"127.0.0.1\"]\n\
             allow = [{ addr = \"127.0.0.2\", role = \"admin\" }, { addr = \"127.0.0.1-255\", role = \"user\" }]\n"
            .into(),
        // The allocator holds up to one connection per concurrent caller,
        // all from its one address: the per-address connection cap must fit
        // its pool, as the example config says for trusted proxies.
        env: vec![(
            "TURN_AGENT_API_MAX_CONNECTIONS_PER_ADDRESS".into(),
            "256".into(),
        )],
        ..AgentOptions::default()
    });
    let watcher = http_client_builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    wait_for(Duration::from_secs(10), "the agent ready", || {
        let request = watcher
            .get(format!("http://{}/readyz", agent.files.api))
            .send();
        async move {
            request
                .await
                .ok()
                .filter(|response| response.status() == 200)
        }
    })
    .await;
    // Listed by hand rather than by its registry, whose znode a loaded test
    // machine can briefly withdraw (a slow STUN probe).
    {
        let writer = writer(&zookeeper).await;
        put(
            &writer,
            "host-a",
            format!(r#"{{"freeTraffic":500,"restAddr":"{}"}}"#, agent.files.api).as_bytes(),
        )
        .await;
    }
    // The allocator's own limit is off: the agent is the one that limits.
    let (service, _) = start_service(
        &zookeeper,
        // A generous deadline: a loaded test machine is not what is measured.
        "ice_attempts = 1\nice_timeout = \"10s\"\n[access]\nrate_limit_per_second = 0.0\n\
         allow = [{ addr = \"127.0.0.1\", role = \"admin\" }, { addr = \"127.0.0.2-255\", role = \"user\" }]\n",
        1,
    )
    .await;
    let listen = service.listen.clone();
    let caller = |index: usize| {
        http_client_builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 10 + index as u8]))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };

    // 50 callers, 10 calls each, all at once.
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..50 {
        let (http, listen) = (caller(index), listen.clone());
        calls.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                let response = http
                    .get(format!("http://{listen}/ice"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body = response.text().await.unwrap();
                statuses.push((status, if status == 200 { String::new() } else { body }));
            }
            statuses
        });
    }
    let statuses: Vec<(u16, String)> = calls.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    let ok = statuses.iter().filter(|(status, _)| *status == 200).count();
    eprintln!(
        "50 callers x 10 /ice through the allocator to one host: {ok} x 200, {} refused, in {elapsed:?} \
         ({:.0} /ice per second on the host before any push-back)",
        statuses.len() - ok,
        ok as f64 / elapsed.as_secs_f64()
    );
    let refused: Vec<_> = statuses
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert_eq!(ok, 500, "callers were limited as one address: {refused:?}");

    // One caller alone is still limited by the agent (burst 40): 100 calls
    // at once.
    let http = caller(60);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (http, listen) = (http.clone(), listen.clone());
        calls.spawn(async move {
            let mut refused = 0;
            for _ in 0..10 {
                let response = http
                    .get(format!("http://{listen}/ice"))
                    .send()
                    .await
                    .unwrap();
                if response.status() != 200 {
                    let body = response.text().await.unwrap();
                    assert!(body.contains("429"), "{body}");
                    refused += 1;
                }
            }
            refused
        });
    }
    let refused: usize = calls.join_all().await.into_iter().sum();
    eprintln!("one caller, 100 /ice at once: {refused} refused by the agent");
    assert!(
        refused >= 20,
        "one caller made 100 calls with {refused} refused"
    );
}

#[tokio::test]
async fn oversized_and_malformed_records_are_skipped_and_named_and_the_host_count_is_capped() {
    let zookeeper = ZooKeeper::start(2000).await;
    let writer = writer(&zookeeper).await;
    for index in 1..=4 {
        put(&writer, &format!("good-{index}"), &payload(100.0, 1)).await;
    }
    let padding = "p".repeat(2000);
    put(
        &writer,
        "oversized",
        format!(r#"{{"freeTraffic":1,"restAddr":"127.0.0.1:1","version":"{padding}"}}"#).as_bytes(),
    )
    .await;
    let isps = ["\"x\""; 10].join(",");
    put(
        &writer,
        "long-list",
        format!(r#"{{"freeTraffic":1,"restAddr":"127.0.0.1:1","isp":[{isps}]}}"#).as_bytes(),
    )
    .await;
    put(&writer, "malformed", b"{\"freeTraffic\":").await;
    put(
        &writer,
        "bad-addr",
        br#"{"freeTraffic":1,"restAddr":"\u001b[2J\u001b[31mforged\nline"}"#,
    )
    .await;
    let (service, view) = start_service(
        &zookeeper,
        "max_payload_bytes = 1024\nmax_list_items = 4\nmax_hosts = 5\n",
        4,
    )
    .await;
    let hosts: Vec<&str> = view["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| host["node"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["good-1", "good-2", "good-3", "good-4"]);
    put(&writer, "good-5", &payload(100.0, 1)).await;
    put(&writer, "good-6", &payload(100.0, 1)).await;
    wait_for(
        Duration::from_secs(5),
        "good-6 to be named as over the cap",
        || {
            let named = service.log().contains("good-6");
            async move { named.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        service.metric("turn_allocator_view_hosts").await,
        Some(5.0),
        "max_hosts holds"
    );
    let log = service.log();
    for node in ["oversized", "long-list", "malformed", "bad-addr", "good-6"] {
        assert!(log.contains(node), "{node} not named:\n{log}");
    }
    assert!(
        !log.contains('\x1b'),
        "a raw escape reached the log:\n{log}"
    );
    assert!(log.contains("\\u{1b}[2J"), "{log}");
}

/// 20,000 hosts, the issue's size (the first view is read with many reads
/// in flight, so it comes in seconds); `TURN_AGENT_FLEET_HOSTS` changes
/// it: `cargo nextest run --test allocator a_fleet --no-capture` prints
/// the CPU per update and the RSS before and after.
#[tokio::test]
async fn a_fleet_of_hosts_takes_a_stream_of_updates_at_a_cost_per_change() {
    let hosts_wanted: usize = std::env::var("TURN_AGENT_FLEET_HOSTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000);
    let hosts = hosts_wanted.clamp(1_000, 99_999);
    const UPDATES: usize = 1_000;
    let zookeeper = ZooKeeper::start(2000).await;
    let writer = writer(&zookeeper).await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let started = Instant::now();
    for batch in (0..hosts).collect::<Vec<_>>().chunks(1000) {
        let mut multi = writer.client.new_multi_writer();
        for index in batch {
            multi
                .add_create(
                    &format!("{BASE}/host-{index:05}"),
                    &payload(500.0, 8086),
                    &persistent,
                )
                .unwrap();
        }
        multi.commit().await.unwrap();
    }
    eprintln!("{hosts} host records written in {:?}", started.elapsed());
    let (service, _) = start_service(&zookeeper, "", hosts).await;
    let pid = service.pid();
    let (_, rss_before) = memory_kib(pid);
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let client = Arc::new(writer);
    let mut updates = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let client = client.clone();
        updates.spawn(async move {
            for update in (worker..UPDATES).step_by(8) {
                let node = format!("{BASE}/host-{:05}", 1 + update * 7 % (hosts - 1));
                let data = payload(100.0 + update as f64, 8086);
                // The writer is load, not under test: on a loaded machine
                // its connection may drop, so a failed write is retried.
                let mut tries = 0;
                while let Err(error) = client.client.set_data(&node, &data, None).await {
                    tries += 1;
                    assert!(tries < 20, "cannot write {node}: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    updates.join_all().await;
    // The last change: one host leaves, so the view has taken them all.
    client
        .client
        .delete(&format!("{BASE}/host-00000"), None)
        .await
        .unwrap();
    // Polled every 250 ms, not wait_for's 10 ms: each scrape costs the
    // allocator CPU that would count against the updates.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_of(&service.listen, "turn_allocator_view_hosts").await != Some((hosts - 1) as f64)
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for every update in the view"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cpu = cpu_time(pid) - cpu_before;
    let (_, rss_after) = memory_kib(pid);
    let per_update = cpu / (UPDATES as u32 + 1);
    eprintln!(
        "{hosts} hosts, {} updates in {:?}: allocator CPU {cpu:?} ({per_update:?} per update), \
         RSS {rss_before} -> {rss_after} KiB",
        UPDATES + 1,
        started.elapsed()
    );
    // A view that copies the host list's pointers on every event cost
    // 7.3 ms of CPU an update at 20,000 hosts (debug build); one that
    // copies a chunk costs about 0.7 ms, nearly all of it the read and the
    // JSON of the one record.
    let limit = Duration::from_micros(3_000 * hosts as u64 / 20_000).max(Duration::from_millis(2));
    assert!(
        per_update < limit,
        "an update cost {per_update:?} of CPU at {hosts} hosts (limit {limit:?})"
    );
}

/// A client token's `sub` names the caller at the allocator too: the host
/// is asked for a credential for `sub`, whatever `?username=` says.
#[tokio::test]
async fn a_client_tokens_subject_wins_over_the_username_asked_for() {
    let zookeeper = ZooKeeper::start(2000).await;
    let host = stand_in(ok_json(
        r#"{"iceServers":[{"urls":["turn:127.0.0.1:3478"],"username":"u","credential":"p"}]}"#,
    ))
    .await;
    {
        let writer = writer(&zookeeper).await;
        put(&writer, "only", &record(&host.addr.to_string(), 900.0, "x")).await;
    }
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = openssl_key_pair(keys.path(), "allocator");
    let extra = format!(
        "\n[access.client_tokens]\npublic_key_files = [\"{}\"]\naudience = \"allocator\"\n",
        public
    );
    let (service, _) = start_service(&zookeeper, &extra, 1).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = turn_agent::client_token::mint(
        &std::fs::read(&private).unwrap(),
        "allocator",
        Some("alice"),
        Duration::from_secs(60),
        now,
    )
    .unwrap();
    let response = http_client()
        .get(format!("http://{}/ice?username=bob", service.listen))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let asked = host.requests.lock().unwrap().join("\n");
    assert!(asked.contains("username=alice"), "{asked}");
    assert!(!asked.contains("bob"), "{asked}");
}

/// A TCP proxy to `upstream` on loopback that delays every chunk by
/// `delay` in each direction without serialising them: a link with a
/// round trip of twice `delay` that still carries many requests at once.
async fn latency_proxy(upstream: u16, delay: Duration) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((at, bytes)) = receiver.recv().await {
                tokio::time::sleep_until(at).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer).await {
            if sender
                .send((Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
            {
                break;
            }
        }
        drop(sender);
        let _ = writer.await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut pipes = tokio::task::JoinSet::new();
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (down_read, down_write) = down.into_split();
            let (up_read, up_write) = up.into_split();
            pipes.spawn(pipe(down_read, up_write, delay));
            pipes.spawn(pipe(up_read, down_write, delay));
        }
    });
    (port, task)
}

/// Writes `count` hosts named `host-00000`… in batches.
async fn write_hosts(writer: &Reader, count: usize) {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for batch in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut multi = writer.client.new_multi_writer();
        for index in batch {
            multi
                .add_create(
                    &format!("{BASE}/host-{index:05}"),
                    &payload(500.0, 8086),
                    &persistent,
                )
                .unwrap();
        }
        multi.commit().await.unwrap();
    }
}

/// The session ids of ZooKeeper's client connections right now (`cons`).
fn session_ids(zookeeper: &ZooKeeper) -> std::collections::BTreeSet<String> {
    common::zookeeper::four_letter(zookeeper.port, "cons")
        .unwrap_or_default()
        .split("sid=")
        .skip(1)
        .filter_map(|rest| rest.split([',', ')']).next())
        .map(str::to_string)
        .collect()
}

/// Each bad input is refused by `start` itself, before anything runs: a
/// connect string that is not one, a path without its leading `/` (main
/// opened about 456 sessions a second on it), and, distinctly, a path (or
/// chroot) that ZooKeeper says does not exist (main showed it as "every
/// host full").
#[tokio::test]
async fn start_refuses_a_bad_connect_string_a_malformed_path_and_a_missing_path() {
    use turn_agent::allocator::StartError;
    let zookeeper = ZooKeeper::start(2000).await;
    let _writer = writer(&zookeeper).await;
    let start = |connect: String, path: &str| {
        let settings = AllocatorSettings::new(connect, path);
        async move { Allocator::start(settings).await.map(|_| ()) }
    };
    let connect = zookeeper.connect_string();
    for bad in ["", "zk1", "zk1:0", "zk1:2181 zk2:2181", "zk1:2181/"] {
        let error = start(bad.to_string(), BASE).await.unwrap_err();
        assert!(matches!(error, StartError::Connect(_)), "{bad:?}: {error}");
    }
    for bad in [
        "turn/servers",
        "/",
        "/turn//servers",
        "/turn/../servers",
        "/turn/servers/",
    ] {
        let error = start(connect.clone(), bad).await.unwrap_err();
        assert!(matches!(error, StartError::Path(_)), "{bad:?}: {error}");
    }
    let error = start(connect.clone(), "/turn/nowhere").await.unwrap_err();
    assert_eq!(
        error,
        StartError::NoSuchPath {
            path: "/turn/nowhere".into()
        }
    );
    assert!(error.to_string().contains("does not exist"), "{error}");
    let error = start(format!("{connect}/elsewhere"), BASE)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        StartError::NoSuchPath {
            path: format!("/elsewhere{BASE}")
        },
        "the chroot counts"
    );
    start(connect, BASE).await.unwrap();
}

/// ZooKeeper not there yet is not a start error: the allocator starts,
/// says why it has no view, retries with backoff (a handful of attempts,
/// not a storm) and lists the hosts once ZooKeeper comes; `synced()`
/// resolves then and `changes()` tells of each later change without
/// polling. A path deleted later is its own error, not "all hosts full".
#[tokio::test]
async fn an_allocator_started_before_zookeeper_retries_with_backoff_and_is_told_of_every_change() {
    use turn_agent::allocator::Problem;
    let mut zookeeper = ZooKeeper::prepare(2000);
    let mut settings = settings(&zookeeper);
    settings.session_timeout = Duration::from_secs(4);
    let allocator = Allocator::start(settings).await.unwrap();
    let status = allocator.status();
    assert!(!status.synced);
    assert!(
        matches!(status.problem, Some(Problem::Unreachable(_))),
        "{status:?}"
    );
    assert_eq!(
        allocator.pick(&Preference::default()),
        Err(AllocError::NoView)
    );
    let mut changes = allocator.changes();
    // Backoff: 100 ms doubling to 1 s, so about 5 attempts in 3 s where a
    // loop without it makes hundreds.
    let mut attempts = 0;
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(3) {
        if tokio::time::timeout(Duration::from_millis(100), changes.changed())
            .await
            .is_ok()
        {
            attempts += 1;
        }
    }
    assert!(
        (2..=10).contains(&attempts),
        "{attempts} failed attempts announced in 3 s"
    );

    zookeeper.spawn().await;
    let writer = writer(&zookeeper).await;
    put(&writer, "a", &payload(100.0, 1)).await;
    tokio::time::timeout(Duration::from_secs(10), allocator.synced())
        .await
        .expect("the view is complete once ZooKeeper is there");
    // The listing may have come before the path or "a" did (the view then
    // says the path is missing); their events follow.
    tokio::time::timeout(
        Duration::from_secs(5),
        changes.wait_for(|view| view.hosts.get("a").is_some()),
    )
    .await
    .expect("a joins the view")
    .unwrap();
    let status = allocator.status();
    assert!(status.synced && status.problem.is_none(), "{status:?}");
    assert_eq!(nodes(&allocator), vec!["a"]);

    changes.borrow_and_update();
    put(&writer, "b", &payload(100.0, 1)).await;
    let seen = tokio::time::timeout(
        Duration::from_secs(2),
        changes.wait_for(|view| view.hosts.get("b").is_some()),
    )
    .await
    .expect("a new host is announced")
    .unwrap()
    .hosts
    .len();
    assert_eq!(seen, 2);

    // The path goes away: picks say so, and it coming back is seen.
    writer
        .client
        .delete(&format!("{BASE}/a"), None)
        .await
        .unwrap();
    writer
        .client
        .delete(&format!("{BASE}/b"), None)
        .await
        .unwrap();
    writer.client.delete(BASE, None).await.unwrap();
    let error = wait_for(
        Duration::from_secs(5),
        "picks to name the missing path",
        || {
            let result = allocator.pick(&Preference::default());
            async move {
                result
                    .err()
                    .filter(|error| matches!(error, AllocError::NoSuchPath { .. }))
            }
        },
    )
    .await;
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(
        matches!(allocator.status().problem, Some(Problem::NoSuchPath(_))),
        "{:?}",
        allocator.status()
    );
    let writer = self::writer(&zookeeper).await;
    put(&writer, "c", &payload(100.0, 1)).await;
    wait_for(Duration::from_secs(5), "picks to work again", || {
        let result = allocator.pick(&Preference::default());
        async move { result.ok().filter(|host| host.node == "c") }
    })
    .await;
    assert_eq!(allocator.status().problem, None);
}

/// A listing ZooKeeper refuses (the path's ACL does not let the allocator
/// read) is retried on the same session with backoff and shown in the
/// status; it never costs a new session. Once readable, the view is live.
#[tokio::test]
async fn a_refused_listing_is_retried_on_one_session_and_shown_in_the_status() {
    use turn_agent::allocator::Problem;
    let zookeeper = ZooKeeper::start(2000).await;
    let writer = writer(&zookeeper).await;
    put(&writer, "a", &payload(100.0, 1)).await;
    // Anyone may see that it exists, nobody may list it.
    let no_read = [zk::Acl::new(
        zk::Permission::WRITE | zk::Permission::ADMIN,
        zk::AuthId::anyone(),
    )];
    writer.client.set_acl(BASE, &no_read, None).await.unwrap();
    let before = session_ids(&zookeeper);
    let allocator = Allocator::start(settings(&zookeeper)).await.unwrap();
    let mut seen = session_ids(&zookeeper);
    let problem =
        wait_for(Duration::from_secs(5), "the refusal in the status", || {
            let problem = allocator.status().problem;
            // Newer servers refuse the watch already, older ones the listing.
            async move {
                problem.filter(|problem| matches!(problem, Problem::Read(_) | Problem::Watch(_)))
            }
        })
        .await;
    assert!(problem.to_string().contains("not authorized"), "{problem}");
    let mut changes = allocator.changes();
    let watching = Instant::now();
    let mut attempts = 0;
    while watching.elapsed() < Duration::from_secs(3) {
        seen.extend(session_ids(&zookeeper));
        if tokio::time::timeout(Duration::from_millis(100), changes.changed())
            .await
            .is_ok()
        {
            attempts += 1;
        }
    }
    assert!(attempts <= 6, "{attempts} retries in 3 s");
    writer
        .client
        .set_acl(
            BASE,
            &[zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())],
            None,
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), allocator.synced())
        .await
        .expect("the view once the path is readable");
    assert_eq!(nodes(&allocator), vec!["a"]);
    seen.extend(session_ids(&zookeeper));
    let new: Vec<_> = seen.difference(&before).collect();
    assert_eq!(new.len(), 1, "one session for the allocator: {new:?}");
}

/// The first listing keeps many reads in flight on its one session: over
/// a link with a 20 ms round trip, 300 hosts complete in well under the
/// 6 s that reading them one by one takes. `TURN_AGENT_FIRST_LOAD_HOSTS`
/// also times a direct loopback listing of that many hosts (10,000: the
/// issue's ≤ 1 s goal).
#[tokio::test]
async fn the_first_listing_reads_hosts_concurrently() {
    let zookeeper = ZooKeeper::start(2000).await;
    let writer = writer(&zookeeper).await;
    const HOSTS: usize = 300;
    write_hosts(&writer, HOSTS).await;
    let (port, _proxy) = latency_proxy(zookeeper.port, Duration::from_millis(10)).await;
    let settings = settings(&zookeeper);
    let mut slow = AllocatorSettings::new(format!("127.0.0.1:{port}"), BASE);
    slow.session_timeout = settings.session_timeout;
    let started = Instant::now();
    let allocator = Allocator::start(slow).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), allocator.synced())
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("{HOSTS} hosts over a 20 ms round trip listed in {took:?}");
    assert_eq!(allocator.snapshot().hosts.len(), HOSTS);
    // One by one is at least 300 round trips of 20 ms, 6 s on any machine;
    // concurrent reads took 0.4-0.8 s, 2.3 s on a loaded CI machine. The
    // bound sits below what one by one cannot beat, not near the usual.
    assert!(took < Duration::from_secs(5), "{took:?}");

    if let Some(count) = std::env::var("TURN_AGENT_FIRST_LOAD_HOSTS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
    {
        let count = count.clamp(HOSTS + 1, 99_999);
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        for batch in (HOSTS..count).collect::<Vec<_>>().chunks(1000) {
            let mut multi = writer.client.new_multi_writer();
            for index in batch {
                multi
                    .add_create(
                        &format!("{BASE}/host-{index:05}"),
                        &payload(500.0, 8086),
                        &persistent,
                    )
                    .unwrap();
            }
            multi.commit().await.unwrap();
        }
        let started = Instant::now();
        let allocator = Allocator::start(settings).await.unwrap();
        allocator.synced().await;
        eprintln!(
            "{} hosts on loopback listed in {:?} after start",
            allocator.snapshot().hosts.len(),
            started.elapsed()
        );
    }
}

/// The service's callers are a few busy signalling servers: by default
/// one address may make hundreds of picks in a burst (main's default, the
/// agent's 20/s with a burst of 40, refused 193 of 300). A limit set in
/// `[access]` still applies.
#[tokio::test]
async fn the_services_default_rate_limit_lets_a_busy_caller_through_and_a_set_one_holds() {
    let zookeeper = ZooKeeper::start(2000).await;
    {
        let writer = writer(&zookeeper).await;
        put(&writer, "a", &payload(100.0, 1)).await;
    }
    let statuses = |listen: String| async move {
        let client = http_client();
        let mut statuses = BTreeMap::new();
        for _ in 0..300 {
            let status = client
                .get(format!("http://{listen}/allocate"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            *statuses.entry(status).or_insert(0) += 1;
        }
        statuses
    };
    let (service, _) = start_service(&zookeeper, "", 1).await;
    assert_eq!(
        statuses(service.listen.clone()).await,
        BTreeMap::from([(200, 300)])
    );
    drop(service);
    let (limited, _) = start_service(
        &zookeeper,
        "[access]\nrate_limit_per_second = 1.0\nrate_limit_burst = 5\n",
        1,
    )
    .await;
    let counted = statuses(limited.listen.clone()).await;
    assert!(counted.get(&429).is_some_and(|&n| n >= 290), "{counted:?}");
}
