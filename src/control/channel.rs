//! When the control channel counts as down (pure).
//!
//! A new turnserver's CLI may refuse connections for a while (seconds on a
//! loaded host), so a target that has never answered falls back only after
//! [`FAILURES_BEFORE_FALLBACK`] failed polls in a row spread over at least
//! [`STARTUP_ALLOWANCE`]; one that answered falls back at its first
//! failure. Each fall and each recovery is reported
//! once, so the log says it once, not at every poll.

use std::time::{Duration, Instant};

/// Failed polls in a row before a CLI that never answered counts as down.
pub const FAILURES_BEFORE_FALLBACK: u32 = 3;
/// How long a new turnserver's CLI may stay silent before that counts.
pub const STARTUP_ALLOWANCE: Duration = Duration::from_secs(10);

/// What a poll outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Now falling back to interface counters (log it).
    FellBack,
    /// Answering again after a fallback (log it).
    Recovered,
}

#[derive(Debug, Clone, Default)]
pub struct ChannelHealth {
    answered: bool,
    failures: u32,
    fallback: bool,
    target_since: Option<Instant>,
}

impl ChannelHealth {
    /// A new turnserver: its CLI gets the start-up allowance again; a
    /// fallback in progress stays (and is not reported again).
    pub fn new_target(&mut self, now: Instant) {
        self.answered = false;
        self.failures = 0;
        self.target_since = Some(now);
    }

    pub fn succeeded(&mut self) -> Transition {
        self.answered = true;
        self.failures = 0;
        if std::mem::take(&mut self.fallback) {
            Transition::Recovered
        } else {
            Transition::None
        }
    }

    pub fn failed(&mut self, now: Instant) -> Transition {
        self.failures = self.failures.saturating_add(1);
        let starting = self
            .target_since
            .is_some_and(|since| now.saturating_duration_since(since) < STARTUP_ALLOWANCE);
        let down = self.answered || (self.failures >= FAILURES_BEFORE_FALLBACK && !starting);
        if down && !self.fallback {
            self.fallback = true;
            Transition::FellBack
        } else {
            Transition::None
        }
    }

    pub fn is_fallback(&self) -> bool {
        self.fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_cli_gets_a_few_tries_and_each_change_is_reported_once() {
        let start = Instant::now();
        let later = start + STARTUP_ALLOWANCE;
        let mut health = ChannelHealth::default();
        health.new_target(start);
        for _ in 0..10 {
            assert_eq!(health.failed(start), Transition::None, "still starting");
        }
        assert_eq!(health.failed(later), Transition::FellBack);
        assert_eq!(health.failed(later), Transition::None);
        assert!(health.is_fallback());
        assert_eq!(health.succeeded(), Transition::Recovered);
        assert_eq!(health.succeeded(), Transition::None);
        // Once it answered, the first failure counts.
        assert_eq!(health.failed(start), Transition::FellBack);
        health.new_target(later);
        assert_eq!(health.failed(later), Transition::None);
        assert_eq!(health.succeeded(), Transition::Recovered);
        // Without the allowance, three failures in a row.
        let mut health = ChannelHealth::default();
        health.new_target(start);
        assert_eq!(health.failed(later), Transition::None);
        assert_eq!(health.failed(later), Transition::None);
        assert_eq!(health.failed(later), Transition::FellBack);
    }
}
