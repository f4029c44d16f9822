//! The TURN self-check client against a real turnserver.

mod common;

use std::time::Duration;

use common::*;
use turn_agent::secret::Secret;
use turn_agent::turn_check::{allocate_and_release, TurnCheckError};

#[tokio::test]
async fn served_credential_allocates_and_a_wrong_one_is_rejected() {
    let agent = Agent::start(AgentOptions::default());
    agent.wait_ready(Duration::from_secs(5)).await;
    let served = agent.wait_credential(Duration::from_secs(5)).await;
    let took = allocate_and_release(
        agent.turn_addr(),
        &served.userid,
        &Secret::new(served.password.clone()),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    eprintln!("allocate + release took {took:?}");

    let rejected = allocate_and_release(
        agent.turn_addr(),
        &served.userid,
        &Secret::new("wrong-password"),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(rejected, TurnCheckError::AuthRejected(_)),
        "{rejected}"
    );
    assert!(!rejected.to_string().contains("wrong-password"));

    let nobody = allocate_and_release(
        ([127, 0, 0, 1], free_port()).into(),
        &served.userid,
        &Secret::new(served.password),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(nobody, TurnCheckError::Timeout(_) | TurnCheckError::Io(_)),
        "{nobody}"
    );
}

#[tokio::test]
async fn rest_api_credentials_pass_until_they_expire() {
    let agent = Agent::start(AgentOptions {
        extra: "mode = \"rest-api\"\n".into(),
        ..AgentOptions::default()
    });
    agent.wait_ready(Duration::from_secs(5)).await;
    let minted = wait_for(Duration::from_secs(5), "a minted credential", || {
        agent.credential("?ttl=1")
    })
    .await;
    allocate_and_release(
        agent.turn_addr(),
        &minted.userid,
        &Secret::new(minted.password.clone()),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    // turnserver reads a clock it refreshes once a second: give it that
    // second after the expiry.
    wait_for(
        Duration::from_secs(5),
        "the minted credential to expire",
        || {
            let expired = unix_now_secs() * 1000 > minted.expired_time + 1000;
            async move { expired.then_some(()) }
        },
    )
    .await;
    let error = allocate_and_release(
        agent.turn_addr(),
        &minted.userid,
        &Secret::new(minted.password),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, TurnCheckError::AuthRejected(_)), "{error}");
}

#[tokio::test]
async fn selfcheck_command_reports_success_and_failure() {
    let agent = Agent::start(AgentOptions::default());
    agent.wait_ready(Duration::from_secs(5)).await;
    agent.wait_credential(Duration::from_secs(5)).await;
    let config = agent.files.config_path.display().to_string();
    let (code, stdout, stderr) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || run_agent_cli(&["selfcheck", "--config", &config], &[]))
            .await
            .unwrap()
    };
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok: ta1-"), "{stdout}");

    // The served user deleted by hand: coturn rejects it, and the check says so.
    let served = agent.credential("").await.unwrap();
    agent.delete_user_by_hand(&served.userid);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        run_agent_cli(&["selfcheck", "--config", &config], &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("rejected the credential"), "{stderr}");
}
