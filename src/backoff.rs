//! Exponential backoff: `min`, doubling per failure, capped at `max`.
//!
//! Shared by every retry loop in the agent (turnserver restarts, turnadmin
//! retries, ZooKeeper reconnects), so the arithmetic lives in one place.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("maximum must not be less than minimum")]
    MaxBelowMin,
    #[error("minimum must be greater than zero")]
    ZeroMin,
}

#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl ExponentialBackoff {
    pub fn new(min: Duration, max: Duration) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if max < min {
            return Err(BackoffError::MaxBelowMin);
        }
        Ok(ExponentialBackoff {
            min,
            max,
            failures: 0,
        })
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        // 2^20 x min is far beyond any sane max; capping the exponent keeps
        // the multiplication from overflowing in a loop that runs for days.
        let factor = 1u32 << self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        self.min.saturating_mul(factor).min(self.max)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn min(&self) -> Duration {
        self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_bad_bounds() {
        assert_eq!(
            ExponentialBackoff::new(ms(200), ms(100)).unwrap_err(),
            BackoffError::MaxBelowMin
        );
        assert_eq!(
            ExponentialBackoff::new(ms(0), ms(100)).unwrap_err(),
            BackoffError::ZeroMin
        );
    }

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut backoff = ExponentialBackoff::new(ms(100), ms(1000)).unwrap();
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(100));
    }

    #[test]
    fn never_overflows_never_shrinks_and_stops_doubling() {
        // A max out of reach: the capped exponent (2^20) bounds the delay,
        // and a loop that fails for days neither panics nor wraps around.
        let mut backoff = ExponentialBackoff::new(ms(1), Duration::MAX).unwrap();
        let mut previous = Duration::ZERO;
        for _ in 0..1000 {
            let delay = backoff.next_delay();
            assert!(delay >= previous, "{delay:?} after {previous:?}");
            previous = delay;
        }
        assert_eq!(previous, ms(1 << 20));
        // A min whose fourfold overflows: the delay saturates at max.
        let huge = Duration::from_secs(u64::MAX / 3);
        let mut backoff = ExponentialBackoff::new(huge, Duration::MAX).unwrap();
        assert_eq!(backoff.next_delay(), huge);
        assert_eq!(backoff.next_delay(), huge * 2);
        assert_eq!(backoff.next_delay(), Duration::MAX);
        assert_eq!(backoff.next_delay(), Duration::MAX);
    }
}
