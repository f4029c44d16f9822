//! What a pick needs, computed once per view: the eligible hosts for every
//! ISP/region preference, prefix sums with a guide table for the weighted
//! draws and the most free hosts first. A pick is then a hash lookup, an
//! atomic increment or a guide-table lookup (O(1) on average, see
//! [`super::draw`]): no scan of the fleet, no allocation, no lock.
//!
//! [`PickIndex`] is a pure function of a host list and `min_free_mbps`; it
//! holds positions into that list, not hosts. [`Selector`] holds what one
//! allocator changes as it picks (round-robin cursors, the weighted draw's
//! sequence) in atomics, keyed by a stable hash of the preference group, so
//! it outlives any one index and a new view does not restart the turns.
//!
//! Candidates are the same as [`super::strategy::candidates`] yields:
//! eligible hosts (enough free traffic, serving the ISP or every ISP),
//! narrowed to the preferred region when any eligible host is there.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use super::draw::Cumulative;
use super::strategy::{Preference, Strategy};
use super::Host;

/// Round-robin and weighted sequences kept per preference group; two
/// groups that hash to the same slot share one sequence, which only
/// interleaves their turns.
const CURSOR_SLOTS: usize = 64;

/// How many of the most free hosts each group keeps in order.
const MOST_FREE_KEPT: usize = 8;

/// 2^64 / golden ratio: consecutive multiples spread evenly over [0, 1)
/// (a Weyl sequence), so the weighted draw matches the weights within a
/// few picks over any window.
const GOLDEN_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// One allocator's changing selection state, shared by its callers.
#[derive(Debug)]
pub struct Selector {
    cursors: [AtomicU64; CURSOR_SLOTS],
}

impl Default for Selector {
    /// Cursors start at random places, so replicas started together do not
    /// walk the fleet in step.
    fn default() -> Self {
        Selector::seeded(rand::random())
    }
}

impl Selector {
    /// Cursors derived from `seed`: deterministic, for simulations and tests.
    pub fn seeded(seed: u64) -> Selector {
        let mut state = seed;
        Selector {
            cursors: std::array::from_fn(|_| {
                state = state.wrapping_add(GOLDEN_STEP);
                AtomicU64::new(mix(state))
            }),
        }
    }

    fn next(&self, slot: usize) -> u64 {
        self.cursors[slot].fetch_add(1, Ordering::Relaxed)
    }
}

/// Eligible hosts of one preference group, as positions in the host list.
#[derive(Debug, Default)]
struct Group {
    members: Box<[u32]>,
    /// Free traffic over `members`.
    cumulative_free: Cumulative,
    /// What weighted draws by: free traffic above the reserve (the same
    /// table as `cumulative_free` when there is no reserve).
    cumulative_weight: Option<Cumulative>,
    /// Capacity (free traffic when a host does not publish a larger
    /// capacity) over `members`.
    cumulative_capacity: Cumulative,
    /// Up to [`MOST_FREE_KEPT`] members, most free first, ties by position.
    most_free: Box<[u32]>,
    /// Round-robin and weighted cursor slots of the sets this group leads.
    turn_slot: usize,
    weyl_slot: usize,
}

impl Group {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn weight(&self) -> &Cumulative {
        self.cumulative_weight
            .as_ref()
            .unwrap_or(&self.cumulative_free)
    }

    fn free(&self) -> &Cumulative {
        &self.cumulative_free
    }

    fn capacity(&self) -> &Cumulative {
        &self.cumulative_capacity
    }
}

/// The hosts naming one ISP.
#[derive(Debug, Default)]
struct IspGroups {
    all: Group,
    by_region: NameMap<Group>,
}

/// Everything a pick needs, built once per host list.
#[derive(Debug, Default)]
pub struct PickIndex {
    /// Every eligible host, and those per region.
    all: Group,
    all_by_region: NameMap<Group>,
    /// Eligible hosts with an empty ISP list (they serve every ISP).
    wildcard: Group,
    wildcard_by_region: NameMap<Group>,
    /// Eligible hosts naming each ISP.
    by_isp: NameMap<IspGroups>,
    /// Per host position: what least-loaded compares, headroom over
    /// capacity.
    headroom: Box<[f64]>,
    /// Per host position: free traffic, for the most-free order.
    free: Box<[f64]>,
    hosts: usize,
}

/// The candidates of one preference: one group, or two disjoint ones (the
/// hosts naming the ISP and those serving every ISP).
#[derive(Clone, Copy)]
struct Candidates<'a> {
    first: &'a Group,
    second: Option<&'a Group>,
}

impl Candidates<'_> {
    fn len(&self) -> usize {
        self.first.len() + self.second.map_or(0, Group::len)
    }

    fn nth(&self, n: usize) -> usize {
        let first = self.first.len();
        match self.second {
            Some(second) if n >= first => second.members[n - first] as usize,
            _ => self.first.members[n] as usize,
        }
    }

    /// The member whose share of `cumulative` holds `at` (0 ≤ at < total).
    fn by_weight(&self, at: f64, cumulative: fn(&Group) -> &Cumulative) -> usize {
        let first_total = cumulative(self.first).total();
        let (group, at) = match self.second {
            Some(second) if at >= first_total && !second.members.is_empty() => {
                (second, at - first_total)
            }
            _ => (self.first, at),
        };
        cumulative(group).find(at)
    }

    fn total(&self, cumulative: fn(&Group) -> &Cumulative) -> f64 {
        cumulative(self.first).total() + self.second.map_or(0.0, |g| cumulative(g).total())
    }
}

impl PickIndex {
    /// Indexes `hosts` (a view's list, in its order) for picks that skip
    /// hosts with less than `min_free_mbps` free. O(hosts × ISPs per host).
    pub fn build<H: Borrow<Host>>(hosts: &[H], min_free_mbps: f64) -> PickIndex {
        PickIndex::build_reserving(hosts, min_free_mbps, 0.0)
    }

    /// Like [`PickIndex::build`], with weighted drawing in proportion to
    /// free traffic above `reserve_percent` of each host's capacity (in
    /// proportion to free traffic when no candidate has any above it).
    pub fn build_reserving<H: Borrow<Host>>(
        hosts: &[H],
        min_free_mbps: f64,
        reserve_percent: f64,
    ) -> PickIndex {
        /// Members naming one ISP: all of them, and per region.
        type IspLists = (Vec<u32>, NameMap<Vec<u32>>);
        #[derive(Default)]
        struct Lists {
            all: Vec<u32>,
            all_by_region: NameMap<Vec<u32>>,
            wildcard: Vec<u32>,
            wildcard_by_region: NameMap<Vec<u32>>,
            by_isp: NameMap<IspLists>,
        }
        let mut lists = Lists::default();
        let mut isps: Vec<&str> = Vec::new();
        for (position, host) in hosts.iter().enumerate() {
            let host: &Host = host.borrow();
            // A NaN free traffic is never eligible.
            let eligible = host.payload.free_traffic >= min_free_mbps;
            if !eligible {
                continue;
            }
            let position = position as u32;
            let region = host.payload.region.as_str();
            lists.all.push(position);
            push(&mut lists.all_by_region, region, position);
            if host.payload.isp.is_empty() {
                lists.wildcard.push(position);
                push(&mut lists.wildcard_by_region, region, position);
                continue;
            }
            isps.clear();
            isps.extend(host.payload.isp.iter().map(String::as_str));
            isps.sort_unstable();
            isps.dedup();
            for isp in &isps {
                let (all, by_region) = match lists.by_isp.get_mut(*isp) {
                    Some(entry) => entry,
                    None => lists.by_isp.entry((*isp).into()).or_default(),
                };
                all.push(position);
                push(by_region, region, position);
            }
        }
        let free: Box<[f64]> = hosts
            .iter()
            .map(|host| host.borrow().payload.free_traffic)
            .collect();
        let capacity: Box<[f64]> = hosts
            .iter()
            .map(|host| {
                let payload = &host.borrow().payload;
                payload.capacity_mbps.max(payload.free_traffic).max(0.0)
            })
            .collect();
        let session_mbps = fleet_session_mbps(hosts);
        // Least-loaded compares headroom as a share of capacity: in a
        // mixed fleet, Mbps alone would fill the large hosts to the brim
        // (the fleet simulator's 95 % run), since their hysteresis band
        // alone is as wide as the headroom the fleet runs at.
        let headroom = hosts
            .iter()
            .zip(capacity.iter())
            .map(|(host, &capacity)| {
                let headroom = headroom_mbps(&host.borrow().payload, session_mbps);
                if capacity > 0.0 {
                    headroom / capacity
                } else {
                    0.0
                }
            })
            .collect();
        let group = |members: Vec<u32>, key: GroupKey<'_>| -> Group {
            let free_of = |member: u32| free[member as usize].max(0.0);
            let cumulative_free =
                Cumulative::new(members.iter().map(|&member| (member, free_of(member))));
            let cumulative_weight = (reserve_percent != 0.0).then(|| {
                Cumulative::new(members.iter().map(|&member| {
                    let reserve = capacity[member as usize] * reserve_percent / 100.0;
                    (member, (free_of(member) - reserve).max(0.0))
                }))
            });
            let cumulative_capacity = Cumulative::new(
                members
                    .iter()
                    .map(|&member| (member, capacity[member as usize])),
            );
            let mut most_free = members.clone();
            // Stable: equal free traffic keeps the list's (name) order.
            most_free.sort_by(|&a, &b| free[b as usize].total_cmp(&free[a as usize]));
            most_free.truncate(MOST_FREE_KEPT);
            Group {
                members: members.into(),
                cumulative_free,
                cumulative_weight,
                cumulative_capacity,
                most_free: most_free.into(),
                turn_slot: key.slot(0),
                weyl_slot: key.slot(1),
            }
        };
        let regions = |map: NameMap<Vec<u32>>, kind: u8, isp: &str| {
            map.into_iter()
                .map(|(region, members)| {
                    let group = group(members, GroupKey(kind, isp, Some(&region)));
                    (region, group)
                })
                .collect::<NameMap<_>>()
        };
        PickIndex {
            all: group(lists.all, GroupKey(0, "", None)),
            all_by_region: regions(lists.all_by_region, 0, ""),
            wildcard: group(lists.wildcard, GroupKey(1, "", None)),
            wildcard_by_region: regions(lists.wildcard_by_region, 1, ""),
            by_isp: lists
                .by_isp
                .into_iter()
                .map(|(isp, (all, by_region))| {
                    let groups = IspGroups {
                        all: group(all, GroupKey(2, &isp, None)),
                        by_region: regions(by_region, 2, &isp),
                    };
                    (isp, groups)
                })
                .collect(),
            headroom,
            free,
            hosts: hosts.len(),
        }
    }

    /// Hosts the index was built from.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Eligible hosts for `preference`.
    pub fn candidate_count(&self, preference: &Preference) -> usize {
        self.candidates(preference).len()
    }

    /// A position in the indexed host list, or `None` when no host
    /// qualifies. `rng` serves the random draws (random, least-loaded).
    pub fn pick<R: Rng + ?Sized>(
        &self,
        strategy: Strategy,
        preference: &Preference,
        selector: &Selector,
        rng: &mut R,
    ) -> Option<usize> {
        let candidates = self.candidates(preference);
        let count = candidates.len();
        if count == 0 {
            return None;
        }
        let round_robin = |candidates: &Candidates<'_>| {
            let turn = selector.next(candidates.first.turn_slot);
            candidates.nth((turn % count as u64) as usize)
        };
        Some(match strategy {
            Strategy::RoundRobin => round_robin(&candidates),
            Strategy::Random => candidates.nth(rng.random_range(0..count)),
            Strategy::MostFree => self.most_free(&candidates),
            Strategy::Weighted => {
                let above_reserve = candidates.total(Group::weight);
                let free = candidates.total(Group::free);
                let fraction = || {
                    let step = selector.next(candidates.first.weyl_slot);
                    (step.wrapping_mul(GOLDEN_STEP) >> 11) as f64 / (1u64 << 53) as f64
                };
                if above_reserve > 0.0 {
                    candidates.by_weight(fraction() * above_reserve, Group::weight)
                } else if free > 0.0 {
                    candidates.by_weight(fraction() * free, Group::free)
                } else {
                    round_robin(&candidates)
                }
            }
            Strategy::LeastLoaded => {
                let total = candidates.total(Group::capacity);
                let draw = |rng: &mut R| {
                    if total > 0.0 {
                        candidates.by_weight(rng.random::<f64>() * total, Group::capacity)
                    } else {
                        candidates.nth(rng.random_range(0..count))
                    }
                };
                let (a, b) = (draw(rng), draw(rng));
                if self.headroom[b] > self.headroom[a] {
                    b
                } else {
                    a
                }
            }
        })
    }

    fn most_free(&self, candidates: &Candidates<'_>) -> usize {
        let best = |group: &Group| group.most_free.first().map(|&p| p as usize);
        match (best(candidates.first), candidates.second.and_then(best)) {
            (Some(a), Some(b)) => {
                // Ties go to the earlier host by name (list order).
                match self.free[a].total_cmp(&self.free[b]) {
                    std::cmp::Ordering::Less => b,
                    std::cmp::Ordering::Greater => a,
                    std::cmp::Ordering::Equal => a.min(b),
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            // Unreachable with a non-empty candidate set; stay total.
            (None, None) => candidates.nth(0),
        }
    }

    fn candidates(&self, preference: &Preference) -> Candidates<'_> {
        let region = preference.region.as_deref();
        let Some(isp) = preference.isp.as_deref() else {
            let first = region
                .and_then(|region| self.all_by_region.get(region))
                .unwrap_or(&self.all);
            return Candidates {
                first,
                second: None,
            };
        };
        let named = self.by_isp.get(isp);
        if let Some(region) = region {
            let named_here = named.and_then(|groups| groups.by_region.get(region));
            let wildcard_here = self.wildcard_by_region.get(region);
            match (named_here, wildcard_here) {
                (Some(first), second) => return Candidates { first, second },
                (None, Some(first)) => {
                    return Candidates {
                        first,
                        second: None,
                    }
                }
                (None, None) => {}
            }
        }
        match named {
            Some(groups) => Candidates {
                first: &groups.all,
                second: Some(&self.wildcard),
            },
            None => Candidates {
                first: &self.wildcard,
                second: None,
            },
        }
    }
}

/// Groups by ISP or region name. A pick with a preference looks up to
/// three names, so the hash is FNV-1a (a few multiplications for a short
/// name) rather than SipHash; the keys are the names the fleet's own hosts
/// publish, so nobody outside chooses what collides.
type NameMap<V> = HashMap<Box<str>, V, BuildHasherDefault<NameHasher>>;

/// 64-bit FNV-1a.
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A group's identity, hashed to its cursor slots: (kind, ISP, region).
struct GroupKey<'a>(u8, &'a str, Option<&'a str>);

impl GroupKey<'_> {
    fn slot(&self, sequence: u8) -> usize {
        // SipHash with fixed keys: the same group gets the same slot in
        // every index, so turns continue across views.
        let mut hasher = DefaultHasher::new();
        (sequence, self.0, self.1, self.2).hash(&mut hasher);
        (hasher.finish() % CURSOR_SLOTS as u64) as usize
    }
}

fn push(map: &mut NameMap<Vec<u32>>, key: &str, position: u32) {
    match map.get_mut(key) {
        Some(list) => list.push(position),
        None => map.entry(key.into()).or_default().push(position),
    }
}

/// splitmix64's finaliser: spreads a counter over all 64 bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Mbps one TURN allocation carries across the fleet, from hosts that
/// publish `allocations` and a capacity: `None` when none does.
pub fn fleet_session_mbps<H: Borrow<Host>>(hosts: &[H]) -> Option<f64> {
    let (mut used, mut allocations) = (0.0, 0u64);
    for host in hosts {
        let payload = &host.borrow().payload;
        if let Some(count) = payload.allocations {
            if count > 0 && payload.capacity_mbps > 0.0 {
                used += (payload.capacity_mbps - payload.free_traffic).max(0.0);
                allocations = allocations.saturating_add(count);
            }
        }
    }
    (allocations > 0 && used > 0.0).then(|| used / allocations as f64)
}

/// What least-loaded compares: free traffic, or less when the host's
/// allocations at the fleet's Mbps per allocation say it is fuller than
/// its traffic shows (sessions just allocated have not ramped up yet).
pub fn headroom_mbps(payload: &crate::znode::HostPayload, session_mbps: Option<f64>) -> f64 {
    let free = payload.free_traffic.max(0.0);
    match (payload.allocations, session_mbps) {
        (Some(count), Some(per_session)) if payload.capacity_mbps > 0.0 => {
            free.min((payload.capacity_mbps - count as f64 * per_session).max(0.0))
        }
        _ => free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::strategy::candidates;
    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as _;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use crate::allocator::strategy::tests::{preference, test_host as host};

    const STRATEGIES: [Strategy; 5] = [
        Strategy::RoundRobin,
        Strategy::MostFree,
        Strategy::Weighted,
        Strategy::Random,
        Strategy::LeastLoaded,
    ];

    fn fleet() -> impl proptest::strategy::Strategy<Value = Vec<Host>> {
        let one = (
            0u32..400,
            prop_oneof![Just(100.0), Just(1000.0), Just(10000.0)],
            prop::sample::select(vec!["", "north", "south"]),
            prop::collection::vec(
                prop::sample::select(vec!["telecom", "cable", "fiber"]),
                0..3,
            ),
        );
        prop::collection::vec(one, 0..40).prop_map(|hosts| {
            hosts
                .into_iter()
                .enumerate()
                .map(|(n, (free, capacity, region, isp))| {
                    host(
                        &format!("h{n:03}"),
                        f64::from(free) / 2.0,
                        capacity,
                        region,
                        &isp,
                    )
                })
                .collect()
        })
    }

    fn any_preference() -> impl proptest::strategy::Strategy<Value = Preference> {
        (
            prop::option::of(prop::sample::select(vec![
                "telecom", "cable", "fiber", "other",
            ])),
            prop::option::of(prop::sample::select(vec!["", "north", "south", "west"])),
        )
            .prop_map(|(isp, region)| preference(isp, region))
    }

    proptest! {
        #[test]
        fn every_strategy_picks_only_what_the_scan_calls_eligible(
            hosts in fleet(),
            preference in any_preference(),
            min_free in prop_oneof![Just(0.0), Just(10.0), Just(150.0)],
            reserve in prop_oneof![Just(0.0), Just(2.0), Just(50.0)],
            seed in any::<u64>(),
        ) {
            let index = PickIndex::build_reserving(&hosts, min_free, reserve);
            let expected: Vec<usize> = candidates(&hosts, &preference, min_free).collect();
            prop_assert_eq!(index.candidate_count(&preference), expected.len());
            let selector = Selector::seeded(seed);
            let mut rng = SmallRng::seed_from_u64(seed);
            for strategy in STRATEGIES {
                for _ in 0..20 {
                    let pick = index.pick(strategy, &preference, &selector, &mut rng);
                    match pick {
                        None => prop_assert!(expected.is_empty()),
                        Some(position) => prop_assert!(
                            expected.contains(&position),
                            "{:?} picked {} outside {:?}", strategy, position, expected
                        ),
                    }
                }
            }
        }

        #[test]
        fn round_robin_visits_each_candidate_once_per_cycle(
            hosts in fleet(),
            preference in any_preference(),
            seed in any::<u64>(),
        ) {
            let index = PickIndex::build(&hosts, 0.0);
            let mut expected: Vec<usize> = candidates(&hosts, &preference, 0.0).collect();
            let selector = Selector::seeded(seed);
            let mut rng = SmallRng::seed_from_u64(seed);
            for _cycle in 0..3 {
                let mut seen: Vec<usize> = (0..expected.len())
                    .map(|_| index.pick(Strategy::RoundRobin, &preference, &selector, &mut rng).unwrap())
                    .collect();
                seen.sort_unstable();
                expected.sort_unstable();
                prop_assert_eq!(&seen, &expected);
            }
        }

        #[test]
        fn most_free_is_the_scan_maximum(hosts in fleet(), preference in any_preference()) {
            let index = PickIndex::build(&hosts, 10.0);
            let best = candidates(&hosts, &preference, 10.0).max_by(|&a, &b| {
                hosts[a].payload.free_traffic
                    .total_cmp(&hosts[b].payload.free_traffic)
                    .then_with(|| b.cmp(&a))
            });
            let mut rng = SmallRng::seed_from_u64(1);
            let pick = index.pick(Strategy::MostFree, &preference, &Selector::seeded(1), &mut rng);
            prop_assert_eq!(pick, best);
        }
    }

    #[test]
    fn weighted_frequencies_match_free_traffic_over_any_long_window() {
        let hosts = vec![
            host("a", 500.0, 1000.0, "", &[]),
            host("b", 300.0, 1000.0, "", &[]),
            host("c", 150.0, 1000.0, "", &[]),
            host("d", 50.0, 1000.0, "", &[]),
        ];
        let index = PickIndex::build(&hosts, 0.0);
        let selector = Selector::seeded(7);
        let mut rng = SmallRng::seed_from_u64(7);
        let picks: Vec<usize> = (0..20_000)
            .map(|_| {
                index
                    .pick(
                        Strategy::Weighted,
                        &Preference::default(),
                        &selector,
                        &mut rng,
                    )
                    .unwrap()
            })
            .collect();
        for window in [1000, 10_000] {
            for start in [0, 3333, 9999] {
                let mut counts = [0usize; 4];
                for &pick in &picks[start..start + window] {
                    counts[pick] += 1;
                }
                for (host, count) in counts.iter().enumerate() {
                    let expected = hosts[host].payload.free_traffic / 1000.0 * window as f64;
                    assert!(
                        (*count as f64 - expected).abs() <= 4.0,
                        "window {window} at {start}: {counts:?}"
                    );
                }
            }
        }
        // Smooth: the heaviest host never gets more than 2 in a row.
        let longest_run = picks.chunk_by(|a, b| a == b).map(<[usize]>::len).max();
        assert!(longest_run <= Some(2), "{longest_run:?}");
    }

    #[test]
    fn weighted_draws_by_free_traffic_above_the_reserve() {
        let weighted_counts = |hosts: &[Host], reserve_percent: f64| {
            let index = PickIndex::build_reserving(hosts, 0.0, reserve_percent);
            let selector = Selector::seeded(11);
            let mut rng = SmallRng::seed_from_u64(11);
            let mut counts = vec![0usize; hosts.len()];
            for _ in 0..10_000 {
                let pick = index.pick(
                    Strategy::Weighted,
                    &Preference::default(),
                    &selector,
                    &mut rng,
                );
                counts[pick.unwrap()] += 1;
            }
            counts
        };
        // A 10 Gbps host with 300 Mbps free, a 1 Gbps host with 300, one
        // with 10: at a 2 % reserve the weights are 100, 280 and 0.
        let hosts = vec![
            host("big", 300.0, 10_000.0, "", &[]),
            host("small", 300.0, 1000.0, "", &[]),
            host("full", 10.0, 1000.0, "", &[]),
        ];
        let counts = weighted_counts(&hosts, 2.0);
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0].abs_diff(10_000 * 100 / 380) <= 3, "{counts:?}");
        // No reserve: by free traffic.
        let counts = weighted_counts(&hosts, 0.0);
        assert!(counts[2].abs_diff(10_000 * 10 / 610) <= 3, "{counts:?}");
        // Nobody above the reserve: by free traffic, not by turns.
        let hosts = vec![
            host("a", 30.0, 10_000.0, "", &[]),
            host("b", 10.0, 1000.0, "", &[]),
        ];
        let counts = weighted_counts(&hosts, 5.0);
        assert!(counts[0].abs_diff(7500) <= 3, "{counts:?}");
    }

    #[test]
    fn round_robin_continues_across_views_instead_of_restarting() {
        let mut hosts: Vec<Host> = (0..10)
            .map(|n| host(&format!("h{n}"), 100.0, 1000.0, "", &[]))
            .collect();
        let selector = Selector::seeded(3);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = [0usize; 10];
        // A new view after every pick, as under a stream of updates: with
        // turns restarting per view, the first host would take them all.
        for round in 0..1000 {
            hosts[round % 10].payload.free_traffic = 100.0 + (round % 7) as f64;
            let index = PickIndex::build(&hosts, 0.0);
            let pick = index
                .pick(
                    Strategy::RoundRobin,
                    &Preference::default(),
                    &selector,
                    &mut rng,
                )
                .unwrap();
            counts[pick] += 1;
        }
        assert!(counts.iter().all(|&c| c == 100), "{counts:?}");
    }

    #[test]
    fn least_loaded_prefers_headroom_and_samples_by_capacity() {
        // One big host with room, nine small ones nearly full.
        let mut hosts = vec![host("big", 5000.0, 10000.0, "", &[])];
        hosts.extend((0..9).map(|n| host(&format!("s{n}"), 20.0, 1000.0, "", &[])));
        let index = PickIndex::build(&hosts, 0.0);
        let selector = Selector::seeded(5);
        let mut rng = SmallRng::seed_from_u64(5);
        // How often the first host wins 10,000 least-loaded picks.
        let mut first_of_10_000 = |index: &PickIndex| {
            (0..10_000)
                .filter(|_| {
                    index.pick(
                        Strategy::LeastLoaded,
                        &Preference::default(),
                        &selector,
                        &mut rng,
                    ) == Some(0)
                })
                .count()
        };
        let big = first_of_10_000(&index);
        // P(big in one of two draws) = 1 - (9/19)^2 ≈ 0.776.
        assert!((7500..8000).contains(&big), "{big}");

        // Equal hosts: each gets its capacity share.
        let hosts = vec![
            host("a", 500.0, 1000.0, "", &[]),
            host("b", 500.0, 1000.0, "", &[]),
        ];
        let index = PickIndex::build(&hosts, 0.0);
        let a = first_of_10_000(&index);
        assert!((4700..5300).contains(&a), "{a}");
    }

    #[test]
    fn allocations_lower_headroom_when_traffic_lags() {
        let mut ramping = host("a", 900.0, 1000.0, "", &[]).payload;
        ramping.allocations = Some(400);
        let mut steady = host("b", 500.0, 1000.0, "", &[]).payload;
        steady.allocations = Some(250);
        let hosts = [
            Host {
                node: "a".into(),
                payload: ramping.clone(),
            },
            Host {
                node: "b".into(),
                payload: steady.clone(),
            },
        ];
        // 600 Mbps used by 650 allocations.
        let per_session = fleet_session_mbps(&hosts).unwrap();
        assert!((per_session - 600.0 / 650.0).abs() < 1e-9);
        assert!(headroom_mbps(&ramping, Some(per_session)) < 700.0);
        assert_eq!(headroom_mbps(&steady, Some(per_session)), 500.0);
        // Without the field, or without a fleet figure: free traffic.
        assert_eq!(headroom_mbps(&steady, None), 500.0);
        let old = host("c", 321.0, 1000.0, "", &[]).payload;
        assert_eq!(headroom_mbps(&old, Some(per_session)), 321.0);
    }

    #[test]
    fn an_isp_listed_twice_by_one_host_does_not_double_its_turns() {
        let hosts = vec![
            host("a", 100.0, 1000.0, "", &["telecom", "telecom"]),
            host("b", 100.0, 1000.0, "", &["telecom"]),
        ];
        let index = PickIndex::build(&hosts, 0.0);
        assert_eq!(index.candidate_count(&preference(Some("telecom"), None)), 2);
    }
}
