//! Fixtures for integration tests: a real turn-agent process with a real
//! turnserver on loopback, on ports and in a temp dir the test owns.
//!
//! Everything waits by polling with a deadline; nothing sleeps a fixed time
//! to synchronise.
#![allow(dead_code)]

pub mod zookeeper;

use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_turn-agent");

/// How long a test's HTTP client keeps an idle connection for reuse: well
/// below the servers' `header_read_timeout` (5 s), after which they close an
/// idle keep-alive connection. A request sent on a connection at the moment
/// the server closes it is reset; a client that reuses a connection idle for
/// about that long (one that waited out a `turnutils_uclient` run, 3–6 s)
/// would now and then meet that race.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(1);

/// A test's HTTP client builder, with [`CLIENT_POOL_IDLE`].
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().pool_idle_timeout(CLIENT_POOL_IDLE)
}

/// A test's HTTP client, with [`CLIENT_POOL_IDLE`].
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().unwrap()
}

/// Polls `condition` every 10 ms until it yields a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port that is free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A free TCP port for the HTTP API.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A small relay port range below the kernel's ephemeral range, so it does
/// not collide with ports handed out by `free_port`.
pub fn relay_range() -> (u16, u16) {
    loop {
        // Each uclient -y run takes several relay ports, and tests run a
        // few at once: 100 ports per test.
        let base = 10_000 + (rand::random::<u16>() % 200) * 100;
        if (base..base + 100).all(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok()) {
            return (base, base + 99);
        }
    }
}

/// Settings a test may change before the agent starts.
pub struct AgentOptions {
    /// Extra `[turnserver]` lines.
    pub turnserver_extra: String,
    /// Extra lines appended to the file (other sections).
    pub extra: String,
    pub env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
    pub json_logs: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            turnserver_extra: String::new(),
            extra: String::new(),
            env: Vec::new(),
            extra_args: vec![
                "--no-tls".into(),
                "--no-dtls".into(),
                "--no-stun-backward-compatibility".into(),
                "--allow-loopback-peers".into(),
                "--no-tcp-relay".into(),
            ],
            json_logs: false,
        }
    }
}

/// A test's own directory, ports and config file. Clones share the
/// directory, which lives until the last clone is dropped.
#[derive(Clone)]
pub struct AgentFiles {
    pub dir: std::sync::Arc<tempfile::TempDir>,
    pub config_path: PathBuf,
    pub api: SocketAddr,
    pub turn_port: u16,
    pub realm: String,
}

impl AgentFiles {
    pub fn new(options: &AgentOptions) -> AgentFiles {
        let dir = tempfile::Builder::new()
            .prefix("turn-agent-test-")
            .tempdir()
            .unwrap();
        let api: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let turn_port = free_port();
        let (min_port, max_port) = relay_range();
        let realm = "test.turn-agent".to_string();
        let d = dir.path().display();
        let extra_args = options
            .extra_args
            .iter()
            .map(|arg| format!("{arg:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"
[agent]
log_level = "info,turnserver=debug"
log_format = "{log_format}"
shutdown_timeout = "10s"

[api]
listen = "{api}"

[turnserver]
listening_ip = "127.0.0.1"
listening_port = {turn_port}
relay_ip = "127.0.0.1"
min_port = {min_port}
max_port = {max_port}
realm = "{realm}"
userdb = "{d}/turndb"
pidfile = "{d}/turnserver.pid"
extra_args = [{extra_args}]
probe_interval = "200ms"
probe_timeout = "100ms"
probe_failures = 3
stop_timeout = "2s"
{turnserver_extra}

[credentials]
state_file = "{d}/credential.json"
{extra}
"#,
            log_format = if options.json_logs { "json" } else { "text" },
            turnserver_extra = options.turnserver_extra,
            extra = options.extra,
        );
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, text).unwrap();
        AgentFiles {
            dir: std::sync::Arc::new(dir),
            config_path,
            api,
            turn_port,
            realm,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running `turn-agent run` process. Dropping it SIGKILLs the agent (its
/// turnserver follows through the parent-death signal) and sweeps up any
/// turnserver still running from this test's directory.
pub struct Agent {
    pub files: AgentFiles,
    pub child: Child,
    pub log_path: PathBuf,
    http: reqwest::Client,
}

impl Agent {
    pub fn start(options: AgentOptions) -> Agent {
        let files = AgentFiles::new(&options);
        Agent::start_with(files, &options)
    }

    pub fn start_with(files: AgentFiles, options: &AgentOptions) -> Agent {
        let log_path = files.path("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(AGENT_BIN)
            .args(["run", "--config"])
            .arg(&files.config_path)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(options.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            files,
            child,
            log_path,
            http: http_client_builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The test's files, to start another agent on them.
    pub fn take_files(&self) -> AgentFiles {
        self.files.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// Waits for `text` to appear in the agent's log.
    pub async fn wait_log(&self, text: &str, timeout: Duration) {
        wait_for(timeout, &format!("{text:?} in the log"), || {
            let found = self.log().contains(text);
            async move { found.then_some(()) }
        })
        .await
    }

    /// Rewrites the config file, replacing `from` (which must be there)
    /// with `to`, and sends SIGHUP.
    pub fn reload_with(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.files.config_path).unwrap();
        assert!(text.contains(from), "{from:?} is not in the config file");
        std::fs::write(&self.files.config_path, text.replace(from, to)).unwrap();
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.files.api, path)
    }

    /// `(status, body)` of a GET, or `None` while the API does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        let response = self.http.get(self.url(path)).send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.ok()?;
        Some((status, body))
    }

    /// Waits for `/readyz` to say 200 and returns turnserver's pid.
    pub async fn wait_ready(&self, timeout: Duration) -> u32 {
        wait_for(timeout, "/readyz 200", || async {
            match self.get("/readyz").await {
                Some((200, body)) => body["turnserver"]["pid"].as_u64().map(|pid| pid as u32),
                _ => None,
            }
        })
        .await
    }

    pub fn turn_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.files.turn_port).into()
    }

    /// Turnserver processes started for this test's directory.
    pub fn turnservers(&self) -> Vec<u32> {
        turnservers_in(self.files.dir.path())
    }

    /// True while the agent process runs (not exited, not a zombie).
    pub fn child_alive(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        stat.rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Waits for the agent process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for(timeout, "agent exit", || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in turnservers_in(self.files.dir.path()) {
            signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

pub fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Live (non-zombie) turnserver processes whose command line mentions `dir`.
pub fn turnservers_in(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "turnserver" {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !zombie && String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Asks coturn's own STUN client (not our code) whether `port` answers.
pub async fn stunclient_answers(port: u16) -> bool {
    tokio::process::Command::new("timeout")
        .args([
            "2",
            "turnutils_stunclient",
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|status| status.success())
        .unwrap_or(false)
}

/// CPU time (user + system) the process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Runs the agent binary with `args` and returns (exit code, stderr).
pub fn run_agent_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(AGENT_BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A credential as `/turncredential` served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub userid: String,
    pub password: String,
    /// Milliseconds since the epoch.
    pub expired_time: u64,
}

impl Agent {
    /// `GET /turncredential` (with an optional query), parsed.
    pub async fn credential(&self, query: &str) -> Option<Served> {
        match self.get(&format!("/turncredential{query}")).await? {
            (200, body) => parse_served(&body),
            _ => None,
        }
    }

    /// Waits until a credential is served.
    pub async fn wait_credential(&self, timeout: Duration) -> Served {
        wait_for(timeout, "a served credential", || self.credential("")).await
    }

    pub fn userdb(&self) -> PathBuf {
        self.files.path("turndb")
    }

    /// Deletes a long-term user from the database behind the agent's back,
    /// with coturn's own turnadmin.
    pub fn delete_user_by_hand(&self, user: &str) {
        let db = self.userdb().display().to_string();
        turnadmin(&["-d", "-b", &db, "-u", user, "-r", &self.files.realm]);
    }

    /// `POST /rotate`; returns the HTTP status.
    pub async fn post_rotate(&self) -> u16 {
        let response = self.http.post(self.url("/rotate")).send().await.unwrap();
        response.status().as_u16()
    }

    /// Waits until the allocation self-check has passed at least once.
    pub async fn wait_self_check_passes(&self, timeout: Duration) {
        wait_for(timeout, "a passing self-check", || async {
            let (_, body) = self.get("/readyz").await?;
            (body["health"]["last_ok_unix"].is_number()).then_some(())
        })
        .await
    }
}

pub fn parse_served(body: &serde_json::Value) -> Option<Served> {
    if body["type"] != "result" || body["code"] != "ok" {
        return None;
    }
    Some(Served {
        userid: body["userid"].as_str()?.to_string(),
        password: body["password"].as_str()?.to_string(),
        expired_time: body["expired_time"].as_u64()?,
    })
}

/// coturn's own client decides whether a credential allocates.
pub async fn uclient_allocates(port: u16, user: &str, password: &str) -> bool {
    let run = tokio::process::Command::new("turnutils_uclient")
        .args([
            "-y", "-n", "0", "-m", "1", "-c", "-u", user, "-w", password, "-p",
        ])
        .arg(port.to_string())
        .arg("127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}

/// Bytes received on lo so far, from the kernel's own counter.
pub fn lo_bytes() -> u64 {
    std::fs::read_to_string("/sys/class/net/lo/statistics/rx_bytes")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// coturn's own client relaying steady traffic (about 10 Mbps on lo) for
/// `messages` x 5 ms; killed when dropped.
pub fn uclient_relaying(
    port: u16,
    user: &str,
    password: &str,
    messages: u32,
) -> tokio::process::Child {
    tokio::process::Command::new("turnutils_uclient")
        .args([
            "-y",
            "-n",
            &messages.to_string(),
            "-l",
            "1200",
            "-m",
            "4",
            "-z",
            "5",
            "-c",
        ])
        .args([
            "-u",
            user,
            "-w",
            password,
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Runs the real turnadmin (an independent reader of the database) and
/// removes the log file it leaves behind.
pub fn turnadmin(args: &[&str]) -> String {
    let output = Command::new("turnadmin").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    for line in stdout.lines() {
        if let Some((_, path)) = line.split_once("log file opened: ") {
            let _ = std::fs::remove_file(path.trim());
        }
    }
    stdout
}

/// `name[realm]` entries of a turnadmin listing.
pub fn listed(output: &str, realm: &str) -> Vec<String> {
    let suffix = format!("[{realm}]");
    output
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_suffix(suffix.as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Agent users (`ta1-<expiry>-…`) in the database, with their expiry.
pub fn agent_users(db: &Path, realm: &str) -> Vec<(String, u64)> {
    listed(&turnadmin(&["-l", "-b", &db.display().to_string()]), realm)
        .into_iter()
        .filter_map(|user| {
            let expiry = user.strip_prefix("ta1-")?.split('-').next()?.parse().ok()?;
            Some((user, expiry))
        })
        .collect()
}

pub fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An Ed25519 key pair written by openssl, as client tokens use:
/// (private, public) PEM paths.
pub fn openssl_key_pair(dir: &Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    assert!(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success());
    (private.display().to_string(), public.display().to_string())
}

/// A uclient on loopback that keeps relaying (and so keeps its
/// allocations) until dropped.
pub fn hold_allocations(port: u16, user: &str, password: &str) -> tokio::process::Child {
    hold_allocations_of(port, user, password, 1)
}

/// Like [`hold_allocations`], with `clients` uclient clients (`-m`).
pub fn hold_allocations_of(
    port: u16,
    user: &str,
    password: &str,
    clients: u32,
) -> tokio::process::Child {
    tokio::process::Command::new("turnutils_uclient")
        .args(["-y", "-n", "100000", "-m"])
        .arg(clients.to_string())
        .args(["-l", "100"])
        .args(["-u", user, "-w", password, "-p"])
        .arg(port.to_string())
        .arg("127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
