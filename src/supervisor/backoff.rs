//! How long to wait before the next turnserver spawn.

use std::time::Duration;

use crate::backoff::{BackoffError, ExponentialBackoff};

/// Failed starts in a row after which the supervisor reports a crash loop.
pub const CRASH_LOOP_EXITS: u32 = 3;

/// Exponential restart delay for a turnserver that cannot start.
///
/// A child that never answered a probe is a failed start: the delay before
/// the next spawn is `min`, doubling with each further failed start up to
/// `max`, so a bad flag or a broken host costs little CPU and log volume.
///
/// A child that did answer was serving: its death is an incident to repair
/// as fast as possible, so the next spawn waits only `min` whatever the
/// streak. The streak of failed starts resets once a child has been healthy
/// for `stable_after`; a child that flaps between serving and failing to
/// start keeps backing off.
#[derive(Debug, Clone)]
pub struct RestartBackoff {
    failed_starts: ExponentialBackoff,
    stable_after: Duration,
}

impl RestartBackoff {
    pub fn new(min: Duration, max: Duration, stable_after: Duration) -> Result<Self, BackoffError> {
        Ok(RestartBackoff {
            failed_starts: ExponentialBackoff::new(min, max)?,
            stable_after,
        })
    }

    /// Records an exit and returns the delay before the next spawn.
    /// `healthy_for` is how long the child answered probes, `None` if it
    /// never did.
    pub fn on_exit(&mut self, healthy_for: Option<Duration>) -> Duration {
        match healthy_for {
            Some(healthy_for) => {
                if healthy_for >= self.stable_after {
                    self.failed_starts.reset();
                }
                self.failed_starts.min()
            }
            None => self.failed_starts.next_delay(),
        }
    }

    /// Failed starts since the last stable run.
    pub fn failed_starts(&self) -> u32 {
        self.failed_starts.failures()
    }

    pub fn in_crash_loop(&self) -> bool {
        self.failed_starts() >= CRASH_LOOP_EXITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failed_starts_double_up_to_max() {
        let mut backoff = RestartBackoff::new(ms(100), ms(1000), ms(5000)).unwrap();
        let delays: Vec<_> = (0..7).map(|_| backoff.on_exit(None)).collect();
        assert_eq!(
            delays,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        assert!(backoff.in_crash_loop());
    }

    #[test]
    fn a_child_that_served_restarts_after_min_every_time() {
        let mut backoff = RestartBackoff::new(ms(100), ms(30_000), ms(60_000)).unwrap();
        for _ in 0..20 {
            assert_eq!(backoff.on_exit(Some(ms(10))), ms(100));
        }
        assert!(!backoff.in_crash_loop());
    }

    #[test]
    fn streak_resets_only_after_a_stable_run() {
        let mut backoff = RestartBackoff::new(ms(100), ms(30_000), ms(5000)).unwrap();
        for _ in 0..5 {
            backoff.on_exit(None);
        }
        // Serving briefly restarts fast but keeps the streak.
        assert_eq!(backoff.on_exit(Some(ms(4999))), ms(100));
        assert_eq!(backoff.failed_starts(), 5);
        assert_eq!(backoff.on_exit(None), ms(3200));
        assert_eq!(backoff.on_exit(Some(ms(5000))), ms(100));
        assert!(!backoff.in_crash_loop());
        assert_eq!(backoff.on_exit(None), ms(100));
        assert_eq!(backoff.on_exit(None), ms(200));
    }
}
