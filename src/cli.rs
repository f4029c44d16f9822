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

/// `POST /rotate` on the local agent; returns the new credential's name.
pub fn rotate(config: &Config) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = format!("http://{}/rotate", local_api_addr(config));
    runtime.block_on(async {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?
            .post(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {url}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(body["credential"].as_str().unwrap_or_default().to_string())
        } else {
            anyhow::bail!(
                "{status}: {}",
                body["reason"].as_str().unwrap_or("no reason given")
            )
        }
    })
}
