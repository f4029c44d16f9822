//! Logging setup: `tracing` to stderr, which journald captures under systemd.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Set once by [`init`] unless `RUST_LOG` chose the filter.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the
/// configured level so an operator can turn up one module without editing
/// the file; it also keeps winning over reloads.
pub fn init(level: &str, format: LogFormat) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colour codes only for a person at a terminal, never into journald or
    // a file.
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let output = match format {
        LogFormat::Text => output.boxed(),
        LogFormat::Json => output.json().boxed(),
    };
    // A second init (tests) keeps the first subscriber.
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
        && !pinned
    {
        let _ = LEVEL.set(handle);
    }
}

/// Applies `agent.log_level` from a reloaded file. The level was validated
/// with the file; `RUST_LOG` keeps precedence.
pub fn set_level(level: &str) {
    let Some(handle) = LEVEL.get() else {
        tracing::info!("RUST_LOG is set; it keeps deciding the log level");
        return;
    };
    match EnvFilter::try_new(level) {
        Ok(filter) => {
            if let Err(error) = handle.reload(filter) {
                tracing::warn!(%error, "cannot change the log level");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot change the log level"),
    }
}
