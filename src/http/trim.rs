//! Gives memory back to the system after many connections have closed.
//!
//! glibc's allocator keeps freed memory in its per-thread arenas: after
//! 10,000 connections close, their buffers stay in the process's RSS.
//! `malloc_trim(0)` returns the free pages of every arena. [`TrimRule`]
//! (pure) decides when that is worth it: after at least
//! [`CONNECTIONS_BEFORE_TRIM`] connections ended since the last peak, not
//! while connections are piling up. The shell ([`run`]) looks every
//! [`TRIM_CHECK_INTERVAL`] at the most connections open at once since its
//! last look and at those open now, so a burst that came and went between
//! two looks is seen too.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::server::ConnectionSlots;

/// How often the open connections are looked at.
pub const TRIM_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Connections that must have ended since the peak before memory is given
/// back: a few kilobytes each, so below this it is not worth a trim.
pub const CONNECTIONS_BEFORE_TRIM: usize = 256;

/// When to trim, from samples of the open connection count.
#[derive(Debug, Default)]
pub struct TrimRule {
    /// The most connections open since the last trim.
    peak: usize,
}

impl TrimRule {
    /// One look: the most connections open at once since the last look
    /// (`peak`) and those open now; true when memory should be given back
    /// now.
    pub fn sample(&mut self, peak: usize, open: usize) -> bool {
        self.peak = self.peak.max(peak).max(open);
        if self.peak - open >= CONNECTIONS_BEFORE_TRIM {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Samples `slots` until `shutdown` and trims when [`TrimRule`] says so.
pub async fn run(slots: Arc<ConnectionSlots>, shutdown: CancellationToken) {
    let mut rule = TrimRule::default();
    let mut interval = tokio::time::interval(TRIM_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let peak = slots.take_peak();
        if rule.sample(peak, slots.open_total()) {
            // A trim of a large heap takes milliseconds: not on a worker.
            let _ = tokio::task::spawn_blocking(give_back_free_memory).await;
        }
    }
}

/// Returns free heap pages to the system (glibc); elsewhere nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_free_memory() {
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's
    // own free lists under its locks; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_many_connections_have_ended_not_while_they_pile_up() {
        let mut rule = TrimRule::default();
        // Growing: never.
        for open in [0, 100, 5_000, 10_000] {
            assert!(!rule.sample(open, open));
        }
        // A few ended: not yet.
        assert!(!rule.sample(
            10_000 - CONNECTIONS_BEFORE_TRIM + 1,
            10_000 - CONNECTIONS_BEFORE_TRIM + 1
        ));
        // Most ended: once.
        assert!(rule.sample(10, 10));
        assert!(!rule.sample(10, 10));
        assert!(!rule.sample(0, 0));
        // The next wave counts from the new peak.
        assert!(!rule.sample(CONNECTIONS_BEFORE_TRIM, CONNECTIONS_BEFORE_TRIM));
        assert!(rule.sample(0, 0));
        // Small churn never trims.
        for open in [0, 200, 0, 200, 0] {
            assert!(!rule.sample(open, open));
        }
        // A burst that came and went between two looks.
        assert!(!rule.sample(0, 0));
        assert!(rule.sample(10_000, 0));
        assert!(!rule.sample(0, 0));
    }
}
