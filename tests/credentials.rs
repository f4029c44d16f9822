//! Credentials against a real turnserver and turnadmin. coturn's own
//! `turnutils_uclient` judges every credential; the database is read with
//! the real `turnadmin`.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tokio::time::Instant;

fn options(credentials: &str) -> AgentOptions {
    AgentOptions {
        extra: credentials.to_string(),
        ..AgentOptions::default()
    }
}

/// Fails the test if a password or secret shows up in the agent's log.
fn assert_log_has_none_of(agent: &Agent, secrets: &[String]) {
    let log = agent.log();
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret leaked into the log"
        );
    }
}

#[tokio::test]
async fn served_credential_and_ice_allocate() {
    let agent = Agent::start(AgentOptions::default());
    agent.wait_ready(Duration::from_secs(5)).await;
    let served = agent.wait_credential(Duration::from_secs(5)).await;
    assert!(served.userid.starts_with("ta1-"));
    assert!(served.password.len() >= 22);
    let lifetime_ms = served.expired_time - unix_now_secs() * 1000;
    assert!(
        (7_000_000..=7_201_000).contains(&lifetime_ms),
        "default lifetime is 2h: {lifetime_ms}"
    );

    let (status, ice) = agent.get("/ice").await.unwrap();
    assert_eq!(status, 200);
    let server = &ice["iceServers"][0];
    let port = agent.files.turn_port;
    assert_eq!(
        server["urls"][0],
        format!("turn:127.0.0.1:{port}?transport=udp")
    );
    assert_eq!(
        server["urls"][1],
        format!("turn:127.0.0.1:{port}?transport=tcp")
    );

    let (by_credential, by_ice) = tokio::join!(
        uclient_allocates(port, &served.userid, &served.password),
        uclient_allocates(
            port,
            server["username"].as_str().unwrap(),
            server["credential"].as_str().unwrap()
        ),
    );
    assert!(
        by_credential,
        "uclient could not allocate with /turncredential"
    );
    assert!(by_ice, "uclient could not allocate with /ice");
    assert!(!uclient_allocates(port, &served.userid, "wrong-password").await);

    // turnadmin's per-call log files are not left in the agent's wake.
    let state = std::fs::metadata(agent.files.path("credential.json")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(state.permissions().mode() & 0o777, 0o600);
    assert_log_has_none_of(&agent, &[served.password]);
}

#[tokio::test]
async fn rotation_keeps_the_previous_credential_until_its_expiry() {
    let agent = Agent::start(options(
        "rotate_interval = \"2s\"\nlifetime = \"5s\"\ngrace = \"1s\"\n",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    let port = agent.files.turn_port;
    let first = agent.wait_credential(Duration::from_secs(5)).await;
    let second = wait_for(Duration::from_secs(5), "a rotation", || async {
        agent
            .credential("")
            .await
            .filter(|served| served.userid != first.userid)
    })
    .await;
    assert!(second.expired_time > first.expired_time);

    let (new_ok, old_ok) = tokio::join!(
        uclient_allocates(port, &second.userid, &second.password),
        uclient_allocates(port, &first.userid, &first.password),
    );
    assert!(new_ok, "the new credential must allocate");
    assert!(
        old_ok,
        "the previous credential must allocate until its expired_time"
    );

    // After expired_time + grace the previous credential is gone.
    let gone_after = first.expired_time / 1000 + 1;
    wait_for(
        Duration::from_secs(10),
        "the expired user to be deleted",
        || async {
            let users = agent_users(&agent.userdb(), &agent.files.realm);
            (!users.iter().any(|(user, _)| user == &first.userid)).then_some(())
        },
    )
    .await;
    assert!(
        unix_now_secs() >= gone_after,
        "deleted before expired_time + grace"
    );
    assert!(!uclient_allocates(port, &first.userid, &first.password).await);

    let now = unix_now_secs();
    for (user, expiry) in agent_users(&agent.userdb(), &agent.files.realm) {
        assert!(
            expiry + 1 + 1 >= now,
            "{user} expired at {expiry} but is still in the database at {now}"
        );
    }
    assert_log_has_none_of(&agent, &[first.password, second.password]);
}

#[tokio::test]
async fn concurrent_requests_during_rotations_always_get_a_valid_credential() {
    // The flood below is this test's own: no rate limit.
    let agent = Agent::start(options(
        "rotate_interval = \"1s\"\nlifetime = \"6s\"\ngrace = \"1s\"\n[access]\nrate_limit_per_second = 0.0\n",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;
    let client = reqwest::Client::new();
    let url = agent.url("/turncredential");
    let until = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < until {
                let asked_at_ms = unix_now_secs() * 1000;
                let body: serde_json::Value =
                    client.get(&url).send().await.unwrap().json().await.unwrap();
                let served = parse_served(&body).unwrap_or_else(|| panic!("bad answer {body}"));
                assert!(
                    served.expired_time > asked_at_ms,
                    "an expired credential was served"
                );
                let expiry: u64 = served.userid.split('-').nth(1).unwrap().parse().unwrap();
                assert_eq!(expiry * 1000, served.expired_time);
                seen.push(served);
            }
            seen
        }));
    }
    let mut distinct = Vec::new();
    let mut answers = 0;
    for task in tasks {
        for served in task.await.unwrap() {
            answers += 1;
            if !distinct.contains(&served) {
                distinct.push(served);
            }
        }
    }
    assert!(
        distinct.len() >= 2,
        "no rotation happened during {answers} requests"
    );
    // The same username never came with two passwords.
    for a in &distinct {
        assert_eq!(distinct.iter().filter(|b| b.userid == a.userid).count(), 1);
    }
    let port = agent.files.turn_port;
    let mut checks = tokio::task::JoinSet::new();
    for served in distinct.clone() {
        checks
            .spawn(async move { uclient_allocates(port, &served.userid, &served.password).await });
    }
    let results = checks.join_all().await;
    assert!(
        results.iter().all(|ok| *ok),
        "{results:?} for {} credentials",
        distinct.len()
    );
    eprintln!(
        "{answers} answers, {} distinct credentials, all allocate",
        distinct.len()
    );
}

#[tokio::test]
async fn restarted_agent_serves_the_same_credential() {
    let options = AgentOptions::default();
    let files = AgentFiles::new(&options);
    let mut agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(5)).await;
    let before = agent.wait_credential(Duration::from_secs(5)).await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );

    let files = agent.take_files();
    let agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(5)).await;
    let after = agent.wait_credential(Duration::from_secs(5)).await;
    assert_eq!(after, before);
    assert!(uclient_allocates(agent.files.turn_port, &after.userid, &after.password).await);
}

#[tokio::test]
async fn kill_9_at_random_moments_never_breaks_the_served_credential() {
    let options = options("rotate_interval = \"1s\"\nlifetime = \"8s\"\ngrace = \"1s\"\n");
    let mut files = AgentFiles::new(&options);
    for round in 0..30 {
        let mut agent = Agent::start_with(files, &options);
        agent.wait_ready(Duration::from_secs(5)).await;
        let served = agent.wait_credential(Duration::from_secs(5)).await;

        // Judged before the agent is killed again, so the kill cannot cut a
        // check short: every round by a TURN allocation that coturn answers,
        // every fifth round also by coturn's own uclient.
        let password = turn_agent::secret::Secret::new(served.password.clone());
        if let Err(error) = turn_agent::turn_check::allocate_and_release(
            agent.turn_addr(),
            &served.userid,
            &password,
            Duration::from_secs(2),
        )
        .await
        {
            panic!("round {round}: the served credential did not allocate: {error}");
        }
        if round % 5 == 0 {
            assert!(
                uclient_allocates(agent.files.turn_port, &served.userid, &served.password).await,
                "round {round}: uclient could not allocate with the served credential"
            );
        }

        // No leaked agent users: every one is either unexpired or within
        // grace (+1 s for the deletion itself), and there are no more than
        // lifetime / rotate_interval + a few.
        let now = unix_now_secs();
        let users = agent_users(&agent.userdb(), &agent.files.realm);
        for (user, expiry) in &users {
            assert!(
                expiry + 1 + 2 >= now,
                "round {round}: {user} leaked (expired {expiry}, now {now})"
            );
        }
        assert!(
            users.len() <= 12,
            "round {round}: {} agent users in the database",
            users.len()
        );

        let pause = Duration::from_millis(rand::random::<u64>() % 1500);
        tokio::time::sleep(pause).await;
        agent.signal(Signal::SIGKILL);
        agent.wait_exit(Duration::from_secs(5)).await;
        files = agent.take_files();
    }
}

#[tokio::test]
async fn turnadmin_faults_keep_the_previous_credential_and_recover() {
    // turnadmin reaches the database through a symlink the test can break
    // (an unwritable database path) and through a wrapper that can be made
    // to print ERROR: and exit 0, as turnadmin does on a failed write.
    let options = AgentOptions::default();
    let files = AgentFiles::new(&options);
    let dir = files.dir.path().to_path_buf();
    std::fs::create_dir(dir.join("db")).unwrap();
    std::os::unix::fs::symlink(dir.join("db"), dir.join("db-link")).unwrap();
    let wrapper = dir.join("turnadmin-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e {d}/turnadmin-broken ]; then echo '0: : ERROR: injected failure'; exit 0; fi\nexec turnadmin \"$@\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&files.config_path)
        .unwrap()
        .replace(&format!("userdb = \"{}/turndb\"", dir.display()), &format!("userdb = \"{}/db/turndb\"", dir.display()))
        + &format!(
            "turnadmin = \"{}\"\ndatabase_args = [\"-b\", \"{}/db-link/turndb\"]\nrotate_interval = \"1s\"\nlifetime = \"30s\"\ngrace = \"1s\"\n",
            wrapper.display(),
            dir.display()
        );
    // The credential keys belong in [credentials], which ends the file.
    std::fs::write(&files.config_path, text).unwrap();
    let agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(5)).await;
    let port = agent.files.turn_port;
    let before = agent.wait_credential(Duration::from_secs(5)).await;

    for fault in ["path", "error-line"] {
        match fault {
            "path" => {
                std::fs::remove_file(dir.join("db-link")).unwrap();
                std::os::unix::fs::symlink(dir.join("missing-dir"), dir.join("db-link")).unwrap();
            }
            _ => std::fs::write(dir.join("turnadmin-broken"), "").unwrap(),
        }
        // Rotations now fail: /readyz shows it, the current one is still served.
        let body = wait_for(
            Duration::from_secs(5),
            "a failed rotation in /readyz",
            || async {
                let (_, body) = agent.get("/readyz").await?;
                body["credentials"]["last_error"]
                    .is_string()
                    .then_some(body)
            },
        )
        .await;
        assert!(
            body["credentials"]["consecutive_failures"]
                .as_u64()
                .unwrap()
                >= 1
        );
        let metrics = agent.metrics().await;
        let failures: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("turn_agent_credential_failures_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(failures >= 1.0, "{metrics}");
        let during = agent
            .credential("")
            .await
            .expect("a credential is still served");
        assert!(
            uclient_allocates(port, &during.userid, &during.password).await,
            "{fault}: served credential must allocate"
        );

        // Heal: the next retry rotates.
        match fault {
            "path" => {
                std::fs::remove_file(dir.join("db-link")).unwrap();
                std::os::unix::fs::symlink(dir.join("db"), dir.join("db-link")).unwrap();
            }
            _ => std::fs::remove_file(dir.join("turnadmin-broken")).unwrap(),
        }
        let healed = wait_for(Duration::from_secs(10), "a successful rotation", || async {
            let (_, body) = agent.get("/readyz").await?;
            let ok = body["credentials"]["last_error"].is_null();
            let served = agent.credential("").await?;
            (ok && served.userid != during.userid).then_some(served)
        })
        .await;
        assert!(
            uclient_allocates(port, &healed.userid, &healed.password).await,
            "{fault}: healed credential must allocate"
        );
    }
    assert!(!agent.log().contains(&before.password));
}

#[tokio::test]
async fn rest_api_credentials_allocate_and_old_secrets_stay_until_their_credentials_expire() {
    let agent = Agent::start(options(
        "mode = \"rest-api\"\nrotate_interval = \"2s\"\nlifetime = \"3s\"\nmax_ttl = \"5s\"\ngrace = \"1s\"\n",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    let port = agent.files.turn_port;
    let realm = agent.files.realm.clone();
    let db = agent.userdb().display().to_string();
    let secrets = || listed(&turnadmin(&["-S", "-b", &db]), &realm);

    let minted = wait_for(Duration::from_secs(5), "a minted credential", || {
        agent.credential("?username=alice&ttl=5")
    })
    .await;
    let (expiry, user) = minted.userid.split_once(':').unwrap();
    assert_eq!(user, "alice");
    assert!(expiry.parse::<u64>().unwrap() <= unix_now_secs() + 5);
    let capped = agent.credential("?ttl=99999").await.unwrap();
    assert!(
        capped.expired_time <= (unix_now_secs() + 5) * 1000,
        "ttl must be capped by max_ttl"
    );
    let short = agent.credential("?ttl=1").await.unwrap();
    let first_secrets = secrets();
    assert_eq!(first_secrets.len(), 1, "{first_secrets:?}");

    // Wait for a secret rotation: the credential minted with the previous
    // secret still allocates.
    wait_for(Duration::from_secs(5), "a second secret", || {
        let count = secrets().len();
        async move { (count >= 2).then_some(()) }
    })
    .await;
    let (_, ice) = agent.get("/ice").await.unwrap();
    let server = &ice["iceServers"][0];
    let (old_ok, ice_ok) = tokio::join!(
        uclient_allocates(port, &minted.userid, &minted.password),
        uclient_allocates(
            port,
            server["username"].as_str().unwrap(),
            server["credential"].as_str().unwrap()
        ),
    );
    assert!(
        old_ok,
        "a credential minted with the previous secret must allocate until it expires"
    );
    assert!(ice_ok, "/ice must allocate in REST API mode");

    // The short one has expired by now and is rejected.
    assert!(short.expired_time <= unix_now_secs() * 1000);
    assert!(!uclient_allocates(port, &short.userid, &short.password).await);

    // The first secret goes once every credential it signed has expired
    // (max_ttl after it was retired, plus grace).
    let first = first_secrets[0].clone();
    wait_for(
        Duration::from_secs(12),
        "the first secret to be deleted",
        || {
            let gone = !secrets().contains(&first);
            async move { gone.then_some(()) }
        },
    )
    .await;
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.files.path("credential.json")).unwrap(),
    )
    .unwrap();
    let mut all_secrets = vec![first, minted.password, capped.password];
    all_secrets.extend(secrets());
    all_secrets.extend(
        state["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|secret| secret["value"].as_str().unwrap().to_string()),
    );
    assert_log_has_none_of(&agent, &all_secrets);
}

#[tokio::test]
async fn rotation_on_demand_through_the_cli_and_post_rotate() {
    let agent = Agent::start(AgentOptions::default());
    agent.wait_ready(Duration::from_secs(5)).await;
    let first = agent.wait_credential(Duration::from_secs(5)).await;

    let config = agent.files.config_path.display().to_string();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_agent_cli(&["rotate", "--config", &config], &[]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let second = agent.credential("").await.unwrap();
    assert_ne!(second.userid, first.userid);
    assert_eq!(stdout.trim(), format!("rotated: {}", second.userid));

    assert_eq!(agent.post_rotate().await, 200);
    let third = agent.credential("").await.unwrap();
    assert_ne!(third.userid, second.userid);
    let (second_ok, third_ok) = tokio::join!(
        uclient_allocates(agent.files.turn_port, &second.userid, &second.password),
        uclient_allocates(agent.files.turn_port, &third.userid, &third.password),
    );
    assert!(second_ok && third_ok);
}
