//! The HTTP server under abuse: slow headers, huge headers, too many
//! connections. Raw TCP clients, so nothing is smoothed over.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn options(api_extra: &str) -> AgentOptions {
    AgentOptions {
        // The [api] section is written by the fixture; these keys go
        // through the environment instead.
        env: api_extra
            .lines()
            .filter_map(|line| line.split_once(" = "))
            .map(|(key, value)| {
                (
                    format!("TURN_AGENT_API_{}", key.to_uppercase()),
                    value.trim_matches('"').to_string(),
                )
            })
            .collect(),
        ..AgentOptions::default()
    }
}

/// Reads until EOF or `timeout`; returns what arrived and whether the
/// server closed the connection.
async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (String, bool) {
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(timeout, stream.read_to_end(&mut buffer))
        .await
        .is_ok();
    (String::from_utf8_lossy(&buffer).into_owned(), closed)
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let agent = Agent::start(options(""));
    agent.wait_ready(Duration::from_secs(5)).await;
    let mut stream = TcpStream::connect(agent.files.api).await.unwrap();
    let request = format!(
        "GET /turncredential HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
}

#[tokio::test]
async fn slow_header_connections_do_not_block_others_and_are_dropped() {
    // All from one address, so above the per-address cap: this test is
    // about the head deadline.
    let agent = Agent::start(options(
        "header_read_timeout = \"1s\"\nmax_connections_per_address = 64",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(agent.files.api).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let opened = Instant::now();
    let client = http_client();
    for _ in 0..5 {
        let started = Instant::now();
        let status = client
            .get(agent.url("/turncredential"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    for stream in &mut stalled {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(3)).await;
        assert!(closed, "a slow-header connection was kept open");
    }
    eprintln!(
        "50 slow-header connections closed after {:?}",
        opened.elapsed()
    );
    assert!(opened.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_in_the_backlog_and_are_served() {
    let agent = Agent::start(options("max_connections = 4\nheader_read_timeout = \"1s\""));
    agent.wait_ready(Duration::from_secs(5)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(agent.files.api).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // A fifth client is neither refused nor reset: it waits until the held
    // connections reach their head deadline, then it is served.
    let started = Instant::now();
    let mut extra = TcpStream::connect(agent.files.api).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    eprintln!("the fifth client was served after {:?}", started.elapsed());
    for stream in &mut held {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(3)).await;
        assert!(closed, "a held connection outlived its deadline");
    }
    // Capacity is back for everyone.
    wait_for(Duration::from_secs(5), "capacity to return", || async {
        let response = reqwest::get(agent.url("/healthz")).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    assert!(agent.log().contains("all connection slots are taken"));
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A TCP connection to `to` from the loopback address `source`.
async fn connect_from(source: [u8; 4], to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket.connect(to).await
}

/// `GET /healthz` from `source`; the time it took, or `None` when it was
/// not answered 200 within `timeout`.
async fn healthz_from(
    source: &str,
    api: std::net::SocketAddr,
    timeout: Duration,
) -> Option<Duration> {
    let client = http_client_builder()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .timeout(timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .get(format!("http://{api}/healthz"))
        .send()
        .await
        .ok()?;
    (response.status() == 200).then(|| started.elapsed())
}

#[tokio::test]
async fn idle_and_preface_only_sockets_from_one_address_do_not_lock_out_another() {
    let agent = Agent::start(options(
        "max_connections = 16\nmax_connections_per_address = 8\nheader_read_timeout = \"3s\"",
    ));
    agent.wait_ready(Duration::from_secs(20)).await;
    let api = agent.files.api;
    // 127.0.0.1 opens far more than the whole pool: sockets that send
    // nothing, and sockets that send only the HTTP/2 preface.
    let opened = Instant::now();
    let mut idle = Vec::new();
    let mut preface = Vec::new();
    for _ in 0..24 {
        idle.push(connect_from([127, 0, 0, 1], api).await.unwrap());
        let mut stream = connect_from([127, 0, 0, 1], api).await.unwrap();
        let _ = stream.write_all(H2_PREFACE).await;
        preface.push(stream);
    }
    // Another address is served at once, again and again.
    for _ in 0..5 {
        let took = healthz_from("127.0.0.2", api, Duration::from_secs(2))
            .await
            .expect("another address must be served while 127.0.0.1 holds its sockets");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    // Preface-only sockets are refused at once, idle ones after the head
    // deadline: none is held.
    for stream in &mut preface {
        let (answer, closed) = read_until_closed(stream, Duration::from_secs(1)).await;
        assert!(closed, "a preface-only socket was kept open");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer:?}"
        );
    }
    for stream in &mut idle {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(6)).await;
        assert!(closed, "a socket that sent nothing was kept open");
    }
    eprintln!(
        "every attacking socket closed {:?} after opening",
        opened.elapsed()
    );
    // An idle keep-alive connection is closed after the head deadline too.
    let mut stream = connect_from([127, 0, 0, 1], api).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(6)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed, "an idle keep-alive connection was kept open");
    assert!(
        answered.elapsed() >= Duration::from_millis(2500),
        "closed after {:?}, before the deadline",
        answered.elapsed()
    );
    // The refusals were reported, not once per socket.
    let lines = agent.log().matches("connection limit reached").count();
    assert!((1..=2).contains(&lines), "{lines} refusal lines");
}

#[tokio::test]
async fn every_error_the_server_produces_is_json() {
    let agent = Agent::start(options(""));
    agent.wait_ready(Duration::from_secs(20)).await;
    let client = http_client();
    let padding = "a".repeat(20 * 1024);
    let requests = [
        (client.get(agent.url("/nowhere")), 404, "not_found"),
        (client.get(agent.url("/rotate")), 405, "method_not_allowed"),
        (
            client.put(agent.url("/turncredential")),
            405,
            "method_not_allowed",
        ),
        (
            client.get(agent.url("/turncredential?ttl=soon")),
            400,
            "bad_request",
        ),
        (
            client
                .get(agent.url("/healthz"))
                .header("x-padding", &padding),
            431,
            "request_header_fields_too_large",
        ),
        // The same limit on the fast path of the credential endpoints.
        (
            client
                .get(agent.url("/turncredential"))
                .header("x-padding", &padding),
            431,
            "request_header_fields_too_large",
        ),
        (
            client.get(agent.url("/ice")).header("x-padding", &padding),
            431,
            "request_header_fields_too_large",
        ),
        (
            client.get(agent.url("/ice?policy=sometimes")),
            400,
            "bad_request",
        ),
    ];
    for (request, status, code) in requests {
        let response = request.send().await.unwrap();
        let url = response.url().path().to_string();
        assert_eq!(response.status().as_u16(), status, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{url}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["type"], "result", "{url}: {body}");
        assert_eq!(body["code"], code, "{url}: {body}");
    }
    // Unknown paths from an unknown address: 401, also JSON.
    let stranger = http_client_builder()
        .local_address("127.0.0.5".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let response = stranger.get(agent.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// The figures: memory held by 1,000 idle sockets, and how fast a
/// normal client is served while they are held and one address keeps
/// opening more.
#[tokio::test]
async fn a_thousand_idle_sockets_cost_little_and_do_not_slow_others() {
    // A pool with room for the 1,000 held sockets plus the flood below: a
    // full pool refuses everyone, which is what max_connections is for.
    let agent = Agent::start(options(
        "header_read_timeout = \"60s\"\nmax_connections = 2048",
    ));
    agent.wait_ready(Duration::from_secs(20)).await;
    agent.wait_credential(Duration::from_secs(20)).await;
    let api = agent.files.api;
    let pid = agent.pid();
    let before_kib = vm_rss_kib(pid);
    let descriptors = open_descriptors(pid);
    // 40 addresses with 25 sockets each: under the per-address cap, so all
    // 1,000 are held.
    let mut idle = Vec::new();
    for address in 1..=40u8 {
        for _ in 0..25 {
            idle.push(connect_from([127, 0, 1, address], api).await.unwrap());
        }
    }
    wait_for(Duration::from_secs(10), "1,000 accepted sockets", || {
        let open = open_descriptors(pid);
        async move { (open >= descriptors + 1000).then_some(()) }
    })
    .await;
    // One more address keeps opening sockets beyond its cap meanwhile.
    let flood = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..200 {
            if let Ok(mut stream) = connect_from([127, 0, 0, 9], api).await {
                let _ = stream.write_all(H2_PREFACE).await;
                held.push(stream);
            }
        }
        held
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let status = http_client()
            .get(agent.url("/turncredential"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    let _ = flood.await;
    let after_kib = vm_rss_kib(pid);
    eprintln!(
        "VmRSS {before_kib} kB before, {after_kib} kB with 1,000 idle sockets held \
         (+{} kB, {:.1} kB per socket); slowest of 20 /turncredential while attacked: {slowest:?}",
        after_kib.saturating_sub(before_kib),
        after_kib.saturating_sub(before_kib) as f64 / 1000.0
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // A silent socket holds no hyper state (its 8 KiB read buffer and
    // 3.5 KiB connection future): about 1-2 kB each; 13 kB each when every
    // accepted socket went on to hyper.
    assert!(
        after_kib.saturating_sub(before_kib) < 6 * 1024,
        "1,000 idle sockets cost {} kB",
        after_kib - before_kib
    );
    drop(idle);
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_json_errors_too() {
    let agent = Agent::start(options(""));
    agent.wait_ready(Duration::from_secs(20)).await;
    let heads = [
        // Far over the limit: hyper's own 431.
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            ),
            "431",
            "request_header_fields_too_large",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_string(),
            "400",
            "bad_request",
        ),
        ("G@T / HTTP/1.1\r\n\r\n".to_string(), "400", "bad_request"),
    ];
    for (head, status, code) in heads {
        let mut stream = TcpStream::connect(agent.files.api).await.unwrap();
        let _ = stream.write_all(head.as_bytes()).await;
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "{answer:?}");
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer:?}"
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], code, "{body}");
    }
}
