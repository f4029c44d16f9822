//! `[drain]`: how a drain decides that relayed traffic is over.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Validator;

/// How a drain decides that relayed traffic is over.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    pub idle_mbps: f64,
    pub quiet_period: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDrain {
    pub idle_mbps: f64,
    pub quiet_period: String,
    pub timeout: String,
}

pub(super) fn validate_drain(v: &mut Validator, raw: &RawDrain) -> DrainConfig {
    if !(raw.idle_mbps.is_finite() && raw.idle_mbps >= 0.0) {
        v.problem("drain.idle_mbps", "must be a number of at least 0");
    }
    DrainConfig {
        idle_mbps: raw.idle_mbps,
        quiet_period: v.duration("drain.quiet_period", &raw.quiet_period),
        timeout: v.positive_duration("drain.timeout", &raw.timeout),
    }
}
