//! The binary's command line: bad configurations never start anything.

mod common;

use common::*;

fn write_config(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("agent.toml");
    let base = format!(
        "[turnserver]\nrealm = \"example.org\"\nuserdb = \"{d}/turndb\"\npidfile = \"{d}/ts.pid\"\n\
         [credentials]\nstate_file = \"{d}/credential.json\"\n{body}",
        d = dir.display()
    );
    std::fs::write(&path, base).unwrap();
    path.display().to_string()
}

fn assert_rejected(body: &str, env: &[(&str, &str)], expected_line: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), body);
    for command in ["check-config", "run"] {
        let (code, _, stderr) = run_agent_cli(&[command, "--config", &config], env);
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(
            stderr.lines().any(|line| line.starts_with(expected_line)),
            "{command}: expected a line starting with {expected_line:?} in:\n{stderr}"
        );
    }
    assert!(turnservers_in(dir.path()).is_empty());
}

#[test]
fn unknown_key_exits_2_naming_it() {
    assert_rejected(
        "[api]\nlistn = \"127.0.0.1:1\"\n",
        &[],
        "api.listn: unknown field",
    );
}

#[test]
fn bad_duration_exits_2_naming_it() {
    assert_rejected(
        "[agent]\nshutdown_timeout = \"ten seconds\"\n",
        &[],
        "agent.shutdown_timeout: `ten seconds` is not a duration",
    );
}

#[test]
fn max_below_min_exits_2() {
    assert_rejected(
        "",
        &[
            ("TURN_AGENT_TURNSERVER_RESTART_DELAY_MIN", "5s"),
            ("TURN_AGENT_TURNSERVER_RESTART_DELAY_MAX", "1s"),
        ],
        "turnserver.restart_delay_max: must not be less than restart_delay_min",
    );
}

#[test]
fn missing_binary_exits_2() {
    assert_rejected(
        "",
        &[("TURN_AGENT_TURNSERVER_BINARY", "/opt/nowhere/turnserver")],
        "turnserver.binary: `/opt/nowhere/turnserver` not found",
    );
}

#[test]
fn env_override_with_a_bad_value_exits_2() {
    assert_rejected(
        "",
        &[("TURN_AGENT_TURNSERVER_LISTENING_PORT", "70000")],
        "turnserver.listening_port: must be a port number",
    );
    assert_rejected(
        "",
        &[("TURN_AGENT_APII_LISTEN", "x")],
        "TURN_AGENT_APII_LISTEN: unknown section",
    );
}

#[test]
fn unreadable_file_exits_2() {
    let (code, _, stderr) = run_agent_cli(
        &["check-config", "--config", "/nonexistent/agent.toml"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/agent.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_effective_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (code, stdout, stderr) = run_agent_cli(
        &["check-config", "--config", &config],
        &[("TURN_AGENT_API_LISTEN", "127.0.0.1:9000")],
    );
    assert_eq!(code, 0, "{stderr}");
    let effective: toml::Table = stdout.parse().unwrap();
    assert_eq!(effective["api"]["listen"].as_str(), Some("127.0.0.1:9000"));
    assert_eq!(
        effective["turnserver"]["restart_delay_max"].as_str(),
        Some("30s")
    );
}

#[test]
fn shipped_example_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for name in ["config/turn-agent.toml", "config/local.toml"] {
        let (code, _, stderr) = run_agent_cli(
            &["check-config", "--config", &format!("{root}/{name}")],
            &[],
        );
        assert_eq!(code, 0, "{name}: {stderr}");
    }
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = run_agent_cli(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("turn-agent "));
    let (code, stdout, _) = run_agent_cli(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("check-config"));
}

#[test]
fn bad_zookeeper_and_traffic_settings_exit_2() {
    let zookeeper = [
        ("TURN_AGENT_ZOOKEEPER_CONNECT", "127.0.0.1:2181/turn"),
        ("TURN_AGENT_TRAFFIC_INTERFACE", "lo"),
        ("TURN_AGENT_API_ADVERTISE", "127.0.0.1:8086"),
    ];
    for (key, value, expected) in [
        (
            "TURN_AGENT_ZOOKEEPER_CONNECT",
            "zk1:2181,zk2",
            "zookeeper.connect: `zk2` is not host:port",
        ),
        ("TURN_AGENT_ZOOKEEPER_NODE", "a/b", "zookeeper.node:"),
        (
            "TURN_AGENT_TRAFFIC_INTERFACE",
            "nosuchif0",
            "traffic.interface: no network interface named `nosuchif0`",
        ),
    ] {
        let mut env = zookeeper.to_vec();
        env.push((key, value));
        assert_rejected("", &env, expected);
    }
}

#[test]
fn allocator_server_limits_and_drain_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("allocator.toml");
    std::fs::write(
        &path,
        "[allocator]\nconnect = \"127.0.0.1:2181\"\nmax_connections = 0\n\
         max_header_bytes = 10\nheader_read_timeout = \"soon\"\ndrain_timeout = \"0s\"\n",
    )
    .unwrap();
    let (code, _, stderr) =
        run_agent_cli(&["allocator", "--config", &path.display().to_string()], &[]);
    assert_eq!(code, 2, "{stderr}");
    for key in [
        "allocator.max_connections:",
        "allocator.max_header_bytes:",
        "allocator.header_read_timeout:",
        "allocator.drain_timeout:",
    ] {
        assert!(
            stderr.lines().any(|line| line.starts_with(key)),
            "{key} missing in {stderr}"
        );
    }
}

#[test]
fn allocator_config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("allocator.toml");
    std::fs::write(
        &path,
        "[allocator]\nconnect = \"zk1\"\nstrategy = \"fastest\"\nmax_staleness = \"later\"\n",
    )
    .unwrap();
    let (code, _, stderr) =
        run_agent_cli(&["allocator", "--config", &path.display().to_string()], &[]);
    assert_eq!(code, 2, "{stderr}");
    for key in [
        "allocator.connect:",
        "allocator.strategy:",
        "allocator.max_staleness:",
    ] {
        assert!(
            stderr.lines().any(|line| line.starts_with(key)),
            "{key} missing in {stderr}"
        );
    }
    let (code, _, stderr) = run_agent_cli(&["allocate", "--zookeeper", "zk1", "--path", "/x"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--zookeeper"), "{stderr}");
}

#[test]
fn every_key_is_documented_in_the_example_config() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/turn-agent.toml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[api]\nadvertise = \"127.0.0.1:1\"\n[zookeeper]\nnode = \"n\"\nauth_file = \"/etc/hostname\"\n");
    let (code, stdout, stderr) = run_agent_cli(&["check-config", "--config", &config], &[]);
    assert_eq!(code, 0, "{stderr}");
    let effective: toml::Table = stdout.parse().unwrap();
    let mut missing = Vec::new();
    for (section, keys) in &effective {
        assert!(
            example.contains(&format!("[{section}]")),
            "section [{section}] undocumented"
        );
        for key in keys.as_table().unwrap().keys() {
            let documented = example.lines().any(|line| {
                line.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))
            });
            if !documented {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    // Optional keys without a default appear commented out with an example.
    for key in [
        "config_file",
        "listening_ip",
        "relay_ip",
        "realm",
        "connect",
        "tls",
    ] {
        let documented = example.lines().any(|line| {
            line.trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))
        });
        if !documented {
            missing.push(key.to_string());
        }
    }
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
}

#[test]
fn every_spelling_of_an_owned_or_unsafe_flag_exits_2_naming_the_argument() {
    for (extra_args, expected) in [
        (r#"["-vo"]"#, "turnserver.extra_args: `-vo` sets -o (--daemon), which the agent owns"),
        (r#"["-z"]"#, "turnserver.extra_args: `-z` sets -z (--no-auth)"),
        (r#"["--no-auth"]"#, "turnserver.extra_args: `--no-auth` sets -z (--no-auth)"),
        (r#"["-rother"]"#, "turnserver.extra_args: `-rother` sets -r (--realm)"),
        (r#"["--real=x"]"#, "turnserver.extra_args: `--real=x` sets -r (--realm)"),
        (r#"["-b/tmp/x.db"]"#, "turnserver.extra_args: `-b/tmp/x.db` sets -b (--userdb)"),
        (r#"["-p3479"]"#, "turnserver.extra_args: `-p3479` sets -p (--listening-port)"),
        (r#"["--pidf=/tmp/x.pid"]"#, "turnserver.extra_args: `--pidf=/tmp/x.pid` sets --pidfile"),
        (r#"["--daemo"]"#, "turnserver.extra_args: `--daemo` sets -o (--daemon)"),
        (r#"["--d"]"#, "turnserver.extra_args: `--d`: `--d` is ambiguous"),
        (r#"["--frobnicate"]"#, "turnserver.extra_args: `--frobnicate`: `--frobnicate` is not a turnserver 4.6.1 option"),
        (r#"["--allow-loopback-peers"]"#, "turnserver.extra_args: `--allow-loopback-peers`: loopback peers with TCP relays"),
    ] {
        assert_rejected(
            "",
            &[("TURN_AGENT_TURNSERVER_EXTRA_ARGS", extra_args)],
            expected,
        );
    }
}

#[test]
fn a_flag_listed_in_pass_through_flags_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let env = [
        (
            "TURN_AGENT_TURNSERVER_EXTRA_ARGS",
            r#"["--no-cli", "--future-flag=on"]"#,
        ),
        (
            "TURN_AGENT_TURNSERVER_PASS_THROUGH_FLAGS",
            r#"["--future-flag"]"#,
        ),
    ];
    let (code, _, stderr) = run_agent_cli(&["check-config", "--config", &config], &env);
    assert_eq!(code, 0, "{stderr}");
    assert_rejected(
        "",
        &[("TURN_AGENT_TURNSERVER_PASS_THROUGH_FLAGS", r#"["--daemo"]"#)],
        "turnserver.pass_through_flags[0]: `--daemo` is turnserver's -o (--daemon)",
    );
}

/// `check-config --config PATH`: exit code, stderr, wall time.
fn check_config_of(path: &str) -> (i32, String, std::time::Duration) {
    let started = std::time::Instant::now();
    let (code, _, stderr) = run_agent_cli(&["check-config", "--config", path], &[]);
    (code, stderr, started.elapsed())
}

#[test]
fn a_device_a_fifo_or_a_huge_file_as_config_exits_2_at_once_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("agent.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let huge = dir.path().join("huge.toml");
    // Sparse: 200 MB that cost no disk.
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(200 * 1024 * 1024)
        .unwrap();
    for (path, expected) in [
        (
            "/dev/zero".to_string(),
            "/dev/zero: is a character device, not a regular file",
        ),
        (
            fifo.display().to_string(),
            "agent.fifo: is a FIFO, not a regular file",
        ),
        (
            huge.display().to_string(),
            "huge.toml: is 209715200 bytes, more than the 1048576 bytes allowed",
        ),
    ] {
        let (code, stderr, took) = check_config_of(&path);
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|line| line.ends_with(expected) || line.contains(expected)),
            "{path}: {stderr}"
        );
        assert!(
            took < std::time::Duration::from_secs(5),
            "{path} took {took:?}"
        );
    }
}

#[test]
fn the_allocator_refuses_a_fifo_or_a_device_as_its_config_or_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("allocator.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let with_fifo_auth = dir.path().join("allocator.toml");
    std::fs::write(
        &with_fifo_auth,
        format!(
            "[allocator]\nconnect = \"127.0.0.1:2181\"\nauth_file = \"{}\"\n",
            fifo.display()
        ),
    )
    .unwrap();
    for (path, expected) in [
        (
            fifo.display().to_string(),
            "allocator.fifo: is a FIFO, not a regular file".to_string(),
        ),
        (
            "/dev/zero".to_string(),
            "/dev/zero: is a character device, not a regular file".to_string(),
        ),
        (
            with_fifo_auth.display().to_string(),
            "allocator.auth_file:".to_string(),
        ),
    ] {
        let started = std::time::Instant::now();
        let (code, _, stderr) = run_agent_cli(&["allocator", "--config", &path], &[]);
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(
            stderr.lines().any(|line| line.contains(&expected)),
            "{path}: {stderr}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn control_characters_and_bad_realms_exit_2_naming_the_key() {
    assert_rejected(
        "[zookeeper]\nregion = \"eu\\u0000west\"\n",
        &[],
        "zookeeper.region: must not hold control characters",
    );
    // The TOML escape makes a real line break once parsed.
    assert_rejected(
        "",
        &[(
            "TURN_AGENT_CREDENTIALS_DATABASE_ARGS",
            r#"["-b", "/tmp/db\nx"]"#,
        )],
        "credentials.database_args[1]: must not hold control characters",
    );
    for realm in ["bar[1]", "it's", "a b", "x]"] {
        assert_rejected(
            "",
            &[("TURN_AGENT_TURNSERVER_REALM", realm)],
            "turnserver.realm: must hold only ASCII letters, digits",
        );
    }
}

#[test]
fn an_environment_override_with_a_line_break_exits_2_naming_the_variable() {
    assert_rejected(
        "",
        &[(
            "TURN_AGENT_TURNSERVER_REALM",
            "example.org\nrelay_ip = \"10.0.0.1\"",
        )],
        "TURN_AGENT_TURNSERVER_REALM: value holds a control character",
    );
    assert_rejected(
        "",
        &[("TURN_AGENT_AGENT_LOG_LEVEL", "info\x1b[31m")],
        "TURN_AGENT_AGENT_LOG_LEVEL: value holds a control character",
    );
}

#[test]
fn a_pidfile_directory_others_can_write_exits_2_naming_the_pidfile() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let body = format!("[turnserver]\npidfile = \"{}/ts.pid\"\n", shared.display());
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "{body}realm = \"example.org\"\nuserdb = \"{d}/turndb\"\n\
             [credentials]\nstate_file = \"{d}/credential.json\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let config = path.display().to_string();
    for command in ["check-config", "run"] {
        let (code, _, stderr) = run_agent_cli(&[command, "--config", &config], &[]);
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|line| line.starts_with("turnserver.pidfile: ")
                    && line.contains("writable by others without the sticky bit")),
            "{command}: {stderr}"
        );
    }
    assert!(turnservers_in(dir.path()).is_empty());
    // With the sticky bit (as /tmp), or with the control channel off (no
    // password file), it is accepted.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, _, stderr) = run_agent_cli(&["check-config", "--config", &config], &[]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, stderr) = run_agent_cli(
        &["check-config", "--config", &config],
        &[("TURN_AGENT_TURNSERVER_CONTROL", "off")],
    );
    assert_eq!(code, 0, "{stderr}");
}
