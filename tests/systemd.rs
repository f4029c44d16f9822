//! The systemd unit and the notify protocol the agent speaks to it.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn unit_passes_systemd_analyze_verify_without_warnings() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/turn-agent.service"
    ))
    .unwrap();
    for expected in [
        "Type=notify",
        "Restart=always",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/turn-agent /run/turn-agent",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(expected), "unit lacks {expected}");
    }
    // verify checks that ExecStart= exists: point it at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turn-agent.service");
    std::fs::write(&path, unit.replace("/usr/bin/turn-agent", AGENT_BIN)).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze warned:\n{stderr}"
    );
}

#[tokio::test]
async fn agent_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    let options = AgentOptions {
        env: vec![
            ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..AgentOptions::default()
    };
    let mut agent = Agent::start(options);
    let mut received = String::new();
    let mut buffer = [0u8; 4096];
    let mut read_more = |received: &mut String| {
        while let Ok(length) = socket.recv(&mut buffer) {
            received.push_str(&String::from_utf8_lossy(&buffer[..length]));
            received.push('\n');
        }
    };

    wait_for(
        Duration::from_secs(5),
        "READY=1 and a WATCHDOG=1 ping",
        || {
            read_more(&mut received);
            let done = received.contains("READY=1") && received.contains("WATCHDOG=1");
            async move { done.then_some(()) }
        },
    )
    .await;
    // READY=1 comes only once turnserver answers and a credential exists.
    let (status, body) = agent.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}\n{received}");
    assert!(received.contains("STATUS=ready"), "{received}");

    agent.signal(Signal::SIGTERM);
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    read_more(&mut received);
    assert!(received.contains("STOPPING=1"), "{received}");
}
