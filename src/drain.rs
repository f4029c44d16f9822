//! Draining: stop attracting clients, let relayed traffic end, then stop.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, DrainConfig, TrafficDirection};
use crate::traffic::{self, Observation, TrafficMeter};

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

    pub fn time_left(&self, now: Instant) -> Duration {
        self.config.timeout.saturating_sub(now - self.started)
    }
}

/// The drain `config` asks for, as a future that owns what it needs.
pub fn until_quiet(config: &Config) -> impl Future<Output = &'static str> + Send + 'static {
    wait_for_quiet(
        config.drain.clone(),
        config.traffic.interface.clone(),
        config.traffic.direction,
    )
}

/// Waits until relayed traffic on `interface` is quiet (or the drain times
/// out). Returns why it ended. Callers race it against SIGTERM.
pub async fn wait_for_quiet(
    config: DrainConfig,
    interface: Option<String>,
    direction: TrafficDirection,
) -> &'static str {
    let mut clock = DrainClock::new(config, Instant::now());
    let mut meter = TrafficMeter::new(0.0);
    let mut networks = sysinfo::Networks::new_with_refreshed_list().ok();
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        let used = match (interface.as_deref(), networks.as_mut()) {
            (Some(interface), Some(networks)) => {
                match traffic::read_counters(networks, interface) {
                    Some(sample) => match meter.observe(sample, now) {
                        Observation::Rate(rate) => Some(rate.used(direction)),
                        Observation::Baseline | Observation::CounterReset => None,
                    },
                    None => None,
                }
            }
            // Nothing to measure: nothing to wait for.
            _ => Some(0.0),
        };
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
