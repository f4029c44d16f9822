//! turn-agent: a sidecar that runs beside coturn on every TURN host.
//!
//! # Layout
//! - [`config`]: the TOML file and `TURN_AGENT_*` overrides, validated into [`config::Config`].
//! - [`app`]: starts every task, waits for signals, shuts down in order.
//! - [`shutdown`]: process signals turned into agent actions.
//! - [`supervisor`]: keeps one turnserver alive; `lifecycle` and `backoff` are its pure rules.
//! - [`api`]: the axum router and server.
//! - [`systemd`]: READY/STOPPING/STATUS/WATCHDOG notifications.
//! - [`logging`]: the tracing subscriber.
#![deny(rust_2018_idioms, unsafe_op_in_unsafe_fn)]

#[cfg(feature = "agent")]
pub mod api;
#[cfg(feature = "agent")]
pub mod app;
#[cfg(feature = "agent")]
pub mod config;
#[cfg(feature = "agent")]
pub mod logging;
#[cfg(feature = "agent")]
pub mod shutdown;
#[cfg(feature = "agent")]
pub mod supervisor;
#[cfg(feature = "agent")]
pub mod systemd;
