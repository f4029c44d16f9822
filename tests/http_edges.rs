//! The allocator service's HTTP edges: it shares the agent's server loop
//! and access guard, so it must hold the same promises (a second
//! `X-Forwarded-For` line claims nothing; preface-only sockets cannot take
//! the pool). The service runs as the real binary; it needs no ZooKeeper
//! for these checks.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A running `turn-agent allocator`; killed on drop.
struct Service {
    listen: SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// 127.0.0.1 is admin, 127.0.0.3 a user, 127.0.0.2 the trusted proxy;
/// pages from https://app.example may call it.
async fn start_service() -> Service {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let config = dir.path().join("allocator.toml");
    // Nothing listens on the ZooKeeper port: the view stays empty, the
    // HTTP front serves anyway.
    std::fs::write(
        &config,
        format!(
            "[allocator]\nlisten = \"{listen}\"\nconnect = \"127.0.0.1:{}\"\npath = \"/turn/servers\"\n\
             cors_origins = [\"https://app.example\"]\n\
             [access]\n\
             allow = [{{ addr = \"127.0.0.1\", role = \"admin\" }}, {{ addr = \"127.0.0.2\" }}, {{ addr = \"127.0.0.3\" }}]\n\
             trusted_proxies = [\"127.0.0.2\"]\n",
            free_tcp_port()
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
    wait_for(
        Duration::from_secs(10),
        "the allocator's /healthz",
        || async {
            let response = reqwest::get(format!("http://{listen}/healthz"))
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;
    Service {
        listen,
        _child: child,
        _dir: dir,
    }
}

async fn connect_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket.connect(to).await
}

/// One raw exchange from `source`; the status code.
async fn status_of(source: [u8; 4], to: SocketAddr, head: &str) -> u16 {
    let mut stream = connect_from(source, to).await.unwrap();
    stream
        .write_all(format!("{head}Host: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[tokio::test]
async fn a_second_forwarded_for_line_claims_nothing_at_the_allocator() {
    let service = start_service().await;
    // /hosts needs `status`: admin only.
    let hosts = "GET /hosts HTTP/1.1\r\n";
    assert_eq!(
        status_of(
            [127, 0, 0, 2],
            service.listen,
            &format!("{hosts}X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.3\r\n"),
        )
        .await,
        403
    );
    assert_eq!(
        status_of(
            [127, 0, 0, 2],
            service.listen,
            &format!("{hosts}X-Forwarded-For: 127.0.0.1, 127.0.0.3\r\n"),
        )
        .await,
        403
    );
    // The admin behind the proxy is one.
    assert_eq!(
        status_of(
            [127, 0, 0, 2],
            service.listen,
            &format!("{hosts}X-Forwarded-For: 127.0.0.1\r\n"),
        )
        .await,
        200
    );
    // Errors of the stack itself are JSON here too.
    let response = reqwest::get(format!("http://{}/nowhere", service.listen))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn a_thousand_preface_only_sockets_leave_the_allocators_healthz_reachable() {
    let service = start_service().await;
    let mut held = Vec::new();
    // 1,030 sockets (more than the default pool of 1,024) from 40
    // addresses, each sending only the HTTP/2 preface and then nothing.
    for index in 0..1030u32 {
        let source = [127, 0, 2, 1 + (index % 40) as u8];
        if let Ok(mut stream) = connect_from(source, service.listen).await {
            let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            held.push(stream);
        }
    }
    let client = http_client_builder()
        .local_address("127.0.0.3".parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let status = client
        .get(format!("http://{}/healthz", service.listen))
        .send()
        .await
        .expect("/healthz must answer while 1,030 preface-only sockets are open")
        .status();
    assert_eq!(status, 200);
    eprintln!(
        "/healthz answered in {:?} with 1,030 preface-only sockets open",
        started.elapsed()
    );
    drop(held);
}

#[tokio::test]
async fn pages_of_a_listed_origin_may_call_the_allocator_and_others_not() {
    let service = start_service().await;
    let client = http_client();
    let url = |path: &str| format!("http://{}{path}", service.listen);
    // A preflight from a stranger's address: answered before the access
    // checks, for the listed origin only.
    let stranger = http_client_builder()
        .local_address("127.0.0.9".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let preflight = |origin: &'static str| {
        stranger
            .request(reqwest::Method::OPTIONS, url("/allocate"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let response = preflight("https://app.example").await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let response = preflight("https://evil.example").await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // The real request: its answer (a 503, no hosts without ZooKeeper) is
    // readable by the page; a foreign origin is refused before any pick.
    let response = client
        .get(url("/allocate"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(response.headers()["vary"]
        .to_str()
        .unwrap()
        .contains("origin"));
    let response = client
        .get(url("/allocate"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // A server without Origin is served as before.
    let response = client.get(url("/allocate")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}
