//! Client-controlled text in turnserver's output cannot forge agent log records.

mod common;

use std::time::Duration;

use common::*;
use turn_agent::secret::Secret;
use turn_agent::turn_check::allocate_and_release;

#[tokio::test]
async fn a_turn_username_with_a_line_break_cannot_forge_a_log_record() {
    let agent = Agent::start(AgentOptions::default());
    agent.wait_ready(Duration::from_secs(5)).await;
    // No valid credential is needed: turnserver logs the USERNAME of a
    // rejected Allocate as the client sent it.
    let username = "bob\r\nINFO forged record\x1b[31m";
    let _ = allocate_and_release(
        agent.turn_addr(),
        username,
        &Secret::new("wrong-password"),
        Duration::from_secs(2),
    )
    .await;
    // turnserver logs the session's user when it ends or is refused.
    agent
        .wait_log("INFO forged record", Duration::from_secs(10))
        .await;
    let log = agent.log();
    // One turnserver message stays one record: the client's line break is
    // shown escaped inside it, never as a record of its own.
    let records: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("forged record"))
        .collect();
    assert!(!records.is_empty(), "{log}");
    for record in &records {
        assert!(
            record.contains("bob\\r\\nINFO forged record\\u{1b}[31m"),
            "a record split at the client's line break: {record:?}\n{log}"
        );
    }
    let forged: Vec<&str> = log
        .lines()
        .filter(|line| line.trim_start().starts_with("INFO forged"))
        .collect();
    assert!(forged.is_empty(), "forged records: {forged:?}\n{log}");
    assert!(!log.contains('\x1b'), "an escape reached the log:\n{log}");
    assert!(
        !log.contains('\r'),
        "a carriage return reached the log:\n{log}"
    );
}
