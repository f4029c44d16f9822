//! Keeps one turnserver running: spawn, probe, restart with backoff, stop.
//!
//! `lifecycle` holds every rule as a pure state machine; this module is the
//! shell that owns the child process and the clock.

pub mod backoff;
pub mod command;
pub mod lifecycle;
pub mod probe;
pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigWatch, CredentialMode, TurnserverConfig};
use crate::systemd::Watchdog;
use backoff::RestartBackoff;
pub use lifecycle::{ChildExit, Phase, SupervisorStatus};
use lifecycle::{Lifecycle, ProbeVerdict};
use process::Spawner;

/// How often to probe a child that has not answered yet: turnserver answers
/// about 70 ms after spawn, and a fast first answer makes a fast restart.
const STARTING_PROBE_INTERVAL: Duration = Duration::from_millis(25);

pub struct Supervisor {
    /// The configuration in effect: its `[turnserver]` and credential mode
    /// make turnserver's command line.
    applied: Arc<config::Config>,
    /// Where new configurations come from: a change to turnserver's command
    /// line restarts it (without backoff), probe settings apply at once.
    config_watch: ConfigWatch,
    spawner: Spawner,
    lifecycle: Lifecycle,
    status: watch::Sender<SupervisorStatus>,
    watchdog: Watchdog,
    /// Round trip of the last answered probe, in microseconds, for metrics
    /// (kept out of the status channel so every probe does not wake its
    /// subscribers).
    probe_latency_micros: Arc<AtomicU64>,
    /// The CLI endpoint of the running turnserver, for the control task.
    control_target: watch::Sender<Option<crate::control::ControlTarget>>,
    /// The running (or just reaped) child's output routing, joined by
    /// `finish_output` once the child is gone.
    output: Option<process::OutputRouting>,
}

/// What the supervisor runs, less the quotas: a change here means a new
/// turnserver. The quotas change in the running one through its CLI (`cc`,
/// `control::quotas`); with the control channel off, at its next start.
pub fn command_line(
    config: &TurnserverConfig,
    mode: CredentialMode,
) -> (std::path::PathBuf, Vec<String>) {
    let mut without_quotas = config.clone();
    without_quotas.control.quotas = Default::default();
    (
        config.binary.clone(),
        command::turnserver_args(&without_quotas, mode),
    )
}

/// Why a child's run ended.
enum ChildEnd {
    Exited(ChildExit),
    Hung(String),
    /// Its command line changed: replace it.
    Reconfigured,
    Shutdown,
}

impl Supervisor {
    /// Builds a supervisor; must be called inside the Tokio runtime (it
    /// starts the spawner thread).
    pub fn new(
        mut config_watch: ConfigWatch,
        watchdog: Watchdog,
    ) -> std::io::Result<(Supervisor, watch::Receiver<SupervisorStatus>)> {
        let applied = config_watch.borrow_and_update().clone();
        let config = &applied.turnserver;
        let backoff = RestartBackoff::new(
            config.restart_delay_min,
            config.restart_delay_max,
            config.stable_after,
        )
        .map_err(|error| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string())
        })?;
        let lifecycle = Lifecycle::new(backoff, config.probe_failures, config.startup_timeout);
        let (status, receiver) = watch::channel(SupervisorStatus::default());
        let supervisor = Supervisor {
            applied,
            config_watch,
            spawner: Spawner::start()?,
            lifecycle,
            status,
            watchdog,
            probe_latency_micros: Arc::new(AtomicU64::new(0)),
            control_target: watch::channel(None).0,
            output: None,
        };
        Ok((supervisor, receiver))
    }

    /// The last probe's round trip in microseconds, updated as probes answer.
    pub fn probe_latency(&self) -> Arc<AtomicU64> {
        self.probe_latency_micros.clone()
    }

    /// The running turnserver's CLI endpoint, new at every start.
    pub fn control_targets(&self) -> watch::Receiver<Option<crate::control::ControlTarget>> {
        self.control_target.subscribe()
    }

    /// Runs until `shutdown` is cancelled, then stops turnserver gracefully.
    #[tracing::instrument(name = "supervisor", skip_all)]
    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Some(pid) =
            process::kill_stale_turnserver(&self.config().pidfile, self.config().stop_timeout).await
        {
            tracing::info!(pid, "stale turnserver is gone");
        }
        loop {
            let end = match self.spawn().await {
                Ok(mut child) => {
                    let end = self.watch_child(&mut child, &shutdown).await;
                    match end {
                        ChildEnd::Shutdown => {
                            let pid = child.id();
                            let how =
                                process::stop_child(&mut child, self.config().stop_timeout).await;
                            self.finish_output().await;
                            if let Some(pid) = pid {
                                process::remove_pidfile(&self.config().pidfile, pid);
                            }
                            // The CLI password of a turnserver that is gone
                            // has no reader left: do not leave it on disk.
                            let agent_file =
                                crate::control::turnserver_file::path_for(&self.config().pidfile);
                            match std::fs::remove_file(&agent_file) {
                                Ok(()) => {}
                                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                                Err(error) => {
                                    tracing::warn!(%error, "cannot remove the agent's turnserver file with the CLI password")
                                }
                            }
                            tracing::info!(exit = %how, "turnserver stopped");
                            self.lifecycle.stopped(Some(how));
                            self.publish();
                            return;
                        }
                        ChildEnd::Reconfigured => {
                            let how =
                                process::stop_child(&mut child, self.config().stop_timeout).await;
                            self.finish_output().await;
                            tracing::info!(exit = %how, "turnserver stopped for a new configuration");
                            self.lifecycle.stopped(Some(how));
                            self.publish();
                            continue;
                        }
                        ChildEnd::Hung(reason) => {
                            tracing::error!(%reason, pid = child.id(), "turnserver is hung, killing it");
                            let how = process::kill_child(&mut child).await;
                            ChildExit::Hung {
                                reason,
                                then: Box::new(how),
                            }
                        }
                        ChildEnd::Exited(how) => how,
                    }
                }
                Err(error) => ChildExit::SpawnFailed(error.to_string()),
            };
            // Reaped (or never started): its last lines are logged before
            // the exit is reported.
            self.finish_output().await;

            let delay = self.lifecycle.exited(end.clone(), Instant::now());
            let status = self.lifecycle.status();
            if status.crash_loop {
                tracing::error!(
                    exit = %end,
                    restart_delay_ms = delay.as_millis() as u64,
                    restarts = status.restarts,
                    "turnserver is in a crash loop"
                );
            } else {
                tracing::warn!(exit = %end, restart_delay_ms = delay.as_millis() as u64, "turnserver exited, restarting");
            }
            self.publish();
            if !self.wait(delay, &shutdown).await {
                self.lifecycle.stopped(None);
                self.publish();
                return;
            }
        }
    }

    /// Takes the newest configuration; true when turnserver's command line
    /// changed with it.
    fn apply(&mut self, latest: Arc<config::Config>) -> bool {
        let before = self.command_line();
        self.applied = latest;
        let config = &self.applied.turnserver;
        self.lifecycle
            .set_limits(config.probe_failures, config.startup_timeout);
        before != self.command_line()
    }

    fn config(&self) -> &TurnserverConfig {
        &self.applied.turnserver
    }

    fn command_line(&self) -> (std::path::PathBuf, Vec<String>) {
        command_line(self.config(), self.applied.credentials.mode)
    }

    async fn spawn(&mut self) -> std::io::Result<Child> {
        if self.config_watch.has_changed().unwrap_or(false) {
            let latest = self.config_watch.borrow_and_update().clone();
            self.apply(latest);
        }
        let binary = self.config().binary.clone();
        let args = command::turnserver_args(self.config(), self.applied.credentials.mode);
        // A new CLI port and password for every start, written where `-c`
        // points before the child reads it.
        let endpoint = if self.config().control.enabled {
            let endpoint =
                crate::control::turnserver_file::new_endpoint().map_err(std::io::Error::other)?;
            crate::control::turnserver_file::write(
                &crate::control::turnserver_file::path_for(&self.config().pidfile),
                self.config().config_file.as_deref(),
                &endpoint,
            )
            .map_err(std::io::Error::other)?;
            Some(endpoint)
        } else {
            None
        };
        let mut command = Command::new(binary);
        command.args(args);
        // turnserver speaks sd_notify itself; its READY=1 must not be taken
        // for the agent's, nor its watchdog settings for ours.
        for variable in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_FDS",
            "LISTEN_PID",
        ] {
            command.env_remove(variable);
        }
        let mut child = self.spawner.spawn(command).await?;
        let pid = child.id().unwrap_or_default();
        let output = process::OutputRouting::new();
        if let Some(stdout) = child.stdout.take() {
            output.route(stdout, pid, "stdout");
        }
        if let Some(stderr) = child.stderr.take() {
            output.route(stderr, pid, "stderr");
        }
        self.output = Some(output);
        self.control_target
            .send_replace(endpoint.map(|endpoint| crate::control::ControlTarget { endpoint, pid }));
        self.lifecycle.spawned(pid, Instant::now());
        tracing::info!(
            pid,
            restarts = self.lifecycle.status().restarts,
            "turnserver spawned"
        );
        self.publish();
        Ok(child)
    }

    /// Joins the reaped child's output routing, bounded by
    /// [`process::OUTPUT_GRACE`] when something else still holds its pipes.
    async fn finish_output(&mut self) {
        if let Some(output) = self.output.take() {
            if !output.finish(process::OUTPUT_GRACE).await {
                tracing::warn!(
                    grace_ms = process::OUTPUT_GRACE.as_millis() as u64,
                    "turnserver's output pipes stayed open after it was reaped (a process it started holds them); stopped reading them"
                );
            }
        }
    }

    /// Probes the running child until it exits, hangs, or shutdown comes.
    async fn watch_child(&mut self, child: &mut Child, shutdown: &CancellationToken) -> ChildEnd {
        let mut next_probe = Instant::now();
        loop {
            let (probe_addr, probe_timeout) =
                (self.config().probe_addr(), self.config().probe_timeout);
            let probe = async move {
                tokio::time::sleep_until(next_probe).await;
                probe::stun_binding(probe_addr, probe_timeout).await
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return ChildEnd::Shutdown,
                status = child.wait() => return ChildEnd::Exited(process::describe_exit(status)),
                latest = config::next_config(&mut self.config_watch) => {
                    if self.apply(latest) {
                        tracing::info!("turnserver's command line changed; restarting it");
                        return ChildEnd::Reconfigured;
                    }
                    continue;
                }
                result = probe => {
                    let now = Instant::now();
                    let was_ready = self.lifecycle.status().is_ready();
                    match result {
                        Ok(rtt) => {
                            self.probe_latency_micros.store(rtt.as_micros().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
                            self.lifecycle.probe_succeeded(now);
                            if !was_ready {
                                tracing::info!(rtt_ms = rtt.as_secs_f64() * 1000.0, "turnserver is ready");
                            }
                        }
                        Err(error) => {
                            let reason = error.to_string();
                            if let ProbeVerdict::Hung(why) = self.lifecycle.probe_failed(&reason, now) {
                                self.publish();
                                return ChildEnd::Hung(why);
                            }
                            if was_ready {
                                tracing::warn!(%reason, failures = self.lifecycle.status().consecutive_probe_failures, "turnserver missed a probe");
                            }
                        }
                    }
                    self.publish();
                    self.watchdog.ping_if_due();
                    let interval = if self.lifecycle.status().phase == Phase::Starting {
                        STARTING_PROBE_INTERVAL
                    } else {
                        self.config().probe_interval
                    };
                    // Keep the cadence from the scheduled start, not from
                    // when a slow probe gave up, so hang detection takes
                    // probe_interval x probe_failures, not more.
                    next_probe = (next_probe + interval).max(now);
                }
            }
        }
    }

    /// Sleeps `delay` while still pinging the watchdog; false on shutdown.
    async fn wait(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let until = Instant::now() + delay;
        let step = self
            .watchdog
            .max_gap()
            .unwrap_or(delay)
            .max(Duration::from_millis(1));
        loop {
            self.watchdog.ping_if_due();
            let now = Instant::now();
            if now >= until {
                return true;
            }
            let wake = until.min(now + step);
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn publish(&self) {
        let next = self.lifecycle.status().clone();
        self.status.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
}
