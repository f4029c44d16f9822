//! The turnserver command line the agent owns.

use crate::config::{CredentialMode, TurnserverConfig};

/// Arguments for one turnserver run: the flags the agent owns first, then
/// `extra_args`. Always in the foreground: `-o` is never passed (and is
/// rejected in `extra_args` by config validation).
///
/// With `config_file` set the operator's file is read with `-c`; turnserver
/// lets command-line flags override file settings, so the agent's flags
/// still win.
pub fn turnserver_args(config: &TurnserverConfig, mode: CredentialMode) -> Vec<String> {
    let mut args = Vec::new();
    match &config.config_file {
        Some(path) => {
            args.push("-c".to_string());
            args.push(path.display().to_string());
        }
        None => args.push("-n".to_string()),
    }
    if let Some(ip) = config.listening_ip {
        args.push(format!("--listening-ip={ip}"));
    }
    args.push(format!("--listening-port={}", config.listening_port));
    if let Some(ip) = config.relay_ip {
        args.push(format!("--relay-ip={ip}"));
    }
    args.push(format!("--min-port={}", config.min_port));
    args.push(format!("--max-port={}", config.max_port));
    args.push(format!("--realm={}", config.realm));
    args.push(format!("--userdb={}", config.userdb.display()));
    args.push(format!("--pidfile={}", config.pidfile.display()));
    args.push(
        match mode {
            CredentialMode::LongTerm => "--lt-cred-mech",
            CredentialMode::RestApi => "--use-auth-secret",
        }
        .to_string(),
    );
    // Logs on stdout, one plain line each, so the agent can route them.
    args.push("--log-file=stdout".to_string());
    args.push("--simple-log".to_string());
    args.extend(config.extra_args.iter().cloned());
    args
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
        assert_eq!(args[0], "-n");
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
        assert_eq!(args.last().unwrap(), "--no-cli");
    }

    #[test]
    fn config_file_replaces_dash_n_and_rest_api_uses_secret_auth() {
        let mut config = turnserver_config("");
        config.config_file = Some("/etc/turnserver.conf".into());
        let args = turnserver_args(&config, CredentialMode::RestApi);
        assert_eq!(&args[..2], ["-c", "/etc/turnserver.conf"]);
        assert!(!args.iter().any(|a| a == "-n"));
        assert!(args.iter().any(|a| a == "--use-auth-secret"));
        assert!(!args.iter().any(|a| a == "--lt-cred-mech"));
    }
}
