use super::*;

fn ready_turnserver() -> SupervisorStatus {
    SupervisorStatus {
        phase: Phase::Ready,
        pid: Some(7),
        ..SupervisorStatus::default()
    }
}

fn credential(available: bool, last_error: Option<&str>) -> CredentialStatus {
    CredentialStatus {
        available,
        last_error: last_error.map(str::to_string),
        ..CredentialStatus::new(CredentialMode::LongTerm)
    }
}

fn failing_check() -> HealthStatus {
    HealthStatus {
        self_check: SelfCheckStatus {
            enabled: true,
            consecutive_failures: 3,
            failing: true,
            last_error: Some("401 Unauthorized".into()),
            ..SelfCheckStatus::default()
        },
        ..HealthStatus::default()
    }
}

fn withdrawn(reasons: &[WithdrawReason]) -> HealthStatus {
    let mut health = HealthStatus::default();
    for reason in reasons {
        health.withdrawal.set(*reason);
    }
    health
}

#[test]
fn ready_when_nothing_holds_it_back() {
    assert_eq!(
        not_ready_reason(
            &ready_turnserver(),
            &credential(true, None),
            &HealthStatus::default()
        ),
        None
    );
}

/// Every cause alone gives its own text.
#[test]
fn each_reason_alone() {
    let starting = SupervisorStatus::default();
    let cases: Vec<(SupervisorStatus, CredentialStatus, HealthStatus, &str)> = vec![
        (
            ready_turnserver(),
            credential(true, None),
            withdrawn(&[WithdrawReason::Draining]),
            "draining",
        ),
        (
            ready_turnserver(),
            credential(true, None),
            withdrawn(&[WithdrawReason::Reconfiguring]),
            "restarting turnserver for a new configuration",
        ),
        (
            starting,
            credential(true, None),
            HealthStatus::default(),
            "turnserver is starting",
        ),
        (
            ready_turnserver(),
            credential(false, None),
            HealthStatus::default(),
            "no valid credential yet",
        ),
        (
            ready_turnserver(),
            credential(false, Some("turnadmin failed")),
            HealthStatus::default(),
            "no valid credential: turnadmin failed",
        ),
        (
            ready_turnserver(),
            credential(true, None),
            failing_check(),
            "self-check failing 3 time(s) in a row: 401 Unauthorized",
        ),
    ];
    for (turnserver, credentials, health, expected) in cases {
        assert_eq!(
            not_ready_reason(&turnserver, &credentials, &health).as_deref(),
            Some(expected),
            "{health:?}"
        );
    }
}

/// With every cause at once the reason is the first in the order
/// draining, reconfiguring, turnserver, credential, self-check;
/// taking them away one by one reveals the next.
#[test]
fn precedence_of_reasons() {
    let mut turnserver = SupervisorStatus::default();
    let mut credentials = credential(false, None);
    let mut health = failing_check();
    health.withdrawal.set(WithdrawReason::Draining);
    health.withdrawal.set(WithdrawReason::Reconfiguring);
    let reason = |t: &SupervisorStatus, c: &CredentialStatus, h: &HealthStatus| {
        not_ready_reason(t, c, h).unwrap_or_default()
    };
    assert_eq!(reason(&turnserver, &credentials, &health), "draining");
    health.withdrawal.clear(WithdrawReason::Draining);
    assert_eq!(
        reason(&turnserver, &credentials, &health),
        "restarting turnserver for a new configuration"
    );
    health.withdrawal.clear(WithdrawReason::Reconfiguring);
    assert_eq!(
        reason(&turnserver, &credentials, &health),
        "turnserver is starting"
    );
    turnserver = ready_turnserver();
    assert_eq!(
        reason(&turnserver, &credentials, &health),
        "no valid credential yet"
    );
    credentials.available = true;
    assert!(reason(&turnserver, &credentials, &health).starts_with("self-check failing"));
    health.self_check.failing = false;
    assert_eq!(not_ready_reason(&turnserver, &credentials, &health), None);
}

/// Several reasons at once; clearing one keeps the others; setting
/// twice is one reason; draining is shown before reconfiguring
/// whichever came first.
#[test]
fn withdrawal_is_a_set_of_reasons() {
    use WithdrawReason::{Draining, Reconfiguring};
    /// `(true, r)` sets `r`, `(false, r)` clears it.
    type Steps = Vec<(bool, WithdrawReason)>;
    // (steps, set afterwards, reason shown)
    let cases: Vec<(Steps, Vec<WithdrawReason>, Option<WithdrawReason>)> = vec![
        (vec![], vec![], None),
        (vec![(true, Draining)], vec![Draining], Some(Draining)),
        (
            vec![(true, Reconfiguring), (true, Draining)],
            vec![Draining, Reconfiguring],
            Some(Draining),
        ),
        (
            vec![(true, Draining), (true, Reconfiguring)],
            vec![Draining, Reconfiguring],
            Some(Draining),
        ),
        (
            vec![
                (true, Draining),
                (true, Reconfiguring),
                (false, Reconfiguring),
            ],
            vec![Draining],
            Some(Draining),
        ),
        (
            vec![(true, Reconfiguring), (true, Draining), (false, Draining)],
            vec![Reconfiguring],
            Some(Reconfiguring),
        ),
        (
            vec![(true, Draining), (true, Draining), (false, Draining)],
            vec![],
            None,
        ),
        (vec![(false, Reconfiguring)], vec![], None),
    ];
    for (steps, expected, shown) in cases {
        let mut withdrawal = Withdrawal::default();
        for (set, reason) in &steps {
            if *set {
                withdrawal.set(*reason);
            } else {
                withdrawal.clear(*reason);
            }
        }
        let now: Vec<_> = WithdrawReason::ALL
            .into_iter()
            .filter(|reason| withdrawal.contains(*reason))
            .collect();
        assert_eq!(now, expected, "{steps:?}");
        assert_eq!(withdrawal.first(), shown, "{steps:?}");
    }
}

#[test]
fn set_and_clear_say_whether_they_changed_anything() {
    let mut withdrawal = Withdrawal::default();
    assert!(withdrawal.set(WithdrawReason::Draining));
    assert!(!withdrawal.set(WithdrawReason::Draining));
    assert!(!withdrawal.clear(WithdrawReason::Reconfiguring));
    assert!(withdrawal.clear(WithdrawReason::Draining));
}

/// `/status` keeps its flat `health` object.
#[test]
fn health_renders_flat() {
    let mut health = failing_check();
    health.withdrawal.set(WithdrawReason::Reconfiguring);
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "enabled": true,
            "checks": 0,
            "consecutive_failures": 3,
            "failing": true,
            "last_error": "401 Unauthorized",
            "last_ok_unix": null,
            "draining": false,
            "reconfiguring": true,
        })
    );
}

/// The text is std's for every exit code and signal, so nothing a
/// reader of logs or `/status` sees changed.
#[test]
fn exit_text_is_std_text() {
    let mut raws: Vec<i32> = (0..=255).map(|code| code << 8).collect();
    raws.extend(1..=64);
    raws.extend((1..=31).map(|signal| signal | 0x80));
    for raw in raws {
        let status = ExitStatus::from_raw(raw);
        assert_eq!(
            ChildExit::from_status(status).to_string(),
            status.to_string(),
            "wait status {raw:#x}"
        );
    }
}

/// The number metrics export, from the value (it used to be parsed
/// back out of the text).
#[test]
fn exit_numbers() {
    let killed = ChildExit::Signalled {
        signal: 9,
        core_dumped: false,
    };
    let cases = [
        (ChildExit::Exited(255), Some(255)),
        (ChildExit::Exited(0), Some(0)),
        (killed.clone(), Some(9)),
        (
            ChildExit::Signalled {
                signal: 11,
                core_dumped: true,
            },
            Some(11),
        ),
        (
            ChildExit::Hung {
                reason: "3 STUN probes failed in a row (timeout)".into(),
                then: Box::new(killed.clone()),
            },
            Some(9),
        ),
        (
            ChildExit::SpawnFailed("No such file or directory".into()),
            None,
        ),
        (ChildExit::WaitFailed("interrupted".into()), None),
    ];
    for (exit, number) in cases {
        assert_eq!(exit.number(), number, "{exit}");
    }
}

#[test]
fn exit_renders_as_text_in_status() {
    let hung = ChildExit::Hung {
        reason: "3 STUN probes failed in a row (timeout)".into(),
        then: Box::new(ChildExit::Signalled {
            signal: 9,
            core_dumped: false,
        }),
    };
    assert_eq!(
        hung.to_string(),
        "hung: 3 STUN probes failed in a row (timeout); signal: 9 (SIGKILL)"
    );
    assert_eq!(
        ChildExit::SpawnFailed("No such file or directory (os error 2)".into()).to_string(),
        "spawn failed: No such file or directory (os error 2)"
    );
    let status = SupervisorStatus {
        phase: Phase::BackingOff,
        last_exit: Some(ChildExit::Exited(1)),
        ..SupervisorStatus::default()
    };
    assert_eq!(
        serde_json::to_value(&status).unwrap()["last_exit"],
        "exit status: 1"
    );
    assert_eq!(
        status.reason(),
        "turnserver exited (exit status: 1), restarting"
    );
    let never = SupervisorStatus {
        phase: Phase::BackingOff,
        ..SupervisorStatus::default()
    };
    assert_eq!(never.reason(), "turnserver exited (unknown), restarting");
}
