//! The turnserver command line the agent owns.

use crate::config::{CredentialMode, TurnserverConfig};
use crate::coturn_options::{self, Class, CoturnOption};

/// Arguments for one turnserver run: the flags the agent owns first, then
/// `extra_args`. Always in the foreground: `-o` is never passed (and is
/// rejected in `extra_args` by config validation).
///
/// With the control channel on, turnserver reads the agent's own file with
/// `-c` (the operator's `config_file` copied, plus the CLI lines; see
/// `control::turnserver_file`), so the CLI password is never on the
/// command line. With it off, the operator's file is read with `-c` (or
/// none with `-n`) and the CLI is off (`--no-cli`). turnserver lets
/// command-line flags override file settings, so the agent's flags still
/// win.
pub fn turnserver_args(config: &TurnserverConfig, mode: CredentialMode) -> Vec<String> {
    let mut args = Vec::new();
    let file = if config.control.enabled {
        Some(crate::control::turnserver_file::path_for(&config.pidfile))
    } else {
        config.config_file.clone()
    };
    match file {
        Some(path) => {
            args.push(short("c"));
            args.push(path.display().to_string());
        }
        None => args.push(short("n")),
    }
    if let Some(ip) = config.listening_ip {
        args.push(owned("listening-ip").with_value(ip));
    }
    args.push(owned("listening-port").with_value(config.listening_port));
    if let Some(ip) = config.relay_ip {
        args.push(owned("relay-ip").with_value(ip));
    }
    args.push(owned("min-port").with_value(config.min_port));
    args.push(owned("max-port").with_value(config.max_port));
    args.push(owned("realm").with_value(&config.realm));
    args.push(owned("userdb").with_value(config.userdb.display()));
    args.push(owned("pidfile").with_value(config.pidfile.display()));
    args.push(
        match mode {
            CredentialMode::LongTerm => owned("lt-cred-mech"),
            CredentialMode::RestApi => owned("use-auth-secret"),
        }
        .flag(),
    );
    // Logs on stdout, one plain line each, so the agent can route them.
    args.push(owned("log-file").with_value("stdout"));
    args.push(owned("simple-log").flag());
    // Quotas (0 is coturn's own default); SIGHUP changes them live with `cc`.
    for (_, flag, value) in config.control.quotas.settings() {
        if value != 0 {
            args.push(owned(flag).with_value(value));
        }
    }
    if !config.control.enabled {
        // Not owned: `--no-cli` in extra_args is how operators turned the
        // CLI off before the control channel existed, and still works.
        args.push(coturn_options::by_long_name("no-cli").flag());
    }
    args.extend(config.extra_args.iter().cloned());
    args
}

/// An option the agent sets, from the one table of turnserver's options;
/// config validation refuses every spelling of it in `extra_args`.
fn owned(name: &str) -> &'static CoturnOption {
    let option = coturn_options::by_long_name(name);
    debug_assert_eq!(option.class, Class::Owned, "--{name}");
    option
}

/// `-c` or `-n`, which have no long spelling.
fn short(letter: &str) -> String {
    let option = coturn_options::OPTIONS
        .iter()
        .find(|option| option.short.map(String::from).as_deref() == Some(letter))
        .filter(|option| option.class == Class::Owned)
        .unwrap_or_else(|| panic!("-{letter} is not an owned turnserver option"));
    format!("-{}", option.short.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_raw, validate};

    fn turnserver_config(extra: &str) -> TurnserverConfig {
        let text = format!(
            "[turnserver]\nbinary = \"/bin/sh\"\nrealm = \"example.org\"\nuserdb = \"/tmp/db\"\n\
             pidfile = \"/tmp/ts.pid\"\nlistening_ip = \"127.0.0.1\"\n{extra}\n\
             [credentials]\nturnadmin = \"/bin/sh\"\nstate_file = \"/tmp/c.json\"\n"
        );
        validate(&parse_raw(&text, Vec::new()).unwrap())
            .unwrap()
            .turnserver
    }

    #[test]
    fn foreground_with_owned_flags_then_extra_args() {
        let args = turnserver_args(&turnserver_config(""), CredentialMode::LongTerm);
        assert_eq!(&args[..2], ["-c", "/tmp/ts-agent.conf"]);
        assert!(!args.iter().any(|a| a == "-o" || a == "--daemon"));
        for expected in [
            "--listening-ip=127.0.0.1",
            "--listening-port=3478",
            "--min-port=49152",
            "--max-port=65535",
            "--realm=example.org",
            "--userdb=/tmp/db",
            "--pidfile=/tmp/ts.pid",
            "--lt-cred-mech",
            "--log-file=stdout",
        ] {
            assert!(
                args.iter().any(|a| a == expected),
                "{expected} missing from {args:?}"
            );
        }
        assert!(!args.iter().any(|a| a.contains("cli")), "{args:?}");
    }

    #[test]
    fn control_on_reads_the_agents_file_and_off_turns_the_cli_off() {
        let mut config = turnserver_config("");
        config.config_file = Some("/etc/turnserver.conf".into());
        let args = turnserver_args(&config, CredentialMode::LongTerm);
        assert_eq!(&args[..2], ["-c", "/tmp/ts-agent.conf"]);
        assert!(!args.iter().any(|a| a.contains("password")));
        config.control.enabled = false;
        let args = turnserver_args(&config, CredentialMode::LongTerm);
        assert_eq!(&args[..2], ["-c", "/etc/turnserver.conf"]);
        assert_eq!(args.iter().filter(|a| *a == "--no-cli").count(), 1);
    }

    #[test]
    fn config_file_replaces_dash_n_and_rest_api_uses_secret_auth() {
        let mut config = turnserver_config("control = \"off\"");
        config.config_file = Some("/etc/turnserver.conf".into());
        let args = turnserver_args(&config, CredentialMode::RestApi);
        assert_eq!(&args[..2], ["-c", "/etc/turnserver.conf"]);
        assert!(!args.iter().any(|a| a == "-n"));
        assert!(args.iter().any(|a| a == "--use-auth-secret"));
        assert!(!args.iter().any(|a| a == "--lt-cred-mech"));
    }

    #[test]
    fn every_flag_the_agent_sets_is_owned_in_the_option_table() {
        let mut config = turnserver_config("");
        config.relay_ip = Some("127.0.0.1".parse().unwrap());
        config.extra_args.clear();
        config.control.quotas = crate::config::control::Quotas {
            total_quota: 100,
            user_quota: 10,
            max_bps: 125_000,
            bps_capacity: 1_250_000,
        };
        for (config_file, mode, control) in [
            (None, CredentialMode::LongTerm, true),
            (None, CredentialMode::LongTerm, false),
            (
                Some("/etc/turnserver.conf".into()),
                CredentialMode::RestApi,
                false,
            ),
        ] {
            config.config_file = config_file;
            config.control.enabled = control;
            let mut args = turnserver_args(&config, mode);
            // The one flag the agent sets that operators may also set.
            args.retain(|arg| arg != "--no-cli");
            // Read back as turnserver reads it, every option is owned, so
            // extra_args can never set one of them a second time.
            let errors = coturn_options::parse_extra_args(&args, &[]).unwrap_err();
            let owned = errors
                .iter()
                .filter(|error| matches!(error, coturn_options::ExtraArgError::Owned { .. }))
                .count();
            assert_eq!(owned, errors.len(), "{errors:?}");
            assert_eq!(owned, args.len() - usize::from(args[0] == "-c"), "{args:?}");
            assert!(!args.iter().any(|a| a.contains("cli")), "{args:?}");
        }
    }
}
