//! Which host to hand out: eligibility, ISP/region preference and the
//! selection strategies, as pure functions over a view. They take the
//! view's hosts as they are shared (`&[Arc<Host>]`) or plain (`&[Host]`).

use std::borrow::Borrow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Host;

/// How to choose among eligible hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each eligible host in turn: fair within ±1 over any window.
    #[default]
    RoundRobin,
    /// The host with the most free traffic.
    MostFree,
    /// Smooth weighted round-robin, weighted by free traffic.
    Weighted,
    /// Uniformly random.
    Random,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "round-robin" => Ok(Strategy::RoundRobin),
            "most-free" => Ok(Strategy::MostFree),
            "weighted" => Ok(Strategy::Weighted),
            "random" => Ok(Strategy::Random),
            other => Err(format!(
                "`{other}` is not a strategy: round-robin, most-free, weighted or random"
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

/// Selection state shared by all callers of one allocator.
#[derive(Debug, Default)]
pub struct Selector {
    turn: AtomicUsize,
    /// Smooth weighted round-robin's current weights, by node name.
    weights: Mutex<Vec<(String, f64)>>,
}

impl Selector {
    /// Picks an index into `hosts`, or `None` when no host qualifies.
    pub fn select<H: Borrow<Host>>(
        &self,
        strategy: Strategy,
        hosts: &[H],
        preference: &Preference,
        min_free_mbps: f64,
    ) -> Option<usize> {
        let candidates = candidates(hosts, preference, min_free_mbps);
        let count = candidates.clone().count();
        if count == 0 {
            return None;
        }
        match strategy {
            Strategy::RoundRobin => {
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                candidates.clone().nth(turn % count)
            }
            Strategy::Random => candidates.clone().nth(rand::random_range(0..count)),
            Strategy::MostFree => candidates.clone().max_by(|&a, &b| {
                let (a, b): (&Host, &Host) = (hosts[a].borrow(), hosts[b].borrow());
                a.payload
                    .free_traffic
                    .total_cmp(&b.payload.free_traffic)
                    // Ties go to the first host by name, for stable answers.
                    .then_with(|| b.node.cmp(&a.node))
            }),
            Strategy::Weighted => self.weighted(hosts, candidates),
        }
    }

    /// nginx's smooth weighted round-robin: every candidate gains its
    /// weight, the richest is picked and pays the total.
    fn weighted<H: Borrow<Host>>(
        &self,
        hosts: &[H],
        candidates: impl Iterator<Item = usize> + Clone,
    ) -> Option<usize> {
        let mut weights = self
            .weights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        weights.retain(|(node, _)| hosts.iter().any(|host| &host.borrow().node == node));
        let mut total = 0.0;
        let mut best: Option<(usize, f64)> = None;
        for index in candidates.clone() {
            let host: &Host = hosts[index].borrow();
            let weight = host.payload.free_traffic.max(0.0);
            total += weight;
            let slot = match weights.iter().position(|(node, _)| node == &host.node) {
                Some(slot) => slot,
                None => {
                    weights.push((host.node.clone(), 0.0));
                    weights.len() - 1
                }
            };
            weights[slot].1 += weight;
            if best.is_none_or(|(_, current)| weights[slot].1 > current) {
                best = Some((index, weights[slot].1));
            }
        }
        let (index, _) = best?;
        if total <= 0.0 {
            // All weights zero: fall back to plain turns.
            let count = candidates.clone().count();
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            return candidates.clone().nth(turn % count);
        }
        if let Some(slot) = weights
            .iter()
            .position(|(node, _)| node == &hosts[index].borrow().node)
        {
            weights[slot].1 -= total;
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::znode::HostPayload;
    use std::collections::BTreeMap;

    fn host(node: &str, free: f64, region: &str, isp: &[&str]) -> Host {
        Host {
            node: node.into(),
            payload: HostPayload {
                free_traffic: free,
                rest_addr: "127.0.0.1:1".into(),
                turn_uris: Vec::new(),
                realm: String::new(),
                capacity_mbps: 1000.0,
                region: region.into(),
                isp: isp.iter().map(|s| s.to_string()).collect(),
                updated_at: String::new(),
                version: String::new(),
                restarts: 0,
            },
        }
    }

    fn preference(isp: Option<&str>, region: Option<&str>) -> Preference {
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
        let mut counts = BTreeMap::new();
        for &pick in &picks {
            *counts.entry(pick).or_insert(0) += 1;
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![500, 300, 200]
        );
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
