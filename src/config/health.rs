//! `[health]`: the end-to-end allocation self-check.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Validator;

/// The end-to-end allocation self-check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// `None`: off.
    pub self_check_interval: Option<Duration>,
    pub self_check_failures: u32,
    pub self_check_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub self_check_interval: String,
    pub self_check_failures: i64,
    pub self_check_timeout: String,
}

pub(super) fn validate_health(v: &mut Validator, raw: &RawHealth) -> HealthConfig {
    let interval = v.duration("health.self_check_interval", &raw.self_check_interval);
    HealthConfig {
        self_check_interval: (!interval.is_zero()).then_some(interval),
        self_check_failures: v.at_least_one("health.self_check_failures", raw.self_check_failures),
        self_check_timeout: v
            .positive_duration("health.self_check_timeout", &raw.self_check_timeout),
    }
}
