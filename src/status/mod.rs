//! What the long-lived tasks publish about themselves, as plain data, and
//! the one rule that reads them: whether this host can serve, and if not,
//! why (pure).
//!
//! The types live here, in the core, so readiness, metrics and the API read
//! them without importing the tasks that write them.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use serde::{Deserialize, Serialize, Serializer};

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
    /// How the last turnserver ended; rendered as text (`exit status: 1`).
    pub last_exit: Option<ChildExit>,
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
                LastExit(self.last_exit.as_ref())
            ),
            Phase::BackingOff => format!(
                "turnserver exited ({}), restarting",
                LastExit(self.last_exit.as_ref())
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

/// How a turnserver's run ended, as a value: the text `/status` shows and
/// the number metrics export both come from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signalled { signal: i32, core_dumped: bool },
    /// It stopped answering and was killed; `then` is how that ended it.
    Hung {
        reason: String,
        then: Box<ChildExit>,
    },
    /// It could not be started.
    SpawnFailed(String),
    /// Waiting for it failed.
    WaitFailed(String),
    /// A wait status that is neither an exit nor a signal (std's text).
    Other(String),
}

impl ChildExit {
    /// What a wait for the child returned.
    pub fn from_wait(status: std::io::Result<ExitStatus>) -> ChildExit {
        match status {
            Ok(status) => ChildExit::from_status(status),
            Err(error) => ChildExit::WaitFailed(error.to_string()),
        }
    }

    pub fn from_status(status: ExitStatus) -> ChildExit {
        if let Some(code) = status.code() {
            ChildExit::Exited(code)
        } else if let Some(signal) = status.signal() {
            ChildExit::Signalled {
                signal,
                core_dumped: status.core_dumped(),
            }
        } else {
            ChildExit::Other(status.to_string())
        }
    }

    /// The exit code or signal number (of the kill, for a hung child);
    /// `None` when the child never ran or its end is unknown.
    pub fn number(&self) -> Option<i32> {
        match self {
            ChildExit::Exited(code) => Some(*code),
            ChildExit::Signalled { signal, .. } => Some(*signal),
            ChildExit::Hung { then, .. } => then.number(),
            ChildExit::SpawnFailed(_) | ChildExit::WaitFailed(_) | ChildExit::Other(_) => None,
        }
    }
}

/// The text std gives an exit status (`exit status: 1`, `signal: 9
/// (SIGKILL)`), so logs and `/status` read as they always did.
impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildExit::Exited(code) => write!(f, "exit status: {code}"),
            ChildExit::Signalled {
                signal,
                core_dumped,
            } => {
                write!(f, "signal: {signal}")?;
                if let Ok(name) = nix::sys::signal::Signal::try_from(*signal) {
                    write!(f, " ({})", name.as_str())?;
                }
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
            ChildExit::Hung { reason, then } => write!(f, "hung: {reason}; {then}"),
            ChildExit::SpawnFailed(error) => write!(f, "spawn failed: {error}"),
            ChildExit::WaitFailed(error) => write!(f, "wait failed: {error}"),
            ChildExit::Other(text) => f.write_str(text),
        }
    }
}

impl Serialize for ChildExit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `unknown` for a child that has not ended yet.
struct LastExit<'a>(Option<&'a ChildExit>);

impl fmt::Display for LastExit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(exit) => exit.fmt(f),
            None => f.write_str("unknown"),
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

/// What `/readyz`, metrics and the registry know about the self-check
/// and about withdrawals on purpose: one channel, two parts with one
/// writer each (see `readiness::health_channel`). Rendered flat, as
/// `{enabled, checks, …, draining, reconfiguring}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    /// Written by the self-check only.
    #[serde(flatten)]
    pub self_check: SelfCheckStatus,
    /// One reason per party (drain, reconfiguration); each party sets and
    /// clears only its own.
    #[serde(flatten)]
    pub withdrawal: Withdrawal,
}

/// The allocation self-check's results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SelfCheckStatus {
    pub enabled: bool,
    pub checks: u64,
    pub consecutive_failures: u32,
    /// `consecutive_failures` reached `self_check_failures`.
    pub failing: bool,
    pub last_error: Option<String>,
    pub last_ok_unix: Option<u64>,
}

/// Why the host is withdrawn on purpose. Each reason belongs to one party.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawReason {
    /// The host drains before the agent stops (SIGUSR1, `POST /drain`).
    Draining,
    /// turnserver is being replaced for a new configuration: not ready,
    /// and not self-checked.
    Reconfiguring,
}

impl WithdrawReason {
    /// Every reason, in the order the reason text prefers them.
    pub const ALL: [WithdrawReason; 2] = [WithdrawReason::Draining, WithdrawReason::Reconfiguring];

    /// The reason `/readyz` and systemd show.
    pub fn text(self) -> &'static str {
        match self {
            WithdrawReason::Draining => "draining",
            WithdrawReason::Reconfiguring => "restarting turnserver for a new configuration",
        }
    }
}

/// The set of withdrawals on purpose in effect. Setting or clearing one
/// reason leaves the others as they are, so a reconfiguration that ends
/// cannot list a draining host again. Rendered as `draining` and
/// `reconfiguring` flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Withdrawal {
    draining: bool,
    reconfiguring: bool,
}

impl Withdrawal {
    fn slot(&mut self, reason: WithdrawReason) -> &mut bool {
        match reason {
            WithdrawReason::Draining => &mut self.draining,
            WithdrawReason::Reconfiguring => &mut self.reconfiguring,
        }
    }

    pub fn contains(&self, reason: WithdrawReason) -> bool {
        match reason {
            WithdrawReason::Draining => self.draining,
            WithdrawReason::Reconfiguring => self.reconfiguring,
        }
    }

    /// Adds `reason`; true when it was not set yet.
    pub fn set(&mut self, reason: WithdrawReason) -> bool {
        !std::mem::replace(self.slot(reason), true)
    }

    /// Removes `reason` (only that one); true when it was set.
    pub fn clear(&mut self, reason: WithdrawReason) -> bool {
        std::mem::replace(self.slot(reason), false)
    }

    /// The reason shown while several are set: draining before
    /// reconfiguring.
    pub fn first(&self) -> Option<WithdrawReason> {
        WithdrawReason::ALL
            .into_iter()
            .find(|reason| self.contains(*reason))
    }
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
    let check = &health.self_check;
    if let Some(reason) = health.withdrawal.first() {
        Some(reason.text().to_string())
    } else if !turnserver.is_ready() {
        Some(turnserver.reason())
    } else if !credentials.available {
        Some(match &credentials.last_error {
            Some(error) => format!("no valid credential: {error}"),
            None => "no valid credential yet".to_string(),
        })
    } else if check.failing {
        Some(format!(
            "self-check failing {} time(s) in a row: {}",
            check.consecutive_failures,
            check.last_error.as_deref().unwrap_or("unknown")
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
