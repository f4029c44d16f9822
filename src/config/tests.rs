//! Loading, environment overrides, defaults and the checks of every section.

use std::ffi::OsString;
use std::time::Duration;

use super::raw::redact;
use super::*;

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

/// A minimal valid file for tests: binaries that exist on every machine.
pub(super) const BASE: &str = r#"
[turnserver]
binary = "/bin/sh"
realm = "example.org"
userdb = "/tmp/turndb"
pidfile = "/tmp/turnserver.pid"
[credentials]
turnadmin = "/bin/sh"
state_file = "/tmp/credential.json"
"#;

pub(super) fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
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
    assert!(found[0].starts_with("TURN_AGENT_ZOOKEEPER_REGION: value holds a control character"));
    let found = problems(&format!("{BASE}[zookeeper]\nisp = [\"a\\u0000b\"]\n"), &[]);
    assert_eq!(
        found,
        vec![
            "zookeeper.isp[0]: must not hold control characters (NUL, line breaks, tabs, escapes)"
        ]
    );
}

#[test]
fn syntax_error_is_one_line() {
    let error = parse_raw("[api\nlisten=", env(&[])).unwrap_err();
    assert_eq!(error.problems.len(), 1);
    assert!(!error.to_string().contains('\n'));
}

#[test]
fn traffic_source_is_interface_or_turnserver() {
    let raw = parse_raw(BASE, env(&[])).unwrap();
    assert_eq!(
        validate(&raw).unwrap().traffic.source,
        super::TrafficSource::Interface
    );
    let text = format!("{BASE}[traffic]\nsource = \"turnserver\"\n");
    let raw = parse_raw(&text, env(&[])).unwrap();
    assert_eq!(
        validate(&raw).unwrap().traffic.source,
        super::TrafficSource::Turnserver
    );
    let problems = problems(&format!("{BASE}[traffic]\nsource = \"nic\"\n"), &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("traffic.source: unknown variant `nic`"),
        "{problems:?}"
    );
}
