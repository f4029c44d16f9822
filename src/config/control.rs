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
    /// Off because `extra_args` holds `--no-cli` (warned about at start).
    pub off_by_no_cli: bool,
    pub poll_interval: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            off_by_no_cli: false,
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// The raw keys [`validate`] reads.
pub struct RawControl<'a> {
    /// `turnserver.control`: `"on"` or `"off"`.
    pub control: &'a str,
    pub poll_interval: &'a str,
    pub extra_args: &'a [String],
    pub pass_through_flags: &'a [String],
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
    let off_by_no_cli = no_cli(raw.extra_args, raw.pass_through_flags);
    if problems.is_empty() {
        Ok(ControlConfig {
            enabled: switched_on && !off_by_no_cli,
            off_by_no_cli: switched_on && off_by_no_cli,
            poll_interval,
        })
    } else {
        Err(problems)
    }
}

/// `--no-cli` (in any spelling getopt reads) is the last word on the CLI
/// in `extra_args`. Unparsable `extra_args` are config's to report.
fn no_cli(extra_args: &[String], pass_through_flags: &[String]) -> bool {
    let Ok(found) = parse_extra_args(extra_args, pass_through_flags) else {
        return false;
    };
    found
        .iter()
        .rev()
        .find(|occurrence| {
            occurrence
                .option
                .is_some_and(|option| option.long.contains(&"no-cli"))
        })
        .is_some_and(|occurrence| coturn_bool(occurrence.value.as_deref()).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn check(control: &str, poll: &str, extra: &[&str]) -> Result<ControlConfig, Vec<String>> {
        validate(&RawControl {
            control,
            poll_interval: poll,
            extra_args: &args(extra),
            pass_through_flags: &[],
        })
        .map_err(|problems| problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn on_by_default_and_off_by_the_setting() {
        let on = check("on", "2s", &[]).unwrap();
        assert!(on.enabled && !on.off_by_no_cli);
        assert_eq!(on.poll_interval, Duration::from_secs(2));
        let off = check("off", "2s", &[]).unwrap();
        assert!(!off.enabled && !off.off_by_no_cli);
    }

    #[test]
    fn no_cli_in_extra_args_turns_it_off_and_is_reported() {
        for spelling in [&["--no-cli"][..], &["--no-c"], &["--no-cli=yes"]] {
            let config = check("on", "2s", spelling).unwrap();
            assert!(!config.enabled && config.off_by_no_cli, "{spelling:?}");
        }
        // Off both ways: nothing to warn about.
        let config = check("off", "2s", &["--no-cli"]).unwrap();
        assert!(!config.enabled && !config.off_by_no_cli);
        // The last occurrence wins, as in turnserver.
        assert!(
            check("on", "2s", &["--no-cli", "--no-cli=0"])
                .unwrap()
                .enabled
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            check("maybe", "2s", &[]).unwrap_err(),
            ["turnserver.control: must be \"on\" or \"off\", not `maybe`"]
        );
        assert!(check("on", "10ms", &[]).unwrap_err()[0]
            .starts_with("turnserver.control_poll_interval: must be at least"));
        assert!(check("on", "soon", &[]).unwrap_err()[0]
            .starts_with("turnserver.control_poll_interval: "));
    }
}
