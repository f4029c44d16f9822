//! When the control channel counts as down (pure).
//!
//! A new turnserver's CLI may refuse the first connection for a moment, so
//! a target that has never answered falls back only after
//! [`FAILURES_BEFORE_FALLBACK`] failed polls in a row; one that answered
//! falls back at its first failure. Each fall and each recovery is reported
//! once, so the log says it once, not at every poll.

/// Failed polls in a row before a CLI that never answered counts as down.
pub const FAILURES_BEFORE_FALLBACK: u32 = 3;

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
}

impl ChannelHealth {
    /// A new turnserver: its CLI gets the start-up allowance again; a
    /// fallback in progress stays (and is not reported again).
    pub fn new_target(&mut self) {
        self.answered = false;
        self.failures = 0;
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

    pub fn failed(&mut self) -> Transition {
        self.failures = self.failures.saturating_add(1);
        let down = self.answered || self.failures >= FAILURES_BEFORE_FALLBACK;
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
        let mut health = ChannelHealth::default();
        assert_eq!(health.failed(), Transition::None);
        assert_eq!(health.failed(), Transition::None);
        assert_eq!(health.failed(), Transition::FellBack);
        assert_eq!(health.failed(), Transition::None);
        assert!(health.is_fallback());
        assert_eq!(health.succeeded(), Transition::Recovered);
        assert_eq!(health.succeeded(), Transition::None);
        // Once it answered, the first failure counts.
        assert_eq!(health.failed(), Transition::FellBack);
        health.new_target();
        assert_eq!(health.failed(), Transition::None);
        assert_eq!(health.succeeded(), Transition::Recovered);
    }
}
