//! The `[turnserver]` keys of the control channel, validated (pure).
//!
//! The turnserver section calls [`validate`] with the raw keys and reports
//! what it returns under the keys named here.

use std::time::Duration;

use super::{parse_duration, ConfigProblem};
use crate::coturn_options::{coturn_bool, parse_extra_args};

/// The shortest poll interval: each poll costs turnserver a `ps` and a `pc`.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The control channel as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The agent sets up coturn's CLI and polls it.
    pub enabled: bool,
    /// Off because `extra_args` or `config_file` holds `no-cli`, though
    /// `turnserver.control` is "on" (warned about at start).
    pub off_by_no_cli: Option<NoCliSource>,
    pub poll_interval: Duration,
    /// Passed at start and changed live through `cc` on SIGHUP.
    pub quotas: Quotas,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            off_by_no_cli: None,
            poll_interval: Duration::from_secs(2),
            quotas: Quotas::default(),
        }
    }
}

/// Where the `no-cli` that turns the control channel off was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCliSource {
    /// `--no-cli` in `turnserver.extra_args`.
    ExtraArgs,
    /// A `no-cli` line in the operator's `turnserver.config_file`.
    ConfigFile,
}

impl NoCliSource {
    /// The key that holds it.
    pub fn key(self) -> &'static str {
        match self {
            NoCliSource::ExtraArgs => "turnserver.extra_args",
            NoCliSource::ConfigFile => "turnserver.config_file",
        }
    }

    /// The warning logged at start: where `no-cli` is and what to set
    /// instead.
    pub fn warning(self) -> String {
        format!(
            "\"no-cli\" in {} turns the control channel off; set turnserver.control = \"off\" instead",
            self.key()
        )
    }
}

/// coturn's live-changeable limits; 0 is coturn's own default (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// `turnserver.total_quota`: allocations on the server at once.
    pub total_quota: u64,
    /// `turnserver.user_quota`: allocations of one user at once.
    pub user_quota: u64,
    /// `turnserver.max_bps`: bytes per second of one session.
    pub max_bps: u64,
    /// `turnserver.bps_capacity`: bytes per second of all sessions.
    pub bps_capacity: u64,
}

/// coturn reads the quotas with `atoi` into an `int` (a larger value wraps)
/// and the rates with `atol` into a `long`.
pub const MAX_QUOTA: u64 = i32::MAX as u64;
pub const MAX_BPS: u64 = i64::MAX as u64;

impl Quotas {
    /// `(key, flag, value)` for each setting, in the order coturn's `pc`
    /// prints them.
    pub fn settings(&self) -> [(&'static str, &'static str, u64); 4] {
        [
            ("turnserver.total_quota", "total-quota", self.total_quota),
            ("turnserver.user_quota", "user-quota", self.user_quota),
            ("turnserver.bps_capacity", "bps-capacity", self.bps_capacity),
            ("turnserver.max_bps", "max-bps", self.max_bps),
        ]
    }
}

/// The file the agent writes for turnserver's `-c` while the channel is
/// on: `<pidfile stem>-agent.conf` beside the pidfile (pure).
pub fn agent_file_path(pidfile: &std::path::Path) -> std::path::PathBuf {
    let stem = pidfile
        .file_stem()
        .map_or_else(|| "turnserver".into(), |stem| stem.to_string_lossy());
    pidfile.with_file_name(format!("{stem}-agent.conf"))
}

/// Whether `config_file` names the agent's own file (lexically, or the
/// same file once both resolve): the agent would copy its own output into
/// itself at every start.
pub fn is_agent_file(config_file: &std::path::Path, pidfile: &std::path::Path) -> bool {
    let agent_file = agent_file_path(pidfile);
    if config_file == agent_file {
        return true;
    }
    let resolved = |path: &std::path::Path| {
        let parent = path.parent()?.canonicalize().ok()?;
        Some(parent.join(path.file_name()?))
    };
    resolved(config_file).is_some_and(|config_file| Some(config_file) == resolved(&agent_file))
}

/// What the agent found about the directory of `turnserver.pidfile`, where
/// its 0600 file with the CLI password goes (gathered by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidfileDirectory {
    /// The owner of the path itself, when the path is a symlink.
    pub symlink_owner: Option<u32>,
    /// Owner and mode of the directory (the symlink followed).
    pub owner: u32,
    pub mode: u32,
}

/// Why the pidfile's directory cannot hold the agent's file with the CLI
/// password, or `None` (pure). Whoever can rename files in it, change it or
/// point it elsewhere can swap the file turnserver reads for their own or
/// take the agent's away: a directory writable by group or others without
/// the sticky bit, one owned by a user other than root and the agent's, or
/// a symlink owned by such a user.
pub fn pidfile_directory_problem(directory: &PidfileDirectory, agent_uid: u32) -> Option<String> {
    let foreign = |uid: u32| uid != 0 && uid != agent_uid;
    if let Some(owner) = directory.symlink_owner.filter(|owner| foreign(*owner)) {
        return Some(format!(
            "its directory is a symlink owned by uid {owner}, who can point it elsewhere; the agent's 0600 file with turnserver's CLI password goes there"
        ));
    }
    if foreign(directory.owner) {
        return Some(format!(
            "its directory is owned by uid {}, neither root nor the agent's user; the agent's 0600 file with turnserver's CLI password goes there",
            directory.owner
        ));
    }
    if directory.mode & 0o022 != 0 && directory.mode & 0o1000 == 0 {
        return Some(format!(
            "its directory (mode {:o}) is writable by others without the sticky bit, so they could swap the agent's 0600 file with turnserver's CLI password; use a directory only the agent can write, such as /run/turn-agent",
            directory.mode & 0o7777
        ));
    }
    None
}

/// The raw keys [`validate`] reads.
pub struct RawControl<'a> {
    /// `turnserver.control`: `"on"` or `"off"`.
    pub control: &'a str,
    pub poll_interval: &'a str,
    pub extra_args: &'a [String],
    pub pass_through_flags: &'a [String],
    /// The text of the operator's `turnserver.config_file`, when it has
    /// one that could be read.
    pub config_file_text: Option<&'a str>,
    pub total_quota: i64,
    pub user_quota: i64,
    pub max_bps: i64,
    pub bps_capacity: i64,
}

/// The control settings, or every problem with them.
pub fn validate(raw: &RawControl<'_>) -> Result<ControlConfig, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| {
        problems.push(ConfigProblem {
            key: key.to_owned(),
            message,
        })
    };
    let switched_on = match raw.control {
        "on" => true,
        "off" => false,
        other => {
            problem(
                "turnserver.control",
                format!("must be \"on\" or \"off\", not `{}`", other.escape_debug()),
            );
            true
        }
    };
    let poll_interval = match parse_duration(raw.poll_interval) {
        Ok(interval) if interval >= MIN_POLL_INTERVAL => interval,
        Ok(_) => {
            problem(
                "turnserver.control_poll_interval",
                format!("must be at least {MIN_POLL_INTERVAL:?}"),
            );
            MIN_POLL_INTERVAL
        }
        Err(message) => {
            problem("turnserver.control_poll_interval", message.to_string());
            MIN_POLL_INTERVAL
        }
    };
    let mut bounded = |key: &str, value: i64, max: u64| match u64::try_from(value) {
        Ok(value) if value <= max => value,
        _ => {
            problem(key, format!("must be 0 (no limit) to {max}"));
            0
        }
    };
    let quotas = Quotas {
        total_quota: bounded("turnserver.total_quota", raw.total_quota, MAX_QUOTA),
        user_quota: bounded("turnserver.user_quota", raw.user_quota, MAX_QUOTA),
        max_bps: bounded("turnserver.max_bps", raw.max_bps, MAX_BPS),
        bps_capacity: bounded("turnserver.bps_capacity", raw.bps_capacity, MAX_BPS),
    };
    if quotas.bps_capacity != 0 && quotas.max_bps == 0 {
        problem(
            "turnserver.bps_capacity",
            "needs turnserver.max_bps too: coturn refuses to start with a bps capacity but no max-bps".into(),
        );
    }
    // A command-line flag overrides the file's line, as in turnserver.
    let no_cli_source = match no_cli(raw.extra_args, raw.pass_through_flags) {
        Some(true) => Some(NoCliSource::ExtraArgs),
        Some(false) => None,
        None => raw
            .config_file_text
            .is_some_and(config_file_has_no_cli)
            .then_some(NoCliSource::ConfigFile),
    };
    if problems.is_empty() {
        Ok(ControlConfig {
            enabled: switched_on && no_cli_source.is_none(),
            off_by_no_cli: no_cli_source.filter(|_| switched_on),
            poll_interval,
            quotas,
        })
    } else {
        Err(problems)
    }
}

/// What the last `--no-cli` (in any spelling getopt reads) in
/// `extra_args` says, if there is one. Unparsable `extra_args` are
/// config's to report.
fn no_cli(extra_args: &[String], pass_through_flags: &[String]) -> Option<bool> {
    let found = parse_extra_args(extra_args, pass_through_flags).ok()?;
    found
        .iter()
        .rev()
        .find(|occurrence| {
            occurrence
                .option
                .is_some_and(|option| option.long.contains(&"no-cli"))
        })
        .map(|occurrence| coturn_bool(occurrence.value.as_deref()).unwrap_or(false))
}

/// Whether a turnserver config file turns the CLI off: its last `no-cli`
/// line (`no-cli`, `no-cli=VALUE` or `no-cli VALUE`; a `#` starts a
/// comment; coturn matches the whole name, no abbreviation) with a value
/// coturn reads as true (pure).
pub fn config_file_has_no_cli(text: &str) -> bool {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let (name, value) = match line.find(|c: char| c == '=' || c.is_whitespace()) {
                Some(at) => (&line[..at], Some(line[at + 1..].trim())),
                None => (line, None),
            };
            (name.trim_start_matches('-') == "no-cli").then_some(value)
        })
        .next_back()
        .is_some_and(|value| coturn_bool(value).unwrap_or(false))
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
