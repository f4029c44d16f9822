//! A deterministic fleet simulator: which strategy and publish policy keep
//! TURN hosts under capacity when every signalling server runs its own
//! allocator on the same stale numbers. Pure and seeded: no ZooKeeper, no
//! clock, the same tables on every run.
//!
//! The model, in one-second steps:
//! - N hosts, each with a capacity; agents sample their traffic and decide
//!   to write with the agent's own code: [`TrafficMeter`] over synthetic
//!   byte counters (smoothing 0, as configured by default) and
//!   [`PublishRule`] (hysteresis on capacity, `max_silence` in ticks), at
//!   `publish_interval` ticks with a random phase per agent;
//! - every write is seen by every allocator at the next step (a watch
//!   delay of at most one second, longer than loopback's milliseconds);
//!   the allocators share that view and its [`PickIndex`] but each has its
//!   own [`Selector`] (cursors) and random stream, as separate processes;
//! - sessions arrive as a Poisson process at the rate that makes the
//!   requested fleet load, each to a random allocator, with exponential
//!   durations (mean 120 s) and a bitrate of 1, 4 or 10 Mbps (40/40/20 %);
//! - every 30 s one host dies: its sessions reconnect at the next step,
//!   its znode stays in the view for the 10 s session timeout (a pick of it
//!   fails and the allocator picks again, like `/ice`), and a host of the
//!   same capacity joins 5 s later.
//!
//! Reported per strategy (after a warm-up): session-seconds spent on a
//! host over its capacity, sessions placed on a host already over
//! capacity, peak host utilisation (the highest a host reached) and mean
//! fleet utilisation, spread (standard deviation of host utilisation,
//! averaged over time), ZooKeeper writes per agent per minute and watch
//! events per second per allocator.
//!
//! Run: `cargo bench --bench fleet_sim` (`SIM_HOSTS=1000`,
//! `SIM_ALLOCATORS=50`, `SIM_SECONDS=900`, `SIM_WARMUP=300`, `SIM_SEED=1`,
//! `SIM_PART=strategies|policies|all`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use turn_agent::allocator::pick_index::{PickIndex, Selector};
use turn_agent::allocator::{Host, Preference, Strategy};
use turn_agent::traffic::{self, CounterSample, Observation, PublishRule, TrafficMeter};
use turn_agent::znode::{round_mbps, HostPayload};

const MEAN_DURATION_SECS: f64 = 120.0;
/// (kbps, share)
const BITRATES: [(u64, f64); 3] = [(1_000, 0.4), (4_000, 0.4), (10_000, 0.2)];
const CHURN_EVERY_SECS: u64 = 30;
const SESSION_TIMEOUT_SECS: u64 = 10;
const REJOIN_AFTER_SECS: u64 = 5;
const PICK_ATTEMPTS: usize = 3;
const MIN_FREE_MBPS: f64 = 1.0;
/// Local accounting: draws after the first before taking the last one.
const LOCAL_REDRAWS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fleet {
    /// 70 % 1 Gbps, 30 % 10 Gbps hosts.
    Mixed,
    /// Every host 1 Gbps.
    Uniform,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Policy {
    /// What each allocator runs.
    Pick(Strategy),
    /// The seed's round-robin: every host with `freeTraffic > 0`.
    SeedRoundRobin,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::SeedRoundRobin => "seed round-robin",
            Policy::Pick(Strategy::RoundRobin) => "round-robin",
            Policy::Pick(Strategy::MostFree) => "most-free",
            Policy::Pick(Strategy::Weighted) => "weighted",
            Policy::Pick(Strategy::Random) => "random",
            Policy::Pick(Strategy::LeastLoaded) => "least-loaded",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Publishing {
    interval_secs: u64,
    hysteresis_percent: f64,
    max_silence_secs: u64,
    /// The band narrowed to this share of free traffic ([`PublishRule`]).
    headroom_percent: f64,
    /// Agents publish `allocations` beside `freeTraffic`.
    allocations: bool,
}

/// What the allocators do beside the strategy.
#[derive(Debug, Clone, Copy)]
struct Picking {
    /// Weighted draws by free traffic above this share of capacity.
    reserve_percent: f64,
    /// Each allocator lowers a host's free traffic by the sessions it sent
    /// there since the host's last write, at the mean bitrate.
    local_accounting: bool,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    fleet: Fleet,
    load: f64,
    policy: Policy,
    publishing: Publishing,
    picking: Picking,
    hosts: usize,
    allocators: usize,
    seconds: u64,
    warmup: u64,
    seed: u64,
}

#[derive(Debug, Default)]
struct Outcome {
    session_seconds: f64,
    over_session_seconds: f64,
    placed: u64,
    placed_on_over: u64,
    failed_picks: u64,
    peak_utilisation: f64,
    utilisation_sum: f64,
    spread_sum: f64,
    steps: u64,
    writes: u64,
    events: u64,
    agent_seconds: f64,
}

struct SimHost {
    capacity_kbps: u64,
    load_kbps: u64,
    sessions: u64,
    /// Cumulative bytes relayed, the agent's counter.
    bytes: u64,
    meter: TrafficMeter,
    phase: u64,
    alive: bool,
    /// Sessions of earlier lives of this host slot end unseen.
    generation: u32,
    /// Last written (free Mbps, tick second), while the znode exists.
    written: Option<(f64, u64)>,
    /// Second at which its znode leaves the view (after dying).
    expires_at: Option<u64>,
}

fn payload(capacity_mbps: f64, free: f64, allocations: Option<u64>) -> HostPayload {
    HostPayload {
        free_traffic: free,
        rest_addr: "10.0.0.1:8086".into(),
        turn_uris: Vec::new(),
        realm: String::new(),
        capacity_mbps,
        region: String::new(),
        isp: Vec::new(),
        updated_at: String::new(),
        version: String::new(),
        restarts: 0,
        allocations,
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut SmallRng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Poisson draw: exact for small means, normal beyond.
fn poisson(rng: &mut SmallRng, mean: f64) -> u64 {
    if mean < 30.0 {
        let limit = (-mean).exp();
        let (mut count, mut product) = (0, rng.random::<f64>());
        while product > limit {
            count += 1;
            product *= rng.random::<f64>();
        }
        count
    } else {
        (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u64
    }
}

fn bitrate(rng: &mut SmallRng) -> u64 {
    let mut draw = rng.random::<f64>();
    for (kbps, share) in BITRATES {
        if draw < share {
            return kbps;
        }
        draw -= share;
    }
    BITRATES[BITRATES.len() - 1].0
}

fn mean_bitrate_kbps() -> f64 {
    BITRATES
        .iter()
        .map(|(kbps, share)| *kbps as f64 * share)
        .sum()
}

fn run(scenario: Scenario) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(scenario.seed);
    let publishing = scenario.publishing;
    let base = tokio::time::Instant::now();
    let at = |second: u64| base + Duration::from_secs(second);
    let new_host = |capacity_kbps: u64, phase: u64| SimHost {
        capacity_kbps,
        load_kbps: 0,
        sessions: 0,
        bytes: 0,
        meter: TrafficMeter::new(0.0),
        phase,
        alive: true,
        generation: 0,
        written: None,
        expires_at: None,
    };
    let mut hosts: Vec<SimHost> = (0..scenario.hosts)
        .map(|n| {
            let big = match scenario.fleet {
                Fleet::Mixed => n % 10 >= 7,
                Fleet::Uniform => false,
            };
            let capacity_kbps = if big { 10_000_000 } else { 1_000_000 };
            new_host(capacity_kbps, rng.random_range(0..publishing.interval_secs))
        })
        .collect();
    let total_capacity_kbps: u64 = hosts.iter().map(|h| h.capacity_kbps).sum();
    let arrivals_per_second =
        scenario.load * total_capacity_kbps as f64 / (mean_bitrate_kbps() * MEAN_DURATION_SECS);

    // The view every allocator reads: hosts by slot, as the agents wrote them.
    let mut view: Vec<Option<Arc<Host>>> = vec![None; hosts.len()];
    let mut view_changed = true;
    let mut listed: Vec<Arc<Host>> = Vec::new();
    let mut slots: Vec<usize> = Vec::new();
    let mut index = PickIndex::default();
    let selectors: Vec<Selector> = (0..scenario.allocators)
        .map(|r| Selector::seeded(scenario.seed ^ (r as u64) << 20))
        .collect();
    let mut pick_rngs: Vec<SmallRng> = (0..scenario.allocators)
        .map(|r| SmallRng::seed_from_u64(scenario.seed.wrapping_mul(7919) + r as u64))
        .collect();
    let (strategy, min_free) = match scenario.policy {
        Policy::Pick(strategy) => (strategy, MIN_FREE_MBPS),
        // freeTraffic > 0 with one decimal published: at least 0.1.
        Policy::SeedRoundRobin => (Strategy::RoundRobin, 0.1),
    };
    let preference = Preference::default();
    // Per allocator, per slot: Mbps it sent there since the host's last
    // write (local accounting).
    let mut handed: Vec<Vec<f64>> = vec![vec![0.0; hosts.len()]; scenario.allocators];
    let expected_session_mbps = mean_bitrate_kbps() / 1000.0;

    // (end second, slot, generation, kbps)
    let mut ends: BinaryHeap<Reverse<(u64, u32, u32, u64)>> = BinaryHeap::new();
    let mut reconnects: u64 = 0;
    let mut rejoin: Vec<(u64, usize)> = Vec::new();
    let mut outcome = Outcome::default();

    for second in 0..scenario.warmup + scenario.seconds {
        let measuring = second >= scenario.warmup;
        // Sessions that ended.
        while let Some(Reverse((end, slot, generation, kbps))) = ends.peek().copied() {
            if end > second {
                break;
            }
            ends.pop();
            let host = &mut hosts[slot as usize];
            if host.generation == generation {
                host.load_kbps -= kbps;
                host.sessions -= 1;
            }
        }
        // Churn: a host dies; its sessions come back; a twin joins later.
        if second > 0 && second % CHURN_EVERY_SECS == 0 {
            let slot = rng.random_range(0..hosts.len());
            let host = &mut hosts[slot];
            if host.alive {
                host.alive = false;
                host.generation += 1;
                reconnects += host.sessions;
                host.load_kbps = 0;
                host.sessions = 0;
                host.expires_at = Some(second + SESSION_TIMEOUT_SECS);
                rejoin.push((second + SESSION_TIMEOUT_SECS + REJOIN_AFTER_SECS, slot));
            }
        }
        for host in hosts.iter_mut() {
            if host.expires_at == Some(second) {
                host.expires_at = None;
                host.written = None;
            }
        }
        for slot in 0..view.len() {
            if view[slot].is_some() && hosts[slot].written.is_none() {
                view[slot] = None;
                view_changed = true;
                outcome.events += u64::from(measuring);
            }
        }
        rejoin.retain(|&(when, slot)| {
            if when > second {
                return true;
            }
            let capacity = hosts[slot].capacity_kbps;
            let generation = hosts[slot].generation;
            hosts[slot] = new_host(capacity, second % publishing.interval_secs);
            hosts[slot].generation = generation;
            false
        });
        // The allocators see what was written up to the previous step.
        if view_changed {
            listed.clear();
            slots.clear();
            for (slot, host) in view.iter().enumerate() {
                if let Some(host) = host {
                    listed.push(Arc::clone(host));
                    slots.push(slot);
                }
            }
            index = PickIndex::build_reserving(&listed, min_free, scenario.picking.reserve_percent);
            view_changed = false;
        }
        // Arrivals, each to a random allocator.
        let arriving = poisson(&mut rng, arrivals_per_second) + std::mem::take(&mut reconnects);
        for _ in 0..arriving {
            let allocator = rng.random_range(0..scenario.allocators);
            let kbps = bitrate(&mut rng);
            let duration = -MEAN_DURATION_SECS * rng.random::<f64>().max(1e-12).ln();
            let mut placed = None;
            for _ in 0..PICK_ATTEMPTS {
                let pick = |rng: &mut SmallRng| {
                    index.pick(strategy, &preference, &selectors[allocator], rng)
                };
                let Some(mut position) = pick(&mut pick_rngs[allocator]) else {
                    break;
                };
                if scenario.picking.local_accounting {
                    // Draw again while what this allocator sent since the
                    // host's write leaves it less than the view says: the
                    // picks then follow free traffic minus the local share.
                    for _ in 0..LOCAL_REDRAWS {
                        let free = listed[position].payload.free_traffic;
                        let left = free - handed[allocator][slots[position]];
                        let rng = &mut pick_rngs[allocator];
                        if free > 0.0 && rng.random::<f64>() * free < left {
                            break;
                        }
                        match pick(rng) {
                            Some(next) => position = next,
                            None => break,
                        }
                    }
                    handed[allocator][slots[position]] += expected_session_mbps;
                }
                let slot = slots[position];
                if hosts[slot].alive {
                    placed = Some(slot);
                    break;
                }
                outcome.failed_picks += u64::from(measuring);
            }
            let Some(slot) = placed else { continue };
            let host = &mut hosts[slot];
            if measuring {
                outcome.placed += 1;
                outcome.placed_on_over += u64::from(host.load_kbps > host.capacity_kbps);
            }
            host.load_kbps += kbps;
            host.sessions += 1;
            let end = second + (duration.ceil() as u64).max(1);
            ends.push(Reverse((end, slot as u32, host.generation, kbps)));
        }
        // One second of traffic, then the agents' publish ticks.
        let (mut total_load, mut total_capacity) = (0u64, 0u64);
        let mut utilisations: Vec<f64> = Vec::with_capacity(hosts.len());
        for (slot, host) in hosts.iter_mut().enumerate() {
            if !host.alive {
                continue;
            }
            host.bytes += host.load_kbps * 1000 / 8;
            let utilisation = host.load_kbps as f64 / host.capacity_kbps as f64;
            if measuring {
                utilisations.push(utilisation);
                total_load += host.load_kbps;
                total_capacity += host.capacity_kbps;
                outcome.session_seconds += host.sessions as f64;
                if host.load_kbps > host.capacity_kbps {
                    outcome.over_session_seconds += host.sessions as f64;
                }
                outcome.peak_utilisation = outcome.peak_utilisation.max(utilisation);
                outcome.agent_seconds += 1.0;
            }
            if second % publishing.interval_secs != host.phase {
                continue;
            }
            let sample = CounterSample {
                rx_bytes: host.bytes,
                tx_bytes: host.bytes,
            };
            let used = match host.meter.observe(sample, at(second)) {
                Observation::Rate(rate) => rate.rx_mbps,
                Observation::Baseline | Observation::CounterReset => 0.0,
            };
            let capacity_mbps = host.capacity_kbps as f64 / 1000.0;
            let free = round_mbps(traffic::free_mbps(capacity_mbps, used));
            let rule = PublishRule {
                capacity_mbps,
                hysteresis_percent: publishing.hysteresis_percent,
                headroom_hysteresis_percent: publishing.headroom_percent,
                max_silence: Duration::from_secs(publishing.max_silence_secs),
            };
            let write = match host.written {
                None => true,
                Some((published, tick)) => {
                    rule.should_write(published, free, Duration::from_secs(second - tick))
                }
            };
            if write {
                host.written = Some((free, second));
                for handed in handed.iter_mut() {
                    handed[slot] = 0.0;
                }
                let allocations = publishing.allocations.then_some(host.sessions);
                view[slot] = Some(Arc::new(Host {
                    node: format!("h{slot:05}"),
                    payload: payload(capacity_mbps, free, allocations),
                }));
                view_changed = true;
                if measuring {
                    outcome.writes += 1;
                    outcome.events += 1;
                }
            }
        }
        if measuring && !utilisations.is_empty() {
            outcome.steps += 1;
            outcome.utilisation_sum += total_load as f64 / total_capacity as f64;
            let mean = utilisations.iter().sum::<f64>() / utilisations.len() as f64;
            let variance = utilisations.iter().map(|u| (u - mean).powi(2)).sum::<f64>()
                / utilisations.len() as f64;
            outcome.spread_sum += variance.sqrt();
        }
    }
    outcome
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row(scenario: &Scenario, outcome: &Outcome, label: &str) -> String {
    let minutes = scenario.seconds as f64 / 60.0;
    let agents = outcome.agent_seconds / scenario.seconds as f64;
    format!(
        "| {label} | {:.1} % | {:.3} % | {:.3} % | {:.0} % | {:.1} % | {:.1} % | {:.2} | {:.1} | {} |",
        scenario.load * 100.0,
        100.0 * outcome.over_session_seconds / outcome.session_seconds.max(1.0),
        100.0 * outcome.placed_on_over as f64 / outcome.placed.max(1) as f64,
        100.0 * outcome.peak_utilisation,
        100.0 * outcome.utilisation_sum / outcome.steps.max(1) as f64,
        100.0 * outcome.spread_sum / outcome.steps.max(1) as f64,
        outcome.writes as f64 / agents.max(1.0) / minutes,
        outcome.events as f64 / scenario.seconds as f64,
        outcome.failed_picks,
    )
}

const HEADER: &str = "| | load | session-s over capacity | placed on a host over capacity | peak host util. | mean util. | spread (sd) | writes/agent/min | watch events/s per allocator | failed picks |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

/// Runs `scenarios` on all cores, in order.
fn run_all(scenarios: &[Scenario]) -> Vec<Outcome> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Outcome>>> = scenarios
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(scenario) = scenarios.get(n) else {
                    break;
                };
                let outcome = run(*scenario);
                *results[n].lock().unwrap() = Some(outcome);
            });
        }
    });
    results
        .into_iter()
        .map(|cell| cell.into_inner().unwrap().unwrap())
        .collect()
}

fn main() {
    let base = Scenario {
        fleet: Fleet::Mixed,
        load: 0.8,
        policy: Policy::Pick(Strategy::LeastLoaded),
        publishing: Publishing {
            interval_secs: 10,
            hysteresis_percent: 5.0,
            max_silence_secs: 60,
            headroom_percent: 100.0,
            allocations: false,
        },
        picking: Picking {
            reserve_percent: 0.0,
            local_accounting: false,
        },
        hosts: env_number("SIM_HOSTS", 1000) as usize,
        allocators: env_number("SIM_ALLOCATORS", 50) as usize,
        seconds: env_number("SIM_SECONDS", 900),
        warmup: env_number("SIM_WARMUP", 300),
        seed: env_number("SIM_SEED", 1),
    };
    let part = std::env::var("SIM_PART").unwrap_or_else(|_| "all".into());
    // Fleet loads for the goal part, e.g. `SIM_LOADS=0.8,0.95`.
    let loads: Vec<f64> = std::env::var("SIM_LOADS")
        .unwrap_or_else(|_| "0.8,0.95".into())
        .split(',')
        .filter_map(|load| load.trim().parse().ok())
        .collect();
    println!(
        "{} hosts, {} allocators, {} s measured after {} s warm-up, seed {}",
        base.hosts, base.allocators, base.seconds, base.warmup, base.seed
    );
    if part == "all" || part == "strategies" {
        let policies = [
            Policy::SeedRoundRobin,
            Policy::Pick(Strategy::RoundRobin),
            Policy::Pick(Strategy::MostFree),
            Policy::Pick(Strategy::Weighted),
            Policy::Pick(Strategy::Random),
            Policy::Pick(Strategy::LeastLoaded),
        ];
        for fleet in [Fleet::Mixed, Fleet::Uniform] {
            let scenarios: Vec<Scenario> = [0.5, 0.8, 0.95]
                .iter()
                .flat_map(|&load| {
                    policies.iter().map(move |&policy| Scenario {
                        fleet,
                        load,
                        policy,
                        ..base
                    })
                })
                .collect();
            let outcomes = run_all(&scenarios);
            println!();
            println!(
                "{:?} fleet, publish every 10 s, hysteresis 5 %, max silence 60 s",
                fleet
            );
            println!();
            println!("{}", HEADER.replacen("| |", "| strategy |", 1));
            for (scenario, outcome) in scenarios.iter().zip(&outcomes) {
                println!("{}", row(scenario, outcome, scenario.policy.name()));
            }
        }
    }
    if part == "all" || part == "goal" {
        // (headroom band %, reserve %, local accounting)
        let variants: [(f64, f64, bool); 6] = [
            (100.0, 0.0, false),
            (100.0, 0.0, true),
            (50.0, 0.0, false),
            (25.0, 0.0, false),
            (100.0, 2.0, false),
            (50.0, 2.0, false),
        ];
        let scenarios: Vec<Scenario> = loads
            .iter()
            .flat_map(|&load| {
                variants.iter().map(
                    move |&(headroom_percent, reserve_percent, local_accounting)| Scenario {
                        load,
                        policy: Policy::Pick(Strategy::Weighted),
                        publishing: Publishing {
                            headroom_percent,
                            ..base.publishing
                        },
                        picking: Picking {
                            reserve_percent,
                            local_accounting,
                        },
                        ..base
                    },
                )
            })
            .collect();
        let outcomes = run_all(&scenarios);
        println!();
        println!("Mixed fleet, weighted, publish every 10 s, hysteresis 5 %, max silence 60 s");
        println!();
        println!(
            "{}",
            HEADER.replacen("| |", "| headroom band, reserve, local accounting |", 1)
        );
        for (scenario, outcome) in scenarios.iter().zip(&outcomes) {
            let label = format!(
                "{} % of free, {} % of capacity, {}",
                scenario.publishing.headroom_percent,
                scenario.picking.reserve_percent,
                if scenario.picking.local_accounting {
                    "yes"
                } else {
                    "no"
                }
            );
            println!("{}", row(scenario, outcome, &label));
        }
    }
    if part == "all" || part == "policies" {
        let publishing = [
            (10, 5.0, 60, false),
            (10, 2.0, 60, false),
            (10, 10.0, 60, false),
            (5, 5.0, 60, false),
            (30, 5.0, 60, false),
            (10, 5.0, 60, true),
            (10, 2.0, 120, false),
        ];
        let scenarios: Vec<Scenario> = [0.8, 0.95]
            .iter()
            .flat_map(|&load| {
                publishing.iter().map(
                    move |&(interval_secs, hysteresis_percent, max_silence_secs, allocations)| {
                        Scenario {
                            load,
                            publishing: Publishing {
                                interval_secs,
                                hysteresis_percent,
                                max_silence_secs,
                                allocations,
                                ..base.publishing
                            },
                            ..base
                        }
                    },
                )
            })
            .collect();
        let outcomes = run_all(&scenarios);
        println!();
        println!("Mixed fleet, least-loaded, publish policies");
        println!();
        println!(
            "{}",
            HEADER.replacen("| |", "| interval, hysteresis, max silence |", 1)
        );
        for (scenario, outcome) in scenarios.iter().zip(&outcomes) {
            let p = scenario.publishing;
            let label = format!(
                "{} s, {} %, {} s{}",
                p.interval_secs,
                p.hysteresis_percent,
                p.max_silence_secs,
                if p.allocations {
                    ", with allocations"
                } else {
                    ""
                }
            );
            println!("{}", row(scenario, outcome, &label));
        }
    }
}
