//! The validator: raw form -> [`Config`], every problem reported by key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::access::validate_access;
use super::agent::validate_agent;
use super::api::{api_addresses, validate_api};
use super::credentials::validate_credentials;
use super::drain::validate_drain;
use super::health::validate_health;
use super::raw::flat_keys;
use super::traffic::validate_traffic;
use super::turnserver::validate_turnserver;
use super::zookeeper::validate_zookeeper;
use super::{Config, ConfigError, ConfigProblem, RawConfig};

pub(super) struct Validator {
    pub(super) problems: Vec<ConfigProblem>,
}

impl Validator {
    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, key: &str, text: &str) -> Duration {
        match parse_duration(text) {
            Ok(duration) => duration,
            Err(error) => {
                self.problem(key, error.to_string());
                Duration::ZERO
            }
        }
    }

    pub(super) fn positive_duration(&mut self, key: &str, text: &str) -> Duration {
        let duration = self.duration(key, text);
        if duration.is_zero() && parse_duration(text).is_ok() {
            self.problem(key, "must be greater than zero");
        }
        duration
    }

    /// A count that must be at least 1 (1 stands in after a problem).
    pub(super) fn at_least_one<T: TryFrom<i64> + From<u8> + PartialOrd>(
        &mut self,
        key: &str,
        value: i64,
    ) -> T {
        match T::try_from(value) {
            Ok(count) if count >= T::from(1) => count,
            _ => {
                self.problem(key, "must be at least 1");
                T::from(1)
            }
        }
    }

    pub(super) fn socket_addr(&mut self, key: &str, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.problem(key, format!("`{text}` is not an ip:port address"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    pub(super) fn ip(&mut self, key: &str, text: &Option<String>) -> Option<IpAddr> {
        let text = text.as_deref()?;
        match text.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.problem(key, format!("`{text}` is not an IP address"));
                None
            }
        }
    }

    pub(super) fn port(&mut self, key: &str, value: i64, allow_zero: bool) -> u16 {
        match u16::try_from(value) {
            Ok(0) if !allow_zero => {
                self.problem(key, "must be a port number between 1 and 65535");
                0
            }
            Ok(port) => port,
            Err(_) => {
                self.problem(key, "must be a port number between 1 and 65535");
                0
            }
        }
    }

    pub(super) fn binary(&mut self, key: &str, name: &str) -> PathBuf {
        match which::which(name) {
            Ok(path) => path,
            Err(_) => {
                self.problem(key, format!("`{name}` not found or not executable"));
                PathBuf::from(name)
            }
        }
    }

    /// An absolute path to a regular file that can be read (at most
    /// `limit` bytes); its content is left to the code that uses it.
    pub(super) fn readable_file(&mut self, key: &str, text: &str, limit: u64) -> PathBuf {
        let path = self.path(key, text);
        if path.is_absolute() {
            if let Err(error) = crate::file_checks::read_limited(&path, limit) {
                self.problem(key, format!("`{text}` {error}"));
            }
        }
        path
    }

    pub(super) fn path(&mut self, key: &str, text: &str) -> PathBuf {
        if text.is_empty() {
            self.problem(key, "must not be empty");
        } else if !Path::new(text).is_absolute() {
            self.problem(key, format!("`{text}` must be an absolute path"));
        }
        PathBuf::from(text)
    }
}

/// A setting that is not a duration; the message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration like \"100ms\", \"10s\" or \"1h\" ({reason})")]
pub struct InvalidDuration {
    text: String,
    reason: String,
}

/// Parses `"100ms"`, `"10s"`, `"1h"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    humantime::parse_duration(text.trim()).map_err(|error| InvalidDuration {
        text: text.to_string(),
        reason: error.to_string(),
    })
}

/// A duration above zero for `key`, checked as the agent's keys are, for a
/// file of its own (the allocator service's).
pub fn positive_duration(key: &str, text: &str) -> Result<Duration, ConfigProblem> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    let duration = v.positive_duration(key, text);
    v.problems.pop().map_or(Ok(duration), Err)
}

/// Turns the raw form into a [`Config`], or reports every problem it has.
///
/// Sections are checked in file order; a check that spans sections (the
/// API's address when ZooKeeper is on, the interface traffic is read from)
/// lives here.
pub fn validate(raw: &RawConfig) -> Result<Config, ConfigError> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    refuse_control_characters(&mut v, raw);

    let agent = validate_agent(&mut v, &raw.agent);
    let (listen, advertise) = api_addresses(&mut v, &raw.api);
    let turnserver = validate_turnserver(&mut v, &raw.turnserver);
    let api = validate_api(&mut v, &raw.api, listen, advertise, &turnserver);
    let credentials = validate_credentials(&mut v, &raw.credentials, &turnserver);
    let zookeeper = validate_zookeeper(&mut v, &raw.zookeeper);
    if zookeeper.connect.is_some()
        && api.advertise.is_none()
        && (api.listen.ip().is_unspecified() || api.listen.port() == 0)
    {
        v.problem(
            "api.advertise",
            "must be set when zookeeper.connect is set and api.listen is not a concrete ip:port",
        );
    }
    let traffic = validate_traffic(&mut v, &raw.traffic);
    if zookeeper.connect.is_some() && traffic.interface.is_none() {
        v.problem(
            "traffic.interface",
            "must be set when zookeeper.connect is set",
        );
    }
    // The address browsers' client tokens name: what other hosts reach.
    let api_address = api
        .advertise
        .or(Some(api.listen).filter(|listen| !listen.ip().is_unspecified() && listen.port() != 0))
        .map(|address| address.to_string());
    let access = validate_access(&mut v, &raw.access, api_address);
    let health = validate_health(&mut v, &raw.health);
    let drain = validate_drain(&mut v, &raw.drain);

    if v.problems.is_empty() {
        Ok(Config {
            agent,
            api,
            turnserver,
            credentials,
            zookeeper,
            traffic,
            access,
            health,
            drain,
        })
    } else {
        Err(ConfigError {
            problems: v.problems,
        })
    }
}

/// No setting has a use for control characters, and in strings that reach
/// turnserver's or turnadmin's argv or coturn's database a NUL or a line
/// break cuts or splits the value: every string is checked, by key.
fn refuse_control_characters(v: &mut Validator, raw: &RawConfig) {
    fn walk(v: &mut Validator, key: &str, value: &toml::Value) {
        match value {
            toml::Value::String(text) if text.contains(char::is_control) => v.problem(
                key,
                "must not hold control characters (NUL, line breaks, tabs, escapes)",
            ),
            toml::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(v, &format!("{key}[{index}]"), item);
                }
            }
            toml::Value::Table(table) => {
                for (name, item) in table {
                    walk(v, &format!("{key}.{name}"), item);
                }
            }
            _ => {}
        }
    }
    for (key, value) in flat_keys(raw) {
        walk(v, &key, &value);
    }
}
