//! systemd's notify protocol: READY, STOPPING, STATUS and watchdog pings.
//!
//! Every call is a no-op when the agent does not run under systemd
//! (`NOTIFY_SOCKET` unset), so the same code runs in tests and by hand.

use std::time::Duration;

use tokio::time::Instant;

pub fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

pub fn notify_status(status: &str) {
    notify(&[sd_notify::NotifyState::Status(status)]);
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for, when asked.
///
/// It is pinged from the supervisor loop itself, so a wedged loop stops the
/// pings and systemd restarts the agent.
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    pub fn from_env() -> Watchdog {
        Watchdog::new(sd_notify::watchdog_enabled())
    }

    pub fn new(timeout: Option<Duration>) -> Watchdog {
        Watchdog {
            every: timeout.map(|timeout| timeout / 2),
            last: Instant::now(),
        }
    }

    /// The longest a caller may go between [`Watchdog::ping_if_due`] calls.
    pub fn max_gap(&self) -> Option<Duration> {
        self.every
    }

    pub fn ping_if_due(&mut self) {
        let Some(every) = self.every else { return };
        if self.last.elapsed() >= every {
            notify(&[sd_notify::NotifyState::Watchdog]);
            self.last = Instant::now();
        }
    }
}
