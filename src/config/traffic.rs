//! `[traffic]`: how free relay capacity is measured.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::validate::Validator;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficDirection {
    Rx,
    Tx,
    Max,
}

/// `traffic.source`: where the used bandwidth comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficSource {
    /// The byte counters of `traffic.interface`: every byte on the NIC.
    Interface,
    /// coturn's own per-session counters through the control channel; the
    /// interface counters while the channel is off or down.
    Turnserver,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrafficConfig {
    pub interface: Option<String>,
    pub capacity_mbps: f64,
    pub direction: TrafficDirection,
    pub hysteresis_percent: f64,
    /// Weight of the previous rate in an exponential moving average (0 = none).
    pub smoothing: f64,
    /// At or over this many allocations the host publishes no headroom.
    pub max_allocations: Option<u64>,
    pub source: TrafficSource,
    /// The hysteresis band narrowed to this share of free traffic.
    pub headroom_hysteresis_percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTraffic {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub capacity_mbps: f64,
    pub direction: TrafficDirection,
    pub hysteresis_percent: f64,
    pub smoothing: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_allocations: Option<i64>,
    pub source: TrafficSource,
    pub headroom_hysteresis_percent: f64,
}

pub(super) fn validate_traffic(v: &mut Validator, raw: &RawTraffic) -> TrafficConfig {
    if !(raw.capacity_mbps.is_finite() && raw.capacity_mbps > 0.0) {
        v.problem("traffic.capacity_mbps", "must be a positive number");
    }
    if !(raw.hysteresis_percent.is_finite() && (0.0..=100.0).contains(&raw.hysteresis_percent)) {
        v.problem("traffic.hysteresis_percent", "must be between 0 and 100");
    }
    if !(raw.smoothing.is_finite() && (0.0..1.0).contains(&raw.smoothing)) {
        v.problem("traffic.smoothing", "must be at least 0 and less than 1");
    }
    if !(raw.headroom_hysteresis_percent.is_finite()
        && (0.0..=100.0).contains(&raw.headroom_hysteresis_percent))
    {
        v.problem(
            "traffic.headroom_hysteresis_percent",
            "must be between 0 and 100",
        );
    }
    if let Some(interface) = &raw.interface {
        let exists = !interface.is_empty()
            && !interface.contains('/')
            && Path::new("/sys/class/net").join(interface).exists();
        if !exists {
            v.problem(
                "traffic.interface",
                format!("no network interface named `{interface}`"),
            );
        }
    }
    TrafficConfig {
        interface: raw.interface.clone(),
        capacity_mbps: raw.capacity_mbps,
        direction: raw.direction,
        hysteresis_percent: raw.hysteresis_percent,
        smoothing: raw.smoothing,
        max_allocations: raw
            .max_allocations
            .and_then(|max| match u64::try_from(max) {
                Ok(max) if max > 0 => Some(max),
                _ => {
                    v.problem("traffic.max_allocations", "must be a positive number");
                    None
                }
            }),
        source: raw.source,
        headroom_hysteresis_percent: raw.headroom_hysteresis_percent,
    }
}
