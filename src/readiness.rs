//! Whether this host can serve right now. `/readyz`, `/status`, systemd's
//! READY=1, the registry and the metrics all read it here, so they never
//! disagree about what "ready" means.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use crate::status::{
    not_ready_reason, CredentialStatus, HealthStatus, SelfCheckStatus, SupervisorStatus,
    WithdrawReason,
};

/// The three status channels readiness depends on. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub supervisor: watch::Receiver<SupervisorStatus>,
    pub credentials: watch::Receiver<CredentialStatus>,
    pub health: watch::Receiver<HealthStatus>,
}

/// One reading of all three, taken together.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub turnserver: SupervisorStatus,
    pub credentials: CredentialStatus,
    pub health: HealthStatus,
}

impl Readiness {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            turnserver: self.supervisor.borrow().clone(),
            credentials: self.credentials.borrow().clone(),
            health: self.health.borrow().clone(),
        }
    }

    /// Why this host cannot serve, or `None` when it can.
    pub fn not_ready_reason(&self) -> Option<String> {
        not_ready_reason(
            &self.supervisor.borrow(),
            &self.credentials.borrow(),
            &self.health.borrow(),
        )
    }

    /// Waits until any of the three changes; never returns once all are
    /// closed (the agent is exiting).
    pub async fn changed(&mut self) {
        tokio::select! {
            Ok(()) = self.supervisor.changed() => {}
            Ok(()) = self.credentials.changed() => {}
            Ok(()) = self.health.changed() => {}
            else => std::future::pending().await,
        }
    }
}

impl Snapshot {
    pub fn not_ready_reason(&self) -> Option<String> {
        not_ready_reason(&self.turnserver, &self.credentials, &self.health)
    }
}

/// The health channel's writers, one per party: whether the host is
/// withdrawn, and why, has one owner (this channel), and each party can
/// only set its own part, so nobody overwrites another's reason.
#[derive(Debug)]
pub struct HealthWriters {
    pub self_check: SelfCheckReport,
    pub drain: Withdraw,
    pub reconfigure: Withdraw,
}

/// The one health channel: its writers and a receiver for [`Readiness`].
pub fn health_channel() -> (HealthWriters, watch::Receiver<HealthStatus>) {
    let (sender, receiver) = watch::channel(HealthStatus::default());
    let channel = Arc::new(sender);
    let writers = HealthWriters {
        self_check: SelfCheckReport {
            channel: channel.clone(),
        },
        drain: Withdraw {
            channel: channel.clone(),
            reason: WithdrawReason::Draining,
        },
        reconfigure: Withdraw {
            channel,
            reason: WithdrawReason::Reconfiguring,
        },
    };
    (writers, receiver)
}

/// One party's withdrawal: sets and clears its own reason only. Clones
/// share the reason (the same party, in another task).
#[derive(Debug, Clone)]
pub struct Withdraw {
    channel: Arc<watch::Sender<HealthStatus>>,
    reason: WithdrawReason,
}

impl Withdraw {
    /// Withdraws the host for this party's reason.
    pub fn set(&self) {
        self.channel
            .send_if_modified(|health| health.withdrawal.set(self.reason));
    }

    /// Takes this party's reason back; other reasons stay.
    pub fn clear(&self) {
        self.channel
            .send_if_modified(|health| health.withdrawal.clear(self.reason));
    }

    pub fn is_set(&self) -> bool {
        self.channel.borrow().withdrawal.contains(self.reason)
    }
}

/// The self-check's writer: changes the self-check's part only.
#[derive(Debug)]
pub struct SelfCheckReport {
    channel: Arc<watch::Sender<HealthStatus>>,
}

impl SelfCheckReport {
    /// Applies `change` to the self-check's part; readers wake only when
    /// it changed something.
    pub fn update(&self, change: impl FnOnce(&mut SelfCheckStatus)) {
        self.channel.send_if_modified(|health| {
            let before = health.self_check.clone();
            change(&mut health.self_check);
            health.self_check != before
        });
    }

    pub fn current(&self) -> SelfCheckStatus {
        self.channel.borrow().self_check.clone()
    }

    /// Whether the host is withdrawn for `reason` (a turnserver being
    /// replaced is not checked).
    pub fn withdrawn_for(&self, reason: WithdrawReason) -> bool {
        self.channel.borrow().withdrawal.contains(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drain and reconfiguration each hold their own reason; the end of a
    /// reconfiguration does not list a draining host again, and the
    /// self-check's reports touch neither.
    #[test]
    fn each_writer_changes_only_its_own_part() {
        let (writers, health) = health_channel();
        writers.drain.set();
        writers.reconfigure.set();
        writers.self_check.update(|check| {
            check.checks += 1;
            check.failing = true;
        });
        assert!(health
            .borrow()
            .withdrawal
            .contains(WithdrawReason::Draining));
        assert!(health
            .borrow()
            .withdrawal
            .contains(WithdrawReason::Reconfiguring));

        writers.reconfigure.clear();
        assert!(!writers.reconfigure.is_set());
        assert!(writers.drain.is_set(), "drain's reason stays");
        assert_eq!(
            health.borrow().withdrawal.first(),
            Some(WithdrawReason::Draining)
        );
        assert!(health.borrow().self_check.failing);

        writers
            .self_check
            .update(|check| *check = SelfCheckStatus::default());
        assert!(writers.drain.is_set(), "a self-check report keeps it");
        writers.drain.clear();
        assert_eq!(*health.borrow(), HealthStatus::default());
    }

    /// Readers wake on a change, not on a write that changes nothing.
    #[test]
    fn readers_wake_only_on_changes() {
        let (writers, mut health) = health_channel();
        health.mark_unchanged();
        writers.reconfigure.clear();
        writers.self_check.update(|_| {});
        assert!(!health.has_changed().unwrap());
        writers.reconfigure.set();
        assert!(health.has_changed().unwrap());
        health.mark_unchanged();
        writers.reconfigure.set();
        assert!(!health.has_changed().unwrap());
        assert!(writers
            .self_check
            .withdrawn_for(WithdrawReason::Reconfiguring));
    }
}
