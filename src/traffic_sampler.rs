//! The one traffic sampler: "how many Mbps does this host relay now" for
//! the registry and the drain alike.
//!
//! [`TrafficSampler::sample`] answers from the source `traffic.source`
//! names: the byte counters of `traffic.interface` (sysinfo, or synthetic
//! counters for benchmarks and simulations) or coturn's own relay rate from
//! the control channel ([`ControlStatus::rate`]). With `"turnserver"` the
//! interface counters stay sampled at every call, so a fallback while the
//! channel is off or down has a rate at once instead of a fresh baseline.
//! Which source answers is decided by [`source_in_use`] (pure); the
//! conversion of coturn's bytes per second by [`relay_used_mbps`] (pure).

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{TrafficConfig, TrafficDirection, TrafficSource};
use crate::control::ControlStatus;
use crate::coturn_cli::relay_rate::RelayRate;
use crate::log_safe::LogSafe;
use crate::traffic::{self, CounterSample, Observation, TrafficMeter};

/// Where cumulative byte counters come from.
pub enum CounterSource {
    /// `traffic.interface` through sysinfo; `None` when the platform offers
    /// no interface counters.
    Interface(Option<sysinfo::Networks>),
    /// Counters from the caller: fleet simulations and benchmarks run the
    /// real registry with synthetic traffic. Used whether or not
    /// `traffic.interface` is set.
    Synthetic(Box<dyn FnMut() -> Option<CounterSample> + Send>),
}

/// Which source gave a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceInUse {
    /// Nothing to measure: no interface configured and no coturn rate.
    Nothing,
    /// The interface (or synthetic) byte counters.
    Interface,
    /// coturn's relay rate from the control channel.
    Turnserver,
}

impl SourceInUse {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceInUse::Nothing => "none",
            SourceInUse::Interface => "interface",
            SourceInUse::Turnserver => "turnserver",
        }
    }
}

/// One answer of the sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficSample {
    /// Used Mbps in `traffic.direction`; `None` while the source has only
    /// a baseline (first sample, counter reset, missing interface) or
    /// there is nothing to measure.
    pub used_mbps: Option<f64>,
    pub source: SourceInUse,
}

/// Which source answers: coturn's rate while `traffic.source` is
/// `"turnserver"` and the control channel is up with a rate; otherwise the
/// interface counters when there is an interface (or synthetic counters).
pub fn source_in_use(
    configured: TrafficSource,
    control: Option<&ControlStatus>,
    has_counters: bool,
) -> SourceInUse {
    let coturn_has_rate = control.is_some_and(|status| status.up && status.rate.is_some());
    match configured {
        TrafficSource::Turnserver if coturn_has_rate => SourceInUse::Turnserver,
        _ if has_counters => SourceInUse::Interface,
        _ => SourceInUse::Nothing,
    }
}

/// coturn's relay rate in Mbps in `direction`: what turnserver received
/// counts as rx, what it sent as tx.
pub fn relay_used_mbps(rate: &RelayRate, direction: TrafficDirection) -> f64 {
    traffic::Rate {
        rx_mbps: rate.received_bytes_per_sec * 8.0 / 1_000_000.0,
        tx_mbps: rate.sent_bytes_per_sec * 8.0 / 1_000_000.0,
    }
    .used(direction)
}

/// Samples used traffic from the configured source; see the module doc.
pub struct TrafficSampler {
    settings: TrafficConfig,
    counters: CounterSource,
    meter: TrafficMeter,
    control: Option<watch::Receiver<ControlStatus>>,
    last_source: Option<SourceInUse>,
    log_changes: bool,
}

impl TrafficSampler {
    /// Interface counters through sysinfo, no control channel.
    pub fn new(settings: &TrafficConfig) -> TrafficSampler {
        TrafficSampler {
            meter: TrafficMeter::new(settings.smoothing),
            settings: settings.clone(),
            counters: CounterSource::Interface(sysinfo::Networks::new_with_refreshed_list().ok()),
            control: None,
            last_source: None,
            log_changes: false,
        }
    }

    /// coturn's relay rate, for `traffic.source = "turnserver"`.
    pub fn with_control(mut self, control: watch::Receiver<ControlStatus>) -> TrafficSampler {
        self.control = Some(control);
        self
    }

    /// Replaces the interface counters with `counters`.
    pub fn with_counters(mut self, counters: CounterSource) -> TrafficSampler {
        self.counters = counters;
        self
    }

    /// Logs each change of the source in use (once per change), and the
    /// interface's troubles; the long-lived owner (the registry) sets it so
    /// a short-lived sampler (a drain) does not say the same again.
    pub fn logging_changes(mut self) -> TrafficSampler {
        self.log_changes = true;
        self
    }

    /// Takes reloaded `[traffic]` settings; a new interface or smoothing
    /// starts a new baseline.
    pub fn reconfigure(&mut self, settings: &TrafficConfig) {
        if settings.interface != self.settings.interface
            || settings.smoothing != self.settings.smoothing
        {
            self.meter = TrafficMeter::new(settings.smoothing);
        }
        self.settings = settings.clone();
    }

    /// Used traffic now. The interface counters are read at every call
    /// (when there are any), whichever source answers.
    pub fn sample(&mut self, now: Instant) -> TrafficSample {
        let has_counters = self.sample_counters(now);
        let status = self
            .control
            .as_ref()
            .map(|control| control.borrow().clone());
        let source = source_in_use(self.settings.source, status.as_ref(), has_counters);
        let used_mbps = match source {
            SourceInUse::Turnserver => status
                .and_then(|status| status.rate)
                .map(|rate| relay_used_mbps(&rate, self.settings.direction)),
            SourceInUse::Interface => self
                .meter
                .rate()
                .map(|rate| rate.used(self.settings.direction)),
            SourceInUse::Nothing => None,
        };
        self.note_source(source);
        TrafficSample { used_mbps, source }
    }

    /// Feeds the meter; false when there are no counters to read at all.
    fn sample_counters(&mut self, now: Instant) -> bool {
        let interface = self.settings.interface.clone().unwrap_or_default();
        let counters = match &mut self.counters {
            // No interface set, or no counters on this platform.
            CounterSource::Interface(None) => return false,
            CounterSource::Interface(_) if interface.is_empty() => return false,
            CounterSource::Interface(Some(networks)) => {
                traffic::read_counters(networks, &interface)
            }
            CounterSource::Synthetic(next) => next(),
        };
        match counters {
            Some(sample) => {
                if self.meter.observe(sample, now) == Observation::CounterReset && self.log_changes
                {
                    tracing::warn!(
                        interface = %LogSafe::new(&interface),
                        "interface counters went backwards; starting a new baseline"
                    );
                }
            }
            None => {
                if self.log_changes {
                    tracing::warn!(
                        interface = %LogSafe::new(&interface),
                        "interface is missing; no traffic measured until it returns"
                    );
                }
                self.meter.interface_missing();
            }
        }
        true
    }

    fn note_source(&mut self, source: SourceInUse) {
        let previous = self.last_source.replace(source);
        if !self.log_changes
            || self.settings.source != TrafficSource::Turnserver
            || previous == Some(source)
        {
            return;
        }
        match source {
            SourceInUse::Turnserver => tracing::info!(
                "traffic.source: measuring relayed traffic with turnserver's own counters"
            ),
            // The first answer before the channel's first poll is not a fall.
            _ if previous.is_none() => {}
            other => tracing::warn!(
                now_using = other.as_str(),
                "traffic.source: turnserver's relay rate is unavailable (control channel off or down); measuring with the interface counters until it returns"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    fn settings(source: TrafficSource) -> TrafficConfig {
        TrafficConfig {
            interface: None,
            capacity_mbps: 1000.0,
            direction: TrafficDirection::Max,
            hysteresis_percent: 5.0,
            smoothing: 0.0,
            max_allocations: None,
            headroom_hysteresis_percent: 100.0,
            source,
        }
    }

    fn up_with_rate(received: f64, sent: f64) -> ControlStatus {
        ControlStatus {
            enabled: true,
            up: true,
            rate: Some(RelayRate {
                received_bytes_per_sec: received,
                sent_bytes_per_sec: sent,
                ..RelayRate::default()
            }),
            ..ControlStatus::default()
        }
    }

    /// Synthetic counters whose rx grows by what the test puts in.
    fn counters() -> (Arc<Mutex<u64>>, CounterSource) {
        let bytes = Arc::new(Mutex::new(0u64));
        let shared = bytes.clone();
        let source = CounterSource::Synthetic(Box::new(move || {
            Some(CounterSample {
                rx_bytes: *shared.lock().unwrap(),
                tx_bytes: 0,
            })
        }));
        (bytes, source)
    }

    #[test]
    fn the_source_in_use_follows_the_setting_and_the_channel() {
        let up = up_with_rate(1.0, 1.0);
        let no_rate_yet = ControlStatus {
            rate: None,
            ..up.clone()
        };
        let down = ControlStatus {
            up: false,
            fallback: true,
            ..up.clone()
        };
        use SourceInUse::*;
        use TrafficSource::Turnserver as Coturn;
        let table = [
            (TrafficSource::Interface, Some(&up), true, Interface),
            (TrafficSource::Interface, Some(&up), false, Nothing),
            (Coturn, Some(&up), true, Turnserver),
            (Coturn, Some(&up), false, Turnserver),
            (Coturn, Some(&no_rate_yet), true, Interface),
            (Coturn, Some(&down), true, Interface),
            (Coturn, Some(&down), false, Nothing),
            (Coturn, None, true, Interface),
        ];
        for (configured, status, has_counters, expected) in table {
            assert_eq!(
                source_in_use(configured, status, has_counters),
                expected,
                "{configured:?} {status:?} {has_counters}"
            );
        }
    }

    #[test]
    fn coturn_bytes_per_second_become_mbps_per_direction() {
        let rate = RelayRate {
            received_bytes_per_sec: 1_250_000.0,
            sent_bytes_per_sec: 2_500_000.0,
            ..RelayRate::default()
        };
        assert_eq!(relay_used_mbps(&rate, TrafficDirection::Rx), 10.0);
        assert_eq!(relay_used_mbps(&rate, TrafficDirection::Tx), 20.0);
        assert_eq!(relay_used_mbps(&rate, TrafficDirection::Max), 20.0);
    }

    #[tokio::test(start_paused = true)]
    async fn turnserver_source_falls_back_to_counters_and_returns() {
        let (bytes, source) = counters();
        let (status, receiver) = watch::channel(up_with_rate(1_250_000.0, 0.0));
        let mut sampler = TrafficSampler::new(&settings(TrafficSource::Turnserver))
            .with_counters(source)
            .with_control(receiver);
        let first = sampler.sample(Instant::now());
        assert_eq!(first.source, SourceInUse::Turnserver);
        assert_eq!(first.used_mbps, Some(10.0));
        // The counters were read all along: the fallback has a rate at once.
        tokio::time::advance(Duration::from_secs(1)).await;
        *bytes.lock().unwrap() += 6_250_000; // 50 Mbps over that second
        status.send_modify(|s| {
            s.up = false;
            s.fallback = true;
            s.rate = None;
        });
        let fallen = sampler.sample(Instant::now());
        assert_eq!(fallen.source, SourceInUse::Interface);
        assert_eq!(fallen.used_mbps, Some(50.0));
        status.send_replace(up_with_rate(0.0, 250_000.0));
        let back = sampler.sample(Instant::now());
        assert_eq!(back.source, SourceInUse::Turnserver);
        assert_eq!(back.used_mbps, Some(2.0));
    }

    #[tokio::test(start_paused = true)]
    async fn interface_source_ignores_coturn() {
        let (bytes, source) = counters();
        let (_status, receiver) = watch::channel(up_with_rate(125_000_000.0, 0.0));
        let mut sampler = TrafficSampler::new(&settings(TrafficSource::Interface))
            .with_counters(source)
            .with_control(receiver);
        let baseline = sampler.sample(Instant::now());
        assert_eq!(
            baseline,
            TrafficSample {
                used_mbps: None,
                source: SourceInUse::Interface
            }
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        *bytes.lock().unwrap() += 2_500_000;
        assert_eq!(sampler.sample(Instant::now()).used_mbps, Some(10.0));
    }

    #[tokio::test(start_paused = true)]
    async fn no_interface_and_no_coturn_means_nothing_to_measure() {
        let mut sampler = TrafficSampler::new(&settings(TrafficSource::Turnserver));
        assert_eq!(
            sampler.sample(Instant::now()),
            TrafficSample {
                used_mbps: None,
                source: SourceInUse::Nothing
            }
        );
    }
}
