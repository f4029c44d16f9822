//! What the long-lived tasks publish about themselves, as plain data, and
//! the one rule that reads them: whether this host can serve, and if not,
//! why (pure).
//!
//! The types live here, in the core, so readiness, metrics and the API read
//! them without importing the tasks that write them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialMode {
    /// Long-term users added and removed with `turnadmin -a/-d`.
    LongTerm,
    /// coturn's `--use-auth-secret`: shared secrets, per-request HMAC credentials.
    RestApi,
}

/// Where the supervised turnserver is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Spawned, no STUN answer yet.
    Starting,
    /// Answered the last probe.
    Ready,
    /// Was ready, has missed at least one probe since.
    Unhealthy,
    /// Exited or was killed; waiting before the next spawn.
    BackingOff,
    /// The supervisor has stopped it for good.
    Stopped,
}

/// What the supervisor publishes to the rest of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupervisorStatus {
    pub phase: Phase,
    pub pid: Option<u32>,
    /// Spawns after the first one.
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub crash_loop: bool,
    pub consecutive_probe_failures: u32,
    /// Set while backing off.
    pub next_restart_in_ms: Option<u64>,
}

impl SupervisorStatus {
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// A short reason for `/readyz` when not ready.
    pub fn reason(&self) -> String {
        match self.phase {
            Phase::Ready => "turnserver is ready".into(),
            Phase::Starting => "turnserver is starting".into(),
            Phase::Unhealthy => format!(
                "turnserver missed {} STUN probe(s)",
                self.consecutive_probe_failures
            ),
            Phase::BackingOff if self.crash_loop => format!(
                "turnserver is in a crash loop (last exit: {})",
                self.last_exit.as_deref().unwrap_or("unknown")
            ),
            Phase::BackingOff => format!(
                "turnserver exited ({}), restarting",
                self.last_exit.as_deref().unwrap_or("unknown")
            ),
            Phase::Stopped => "turnserver is stopped".into(),
        }
    }
}

impl Default for SupervisorStatus {
    fn default() -> Self {
        SupervisorStatus {
            phase: Phase::Starting,
            pid: None,
            restarts: 0,
            last_exit: None,
            crash_loop: false,
            consecutive_probe_failures: 0,
            next_restart_in_ms: None,
        }
    }
}

/// What `/readyz` and metrics show about credentials. Never a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialStatus {
    pub mode: CredentialMode,
    /// The realm the served credential belongs to (long-term users and
    /// secrets are per realm).
    pub realm: String,
    /// Fresh starts for a new realm, mode or database (see
    /// `credentials::needs_fresh_start`): a reload waits for this to move.
    pub generation: u64,
    /// A valid credential can be served right now.
    pub available: bool,
    /// Long-term mode: the served username.
    pub username: Option<String>,
    /// Unix seconds: creation and expiry of the served long-term credential.
    pub issued_at: Option<u64>,
    pub expires_at: Option<u64>,
    /// Agent users (long-term) or secrets (REST API) in coturn's database.
    pub live_in_database: usize,
    /// Agent users or secrets past their expiry plus grace that are still
    /// in the database because their deletion failed; retried with backoff,
    /// also after a restart (they stay in the state file until a listing
    /// confirms them gone).
    pub pending_deletions: usize,
    /// Failed deletions since start.
    pub deletion_failures: u64,
    pub next_rotation_at: Option<u64>,
    pub rotations: u64,
    /// Failed reconciliations and rotations since start.
    pub failures: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl CredentialStatus {
    /// Nothing available yet, no rotation so far.
    pub fn new(mode: CredentialMode) -> Self {
        CredentialStatus {
            mode,
            realm: String::new(),
            generation: 0,
            available: false,
            username: None,
            issued_at: None,
            expires_at: None,
            live_in_database: 0,
            pending_deletions: 0,
            deletion_failures: 0,
            next_rotation_at: None,
            rotations: 0,
            failures: 0,
            consecutive_failures: 0,
            last_error: None,
        }
    }
}

/// What `/readyz`, metrics and the registry know about the self-check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    pub enabled: bool,
    pub checks: u64,
    pub consecutive_failures: u32,
    /// `consecutive_failures` reached `self_check_failures`.
    pub failing: bool,
    pub last_error: Option<String>,
    pub last_ok_unix: Option<u64>,
    /// The host is draining: not ready, on purpose.
    pub draining: bool,
    /// turnserver is being replaced for a new configuration: not ready, on
    /// purpose, and not checked.
    pub reconfiguring: bool,
}

/// What `/readyz` shows about the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RegistryStatus {
    pub enabled: bool,
    pub connected: bool,
    pub published: bool,
    pub session: Option<String>,
    pub writes: u64,
    /// Deletions while the agent ran (turnserver down, no credential).
    pub withdrawals: u64,
    /// Unix seconds of the last create or update.
    pub last_write_unix: Option<u64>,
    pub free_traffic_mbps: Option<f64>,
    /// `traffic.capacity_mbps` as currently configured.
    pub capacity_mbps: f64,
    pub last_error: Option<String>,
}

/// Not ready while draining or being reconfigured (on purpose), while
/// turnserver does not answer STUN, while no valid credential exists, or
/// while the allocation self-check fails; the first that applies is the
/// reason.
pub fn not_ready_reason(
    turnserver: &SupervisorStatus,
    credentials: &CredentialStatus,
    health: &HealthStatus,
) -> Option<String> {
    if health.draining {
        Some("draining".to_string())
    } else if health.reconfiguring {
        Some("restarting turnserver for a new configuration".to_string())
    } else if !turnserver.is_ready() {
        Some(turnserver.reason())
    } else if !credentials.available {
        Some(match &credentials.last_error {
            Some(error) => format!("no valid credential: {error}"),
            None => "no valid credential yet".to_string(),
        })
    } else if health.failing {
        Some(format!(
            "self-check failing {} time(s) in a row: {}",
            health.consecutive_failures,
            health.last_error.as_deref().unwrap_or("unknown")
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
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
            enabled: true,
            consecutive_failures: 3,
            failing: true,
            last_error: Some("401 Unauthorized".into()),
            ..HealthStatus::default()
        }
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
                HealthStatus {
                    draining: true,
                    ..HealthStatus::default()
                },
                "draining",
            ),
            (
                ready_turnserver(),
                credential(true, None),
                HealthStatus {
                    reconfiguring: true,
                    ..HealthStatus::default()
                },
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
        let mut health = HealthStatus {
            draining: true,
            reconfiguring: true,
            ..failing_check()
        };
        let reason = |t: &SupervisorStatus, c: &CredentialStatus, h: &HealthStatus| {
            not_ready_reason(t, c, h).unwrap_or_default()
        };
        assert_eq!(reason(&turnserver, &credentials, &health), "draining");
        health.draining = false;
        assert_eq!(
            reason(&turnserver, &credentials, &health),
            "restarting turnserver for a new configuration"
        );
        health.reconfiguring = false;
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
        health.failing = false;
        assert_eq!(not_ready_reason(&turnserver, &credentials, &health), None);
    }
}
