//! Draining: stop attracting clients, let relayed traffic end, then stop.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Config, DrainConfig};
use crate::control::ControlStatus;
use crate::traffic_sampler::{SourceInUse, TrafficSampler};

const SAMPLE_EVERY: Duration = Duration::from_millis(500);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Pure decision of one drain step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    Wait,
    Quiet,
    TimedOut,
}

/// Tracks how long traffic has stayed under the idle threshold.
#[derive(Debug, Clone)]
pub struct DrainClock {
    config: DrainConfig,
    started: Instant,
    quiet_since: Option<Instant>,
}

impl DrainClock {
    pub fn new(config: DrainConfig, now: Instant) -> DrainClock {
        DrainClock {
            config,
            started: now,
            quiet_since: None,
        }
    }

    /// Feeds the traffic measured at `now` (`None`: not known yet).
    pub fn observe(&mut self, used_mbps: Option<f64>, now: Instant) -> DrainStep {
        match used_mbps {
            Some(used) if used <= self.config.idle_mbps => {
                let since = *self.quiet_since.get_or_insert(now);
                if now - since >= self.config.quiet_period {
                    return DrainStep::Quiet;
                }
            }
            _ => self.quiet_since = None,
        }
        if now - self.started >= self.config.timeout {
            DrainStep::TimedOut
        } else {
            DrainStep::Wait
        }
    }

    /// Drained as soon as coturn holds no allocation: coturn's count is
    /// exact, so no quiet period is needed. Resets the traffic quiet period,
    /// so a fall back to traffic starts it afresh.
    pub fn observe_allocations(&mut self, allocations: u64, now: Instant) -> DrainStep {
        self.quiet_since = None;
        if allocations == 0 {
            DrainStep::Quiet
        } else if now - self.started >= self.config.timeout {
            DrainStep::TimedOut
        } else {
            DrainStep::Wait
        }
    }

    pub fn time_left(&self, now: Instant) -> Duration {
        self.config.timeout.saturating_sub(now - self.started)
    }
}

/// The drain `config` asks for, as a future that owns what it needs.
pub fn until_quiet(config: &Config) -> impl Future<Output = &'static str> + Send + 'static {
    until_drained(config, None)
}

/// Like [`until_quiet`], but while the control channel is up the drain
/// waits for coturn to report zero allocations instead of quiet traffic;
/// traffic (from `traffic.source`) decides whenever it is down.
pub fn until_drained(
    config: &Config,
    control: Option<watch::Receiver<ControlStatus>>,
) -> impl Future<Output = &'static str> + Send + 'static {
    // The drain measures without smoothing: a quiet period must see the
    // traffic as it is, not an average that lags its end.
    let traffic = crate::config::TrafficConfig {
        smoothing: 0.0,
        ..config.traffic.clone()
    };
    let mut sampler = TrafficSampler::new(&traffic);
    if let Some(control) = &control {
        sampler = sampler.with_control(control.clone());
    }
    wait_for_quiet(config.drain.clone(), sampler, control)
}

/// Waits until relayed traffic, as `sampler` measures it, is quiet (or the
/// drain times out). Returns why it ended. Callers race it against SIGTERM.
pub async fn wait_for_quiet(
    config: DrainConfig,
    mut sampler: TrafficSampler,
    control: Option<watch::Receiver<ControlStatus>>,
) -> &'static str {
    let mut clock = DrainClock::new(config, Instant::now());
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        let sample = sampler.sample(now);
        let used = match sample.source {
            // Nothing to measure: nothing to wait for.
            SourceInUse::Nothing => Some(0.0),
            SourceInUse::Interface | SourceInUse::Turnserver => sample.used_mbps,
        };
        let allocations = control.as_ref().and_then(|control| {
            let status = control.borrow();
            status.up.then_some(status.allocations).flatten()
        });
        if let Some(allocations) = allocations {
            match clock.observe_allocations(allocations, now) {
                DrainStep::Quiet => {
                    tracing::info!("drained: coturn reports no allocations");
                    return "drained";
                }
                DrainStep::TimedOut => {
                    tracing::warn!(
                        allocations,
                        "drain.timeout passed with allocations still open; stopping anyway"
                    );
                    return "drain timeout";
                }
                DrainStep::Wait => {}
            }
            if now - last_progress >= PROGRESS_EVERY {
                tracing::info!(
                    allocations,
                    time_left_s = clock.time_left(now).as_secs(),
                    "draining: waiting for coturn's allocations to end"
                );
                last_progress = now;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
            continue;
        }
        match clock.observe(used, now) {
            DrainStep::Quiet => {
                tracing::info!(
                    "drained: relayed traffic stayed under drain.idle_mbps for drain.quiet_period"
                );
                return "drained";
            }
            DrainStep::TimedOut => {
                tracing::warn!(
                    used_mbps = used,
                    "drain.timeout passed with traffic still flowing; stopping anyway"
                );
                return "drain timeout";
            }
            DrainStep::Wait => {}
        }
        if now - last_progress >= PROGRESS_EVERY {
            tracing::info!(
                used_mbps = used,
                source = sample.source.as_str(),
                time_left_s = clock.time_left(now).as_secs(),
                "draining"
            );
            last_progress = now;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DrainConfig {
        DrainConfig {
            idle_mbps: 1.0,
            quiet_period: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn allocations_drain_at_zero_or_time_out() {
        let start = Instant::now();
        let mut clock = DrainClock::new(config(), start);
        assert_eq!(clock.observe_allocations(3, start), DrainStep::Wait);
        let later = start + Duration::from_secs(59);
        assert_eq!(clock.observe_allocations(1, later), DrainStep::Wait);
        assert_eq!(clock.observe_allocations(0, later), DrainStep::Quiet);
        let past = start + Duration::from_secs(60);
        assert_eq!(clock.observe_allocations(1, past), DrainStep::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn allocations_decide_while_the_channel_is_up_traffic_otherwise() {
        let (sender, receiver) = watch::channel(ControlStatus {
            enabled: true,
            up: true,
            allocations: Some(2),
            ..ControlStatus::default()
        });
        let traffic = crate::config::TrafficConfig {
            interface: None,
            capacity_mbps: 1000.0,
            direction: crate::config::TrafficDirection::Max,
            hysteresis_percent: 5.0,
            smoothing: 0.0,
            max_allocations: None,
            headroom_hysteresis_percent: 100.0,
            source: crate::config::TrafficSource::Interface,
        };
        let drain = tokio::spawn(wait_for_quiet(
            config(),
            TrafficSampler::new(&traffic),
            Some(receiver),
        ));
        // No interface means zero traffic, but allocations are still open.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!drain.is_finished());
        sender.send_modify(|status| status.allocations = Some(0));
        assert_eq!(drain.await.unwrap(), "drained");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_only_after_a_full_quiet_period() {
        let mut clock = DrainClock::new(config(), Instant::now());
        assert_eq!(clock.observe(None, Instant::now()), DrainStep::Wait);
        assert_eq!(clock.observe(Some(0.5), Instant::now()), DrainStep::Wait);
        tokio::time::advance(Duration::from_secs(9)).await;
        // A burst resets the quiet period.
        assert_eq!(clock.observe(Some(5.0), Instant::now()), DrainStep::Wait);
        assert_eq!(clock.observe(Some(0.2), Instant::now()), DrainStep::Wait);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(clock.observe(Some(0.2), Instant::now()), DrainStep::Quiet);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_traffic_times_out() {
        let mut clock = DrainClock::new(config(), Instant::now());
        for _ in 0..59 {
            assert_eq!(clock.observe(Some(50.0), Instant::now()), DrainStep::Wait);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            clock.observe(Some(50.0), Instant::now()),
            DrainStep::TimedOut
        );
        assert_eq!(clock.time_left(Instant::now()), Duration::ZERO);
    }
}
