//! Which host to hand out: eligibility, ISP/region preference and the
//! selection strategies, as pure functions over a view. They take the
//! view's hosts as they are shared (`&[Arc<Host>]`) or plain (`&[Host]`).

use std::borrow::Borrow;

use serde::{Deserialize, Serialize};

use super::draw::PickRng;
use super::pick_index::PickIndex;
use super::Host;

/// How to choose among eligible hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each eligible host in turn: fair within ±1 over any window.
    RoundRobin,
    /// The host with the most free traffic.
    MostFree,
    /// In proportion to free traffic, spread evenly over time (a
    /// low-discrepancy sequence, not a random draw). The default: in the
    /// fleet simulator (docs/allocator-scale.md) it kept a mixed fleet
    /// under capacity at 80 % load with the fewest writes.
    #[default]
    Weighted,
    /// Uniformly random.
    Random,
    /// Power of two choices: two hosts drawn in proportion to capacity,
    /// the one with more headroom for its size (free traffic over
    /// capacity, lowered by `allocations` when the host publishes it) wins.
    LeastLoaded,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "round-robin" => Ok(Strategy::RoundRobin),
            "most-free" => Ok(Strategy::MostFree),
            "weighted" => Ok(Strategy::Weighted),
            "random" => Ok(Strategy::Random),
            "least-loaded" => Ok(Strategy::LeastLoaded),
            other => Err(format!(
                "`{other}` is not a strategy: round-robin, most-free, weighted, random or least-loaded"
            )),
        }
    }
}

/// What the caller would like: both optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preference {
    pub isp: Option<String>,
    pub region: Option<String>,
}

/// A host may be picked for `preference` at all: enough free traffic, and
/// it serves the ISP (an empty `isp` list serves every ISP).
pub fn eligible(host: &Host, preference: &Preference, min_free_mbps: f64) -> bool {
    host.payload.free_traffic >= min_free_mbps
        && match preference.isp.as_deref() {
            None => true,
            Some(isp) => host.payload.isp.is_empty() || host.payload.isp.iter().any(|h| h == isp),
        }
}

/// Eligible hosts narrowed to the preferred region when any is there;
/// otherwise every eligible host. Yields indexes into `hosts`.
pub fn candidates<'a, H: Borrow<Host>>(
    hosts: &'a [H],
    preference: &'a Preference,
    min_free_mbps: f64,
) -> impl Iterator<Item = usize> + Clone + 'a {
    let in_region = |host: &Host| {
        preference
            .region
            .as_deref()
            .is_some_and(|region| host.payload.region == region)
    };
    let any_in_region = hosts
        .iter()
        .map(Borrow::borrow)
        .any(|host| in_region(host) && eligible(host, preference, min_free_mbps));
    hosts.iter().enumerate().filter_map(move |(index, host)| {
        let host: &Host = host.borrow();
        let ok = eligible(host, preference, min_free_mbps) && (!any_in_region || in_region(host));
        ok.then_some(index)
    })
}

pub use super::pick_index::Selector;

impl Selector {
    /// Picks an index into `hosts`, or `None` when no host qualifies. It
    /// indexes `hosts` first (O(hosts)), for one-off lists such as the
    /// hosts a call has not tried yet; [`super::Allocator::pick`] reuses
    /// one index per view.
    pub fn select<H: Borrow<Host>>(
        &self,
        strategy: Strategy,
        hosts: &[H],
        preference: &Preference,
        min_free_mbps: f64,
    ) -> Option<usize> {
        let index = PickIndex::build(hosts, min_free_mbps);
        PickRng::with_thread(|rng| index.pick(strategy, preference, self, rng))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::znode::HostPayload;
    use std::collections::BTreeMap;

    fn host(node: &str, free: f64, region: &str, isp: &[&str]) -> Host {
        test_host(node, free, 1000.0, region, isp)
    }

    /// A host as the allocator's unit tests need one.
    pub(crate) fn test_host(
        node: &str,
        free: f64,
        capacity: f64,
        region: &str,
        isp: &[&str],
    ) -> Host {
        Host {
            node: node.into(),
            payload: HostPayload {
                free_traffic: free,
                rest_addr: "127.0.0.1:1".into(),
                turn_uris: Vec::new(),
                realm: String::new(),
                capacity_mbps: capacity,
                region: region.into(),
                isp: isp.iter().map(|s| s.to_string()).collect(),
                updated_at: String::new(),
                version: String::new(),
                restarts: 0,
                allocations: None,
            },
        }
    }

    pub(crate) fn preference(isp: Option<&str>, region: Option<&str>) -> Preference {
        Preference {
            isp: isp.map(Into::into),
            region: region.map(Into::into),
        }
    }

    fn names(hosts: &[Host], preference: &Preference) -> Vec<String> {
        candidates(hosts, preference, 10.0)
            .map(|index| hosts[index].node.clone())
            .collect()
    }

    #[test]
    fn isp_and_region_preference_table() {
        let hosts = vec![
            host("a", 100.0, "north", &["telecom"]),
            host("b", 100.0, "south", &["telecom"]),
            host("c", 100.0, "north", &[]),
            host("d", 100.0, "north", &["cable"]),
            host("e", 5.0, "north", &["telecom"]),
        ];
        let table: &[(Option<&str>, Option<&str>, &[&str])] = &[
            // No preference: every host with enough free traffic.
            (None, None, &["a", "b", "c", "d"]),
            // The ISP must match; an empty isp list serves every ISP.
            (Some("telecom"), None, &["a", "b", "c"]),
            (Some("cable"), None, &["c", "d"]),
            (Some("fiber"), None, &["c"]),
            // In-region hosts win when there are any...
            (Some("telecom"), Some("north"), &["a", "c"]),
            (None, Some("south"), &["b"]),
            // ...otherwise the other ISP matches anywhere.
            (Some("cable"), Some("south"), &["c", "d"]),
            (None, Some("west"), &["a", "b", "c", "d"]),
        ];
        for (isp, region, expected) in table {
            assert_eq!(
                names(&hosts, &preference(*isp, *region)),
                *expected,
                "isp {isp:?} region {region:?}"
            );
        }
    }

    #[test]
    fn round_robin_is_fair_within_one_over_any_window() {
        let hosts: Vec<Host> = ["a", "b", "c"]
            .iter()
            .map(|n| host(n, 100.0, "", &[]))
            .collect();
        let selector = Selector::default();
        let picks: Vec<usize> = (0..3000)
            .map(|_| {
                selector
                    .select(Strategy::RoundRobin, &hosts, &Preference::default(), 0.0)
                    .unwrap()
            })
            .collect();
        for window in [1, 2, 5, 7, 100, 1000] {
            for start in (0..picks.len() - window).step_by(97) {
                let mut counts = [0usize; 3];
                for &pick in &picks[start..start + window] {
                    counts[pick] += 1;
                }
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(max - min <= 1, "window {window} at {start}: {counts:?}");
            }
        }
    }

    #[test]
    fn hosts_below_min_free_are_never_picked() {
        let hosts = vec![
            host("a", 100.0, "", &[]),
            host("b", 9.9, "", &[]),
            host("c", 50.0, "", &[]),
        ];
        let selector = Selector::default();
        for strategy in [
            Strategy::RoundRobin,
            Strategy::MostFree,
            Strategy::Weighted,
            Strategy::Random,
            Strategy::LeastLoaded,
        ] {
            for _ in 0..300 {
                let pick = selector
                    .select(strategy, &hosts, &Preference::default(), 10.0)
                    .unwrap();
                assert_ne!(hosts[pick].node, "b", "{strategy:?}");
            }
        }
        let none = vec![host("x", 1.0, "", &[])];
        assert_eq!(
            selector.select(Strategy::RoundRobin, &none, &Preference::default(), 10.0),
            None
        );
    }

    #[test]
    fn most_free_picks_the_largest() {
        let hosts = vec![
            host("a", 100.0, "", &[]),
            host("b", 300.0, "", &[]),
            host("c", 200.0, "", &[]),
        ];
        let pick =
            Selector::default().select(Strategy::MostFree, &hosts, &Preference::default(), 0.0);
        assert_eq!(pick, Some(1));
    }

    #[test]
    fn weighted_is_proportional_and_smooth() {
        let hosts = vec![
            host("a", 500.0, "", &[]),
            host("b", 300.0, "", &[]),
            host("c", 200.0, "", &[]),
        ];
        let selector = Selector::default();
        let picks: Vec<usize> = (0..1000)
            .map(|_| {
                selector
                    .select(Strategy::Weighted, &hosts, &Preference::default(), 0.0)
                    .unwrap()
            })
            .collect();
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for &pick in &picks {
            *counts.entry(pick).or_insert(0) += 1;
        }
        for (&count, expected) in counts.values().zip([500usize, 300, 200]) {
            assert!(count.abs_diff(expected) <= 3, "{counts:?}");
        }
        // Smooth: the heaviest host never gets more than 2 in a row here.
        let longest_run = picks
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest_run <= 2, "{longest_run}");
    }

    #[test]
    fn random_spreads() {
        let hosts: Vec<Host> = ["a", "b", "c"]
            .iter()
            .map(|n| host(n, 100.0, "", &[]))
            .collect();
        let selector = Selector::default();
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[selector
                .select(Strategy::Random, &hosts, &Preference::default(), 0.0)
                .unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
