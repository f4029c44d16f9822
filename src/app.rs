//! The agent's lifecycle: start every task, wait for a signal, shut down in
//! order within a time limit.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{self, Config, RawConfig};
use crate::credentials::{self, CredentialManager, CredentialStatus};
use crate::metrics::AgentMetrics;
use crate::registry::Registry;
use crate::reload::{Reloader, Reread};
use crate::self_check::{HealthStatus, SelfCheck};
use crate::shutdown::{AgentSignal, Signals};
use crate::supervisor::{self, Supervisor, SupervisorStatus};
use crate::systemd::{self, Watchdog};

/// Runs the agent until SIGTERM or SIGINT.
///
/// Shutdown order: the znode is withdrawn, the HTTP server stops taking
/// requests, the credential manager stops, then turnserver is stopped. Each step gets
/// what is left of `agent.shutdown_timeout`.
pub async fn run(config_path: PathBuf, raw: RawConfig, config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let listener = TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("api.listen: cannot bind {}", config.api.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "HTTP API listening");

    let (config_sender, config_watch) = watch::channel(Arc::new(config.clone()));
    let supervisor_stop = CancellationToken::new();
    let api_stop = CancellationToken::new();
    let (supervisor, status) = Supervisor::new(config_watch.clone(), Watchdog::from_env())
        .context("cannot start the supervisor")?;
    let probe_latency = supervisor.probe_latency();
    let mut supervisor_task = tokio::spawn(supervisor.run(supervisor_stop.clone()));

    let credentials_stop = CancellationToken::new();
    let (credential_manager, credentials) = CredentialManager::new(config_watch.clone());
    let credentials_task = tokio::spawn(credential_manager.run(credentials_stop.clone()));

    let self_check_stop = CancellationToken::new();
    let (self_check, health) = SelfCheck::new(
        config_watch.clone(),
        credentials.source.clone(),
        status.clone(),
        credentials.status.clone(),
        credentials.rotate.clone(),
    );
    let health_sender = self_check.status_sender();
    let self_check_task = tokio::spawn(self_check.run(self_check_stop.clone()));
    tokio::spawn(report_to_systemd(
        status.clone(),
        credentials.status.clone(),
        health.clone(),
    ));

    let registry_stop = CancellationToken::new();
    let (registry, registry_status) = Registry::new(
        config_watch.clone(),
        status.clone(),
        credentials.status.clone(),
        health.clone(),
    );
    let registry_task = registry.map(|registry| tokio::spawn(registry.run(registry_stop.clone())));

    warn_about_loose_secret_files(&config);
    let (drain_sender, mut drain_requests) = tokio::sync::mpsc::channel::<()>(1);
    let agent_metrics = AgentMetrics::new(
        status.clone(),
        credentials.status.clone(),
        registry_status.clone(),
        health.clone(),
        probe_latency,
    );
    let guard = api::guard::Guard::new(&config.access);
    let turn_uris = Arc::new(ArcSwap::from_pointee(config.api.turn_uris.clone()));
    let router = api::router(
        ApiState {
            drain: drain_sender,
            metrics: agent_metrics.clone(),
            health: health.clone(),
            registry: registry_status,
            supervisor: status.clone(),
            credentials: credentials.source,
            credential_status: credentials.status.clone(),
            rotate: credentials.rotate,
            turn_uris: turn_uris.clone(),
        },
        guard.clone(),
    );
    let tls = match &config.api.tls {
        Some(files) => Some(api::tls::TlsReloader::new(files.clone()).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut api_task: JoinHandle<std::io::Result<()>> = tokio::spawn(api::serve(
        listener,
        router,
        config.api.limits,
        tls.clone(),
        api_stop.clone(),
    ));

    let mut reconfiguration = Reconfiguration {
        reloader: Reloader::new(raw),
        config: config_sender,
        guard,
        turn_uris,
        health: health_sender.clone(),
        supervisor: status,
        credentials: credentials.status,
        metrics: agent_metrics,
        drain: None,
        restart_keys: Vec::new(),
        finish: None,
    };
    let reason = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                AgentSignal::Terminate(name) => break name,
                AgentSignal::Drain => break drain(&reconfiguration.current(), &health_sender, &mut signals).await,
                AgentSignal::Reload => {
                    reconfiguration.reload(&config_path);
                    if let Some(tls) = &tls {
                        match tls.reload() {
                            Ok(()) => tracing::info!("TLS certificates re-read"),
                            Err(error) => tracing::error!(%error, "keeping the previous TLS certificates"),
                        }
                    }
                }
            },
            Some(()) = drain_requests.recv() => {
                break drain(&reconfiguration.current(), &health_sender, &mut signals).await;
            }
            outcome = reconfiguration.drained() => reconfiguration.restart_turnserver(outcome),
            result = &mut supervisor_task => {
                anyhow::bail!("supervisor ended unexpectedly: {result:?}");
            }
            result = &mut api_task => {
                anyhow::bail!("HTTP server ended unexpectedly: {result:?}");
            }
        }
    };

    tracing::info!(signal = reason, "shutting down");
    systemd::notify_stopping();
    let deadline = Instant::now() + reconfiguration.current().agent.shutdown_timeout;

    // Withdraw first, so signalling servers stop sending clients here while
    // the API still answers those that already picked this host.
    registry_stop.cancel();
    if let Some(task) = registry_task {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("registry did not withdraw in time");
        }
    }
    api_stop.cancel();
    if tokio::time::timeout_at(deadline, &mut api_task)
        .await
        .is_err()
    {
        tracing::warn!("HTTP server did not drain in time");
        api_task.abort();
    }
    // A rotation in flight finishes (turnadmin calls are short, and a
    // half-done one is repaired at the next start anyway).
    credentials_stop.cancel();
    if tokio::time::timeout_at(deadline, credentials_task)
        .await
        .is_err()
    {
        tracing::warn!("credential manager did not stop in time");
    }
    // No more checks once the host stops serving; a check in flight is
    // abandoned (it only allocates and releases a relay).
    self_check_stop.cancel();
    self_check_task.abort();
    supervisor_stop.cancel();
    if tokio::time::timeout_at(deadline, &mut supervisor_task)
        .await
        .is_err()
    {
        // Dropping out of main ends the spawner thread, and the parent-death
        // signal takes turnserver with us.
        anyhow::bail!("turnserver did not stop within agent.shutdown_timeout");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Marks the host as draining (not ready: the znode goes, /readyz says
/// "draining", credentials are still served) and waits for traffic to end.
async fn drain(
    config: &Config,
    health: &watch::Sender<HealthStatus>,
    signals: &mut Signals,
) -> &'static str {
    tracing::info!("draining: withdrawn from ZooKeeper, waiting for relayed traffic to end");
    health.send_modify(|status| status.draining = true);
    tokio::select! {
        outcome = quiet(config) => outcome,
        name = terminated(signals) => {
            tracing::warn!(signal = name, "drain interrupted");
            name
        }
    }
}

fn quiet(config: &Config) -> impl Future<Output = &'static str> + Send + 'static {
    crate::drain::wait_for_quiet(
        config.drain.clone(),
        config.traffic.interface.clone(),
        config.traffic.direction,
    )
}

/// The next SIGTERM or SIGINT; other signals are ignored while draining.
async fn terminated(signals: &mut Signals) -> &'static str {
    loop {
        if let AgentSignal::Terminate(name) = signals.next().await {
            return name;
        }
    }
}

/// Applies reloaded configurations: live keys at once, turnserver keys
/// through a drain and a turnserver restart.
struct Reconfiguration {
    reloader: Reloader,
    config: watch::Sender<Arc<Config>>,
    guard: api::guard::Guard,
    turn_uris: Arc<ArcSwap<Vec<String>>>,
    health: Arc<watch::Sender<HealthStatus>>,
    supervisor: watch::Receiver<SupervisorStatus>,
    credentials: watch::Receiver<CredentialStatus>,
    metrics: AgentMetrics,
    /// The drain before a turnserver restart, while one is due.
    drain: Option<Pin<Box<dyn Future<Output = &'static str> + Send>>>,
    /// The keys that restart is for.
    restart_keys: Vec<String>,
    /// Waits for the new turnserver and lists the host again.
    finish: Option<JoinHandle<()>>,
}

impl Reconfiguration {
    fn current(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// SIGHUP: re-read the file; a bad file is reported and the running
    /// configuration kept.
    fn reload(&mut self, path: &std::path::Path) {
        // The file must be valid as a whole, even in keys that wait for an
        // agent restart.
        let reread = config::load(path).and_then(|(raw, _)| self.reloader.reread(raw));
        let reread = match reread {
            Ok(reread) => reread,
            Err(error) => {
                for problem in &error.problems {
                    tracing::error!(%problem, "configuration re-read failed; keeping the running configuration");
                }
                self.metrics.reloaded(false, 0);
                return;
            }
        };
        self.metrics.reloaded(true, reread.agent_restart.len());
        self.apply_live(&reread);
        self.restart_keys = reread.turnserver.clone();
        if !reread.agent_restart.is_empty() {
            tracing::warn!(keys = ?reread.agent_restart, "these changes take effect at the next agent restart");
        }
        match (reread.needs_turnserver_restart(), self.drain.is_some()) {
            (true, false) => {
                tracing::info!(
                    keys = ?reread.turnserver,
                    "these changes need a new turnserver: withdrawn, draining before the restart"
                );
                if let Some(finish) = self.finish.take() {
                    finish.abort();
                }
                self.health
                    .send_modify(|status| status.reconfiguring = true);
                self.drain = Some(Box::pin(quiet(&reread.apply_now)));
            }
            (false, true) => {
                tracing::info!(
                    "the changes that needed a new turnserver were reverted; listed again"
                );
                self.drain = None;
                self.health
                    .send_modify(|status| status.reconfiguring = false);
            }
            _ => {}
        }
    }

    fn apply_live(&self, reread: &Reread) {
        let next = &reread.apply_now;
        let before = self.current();
        if next.agent.log_level != before.agent.log_level {
            crate::logging::set_level(&next.agent.log_level);
        }
        if next.access != before.access {
            self.guard.replace(&next.access);
        }
        if next.api.turn_uris != before.api.turn_uris {
            self.turn_uris.store(Arc::new(next.api.turn_uris.clone()));
        }
        self.config.send_replace(Arc::new(next.clone()));
        if reread.changed.is_empty() {
            tracing::info!("configuration re-read: nothing changed");
        } else {
            tracing::info!(changed = ?reread.changed, applied = ?reread.live, "configuration re-read");
        }
    }

    /// Resolves when the drain before a turnserver restart ends; pending
    /// while none is due.
    async fn drained(&mut self) -> &'static str {
        match self.drain.as_mut() {
            Some(drain) => drain.await,
            None => std::future::pending().await,
        }
    }

    /// After the drain: hand the new configuration to every task (the
    /// supervisor replaces turnserver, the credential manager starts afresh
    /// if the realm, mode or database changed) and list the host again once
    /// both are done.
    fn restart_turnserver(&mut self, drain_outcome: &'static str) {
        self.drain = None;
        let next = match self.reloader.turnserver_restart() {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "cannot compose the new configuration; keeping the running one");
                self.health
                    .send_modify(|status| status.reconfiguring = false);
                return;
            }
        };
        let before = self.current();
        let new_process = supervisor::command_line(&before.turnserver, before.credentials.mode)
            != supervisor::command_line(&next.turnserver, next.credentials.mode);
        let fresh_credentials = credentials::needs_fresh_start(&before, &next);
        let old_pid = self.supervisor.borrow().pid;
        let generation = self.credentials.borrow().generation;
        tracing::info!(
            drain = drain_outcome,
            "applying the configuration that needs a new turnserver"
        );
        // Every new turnserver gets the time a first start gets, and the
        // credential manager its first turnadmin retries.
        let limit = next.turnserver.startup_timeout + Duration::from_secs(10);
        self.config.send_replace(Arc::new(next));
        self.finish = Some(tokio::spawn(finish_restart(
            self.supervisor.clone(),
            self.credentials.clone(),
            self.health.clone(),
            new_process.then_some(old_pid).flatten(),
            fresh_credentials.then_some(generation),
            limit,
            std::mem::take(&mut self.restart_keys),
        )));
    }
}

/// Waits until a turnserver other than `old_pid` answers and (when
/// `old_generation` is given) the credential manager has started afresh
/// and serves, then clears `reconfiguring`. After `limit` it clears it
/// anyway: readiness then follows turnserver and credentials as usual.
async fn finish_restart(
    mut supervisor: watch::Receiver<SupervisorStatus>,
    mut credentials: watch::Receiver<CredentialStatus>,
    health: Arc<watch::Sender<HealthStatus>>,
    old_pid: Option<u32>,
    old_generation: Option<u64>,
    limit: Duration,
    keys: Vec<String>,
) {
    let started = Instant::now();
    let done = async {
        loop {
            let turnserver_done = {
                let status = supervisor.borrow_and_update();
                status.is_ready() && (old_pid.is_none() || status.pid != old_pid)
            };
            let credentials_done = {
                let status = credentials.borrow_and_update();
                status.available && old_generation.is_none_or(|old| status.generation > old)
            };
            if turnserver_done && credentials_done {
                return supervisor.borrow().pid;
            }
            tokio::select! {
                changed = supervisor.changed() => if changed.is_err() { std::future::pending::<()>().await },
                changed = credentials.changed() => if changed.is_err() { std::future::pending::<()>().await },
            }
        }
    };
    match tokio::time::timeout(limit, done).await {
        Ok(pid) => tracing::info!(
            pid,
            took_ms = started.elapsed().as_millis() as u64,
            ?keys,
            "turnserver runs the new configuration"
        ),
        Err(_) => tracing::error!(
            limit_s = limit.as_secs(),
            ?keys,
            "turnserver did not come back with the new configuration in time"
        ),
    }
    health.send_modify(|status| status.reconfiguring = false);
}

/// Token and auth files readable by group or others are reported: they
/// hold secrets.
fn warn_about_loose_secret_files(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    let files = config
        .access
        .token_files
        .iter()
        .chain(config.zookeeper.auth_file.iter());
    for path in files {
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "secret file is readable by group or others; chmod 600 it");
            }
        }
    }
}

/// READY=1 once the host can first serve (turnserver answers STUN and a
/// credential exists; the API already listens by then), and STATUS= on
/// every change, for `systemctl status`.
async fn report_to_systemd(
    mut supervisor: watch::Receiver<SupervisorStatus>,
    mut credentials: watch::Receiver<CredentialStatus>,
    mut health: watch::Receiver<HealthStatus>,
) {
    let mut announced_ready = false;
    loop {
        let reason = api::not_ready_reason(
            &supervisor.borrow_and_update(),
            &credentials.borrow_and_update(),
            &health.borrow_and_update(),
        );
        match reason {
            Some(reason) => systemd::notify_status(&reason),
            None => {
                systemd::notify_status("ready: turnserver answers and a credential is served");
                if !announced_ready {
                    systemd::notify_ready();
                    announced_ready = true;
                }
            }
        }
        tokio::select! {
            changed = supervisor.changed() => if changed.is_err() { return },
            changed = credentials.changed() => if changed.is_err() { return },
            changed = health.changed() => if changed.is_err() { return },
        }
    }
}
