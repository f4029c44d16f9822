//! The relay rate from coturn's own counters (pure).
//!
//! coturn's per-session `rate:` is an average over the session's whole
//! life, so it cannot say what a host relays now. Its cumulative `usage`
//! counters can: the rate is the change of each session's byte counters
//! between two complete listings, divided by the time between them.
//!
//! - A session seen in both listings contributes its growth. Counters that
//!   went down mean the id was reused by a new session, which counts as new.
//! - A session that started since the previous listing contributes all its
//!   bytes when its age says it started within the interval.
//! - A session that ended in between contributes nothing for its last
//!   moments: coturn forgets it, and its counters were at most 4,096 packets
//!   behind anyway (coturn refreshes them that often). The rate can
//!   therefore read low, never high.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::command::SessionId;
use super::listing::{SessionListing, Usage};

/// One complete listing, remembered for the next.
#[derive(Debug, Clone)]
pub struct CounterSnapshot {
    taken_at: Instant,
    usage: HashMap<SessionId, Usage>,
}

/// Bytes per second relayed, as coturn counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RelayRate {
    /// From clients and peers into turnserver.
    pub received_bytes_per_sec: f64,
    /// From turnserver to clients and peers.
    pub sent_bytes_per_sec: f64,
    /// Sessions that ended between the two listings.
    pub sessions_ended: usize,
    /// Sessions that started between the two listings.
    pub sessions_started: usize,
}

impl CounterSnapshot {
    /// `None` for a listing that does not hold every session (a `ps` cut
    /// at `cli-max-output-sessions`): a rate from part of the sessions
    /// would be wrong without saying so.
    pub fn new(listing: &SessionListing, taken_at: Instant) -> Option<CounterSnapshot> {
        listing.is_complete().then(|| CounterSnapshot {
            taken_at,
            usage: listing
                .sessions
                .iter()
                .map(|session| (session.id, session.usage))
                .collect(),
        })
    }

    /// The rate between `self` (earlier) and `later`. `None` when no time
    /// passed between them.
    pub fn rate_until(&self, later: &CounterSnapshot, ages: &SessionAges) -> Option<RelayRate> {
        let elapsed = later.taken_at.checked_duration_since(self.taken_at)?;
        if elapsed.is_zero() {
            return None;
        }
        let mut received = 0u64;
        let mut sent = 0u64;
        let mut started = 0;
        for (id, now) in &later.usage {
            let growth = match self.usage.get(id) {
                Some(before)
                    if now.received_bytes >= before.received_bytes
                        && now.sent_bytes >= before.sent_bytes =>
                {
                    Some((
                        now.received_bytes - before.received_bytes,
                        now.sent_bytes - before.sent_bytes,
                    ))
                }
                // New, or the id was reused: all its bytes are recent if it
                // is younger than the interval.
                _ => {
                    started += 1;
                    ages.started_within(*id, elapsed)
                        .then_some((now.received_bytes, now.sent_bytes))
                }
            };
            if let Some((r, s)) = growth {
                received = received.saturating_add(r);
                sent = sent.saturating_add(s);
            }
        }
        let ended = self
            .usage
            .keys()
            .filter(|id| !later.usage.contains_key(id))
            .count();
        let secs = elapsed.as_secs_f64();
        Some(RelayRate {
            received_bytes_per_sec: received as f64 / secs,
            sent_bytes_per_sec: sent as f64 / secs,
            sessions_ended: ended,
            sessions_started: started,
        })
    }
}

/// How old each session in the later listing is, in whole seconds as
/// coturn prints them.
#[derive(Debug, Clone, Default)]
pub struct SessionAges(HashMap<SessionId, Option<u64>>);

impl SessionAges {
    pub fn from_listing(listing: &SessionListing) -> SessionAges {
        SessionAges(
            listing
                .sessions
                .iter()
                .map(|session| (session.id, session.age_secs))
                .collect(),
        )
    }

    /// coturn rounds ages down to a second, so a session is recent when
    /// its age is below the interval rounded up.
    fn started_within(&self, id: SessionId, interval: Duration) -> bool {
        let limit = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
        matches!(self.0.get(&id), Some(Some(age)) if *age <= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coturn_cli::listing::{parse_sessions, Session};

    fn listing(sessions: &[(u64, u64, u64, u64)]) -> SessionListing {
        let template = parse_sessions(include_str!("testdata/ps_small.out"))
            .unwrap()
            .sessions
            .remove(0);
        let sessions: Vec<Session> = sessions
            .iter()
            .map(|&(id, age, received, sent)| Session {
                id: SessionId(id),
                age_secs: Some(age),
                usage: Usage {
                    received_bytes: received,
                    sent_bytes: sent,
                    ..Usage::default()
                },
                ..template.clone()
            })
            .collect();
        SessionListing {
            total: sessions.len() as u64,
            sessions,
            truncated: false,
        }
    }

    fn rate(before: &SessionListing, after: &SessionListing, secs: u64) -> RelayRate {
        let start = Instant::now();
        let earlier = CounterSnapshot::new(before, start).unwrap();
        let later = CounterSnapshot::new(after, start + Duration::from_secs(secs)).unwrap();
        earlier
            .rate_until(&later, &SessionAges::from_listing(after))
            .unwrap()
    }

    #[test]
    fn growth_of_known_sessions_over_the_interval() {
        let before = listing(&[(1, 100, 1_000, 2_000), (2, 50, 0, 0)]);
        let after = listing(&[(1, 105, 6_000, 12_000), (2, 55, 500, 1_000)]);
        let rate = rate(&before, &after, 5);
        assert_eq!(rate.received_bytes_per_sec, 1_100.0);
        assert_eq!(rate.sent_bytes_per_sec, 2_200.0);
        assert_eq!((rate.sessions_started, rate.sessions_ended), (0, 0));
    }

    #[test]
    fn a_new_session_counts_whole_and_an_ended_one_nothing() {
        let before = listing(&[(1, 100, 1_000, 1_000), (2, 50, 9_000, 9_000)]);
        let after = listing(&[(1, 102, 1_000, 1_000), (3, 1, 4_000, 2_000)]);
        let rate = rate(&before, &after, 2);
        assert_eq!(rate.received_bytes_per_sec, 2_000.0);
        assert_eq!(rate.sent_bytes_per_sec, 1_000.0);
        assert_eq!((rate.sessions_started, rate.sessions_ended), (1, 1));
    }

    #[test]
    fn a_reused_id_with_smaller_counters_is_a_new_session() {
        let before = listing(&[(1, 100, 50_000, 50_000)]);
        let after = listing(&[(1, 1, 300, 100)]);
        let rate = rate(&before, &after, 1);
        assert_eq!(rate.received_bytes_per_sec, 300.0);
        assert_eq!(rate.sessions_started, 1);
    }

    #[test]
    fn an_old_session_not_seen_before_is_not_counted_as_recent_traffic() {
        // Seen for the first time (the agent just started polling) but a
        // minute old: its bytes are not from this interval.
        let before = listing(&[]);
        let after = listing(&[(7, 60, 1_000_000, 1_000_000)]);
        let rate = rate(&before, &after, 2);
        assert_eq!(rate.received_bytes_per_sec, 0.0);
    }

    #[test]
    fn a_cut_listing_gives_no_snapshot_and_no_time_gives_no_rate() {
        let mut cut = listing(&[(1, 1, 1, 1)]);
        cut.truncated = true;
        assert!(CounterSnapshot::new(&cut, Instant::now()).is_none());
        let whole = listing(&[(1, 1, 1, 1)]);
        let now = Instant::now();
        let snapshot = CounterSnapshot::new(&whole, now).unwrap();
        assert_eq!(
            snapshot.rate_until(&snapshot, &SessionAges::from_listing(&whole)),
            None
        );
    }
}
