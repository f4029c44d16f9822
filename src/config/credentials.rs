//! `[credentials]`: rotation, lifetimes and the user database.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Validator;
use super::TurnserverConfig;

/// Defined in the core, so the credential status there can name it.
pub use crate::status::CredentialMode;

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

pub(super) fn validate_credentials(
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
    let sqlite_userdb = sqlite_path(&database_args);
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

/// The SQLite database turnadmin's `database_args` name (`-b PATH`,
/// `--db PATH`, `--userdb PATH`, the `=` forms or `-bPATH`), or `None` for
/// any other database or extra flags.
pub fn sqlite_path(database_args: &[String]) -> Option<PathBuf> {
    let path = match database_args {
        [flag, path] if matches!(flag.as_str(), "-b" | "--db" | "--userdb") => path.as_str(),
        [single] => single
            .strip_prefix("--db=")
            .or_else(|| single.strip_prefix("--userdb="))
            .or_else(|| single.strip_prefix("-b"))?,
        _ => return None,
    };
    (!path.is_empty()).then(|| PathBuf::from(path))
}
