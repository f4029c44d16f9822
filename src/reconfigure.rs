//! Applying a re-read configuration to the running agent: live keys at
//! once; keys that need a new turnserver through a drain, a restart, and a
//! wait until the new turnserver (and, for a new realm, mode or database,
//! a fresh credential) serves before the host is listed again.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::config::{self, Config, RawConfig};
use crate::credentials::{self, CredentialStatus};
use crate::log_safe::LogSafe;
use crate::metrics::AgentMetrics;
use crate::readiness::Withdraw;
use crate::reload::{Reloader, Reread};
use crate::supervisor::{self, SupervisorStatus};

/// Applies reloaded configurations: live keys at once, turnserver keys
/// through a drain and a turnserver restart.
pub struct Reconfiguration {
    reloader: Reloader,
    config: watch::Sender<Arc<Config>>,
    live: LiveParts,
    /// The reconfiguration's own withdrawal reason.
    reconfiguring: Withdraw,
    supervisor: watch::Receiver<SupervisorStatus>,
    credentials: watch::Receiver<CredentialStatus>,
    /// The drain before a turnserver restart, while one is due.
    drain: Option<Pin<Box<dyn Future<Output = &'static str> + Send>>>,
    /// The keys that restart is for.
    restart_keys: Vec<String>,
    /// What tells the wait for a new turnserver after the latest restart
    /// to stop (a newer restart, or shutdown).
    finish: Option<CancellationToken>,
    /// Every such wait, a stopped one included, joined at shutdown.
    finishing: TaskTracker,
}

/// What a reload changes in place, outside the config channel.
pub struct LiveParts {
    pub guard: api::guard::Guard,
    pub turn_uris: Arc<ArcSwap<Vec<String>>>,
    pub metrics: AgentMetrics,
    /// Certificate files are re-read on every reload, whatever the file says.
    pub tls: Option<api::tls::TlsReloader>,
    /// The control channel's status: drains wait for zero allocations.
    pub control: Option<tokio::sync::watch::Receiver<crate::control::ControlStatus>>,
}

impl Reconfiguration {
    /// `config` carries what the tasks run with; it starts as `started`
    /// validated.
    pub fn new(
        started: RawConfig,
        config: watch::Sender<Arc<Config>>,
        live: LiveParts,
        reconfiguring: Withdraw,
        supervisor: watch::Receiver<SupervisorStatus>,
        credentials: watch::Receiver<CredentialStatus>,
    ) -> Reconfiguration {
        Reconfiguration {
            reloader: Reloader::new(started),
            config,
            live,
            reconfiguring,
            supervisor,
            credentials,
            drain: None,
            restart_keys: Vec::new(),
            finish: None,
            finishing: TaskTracker::new(),
        }
    }

    pub fn current(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// SIGHUP: re-read the file (a bad one is reported and the running
    /// configuration kept) and the TLS certificates.
    pub fn reload(&mut self, path: &Path) {
        self.reread(path);
        if let Some(tls) = &self.live.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates re-read"),
                Err(error) => {
                    tracing::error!(error = %LogSafe::new(&error.to_string()).truncated_at(500), "keeping the previous TLS certificates")
                }
            }
        }
    }

    fn reread(&mut self, path: &Path) {
        // The file must be valid as a whole, even in keys that wait for an
        // agent restart.
        let reread = config::load(path).and_then(|(raw, config)| {
            api::tls::check(config.api.tls.as_ref())?;
            self.reloader.reread(raw)
        });
        let reread = match reread {
            Ok(reread) => reread,
            Err(error) => {
                for problem in &error.problems {
                    let problem = problem.to_string();
                    tracing::error!(problem = %LogSafe::new(&problem).truncated_at(500), "configuration re-read failed; keeping the running configuration");
                }
                self.live.metrics.reloaded(false, 0);
                return;
            }
        };
        self.live.metrics.reloaded(true, reread.agent_restart.len());
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
                if let Some(stop) = self.finish.take() {
                    // It returns at once, leaving `reconfiguring` to the
                    // restart that follows.
                    stop.cancel();
                }
                self.reconfiguring.set();
                self.drain = Some(Box::pin(crate::drain::until_drained(
                    &reread.apply_now,
                    self.live.control.clone(),
                )));
            }
            (false, true) => {
                tracing::info!(
                    "the changes that needed a new turnserver were reverted; listed again"
                );
                self.drain = None;
                self.reconfiguring.clear();
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
            self.live.guard.replace(&next.access);
        }
        if next.api.cors != before.api.cors {
            self.live.guard.set_cors(&next.api.cors);
        }
        if next.api.turn_uris != before.api.turn_uris {
            self.live
                .turn_uris
                .store(Arc::new(next.api.turn_uris.clone()));
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
    pub async fn drained(&mut self) -> &'static str {
        match self.drain.as_mut() {
            Some(drain) => drain.await,
            None => std::future::pending().await,
        }
    }

    /// After the drain: hand the new configuration to every task (the
    /// supervisor replaces turnserver, the credential manager starts afresh
    /// if the realm, mode or database changed) and list the host again once
    /// both are done.
    pub fn restart_turnserver(&mut self, drain_outcome: &'static str) {
        self.drain = None;
        let next = match self.reloader.turnserver_restart() {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "cannot compose the new configuration; keeping the running one");
                self.reconfiguring.clear();
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
        let stop = CancellationToken::new();
        self.finishing.spawn(finish_restart(
            stop.clone(),
            self.supervisor.clone(),
            self.credentials.clone(),
            self.reconfiguring.clone(),
            Replaced {
                old_pid: new_process.then_some(old_pid).flatten(),
                old_generation: fresh_credentials.then_some(generation),
            },
            limit,
            std::mem::take(&mut self.restart_keys),
        ));
        self.finish = Some(stop);
    }

    /// Shutdown: tells a wait for a new turnserver to stop and joins it,
    /// and every earlier one a newer restart stopped.
    pub async fn stop(&mut self, deadline: Instant) {
        if let Some(stop) = self.finish.take() {
            stop.cancel();
        }
        self.finishing.close();
        if tokio::time::timeout_at(deadline, self.finishing.wait())
            .await
            .is_err()
        {
            tracing::warn!("the wait for a new turnserver did not stop in time");
        }
    }
}

/// Waits until a turnserver other than `old_pid` answers and (when
/// `old_generation` is given) the credential manager has started afresh
/// and serves, then clears `reconfiguring`. After `limit` it clears it
/// anyway: readiness then follows turnserver and credentials as usual.
/// What a restart replaces: the turnserver pid and the credential
/// generation the new ones must differ from (`None`: any will do).
struct Replaced {
    old_pid: Option<u32>,
    old_generation: Option<u64>,
}

async fn finish_restart(
    stop: CancellationToken,
    mut supervisor: watch::Receiver<SupervisorStatus>,
    mut credentials: watch::Receiver<CredentialStatus>,
    reconfiguring: Withdraw,
    replaced: Replaced,
    limit: Duration,
    keys: Vec<String>,
) {
    let Replaced {
        old_pid,
        old_generation,
    } = replaced;
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
    let outcome = tokio::select! {
        _ = stop.cancelled() => return,
        outcome = tokio::time::timeout(limit, done) => outcome,
    };
    match outcome {
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
    reconfiguring.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialMode;
    use crate::readiness::health_channel;
    use crate::status::{HealthStatus, WithdrawReason};
    use crate::supervisor::Phase;
    use tokio::task::JoinHandle;

    struct Channels {
        supervisor: watch::Sender<SupervisorStatus>,
        credentials: watch::Sender<CredentialStatus>,
        health: Withdraw,
        health_rx: watch::Receiver<HealthStatus>,
    }

    fn channels() -> Channels {
        let (supervisor, _) = watch::channel(SupervisorStatus {
            phase: Phase::Ready,
            pid: Some(10),
            ..SupervisorStatus::default()
        });
        let (credentials, _) = watch::channel(CredentialStatus {
            available: true,
            ..CredentialStatus::new(CredentialMode::LongTerm)
        });
        let (writers, health_rx) = health_channel();
        writers.reconfigure.set();
        Channels {
            supervisor,
            credentials,
            health: writers.reconfigure,
            health_rx,
        }
    }

    fn reconfiguring(health: &watch::Receiver<HealthStatus>) -> bool {
        health
            .borrow()
            .withdrawal
            .contains(WithdrawReason::Reconfiguring)
    }

    fn finish(c: &Channels, old_pid: Option<u32>, old_generation: Option<u64>) -> JoinHandle<()> {
        tokio::spawn(finish_restart(
            CancellationToken::new(),
            c.supervisor.subscribe(),
            c.credentials.subscribe(),
            c.health.clone(),
            Replaced {
                old_pid,
                old_generation,
            },
            Duration::from_secs(20),
            vec!["turnserver.listening_port".into()],
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn listed_again_only_once_a_new_turnserver_answers() {
        let c = channels();
        let task = finish(&c, Some(10), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(reconfiguring(&c.health_rx), "old pid still ready");

        c.supervisor.send_modify(|s| {
            s.phase = Phase::Starting;
            s.pid = Some(11);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(reconfiguring(&c.health_rx), "new pid not ready yet");

        c.supervisor.send_modify(|s| s.phase = Phase::Ready);
        task.await.unwrap();
        assert!(!reconfiguring(&c.health_rx));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_realm_also_waits_for_a_fresh_credential() {
        let c = channels();
        c.supervisor.send_modify(|s| s.pid = Some(11));
        let task = finish(&c, Some(10), Some(0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(reconfiguring(&c.health_rx), "old credential state");

        c.credentials.send_modify(|s| {
            s.generation = 1;
            s.available = false;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(reconfiguring(&c.health_rx), "no credential yet");

        c.credentials.send_modify(|s| s.available = true);
        task.await.unwrap();
        assert!(!reconfiguring(&c.health_rx));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_readiness_back_to_the_usual_rules_after_the_limit() {
        let c = channels();
        let task = finish(&c, Some(10), None);
        tokio::time::sleep(Duration::from_secs(19)).await;
        assert!(reconfiguring(&c.health_rx));
        tokio::time::sleep(Duration::from_secs(2)).await;
        task.await.unwrap();
        assert!(!reconfiguring(&c.health_rx));
    }
}
