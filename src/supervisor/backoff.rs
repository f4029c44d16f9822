//! How long to wait before the next turnserver spawn.

use std::time::Duration;

/// Quick exits in a row after which the supervisor reports a crash loop.
pub const CRASH_LOOP_EXITS: u32 = 3;

/// Exponential restart delay: `min` after a child that ran well, doubling
/// with each further quick exit up to `max`.
///
/// A child counts as having run well once it was healthy for `stable_after`;
/// that resets the delay, so one crash after days of service restarts fast.
#[derive(Debug, Clone)]
pub struct RestartBackoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    quick_exits: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("maximum must not be less than minimum")]
    MaxBelowMin,
    #[error("minimum must be greater than zero")]
    ZeroMin,
}

impl RestartBackoff {
    pub fn new(min: Duration, max: Duration, stable_after: Duration) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if max < min {
            return Err(BackoffError::MaxBelowMin);
        }
        Ok(RestartBackoff {
            min,
            max,
            stable_after,
            quick_exits: 0,
        })
    }

    /// Records an exit of a child that was healthy for `healthy_for` and
    /// returns the delay before the next spawn.
    pub fn on_exit(&mut self, healthy_for: Duration) -> Duration {
        if healthy_for >= self.stable_after {
            self.quick_exits = 0;
        }
        // 2^20 x min is far beyond any sane max; capping the exponent keeps
        // the multiplication from overflowing in a crash loop that runs for days.
        let factor = 1u32 << self.quick_exits.min(20);
        self.quick_exits = self.quick_exits.saturating_add(1);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Exits in a row that came before the child had been stable.
    pub fn quick_exits(&self) -> u32 {
        self.quick_exits
    }

    pub fn in_crash_loop(&self) -> bool {
        self.quick_exits >= CRASH_LOOP_EXITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_max_below_min() {
        assert_eq!(
            RestartBackoff::new(ms(200), ms(100), ms(1000)).unwrap_err(),
            BackoffError::MaxBelowMin
        );
        assert_eq!(
            RestartBackoff::new(ms(0), ms(100), ms(1000)).unwrap_err(),
            BackoffError::ZeroMin
        );
    }

    #[test]
    fn doubles_up_to_max_on_quick_exits() {
        let mut backoff = RestartBackoff::new(ms(100), ms(1000), ms(5000)).unwrap();
        let delays: Vec<_> = (0..7).map(|_| backoff.on_exit(ms(10))).collect();
        assert_eq!(
            delays,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000), ms(1000)]
        );
        assert!(backoff.in_crash_loop());
    }

    #[test]
    fn resets_after_stable_run() {
        let mut backoff = RestartBackoff::new(ms(100), ms(30_000), ms(5000)).unwrap();
        for _ in 0..5 {
            backoff.on_exit(ms(0));
        }
        assert_eq!(backoff.on_exit(ms(5000)), ms(100));
        assert!(!backoff.in_crash_loop());
        assert_eq!(backoff.on_exit(ms(4999)), ms(200));
    }

    #[test]
    fn never_overflows() {
        let mut backoff = RestartBackoff::new(ms(1), Duration::MAX, ms(1)).unwrap();
        for _ in 0..1000 {
            assert!(backoff.on_exit(Duration::ZERO) <= Duration::MAX);
        }
    }
}
