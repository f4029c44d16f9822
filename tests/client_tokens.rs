//! Client tokens against a real agent in REST API mode: keys made by
//! openssl, tokens minted by `turn-agent token`, the credential judged by
//! coturn's own turnutils_uclient.

mod common;

use std::time::Duration;

use common::*;

/// Not in the allow list (which holds 127.0.0.1 and ::1 only).
const STRANGER: &str = "127.0.0.2";

fn mint(key: &str, audience: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "--key", key, "--audience", audience];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_agent_cli(&args, &[]);
    assert_eq!(code, 0, "{stderr}");
    stdout.trim().to_string()
}

/// `GET path` from [`STRANGER`] with `token` as the bearer.
async fn get_as_stranger(
    agent: &Agent,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = http_client_builder()
        .local_address(STRANGER.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut request = client.get(agent.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_minted_token_fetches_a_named_credential_from_outside_the_allow_list() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = openssl_key_pair(keys.path(), "first");
    let (next_private, next_public) = openssl_key_pair(keys.path(), "next");
    let agent = Agent::start(AgentOptions {
        extra: format!(
            "mode = \"rest-api\"\nmax_ttl = \"10m\"\n\n[access.client_tokens]\npublic_key_files = [\"{public}\"]\nmax_lifetime = \"5m\"\n"
        ),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(10)).await;
    // The default audience: the API's concrete listen address.
    let audience = agent.files.api.to_string();
    let token = mint(&private, &audience, &["--sub", "alice", "--ttl", "2m"]);
    assert_eq!(token.split('.').count(), 3, "{token}");

    // Without a token the stranger is refused, as before.
    let (status, _) = get_as_stranger(&agent, "/turncredential", None).await;
    assert_eq!(status, 401);

    let (status, body) =
        get_as_stranger(&agent, "/turncredential?username=mallory", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let served = parse_served(&body).unwrap();
    let (expiry, user) = served.userid.split_once(':').unwrap();
    assert_eq!(user, "alice", "sub wins over ?username=");
    assert!(expiry.parse::<u64>().unwrap() > unix_now_secs());
    assert!(
        uclient_allocates(agent.files.turn_port, &served.userid, &served.password).await,
        "the credential named after the token's subject must allocate"
    );

    // Refusals: another audience, a token longer-lived than max_lifetime,
    // a key the agent does not hold.
    for (bad, reason) in [
        (mint(&private, "192.0.2.1:8086", &[]), "another audience"),
        (mint(&private, &audience, &["--ttl", "1h"]), "longer"),
        (mint(&next_private, &audience, &[]), "signature"),
    ] {
        let (status, body) = get_as_stranger(&agent, "/ice", Some(&bad)).await;
        assert_eq!(status, 401, "{reason}: {body}");
        assert!(
            body["reason"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
    }

    // A rotated key file is read on SIGHUP: the new key's tokens pass, the
    // old key's no longer do.
    agent.reload_with(
        &format!("public_key_files = [\"{public}\"]"),
        &format!("public_key_files = [\"{next_public}\"]"),
    );
    let next = mint(&next_private, &audience, &["--sub", "bob"]);
    let body = wait_for(Duration::from_secs(10), "the new key accepted", || async {
        let (status, body) = get_as_stranger(&agent, "/ice", Some(&next)).await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(body["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .ends_with(":bob"));
    let (status, _) = get_as_stranger(&agent, "/ice", Some(&token)).await;
    assert_eq!(status, 401);

    // CORS origins apply on SIGHUP too: a foreign origin is refused, a
    // listed one named.
    let listen = format!("listen = \"{}\"", agent.files.api);
    agent.reload_with(
        &listen,
        &format!("{listen}\ncors_origins = [\"https://app.example\"]"),
    );
    let http = http_client();
    wait_for(
        Duration::from_secs(10),
        "the new origins applied",
        || async {
            let response = http
                .get(agent.url("/healthz"))
                .header("origin", "https://evil.example")
                .send()
                .await
                .ok()?;
            (response.status() == 403).then_some(())
        },
    )
    .await;
    let response = http
        .get(agent.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    let log = agent.log();
    for secret in [&token, &next] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token reached the log");
    }
}

#[test]
fn the_token_command_names_the_flag_at_fault() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = openssl_key_pair(keys.path(), "key");
    for (args, flag) in [
        (
            vec!["--key", "/nonexistent/key.pem", "--audience", "h:1"],
            "--key",
        ),
        (vec!["--key", public.as_str(), "--audience", "h:1"], "--key"),
        (
            vec!["--key", private.as_str(), "--audience", ""],
            "--audience",
        ),
        (
            vec![
                "--key",
                private.as_str(),
                "--audience",
                "h:1",
                "--sub",
                "a:b",
            ],
            "--sub",
        ),
        (
            vec![
                "--key",
                private.as_str(),
                "--audience",
                "h:1",
                "--ttl",
                "soon",
            ],
            "--ttl",
        ),
    ] {
        let mut full = vec!["token"];
        full.extend(args);
        let (code, stdout, stderr) = run_agent_cli(&full, &[]);
        assert_eq!(code, 2, "{full:?}: {stderr}");
        assert!(stdout.is_empty());
        assert!(stderr.contains(flag), "{full:?}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}
