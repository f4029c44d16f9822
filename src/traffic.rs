//! Interface byte counters turned into free Mbps.
//!
//! [`TrafficMeter`] is pure: it is fed counter samples with the instant they
//! were taken, and computes the rate over the time that actually elapsed,
//! never an assumed interval. [`read_counters`] is the thin shell over
//! sysinfo.

use std::time::Duration;

use crate::config::TrafficDirection;

/// Cumulative byte counters of one interface at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSample {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Used bandwidth in both directions, Mbps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub rx_mbps: f64,
    pub tx_mbps: f64,
}

impl Rate {
    pub fn used(&self, direction: TrafficDirection) -> f64 {
        match direction {
            TrafficDirection::Rx => self.rx_mbps,
            TrafficDirection::Tx => self.tx_mbps,
            TrafficDirection::Max => self.rx_mbps.max(self.tx_mbps),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A rate over the interval since the previous sample.
    Rate(Rate),
    /// First sample, or the first after a reset or a gap: no rate yet.
    Baseline,
    /// A counter went backwards (interface re-created, driver reset): the
    /// sample becomes the new baseline instead of a bogus spike.
    CounterReset,
}

/// Turns successive samples into rates, with optional exponential smoothing
/// (`smoothing` in 0..1: the weight kept from the previous rate).
#[derive(Debug, Clone)]
pub struct TrafficMeter {
    last: Option<(CounterSample, tokio::time::Instant)>,
    smoothed: Option<Rate>,
    smoothing: f64,
}

impl TrafficMeter {
    pub fn new(smoothing: f64) -> TrafficMeter {
        TrafficMeter {
            last: None,
            smoothed: None,
            smoothing: smoothing.clamp(0.0, 0.99),
        }
    }

    /// Feeds a sample taken at `at`.
    pub fn observe(&mut self, sample: CounterSample, at: tokio::time::Instant) -> Observation {
        let previous = self.last.replace((sample, at));
        let Some((before, then)) = previous else {
            return Observation::Baseline;
        };
        if sample.rx_bytes < before.rx_bytes || sample.tx_bytes < before.tx_bytes {
            self.smoothed = None;
            return Observation::CounterReset;
        }
        let elapsed = at.saturating_duration_since(then);
        if elapsed < Duration::from_millis(1) {
            return Observation::Baseline;
        }
        let seconds = elapsed.as_secs_f64();
        let mbps = |bytes: u64| bytes as f64 * 8.0 / 1_000_000.0 / seconds;
        let raw = Rate {
            rx_mbps: mbps(sample.rx_bytes - before.rx_bytes),
            tx_mbps: mbps(sample.tx_bytes - before.tx_bytes),
        };
        let rate = match self.smoothed {
            Some(previous) if self.smoothing > 0.0 => Rate {
                rx_mbps: previous.rx_mbps * self.smoothing + raw.rx_mbps * (1.0 - self.smoothing),
                tx_mbps: previous.tx_mbps * self.smoothing + raw.tx_mbps * (1.0 - self.smoothing),
            },
            _ => raw,
        };
        self.smoothed = Some(rate);
        Observation::Rate(rate)
    }

    /// The interface vanished: forget the baseline so its return does not
    /// produce a rate over the gap.
    pub fn interface_missing(&mut self) {
        self.last = None;
        self.smoothed = None;
    }

    /// The latest rate, if any.
    pub fn rate(&self) -> Option<Rate> {
        self.smoothed
    }
}

/// The publishing rules moved to the pure core; these paths stay for
/// the benches and simulations that use them.
pub use crate::publish_rules::{changed_enough, free_mbps, PublishRule};

/// Reads an interface's cumulative counters; `None` if it does not exist.
pub fn read_counters(networks: &mut sysinfo::Networks, interface: &str) -> Option<CounterSample> {
    networks.refresh(true);
    let data = networks.get(std::ffi::OsStr::new(interface))?;
    Some(CounterSample {
        rx_bytes: data.total_received(),
        tx_bytes: data.total_transmitted(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn sample(rx: u64, tx: u64) -> CounterSample {
        CounterSample {
            rx_bytes: rx,
            tx_bytes: tx,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_uses_the_time_that_actually_elapsed() {
        let mut meter = TrafficMeter::new(0.0);
        assert_eq!(
            meter.observe(sample(0, 0), Instant::now()),
            Observation::Baseline
        );
        // 2.5 s late: 25 MB in 2.5 s is 80 Mbps, not 200.
        tokio::time::advance(Duration::from_millis(2500)).await;
        let Observation::Rate(rate) = meter.observe(sample(25_000_000, 12_500_000), Instant::now())
        else {
            panic!("expected a rate");
        };
        assert!((rate.rx_mbps - 80.0).abs() < 1e-9);
        assert!((rate.tx_mbps - 40.0).abs() < 1e-9);
        assert_eq!(rate.used(TrafficDirection::Max), rate.rx_mbps);
        assert_eq!(rate.used(TrafficDirection::Tx), rate.tx_mbps);
    }

    #[tokio::test(start_paused = true)]
    async fn counter_reset_is_not_a_spike() {
        let mut meter = TrafficMeter::new(0.0);
        meter.observe(sample(u64::MAX - 10, 100), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            meter.observe(sample(5, 110), Instant::now()),
            Observation::CounterReset
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let Observation::Rate(rate) = meter.observe(sample(125_005, 110), Instant::now()) else {
            panic!("expected a rate");
        };
        assert!((rate.rx_mbps - 1.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn vanished_interface_restarts_from_a_baseline() {
        let mut meter = TrafficMeter::new(0.0);
        meter.observe(sample(0, 0), Instant::now());
        meter.interface_missing();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            meter.observe(sample(1 << 40, 0), Instant::now()),
            Observation::Baseline
        );
    }

    #[tokio::test(start_paused = true)]
    async fn smoothing_weighs_the_previous_rate() {
        let mut meter = TrafficMeter::new(0.5);
        meter.observe(sample(0, 0), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        meter.observe(sample(1_250_000, 0), Instant::now()); // 10 Mbps
        tokio::time::advance(Duration::from_secs(1)).await;
        let Observation::Rate(rate) = meter.observe(sample(1_250_000, 0), Instant::now()) else {
            panic!("expected a rate");
        };
        assert!((rate.rx_mbps - 5.0).abs() < 1e-9);
    }
}
