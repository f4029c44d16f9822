//! Tests of `config::control`: the owned CLI file's path, `no-cli` in the
//! operator's file, the pidfile directory rule and the quota bounds.

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
        config_file_text: None,
        total_quota: 0,
        user_quota: 0,
        max_bps: 0,
        bps_capacity: 0,
    })
    .map_err(|problems| problems.iter().map(ToString::to_string).collect())
}

#[test]
fn on_by_default_and_off_by_the_setting() {
    let on = check("on", "2s", &[]).unwrap();
    assert!(on.enabled && on.off_by_no_cli.is_none());
    assert_eq!(on.poll_interval, Duration::from_secs(2));
    let off = check("off", "2s", &[]).unwrap();
    assert!(!off.enabled && off.off_by_no_cli.is_none());
}

#[test]
fn no_cli_in_extra_args_turns_it_off_and_is_reported() {
    for spelling in [&["--no-cli"][..], &["--no-c"], &["--no-cli=yes"]] {
        let config = check("on", "2s", spelling).unwrap();
        assert!(!config.enabled, "{spelling:?}");
        assert_eq!(config.off_by_no_cli, Some(NoCliSource::ExtraArgs));
    }
    // Off both ways: nothing to warn about.
    let config = check("off", "2s", &["--no-cli"]).unwrap();
    assert!(!config.enabled && config.off_by_no_cli.is_none());
    // The last occurrence wins, as in turnserver.
    assert!(
        check("on", "2s", &["--no-cli", "--no-cli=0"])
            .unwrap()
            .enabled
    );
}

fn with_file(control: &str, extra: &[&str], file: &str) -> ControlConfig {
    validate(&RawControl {
        control,
        poll_interval: "2s",
        extra_args: &args(extra),
        pass_through_flags: &[],
        config_file_text: Some(file),
        total_quota: 0,
        user_quota: 0,
        max_bps: 0,
        bps_capacity: 0,
    })
    .unwrap()
}

#[test]
fn no_cli_in_the_config_file_turns_it_off_and_is_reported() {
    for file in [
        "no-cli\n",
        "realm=example.org\n  no-cli  \n",
        "no-cli=1\n",
        "no-cli=true # the CLI is off\n",
        "no-cli yes\n",
        "--no-cli\n",
        "no-cli=0\nno-cli\n",
    ] {
        let config = with_file("on", &[], file);
        assert!(!config.enabled, "{file:?}");
        assert_eq!(
            config.off_by_no_cli,
            Some(NoCliSource::ConfigFile),
            "{file:?}"
        );
    }
    for file in [
        "",
        "# no-cli\n",
        "no-cli=0\n",
        "no-cli=off\n",
        "no-cli\nno-cli=false\n",
        "no-climb\n",
        "no-c\n",
        "cli-password=no-cli\n",
    ] {
        let config = with_file("on", &[], file);
        assert!(config.enabled, "{file:?}");
        assert_eq!(config.off_by_no_cli, None, "{file:?}");
    }
    // Off both ways: nothing to warn about.
    assert_eq!(with_file("off", &[], "no-cli\n").off_by_no_cli, None);
    // The command line overrides the file, as in turnserver.
    assert!(with_file("on", &["--no-cli=0"], "no-cli\n").enabled);
    assert_eq!(
        with_file("on", &["--no-cli"], "no-cli\n").off_by_no_cli,
        Some(NoCliSource::ExtraArgs)
    );
    let warning = NoCliSource::ConfigFile.warning();
    assert!(warning.contains("turnserver.config_file"), "{warning}");
    assert!(
        warning.contains("turnserver.control = \"off\""),
        "{warning}"
    );
}

#[test]
fn a_pidfile_directory_others_can_change_is_refused() {
    let directory = |symlink_owner, owner, mode| PidfileDirectory {
        symlink_owner,
        owner,
        mode,
    };
    const AGENT: u32 = 998;
    for fine in [
        directory(None, AGENT, 0o700),
        directory(None, 0, 0o755),
        directory(None, 0, 0o1777),
        directory(None, AGENT, 0o1770),
        directory(Some(0), AGENT, 0o700),
        directory(Some(AGENT), 0, 0o755),
    ] {
        assert_eq!(pidfile_directory_problem(&fine, AGENT), None, "{fine:?}");
    }
    for (bad, expected) in [
        (
            directory(None, AGENT, 0o777),
            "mode 777) is writable by others",
        ),
        (directory(None, 0, 0o775), "mode 775) is writable by others"),
        (
            directory(None, 0, 0o2757),
            "mode 2757) is writable by others",
        ),
        (directory(None, 1000, 0o700), "owned by uid 1000"),
        (
            directory(Some(1000), 0, 0o755),
            "a symlink owned by uid 1000",
        ),
    ] {
        let problem = pidfile_directory_problem(&bad, AGENT).unwrap();
        assert!(problem.contains(expected), "{bad:?}: {problem}");
        assert!(problem.contains("CLI password"), "{problem}");
    }
    // Run as root, root's directories are the agent's own.
    assert_eq!(
        pidfile_directory_problem(&directory(None, 0, 0o700), 0),
        None
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
    assert!(
        check("on", "soon", &[]).unwrap_err()[0].starts_with("turnserver.control_poll_interval: ")
    );
}

fn quotas(values: [i64; 4]) -> Result<Quotas, Vec<String>> {
    validate(&RawControl {
        control: "on",
        poll_interval: "2s",
        extra_args: &[],
        pass_through_flags: &[],
        config_file_text: None,
        total_quota: values[0],
        user_quota: values[1],
        max_bps: values[2],
        bps_capacity: values[3],
    })
    .map(|config| config.quotas)
    .map_err(|problems| problems.iter().map(ToString::to_string).collect())
}

#[test]
fn quotas_are_bounded_as_coturn_reads_them_and_name_their_key() {
    let set = quotas([100, 10, 125_000, 12_500_000]).unwrap();
    assert_eq!(
        set.settings()
            .map(|(_, flag, value)| format!("--{flag}={value}")),
        [
            "--total-quota=100",
            "--user-quota=10",
            "--bps-capacity=12500000",
            "--max-bps=125000"
        ]
    );
    assert_eq!(quotas([0; 4]).unwrap(), Quotas::default());
    assert!(quotas([MAX_QUOTA as i64, MAX_QUOTA as i64, i64::MAX, i64::MAX]).is_ok());
    for (values, key) in [
        ([-1, 0, 0, 0], "turnserver.total_quota"),
        ([MAX_QUOTA as i64 + 1, 0, 0, 0], "turnserver.total_quota"),
        ([0, 99_999_999_999, 0, 0], "turnserver.user_quota"),
        ([0, 0, -5, 0], "turnserver.max_bps"),
        ([0, 0, 0, -1], "turnserver.bps_capacity"),
        ([0, 0, 0, 1000], "turnserver.bps_capacity"),
    ] {
        let problems = quotas(values).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with(&format!("{key}: ")), "{problems:?}");
    }
}

#[test]
fn the_agents_own_file_is_found_however_it_is_spelled() {
    let pidfile = std::path::Path::new("/run/turn-agent/turnserver.pid");
    assert_eq!(
        agent_file_path(pidfile),
        std::path::Path::new("/run/turn-agent/turnserver-agent.conf")
    );
    assert!(is_agent_file(
        std::path::Path::new("/run/turn-agent/turnserver-agent.conf"),
        pidfile
    ));
    assert!(!is_agent_file(
        std::path::Path::new("/etc/turnserver.conf"),
        pidfile
    ));
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("ts.pid");
    let dotted = dir.path().join(".").join("ts-agent.conf");
    assert!(is_agent_file(&dotted, &pidfile));
}
