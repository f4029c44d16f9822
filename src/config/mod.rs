//! The configuration file format and its validation.
//!
//! Loading happens in three steps so that every problem is reported before the
//! agent touches the world:
//! 1. the TOML file is read into a table (`raw.rs`) and `TURN_AGENT_<SECTION>_<KEY>`
//!    environment variables are laid over it ([`env`]);
//! 2. each section is deserialized into a plain `Raw*` struct
//!    (`deny_unknown_fields`, durations still strings; defaults in `defaults.rs`);
//! 3. [`validate()`] turns the raw structs into [`Config`], whose types already
//!    carry the guarantees (parsed durations and socket addresses, ordered
//!    bounds, binaries that exist), collecting one [`ConfigProblem`] per fault.
//!
//! One file per section holds that section's raw and validated types and
//! its checks; [`validate()`] runs them in file order and adds the checks
//! that span sections.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod access;
mod agent;
mod api;
pub mod control;
mod credentials;
mod defaults;
mod drain;
mod env;
mod health;
mod raw;
mod traffic;
mod turnserver;
mod validate;
mod zookeeper;

#[cfg(test)]
mod access_tests;
#[cfg(test)]
mod tests;

pub use access::{
    validate_access_section, AccessConfig, ClientTokensConfig, RawAccess, RawAllowEntry,
    RawClientTokens, RawRole, RawToken,
};
pub use agent::{AgentConfig, LogFormat, RawAgent};
pub use api::{
    validate_server_limits, ApiConfig, RawApi, RawServerLimits, RawTls, ServerLimits, TlsFiles,
};
pub use credentials::{sqlite_path, CredentialMode, CredentialsConfig, RawCredentials};
pub use drain::{DrainConfig, RawDrain};
pub use env::ENV_PREFIX;
pub use health::{HealthConfig, RawHealth};
pub use raw::{changed_keys, flat_keys, from_flat_keys, load_raw, parse_raw, render_effective};
pub use traffic::{RawTraffic, TrafficConfig, TrafficDirection, TrafficSource};
pub use turnserver::{check_realm, InvalidRealm, RawTurnserver, TurnserverConfig};
pub use validate::{parse_duration, positive_duration, validate, InvalidDuration};
pub use zookeeper::{RawZookeeper, ZookeeperConfig};

/// The sections a file may have, in the order `check-config` prints them.
pub const SECTIONS: &[&str] = &[
    "agent",
    "api",
    "turnserver",
    "credentials",
    "zookeeper",
    "traffic",
    "access",
    "health",
    "drain",
];

/// One thing wrong with the configuration, tied to the key that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// `section.key`, or the environment variable or file the problem came from.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one configuration; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                key: key.into(),
                message: message.into(),
            }],
        }
    }
}

// ---------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------

/// The running configuration as the agent's tasks see it: replaced on
/// SIGHUP (see [`crate::reload`]); each task re-reads the parts it applies
/// live.
pub type ConfigWatch = tokio::sync::watch::Receiver<std::sync::Arc<Config>>;

/// Waits for the next configuration; never returns once the agent has
/// dropped the sender (it only does so at exit).
pub async fn next_config(watch: &mut ConfigWatch) -> std::sync::Arc<Config> {
    if watch.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    watch.borrow_and_update().clone()
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    pub api: ApiConfig,
    pub turnserver: TurnserverConfig,
    pub credentials: CredentialsConfig,
    pub zookeeper: ZookeeperConfig,
    pub traffic: TrafficConfig,
    pub access: AccessConfig,
    pub health: HealthConfig,
    pub drain: DrainConfig,
}

/// The file after environment overrides and defaults, before validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub agent: RawAgent,
    pub api: RawApi,
    pub turnserver: RawTurnserver,
    pub credentials: RawCredentials,
    pub zookeeper: RawZookeeper,
    pub traffic: RawTraffic,
    pub access: RawAccess,
    pub health: RawHealth,
    pub drain: RawDrain,
}

/// Reads, overrides from the process environment, and validates `path`.
/// Returns the raw form too, for `check-config` and for reload diffs.
pub fn load(path: &Path) -> Result<(RawConfig, Config), ConfigError> {
    let raw = load_raw(path, std::env::vars_os())?;
    let config = validate(&raw)?;
    Ok((raw, config))
}

/// The host's name, used as the default realm and znode name.
pub fn default_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
