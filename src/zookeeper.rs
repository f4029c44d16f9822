//! ZooKeeper plumbing shared by the registry (writer) and the allocator
//! (reader): connect strings, znode paths, sessions.
//!
//! zookeeper-client is patched in-tree (`vendor/zookeeper-client`, see its
//! `README.turn-agent.md`) so that one frozen or dead server never costs a
//! session: a connection silent for 2/3 of the negotiated session timeout
//! is dropped (the read timeout), establishing one may take only the
//! [`connection_timeout`], a reconnect tries every other server before the
//! one just lost, and only a server's answer expires a session (the
//! released crate expired it by itself after 7/5 of the timeout without a
//! server, though an ensemble that lost its quorum keeps sessions).

use std::time::Duration;

use zookeeper_client as zk;

/// Why a connect string or path is not usable; names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidZookeeperSetting(pub String);

/// Splits `host:port,host:port/chroot` into the hosts and the chroot
/// (`""` without one), checking each part.
pub fn parse_connect_string(text: &str) -> Result<(String, String), InvalidZookeeperSetting> {
    let text = text.trim();
    let (hosts, chroot) = match text.find('/') {
        Some(index) => (&text[..index], &text[index..]),
        None => (text, ""),
    };
    if hosts.is_empty() {
        return Err(InvalidZookeeperSetting("no hosts before the chroot".into()));
    }
    for host in hosts.split(',') {
        let host = host.trim();
        let Some((name, port)) = host.rsplit_once(':') else {
            return Err(InvalidZookeeperSetting(format!(
                "`{host}` is not host:port"
            )));
        };
        let name = name.trim_start_matches("tcp://");
        if name.is_empty()
            || name.contains(char::is_whitespace)
            || port.parse::<u16>().map_or(true, |p| p == 0)
        {
            return Err(InvalidZookeeperSetting(format!(
                "`{host}` is not host:port"
            )));
        }
    }
    if !chroot.is_empty() {
        validate_path(chroot)
            .map_err(|error| InvalidZookeeperSetting(format!("chroot: {error}")))?;
    }
    Ok((hosts.to_string(), chroot.to_string()))
}

/// An absolute znode path without empty, `.` or `..` components.
pub fn validate_path(path: &str) -> Result<(), InvalidZookeeperSetting> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(InvalidZookeeperSetting(format!(
            "`{path}` must start with /"
        )));
    };
    if rest.is_empty() {
        return Err(InvalidZookeeperSetting("the root / cannot be used".into()));
    }
    for component in rest.split('/') {
        validate_node_name(component)
            .map_err(|_| InvalidZookeeperSetting(format!("`{path}` is not a valid znode path")))?;
    }
    Ok(())
}

/// One path component.
pub fn validate_node_name(name: &str) -> Result<(), InvalidZookeeperSetting> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name == "zookeeper"
        || name.chars().any(|c| c == '/' || c.is_control());
    if bad {
        Err(InvalidZookeeperSetting(format!(
            "`{name}` is not a valid znode name"
        )))
    } else {
        Ok(())
    }
}

/// Upper bound on [`connection_timeout`]: a server that has not answered
/// a new connection in a second is better retried (or another tried).
pub const CONNECTION_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// The connection timeout for a session over `servers` servers: the
/// session timeout divided among them, as the Java client and Curator do,
/// so that one frozen or dead server costs at most its share and the
/// session survives on another; at most [`CONNECTION_TIMEOUT_MAX`], so a
/// server still starting is retried soon. It bounds establishing a
/// connection only; the patched client drops an established connection
/// after its read timeout (2/3 of the negotiated session timeout), then
/// reconnects to another server first, so read timeout plus one
/// connection timeout stays below the session timeout.
pub fn connection_timeout(session_timeout: Duration, servers: usize) -> Duration {
    let servers = u32::try_from(servers.max(1)).unwrap_or(u32::MAX);
    (session_timeout / servers)
        .min(CONNECTION_TIMEOUT_MAX)
        .max(Duration::from_millis(10))
}

/// Opens a session to `hosts`, failing fast when no host answers so the
/// caller can back off on its own schedule.
pub async fn connect(
    hosts: &str,
    session_timeout: Duration,
    digest: Option<&str>,
) -> Result<zk::Client, zk::Error> {
    let servers = hosts
        .split(',')
        .filter(|host| !host.trim().is_empty())
        .count();
    let mut connector = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(connection_timeout(session_timeout, servers))
        .with_fail_eagerly();
    if let Some(digest) = digest {
        connector = connector.with_auth("digest", digest.as_bytes());
    }
    match tokio::time::timeout(session_timeout, connector.connect(hosts)).await {
        Ok(result) => result,
        Err(_) => Err(zk::Error::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_strings() {
        assert_eq!(
            parse_connect_string("zk1:2181,zk2:2181/turn").unwrap(),
            ("zk1:2181,zk2:2181".to_string(), "/turn".to_string())
        );
        assert_eq!(
            parse_connect_string("127.0.0.1:2181").unwrap(),
            ("127.0.0.1:2181".to_string(), String::new())
        );
        for bad in [
            "",
            "/turn",
            "zk1",
            "zk1:notaport",
            "zk1:0",
            "zk1:2181/",
            "zk1:2181//a",
            "zk1:2181/a/../b",
        ] {
            assert!(parse_connect_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_session_timeout_is_shared_among_the_servers() {
        let session = Duration::from_secs(2);
        assert_eq!(connection_timeout(session, 1), CONNECTION_TIMEOUT_MAX);
        assert_eq!(
            connection_timeout(session, 3),
            Duration::from_nanos(666_666_666)
        );
        assert_eq!(connection_timeout(session, 0), CONNECTION_TIMEOUT_MAX);
        assert_eq!(
            connection_timeout(Duration::from_millis(1500), 3),
            Duration::from_millis(500)
        );
        assert_eq!(
            connection_timeout(Duration::from_millis(20), 1000),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn paths_and_names() {
        assert!(validate_path("/turn/servers").is_ok());
        for bad in ["turn", "/", "/a//b", "/a/", "/zookeeper"] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        assert!(validate_node_name("turn-1.example.org").is_ok());
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }
}
