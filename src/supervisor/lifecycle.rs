//! The supervisor's state machine, driven by the instants it is given.
//!
//! It does no I/O: the process shell in `supervisor::run` reports spawns,
//! probe results and exits, and acts on the verdicts. That keeps every rule
//! (when a child is ready, when it is hung, how long to back off) testable on
//! a paused clock without a process.

use std::time::Duration;

use tokio::time::Instant;

use super::backoff::RestartBackoff;

pub use crate::status::{ChildExit, Phase, SupervisorStatus};

/// What the shell should do after a failed probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// Keep the child and probe again.
    KeepWaiting,
    /// The child is alive but not answering: kill it and restart.
    Hung(String),
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    backoff: RestartBackoff,
    probe_failures_allowed: u32,
    startup_timeout: Duration,
    status: SupervisorStatus,
    spawns: u64,
    spawned_at: Option<Instant>,
    ready_since: Option<Instant>,
}

impl Lifecycle {
    pub fn new(
        backoff: RestartBackoff,
        probe_failures_allowed: u32,
        startup_timeout: Duration,
    ) -> Self {
        Lifecycle {
            backoff,
            probe_failures_allowed: probe_failures_allowed.max(1),
            startup_timeout,
            status: SupervisorStatus::default(),
            spawns: 0,
            spawned_at: None,
            ready_since: None,
        }
    }

    /// New probe limits from a reloaded configuration; they count from the
    /// next probe.
    pub fn set_limits(&mut self, probe_failures_allowed: u32, startup_timeout: Duration) {
        self.probe_failures_allowed = probe_failures_allowed.max(1);
        self.startup_timeout = startup_timeout;
    }

    pub fn status(&self) -> &SupervisorStatus {
        &self.status
    }

    pub fn spawned(&mut self, pid: u32, now: Instant) {
        self.status.restarts = self.spawns;
        self.spawns += 1;
        self.spawned_at = Some(now);
        self.ready_since = None;
        self.status.phase = Phase::Starting;
        self.status.pid = Some(pid);
        self.status.consecutive_probe_failures = 0;
        self.status.next_restart_in_ms = None;
    }

    pub fn probe_succeeded(&mut self, now: Instant) {
        if self.ready_since.is_none() {
            self.ready_since = Some(now);
        }
        self.status.phase = Phase::Ready;
        self.status.consecutive_probe_failures = 0;
    }

    pub fn probe_failed(&mut self, reason: &str, now: Instant) -> ProbeVerdict {
        self.status.consecutive_probe_failures += 1;
        let failures = self.status.consecutive_probe_failures;
        if self.ready_since.is_none() {
            let waited = self.spawned_at.map_or(Duration::ZERO, |at| now - at);
            if waited >= self.startup_timeout {
                return ProbeVerdict::Hung(format!(
                    "no STUN answer within startup_timeout {:?} ({reason})",
                    self.startup_timeout
                ));
            }
            return ProbeVerdict::KeepWaiting;
        }
        self.status.phase = Phase::Unhealthy;
        if failures >= self.probe_failures_allowed {
            ProbeVerdict::Hung(format!("{failures} STUN probes failed in a row ({reason})"))
        } else {
            ProbeVerdict::KeepWaiting
        }
    }

    /// Records the end of the current child and returns the delay before the
    /// next spawn.
    pub fn exited(&mut self, how: ChildExit, now: Instant) -> Duration {
        let healthy_for = self.ready_since.map(|since| now - since);
        let delay = self.backoff.on_exit(healthy_for);
        self.spawned_at = None;
        self.ready_since = None;
        self.status.phase = Phase::BackingOff;
        self.status.pid = None;
        self.status.last_exit = Some(how);
        self.status.crash_loop = self.backoff.in_crash_loop();
        self.status.next_restart_in_ms = Some(delay.as_millis().try_into().unwrap_or(u64::MAX));
        delay
    }

    pub fn stopped(&mut self, how: Option<ChildExit>) {
        self.status.phase = Phase::Stopped;
        self.status.pid = None;
        self.status.next_restart_in_ms = None;
        if let Some(how) = how {
            self.status.last_exit = Some(how);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killed() -> ChildExit {
        ChildExit::Signalled {
            signal: 9,
            core_dumped: false,
        }
    }

    fn hung() -> ChildExit {
        ChildExit::Hung {
            reason: "no STUN answer".into(),
            then: Box::new(killed()),
        }
    }

    fn lifecycle() -> Lifecycle {
        let backoff = RestartBackoff::new(
            Duration::from_millis(100),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
        .unwrap();
        Lifecycle::new(backoff, 3, Duration::from_secs(10))
    }

    #[tokio::test(start_paused = true)]
    async fn ready_after_first_answer_then_hung_after_failures() {
        let mut life = lifecycle();
        life.spawned(10, Instant::now());
        assert_eq!(life.status().phase, Phase::Starting);
        assert!(!life.status().is_ready());
        tokio::time::advance(Duration::from_millis(70)).await;
        life.probe_succeeded(Instant::now());
        assert!(life.status().is_ready());

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            life.probe_failed("timeout", Instant::now()),
            ProbeVerdict::KeepWaiting
        );
        assert_eq!(life.status().phase, Phase::Unhealthy);
        assert_eq!(
            life.probe_failed("timeout", Instant::now()),
            ProbeVerdict::KeepWaiting
        );
        // One answer in between resets the count.
        life.probe_succeeded(Instant::now());
        assert_eq!(life.status().consecutive_probe_failures, 0);
        for _ in 0..2 {
            assert_eq!(
                life.probe_failed("timeout", Instant::now()),
                ProbeVerdict::KeepWaiting
            );
        }
        assert!(matches!(
            life.probe_failed("timeout", Instant::now()),
            ProbeVerdict::Hung(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn startup_failures_wait_for_startup_timeout() {
        let mut life = lifecycle();
        life.spawned(10, Instant::now());
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(100)).await;
            assert_eq!(
                life.probe_failed("refused", Instant::now()),
                ProbeVerdict::KeepWaiting
            );
            assert_eq!(life.status().phase, Phase::Starting);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            life.probe_failed("refused", Instant::now()),
            ProbeVerdict::Hung(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_backs_off_and_stable_run_resets() {
        let mut life = lifecycle();
        let mut delays = Vec::new();
        for pid in 0..6 {
            life.spawned(pid, Instant::now());
            tokio::time::advance(Duration::from_millis(5)).await;
            let delay = life.exited(ChildExit::Exited(255), Instant::now());
            assert_eq!(life.status().phase, Phase::BackingOff);
            delays.push(delay.as_millis());
            tokio::time::advance(delay).await;
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200]);
        assert!(life.status().crash_loop);
        assert_eq!(life.status().restarts, 5);
        assert!(life.status().reason().contains("crash loop"));

        life.spawned(7, Instant::now());
        life.probe_succeeded(Instant::now());
        tokio::time::advance(Duration::from_secs(61)).await;
        let delay = life.exited(killed(), Instant::now());
        assert_eq!(delay, Duration::from_millis(100));
        assert!(!life.status().crash_loop);
        assert_eq!(life.status().restarts, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_killed_child_that_served_restarts_fast_every_time() {
        let mut life = lifecycle();
        for pid in 0..20 {
            life.spawned(pid, Instant::now());
            tokio::time::advance(Duration::from_millis(70)).await;
            life.probe_succeeded(Instant::now());
            tokio::time::advance(Duration::from_millis(10)).await;
            let delay = life.exited(killed(), Instant::now());
            assert_eq!(delay, Duration::from_millis(100));
        }
        assert!(!life.status().crash_loop);
    }

    #[tokio::test(start_paused = true)]
    async fn time_before_ready_does_not_count_as_stable() {
        let mut life = lifecycle();
        life.spawned(1, Instant::now());
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(
            life.exited(hung(), Instant::now()),
            Duration::from_millis(100)
        );
        life.spawned(2, Instant::now());
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(
            life.exited(hung(), Instant::now()),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn stopped_is_terminal_and_not_ready() {
        let mut life = lifecycle();
        life.spawned(1, Instant::now());
        life.probe_succeeded(Instant::now());
        life.stopped(Some(ChildExit::Exited(0)));
        assert_eq!(life.status().phase, Phase::Stopped);
        assert!(!life.status().is_ready());
        assert_eq!(life.status().pid, None);
    }
}
