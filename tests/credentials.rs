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
    let client = http_client();
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
async fn rotation_on_demand_through_the_cli_and_post_rotate_is_throttled() {
    let agent = Agent::start(options("rotate_min_interval = \"1s\"\n"));
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

    // At once again: 429 with Retry-After and the API's JSON error; nothing
    // rotated.
    let response = http_client()
        .post(agent.url("/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "too_many_requests", "{body}");
    assert_eq!(agent.credential("").await.unwrap(), second);

    let third_status = wait_for(Duration::from_secs(3), "the throttle to pass", || async {
        let status = agent.post_rotate().await;
        (status != 429).then_some(status)
    })
    .await;
    assert_eq!(third_status, 200);
    let third = agent.credential("").await.unwrap();
    assert_ne!(third.userid, second.userid);
    let (second_ok, third_ok) = tokio::join!(
        uclient_allocates(agent.files.turn_port, &second.userid, &second.password),
        uclient_allocates(agent.files.turn_port, &third.userid, &third.password),
    );
    assert!(second_ok && third_ok);
}

/// A turnadmin stand-in that wraps the real one and fails every delete
/// (`-d`, `-X`) with an `ERROR:` line and exit 0, as turnadmin does, while
/// `deletes-fail` exists in the test's directory.
fn turnadmin_failing_deletes(files: &AgentFiles) -> std::path::PathBuf {
    let dir = files.dir.path();
    let wrapper = dir.join("turnadmin-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e {d}/deletes-fail ]; then\n  for arg in \"$@\"; do\n    case \"$arg\" in -d|-X) echo '0: : ERROR: injected delete failure'; exit 0;; esac\n  done\nfi\nexec turnadmin \"$@\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

#[tokio::test]
async fn an_expired_user_whose_delete_fails_is_retried_across_a_restart_until_it_is_gone() {
    let options = AgentOptions::default();
    let files = AgentFiles::new(&options);
    let wrapper = turnadmin_failing_deletes(&files);
    let flag = files.path("deletes-fail");
    let text = std::fs::read_to_string(&files.config_path).unwrap()
        + &format!(
            "turnadmin = \"{}\"\nrotate_interval = \"2s\"\nlifetime = \"3s\"\ngrace = \"1s\"\n",
            wrapper.display()
        );
    std::fs::write(&files.config_path, text).unwrap();
    let mut agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(15)).await;
    let expired = agent.wait_credential(Duration::from_secs(5)).await;
    std::fs::write(&flag, "").unwrap();

    // Past its expiry plus grace the user is due; its deletion fails and
    // says so: /status, a metric and a warning naming the user.
    wait_for(Duration::from_secs(10), "a pending deletion", || async {
        let (_, body) = agent.get("/status").await?;
        (body["credentials"]["pending_deletions"].as_u64()? >= 1).then_some(())
    })
    .await;
    let metrics = agent.metrics().await;
    let pending: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("turn_agent_credential_deletions_pending "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pending >= 1.0, "{metrics}");
    wait_for(Duration::from_secs(5), "a warning naming the user", || {
        let warned = agent
            .log()
            .lines()
            .any(|line| line.contains("cannot delete") && line.contains(&expired.userid));
        async move { warned.then_some(()) }
    })
    .await;
    assert!(agent_users(&agent.userdb(), &agent.files.realm)
        .iter()
        .any(|(user, _)| user == &expired.userid));

    // Killed while deletes still fail: the restarted agent meets the user
    // in its start-up reconciliation, fails again and keeps it.
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(5)).await;
    let files = agent.take_files();
    drop(agent);
    let agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(15)).await;
    wait_for(
        Duration::from_secs(10),
        "the restarted agent to keep the undeleted user",
        || async {
            let (_, body) = agent.get("/status").await?;
            let state = std::fs::read_to_string(agent.files.path("credential.json")).ok()?;
            (body["credentials"]["deletion_failures"].as_u64()? >= 1
                && state.contains(&expired.userid))
            .then_some(())
        },
    )
    .await;

    // Deletes work again: the user goes, and coturn rejects its password.
    std::fs::remove_file(&flag).unwrap();
    wait_for(
        Duration::from_secs(15),
        "the expired user to be deleted",
        || async {
            let users = agent_users(&agent.userdb(), &agent.files.realm);
            (!users.iter().any(|(user, _)| user == &expired.userid)).then_some(())
        },
    )
    .await;
    assert!(
        !uclient_allocates(agent.files.turn_port, &expired.userid, &expired.password).await,
        "the expired password still allocates"
    );
    wait_for(Duration::from_secs(10), "no pending deletion", || async {
        let (_, body) = agent.get("/status").await?;
        (body["credentials"]["pending_deletions"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_turnadmin_call_cut_short_by_the_agents_death_dies_with_it_and_leaves_no_log_file() {
    // A stand-in that, while `slow` exists, does what turnadmin does first
    // (opens its per-call log file where coturn's logging would, and says
    // so), records its pid and hangs; otherwise the real turnadmin.
    let options = options("rotate_interval = \"1s\"\nlifetime = \"30s\"\n");
    let files = AgentFiles::new(&options);
    let dir = files.dir.path().to_path_buf();
    let wrapper = dir.join("turnadmin-slow");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e {d}/slow ]; then\n  for l in /var/log/turnserver /var/log /var/tmp /tmp; do\n    if [ -d $l ] && [ -w $l ]; then f=$l/turn_$$_$(date +%F).log; break; fi\n  done\n  echo \"0: : log file opened: $f\" > \"$f\"\n  echo \"0: : log file opened: $f\"\n  echo $$ > {d}/slow.pid\n  exec sleep 60\nfi\nexec turnadmin \"$@\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&files.config_path).unwrap()
        + &format!("turnadmin = \"{}\"\n", wrapper.display());
    std::fs::write(&files.config_path, text).unwrap();

    let mut agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(5)).await;
    std::fs::write(dir.join("slow"), "").unwrap();
    let pid: u32 = wait_for(Duration::from_secs(5), "a hanging turnadmin call", || {
        let pid = std::fs::read_to_string(dir.join("slow.pid"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        async move { pid }
    })
    .await;
    let logs_of_child = || -> Vec<std::path::PathBuf> {
        ["/var/log/turnserver", "/var/log", "/var/tmp", "/tmp"]
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|entries| entries.flatten())
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(&format!("turn_{pid}_")))
            })
            .collect()
    };
    wait_for(Duration::from_secs(2), "the child's log file", || {
        let found = !logs_of_child().is_empty();
        async move { found.then_some(()) }
    })
    .await;

    agent.signal(Signal::SIGKILL);
    agent.wait_exit(Duration::from_secs(5)).await;
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(2),
        "the turnadmin child to die with the agent",
        || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let gone = stat
                .rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
            async move { gone.then_some(()) }
        },
    )
    .await;
    eprintln!(
        "turnadmin child gone {:?} after the agent was killed",
        killed.elapsed()
    );

    // The next start removes what the cut-short call left.
    std::fs::remove_file(dir.join("slow")).unwrap();
    let files = agent.take_files();
    drop(agent);
    let agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(5)).await;
    wait_for(
        Duration::from_secs(5),
        "the leftover log file to be removed",
        || {
            let left = logs_of_child();
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
    assert!(agent.log().contains("cut short by an earlier agent"));
}

#[tokio::test]
async fn rest_api_secrets_never_reach_a_command_line() {
    // A stand-in that records every argv turnadmin gets, then runs it.
    let options = options(
        "mode = \"rest-api\"\nrotate_interval = \"1s\"\nlifetime = \"2s\"\nmax_ttl = \"2s\"\ngrace = \"1s\"\nrotate_min_interval = \"0s\"\n",
    );
    let files = AgentFiles::new(&options);
    let dir = files.dir.path().to_path_buf();
    let wrapper = dir.join("turnadmin-recording");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$0 $*\" >> {d}/argv.log\nexec turnadmin \"$@\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&files.config_path).unwrap()
        + &format!("turnadmin = \"{}\"\n", wrapper.display());
    std::fs::write(&files.config_path, text).unwrap();
    let agent = Agent::start_with(files, &options);
    agent.wait_ready(Duration::from_secs(5)).await;
    let minted = agent.wait_credential(Duration::from_secs(5)).await;
    assert_eq!(agent.post_rotate().await, 200);

    // Secrets are added, confirmed, retired and deleted meanwhile.
    let realm = agent.files.realm.clone();
    let db = agent.userdb().display().to_string();
    let mut seen = std::collections::BTreeSet::new();
    let mut deleted = false;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until && !deleted {
        let now = listed(&turnadmin(&["-S", "-b", &db]), &realm);
        deleted = seen.iter().any(|secret| !now.contains(secret));
        seen.extend(now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(deleted, "no secret was deleted: {seen:?}");
    assert!(seen.len() >= 2, "{seen:?}");

    // Neither turnadmin nor turnserver ever had a secret on its command line.
    let argv = std::fs::read_to_string(dir.join("argv.log")).unwrap_or_default();
    let turnserver_argv: Vec<String> = agent
        .turnservers()
        .iter()
        .map(|pid| {
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
                .into_owned()
        })
        .collect();
    for secret in &seen {
        assert!(
            !argv.contains(secret.as_str()),
            "a secret was on turnadmin's argv"
        );
        for cmdline in &turnserver_argv {
            assert!(
                !cmdline.contains(secret.as_str()),
                "a secret was on turnserver's argv"
            );
        }
    }
    let mut secrets: Vec<String> = seen.into_iter().collect();
    secrets.push(minted.password);
    assert_log_has_none_of(&agent, &secrets);

    // The database is private and in WAL mode.
    let mode = std::fs::metadata(agent.userdb())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "user database mode {:o}", mode & 0o777);
}

#[tokio::test]
async fn live_rest_api_secrets_are_bounded() {
    // Scheduled rotations alone keep ceil(max_ttl / rotate_interval) + 2 = 5.
    let agent = Agent::start(options(
        "mode = \"rest-api\"\nrotate_interval = \"2s\"\nlifetime = \"3s\"\nmax_ttl = \"5s\"\ngrace = \"1s\"\nrotate_min_interval = \"0s\"\nmax_live_secrets = 5\n",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;
    let realm = agent.files.realm.clone();
    let db = agent.userdb().display().to_string();
    let mut statuses = Vec::new();
    let mut most = 0;
    for _ in 0..20 {
        statuses.push(agent.post_rotate().await);
        most = most.max(listed(&turnadmin(&["-S", "-b", &db]), &realm).len());
    }
    assert!(most <= 5, "{most} live secrets");
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        refused >= 10 && statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let (_, body) = agent.get("/status").await.unwrap();
    assert!(body["credentials"]["live_in_database"].as_u64().unwrap() <= 5);
}

#[tokio::test]
async fn no_valid_credential_is_refused_while_rotations_write_the_database() {
    let agent = Agent::start(options(
        "rotate_min_interval = \"0s\"\n[access]\nrate_limit_per_second = 0.0\n",
    ));
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;

    // The database is private and in WAL mode, as coturn's own sqlite3
    // client reads it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.userdb())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "user database mode {:o}", mode & 0o777);
    let journal = std::process::Command::new("sqlite3")
        .arg(agent.userdb())
        .arg("PRAGMA journal_mode")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&journal.stdout).trim(), "wal");

    // A rotation every 0.2 s (turnadmin writes and lists; slower when
    // the machine is busy) while three clients allocate with whatever is
    // served, back to back.
    let until = Instant::now() + Duration::from_secs(8);
    let agent = std::sync::Arc::new(agent);
    let rotator = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut rotations = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < until {
                tick.tick().await;
                if agent.post_rotate().await == 200 {
                    rotations += 1;
                }
            }
            rotations
        })
    };
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let agent = agent.clone();
        clients.spawn(async move {
            let (mut allocated, mut rejected, mut other) = (0, Vec::new(), Vec::new());
            let mut no_port = 0;
            while Instant::now() < until {
                let Some(served) = agent.credential("").await else {
                    other.push("no credential served".to_string());
                    continue;
                };
                let password = turn_agent::secret::Secret::new(served.password);
                match turn_agent::turn_check::allocate_and_release(
                    agent.turn_addr(),
                    &served.userid,
                    &password,
                    Duration::from_secs(2),
                )
                .await
                {
                    Ok(_) => allocated += 1,
                    Err(turn_agent::turn_check::TurnCheckError::AuthRejected(reason)) => {
                        rejected.push(reason)
                    }
                    // The test's 100 relay ports run out under this load
                    // (coturn answers 508 only after authenticating).
                    Err(turn_agent::turn_check::TurnCheckError::Refused(reason))
                        if reason.starts_with("508") =>
                    {
                        no_port += 1
                    }
                    Err(error) => other.push(error.to_string()),
                }
            }
            (allocated + no_port, rejected, other)
        });
    }
    let (mut allocated, mut rejected, mut other) = (0, Vec::new(), Vec::new());
    for (a, r, o) in clients.join_all().await {
        allocated += a;
        rejected.extend(r);
        other.extend(o);
    }
    let rotations = rotator.await.unwrap();
    eprintln!(
        "{rotations} rotations, {allocated} authenticated allocations, {} rejected, {} other failures",
        rejected.len(),
        other.len()
    );
    assert!(rotations >= 5, "only {rotations} rotations");
    assert!(allocated >= 150, "only {allocated} allocations");
    assert!(
        rejected.is_empty(),
        "{} rejected: {rejected:?}",
        rejected.len()
    );
    // Back to back, the kernel hands a client port out again while coturn
    // still holds the previous allocation on it (437 mismatch): a client
    // artefact, not a refused credential.
    assert!(
        other.len() * 10 < allocated,
        "{:?}",
        &other[..other.len().min(5)]
    );
}
