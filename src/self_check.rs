//! The periodic end-to-end check: a real TURN allocation on our own
//! turnserver with the credential we serve.
//!
//! A STUN probe proves turnserver answers; only an allocation proves that
//! clients holding our credential can relay (database readable, user
//! present, realm right). Failing checks make the host not ready, which
//! withdraws its znode; a rejected credential also triggers a rotation,
//! which repairs a user deleted from under us.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backoff::ExponentialBackoff;
use crate::config::{self, ConfigWatch, HealthConfig};
use crate::credentials::{
    unix_now, CredentialRequest, CredentialSource, CredentialStatus, RotateHandle,
};
use crate::readiness::SelfCheckReport;
use crate::status::WithdrawReason;
use crate::supervisor::SupervisorStatus;
use crate::turn_check::{allocate_and_release, TurnCheckError};

/// Defined in the core, so readiness and metrics need nothing of this module.
pub use crate::status::HealthStatus;

/// The first repair after a rejection runs at once; while coturn keeps
/// rejecting, the next ones wait 1 s, 2 s, 4 s ... up to 5 minutes, like
/// turnserver restarts back off. A rotation cannot fix a realm coturn
/// disagrees with, and each one adds a user or secret coturn must try.
const REPAIR_BACKOFF_MIN: Duration = Duration::from_secs(1);
const REPAIR_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// When a rejected credential may trigger a repair rotation (pure: driven
/// by the instants it is given).
#[derive(Debug, Clone)]
pub struct RepairSchedule {
    backoff: ExponentialBackoff,
    not_before: Option<Instant>,
}

impl RepairSchedule {
    pub fn new(backoff: ExponentialBackoff) -> RepairSchedule {
        RepairSchedule {
            backoff,
            not_before: None,
        }
    }

    /// Whether a rejection seen at `now` may repair; if so, the next repair
    /// waits one more backoff step.
    pub fn try_repair(&mut self, now: Instant) -> bool {
        if self.not_before.is_some_and(|at| now < at) {
            return false;
        }
        self.not_before = Some(now + self.backoff.next_delay());
        true
    }

    /// A passing check: the next rejection repairs at once.
    pub fn passed(&mut self) {
        self.backoff.reset();
        self.not_before = None;
    }
}

impl Default for RepairSchedule {
    fn default() -> Self {
        RepairSchedule::new(
            ExponentialBackoff::new(REPAIR_BACKOFF_MIN, REPAIR_BACKOFF_MAX)
                .expect("constant bounds are valid"),
        )
    }
}

pub struct SelfCheck {
    /// The configuration in effect: `[health]`, and turnserver's address,
    /// which a reload may move.
    applied: Arc<config::Config>,
    config_watch: ConfigWatch,
    source: CredentialSource,
    supervisor: watch::Receiver<SupervisorStatus>,
    credentials: watch::Receiver<CredentialStatus>,
    rotate: RotateHandle,
    repairs: RepairSchedule,
    status: SelfCheckReport,
}

impl SelfCheck {
    /// With `health.self_check_interval` 0 the check is off: [`SelfCheck::run`]
    /// only follows the configuration until shutdown. It reports through
    /// `status`, the self-check's part of the health channel.
    pub fn new(
        mut config_watch: ConfigWatch,
        source: CredentialSource,
        supervisor: watch::Receiver<SupervisorStatus>,
        credentials: watch::Receiver<CredentialStatus>,
        rotate: RotateHandle,
        status: SelfCheckReport,
    ) -> SelfCheck {
        let applied = config_watch.borrow_and_update().clone();
        let enabled = applied.health.self_check_interval.is_some();
        status.update(|s| s.enabled = enabled);
        SelfCheck {
            applied,
            config_watch,
            source,
            supervisor,
            credentials,
            rotate,
            repairs: RepairSchedule::default(),
            status,
        }
    }

    #[tracing::instrument(name = "self_check", skip_all)]
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let Some(period) = self.config().self_check_interval else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    latest = config::next_config(&mut self.config_watch) => {
                        self.apply(latest);
                        continue;
                    }
                }
            };
            if !self.run_every(period, &shutdown).await {
                return;
            }
        }
    }

    /// Checks every `period` until shutdown (false) or a new interval
    /// (true).
    async fn run_every(
        &mut self,
        period: std::time::Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                latest = config::next_config(&mut self.config_watch) => {
                    if self.apply(latest) {
                        return true;
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            // Other parts report a turnserver that is down or a missing
            // credential; the check is about what remains. A turnserver
            // being replaced is not checked at all.
            if !self.supervisor.borrow().is_ready()
                || !self.credentials.borrow().available
                || self.status.withdrawn_for(WithdrawReason::Reconfiguring)
            {
                continue;
            }
            let request = CredentialRequest {
                ttl: Some(60),
                user: Some("self-check".into()),
            };
            let Ok(credential) = self.source.issue(&request, unix_now().as_secs()) else {
                continue;
            };
            // A check in flight is abandoned at shutdown (it only allocates
            // and releases a relay): the task is told to stop, not aborted.
            let check = allocate_and_release(
                self.applied.turnserver.probe_addr(),
                &credential.username,
                &credential.password,
                self.config().self_check_timeout,
            );
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return false,
                outcome = check => outcome,
            };
            self.record(outcome).await;
        }
    }

    fn config(&self) -> &HealthConfig {
        &self.applied.health
    }

    /// Takes a reloaded configuration; true when the interval changed.
    fn apply(&mut self, latest: Arc<config::Config>) -> bool {
        let interval_changed =
            latest.health.self_check_interval != self.config().self_check_interval;
        self.applied = latest;
        let enabled = self.config().self_check_interval.is_some();
        self.status.update(|s| {
            s.enabled = enabled;
            if !enabled {
                s.failing = false;
                s.consecutive_failures = 0;
            }
        });
        interval_changed
    }

    async fn record(&mut self, outcome: Result<std::time::Duration, TurnCheckError>) {
        match outcome {
            Ok(_) => {
                self.repairs.passed();
                let recovered = self.status.current().failing;
                self.status.update(|s| {
                    s.checks += 1;
                    s.consecutive_failures = 0;
                    s.failing = false;
                    s.last_error = None;
                    s.last_ok_unix = Some(unix_now().as_secs());
                });
                if recovered {
                    tracing::info!("self-check passes again");
                }
            }
            Err(error) => {
                let reason = error.to_string();
                let threshold = self.config().self_check_failures;
                self.status.update(|s| {
                    s.checks += 1;
                    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                    s.failing = s.consecutive_failures >= threshold;
                    s.last_error = Some(reason.clone());
                });
                let failures = self.status.current().consecutive_failures;
                tracing::error!(%reason, failures, "self-check allocation failed");
                let may_repair = matches!(error, TurnCheckError::AuthRejected(_))
                    && self.repairs.try_repair(Instant::now());
                if matches!(error, TurnCheckError::AuthRejected(_)) && !may_repair {
                    tracing::debug!("repair rotation backing off");
                }
                if may_repair {
                    // coturn no longer accepts what we serve: a fresh user
                    // repairs a deleted one or a rebuilt database.
                    match self.rotate.repair().await {
                        Ok(user) => {
                            tracing::warn!(%user, "rotated to repair a rejected credential")
                        }
                        Err(error) => tracing::error!(%error, "repair rotation failed"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// coturn rejecting every check, once a second for 15 s (a realm it
    /// disagrees with): 5 repairs instead of 15, then at once again after
    /// a passing check.
    #[tokio::test(start_paused = true)]
    async fn repairs_back_off_while_coturn_keeps_rejecting() {
        let mut schedule = RepairSchedule::default();
        let start = Instant::now();
        let mut repaired_at = Vec::new();
        for second in 0..15 {
            tokio::time::sleep_until(start + Duration::from_secs(second)).await;
            if schedule.try_repair(Instant::now()) {
                repaired_at.push(second);
            }
        }
        assert_eq!(repaired_at, vec![0, 1, 3, 7]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(schedule.try_repair(Instant::now()), "due at 15 s");
        assert!(!schedule.try_repair(Instant::now()));
        schedule.passed();
        assert!(schedule.try_repair(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_capped() {
        let mut schedule = RepairSchedule::default();
        for _ in 0..20 {
            tokio::time::advance(REPAIR_BACKOFF_MAX).await;
            assert!(schedule.try_repair(Instant::now()));
        }
        assert!(
            !schedule.try_repair(Instant::now() + REPAIR_BACKOFF_MAX - Duration::from_millis(1))
        );
    }
}
