//! `[agent]`: logging and the shutdown bound.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Validator;

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// A `tracing` filter directive such as `info` or `turn_agent=debug,info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Upper bound on the whole ordered shutdown.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAgent {
    pub log_level: String,
    pub log_format: LogFormat,
    pub shutdown_timeout: String,
}

pub(super) fn validate_agent(v: &mut Validator, raw: &RawAgent) -> AgentConfig {
    let agent = AgentConfig {
        log_level: raw.log_level.clone(),
        log_format: raw.log_format,
        shutdown_timeout: v.positive_duration("agent.shutdown_timeout", &raw.shutdown_timeout),
    };
    if tracing_subscriber_filter_is_invalid(&agent.log_level) {
        v.problem(
            "agent.log_level",
            format!(
                "`{}` is not a log filter such as \"info\" or \"turn_agent=debug\"",
                agent.log_level
            ),
        );
    }
    agent
}

fn tracing_subscriber_filter_is_invalid(filter: &str) -> bool {
    filter.trim().is_empty() || tracing_subscriber::EnvFilter::try_new(filter).is_err()
}
