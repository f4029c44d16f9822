//! Picks per second for every strategy over a pick index, at 100, 1,000
//! and 10,000 hosts, on one thread and on all cores, beside the seed's
//! round-robin (scan the hosts, keep `freeTraffic > 0`, index by a
//! counter) measured in the same run. Pure: no ZooKeeper; a pick here is
//! what `Allocator::pick_shared` does once its view is indexed (index,
//! pick with the thread's `PickRng`, clone the host's `Arc`). The last
//! column is what `Allocator::pick_map` does instead: it lends the host
//! (`&Arc<Host>`) and touches no reference count, which shows what the
//! host record's cache miss costs at a random place in a large fleet.
//!
//! Run: `cargo bench --bench allocator_picks` (`PICKS_MILLIS=300` per
//! run; each figure is the median of three runs).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use turn_agent::allocator::draw::PickRng;
use turn_agent::allocator::pick_index::{PickIndex, Selector};
use turn_agent::allocator::{Host, Preference, Strategy};
use turn_agent::znode::HostPayload;

const REGIONS: [&str; 4] = ["eu-west", "eu-east", "us-east", "ap-south"];
const ISPS: [&str; 3] = ["telecom", "cable", "fiber"];

fn fleet(count: usize) -> Vec<Arc<Host>> {
    let mut rng = SmallRng::seed_from_u64(count as u64);
    (0..count)
        .map(|n| {
            let capacity = if rng.random_bool(0.3) {
                10_000.0
            } else {
                1_000.0
            };
            let isp: Vec<String> = if rng.random_bool(0.2) {
                Vec::new()
            } else {
                vec![ISPS[rng.random_range(0..ISPS.len())].to_string()]
            };
            Arc::new(Host {
                node: format!("turn-{n:06}"),
                payload: HostPayload {
                    free_traffic: if rng.random_bool(0.05) {
                        0.0
                    } else {
                        (capacity * rng.random::<f64>() * 10.0).round() / 10.0
                    },
                    rest_addr: format!("10.{}.{}.{}:8086", n >> 16, (n >> 8) & 255, n & 255),
                    turn_uris: vec![format!("turn:10.0.0.1:3478?transport=udp&n={n}")],
                    realm: "example.org".into(),
                    capacity_mbps: capacity,
                    region: REGIONS[rng.random_range(0..REGIONS.len())].into(),
                    isp,
                    updated_at: "2026-11-29T00:00:00Z".into(),
                    version: "0.1.0".into(),
                    restarts: 0,
                    allocations: None,
                },
            })
        })
        .collect()
}

/// The seed's round-robin, as simply as it was written.
fn seed_round_robin(hosts: &[Arc<Host>], counter: &AtomicUsize) -> Option<Arc<Host>> {
    let eligible: Vec<&Arc<Host>> = hosts
        .iter()
        .filter(|host| host.payload.free_traffic > 0.0)
        .collect();
    if eligible.is_empty() {
        return None;
    }
    let turn = counter.fetch_add(1, Ordering::Relaxed);
    Some(Arc::clone(eligible[turn % eligible.len()]))
}

/// CPU time this thread has run, from the scheduler's own account
/// (`/proc/thread-self/schedstat`); `None` off Linux.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The median of three [`rate_once`] runs (by the per-CPU figure): one run
/// that shared its core's caches with another program's burst does not
/// make the figure.
fn rate(threads: usize, budget: Duration, pick: &(dyn Fn() -> bool + Sync)) -> (f64, f64) {
    let mut runs = [0; 3].map(|_| rate_once(threads, budget, pick));
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    runs[1]
}

/// Picks per second of `pick` on `threads` threads for `budget`: by the
/// wall clock, and per second of CPU each thread actually got (times the
/// threads), which a machine shared with other work does not lower.
fn rate_once(threads: usize, budget: Duration, pick: &(dyn Fn() -> bool + Sync)) -> (f64, f64) {
    let total = AtomicUsize::new(0);
    let cpu_nanos = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut done = 0usize;
                let cpu_before = thread_cpu();
                let deadline = Instant::now() + budget;
                loop {
                    for _ in 0..256 {
                        black_box(pick());
                    }
                    done += 256;
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                if let (Some(before), Some(after)) = (cpu_before, thread_cpu()) {
                    cpu_nanos.fetch_add((after - before).as_nanos() as usize, Ordering::Relaxed);
                }
                total.fetch_add(done, Ordering::Relaxed);
            });
        }
    });
    let picks = total.load(Ordering::Relaxed) as f64;
    let wall = picks / started.elapsed().as_secs_f64();
    let cpu_secs = cpu_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let per_cpu = if cpu_secs > 0.0 {
        picks / (cpu_secs / threads as f64)
    } else {
        wall
    };
    (wall, per_cpu)
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.1} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0} /s")
    }
}

fn main() {
    let millis = std::env::var("PICKS_MILLIS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let budget = Duration::from_millis(millis);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plain = Preference::default();
    let matched = Preference {
        isp: Some("telecom".into()),
        region: Some("eu-west".into()),
    };
    let cases: [(&str, Strategy, &Preference); 6] = [
        ("round-robin", Strategy::RoundRobin, &plain),
        ("most-free", Strategy::MostFree, &plain),
        ("weighted", Strategy::Weighted, &plain),
        ("random", Strategy::Random, &plain),
        ("least-loaded", Strategy::LeastLoaded, &plain),
        ("round-robin, ISP + region", Strategy::RoundRobin, &matched),
    ];
    println!(
        "picks per second (median of 3 runs of {millis} ms, {cores} cores); \"per CPU\" counts"
    );
    println!("only the CPU time each thread got, so a busy machine does not lower it");
    println!();
    println!("| hosts | strategy | 1 thread, per CPU | {cores} threads, per CPU | 1 thread, wall | × seed round-robin (1 thread, per CPU) | `pick_map`, no `Arc` (1 thread, per CPU) |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for size in [100, 1_000, 10_000] {
        let hosts = fleet(size);
        let built = Instant::now();
        let index = PickIndex::build(&hosts, 1.0);
        let build_time = built.elapsed();
        let counter = AtomicUsize::new(0);
        let seed = |threads| {
            rate(threads, budget, &|| {
                seed_round_robin(&hosts, &counter).is_some()
            })
        };
        let ((seed_wall, seed_one), (_, seed_all)) = (seed(1), seed(cores));
        println!(
            "| {size} | seed round-robin (scan) | {} | {} | {} | 1.0 | |",
            human(seed_one),
            human(seed_all),
            human(seed_wall)
        );
        let selector = Selector::default();
        for (name, strategy, preference) in cases {
            let measure = |threads| {
                rate(threads, budget, &|| {
                    PickRng::with_thread(|rng| index.pick(strategy, preference, &selector, rng))
                        .map(|position| Arc::clone(&hosts[position]))
                        .is_some()
                })
            };
            let ((wall, one), (_, all)) = (measure(1), measure(cores));
            let (_, lent) = rate(1, budget, &|| {
                PickRng::with_thread(|rng| index.pick(strategy, preference, &selector, rng))
                    .map(|position| black_box(Arc::as_ptr(&hosts[position])))
                    .is_some()
            });
            println!(
                "| {size} | {name} | {} | {} | {} | {:.0} | {} |",
                human(one),
                human(all),
                human(wall),
                one / seed_one,
                human(lent)
            );
        }
        println!(
            "| {size} | (index build, once per changed view, wall) | {:.2} ms | | | | |",
            build_time.as_secs_f64() * 1e3
        );
    }
}
