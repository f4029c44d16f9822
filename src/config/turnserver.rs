//! `[turnserver]`: the supervised child and the flags the agent owns.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::default_host_name;
use super::validate::Validator;

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
    /// coturn's CLI as the agent's control channel.
    pub control: super::control::ControlConfig,
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
    pub control: String,
    pub control_poll_interval: String,
    pub total_quota: i64,
    pub user_quota: i64,
    pub max_bps: i64,
    pub bps_capacity: i64,
}

/// The realm as coturn and the agent's turnadmin listing parser accept it:
/// coturn pastes it unescaped into SQL (`'`), turnadmin lists users as
/// `user[realm]` (`[`, `]`), and STUN caps it at 127 bytes.
pub fn check_realm(realm: &str) -> Result<(), InvalidRealm> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if realm.is_empty() || realm.len() > 127 {
        return Err(InvalidRealm::Length);
    }
    if let Some(bad) = realm.chars().find(|c| !allowed(*c)) {
        return Err(InvalidRealm::Character(bad));
    }
    Ok(())
}

/// Why coturn or the listing parser could not take a realm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRealm {
    #[error("must be 1 to 127 characters")]
    Length,
    #[error("must hold only ASCII letters, digits, `.`, `-` and `_` (found {0:?})")]
    Character(char),
}

/// The pidfile's directory as it is now; `None` when it does not exist
/// yet (whoever creates it decides) or cannot be read.
fn pidfile_directory(pidfile: &std::path::Path) -> Option<super::control::PidfileDirectory> {
    use std::os::unix::fs::MetadataExt;
    let parent = pidfile
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())?;
    let link = std::fs::symlink_metadata(parent).ok()?;
    let directory = std::fs::metadata(parent).ok()?;
    Some(super::control::PidfileDirectory {
        symlink_owner: link.file_type().is_symlink().then_some(link.uid()),
        owner: directory.uid(),
        mode: directory.mode(),
    })
}

pub(super) fn validate_turnserver(v: &mut Validator, raw: &RawTurnserver) -> TurnserverConfig {
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
    if let Err(error) = check_realm(&realm) {
        v.problem("turnserver.realm", error.to_string());
    }
    let userdb = v.path("turnserver.userdb", &raw.userdb);
    let pidfile = v.path("turnserver.pidfile", &raw.pidfile);
    validate_extra_args(v, raw);

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
    // Read for its `no-cli` line only; the agent's file writer reads it
    // again at every start and reports what it cannot read.
    let config_file_text = config_file
        .as_deref()
        .filter(|file| file.is_file())
        .and_then(|file| {
            crate::file_checks::read_limited_text(file, crate::file_checks::MAX_CONFIG_BYTES).ok()
        });
    let control = super::control::validate(&super::control::RawControl {
        control: &raw.control,
        poll_interval: &raw.control_poll_interval,
        extra_args: &raw.extra_args,
        pass_through_flags: &raw.pass_through_flags,
        config_file_text: config_file_text.as_deref(),
        total_quota: raw.total_quota,
        user_quota: raw.user_quota,
        max_bps: raw.max_bps,
        bps_capacity: raw.bps_capacity,
    })
    .unwrap_or_else(|problems| {
        v.problems.extend(problems);
        Default::default()
    });
    if control.enabled {
        if let Some(problem) = pidfile_directory(&pidfile).and_then(|directory| {
            super::control::pidfile_directory_problem(&directory, nix::unistd::geteuid().as_raw())
        }) {
            v.problem("turnserver.pidfile", problem);
        }
    }
    if let Some(file) = &config_file {
        if control.enabled && super::control::is_agent_file(file, &pidfile) {
            v.problem(
                "turnserver.config_file",
                "names the file the agent writes for turnserver beside the pidfile; name the operator's own turnserver configuration",
            );
        }
    }

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
        control,
    }
}

/// Reads `extra_args` the way turnserver does and refuses what the agent
/// owns, what is unsafe or unknown, and combinations coturn refuses.
fn validate_extra_args(v: &mut Validator, raw: &RawTurnserver) {
    use crate::coturn_options::{check_combinations, check_pass_through_flag, parse_extra_args};
    for (index, flag) in raw.pass_through_flags.iter().enumerate() {
        if let Err(error) = check_pass_through_flag(flag) {
            v.problem(
                &format!("turnserver.pass_through_flags[{index}]"),
                error.to_string(),
            );
        }
    }
    match parse_extra_args(&raw.extra_args, &raw.pass_through_flags) {
        Ok(found) => {
            for error in check_combinations(&found) {
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
