//! The HTTP edge both servers stand on, the agent's API ([`crate::api`])
//! and the allocator service: the hardened accept loop ([`serve`], under
//! [`ServerLimits`]), the access and CORS middlewares ([`guard`]), the one
//! JSON error shape ([`ApiError`]), TLS loading and memory trimming.
//!
//! Nothing here knows a route: each server hands the guard its own table
//! of paths and permissions ([`guard::Guard::for_routes`]).

pub mod connection;
pub mod edge;
pub mod error;
pub mod guard;
pub mod server;
pub mod tls;
pub mod trim;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

pub use crate::config::ServerLimits;
pub use error::ApiError;
pub use server::serve;

/// One constant gauge at scrape time, for collectors that read their
/// state when scraped (the agent's metrics and the allocator service's).
pub fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}
