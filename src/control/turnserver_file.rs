//! The config file the agent hands turnserver with `-c` while the control
//! channel is on: the operator's `config_file` copied, then the CLI lines
//! (loopback address, a port free at start, a password new for every
//! turnserver start).
//!
//! turnserver 4.6.1 reads `cli-password` from its config file and has no
//! `include`, so the operator's file is copied rather than included; the
//! agent's lines come last, and a later line wins in coturn's file, so an
//! operator's CLI lines are overridden. The password never reaches a command
//! line (not even coturn's `$5$` form): the file is written 0600 and
//! replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::file_checks::{read_limited_text, MAX_CONFIG_BYTES};
use crate::secret::Secret;

/// Where coturn's CLI listens and the password it takes, for one
/// turnserver start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliEndpoint {
    pub address: SocketAddr,
    pub password: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum TurnserverFileError {
    #[error("cannot read turnserver.config_file {path}: {message}")]
    Operator { path: PathBuf, message: String },
    #[error("cannot find a free port for turnserver's CLI: {0}")]
    Port(io::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The agent's file for the turnserver whose pidfile is `pidfile`: next to
/// it (`/run/turn-agent/` by default, a tmpfs), named after it.
pub fn path_for(pidfile: &Path) -> PathBuf {
    crate::config::control::agent_file_path(pidfile)
}

/// The file's text (pure): the operator's file, then the agent's lines.
pub fn file_text(operator: Option<&str>, endpoint: &CliEndpoint) -> String {
    let mut text = String::new();
    if let Some(operator) = operator {
        text.push_str(operator);
        if !operator.ends_with('\n') {
            text.push('\n');
        }
    }
    if operator
        .is_some_and(|text| sets(text, "allow-loopback-peers") && !sets(text, "no-tcp-relay"))
    {
        // A TCP relay to loopback would reach the agent's API (loopback is
        // admin by default) and this CLI: extra_args refuses the same pair.
        text.push_str("# turn-agent: allow-loopback-peers above needs TCP relays off\n");
        text.push_str("no-tcp-relay\n");
    }
    text.push_str("# turn-agent: coturn's CLI for the control channel; rewritten at every start\n");
    text.push_str(&format!("cli-ip={}\n", endpoint.address.ip()));
    text.push_str(&format!("cli-port={}\n", endpoint.address.port()));
    text.push_str(&format!("cli-password={}\n", endpoint.password.expose()));
    text
}

/// Whether a line of a coturn config file turns on `option` (`name`,
/// `name=value`, `name value`, with or without leading dashes; `#` starts a
/// comment).
fn sets(text: &str, option: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let name = line
            .trim_start_matches('-')
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        name == option
    })
}

/// A new endpoint: 127.0.0.1, a port free now, a random password.
pub fn new_endpoint() -> Result<CliEndpoint, TurnserverFileError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(TurnserverFileError::Port)?;
    let address = listener.local_addr().map_err(TurnserverFileError::Port)?;
    Ok(CliEndpoint {
        address,
        password: Secret::random_password(),
    })
}

/// Writes the file for one start: reads the operator's file (a regular
/// file under the config size cap), writes a 0600 temp file beside `path`
/// and renames it over `path`.
pub fn write(
    path: &Path,
    operator_file: Option<&Path>,
    endpoint: &CliEndpoint,
) -> Result<(), TurnserverFileError> {
    let operator = operator_file
        .map(|file| {
            read_limited_text(file, MAX_CONFIG_BYTES).map_err(|error| {
                TurnserverFileError::Operator {
                    path: file.to_owned(),
                    message: error.to_string(),
                }
            })
        })
        .transpose()?;
    let text = file_text(operator.as_deref(), endpoint);
    let write_error = |source| TurnserverFileError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error(io::Error::other("no file name")))?;
    let temp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let result = (|| {
        // A temp file left by a crash may have any mode: start afresh.
        match std::fs::remove_file(&temp) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        if let Some(directory) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(directory)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn endpoint() -> CliEndpoint {
        CliEndpoint {
            address: "127.0.0.1:5766".parse().unwrap(),
            password: Secret::new("pw-1"),
        }
    }

    #[test]
    fn loopback_peers_in_the_operators_file_turn_tcp_relays_off() {
        for operator in [
            "allow-loopback-peers\n",
            "realm=x\n  --allow-loopback-peers # for tests\n",
            "allow-loopback-peers=1",
        ] {
            let text = file_text(Some(operator), &endpoint());
            assert!(
                text.lines().any(|line| line == "no-tcp-relay"),
                "{operator:?}: {text}"
            );
        }
        for operator in [
            "allow-loopback-peers\nno-tcp-relay\n",
            "# allow-loopback-peers\n",
            "allow-loopback-peers-not\n",
            "realm=x\n",
        ] {
            let text = file_text(Some(operator), &endpoint());
            assert_eq!(
                text.lines().filter(|line| *line == "no-tcp-relay").count(),
                usize::from(operator.starts_with("allow-loopback-peers\nno")),
                "{operator:?}: {text}"
            );
        }
    }

    #[test]
    fn agent_lines_come_after_the_operators_file() {
        let text = file_text(Some("cli-port=1\nverbose"), &endpoint());
        assert!(text.starts_with("cli-port=1\nverbose\n# turn-agent"));
        assert!(text.ends_with("cli-ip=127.0.0.1\ncli-port=5766\ncli-password=pw-1\n"));
        assert!(file_text(None, &endpoint()).starts_with("# turn-agent"));
    }

    #[test]
    fn the_file_is_next_to_the_pidfile() {
        assert_eq!(
            path_for(Path::new("/run/turn-agent/turnserver.pid")),
            Path::new("/run/turn-agent/turnserver-agent.conf")
        );
    }

    #[test]
    fn written_0600_even_over_a_wider_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ts-agent.conf");
        let leftover = dir.path().join(".ts-agent.conf.tmp");
        std::fs::write(&leftover, "old").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
        let operator = dir.path().join("operator.conf");
        std::fs::write(&operator, "no-tlsv1\n").unwrap();
        write(&path, Some(&operator), &endpoint()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("no-tlsv1\n") && text.contains("cli-password=pw-1\n"));
        assert!(!leftover.exists());
    }

    #[test]
    fn endpoints_are_loopback_with_fresh_passwords() {
        let (a, b) = (new_endpoint().unwrap(), new_endpoint().unwrap());
        assert!(a.address.ip().is_loopback() && a.address.port() != 0);
        assert_ne!(a.password, b.password);
    }
}
