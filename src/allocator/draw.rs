//! The two pieces of a weighted or random pick that must cost next to
//! nothing at 10,000 hosts: finding the host whose share of a running
//! total holds a point, and the random number that chooses the point.
//!
//! `Cumulative` keeps inclusive prefix sums beside a guide table (the
//! "indexed search" of Chen and Asau): one bucket per member, each holding
//! the first member whose sum passes the bucket's start. A lookup reads
//! one bucket and steps forward over the few members that end inside it,
//! so it is O(1) on average and returns exactly what a binary search over
//! the sums returns: the same host for the same point, so weighted's
//! low-discrepancy sequence keeps its even spread, which an alias table
//! (which splits a host's share over many places of [0, 1)) would not.
//!
//! [`PickRng`] is SplitMix64: picks need numbers that are uniform and
//! cheap, not unpredictable (nobody gains by guessing which TURN host a
//! session gets, and the hosts are public to every caller anyway), so the
//! allocator does not pay for a cryptographic generator and its
//! thread-local handle on every pick. It is seedable for simulations.

use std::cell::Cell;

use rand::RngCore;

/// Prefix sums of non-negative weights and their guide table.
#[derive(Debug, Default)]
pub(crate) struct Cumulative {
    /// Inclusive prefix sums, each beside the position (in the host list)
    /// of the member whose weight it ends with, so a lookup reads both
    /// from one cache line.
    entries: Box<[Entry]>,
    /// `guide[b]`: a member at or before the first whose sum passes the
    /// start of bucket `b` (`b * total / buckets`).
    guide: Box<[u32]>,
    /// Buckets per unit of weight: `guide.len() / total`.
    scale: f64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    sum: f64,
    position: u32,
}

impl Cumulative {
    /// Sums the weights of `members` (position, weight), each weight
    /// clamped to ≥ 0 by the caller (a NaN counts as 0), and builds the
    /// guide: O(members).
    pub(crate) fn new(members: impl IntoIterator<Item = (u32, f64)>) -> Cumulative {
        let mut total = 0.0;
        let entries: Box<[Entry]> = members
            .into_iter()
            .map(|(position, weight)| {
                if weight > 0.0 {
                    total += weight;
                }
                Entry {
                    sum: total,
                    position,
                }
            })
            .collect();
        if !(total > 0.0 && total.is_finite()) {
            return Cumulative {
                entries,
                guide: Box::default(),
                scale: 0.0,
            };
        }
        let buckets = entries.len();
        let scale = buckets as f64 / total;
        // A bucket's start, lowered by far more than the rounding of
        // `at * scale` at pick time, so the guide never points past the
        // answer; stepping forward from an earlier member is still exact.
        let margin = total * 1e-9;
        let mut guide = Vec::with_capacity(buckets);
        let mut member = 0usize;
        for bucket in 0..buckets {
            let start = bucket as f64 / scale - margin;
            while member + 1 < entries.len() && entries[member].sum <= start {
                member += 1;
            }
            guide.push(member as u32);
        }
        Cumulative {
            entries,
            guide: guide.into(),
            scale,
        }
    }

    /// The sum of all weights (0 for none).
    pub(crate) fn total(&self) -> f64 {
        self.entries.last().map_or(0.0, |entry| entry.sum)
    }

    /// The position of the member whose share holds `at` (0 ≤ at <
    /// total). Only for a positive total.
    pub(crate) fn find(&self, at: f64) -> usize {
        self.entries[self.slot(at)].position as usize
    }

    /// The first member whose sum is above `at`, the last one when `at`
    /// reaches the total by rounding; an infinite total (no guide) falls
    /// back to a binary search.
    fn slot(&self, at: f64) -> usize {
        let last = self.entries.len() - 1;
        if self.guide.is_empty() {
            return self
                .entries
                .partition_point(|entry| entry.sum <= at)
                .min(last);
        }
        // A NaN or negative `at * scale` casts to 0, a huge one saturates.
        let bucket = ((at * self.scale) as usize).min(self.guide.len() - 1);
        let mut member = self.guide[bucket] as usize;
        while member < last && self.entries[member].sum <= at {
            member += 1;
        }
        member
    }

    #[cfg(test)]
    fn sums(&self) -> Vec<f64> {
        self.entries.iter().map(|entry| entry.sum).collect()
    }
}

/// SplitMix64: a 64-bit counter stepped by 2^64 / golden ratio and mixed.
/// Not cryptographic, on purpose (see the module docs).
#[derive(Debug, Clone)]
pub struct PickRng {
    state: u64,
}

thread_local! {
    /// Each thread's pick generator, seeded from the OS on first use.
    static THREAD_STATE: Cell<u64> = Cell::new(rand::random());
}

impl PickRng {
    /// A generator whose stream depends only on `seed`.
    pub fn seeded(seed: u64) -> PickRng {
        PickRng { state: seed }
    }

    /// Runs `draw` with this thread's generator, what the allocator uses.
    pub fn with_thread<T>(draw: impl FnOnce(&mut PickRng) -> T) -> T {
        THREAD_STATE.with(|state| {
            let mut rng = PickRng { state: state.get() };
            let result = draw(&mut rng);
            state.set(rng.state);
            result
        })
    }
}

impl RngCore for PickRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.state;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn fill_bytes(&mut self, destination: &mut [u8]) {
        for chunk in destination.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop, prop_assert_eq, prop_oneof, proptest, Just};
    use rand::Rng;

    /// What the guide must agree with: a binary search over the sums.
    fn binary_search(table: &Cumulative, at: f64) -> usize {
        let sums = table.sums();
        sums.partition_point(|&sum| sum <= at).min(sums.len() - 1)
    }

    /// Members at positions 0, 1, 2, ... with `weights`.
    fn table(weights: impl IntoIterator<Item = f64>) -> Cumulative {
        Cumulative::new((0..).zip(weights))
    }

    fn weight() -> impl proptest::strategy::Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(1e-300),
            Just(1e300),
            0.0..1.0f64,
            0.0..10_000.0f64,
        ]
    }

    proptest! {
        #[test]
        fn the_guide_finds_what_a_binary_search_finds(
            weights in prop::collection::vec(weight(), 1..300),
            points in prop::collection::vec(0.0..1.0f64, 1..200),
        ) {
            let table = table(weights.iter().copied());
            let total = table.total();
            if total > 0.0 && total.is_finite() {
                let edges = table.sums().into_iter().flat_map(|sum| {
                    [sum, f64::from_bits(sum.to_bits().saturating_sub(1)), sum / total]
                });
                for at in points.iter().map(|p| p * total).chain(edges).chain([0.0, total]) {
                    prop_assert_eq!(table.slot(at), binary_search(&table, at), "at {}", at);
                }
            }
        }
    }

    #[test]
    fn zero_weights_are_never_found() {
        let table = table([0.0, 3.0, 0.0, 0.0, 1.0, 0.0]);
        let mut rng = PickRng::seeded(1);
        let mut counts = [0usize; 6];
        for _ in 0..40_000 {
            counts[table.find(rng.random::<f64>() * table.total())] += 1;
        }
        assert_eq!((counts[0], counts[2], counts[3], counts[5]), (0, 0, 0, 0));
        // Chi-square with one degree of freedom, p = 0.001: 10.83.
        let expected = [30_000.0, 10_000.0];
        let chi: f64 = [counts[1], counts[4]]
            .iter()
            .zip(expected)
            .map(|(&seen, expected)| (seen as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi < 10.83, "{counts:?} chi-square {chi}");
    }

    #[test]
    fn one_member_takes_every_point() {
        let table = Cumulative::new([(7, 5.0)]);
        for at in [0.0, 2.5, 4.999_999, 5.0] {
            assert_eq!(table.find(at), 7);
        }
    }

    #[test]
    fn no_positive_weight_has_a_zero_total() {
        assert_eq!(table([0.0, 0.0, f64::NAN, -1.0]).total(), 0.0);
        assert_eq!(table([]).total(), 0.0);
    }

    #[test]
    fn an_infinite_total_falls_back_to_a_binary_search() {
        let table = table([1.0, f64::INFINITY, 2.0]);
        assert_eq!(table.total(), f64::INFINITY);
        for at in [0.0, 0.5, 1.0, 7.0, f64::MAX] {
            assert_eq!(table.slot(at), binary_search(&table, at), "at {at}");
        }
        assert_eq!(table.find(0.5), 0);
        assert_eq!(table.find(1e300), 1);
    }

    #[test]
    fn frequencies_over_ten_thousand_members_match_the_weights() {
        // Weights 1..=10,000: member m's share is (m + 1) / 50,005,000.
        let table = table((1..=10_000).map(f64::from));
        let mut rng = PickRng::seeded(9);
        let draws = 2_000_000;
        // Ten groups of 1,000 members each: a chi-square over the groups.
        let mut groups = [0usize; 10];
        for _ in 0..draws {
            groups[table.find(rng.random::<f64>() * table.total()) / 1000] += 1;
        }
        let chi: f64 = groups
            .iter()
            .enumerate()
            .map(|(group, &seen)| {
                let (low, high) = (group as f64 * 1000.0, group as f64 * 1000.0 + 1000.0);
                let share = (high * (high + 1.0) - low * (low + 1.0)) / 2.0 / 50_005_000.0;
                let expected = share * draws as f64;
                (seen as f64 - expected).powi(2) / expected
            })
            .sum();
        // Nine degrees of freedom, p = 0.001: 27.88.
        assert!(chi < 27.88, "{groups:?} chi-square {chi}");
    }

    #[test]
    fn a_seed_gives_one_stream_and_threads_get_their_own() {
        let stream = |seed| {
            let mut rng = PickRng::seeded(seed);
            [rng.next_u64(), rng.next_u64(), rng.next_u64()]
        };
        assert_eq!(stream(4), stream(4));
        assert_ne!(stream(4), stream(5));
        let here = PickRng::with_thread(|rng| rng.next_u64());
        let again = PickRng::with_thread(|rng| rng.next_u64());
        assert_ne!(here, again, "the thread's state advances");
        let mut bytes = [0u8; 13];
        PickRng::seeded(1).fill_bytes(&mut bytes);
        assert_ne!(bytes, [0u8; 13]);
    }
}
