//! Whether this host can serve right now. `/readyz`, `/status`, systemd's
//! READY=1, the registry and the metrics all read it here, so they never
//! disagree about what "ready" means.

use serde::Serialize;
use tokio::sync::watch;

use crate::status::{not_ready_reason, CredentialStatus, HealthStatus, SupervisorStatus};

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
