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
    let agent = Agent::start(options("header_read_timeout = \"1s\""));
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
    let client = reqwest::Client::new();
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
async fn connections_beyond_the_cap_are_closed_and_capacity_returns() {
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
    // Give the server a moment to accept all four before the fifth arrives.
    let mut extra = wait_for(
        Duration::from_secs(2),
        "the cap to close a new connection",
        || async {
            let mut stream = TcpStream::connect(agent.files.api).await.ok()?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .ok()?;
            let (answer, closed) = read_until_closed(&mut stream, Duration::from_millis(300)).await;
            (closed && answer.is_empty()).then_some(stream)
        },
    )
    .await;
    let _ = extra.shutdown().await;
    // Once the held connections time out, requests are served again.
    wait_for(Duration::from_secs(5), "capacity to return", || async {
        let response = reqwest::get(agent.url("/healthz")).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}
