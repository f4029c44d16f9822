//! Access control over real HTTP, with real client source addresses on
//! loopback (127.0.0.2, 127.0.0.3, ...).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use tokio::time::Instant;

const TOKEN: &str = "a-bearer-token-for-tests-0123456789";

fn client_from(source: &str) -> reqwest::Client {
    http_client_builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn access_options(token_file: &std::path::Path, extra_access: &str) -> AgentOptions {
    AgentOptions {
        extra: format!(
            "[access]\ndefault_role = \"user\"\n\
             allow = [{{ addr = \"127.0.0.1\", role = \"admin\" }}, {{ addr = \"127.0.0.2\" }}, {{ addr = \"127.0.0.3-4\", role = \"watcher\" }}]\n\
             {extra_access}\n\
             [[access.roles]]\nname = \"watcher\"\npermissions = [\"status\", \"metrics\"]\n\
             [[access.tokens]]\ntoken_file = \"{}\"\nrole = \"user\"\n",
            token_file.display()
        ),
        ..AgentOptions::default()
    }
}

fn token_file() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, path)
}

#[tokio::test]
async fn role_by_endpoint_matrix_over_real_connections() {
    let (_dir, token) = token_file();
    let agent = Agent::start(access_options(&token, ""));
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;

    // (source, bearer token, expected status per endpoint)
    // Endpoints: GET /turncredential, GET /ice, GET /readyz, POST /rotate, GET /metrics.
    let table: &[(&str, Option<&str>, [u16; 5])] = &[
        ("127.0.0.1", None, [200, 200, 200, 200, 200]),
        ("127.0.0.2", None, [200, 200, 403, 403, 403]),
        ("127.0.0.3", None, [403, 403, 200, 403, 200]),
        ("127.0.0.4", None, [403, 403, 200, 403, 200]),
        ("127.0.0.5", None, [401, 401, 401, 401, 401]),
        ("127.0.0.5", Some(TOKEN), [200, 200, 403, 403, 403]),
        (
            "127.0.0.5",
            Some("wrong-token-wrong-token-wrong"),
            [401, 401, 401, 401, 401],
        ),
    ];
    for (source, bearer, expected) in table {
        let client = client_from(source);
        let requests = [
            client.get(agent.url("/turncredential")),
            client.get(agent.url("/ice")),
            client.get(agent.url("/readyz")),
            client.post(agent.url("/rotate")),
            client.get(agent.url("/metrics")),
        ];
        for (request, expected) in requests.into_iter().zip(expected) {
            let request = match bearer {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            let response = request.send().await.unwrap();
            let url = response.url().path().to_string();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_eq!(status, *expected, "{source} {bearer:?} {url}: {body}");
            if status == 401 || status == 403 {
                assert_eq!(body["type"], "result", "JSON error body expected: {body}");
            }
        }
    }
    // Liveness stays open to everyone.
    let status = client_from("127.0.0.9")
        .get(agent.url("/healthz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert!(
        !agent.log().contains(TOKEN),
        "the token leaked into the log"
    );
}

#[tokio::test]
async fn a_flooding_address_is_limited_while_others_get_prompt_answers() {
    let (_dir, token) = token_file();
    let agent = Agent::start(access_options(
        &token,
        "rate_limit_per_second = 5.0\nrate_limit_burst = 10",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;

    let flooder = client_from("127.0.0.2");
    let url = agent.url("/turncredential");
    let flood = tokio::spawn(async move {
        let (mut ok, mut limited) = (0, 0);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let response = flooder.get(&url).send().await.unwrap();
            match response.status().as_u16() {
                200 => ok += 1,
                429 => {
                    let retry_after: u64 = response.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(retry_after >= 1);
                    limited += 1;
                }
                other => panic!("unexpected {other}"),
            }
        }
        (ok, limited)
    });
    let polite = client_from("127.0.0.1");
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let started = Instant::now();
        let status = polite
            .get(agent.url("/turncredential"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "an allowed client must keep getting answers");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, limited) = flood.await.unwrap();
    eprintln!(
        "flood: {ok} answered, {limited} limited; polite client's slowest answer {slowest:?}"
    );
    assert!(ok <= 10 + 5 * 3, "{ok} answered: the limit did not hold");
    assert!(limited > 0);
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

#[tokio::test]
async fn a_token_file_readable_by_others_is_reported_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, token) = token_file();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = Agent::start(access_options(&token, ""));
    wait_for(
        Duration::from_secs(5),
        "the loose-permissions warning",
        || {
            let log = agent.log();
            let warned = log.contains("secret file is readable by every local user")
                && log.contains("chmod 0600");
            async move { warned.then_some(()) }
        },
    )
    .await;
    assert!(!agent.log().contains(TOKEN));
}

/// One raw HTTP/1.1 exchange from `source`, so the header lines go out
/// exactly as written; returns the status and the JSON body.
async fn raw_exchange(
    source: &str,
    api: std::net::SocketAddr,
    head: &str,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((source.parse::<IpAddr>().unwrap(), 0).into())
        .unwrap();
    let mut stream = socket.connect(api).await.unwrap();
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
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_client_line_before_the_proxys_own_line_gets_no_admin_role() {
    let (_dir, token) = token_file();
    // 127.0.0.2 is the trusted proxy (a HAProxy that adds its own
    // X-Forwarded-For line after whatever the client sent).
    let agent = Agent::start(access_options(&token, "trusted_proxies = [\"127.0.0.2\"]"));
    agent.wait_ready(Duration::from_secs(20)).await;
    agent.wait_credential(Duration::from_secs(20)).await;
    let rotate = "POST /rotate HTTP/1.1\r\nContent-Length: 0\r\n";
    // The client at 127.0.0.3 (a watcher) claims loopback.
    let (status, body) = raw_exchange(
        "127.0.0.2",
        agent.files.api,
        &format!("{rotate}X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.3\r\n"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    // An unknown client claiming loopback, with a port on the proxy's entry.
    let (status, body) = raw_exchange(
        "127.0.0.2",
        agent.files.api,
        &format!("{rotate}X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.9:51000\r\n"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Garbage where the proxy's entry should be: nobody named, no role
    // (not the proxy's own, a user).
    let (status, _) = raw_exchange(
        "127.0.0.2",
        agent.files.api,
        &format!("{rotate}X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: unknown\r\n"),
    )
    .await;
    assert_eq!(status, 401);
    // The untrusted client itself, sending both lines: its own address.
    let (status, _) = raw_exchange(
        "127.0.0.3",
        agent.files.api,
        &format!("{rotate}X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\n"),
    )
    .await;
    assert_eq!(status, 403);
    // The real admin behind the proxy still is one.
    let (status, body) = raw_exchange(
        "127.0.0.2",
        agent.files.api,
        &format!("{rotate}X-Forwarded-For: 127.0.0.1\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_rate_limit_counts_ipv6_callers_per_64_and_forwarded_callers_one_by_one() {
    // 127.0.0.2 is a trusted proxy in front of IPv6 and IPv4 callers (the
    // allocator service is one: it forwards each caller's address).
    let agent = Agent::start(AgentOptions {
        extra: "[access]\n\
                allow = [{ addr = \"127.0.0.1\", role = \"admin\" }, { addr = \"2001:db8::/32\" }, { addr = \"203.0.113.0/24\" }]\n\
                trusted_proxies = [\"127.0.0.2\"]\n\
                rate_limit_per_second = 5.0\nrate_limit_burst = 10\n"
            .into(),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(20)).await;
    agent.wait_credential(Duration::from_secs(20)).await;
    let proxy = client_from("127.0.0.2");
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for host in 0..200u32 {
        let caller = format!("2001:db8:7:7:{:x}:{:x}::1", host >> 8, host & 0xff);
        let response = proxy
            .get(agent.url("/turncredential"))
            .header("x-forwarded-for", caller)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("200 addresses of one /64 in {seconds:.2} s: {ok} answered, {limited} limited");
    assert!(
        f64::from(ok) <= 10.0 + 5.0 * seconds + 1.0,
        "{ok} answered: the /64 was not one budget"
    );
    // 50 IPv4 callers through the same proxy, four requests each: 200
    // requests, none limited, where one address would get about 10.
    for round in 0..4 {
        for caller in 1..=50 {
            let response = proxy
                .get(agent.url("/turncredential"))
                .header("x-forwarded-for", format!("203.0.113.{caller}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "caller {caller}, round {round}");
        }
    }
}
