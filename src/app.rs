//! The agent's lifecycle: start every task, wait for a signal, shut down in
//! order within a time limit.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{Config, RawConfig};
use crate::credentials::CredentialManager;
use crate::metrics::AgentMetrics;
use crate::readiness::{self, HealthWriters, Readiness, Withdraw};
use crate::reconfigure::{LiveParts, Reconfiguration};
use crate::registry::Registry;
use crate::self_check::SelfCheck;
use crate::shutdown::{AgentSignal, Signals};
use crate::supervisor::Supervisor;
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
    let (control, control_handle) =
        crate::control::Control::new(config_watch.clone(), supervisor.control_targets());
    let control_stop = CancellationToken::new();
    let control_task = tokio::spawn(control.run(control_stop.clone()));
    let mut supervisor_task = tokio::spawn(supervisor.run(supervisor_stop.clone()));

    let credentials_stop = CancellationToken::new();
    let (credential_manager, credentials) = CredentialManager::new(config_watch.clone());
    let credentials_task = tokio::spawn(credential_manager.run(credentials_stop.clone()));

    let self_check_stop = CancellationToken::new();
    // Whether the host is withdrawn and why: one channel, one writer per
    // party (self-check, drain, reconfiguration).
    let (
        HealthWriters {
            self_check: self_check_report,
            drain: draining,
            reconfigure: reconfiguring,
        },
        health,
    ) = readiness::health_channel();
    let self_check = SelfCheck::new(
        config_watch.clone(),
        credentials.source.clone(),
        status.clone(),
        credentials.status.clone(),
        credentials.rotate.clone(),
        self_check_report,
    );
    let self_check_task = tokio::spawn(self_check.run(self_check_stop.clone()));
    let readiness = Readiness {
        supervisor: status.clone(),
        credentials: credentials.status.clone(),
        health,
    };
    let systemd_stop = CancellationToken::new();
    let systemd_task = tokio::spawn(report_to_systemd(readiness.clone(), systemd_stop.clone()));

    let registry_stop = CancellationToken::new();
    let (registry, registry_status) = Registry::new(config_watch.clone(), readiness.clone());
    let registry_task = registry.map(|registry| {
        tokio::spawn(
            registry
                .with_control(control_handle.status.clone())
                .run(registry_stop.clone()),
        )
    });

    warn_about_loose_secret_files(&config);
    let (drain_sender, mut drain_requests) = tokio::sync::mpsc::channel::<()>(1);
    let agent_metrics = AgentMetrics::with_control(
        readiness.clone(),
        registry_status.clone(),
        probe_latency,
        Some(control_handle.status.clone()),
    );
    let guard = api::guard::Guard::new(&config.access);
    guard.set_cors(&config.api.cors);
    let turn_uris = Arc::new(ArcSwap::from_pointee(config.api.turn_uris.clone()));
    let router = api::router(
        ApiState {
            drain: drain_sender,
            control: control_handle.clone(),
            metrics: agent_metrics.clone(),
            readiness,
            registry: registry_status,
            credentials: credentials.source,
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
        // An upper bound: the wait below ends at the shutdown deadline.
        config.agent.shutdown_timeout,
    ));

    let mut reconfiguration = Reconfiguration::new(
        raw,
        config_sender,
        LiveParts {
            guard,
            turn_uris,
            metrics: agent_metrics,
            tls,
            control: Some(control_handle.status.clone()),
        },
        reconfiguring,
        status,
        credentials.status,
    );
    let reason = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                AgentSignal::Terminate(name) => break name,
                AgentSignal::Drain => break drain(&reconfiguration.current(), &control_handle, &draining, &mut signals).await,
                AgentSignal::Reload => reconfiguration.reload(&config_path),
            },
            Some(()) = drain_requests.recv() => {
                break drain(&reconfiguration.current(), &control_handle, &draining, &mut signals).await;
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
    reconfiguration.stop(deadline).await;

    // Withdraw first, so signalling servers stop sending clients here while
    // the API still answers those that already picked this host.
    registry_stop.cancel();
    if let Some(task) = registry_task {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("registry did not withdraw in time");
        }
    }
    api_stop.cancel();
    let api_ended = tokio::time::timeout_at(deadline, &mut api_task)
        .await
        .is_ok();
    if !api_ended {
        // It closes what is still open once its own drain is over; it is
        // joined at the end, not aborted.
        tracing::warn!("HTTP server did not drain in time");
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
    if tokio::time::timeout_at(deadline, self_check_task)
        .await
        .is_err()
    {
        tracing::warn!("self-check did not stop in time");
    }
    systemd_stop.cancel();
    if tokio::time::timeout_at(deadline, systemd_task)
        .await
        .is_err()
    {
        tracing::warn!("systemd status reporting did not stop in time");
    }
    control_stop.cancel();
    if tokio::time::timeout_at(deadline, control_task)
        .await
        .is_err()
    {
        tracing::warn!("control channel did not stop in time");
    }
    supervisor_stop.cancel();
    if tokio::time::timeout_at(deadline, &mut supervisor_task)
        .await
        .is_err()
    {
        // Dropping out of main ends the spawner thread, and the parent-death
        // signal takes turnserver with us.
        anyhow::bail!("turnserver did not stop within agent.shutdown_timeout");
    }
    // Done already unless it overran the deadline above; serve bounds its
    // own drain, so this ends.
    if !api_ended {
        if let Ok(Err(error)) = api_task.await {
            tracing::warn!(%error, "HTTP server ended with an error");
        }
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Marks the host as draining (not ready: the znode goes, /readyz says
/// "draining", credentials are still served) and waits for traffic to end.
async fn drain(
    config: &Config,
    control: &crate::control::ControlHandle,
    draining: &Withdraw,
    signals: &mut Signals,
) -> &'static str {
    tracing::info!("draining: withdrawn from ZooKeeper, waiting for relayed traffic to end");
    draining.set();
    tokio::select! {
        outcome = crate::drain::until_drained(config, Some(control.status.clone())) => outcome,
        name = terminated(signals) => {
            tracing::warn!(signal = name, "drain interrupted");
            name
        }
    }
}

/// The next SIGTERM or SIGINT; other signals are ignored while draining.
async fn terminated(signals: &mut Signals) -> &'static str {
    loop {
        match signals.next().await {
            AgentSignal::Terminate(name) => return name,
            AgentSignal::Reload => {
                tracing::warn!("configuration reload ignored: the agent is draining to stop")
            }
            AgentSignal::Drain => tracing::info!("already draining"),
        }
    }
}

/// Token, TLS key and ZooKeeper auth files readable by others are
/// reported: they hold secrets.
fn warn_about_loose_secret_files(config: &Config) {
    let tokens = config
        .access
        .token_files
        .iter()
        .enumerate()
        .map(|(index, path)| (format!("access.tokens[{index}].token_file"), path.as_path()));
    let tls_key = config
        .api
        .tls
        .iter()
        .map(|files| ("api.tls.key".to_string(), files.key.as_path()));
    let zookeeper = config
        .zookeeper
        .auth_file
        .iter()
        .map(|path| ("zookeeper.auth_file".to_string(), path.as_path()));
    crate::file_checks::warn_if_readable_by_others(tokens.chain(tls_key).chain(zookeeper));
}

/// READY=1 once the host can first serve (turnserver answers STUN and a
/// credential exists; the API already listens by then), and STATUS= on
/// every change, for `systemctl status`.
async fn report_to_systemd(mut readiness: Readiness, stop: CancellationToken) {
    let mut announced_ready = false;
    loop {
        match readiness.not_ready_reason() {
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
            _ = stop.cancelled() => return,
            _ = readiness.changed() => {}
        }
    }
}
