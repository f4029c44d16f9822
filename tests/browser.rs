//! A real browser: headless Chromium loads a page from one origin, fetches
//! `/ice` from the agent on another origin with a client token, and passes
//! a DataChannel message between two relay-only RTCPeerConnections through
//! the real turnserver. Negative controls in the same page: an origin not
//! in `api.cors_origins` (fetch rejected), an expired token (401, readable
//! thanks to CORS on errors), a corrupted credential (no relay candidate).

mod common;

use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use common::*;
use tokio::sync::mpsc;

/// The page at the allowed origin; `{AGENT}` and the tokens are filled in.
const MAIN_PAGE: &str = r#"<!doctype html><html><body>
<iframe src="{FOREIGN}/foreign"></iframe>
<script>
const AGENT = "{AGENT}";
const post = (name, value) => fetch("/result", { method: "POST", body: JSON.stringify({ name, value }) });
async function run() {
  const out = {};
  const t0 = performance.now();
  let response = await fetch(AGENT + "/ice?policy=relay", { headers: { Authorization: "Bearer {EXPIRED}" } });
  out.expired = { status: response.status, reason: (await response.json()).reason };
  response = await fetch(AGENT + "/ice?policy=relay&transport=udp", { headers: { Authorization: "Bearer {TOKEN}" } });
  const config = await response.json();
  out.ice = { status: response.status, policy: config.iceTransportPolicy, username: config.iceServers[0].username };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  a.onicecandidate = (e) => { if (e.candidate) b.addIceCandidate(e.candidate); };
  b.onicecandidate = (e) => { if (e.candidate) a.addIceCandidate(e.candidate); };
  const received = new Promise((resolve) => {
    b.ondatachannel = (e) => { e.channel.onmessage = (m) => resolve(m.data); };
  });
  const channel = a.createDataChannel("test");
  channel.onopen = () => channel.send("hello through the relay");
  await a.setLocalDescription();
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription();
  await a.setRemoteDescription(b.localDescription);
  out.message = await received;
  out.firstMessageMs = performance.now() - t0;
  const stats = await a.getStats();
  let pair;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
  out.local = pair && stats.get(pair.localCandidateId).candidateType;
  out.remote = pair && stats.get(pair.remoteCandidateId).candidateType;
  a.close(); b.close();
  const bad = JSON.parse(JSON.stringify(config));
  bad.iceServers[0].credential += "x";
  const c = new RTCPeerConnection(bad);
  out.corrupted = await new Promise((resolve) => {
    c.onicecandidateerror = (e) => resolve("error " + e.errorCode);
    c.onicecandidate = (e) => resolve(e.candidate ? "candidate " + e.candidate.type : "no candidate");
    c.createDataChannel("x");
    c.setLocalDescription();
  });
  c.close();
  await post("main", out);
}
run().catch((e) => post("main", { error: String(e) }));
</script></body></html>"#;

/// The same server under another origin: not in `api.cors_origins`.
const FOREIGN_PAGE: &str = r#"<!doctype html><html><body><script>
fetch("{AGENT}/ice", { headers: { Authorization: "Bearer {TOKEN}" } })
  .then((r) => "status " + r.status, (e) => "rejected: " + e)
  .then((value) => fetch("/result", { method: "POST", body: JSON.stringify({ name: "foreign", value }) }));
</script></body></html>"#;

#[derive(Clone)]
struct Pages {
    main: String,
    foreign: String,
    results: mpsc::UnboundedSender<serde_json::Value>,
}

#[tokio::test]
async fn chromium_relays_a_data_channel_with_ice_from_another_origin() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = openssl_key_pair(keys.path(), "client");
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pages_port = pages.local_addr().unwrap().port();
    let origin = format!("http://127.0.0.1:{pages_port}");
    let foreign = format!("http://localhost:{pages_port}");
    // 127.0.0.1 may only read status (so wait_ready works): the browser,
    // also on 127.0.0.1, needs its token for /ice.
    let agent = Agent::start(AgentOptions {
        extra: format!(
            r#"mode = "rest-api"
[access]
allow = [{{ addr = "127.0.0.1", role = "probe" }}]
roles = [{{ name = "probe", permissions = ["status"] }}]
[access.client_tokens]
public_key_files = ["{}"]
"#,
            public
        ),
        env: vec![(
            "TURN_AGENT_API_CORS_ORIGINS".into(),
            format!("[\"{origin}\"]"),
        )],
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(10)).await;
    let agent_url = agent.url("");
    let audience = agent.files.api.to_string();
    let private_pem = std::fs::read(&private).unwrap();
    let now = unix_now_secs();
    let token = turn_agent::client_token::mint(
        &private_pem,
        &audience,
        Some("browser-1"),
        Duration::from_secs(300),
        now,
    )
    .unwrap();
    let expired = turn_agent::client_token::mint(
        &private_pem,
        &audience,
        None,
        Duration::from_secs(60),
        now - 3600,
    )
    .unwrap();
    // Without the token the page's address is not enough.
    let (status, _) = agent.get("/ice").await.unwrap();
    assert_eq!(status, 403);

    let fill = |page: &str| {
        page.replace("{AGENT}", &agent_url)
            .replace("{FOREIGN}", &foreign)
            .replace("{TOKEN}", &token)
            .replace("{EXPIRED}", &expired)
    };
    let (results, mut received) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/",
            get(|State(pages): State<Pages>| async move { Html(pages.main) }),
        )
        .route(
            "/foreign",
            get(|State(pages): State<Pages>| async move { Html(pages.foreign) }),
        )
        .route(
            "/result",
            post(|State(pages): State<Pages>, body: String| async move {
                let _ = pages
                    .results
                    .send(serde_json::from_str(&body).unwrap_or_default());
                ""
            }),
        )
        .with_state(Pages {
            main: fill(MAIN_PAGE),
            foreign: fill(FOREIGN_PAGE),
            results,
        });
    let server = tokio::spawn(async move { axum::serve(pages, app).await });

    let profile = tempfile::tempdir().unwrap();
    let mut chromium = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{origin}/"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut main = None;
    let mut foreign_result = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while main.is_none() || foreign_result.is_none() {
        let result = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("the pages to report within 60 s")
            .unwrap();
        match result["name"].as_str() {
            Some("main") => main = Some(result["value"].clone()),
            Some("foreign") => foreign_result = Some(result["value"].clone()),
            _ => {}
        }
    }
    // Stop the browser (the process this test started) and its children.
    if let Some(pid) = chromium.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), chromium.wait())
        .await
        .is_err()
    {
        let _ = chromium.kill().await;
    }
    server.abort();

    let main = main.unwrap();
    let foreign_result = foreign_result.unwrap();
    eprintln!("page: {main}");
    assert!(main.get("error").is_none(), "{main}");
    assert_eq!(main["expired"]["status"], 401, "{main}");
    assert!(
        main["expired"]["reason"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{main}"
    );
    assert_eq!(main["ice"]["status"], 200, "{main}");
    assert_eq!(main["ice"]["policy"], "relay", "{main}");
    assert!(
        main["ice"]["username"]
            .as_str()
            .unwrap()
            .ends_with(":browser-1"),
        "{main}"
    );
    assert_eq!(main["message"], "hello through the relay", "{main}");
    assert_eq!(main["local"], "relay", "{main}");
    assert_eq!(main["remote"], "relay", "{main}");
    let corrupted = main["corrupted"].as_str().unwrap();
    assert!(
        corrupted.starts_with("error") || corrupted == "no candidate",
        "a corrupted credential must not gather a relay candidate: {corrupted}"
    );
    assert!(
        foreign_result.as_str().unwrap().starts_with("rejected"),
        "{foreign_result}"
    );
    eprintln!(
        "time to first DataChannel message: {:.0} ms",
        main["firstMessageMs"].as_f64().unwrap()
    );
}
