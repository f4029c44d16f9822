//! `/turncredential` against nginx on the same machine, in the same run.
//!
//! The agent's router (access checks on, rate limit off, metrics on) runs in
//! this process on the default runtime; nginx (one worker) answers the same
//! JSON from its configuration (`return 200`, its fastest path). wrk loads
//! both with keep-alive at 64 and 1,024 connections, with
//! `Connection: close`, and over TLS 1.3 (keep-alive and full handshakes).
//! The machine is shared, so the two are measured alternately (agent,
//! nginx, agent, nginx, ... `BENCH_ROUNDS` rounds of `BENCH_SECONDS` each)
//! and the bench prints the medians of requests per second and p99, the
//! median of the per-round ratios (agent / nginx, from the two runs of one
//! round, which saw the same neighbours), the load average before and
//! after, and the agent's RSS after the load. Then it holds `BENCH_IDLE`
//! idle sockets (default 10,000; 0 skips) open to the agent and to nginx
//! and prints what they cost and what is left after they close.
//!
//! Run: `cargo bench --bench credential_http`. Knobs (environment):
//! - `BENCH_ROUNDS` (default 5) and `BENCH_SECONDS` (default 3);
//! - `BENCH_SCENARIOS`: a comma list of `ka64`, `ka1024`, `close64`,
//!   `tls-ka64`, `tls-hs64` (default all);
//! - `BENCH_PIN=1`: the servers (this process's threads, nginx) on CPU 0
//!   and wrk on CPU 1 (`taskset`), so that the load generator does not
//!   take the server's core; both servers then have one core each;
//! - `BENCH_IDLE` (default 10,000);
//! - `BENCH_WORKERS`: the runtime's worker threads (default one per core,
//!   as in the agent; 0 for a current-thread runtime).
//!
//! For example `BENCH_SCENARIOS=ka64 BENCH_ROUNDS=7 BENCH_IDLE=0 cargo
//! bench --bench credential_http`. Without wrk it prints a note and
//! measures nothing; without nginx it prints the agent's figures alone.
//! Asserts nothing.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use turn_agent::api::{self, ApiState};
use turn_agent::config::CredentialMode;
use turn_agent::credentials::state_file::LongTermCredential;
use turn_agent::credentials::{CredentialSource, CredentialStatus, RotateHandle};
use turn_agent::secret::Secret;
use turn_agent::supervisor::SupervisorStatus;

const BODY: &str = r#"{"type":"result","code":"ok","userid":"ta1-4102444800-0123456789ab","password":"AAAAAAAAAAAAAAAAAAAAAAAA","expired_time":4102444800000}"#;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    requests_per_second: f64,
    p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx answers.
    errors: u64,
}

/// Medians over rounds; errors summed.
struct Medians {
    requests_per_second: f64,
    p99_ms: f64,
    errors: u64,
}

impl Medians {
    fn of(runs: &[Figures]) -> Medians {
        let mut rates: Vec<f64> = runs.iter().map(|run| run.requests_per_second).collect();
        let mut p99s: Vec<f64> = runs.iter().map(|run| run.p99_ms).collect();
        Medians {
            requests_per_second: median(&mut rates),
            p99_ms: median(&mut p99s),
            errors: runs.iter().map(|run| run.errors).sum(),
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// One load shape.
struct Scenario {
    name: &'static str,
    /// Its name in `BENCH_SCENARIOS`.
    key: &'static str,
    connections: usize,
    close: bool,
    tls: bool,
}

static SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "keep-alive -c64",
        key: "ka64",
        connections: 64,
        close: false,
        tls: false,
    },
    Scenario {
        name: "keep-alive -c1024",
        key: "ka1024",
        connections: 1024,
        close: false,
        tls: false,
    },
    Scenario {
        name: "Connection: close -c64",
        key: "close64",
        connections: 64,
        close: true,
        tls: false,
    },
    Scenario {
        name: "TLS keep-alive -c64",
        key: "tls-ka64",
        connections: 64,
        close: false,
        tls: true,
    },
    Scenario {
        name: "TLS handshakes -c64",
        key: "tls-hs64",
        connections: 64,
        close: true,
        tls: true,
    },
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn in_path(program: &str) -> bool {
    Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `12.5us`, `1.20ms`, `2.00s` in milliseconds.
fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        "m" => number * 60e3,
        _ => return None,
    })
}

/// Requests/sec, the 99 % line of `--latency` and the error counts.
fn parse_wrk(output: &str) -> Figures {
    let mut figures = Figures::default();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => figures.requests_per_second = value.parse().unwrap_or(0.0),
            ["99%", value] => figures.p99_ms = parse_duration_ms(value).unwrap_or(f64::NAN),
            ["Socket", "errors:", rest @ ..] => {
                figures.errors += rest
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", value] => {
                figures.errors += value.parse::<u64>().unwrap_or(0)
            }
            _ => {}
        }
    }
    figures
}

fn wrk(url: &str, scenario: &Scenario, seconds: u64, pin: bool) -> Figures {
    let mut command = if pin {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", WRK_CPU, "wrk"]);
        taskset
    } else {
        Command::new("wrk")
    };
    command.args([
        "-t2",
        &format!("-c{}", scenario.connections),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if scenario.close {
        command.args(["-H", "Connection: close"]);
    }
    let output = command.arg(url).output().expect("wrk runs");
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

/// With `BENCH_PIN`: the servers' CPU and wrk's.
const SERVER_CPU: &str = "0";
const WRK_CPU: &str = "1";

/// Moves every thread of `pid` to [`SERVER_CPU`].
fn pin_to_server_cpu(pid: u32) {
    let status = Command::new("taskset")
        .args(["-a", "-c", "-p", SERVER_CPU, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset runs");
    assert!(status.success(), "taskset failed");
}

/// The median of `values` (NaN when empty).
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "?".into())
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// nginx's master and its worker.
fn nginx_rss_kib(master: u32) -> u64 {
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default();
    vm_rss_kib(master)
        + children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .map(vm_rss_kib)
            .sum::<u64>()
}

fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx with one worker, `return 200` with the agent's JSON, on `port`
/// and over TLS 1.3 on `tls_port`.
fn start_nginx(dir: &Path, port: u16, tls_port: u16, pin: bool) -> Child {
    let config = format!(
        r#"worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    ssl_protocols TLSv1.3;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        listen 127.0.0.1:{tls_port} ssl backlog=1024;
        location = /turncredential {{
            default_type application/json;
            add_header Cache-Control no-store;
            return 200 '{BODY}';
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let mut command = if pin {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", SERVER_CPU, "nginx"]);
        taskset
    } else {
        Command::new("nginx")
    };
    let child = command
        .args(["-p", &dir.display().to_string(), "-e"])
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .spawn()
        .expect("nginx starts");
    wait_listening(port);
    wait_listening(tls_port);
    child
}

fn write_certificate(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
}

async fn serve(
    router: api::Api,
    limits: api::ServerLimits,
    tls: Option<api::tls::TlsReloader>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(
        listener,
        router,
        limits,
        tls,
        CancellationToken::new(),
        Duration::from_secs(5),
    ));
    addr
}

/// The agent's router with a fixed credential; the receiver must be kept
/// alive for the rotate handle to stay valid.
fn agent_router() -> (
    api::Api,
    tokio::sync::mpsc::Receiver<turn_agent::credentials::RotateReply>,
) {
    let credential = LongTermCredential {
        username: "ta1-4102444800-0123456789ab".into(),
        password: Secret::new("AAAAAAAAAAAAAAAAAAAAAAAA"),
        issued_at: 0,
        expires_at: 4_102_444_800,
    };
    let (_, supervisor) = watch::channel(SupervisorStatus::default());
    let status = CredentialStatus {
        available: true,
        ..CredentialStatus::new(CredentialMode::LongTerm)
    };
    let (_, credential_status) = watch::channel(status);
    let (rotate, requests) = RotateHandle::detached();
    let (_, registry) = watch::channel(turn_agent::registry::RegistryStatus::default());
    let readiness = turn_agent::readiness::Readiness {
        supervisor,
        credentials: credential_status,
        health: watch::channel(turn_agent::self_check::HealthStatus::default()).1,
    };
    let metrics = turn_agent::metrics::AgentMetrics::new(
        readiness.clone(),
        registry.clone(),
        Default::default(),
    );
    let router = api::router(
        ApiState {
            drain: tokio::sync::mpsc::channel(1).0,
            control: turn_agent::control::ControlHandle::disabled(),
            readiness,
            metrics,
            registry,
            credentials: CredentialSource::fixed_long_term(Some(credential)),
            rotate,
            turn_uris: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(vec![
                "turn:127.0.0.1:3478?transport=udp".into(),
            ])),
        },
        api::guard::Guard::new(&loopback_admin()),
    );
    (router, requests)
}

/// The default access policy (loopback is admin), without a rate limit:
/// the benchmark measures the guard's cost, not its refusals.
fn loopback_admin() -> turn_agent::config::AccessConfig {
    use turn_agent::access::{builtin_roles, AccessPolicy, AddrPattern};
    turn_agent::config::AccessConfig {
        policy: AccessPolicy {
            allow: vec![(AddrPattern::parse("127.0.0.1").unwrap(), 0)],
            roles: builtin_roles(),
            tokens: Vec::new(),
            trusted_proxies: Vec::new(),
        },
        rate_limit_per_second: 0.0,
        rate_limit_burst: 1,
        rate_limit_ipv6_prefix: 64,
        token_files: Vec::new(),
        client_tokens: None,
    }
}

/// This bench re-run as a child that holds `count` idle sockets to `to`
/// (so that their client ends count neither to this process's descriptors
/// nor to its RSS), prints `open` and waits for a line on stdin.
fn hold_idle_sockets(count: usize, to: &str) {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(std::net::TcpStream::connect(to).expect("connect"));
    }
    println!("open");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// Opens `count` idle sockets to `to` from a child; returns it once they
/// are connected.
fn idle_sockets(count: usize, to: SocketAddr) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_HOLD_IDLE", format!("{count} {to}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    child
}

fn close_idle_sockets(mut child: Child) {
    let _ = child.stdin.take().unwrap().write_all(b"done\n");
    let _ = child.wait();
}

fn main() {
    if let Ok(spec) = std::env::var("BENCH_HOLD_IDLE") {
        let (count, to) = spec.split_once(' ').unwrap();
        hold_idle_sockets(count.parse().unwrap(), to);
        return;
    }
    // BENCH_WORKERS: the runtime's worker threads (default: tokio's, one
    // per core, as the agent's own runtime); 0 is a current-thread runtime.
    let runtime = match std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(workers) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    };
    runtime.unwrap().block_on(run());
}

async fn run() {
    let seconds: u64 = env_or("BENCH_SECONDS", 3);
    let rounds: usize = env_or("BENCH_ROUNDS", 5).max(1);
    let idle: usize = env_or("BENCH_IDLE", 10_000);
    let pin = std::env::var("BENCH_PIN").is_ok_and(|value| value == "1");
    let selected = std::env::var("BENCH_SCENARIOS").ok();
    let scenarios: Vec<&'static Scenario> = SCENARIOS
        .iter()
        .filter(|scenario| {
            selected
                .as_deref()
                .is_none_or(|keys| keys.split(',').any(|key| key.trim() == scenario.key))
        })
        .collect();
    if !in_path("wrk") {
        println!("wrk is not installed (apt-get install wrk): nothing measured");
        return;
    }
    if pin {
        pin_to_server_cpu(std::process::id());
    }
    let dir = tempfile::tempdir().unwrap();
    write_certificate(dir.path());
    let tls = api::tls::TlsReloader::new(turn_agent::config::TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    })
    .unwrap();
    // The defaults, except that every wrk connection comes from 127.0.0.1.
    let limits = api::ServerLimits {
        max_connections_per_address: 1024,
        ..api::ServerLimits::default()
    };
    let (router, _rotate_requests) = agent_router();
    let agent = serve(router.clone(), limits, None).await;
    let agent_tls = serve(router, limits, Some(tls)).await;
    let nginx_ports = (free_port(), free_port());
    let nginx = in_path("nginx")
        .then(|| Nginx(start_nginx(dir.path(), nginx_ports.0, nginx_ports.1, pin)))
        .or_else(|| {
            println!("nginx is not installed: the agent's figures alone");
            None
        });
    let own_pid = std::process::id();
    let rss_before = vm_rss_kib(own_pid);

    println!(
        "wrk -t2, {rounds} rounds of agent then nginx, {seconds} s each{}; agent: access checks and metrics on, no rate limit; nginx: one worker, return 200",
        if pin { ", servers on CPU 0 and wrk on CPU 1" } else { "" }
    );
    println!("load average before: {}", load_average());
    println!(
        "{:<24} {:>12} {:>9} {:>7} {:>12} {:>9} {:>7} {:>8} {:>8}",
        "scenario (medians)",
        "agent req/s",
        "p99 ms",
        "errors",
        "nginx req/s",
        "p99 ms",
        "errors",
        "ratio",
        "p99 x"
    );
    for scenario in scenarios {
        let (scheme, agent_addr, nginx_port) = if scenario.tls {
            ("https", agent_tls, nginx_ports.1)
        } else {
            ("http", agent, nginx_ports.0)
        };
        let agent_url = format!("{scheme}://{agent_addr}/turncredential");
        let nginx_url = format!("{scheme}://127.0.0.1:{nginx_port}/turncredential");
        // wrk blocks; the server runs on the runtime's worker threads.
        // One second of warm-up each.
        blocking_wrk(agent_url.clone(), scenario, 1, pin).await;
        if nginx.is_some() {
            blocking_wrk(nginx_url.clone(), scenario, 1, pin).await;
        }
        let mut agent_runs = Vec::new();
        let mut nginx_runs = Vec::new();
        for _ in 0..rounds {
            agent_runs.push(blocking_wrk(agent_url.clone(), scenario, seconds, pin).await);
            if nginx.is_some() {
                nginx_runs.push(blocking_wrk(nginx_url.clone(), scenario, seconds, pin).await);
            }
        }
        let agent_figures = Medians::of(&agent_runs);
        let nginx_text = if nginx_runs.is_empty() {
            format!("{:>12} {:>9} {:>7} {:>8} {:>8}", "-", "-", "-", "-", "-")
        } else {
            let nginx_figures = Medians::of(&nginx_runs);
            let mut ratios: Vec<f64> = agent_runs
                .iter()
                .zip(&nginx_runs)
                .map(|(a, n)| a.requests_per_second / n.requests_per_second)
                .collect();
            let mut p99_ratios: Vec<f64> = agent_runs
                .iter()
                .zip(&nginx_runs)
                .map(|(a, n)| a.p99_ms / n.p99_ms)
                .collect();
            let text = format!(
                "{:>12.0} {:>9.2} {:>7} {:>7.2}x {:>7.2}x",
                nginx_figures.requests_per_second,
                nginx_figures.p99_ms,
                nginx_figures.errors,
                median(&mut ratios),
                median(&mut p99_ratios)
            );
            println!(
                "  per round: ratio {}",
                ratios
                    .iter()
                    .map(|ratio| format!("{ratio:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            text
        };
        println!(
            "{:<24} {:>12.0} {:>9.2} {:>7} {nginx_text}",
            scenario.name,
            agent_figures.requests_per_second,
            agent_figures.p99_ms,
            agent_figures.errors,
        );
    }
    println!("load average after: {}", load_average());
    // Let closing connections finish, and the server give freed memory
    // back (it looks every TRIM_CHECK_INTERVAL), before reading memory.
    tokio::time::sleep(api::trim::TRIM_CHECK_INTERVAL + Duration::from_secs(1)).await;
    let rss_after = vm_rss_kib(own_pid);
    let nginx_rss = nginx.as_ref().map(|nginx| nginx_rss_kib(nginx.0.id()));
    println!(
        "RSS after load: agent {:.1} MB (bench process, {:.1} MB before load){}",
        rss_after as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        nginx_rss.map_or(String::new(), |kib| format!(
            ", nginx {:.1} MB (master and worker)",
            kib as f64 / 1024.0
        ))
    );

    if idle > 0 {
        let idle_limits = api::ServerLimits {
            max_connections: idle + 16,
            max_connections_per_address: idle + 16,
            header_read_timeout: Duration::from_secs(120),
            ..api::ServerLimits::default()
        };
        let (router, _rotate_requests) = agent_router();
        let idle_agent = serve(router, idle_limits, None).await;
        let before = vm_rss_kib(own_pid);
        let holder = tokio::task::spawn_blocking(move || idle_sockets(idle, idle_agent))
            .await
            .unwrap();
        // Let the accept loop take all of them.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = vm_rss_kib(own_pid);
        tokio::task::spawn_blocking(move || close_idle_sockets(holder))
            .await
            .unwrap();
        tokio::time::sleep(api::trim::TRIM_CHECK_INTERVAL + Duration::from_secs(1)).await;
        let after = vm_rss_kib(own_pid);
        println!(
            "{idle} idle sockets: agent {:.1} MB before, {:.1} MB held (+{:.1} KB each), {:.1} MB after they closed",
            before as f64 / 1024.0,
            held as f64 / 1024.0,
            held.saturating_sub(before) as f64 / idle as f64,
            after as f64 / 1024.0
        );
        if let Some(nginx) = &nginx {
            let master = nginx.0.id();
            let before = nginx_rss_kib(master);
            let to: SocketAddr = format!("127.0.0.1:{}", nginx_ports.0).parse().unwrap();
            let holder = tokio::task::spawn_blocking(move || idle_sockets(idle, to))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let held = nginx_rss_kib(master);
            tokio::task::spawn_blocking(move || close_idle_sockets(holder))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = nginx_rss_kib(master);
            println!(
                "{idle} idle sockets: nginx {:.1} MB before, {:.1} MB held (+{:.1} KB each), {:.1} MB after they closed",
                before as f64 / 1024.0,
                held as f64 / 1024.0,
                held.saturating_sub(before) as f64 / idle as f64,
                after as f64 / 1024.0
            );
        }
    }
}

/// Stops nginx (master and worker) when dropped, also on a panic.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

async fn blocking_wrk(
    url: String,
    scenario: &'static Scenario,
    seconds: u64,
    pin: bool,
) -> Figures {
    tokio::task::spawn_blocking(move || wrk(&url, scenario, seconds, pin))
        .await
        .unwrap()
}
