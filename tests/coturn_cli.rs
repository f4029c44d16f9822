//! The CLI client against a real turnserver 4.6.1: login, `ps` with live
//! allocations held by turnutils_uclient, `pc` counters, `cs` ending a
//! session, and a wrong password.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, free_tcp_port, hold_allocations, relay_range, wait_for};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use turn_agent::coturn_cli::client::{CliClient, CliError};
use turn_agent::coturn_cli::conversation::ConversationError;
use turn_agent::secret::Secret;

const REALM: &str = "example.org";
const CLI_PASSWORD: &str = "cli-pw-for-tests";

struct Turnserver {
    _dir: tempfile::TempDir,
    _child: Child,
    port: u16,
    cli: SocketAddr,
}

/// turnserver with its CLI on a free loopback port; the CLI password sits in
/// a 0600 config file, never on the command line.
async fn start_turnserver(user: &str, password: &str) -> Turnserver {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("turndb");
    let added = std::process::Command::new("turnadmin")
        .args(["-a", "-b"])
        .arg(&db)
        .args(["-u", user, "-r", REALM, "-p", password])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(added.status.success());
    let cli_port = free_tcp_port();
    let config = dir.path().join("turnserver.conf");
    std::fs::write(
        &config,
        format!("cli-ip=127.0.0.1\ncli-port={cli_port}\ncli-password={CLI_PASSWORD}\n"),
    )
    .unwrap();
    let port = free_port();
    let (min, max) = relay_range();
    let child = Command::new("turnserver")
        .arg("-c")
        .arg(&config)
        .args([
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            "--no-tls",
            "--no-dtls",
            "--log-file=stdout",
            "--simple-log",
            "--lt-cred-mech",
            "--no-stun-backward-compatibility",
            "--allow-loopback-peers",
        ])
        .arg(format!("--listening-port={port}"))
        .arg(format!("--min-port={min}"))
        .arg(format!("--max-port={max}"))
        .arg(format!("--realm={REALM}"))
        .arg(format!("--userdb={}", db.display()))
        .arg(format!(
            "--pidfile={}",
            dir.path().join("turnserver.pid").display()
        ))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let cli: SocketAddr = ([127, 0, 0, 1], cli_port).into();
    wait_for(
        Duration::from_secs(10),
        "turnserver's CLI to listen",
        || async move { tokio::net::TcpStream::connect(cli).await.ok().map(drop) },
    )
    .await;
    Turnserver {
        _dir: dir,
        _child: child,
        port,
        cli,
    }
}

#[tokio::test]
async fn sessions_are_listed_counted_and_ended_through_the_cli() {
    let server = start_turnserver("carol", "carol-pw").await;
    let mut cli = CliClient::new(
        server.cli,
        Secret::new(CLI_PASSWORD),
        Duration::from_secs(5),
    );
    let idle = cli.sessions().await.unwrap();
    assert_eq!(idle.total, 0);
    assert!(idle.is_complete());
    assert_eq!(cli.counters().await.unwrap().total_current_allocations, 0);

    let _uclient = hold_allocations(server.port, "carol", "carol-pw");
    let shared = Arc::new(Mutex::new(cli));
    let listing = wait_for(Duration::from_secs(15), "carol's sessions", || {
        let cli = shared.clone();
        async move {
            let listing = cli.lock().await.sessions().await.unwrap();
            (listing.total > 0).then_some(listing)
        }
    })
    .await;
    assert!(listing.is_complete());
    assert!(listing.sessions.iter().all(|s| s.user == "carol"));
    assert!(listing
        .sessions
        .iter()
        .all(|s| s.realm.as_deref() == Some(REALM) && !s.relay_addrs.is_empty()));
    // uclient may still be opening its second allocation: wait until the
    // two views agree.
    let listing = wait_for(Duration::from_secs(10), "ps and pc to agree", || {
        let cli = shared.clone();
        async move {
            let mut cli = cli.lock().await;
            let listing = cli.sessions().await.unwrap();
            let allocations = cli.counters().await.unwrap().total_current_allocations;
            (allocations == listing.total).then_some(listing)
        }
    })
    .await;
    let mut cli = shared.lock().await;

    // End every session; coturn prints nothing, so a fresh listing judges.
    for session in &listing.sessions {
        cli.cancel(session.id).await.unwrap();
    }
    let ended: Vec<_> = listing.sessions.iter().map(|s| s.id).collect();
    drop(cli);
    wait_for(
        Duration::from_secs(10),
        "the cancelled sessions to end",
        || {
            let cli = shared.clone();
            let ended = ended.clone();
            async move {
                let now = cli.lock().await.sessions().await.unwrap();
                (!now.sessions.iter().any(|s| ended.contains(&s.id))).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_an_error_and_the_client_recovers() {
    let server = start_turnserver("dave", "dave-pw").await;
    let mut wrong = CliClient::new(server.cli, Secret::new("nope"), Duration::from_secs(5));
    assert!(matches!(
        wrong.sessions().await,
        Err(CliError::Conversation(ConversationError::WrongPassword))
    ));
    let mut right = CliClient::new(
        server.cli,
        Secret::new(CLI_PASSWORD),
        Duration::from_secs(5),
    );
    assert_eq!(right.sessions().await.unwrap().total, 0);
    // Nothing listens: a connect error, not a hang.
    let mut nobody = CliClient::new(
        ([127, 0, 0, 1], free_tcp_port()).into(),
        Secret::new(CLI_PASSWORD),
        Duration::from_secs(5),
    );
    assert!(matches!(nobody.sessions().await, Err(CliError::Connect(_))));
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    // Accepts and never speaks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let _accepted = listener.accept().await;
        std::future::pending::<()>().await;
    });
    let mut cli = CliClient::new(address, Secret::new("x"), Duration::from_millis(300));
    assert!(matches!(cli.sessions().await, Err(CliError::Timeout(_))));
}
