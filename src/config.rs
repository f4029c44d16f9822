//! The configuration file format and its validation.
//!
//! Loading happens in three steps so that every problem is reported before the
//! agent touches the world:
//! 1. the TOML file is read into a table and `TURN_AGENT_<SECTION>_<KEY>`
//!    environment variables are laid over it;
//! 2. each section is deserialized into a plain `Raw*` struct
//!    (`deny_unknown_fields`, durations still strings);
//! 3. [`validate`] turns the raw structs into [`Config`], whose types already
//!    carry the guarantees (parsed durations and socket addresses, ordered
//!    bounds, binaries that exist), collecting one [`ConfigProblem`] per fault.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access::{self, AccessPolicy, AddrPattern, Permission, Role};
use crate::secret::Secret;

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "TURN_AGENT_";

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
    fn single(key: impl Into<String>, message: impl Into<String>) -> Self {
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

/// How a drain decides that relayed traffic is over.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    pub idle_mbps: f64,
    pub quiet_period: Duration,
    pub timeout: Duration,
}

/// The end-to-end allocation self-check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// `None`: off.
    pub self_check_interval: Option<Duration>,
    pub self_check_failures: u32,
    pub self_check_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// A `tracing` filter directive such as `info` or `turn_agent=debug,info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Upper bound on the whole ordered shutdown.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// What other hosts use to reach the API; `None` means `listen` is
    /// reachable as it is.
    pub advertise: Option<SocketAddr>,
    /// TURN URIs handed to clients in `/ice` and published in ZooKeeper.
    pub turn_uris: Vec<String>,
    pub limits: crate::api::ServerLimits,
    /// Serve HTTPS with these files; re-read on SIGHUP.
    pub tls: Option<crate::api::tls::TlsFiles>,
    /// Browser origins that may read the API's answers (off when empty).
    pub cors: crate::cors::CorsPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TurnserverConfig {
    /// Resolved path of the `turnserver` binary.
    pub binary: PathBuf,
    pub config_file: Option<PathBuf>,
    pub listening_ip: Option<IpAddr>,
    pub listening_port: u16,
    pub relay_ip: Option<IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    pub realm: String,
    pub userdb: PathBuf,
    pub pidfile: PathBuf,
    pub extra_args: Vec<String>,
    pub restart_delay_min: Duration,
    pub restart_delay_max: Duration,
    pub stable_after: Duration,
    pub stop_timeout: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub probe_failures: u32,
    pub startup_timeout: Duration,
}

impl TurnserverConfig {
    /// Where the STUN health probe is sent: the listening address, or
    /// loopback when turnserver listens on every interface.
    pub fn probe_addr(&self) -> SocketAddr {
        let ip = match self.listening_ip {
            Some(ip) if !ip.is_unspecified() => ip,
            Some(IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            _ => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        };
        SocketAddr::new(ip, self.listening_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialMode {
    /// Long-term users added and removed with `turnadmin -a/-d`.
    LongTerm,
    /// coturn's `--use-auth-secret`: shared secrets, per-request HMAC credentials.
    RestApi,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CredentialsConfig {
    pub mode: CredentialMode,
    pub rotate_interval: Duration,
    pub lifetime: Duration,
    pub grace: Duration,
    pub max_ttl: Duration,
    pub state_file: PathBuf,
    /// Resolved path of the `turnadmin` binary.
    pub turnadmin: PathBuf,
    /// Database flags for turnadmin; empty means `-b <turnserver.userdb>`.
    pub database_args: Vec<String>,
    /// The SQLite user database `database_args` name, if they name one:
    /// the agent keeps it 0600 and in WAL mode, and writes REST API secrets
    /// to it directly.
    pub sqlite_userdb: Option<PathBuf>,
    /// `POST /rotate` is refused (429) within this time of the previous
    /// `POST /rotate`; zero turns the throttle off.
    pub rotate_min_interval: Duration,
    /// REST API mode: rotations are refused (429) while this many shared
    /// secrets are live in the database.
    pub max_live_secrets: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZookeeperConfig {
    /// Ensemble connect string with optional chroot; `None` turns publishing off.
    pub connect: Option<String>,
    pub path: String,
    pub node: String,
    pub session_timeout: Duration,
    pub publish_interval: Duration,
    pub max_silence: Duration,
    pub auth_file: Option<PathBuf>,
    /// Published in the payload for the allocator's preferences.
    pub region: String,
    pub isp: Vec<String>,
}

impl ZookeeperConfig {
    /// `(hosts, chroot)` of the connect string; the chroot is `""` when absent.
    pub fn hosts_and_chroot(&self) -> Option<(&str, &str)> {
        let connect = self.connect.as_deref()?;
        Some(match connect.find('/') {
            Some(index) => (&connect[..index], &connect[index..]),
            None => (connect, ""),
        })
    }

    /// Full path of the parent of the host znodes, chroot included.
    pub fn base_path(&self) -> String {
        let chroot = self.hosts_and_chroot().map_or("", |(_, chroot)| chroot);
        format!("{chroot}{}", self.path)
    }

    pub fn node_path(&self) -> String {
        format!("{}/{}", self.base_path(), self.node)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficDirection {
    Rx,
    Tx,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrafficConfig {
    pub interface: Option<String>,
    pub capacity_mbps: f64,
    pub direction: TrafficDirection,
    pub hysteresis_percent: f64,
    /// Weight of the previous rate in an exponential moving average (0 = none).
    pub smoothing: f64,
}

/// Who may call the API, validated into an [`AccessPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    pub policy: AccessPolicy,
    /// Requests per second per client address on `/turncredential` and
    /// `/ice`; 0 turns the limit off.
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    /// IPv6 clients share one rate-limit budget per prefix of this length.
    pub rate_limit_ipv6_prefix: u8,
    /// Files holding secrets, checked for loose permissions at start.
    pub token_files: Vec<PathBuf>,
    /// Signed short-lived bearer tokens for browsers; `None`: off.
    pub client_tokens: Option<ClientTokensConfig>,
}

/// `[access.client_tokens]`, with the public keys read.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTokensConfig {
    pub public_key_files: Vec<PathBuf>,
    /// The PEM documents of `public_key_files` (public, not secrets), read
    /// at start and on every reload.
    pub public_keys: Vec<Vec<u8>>,
    /// What a token's `aud` must name: this host's API as `host:port`.
    pub audience: String,
    /// Index into the policy's roles.
    pub role: usize,
    pub max_lifetime: Duration,
}

// ---------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAgent {
    pub log_level: String,
    pub log_format: LogFormat,
    pub shutdown_timeout: String,
}

impl Default for RawAgent {
    fn default() -> Self {
        RawAgent {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            shutdown_timeout: "10s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    pub turn_uris: Vec<String>,
    pub max_connections: i64,
    pub max_header_bytes: i64,
    pub header_read_timeout: String,
    pub request_timeout: String,
    pub max_connections_per_address: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    pub cors_origins: Vec<String>,
    pub cors_max_age: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: "0.0.0.0:8086".into(),
            advertise: None,
            turn_uris: Vec::new(),
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: "5s".into(),
            request_timeout: "10s".into(),
            max_connections_per_address: 32,
            tls: None,
            cors_origins: Vec::new(),
            cors_max_age: "10m".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTurnserver {
    pub binary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listening_ip: Option<String>,
    pub listening_port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_ip: Option<String>,
    pub min_port: i64,
    pub max_port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    pub userdb: String,
    pub pidfile: String,
    pub extra_args: Vec<String>,
    pub restart_delay_min: String,
    pub restart_delay_max: String,
    pub stable_after: String,
    pub stop_timeout: String,
    pub probe_interval: String,
    pub probe_timeout: String,
    pub probe_failures: i64,
    pub startup_timeout: String,
    /// Long flags this agent does not know that `extra_args` may still use.
    pub pass_through_flags: Vec<String>,
}

impl Default for RawTurnserver {
    fn default() -> Self {
        RawTurnserver {
            binary: "turnserver".into(),
            config_file: None,
            listening_ip: None,
            listening_port: 3478,
            relay_ip: None,
            min_port: 49152,
            max_port: 65535,
            realm: None,
            userdb: "/var/lib/turn-agent/turndb".into(),
            pidfile: "/run/turn-agent/turnserver.pid".into(),
            extra_args: vec!["--no-cli".into()],
            restart_delay_min: "100ms".into(),
            restart_delay_max: "30s".into(),
            stable_after: "60s".into(),
            stop_timeout: "5s".into(),
            probe_interval: "1s".into(),
            probe_timeout: "500ms".into(),
            probe_failures: 3,
            startup_timeout: "10s".into(),
            pass_through_flags: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCredentials {
    pub mode: CredentialMode,
    pub rotate_interval: String,
    pub lifetime: String,
    pub grace: String,
    pub max_ttl: String,
    pub state_file: String,
    pub turnadmin: String,
    pub database_args: Vec<String>,
    pub rotate_min_interval: String,
    pub max_live_secrets: i64,
}

impl Default for RawCredentials {
    fn default() -> Self {
        RawCredentials {
            mode: CredentialMode::LongTerm,
            rotate_interval: "1h".into(),
            lifetime: "2h".into(),
            grace: "60s".into(),
            max_ttl: "24h".into(),
            state_file: "/var/lib/turn-agent/credential.json".into(),
            turnadmin: "turnadmin".into(),
            database_args: Vec::new(),
            rotate_min_interval: "10s".into(),
            max_live_secrets: 32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawZookeeper {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub session_timeout: String,
    pub publish_interval: String,
    pub max_silence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<String>,
    pub region: String,
    pub isp: Vec<String>,
}

impl Default for RawZookeeper {
    fn default() -> Self {
        RawZookeeper {
            connect: None,
            path: "/turn/servers".into(),
            node: None,
            session_timeout: "10s".into(),
            publish_interval: "10s".into(),
            max_silence: "60s".into(),
            auth_file: None,
            region: String::new(),
            isp: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTraffic {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub capacity_mbps: f64,
    pub direction: TrafficDirection,
    pub hysteresis_percent: f64,
    pub smoothing: f64,
}

impl Default for RawTraffic {
    fn default() -> Self {
        RawTraffic {
            interface: None,
            capacity_mbps: 1000.0,
            direction: TrafficDirection::Max,
            hysteresis_percent: 5.0,
            smoothing: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllowEntry {
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub name: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub token_file: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccess {
    pub default_role: String,
    pub allow: Vec<RawAllowEntry>,
    pub trusted_proxies: Vec<String>,
    pub roles: Vec<RawRole>,
    pub tokens: Vec<RawToken>,
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: i64,
    pub rate_limit_ipv6_prefix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tokens: Option<RawClientTokens>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTokens {
    pub public_key_files: Vec<String>,
    /// Default: the advertised API address (`api.advertise`, else a
    /// concrete `api.listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default = "default_client_token_role")]
    pub role: String,
    #[serde(default = "default_client_token_max_lifetime")]
    pub max_lifetime: String,
}

fn default_client_token_role() -> String {
    "user".into()
}

fn default_client_token_max_lifetime() -> String {
    "10m".into()
}

impl Default for RawAccess {
    fn default() -> Self {
        RawAccess {
            default_role: "user".into(),
            allow: vec![
                RawAllowEntry {
                    addr: "127.0.0.1".into(),
                    role: Some("admin".into()),
                },
                RawAllowEntry {
                    addr: "::1".into(),
                    role: Some("admin".into()),
                },
            ],
            trusted_proxies: Vec::new(),
            roles: Vec::new(),
            tokens: Vec::new(),
            rate_limit_per_second: 20.0,
            rate_limit_burst: 40,
            rate_limit_ipv6_prefix: 64,
            client_tokens: None,
        }
    }
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDrain {
    pub idle_mbps: f64,
    pub quiet_period: String,
    pub timeout: String,
}

impl Default for RawDrain {
    fn default() -> Self {
        RawDrain {
            idle_mbps: 1.0,
            quiet_period: "30s".into(),
            timeout: "10m".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub self_check_interval: String,
    pub self_check_failures: i64,
    pub self_check_timeout: String,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            self_check_interval: "30s".into(),
            self_check_failures: 2,
            self_check_timeout: "3s".into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Reads, overrides from the process environment, and validates `path`.
/// Returns the raw form too, for `check-config` and for reload diffs.
pub fn load(path: &Path) -> Result<(RawConfig, Config), ConfigError> {
    let raw = load_raw(path, std::env::vars_os())?;
    let config = validate(&raw)?;
    Ok((raw, config))
}

/// The `section.key` names whose effective values differ between two loads.
pub fn changed_keys(old: &RawConfig, new: &RawConfig) -> Vec<String> {
    let (old, new) = (flat_keys(old), flat_keys(new));
    let mut changed: Vec<String> = old
        .iter()
        .filter(|(key, value)| new.get(*key) != Some(*value))
        .map(|(key, _)| key.clone())
        .collect();
    changed.extend(new.keys().filter(|key| !old.contains_key(*key)).cloned());
    changed.sort();
    changed
}

/// Every `section.key` of `raw` with its value; keys left unset (`None`)
/// are absent.
pub fn flat_keys(raw: &RawConfig) -> BTreeMap<String, toml::Value> {
    let mut keys = BTreeMap::new();
    if let Ok(toml::Value::Table(sections)) = toml::Value::try_from(raw) {
        for (section_name, section_value) in sections {
            if let toml::Value::Table(section_table) = section_value {
                for (key, value) in section_table {
                    keys.insert(format!("{section_name}.{key}"), value);
                }
            }
        }
    }
    keys
}

/// The inverse of [`flat_keys`].
pub fn from_flat_keys(keys: BTreeMap<String, toml::Value>) -> Result<RawConfig, ConfigError> {
    let mut sections = toml::Table::new();
    for (name, value) in keys {
        let Some((section, key)) = name.split_once('.') else {
            continue;
        };
        if let toml::Value::Table(table) = sections
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            table.insert(key.to_string(), value);
        }
    }
    toml::Value::Table(sections)
        .try_into()
        .map_err(|error: toml::de::Error| ConfigError::single("", error.message().to_string()))
}

/// Reads `path` and lays the `TURN_AGENT_*` variables of `env` over it.
pub fn load_raw(
    path: &Path,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<RawConfig, ConfigError> {
    // A FIFO, a device or a huge file is refused before it is read.
    let text = crate::file_checks::read_limited_text(path, crate::file_checks::MAX_CONFIG_BYTES)
        .map_err(|error| ConfigError::single(path.display().to_string(), error.to_string()))?;
    parse_raw(&text, env).map_err(|mut error| {
        for problem in &mut error.problems {
            if problem.key.is_empty() {
                problem.key = path.display().to_string();
            }
        }
        error
    })
}

/// Parses file text with environment overrides into the raw form.
pub fn parse_raw(
    text: &str,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<RawConfig, ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| ConfigError::single("", one_line(&error.to_string())))?;
    let mut problems = Vec::new();
    apply_env_overrides(&mut table, env, &mut problems);

    for name in table.keys() {
        if !SECTIONS.contains(&name.as_str()) {
            problems.push(ConfigProblem {
                key: name.clone(),
                message: format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            });
        }
    }

    let mut raw = RawConfig::default();
    section(&table, "agent", &mut raw.agent, &mut problems);
    section(&table, "api", &mut raw.api, &mut problems);
    section(&table, "turnserver", &mut raw.turnserver, &mut problems);
    section(&table, "credentials", &mut raw.credentials, &mut problems);
    section(&table, "zookeeper", &mut raw.zookeeper, &mut problems);
    section(&table, "traffic", &mut raw.traffic, &mut problems);
    section(&table, "access", &mut raw.access, &mut problems);
    section(&table, "health", &mut raw.health, &mut problems);
    section(&table, "drain", &mut raw.drain, &mut problems);

    if problems.is_empty() {
        Ok(raw)
    } else {
        Err(ConfigError { problems })
    }
}

/// Deserializes one section on its own, so a fault in one section does not
/// hide the faults of the others.
fn section<T: DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    slot: &mut T,
    problems: &mut Vec<ConfigProblem>,
) {
    let Some(value) = table.get(name) else {
        return;
    };
    if !value.is_table() {
        problems.push(ConfigProblem {
            key: name.into(),
            message: "must be a table".into(),
        });
        return;
    }
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(parsed) => *slot = parsed,
        Err(error) => {
            let path = error.path().to_string();
            let key = if path == "." {
                name.to_string()
            } else {
                format!("{name}.{path}")
            };
            problems.push(ConfigProblem {
                key,
                message: one_line(&error.into_inner().to_string()),
            });
        }
    }
}

/// Lays `TURN_AGENT_<SECTION>_<KEY>=value` over the file's table.
///
/// The value is read as a TOML value when it is one (`3478`, `true`,
/// `["-v"]`, `"quoted"`), and as a plain string otherwise (`10s`,
/// `127.0.0.1:9000`).
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in env {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        match value.into_string() {
            // A line break would end the value early in the TOML it is read
            // as, silently dropping the rest.
            Ok(value) if value.contains(char::is_control) => problems.push(ConfigProblem {
                key: name.to_string(),
                message: "value holds a control character (a line break, NUL, ...)".into(),
            }),
            Ok(value) => {
                overrides.insert(name.to_string(), value);
            }
            Err(_) => problems.push(ConfigProblem {
                key: name.to_string(),
                message: "value is not valid UTF-8".into(),
            }),
        }
    }
    for (name, value) in overrides {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section_name, key)) = rest.split_once('_') else {
            problems.push(ConfigProblem {
                key: name,
                message: "expected TURN_AGENT_<SECTION>_<KEY>".into(),
            });
            continue;
        };
        if !SECTIONS.contains(&section_name) || key.is_empty() {
            problems.push(ConfigProblem {
                key: name,
                message: format!(
                    "unknown section `{section_name}`, expected one of {}",
                    SECTIONS.join(", ")
                ),
            });
            continue;
        }
        let parsed = format!("value = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut wrapper| wrapper.remove("value"))
            .unwrap_or(toml::Value::String(value));
        let entry = table
            .entry(section_name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(section_table) => {
                section_table.insert(key.to_string(), parsed);
            }
            None => problems.push(ConfigProblem {
                key: name,
                message: format!("section `{section_name}` in the file is not a table"),
            }),
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

struct Validator {
    problems: Vec<ConfigProblem>,
}

impl Validator {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, text: &str) -> Duration {
        match parse_duration(text) {
            Ok(duration) => duration,
            Err(message) => {
                self.problem(key, message);
                Duration::ZERO
            }
        }
    }

    fn positive_duration(&mut self, key: &str, text: &str) -> Duration {
        let duration = self.duration(key, text);
        if duration.is_zero() && parse_duration(text).is_ok() {
            self.problem(key, "must be greater than zero");
        }
        duration
    }

    /// A count that must be at least 1 (1 stands in after a problem).
    fn at_least_one<T: TryFrom<i64> + From<u8> + PartialOrd>(
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

    fn socket_addr(&mut self, key: &str, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.problem(key, format!("`{text}` is not an ip:port address"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn ip(&mut self, key: &str, text: &Option<String>) -> Option<IpAddr> {
        let text = text.as_deref()?;
        match text.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.problem(key, format!("`{text}` is not an IP address"));
                None
            }
        }
    }

    fn port(&mut self, key: &str, value: i64, allow_zero: bool) -> u16 {
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

    fn binary(&mut self, key: &str, name: &str) -> PathBuf {
        match which::which(name) {
            Ok(path) => path,
            Err(_) => {
                self.problem(key, format!("`{name}` not found or not executable"));
                PathBuf::from(name)
            }
        }
    }

    fn path(&mut self, key: &str, text: &str) -> PathBuf {
        if text.is_empty() {
            self.problem(key, "must not be empty");
        } else if !Path::new(text).is_absolute() {
            self.problem(key, format!("`{text}` must be an absolute path"));
        }
        PathBuf::from(text)
    }
}

/// Parses `"100ms"`, `"10s"`, `"1h"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        format!("`{text}` is not a duration like \"100ms\", \"10s\" or \"1h\" ({error})")
    })
}

/// Turns the raw form into a [`Config`], or reports every problem it has.
pub fn validate(raw: &RawConfig) -> Result<Config, ConfigError> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    refuse_control_characters(&mut v, raw);

    let agent = AgentConfig {
        log_level: raw.agent.log_level.clone(),
        log_format: raw.agent.log_format,
        shutdown_timeout: v
            .positive_duration("agent.shutdown_timeout", &raw.agent.shutdown_timeout),
    };
    if tracing_subscriber_filter_is_invalid(&agent.log_level) {
        v.problem(
            "agent.log_level",
            format!(
                "`{}` is not a log filter such as \"info\" or \"turn_agent=debug\"",
                agent.log_level
            ),
        );
    }

    let listen = v.socket_addr("api.listen", &raw.api.listen);
    let advertise = raw
        .api
        .advertise
        .as_deref()
        .map(|text| v.socket_addr("api.advertise", text));
    if let Some(advertise) = advertise {
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            v.problem(
                "api.advertise",
                "must be a concrete ip:port other hosts can reach",
            );
        }
    }

    let turnserver = validate_turnserver(&mut v, &raw.turnserver);
    for uri in &raw.api.turn_uris {
        let scheme_ok = ["turn:", "turns:", "stun:", "stuns:"]
            .iter()
            .any(|scheme| uri.starts_with(scheme));
        if !scheme_ok || uri.contains(char::is_whitespace) {
            v.problem(
                "api.turn_uris",
                format!("`{uri}` is not a turn:, turns:, stun: or stuns: URI"),
            );
        }
    }
    let turn_uris = if raw.api.turn_uris.is_empty() {
        default_turn_uris(&turnserver, advertise)
    } else {
        raw.api.turn_uris.clone()
    };
    let max_connections: usize = v.at_least_one("api.max_connections", raw.api.max_connections);
    let max_header_bytes = match usize::try_from(raw.api.max_header_bytes) {
        Ok(bytes) if (8192..=1 << 20).contains(&bytes) => bytes,
        _ => {
            v.problem("api.max_header_bytes", "must be between 8192 and 1048576");
            8192
        }
    };
    let limits = crate::api::ServerLimits {
        max_connections,
        max_header_bytes,
        header_read_timeout: v
            .positive_duration("api.header_read_timeout", &raw.api.header_read_timeout),
        request_timeout: v.positive_duration("api.request_timeout", &raw.api.request_timeout),
        max_connections_per_address: v.at_least_one(
            "api.max_connections_per_address",
            raw.api.max_connections_per_address,
        ),
    };
    let tls = raw.api.tls.as_ref().and_then(|raw_tls| {
        let files = crate::api::tls::TlsFiles {
            cert: v.path("api.tls.cert", &raw_tls.cert),
            key: v.path("api.tls.key", &raw_tls.key),
        };
        match crate::api::tls::load(&files) {
            Ok(_) => Some(files),
            Err(message) => {
                v.problem("api.tls", message);
                None
            }
        }
    });
    let cors_max_age = v.duration("api.cors_max_age", &raw.api.cors_max_age);
    let cors =
        crate::cors::CorsPolicy::new(&raw.api.cors_origins, cors_max_age).unwrap_or_else(|error| {
            v.problem("api.cors_origins", error.to_string());
            crate::cors::CorsPolicy::disabled()
        });
    let api = ApiConfig {
        listen,
        advertise,
        turn_uris,
        limits,
        tls,
        cors,
    };
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
    let interval = v.duration(
        "health.self_check_interval",
        &raw.health.self_check_interval,
    );
    let health = HealthConfig {
        self_check_interval: (!interval.is_zero()).then_some(interval),
        self_check_failures: v
            .at_least_one("health.self_check_failures", raw.health.self_check_failures),
        self_check_timeout: v
            .positive_duration("health.self_check_timeout", &raw.health.self_check_timeout),
    };

    if !(raw.drain.idle_mbps.is_finite() && raw.drain.idle_mbps >= 0.0) {
        v.problem("drain.idle_mbps", "must be a number of at least 0");
    }
    let drain = DrainConfig {
        idle_mbps: raw.drain.idle_mbps,
        quiet_period: v.duration("drain.quiet_period", &raw.drain.quiet_period),
        timeout: v.positive_duration("drain.timeout", &raw.drain.timeout),
    };

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

/// The realm as coturn and the agent's turnadmin listing parser accept it:
/// coturn pastes it unescaped into SQL (`'`), turnadmin lists users as
/// `user[realm]` (`[`, `]`), and STUN caps it at 127 bytes.
pub fn check_realm(realm: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if realm.is_empty() || realm.len() > 127 {
        return Err("must be 1 to 127 characters".into());
    }
    if let Some(bad) = realm.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "must hold only ASCII letters, digits, `.`, `-` and `_` (found {:?})",
            bad
        ));
    }
    Ok(())
}

/// `turn:HOST:PORT?transport=udp|tcp` for the address clients reach
/// turnserver on: its listening address when concrete, else the advertised
/// API address, else the relay address, else the host name.
fn default_turn_uris(turnserver: &TurnserverConfig, advertise: Option<SocketAddr>) -> Vec<String> {
    let concrete = |ip: Option<IpAddr>| ip.filter(|ip| !ip.is_unspecified());
    let host = concrete(turnserver.listening_ip)
        .or(concrete(advertise.map(|a| a.ip())))
        .or(concrete(turnserver.relay_ip))
        .map(|ip| match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        })
        .unwrap_or_else(default_host_name);
    let port = turnserver.listening_port;
    vec![
        format!("turn:{host}:{port}?transport=udp"),
        format!("turn:{host}:{port}?transport=tcp"),
    ]
}

fn tracing_subscriber_filter_is_invalid(filter: &str) -> bool {
    filter.trim().is_empty() || tracing_subscriber::EnvFilter::try_new(filter).is_err()
}

fn validate_turnserver(v: &mut Validator, raw: &RawTurnserver) -> TurnserverConfig {
    let binary = v.binary("turnserver.binary", &raw.binary);
    let config_file = raw.config_file.as_deref().map(|text| {
        let path = v.path("turnserver.config_file", text);
        if path.is_absolute() && !path.is_file() {
            v.problem("turnserver.config_file", format!("`{text}` does not exist"));
        }
        path
    });
    let listening_ip = v.ip("turnserver.listening_ip", &raw.listening_ip);
    let relay_ip = v.ip("turnserver.relay_ip", &raw.relay_ip);
    let listening_port = v.port("turnserver.listening_port", raw.listening_port, false);
    let min_port = v.port("turnserver.min_port", raw.min_port, false);
    let max_port = v.port("turnserver.max_port", raw.max_port, false);
    if min_port != 0 && max_port != 0 && max_port < min_port {
        v.problem("turnserver.max_port", "must not be less than min_port");
    }
    let realm = match raw.realm.as_deref() {
        Some(realm) => realm.to_string(),
        None => default_host_name(),
    };
    if let Err(message) = check_realm(&realm) {
        v.problem("turnserver.realm", message);
    }
    let userdb = v.path("turnserver.userdb", &raw.userdb);
    let pidfile = v.path("turnserver.pidfile", &raw.pidfile);
    validate_extra_args(v, raw, config_file.is_some());

    let restart_delay_min =
        v.positive_duration("turnserver.restart_delay_min", &raw.restart_delay_min);
    let restart_delay_max =
        v.positive_duration("turnserver.restart_delay_max", &raw.restart_delay_max);
    if restart_delay_max < restart_delay_min {
        v.problem(
            "turnserver.restart_delay_max",
            "must not be less than restart_delay_min",
        );
    }
    let stable_after = v.positive_duration("turnserver.stable_after", &raw.stable_after);
    let stop_timeout = v.positive_duration("turnserver.stop_timeout", &raw.stop_timeout);
    let probe_interval = v.positive_duration("turnserver.probe_interval", &raw.probe_interval);
    let probe_timeout = v.positive_duration("turnserver.probe_timeout", &raw.probe_timeout);
    if probe_timeout > probe_interval {
        v.problem(
            "turnserver.probe_timeout",
            "must not be greater than probe_interval",
        );
    }
    let probe_failures: u32 = v.at_least_one("turnserver.probe_failures", raw.probe_failures);
    let startup_timeout = v.positive_duration("turnserver.startup_timeout", &raw.startup_timeout);

    TurnserverConfig {
        binary,
        config_file,
        listening_ip,
        listening_port,
        relay_ip,
        min_port,
        max_port,
        realm,
        userdb,
        pidfile,
        extra_args: raw.extra_args.clone(),
        restart_delay_min,
        restart_delay_max,
        stable_after,
        stop_timeout,
        probe_interval,
        probe_timeout,
        probe_failures,
        startup_timeout,
    }
}

/// Reads `extra_args` the way turnserver does and refuses what the agent
/// owns, what is unsafe or unknown, and combinations coturn refuses.
fn validate_extra_args(v: &mut Validator, raw: &RawTurnserver, config_file_set: bool) {
    use crate::coturn_options::{check_combinations, check_pass_through_flag, parse_extra_args};
    for (index, flag) in raw.pass_through_flags.iter().enumerate() {
        if let Err(message) = check_pass_through_flag(flag) {
            v.problem(&format!("turnserver.pass_through_flags[{index}]"), message);
        }
    }
    match parse_extra_args(&raw.extra_args, &raw.pass_through_flags) {
        Ok(found) => {
            for error in check_combinations(&found, config_file_set) {
                v.problem("turnserver.extra_args", error.to_string());
            }
        }
        Err(errors) => {
            for error in errors {
                v.problem("turnserver.extra_args", error.to_string());
            }
        }
    }
}

fn validate_credentials(
    v: &mut Validator,
    raw: &RawCredentials,
    turnserver: &TurnserverConfig,
) -> CredentialsConfig {
    let rotate_interval = v.positive_duration("credentials.rotate_interval", &raw.rotate_interval);
    if !rotate_interval.is_zero() && rotate_interval < Duration::from_secs(1) {
        v.problem("credentials.rotate_interval", "must be at least 1s");
    }
    let lifetime = v.positive_duration("credentials.lifetime", &raw.lifetime);
    if lifetime <= rotate_interval && !rotate_interval.is_zero() {
        v.problem(
            "credentials.lifetime",
            "must be greater than rotate_interval",
        );
    }
    let grace = v.duration("credentials.grace", &raw.grace);
    let max_ttl = v.positive_duration("credentials.max_ttl", &raw.max_ttl);
    let state_file = v.path("credentials.state_file", &raw.state_file);
    let turnadmin = v.binary("credentials.turnadmin", &raw.turnadmin);
    let database_args = if raw.database_args.is_empty() {
        vec!["-b".to_string(), turnserver.userdb.display().to_string()]
    } else {
        raw.database_args.clone()
    };
    let sqlite_userdb = crate::credentials::userdb::sqlite_path(&database_args);
    if raw.mode == CredentialMode::RestApi && sqlite_userdb.is_none() {
        v.problem(
            "credentials.database_args",
            "REST API mode needs an SQLite user database (`-b PATH`): the agent writes shared secrets to it directly, because turnadmin would show them on its command line",
        );
    }
    let rotate_min_interval =
        v.duration("credentials.rotate_min_interval", &raw.rotate_min_interval);
    let max_live_secrets: usize =
        v.at_least_one("credentials.max_live_secrets", raw.max_live_secrets);
    if raw.mode == CredentialMode::RestApi && !rotate_interval.is_zero() {
        // Scheduled rotations alone keep max_ttl / rotate_interval retired
        // secrets, plus the signing one, plus one being replaced.
        let needed = max_ttl.as_secs().div_ceil(rotate_interval.as_secs().max(1)) as usize + 2;
        if max_live_secrets < needed {
            v.problem(
                "credentials.max_live_secrets",
                format!("must be at least {needed} (max_ttl / rotate_interval + 2) so scheduled rotations never hit it"),
            );
        }
    }
    CredentialsConfig {
        mode: raw.mode,
        rotate_interval,
        lifetime,
        grace,
        max_ttl,
        state_file,
        turnadmin,
        database_args,
        sqlite_userdb,
        rotate_min_interval,
        max_live_secrets,
    }
}

fn validate_zookeeper(v: &mut Validator, raw: &RawZookeeper) -> ZookeeperConfig {
    let connect = raw.connect.clone().filter(|text| !text.trim().is_empty());
    if let Some(text) = &connect {
        if let Err(error) = crate::zookeeper::parse_connect_string(text) {
            v.problem("zookeeper.connect", error.to_string());
        }
    }
    if let Err(error) = crate::zookeeper::validate_path(&raw.path) {
        v.problem("zookeeper.path", error.to_string());
    }
    let node = raw.node.clone().unwrap_or_else(default_host_name);
    if let Err(error) = crate::zookeeper::validate_node_name(&node) {
        v.problem("zookeeper.node", error.to_string());
    }
    let session_timeout = v.positive_duration("zookeeper.session_timeout", &raw.session_timeout);
    let publish_interval = v.positive_duration("zookeeper.publish_interval", &raw.publish_interval);
    let max_silence = v.positive_duration("zookeeper.max_silence", &raw.max_silence);
    if max_silence < publish_interval {
        v.problem(
            "zookeeper.max_silence",
            "must not be less than publish_interval",
        );
    }
    let auth_file = raw.auth_file.as_deref().map(|text| {
        let path = v.path("zookeeper.auth_file", text);
        if path.is_absolute() && !path.is_file() {
            v.problem("zookeeper.auth_file", format!("`{text}` does not exist"));
        }
        path
    });
    ZookeeperConfig {
        connect,
        path: raw.path.clone(),
        node,
        session_timeout,
        publish_interval,
        max_silence,
        auth_file,
        region: raw.region.clone(),
        isp: raw.isp.clone(),
    }
}

fn validate_traffic(v: &mut Validator, raw: &RawTraffic) -> TrafficConfig {
    if !(raw.capacity_mbps.is_finite() && raw.capacity_mbps > 0.0) {
        v.problem("traffic.capacity_mbps", "must be a positive number");
    }
    if !(raw.hysteresis_percent.is_finite() && (0.0..=100.0).contains(&raw.hysteresis_percent)) {
        v.problem("traffic.hysteresis_percent", "must be between 0 and 100");
    }
    if !(raw.smoothing.is_finite() && (0.0..1.0).contains(&raw.smoothing)) {
        v.problem("traffic.smoothing", "must be at least 0 and less than 1");
    }
    if let Some(interface) = &raw.interface {
        let exists = !interface.is_empty()
            && !interface.contains('/')
            && Path::new("/sys/class/net").join(interface).exists();
        if !exists {
            v.problem(
                "traffic.interface",
                format!("no network interface named `{interface}`"),
            );
        }
    }
    TrafficConfig {
        interface: raw.interface.clone(),
        capacity_mbps: raw.capacity_mbps,
        direction: raw.direction,
        hysteresis_percent: raw.hysteresis_percent,
        smoothing: raw.smoothing,
    }
}

/// Validates an `[access]` section on its own, for the allocator service,
/// which shares the agent's access format.
pub fn validate_access_section(raw: &RawAccess) -> Result<AccessConfig, Vec<ConfigProblem>> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    let access = validate_access(&mut v, raw, None);
    if v.problems.is_empty() {
        Ok(access)
    } else {
        Err(v.problems)
    }
}

/// `api_address`: the default audience of client tokens.
fn validate_access(
    v: &mut Validator,
    raw: &RawAccess,
    api_address: Option<String>,
) -> AccessConfig {
    let mut roles = access::builtin_roles();
    for (index, raw_role) in raw.roles.iter().enumerate() {
        if raw_role.name.trim().is_empty() {
            v.problem(&format!("access.roles[{index}].name"), "must not be empty");
            continue;
        }
        let mut permissions = std::collections::BTreeSet::new();
        for name in &raw_role.permissions {
            match Permission::parse(name) {
                Some(permission) => {
                    permissions.insert(permission);
                }
                None => v.problem(
                    &format!("access.roles[{index}].permissions"),
                    format!(
                        "unknown permission `{name}`, expected credential, ice, metrics, status or rotate"
                    ),
                ),
            }
        }
        let role = Role {
            name: raw_role.name.clone(),
            permissions,
        };
        match roles.iter_mut().find(|existing| existing.name == role.name) {
            Some(existing) => *existing = role,
            None => roles.push(role),
        }
    }
    let role_index = |name: &str| roles.iter().position(|role| role.name == name);
    if role_index(&raw.default_role).is_none() {
        v.problem(
            "access.default_role",
            format!("unknown role `{}`", raw.default_role),
        );
    }
    let mut allow = Vec::new();
    for (index, entry) in raw.allow.iter().enumerate() {
        let role_name = entry.role.as_deref().unwrap_or(&raw.default_role);
        match (AddrPattern::parse(&entry.addr), role_index(role_name)) {
            (Ok(pattern), Some(role)) => allow.push((pattern, role)),
            (Err(message), _) => v.problem(&format!("access.allow[{index}].addr"), message),
            (_, None) => v.problem(
                &format!("access.allow[{index}].role"),
                format!("unknown role `{role_name}`"),
            ),
        }
    }
    let mut tokens = Vec::new();
    let mut token_files = Vec::new();
    for (index, token) in raw.tokens.iter().enumerate() {
        let key = format!("access.tokens[{index}].token_file");
        let path = v.path(&key, &token.token_file);
        match crate::file_checks::read_limited_text(
            &path,
            crate::file_checks::MAX_SECRET_FILE_BYTES,
        ) {
            Ok(text) if text.trim().len() >= 16 => match role_index(&token.role) {
                Some(role) => tokens.push((Secret::new(text.trim()), role)),
                None => v.problem(
                    &format!("access.tokens[{index}].role"),
                    format!("unknown role `{}`", token.role),
                ),
            },
            Ok(_) => v.problem(&key, "the token must be at least 16 characters"),
            Err(error) => v.problem(&key, format!("`{}` {error}", token.token_file)),
        }
        token_files.push(path);
    }
    let client_tokens = raw.client_tokens.as_ref().and_then(|client_tokens| {
        validate_client_tokens(
            v,
            client_tokens,
            role_index(&client_tokens.role),
            api_address,
        )
    });
    let mut trusted_proxies = Vec::new();
    for (index, text) in raw.trusted_proxies.iter().enumerate() {
        match AddrPattern::parse(text) {
            Ok(pattern) => trusted_proxies.push(pattern),
            Err(message) => v.problem(&format!("access.trusted_proxies[{index}]"), message),
        }
    }
    if !(raw.rate_limit_per_second.is_finite() && raw.rate_limit_per_second >= 0.0) {
        v.problem(
            "access.rate_limit_per_second",
            "must be a number of at least 0 (0 turns the limit off)",
        );
    }
    let rate_limit_burst: u32 = v.at_least_one("access.rate_limit_burst", raw.rate_limit_burst);
    let rate_limit_ipv6_prefix = match u8::try_from(raw.rate_limit_ipv6_prefix) {
        Ok(prefix) if (1..=128).contains(&prefix) => prefix,
        _ => {
            v.problem(
                "access.rate_limit_ipv6_prefix",
                "must be a prefix length between 1 and 128",
            );
            64
        }
    };
    AccessConfig {
        policy: AccessPolicy {
            allow,
            roles,
            tokens,
            trusted_proxies,
        },
        rate_limit_per_second: raw.rate_limit_per_second,
        rate_limit_burst,
        rate_limit_ipv6_prefix,
        token_files,
        client_tokens,
    }
}

fn validate_client_tokens(
    v: &mut Validator,
    raw: &RawClientTokens,
    role: Option<usize>,
    api_address: Option<String>,
) -> Option<ClientTokensConfig> {
    let mut public_key_files = Vec::new();
    let mut public_keys = Vec::new();
    if raw.public_key_files.is_empty() {
        v.problem(
            "access.client_tokens.public_key_files",
            "must list at least one Ed25519 public key file (PEM)",
        );
    }
    for (index, text) in raw.public_key_files.iter().enumerate() {
        let key = format!("access.client_tokens.public_key_files[{index}]");
        let path = v.path(&key, text);
        match crate::file_checks::read_limited(&path, crate::file_checks::MAX_PEM_BYTES) {
            Ok(pem) => {
                let check = crate::client_token::ClientTokenVerifier::new(
                    std::slice::from_ref(&pem),
                    String::new(),
                    Duration::ZERO,
                );
                match check {
                    Ok(_) => public_keys.push(pem),
                    Err(error) => v.problem(&key, format!("`{text}`: {error}")),
                }
            }
            Err(error) => v.problem(&key, format!("cannot read `{text}`: {error}")),
        }
        public_key_files.push(path);
    }
    let audience = match (&raw.audience, api_address) {
        (Some(audience), _) if !audience.trim().is_empty() => Some(audience.trim().to_string()),
        (Some(_), _) => {
            v.problem("access.client_tokens.audience", "must not be empty");
            None
        }
        (None, Some(address)) => Some(address),
        (None, None) => {
            v.problem(
                "access.client_tokens.audience",
                "must be set when the API has no advertised address (api.advertise or a concrete api.listen)",
            );
            None
        }
    };
    let max_lifetime = v.positive_duration("access.client_tokens.max_lifetime", &raw.max_lifetime);
    if role.is_none() {
        v.problem(
            "access.client_tokens.role",
            format!("unknown role `{}`", raw.role),
        );
    }
    Some(ClientTokensConfig {
        public_key_files,
        public_keys,
        audience: audience?,
        role: role?,
        max_lifetime,
    })
}

/// The host's name, used as the default realm and znode name.
pub fn default_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The effective configuration as TOML, with anything secret replaced by `***`.
pub fn render_effective(raw: &RawConfig) -> String {
    let mut value =
        toml::Value::try_from(raw).unwrap_or_else(|_| toml::Value::Table(Default::default()));
    redact(&mut value);
    toml::to_string_pretty(&value).unwrap_or_default()
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                let secret_key = ["secret", "password", "token"]
                    .iter()
                    .any(|word| key.contains(word))
                    && !key.ends_with("_file")
                    && key != "tokens";
                if secret_key {
                    *inner = toml::Value::String("***".into());
                } else {
                    redact(inner);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    /// A minimal valid file for tests: binaries that exist on every machine.
    const BASE: &str = r#"
[turnserver]
binary = "/bin/sh"
realm = "example.org"
userdb = "/tmp/turndb"
pidfile = "/tmp/turnserver.pid"
[credentials]
turnadmin = "/bin/sh"
state_file = "/tmp/credential.json"
"#;

    fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
        let result = parse_raw(text, env(vars)).and_then(|raw| validate(&raw));
        match result {
            Ok(_) => Vec::new(),
            Err(error) => error.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn base_config_is_valid_with_defaults() {
        let raw = parse_raw(BASE, env(&[])).unwrap();
        let config = validate(&raw).unwrap();
        assert_eq!(config.turnserver.listening_port, 3478);
        assert_eq!(config.turnserver.restart_delay_max, Duration::from_secs(30));
        assert_eq!(config.credentials.mode, CredentialMode::LongTerm);
        assert_eq!(
            config.credentials.database_args,
            vec!["-b".to_string(), "/tmp/turndb".to_string()]
        );
        assert_eq!(config.zookeeper.connect, None);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{BASE}\n[api]\nlisten = \"127.0.0.1:1\"\nlsten = 1\n");
        let found = problems(&text, &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("api.lsten: unknown field"),
            "{found:?}"
        );
    }

    #[test]
    fn unknown_section_is_named() {
        let found = problems(&format!("{BASE}\n[zookeper]\nconnect = \"x\"\n"), &[]);
        assert!(
            found[0].starts_with("zookeper: unknown section"),
            "{found:?}"
        );
    }

    #[test]
    fn rest_api_mode_needs_sqlite_and_room_for_scheduled_secrets() {
        let rest = format!("{BASE}mode = \"rest-api\"\n");
        assert!(problems(&rest, &[]).is_empty());
        let found = problems(
            &format!("{rest}database_args = [\"-e\", \"host=db\"]\n"),
            &[],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("credentials.database_args: REST API mode needs an SQLite"));
        let found = problems(
            &format!("{BASE}database_args = [\"-e\", \"host=db\"]\n"),
            &[],
        );
        assert!(
            found.is_empty(),
            "long-term mode may use any database: {found:?}"
        );
        let found = problems(
            &format!("{rest}max_ttl = \"10h\"\nrotate_interval = \"1h\"\nmax_live_secrets = 11\n"),
            &[],
        );
        assert_eq!(
            found,
            vec!["credentials.max_live_secrets: must be at least 12 (max_ttl / rotate_interval + 2) so scheduled rotations never hit it"]
        );
        let found = problems(&format!("{BASE}rotate_min_interval = \"soon\"\n"), &[]);
        assert!(
            found[0].starts_with("credentials.rotate_min_interval:"),
            "{found:?}"
        );
    }

    #[test]
    fn bad_duration_is_named() {
        let found = problems(BASE, &[("TURN_AGENT_TURNSERVER_STOP_TIMEOUT", "soon")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("turnserver.stop_timeout: `soon` is not a duration"));
    }

    #[test]
    fn max_below_min_is_rejected() {
        let found = problems(
            BASE,
            &[
                ("TURN_AGENT_TURNSERVER_RESTART_DELAY_MIN", "10s"),
                ("TURN_AGENT_TURNSERVER_RESTART_DELAY_MAX", "1s"),
            ],
        );
        assert_eq!(
            found,
            vec!["turnserver.restart_delay_max: must not be less than restart_delay_min"]
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let found = problems(
            BASE,
            &[
                ("TURN_AGENT_TURNSERVER_MIN_PORT", "60000"),
                ("TURN_AGENT_TURNSERVER_MAX_PORT", "50000"),
                ("TURN_AGENT_API_LISTEN", "nowhere"),
                ("TURN_AGENT_CREDENTIALS_LIFETIME", "10m"),
            ],
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("api.listen:")));
        assert!(found.iter().any(|p| p.starts_with("turnserver.max_port:")));
        assert!(found.iter().any(|p| p.starts_with("credentials.lifetime:")));
    }

    #[test]
    fn missing_binary_is_named() {
        let found = problems(
            BASE,
            &[("TURN_AGENT_TURNSERVER_BINARY", "/nonexistent/turnserver")],
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("turnserver.binary: `/nonexistent/turnserver` not found"));
    }

    #[test]
    fn env_overrides_are_typed() {
        let raw = parse_raw(
            BASE,
            env(&[
                ("TURN_AGENT_API_LISTEN", "127.0.0.1:9000"),
                ("TURN_AGENT_TURNSERVER_LISTENING_PORT", "3479"),
                (
                    "TURN_AGENT_TURNSERVER_EXTRA_ARGS",
                    r#"["--no-tls", "--no-dtls"]"#,
                ),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        let config = validate(&raw).unwrap();
        assert_eq!(config.api.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.turnserver.listening_port, 3479);
        assert_eq!(config.turnserver.extra_args, vec!["--no-tls", "--no-dtls"]);
    }

    #[test]
    fn env_override_with_bad_value_is_named() {
        let found = problems(BASE, &[("TURN_AGENT_TURNSERVER_LISTENING_PORT", "http")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("turnserver.listening_port: invalid type"),
            "{found:?}"
        );
        let found = problems(BASE, &[("TURN_AGENT_NOPE_KEY", "1")]);
        assert!(
            found[0].starts_with("TURN_AGENT_NOPE_KEY: unknown section"),
            "{found:?}"
        );
    }

    #[test]
    fn owned_flags_are_rejected_in_extra_args() {
        let found = problems(
            BASE,
            &[(
                "TURN_AGENT_TURNSERVER_EXTRA_ARGS",
                r#"["-o", "--listening-port=1"]"#,
            )],
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found
            .iter()
            .all(|p| p.starts_with("turnserver.extra_args: ")));
    }

    #[test]
    fn zookeeper_needs_advertise_and_interface() {
        let found = problems(BASE, &[("TURN_AGENT_ZOOKEEPER_CONNECT", "127.0.0.1:2181")]);
        assert!(
            found.iter().any(|p| p.starts_with("api.advertise:")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("traffic.interface:")),
            "{found:?}"
        );
    }

    #[test]
    fn turn_uris_default_from_the_listening_address() {
        let raw = parse_raw(
            BASE,
            env(&[("TURN_AGENT_TURNSERVER_LISTENING_IP", "192.0.2.7")]),
        )
        .unwrap();
        let config = validate(&raw).unwrap();
        assert_eq!(
            config.api.turn_uris,
            vec![
                "turn:192.0.2.7:3478?transport=udp",
                "turn:192.0.2.7:3478?transport=tcp"
            ]
        );
        let found = problems(BASE, &[("TURN_AGENT_API_TURN_URIS", r#"["http://x"]"#)]);
        assert!(found[0].starts_with("api.turn_uris:"), "{found:?}");
    }

    #[test]
    fn zookeeper_settings_are_checked() {
        let ok = [
            ("TURN_AGENT_ZOOKEEPER_CONNECT", "127.0.0.1:2181/turn"),
            ("TURN_AGENT_API_ADVERTISE", "127.0.0.1:8086"),
            ("TURN_AGENT_TRAFFIC_INTERFACE", "lo"),
        ];
        let config = validate(&parse_raw(BASE, env(&ok)).unwrap()).unwrap();
        assert_eq!(
            config.zookeeper.node_path(),
            format!("/turn/turn/servers/{}", config.zookeeper.node)
        );
        for (key, value, named) in [
            (
                "TURN_AGENT_ZOOKEEPER_CONNECT",
                "127.0.0.1",
                "zookeeper.connect:",
            ),
            (
                "TURN_AGENT_ZOOKEEPER_CONNECT",
                "127.0.0.1:2181/a/",
                "zookeeper.connect:",
            ),
            ("TURN_AGENT_ZOOKEEPER_NODE", "a/b", "zookeeper.node:"),
            ("TURN_AGENT_ZOOKEEPER_PATH", "servers", "zookeeper.path:"),
            (
                "TURN_AGENT_TRAFFIC_INTERFACE",
                "nosuchif0",
                "traffic.interface:",
            ),
        ] {
            let mut vars = ok.to_vec();
            vars.push((key, value));
            let found = problems(BASE, &vars);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].starts_with(named), "{found:?}");
        }
    }

    #[test]
    fn access_entries_are_checked_and_named() {
        let text = format!(
            "{BASE}\n[access]\ndefault_role = \"user\"\nallow = [{{ addr = \"10.0.0.0/33\" }}, {{ addr = \"10.1.0.0/16\", role = \"ops\" }}, {{ addr = \"192.168.2.1-255\" }}]\n\
             [[access.roles]]\nname = \"watcher\"\npermissions = [\"metrics\", \"dance\"]\n"
        );
        let found = problems(&text, &[]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("access.roles[0].permissions: unknown permission `dance`"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("access.allow[0].addr: `10.0.0.0/33`"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("access.allow[1].role: unknown role `ops`"),
            "{found:?}"
        );
    }

    #[test]
    fn default_access_is_loopback_admin_only() {
        let config = validate(&parse_raw(BASE, env(&[])).unwrap()).unwrap();
        let policy = &config.access.policy;
        use crate::access::Decision;
        for permission in Permission::ALL {
            assert_eq!(
                policy.decide("127.0.0.1".parse().unwrap(), None, permission),
                Decision::Allowed
            );
            assert_eq!(
                policy.decide("::1".parse().unwrap(), None, permission),
                Decision::Allowed
            );
            assert_eq!(
                policy.decide("192.0.2.1".parse().unwrap(), None, permission),
                Decision::Unknown
            );
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rendering_redacts_secrets() {
        let mut value: toml::Value =
            toml::from_str("[s]\nshared_secret = \"hunter2\"\ntoken_file = \"/x\"\n").unwrap();
        redact(&mut value);
        let text = toml::to_string(&value).unwrap();
        assert!(!text.contains("hunter2"));
        assert!(text.contains("/x"));
    }

    #[test]
    fn changed_keys_lists_what_differs() {
        let old = parse_raw(BASE, env(&[])).unwrap();
        let new = parse_raw(
            BASE,
            env(&[
                ("TURN_AGENT_API_LISTEN", "127.0.0.1:1"),
                ("TURN_AGENT_TURNSERVER_RELAY_IP", "127.0.0.1"),
            ]),
        )
        .unwrap();
        assert_eq!(changed_keys(&old, &old), Vec::<String>::new());
        assert_eq!(
            changed_keys(&old, &new),
            vec!["api.listen", "turnserver.relay_ip"]
        );
        assert_eq!(
            changed_keys(&new, &old),
            vec!["api.listen", "turnserver.relay_ip"]
        );
    }

    #[test]
    fn realms_coturn_or_the_listing_parser_would_break_are_refused() {
        assert!(check_realm("turn.example.org").is_ok());
        assert!(check_realm("a_b-c.1").is_ok());
        for realm in ["", "bar[1]", "it's", "a b", "x\0y", "é", &"x".repeat(128)] {
            assert!(check_realm(realm).is_err(), "{realm:?}");
        }
    }

    #[test]
    fn control_characters_are_refused_by_key_and_variable() {
        let found = problems(BASE, &[("TURN_AGENT_ZOOKEEPER_REGION", "eu\nwest")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("TURN_AGENT_ZOOKEEPER_REGION: value holds a control character")
        );
        let found = problems(&format!("{BASE}[zookeeper]\nisp = [\"a\\u0000b\"]\n"), &[]);
        assert_eq!(found, vec!["zookeeper.isp[0]: must not hold control characters (NUL, line breaks, tabs, escapes)"]);
    }

    #[test]
    fn syntax_error_is_one_line() {
        let error = parse_raw("[api\nlisten=", env(&[])).unwrap_err();
        assert_eq!(error.problems.len(), 1);
        assert!(!error.to_string().contains('\n'));
    }
    #[test]
    fn cors_origins_and_client_tokens_are_validated() {
        let found = problems(
            &format!("{BASE}[api]\ncors_origins = [\"app.example\"]\ncors_max_age = \"soon\"\n"),
            &[],
        );
        assert!(
            found.iter().any(|p| p.starts_with("api.cors_origins:")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("api.cors_max_age:")),
            "{found:?}"
        );

        let dir = std::env::temp_dir().join(format!("ta-client-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let public = dir.join("public.pem");
        let (_, public_pem) = crate::client_token::test_keys::key_pair();
        std::fs::write(&public, &public_pem).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a key").unwrap();
        let section = |extra: &str| {
            format!(
                "{BASE}[access.client_tokens]\npublic_key_files = [\"{}\"]\n{extra}",
                public.display()
            )
        };
        // api.listen is 0.0.0.0 and nothing is advertised: no default audience.
        let found = problems(&section(""), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("access.client_tokens.audience:"),
            "{found:?}"
        );
        // A concrete listen address is the default audience.
        let raw = parse_raw(
            &section(""),
            env(&[("TURN_AGENT_API_LISTEN", "192.0.2.7:8086")]),
        )
        .unwrap();
        let tokens = validate(&raw).unwrap().access.client_tokens.unwrap();
        assert_eq!(tokens.audience, "192.0.2.7:8086");
        assert_eq!(tokens.max_lifetime, Duration::from_secs(600));
        assert_eq!(tokens.public_keys, vec![public_pem]);
        let found = problems(
            &format!(
                "{BASE}[access.client_tokens]\npublic_key_files = [\"{}\", \"relative.pem\"]\naudience = \"h:1\"\nrole = \"nobody\"\nmax_lifetime = \"0s\"\n",
                garbage.display()
            ),
            &[],
        );
        for key in [
            "access.client_tokens.public_key_files[0]:",
            "access.client_tokens.public_key_files[1]:",
            "access.client_tokens.role:",
            "access.client_tokens.max_lifetime:",
        ] {
            assert!(found.iter().any(|p| p.starts_with(key)), "{key} {found:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
