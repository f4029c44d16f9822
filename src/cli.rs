//! Subcommands that talk to a running agent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;

/// Where a local client reaches the agent's API: the listen address, with
/// an unspecified IP replaced by loopback.
pub fn local_api_addr(config: &Config) -> SocketAddr {
    let listen = config.api.listen;
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// One request to an agent's API; the JSON body of a 2xx answer, or an
/// error with the answer's reason.
async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut request = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            body["reason"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body)
}

/// Runs `future` on a small runtime of its own: the subcommands are
/// one-shot clients.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// `POST /rotate` on the local agent; returns the new credential's name.
pub fn rotate(config: &Config) -> anyhow::Result<String> {
    let url = format!("http://{}/rotate", local_api_addr(config));
    let body = block_on(call(
        reqwest::Method::POST,
        &url,
        None,
        Duration::from_secs(30),
    ))?;
    Ok(body["credential"].as_str().unwrap_or_default().to_string())
}

/// `GET URL/status`, rendered for people.
pub fn status(url: &str, token: Option<&str>) -> anyhow::Result<String> {
    let url = format!("{}/status", url.trim_end_matches('/'));
    let body = block_on(call(
        reqwest::Method::GET,
        &url,
        token,
        Duration::from_secs(10),
    ))?;
    Ok(render_status(&body))
}

/// One line per part: what an operator checks first.
pub fn render_status(body: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let turnserver = &body["turnserver"];
    let credentials = &body["credentials"];
    let registry = &body["registry"];
    let mut lines = vec![format!(
        "ready:       {}{}",
        text(&body["ready"]),
        body["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )];
    lines.push(format!(
        "turnserver:  {} pid {} restarts {} last exit {}",
        text(&turnserver["phase"]),
        text(&turnserver["pid"]),
        text(&turnserver["restarts"]),
        text(&turnserver["last_exit"])
    ));
    lines.push(format!(
        "credentials: {} {} user {} expires {} rotations {} failures {}",
        text(&credentials["mode"]),
        if credentials["available"] == true {
            "available"
        } else {
            "unavailable"
        },
        text(&credentials["username"]),
        text(&credentials["expires_at"]),
        text(&credentials["rotations"]),
        text(&credentials["consecutive_failures"])
    ));
    if registry["enabled"] == true {
        lines.push(format!(
            "zookeeper:   {} {} writes {} free {} Mbps{}",
            if registry["connected"] == true {
                "connected"
            } else {
                "disconnected"
            },
            if registry["published"] == true {
                "published"
            } else {
                "not published"
            },
            text(&registry["writes"]),
            text(&registry["free_traffic_mbps"]),
            registry["last_error"]
                .as_str()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ));
    } else {
        lines.push("zookeeper:   publishing off".to_string());
    }
    lines.push(format!("version:     {}", text(&body["version"])));
    lines.join("\n")
}

/// `turn-agent selfcheck`: fetches a credential from the local agent and
/// allocates (then releases) a relay on its turnserver with it.
pub fn selfcheck(config: &Config) -> anyhow::Result<String> {
    let url = format!("http://{}/turncredential", local_api_addr(config));
    block_on(async {
        let body = call(reqwest::Method::GET, &url, None, Duration::from_secs(10)).await?;
        let username = body["userid"].as_str().unwrap_or_default().to_string();
        let password = crate::secret::Secret::new(body["password"].as_str().unwrap_or_default());
        let server = config.turnserver.probe_addr();
        let took = crate::turn_check::allocate_and_release(
            server,
            &username,
            &password,
            Duration::from_secs(5),
        )
        .await?;
        Ok(format!(
            "ok: {username} allocated and released a relay on {server} in {:.1} ms",
            took.as_secs_f64() * 1000.0
        ))
    })
}

/// `POST /drain` on the local agent.
pub fn drain(config: &Config) -> anyhow::Result<()> {
    let url = format!("http://{}/drain", local_api_addr(config));
    block_on(call(
        reqwest::Method::POST,
        &url,
        None,
        Duration::from_secs(10),
    ))?;
    Ok(())
}

/// Why `turn-agent token` cannot mint; each names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenCommandError {
    #[error("--key: cannot read `{path}`: {error}")]
    ReadKey { path: String, error: std::io::Error },
    #[error("--key: {0}")]
    Key(crate::client_token::MintError),
    #[error("--audience: must be the TURN host's API address as host:port")]
    Audience,
    #[error("--sub: only letters, digits and . _ - @ + are allowed, at most {max} bytes", max = crate::client_token::MAX_SUBJECT_BYTES)]
    Subject,
    #[error("--ttl: {0}")]
    Ttl(#[from] crate::config::InvalidDuration),
    #[error("--ttl: must be at least one second")]
    TtlZero,
}

/// `turn-agent token`: a client token signed with the Ed25519 private key
/// in `key_file` (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519`
/// writes it), for `audience`, valid `ttl` from `now`.
pub fn mint_token(
    key_file: &std::path::Path,
    audience: &str,
    subject: Option<&str>,
    ttl: &str,
    now: u64,
) -> Result<String, TokenCommandError> {
    let audience = audience.trim();
    if audience.is_empty() || audience.contains(char::is_whitespace) {
        return Err(TokenCommandError::Audience);
    }
    if subject.is_some_and(|subject| !crate::client_token::is_valid_subject(subject)) {
        return Err(TokenCommandError::Subject);
    }
    let ttl = crate::config::parse_duration(ttl)?;
    if ttl.as_secs() == 0 {
        return Err(TokenCommandError::TtlZero);
    }
    let pem = std::fs::read(key_file).map_err(|error| TokenCommandError::ReadKey {
        path: key_file.display().to_string(),
        error,
    })?;
    crate::client_token::mint(&pem, audience, subject, ttl, now).map_err(|error| match error {
        crate::client_token::MintError::BadSubject => TokenCommandError::Subject,
        other => TokenCommandError::Key(other),
    })
}

/// `GET /sessions[?user=]` on the local agent, as a table.
pub fn sessions(config: &Config, user: Option<&str>) -> anyhow::Result<String> {
    let url = sessions_url(config, None, user)?;
    let body = block_on(call(
        reqwest::Method::GET,
        url.as_str(),
        None,
        Duration::from_secs(30),
    ))?;
    Ok(render_sessions(&body))
}

/// `DELETE /sessions/{id}` or `DELETE /sessions?user=`; returns how many
/// sessions ended.
pub fn kill_sessions(config: &Config, id: Option<&str>, user: Option<&str>) -> anyhow::Result<u64> {
    if id.is_some() == user.is_some() {
        anyhow::bail!("name either a session id or --user");
    }
    let url = sessions_url(config, id, user)?;
    let body = block_on(call(
        reqwest::Method::DELETE,
        url.as_str(),
        None,
        Duration::from_secs(30),
    ))?;
    Ok(body["terminated"].as_u64().unwrap_or(0))
}

fn sessions_url(
    config: &Config,
    id: Option<&str>,
    user: Option<&str>,
) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(&format!("http://{}/sessions", local_api_addr(config)))?;
    if let Some(id) = id {
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("cannot build the session URL"))?
            .push(id);
    }
    if let Some(user) = user {
        url.query_pairs_mut().append_pair("user", user);
    }
    Ok(url)
}

/// The `/sessions` answer as a table, one session a line; outside values
/// escaped so a user name cannot move the cursor or forge a line.
pub fn render_sessions(body: &serde_json::Value) -> String {
    use std::fmt::Write;

    let field = |session: &serde_json::Value, name: &str| match &session[name] {
        serde_json::Value::String(text) => crate::log_safe::LogSafe::new(text).to_string(),
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str())
            .map(|text| crate::log_safe::LogSafe::new(text).to_string())
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let mut text = format!(
        "{:<18}  {:<9}  {:>7}  {:>10}  {:>10}  {:<21}  {:<21}  {}\n",
        "ID", "TRANSPORT", "AGE_S", "RX_BPS", "TX_BPS", "CLIENT", "RELAY", "USER@REALM"
    );
    for session in body["sessions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            text,
            "{:<18}  {:<9}  {:>7}  {:>10}  {:>10}  {:<21}  {:<21}  {}@{}",
            field(session, "id"),
            field(session, "transport"),
            field(session, "age_s"),
            field(session, "rx_bps"),
            field(session, "tx_bps"),
            field(session, "client"),
            field(session, "relay"),
            field(session, "user"),
            field(session, "realm"),
        );
    }
    let _ = write!(text, "total: {}", body["total"]);
    if body["complete"] == false {
        text.push_str(" (coturn listed only part of them)");
    }
    text
}

#[cfg(test)]
mod session_table_tests {
    use super::render_sessions;

    #[test]
    fn a_table_line_per_session_with_outside_values_escaped() {
        let body = serde_json::json!({
            "total": 1,
            "complete": true,
            "sessions": [{
                "id": "001000000000000421", "user": "ta1-1\r\nforged", "realm": "example.org",
                "client": "127.0.0.1:5000", "relay": ["127.0.0.1:10001"], "transport": "udp",
                "age_s": 12, "rx_bps": 100, "tx_bps": 200
            }]
        });
        let table = render_sessions(&body);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].starts_with("001000000000000421  udp"), "{table}");
        assert!(lines[1].contains("127.0.0.1:10001"));
        assert!(!lines[1].contains('\r'));
        assert_eq!(lines[2], "total: 1");
    }
}
